//! `sendmail` (issue 17): messages queued with no network and no smtpd, by programs nobody here
//! wrote (Python's subprocess and smtplib, git send-email, bsd-mailx), then relayed by
//! smtp-relay to a recording sink; the sysexits codes; `-bp` through smtp-relay.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use integration_tests::relay::{Sink, relay, temp_maildir, text, without_envelope};
use integration_tests::{bin, have, list, wait_for};

/// The files in the queue's `new/`, read.
fn queued(md: &maildir_core::Maildir) -> Vec<(PathBuf, Vec<u8>)> {
    list(md.new_dir())
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read queue file");
            (p, b)
        })
        .collect()
}

/// The envelope recipients (`X-Original-To`) of a queue file.
fn envelope_rcpts(file: &[u8]) -> Vec<String> {
    text(file)
        .lines()
        .take_while(|l| !l.starts_with("Received:"))
        .filter_map(|l| l.strip_prefix("X-Original-To: "))
        .map(String::from)
        .collect()
}

/// Relays the queue to the sink as a smarthost; returns smtp-relay's stdout.
fn relay_to(md: &maildir_core::Maildir, sink: &Sink) -> String {
    let host = format!("127.0.0.1:{}", sink.port);
    let out = relay(
        md.root(),
        &["--once", "--smarthost", &host, "--timeout", "10"],
    );
    assert!(out.status.success(), "relay: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs sendmail with `args`, the queue in `SMTPD_MAILDIR`, `input` on stdin.
/// A relay run's output and the server's log, for an assertion's message.
fn run_report(out: &Output, s: &integration_tests::Smtpd) -> String {
    format!(
        "stdout: {}\nstderr: {}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        integration_tests::smtp::server_log(s)
    )
}

fn sendmail(queue: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin("sendmail"))
        .args(args)
        .env("SMTPD_MAILDIR", queue)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sendmail");
    let mut stdin = child.stdin.take().expect("stdin");
    // A failing sendmail may exit before reading everything: a broken pipe is its answer.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().expect("sendmail output")
}

const SUBPROCESS_T_I: &str = r#"
import subprocess, sys
msg = (b"From: Ann <ann@src.test>\n"
       b"To: Bob <bob@one.test>, carol@two.test\n"
       b"Cc: team: dave@one.test;\n"
       b"Bcc: eve@secret.test\n"
       b"Subject: cron output\n"
       b"\n"
       b"line one\n"
       b".\n"
       b"..two dots\n"
       b"last line\n")
r = subprocess.run([sys.argv[1], "-t", "-i"], input=msg, capture_output=True)
sys.stdout.write("rc=%d err=%s" % (r.returncode, r.stderr.decode()))
"#;

/// `sendmail -t -i < message` from Python's subprocess: recipients from To/Cc/Bcc, Bcc gone
/// from the stored message, a lone dot kept (`-i`), Date and Message-ID added; smtp-relay then
/// sends it to the sink with every recipient and without the envelope or the Bcc.
#[test]
fn t_i_from_python_subprocess_is_queued_and_relayed() {
    let (_d, md) = temp_maildir();
    let sm = bin("sendmail");
    let out = Command::new("python3")
        .arg("-c")
        .arg(SUBPROCESS_T_I)
        .arg(&sm)
        .env("SMTPD_MAILDIR", md.root())
        .output()
        .expect("python3");
    assert_eq!(text(&out.stdout), "rc=0 err=", "{}", text(&out.stderr));
    let files = queued(&md);
    assert_eq!(files.len(), 1);
    let file = &files[0].1;
    let t = text(file);
    assert!(t.starts_with("Return-Path: <"), "{t}");
    assert_eq!(
        envelope_rcpts(file),
        [
            "<bob@one.test>",
            "<carol@two.test>",
            "<dave@one.test>",
            "<eve@secret.test>"
        ]
    );
    assert!(!t.to_ascii_lowercase().contains("bcc"), "{t}");
    assert!(!t.contains("eve@secret.test>\r\nSubject"), "{t}");
    assert!(
        t.contains("\r\nDate: ") && t.contains("\r\nMessage-ID: <"),
        "{t}"
    );
    assert!(
        t.ends_with("\r\n\r\nline one\r\n.\r\n..two dots\r\nlast line\r\n"),
        "{t}"
    );
    // Group-readable for the relay's user (the setgid design), not world-readable.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&files[0].0)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);

    let sink = Sink::start(&["127.0.0.1"], &[]);
    let summary = relay_to(&md, &sink);
    assert!(summary.contains("4 delivered"), "{summary}");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    let mut rcpts = msgs[0].3.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "<bob@one.test>",
            "<carol@two.test>",
            "<dave@one.test>",
            "<eve@secret.test>"
        ]
    );
    assert_eq!(msgs[0].4, without_envelope(file));
    assert!(!text(&msgs[0].4).contains("X-Original-To"));
    assert!(queued(&md).is_empty());
}

const SMTPLIB_PIPE: &str = r#"
import smtplib, subprocess, sys

class PipeSocket:
    """What smtplib needs of a socket, over a child's stdin and stdout."""
    def __init__(self, proc):
        self.proc = proc
    def sendall(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
    def makefile(self, mode):
        return self.proc.stdout
    def close(self):
        pass

class PipeSMTP(smtplib.SMTP):
    def __init__(self, argv):
        self.argv = argv
        super().__init__()
    def connect(self, host="localhost", port=0, source_address=None):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.sock = PipeSocket(self.proc)
        self.file = None
        code, msg = self.getreply()
        return code, msg

s = PipeSMTP([sys.argv[1], "-bs"])
print(s.connect()[0])
s.ehlo("client.test")
print("pipelining" if s.has_extn("pipelining") else "no-pipelining")
refused = s.sendmail("ann@src.test", ["bob@one.test", "carol@two.test"],
                     b"Subject: over a pipe\r\n\r\n.leading dot\r\nbody\r\n")
print("refused=%r" % refused)
code, _ = s.docmd("RCPT", "TO:<x@y.test>")
print("rcpt-without-mail=%d" % code)
print(s.quit()[0])
s.proc.stdin.close()
print("exit=%d" % s.proc.wait())
"#;

/// `-bs`: Python's smtplib speaks SMTP to sendmail over a pipe (the same session machine as
/// smtpd: EHLO extensions, 503 for RCPT without MAIL), and the message is queued.
#[test]
fn bs_driven_by_smtplib_over_a_pipe() {
    let (_d, md) = temp_maildir();
    let sm = bin("sendmail");
    let out = Command::new("python3")
        .arg("-c")
        .arg(SMTPLIB_PIPE)
        .arg(&sm)
        .env("SMTPD_MAILDIR", md.root())
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "220\npipelining\nrefused={}\nrcpt-without-mail=503\n221\nexit=0\n"
    );
    let files = queued(&md);
    assert_eq!(files.len(), 1);
    assert_eq!(
        envelope_rcpts(&files[0].1),
        ["<bob@one.test>", "<carol@two.test>"]
    );
    assert!(text(&files[0].1).contains("Received: from client.test"));
    assert!(text(&files[0].1).ends_with("\r\n\r\n.leading dot\r\nbody\r\n"));
}

/// `git send-email --sendmail-cmd` sends a patch from a throwaway repository through sendmail;
/// the queued message is the patch, relayed intact.
#[test]
fn git_send_email_sends_a_patch() {
    if !have("git") || !git_send_email_installed() {
        return;
    }
    let (_d, md) = temp_maildir();
    let repo = tempfile::tempdir().expect("repo dir");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .env("GIT_AUTHOR_NAME", "Ann Author")
            .env("GIT_AUTHOR_EMAIL", "ann@src.test")
            .env("GIT_COMMITTER_NAME", "Ann Author")
            .env("GIT_COMMITTER_EMAIL", "ann@src.test")
            .env("HOME", repo.path())
            .env("SMTPD_MAILDIR", md.root())
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("hello.txt"), "hello\n").expect("write");
    git(&["add", "hello.txt"]);
    git(&["commit", "-q", "-m", "Add a greeting"]);
    let patch = git(&["format-patch", "-1", "--root", "-o", "patches"]);
    let cmd = format!("{} -i", bin("sendmail").display());
    git(&[
        "send-email",
        "--sendmail-cmd",
        &cmd,
        "--to",
        "list@lists.test",
        "--cc",
        "maint@one.test",
        "--from",
        "Ann Author <ann@src.test>",
        "--envelope-sender",
        "ann@src.test",
        "--confirm=never",
        "--suppress-cc=all",
        "--no-chain-reply-to",
        patch.trim(),
    ]);
    let files = queued(&md);
    assert_eq!(files.len(), 1);
    let t = text(&files[0].1);
    assert_eq!(
        envelope_rcpts(&files[0].1),
        ["<list@lists.test>", "<maint@one.test>"]
    );
    assert!(t.starts_with("Return-Path: <ann@src.test>"), "{t}");
    assert!(t.contains("Subject: [PATCH] Add a greeting"), "{t}");
    assert!(t.contains("+hello\r\n"), "{t}");
    let sink = Sink::start(&["127.0.0.1"], &[]);
    assert!(relay_to(&md, &sink).contains("2 delivered"));
    assert_eq!(sink.messages()[0].4, without_envelope(&files[0].1));
}

fn git_send_email_installed() -> bool {
    let ok = Command::new("git")
        .args(["send-email", "-h"])
        .output()
        .map(|o| {
            text(&o.stdout).contains("sendmail-cmd") || text(&o.stderr).contains("sendmail-cmd")
        })
        .unwrap_or(false);
    if !ok {
        if integration_tests::peers_required() {
            panic!("git send-email is required; scripts/install-peers.sh installs git-email");
        }
        eprintln!("SKIPPED: git send-email is not installed");
    }
    ok
}

/// bsd-mailx sends through our sendmail (its `sendmail` variable, set in a `MAILRC` file of
/// the test's own: no system configuration changed).
#[test]
fn mailx_sends_through_it() {
    if !have("bsd-mailx") {
        return;
    }
    let (_d, md) = temp_maildir();
    let home = tempfile::tempdir().expect("home");
    let rc = home.path().join("mailrc");
    std::fs::write(&rc, format!("set sendmail={}\n", bin("sendmail").display())).expect("rc");
    use std::io::Write;
    let mut child = Command::new("bsd-mailx")
        .args(["-s", "disk almost full", "ops@one.test"])
        .env("MAILRC", &rc)
        .env("HOME", home.path())
        .env("SMTPD_MAILDIR", md.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mailx");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"/var is 95% full\n.\nstill the body\n")
        .expect("write");
    let out = child.wait_with_output().expect("mailx");
    assert!(out.status.success(), "{}", text(&out.stderr));
    integration_tests::wait_for(
        "mailx's sendmail to queue",
        std::time::Duration::from_secs(20),
        || !queued(&md).is_empty(),
    );
    let files = queued(&md);
    let t = text(&files[0].1);
    assert_eq!(envelope_rcpts(&files[0].1), ["<ops@one.test>"]);
    assert!(t.contains("Subject: disk almost full"), "{t}");
    assert!(t.contains("/var is 95% full\r\n"), "{t}");
    let sink = Sink::start(&["127.0.0.1"], &[]);
    assert!(relay_to(&md, &sink).contains("1 delivered"));
    assert_eq!(sink.messages()[0].3, ["<ops@one.test>"]);
}

/// The sysexits codes: usage (64), a refused recipient (67), no queue configured (78), a
/// queue that is not there (73), a message too big (65); nothing is queued by any of them.
#[test]
fn exit_codes() {
    let (_d, md) = temp_maildir();
    let q = md.root();
    let msg = b"Subject: x\n\nbody\n";
    let code = |o: &Output| o.status.code();
    let o = sendmail(q, &["-Z", "a@one.test"], msg);
    assert_eq!(code(&o), Some(64), "{}", text(&o.stderr));
    let o = sendmail(q, &[], msg);
    assert_eq!(code(&o), Some(64), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no recipients"));
    let o = sendmail(q, &["-t"], msg);
    assert_eq!(code(&o), Some(64));
    let o = sendmail(q, &["bad address@one.test"], msg);
    assert_eq!(code(&o), Some(67), "{}", text(&o.stderr));
    let o = sendmail(&q.join("missing"), &["a@one.test"], msg);
    assert_eq!(code(&o), Some(73), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("missing"));
    let o = Command::new(bin("sendmail"))
        .args(["-C", "/nonexistent/smtpd.toml", "a@one.test"])
        .env_remove("SMTPD_MAILDIR")
        .stdin(Stdio::null())
        .output()
        .expect("sendmail");
    assert_eq!(code(&o), Some(78), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("/nonexistent/smtpd.toml"));
    let conf = tempfile::NamedTempFile::new().expect("conf");
    std::fs::write(conf.path(), "hostname = \"x.test\"\n").expect("write");
    let o = Command::new(bin("sendmail"))
        .arg("-C")
        .arg(conf.path())
        .arg("a@one.test")
        .env_remove("SMTPD_MAILDIR")
        .stdin(Stdio::null())
        .output()
        .expect("sendmail");
    assert_eq!(code(&o), Some(78), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("no queue configured"),
        "{}",
        text(&o.stderr)
    );
    let big = vec![b'x'; 26 * 1024 * 1024];
    let o = sendmail(q, &["a@one.test"], &big);
    assert_eq!(code(&o), Some(65), "{}", text(&o.stderr));
    assert!(queued(&md).is_empty());
    assert!(list(md.tmp_dir()).is_empty());
    // -C naming a file whose maildir is the queue works like the environment.
    std::fs::write(conf.path(), format!("maildir = \"{}\"\n", q.display())).expect("write");
    let o = Command::new(bin("sendmail"))
        .arg("-C")
        .arg(conf.path())
        .args(["-f", "me@src.test", "-F", "Me Myself", "a@one.test"])
        .env_remove("SMTPD_MAILDIR")
        .stdin(Stdio::null())
        .output()
        .expect("sendmail");
    assert_eq!(code(&o), Some(0), "{}", text(&o.stderr));
    let t = text(&queued(&md)[0].1);
    assert!(t.starts_with("Return-Path: <me@src.test>\r\n"), "{t}");
    assert!(t.contains("From: \"Me Myself\" <me@src.test>\r\n"), "{t}");
}

/// `-bp` is `smtp-relay --list` on the same queue; `-odi -oem -v` are accepted (`-v` reports
/// the queue ID); `-q` is one smtp-relay run (here on an empty queue: its summary line).
#[test]
fn bp_lists_the_queue_through_smtp_relay() {
    let (_d, md) = temp_maildir();
    let o = sendmail(md.root(), &["-q"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("smtp-relay: 0 delivered, 0 deferred, 0 bounced"),
        "{}",
        text(&o.stdout)
    );
    let o = sendmail(
        md.root(),
        &["-odi", "-oem", "-v", "-f", "ann@src.test", "zed@one.test"],
        b"Subject: listed\n\nx\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let id = text(&o.stderr)
        .trim()
        .strip_prefix("sendmail: queued as ")
        .expect("queue id on stderr with -v")
        .to_owned();
    assert_eq!(queued(&md).len(), 1);
    let o = sendmail(md.root(), &["-bp"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let listing = text(&o.stdout);
    assert!(listing.contains(&id), "{listing}");
    assert!(listing.contains("zed@one.test"), "{listing}");
}

/// Local recipients through sendmail (issue 17): a message queued by sendmail for a domain the
/// local smtpd delivers goes through smtp-relay's `--transport DOMAIN=127.0.0.1:PORT` to that
/// smtpd and lands in the user's Maildir, although smtpd greets with the relay's own HELO
/// name (no loop check for a route configured on purpose) and a smarthost pointing at the same
/// server is set (the transport wins for its domain). Without the transport, the smarthost
/// route keeps the check: the same server is refused as "loops back to myself".
#[test]
fn local_recipient_reaches_the_mailbox_through_a_transport() {
    use integration_tests::smtp;
    let dir = tempfile::tempdir().expect("temp dir");
    let (users, aliases, mailboxes) = (
        dir.path().join("users"),
        dir.path().join("aliases"),
        dir.path().join("mailboxes"),
    );
    std::fs::write(&users, "alice:*::::\n").expect("write users");
    std::fs::write(&aliases, "postmaster: alice\n").expect("write aliases");
    let (users, aliases, mailboxes_arg) = (
        users.to_string_lossy().into_owned(),
        aliases.to_string_lossy().into_owned(),
        mailboxes.to_string_lossy().into_owned(),
    );
    // smtp::start gives smtpd `--hostname smtp::HOST`; the relay says the same in EHLO.
    let s = smtp::start(&[
        "--local-domain",
        "example.test",
        "--mailboxes",
        &mailboxes_arg,
        "--users",
        &users,
        "--aliases",
        &aliases,
    ]);
    let server = format!("127.0.0.1:{}", s.addr.port());
    let alice_new = mailboxes.join("alice").join("new");

    let (_q, md) = temp_maildir();
    let body = b"Subject: from cron\n\nline one\n.\n..two dots\nlast line\n";
    let o = sendmail(
        md.root(),
        &["-i", "-f", "ann@src.test", "alice@Example.TEST"],
        body,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(queued(&md).len(), 1);
    let transport = format!("example.test.={server}");
    // One pass of the relay over the queue through `routes`, greeting as smtpd's own name.
    let relay_once = |routes: &[&str]| {
        let mut args = vec!["--once"];
        args.extend_from_slice(routes);
        args.extend_from_slice(&["--helo", smtp::HOST, "--timeout", "10"]);
        relay(md.root(), &args)
    };
    let out = relay_once(&["--transport", &transport, "--smarthost", &server]);
    let report = run_report(&out, &s);
    assert!(out.status.success(), "{report}");
    assert!(text(&out.stdout).contains("1 delivered"), "{report}");
    assert!(
        queued(&md).is_empty(),
        "the queue is empty afterwards\n{report}"
    );
    // smtpd delivers before it answers the final dot; wait all the same, with a deadline.
    wait_for("alice's copy", Duration::from_secs(10), || {
        list(&alice_new).len() == 1
    });
    let copy = text(&std::fs::read(&list(&alice_new)[0]).expect("read alice's copy"));
    assert!(copy.contains("\r\nSubject: from cron\r\n"), "{copy}");
    assert!(
        copy.ends_with("\r\n\r\nline one\r\n.\r\n..two dots\r\nlast line\r\n"),
        "{copy}"
    );
    assert!(copy.contains(&format!("by {}", smtp::HOST)), "{copy}");

    // The same server as a smarthost, no transport: the loop check still applies.
    let o = sendmail(
        md.root(),
        &["-f", "ann@src.test", "alice@example.test"],
        body,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = relay_once(&["--smarthost", &server]);
    let report = run_report(&out, &s);
    assert!(out.status.success(), "{report}");
    assert!(text(&out.stdout).contains("1 bounced"), "{report}");
    assert!(
        text(&out.stderr).contains("loops back to myself"),
        "{report}"
    );
    assert_eq!(list(&alice_new).len(), 1, "nothing more for alice");
    // The bounce to ann is queued for the relay, saying why.
    let dsns = queued(&md);
    assert_eq!(dsns.len(), 1, "{report}");
    let dsn = text(&dsns[0].1);
    assert!(dsn.starts_with("Return-Path: <>\r\n"), "{dsn}");
    assert!(dsn.contains("loops back to myself"), "{dsn}");
    std::fs::remove_file(&dsns[0].0).expect("remove the DSN");

    // One message, one recipient per route, both routes to the same address in one run: the
    // transport's session takes alice, the smarthost's (a session of its own) refuses bob.
    let o = sendmail(
        md.root(),
        &[
            "-f",
            "ann@src.test",
            "alice@example.test",
            "bob@elsewhere.test",
        ],
        body,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = relay_once(&["--transport", &transport, "--smarthost", &server]);
    let report = run_report(&out, &s);
    assert!(out.status.success(), "{report}");
    let summary = text(&out.stdout);
    assert!(
        summary.contains("1 delivered") && summary.contains("1 bounced"),
        "{report}"
    );
    wait_for("alice's second copy", Duration::from_secs(10), || {
        list(&alice_new).len() == 2
    });
    let dsns = queued(&md);
    assert_eq!(dsns.len(), 1, "{report}");
    let dsn = text(&dsns[0].1);
    assert!(dsn.contains("bob@elsewhere.test"), "{dsn}");
    assert!(!dsn.contains("Final-Recipient: rfc822; alice@"), "{dsn}");
}
