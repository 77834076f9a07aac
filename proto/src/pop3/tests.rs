//! Transcript tests of the POP3 session: each client transcript is fed whole, split at every
//! index and byte by byte, with the actions answered by a fake maildrop and password check;
//! the server's output and the actions must be identical each time.

#![allow(clippy::disallowed_methods)] // tests read the clock to drive the session

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::session::{Action, AuthResult, MessageInfo, OpenError, Pop3Config, ReadError, Session};

const MSG1: &[u8] = b"From: a@b\r\nSubject: one\r\n\r\nbody 1\r\n.dot line\r\n";
const MSG2: &[u8] = b"From: c@d\nSubject: two\n\nbare lf\nsecond\n";

fn config(stls: bool) -> Arc<Pop3Config> {
    Arc::new(Pop3Config {
        hostname: "mx.test".into(),
        timeout: Duration::from_secs(600),
        max_errors: 10,
        stls,
        allow_plaintext_auth: false,
        output_limit: 64,
    })
}

/// The caller's side, faked: alice/secret owns MSG1 and MSG2; "busy" is locked; "down"
/// cannot be checked; "evil" is banned.
#[derive(Default)]
struct Fake {
    actions: Vec<Action>,
    missing: bool,
    /// What the client read.
    out: Vec<u8>,
}

impl Fake {
    fn answer(&mut self, s: &mut Session, now: Instant) -> bool {
        let mut any = false;
        while let Some(a) = s.poll_action() {
            any = true;
            self.actions.push(a.clone());
            match a {
                Action::Authenticate { user, password } => {
                    let r = match (user.as_str(), password.as_slice()) {
                        ("alice", b"secret") | ("busy", b"secret") => AuthResult::Accepted(user),
                        ("down", _) => AuthResult::Unavailable,
                        ("evil", _) => AuthResult::Banned,
                        _ => AuthResult::Rejected,
                    };
                    s.handle_authenticated(r, now);
                }
                Action::Open { user } => {
                    let r = if user == "busy" {
                        Err(OpenError::InUse)
                    } else {
                        Ok(vec![
                            MessageInfo {
                                size: MSG1.len() as u64,
                                uid: "1.M1P1.host".into(),
                            },
                            MessageInfo {
                                size: 49,
                                uid: "2.M2P2.host".into(),
                            },
                        ])
                    };
                    s.handle_opened(r, now);
                }
                Action::Read { message } => {
                    if self.missing {
                        s.handle_read_started(Err(ReadError::Gone), now);
                        continue;
                    }
                    s.handle_read_started(Ok(()), now);
                    let data = [MSG1, MSG2][message];
                    // Small chunks, only while the session has room: as the reactor does.
                    let mut at = 0;
                    while at < data.len() && s.wants_message_data() {
                        let end = (at + 5).min(data.len());
                        s.handle_message_data(&data[at..end], now);
                        at = end;
                        if !s.wants_message_data() && s.is_reading_message() {
                            // Output full: the client reads everything (drained below).
                            let n = s.poll_output().len();
                            self.out.extend_from_slice(s.poll_output());
                            s.output_written(n);
                        }
                    }
                    if s.is_reading_message() {
                        s.handle_message_end(Ok(()), now);
                    }
                }
                Action::Seen { .. } => {}
                Action::Update { .. } => s.handle_updated(true),
                Action::StartTls => s.handle_tls_started(now),
            }
        }
        any
    }
}

struct Run {
    out: Vec<u8>,
    actions: Vec<Action>,
    closed: bool,
}

fn drive(peer: &str, stls: bool, missing: bool, pieces: &[&[u8]]) -> Run {
    let now = Instant::now();
    let peer: SocketAddr = peer.parse().expect("address");
    let mut s = Session::new(config(stls), peer, now);
    let mut fake = Fake {
        missing,
        ..Fake::default()
    };
    let mut inbuf: Vec<u8> = Vec::new();
    for piece in pieces {
        inbuf.extend_from_slice(piece);
        loop {
            let n = s.handle_input(&inbuf, now);
            inbuf.drain(..n);
            let acted = fake.answer(&mut s, now);
            fake.out.extend_from_slice(s.poll_output());
            let w = s.poll_output().len();
            s.output_written(w);
            if n == 0 && !acted {
                break;
            }
        }
    }
    Run {
        out: fake.out,
        actions: fake.actions,
        closed: s.is_closed(),
    }
}

/// Runs `input` whole, split at every index and byte by byte; all runs must agree.
fn transcript(peer: &str, stls: bool, input: &[u8]) -> Run {
    transcript_with(peer, stls, false, input)
}

fn transcript_with(peer: &str, stls: bool, missing: bool, input: &[u8]) -> Run {
    let whole = drive(peer, stls, missing, &[input]);
    for i in 0..=input.len() {
        let r = drive(peer, stls, missing, &[&input[..i], &input[i..]]);
        assert_eq!(
            String::from_utf8_lossy(&r.out),
            String::from_utf8_lossy(&whole.out),
            "split at {i}"
        );
        assert_eq!(r.actions, whole.actions, "split at {i}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let r = drive(peer, stls, missing, &bytes);
    assert_eq!(r.out, whole.out, "byte by byte");
    assert_eq!(r.actions, whole.actions, "byte by byte");
    whole
}

fn text(r: &Run) -> String {
    String::from_utf8_lossy(&r.out).into_owned()
}

#[test]
fn user_pass_stat_list_uidl_retr_top_dele_quit() {
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 1\r\n\
TOP 1 0\r\nRETR 1\r\nRETR 2\r\nDELE 1\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n",
    );
    let expected = "+OK mx.test POP3 server ready\r\n\
+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nUSER\r\nSASL PLAIN\r\nIMPLEMENTATION smtpd\r\n.\r\n\
+OK\r\n\
+OK Logged in.\r\n\
+OK 2 95\r\n\
+OK 2 messages (95 octets)\r\n1 46\r\n2 49\r\n.\r\n\
+OK 2 49\r\n\
+OK\r\n1 1.M1P1.host\r\n2 2.M2P2.host\r\n.\r\n\
+OK 1 1.M1P1.host\r\n\
+OK\r\nFrom: a@b\r\nSubject: one\r\n\r\n.\r\n\
+OK 46 octets\r\nFrom: a@b\r\nSubject: one\r\n\r\nbody 1\r\n..dot line\r\n.\r\n\
+OK 49 octets\r\nFrom: c@d\r\nSubject: two\r\n\r\nbare lf\r\nsecond\r\n.\r\n\
+OK Marked to be deleted.\r\n\
+OK 1 49\r\n\
-ERR No such message.\r\n\
-ERR No such message.\r\n\
-ERR Message is already deleted.\r\n\
+OK Logging out.\r\n";
    assert_eq!(text(&r), expected);
    assert!(r.closed);
    assert_eq!(
        r.actions,
        vec![
            Action::Authenticate {
                user: "alice".into(),
                password: b"secret".to_vec()
            },
            Action::Open {
                user: "alice".into()
            },
            Action::Read { message: 0 },
            Action::Read { message: 0 },
            Action::Seen { message: 0 },
            Action::Read { message: 1 },
            Action::Seen { message: 1 },
            Action::Update { deleted: vec![0] },
        ]
    );
}

#[test]
fn rset_unmarks_and_quit_without_marks_updates_nothing() {
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"USER alice\r\nPASS secret\r\nDELE 2\r\nRSET\r\nNOOP\r\nQUIT\r\n",
    );
    assert!(text(&r).ends_with(
        "+OK Marked to be deleted.\r\n+OK 2 messages (95 octets)\r\n+OK\r\n+OK Logging out.\r\n"
    ));
    assert!(!r.actions.iter().any(|a| matches!(a, Action::Update { .. })));
}

#[test]
fn dropped_connection_after_dele_updates_nothing() {
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"USER alice\r\nPASS secret\r\nDELE 1\r\nDELE 2\r\n",
    );
    assert!(!r.closed);
    assert!(!r.actions.iter().any(|a| matches!(a, Action::Update { .. })));
}

#[test]
fn auth_plain_with_and_without_initial_response() {
    // "\0alice\0secret" and "alice\0alice\0secret".
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nQUIT\r\n",
    );
    assert!(text(&r).contains("+OK Logged in.\r\n"), "{}", text(&r));
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"AUTH PLAIN\r\nYWxpY2UAYWxpY2UAc2VjcmV0\r\nSTAT\r\n",
    );
    assert_eq!(
        text(&r),
        "+OK mx.test POP3 server ready\r\n+ \r\n+OK Logged in.\r\n+OK 2 95\r\n"
    );
    // Cancelled, not base64, wrong password, authzid of someone else, unknown mechanism.
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"AUTH PLAIN\r\n*\r\nAUTH PLAIN !!\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n\
AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\nAUTH CRAM-MD5\r\nAUTH\r\nSTAT\r\n",
    );
    assert_eq!(
        text(&r),
        "+OK mx.test POP3 server ready\r\n+ \r\n-ERR Authentication cancelled.\r\n\
-ERR Invalid base64 data.\r\n-ERR [AUTH] Authentication failed.\r\n\
-ERR [AUTH] Authentication failed.\r\n-ERR Unsupported authentication mechanism.\r\n\
+OK\r\nPLAIN\r\n.\r\n-ERR Command not valid in this state.\r\n"
    );
    assert_eq!(
        r.actions,
        vec![Action::Authenticate {
            user: "alice".into(),
            password: b"wrong".to_vec()
        }]
    );
}

#[test]
fn response_codes_for_in_use_unavailable_and_banned() {
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"USER busy\r\nPASS secret\r\nUSER down\r\nPASS x\r\nPASS y\r\nUSER evil\r\nPASS z\r\nNOOP\r\n",
    );
    assert_eq!(
        text(&r),
        "+OK mx.test POP3 server ready\r\n+OK\r\n\
-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n+OK\r\n\
-ERR [SYS/TEMP] Authentication service unavailable; try again later.\r\n\
-ERR No username given.\r\n+OK\r\n\
-ERR [AUTH] Too many failed logins from your address; try later.\r\n"
    );
    assert!(r.closed);
}

#[test]
fn plaintext_login_refused_off_loopback_until_stls() {
    let r = transcript(
        "192.0.2.1:1000",
        true,
        b"CAPA\r\nUSER alice\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nSTLS\r\n",
    );
    let t = text(&r);
    assert!(t.contains("STLS\r\n") && !t.contains("SASL PLAIN"), "{t}");
    assert!(t.ends_with(
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n\
-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n\
+OK Begin TLS negotiation now.\r\n"
    ));
    assert_eq!(r.actions, vec![Action::StartTls]);
}

/// Drains the output, then feeds `line`; returns what the session answered.
fn say(s: &mut Session, line: &[u8], now: Instant) -> String {
    let n = s.poll_output().len();
    s.output_written(n);
    let used = s.handle_input(line, now);
    assert_eq!(used, line.len());
    String::from_utf8_lossy(s.poll_output()).into_owned()
}

#[test]
fn after_stls_login_works_and_stls_is_gone() {
    let now = Instant::now();
    let mut s = Session::new(config(true), "192.0.2.1:1000".parse().unwrap(), now);
    // Input pipelined after STLS, in the same read, is dropped, never executed.
    say(&mut s, b"STLS\r\nUSER injected\r\n", now);
    assert_eq!(s.poll_action(), Some(Action::StartTls));
    assert_eq!(s.poll_action(), None);
    assert!(!s.wants_read());
    s.handle_tls_started(now);
    let t = say(&mut s, b"CAPA\r\n", now);
    assert!(t.contains("SASL PLAIN\r\n") && !t.contains("STLS"), "{t}");
    assert_eq!(
        say(&mut s, b"STLS\r\n", now),
        "-ERR STLS not available.\r\n"
    );
    assert_eq!(
        say(&mut s, b"PASS x\r\n", now),
        "-ERR No username given.\r\n"
    );
    assert_eq!(say(&mut s, b"USER alice\r\n", now), "+OK\r\n");
}

#[test]
fn retr_of_a_vanished_file_is_an_error_and_the_session_goes_on() {
    let r = transcript_with(
        "127.0.0.1:1000",
        false,
        true,
        b"USER alice\r\nPASS secret\r\nRETR 1\r\nSTAT\r\n",
    );
    assert!(text(&r).ends_with("-ERR Message was deleted by another client.\r\n+OK 2 95\r\n"));
}

#[test]
fn transaction_commands_need_a_login_and_errors_are_limited() {
    let r = transcript(
        "127.0.0.1:1000",
        false,
        b"STAT\r\nRETR 1\r\nDELE 1\r\nFOO\r\nLIST x\r\nPASS a\r\nAPOP a b\r\nRETR 0\r\nQUIT 1\r\nSTAT\r\nNOOP\r\n",
    );
    let t = text(&r);
    assert!(t.ends_with("-ERR Too many invalid commands.\r\n"), "{t}");
    assert_eq!(t.matches("-ERR").count(), 11, "{t}");
    assert!(r.closed);
}

#[test]
fn long_lines_are_refused_and_the_session_stays_in_sync() {
    let mut input = b"USER ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 2000));
    input.extend_from_slice(b"\r\nQUIT\r\n");
    let r = transcript("127.0.0.1:1000", false, &input);
    assert!(
        text(&r).ends_with("-ERR Line too long.\r\n+OK Logging out.\r\n"),
        "{}",
        text(&r)
    );
}

#[test]
fn timeout_closes_without_update_and_shutdown_waits_for_work() {
    let now = Instant::now();
    let mut s = Session::new(config(false), "127.0.0.1:1".parse().unwrap(), now);
    s.handle_input(b"USER alice\r\nPASS secret\r\n", now);
    assert!(matches!(s.poll_action(), Some(Action::Authenticate { .. })));
    assert_eq!(
        s.poll_timeout(),
        None,
        "no deadline while the password is checked"
    );
    s.handle_authenticated(AuthResult::Accepted("alice".into()), now);
    assert!(matches!(s.poll_action(), Some(Action::Open { .. })));
    s.begin_shutdown();
    assert!(!s.is_closed(), "the open finishes first");
    s.handle_opened(Ok(vec![]), now);
    assert!(s.is_closed());
    assert!(
        String::from_utf8_lossy(s.poll_output())
            .ends_with("+OK Logged in.\r\n-ERR [SYS/TEMP] Server shutting down.\r\n")
    );

    let mut s = Session::new(config(false), "127.0.0.1:1".parse().unwrap(), now);
    let d = s.poll_timeout().expect("a deadline");
    assert_eq!(d, now + Duration::from_secs(600));
    s.handle_timeout(d - Duration::from_secs(1));
    assert!(!s.is_closed());
    s.handle_timeout(d);
    assert!(s.is_closed());
    assert!(
        String::from_utf8_lossy(s.poll_output()).ends_with("-ERR Disconnected for inactivity.\r\n")
    );
    assert_eq!(s.poll_action(), None);
}

#[test]
fn a_read_error_midway_closes_without_the_terminator() {
    let now = Instant::now();
    let mut s = Session::new(config(false), "127.0.0.1:1".parse().unwrap(), now);
    s.handle_input(b"USER alice\r\nPASS secret\r\n", now);
    s.poll_action();
    s.handle_authenticated(AuthResult::Accepted("alice".into()), now);
    s.poll_action();
    s.handle_opened(
        Ok(vec![MessageInfo {
            size: 10,
            uid: "u".into(),
        }]),
        now,
    );
    s.handle_input(b"RETR 1\r\nQUIT\r\n", now);
    assert_eq!(s.poll_action(), Some(Action::Read { message: 0 }));
    s.handle_read_started(Ok(()), now);
    s.handle_message_data(b"A: 1\r\n", now);
    s.handle_message_end(Err(()), now);
    assert!(s.is_closed());
    assert!(String::from_utf8_lossy(s.poll_output()).ends_with("+OK 10 octets\r\nA: 1\r\n"));
    assert_eq!(s.poll_action(), None, "no Seen, no Update");
}

#[test]
fn a_banned_address_gets_err_auth_instead_of_the_greeting() {
    let now = Instant::now();
    let mut s = Session::new(config(false), "192.0.2.7:1".parse().unwrap(), now);
    s.refuse_banned();
    assert!(s.is_closed());
    assert!(!s.wants_read());
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(
        s.poll_output(),
        b"-ERR [AUTH] Too many failed logins from your address; try later.\r\n"
    );
}

/// A client that always lags a little behind a RETR: the output buffer stays bounded (sent
/// bytes are dropped), it does not grow with the message.
#[test]
fn streaming_to_a_lagging_client_keeps_the_buffer_bounded() {
    let now = Instant::now();
    let mut s = Session::new(config(false), "127.0.0.1:1".parse().unwrap(), now);
    s.handle_input(b"USER alice\r\nPASS secret\r\n", now);
    s.poll_action();
    s.handle_authenticated(AuthResult::Accepted("alice".into()), now);
    s.poll_action();
    s.handle_opened(
        Ok(vec![MessageInfo {
            size: 1 << 20,
            uid: "u".into(),
        }]),
        now,
    );
    s.handle_input(b"RETR 1\r\n", now);
    assert_eq!(s.poll_action(), Some(Action::Read { message: 0 }));
    s.handle_read_started(Ok(()), now);
    let n = s.poll_output().len();
    s.output_written(n);
    let chunk = [b'x'; 50];
    let mut peak = 0;
    for _ in 0..20_000 {
        assert!(s.wants_message_data());
        s.handle_message_data(&chunk, now);
        // The client reads all but the last 10 octets each time.
        let n = s.poll_output().len().saturating_sub(10);
        s.output_written(n);
        peak = peak.max(s.poll_output().len());
    }
    assert!(peak < 100, "{peak}");
    assert!(s.out_capacity() <= 4 * 64 + 64, "{}", s.out_capacity());
}
