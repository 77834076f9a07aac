//! A reader nobody here wrote: Python's `mailbox.Maildir` opens the Maildir that maildir-core
//! wrote and reads every message, headers and body, byte for byte.

use std::collections::HashMap;
use std::io::Write;
use std::process::Command;

use maildir_core::{Durability, Envelope, ForwardPath, Maildir, ReversePath};

/// For each message: key, then hex of the raw bytes, Return-Path, the X-Original-To values
/// joined by `|`, Subject (RFC 2047 decoded), and the decoded body, tab separated.
const READER: &str = r#"
import mailbox, sys, email.header
mb = mailbox.Maildir(sys.argv[1], factory=None, create=False)
for key in mb.keys():
    raw = mb.get_bytes(key)
    msg = mb.get_message(key)
    subject = str(email.header.make_header(email.header.decode_header(msg["Subject"])))
    # raw_items() gives header values as parsed, 8-bit octets kept (surrogateescape).
    def values(name):
        return [v for k, v in msg.raw_items() if k.lower() == name.lower()]
    def octets(s):
        return s.encode("utf-8", "surrogateescape")
    fields = [
        raw,
        octets(values("Return-Path")[0]),
        octets("|".join(values("X-Original-To"))),
        subject.encode(),
        msg.get_payload(decode=True),
    ]
    print(key + "\t" + "\t".join(f.hex() for f in fields))
"#;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

struct Expected {
    raw: Vec<u8>,
    return_path: String,
    rcpts: String,
    subject: String,
    body: Vec<u8>,
}

fn body(i: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        format!("Message {i}: 8-bit text: Grüße, 日本語, naïve café.\r\n").as_bytes(),
    );
    b.extend_from_slice(b".a line starting with a dot (stored dot-unstuffed)\r\n");
    b.extend_from_slice(b"..two dots\r\n.\r\n");
    b.extend_from_slice(b"Latin-1 byte: \xe9 and a bare \xff\r\n");
    b.extend_from_slice(b"From the start of a line (mbox would mangle this)\r\n");
    for k in 0..i % 50 {
        b.extend_from_slice(format!("line {k} {}\r\n", "x".repeat(k * 3)).as_bytes());
    }
    b.extend_from_slice(b"last line without CRLF");
    b
}

#[test]
fn python_mailbox_reads_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Maildir");
    let md = Maildir::open(&root).unwrap();
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut batch = Vec::new();
    for i in 0..40 {
        let sender = match i % 4 {
            0 => "<>".to_owned(),
            1 => format!("<sender{i}@example.org>"),
            2 => "<\"quoted sender\"@[192.0.2.7]>".to_owned(),
            _ => "<jöran@bücher.example>".to_owned(),
        };
        let rcpts: Vec<String> = (0..1 + i % 5)
            .map(|k| match k {
                3 => "<postmaster>".to_owned(),
                4 => "<用户@例子.广告>".to_owned(),
                _ => format!("<r{k}.m{i}@dest{k}.example>"),
            })
            .collect();
        let envelope = Envelope {
            sender: ReversePath::parse(&sender).unwrap(),
            recipients: rcpts
                .iter()
                .map(|r| ForwardPath::parse(r).unwrap())
                .collect(),
            ret: None,
            envid: None,
            rcpt_dsn: Vec::new(),
        };
        let subject = format!("test {i} ✓");
        let mut raw = envelope.to_bytes();
        raw.extend_from_slice(
            b"Received: from client.example (client.example [192.0.2.1])\r\n\tby mx.example with ESMTP id X; Tue, 24 Nov 2026 04:07:30 +0000\r\n",
        );
        raw.extend_from_slice(format!("From: <a@example.org>\r\nSubject: =?utf-8?q?test_{i}_=E2=9C=93?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").as_bytes());
        let b = body(i);
        raw.extend_from_slice(&b);
        let mut d = md.deliver().unwrap();
        // Write in small pieces, as smtpd streams chunks.
        for chunk in raw.chunks(61) {
            d.write_all(chunk).unwrap();
        }
        let id = d.id().to_owned();
        expected.insert(
            id,
            Expected {
                raw,
                return_path: sender,
                rcpts: rcpts.join("|"),
                subject,
                body: b,
            },
        );
        batch.push(d);
        if batch.len() == 8 {
            for r in md.commit_batch(std::mem::take(&mut batch), Durability::Fsync) {
                r.unwrap();
            }
        }
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(READER)
        .arg(&root)
        .output()
        .expect("python3 must be installed (scripts/test.sh)");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut seen = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 6, "{line}");
        // Python's key is the file name up to the info suffix: `<id>,S=<size>`.
        let (id, size) = fields[0].rsplit_once(",S=").unwrap();
        let want = expected
            .get(id)
            .unwrap_or_else(|| panic!("unknown key {}", fields[0]));
        assert_eq!(size.parse::<usize>().unwrap(), want.raw.len());
        assert_eq!(unhex(fields[1]), want.raw, "raw bytes of {id}");
        assert_eq!(
            String::from_utf8(unhex(fields[2])).unwrap(),
            want.return_path
        );
        assert_eq!(String::from_utf8(unhex(fields[3])).unwrap(), want.rcpts);
        assert_eq!(String::from_utf8(unhex(fields[4])).unwrap(), want.subject);
        // Python hands the decoded 8bit payload back with LF line ends; the raw bytes above
        // prove the file itself holds CRLF.
        let mut lf_body = want.body.clone();
        lf_body.retain(|b| *b != b'\r');
        assert_eq!(unhex(fields[5]), lf_body, "body of {id}");
        seen += 1;
    }
    assert_eq!(seen, expected.len());
}
