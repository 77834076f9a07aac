//! smtp-relay's client protocol against servers that break it or limit it (issue 10 items 4, 6,
//! 7, 9, 10, 11), through `tests/py/proto_sink.py`: a reply of the wrong class (250 to DATA, a
//! second greeting) is a deferral, never a delivery; a server calling itself by our `--helo`
//! name bounces the mail (5.4.6); a reply trickled a byte a second is cut at `--timeout`;
//! "452 too many recipients" and `--max-rcpt-per-transaction` mean more transactions in the
//! same session; a long header line arrives as a folded header; 8-bit mail never reaches a
//! server without 8BITMIME; SMTPUTF8 is needed only by the recipients that need it.
//! Each test uses its own 127.0.41.x address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::relay::{
    b64, queue, queue_sample, relay, sample, spawn_relay, temp_maildir,
};
use integration_tests::relay::{relay_ok as ok, state_of, text};
use integration_tests::{free_port, list, python, wait_for};
use maildir_core::Maildir;

/// `tests/py/proto_sink.py` with options; killed when dropped.
struct ProtoSink {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProtoSink {
    fn start(ip: &str, opts: &[&str]) -> ProtoSink {
        let port = free_port(ip);
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sink.log");
        let ready = dir.path().join("ready");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/proto_sink.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--listen")
            .arg(format!("{ip}:{port}"))
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .args(opts)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3 proto_sink.py");
        wait_for("proto sink to listen", Duration::from_secs(10), || {
            ready.exists()
        });
        ProtoSink {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn host(&self, ip: &str) -> String {
        format!("{ip}:{}", self.port)
    }

    fn lines(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }

    fn connections(&self) -> usize {
        self.lines().iter().filter(|f| f[0] == "connect").count()
    }

    /// Every command line received, decoded, without CRLF.
    fn commands(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter(|f| f[0] == "cmd" && f.len() == 3)
            .map(|f| String::from_utf8_lossy(&b64(&f[2])).trim_end().to_owned())
            .collect()
    }

    /// Messages received: (recipients, data).
    fn messages(&self) -> Vec<(Vec<String>, Vec<u8>)> {
        self.lines()
            .iter()
            .filter(|f| f[0] == "message" && f.len() == 4)
            .map(|f| (f[2].split(',').map(String::from).collect(), b64(&f[3])))
            .collect()
    }
}

impl Drop for ProtoSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args<'a>(host: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--once",
        "--smarthost",
        host,
        "--timeout",
        "5",
        "--helo",
        "relay.test",
    ];
    v.extend_from_slice(extra);
    v
}

/// The relay's log line for recipient `r` (`to=<r>, ...`).
fn log_line<'a>(stderr: &'a str, r: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| l.contains(&format!("to={r},")))
        .unwrap_or_else(|| panic!("no log line for {r}:\n{stderr}"))
}

/// Files in `cur/` whose name ends with `suffix`.
fn in_cur(md: &Maildir, name: &str, suffix: &str) -> bool {
    list(md.cur_dir()).iter().any(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(name) && n.ends_with(suffix))
    })
}

/// Item 4: one run against a server breaking the protocol as `opts` say: the mail (two
/// recipients) was moved to `cur/` as delivered before. Now it is deferred with `reason`, stays
/// in `new/`, and no content is counted as sent.
fn wrong_class_reply_defers(ip: &str, opts: &[&str], reason: &str) -> ProtoSink {
    let sink = ProtoSink::start(ip, opts);
    let (_d, md) = temp_maildir();
    let name = queue(
        &md,
        "<s@src.test>",
        &["<a@x.test>", "<b@x.test>"],
        &sample("p1", "a@x.test"),
    );
    let host = sink.host(ip);
    let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
    assert!(
        out.contains("0 delivered, 2 deferred, 0 bounced"),
        "{opts:?}: {out}\n{err}"
    );
    for r in ["<a@x.test>", "<b@x.test>"] {
        let l = log_line(&err, r);
        assert!(l.contains("status=deferred") && l.contains(reason), "{l}");
    }
    assert_eq!(list(md.new_dir()), vec![md.new_dir().join(&name)]);
    assert!(list(md.cur_dir()).is_empty(), "nothing finished");
    let st = state_of(&md, &name);
    assert!(!st.contains("delivered"), "{st}");
    assert!(st.contains("protocol error"), "{st}");
    assert!(sink.messages().is_empty());
    sink
}

/// Item 4: DATA answered with 250: no content was ever sent; deferred with 4.5.0.
#[test]
fn data_answered_250_is_deferred_not_delivered() {
    wrong_class_reply_defers(
        "127.0.41.2",
        &["--data-reply", "250 2.0.0 ok"],
        "451 4.5.0 protocol error: unexpected reply to DATA: 250 2.0.0 ok",
    );
}

/// Item 4: a second greeting shifts every later reply by one (the old relay then took the
/// RCPT reply for DATA's and counted the mail as sent); no transaction is even begun.
#[test]
fn second_greeting_is_deferred_not_delivered() {
    let sink = wrong_class_reply_defers(
        "127.0.41.10",
        &["--double-greeting"],
        "protocol error: reply to EHLO before it was sent: 220 sink.test ESMTP",
    );
    let cmds = sink.commands();
    assert!(
        !cmds.iter().any(|c| c.starts_with("MAIL")),
        "no transaction after a shifted reply: {cmds:?}"
    );
}

/// Item 6: the server greets with our own `--helo` name, or names itself so in its EHLO reply
/// (any case): the mail would come back to us. Bounced with 5.4.6 (not deferred for days),
/// nothing sent.
#[test]
fn mail_that_loops_back_to_myself_bounces() {
    let ip = "127.0.41.3";
    for opts in [
        &["--greeting", "220 relay.test ESMTP ready"][..],
        &["--ehlo-name", "RELAY.Test"][..],
    ] {
        let sink = ProtoSink::start(ip, opts);
        let (_d, md) = temp_maildir();
        let name = queue_sample(&md, "l1", "a@x.test");
        let host = sink.host(ip);
        let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
        assert!(
            out.contains("0 delivered, 0 deferred, 1 bounced"),
            "{out}\n{err}"
        );
        let l = log_line(&err, "<a@x.test>");
        assert!(
            l.contains("status=bounced") && l.contains("5.4.6 mail loops back to myself"),
            "{l}"
        );
        assert!(in_cur(&md, &name, ":2,T"), "{:?}", list(md.cur_dir()));
        let cmds = sink.commands();
        assert!(!cmds.iter().any(|c| c.starts_with("MAIL")), "{cmds:?}");
        assert!(cmds.iter().any(|c| c == "QUIT"), "{cmds:?}");
    }
}

/// Item 7: an MX trickling its EHLO reply one byte a second held a session for minutes with
/// `--timeout 3` (each byte restarted the clock). The deadline now counts from the command.
#[test]
fn trickled_reply_is_cut_at_the_timeout() {
    let ip = "127.0.41.4";
    let sink = ProtoSink::start(ip, &["--trickle", "1"]);
    let (_d, md) = temp_maildir();
    let name = queue_sample(&md, "t1", "a@x.test");
    let host = sink.host(ip);
    let mut a = args(&host, &[]);
    a[4] = "3"; // --timeout 3
    let t0 = Instant::now();
    let mut child = spawn_relay(md.root(), &a);
    // The EHLO reply is over 700 octets: trickled, it would take over 10 minutes.
    let limit = Duration::from_secs(60);
    let mut status = None;
    while t0.elapsed() < limit {
        status = child.try_wait().expect("wait for smtp-relay");
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("smtp-relay output");
    let took = t0.elapsed();
    let err = text(&out.stderr);
    assert!(
        status.is_some(),
        "smtp-relay still talking to the trickling server after {took:?} with --timeout 3\n{err}"
    );
    assert!(out.status.success(), "{err}");
    assert!(
        text(&out.stdout).contains("0 delivered, 1 deferred"),
        "{err}"
    );
    assert!(
        err.contains("timeout waiting for reply to EHLO"),
        "deferred for the reply timeout: {err}"
    );
    assert!(state_of(&md, &name).contains("timeout waiting for reply to EHLO"));
    assert!(sink.connections() == 1);
}

/// Item 9: "452 4.5.3 Too many recipients" beyond 2 per transaction: the rest go in further
/// transactions of the same session at once (they were deferred for 300 s).
#[test]
fn too_many_recipients_go_in_the_next_transaction() {
    let ip = "127.0.41.5";
    let sink = ProtoSink::start(ip, &["--max-rcpt", "2"]);
    let (_d, md) = temp_maildir();
    let rcpts = [
        "<a@x.test>",
        "<b@x.test>",
        "<c@x.test>",
        "<d@x.test>",
        "<e@x.test>",
    ];
    let name = queue(&md, "<s@src.test>", &rcpts, &sample("r1", "a@x.test"));
    let host = sink.host(ip);
    let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
    assert!(
        out.contains("5 delivered, 0 deferred, 0 bounced"),
        "{out}\n{err}"
    );
    assert_eq!(sink.connections(), 1, "one session");
    let msgs = sink.messages();
    let got: Vec<Vec<String>> = msgs.iter().map(|m| m.0.clone()).collect();
    assert_eq!(
        got,
        vec![
            vec!["<a@x.test>".to_string(), "<b@x.test>".into()],
            vec!["<c@x.test>".to_string(), "<d@x.test>".into()],
            vec!["<e@x.test>".to_string()],
        ]
    );
    assert!(
        msgs.iter().all(|m| m.1 == msgs[0].1),
        "the same content each time"
    );
    assert!(in_cur(&md, &name, ":2,P"));
}

/// Item 9: at most `--max-rcpt-per-transaction` (default 50) recipients per transaction.
#[test]
fn recipients_per_transaction_are_capped() {
    let ip = "127.0.41.6";
    let sink = ProtoSink::start(ip, &[]);
    let host = sink.host(ip);
    let many: Vec<String> = (0..120).map(|i| format!("<u{i:03}@x.test>")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (_d, md) = temp_maildir();
    queue(&md, "<s@src.test>", &many, &sample("m1", "u000@x.test"));
    let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
    assert!(out.contains("120 delivered, 0 deferred"), "{out}\n{err}");
    let sizes: Vec<usize> = sink.messages().iter().map(|m| m.0.len()).collect();
    assert_eq!(sizes, vec![50, 50, 20]);
    let (_d2, md2) = temp_maildir();
    queue(
        &md2,
        "<s@src.test>",
        &many[..10],
        &sample("m2", "u000@x.test"),
    );
    let (out, err) = ok(&relay(
        md2.root(),
        &args(&host, &["--max-rcpt-per-transaction", "7"]),
    ));
    assert!(out.contains("10 delivered, 0 deferred"), "{out}\n{err}");
    let sizes: Vec<usize> = sink.messages().iter().map(|m| m.0.len()).collect();
    assert_eq!(sizes, vec![50, 50, 20, 7, 3]);
    assert_eq!(sink.connections(), 2, "one session per run");
}

/// Item 10: a `References:` header of 3,000 octets was split with a bare CRLF, which made its
/// rest, and every header after it, body. It must arrive as one folded header field, with the
/// headers after it still headers (checked with Python's `email` parser).
#[test]
fn long_header_line_arrives_folded() {
    let ip = "127.0.41.7";
    let sink = ProtoSink::start(ip, &[]);
    let refs: String = (0..120)
        .map(|i| format!("<ref{i:04}.thread@lists.example.org>"))
        .collect();
    let msg = format!(
        "Received: from client.test by relay.test with ESMTP id h1; Tue, 24 Nov 2026 04:07:30 +0000\r\n\
         From: <s@src.test>\r\nTo: <a@x.test>\r\nReferences: {refs}\r\nSubject: after the references\r\n\
         Message-ID: <h1@src.test>\r\n\r\nBody line.\r\n"
    );
    let (_d, md) = temp_maildir();
    queue(&md, "<s@src.test>", &["<a@x.test>"], msg.as_bytes());
    let host = sink.host(ip);
    let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
    assert!(out.contains("1 delivered"), "{out}\n{err}");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    let data = &msgs[0].1;
    for line in data.split(|&b| b == b'\n') {
        assert!(line.len() <= 1000, "line of {} octets sent", line.len());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("received.eml");
    std::fs::write(&file, data).expect("write received message");
    let got = python(
        r#"
import email, email.policy, sys
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.compat32)
print(repr(m['Subject']))
print(repr(m['Message-ID']))
print(''.join(str(m['References']).split()))
print(repr(m.get_payload()))
print(len(m.defects))
"#,
        &[file.to_str().expect("utf-8 path")],
    );
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "'after the references'", "{got}");
    assert_eq!(lines[1], "'<h1@src.test>'", "{got}");
    assert_eq!(
        lines[2], refs,
        "the References field is whole once unfolded"
    );
    assert_eq!(lines[3], "'Body line.\\r\\n'", "{got}");
    assert_eq!(lines[4], "0", "no parser defects: {got}");
}

/// (recipient, the MAIL command of its transaction) from a server's command log.
fn mail_per_rcpt(cmds: &[String]) -> Vec<(String, String)> {
    let mut mail = String::new();
    let mut v = Vec::new();
    for c in cmds {
        if c.starts_with("MAIL FROM:") {
            mail = c.clone();
        } else if let Some(r) = c.strip_prefix("RCPT TO:") {
            v.push((r.to_owned(), mail.clone()));
        }
    }
    v
}

/// Item 11: 8-bit content never goes to a server that does not offer 8BITMIME (RFC 6152): it
/// bounces with 5.6.3 (no conversion); 7-bit mail to the same server is delivered.
#[test]
fn eight_bit_mail_to_a_server_without_8bitmime_bounces() {
    let ip = "127.0.41.8";
    let sink = ProtoSink::start(ip, &["--no-8bitmime"]);
    let (_d, md) = temp_maildir();
    let mut body = sample("e1", "a@x.test");
    body.extend_from_slice("Grüße aus Köln\r\n".as_bytes());
    let eight = queue(&md, "<s@src.test>", &["<a@x.test>"], &body);
    let seven = queue_sample(&md, "e2", "b@x.test");
    let host = sink.host(ip);
    let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
    let l = log_line(&err, "<a@x.test>");
    assert!(
        l.contains("status=bounced") && l.contains("5.6.3") && l.contains("8BITMIME"),
        "{l}"
    );
    assert!(
        log_line(&err, "<b@x.test>").contains("status=sent"),
        "{err}"
    );
    assert!(out.contains("1 delivered"), "{out}");
    assert!(in_cur(&md, &eight, ":2,T"));
    assert!(in_cur(&md, &seven, ":2,P"));
    let msgs = sink.messages();
    assert!(
        msgs.iter().all(|m| !m.1.iter().any(|&b| b >= 0x80)),
        "no 8-bit octet reached the server"
    );
    assert!(msgs.iter().any(|m| m.0 == vec!["<b@x.test>".to_string()]));
}

/// Item 11: SMTPUTF8 is needed by a transaction whose envelope is not ASCII, not by the whole
/// message: without SMTPUTF8 at the server, `jürgen@` bounces (5.6.7) and the ASCII recipient
/// of the same message is delivered; with it, an ASCII transaction does not ask for SMTPUTF8.
#[test]
fn smtputf8_is_judged_per_transaction() {
    let ip = "127.0.41.9";
    let sink = ProtoSink::start(ip, &[]);
    let (_d, md) = temp_maildir();
    let name = queue(
        &md,
        "<s@src.test>",
        &["<jürgen@x.test>", "<a@x.test>"],
        &sample("u1", "a@x.test"),
    );
    let host = sink.host(ip);
    let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
    assert!(
        out.contains("1 delivered, 0 deferred, 1 bounced"),
        "{out}\n{err}"
    );
    let l = log_line(&err, "<jürgen@x.test>");
    assert!(l.contains("status=bounced") && l.contains("5.6.7"), "{l}");
    assert!(in_cur(&md, &name, ":2,PT"));
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, vec!["<a@x.test>".to_string()]);
    let mails = mail_per_rcpt(&sink.commands());
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(!mails[0].1.contains("SMTPUTF8"), "{mails:?}");
    drop(sink);

    let sink = ProtoSink::start(ip, &["--smtputf8"]);
    let (_d, md) = temp_maildir();
    queue_sample(&md, "u2", "a@x.test");
    queue(
        &md,
        "<s@src.test>",
        &["<jürgen@x.test>"],
        &sample("u3", "x@x.test"),
    );
    let host = sink.host(ip);
    let (out, err) = ok(&relay(md.root(), &args(&host, &[])));
    assert!(out.contains("2 delivered"), "{out}\n{err}");
    let mut mails = mail_per_rcpt(&sink.commands());
    mails.sort();
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert_eq!(mails[0].0, "<a@x.test>");
    assert!(!mails[0].1.contains("SMTPUTF8"), "ASCII: {mails:?}");
    assert_eq!(mails[1].0, "<jürgen@x.test>");
    assert!(mails[1].1.ends_with(" SMTPUTF8"), "UTF-8: {mails:?}");
}
