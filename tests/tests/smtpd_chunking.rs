//! smtpd's CHUNKING (RFC 3030) and DSN parameters (RFC 3461) against the real binary (issue 15):
//! a Python raw socket pipelines `BDAT n` / `BDAT n LAST` for several messages in one write,
//! `BDAT 0 LAST`, a chunk over `--max-size` (552, the session stays in sync and the next
//! transaction works), DATA after BDAT (503), BDAT without a transaction (503, its data read
//! and dropped, never executed); the stored files hold exactly what was sent after the trace
//! header. Python smtplib's `send_message` with DSN options is accepted and the parameters land
//! in the envelope, read back with maildir-core.

use integration_tests::python;
use integration_tests::smtp::{server_log, start, stored};
use maildir_core::{EnvelopeReader, Notify, Ret};

/// Sends EHLO, then each hex-encoded blob in one write, reading after each blob as many final
/// reply lines as given; prints every reply line as `reply <blob> <line>`.
const PY_RAW: &str = r#"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=20)
f = s.makefile("rb")
deadline = time.monotonic() + 60
def replies(tag, n):
    got = 0
    while got < n:
        if time.monotonic() > deadline:
            raise SystemExit("deadline passed waiting for replies")
        line = f.readline()
        if not line:
            raise SystemExit("connection closed after %d of %d replies" % (got, n))
        text = line.decode("ascii", "replace").rstrip("\r\n")
        print("reply", tag, text, flush=True)
        if len(text) >= 4 and text[3] == " ":
            got += 1
replies("greeting", 1)
s.sendall(b"EHLO raw.test\r\n")
replies("ehlo", 1)
args = sys.argv[3:]
for i in range(0, len(args), 2):
    s.sendall(bytes.fromhex(args[i]))
    replies(str(i // 2), int(args[i + 1]))
s.sendall(b"QUIT\r\n")
replies("quit", 1)
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn replies(out: &str, tag: &str) -> Vec<String> {
    let prefix = format!("reply {tag} ");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(str::to_owned)
        .collect()
}

fn codes(r: &[String]) -> Vec<&str> {
    r.iter().map(|l| &l[..3]).collect()
}

#[test]
fn pipelined_bdat_from_a_raw_socket() {
    let s = start(&["--max-size", "2000"]);
    let port = s.addr.port().to_string();

    // Blob 0: three messages in one write.
    let a1 = b"Subject: chunked\r\nFrom: a@example.org\r\n\r\n";
    let a2 = b"line one\r\n.\r\n..dots\r\nQUIT\r\nend\r\n";
    let c = b"Subject: third\r\n\r\nbody\r\n";
    let mut blob0 = Vec::new();
    blob0.extend_from_slice(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<r1@example.com>\r\n");
    blob0.extend_from_slice(format!("BDAT {}\r\n", a1.len()).as_bytes());
    blob0.extend_from_slice(a1);
    blob0.extend_from_slice(format!("BDAT {} LAST\r\n", a2.len()).as_bytes());
    blob0.extend_from_slice(a2);
    blob0.extend_from_slice(
        b"MAIL FROM:<b@example.org>\r\nRCPT TO:<r2@example.com>\r\nBDAT 0 LAST\r\n",
    );
    blob0.extend_from_slice(b"MAIL FROM:<c@example.org>\r\nRCPT TO:<r3@example.com>\r\n");
    blob0.extend_from_slice(format!("BDAT {} LAST\r\n", c.len()).as_bytes());
    blob0.extend_from_slice(c);

    // Blob 1: a LAST chunk that takes the message over --max-size (552; its data read and
    // dropped, the session in sync), then DATA after BDAT (503) in a transaction that still
    // completes.
    let mut blob1 = Vec::new();
    blob1.extend_from_slice(b"MAIL FROM:<d@example.org>\r\nRCPT TO:<r4@example.com>\r\n");
    blob1.extend_from_slice(b"BDAT 1500\r\n");
    blob1.extend_from_slice(&[b'x'; 1500]);
    blob1.extend_from_slice(b"BDAT 1500 LAST\r\n");
    blob1.extend_from_slice(&[b'y'; 1500]);
    blob1.extend_from_slice(b"MAIL FROM:<e@example.org>\r\nRCPT TO:<r5@example.com>\r\n");
    blob1.extend_from_slice(b"BDAT 4\r\nab\r\nDATA\r\nBDAT 4 LAST\r\ncd\r\n");

    // Blob 2: BDAT without a transaction: 503, and its data ("QUIT") is not a command.
    let blob2 = b"BDAT 6\r\nQUIT\r\nNOOP\r\n";

    let out = python(
        PY_RAW,
        &[
            "127.0.0.1",
            &port,
            &hex(&blob0),
            "10",
            &hex(&blob1),
            "9",
            &hex(blob2),
            "2",
        ],
    );
    let log = || format!("{out}\n{}", server_log(&s));
    let ehlo: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("reply ehlo "))
        .collect();
    for ext in ["CHUNKING", "DSN", "PIPELINING"] {
        assert!(
            ehlo.iter().any(|l| &l[4..] == ext),
            "EHLO lacks {ext}: {ehlo:?}"
        );
    }
    assert!(!ehlo.iter().any(|l| l.contains("BINARYMIME")), "{ehlo:?}");
    let r0 = replies(&out, "0");
    assert_eq!(
        codes(&r0),
        [
            "250", "250", "250", "250", "250", "250", "250", "250", "250", "250"
        ],
        "{}",
        log()
    );
    assert!(
        r0[2].starts_with(&format!("250 2.0.0 Ok: {} octets", a1.len())),
        "{r0:?}"
    );
    for i in [3, 6, 9] {
        assert!(r0[i].starts_with("250 2.0.0 Ok: queued as "), "{r0:?}");
    }
    let r1 = replies(&out, "1");
    assert_eq!(
        codes(&r1),
        [
            "250", "250", "250", "552", "250", "250", "250", "503", "250"
        ],
        "{}",
        log()
    );
    assert!(r1[3].starts_with("552 5.3.4 "), "{r1:?}");
    assert!(
        r1[7].starts_with("503 5.5.1 Error: DATA after BDAT"),
        "{r1:?}"
    );
    assert!(r1[8].starts_with("250 2.0.0 Ok: queued as "), "{r1:?}");
    let r2 = replies(&out, "2");
    assert_eq!(codes(&r2), ["503", "250"], "{}", log());
    assert_eq!(replies(&out, "quit").len(), 1, "{}", log());
    let quit = replies(&out, "quit");
    assert!(quit[0].starts_with("221"), "{quit:?}");

    // Stored: exactly what was sent, after the trace header; nothing of the refused one.
    let mut got: Vec<(String, Vec<u8>)> = stored(&s)
        .into_iter()
        .map(|st| {
            st.check_received("raw.test", "127.0.0.1")
                .unwrap_or_else(|e| panic!("{e}"));
            (st.return_path.clone(), st.body.clone())
        })
        .collect();
    got.sort();
    let mut a = a1.to_vec();
    a.extend_from_slice(a2);
    let want: Vec<(String, Vec<u8>)> = vec![
        ("<a@example.org>".into(), a),
        ("<b@example.org>".into(), Vec::new()),
        ("<c@example.org>".into(), c.to_vec()),
        ("<e@example.org>".into(), b"ab\r\ncd\r\n".to_vec()),
    ];
    assert_eq!(got, want, "{}", log());
}

const PY_DSN: &str = r#"
import smtplib, sys
from email.message import EmailMessage
host, port = sys.argv[1], int(sys.argv[2])
m = EmailMessage()
m["From"] = "sender@example.org"
m["To"] = "rcpt@example.com"
m["Subject"] = "dsn options"
m.set_content("hello\n")
s = smtplib.SMTP(host, port, local_hostname="python.test", timeout=20)
s.ehlo()
print("extn", s.has_extn("dsn"), s.has_extn("chunking"))
refused = s.send_message(
    m,
    from_addr="sender@example.org",
    to_addrs=["rcpt@example.com", "other@example.net"],
    mail_options=["RET=HDRS", "ENVID=QQ+2Bid"],
    rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;rcpt+40example.com"],
)
print("refused", len(refused))
print("mail", s.mail("a@example.org", ["RET=BODY"])[0])
print("mail", s.mail("a@example.org", ["ENVID=a=b"])[0])
print("mail", s.mail("a@example.org", ["RET=FULL", "RET=HDRS"])[0])
print("mail", s.mail("a@example.org", ["RET=FULL"])[0])
print("rcpt", s.rcpt("b@example.com", ["NOTIFY=NEVER,DELAY"])[0])
print("rcpt", s.rcpt("b@example.com", ["NOTIFY=NEVER", "NOTIFY=NEVER"])[0])
print("rcpt", s.rcpt("b@example.com", ["ORCPT=rfc822"])[0])
print("rcpt", s.rcpt("b@example.com", ["NOTIFY=never"])[0])
print("data", s.data(b"Subject: second\r\n\r\nhi\r\n")[0])
s.quit()
"#;

#[test]
fn dsn_parameters_from_smtplib_land_in_the_envelope() {
    let s = start(&[]);
    let out = python(PY_DSN, &["127.0.0.1", &s.addr.port().to_string()]);
    let log = || format!("{out}\n{}", server_log(&s));
    let field = |k: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k} ")).map(str::to_owned))
            .collect()
    };
    assert_eq!(field("extn"), ["True True"], "{}", log());
    assert_eq!(field("refused"), ["0"], "{}", log());
    assert_eq!(field("mail"), ["501", "501", "501", "250"], "{}", log());
    assert_eq!(field("rcpt"), ["501", "501", "501", "250"], "{}", log());
    assert_eq!(field("data"), ["250"], "{}", log());

    let files = s.new_files();
    assert_eq!(files.len(), 2, "{}", log());
    let mut seen = 0;
    for path in files {
        let raw = std::fs::read(&path).expect("read the queue file");
        let (env, _) = EnvelopeReader::open(&raw[..]).unwrap_or_else(|e| panic!("{e}"));
        if env.ret == Some(Ret::Hdrs) {
            seen += 1;
            assert!(
                raw.starts_with(
                    b"Return-Path: <sender@example.org>\r\n\
                      X-Envelope-Params: RET=HDRS ENVID=QQ+2Bid\r\n\
                      X-Original-To: <rcpt@example.com>\r\n\
                      X-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;rcpt+40example.com\r\n\
                      X-Original-To: <other@example.net>\r\n\
                      X-Rcpt-Params: NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;rcpt+40example.com\r\n\
                      Received: "
                ),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            assert_eq!(
                env.envid.as_ref().map(|e| e.decode()),
                Some(b"QQ+id".to_vec())
            );
            for i in 0..2 {
                let p = env.rcpt_params(i);
                assert_eq!(
                    p.notify,
                    Some(Notify::On {
                        success: true,
                        failure: true,
                        delay: false
                    })
                );
                let orcpt = p.orcpt.as_ref().expect("ORCPT stored");
                assert!(orcpt.is_rfc822());
                assert_eq!(orcpt.address.decode(), b"rcpt@example.com");
            }
        } else {
            seen += 10;
            assert_eq!(env.ret, Some(Ret::Full));
            assert!(env.envid.is_none());
            assert_eq!(env.rcpt_params(0).notify, Some(Notify::Never));
            assert!(env.rcpt_params(0).orcpt.is_none());
        }
    }
    assert_eq!(seen, 11, "{}", log());
}
