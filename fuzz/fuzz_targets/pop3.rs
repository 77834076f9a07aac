//! The POP3 session state machine fed an arbitrary byte stream, acting like the reactor: the
//! password check, the maildrop and the message files are faked, message bytes come in
//! chunks of seed-dependent sizes, and output is read by a client that lags behind.
//!
//! Input layout: byte 0 = flags (bit 0: peer off loopback, bit 1: STLS offered, bit 2: the
//! maildrop is in use, bit 3: the password check is unavailable), byte 1 = seed of the split
//! points and chunk sizes; the rest is what the client sends.
//!
//! Invariants checked (beyond "no panic"):
//! - the outcome (everything sent, the actions) does not depend on how the input is split
//!   (the transcript ends at STLS: what follows on the wire would be TLS records);
//! - `Update` comes only after a QUIT in the input, and names each message at most once;
//! - `Seen` names a message that was `Read`;
//! - pending output stays bounded (the output limit, one chunk of dot-stuffed file bytes, and
//!   one listing);
//! - every line sent ends with CR LF once the session is closed and its output drained.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::pop3::session::{Action, AuthResult, MessageInfo, OpenError, Pop3Config, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES: [&[u8]; 3] = [
    b"From: a@b\r\nSubject: one\r\n\r\n.dot\r\n..two\r\nend\r\n",
    b"A: 1\nB: 2\n\nbare lf\n.\nlast no newline",
    b"",
];
const LIMIT: usize = 256;
const CHUNK: usize = 64;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    sent: Vec<u8>,
    actions: Vec<Action>,
    closed: bool,
}

fn run(flags: u8, seed: u8, input: &[u8], split: bool) -> Outcome {
    let now = Instant::now();
    let config = Arc::new(Pop3Config {
        hostname: "mx.test".into(),
        timeout: Duration::from_secs(600),
        max_errors: 20,
        stls: flags & 2 != 0,
        allow_plaintext_auth: false,
        output_limit: LIMIT,
    });
    let peer: SocketAddr = if flags & 1 != 0 {
        "192.0.2.1:1000".parse().unwrap()
    } else {
        "127.0.0.1:1000".parse().unwrap()
    };
    let mut s = Session::new(config, peer, now);
    let mut rng = Rng(u64::from(seed) * 0x9E37_79B9 + 1);
    let mut chunk_rng = Rng(u64::from(seed) + 7);
    let mut out = Outcome {
        sent: Vec::new(),
        actions: Vec::new(),
        closed: false,
    };
    let mut inbuf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut reading: Option<(usize, usize)> = None; // (message, offset)
    let mut read = Vec::new();
    loop {
        let mut progress = false;
        if pos < input.len() {
            let n = if split {
                1 + (rng.next() as usize) % (input.len() - pos)
            } else {
                input.len() - pos
            };
            inbuf.extend_from_slice(&input[pos..pos + n]);
            pos += n;
            progress = true;
        }
        if !s.is_reading_message() {
            reading = None; // A TOP that had what it wanted ends before the file does.
        }
        let used = s.handle_input(&inbuf, now);
        inbuf.drain(..used);
        progress |= used > 0;
        while let Some(a) = s.poll_action() {
            progress = true;
            match &a {
                Action::Authenticate { user, password } => {
                    let r = if flags & 8 != 0 {
                        AuthResult::Unavailable
                    } else if password == b"pw" {
                        AuthResult::Accepted(user.to_ascii_lowercase())
                    } else {
                        AuthResult::Rejected
                    };
                    s.handle_authenticated(r, now);
                }
                Action::Open { .. } => {
                    let r = if flags & 4 != 0 {
                        Err(OpenError::InUse)
                    } else {
                        Ok(MESSAGES
                            .iter()
                            .enumerate()
                            .map(|(i, m)| MessageInfo {
                                size: m.len() as u64,
                                uid: format!("u{i}"),
                            })
                            .collect())
                    };
                    s.handle_opened(r, now);
                }
                Action::Read { message } => {
                    assert!(*message < MESSAGES.len());
                    assert!(reading.is_none());
                    read.push(*message);
                    reading = Some((*message, 0));
                    s.handle_read_started(Ok(()), now);
                }
                Action::Seen { message } => assert!(read.contains(message)),
                Action::Update { deleted } => {
                    assert!(input.windows(4).any(|w| w.eq_ignore_ascii_case(b"QUIT")));
                    let mut d = deleted.clone();
                    d.dedup();
                    assert_eq!(&d, deleted);
                    s.handle_updated(true);
                }
                Action::StartTls => {
                    // Whatever follows STLS on the wire would be TLS records: the plaintext
                    // transcript ends here (the session drops what came in the same read).
                    pos = input.len();
                    inbuf.clear();
                    s.handle_tls_started(now);
                }
            }
            out.actions.push(a);
        }
        if let Some((m, off)) = reading {
            if !s.is_reading_message() {
                reading = None;
            } else if s.wants_message_data() {
                let data = MESSAGES[m];
                if off == data.len() {
                    s.handle_message_end(Ok(()), now);
                    reading = None;
                } else {
                    let n = (1 + (chunk_rng.next() as usize) % CHUNK).min(data.len() - off);
                    s.handle_message_data(&data[off..off + n], now);
                    reading = s.is_reading_message().then_some((m, off + n));
                }
                progress = true;
            }
        }
        let pending = s.poll_output().len();
        assert!(pending <= LIMIT + 2 * CHUNK + 4096, "pending {pending}");
        // The client reads all but a few octets (so the buffer must drop what was sent).
        let n = pending.saturating_sub((seed % 4) as usize);
        if n > 0 {
            out.sent.extend_from_slice(&s.poll_output()[..n]);
            s.output_written(n);
            progress = true;
        }
        if !progress {
            break;
        }
    }
    let rest = s.poll_output().len();
    out.sent.extend_from_slice(s.poll_output());
    s.output_written(rest);
    out.closed = s.is_closed();
    if out.closed {
        assert!(
            out.sent.ends_with(b"\r\n"),
            "{:?}",
            String::from_utf8_lossy(&out.sent)
        );
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, seed, input) = (data[0], data[1], &data[2..]);
    let whole = run(flags, seed, input, false);
    let split = run(flags, seed, input, true);
    assert_eq!(whole, split);
});
