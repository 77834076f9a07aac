//! POP3 (issue 13), tests 2, 3 and 6 of the issue, POP3 side, against the real `smtpd`: mail
//! is delivered through smtpd's local delivery (Python's smtplib over SMTP), then read with
//! Python's poplib (`tests/py/pop3_client.py`: plain on loopback, `POP3_SSL` on
//! `--pop3s-listen`, STLS), curl's `pop3://` and a real Dovecot IMAP on the same Maildirs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::certs::TestCa;
use integration_tests::dovecot::{Dovecot, give_to_mail_owner};
use integration_tests::smtp::{server_log, start};
use integration_tests::{Smtpd, free_port, hash_password, have, list, python, wait_for};

const PASSWORD: &str = "correct horse";

/// A smtpd delivering for example.test (users alice and bob, password [`PASSWORD`]) with
/// POP3 on a plain listener and, with TLS, an implicit TLS one.
struct Pop {
    s: Smtpd,
    dir: tempfile::TempDir,
    pop3: u16,
    pop3s: Option<u16>,
    ca: Option<TestCa>,
}

impl Pop {
    fn start(tls: bool, extra: &[&str]) -> Pop {
        let dir = tempfile::tempdir().expect("temp dir");
        let users = dir.path().join("users");
        let aliases = dir.path().join("aliases");
        let hash = hash_password(PASSWORD);
        std::fs::write(&users, format!("alice:{hash}::::\nbob:{hash}::::\n")).expect("users");
        std::fs::write(&aliases, "postmaster: alice\n").expect("aliases");
        let pop3 = free_port("127.0.0.1");
        let mut args: Vec<String> = [
            "--trust",
            "10.0.0.0/8",
            "--local-domain",
            "example.test",
            "--mailboxes",
        ]
        .map(String::from)
        .to_vec();
        args.push(dir.path().join("mailboxes").to_string_lossy().into_owned());
        args.push("--users".into());
        args.push(users.to_string_lossy().into_owned());
        args.push("--aliases".into());
        args.push(aliases.to_string_lossy().into_owned());
        args.push("--pop3-listen".into());
        args.push(format!("127.0.0.1:{pop3}"));
        let (mut pop3s, mut ca) = (None, None);
        if tls {
            let c = TestCa::new();
            let (cert, key) = c.issue("pop.test");
            let port = free_port("127.0.0.1");
            args.extend([
                "--tls-cert".into(),
                cert.to_string_lossy().into_owned(),
                "--tls-key".into(),
                key.to_string_lossy().into_owned(),
                "--pop3s-listen".into(),
                format!("127.0.0.1:{port}"),
            ]);
            pop3s = Some(port);
            ca = Some(c);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Pop {
            s: start(&refs),
            dir,
            pop3,
            pop3s,
            ca,
        }
    }

    fn mailbox(&self, user: &str) -> PathBuf {
        self.dir.path().join("mailboxes").join(user)
    }

    /// Every file of the user's Maildir, `new/` and `cur/`, by name.
    fn files(&self, user: &str) -> Vec<PathBuf> {
        let mut v = list(&self.mailbox(user).join("new"));
        v.extend(list(&self.mailbox(user).join("cur")));
        v
    }

    /// Sends `body` to `rcpt` (a user of example.test) over SMTP (smtplib), waits for the
    /// 250, and returns the file it became in the user's `new/`.
    fn deliver(&self, rcpt: &str, body: &str) -> PathBuf {
        let user = rcpt.split('@').next().unwrap_or(rcpt);
        let before = self.files(user);
        let file = self.dir.path().join("message.eml");
        std::fs::write(&file, body).expect("write the message");
        let out = python(
            PY_SEND,
            &[
                &self.s.addr.port().to_string(),
                rcpt,
                &file.to_string_lossy(),
            ],
        );
        assert!(out.contains("sent"), "{out}\n{}", server_log(&self.s));
        let mut new: Vec<PathBuf> = self
            .files(user)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        assert_eq!(new.len(), 1, "{}", server_log(&self.s));
        new.remove(0)
    }

    /// Runs `tests/py/pop3_client.py`; returns its `(step, result)` lines.
    fn client(&self, mode: &str, user: &str, steps: &[&str]) -> Vec<(String, String)> {
        self.client_from("127.0.0.1", mode, user, PASSWORD, steps)
    }

    /// Like [`Pop::client`], from the address `source`, with `password`.
    fn client_from(
        &self,
        source: &str,
        mode: &str,
        user: &str,
        password: &str,
        steps: &[&str],
    ) -> Vec<(String, String)> {
        let port = match mode {
            "ssl" => self.pop3s.expect("a TLS listener"),
            _ => self.pop3,
        };
        let ca = self
            .ca
            .as_ref()
            .map_or("-".to_owned(), |c| c.cert.to_string_lossy().into_owned());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/pop3_client.py");
        let mut args = vec![
            script.to_string_lossy().into_owned(),
            "127.0.0.1".into(),
            port.to_string(),
            mode.into(),
            ca,
            user.into(),
            password.into(),
        ];
        args.extend(steps.iter().map(|s| s.to_string()));
        let out = Command::new("python3")
            .args(&args)
            .env("POP3_SOURCE", source)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "pop3_client.py failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server_log(&self.s)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let (a, b) = l.split_once('\t').unwrap_or((l, ""));
                (a.to_owned(), b.to_owned())
            })
            .collect()
    }
}

const PY_SEND: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=60)
s.sendmail("s@far.test", [sys.argv[2]], open(sys.argv[3], "rb").read())
s.quit()
print("sent")
"#;

fn message(n: usize) -> String {
    format!(
        "From: s@far.test\r\nTo: alice@example.test\r\nSubject: message {n}\r\n\r\nline one of {n}\r\n.a line that starts with a dot\r\n..two dots\r\n.\r\nlast line\r\n"
    )
}

fn result<'a>(steps: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    steps
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, r)| r.as_str())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn base_name(p: &Path) -> String {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.split(':').next().unwrap_or(name).to_owned()
}

/// Test 2 (plain, loopback): STAT, LIST, UIDL, TOP and RETR byte-identical to the delivered
/// files; DELE + QUIT removes exactly that file; RETRieved messages move to cur/ with S.
#[test]
fn poplib_lists_retrieves_and_deletes_exactly_one() {
    if !have("python3") {
        return;
    }
    let p = Pop::start(false, &[]);
    let files: Vec<PathBuf> = (1..=3)
        .map(|n| p.deliver("alice@example.test", &message(n)))
        .collect();
    p.deliver("bob@example.test", &message(9));
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    let steps = p.client(
        "plain",
        "alice",
        &[
            "stat", "list", "uidl", "top 2 0", "top 2 2", "retr 1", "retr 2", "retr 3", "dele 2",
            "stat", "retr 2", "quit",
        ],
    );
    assert_eq!(result(&steps, "login"), ["+OK Logged in."], "{steps:?}");
    let total: usize = contents.iter().map(Vec::len).sum();
    assert_eq!(result(&steps, "stat")[0], format!("3 {total}"));
    let listing: Vec<String> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} {}", i + 1, c.len()))
        .collect();
    assert_eq!(result(&steps, "list"), [listing.join(",")]);
    let uids: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{} {}", i + 1, base_name(f)))
        .collect();
    assert_eq!(result(&steps, "uidl"), [uids.join(",")]);
    // TOP 2 0: the header section and the blank line; TOP 2 2: and two body lines.
    let text = String::from_utf8(contents[1].clone()).expect("UTF-8");
    let head_end = text.find("\r\n\r\n").expect("header end") + 4;
    let two = head_end + "line one of 2\r\n.a line that starts with a dot\r\n".len();
    assert_eq!(
        result(&steps, "top"),
        [hex(&contents[1][..head_end]), hex(&contents[1][..two])]
    );
    let retr = result(&steps, "retr");
    for (i, c) in contents.iter().enumerate() {
        assert_eq!(retr[i], hex(c), "RETR {} is byte-identical", i + 1);
    }
    assert_eq!(retr[3], "ERR -ERR No such message.");
    assert_eq!(
        result(&steps, "stat")[1],
        format!("2 {}", total - contents[1].len())
    );
    assert_eq!(result(&steps, "quit"), ["+OK Logging out."]);
    // Exactly message 2 is gone; 1 and 3 are in cur/ with the S flag; bob untouched.
    let left = p.files("alice");
    let mut names: Vec<String> = left
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let mut want = [
        format!("{}:2,S", base_name(&files[0])),
        format!("{}:2,S", base_name(&files[2])),
    ];
    want.sort();
    assert_eq!(names, want);
    for (i, f) in [(0, &files[0]), (2, &files[2])] {
        let moved = p
            .mailbox("alice")
            .join("cur")
            .join(format!("{}:2,S", base_name(f)));
        assert_eq!(std::fs::read(moved).expect("read"), contents[i]);
    }
    assert_eq!(p.files("bob").len(), 1);
}

/// Test 2 (TLS): POP3_SSL on --pop3s-listen and STLS on the plain listener; RETR
/// byte-identical; AUTH PLAIN works too.
#[test]
fn pop3s_and_stls_retrieve_byte_identical() {
    if !have("python3") || !have("openssl") {
        return;
    }
    let p = Pop::start(true, &[]);
    let file = p.deliver("alice@example.test", &message(1));
    let content = std::fs::read(&file).expect("read");
    let steps = p.client("ssl", "alice", &["retr 1", "quit"]);
    assert_eq!(result(&steps, "login"), ["+OK Logged in."], "{steps:?}");
    assert_eq!(result(&steps, "retr"), [hex(&content)]);
    let steps = p.client("stls", "auth:alice", &["stat", "top 1 0", "quit"]);
    assert_eq!(result(&steps, "stls"), ["+OK Begin TLS negotiation now."]);
    assert_eq!(result(&steps, "login"), ["+OK Logged in."], "{steps:?}");
    assert_eq!(result(&steps, "stat"), [format!("1 {}", content.len())]);
    assert!(server_log(&p.s).contains("pop3: connect from [127.0.0.1] (TLS)"));
}

/// Test 2: DELE then a dropped connection (no QUIT) removes nothing, and the maildrop is
/// free again at once; a wrong password gets -ERR [AUTH].
#[test]
fn dele_then_dropped_connection_removes_nothing() {
    if !have("python3") {
        return;
    }
    let p = Pop::start(false, &[]);
    p.deliver("alice@example.test", &message(1));
    p.deliver("alice@example.test", &message(2));
    let before = p.files("alice");
    let steps = p.client("plain", "alice", &["dele 1", "dele 2", "drop"]);
    assert_eq!(result(&steps, "dele"), ["+OK Marked to be deleted."; 2]);
    // The next session may see [IN-USE] until the server has seen the close: wait for it.
    wait_for(
        "the maildrop to be released",
        Duration::from_secs(10),
        || server_log(&p.s).matches("pop3: disconnect").count() == 1,
    );
    let steps = p.client("plain", "alice", &["stat", "quit"]);
    assert_eq!(result(&steps, "login"), ["+OK Logged in."], "{steps:?}");
    assert!(result(&steps, "stat")[0].starts_with("2 "));
    assert_eq!(p.files("alice"), before);
    let python_wrong = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("py/pop3_client.py"))
        .args([
            "127.0.0.1",
            &p.pop3.to_string(),
            "plain",
            "-",
            "alice",
            "wrong",
        ])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&python_wrong.stdout),
        "login\tERR -ERR [AUTH] Authentication failed.\n"
    );
}

const PY_IN_USE: &str = r#"
import poplib, smtplib, sys
port, smtp, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
a = poplib.POP3("127.0.0.1", port, timeout=60)
a.user("alice"); print("first", a.pass_(password).decode())
b = poplib.POP3("127.0.0.1", port, timeout=60)
b.user("alice")
try:
    print("second", b.pass_(password).decode())
except poplib.error_proto as e:
    print("second", e.args[0].decode())
# Mail delivered during the session is not touched by its QUIT.
s = smtplib.SMTP("127.0.0.1", smtp, timeout=60)
s.sendmail("s@far.test", ["alice@example.test"], b"Subject: later\r\n\r\narrived during the session\r\n")
s.quit()
print("dele", a.dele(1).decode())
print("quit", a.quit().decode())
b.user("alice")
print("third", b.pass_(password).decode())
print("stat", "%d %d" % b.stat())
b.quit()
"#;

/// Test 2: a second concurrent login gets [IN-USE]; the lock goes with the first session's
/// QUIT; mail delivered during the session survives its QUIT.
#[test]
fn second_concurrent_login_gets_in_use() {
    if !have("python3") {
        return;
    }
    let p = Pop::start(false, &[]);
    p.deliver("alice@example.test", &message(1));
    let out = python(
        PY_IN_USE,
        &[&p.pop3.to_string(), &p.s.addr.port().to_string(), PASSWORD],
    );
    let later = "Subject: later\r\n\r\narrived during the session\r\n";
    let files = p.files("alice");
    assert_eq!(files.len(), 1, "{out}");
    let content = String::from_utf8(std::fs::read(&files[0]).expect("read")).expect("UTF-8");
    assert!(content.ends_with(later), "{content}");
    assert_eq!(
        out,
        format!(
            "first +OK Logged in.\nsecond -ERR [IN-USE] Mailbox is locked by another POP3 session.\n\
             dele +OK Marked to be deleted.\nquit +OK Logging out.\nthird +OK Logged in.\nstat 1 {}\n",
            content.len()
        )
    );
}

/// Test 3: curl's pop3:// lists and retrieves.
#[test]
fn curl_lists_and_retrieves() {
    if !have("python3") || !have("curl") {
        return;
    }
    let p = Pop::start(false, &[]);
    let files = [
        p.deliver("alice@example.test", &message(1)),
        p.deliver("alice@example.test", &message(2)),
    ];
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "--user",
                &format!("alice:{PASSWORD}"),
            ])
            .arg(format!("pop3://127.0.0.1:{}/{path}", p.pop3))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&curl("")),
        format!("1 {}\r\n2 {}\r\n", contents[0].len(), contents[1].len())
    );
    assert_eq!(curl("2"), contents[1]);
}

const PY_FLAGS: &str = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
m.login(sys.argv[2], sys.argv[3])
m.select("INBOX", readonly=True)
typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
for item in data:
    if isinstance(item, tuple):
        flags = item[0].decode()
        subject = item[1].decode().strip()
        print(subject, "seen" if "\\Seen" in flags else "unseen")
m.logout()
"#;

/// Test 6: Dovecot and POP3 agree: a message RETRieved over POP3 is \Seen in Dovecot IMAP,
/// the other one is not.
#[test]
fn dovecot_sees_a_pop3_retrieved_message_as_seen() {
    if !have("python3") {
        return;
    }
    let p = Pop::start(false, &[]);
    p.deliver("alice@example.test", &message(1));
    p.deliver("alice@example.test", &message(2));
    let mailboxes = p.dir.path().join("mailboxes");
    give_to_mail_owner(&mailboxes);
    let Some(dovecot) = Dovecot::start(
        &p.dir.path().join("dovecot"),
        &mailboxes,
        &p.dir.path().join("users"),
    ) else {
        return;
    };
    let flags = || python(PY_FLAGS, &[&dovecot.port.to_string(), "alice", PASSWORD]);
    assert_eq!(
        flags(),
        "Subject: message 1 unseen\nSubject: message 2 unseen\n",
        "{}",
        dovecot.log_text()
    );
    // Dovecot has seen the Maildir (and may have moved the files to cur/): POP3 still finds
    // them, and its RETR flags message 2 only.
    let steps = p.client("plain", "alice", &["top 1 0", "retr 2", "quit"]);
    assert_eq!(result(&steps, "quit"), ["+OK Logging out."], "{steps:?}");
    assert_eq!(
        flags(),
        "Subject: message 1 unseen\nSubject: message 2 seen\n",
        "{}",
        dovecot.log_text()
    );
}

/// RFC 1939 autologout: an idle session is closed after --pop3-timeout, and what it marked
/// deleted stays.
#[test]
fn idle_session_times_out_and_deletes_nothing() {
    if !have("python3") {
        return;
    }
    let p = Pop::start(false, &["--pop3-timeout", "1"]);
    p.deliver("alice@example.test", &message(1));
    let before = p.files("alice");
    let steps = p.client("plain", "alice", &["dele 1", "wait"]);
    assert_eq!(
        result(&steps, "wait"),
        ["-ERR Disconnected for inactivity."],
        "{steps:?}"
    );
    assert_eq!(p.files("alice"), before);
    assert!(server_log(&p.s).contains("pop3: timeout from [127.0.0.1]"));
}

/// A large message streams from the file: RETR of a 20 MiB message is byte-identical, and
/// the server's peak memory does not grow by anything near the message's size.
#[test]
fn large_message_streams_without_being_held_in_memory() {
    if !have("python3") {
        return;
    }
    let p = Pop::start(false, &[]);
    let line = "x".repeat(78);
    let mut body = String::from("Subject: big\r\n\r\n");
    while body.len() < 20 * 1024 * 1024 {
        body.push_str(&line);
        body.push_str("\r\n.leading dot\r\n");
    }
    let file = p.deliver("alice@example.test", &body);
    let size = std::fs::metadata(&file).expect("stat").len();
    let sha = Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sha.stdout).into_owned();
    let hwm = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.s.child.id()))
            .expect("read status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
    };
    // A login first: verifying an argon2 password takes 19 MiB for a moment (on a login
    // thread), which is in the peak from then on; the RETR must add nothing near the message.
    let steps = p.client("plain", "alice", &["quit"]);
    assert_eq!(result(&steps, "login"), ["+OK Logged in."]);
    let before = hwm();
    let steps = p.client("plain", "alice", &["retrsha 1", "quit"]);
    assert_eq!(
        result(&steps, "retrsha"),
        [sha.split(' ').next().unwrap_or("")]
    );
    let grown = hwm().saturating_sub(before);
    eprintln!(
        "RETR of {} KiB: peak memory grew by {grown} KiB",
        size / 1024
    );
    assert!(
        grown < 8 * 1024,
        "peak memory grew by {grown} KiB for a {} KiB message",
        size / 1024
    );
}

/// Test 4, POP3 side: three wrong passwords from 127.0.0.2 ban it (the third answer says so
/// and the session is closed); then even the right password from 127.0.0.2 is refused at the
/// greeting with -ERR [AUTH], on the plain and the implicit TLS listener, while 127.0.0.3 logs
/// in; the ban is in the log.
#[test]
fn banned_address_gets_err_auth() {
    if !have("python3") || !have("openssl") {
        return;
    }
    let p = Pop::start(true, &["--auth-failure-delay", "50", "--ban-time", "600"]);
    let fail = "ERR -ERR [AUTH] Authentication failed.";
    let banned = "ERR -ERR [AUTH] Too many failed logins from your address; try later.";
    for want in [fail, fail, banned] {
        let steps = p.client_from("127.0.0.2", "plain", "alice", "wrong", &["quit"]);
        assert_eq!(result(&steps, "login"), [want], "{}", server_log(&p.s));
    }
    for mode in ["plain", "ssl"] {
        let steps = p.client_from("127.0.0.2", mode, "alice", PASSWORD, &["quit"]);
        assert_eq!(result(&steps, "connect"), [banned], "{mode}: {steps:?}");
    }
    let steps = p.client_from("127.0.0.3", "plain", "alice", PASSWORD, &["quit"]);
    assert_eq!(result(&steps, "login"), ["+OK Logged in."]);
    let log = server_log(&p.s);
    assert!(log.contains("ban ip=127.0.0.2 failures=3"), "{log}");
}

/// A raw POP3 connection: lines read with a deadline.
struct Raw {
    stream: std::io::BufReader<std::net::TcpStream>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Raw {
            stream: std::io::BufReader::new(s),
        }
    }

    /// The next line ("" at the end of the stream).
    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.stream.read_line(&mut l).expect("read a line");
        l
    }

    fn cmd(&mut self, c: &str) -> String {
        use std::io::Write;
        self.stream
            .get_mut()
            .write_all(format!("{c}\r\n").as_bytes())
            .expect("write");
        self.line()
    }
}

/// SIGTERM: a POP3 session waiting for a command gets -ERR [SYS/TEMP] and is closed without
/// an update (its DELE is not carried out), and smtpd exits 0.
#[test]
fn stop_signal_closes_pop3_sessions_without_update() {
    if !have("python3") {
        return;
    }
    let mut p = Pop::start(false, &[]);
    p.deliver("alice@example.test", &message(1));
    let before = p.files("alice");
    let mut c = Raw::connect(p.pop3);
    assert!(c.line().starts_with("+OK "));
    assert_eq!(c.cmd("USER alice"), "+OK\r\n");
    assert_eq!(c.cmd(&format!("PASS {PASSWORD}")), "+OK Logged in.\r\n");
    assert_eq!(c.cmd("DELE 1"), "+OK Marked to be deleted.\r\n");
    p.s.signal(libc::SIGTERM);
    assert_eq!(c.line(), "-ERR [SYS/TEMP] Server shutting down.\r\n");
    assert_eq!(c.line(), "");
    assert_eq!(
        integration_tests::smtp::wait_exit(&mut p.s, Duration::from_secs(20)),
        Some(0),
        "{}",
        server_log(&p.s)
    );
    assert_eq!(p.files("alice"), before);
}

/// --max-connections counts SMTP and POP3 connections together.
#[test]
fn connection_limit_counts_both_protocols() {
    let p = Pop::start(false, &["--max-connections", "2"]);
    let mut smtp = Raw::connect(p.s.addr.port());
    assert!(smtp.line().starts_with("220 "));
    let mut first = Raw::connect(p.pop3);
    assert!(first.line().starts_with("+OK "));
    let mut second = Raw::connect(p.pop3);
    assert_eq!(second.line(), "-ERR [SYS/TEMP] Too many connections.\r\n");
    let mut third = Raw::connect(p.s.addr.port());
    assert!(third.line().starts_with("421 4.3.2"));
    assert_eq!(first.cmd("QUIT"), "+OK Logging out.\r\n");
    wait_for("the POP3 connection to go", Duration::from_secs(10), || {
        server_log(&p.s).contains("pop3: disconnect")
    });
    let mut again = Raw::connect(p.pop3);
    assert!(again.line().starts_with("+OK "));
}

/// The operator sees POP3 sessions: `smtpctl --json show sessions` lists a logged-in POP3
/// session with its state and user, and `show stats` counts its login with SMTP AUTH's.
#[test]
fn smtpctl_shows_pop3_sessions_and_counts_their_logins() {
    let p = Pop::start(false, &[]);
    let mut c = Raw::connect(p.pop3);
    assert!(c.line().starts_with("+OK "));
    assert_eq!(c.cmd("USER alice"), "+OK\r\n");
    assert_eq!(c.cmd(&format!("PASS {PASSWORD}")), "+OK Logged in.\r\n");
    let smtpctl = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(integration_tests::bin("smtpctl"))
            .arg("--maildir")
            .arg(&p.s.maildir)
            .arg("--json")
            .args(args)
            .output()
            .expect("run smtpctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let v = smtpctl(&["show", "sessions"]);
    let sessions = v["sessions"].as_array().expect("a sessions list");
    let pop = sessions
        .iter()
        .find(|s| s["state"] == "pop3 transaction")
        .unwrap_or_else(|| panic!("no POP3 session in {v}"));
    assert_eq!(pop["user"], "alice", "{v}");
    assert!(pop["bytes_in"].as_u64().is_some_and(|n| n > 0), "{v}");
    let stats = smtpctl(&["show", "stats"]);
    assert_eq!(stats["auth_successes"], 1, "{stats}");
    assert_eq!(c.cmd("QUIT"), "+OK Logging out.\r\n");
}

/// Deleting mail over POP3 frees quota at once (the usage is counted again after the removal
/// at QUIT, not only at the next periodic recount): alice over `--mailbox-quota` gets 452 at
/// RCPT until she deletes the large message, then mail for her is accepted.
#[test]
fn deleting_over_pop3_frees_quota_at_once() {
    let p = Pop::start(false, &["--mailbox-quota", "1000"]);
    // Put there behind smtpd's back: its count (made at start) still says 0.
    let new = p.mailbox("alice").join("new");
    std::fs::create_dir_all(&new).expect("mkdir");
    for d in ["cur", "tmp"] {
        std::fs::create_dir_all(p.mailbox("alice").join(d)).expect("mkdir");
    }
    std::fs::write(new.join("1795490000.M1P1.big,S=5000"), vec![b'x'; 5000]).expect("big");
    std::fs::write(new.join("1795490001.M2P1.small,S=100"), vec![b'y'; 100]).expect("small");
    let rcpt = || {
        let mut c = Raw::connect(p.s.addr.port());
        assert!(c.line().starts_with("220 "));
        assert!(c.cmd("HELO client.test").starts_with("250 "));
        assert!(c.cmd("MAIL FROM:<s@far.test>").starts_with("250 "));
        c.cmd("RCPT TO:<alice@example.test>")
    };
    // Deletes the message of `size` octets over POP3 (LIST finds it), then QUITs.
    let delete = |size: usize| {
        let mut c = Raw::connect(p.pop3);
        assert!(c.line().starts_with("+OK "));
        assert_eq!(c.cmd("USER alice"), "+OK\r\n");
        assert_eq!(c.cmd(&format!("PASS {PASSWORD}")), "+OK Logged in.\r\n");
        assert!(c.cmd("LIST").starts_with("+OK"));
        let mut which = None;
        loop {
            let l = c.line();
            if l == ".\r\n" || l.is_empty() {
                break;
            }
            let mut f = l.split_whitespace();
            if let (Some(n), Some(s)) = (f.next(), f.next())
                && s == size.to_string()
            {
                which = Some(n.to_owned());
            }
        }
        let n = which.unwrap_or_else(|| panic!("no message of {size} octets listed"));
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
        assert!(c.cmd("QUIT").starts_with("+OK"));
        assert_eq!(c.line(), "", "closed after the update");
    };
    delete(100);
    let r = rcpt();
    assert!(r.starts_with("452 4.2.2"), "{r}\n{}", server_log(&p.s));
    delete(5000);
    let r = rcpt();
    assert!(r.starts_with("250 "), "{r}\n{}", server_log(&p.s));
}
