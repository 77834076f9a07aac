//! A real Dovecot IMAP server for the local-delivery tests: started as a plain process
//! (`dovecot -F -c CONF`, no system service) with a generated configuration on a loopback port
//! chosen at run time, `mail_location = maildir:<mailboxes>/%u`, and passdb and userdb both the
//! passwd-file driver on the same users file smtpd reads. [`Dovecot::fetch_inbox`] reads a
//! user's INBOX back with Python's `imaplib`, which nobody here wrote either.
//!
//! # Running as root (the sandbox and CI)
//! Dovecot refuses to give mail access to uid 0 and to run its login processes as root. So as
//! root its mail processes run as `nobody` (65534:65534, [`mail_owner`]), its login processes
//! as `nobody`, and its master and auth processes as root (they only read the users file). The
//! Maildirs must then belong to that owner: smtpd (as a deployment would run it, under the mail
//! user) writes them as [`mail_owner`], or a test hands a tree over with [`give_to_mail_owner`].
//! As any other user everything runs as that user.
//!
//! # The users file
//! Dovecot's userdb reads uid and gid from fields 3 and 4; a line with only `name:password`
//! is "missing userdb info" to it. Give each line at least the empty fields
//! (`alice:{ARGON2ID}...::::`): empty uid/gid mean `mail_uid`/`mail_gid` of the config.
//!
//! This module owns the Dovecot process and its files under the directory it is given; it
//! never touches a system Dovecot (own `base_dir`, `state_dir`, `instance_name`).

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

/// `(uid, gid)` that Dovecot's mail processes run as, and so the owner of the Maildirs it
/// serves: `nobody` when running as root (Dovecot refuses mail access as root), else the
/// current user.
pub fn mail_owner() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 { (65534, 65534) } else { (uid, gid) }
}

/// Makes `path` and everything under it belong to [`mail_owner`], and every ancestor
/// directory traversable (`o+x`), so that Dovecot's mail processes reach it.
pub fn give_to_mail_owner(path: &Path) {
    let (uid, gid) = mail_owner();
    chown_tree(path, uid, gid);
    let mut dir = path.parent();
    while let Some(d) = dir {
        if let Ok(meta) = std::fs::metadata(d) {
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001));
            }
        }
        dir = d.parent();
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// A running Dovecot serving IMAP on 127.0.0.1; stopped (SIGTERM, then waited for) on drop.
pub struct Dovecot {
    child: Child,
    /// The IMAP port on 127.0.0.1.
    pub port: u16,
    /// Dovecot's log file.
    pub log: PathBuf,
}

impl Dovecot {
    /// Starts Dovecot with its files under `dir`, serving `<mailboxes>/<user>` Maildirs to the
    /// users of `users_file`. Returns `None` (the test skips, saying so) when Dovecot is not
    /// installed and peers are not required.
    pub fn start(dir: &Path, mailboxes: &Path, users_file: &Path) -> Option<Dovecot> {
        if !crate::have("dovecot") {
            return None;
        }
        std::fs::create_dir_all(dir).expect("create the Dovecot directory");
        let port = free_port("127.0.0.1");
        let log = dir.join("dovecot.log");
        let (uid, gid) = mail_owner();
        // SAFETY: getuid cannot fail.
        let root = unsafe { libc::getuid() } == 0;
        let (login_user, internal_user) = if root {
            ("nobody".to_owned(), "root".to_owned())
        } else {
            let me = current_user_name();
            (me.clone(), me)
        };
        let conf = format!(
            "base_dir = {base}\n\
             state_dir = {state}\n\
             instance_name = smtpd-test-{port}\n\
             listen = 127.0.0.1\n\
             protocols = imap\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\n\
             auth_failure_delay = 0\n\
             log_path = {log}\n\
             mail_location = maildir:{mailboxes}/%u\n\
             mail_uid = {uid}\n\
             mail_gid = {gid}\n\
             first_valid_uid = {uid}\n\
             first_valid_gid = {gid}\n\
             default_login_user = {login_user}\n\
             default_internal_user = {internal_user}\n\
             passdb {{\n  driver = passwd-file\n  args = username_format=%u {users}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = username_format=%u {users}\n  default_fields = home={mailboxes}/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service imap {{\n  process_limit = 16\n}}\n",
            base = dir.join("base").display(),
            state = dir.join("state").display(),
            log = log.display(),
            mailboxes = mailboxes.display(),
            users = users_file.display(),
        );
        let conf_path = dir.join("dovecot.conf");
        std::fs::write(&conf_path, conf).expect("write dovecot.conf");
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dovecot");
        let d = Dovecot { child, port, log };
        wait_for("Dovecot to greet on IMAP", Duration::from_secs(20), || {
            d.greets()
        });
        Some(d)
    }

    fn greets(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).is_ok() && &buf == b"* OK"
    }

    /// Dovecot's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Logs in as `user` with `password` (IMAP LOGIN through Python's imaplib), SELECTs INBOX
    /// and FETCHes every message's `BODY.PEEK[]`, in sequence order. Err holds imaplib's error.
    pub fn fetch_inbox(&self, user: &str, password: &str) -> Result<Vec<Vec<u8>>, String> {
        let out = Command::new("python3")
            .arg("-c")
            .arg(PY_FETCH)
            .arg(self.port.to_string())
            .arg(user)
            .arg(password)
            .output()
            .expect("run python3");
        if !out.status.success() {
            return Err(format!(
                "{}\n--- dovecot log ---\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_text()
            ));
        }
        parse_messages(&out.stdout)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children and remove its pid file.
        // SAFETY: kill(2) on the pid of the child we spawned.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// Messages framed as `<length>\n<bytes>` one after another.
fn parse_messages(mut out: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut msgs = Vec::new();
    while !out.is_empty() {
        let nl = out
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unframed output from the fetch script")?;
        let len: usize = std::str::from_utf8(&out[..nl])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad length from the fetch script")?;
        let rest = &out[nl + 1..];
        if rest.len() < len {
            return Err("short output from the fetch script".into());
        }
        msgs.push(rest[..len].to_vec());
        out = &rest[len..];
    }
    Ok(msgs)
}

const PY_FETCH: &str = r#"
import imaplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
m.login(user, password)
typ, data = m.select("INBOX", readonly=True)
if typ != "OK":
    sys.exit("SELECT: %r" % (data,))
count = int(data[0])
out = sys.stdout.buffer
if count:
    typ, data = m.fetch("1:%d" % count, "(BODY.PEEK[])")
    if typ != "OK":
        sys.exit("FETCH: %r" % (data,))
    for item in data:
        if isinstance(item, tuple):
            out.write(b"%d\n" % len(item[1]))
            out.write(item[1])
m.logout()
"#;

fn current_user_name() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            parse_messages(b"3\nabc0\n2\n\r\n").unwrap(),
            [b"abc".to_vec(), vec![], b"\r\n".to_vec()]
        );
        assert!(parse_messages(b"5\nabc").is_err());
        assert!(parse_messages(b"x\n").is_err());
    }
}
