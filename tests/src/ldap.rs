//! A real OpenLDAP `slapd` for the login tests, run as a plain process (never the system
//! service) on a loopback port with a generated `slapd.conf` and an mdb database in a temp
//! dir, loaded with `ldapadd`: `dc=example,dc=test`, people under `ou=people`, an admin
//! `cn=admin,dc=example,dc=test` (password [`ADMIN_PASSWORD`]) that may also search.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

/// The directory's suffix.
pub const SUFFIX: &str = "dc=example,dc=test";
/// Where people are.
pub const PEOPLE: &str = "ou=people,dc=example,dc=test";
/// The admin's DN.
pub const ADMIN: &str = "cn=admin,dc=example,dc=test";
/// The admin's password.
pub const ADMIN_PASSWORD: &str = "admin secret";

/// A running slapd; killed when dropped.
pub struct Slapd {
    child: Option<Child>,
    /// `ldap://127.0.0.1:PORT/`.
    pub url: String,
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run an LDAP tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Slapd {
    /// Starts slapd and adds the base entries and `people`: (uid, password) pairs.
    pub fn start(people: &[(&str, &str)]) -> Slapd {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::create_dir(d.join("db")).expect("mkdir db");
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {pid}\n\
             database mdb\n\
             maxsize 10485760\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ADMIN}\"\n\
             rootpw \"{ADMIN_PASSWORD}\"\n\
             directory {db}\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by * read\n",
            pid = d.join("slapd.pid").display(),
            db = d.join("db").display(),
        );
        std::fs::write(d.join("slapd.conf"), conf).expect("write slapd.conf");
        let port = free_port("127.0.0.1");
        let url = format!("ldap://127.0.0.1:{port}/");
        let log = std::fs::File::create(d.join("slapd.log")).expect("slapd.log");
        let child = Command::new("/usr/sbin/slapd")
            .args(["-h", &url, "-f"])
            .arg(d.join("slapd.conf"))
            // -d keeps it in the foreground (a child we can kill); 0: no debug output.
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn slapd");
        let mut s = Slapd {
            child: Some(child),
            url,
            dir,
        };
        wait_for("slapd to listen", Duration::from_secs(20), || {
            if let Some(Ok(Some(st))) = s.child.as_mut().map(|c| c.try_wait()) {
                panic!("slapd exited with {st}: {}", s.log());
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n\
             dc: example\n\ndn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n"
        );
        for (uid, password) in people {
            let hash = run(Command::new("/usr/sbin/slappasswd").args(["-s", password]));
            ldif.push_str(&format!(
                "\ndn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n\
                 sn: {uid}\nuserPassword: {}\n",
                hash.trim()
            ));
        }
        let path = s.dir.path().join("people.ldif");
        std::fs::write(&path, ldif).expect("write ldif");
        run(Command::new("ldapadd")
            .args(["-x", "-H", &s.url, "-D", ADMIN, "-w", ADMIN_PASSWORD, "-f"])
            .arg(&path));
        s
    }

    /// slapd's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Kills slapd and waits for it: the directory is down.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The database directory (for tests that look at it).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
