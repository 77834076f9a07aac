//! Local delivery (issue 12), test 6 in its first form: Dovecot serves what the local delivery
//! writer put into a user's Maildir. A real Dovecot (plain process, generated config, passwd-file
//! passdb/userdb on the users file) logs alice in with a password hashed by
//! `smtpd hash-password`, and Python's imaplib FETCHes the message byte-identical to the file.
//! Test 6 of the issue: the same, with the message sent to smtpd over SMTP (Python's smtplib)
//! and delivered by smtpd into the Maildir Dovecot serves.

use std::process::{Command, Stdio};

use integration_tests::dovecot::{Dovecot, give_to_mail_owner};
use integration_tests::smtp::{server_log, start};
use integration_tests::{bin, hash_password, have, list, python};
use maildir_core::local::{LocalCopy, Mailboxes};
use maildir_core::{Durability, ReversePath};

#[test]
fn dovecot_serves_a_locally_delivered_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mailboxes = dir.path().join("mailboxes");
    let users = dir.path().join("users");
    let hash = hash_password("correct horse");
    std::fs::write(
        &users,
        format!("# test users\nalice:{hash}::::\nbob:*::::\n"),
    )
    .expect("write users");

    let content = b"Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.test with ESMTP id T1;\r\n\tThu, 3 Dec 2026 12:00:00 +0000\r\nFrom: s@far.test\r\nTo: sales@example.test\r\nSubject: served by Dovecot\r\n\r\nHello alice.\r\n.. a line that was dot-stuffed\r\n";
    let mb = Mailboxes::open(&mailboxes).expect("open mailboxes");
    let sender = ReversePath::parse("<s@far.test>").expect("sender");
    let copies = [LocalCopy {
        user: "alice".into(),
        delivered_to: "alice@example.test".into(),
        original_to: "sales@example.test".into(),
    }];
    let mut reader: &[u8] = content;
    let delivered = mb
        .deliver_now(&sender, &copies, &mut reader, Durability::Fsync)
        .expect("deliver");
    let files = list(&mailboxes.join("alice/new"));
    assert_eq!(files.len(), 1);
    let on_disk = std::fs::read(&files[0]).expect("read the delivered file");
    assert_eq!(on_disk.len() as u64, delivered[0].size);
    give_to_mail_owner(&mailboxes);

    let Some(dovecot) = Dovecot::start(&dir.path().join("dovecot"), &mailboxes, &users) else {
        return;
    };
    let msgs = dovecot
        .fetch_inbox("alice", "correct horse")
        .unwrap_or_else(|e| panic!("IMAP fetch failed: {e}"));
    assert_eq!(msgs.len(), 1, "{}", dovecot.log_text());
    assert_eq!(
        String::from_utf8_lossy(&msgs[0]),
        String::from_utf8_lossy(&on_disk)
    );
    let mut want = b"Return-Path: <s@far.test>\r\nDelivered-To: alice@example.test\r\nX-Original-To: sales@example.test\r\n".to_vec();
    want.extend_from_slice(content);
    assert_eq!(msgs[0], want);

    // A wrong password and a no-login account (`*`) are refused by Dovecot.
    let e = dovecot.fetch_inbox("alice", "wrong").unwrap_err();
    assert!(
        e.contains("AUTHENTICATIONFAILED") || e.contains("Authentication failed"),
        "{e}"
    );
    assert!(dovecot.fetch_inbox("bob", "").is_err());
}

#[test]
fn hash_password_refuses_an_empty_password() {
    let out = Command::new(bin("smtpd"))
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .expect("run smtpd hash-password");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("smtpd hash-password: empty password"),
        "{err}"
    );
}

/// Sends one message with smtplib (EHLO client.test) and prints the reply after DATA.
const PY_SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpt, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=30)
s.ehlo()
s.mail(sender)
code, text = s.rcpt(rcpt)
print("rcpt", code, text.decode())
code, text = s.data(msg.encode())
print("data", code, text.decode())
s.quit()
"#;

/// Test 6: Dovecot serves what smtpd delivered. smtpd (untrusted client, local domain
/// example.test, users file shared with Dovecot) delivers a message sent with smtplib to
/// `sales@`, an alias of alice; Dovecot logs alice in with her password and FETCHes it
/// byte-identical to the file, and the message after the added trace lines byte-identical to
/// what was sent.
#[test]
fn dovecot_serves_what_smtpd_delivered() {
    if !have("python3") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mailboxes = dir.path().join("mailboxes");
    let users = dir.path().join("users");
    let aliases = dir.path().join("aliases");
    let hash = hash_password("battery staple");
    std::fs::write(&users, format!("alice:{hash}::::\nbob:*::::\n")).expect("write users");
    std::fs::write(&aliases, "postmaster: alice\nsales: alice\n").expect("write aliases");
    let s = start(&[
        "--trust",
        "10.0.0.0/8",
        "--local-domain",
        "example.test",
        "--mailboxes",
        &mailboxes.to_string_lossy(),
        "--users",
        &users.to_string_lossy(),
        "--aliases",
        &aliases.to_string_lossy(),
    ]);
    let msg = "From: s@far.test\r\nTo: sales@example.test\r\nSubject: via smtpd\r\n\r\nHello alice.\r\n.a line that was dot-stuffed\r\n\u{2014} and UTF-8\r\n";
    let out = python(
        PY_SEND,
        &[
            "127.0.0.1",
            &s.addr.port().to_string(),
            "s@far.test",
            "sales@example.test",
            msg,
        ],
    );
    assert!(out.contains("rcpt 250"), "{out}");
    assert!(out.contains("data 250"), "{out}\n{}", server_log(&s));
    let files = list(&mailboxes.join("alice/new"));
    assert_eq!(files.len(), 1, "{}", server_log(&s));
    let on_disk = std::fs::read(&files[0]).expect("read the delivered file");
    give_to_mail_owner(&mailboxes);

    let Some(dovecot) = Dovecot::start(&dir.path().join("dovecot"), &mailboxes, &users) else {
        return;
    };
    let msgs = dovecot
        .fetch_inbox("alice", "battery staple")
        .unwrap_or_else(|e| panic!("IMAP fetch failed: {e}"));
    assert_eq!(msgs.len(), 1, "{}", dovecot.log_text());
    assert_eq!(msgs[0], on_disk);
    let text = String::from_utf8(msgs[0].clone()).expect("UTF-8");
    let head = "Return-Path: <s@far.test>\r\nDelivered-To: alice@example.test\r\nX-Original-To: sales@example.test\r\nReceived: from client.test (unknown [127.0.0.1])\r\n\tby mx.smtpd.test with ESMTP id ";
    assert!(text.starts_with(head), "{text}");
    // The Received header ends with the date line; then the message as sent.
    let rest = &text[head.len()..];
    let date_line = rest.find(";\r\n\t").expect("date line of Received");
    let after = &rest[date_line + 4..];
    let end = after.find("\r\n").expect("end of Received");
    assert_eq!(&after[end + 2..], msg);
}
