//! smtpd on a systemd host (issue 17): socket activation (a Python launcher that binds and
//! execs with `LISTEN_FDS`, as systemd does), `Type=notify` (`READY=1` once serving,
//! `STOPPING=1` on SIGTERM, received on a Python datagram socket), log lines for the journal,
//! `--user`/`--group` after binding a privileged port, and `systemd-analyze verify` on the units.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::relay::text;
use integration_tests::{bin, free_port, have, list, python, wait_for};

/// Sends one message with Python's smtplib to `port` on 127.0.0.1; returns the reply to DATA.
fn send(port: u16, rcpt: &str) -> String {
    python(
        r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo("client.test")
s.mail("ann@src.test")
s.rcpt(sys.argv[2])
code, msg = s.data(b"Subject: activated\r\n\r\nhello\r\n")
print(code, msg.decode())
s.quit()
"#,
        &[&port.to_string(), rcpt],
    )
}

struct Launched {
    child: Child,
    pid: i32,
    log: PathBuf,
}

impl Launched {
    fn notifications(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the smtpd this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Starts smtpd through tests/py/activate.py with the sockets `listen` (`ip:port:name`).
fn launch(dir: &Path, listen: &[String], smtpd_args: &[&str]) -> Launched {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/activate.py");
    let log = dir.join("notify.log");
    let pidfile = dir.join("smtpd.pid");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg("--notify")
        .arg(dir.join("notify.sock"))
        .arg("--log")
        .arg(&log)
        .arg("--pid")
        .arg(&pidfile);
    for l in listen {
        cmd.arg("--listen").arg(l);
    }
    cmd.arg("--").arg(bin("smtpd")).args(smtpd_args);
    let child = cmd
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("smtpd.log")).expect("log file"))
        .spawn()
        .expect("spawn activate.py");
    wait_for("the launcher's pid file", Duration::from_secs(10), || {
        pidfile.exists()
    });
    let pid = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    Launched { child, pid, log }
}

/// A users file line for alice, password "correct horse" (made with Dovecot's doveadm).
const ALICE: &str = "alice:{SHA512-CRYPT}$6$sNDqHs.hhdD9yuAI$fWwvlemPsvqkMyqp9uNcElVdSsbyT11P8dsqnaa6KVdJXTpjZ9GrPRSPIiDnaIDKHJfgUfMEoJGt5w8i0N8cT/::::\n";

/// Speaks to the inherited submission and POP3 sockets with Python's smtplib and poplib:
/// MAIL before AUTH, then a login and a message to alice, then alice's POP3 listing. Prints
/// one line per step.
const SUBMIT_AND_READ: &str = r#"
import poplib, smtplib, sys
sub, pop = int(sys.argv[1]), int(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", sub, timeout=20)
s.ehlo("client.test")
print("mail-before-auth", s.mail("ann@example.test")[0])
s.rset()
s.login("alice", "correct horse")
s.mail("alice@example.test")
s.rcpt("alice@example.test")
print("data", s.data(b"Subject: activated\r\n\r\nhello\r\n")[0])
s.quit()
p = poplib.POP3("127.0.0.1", pop, timeout=20)
p.user("alice")
p.pass_("correct horse")
print("stat", p.stat()[0])
p.quit()
"#;

/// smtpd serves on the sockets it inherits, each as its name says (`smtp`; `submission`, where
/// MAIL needs AUTH; `pop3`), not on its `--listen` address; it says READY=1 once serving and
/// STOPPING=1 on SIGTERM, then exits 0.
#[test]
fn socket_activation_and_notify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = dir.path().join("Maildir");
    let users = dir.path().join("users");
    std::fs::write(&users, ALICE).expect("users file");
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "postmaster: alice\n").expect("aliases file");
    let mailboxes = dir.path().join("mailboxes");
    let (p1, p2, p3, unused) = (
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
    );
    let listen = [
        format!("127.0.0.1:{p1}:smtp"),
        format!("127.0.0.1:{p2}:submission"),
        format!("127.0.0.1:{p3}:pop3"),
    ];
    let unused_addr = format!("127.0.0.1:{unused}");
    let mut l = launch(
        dir.path(),
        &listen,
        &[
            "--maildir",
            maildir.to_str().expect("utf-8 path"),
            "--listen",
            &unused_addr,
            "--hostname",
            "mx.activated.test",
            "--local-domain",
            "example.test",
            "--mailboxes",
            mailboxes.to_str().expect("utf-8 path"),
            "--users",
            users.to_str().expect("utf-8 path"),
            "--aliases",
            aliases.to_str().expect("utf-8 path"),
        ],
    );
    wait_for("READY=1", Duration::from_secs(20), || {
        l.notifications().iter().any(|n| n.starts_with("READY=1"))
    });
    let ready = l.notifications();
    assert!(
        ready[0].contains("STATUS=listening on 127.0.0.1:"),
        "{ready:?}"
    );
    assert!(send(p1, "a@one.test").starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(list(&maildir.join("new")).len(), 1);
    let steps = python(SUBMIT_AND_READ, &[&p2.to_string(), &p3.to_string()]);
    assert_eq!(
        steps.lines().collect::<Vec<_>>(),
        ["mail-before-auth 530", "data 250", "stat 1"],
        "{steps}"
    );
    assert!(
        std::net::TcpStream::connect(&unused_addr).is_err(),
        "--listen is not bound when sockets are inherited"
    );
    // SAFETY: kill(2) on the smtpd this test started.
    unsafe { libc::kill(l.pid, libc::SIGTERM) };
    let status = l.child.wait().expect("launcher exit");
    assert_eq!(status.code(), Some(0), "smtpd exits 0 after SIGTERM");
    let n = l.notifications();
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(n[1], "STOPPING=1");
}

/// An inherited socket smtpd cannot serve as configured is refused at start, saying what it
/// needs: submission without accounts, POP3 without local delivery.
#[test]
fn an_inherited_socket_needs_what_it_serves() {
    for (name, needs) in [
        ("submission", "--users or --ldap-url"),
        ("pop3", "--local-domain"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = dir.path().join("Maildir");
        let p = free_port("127.0.0.1");
        let mut l = launch(
            dir.path(),
            &[format!("127.0.0.1:{p}:{name}")],
            &["--maildir", maildir.to_str().expect("utf-8 path")],
        );
        let status = l.child.wait().expect("launcher exit");
        assert_eq!(status.code(), Some(1), "{name}");
        let err = std::fs::read_to_string(dir.path().join("smtpd.log")).expect("log");
        assert!(
            err.contains(&format!("an inherited {name} socket needs")) && err.contains(needs),
            "{err}"
        );
        assert!(l.notifications().is_empty());
    }
}

/// A socket named for something smtpd does not serve is refused at start, by name.
#[test]
fn an_unknown_socket_name_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = dir.path().join("Maildir");
    let p = free_port("127.0.0.1");
    let mut l = launch(
        dir.path(),
        &[format!("127.0.0.1:{p}:imap")],
        &["--maildir", maildir.to_str().expect("utf-8 path")],
    );
    let status = l.child.wait().expect("launcher exit");
    assert_eq!(status.code(), Some(1));
    let err = std::fs::read_to_string(dir.path().join("smtpd.log")).expect("log");
    assert!(err.contains("inherited socket named 'imap'"), "{err}");
    assert!(l.notifications().is_empty());
}

/// With stderr the journal (`JOURNAL_STREAM` naming it), log lines carry a syslog priority and
/// no timestamp of ours; `SMTPD_LOG_FORMAT=plain` brings the timestamp back; `--log-format`
/// overrides both.
#[test]
fn journal_log_format() {
    use std::os::unix::fs::MetadataExt;
    for (format, option, journal) in [
        (None, None, true),
        (Some("plain"), None, false),
        (Some("plain"), Some("journal"), true),
        (None, Some("plain"), false),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("stderr");
        let log = std::fs::File::create(&log_path).expect("log");
        let meta = log.metadata().expect("stat");
        let port = free_port("127.0.0.1");
        let mut cmd = Command::new(bin("smtpd"));
        cmd.arg("--maildir")
            .arg(dir.path().join("Maildir"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env_remove("SMTPD_LOG_FORMAT")
            .stdin(Stdio::null())
            .stderr(log);
        if let Some(f) = format {
            cmd.env("SMTPD_LOG_FORMAT", f);
        }
        if let Some(o) = option {
            cmd.args(["--log-format", o]);
        }
        let mut child = cmd.spawn().expect("spawn smtpd");
        wait_for("the listening line", Duration::from_secs(10), || {
            std::fs::read_to_string(&log_path).is_ok_and(|t| t.contains("listening on"))
        });
        let _ = child.kill();
        let _ = child.wait();
        let t = std::fs::read_to_string(&log_path).expect("log");
        let line = t
            .lines()
            .find(|l| l.contains("listening on"))
            .expect("line");
        if journal {
            assert!(line.starts_with("<6>smtpd: listening on 127.0.0.1:"), "{t}");
        } else {
            assert!(line.starts_with("[20") && line.contains(" INFO "), "{t}");
        }
    }
}

/// Started as root with `--user nobody --group nogroup`, smtpd binds its privileged ports (25,
/// submission's 587 and POP3's 110 on a loopback address of its own), then serves on each as
/// nobody:nogroup with no other group.
#[test]
fn user_and_group_after_binding_a_privileged_port() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (CI and scripts/test.sh run as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = dir.path().join("Maildir");
    std::fs::create_dir(&maildir).expect("mkdir");
    let nobody = python(
        "import pwd, grp; print(pwd.getpwnam('nobody').pw_uid, grp.getgrnam('nogroup').gr_gid)",
        &[],
    );
    let ids: Vec<u32> = nobody
        .split_whitespace()
        .map(|s| s.parse().expect("id"))
        .collect();
    std::os::unix::fs::chown(&maildir, Some(ids[0]), Some(ids[1])).expect("chown");
    // The temp dir itself must be searchable by nobody.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ip = format!("127.0.{}.{}", std::process::id() % 200 + 20, 87);
    let users = dir.path().join("users");
    std::fs::write(&users, ALICE).expect("users file");
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "postmaster: alice\n").expect("aliases file");
    let mailboxes = dir.path().join("mailboxes");
    std::fs::create_dir(&mailboxes).expect("mkdir");
    std::os::unix::fs::chown(&mailboxes, Some(ids[0]), Some(ids[1])).expect("chown");
    let child = Command::new(bin("smtpd"))
        .arg("--maildir")
        .arg(&maildir)
        .args(["--listen", &format!("{ip}:25")])
        .args(["--submission-listen", &format!("{ip}:587")])
        .args(["--pop3-listen", &format!("{ip}:110")])
        .args(["--local-domain", "example.test", "--users"])
        .arg(&users)
        .arg("--aliases")
        .arg(&aliases)
        .arg("--mailboxes")
        .arg(&mailboxes)
        .args(["--user", "nobody", "--group", "nogroup"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn smtpd");
    let mut child = Killed(Some(child));
    let pid = child.0.as_ref().map_or(0, |c| c.id());
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let (u, g) = (ids[0].to_string(), ids[1].to_string());
    // Bound first (the port answers while still root), then the identity changes.
    wait_for("smtpd to become nobody", Duration::from_secs(10), || {
        field(&status(), "Uid:") == format!("{u} {u} {u} {u}")
    });
    let st = status();
    assert_eq!(field(&st, "Gid:"), format!("{g} {g} {g} {g}"), "{st}");
    assert_eq!(field(&st, "Groups:"), g, "{st}");
    let reply = python(
        r#"
import poplib, smtplib, sys
s = smtplib.SMTP(sys.argv[1], 25, timeout=20)
s.ehlo("client.test")
s.mail("ann@src.test")
s.rcpt("x@one.test")
print(s.data(b"Subject: as nobody\r\n\r\nhi\r\n")[0])
s.quit()
s = smtplib.SMTP(sys.argv[1], 587, timeout=20)
s.ehlo("client.test")
print(s.mail("ann@src.test")[0])
s.quit()
p = poplib.POP3(sys.argv[1], 110, timeout=20)
print(p.getwelcome().decode().split()[0])
p.quit()
"#,
        &[&ip],
    );
    assert_eq!(
        reply.lines().collect::<Vec<_>>(),
        ["250", "530", "+OK"],
        "{reply}"
    );
    let files = list(&maildir.join("new"));
    assert_eq!(files.len(), 1);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&files[0]).expect("stat").uid(), ids[0]);
    let mut c = child.0.take().expect("child");
    let _ = c.kill();
    let out = c.wait_with_output().expect("wait");
    assert!(!text(&out.stderr).contains("serving as root"));
}

/// A child killed when the test ends, failed or not.
struct Killed(Option<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// As root without `--user`, smtpd serves and warns once.
#[test]
fn root_without_user_warns() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let s = integration_tests::smtp::start(&[]);
    wait_for("the warning", Duration::from_secs(10), || {
        integration_tests::smtp::server_log(&s).contains("serving as root")
    });
}

/// `systemd-analyze verify` finds nothing to say about the units (their binaries pointed at
/// this build, as the package installs them under /usr).
#[test]
fn units_verify() {
    if !have("systemd-analyze") {
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut names = Vec::new();
    for path in list(&units) {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let unit = std::fs::read_to_string(&path)
            .expect("unit")
            .replace("/usr/sbin/smtpd", &bin("smtpd").display().to_string())
            .replace(
                "/usr/bin/smtp-relay",
                &bin("smtp-relay").display().to_string(),
            );
        std::fs::write(dir.path().join(&name), unit).expect("write unit");
        names.push(dir.path().join(&name));
    }
    assert!(names.len() >= 6, "{names:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze");
    let err = text(&out.stderr);
    // Messages about other units on this machine (not ours) are not our business.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("smtpd") || l.contains("smtp-relay"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {:?}\n{err}",
        out.status
    );
}
