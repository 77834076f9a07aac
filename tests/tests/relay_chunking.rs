//! smtp-relay with CHUNKING (issue 15, the client side): against a recording sink that speaks
//! BDAT (tests/py/bdat_sink.py; aiosmtpd has none), every message goes as MAIL + RCPT + BDAT
//! LAST over one connection, arrives byte-identical to what the DATA path delivers (and to the
//! stored file minus its envelope), and a refused recipient or a refused BDAT in the middle of
//! the pipeline affects only its own message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::relay::{b64, queue, relay, relay_ok, temp_maildir, without_envelope};
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
