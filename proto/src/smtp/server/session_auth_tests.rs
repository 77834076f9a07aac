//! SMTP AUTH in the session: transcripts whole, split at every index and byte by byte.

use super::tests::{Outcome, drive_session};
use super::*;
use crate::sasl::encode;
use maildir_core::aliases::Aliases;
use maildir_core::directory::Directory;
use maildir_core::users::Users;

struct Setup {
    peer: &'static str,
    auth: AuthSettings,
    tls: bool,
    submission: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            peer: "127.0.0.1:1234",
            auth: AuthSettings {
                enabled: true,
                allow_plaintext: false,
                received_user: false,
            },
            tls: false,
            submission: false,
        }
    }
}

fn session(setup: &Setup) -> Session {
    let users = Users::parse("alice:*::::\nbob:*::::\n").unwrap();
    let aliases = Aliases::parse("postmaster: alice\nsales: alice, bob\nother: bob\n").unwrap();
    let dir = Directory::new(users, aliases, &["example.test".into()], Some('+')).unwrap();
    let config = Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        max_size: 10_000,
        max_recipients: 10,
        timeout: Duration::from_secs(300),
        max_errors: 20,
        starttls: true,
        max_hops: 50,
        postmaster: None,
        output_limit: OUTPUT_LIMIT,
        local: Some(LocalPolicy {
            directory: Arc::new(dir),
            quota: None,
            spool_is_copy: false,
        }),
        auth: setup.auth.clone(),
    });
    let now = Instant::now();
    let mut s = Session::new(config, setup.peer.parse().unwrap(), false, now);
    if setup.tls {
        s.handle_tls_started(now);
    }
    if setup.submission {
        s.set_submission();
    }
    s
}

/// The outcome must not depend on how the input is split.
fn check_splits(setup: &Setup, input: &[u8]) -> Outcome {
    let whole = drive_session(session(setup), input, &[]);
    for i in 0..=input.len() {
        let split = drive_session(session(setup), input, &[i]);
        assert_eq!(split, whole, "split at {i}");
    }
    let bytes: Vec<usize> = (1..input.len()).collect();
    assert_eq!(
        drive_session(session(setup), input, &bytes),
        whole,
        "byte by byte"
    );
    whole
}

fn plain(user: &str, password: &str) -> String {
    encode(format!("\0{user}\0{password}").as_bytes())
}

/// The reply lines after the greeting, without the EHLO's continuation lines.
fn lines(out: &Outcome) -> Vec<&str> {
    out.replies
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty() && !l.starts_with("250-"))
        .collect()
}

#[test]
fn plain_and_login_then_relay_from_own_address_any_split() {
    let input = format!(
        "EHLO c.test\r\n\
         MAIL FROM:<alice@example.test>\r\n\
         RCPT TO:<far@remote.test>\r\n\
         RSET\r\n\
         AUTH PLAIN {}\r\n\
         AUTH PLAIN\r\n\
         {}\r\n\
         AUTH LOGIN\r\n\
         MAIL FROM:<bob@example.test>\r\n\
         MAIL FROM:<other@example.test>\r\n\
         MAIL FROM:<alice@remote.test>\r\n\
         MAIL FROM:<sales@example.test>\r\n\
         RSET\r\n\
         MAIL FROM:<Alice+tag@example.test> AUTH=<>\r\n\
         RCPT TO:<far@remote.test>\r\n\
         DATA\r\n\
         Subject: hi\r\n\
         \r\n\
         body\r\n\
         .\r\n\
         QUIT\r\n",
        plain("alice", "wrong"),
        plain("alice", "right"),
    );
    let out = check_splits(&Setup::default(), input.as_bytes());
    assert!(
        out.replies.contains("250-AUTH PLAIN LOGIN\r\n"),
        "{}",
        out.replies
    );
    assert_eq!(
        lines(&out),
        [
            "250 DSN",
            "250 2.1.0 Ok",
            "554 5.7.1 <far@remote.test>: Relay access denied",
            "250 2.0.0 Ok",
            "535 5.7.8 Error: authentication failed",
            "334 ",
            "235 2.7.0 Authentication successful",
            "503 5.5.1 Error: already authenticated",
            "553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice",
            "553 5.7.1 <other@example.test>: Sender address rejected: not owned by user alice",
            "553 5.7.1 <alice@remote.test>: Sender address rejected: not owned by user alice",
            "250 2.1.0 Ok",
            "250 2.0.0 Ok",
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Ok: queued as ID1",
            "221 2.0.0 Bye",
        ]
    );
    let stored = String::from_utf8(out.stored[0].clone()).unwrap();
    assert!(stored.contains("by mx.test with ESMTPA id ID1"), "{stored}");
    assert!(
        !stored.contains("alice)"),
        "the user is not named: {stored}"
    );
    assert!(out.events.contains(&Event::Authenticated {
        user: "alice".into()
    }));
    assert!(out.events.contains(&Event::AuthRefused(AuthOutcome::Bad)));
}

#[test]
fn login_mechanism_cancel_and_malformed_any_split() {
    let input = format!(
        "EHLO c.test\r\n\
         AUTH LOGIN\r\n\
         *\r\n\
         AUTH PLAIN\r\n\
         not base64!\r\n\
         AUTH CRAM-MD5\r\n\
         AUTH PLAIN {}\r\n\
         AUTH LOGIN {}\r\n\
         {}\r\n\
         NOOP\r\n",
        encode(b"bob\0alice\0right"),
        encode(b"bob"),
        encode(b"right"),
    );
    let out = check_splits(&Setup::default(), input.as_bytes());
    assert_eq!(
        lines(&out),
        [
            "250 DSN",
            "334 VXNlcm5hbWU6",
            "501 5.7.0 Authentication aborted",
            "334 ",
            "501 5.5.2 Error: cannot decode response",
            "504 5.5.4 Unrecognized authentication type",
            "501 5.5.2 Error: cannot decode response",
            "334 UGFzc3dvcmQ6",
            "235 2.7.0 Authentication successful",
            "250 2.0.0 Ok",
        ]
    );
    assert!(!out.closed);
}

#[test]
fn temporary_failure_and_ban_any_split() {
    let input = format!(
        "EHLO c.test\r\nAUTH PLAIN {}\r\nAUTH PLAIN {}\r\nNOOP\r\n",
        plain("temp", "x"),
        plain("banned", "right"),
    );
    let out = check_splits(&Setup::default(), input.as_bytes());
    assert_eq!(
        lines(&out),
        [
            "250 DSN",
            "454 4.7.0 Temporary authentication failure",
            "535 5.7.8 Error: authentication failed",
            "421 4.7.0 mx.test Error: too many failed logins from your address",
        ]
    );
    assert!(out.closed, "the banned session ends; NOOP is not answered");
}

#[test]
fn offered_only_over_tls_loopback_or_when_allowed() {
    let remote = Setup {
        peer: "192.0.2.1:1234",
        ..Setup::default()
    };
    let input = format!("EHLO c.test\r\nAUTH PLAIN {}\r\n", plain("alice", "right"));
    let out = check_splits(&remote, input.as_bytes());
    assert!(!out.replies.contains("AUTH"), "{}", out.replies);
    assert_eq!(
        lines(&out),
        [
            "250 DSN",
            "538 5.7.11 Encryption required for requested authentication mechanism"
        ]
    );
    for setup in [
        Setup {
            tls: true,
            ..remote
        },
        Setup {
            peer: "192.0.2.1:1234",
            auth: AuthSettings {
                enabled: true,
                allow_plaintext: true,
                received_user: false,
            },
            ..Setup::default()
        },
        Setup {
            peer: "[::ffff:127.0.0.2]:1234",
            ..Setup::default()
        },
    ] {
        let out = check_splits(&setup, input.as_bytes());
        assert!(
            out.replies
                .ends_with("235 2.7.0 Authentication successful\r\n"),
            "{}",
            out.replies
        );
    }
    // No accounts: not offered anywhere.
    let off = Setup {
        auth: AuthSettings::default(),
        ..Setup::default()
    };
    let out = check_splits(&off, input.as_bytes());
    assert!(!out.replies.contains("AUTH"), "{}", out.replies);
    assert!(
        out.replies
            .ends_with("503 5.5.1 Error: authentication not enabled\r\n")
    );
    // HELO offers no extensions; AUTH inside a transaction is refused.
    let input = format!(
        "HELO c.test\r\nAUTH PLAIN {0}\r\nEHLO c.test\r\nMAIL FROM:<>\r\nAUTH PLAIN {0}\r\n",
        plain("alice", "right")
    );
    let out = check_splits(&Setup::default(), input.as_bytes());
    assert!(out.replies.contains("503 5.5.1 Error: send EHLO first\r\n"));
    assert!(
        out.replies
            .ends_with("503 5.5.1 Error: MAIL transaction in progress\r\n")
    );
}

#[test]
fn submission_needs_auth_and_received_names_the_user_when_asked() {
    let setup = Setup {
        peer: "192.0.2.1:1234",
        tls: true,
        submission: true,
        auth: AuthSettings {
            enabled: true,
            allow_plaintext: false,
            received_user: true,
        },
    };
    let input = format!(
        "EHLO c.test\r\nMAIL FROM:<alice@example.test>\r\nAUTH PLAIN {}\r\n\
         MAIL FROM:<>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\nbody\r\n.\r\n",
        plain("alice", "right")
    );
    let out = check_splits(&setup, input.as_bytes());
    assert_eq!(
        lines(&out),
        [
            "250 DSN",
            "530 5.7.0 Authentication required",
            "235 2.7.0 Authentication successful",
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Ok: queued as ID1",
        ]
    );
    let stored = String::from_utf8(out.stored[0].clone()).unwrap();
    assert!(
        stored.contains("\t(Authenticated sender: alice)\r\n\tby mx.test with ESMTPSA id ID1"),
        "{stored}"
    );
}

#[test]
fn sasl_lines_may_exceed_the_command_limit() {
    let long = "x".repeat(2000);
    let input = format!(
        "EHLO c.test\r\nAUTH PLAIN {}\r\nAUTH LOGIN\r\n{}\r\n{}\r\n",
        plain("bob", &long),
        encode(b"alice"),
        encode(long.as_bytes())
    );
    let out = check_splits(&Setup::default(), input.as_bytes());
    assert_eq!(
        lines(&out)[1..],
        [
            "535 5.7.8 Error: authentication failed",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "535 5.7.8 Error: authentication failed",
        ]
    );
    let too_long = format!(
        "EHLO c.test\r\nAUTH PLAIN {}\r\nNOOP\r\n",
        "A".repeat(13_000)
    );
    let out = drive_session(session(&Setup::default()), too_long.as_bytes(), &[]);
    assert_eq!(
        lines(&out)[1..],
        ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]
    );
}
