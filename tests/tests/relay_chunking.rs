//! smtp-relay with CHUNKING (issue 15, the client side): against a recording sink that speaks
//! BDAT (tests/py/bdat_sink.py; aiosmtpd has none), every message goes as MAIL + RCPT + BDAT
//! LAST over one connection, arrives byte-identical to what the DATA path delivers (and to the
//! stored file minus its envelope), and a refused recipient or a refused BDAT in the middle of
//! the pipeline affects only its own message. The same against the real smtpd as the MX
//! (issue 15, test 2): 500 messages over one connection, each stored byte-identical after
//! smtpd's `Received:` header, an unknown local user refused mid-pipeline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::relay::{b64, queue, relay, relay_ok, temp_maildir, without_envelope};
use integration_tests::smtp::{parse_stored, start};
use integration_tests::{free_port, list, wait_for};

/// The BDAT-capable recording sink on 127.0.0.1; killed when dropped.
struct BdatSink {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One message the sink stored: method (BDAT or DATA), sender, recipients, content.
#[derive(Debug, Clone)]
struct Got {
    conn: u32,
    method: String,
    rcpts: Vec<String>,
    data: Vec<u8>,
}

impl BdatSink {
    fn start(extra: &[&str]) -> BdatSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sink.log");
        let ready = dir.path().join("ready");
        let port = free_port("127.0.0.1");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/bdat_sink.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3 bdat_sink.py");
        wait_for("sink to listen", Duration::from_secs(10), || ready.exists());
        BdatSink {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }

    fn messages(&self) -> Vec<Got> {
        self.lines()
            .into_iter()
            .filter(|f| f.len() == 6 && f[0] == "message")
            .map(|f| Got {
                conn: f[1].parse().unwrap_or(0),
                method: f[2].clone(),
                rcpts: f[4].split(',').map(String::from).collect(),
                data: b64(&f[5]),
            })
            .collect()
    }

    fn connections(&self) -> usize {
        self.lines().iter().filter(|f| f[0] == "connect").count()
    }

    fn refusals(&self) -> usize {
        self.lines().iter().filter(|f| f[0] == "refused").count()
    }

    fn smarthost(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for BdatSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(smarthost: &str) -> Vec<&str> {
    vec![
        "--once",
        "--smarthost",
        smarthost,
        "--timeout",
        "30",
        "--helo",
        "relay.test",
    ]
}

/// Message `i` of the 500: mostly small, some with dot lines, 8-bit text, no final CRLF, bare
/// LF line ends, an empty one, and one of 150 KiB (several BDAT chunks).
fn content(i: usize) -> Vec<u8> {
    let mut m = format!(
        "Received: from client.test by relay.test with ESMTP id q{i}; Tue, 24 Nov 2026 04:07:30 +0000\r\n\
         From: <s@src.test>\r\nTo: <m{i}@d.test>\r\nSubject: chunk {i}\r\n\r\n"
    )
    .into_bytes();
    match i % 50 {
        7 => m.extend_from_slice(".\r\n..\r\n.leading\r\nlast\r\n".as_bytes()),
        11 => m.extend_from_slice("caf\u{e9} 8-bit body\r\n".as_bytes()),
        13 => m.extend_from_slice(b"no final line end"),
        17 => m = b"Subject: bare\nLF line\nends\n.\n".to_vec(),
        19 => m.clear(),
        23 if i == 23 => {
            for k in 0..3000 {
                m.extend_from_slice(format!("line {k:05} {}\r\n", "x".repeat(40)).as_bytes());
            }
        }
        _ => m.extend_from_slice(format!("Hello {i}.\r\n{}\r\n", "y".repeat(i % 97)).as_bytes()),
    }
    m
}

/// Issue 15: 500 messages to a CHUNKING peer go over ONE connection as BDAT, each arriving
/// byte-identical to what `--no-chunking` (DATA) delivers of the same queue, and to the stored
/// file minus its envelope where that is already in SMTP's form (CRLF, ending with CRLF).
#[test]
fn five_hundred_messages_over_one_connection_as_data_delivers_them() {
    const N: usize = 500;
    let (_d1, md1) = temp_maildir();
    let (_d2, md2) = temp_maildir();
    let mut stored = HashMap::new();
    for i in 0..N {
        let rcpt = format!("<m{i}@d.test>");
        let name = queue(&md1, "<s@src.test>", &[&rcpt], &content(i));
        queue(&md2, "<s@src.test>", &[&rcpt], &content(i));
        let file = std::fs::read(md1.new_dir().join(&name)).expect("queued file");
        stored.insert(rcpt, without_envelope(&file));
    }
    let bdat = BdatSink::start(&[]);
    let host = bdat.smarthost();
    let (out, err) = relay_ok(&relay(md1.root(), &args(&host)));
    assert!(
        out.contains(&format!("{N} delivered, 0 deferred, 0 bounced")),
        "{out}\n{err}"
    );
    let data = BdatSink::start(&[]);
    let host = data.smarthost();
    let mut a = args(&host);
    a.push("--no-chunking");
    let (out, err) = relay_ok(&relay(md2.root(), &a));
    assert!(
        out.contains(&format!("{N} delivered, 0 deferred, 0 bounced")),
        "{out}\n{err}"
    );
    assert!(list(md1.new_dir()).is_empty() && list(md2.new_dir()).is_empty());

    assert_eq!(bdat.connections(), 1, "one connection for all {N}");
    let by_rcpt = |msgs: Vec<Got>, method: &str| -> HashMap<String, Vec<u8>> {
        assert_eq!(msgs.len(), N);
        msgs.into_iter()
            .map(|g| {
                assert_eq!(g.method, method);
                assert_eq!(g.conn, 1);
                assert_eq!(g.rcpts.len(), 1);
                (g.rcpts[0].clone(), g.data)
            })
            .collect()
    };
    let via_bdat = by_rcpt(bdat.messages(), "BDAT");
    let via_data = by_rcpt(data.messages(), "DATA");
    for i in 0..N {
        let rcpt = format!("<m{i}@d.test>");
        let (b, d) = (&via_bdat[&rcpt], &via_data[&rcpt]);
        assert!(
            b == d,
            "message {i} differs: BDAT {:?} / DATA {:?}",
            String::from_utf8_lossy(&b[..b.len().min(200)]),
            String::from_utf8_lossy(&d[..d.len().min(200)])
        );
        if !matches!(i % 50, 13 | 17) {
            assert!(
                *b == stored[&rcpt],
                "message {i} differs from the stored file"
            );
        }
    }
    assert!(via_bdat["<m23@d.test>"].len() > 150 * 1024);
    assert!(via_bdat["<m19@d.test>"].is_empty());
    assert!(via_bdat["<m17@d.test>"].ends_with(b"ends\r\n.\r\n"));
}

/// A recipient refused in the middle of the pipeline (550) is bounced alone; a message whose
/// only recipient is refused gets its BDAT refused (the announced chunk is still sent, so the
/// session stays in step) and bounces alone; a 451 defers only its recipient. Everything else
/// is delivered over the same single connection.
#[test]
fn refusals_mid_pipeline_affect_only_their_message() {
    let (_d, md) = temp_maildir();
    let mut names = HashMap::new();
    for i in 0..20 {
        let rcpts: Vec<String> = match i {
            10 => vec!["<m10@d.test>".into(), "<bad@d.test>".into()],
            12 => vec!["<gone@d.test>".into()],
            14 => vec!["<later@d.test>".into()],
            _ => vec![format!("<m{i}@d.test>")],
        };
        let r: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        names.insert(i, queue(&md, "<s@src.test>", &r, &content(i)));
    }
    let sink = BdatSink::start(&[
        "--code",
        "bad@d.test=550",
        "--code",
        "gone@d.test=550",
        "--code",
        "later@d.test=451",
    ]);
    let host = sink.smarthost();
    let (out, err) = relay_ok(&relay(md.root(), &args(&host)));
    assert!(
        out.contains("18 delivered, 1 deferred, 2 bounced"),
        "{out}\n{err}"
    );
    assert_eq!(sink.connections(), 1, "{err}");
    assert_eq!(
        sink.refusals(),
        2,
        "the BDATs of message 12 (none accepted) and 14"
    );
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 18);
    assert!(msgs.iter().all(|g| g.method == "BDAT" && g.conn == 1));
    let ten = msgs
        .iter()
        .find(|g| g.rcpts.contains(&"<m10@d.test>".to_owned()))
        .expect("message 10 delivered");
    assert_eq!(ten.rcpts, vec!["<m10@d.test>".to_owned()]);
    assert!(ten.data == content(10));
    let listing = relay_ok(&relay(md.root(), &["--list"])).0;
    assert!(listing.contains("<later@d.test> deferred"), "{listing}");
    // Left in new/: the deferred message and one DSN for each bounced recipient.
    let left = list(md.new_dir());
    assert_eq!(left.len(), 3, "{listing}");
    assert!(left.iter().any(|p| p.ends_with(&names[&14])), "{left:?}");
    let mut bounced: Vec<&str> = left
        .iter()
        .filter(|p| !p.ends_with(&names[&14]))
        .map(|p| {
            let dsn = String::from_utf8_lossy(&std::fs::read(p).expect("DSN")).into_owned();
            if dsn.contains("Final-Recipient: rfc822; bad@d.test") {
                "bad"
            } else if dsn.contains("Final-Recipient: rfc822; gone@d.test") {
                "gone"
            } else {
                "other"
            }
        })
        .collect();
    bounced.sort();
    assert_eq!(bounced, vec!["bad", "gone"]);
}

/// Bare LF or CR as CRLF, and a final CRLF for a message that has content: what the relay
/// transmits (as DATA does) and smtpd stores of a queued file that is not in SMTP's form yet.
fn smtp_form(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 2);
    let mut i = 0;
    while i < m.len() {
        match m[i] {
            b'\r' if m.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What follows the first `Received:` header (and its continuation lines) of a file smtpd
/// wrote: the message as it arrived, whatever envelope lines come before.
fn after_first_received(raw: &[u8]) -> Vec<u8> {
    let mut at = 0;
    let mut seen = false;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if seen && !continuation {
            break;
        }
        seen |= line.starts_with(b"Received: ");
        at += line.len();
    }
    assert!(
        seen,
        "no Received header in {:?}",
        String::from_utf8_lossy(raw)
    );
    raw[at..].to_vec()
}

/// Issue 15, test 2, against smtpd itself: smtp-relay sends 500 queued messages to smtpd
/// (`--no-fsync`, CHUNKING and PIPELINING offered, a local domain) over ONE connection as BDAT;
/// each stored message after smtpd's `Received:` header is byte-identical to the queued one
/// (in SMTP's form), a line of 2,000 octets included. In the middle of the pipeline smtpd
/// refuses an unknown local user (550 5.1.1): only that recipient bounces, the other recipient
/// of its message is delivered; a message whose only recipient is unknown gets its BDAT refused
/// and bounces alone; a message for a local user and a remote recipient is delivered to both.
#[test]
fn five_hundred_messages_to_smtpd_over_one_connection() {
    const N: usize = 500;
    let dir = tempfile::tempdir().expect("temp dir");
    let (users, aliases, mailboxes) = (
        dir.path().join("users"),
        dir.path().join("aliases"),
        dir.path().join("mailboxes"),
    );
    std::fs::write(&users, "alice:*::::\n").expect("write users");
    std::fs::write(&aliases, "postmaster: alice\n").expect("write aliases");
    let (u, a, m) = (
        users.to_string_lossy().into_owned(),
        aliases.to_string_lossy().into_owned(),
        mailboxes.to_string_lossy().into_owned(),
    );
    let mx = start(&[
        "--no-fsync",
        "--local-domain",
        "local.test",
        "--mailboxes",
        &m,
        "--users",
        &u,
        "--aliases",
        &a,
    ]);
    let mx_log = || {
        let path = mx.maildir.parent().map(|d| d.join("smtpd.log"));
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };

    let (_d, md) = temp_maildir();
    let message = |i: usize| -> Vec<u8> {
        if i == 29 {
            let mut m = content(i);
            m.extend_from_slice(
                format!("{}\r\nafter the long line\r\n", "L".repeat(2000)).as_bytes(),
            );
            m
        } else {
            content(i)
        }
    };
    let mut expected: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..N {
        let rcpts: Vec<String> = match i {
            250 => vec!["<m250@d.test>".into(), "<nobody@local.test>".into()],
            251 => vec!["<ghost@local.test>".into()],
            252 => vec!["<alice@local.test>".into(), "<m252@d.test>".into()],
            _ => vec![format!("<m{i}@d.test>")],
        };
        let r: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let name = queue(&md, "<s@src.test>", &r, &message(i));
        let file = std::fs::read(md.new_dir().join(&name)).expect("queued file");
        if i != 251 {
            expected.insert(
                format!("<m{i}@d.test>"),
                smtp_form(&without_envelope(&file)),
            );
        }
    }

    let host = mx.addr.to_string();
    let (out, err) = relay_ok(&relay(md.root(), &args(&host)));
    let log = || format!("{out}\n{err}\n--- smtpd log ---\n{}", mx_log());
    assert!(
        out.contains(&format!("{N} delivered, 0 deferred, 2 bounced")),
        "{}",
        log()
    );

    // One connection carried every transaction: one session with MAIL commands in smtpd's
    // log (the other disconnect line is the start-up probe's).
    wait_for(
        "smtpd to log the relay's disconnect",
        Duration::from_secs(10),
        || mx_log().contains(" mail="),
    );
    let sessions: Vec<String> = mx_log()
        .lines()
        .filter(|l| l.contains("disconnect from [127.0.0.1] ") && l.contains(" mail="))
        .map(str::to_owned)
        .collect();
    assert_eq!(sessions.len(), 1, "{}", log());
    eprintln!("smtpd: {}", sessions[0]);
    assert!(
        sessions[0].contains(" mail=500 ") && sessions[0].contains(" accepted=499"),
        "{}",
        log()
    );
    assert!(sessions[0].contains(" bdat="), "{}", log());
    assert!(!sessions[0].contains(" data="), "{}", log());

    // Every message, byte for byte after smtpd's own trace header.
    let files = mx.new_files();
    assert_eq!(files.len(), N - 1, "{}", log());
    let mut seen = HashMap::new();
    for path in &files {
        let st = parse_stored(path).unwrap_or_else(|e| panic!("{e}"));
        st.check_received("relay.test", "127.0.0.1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.return_path, "<s@src.test>");
        assert_eq!(st.rcpts.len(), 1, "{:?}: {:?}", path, st.rcpts);
        assert_eq!(after_first_received(&st.raw), st.body);
        seen.insert(st.rcpts[0].clone(), st.body);
    }
    for i in (0..N).filter(|&i| i != 251) {
        let rcpt = format!("<m{i}@d.test>");
        let got = seen
            .get(&rcpt)
            .unwrap_or_else(|| panic!("{rcpt} not stored\n{}", log()));
        let want = &expected[&rcpt];
        assert!(
            got == want,
            "message {i} differs: stored {:?} / queued {:?}",
            String::from_utf8_lossy(&got[..got.len().min(300)]),
            String::from_utf8_lossy(&want[..want.len().min(300)])
        );
    }
    assert!(seen["<m23@d.test>"].len() > 150 * 1024);
    assert!(seen["<m19@d.test>"].is_empty());
    let long_line = format!("\r\n{}\r\n", "L".repeat(2000));
    assert!(
        seen["<m29@d.test>"]
            .windows(long_line.len())
            .any(|w| w == long_line.as_bytes()),
        "the long line arrives whole, not folded"
    );

    // The local user's copy of message 252 holds the same message.
    let copies = list(&mailboxes.join("alice").join("new"));
    assert_eq!(copies.len(), 1, "{}", log());
    let copy = std::fs::read(&copies[0]).expect("alice's copy");
    assert!(
        copy.starts_with(b"Return-Path: <s@src.test>\r\nDelivered-To: alice@local.test\r\n"),
        "{}",
        String::from_utf8_lossy(&copy)
    );
    assert!(after_first_received(&copy) == expected["<m252@d.test>"]);

    // Left in the relay's new/: one DSN per refused recipient, naming it alone.
    let left = list(md.new_dir());
    assert_eq!(left.len(), 2, "{left:?}");
    let mut bounced: Vec<String> = left
        .iter()
        .map(|p| {
            let dsn = String::from_utf8_lossy(&std::fs::read(p).expect("DSN")).into_owned();
            assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
            assert!(
                !dsn.contains("Final-Recipient: rfc822; m250@d.test"),
                "{dsn}"
            );
            ["nobody", "ghost"]
                .into_iter()
                .find(|u| dsn.contains(&format!("Final-Recipient: rfc822; {u}@local.test")))
                .unwrap_or("other")
                .to_owned()
        })
        .collect();
    bounced.sort();
    assert_eq!(bounced, ["ghost", "nobody"]);
}
