//! Local delivery (issue 12), tests 1-5, 7 and 8 of the issue against the real `smtpd` binary:
//! `--local-domain`, `--mailboxes`, `--users`, `--aliases`, `--recipient-delimiter`,
//! `--mailbox-quota`. Clients are Python's `smtplib` and the raw-socket client of
//! `tests/src/smtp.rs`; users' Maildirs are read back with Python's `mailbox.Maildir`; the
//! forwarded part goes through the real `smtp-relay` to the recording sink (`tests/py/sink.py`).
//! Test 6 (Dovecot) is in `local_dovecot.rs`. BDAT (CHUNKING) to local users is checked like
//! DATA, on a raw socket (smtplib cannot send BDAT).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::relay::{Dns, Sink, relay, run_args, without_envelope};
use integration_tests::smtp::{
    self, Client, Load, Stored, parse_stored, server_log, start, stored,
};
use integration_tests::{Smtpd, bin, have, list, python, wait_for};

const USERS: &str = "# users of example.test\nalice:*::::\nbob:*::::\ncarol:::::\n";
const ALIASES: &str =
    "# aliases\npostmaster: alice\nsales: carol,\n  partner@far.test\nteam: alice, bob\n";

/// A smtpd delivering for `example.test`, with its users, aliases and mailboxes in a directory
/// of its own (the queue Maildir is in the server's).
struct Local {
    s: Smtpd,
    dir: tempfile::TempDir,
}

impl Local {
    /// Starts smtpd for `example.test` with [`USERS`], [`ALIASES`] and `extra` arguments.
    fn start(extra: &[&str]) -> Local {
        Local::start_with(USERS, ALIASES, extra, |_| {})
    }

    /// Like [`Local::start`] with given files; `prepare` runs on the mailboxes directory first.
    fn start_with(
        users: &str,
        aliases: &str,
        extra: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Local {
        let dir = tempfile::tempdir().expect("temp dir");
        let (u, a, m) = paths(dir.path());
        std::fs::write(&u, users).expect("write users");
        std::fs::write(&a, aliases).expect("write aliases");
        prepare(&m);
        let mut args: Vec<&str> = vec!["--local-domain", "example.test", "--mailboxes"];
        let (u, a, m) = (
            u.to_string_lossy().into_owned(),
            a.to_string_lossy().into_owned(),
            m.to_string_lossy().into_owned(),
        );
        args.extend([m.as_str(), "--users", u.as_str(), "--aliases", a.as_str()]);
        args.extend_from_slice(extra);
        Local {
            s: start(&args),
            dir,
        }
    }

    fn mailboxes(&self) -> PathBuf {
        self.dir.path().join("mailboxes")
    }

    /// Files in a user's `new/`.
    fn new_of(&self, user: &str) -> Vec<PathBuf> {
        list(&self.mailboxes().join(user).join("new"))
    }

    /// The user's messages, read with Python's `mailbox.Maildir`.
    fn messages(&self, user: &str) -> Vec<Copy> {
        maildir_messages(&self.mailboxes().join(user))
    }

    fn port(&self) -> String {
        self.s.addr.port().to_string()
    }

    fn log(&self) -> String {
        server_log(&self.s)
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("users"),
        dir.join("aliases"),
        dir.join("mailboxes"),
    )
}

/// One message of a user's Maildir: the file's bytes and what Python's `email` parser reads in
/// its header.
#[derive(Debug, Clone)]
struct Copy {
    raw: Vec<u8>,
    return_path: String,
    delivered_to: Vec<String>,
    original_to: Vec<String>,
}

impl Copy {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The copy as the queue parser sees a stored file: `Return-Path`, `Delivered-To` and
    /// `X-Original-To` must be the first three lines, in this order, then `Received:`.
    fn stored(&self, path: &Path) -> Stored {
        let text = self.raw.as_slice();
        let mut lines = text.split_inclusive(|&b| b == b'\n');
        let mut head = Vec::new();
        for _ in 0..3 {
            let l = lines
                .next()
                .unwrap_or_else(|| panic!("short copy: {}", self.text()));
            head.push(String::from_utf8_lossy(l).into_owned());
        }
        assert!(head[0].starts_with("Return-Path: <"), "{}", self.text());
        assert!(head[1].starts_with("Delivered-To: "), "{}", self.text());
        assert!(head[2].starts_with("X-Original-To: "), "{}", self.text());
        assert!(head.iter().all(|l| l.ends_with("\r\n")), "{}", self.text());
        // Without the Delivered-To line it is in the format the queue parser reads.
        let mut as_queue = head[0].clone().into_bytes();
        as_queue.extend_from_slice(head[2].as_bytes());
        let skip = head.iter().map(String::len).sum::<usize>();
        as_queue.extend_from_slice(&self.raw[skip..]);
        let tmp = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(tmp.path(), &as_queue).expect("write temp");
        let mut st = parse_stored(tmp.path()).unwrap_or_else(|e| panic!("{e}\n{}", self.text()));
        st.path = path.to_path_buf();
        st
    }
}

/// Reads every message (new/ and cur/) of a Maildir with Python's `mailbox.Maildir`.
const PY_MAILDIR: &str = r#"
import mailbox, sys
md = mailbox.Maildir(sys.argv[1], factory=None, create=False)
out = sys.stdout.buffer
for key in sorted(md.keys()):
    raw = md.get_bytes(key)
    m = md.get_message(key)
    f = lambda name: "\x1f".join(str(v) for v in (m.get_all(name) or []))
    head = "%s\t%s\t%s" % (m.get("Return-Path", ""), f("Delivered-To"), f("X-Original-To"))
    out.write(b"%d %d\n" % (len(head.encode()), len(raw)))
    out.write(head.encode())
    out.write(raw)
"#;

fn maildir_messages(dir: &Path) -> Vec<Copy> {
    if !dir.exists() {
        return Vec::new();
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY_MAILDIR)
        .arg(dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "mailbox.Maildir on {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rest = out.stdout.as_slice();
    let mut v = Vec::new();
    while !rest.is_empty() {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .expect("framed output");
        let lens = String::from_utf8_lossy(&rest[..nl]).into_owned();
        let (h, r) = lens.split_once(' ').expect("two lengths");
        let (h, r): (usize, usize) = (h.parse().expect("len"), r.parse().expect("len"));
        let body = &rest[nl + 1..];
        let head = String::from_utf8_lossy(&body[..h]).into_owned();
        let raw = body[h..h + r].to_vec();
        rest = &body[h + r..];
        let f: Vec<&str> = head.split('\t').collect();
        let split = |s: &str| -> Vec<String> {
            s.split('\x1f')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        v.push(Copy {
            raw,
            return_path: f[0].to_owned(),
            delivered_to: split(f[1]),
            original_to: split(f[2]),
        });
    }
    v
}

/// One transaction with smtplib: EHLO client.test, MAIL, each RCPT, then DATA if any RCPT got
/// 250. Prints `rcpt ADDR CODE TEXT` per recipient and `data CODE TEXT`.
const PY_SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpts, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=30)
s.ehlo()
code, text = s.mail(sender)
print("mail", code, text.decode())
ok = 0
for r in rcpts.split(","):
    code, text = s.rcpt(r)
    print("rcpt", r, code, text.decode())
    ok += code == 250
if ok:
    code, text = s.data(msg.encode())
    print("data", code, text.decode())
s.quit()
"#;

/// What one smtplib transaction got back.
struct Sent {
    out: String,
}

impl Sent {
    fn rcpt(&self, addr: &str) -> &str {
        let prefix = format!("rcpt {addr} ");
        self.out
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no RCPT {addr} in {}", self.out))
    }

    fn data(&self) -> &str {
        self.out
            .lines()
            .find_map(|l| l.strip_prefix("data "))
            .unwrap_or_else(|| panic!("no DATA reply in {}", self.out))
    }
}

fn send(l: &Local, sender: &str, rcpts: &[&str], msg: &str) -> Sent {
    let out = python(
        PY_SEND,
        &["127.0.0.1", &l.port(), sender, &rcpts.join(","), msg],
    );
    Sent { out }
}

/// The message the tests send: its own header section names no recipient (Bcc privacy is
/// checked on the copies), a dot-stuffed line on the wire.
fn message(subject: &str) -> String {
    format!(
        "From: Sender <s@far.test>\r\nTo: undisclosed-recipients:;\r\nSubject: {subject}\r\nMessage-ID: <{}@far.test>\r\n\r\nHello.\r\n.a line starting with a dot\r\nlast line\r\n",
        subject.replace(' ', "-")
    )
}

/// Asserts one local copy: the three delivery header lines exactly, then the `Received:` of
/// this server for a client saying `client.test` on 127.0.0.1, then the message as sent.
fn check_copy(c: &Copy, sender: &str, delivered_to: &str, original_to: &str, msg: &str) -> String {
    let want = format!(
        "Return-Path: <{sender}>\r\nDelivered-To: {delivered_to}\r\nX-Original-To: {original_to}\r\nReceived: "
    );
    assert!(
        c.text().starts_with(&want),
        "copy does not start {want:?}:\n{}",
        c.text()
    );
    // Python's email parser agrees.
    assert_eq!(c.return_path, format!("<{sender}>"));
    assert_eq!(c.delivered_to, [delivered_to]);
    assert_eq!(c.original_to, [original_to]);
    let st = c.stored(Path::new("copy"));
    let id = st
        .check_received("client.test", "127.0.0.1")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&st.body),
        msg,
        "the message after the trace header"
    );
    id
}

fn local_log_line(to: &str, orig: &str) -> String {
    format!("to=<{to}>, orig_to=<{orig}>, relay=local, status=delivered")
}

/// Test 1: an untrusted client (trusted is 10.0.0.0/8, the client is on 127.0.0.1) sends to a
/// local user: 250, one file in `mailboxes/alice/new` (mode 0700 directories) with
/// `Return-Path`, `Delivered-To`, `X-Original-To`, `Received:`, then the message; nothing in
/// the relay queue; one log line `relay=local, status=delivered`.
#[test]
fn untrusted_client_delivers_to_a_local_user() {
    if !have("python3") {
        return;
    }
    let l = Local::start(&["--trust", "10.0.0.0/8"]);
    let msg = message("to alice");
    let r = send(&l, "s@far.test", &["alice@example.test"], &msg);
    assert!(
        r.rcpt("alice@example.test").starts_with("250 2.1.5"),
        "{}",
        r.out
    );
    assert!(r.data().starts_with("250 2.0.0"), "{}\n{}", r.out, l.log());
    let files = l.new_of("alice");
    assert_eq!(files.len(), 1, "{files:?}\n{}", l.log());
    let copies = l.messages("alice");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].raw, std::fs::read(&files[0]).expect("read copy"));
    let id = check_copy(
        &copies[0],
        "s@far.test",
        "alice@example.test",
        "alice@example.test",
        &msg,
    );
    // The reply names the id the trace header carries.
    assert!(r.data().contains(&id), "{} vs id {id}", r.data());
    use std::os::unix::fs::PermissionsExt;
    for d in ["", "new", "cur", "tmp"] {
        let p = l.mailboxes().join("alice").join(d);
        let mode = std::fs::metadata(&p)
            .expect("maildir dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{}", p.display());
    }
    assert!(list(&l.mailboxes().join("alice/tmp")).is_empty());
    assert!(l.s.new_files().is_empty(), "queued: {:?}", l.s.new_files());
    assert!(list(&l.s.maildir.join("tmp")).is_empty());
    assert!(
        !l.mailboxes().join("bob").exists(),
        "bob's Maildir is made on his first mail"
    );
    let line = local_log_line("alice@example.test", "alice@example.test");
    wait_for("the delivery log line", Duration::from_secs(10), || {
        l.log().matches(&line).count() == 1
    });
}

/// Test 2: from an untrusted client, an unknown local user gets `550 5.1.1 <addr>: Recipient
/// address rejected: User unknown` and a remote recipient `554 5.7.1`; the session goes on and
/// a later good RCPT (any case) is delivered; `postmaster@` and the bare `<Postmaster>` reach
/// the user the aliases name.
#[test]
fn unknown_local_user_550_remote_554_then_a_good_recipient() {
    let l = Local::start(&["--trust", "10.0.0.0/8"]);
    let mut c = Client::greeted(l.s.addr);
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<s@far.test>", "250 2.1.0");
    let r = c.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(
        r.last(),
        "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown",
        "{}",
        c.transcript
    );
    let r = c.cmd("RCPT TO:<Nobody+tag@Example.Test>");
    assert!(r.starts("550 5.1.1 "), "{}", c.transcript);
    c.expect("RCPT TO:<someone@far.test>", "554 5.7.1");
    c.expect("RCPT TO:<someone@sub.example.test>", "554 5.7.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("RCPT TO:<Bob@example.test>", "250 2.1.5");
    c.expect("RCPT TO:<postmaster@example.test>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: two\r\n\r\nbody\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    // The bare <postmaster> (RFC 5321 §4.5.1) from the untrusted client: the local domain's.
    c.expect("MAIL FROM:<s@far.test>", "250 2.1.0");
    c.expect("RCPT TO:<Postmaster>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: bare\r\n\r\nbody\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    c.expect("QUIT", "221");
    let bob = l.messages("bob");
    assert_eq!(bob.len(), 1, "{}", l.log());
    assert_eq!(bob[0].delivered_to, ["bob@example.test"]);
    assert_eq!(bob[0].original_to, ["Bob@example.test"]);
    let mut alice = l.messages("alice");
    assert_eq!(alice.len(), 2, "postmaster is alice");
    alice.sort_by_key(|c| c.text().contains("Subject: bare"));
    assert_eq!(alice[0].delivered_to, ["alice@example.test"]);
    assert_eq!(alice[0].original_to, ["postmaster@example.test"]);
    assert_eq!(alice[1].delivered_to, ["alice@example.test"]);
    assert_eq!(alice[1].original_to, ["postmaster"]);
    assert!(!l.mailboxes().join("nobody").exists());
    assert!(l.s.new_files().is_empty());
}

/// Test 3: a trusted client sends one message to two local users, an alias that expands to a
/// local user and a remote address, and a remote recipient. Each local user has exactly one
/// copy with its own `Delivered-To` that names no other recipient; the queue file lists
/// exactly the two remote addresses; smtp-relay delivers them to the sink, and no local
/// address reaches the sink.
#[test]
fn trusted_client_local_alias_and_remote_recipients() {
    if !have("python3") {
        return;
    }
    let Some(dns) = Dns::start(&["far.test,mx.far.test,10"], &["mx.far.test,127.0.12.2"]) else {
        return;
    };
    let sink = Sink::start(&["127.0.12.2"], &[]);
    let l = Local::start(&[]); // loopback is trusted by default
    let msg = message("mixed");
    let rcpts = [
        "alice@example.test",
        "bob@example.test",
        "sales@example.test",
        "you@far.test",
    ];
    let r = send(&l, "s@far.test", &rcpts, &msg);
    for a in rcpts {
        assert!(r.rcpt(a).starts_with("250 2.1.5"), "{}", r.out);
    }
    assert!(r.data().starts_with("250 2.0.0"), "{}\n{}", r.out, l.log());

    let locals = [
        ("alice", "alice@example.test", "alice@example.test"),
        ("bob", "bob@example.test", "bob@example.test"),
        ("carol", "carol@example.test", "sales@example.test"),
    ];
    let mut ids = BTreeSet::new();
    for (user, to, orig) in locals {
        let copies = l.messages(user);
        assert_eq!(copies.len(), 1, "{user}: {}", l.log());
        ids.insert(check_copy(&copies[0], "s@far.test", to, orig, &msg));
        // Bcc privacy: a copy names its own recipient only.
        let text = copies[0].text();
        for other in rcpts.iter().chain(&["partner@far.test"]) {
            if *other != orig && *other != to {
                assert!(
                    !text.contains(other),
                    "{user}'s copy names {other}:\n{text}"
                );
            }
        }
    }
    assert_eq!(ids.len(), 1, "one message, one id: {ids:?}");

    let queued = stored(&l.s);
    assert_eq!(queued.len(), 1, "{}", l.log());
    let q = &queued[0];
    assert_eq!(q.return_path, "<s@far.test>");
    let got: BTreeSet<&str> = q.rcpts.iter().map(String::as_str).collect();
    assert_eq!(
        got,
        BTreeSet::from(["<partner@far.test>", "<you@far.test>"])
    );
    assert_eq!(String::from_utf8_lossy(&q.body), msg);

    for (_, to, orig) in locals {
        let line = local_log_line(to, orig);
        wait_for(&line, Duration::from_secs(10), || l.log().contains(&line));
    }

    let port = sink.port.to_string();
    let out = relay(&l.s.maildir, &run_args(&dns, &port));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 delivered"), "{stdout}");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let (_, _, from, to, data) = &msgs[0];
    assert_eq!(from, "<s@far.test>");
    let to: BTreeSet<&str> = to.iter().map(String::as_str).collect();
    assert_eq!(to, BTreeSet::from(["<partner@far.test>", "<you@far.test>"]));
    assert_eq!(data, &without_envelope(&q.raw));
    let text = String::from_utf8_lossy(data);
    for local in [
        "alice@",
        "bob@",
        "carol@",
        "sales@",
        "example.test",
        "Delivered-To",
    ] {
        assert!(!text.contains(local), "the sink received {local}:\n{text}");
    }
}

/// Test 4: `alice+news@` reaches alice (the tag is stripped for the lookup, kept in
/// `X-Original-To`), `ALICE@EXAMPLE.TEST` reaches alice; recipients that reach one user in one
/// message give one copy. With `--recipient-delimiter -`, `alice-news@` reaches alice and
/// `alice+news@` is unknown.
#[test]
fn recipient_delimiter_and_case_reach_the_user() {
    if !have("python3") {
        return;
    }
    let l = Local::start(&["--trust", "10.0.0.0/8"]);
    let r = send(
        &l,
        "s@far.test",
        &["alice+news@example.test"],
        &message("tagged"),
    );
    assert!(r.data().starts_with("250 2.0.0"), "{}\n{}", r.out, l.log());
    let r = send(&l, "s@far.test", &["ALICE@EXAMPLE.TEST"], &message("upper"));
    assert!(r.data().starts_with("250 2.0.0"), "{}\n{}", r.out, l.log());
    let r = send(
        &l,
        "s@far.test",
        &[
            "alice@example.test",
            "Alice+x@Example.Test",
            "team@example.test",
        ],
        &message("three ways"),
    );
    assert!(r.data().starts_with("250 2.0.0"), "{}", r.out);
    let copies = l.messages("alice");
    assert_eq!(copies.len(), 3, "{}", l.log());
    let mut by_subject: HashMap<String, &Copy> = HashMap::new();
    for c in &copies {
        assert_eq!(c.delivered_to, ["alice@example.test"], "{}", c.text());
        let subject = c
            .text()
            .lines()
            .find_map(|x| x.strip_prefix("Subject: ").map(|s| s.trim().to_owned()))
            .expect("subject");
        by_subject.insert(subject, c);
    }
    let orig = |s: &str| by_subject[s].original_to[0].to_ascii_lowercase();
    assert_eq!(orig("tagged"), "alice+news@example.test");
    assert_eq!(orig("upper"), "alice@example.test");
    assert_eq!(orig("three ways"), "alice@example.test");
    // team expands to alice and bob: bob got that one message too.
    let bob = l.messages("bob");
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].original_to, ["team@example.test"]);
    assert!(l.s.new_files().is_empty());

    let l = Local::start(&["--trust", "10.0.0.0/8", "--recipient-delimiter", "-"]);
    let r = send(
        &l,
        "s@far.test",
        &["alice+news@example.test", "alice-news@example.test"],
        &message("dash"),
    );
    assert!(
        r.rcpt("alice+news@example.test").starts_with("550 5.1.1"),
        "{}",
        r.out
    );
    assert!(
        r.rcpt("alice-news@example.test").starts_with("250"),
        "{}",
        r.out
    );
    assert!(r.data().starts_with("250 2.0.0"), "{}", r.out);
    let copies = l.messages("alice");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].original_to, ["alice-news@example.test"]);
}

/// Test 5: `--mailbox-quota 5000` (grace 10 %: a message may take a user under quota to
/// 5,500 octets, no further). A user at quota gets `452 4.2.2` at RCPT and the other recipients
/// of the same message still get their copy. A `SIZE=` declared on MAIL that would take a user
/// past the grace refuses that recipient only, at RCPT; one with room gets the message. Without `SIZE=`, the real size refuses
/// the whole message (`452 4.2.2 Mailbox full: <alice@...>`) at the end of DATA and of BDAT,
/// alone or with a recipient who has room: nobody gets it, nothing is queued or left in `tmp/`.
/// A message within the grace is delivered and puts the user over quota; the next is refused
/// at RCPT.
#[test]
fn user_over_quota_gets_452_others_still_receive() {
    if !have("python3") {
        return;
    }
    // bob already holds 6,000 octets, alice 3,000 (the size is read from the file name, as
    // Dovecot does).
    let l = Local::start_with(
        USERS,
        ALIASES,
        &["--trust", "10.0.0.0/8", "--mailbox-quota", "5000"],
        |m| {
            for (user, size) in [("bob", 6000), ("alice", 3000)] {
                let cur = m.join(user).join("cur");
                std::fs::create_dir_all(&cur).expect("mkdir");
                std::fs::create_dir_all(m.join(user).join("new")).expect("mkdir");
                std::fs::create_dir_all(m.join(user).join("tmp")).expect("mkdir");
                let name = format!("1700000000.M1P1.old,S={size}:2,S");
                std::fs::write(cur.join(name), vec![b'x'; size]).expect("write");
            }
        },
    );
    let msg = message("quota");
    let r = send(
        &l,
        "s@far.test",
        &[
            "alice@example.test",
            "bob@example.test",
            "carol@example.test",
        ],
        &msg,
    );
    assert!(
        r.rcpt("bob@example.test").starts_with("452 4.2.2"),
        "{}",
        r.out
    );
    assert!(r.rcpt("alice@example.test").starts_with("250"), "{}", r.out);
    assert!(r.rcpt("carol@example.test").starts_with("250"), "{}", r.out);
    assert!(r.data().starts_with("250 2.0.0"), "{}\n{}", r.out, l.log());
    assert_eq!(l.new_of("alice").len(), 1);
    assert_eq!(l.messages("carol").len(), 1);
    assert_eq!(l.messages("bob").len(), 1, "only the old message");
    assert!(l.new_of("bob").is_empty());

    // SIZE=2500 on MAIL: alice (about 3,400 octets) cannot take it, carol (about 400) can,
    // and gets it.
    let mut c = Client::greeted(l.s.addr);
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<s@far.test> SIZE=2500", "250 2.1.0");
    c.expect(
        "RCPT TO:<alice@example.test>",
        "452 4.2.2 <alice@example.test>: Recipient address rejected: Mailbox full",
    );
    c.expect("RCPT TO:<carol@example.test>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: declared\r\n\r\nbody\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    assert_eq!(l.new_of("alice").len(), 1);
    assert_eq!(l.messages("carol").len(), 2);

    // No SIZE=: accepted at RCPT; the end of DATA refuses the whole message for alice's sake,
    // alone or with carol (who has room), and so does the end of BDAT.
    let full = "452 4.2.2 Mailbox full: <alice@example.test>";
    let big = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(2500));
    let r = send(&l, "s@far.test", &["alice@example.test"], &big);
    assert!(r.rcpt("alice@example.test").starts_with("250"), "{}", r.out);
    assert!(r.data().starts_with(full), "{}\n{}", r.out, l.log());
    let r = send(
        &l,
        "s@far.test",
        &["alice@example.test", "carol@example.test"],
        &big,
    );
    assert!(r.rcpt("carol@example.test").starts_with("250"), "{}", r.out);
    assert!(r.data().starts_with(full), "{}\n{}", r.out, l.log());
    c.expect("MAIL FROM:<s@far.test>", "250 2.1.0");
    c.expect("RCPT TO:<alice@example.test>", "250 2.1.5");
    c.expect("RCPT TO:<carol@example.test>", "250 2.1.5");
    let mut wire = format!("BDAT {} LAST\r\n", big.len()).into_bytes();
    wire.extend_from_slice(big.as_bytes());
    c.send(&wire);
    c.expect_reply(full);
    // The session goes on.
    c.expect("NOOP", "250 2.0.0");
    assert_eq!(l.new_of("alice").len(), 1, "{}", l.log());
    assert_eq!(l.messages("carol").len(), 2, "{}", l.log());
    assert!(l.s.new_files().is_empty(), "nothing queued");
    assert!(list(&l.s.maildir.join("tmp")).is_empty());
    for u in ["alice", "carol"] {
        assert!(list(&l.mailboxes().join(u).join("tmp")).is_empty(), "{u}");
    }
    let refused = "rejected: mailbox full: a message of 2518 octets would exceed the quota of alice@example.test";
    wait_for("three refusals logged", Duration::from_secs(10), || {
        l.log().matches(refused).count() == 3
    });

    // Within the grace: alice takes a 1,819-octet message that brings her past 5,000 (not
    // past 5,500 by the count the check uses); then she is over quota and refused at RCPT,
    // and carol still receives.
    let fill = format!("Subject: fill\r\n\r\n{}\r\n", "y".repeat(1800));
    let r = send(&l, "s@far.test", &["alice@example.test"], &fill);
    assert!(r.data().starts_with("250 2.0.0"), "{}\n{}", r.out, l.log());
    let used: u64 = ["new", "cur"]
        .iter()
        .flat_map(|d| list(&l.mailboxes().join("alice").join(d)))
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert!(used > 5000, "alice holds {used} octets");
    let r = send(
        &l,
        "s@far.test",
        &["alice@example.test", "carol@example.test"],
        &msg,
    );
    assert!(
        r.rcpt("alice@example.test").starts_with("452 4.2.2"),
        "{}",
        r.out
    );
    assert!(r.data().starts_with("250 2.0.0"), "{}", r.out);
    assert_eq!(l.new_of("alice").len(), 2);
    assert_eq!(l.messages("carol").len(), 3);
}

/// BDAT (CHUNKING) delivers to local users exactly as DATA does: a raw socket sends
/// `BDAT n` and `BDAT n LAST` to alice (with a tag, in capitals) and to the alias `sales`
/// (carol and a remote address) from an untrusted client; each user's copy has
/// `Return-Path`, its own `Delivered-To` and `X-Original-To`, the `Received:` header, then the
/// octets sent (a line starting with a dot kept as is: BDAT is not dot-stuffed), names no
/// other recipient, and is logged; the queue file lists only the forwarded address.
#[test]
fn bdat_message_reaches_local_users_like_data() {
    if !have("python3") {
        return;
    }
    let l = Local::start(&["--trust", "10.0.0.0/8"]);
    let msg = message("by bdat");
    let (a, b) = msg.split_at(msg.len() / 2);
    let mut c = Client::greeted(l.s.addr);
    let ehlo = c.expect("EHLO client.test", "250");
    assert!(ehlo.texts().contains(&"CHUNKING"), "{:?}", ehlo.lines);
    c.expect("MAIL FROM:<s@far.test>", "250 2.1.0");
    c.expect("RCPT TO:<Alice+chunks@Example.Test>", "250 2.1.5");
    c.expect("RCPT TO:<sales@example.test>", "250 2.1.5");
    let mut wire = format!("BDAT {}\r\n{a}", a.len()).into_bytes();
    wire.extend_from_slice(format!("BDAT {} LAST\r\n{b}", b.len()).as_bytes());
    c.send(&wire);
    c.expect_reply(&format!("250 2.0.0 Ok: {} octets", a.len()));
    let done = c.expect_reply("250 2.0.0 Ok: queued as ");
    let copies = [
        ("alice", "alice@example.test", "Alice+chunks@Example.Test"),
        ("carol", "carol@example.test", "sales@example.test"),
    ];
    for (user, to, orig) in copies {
        let got = l.messages(user);
        assert_eq!(got.len(), 1, "{user}: {}", l.log());
        let id = check_copy(&got[0], "s@far.test", to, orig, &msg);
        assert_eq!(done.queue_id().as_deref(), Some(id.as_str()));
        let text = got[0].text();
        for other in ["Alice+chunks", "alice@", "sales@", "carol@", "partner@"] {
            if !orig.starts_with(other) && !to.starts_with(other) {
                assert!(
                    !text.contains(other),
                    "{user}'s copy names {other}:\n{text}"
                );
            }
        }
        let line = local_log_line(to, orig);
        wait_for(&line, Duration::from_secs(10), || l.log().contains(&line));
    }
    let queued = stored(&l.s);
    assert_eq!(queued.len(), 1, "{}", l.log());
    assert_eq!(queued[0].rcpts, ["<partner@far.test>"]);
    assert_eq!(String::from_utf8_lossy(&queued[0].body), msg);
    assert!(list(&l.s.maildir.join("tmp")).is_empty());
}

/// Test 1's loop rule: a message that already carries `Delivered-To: alice@example.test` is
/// refused for alice with `554 5.4.6` after DATA; nothing is delivered.
#[test]
fn delivered_to_loop_is_refused_554_5_4_6() {
    let l = Local::start(&["--trust", "10.0.0.0/8"]);
    let mut c = Client::greeted(l.s.addr);
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<s@far.test>", "250 2.1.0");
    c.expect("RCPT TO:<sales@example.test>", "250 2.1.5");
    c.expect("RCPT TO:<team@example.test>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Delivered-To: Alice@Example.Test\r\nSubject: loop\r\n\r\nbody\r\n.\r\n");
    c.expect_reply("554 5.4.6");
    // The session goes on: without the loop it is delivered.
    c.expect("MAIL FROM:<s@far.test>", "250 2.1.0");
    c.expect("RCPT TO:<bob@example.test>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Delivered-To: someone@elsewhere.test\r\nSubject: fine\r\n\r\nbody\r\n.\r\n");
    c.expect_reply("250 2.0.0");
    assert!(l.messages("alice").is_empty());
    assert!(
        l.messages("carol").is_empty(),
        "nothing of the looping message"
    );
    assert_eq!(l.messages("bob").len(), 1);
    assert!(l.s.new_files().is_empty(), "nothing forwarded either");
    for u in ["alice", "bob", "carol"] {
        assert!(
            list(&l.mailboxes().join(u).join("tmp")).is_empty(),
            "{u}/tmp"
        );
    }
}

// ---- test 7: SIGKILL under load --------------------------------------------------------

fn load_body(i: usize) -> Vec<u8> {
    let mut lines = vec![
        format!("Subject: load {i}"),
        format!("Message-ID: <load-{i}@far.test>"),
        String::new(),
    ];
    for k in 0..10 + (i * 37) % 150 {
        lines.push(format!("message {i} line {k} {}", "abcdefghij".repeat(5)));
        if k % 10 == 3 {
            lines.push(format!(".dot line {k}"));
        }
    }
    lines.push(format!("END {i}"));
    (lines.join("\r\n") + "\r\n").into_bytes()
}

/// Every file in `files` is complete: its message number, checked against the whole body, and
/// the queue id of its trace header. Panics on a partial file.
fn complete_messages(files: &[(PathBuf, Stored)]) -> HashMap<usize, String> {
    let mut seen = HashMap::new();
    for (path, st) in files {
        let subject = st
            .header("Subject")
            .unwrap_or_else(|| panic!("{}: no Subject (partial?)", path.display()));
        let i: usize = subject
            .strip_prefix("load ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: Subject {subject:?}", path.display()));
        assert!(
            st.body == load_body(i),
            "{}: message {i} is not complete ({} octets, want {})",
            path.display(),
            st.body.len(),
            load_body(i).len()
        );
        assert_eq!(st.return_path, format!("<load{i}@far.test>"));
        let id = st
            .check_received("load.test", "127.0.0.1")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            seen.insert(i, id).is_none(),
            "message {i} twice in one Maildir ({})",
            path.display()
        );
    }
    seen
}

/// Test 7: SIGKILL while 8 sessions send messages to two local users (directly and through an
/// alias) and a remote address: every message that got its 250 is complete in alice's and
/// bob's Maildirs and in the queue (for the remote address only); no file in any `new/` is
/// partial.
#[test]
fn sigkill_during_local_load_loses_nothing_acknowledged() {
    if !have("python3") {
        return;
    }
    const TOTAL: usize = 2000;
    const STOP_AFTER: usize = 150;
    let l = Local::start(&[]);
    // Message i goes to alice, bob, team (alice again, and bob) and r{i}@far.test.
    let load = Load::start(
        &l.port(),
        TOTAL,
        8,
        "far.test",
        &[
            "alice@example.test",
            "bob@example.test",
            "team@example.test",
            "r%d@far.test",
        ],
    );
    wait_for(
        &format!("{STOP_AFTER} messages acknowledged"),
        Duration::from_secs(120),
        || load.acks() >= STOP_AFTER,
    );
    l.s.signal(libc::SIGKILL);
    let lines = load.finish();
    let acked: Vec<(usize, String)> = lines
        .iter()
        .filter_map(|x| {
            let rest = x.strip_prefix("ACK ")?;
            let (i, reply) = rest.split_once(' ')?;
            Some((i.parse().ok()?, reply.to_owned()))
        })
        .collect();
    assert!(
        acked.len() < TOTAL,
        "the load finished before the kill: proves nothing"
    );

    let parse_dir = |files: Vec<PathBuf>, copy: bool| -> Vec<(PathBuf, Stored)> {
        files
            .into_iter()
            .map(|p| {
                let st = if copy {
                    let raw = std::fs::read(&p).expect("read");
                    let c = Copy {
                        raw,
                        return_path: String::new(),
                        delivered_to: Vec::new(),
                        original_to: Vec::new(),
                    };
                    c.stored(&p)
                } else {
                    parse_stored(&p).unwrap_or_else(|e| panic!("partial queue file: {e}"))
                };
                (p, st)
            })
            .collect()
    };
    let queue = parse_dir(l.s.new_files(), false);
    for (p, st) in &queue {
        let i: usize = st
            .header("Subject")
            .and_then(|s| s.strip_prefix("load ").and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("{}: no load Subject", p.display()));
        assert_eq!(st.rcpts, [format!("<r{i}@far.test>")], "{}", p.display());
    }
    let in_queue = complete_messages(&queue);
    let in_alice = complete_messages(&parse_dir(l.new_of("alice"), true));
    let in_bob = complete_messages(&parse_dir(l.new_of("bob"), true));
    for (i, reply) in &acked {
        for (what, seen) in [("queue", &in_queue), ("alice", &in_alice), ("bob", &in_bob)] {
            let id = seen.get(i).unwrap_or_else(|| {
                panic!(
                    "message {i} got {reply:?} but is not in {what} ({} acknowledged)",
                    acked.len()
                )
            });
            assert!(
                reply.contains(id.as_str()),
                "{what}: {reply:?} names not {id}"
            );
        }
    }
    // Python's mailbox reads every user Maildir (tmp/ leftovers are not messages).
    assert_eq!(l.messages("alice").len(), in_alice.len());
    assert_eq!(l.messages("bob").len(), in_bob.len());
    eprintln!(
        "SIGKILL under local load: {} acknowledged; complete: {} queue, {} alice, {} bob",
        acked.len(),
        in_queue.len(),
        in_alice.len(),
        in_bob.len()
    );
}

// ---- test 8: bad files -------------------------------------------------------------------

/// Runs smtpd with the files and expects exit 1 with one line on stderr that contains `want`
/// (with `FILE` standing for the path of the file concerned).
fn refuses(users: &str, aliases: &str, file: &str, want: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (u, a, m) = paths(dir.path());
    std::fs::write(&u, users).expect("write users");
    std::fs::write(&a, aliases).expect("write aliases");
    let path = if file == "users" { &u } else { &a };
    let want = want.replace("FILE", &path.to_string_lossy());
    let err = smtp::startup_failure(&[
        "--maildir",
        &dir.path().join("Maildir").to_string_lossy(),
        "--listen",
        "127.0.0.1:0",
        "--local-domain",
        "example.test",
        "--mailboxes",
        &m.to_string_lossy(),
        "--users",
        &u.to_string_lossy(),
        "--aliases",
        &a.to_string_lossy(),
    ]);
    assert!(err.starts_with("smtpd: "), "{err}");
    assert!(err.contains(&want), "{err:?} does not contain {want:?}");
    assert!(!m.exists(), "nothing created before the files are good");
}

/// Test 8: a syntax error in the users file and in the aliases file, an alias loop, an alias
/// naming nobody and a missing postmaster: exit 1, one line naming file and line.
#[test]
fn bad_users_or_aliases_files_exit_1_with_file_and_line() {
    refuses(
        "alice:*::::\n# two\nBob:*::::\n",
        "postmaster: alice\n",
        "users",
        "FILE:3: user \"Bob\"",
    );
    refuses(
        "alice:*::::\nbob:*:x:::\n",
        "postmaster: alice\n",
        "users",
        "FILE:2:",
    );
    refuses(
        USERS,
        "postmaster: alice\n\nsales carol\n",
        "aliases",
        "FILE:3: expected \"name: target, ...\"",
    );
    refuses(
        USERS,
        "postmaster: alice\na: b\n# c\nb: carol,\n  a\n",
        "aliases",
        "alias loop: ",
    );
    refuses(
        USERS,
        "postmaster: alice\na: b\n# c\nb: carol,\n  a\n",
        "aliases",
        "FILE:",
    );
    refuses(
        USERS,
        "postmaster: alice\nsales: dave\n",
        "aliases",
        "FILE:2: alias \"sales\": target \"dave\"",
    );
    refuses(USERS, "sales: carol\n", "aliases", "postmaster");
    refuses(USERS, "postmaster: |/bin/sh\n", "aliases", "FILE:1:");
}

/// Test 8, the interface: `--local-domain` without `--mailboxes` or `--users` is an error, and
/// `--help` lists every flag of the issue.
#[test]
fn local_flags_are_in_help_and_checked() {
    let out = Command::new(bin("smtpd"))
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--local-domain",
        "--mailboxes",
        "--users",
        "--aliases",
        "--recipient-delimiter",
        "--mailbox-quota",
        "hash-password",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(bin("smtpd"))
        .arg("--maildir")
        .arg(dir.path().join("Maildir"))
        .args(["--listen", "127.0.0.1:0", "--local-domain", "example.test"])
        .stdin(Stdio::null())
        .output()
        .expect("run smtpd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("--mailboxes"), "{err}");
}
