//! The client SMTP session as a pure state machine (sans-io, like rustls or quinn-proto).
//!
//! Owns: the greeting, EHLO (HELO when EHLO is refused), extension discovery, one transaction per
//! job (MAIL FROM with SIZE/BODY/SMTPUTF8, one RCPT per recipient, DATA or RSET), PIPELINING
//! (RFC 2920: MAIL+RCPTs+DATA in one write, and the next group right after the final dot),
//! per-recipient outcomes, reply timeouts (RFC 5321 §4.5.3.2), QUIT, and the SMTP side of
//! STARTTLS (RFC 3207): when to send it, what a refusal means under the policy, discarding
//! anything the server sent after `220` before the handshake, and the reset afterwards (a new
//! EHLO whose extensions replace the old ones). The handshake itself is the driver's.
//! Inputs: server bytes (`handle_input`), body bytes (`push_body` / `end_body`),
//! `tls_established`, `now`.
//! Outputs: bytes to send (`output` / `consumed`), events (`poll_event`), `poll_timeout`.
//! Must not: do I/O, read the clock, read files or know about queues and retries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::reply::{Reply, ReplyParser};

/// Most server bytes kept while a body is being sent.
const MAX_HELD: usize = 4096;

/// One message to send over this session: the recipients that route to this host.
#[derive(Debug, Clone)]
pub struct Job {
    /// The sender with brackets: `<a@b>` or `<>`.
    pub sender: String,
    /// Recipients with brackets.
    pub rcpts: Vec<String>,
    /// Octets of the message as it will be sent (for `SIZE=`).
    pub size: u64,
    /// The body holds octets above 127.
    pub eight_bit: bool,
    /// An address needs SMTPUTF8.
    pub utf8: bool,
}

/// Reply timeouts (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Initial 220.
    pub greeting: Duration,
    /// MAIL, RCPT, EHLO, RSET, QUIT replies.
    pub command: Duration,
    /// The 354 after DATA.
    pub data_init: Duration,
    /// Progress while sending the body.
    pub data_block: Duration,
    /// The reply after the final dot.
    pub data_term: Duration,
}

impl Timeouts {
    /// The RFC's values.
    pub fn rfc() -> Timeouts {
        Timeouts {
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_term: Duration::from_secs(600),
        }
    }

    /// The same limit for every step (tests, impatient operators).
    pub fn all(d: Duration) -> Timeouts {
        Timeouts {
            greeting: d,
            command: d,
            data_init: d,
            data_block: d,
            data_term: d,
        }
    }
}

/// What became of one recipient in this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptStatus {
    /// 2xx after the final dot.
    Sent,
    /// 4xx: try again later.
    Deferred,
    /// 5xx: give up and bounce.
    Bounced,
}

/// What the session does about STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Never send STARTTLS.
    Off,
    /// Send STARTTLS when offered; carry on in plaintext when it is not offered or refused.
    May,
    /// STARTTLS required: without it, QUIT and end with an error (the mail is not sent).
    Require,
    /// The connection is TLS from the first byte (RFC 8314): never send STARTTLS.
    Implicit,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server accepted STARTTLS: start the TLS handshake now, before any other byte is
    /// written, and call `tls_established` when it completes.
    StartTls,
    /// The server refused STARTTLS (policy allows carrying on in plaintext).
    StartTlsRefused(Reply),
    /// Send the body of job `n` now with `push_body`, then `end_body`.
    SendBody(usize),
    /// Job `n` is finished on this session: one status and reply per recipient, in order.
    JobDone(usize, Vec<(RcptStatus, Reply)>),
    /// The session is over. `error` says why when it ended before QUIT was answered; jobs not
    /// reported by `JobDone` were not (completely) tried (`unfinished`).
    Closed { error: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Rset,
    Mail(usize),
    Rcpt(usize, usize),
    Data(usize),
    Dot(usize),
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for replies; no body in progress.
    Commands,
    /// The driver is streaming job `n`'s body.
    Body(usize),
    /// STARTTLS accepted: the driver runs the handshake; nothing is sent or parsed.
    Handshake,
    /// QUIT sent.
    Quitting,
    Closed,
}

/// Server capabilities from the EHLO reply.
#[derive(Debug, Default, Clone)]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE limit (0 = no limit given).
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
}

/// Replies gathered for the transaction in progress.
#[derive(Debug, Default)]
struct Tx {
    mail: Option<Reply>,
    rcpts: Vec<Option<Reply>>,
}

impl Tx {
    fn mail_ok(&self) -> bool {
        self.mail.as_ref().is_some_and(Reply::is_positive)
    }
    fn accepted(&self) -> usize {
        self.rcpts
            .iter()
            .flatten()
            .filter(|r| r.is_positive())
            .count()
    }
}

/// A client SMTP session over one connection.
#[derive(Debug)]
pub struct Session {
    helo: String,
    timeouts: Timeouts,
    jobs: Vec<Job>,
    /// Jobs with an outcome reported.
    done: Vec<bool>,
    /// Index of the next job to start.
    next_job: usize,
    /// Transactions in progress, by job index (at most two with pipelining).
    txs: VecDeque<(usize, Tx)>,
    ext: Extensions,
    parser: ReplyParser,
    expects: VecDeque<Expect>,
    /// Commands of the current job not yet sent (without PIPELINING: one at a time).
    queued: VecDeque<(Vec<u8>, Expect)>,
    out: Vec<u8>,
    out_pos: usize,
    phase: Phase,
    need_rset: bool,
    /// Server bytes that arrived while the body was being sent.
    held: Vec<u8>,
    events: VecDeque<Event>,
    last_activity: Instant,
    /// First line of the greeting, for logs.
    pub banner: String,
    starttls: StartTls,
    /// TLS is up (implicit, or after the STARTTLS handshake).
    tls_active: bool,
    /// Why the session is quitting before sending everything (reported at close).
    quit_error: Option<String>,
}

impl Session {
    /// A session that will send `jobs` in order, starting when the connection is up at `now`.
    pub fn new(helo: &str, jobs: Vec<Job>, timeouts: Timeouts, now: Instant) -> Session {
        let n = jobs.len();
        Session {
            helo: helo.to_owned(),
            timeouts,
            jobs,
            done: vec![false; n],
            next_job: 0,
            txs: VecDeque::new(),
            ext: Extensions::default(),
            parser: ReplyParser::default(),
            expects: VecDeque::from([Expect::Greeting]),
            queued: VecDeque::new(),
            out: Vec::with_capacity(8 * 1024),
            out_pos: 0,
            phase: Phase::Commands,
            need_rset: false,
            held: Vec::new(),
            events: VecDeque::new(),
            last_activity: now,
            banner: String::new(),
            starttls: StartTls::Off,
            tls_active: false,
            quit_error: None,
        }
    }

    /// Sets the STARTTLS policy (default `Off`).
    pub fn with_starttls(mut self, mode: StartTls) -> Session {
        self.starttls = mode;
        self.tls_active = mode == StartTls::Implicit;
        self
    }

    /// The TLS handshake that followed `Event::StartTls` completed at `now`: the SMTP session
    /// starts again (RFC 3207 §4.2) with a new EHLO.
    pub fn tls_established(&mut self, now: Instant) {
        if self.phase != Phase::Handshake {
            return;
        }
        self.tls_active = true;
        self.phase = Phase::Commands;
        self.ext = Extensions::default();
        self.parser = ReplyParser::default();
        self.last_activity = now;
        let cmd = format!("EHLO {}\r\n", self.helo).into_bytes();
        self.send(cmd, Expect::Ehlo);
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of `output()` were written at `now`.
    pub fn consumed(&mut self, n: usize, now: Instant) {
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 64 * 1024 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        if n > 0 {
            self.last_activity = now;
        }
    }

    /// True when the driver should stream more body bytes (the body is in progress and little
    /// output is pending).
    pub fn wants_body(&self) -> Option<usize> {
        match self.phase {
            Phase::Body(n) if self.output().len() < 64 * 1024 => Some(n),
            _ => None,
        }
    }

    /// Appends encoded body bytes (dot-stuffed, CRLF) of the job being sent.
    pub fn push_body(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    /// The body (including the final `.` CRLF) has been pushed.
    pub fn end_body(&mut self, now: Instant) {
        if let Phase::Body(n) = self.phase {
            self.expects.push_back(Expect::Dot(n));
            self.phase = Phase::Commands;
            self.last_activity = now;
            // RFC 2920 §3.1: message content may open a group; pipeline the next transaction.
            if self.ext.pipelining {
                self.advance();
            }
            let held = std::mem::take(&mut self.held);
            self.handle_input(&held, now);
        }
    }

    /// The body of job `n` could not be read: abandon the connection (the job will be retried).
    pub fn abort(&mut self, why: &str) {
        self.close(Some(why.to_owned()));
    }

    /// Jobs that have no outcome yet.
    pub fn unfinished(&self) -> Vec<usize> {
        (0..self.jobs.len()).filter(|&i| !self.done[i]).collect()
    }

    /// Bytes from the server.
    pub fn handle_input(&mut self, mut input: &[u8], now: Instant) {
        if !input.is_empty() {
            self.last_activity = now;
        }
        while !input.is_empty() && self.phase != Phase::Closed {
            if self.phase == Phase::Handshake {
                // RFC 3207 §4.2: plaintext after the 220 is not to be trusted; drop it.
                return;
            }
            if let Phase::Body(_) = self.phase {
                // Replies while the body is being sent (a server giving up early): keep them
                // for when the body ends, bounded.
                if self.held.len() + input.len() > MAX_HELD {
                    self.close(Some(
                        "server sent too much while the message body was being sent".into(),
                    ));
                } else {
                    self.held.extend_from_slice(input);
                }
                return;
            }
            let (used, res) = self.parser.parse(input);
            input = &input[used..];
            match res {
                Ok(Some(reply)) => self.on_reply(reply),
                Ok(None) => {}
                Err(e) => self.close(Some(format!("protocol error: {e}"))),
            }
        }
    }

    /// The server closed the connection (or it failed).
    pub fn handle_eof(&mut self, error: Option<&str>) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Quitting {
            self.close(None);
        } else {
            let why = error.unwrap_or("connection closed by server");
            self.close(Some(format!("lost connection: {why}")));
        }
    }

    /// When a timeout would fire if nothing happens.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.timeouts;
        let limit = match self.phase {
            Phase::Closed => return None,
            Phase::Body(_) => t.data_block,
            Phase::Handshake => t.command,
            _ => match self.expects.front()? {
                Expect::Greeting => t.greeting,
                Expect::Data(_) => t.data_init,
                Expect::Dot(_) => t.data_term,
                _ => t.command,
            },
        };
        Some(self.last_activity + limit)
    }

    /// Checks the timeout at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.poll_timeout()
            && now >= at
        {
            let what = match (self.phase, self.expects.front()) {
                (Phase::Body(_), _) => "sending message body".to_owned(),
                (Phase::Handshake, _) => "TLS handshake".to_owned(),
                (_, Some(e)) => format!("waiting for reply to {}", expect_name(*e)),
                _ => "idle".to_owned(),
            };
            self.close(Some(format!("timeout {what}")));
        }
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn close(&mut self, error: Option<String>) {
        if self.phase != Phase::Closed {
            let error = self.quit_error.take().or(error);
            self.phase = Phase::Closed;
            self.events.push_back(Event::Closed { error });
        }
    }

    /// Gives up on this server politely: QUIT, then end with `why` (nothing else is sent).
    fn quit_with(&mut self, why: String) {
        self.quit_error = Some(why);
        self.queued.clear();
        self.send(b"QUIT\r\n".to_vec(), Expect::Quit);
        self.phase = Phase::Quitting;
    }

    /// After EHLO/HELO: STARTTLS if policy and server allow, else the mail.
    fn after_hello(&mut self) {
        let wanted = matches!(self.starttls, StartTls::May | StartTls::Require);
        if !wanted || self.tls_active {
            self.advance();
        } else if self.ext.starttls {
            self.send(b"STARTTLS\r\n".to_vec(), Expect::StartTls);
        } else if self.starttls == StartTls::Require {
            self.quit_with("TLS is required, but the server does not offer STARTTLS".into());
        } else {
            self.advance();
        }
    }

    fn send(&mut self, cmd: Vec<u8>, expect: Expect) {
        self.out.extend_from_slice(&cmd);
        self.expects.push_back(expect);
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(expect) = self.expects.pop_front() else {
            let text = reply.one_line();
            self.close(Some(format!("unexpected reply: {text}")));
            return;
        };
        let closing = (reply.code == 421).then(|| reply.one_line());
        match expect {
            Expect::Greeting => {
                self.banner = reply.lines.first().cloned().unwrap_or_default();
                if reply.code != 220 {
                    self.close(Some(format!("greeting: {}", reply.one_line())));
                    return;
                }
                let cmd = format!("EHLO {}\r\n", self.helo).into_bytes();
                self.send(cmd, Expect::Ehlo);
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.ext = parse_ehlo(&reply);
                    self.after_hello();
                } else if reply.code >= 500 {
                    let cmd = format!("HELO {}\r\n", self.helo).into_bytes();
                    self.send(cmd, Expect::Helo);
                } else {
                    self.close(Some(format!("EHLO: {}", reply.one_line())));
                    return;
                }
            }
            Expect::Helo => {
                if !reply.is_positive() {
                    self.close(Some(format!("HELO: {}", reply.one_line())));
                    return;
                }
                self.after_hello();
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    self.phase = Phase::Handshake;
                    self.parser = ReplyParser::default();
                    self.events.push_back(Event::StartTls);
                    return;
                } else if self.starttls == StartTls::Require || reply.code == 421 {
                    self.quit_with(format!("STARTTLS refused: {}", reply.one_line()));
                } else {
                    self.events.push_back(Event::StartTlsRefused(reply.clone()));
                    self.advance();
                }
            }
            Expect::Rset => {
                if !reply.is_positive() {
                    self.close(Some(format!("RSET: {}", reply.one_line())));
                    return;
                }
                self.advance();
            }
            Expect::Mail(n) => {
                let ok = reply.is_positive();
                if let Some(tx) = self.tx_mut(n) {
                    tx.mail = Some(reply);
                }
                if !ok && !self.ext.pipelining {
                    // Nothing else of this job was sent: finish it now.
                    self.queued.clear();
                    self.finish_job(n, None);
                }
                self.advance();
            }
            Expect::Rcpt(n, i) => {
                if let Some(tx) = self.tx_mut(n)
                    && let Some(slot) = tx.rcpts.get_mut(i)
                {
                    *slot = Some(reply);
                }
                if !self.ext.pipelining && self.queued.is_empty() {
                    // Last RCPT answered: DATA if someone was accepted, else RSET.
                    let any = self.tx(n).is_some_and(|t| t.accepted() > 0);
                    if any {
                        self.queued
                            .push_back((b"DATA\r\n".to_vec(), Expect::Data(n)));
                    } else {
                        self.finish_job(n, None);
                        self.queued.push_back((b"RSET\r\n".to_vec(), Expect::Rset));
                    }
                }
                self.advance();
            }
            Expect::Data(n) => {
                let usable = self.tx(n).is_some_and(|t| t.mail_ok() && t.accepted() > 0);
                if reply.code == 354 && usable {
                    self.phase = Phase::Body(n);
                    self.events.push_back(Event::SendBody(n));
                } else if reply.code == 354 {
                    // RFC 2920 §3.1: DATA accepted although no recipient was: send an empty message.
                    self.out.extend_from_slice(b".\r\n");
                    self.expects.push_back(Expect::Dot(usize::MAX));
                    self.finish_job(n, None);
                } else {
                    self.finish_job(n, Some(&reply));
                    self.need_rset = true;
                    self.advance();
                }
            }
            Expect::Dot(n) => {
                if n != usize::MAX {
                    self.finish_job(n, Some(&reply));
                }
                self.advance();
            }
            Expect::Quit => {
                self.close(None);
                return;
            }
        }
        if let Some(text) = closing {
            self.close(Some(format!("server closing: {text}")));
        }
    }

    fn tx(&self, n: usize) -> Option<&Tx> {
        self.txs.iter().find(|(j, _)| *j == n).map(|(_, t)| t)
    }

    fn tx_mut(&mut self, n: usize) -> Option<&mut Tx> {
        self.txs.iter_mut().find(|(j, _)| *j == n).map(|(_, t)| t)
    }

    /// Reports job `n`: recipients refused at RCPT keep their reply; accepted ones get `last`
    /// (the reply to DATA or to the dot). Without MAIL success every recipient gets MAIL's reply.
    fn finish_job(&mut self, n: usize, last: Option<&Reply>) {
        let Some(pos) = self.txs.iter().position(|(j, _)| *j == n) else {
            return;
        };
        let Some((_, tx)) = self.txs.remove(pos) else {
            return;
        };
        let fallback = Reply::new(451, "4.4.0 transaction not completed");
        let mut results = Vec::with_capacity(tx.rcpts.len());
        for r in &tx.rcpts {
            let reply = match (&tx.mail, r, last) {
                (Some(m), _, _) if !m.is_positive() => m.clone(),
                (_, Some(r), _) if !r.is_positive() => r.clone(),
                (_, Some(_), Some(l)) => l.clone(),
                _ => fallback.clone(),
            };
            results.push((status_of(&reply), reply));
        }
        self.done[n] = true;
        self.events.push_back(Event::JobDone(n, results));
    }

    /// Fails a job that cannot be sent to this server at all, with a synthesised reply.
    fn refuse_job(&mut self, n: usize, reply: Reply) {
        let results = self.jobs[n]
            .rcpts
            .iter()
            .map(|_| (status_of(&reply), reply.clone()))
            .collect();
        self.done[n] = true;
        self.events.push_back(Event::JobDone(n, results));
    }

    /// Sends what may be sent now: queued commands of the current job, the next job's
    /// transaction, or QUIT when everything is done.
    fn advance(&mut self) {
        if matches!(
            self.phase,
            Phase::Closed | Phase::Quitting | Phase::Body(_) | Phase::Handshake
        ) {
            return;
        }
        if !self.queued.is_empty() {
            if self.expects.is_empty()
                && let Some((cmd, e)) = self.queued.pop_front()
            {
                self.send(cmd, e);
            }
            return;
        }
        // A new transaction may start once nothing of the previous one is awaited, except the
        // final dot when pipelining.
        let busy = self
            .expects
            .iter()
            .any(|e| !matches!(e, Expect::Dot(_)) || !self.ext.pipelining);
        if busy {
            return;
        }
        while self.next_job < self.jobs.len() {
            let n = self.next_job;
            self.next_job += 1;
            if let Some(reply) = self.check_job(n) {
                self.refuse_job(n, reply);
                continue;
            }
            self.start_job(n);
            return;
        }
        if self.expects.is_empty() {
            self.send(b"QUIT\r\n".to_vec(), Expect::Quit);
            self.phase = Phase::Quitting;
        }
    }

    /// A reason this server cannot take job `n`, checked before sending anything.
    fn check_job(&self, n: usize) -> Option<Reply> {
        let job = &self.jobs[n];
        if let Some(limit) = self.ext.size
            && limit > 0
            && job.size > limit
        {
            return Some(Reply::new(
                552,
                "5.3.4 message size exceeds the server's SIZE limit",
            ));
        }
        if job.utf8 && !self.ext.smtputf8 {
            return Some(Reply::new(553, "5.6.7 server does not support SMTPUTF8"));
        }
        None
    }

    fn start_job(&mut self, n: usize) {
        let job = &self.jobs[n];
        let mut mail = format!("MAIL FROM:{}", job.sender);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", job.size));
        }
        if job.eight_bit && self.ext.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if job.utf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let mut cmds: Vec<(Vec<u8>, Expect)> = Vec::with_capacity(job.rcpts.len() + 3);
        if self.need_rset {
            cmds.push((b"RSET\r\n".to_vec(), Expect::Rset));
            self.need_rset = false;
        }
        cmds.push((mail.into_bytes(), Expect::Mail(n)));
        for (i, r) in job.rcpts.iter().enumerate() {
            cmds.push((format!("RCPT TO:{r}\r\n").into_bytes(), Expect::Rcpt(n, i)));
        }
        self.txs.push_back((
            n,
            Tx {
                mail: None,
                rcpts: vec![None; job.rcpts.len()],
            },
        ));
        if self.ext.pipelining {
            cmds.push((b"DATA\r\n".to_vec(), Expect::Data(n)));
            for (c, e) in cmds {
                self.send(c, e);
            }
        } else {
            self.queued.extend(cmds);
            if let Some((c, e)) = self.queued.pop_front() {
                self.send(c, e);
            }
        }
    }
}

fn status_of(reply: &Reply) -> RcptStatus {
    if reply.is_positive() {
        RcptStatus::Sent
    } else if reply.code >= 500 {
        RcptStatus::Bounced
    } else {
        RcptStatus::Deferred
    }
}

fn expect_name(e: Expect) -> &'static str {
    match e {
        Expect::Greeting => "greeting",
        Expect::Ehlo => "EHLO",
        Expect::Helo => "HELO",
        Expect::StartTls => "STARTTLS",
        Expect::Rset => "RSET",
        Expect::Mail(_) => "MAIL FROM",
        Expect::Rcpt(..) => "RCPT TO",
        Expect::Data(_) => "DATA",
        Expect::Dot(_) => "end of data",
        Expect::Quit => "QUIT",
    }
}

fn parse_ehlo(reply: &Reply) -> Extensions {
    let mut ext = Extensions::default();
    for line in reply.lines.iter().skip(1) {
        let mut words = line.split_whitespace();
        let Some(kw) = words.next() else { continue };
        match kw.to_ascii_uppercase().as_str() {
            "PIPELINING" => ext.pipelining = true,
            "8BITMIME" => ext.eight_bit_mime = true,
            "SMTPUTF8" => ext.smtputf8 = true,
            "STARTTLS" => ext.starttls = true,
            "SIZE" => ext.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
            _ => {}
        }
    }
    ext
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(rcpts: &[&str]) -> Job {
        Job {
            sender: "<s@a.test>".into(),
            rcpts: rcpts.iter().map(|r| format!("<{r}>")).collect(),
            size: 100,
            eight_bit: false,
            utf8: false,
        }
    }

    /// Drives a session against a scripted server: `replies` is every byte the server sends, fed
    /// in pieces of `step` octets once the client has something outstanding. Bodies are "B".
    /// Returns everything the client wrote and the events.
    fn run(
        jobs: Vec<Job>,
        replies: &[u8],
        split: &dyn Fn(usize) -> Vec<usize>,
    ) -> (String, Vec<Event>) {
        let now = Instant::now();
        let mut s = Session::new("client.test", jobs, Timeouts::rfc(), now);
        let mut written = Vec::new();
        let mut events = Vec::new();
        let mut cuts = split(replies.len());
        cuts.push(replies.len());
        let mut pos = 0;
        for cut in cuts {
            s.handle_input(&replies[pos..cut], now);
            pos = cut;
            loop {
                while let Some(e) = s.poll_event() {
                    if let Event::SendBody(_) = e {
                        s.push_body(b"B\r\n.\r\n");
                        s.end_body(now);
                    }
                    events.push(e);
                }
                let out = s.output().to_vec();
                if out.is_empty() {
                    break;
                }
                written.extend_from_slice(&out);
                s.consumed(out.len(), now);
            }
        }
        s.handle_eof(None);
        while let Some(e) = s.poll_event() {
            events.push(e);
        }
        (String::from_utf8(written).unwrap(), events)
    }

    fn whole(_: usize) -> Vec<usize> {
        vec![]
    }

    const EHLO_PIPE: &str =
        "220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";
    const EHLO_PLAIN: &str = "220 mx ESMTP\r\n250-mx\r\n250 SIZE\r\n";

    #[test]
    fn pipelined_two_messages() {
        let server = format!(
            "{EHLO_PIPE}250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued 2\r\n221 bye\r\n"
        );
        let (w, ev) = run(
            vec![job(&["a@x.test", "b@x.test"]), job(&["c@x.test"])],
            server.as_bytes(),
            &whole,
        );
        assert_eq!(
            w,
            "EHLO client.test\r\nMAIL FROM:<s@a.test> SIZE=100\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nB\r\n.\r\n\
             MAIL FROM:<s@a.test> SIZE=100\r\nRCPT TO:<c@x.test>\r\nDATA\r\nB\r\n.\r\nQUIT\r\n"
        );
        let done: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::JobDone(n, r) => Some((
                    *n,
                    r.iter()
                        .map(|x| (x.0.clone(), x.1.code))
                        .collect::<Vec<_>>(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            done,
            vec![
                (0, vec![(RcptStatus::Sent, 250), (RcptStatus::Bounced, 550)]),
                (1, vec![(RcptStatus::Sent, 250)]),
            ]
        );
        assert_eq!(ev.last(), Some(&Event::Closed { error: None }));
    }

    #[test]
    fn same_result_at_every_split() {
        let server = format!(
            "{EHLO_PIPE}250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued 2\r\n221 bye\r\n"
        );
        let jobs = || vec![job(&["a@x.test", "b@x.test"]), job(&["c@x.test"])];
        let reference = run(jobs(), server.as_bytes(), &whole);
        for cut in 0..server.len() {
            assert_eq!(
                run(jobs(), server.as_bytes(), &|_| vec![cut]),
                reference,
                "cut {cut}"
            );
        }
        let bytewise = run(jobs(), server.as_bytes(), &|n| (1..n).collect());
        assert_eq!(bytewise, reference);
    }

    #[test]
    fn without_pipelining_one_command_per_reply_and_rset_when_all_refused() {
        let server = format!(
            "{EHLO_PLAIN}250 ok\r\n550 no\r\n250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n221 bye\r\n"
        );
        let now = Instant::now();
        let mut s = Session::new(
            "c",
            vec![job(&["a@x.test"]), job(&["b@x.test"])],
            Timeouts::rfc(),
            now,
        );
        let mut log = Vec::new();
        // Feed one reply at a time and record what the client sends after each.
        for line in server.split_inclusive("\r\n") {
            s.handle_input(line.as_bytes(), now);
            while let Some(e) = s.poll_event() {
                if let Event::SendBody(_) = e {
                    s.push_body(b"B\r\n.\r\n");
                    s.end_body(now);
                }
            }
            let out = String::from_utf8(s.output().to_vec()).unwrap();
            s.consumed(out.len(), now);
            log.push(out);
        }
        let sent: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(
            sent,
            vec![
                "EHLO c\r\n",
                "MAIL FROM:<s@a.test> SIZE=100\r\n",
                "RCPT TO:<a@x.test>\r\n",
                "RSET\r\n",
                "MAIL FROM:<s@a.test> SIZE=100\r\n",
                "RCPT TO:<b@x.test>\r\n",
                "DATA\r\n",
                "B\r\n.\r\n",
                "QUIT\r\n",
            ]
        );
    }

    #[test]
    fn ehlo_refused_falls_back_to_helo() {
        let server =
            "220 old\r\n500 what\r\n250 hi\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
        let (w, ev) = run(vec![job(&["a@x.test"])], server.as_bytes(), &whole);
        assert!(
            w.starts_with("EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<s@a.test>\r\n"),
            "{w}"
        );
        assert!(ev.contains(&Event::JobDone(
            0,
            vec![(RcptStatus::Sent, Reply::new(250, "ok"))]
        )));
    }

    #[test]
    fn pipelined_all_refused_then_data_refused() {
        let server = format!(
            "{EHLO_PIPE}250 ok\r\n550 no\r\n554 no valid recipients\r\n250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n"
        );
        let (w, ev) = run(
            vec![job(&["a@x.test"]), job(&["b@x.test"])],
            server.as_bytes(),
            &whole,
        );
        assert!(w.contains("DATA\r\nRSET\r\nMAIL FROM"), "{w}");
        assert!(ev.contains(&Event::JobDone(
            0,
            vec![(RcptStatus::Bounced, Reply::new(550, "no"))]
        )));
        assert!(ev.contains(&Event::JobDone(
            1,
            vec![(RcptStatus::Sent, Reply::new(250, "ok"))]
        )));
    }

    #[test]
    fn greeting_failure_and_lost_connection() {
        let (_, ev) = run(vec![job(&["a@x.test"])], b"421 busy\r\n", &whole);
        assert!(matches!(&ev[0], Event::Closed { error: Some(e) } if e.contains("421")));
        let server = format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n");
        let now = Instant::now();
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now);
        s.handle_input(server.as_bytes(), now);
        s.handle_eof(None);
        assert_eq!(s.unfinished(), vec![0]);
        let evs: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(matches!(evs.last(), Some(Event::Closed { error: Some(_) })));
    }

    #[test]
    fn size_limit_and_deferral_and_timeout() {
        let mut big = job(&["a@x.test"]);
        big.size = 5000;
        let server = format!("{EHLO_PIPE}250 ok\r\n451 4.3.0 later\r\n554 no rcpts\r\n221 bye\r\n");
        let (_, ev) = run(vec![big, job(&["b@x.test"])], server.as_bytes(), &whole);
        assert!(
            matches!(&ev[0], Event::JobDone(0, r) if r[0].0 == RcptStatus::Bounced && r[0].1.code == 552)
        );
        assert!(matches!(&ev[1], Event::JobDone(1, r) if r[0].0 == RcptStatus::Deferred));

        let now = Instant::now();
        let mut s = Session::new(
            "c",
            vec![job(&["a@x.test"])],
            Timeouts::all(Duration::from_secs(5)),
            now,
        );
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
        s.handle_timeout(now + Duration::from_secs(4));
        assert!(s.poll_event().is_none());
        s.handle_timeout(now + Duration::from_secs(5));
        assert!(
            matches!(s.poll_event(), Some(Event::Closed { error: Some(e) }) if e.contains("greeting"))
        );
    }

    /// Moves output and events until the session is quiet (bodies are "B").
    fn pump(s: &mut Session, now: Instant, written: &mut Vec<u8>, events: &mut Vec<Event>) {
        loop {
            while let Some(e) = s.poll_event() {
                if let Event::SendBody(_) = e {
                    s.push_body(b"B\r\n.\r\n");
                    s.end_body(now);
                }
                events.push(e);
            }
            let out = s.output().to_vec();
            if out.is_empty() {
                break;
            }
            written.extend_from_slice(&out);
            s.consumed(out.len(), now);
        }
    }

    /// A session with STARTTLS policy `mode` fed `plain` (server bytes before TLS) in pieces
    /// of `step`, then, if it asked for the handshake, "completes" it and feeds `tls` (server
    /// bytes over TLS). Returns what it wrote before and after the handshake, and the events.
    fn run_tls(
        mode: StartTls,
        plain: &str,
        tls: &str,
        step: usize,
    ) -> (String, String, Vec<Event>) {
        let now = Instant::now();
        let mut s =
            Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now).with_starttls(mode);
        let (mut w1, mut w2, mut ev) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in plain.as_bytes().chunks(step) {
            s.handle_input(chunk, now);
            pump(&mut s, now, &mut w1, &mut ev);
        }
        if ev.contains(&Event::StartTls) {
            s.tls_established(now);
            pump(&mut s, now, &mut w2, &mut ev);
            for chunk in tls.as_bytes().chunks(step) {
                s.handle_input(chunk, now);
                pump(&mut s, now, &mut w2, &mut ev);
            }
        }
        s.handle_eof(None);
        pump(&mut s, now, &mut w2, &mut ev);
        let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
        (text(w1), text(w2), ev)
    }

    const EHLO_TLS: &str =
        "220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n";

    #[test]
    fn starttls_offered_then_session_resets_and_injected_plaintext_is_dropped() {
        // After "220 ready" the server (or a man in the middle) pipelines a reply in plaintext:
        // it must not be taken as the answer to anything sent over TLS.
        let plain = format!("{EHLO_TLS}220 2.0.0 ready\r\n250 injected\r\n");
        // Over TLS: new extensions (no SIZE now, STARTTLS still listed: not sent again).
        let tls = "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n";
        let reference = run_tls(StartTls::May, &plain, tls, usize::MAX);
        let (w1, w2, ev) = &reference;
        assert_eq!(w1, "EHLO c\r\nSTARTTLS\r\n");
        assert_eq!(
            w2,
            "EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\nB\r\n.\r\nQUIT\r\n"
        );
        assert_eq!(ev[0], Event::StartTls);
        assert!(ev.contains(&Event::JobDone(
            0,
            vec![(RcptStatus::Sent, Reply::new(250, "queued"))]
        )));
        assert_eq!(ev.last(), Some(&Event::Closed { error: None }));
        for step in 1..40 {
            assert_eq!(
                run_tls(StartTls::May, &plain, tls, step),
                reference,
                "step {step}"
            );
        }
        // Require behaves the same when STARTTLS works.
        assert_eq!(run_tls(StartTls::Require, &plain, tls, 7), reference);
    }

    #[test]
    fn starttls_not_offered() {
        let plain = format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n");
        // may: plaintext delivery.
        let (w1, _, ev) = run_tls(StartTls::May, &plain, "", usize::MAX);
        assert!(w1.starts_with("EHLO c\r\nMAIL FROM:"), "{w1}");
        assert!(!w1.contains("STARTTLS"));
        assert_eq!(ev.last(), Some(&Event::Closed { error: None }));
        // encrypt: QUIT at once, nothing sent, the job unfinished with a clear reason.
        let now = Instant::now();
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now)
            .with_starttls(StartTls::Require);
        let (mut w, mut ev) = (Vec::new(), Vec::new());
        s.handle_input(EHLO_PIPE.as_bytes(), now);
        pump(&mut s, now, &mut w, &mut ev);
        assert_eq!(w, b"EHLO c\r\nQUIT\r\n");
        s.handle_input(b"221 bye\r\n", now);
        pump(&mut s, now, &mut w, &mut ev);
        assert_eq!(s.unfinished(), vec![0]);
        assert!(
            matches!(ev.last(), Some(Event::Closed { error: Some(e) }) if e.contains("does not offer STARTTLS")),
            "{ev:?}"
        );
        // Implicit TLS and Off never send STARTTLS, offered or not.
        for mode in [StartTls::Implicit, StartTls::Off] {
            let plain =
                format!("{EHLO_TLS}250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n");
            let (w1, _, ev) = run_tls(mode, &plain, "", usize::MAX);
            assert!(!w1.contains("STARTTLS"), "{mode:?}: {w1}");
            assert_eq!(ev.last(), Some(&Event::Closed { error: None }));
        }
    }

    #[test]
    fn starttls_refused_454() {
        let plain = format!(
            "{EHLO_TLS}454 4.7.0 TLS not available\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n"
        );
        // may: carry on in plaintext on the same connection.
        let (w1, w2, ev) = run_tls(StartTls::May, &plain, "", usize::MAX);
        assert_eq!(
            w1,
            "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<s@a.test> SIZE=100\r\nRCPT TO:<a@x.test>\r\nDATA\r\nB\r\n.\r\nQUIT\r\n"
        );
        assert_eq!(w2, "");
        assert_eq!(
            ev[0],
            Event::StartTlsRefused(Reply::new(454, "4.7.0 TLS not available"))
        );
        assert_eq!(ev.last(), Some(&Event::Closed { error: None }));
        // encrypt: QUIT; the mail is deferred with the refusal as the reason.
        let plain = format!("{EHLO_TLS}454 4.7.0 TLS not available\r\n221 bye\r\n");
        for step in [1, 5, usize::MAX] {
            let (w1, _, ev) = run_tls(StartTls::Require, &plain, "", step);
            assert_eq!(w1, "EHLO c\r\nSTARTTLS\r\nQUIT\r\n");
            assert!(!ev.iter().any(|e| matches!(e, Event::JobDone(..))));
            assert!(
                matches!(ev.last(), Some(Event::Closed { error: Some(e) }) if e == "STARTTLS refused: 454 4.7.0 TLS not available"),
                "{ev:?}"
            );
        }
        // The server drops the connection instead of answering QUIT: same reason.
        let plain = format!("{EHLO_TLS}454 4.7.0 TLS not available\r\n");
        let (_, _, ev) = run_tls(StartTls::Require, &plain, "", usize::MAX);
        assert!(
            matches!(ev.last(), Some(Event::Closed { error: Some(e) }) if e.starts_with("STARTTLS refused")),
            "{ev:?}"
        );
    }

    #[test]
    fn handshake_timeout_and_helo_only_server_under_encrypt() {
        let now = Instant::now();
        let mut s = Session::new(
            "c",
            vec![job(&["a@x.test"])],
            Timeouts::all(Duration::from_secs(5)),
            now,
        )
        .with_starttls(StartTls::May);
        s.handle_input(format!("{EHLO_TLS}220 go\r\n").as_bytes(), now);
        assert_eq!(s.poll_event(), Some(Event::StartTls));
        s.handle_timeout(now + Duration::from_secs(5));
        assert!(
            matches!(s.poll_event(), Some(Event::Closed { error: Some(e) }) if e.contains("TLS handshake"))
        );
        // EHLO refused, HELO accepted: no STARTTLS possible.
        let (w1, _, ev) = run_tls(
            StartTls::Require,
            "220 old\r\n500 what\r\n250 hi\r\n221 bye\r\n",
            "",
            usize::MAX,
        );
        assert_eq!(w1, "EHLO c\r\nHELO c\r\nQUIT\r\n");
        assert!(matches!(ev.last(), Some(Event::Closed { error: Some(_) })));
    }
}
