//! Checking one session against its script: bytes to send come out, server bytes and events go
//! in, every reply is compared with the expected one, and a mismatch ends the session with its
//! transcript. Sans-io: the caller moves the bytes and passes the time in.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::reply::{Reply, ReplyParser};
use crate::script::{End, Expect, Kind, Script};

/// EHLO keywords the server's contract promises.
const EHLO_KEYWORDS: [&str; 4] = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"];

/// Compares one reply with its expectation; `max_size` is the SIZE EHLO must advertise.
pub fn check(expect: &Expect, reply: &Reply, max_size: u64) -> Result<(), String> {
    if reply.code != expect.code {
        return Err(format!("expected {}, got {}", describe(expect), reply.code));
    }
    if let Some(s) = reply.status
        && u16::from(s.0) != reply.code / 100
    {
        return Err(format!(
            "enhanced status {s} does not match code {}",
            reply.code
        ));
    }
    if let Some(want) = expect.status
        && reply.status != Some(want)
    {
        return Err(format!(
            "expected {}, got enhanced status {:?}",
            describe(expect),
            reply.status.map(|s| s.to_string())
        ));
    }
    match (expect.kind, expect.code) {
        (Kind::Ehlo, 250) => {
            let has = |k: &str| {
                reply
                    .lines
                    .iter()
                    .skip(1)
                    .any(|l| l.eq_ignore_ascii_case(k))
            };
            if let Some(missing) = EHLO_KEYWORDS.iter().find(|k| !has(k)) {
                return Err(format!("EHLO reply lacks {missing}"));
            }
            let size = format!("SIZE {max_size}");
            if !has(&size) {
                return Err(format!(
                    "EHLO reply lacks {size:?} (is --max-size the server's?)"
                ));
            }
        }
        (Kind::Message, 250) if !reply.lines[0].contains("queued as") => {
            return Err("reply after the dot does not say \"queued as\"".to_owned());
        }
        _ => {}
    }
    Ok(())
}

fn describe(e: &Expect) -> String {
    match e.status {
        Some(s) => format!("{} {s} to {}", e.code, e.kind.name()),
        None => format!("{} to {}", e.code, e.kind.name()),
    }
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Exchanging commands and replies.
    Running,
    /// All replies in; waiting for the server to close.
    AwaitingClose,
    /// Finished as scripted.
    Done,
    /// Ended by a mismatch; the reason.
    Failed(String),
}

/// What a session reports as it goes.
pub trait Sink {
    /// A reply matched its expectation after `latency`.
    fn reply(&mut self, kind: Kind, latency: Duration);
    /// The server answered 250 after a message (whether or not that was expected).
    fn delivered(&mut self);
    /// A whole transaction (MAIL sent to the reply after the dot) took `latency`.
    fn transaction(&mut self, latency: Duration);
}

/// One session being checked.
#[derive(Debug)]
pub struct Run {
    /// The session's number in the run.
    pub index: u64,
    script: Script,
    max_size: u64,
    reply_timeout: Duration,
    idx: usize,
    sent: usize,
    expect_pos: usize,
    started: Instant,
    txn_started: Option<Instant>,
    parser: ReplyParser,
    /// Replies received, with the exchange they answered.
    received: Vec<(usize, Reply)>,
    status: Status,
}

impl Run {
    /// Starts checking `script` (the connection is being opened at `now`).
    pub fn new(
        index: u64,
        script: Script,
        max_size: u64,
        reply_timeout: Duration,
        now: Instant,
    ) -> Run {
        Run {
            index,
            script,
            max_size,
            reply_timeout,
            idx: 0,
            sent: 0,
            expect_pos: 0,
            started: now,
            txn_started: None,
            parser: ReplyParser::new(),
            received: Vec::new(),
            status: Status::Running,
        }
    }

    /// The script being run.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Where the session stands.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// True once done or failed.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, Status::Done | Status::Failed(_))
    }

    /// True once the greeting came (or the session ended without it).
    pub fn greeted(&self) -> bool {
        self.idx > 0 || self.is_finished()
    }

    /// Bytes waiting to be sent.
    pub fn to_send(&self) -> &[u8] {
        match (&self.status, self.script.exchanges.get(self.idx)) {
            (Status::Running, Some(x)) => &x.send[self.sent..],
            _ => &[],
        }
    }

    /// `n` bytes of [`Run::to_send`] went out.
    pub fn written(&mut self, n: usize) {
        self.sent += n;
    }

    /// True when the session may be holding a message the server will store but has not
    /// acknowledged yet (its dot was sent and no reply came).
    pub fn message_in_flight(&self) -> bool {
        let Some(x) = self.script.exchanges.get(self.idx) else {
            return false;
        };
        matches!(self.status, Status::Running | Status::Failed(_))
            && self.sent == x.send.len()
            && x.expect[self.expect_pos.min(x.expect.len())..]
                .iter()
                .any(|e| e.kind == Kind::Message && e.code == 250)
    }

    /// Bytes from the server.
    pub fn received(&mut self, bytes: &[u8], now: Instant, sink: &mut impl Sink) {
        if self.is_finished() {
            return;
        }
        if self.status == Status::AwaitingClose {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return self.fail(format!("data after the last reply: {shown:?}"));
        }
        self.parser.push(bytes);
        loop {
            let reply = match self.parser.next_reply() {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => return self.fail(e.to_string()),
            };
            self.on_reply(reply, now, sink);
            if self.status != Status::Running {
                if !matches!(self.status, Status::Failed(_)) && self.parser.has_partial() {
                    self.fail("data after the last reply".to_owned());
                }
                return;
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, now: Instant, sink: &mut impl Sink) {
        let Some(x) = self.script.exchanges.get(self.idx) else {
            return self.fail("reply after the end of the script".to_owned());
        };
        let Some(expect) = x.expect.get(self.expect_pos).copied() else {
            self.received.push((self.idx, reply));
            return self.fail("unexpected reply (none was due)".to_owned());
        };
        let latency = now.saturating_duration_since(self.started);
        if expect.kind == Kind::Message && reply.code == 250 {
            sink.delivered();
        }
        let verdict = check(&expect, &reply, self.max_size);
        self.received.push((self.idx, reply));
        if let Err(why) = verdict {
            return self.fail(why);
        }
        if let Some(silent) = x.silent
            && latency < silent / 2
        {
            return self.fail(format!(
                "421 after {latency:?}, before the idle timeout of {silent:?}"
            ));
        }
        sink.reply(expect.kind, latency);
        match (expect.kind, expect.code) {
            (Kind::Mail, 250) => self.txn_started = Some(self.started),
            (Kind::Message, 250) => {
                if let Some(t) = self.txn_started.take() {
                    sink.transaction(now.saturating_duration_since(t));
                }
            }
            (Kind::Message | Kind::Rset, _) => self.txn_started = None,
            _ => {}
        }
        self.expect_pos += 1;
        if self.expect_pos == x.expect.len() {
            if self.sent < x.send.len() {
                return self.fail("all replies came before the commands were sent".to_owned());
            }
            self.idx += 1;
            self.sent = 0;
            self.expect_pos = 0;
            self.started = now;
            if self.idx == self.script.exchanges.len() {
                self.status = match self.script.end {
                    End::ServerCloses => Status::AwaitingClose,
                    End::ClientCloses => Status::Done,
                };
            }
        }
    }

    /// The server closed the connection.
    pub fn eof(&mut self) {
        match self.status {
            Status::AwaitingClose => self.status = Status::Done,
            Status::Running => self.fail("connection closed by the server".to_owned()),
            _ => {}
        }
    }

    /// The connection failed.
    pub fn io_error(&mut self, e: &std::io::Error) {
        if !self.is_finished() {
            self.fail(format!("I/O error: {e}"));
        }
    }

    /// When the session gives up waiting.
    pub fn deadline(&self) -> Option<Instant> {
        let silent = self
            .script
            .exchanges
            .get(self.idx)
            .and_then(|x| x.silent)
            .unwrap_or_default();
        match self.status {
            Status::Running | Status::AwaitingClose => {
                Some(self.started + silent + self.reply_timeout)
            }
            _ => None,
        }
    }

    /// Called when [`Run::deadline`] passed.
    pub fn timeout(&mut self, now: Instant) {
        let waited = now.saturating_duration_since(self.started);
        match self.status {
            Status::AwaitingClose => self.fail(format!("server did not close within {waited:?}")),
            Status::Running => {
                let what = self
                    .script
                    .exchanges
                    .get(self.idx)
                    .and_then(|x| x.expect.get(self.expect_pos))
                    .map_or_else(|| "a reply".to_owned(), describe);
                self.fail(format!("no reply within {waited:?}: expected {what}"));
            }
            _ => {}
        }
    }

    fn fail(&mut self, why: String) {
        self.status = Status::Failed(why);
    }

    /// The dialogue so far, for a mismatch report: `C:` sent, `S:` received.
    pub fn transcript(&self) -> String {
        let mut t = String::new();
        let s = &self.script;
        let _ = writeln!(
            t,
            "session #{} (error class: {}, pipelining: {}, messages planned: {})",
            self.index,
            s.error.map_or("none", |c| c.name()),
            s.pipelining,
            s.messages
        );
        let last = self.idx.min(s.exchanges.len().saturating_sub(1));
        for (i, x) in s.exchanges.iter().enumerate().take(last + 1) {
            let sent = if i == self.idx {
                &x.send[..self.sent]
            } else {
                &x.send[..]
            };
            render_sent(&mut t, sent);
            if i == self.idx && self.sent < x.send.len() {
                let _ = writeln!(
                    t,
                    "C: ... ({} more octets not yet sent)",
                    x.send.len() - self.sent
                );
            }
            if let Some(d) = x.silent {
                let _ = writeln!(t, "   (silent, server idle timeout {d:?})");
            }
            for (_, r) in self.received.iter().filter(|(j, _)| *j == i) {
                for l in r.render().lines() {
                    let _ = writeln!(t, "S: {}", clip(l));
                }
            }
            let expected: Vec<String> = x.expect.iter().map(describe).collect();
            let _ = writeln!(t, "   (expected: {})", expected.join(", "));
        }
        match &self.status {
            Status::Failed(why) => {
                let _ = writeln!(t, "MISMATCH: {why}");
            }
            other => {
                let _ = writeln!(t, "status: {other:?}");
            }
        }
        t
    }
}

/// Sent bytes as `C:` lines; long runs (message bodies) are shortened.
fn render_sent(t: &mut String, sent: &[u8]) {
    let lines: Vec<&[u8]> = sent.split_inclusive(|&b| b == b'\n').collect();
    let show = |t: &mut String, l: &[u8]| {
        let s = String::from_utf8_lossy(l);
        let _ = writeln!(t, "C: {}", clip(s.trim_end_matches(['\r', '\n'])));
    };
    if lines.len() <= 12 {
        lines.iter().for_each(|l| show(t, l));
    } else {
        lines[..5].iter().for_each(|l| show(t, l));
        let _ = writeln!(
            t,
            "C: ... ({} lines, {} octets in all)",
            lines.len(),
            sent.len()
        );
        lines[lines.len() - 3..].iter().for_each(|l| show(t, l));
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 120 {
        s.escape_debug().to_string()
    } else {
        let end = (0..=100)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}... ({} octets)", s[..end].escape_debug(), s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Status as St;
    use crate::rng::Rng;
    use crate::script::{Exchange, Limits, generate};

    #[derive(Default)]
    struct Counts {
        replies: usize,
        delivered: usize,
        transactions: usize,
    }

    impl Sink for Counts {
        fn reply(&mut self, _: Kind, _: Duration) {
            self.replies += 1;
        }
        fn delivered(&mut self) {
            self.delivered += 1;
        }
        fn transaction(&mut self, _: Duration) {
            self.transactions += 1;
        }
    }

    const EHLO: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n";

    fn ex(send: &str, expect: &[Expect]) -> Exchange {
        Exchange {
            send: send.as_bytes().to_vec(),
            expect: expect.to_vec(),
            silent: None,
        }
    }

    fn e(kind: Kind, code: u16, status: Option<St>) -> Expect {
        Expect { kind, code, status }
    }

    fn script() -> Script {
        Script {
            exchanges: vec![
                ex("", &[e(Kind::Greeting, 220, None)]),
                ex("EHLO c.test\r\n", &[e(Kind::Ehlo, 250, None)]),
                ex(
                    "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
                    &[
                        e(Kind::Mail, 250, Some(St(2, 1, 0))),
                        e(Kind::Rcpt, 250, Some(St(2, 1, 5))),
                        e(Kind::Data, 354, None),
                    ],
                ),
                ex(
                    "hi\r\n.\r\nQUIT\r\n",
                    &[
                        e(Kind::Message, 250, Some(St(2, 0, 0))),
                        e(Kind::Quit, 221, None),
                    ],
                ),
            ],
            end: End::ServerCloses,
            error: None,
            pipelining: true,
            messages: 1,
        }
    }

    fn server_bytes() -> Vec<u8> {
        let mut v = b"220 mx.test ESMTP\r\n".to_vec();
        v.extend_from_slice(EHLO);
        v.extend_from_slice(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 Ok: queued as X\r\n221 2.0.0 Bye\r\n");
        v
    }

    /// Feeds `server` line by line, each line in pieces of `step`, sending whatever is due
    /// before each piece (a server answers only what it received).
    fn drive(server: &[u8], step: usize) -> (Run, Counts) {
        let now = Instant::now();
        let mut run = Run::new(1, script(), 1000, Duration::from_secs(5), now);
        let mut c = Counts::default();
        let pieces = server
            .split_inclusive(|&b| b == b'\n')
            .flat_map(|l| l.chunks(step));
        for chunk in pieces {
            let n = run.to_send().len();
            run.written(n);
            run.received(chunk, now, &mut c);
            let n = run.to_send().len();
            run.written(n);
        }
        (run, c)
    }

    #[test]
    fn a_clean_session_passes_at_any_split() {
        let bytes = server_bytes();
        for step in 1..=bytes.len() {
            let (mut run, c) = drive(&bytes, step);
            assert_eq!(run.status(), &Status::AwaitingClose, "step {step}");
            run.eof();
            assert_eq!(run.status(), &Status::Done);
            assert_eq!((c.replies, c.delivered, c.transactions), (7, 1, 1));
        }
    }

    #[test]
    fn a_wrong_code_fails_with_a_transcript() {
        let bytes = String::from_utf8(server_bytes())
            .unwrap()
            .replace("250 2.1.5", "550 5.1.1");
        let (run, _) = drive(bytes.as_bytes(), 7);
        let Status::Failed(why) = run.status() else {
            panic!("should fail")
        };
        assert!(why.contains("expected 250 2.1.5 to RCPT, got 550"), "{why}");
        let t = run.transcript();
        assert!(t.contains("C: RCPT TO:<c@d.test>"), "{t}");
        assert!(t.contains("S: 550 5.1.1 Ok"), "{t}");
        assert!(t.contains("MISMATCH"), "{t}");
    }

    #[test]
    fn wrong_status_extra_data_early_close_and_timeouts_fail() {
        let bytes = String::from_utf8(server_bytes())
            .unwrap()
            .replace("2.1.0", "2.1.1");
        assert!(matches!(
            drive(bytes.as_bytes(), 100).0.status(),
            Status::Failed(_)
        ));
        let mut more = server_bytes();
        more.extend_from_slice(b"250 extra\r\n");
        assert!(matches!(drive(&more, 3).0.status(), Status::Failed(_)));
        let bytes = server_bytes();
        let (mut run, _) = drive(&bytes[..30], 5);
        run.eof();
        assert!(matches!(run.status(), Status::Failed(w) if w.contains("closed")));
        let (mut run, _) = drive(&bytes[..30], 5);
        let d = run.deadline().unwrap();
        run.timeout(d);
        assert!(matches!(run.status(), Status::Failed(w) if w.contains("no reply")));
        let no_size = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("SIZE 1000", "SIZE 10");
        assert!(
            matches!(drive(no_size.as_bytes(), 9).0.status(), Status::Failed(w) if w.contains("SIZE"))
        );
        let garbage = b"220 ok\r\nHTTP/1.1 400\r\n";
        assert!(
            matches!(drive(garbage, 4).0.status(), Status::Failed(w) if w.contains("malformed"))
        );
    }

    #[test]
    fn in_flight_message_is_noticed() {
        let bytes = server_bytes();
        let cut = bytes.len() - "250 2.0.0 Ok: queued as X\r\n221 2.0.0 Bye\r\n".len();
        let (run, _) = drive(&bytes[..cut], 1000);
        assert!(run.message_in_flight());
        let (run, _) = drive(&bytes, 1000);
        assert!(!run.message_in_flight());
    }

    #[test]
    fn generated_scripts_render() {
        let l = Limits {
            max_recipients: 5,
            max_size: 10_000,
            silent_timeout: None,
        };
        for seed in 0..50 {
            let s = generate(&mut Rng::new(seed), 1.0, &l);
            let run = Run::new(seed, s, 10_000, Duration::from_secs(1), Instant::now());
            assert!(run.transcript().starts_with("session #"));
        }
    }
}
