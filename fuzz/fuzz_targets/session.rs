//! The smtpd session state machine fed an arbitrary byte stream, acting like the reactor.
//!
//! Input layout: byte 0 = flags (trusted, small size limit, slow reader), byte 1 = seed of the
//! split points and of the store outcomes; the rest is what the client sends.
//!
//! Invariants checked (beyond "no panic"):
//! - every reply line is `ddd` + space/hyphen + text + CRLF, a multi-line reply keeps its code,
//!   and nothing is left half-written at the end;
//! - `Begin` only after at least one `250 2.1.5` since the last `250 2.1.0`, and the envelope
//!   written holds exactly that many recipients;
//! - the body stored for a committed message equals an independent reference dot-unstuffing of
//!   the DATA bytes the session consumed, and the session stopped exactly at `CRLF.CRLF`; a
//!   message sent with BDAT (no `354` after `Begin`) is stored with CRLF line ends only, ending
//!   with CRLF unless empty;
//! - store failures are answered `452 4.3.1` (full) / `451 4.3.0` (write error), `250 ...
//!   queued as` only after a successful commit;
//! - the outcome (replies, stored messages) does not depend on how the input is split;
//! - pending output stays bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maildir_core::envelope::EnvelopeReader;
use proto::smtp::server::data::DataDecoder;
use proto::smtp::server::session::{Action, OUTPUT_LIMIT, Session, SessionConfig, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    replies: Vec<u8>,
    stored: Vec<Vec<u8>>,
    closed: bool,
}

/// xorshift: split points and store outcomes from one seed byte.
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

fn outcome(seed: u8, n: usize) -> Result<(), StoreError> {
    // Mostly success; the n-th store answer is a function of (seed, n) only, so that every
    // split sees the same answers.
    match (seed as usize).wrapping_mul(31).wrapping_add(n * 7) % 11 {
        0 => Err(StoreError::Full),
        1 => Err(StoreError::Failed),
        _ => Ok(()),
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Independent reference of the DATA policy (see server/src/data.rs): lines end at CRLF, bare CR
/// or bare LF (all stored as CRLF); a leading dot of a longer line is removed; a "." line ends
/// the data only when both its own end and the previous line's end are a true CRLF (the DATA
/// command's CRLF counts). Returns (content, octets consumed) or None if the end is not there.
fn reference_unstuff(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut prev_real = true;
    while i < data.len() {
        let start = i;
        while i < data.len() && data[i] != b'\r' && data[i] != b'\n' {
            i += 1;
        }
        let content = &data[start..i];
        let real;
        if i >= data.len() {
            // Unterminated last line: no end of data.
            return None;
        } else if data[i] == b'\r' {
            if i + 1 < data.len() && data[i + 1] == b'\n' {
                real = true;
                i += 2;
            } else if i + 1 >= data.len() {
                return None; // a CR at the very end: unknown yet
            } else {
                real = false;
                i += 1;
            }
        } else {
            real = false;
            i += 1;
        }
        if content == b"." && real && prev_real {
            return Some((out, i));
        }
        let content = if content.len() > 1 && content[0] == b'.' {
            &content[1..]
        } else {
            content
        };
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        prev_real = real;
    }
    None
}

/// Checks every reply line; returns the (code, line) list.
fn check_replies(out: &[u8]) {
    let mut rest = out;
    let mut multi: Option<&[u8]> = None;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("reply output not CRLF-terminated: {rest:?}"));
        let line = &rest[..end];
        assert!(line.len() >= 4, "short reply line {line:?}");
        assert!(
            line[..3].iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&line[0]),
            "bad reply code {line:?}"
        );
        assert!(line[3] == b' ' || line[3] == b'-', "bad separator {line:?}");
        assert!(
            !line.contains(&b'\r') && !line.contains(&b'\n'),
            "CR/LF inside reply {line:?}"
        );
        if let Some(code) = multi {
            assert_eq!(code, &line[..3], "code changed in a multi-line reply");
        }
        multi = (line[3] == b'-').then_some(&line[..3]);
        rest = &rest[end + 2..];
    }
    assert!(multi.is_none(), "multi-line reply never finished");
}

fn drive(input: &[u8], flags: u8, seed: u8, split: bool) -> Outcome {
    let config = Arc::new(SessionConfig {
        hostname: "mx.fuzz.test".into(),
        max_size: if flags & 2 != 0 { 64 } else { 1 << 20 },
        max_recipients: 3,
        timeout: Duration::from_secs(300),
        max_errors: 20,
        starttls: false,
        max_hops: 2,
        postmaster: None,
        output_limit: OUTPUT_LIMIT,
        local: None,
        auth: Default::default(),
    });
    let now = Instant::now();
    let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
    let mut s = Session::new(config, peer, flags & 1 != 0, now);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(seed) ^ (u64::from(flags) << 8));
    let slow_reader = flags & 4 != 0;

    let mut fed = 0usize; // input octets offered to the session so far
    let mut consumed = 0usize; // input octets the session consumed
    let mut replies: Vec<u8> = Vec::new();
    let mut stored = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut header_len: Option<usize> = None;
    let mut data_start = 0usize;
    let mut begins = 0usize;
    let mut commits = 0usize;
    let mut bdat = false; // the current message came with BDAT
    let mut queue: std::collections::VecDeque<Action> = std::collections::VecDeque::new();

    loop {
        // Offer more input (a random amount when splitting).
        if fed < input.len() {
            let n = if split {
                1 + (rng.next() % 64) as usize
            } else {
                input.len()
            };
            fed = (fed + n).min(input.len());
        }
        let mut progress = false;
        loop {
            let used = s.handle_input(&input[consumed..fed], now);
            assert!(used <= fed - consumed);
            consumed += used;
            // Events are reports only (the reactor logs and counts them): drain them.
            while s.poll_event().is_some() {}
            let mut acted = false;
            while let Some(a) = queue.pop_front().or_else(|| s.poll_action()) {
                acted = true;
                match a {
                    Action::Begin => {
                        assert!(current.is_none(), "Begin inside a message");
                        // Replies so far must show an accepted recipient after the last MAIL.
                        let seen = [&replies[..], s.poll_output()].concat();
                        let mail = rfind(&seen, b"\r\n250 2.1.0 ")
                            .expect("Begin without an accepted MAIL");
                        let rcpts = count(&seen[mail..], b"\r\n250 2.1.5 ");
                        assert!(rcpts > 0, "Begin without an accepted recipient");
                        begins += 1;
                        let r = outcome(seed, begins * 2);
                        match r {
                            Ok(()) => {
                                current = Some(Vec::new());
                                let before = s.poll_output().len();
                                s.handle_begun(
                                    Ok(format!("ID{begins}")),
                                    now,
                                    SystemTime::UNIX_EPOCH,
                                );
                                bdat = !s.poll_output()[before..].starts_with(b"354 ");
                                data_start = consumed;
                                // Check the envelope against the accepted recipients.
                                let mut env = Vec::new();
                                let mut more = Vec::new();
                                while let Some(a) = s.poll_action() {
                                    match a {
                                        Action::Write(b) => env.extend_from_slice(&b),
                                        other => more.push(other),
                                    }
                                }
                                let (e, _) = EnvelopeReader::open(&env[..])
                                    .expect("session wrote an unreadable envelope");
                                assert_eq!(e.recipients.len(), rcpts, "envelope recipients");
                                header_len = Some(env.len());
                                current.as_mut().unwrap().extend_from_slice(&env);
                                // After DATA nothing else happens before input; BDAT 0 LAST
                                // ends the message at once.
                                assert!(
                                    more.is_empty() || bdat,
                                    "actions beside the header: {more:?}"
                                );
                                queue.extend(more);
                            }
                            Err(e) => {
                                let before = s.poll_output().len();
                                s.handle_begun(Err(e), now, SystemTime::UNIX_EPOCH);
                                let want: &[u8] = match e {
                                    StoreError::Full => b"452 4.3.1 ",
                                    StoreError::Failed => b"451 4.3.0 ",
                                };
                                assert!(
                                    s.poll_output()[before..].starts_with(want),
                                    "store error at Begin answered {:?}",
                                    String::from_utf8_lossy(s.poll_output())
                                );
                            }
                        }
                    }
                    Action::Write(b) => current
                        .as_mut()
                        .expect("Write outside a message")
                        .extend_from_slice(&b),
                    Action::Commit(_) => {
                        let msg = current.take().expect("Commit outside a message");
                        commits += 1;
                        let head = header_len.expect("header length");
                        if bdat {
                            let body = &msg[head..];
                            for (k, &b) in body.iter().enumerate() {
                                if b == b'\n' {
                                    assert!(k > 0 && body[k - 1] == b'\r', "bare LF stored");
                                }
                                if b == b'\r' {
                                    assert_eq!(body.get(k + 1), Some(&b'\n'), "bare CR stored");
                                }
                            }
                            assert!(body.is_empty() || body.ends_with(b"\r\n"));
                        }
                        let data = &input[data_start..consumed];
                        if !bdat {
                            let (want, used) = reference_unstuff(data).unwrap_or_else(|| {
                                panic!("Commit without end of data in {data:?}")
                            });
                            assert_eq!(used, data.len(), "session did not stop at CRLF.CRLF");
                            assert_eq!(
                                &msg[head..],
                                &want[..],
                                "stored body differs from the reference unstuffing"
                            );
                            // And the decoder agrees when fed byte by byte.
                            let mut d = DataDecoder::new(u64::MAX);
                            let mut out = Vec::new();
                            for (k, b) in data.iter().enumerate() {
                                let f = d.feed(std::slice::from_ref(b), &mut out);
                                assert_eq!(f.done, k + 1 == data.len());
                            }
                            assert_eq!(out, want);
                        }
                        let r = outcome(seed, commits * 2 + 1);
                        if r.is_ok() {
                            stored.push(msg);
                        }
                        assert!(!s.wants_read(), "reading while committing");
                        let before = s.poll_output().len();
                        s.handle_stored(r, now);
                        let after = &s.poll_output()[before..];
                        let want: &[u8] = match r {
                            Ok(()) => b"250 2.0.0 Ok: queued as ",
                            Err(StoreError::Full) => b"452 4.3.1 ",
                            Err(StoreError::Failed) => b"451 4.3.0 ",
                        };
                        assert!(
                            after.starts_with(want),
                            "after commit {r:?}: {:?}",
                            String::from_utf8_lossy(after)
                        );
                    }
                    Action::Abort => current = None,
                    #[allow(unreachable_patterns)]
                    other => panic!("unexpected action {other:?} (STARTTLS is not offered)"),
                }
            }
            let pending = s.poll_output().len();
            assert!(pending <= OUTPUT_LIMIT + 1024, "pending output {pending}");
            // A slow reader takes part of the output only.
            let take = if slow_reader && pending > 0 {
                1 + (rng.next() as usize % pending)
            } else {
                pending
            };
            replies.extend_from_slice(&s.poll_output()[..take]);
            s.output_written(take);
            if used == 0 && !acted && take == 0 {
                break;
            }
            progress = true;
        }
        if fed == input.len() && !progress {
            break;
        }
    }
    s.handle_eof();
    while s.poll_action().is_some() {}
    replies.extend_from_slice(s.poll_output());
    check_replies(&replies);
    Outcome {
        replies,
        stored,
        closed: s.is_closed(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, seed, input) = (data[0], data[1], &data[2..]);
    let whole = drive(input, flags & !4, seed, false);
    let split = drive(input, flags, seed, true);
    assert_eq!(whole, split, "outcome depends on the split");
});
