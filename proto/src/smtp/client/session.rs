//! The client SMTP session as a pure state machine (sans-io, like rustls or quinn-proto).
//!
//! Owns: the greeting, EHLO (HELO when EHLO is refused), extension discovery, transactions
//! (MAIL FROM with SIZE/BODY/SMTPUTF8, one RCPT per recipient, the job's DSN parameters on
//! both only where EHLO offers DSN, RFC 3461; DATA or RSET; at most
//! `max_rcpt` recipients per transaction, the rest and those refused with "452 too many
//! recipients" in the next transaction of the same session, RFC 5321 §4.5.3.1.10), PIPELINING
//! (RFC 2920: MAIL+RCPTs+DATA in one write, and the next group right after the final dot),
//! checking every reply against the command it answers (a reply of the wrong class, one before
//! its command was written, or one when none is expected is a protocol error: the transactions
//! in progress are deferred with 4.5.0, the connection closed, nothing counted as sent),
//! per-recipient outcomes (those taken in a transaction that ended while more of the same job
//! follow are reported at once, `Action::Accepted`), what a server cannot take (SIZE; 8-bit
//! content without 8BITMIME, RFC 6152: 5.6.3; SMTPUTF8 judged per transaction, RFC 6531:
//! 5.6.7), mail loops (the server
//! greets or answers EHLO with our own name: 5.4.6), reply timeouts (RFC 5321 §4.5.3.2: a total
//! deadline per reply, counted from when the command was sent or the previous reply arrived;
//! bytes of a reply do not extend it), QUIT, and the SMTP side of STARTTLS (RFC 3207): when to
//! send it, what a refusal means under the policy, discarding anything the server sent after
//! `220` before the handshake, and the reset afterwards (a new EHLO whose extensions replace the
//! old ones). The handshake itself is the driver's.
//! Inputs: server bytes (`handle_input`), message bytes (`push_body` / `end_body` for DATA,
//! `push_chunk` for BDAT), `handle_tls_started`, `handle_timeout`, `handle_eof`, `now`.
//!
//! CHUNKING (RFC 3030): when the server offers CHUNKING and PIPELINING (and the driver did not
//! turn it off, `with_chunking(false)`), a transaction is MAIL + RCPTs + the message as BDAT
//! chunks (`Action::SendChunks`, `push_chunk`; the last one `BDAT n LAST`), and the next
//! transaction follows at once, without waiting for any reply: what is in flight is bounded by
//! [`MAX_INFLIGHT_BYTES`] and [`MAX_INFLIGHT_TX`], not by round trips. Replies are matched to
//! commands in order; a refused RCPT or BDAT affects only its transaction. Every transaction but
//! the session's first starts with RSET: servers differ in what state a refused MAIL, RCPT or
//! BDAT leaves behind, and the outcome of the previous transaction is not known when the next
//! one is sent (RSET costs a reply line, no round trip). A chunk already announced is always
//! sent whole (the server must read it, RFC 3030 §4.2); after a refused BDAT no further chunk of
//! that message is sent.
//! Outputs: bytes to send (`poll_output` / `output_written`), work for the driver
//! (`poll_action`), `poll_timeout`; [`Session::is_closed`] when it is over.
//! Must not: do I/O, read the clock, read files or know about queues and retries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::reply::{Reply, ReplyParser};

/// Most server bytes kept while a body is being sent.
const MAX_HELD: usize = 4096;

/// Most octets written but not yet answered (the oldest unanswered command counts from its
/// start) before a new BDAT transaction is begun or a further chunk is sent: a server that
/// refuses everything, or closes, wastes at most this much; about 20 ms at 400 Mbit/s.
pub const MAX_INFLIGHT_BYTES: u64 = 1024 * 1024;

/// Most BDAT transactions in flight (sent, final reply not yet read) at once: bounds the
/// session's state and the server's pipelining backlog (Postfix's default
/// `smtpd_recipient_limit`-style bookkeeping stays small).
pub const MAX_INFLIGHT_TX: usize = 64;

/// Recipients per transaction unless configured (Postfix's `smtp_destination_recipient_limit`).
pub const DEFAULT_MAX_RCPT: usize = 50;

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
    /// DSN parameters for `MAIL FROM` (`RET=HDRS ENVID=xyz`, RFC 3461), sent only to a server
    /// that offers DSN; empty for none.
    pub dsn_mail: String,
    /// DSN parameters per recipient (`NOTIFY=NEVER ORCPT=rfc822;a+40b`), by index into
    /// `rcpts` (missing or empty: none), sent only to a server that offers DSN.
    pub dsn_rcpt: Vec<String>,
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
pub enum Action {
    /// The server accepted STARTTLS: start the TLS handshake now, before any other byte is
    /// written, and call `handle_tls_started` when it completes.
    StartTls,
    /// The server refused STARTTLS (policy allows carrying on in plaintext).
    StartTlsRefused(Reply),
    /// Send the body of job `n` now with `push_body`, then `end_body` (once per transaction:
    /// a job split into several transactions sends its body in each).
    SendBody(usize),
    /// Send the message of job `n` now as BDAT chunks with `push_chunk` (the last with
    /// `last`), while `wants_body` says so; exact octets with CRLF line ends, no dot-stuffing.
    /// Once per transaction, like `SendBody`.
    SendChunks(usize),
    /// Recipients of job `n` (indexes into its `rcpts`, with the reply to the final dot) that
    /// the server took in a transaction that ended while other recipients of the job are still
    /// under way (a job split into several transactions): record them now, before the job ends.
    /// The job's `JobDone` follows later with every result, these included and unchanged.
    Accepted(usize, Vec<(usize, Reply)>),
    /// Job `n` is finished on this session: one status and reply per recipient, in order.
    JobDone(usize, Vec<(RcptStatus, Reply)>),
    /// The session is over. `error` says why when it ended before QUIT was answered; jobs not
    /// reported by `JobDone` were not (completely) tried (`unfinished`).
    Closed {
        /// Why the session ended early, if it did.
        error: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Rset,
    /// MAIL of transaction `t`.
    Mail(usize),
    /// RCPT number `i` of transaction `t`.
    Rcpt(usize, usize),
    Data(usize),
    /// The final dot of transaction `t`.
    Dot(usize),
    /// The reply to a BDAT chunk of transaction `t`; `true` for `BDAT n LAST`.
    Bdat(usize, bool),
    /// The final dot of the empty message sent when DATA got 354 although no recipient was
    /// taken (RFC 2920 §3.1): it belongs to no transaction.
    EmptyDot,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for replies; no body in progress.
    Commands,
    /// The driver is streaming job `n`'s body for transaction `t`: `Body(n, t)`.
    Body(usize, usize),
    /// The driver is sending job `n`'s message as BDAT chunks for transaction `t`: replies to
    /// earlier commands are parsed as they come, but no new transaction starts.
    Chunks(usize, usize),
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
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
}

/// One transaction in progress: some of a job's recipients.
#[derive(Debug)]
struct Tx {
    id: usize,
    job: usize,
    /// Indexes into the job's recipients, in RCPT order.
    idx: Vec<usize>,
    mail: Option<Reply>,
    rcpts: Vec<Option<Reply>>,
    /// A BDAT reply of it has been read (its RCPTs are all answered).
    chunked: bool,
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

/// Progress of one job on this session.
#[derive(Debug, Clone, Default)]
struct JobState {
    /// Recipients not yet in a transaction (or put back after "452 too many recipients").
    pending: VecDeque<usize>,
    /// Outcome per recipient.
    results: Vec<Option<(RcptStatus, Reply)>>,
    /// A transaction of it was started, or a recipient got an outcome.
    started: bool,
    /// Reported by `JobDone`.
    done: bool,
}

/// A client SMTP session over one connection.
#[derive(Debug)]
pub struct Session {
    helo: String,
    /// A server that calls itself `helo` is this host: bounce with 5.4.6 (default true).
    loop_check: bool,
    timeouts: Timeouts,
    max_rcpt: usize,
    jobs: Vec<Job>,
    js: Vec<JobState>,
    /// Index of the next job to start.
    next_job: usize,
    /// The job whose recipients are being sent (more transactions of it may follow).
    current: Option<usize>,
    /// Transactions in progress (at most two with pipelining).
    txs: VecDeque<Tx>,
    next_tx: usize,
    ext: Extensions,
    parser: ReplyParser,
    /// Replies awaited, each with the output offset its command ends at.
    expects: VecDeque<(Expect, u64)>,
    /// Commands of the current transaction not yet sent (without PIPELINING: one at a time).
    queued: VecDeque<(Vec<u8>, Expect)>,
    out: Vec<u8>,
    out_pos: usize,
    /// Octets ever appended to the output, and ever written by the driver.
    out_total: u64,
    written: u64,
    phase: Phase,
    need_rset: bool,
    /// Server bytes that arrived while the body was being sent.
    held: Vec<u8>,
    actions: VecDeque<Action>,
    /// The time given with the latest input (`handle_input`, `consumed`, ...).
    now: Instant,
    /// When the wait for the reply at the head of `expects` began: a total deadline per reply.
    wait_since: Instant,
    /// Last progress writing (the body's data-block timeout).
    last_write: Instant,
    /// First line of the greeting, for logs.
    pub banner: String,
    starttls: StartTls,
    /// TLS is up (implicit, or after the STARTTLS handshake).
    tls_active: bool,
    /// Why the session is quitting before sending everything (reported at close).
    quit_error: Option<String>,
    /// BDAT may be used when the server offers CHUNKING and PIPELINING.
    chunking_allowed: bool,
    /// Output offset up to which every command has been answered.
    acked: u64,
    /// A transaction was begun in this SMTP session (since the last EHLO).
    began_tx: bool,
    /// Jobs with recipients put back ("452 too many recipients") after `current` moved on.
    redo: VecDeque<usize>,
}

impl Session {
    /// A session that will send `jobs` in order, starting when the connection is up at `now`.
    pub fn new(helo: &str, jobs: Vec<Job>, timeouts: Timeouts, now: Instant) -> Session {
        let js = jobs
            .iter()
            .map(|j| JobState {
                pending: (0..j.rcpts.len()).collect(),
                results: vec![None; j.rcpts.len()],
                started: false,
                done: false,
            })
            .collect();
        Session {
            helo: helo.to_owned(),
            loop_check: true,
            timeouts,
            max_rcpt: DEFAULT_MAX_RCPT,
            jobs,
            js,
            next_job: 0,
            current: None,
            txs: VecDeque::new(),
            next_tx: 0,
            ext: Extensions::default(),
            parser: ReplyParser::default(),
            expects: VecDeque::from([(Expect::Greeting, 0)]),
            queued: VecDeque::new(),
            out: Vec::with_capacity(8 * 1024),
            out_pos: 0,
            out_total: 0,
            written: 0,
            phase: Phase::Commands,
            need_rset: false,
            held: Vec::new(),
            actions: VecDeque::new(),
            now,
            wait_since: now,
            last_write: now,
            banner: String::new(),
            starttls: StartTls::Off,
            tls_active: false,
            quit_error: None,
            chunking_allowed: true,
            acked: 0,
            began_tx: false,
            redo: VecDeque::new(),
        }
    }

    /// Sets the STARTTLS policy (default `Off`).
    pub fn with_starttls(mut self, mode: StartTls) -> Session {
        self.starttls = mode;
        self.tls_active = mode == StartTls::Implicit;
        self
    }

    /// Whether a server that greets or answers EHLO/HELO with our own HELO name is refused as
    /// a mail loop (default true; false for a next hop configured on purpose, such as the
    /// local smtpd on loopback, which shares this host's name).
    pub fn with_loop_check(mut self, check: bool) -> Session {
        self.loop_check = check;
        self
    }

    /// Whether BDAT may be used when offered (default true; false: always DATA).
    pub fn with_chunking(mut self, allowed: bool) -> Session {
        self.chunking_allowed = allowed;
        self
    }

    /// True when transactions use BDAT (CHUNKING and PIPELINING offered, and allowed).
    pub fn uses_chunking(&self) -> bool {
        self.chunking_allowed && self.ext.chunking && self.ext.pipelining
    }

    /// Octets written or queued whose commands are not all answered yet.
    fn in_flight(&self) -> u64 {
        self.out_total.saturating_sub(self.acked)
    }

    /// Sets the most recipients per transaction (default [`DEFAULT_MAX_RCPT`]; at least 1).
    pub fn with_max_rcpt(mut self, n: usize) -> Session {
        self.max_rcpt = n.max(1);
        self
    }

    /// The TLS handshake that followed `Action::StartTls` completed at `now`: the SMTP session
    /// starts again (RFC 3207 §4.2) with a new EHLO.
    pub fn handle_tls_started(&mut self, now: Instant) {
        if self.phase != Phase::Handshake {
            return;
        }
        self.now = now;
        self.tls_active = true;
        self.phase = Phase::Commands;
        self.ext = Extensions::default();
        self.parser = ReplyParser::default();
        let cmd = format!("EHLO {}\r\n", self.helo).into_bytes();
        self.send(cmd, Expect::Ehlo);
    }

    /// Bytes waiting to be written.
    pub fn poll_output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of `poll_output()` were written at `now`.
    pub fn output_written(&mut self, n: usize, now: Instant) {
        self.now = now;
        let n = n.min(self.out.len() - self.out_pos);
        self.out_pos += n;
        self.written += n as u64;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 64 * 1024 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        if n > 0 {
            self.last_write = now;
            // Waiting for a reply starts when its command is out; writing is progress.
            if !self.expects.is_empty() {
                self.wait_since = now;
            }
        }
    }

    /// True when the driver should stream more body bytes (the body is in progress and little
    /// output is pending).
    pub fn wants_body(&self) -> Option<usize> {
        match self.phase {
            Phase::Body(n, _) if self.poll_output().len() < 64 * 1024 => Some(n),
            Phase::Chunks(n, _)
                if self.poll_output().len() < 64 * 1024
                    && self.in_flight() < MAX_INFLIGHT_BYTES =>
            {
                Some(n)
            }
            _ => None,
        }
    }

    /// Appends one BDAT chunk of the message being sent (`BDAT <len>` or `BDAT <len> LAST`,
    /// then `data`, exact octets). After the last chunk the next transaction may start at once.
    pub fn push_chunk(&mut self, data: &[u8], last: bool, now: Instant) {
        let Phase::Chunks(_, t) = self.phase else {
            return;
        };
        self.now = now;
        let cmd = if last {
            format!("BDAT {} LAST\r\n", data.len())
        } else {
            format!("BDAT {}\r\n", data.len())
        };
        if self.expects.is_empty() {
            self.wait_since = now;
        }
        self.out.extend_from_slice(cmd.as_bytes());
        self.out.extend_from_slice(data);
        self.out_total += (cmd.len() + data.len()) as u64;
        self.expects
            .push_back((Expect::Bdat(t, last), self.out_total));
        if last {
            self.phase = Phase::Commands;
            self.advance();
        }
    }

    /// Appends encoded body bytes (dot-stuffed, CRLF) of the job being sent.
    pub fn push_body(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        self.out_total += data.len() as u64;
    }

    /// The body (including the final `.` CRLF) has been pushed.
    pub fn end_body(&mut self, now: Instant) {
        if let Phase::Body(_, t) = self.phase {
            self.now = now;
            if self.expects.is_empty() {
                self.wait_since = now;
            }
            self.expects.push_back((Expect::Dot(t), self.out_total));
            self.phase = Phase::Commands;
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

    /// The extensions the server announced in its last EHLO reply (none before it, or after
    /// HELO).
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// True once the session has ended: nothing more is read from the server.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Jobs that have no outcome yet.
    pub fn unfinished(&self) -> Vec<usize> {
        (0..self.jobs.len()).filter(|&i| !self.js[i].done).collect()
    }

    /// Bytes from the server. They do not extend any deadline: only complete replies do.
    pub fn handle_input(&mut self, mut input: &[u8], now: Instant) {
        self.now = now;
        while !input.is_empty() && self.phase != Phase::Closed {
            if self.phase == Phase::Handshake {
                // RFC 3207 §4.2: plaintext after the 220 is not to be trusted; drop it.
                return;
            }
            if let Phase::Body(..) = self.phase {
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
                Err(e) => self.protocol_error(e.to_string()),
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
        match self.phase {
            Phase::Closed => None,
            Phase::Body(..) => Some(self.last_write + t.data_block),
            Phase::Handshake => Some(self.wait_since + t.command),
            Phase::Chunks(..) if self.expects.is_empty() => Some(self.last_write + t.data_block),
            _ => {
                let limit = match self.expects.front()?.0 {
                    Expect::Greeting => t.greeting,
                    Expect::Data(_) => t.data_init,
                    // RFC 5321 §4.5.3.2.6: the final reply may take 10 minutes; a chunk's
                    // reply is progress within the data, like a data block.
                    Expect::Dot(_) | Expect::EmptyDot | Expect::Bdat(_, true) => t.data_term,
                    Expect::Bdat(_, false) => t.data_block,
                    _ => t.command,
                };
                Some(self.wait_since + limit)
            }
        }
    }

    /// Checks the timeout at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if let Some(at) = self.poll_timeout()
            && now >= at
        {
            let what = match (self.phase, self.expects.front()) {
                (Phase::Body(..), _) | (Phase::Chunks(..), None) => {
                    "sending message body".to_owned()
                }
                (Phase::Handshake, _) => "TLS handshake".to_owned(),
                (_, Some((e, _))) => format!("waiting for reply to {}", expect_name(*e)),
                _ => "idle".to_owned(),
            };
            self.close(Some(format!("timeout {what}")));
        }
    }

    /// Next thing the driver must act on.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Ends the session. Jobs with some recipients final and the others not (a job split into
    /// several transactions) are reported now, the rest deferred: sending them elsewhere would
    /// send the finished ones twice.
    fn close(&mut self, error: Option<String>) {
        if self.phase == Phase::Closed {
            return;
        }
        let error = self.quit_error.take().or(error);
        let why = error
            .clone()
            .unwrap_or_else(|| "session ended early".into());
        let reply = Reply::new(451, &format!("4.4.2 {why}"));
        self.txs.clear();
        for n in 0..self.jobs.len() {
            let st = &self.js[n];
            if !st.done && st.results.iter().any(Option::is_some) {
                self.fill_and_report(n, &reply);
            }
        }
        self.phase = Phase::Closed;
        self.actions.push_back(Action::Closed { error });
    }

    /// The server broke the protocol: every job with a transaction begun is deferred (4.5.0),
    /// never counted as sent; the connection is closed at once.
    fn protocol_error(&mut self, why: String) {
        if self.phase == Phase::Closed {
            return;
        }
        let why = format!("protocol error: {why}");
        let reply = Reply::new(451, &format!("4.5.0 {why}"));
        self.txs.clear();
        self.queued.clear();
        self.expects.clear();
        for n in 0..self.jobs.len() {
            if self.js[n].started && !self.js[n].done {
                self.fill_and_report(n, &reply);
            }
        }
        self.close(Some(why));
    }

    /// Gives `reply` to every recipient of job `n` without an outcome and reports the job.
    fn fill_and_report(&mut self, n: usize, reply: &Reply) {
        let st = &mut self.js[n];
        st.pending.clear();
        for r in st.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some((status_of(reply), reply.clone()));
        }
        self.report_if_done(n);
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
        if self.expects.is_empty() {
            self.wait_since = self.now;
        }
        self.out.extend_from_slice(&cmd);
        self.out_total += cmd.len() as u64;
        self.expects.push_back((expect, self.out_total));
    }

    /// The server named itself `name` (greeting or EHLO): if that is our own name the mail
    /// would come back to us (RFC 5321 §5.1 "loops back to myself"): bounce everything, QUIT.
    /// Never with the loop check off ([`Session::with_loop_check`]).
    fn is_loop(&mut self, name: Option<&str>) -> bool {
        if !self.loop_check {
            return false;
        }
        let Some(name) = name.filter(|n| n.eq_ignore_ascii_case(&self.helo)) else {
            return false;
        };
        let reply = Reply::new(
            554,
            &format!("5.4.6 mail loops back to myself: the server calls itself {name}"),
        );
        for n in 0..self.jobs.len() {
            if !self.js[n].done {
                self.js[n].started = true;
                self.fill_and_report(n, &reply);
            }
        }
        self.next_job = self.jobs.len();
        self.current = None;
        self.quit_with(format!("mail loops back to myself: {name}"));
        true
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some((expect, end)) = self.expects.pop_front() else {
            self.protocol_error(format!(
                "reply when none was expected: {}",
                reply.one_line()
            ));
            return;
        };
        if end > self.written {
            self.protocol_error(format!(
                "reply to {} before it was sent: {}",
                expect_name(expect),
                reply.one_line()
            ));
            return;
        }
        if !fits(expect, reply.code) {
            self.protocol_error(format!(
                "unexpected reply to {}: {}",
                expect_name(expect),
                reply.one_line()
            ));
            return;
        }
        // The wait for the next reply starts now.
        self.wait_since = self.now;
        self.acked = end;
        let closing = (reply.code == 421).then(|| reply.one_line());
        match expect {
            Expect::Greeting => {
                self.banner = reply.lines.first().cloned().unwrap_or_default();
                if reply.code != 220 {
                    self.close(Some(format!("greeting: {}", reply.one_line())));
                    return;
                }
                if self.is_loop(first_word(&reply)) {
                    return;
                }
                let cmd = format!("EHLO {}\r\n", self.helo).into_bytes();
                self.send(cmd, Expect::Ehlo);
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    if self.is_loop(first_word(&reply)) {
                        return;
                    }
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
                if self.is_loop(first_word(&reply)) {
                    return;
                }
                self.after_hello();
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    self.phase = Phase::Handshake;
                    self.parser = ReplyParser::default();
                    self.actions.push_back(Action::StartTls);
                    return;
                } else if self.starttls == StartTls::Require || reply.code == 421 {
                    self.quit_with(format!("STARTTLS refused: {}", reply.one_line()));
                } else {
                    self.actions
                        .push_back(Action::StartTlsRefused(reply.clone()));
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
            Expect::Mail(_)
            | Expect::Rcpt(..)
            | Expect::Data(_)
            | Expect::Dot(_)
            | Expect::Bdat(..)
            | Expect::EmptyDot => {
                self.on_transaction_reply(expect, reply);
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

    /// A reply within a transaction (MAIL, RCPT, DATA, the final dot): these arms carry the
    /// pipelining subtleties.
    fn on_transaction_reply(&mut self, expect: Expect, reply: Reply) {
        match expect {
            Expect::Mail(t) => {
                let ok = reply.is_positive();
                if let Some(tx) = self.tx_mut(t) {
                    tx.mail = Some(reply);
                }
                if !ok && !self.ext.pipelining {
                    // Nothing else of this transaction was sent: finish it now.
                    self.queued.clear();
                    self.finish_tx(t, None);
                }
                self.advance();
            }
            Expect::Rcpt(t, i) => {
                if let Some(tx) = self.tx_mut(t)
                    && let Some(slot) = tx.rcpts.get_mut(i)
                {
                    *slot = Some(reply);
                }
                if !self.ext.pipelining && self.queued.is_empty() {
                    // Last RCPT answered: DATA if someone was accepted, else RSET.
                    let any = self.tx(t).is_some_and(|x| x.accepted() > 0);
                    if any {
                        self.queued
                            .push_back((b"DATA\r\n".to_vec(), Expect::Data(t)));
                    } else {
                        self.finish_tx(t, None);
                        self.queued.push_back((b"RSET\r\n".to_vec(), Expect::Rset));
                    }
                }
                self.advance();
            }
            Expect::Data(t) => {
                self.retry_too_many(t);
                let usable = self.tx(t).is_some_and(|x| x.mail_ok() && x.accepted() > 0);
                let job = self.tx(t).map(|x| x.job);
                if let (354, true, Some(n)) = (reply.code, usable, job) {
                    self.phase = Phase::Body(n, t);
                    self.last_write = self.now;
                    self.actions.push_back(Action::SendBody(n));
                } else if reply.code == 354 {
                    // RFC 2920 §3.1: DATA accepted although no recipient was: send an empty message.
                    self.send(b".\r\n".to_vec(), Expect::EmptyDot);
                    self.finish_tx(t, None);
                } else {
                    self.finish_tx(t, Some(&reply));
                    self.need_rset = true;
                    self.advance();
                }
            }
            Expect::Dot(t) => {
                self.finish_tx(t, Some(&reply));
                self.advance();
            }
            Expect::Bdat(t, last) => {
                // Every RCPT of `t` is answered by now (replies come in order).
                let first = self
                    .tx_mut(t)
                    .is_some_and(|x| !std::mem::replace(&mut x.chunked, true));
                if first {
                    self.retry_too_many(t);
                }
                if !reply.is_positive() {
                    // RFC 3030 §4.2: the transaction failed; send no further chunk of it (the
                    // replies to chunks already sent are read and change nothing).
                    if self.tx(t).is_some() {
                        self.finish_tx(t, Some(&reply));
                    }
                    if matches!(self.phase, Phase::Chunks(_, c) if c == t) {
                        self.phase = Phase::Commands;
                    }
                } else if last && self.tx(t).is_some() {
                    let usable = self.tx(t).is_some_and(|x| x.mail_ok() && x.accepted() > 0);
                    if usable {
                        self.finish_tx(t, Some(&reply));
                    } else {
                        // 250 to a message nobody was accepted for: nothing was delivered.
                        self.protocol_error(format!(
                            "BDAT accepted without a recipient: {}",
                            reply.one_line()
                        ));
                        return;
                    }
                }
                self.advance();
            }
            Expect::EmptyDot => self.advance(),
            Expect::Greeting
            | Expect::Ehlo
            | Expect::Helo
            | Expect::StartTls
            | Expect::Rset
            | Expect::Quit => {}
        }
    }

    fn tx(&self, t: usize) -> Option<&Tx> {
        self.txs.iter().find(|x| x.id == t)
    }

    fn tx_mut(&mut self, t: usize) -> Option<&mut Tx> {
        self.txs.iter_mut().find(|x| x.id == t)
    }

    /// All RCPTs of transaction `t` are answered: recipients refused as "too many recipients"
    /// go back to the job's pending list for the next transaction, as long as this one took
    /// someone (otherwise the refusals are final for this session: real deferrals).
    fn retry_too_many(&mut self, t: usize) {
        let Some(tx) = self.tx_mut(t) else { return };
        if !tx.mail_ok() || tx.accepted() == 0 {
            return;
        }
        let mut back = Vec::new();
        let (mut idx, mut rcpts) = (Vec::new(), Vec::new());
        for (i, r) in tx.idx.drain(..).zip(tx.rcpts.drain(..)) {
            if r.as_ref().is_some_and(too_many) {
                back.push(i);
            } else {
                idx.push(i);
                rcpts.push(r);
            }
        }
        tx.idx = idx;
        tx.rcpts = rcpts;
        let n = tx.job;
        if !back.is_empty() && self.current != Some(n) && !self.redo.contains(&n) {
            // The session went on to other jobs meanwhile (BDAT pipelining): come back to it.
            self.redo.push_back(n);
        }
        for i in back.into_iter().rev() {
            self.js[n].pending.push_front(i);
        }
    }

    /// Records transaction `t`'s outcome: recipients refused at RCPT keep their reply; accepted
    /// ones get `last` (the reply to DATA or to the dot). Without MAIL success every recipient
    /// of the job still waiting gets MAIL's reply.
    fn finish_tx(&mut self, t: usize, last: Option<&Reply>) {
        let Some(pos) = self.txs.iter().position(|x| x.id == t) else {
            return;
        };
        let Some(tx) = self.txs.remove(pos) else {
            return;
        };
        let n = tx.job;
        let fallback = Reply::new(451, "4.4.0 transaction not completed");
        let mail_failed = tx.mail.as_ref().filter(|m| !m.is_positive());
        for (&i, r) in tx.idx.iter().zip(&tx.rcpts) {
            let reply = match (mail_failed, r, last) {
                (Some(m), _, _) => m.clone(),
                (_, Some(r), _) if !r.is_positive() => r.clone(),
                (_, Some(_), Some(l)) => l.clone(),
                _ => fallback.clone(),
            };
            self.js[n].results[i] = Some((outcome(&reply), reply));
        }
        if let Some(m) = mail_failed {
            let m = m.clone();
            let st = &mut self.js[n];
            for i in st.pending.drain(..) {
                st.results[i] = Some((outcome(&m), m.clone()));
            }
        }
        self.report_if_done(n);
        if !self.js[n].done {
            // More transactions of this job follow: who has the message already is final now.
            let accepted: Vec<(usize, Reply)> = tx
                .idx
                .iter()
                .filter_map(|&i| match &self.js[n].results[i] {
                    Some((RcptStatus::Sent, r)) => Some((i, r.clone())),
                    _ => None,
                })
                .collect();
            if !accepted.is_empty() {
                self.actions.push_back(Action::Accepted(n, accepted));
            }
        }
    }

    /// Reports job `n` once every recipient has an outcome and none is in a transaction.
    fn report_if_done(&mut self, n: usize) {
        let st = &self.js[n];
        if st.done
            || !st.pending.is_empty()
            || self.txs.iter().any(|x| x.job == n)
            || st.results.iter().any(Option::is_none)
        {
            return;
        }
        let results = st.results.iter().flatten().cloned().collect();
        self.js[n].done = true;
        if self.current == Some(n) {
            self.current = None;
        }
        self.actions.push_back(Action::JobDone(n, results));
    }

    /// Sends what may be sent now: queued commands of the current transaction, the next
    /// transaction (more of the current job's recipients, or the next job), or QUIT when
    /// everything is done.
    fn advance(&mut self) {
        if matches!(
            self.phase,
            Phase::Closed
                | Phase::Quitting
                | Phase::Body(..)
                | Phase::Chunks(..)
                | Phase::Handshake
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
        // final dot when pipelining; with BDAT whenever the in-flight window has room.
        let busy = if self.uses_chunking() {
            self.txs.len() >= MAX_INFLIGHT_TX || self.in_flight() >= MAX_INFLIGHT_BYTES
        } else {
            self.expects.iter().any(|(e, _)| {
                !matches!(e, Expect::Dot(_) | Expect::EmptyDot) || !self.ext.pipelining
            })
        };
        if busy {
            return;
        }
        loop {
            if self.current.is_none()
                && let Some(n) = self.redo.pop_front()
            {
                self.current = Some(n);
            }
            if let Some(n) = self.current {
                if !self.js[n].pending.is_empty() {
                    self.start_tx(n);
                    return;
                }
                self.current = None;
            }
            if self.next_job >= self.jobs.len() {
                if self.redo.is_empty() {
                    break;
                }
                continue;
            }
            let n = self.next_job;
            self.next_job += 1;
            if let Some(reply) = self.check_job(n) {
                self.js[n].started = true;
                self.fill_and_report(n, &reply);
                continue;
            }
            self.js[n].started = true;
            self.current = Some(n);
            if !self.ext.smtputf8 {
                // RFC 6531: only the recipients that need SMTPUTF8 cannot go to this server.
                let refused = Reply::new(553, "5.6.7 server does not support SMTPUTF8");
                let job = &self.jobs[n];
                let st = &mut self.js[n];
                st.pending.retain(|&i| {
                    let ascii = job.rcpts[i].is_ascii();
                    if !ascii {
                        st.results[i] = Some((RcptStatus::Bounced, refused.clone()));
                    }
                    ascii
                });
            }
            self.report_if_done(n);
        }
        if self.expects.is_empty() {
            self.send(b"QUIT\r\n".to_vec(), Expect::Quit);
            self.phase = Phase::Quitting;
        }
    }

    /// A reason this server cannot take job `n` at all, checked before sending anything.
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
        if job.eight_bit && !self.ext.eight_bit_mime {
            // RFC 6152 §3: 8-bit data must not go to a server without 8BITMIME (no conversion
            // to quoted-printable is done here).
            return Some(Reply::new(
                554,
                "5.6.3 message has 8-bit content but the server does not support 8BITMIME",
            ));
        }
        if !job.sender.is_ascii() && !self.ext.smtputf8 {
            return Some(Reply::new(553, "5.6.7 server does not support SMTPUTF8"));
        }
        None
    }

    /// Starts a transaction for the next (at most `max_rcpt`) pending recipients of job `n`.
    fn start_tx(&mut self, n: usize) {
        let take = self.max_rcpt.min(self.js[n].pending.len());
        let idx: Vec<usize> = self.js[n].pending.drain(..take).collect();
        let job = &self.jobs[n];
        // RFC 6531 §3.4: SMTPUTF8 when this transaction's envelope needs it.
        let utf8 = !job.sender.is_ascii() || idx.iter().any(|&i| !job.rcpts[i].is_ascii());
        let mut mail = format!("MAIL FROM:{}", job.sender);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", job.size));
        }
        if job.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        // RFC 3461: DSN parameters only to a server that offers DSN.
        if self.ext.dsn && !job.dsn_mail.is_empty() {
            mail.push(' ');
            mail.push_str(&job.dsn_mail);
        }
        mail.push_str("\r\n");
        let t = self.next_tx;
        self.next_tx += 1;
        let mut cmds: Vec<(Vec<u8>, Expect)> = Vec::with_capacity(idx.len() + 3);
        let chunking = self.uses_chunking();
        if chunking && self.began_tx {
            self.need_rset = true;
        }
        self.began_tx = true;
        if self.need_rset {
            cmds.push((b"RSET\r\n".to_vec(), Expect::Rset));
            self.need_rset = false;
        }
        cmds.push((mail.into_bytes(), Expect::Mail(t)));
        for (k, &i) in idx.iter().enumerate() {
            let params = match job.dsn_rcpt.get(i) {
                Some(p) if self.ext.dsn && !p.is_empty() => format!(" {p}"),
                _ => String::new(),
            };
            let cmd = format!("RCPT TO:{}{params}\r\n", job.rcpts[i]).into_bytes();
            cmds.push((cmd, Expect::Rcpt(t, k)));
        }
        self.txs.push_back(Tx {
            id: t,
            job: n,
            rcpts: vec![None; idx.len()],
            idx,
            mail: None,
            chunked: false,
        });
        if chunking {
            for (c, e) in cmds {
                self.send(c, e);
            }
            self.phase = Phase::Chunks(n, t);
            self.last_write = self.now;
            self.actions.push_back(Action::SendChunks(n));
        } else if self.ext.pipelining {
            cmds.push((b"DATA\r\n".to_vec(), Expect::Data(t)));
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

/// Whether a reply with `code` is a possible answer to `expect` (RFC 5321 §4.3.2): the success
/// code(s) of the command, or a 4xx/5xx failure. Anything else is a protocol error.
fn fits(expect: Expect, code: u16) -> bool {
    let failure = (400..600).contains(&code);
    match expect {
        Expect::Greeting | Expect::StartTls => code == 220 || failure,
        Expect::Ehlo | Expect::Helo | Expect::Rset => code == 250 || failure,
        Expect::Mail(_) | Expect::Rcpt(..) => matches!(code, 250 | 251) || failure,
        Expect::Data(_) => code == 354 || failure,
        Expect::Dot(_) | Expect::EmptyDot | Expect::Bdat(..) => {
            (200..300).contains(&code) || failure
        }
        Expect::Quit => true,
    }
}

/// The first word of a reply: the server's name in a greeting or EHLO/HELO reply.
fn first_word(reply: &Reply) -> Option<&str> {
    reply.lines.first()?.split_whitespace().next()
}

/// "Too many recipients" (RFC 5321 §4.5.3.1.10): 452, or 552 which clients must treat the same.
fn too_many(reply: &Reply) -> bool {
    matches!(reply.code, 452 | 552)
        && (reply.enhanced().is_some_and(|e| e.ends_with(".5.3"))
            || reply
                .lines
                .first()
                .is_some_and(|l| l.to_ascii_lowercase().contains("too many recipients")))
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

/// A recipient's outcome from its reply; "too many recipients" is temporary even as 552.
fn outcome(reply: &Reply) -> RcptStatus {
    if too_many(reply) {
        RcptStatus::Deferred
    } else {
        status_of(reply)
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
        Expect::Dot(_) | Expect::EmptyDot => "end of data",
        Expect::Bdat(_, false) => "BDAT",
        Expect::Bdat(_, true) => "BDAT LAST",
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
            "CHUNKING" => ext.chunking = true,
            "DSN" => ext.dsn = true,
            "SIZE" => ext.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
            _ => {}
        }
    }
    ext
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read the clock to drive the session
mod tests {
    use super::*;

    fn job(rcpts: &[&str]) -> Job {
        Job {
            sender: "<s@a.test>".into(),
            rcpts: rcpts.iter().map(|r| format!("<{r}>")).collect(),
            size: 100,
            eight_bit: false,
            dsn_mail: String::new(),
            dsn_rcpt: Vec::new(),
        }
    }

    /// Feeds server bytes the way a real server sends them: a line at a time, each after the
    /// client has written what it had to (a reply can only answer a command already sent).
    fn feed(
        s: &mut Session,
        data: &[u8],
        now: Instant,
        written: &mut Vec<u8>,
        ev: &mut Vec<Action>,
    ) {
        for piece in data.split_inclusive(|&b| b == b'\n') {
            s.handle_input(piece, now);
            pump(s, now, written, ev);
        }
    }

    /// Drives a session against a scripted server: `replies` is every byte the server sends, fed
    /// in pieces of `step` octets once the client has something outstanding. Bodies are "B".
    /// Returns everything the client wrote and the events.
    fn run(
        jobs: Vec<Job>,
        replies: &[u8],
        split: &dyn Fn(usize) -> Vec<usize>,
    ) -> (String, Vec<Action>) {
        let now = Instant::now();
        let s = Session::new("client.test", jobs, Timeouts::rfc(), now);
        run_session(s, now, replies, split)
    }

    /// [`run`] with a session built by the test.
    fn run_session(
        mut s: Session,
        now: Instant,
        replies: &[u8],
        split: &dyn Fn(usize) -> Vec<usize>,
    ) -> (String, Vec<Action>) {
        let mut written = Vec::new();
        let mut events = Vec::new();
        let mut cuts = split(replies.len());
        cuts.push(replies.len());
        let mut pos = 0;
        pump(&mut s, now, &mut written, &mut events);
        for cut in cuts {
            feed(&mut s, &replies[pos..cut], now, &mut written, &mut events);
            pos = cut;
        }
        s.handle_eof(None);
        while let Some(e) = s.poll_action() {
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
                Action::JobDone(n, r) => Some((
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
        assert_eq!(ev.last(), Some(&Action::Closed { error: None }));
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
            while let Some(e) = s.poll_action() {
                if let Action::SendBody(_) = e {
                    s.push_body(b"B\r\n.\r\n");
                    s.end_body(now);
                }
            }
            let out = String::from_utf8(s.poll_output().to_vec()).unwrap();
            s.output_written(out.len(), now);
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
        assert!(ev.contains(&Action::JobDone(
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
        assert!(ev.contains(&Action::JobDone(
            0,
            vec![(RcptStatus::Bounced, Reply::new(550, "no"))]
        )));
        assert!(ev.contains(&Action::JobDone(
            1,
            vec![(RcptStatus::Sent, Reply::new(250, "ok"))]
        )));
    }

    #[test]
    fn greeting_failure_and_lost_connection() {
        let (_, ev) = run(vec![job(&["a@x.test"])], b"421 busy\r\n", &whole);
        assert!(matches!(&ev[0], Action::Closed { error: Some(e) } if e.contains("421")));
        let server = format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n");
        let now = Instant::now();
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now);
        let (mut w, mut evs) = (Vec::new(), Vec::new());
        pump(&mut s, now, &mut w, &mut evs);
        feed(&mut s, server.as_bytes(), now, &mut w, &mut evs);
        s.handle_eof(None);
        pump(&mut s, now, &mut w, &mut evs);
        assert_eq!(s.unfinished(), vec![0]);
        assert!(
            matches!(evs.last(), Some(Action::Closed { error: Some(e) }) if e.contains("lost connection"))
        );
    }

    #[test]
    fn size_limit_and_deferral_and_timeout() {
        let mut big = job(&["a@x.test"]);
        big.size = 5000;
        let server = format!("{EHLO_PIPE}250 ok\r\n451 4.3.0 later\r\n554 no rcpts\r\n221 bye\r\n");
        let (_, ev) = run(vec![big, job(&["b@x.test"])], server.as_bytes(), &whole);
        assert!(
            matches!(&ev[0], Action::JobDone(0, r) if r[0].0 == RcptStatus::Bounced && r[0].1.code == 552)
        );
        assert!(matches!(&ev[1], Action::JobDone(1, r) if r[0].0 == RcptStatus::Deferred));

        let now = Instant::now();
        let mut s = Session::new(
            "c",
            vec![job(&["a@x.test"])],
            Timeouts::all(Duration::from_secs(5)),
            now,
        );
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
        s.handle_timeout(now + Duration::from_secs(4));
        assert!(s.poll_action().is_none());
        s.handle_timeout(now + Duration::from_secs(5));
        assert!(
            matches!(s.poll_action(), Some(Action::Closed { error: Some(e) }) if e.contains("greeting"))
        );
    }

    /// Moves output and events until the session is quiet (bodies are "B", one BDAT chunk).
    fn pump(s: &mut Session, now: Instant, written: &mut Vec<u8>, events: &mut Vec<Action>) {
        loop {
            while let Some(e) = s.poll_action() {
                match e {
                    Action::SendBody(_) => {
                        s.push_body(b"B\r\n.\r\n");
                        s.end_body(now);
                    }
                    Action::SendChunks(_) => s.push_chunk(b"B\r\n", true, now),
                    _ => {}
                }
                events.push(e);
            }
            let out = s.poll_output().to_vec();
            if out.is_empty() {
                break;
            }
            written.extend_from_slice(&out);
            s.output_written(out.len(), now);
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
    ) -> (String, String, Vec<Action>) {
        let now = Instant::now();
        let mut s =
            Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now).with_starttls(mode);
        let (mut w1, mut w2, mut ev) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in plain.as_bytes().chunks(step) {
            feed(&mut s, chunk, now, &mut w1, &mut ev);
        }
        if ev.contains(&Action::StartTls) {
            s.handle_tls_started(now);
            pump(&mut s, now, &mut w2, &mut ev);
            for chunk in tls.as_bytes().chunks(step) {
                feed(&mut s, chunk, now, &mut w2, &mut ev);
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
        assert_eq!(ev[0], Action::StartTls);
        assert!(ev.contains(&Action::JobDone(
            0,
            vec![(RcptStatus::Sent, Reply::new(250, "queued"))]
        )));
        assert_eq!(ev.last(), Some(&Action::Closed { error: None }));
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
        assert_eq!(ev.last(), Some(&Action::Closed { error: None }));
        // encrypt: QUIT at once, nothing sent, the job unfinished with a clear reason.
        let now = Instant::now();
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now)
            .with_starttls(StartTls::Require);
        let (mut w, mut ev) = (Vec::new(), Vec::new());
        feed(&mut s, EHLO_PIPE.as_bytes(), now, &mut w, &mut ev);
        assert_eq!(w, b"EHLO c\r\nQUIT\r\n");
        s.handle_input(b"221 bye\r\n", now);
        pump(&mut s, now, &mut w, &mut ev);
        assert_eq!(s.unfinished(), vec![0]);
        assert!(
            matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e.contains("does not offer STARTTLS")),
            "{ev:?}"
        );
        // Implicit TLS and Off never send STARTTLS, offered or not.
        for mode in [StartTls::Implicit, StartTls::Off] {
            let plain =
                format!("{EHLO_TLS}250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n");
            let (w1, _, ev) = run_tls(mode, &plain, "", usize::MAX);
            assert!(!w1.contains("STARTTLS"), "{mode:?}: {w1}");
            assert_eq!(ev.last(), Some(&Action::Closed { error: None }));
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
            Action::StartTlsRefused(Reply::new(454, "4.7.0 TLS not available"))
        );
        assert_eq!(ev.last(), Some(&Action::Closed { error: None }));
        // encrypt: QUIT; the mail is deferred with the refusal as the reason.
        let plain = format!("{EHLO_TLS}454 4.7.0 TLS not available\r\n221 bye\r\n");
        for step in [1, 5, usize::MAX] {
            let (w1, _, ev) = run_tls(StartTls::Require, &plain, "", step);
            assert_eq!(w1, "EHLO c\r\nSTARTTLS\r\nQUIT\r\n");
            assert!(!ev.iter().any(|e| matches!(e, Action::JobDone(..))));
            assert!(
                matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e == "STARTTLS refused: 454 4.7.0 TLS not available"),
                "{ev:?}"
            );
        }
        // The server drops the connection instead of answering QUIT: same reason.
        let plain = format!("{EHLO_TLS}454 4.7.0 TLS not available\r\n");
        let (_, _, ev) = run_tls(StartTls::Require, &plain, "", usize::MAX);
        assert!(
            matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e.starts_with("STARTTLS refused")),
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
        let (mut w, mut ev) = (Vec::new(), Vec::new());
        feed(
            &mut s,
            format!("{EHLO_TLS}220 go\r\n").as_bytes(),
            now,
            &mut w,
            &mut ev,
        );
        assert_eq!(ev, vec![Action::StartTls]);
        s.handle_timeout(now + Duration::from_secs(5));
        assert!(
            matches!(s.poll_action(), Some(Action::Closed { error: Some(e) }) if e.contains("TLS handshake"))
        );
        // EHLO refused, HELO accepted: no STARTTLS possible.
        let (w1, _, ev) = run_tls(
            StartTls::Require,
            "220 old\r\n500 what\r\n250 hi\r\n221 bye\r\n",
            "",
            usize::MAX,
        );
        assert_eq!(w1, "EHLO c\r\nHELO c\r\nQUIT\r\n");
        assert!(matches!(ev.last(), Some(Action::Closed { error: Some(_) })));
    }

    /// One recipient's outcome: status, reply code, first line of the reply.
    type Outcome = (RcptStatus, u16, String);

    /// The outcomes reported, as (job, outcome per recipient).
    fn outcomes(ev: &[Action]) -> Vec<(usize, Vec<Outcome>)> {
        ev.iter()
            .filter_map(|e| match e {
                Action::JobDone(n, r) => Some((
                    *n,
                    r.iter()
                        .map(|(st, rep)| (st.clone(), rep.code, rep.lines[0].clone()))
                        .collect(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Runs `server` whole and split at every index; all must agree. Returns the whole run.
    fn run_all_splits(make: &dyn Fn(Instant) -> Session, server: &str) -> (String, Vec<Action>) {
        let now = Instant::now();
        let reference = run_session(make(now), now, server.as_bytes(), &whole);
        for cut in 0..server.len() {
            assert_eq!(
                run_session(make(now), now, server.as_bytes(), &|_| vec![cut]),
                reference,
                "cut {cut}"
            );
        }
        assert_eq!(
            run_session(make(now), now, server.as_bytes(), &|n| (1..n).collect()),
            reference,
            "byte by byte"
        );
        reference
    }

    fn plain(jobs: Vec<Job>) -> impl Fn(Instant) -> Session {
        move |now| Session::new("client.test", jobs.clone(), Timeouts::rfc(), now)
    }

    /// Issue 10 item 4: a reply of the wrong class for its command is a protocol error: the
    /// transaction is deferred with 4.5.0 and the connection closed; nothing is ever "sent".
    #[test]
    fn reply_of_the_wrong_class_is_a_protocol_error() {
        let deferred = |ev: &[Action]| {
            let o = outcomes(ev);
            assert_eq!(o.len(), 1, "{ev:?}");
            assert_eq!(o[0].1[0].0, RcptStatus::Deferred, "{ev:?}");
            assert_eq!(o[0].1[0].1, 451);
            assert!(o[0].1[0].2.starts_with("4.5.0 protocol error: "), "{ev:?}");
            assert!(
                matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e.starts_with("protocol error")),
                "{ev:?}"
            );
        };
        // DATA answered with 250 (pipelined): no content was ever sent, so never delivered.
        let server = format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n");
        let (w, ev) = run_all_splits(&plain(vec![job(&["a@x.test"])]), &server);
        deferred(&ev);
        assert!(!w.contains("B\r\n"), "no body after a 250 to DATA: {w}");
        assert!(!w.contains("QUIT"), "closed at once: {w}");
        assert!(ev.iter().any(
            |e| matches!(e, Action::Closed { error: Some(e) } if e.contains("unexpected reply to DATA: 250"))
        ));
        // The same without PIPELINING.
        let server = format!("{EHLO_PLAIN}250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n");
        let (w, ev) = run_all_splits(&plain(vec![job(&["a@x.test"])]), &server);
        deferred(&ev);
        assert!(w.ends_with("DATA\r\n"), "{w}");
        // 3xx to MAIL, 354 to RCPT, 3xx after the final dot, 1xx anywhere.
        for server in [
            format!("{EHLO_PIPE}354 what\r\n"),
            format!("{EHLO_PIPE}250 ok\r\n354 what\r\n"),
            format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n354 again\r\n"),
            format!("{EHLO_PIPE}250 ok\r\n150 hm\r\n"),
        ] {
            let (_, ev) = run_all_splits(&plain(vec![job(&["a@x.test"])]), &server);
            deferred(&ev);
        }
        // Any 2xx after the final dot is success.
        let server = format!("{EHLO_PIPE}250 ok\r\n251 ok\r\n354 go\r\n251 fine\r\n221 bye\r\n");
        let (_, ev) = run_all_splits(&plain(vec![job(&["a@x.test"])]), &server);
        assert_eq!(
            outcomes(&ev),
            vec![(0, vec![(RcptStatus::Sent, 251, "fine".into())])]
        );
    }

    /// Item 4: a second greeting shifts every later reply by one; it must not be taken as the
    /// answer to EHLO, whether it arrives before EHLO was written or after.
    #[test]
    fn a_second_greeting_is_a_protocol_error() {
        // After EHLO was written: 220 is not an answer to EHLO.
        let server = format!("220 mx\r\n{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
        let (w, ev) = run_all_splits(&plain(vec![job(&["a@x.test"])]), &server);
        assert_eq!(w, "EHLO client.test\r\n");
        assert!(outcomes(&ev).is_empty(), "no job was started: {ev:?}");
        assert!(
            matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e == "protocol error: unexpected reply to EHLO: 220 mx ESMTP"),
            "{ev:?}"
        );
        // In the same packet as the greeting, before EHLO could be written: a reply that
        // answers nothing we sent, whatever its code.
        let now = Instant::now();
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now);
        s.handle_input(b"220 mx\r\n250 mx\r\n", now);
        let ev: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
        assert!(
            matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e == "protocol error: reply to EHLO before it was sent: 250 mx"),
            "{ev:?}"
        );
        assert_eq!(s.unfinished(), vec![0]);
    }

    /// A server that floods the connection ends its session (every input is bounded), and the
    /// session says so, so the reactor stops reading it.
    #[test]
    fn a_flooding_server_closes_the_session() {
        let now = Instant::now();
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now);
        assert!(!s.is_closed());
        let flood = vec![b'x'; 64 * 1024];
        s.handle_input(&flood, now);
        assert!(s.is_closed(), "an endless line is refused");
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now);
        s.handle_input("220 mx\r\n".repeat(1000).as_bytes(), now);
        assert!(s.is_closed(), "endless replies are refused");
    }

    /// Item 4: replies that arrive while the body is still being written answer nothing we sent
    /// (the final dot is not out yet): a protocol error, never "delivered".
    #[test]
    fn reply_to_the_dot_before_the_dot_was_written() {
        let now = Instant::now();
        // Written line by line, but the body is left unfinished when the reply comes.
        let mut s = Session::new("c", vec![job(&["a@x.test"])], Timeouts::rfc(), now);
        let mut ev = Vec::new();
        for line in format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n").split_inclusive("\r\n") {
            s.handle_input(line.as_bytes(), now);
            while let Some(e) = s.poll_action() {
                ev.push(e);
            }
            let n = s.poll_output().len();
            s.output_written(n, now);
        }
        assert_eq!(ev, vec![Action::SendBody(0)]);
        s.push_body(b"B\r\n");
        s.handle_input(b"250 2.0.0 queued\r\n", now);
        s.push_body(b".\r\n");
        s.end_body(now);
        let ev: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
        assert_eq!(outcomes(&ev)[0].1[0].0, RcptStatus::Deferred, "{ev:?}");
        assert!(
            matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e.contains("reply to end of data before it was sent")),
            "{ev:?}"
        );
    }

    /// Issue 10 item 6: the server greets, or answers EHLO, with our own name: the mail would
    /// loop; bounce it (5.4.6) and QUIT, whatever the case of the name.
    #[test]
    fn mail_loops_back_to_myself() {
        let bounced = |ev: &[Action]| {
            assert_eq!(outcomes(ev).len(), 2, "{ev:?}");
            for (_, r) in outcomes(ev) {
                assert!(
                    r.iter().all(|x| x.0 == RcptStatus::Bounced && x.1 == 554),
                    "{r:?}"
                );
                assert!(
                    r[0].2.starts_with("5.4.6 mail loops back to myself"),
                    "{r:?}"
                );
            }
        };
        let jobs = || vec![job(&["a@x.test", "b@x.test"]), job(&["c@y.test"])];
        let (w, ev) = run_all_splits(&plain(jobs()), "220 Client.TEST ESMTP\r\n221 bye\r\n");
        assert_eq!(w, "QUIT\r\n");
        bounced(&ev);
        let (w, ev) = run_all_splits(
            &plain(jobs()),
            "220 mx.test ESMTP\r\n250-CLIENT.test hello\r\n250 PIPELINING\r\n221 bye\r\n",
        );
        assert_eq!(w, "EHLO client.test\r\nQUIT\r\n");
        bounced(&ev);
        // HELO fallback too.
        let (w, ev) = run_all_splits(
            &plain(jobs()),
            "220 mx.test\r\n502 no\r\n250 client.test\r\n221 bye\r\n",
        );
        assert_eq!(w, "EHLO client.test\r\nHELO client.test\r\nQUIT\r\n");
        bounced(&ev);
        // A name that merely contains ours is another host.
        let server = "220 client.test.example ESMTP\r\n250-mx.client.test\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
        let (_, ev) = run_all_splits(&plain(vec![job(&["a@x.test"])]), server);
        assert_eq!(outcomes(&ev)[0].1[0].0, RcptStatus::Sent);
    }

    /// With the loop check off (a `--transport` next hop, typically the local smtpd, which
    /// shares our name), a server calling itself by our name gets the mail; the same server
    /// with the check on (the default) gets nothing.
    #[test]
    fn loop_check_off_sends_to_a_server_with_our_name() {
        let server = "220 Client.TEST ESMTP\r\n250-client.test hello\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
        let session = |check: bool| {
            move |now: Instant| {
                Session::new(
                    "client.test",
                    vec![job(&["a@x.test"])],
                    Timeouts::rfc(),
                    now,
                )
                .with_loop_check(check)
            }
        };
        let (w, ev) = run_all_splits(&session(false), server);
        assert!(
            w.starts_with("EHLO client.test\r\nMAIL FROM:<s@a.test>"),
            "{w}"
        );
        assert_eq!(outcomes(&ev)[0].1[0].0, RcptStatus::Sent, "{ev:?}");
        let (w, ev) = run_all_splits(&session(true), server);
        assert_eq!(w, "QUIT\r\n");
        let o = outcomes(&ev);
        assert_eq!(o[0].1[0].0, RcptStatus::Bounced, "{ev:?}");
        assert!(
            o[0].1[0].2.starts_with("5.4.6 mail loops back to myself"),
            "{o:?}"
        );
        // HELO fallback with the check off: the HELO reply naming us is fine too.
        let helo = "220 mx.test\r\n502 no\r\n250 client.test\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
        let (_, ev) = run_all_splits(&session(false), helo);
        assert_eq!(outcomes(&ev)[0].1[0].0, RcptStatus::Sent, "{ev:?}");
    }

    /// Issue 10 item 7: the reply timeout is a total deadline per reply; a server trickling a
    /// byte a second does not extend it. A complete reply starts the next reply's deadline.
    #[test]
    fn trickled_reply_does_not_extend_the_timeout() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut s = Session::new(
            "c",
            vec![job(&["a@x.test"])],
            Timeouts::all(Duration::from_secs(5)),
            t0,
        );
        s.handle_input(b"220 mx\r\n", t0);
        assert_eq!(s.poll_output(), b"EHLO c\r\n");
        s.output_written(8, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + 5 * sec));
        let ehlo = b"250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n";
        let mut closed = None;
        for (k, b) in ehlo.iter().enumerate() {
            let t = t0 + (k as u32 + 1) * sec;
            s.handle_input(&[*b], t);
            s.handle_timeout(t);
            if let Some(Action::Closed { error }) = s.poll_action() {
                closed = Some((k, error));
                break;
            }
            assert_eq!(s.poll_timeout(), Some(t0 + 5 * sec), "byte {k}");
        }
        let (k, error) = closed.expect("the trickle was cut off");
        assert_eq!(k, 4, "closed at the deadline, 5 s after EHLO");
        assert_eq!(error.as_deref(), Some("timeout waiting for reply to EHLO"));

        // A reply completed at t0+4 gives the next command its own full deadline.
        let mut s = Session::new(
            "c",
            vec![job(&["a@x.test"])],
            Timeouts::all(Duration::from_secs(5)),
            t0,
        );
        s.handle_input(b"220 mx\r\n", t0);
        s.output_written(8, t0);
        s.handle_input(b"250-mx\r\n", t0 + 3 * sec);
        s.handle_input(b"250 PIPELINING\r\n", t0 + 4 * sec);
        assert_eq!(s.poll_timeout(), Some(t0 + 9 * sec));
        let n = s.poll_output().len();
        s.output_written(n, t0 + 5 * sec);
        assert_eq!(
            s.poll_timeout(),
            Some(t0 + 10 * sec),
            "from when MAIL was written"
        );
        s.handle_input(b"25", t0 + 6 * sec);
        s.handle_input(b"0 ok\r\n25", t0 + 9 * sec);
        assert_eq!(
            s.poll_timeout(),
            Some(t0 + 14 * sec),
            "RCPT's reply waited for from MAIL's"
        );
    }

    fn server_for(replies: &[&str]) -> String {
        let mut s = EHLO_PIPE.to_owned();
        for r in replies {
            s.push_str(r);
            s.push_str("\r\n");
        }
        s
    }

    /// Issue 10 item 9: at most `max_rcpt` recipients per transaction; the rest follow in the
    /// next transaction of the same session, each with the body.
    #[test]
    fn recipients_over_the_limit_go_in_the_next_transaction() {
        let make = |now| {
            Session::new(
                "client.test",
                vec![
                    job(&["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"]),
                    job(&["f@x.test"]),
                ],
                Timeouts::rfc(),
                now,
            )
            .with_max_rcpt(2)
        };
        let server = server_for(&[
            "250 ok",
            "250 ok",
            "250 ok",
            "354 go",
            "250 one", // a, b
            "250 ok",
            "250 ok",
            "550 no d",
            "354 go",
            "250 two", // c, d
            "250 ok",
            "250 ok",
            "354 go",
            "250 three", // e
            "250 ok",
            "250 ok",
            "354 go",
            "250 four", // f
            "221 bye",
        ]);
        let (w, ev) = run_all_splits(&make, &server);
        let tx = |rcpts: &[&str]| {
            let mut t = "MAIL FROM:<s@a.test> SIZE=100\r\n".to_owned();
            for r in rcpts {
                t.push_str(&format!("RCPT TO:<{r}@x.test>\r\n"));
            }
            t + "DATA\r\nB\r\n.\r\n"
        };
        assert_eq!(
            w,
            format!(
                "EHLO client.test\r\n{}{}{}{}QUIT\r\n",
                tx(&["a", "b"]),
                tx(&["c", "d"]),
                tx(&["e"]),
                tx(&["f"])
            )
        );
        let sent = |t: &str| (RcptStatus::Sent, 250, t.to_owned());
        assert_eq!(
            outcomes(&ev),
            vec![
                (
                    0,
                    vec![
                        sent("one"),
                        sent("one"),
                        sent("two"),
                        (RcptStatus::Bounced, 550, "no d".into()),
                        sent("three")
                    ]
                ),
                (1, vec![sent("four")]),
            ]
        );
    }

    /// Item 9: recipients refused with "452 4.5.3 too many recipients" go in the next
    /// transaction at once (RFC 5321 §4.5.3.1.10), with and without PIPELINING; when a
    /// transaction took nobody, the 452s are real deferrals (no endless retry).
    #[test]
    fn too_many_recipients_are_sent_in_the_next_transaction() {
        let jobs = || vec![job(&["a@x.test", "b@x.test", "c@x.test"])];
        let server = server_for(&[
            "250 ok",
            "250 ok",
            "452 4.5.3 too many recipients",
            "452 4.5.3 too many recipients",
            "354 go",
            "250 one",
            "250 ok",
            "250 ok",
            "452 4.5.3 Too many recipients",
            "354 go",
            "250 two",
            "250 ok",
            "250 ok",
            "354 go",
            "250 three",
            "221 bye",
        ]);
        let (w, ev) = run_all_splits(&plain(jobs()), &server);
        assert_eq!(w.matches("MAIL FROM").count(), 3, "{w}");
        assert!(w.contains("RCPT TO:<c@x.test>\r\nDATA\r\nB\r\n.\r\nMAIL FROM:<s@a.test> SIZE=100\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"), "{w}");
        let sent = |t: &str| (RcptStatus::Sent, 250, t.to_owned());
        assert_eq!(
            outcomes(&ev),
            vec![(0, vec![sent("one"), sent("two"), sent("three")])]
        );
        // Without PIPELINING (452 without an enhanced code, recognised by its text).
        let server = format!(
            "{EHLO_PLAIN}250 ok\r\n250 ok\r\n452 Too many recipients\r\n354 go\r\n250 one\r\n\
             250 ok\r\n250 ok\r\n354 go\r\n250 two\r\n221 bye\r\n"
        );
        let (w, ev) = run_all_splits(&plain(vec![job(&["a@x.test", "b@x.test"])]), &server);
        assert_eq!(w.matches("MAIL FROM").count(), 2, "{w} {ev:?}");
        assert_eq!(outcomes(&ev), vec![(0, vec![sent("one"), sent("two")])]);
        // Nobody taken: the 452s are the outcome (deferred); 552 5.5.3 is temporary too.
        let server = server_for(&[
            "250 ok",
            "452 4.5.3 too many recipients",
            "552 5.5.3 too many recipients",
            "554 5.5.1 no valid recipients",
            "221 bye",
        ]);
        let (w, ev) = run_all_splits(&plain(vec![job(&["a@x.test", "b@x.test"])]), &server);
        assert_eq!(w.matches("MAIL FROM").count(), 1, "{w}");
        assert_eq!(
            outcomes(&ev),
            vec![(
                0,
                vec![
                    (
                        RcptStatus::Deferred,
                        452,
                        "4.5.3 too many recipients".into()
                    ),
                    (
                        RcptStatus::Deferred,
                        552,
                        "5.5.3 too many recipients".into()
                    )
                ]
            )]
        );
        // Other 452s (insufficient storage) are ordinary deferrals, not retried.
        let server = server_for(&[
            "250 ok",
            "250 ok",
            "452 4.3.1 insufficient system storage",
            "354 go",
            "250 one",
            "221 bye",
        ]);
        let (w, ev) = run_all_splits(&plain(vec![job(&["a@x.test", "b@x.test"])]), &server);
        assert_eq!(w.matches("MAIL FROM").count(), 1, "{w}");
        assert_eq!(outcomes(&ev)[0].1[1].0, RcptStatus::Deferred);
    }

    /// A connection lost after some of a job's transactions finished: the job is reported with
    /// the finished recipients as they are and the others deferred (never sent twice elsewhere).
    #[test]
    fn lost_connection_between_transactions_of_one_job() {
        let make = |now| {
            Session::new(
                "client.test",
                vec![job(&["a@x.test", "b@x.test"])],
                Timeouts::rfc(),
                now,
            )
            .with_max_rcpt(1)
        };
        let server = server_for(&["250 ok", "250 ok", "354 go", "250 one", "250 ok"]);
        let (_, ev) = run_all_splits(&make, &server);
        let o = outcomes(&ev);
        assert_eq!(o.len(), 1, "{ev:?}");
        assert_eq!(o[0].1[0], (RcptStatus::Sent, 250, "one".into()));
        assert_eq!(o[0].1[1].0, RcptStatus::Deferred);
        assert!(o[0].1[1].2.starts_with("4.4.2 lost connection"), "{o:?}");
    }

    /// Issue 10 item 8 for a job in several transactions: the recipients taken in the first
    /// are reported (`Accepted`) as soon as its final reply arrives, not only when the whole job
    /// ends, so a crash or a stop while the next transaction waits never sends to them again.
    #[test]
    fn recipients_of_a_finished_transaction_are_reported_before_the_job_ends() {
        let make = |now| {
            Session::new(
                "client.test",
                vec![job(&["a@x.test", "b@x.test", "c@x.test"])],
                Timeouts::rfc(),
                now,
            )
            .with_max_rcpt(2)
        };
        // a and b in the first transaction (b refused), c in the second, whose dot is never
        // answered (the connection is lost).
        let server = server_for(&["250 ok", "250 ok", "550 no b", "354 go", "250 one"]);
        let (w, ev) = run_all_splits(&make, &server);
        assert!(w.ends_with("RCPT TO:<c@x.test>\r\nDATA\r\n"), "{w}");
        let accepted = Action::Accepted(0, vec![(0, Reply::new(250, "one"))]);
        let at = ev.iter().position(|e| *e == accepted);
        let done = ev.iter().position(|e| matches!(e, Action::JobDone(..)));
        assert!(at.is_some() && at < done, "{ev:?}");
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, Action::Accepted(..)))
                .count(),
            1
        );
        let o = outcomes(&ev);
        assert_eq!(o[0].1[0], (RcptStatus::Sent, 250, "one".into()));
        assert_eq!(o[0].1[1].0, RcptStatus::Bounced);
        assert_eq!(o[0].1[2].0, RcptStatus::Deferred);
        // A job in one transaction is reported by `JobDone` alone.
        let (_, ev) = run_all_splits(
            &plain(vec![job(&["a@x.test"])]),
            &server_for(&["250 ok", "250 ok", "354 go", "250 one", "221 bye"]),
        );
        assert!(
            !ev.iter().any(|e| matches!(e, Action::Accepted(..))),
            "{ev:?}"
        );
    }

    /// Issue 10 item 11: SMTPUTF8 is needed per transaction (sender or that transaction's
    /// recipients), not per message; 8-bit content never goes to a server without 8BITMIME.
    #[test]
    fn smtputf8_per_transaction_and_8bit_needs_8bitmime() {
        // No SMTPUTF8: the UTF-8 recipient bounces (5.6.7), the ASCII one goes plainly.
        let server = format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n221 bye\r\n");
        let (w, ev) = run_all_splits(&plain(vec![job(&["jürgen@x.test", "a@x.test"])]), &server);
        assert!(
            w.contains("MAIL FROM:<s@a.test> SIZE=100\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"),
            "{w}"
        );
        assert!(!w.contains("jürgen"), "{w}");
        assert_eq!(
            outcomes(&ev),
            vec![(
                0,
                vec![
                    (
                        RcptStatus::Bounced,
                        553,
                        "5.6.7 server does not support SMTPUTF8".into()
                    ),
                    (RcptStatus::Sent, 250, "done".into())
                ]
            )]
        );
        // A UTF-8 sender needs it for every transaction.
        let mut j = job(&["a@x.test"]);
        j.sender = "<jürgen@a.test>".into();
        let (w, ev) = run_all_splits(&plain(vec![j.clone()]), &format!("{EHLO_PIPE}221 bye\r\n"));
        assert_eq!(w, "EHLO client.test\r\nQUIT\r\n");
        assert_eq!(outcomes(&ev)[0].1[0].1, 553);
        // With SMTPUTF8: asked for only in the transaction that needs it.
        let ehlo = "220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n";
        let server = format!(
            "{ehlo}250 ok\r\n250 ok\r\n354 go\r\n250 one\r\n250 ok\r\n250 ok\r\n354 go\r\n250 two\r\n221 bye\r\n"
        );
        let (w, _) = run_all_splits(
            &plain(vec![job(&["a@x.test"]), job(&["jürgen@x.test"])]),
            &server,
        );
        assert!(
            w.contains("MAIL FROM:<s@a.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\nB\r\n.\r\nMAIL FROM:<s@a.test> SMTPUTF8\r\nRCPT TO:<jürgen@x.test>\r\n"),
            "{w}"
        );
        // 8-bit body: BODY=8BITMIME where offered; elsewhere bounced with 5.6.3, nothing sent.
        let mut j = job(&["a@x.test"]);
        j.eight_bit = true;
        let server = format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n221 bye\r\n");
        let (w, _) = run_all_splits(&plain(vec![j.clone()]), &server);
        assert!(
            w.contains("MAIL FROM:<s@a.test> SIZE=100 BODY=8BITMIME\r\n"),
            "{w}"
        );
        let (w, ev) = run_all_splits(&plain(vec![j]), &format!("{EHLO_PLAIN}221 bye\r\n"));
        assert_eq!(w, "EHLO client.test\r\nQUIT\r\n");
        let o = outcomes(&ev);
        assert_eq!(o[0].1[0].0, RcptStatus::Bounced);
        assert!(o[0].1[0].2.starts_with("5.6.3 "), "{o:?}");
    }

    const EHLO_CHUNK: &str = "220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";

    /// What the client writes for one BDAT transaction of `rcpts` (body "B"), after the first
    /// with RSET in front.
    fn bdat_tx(first: bool, rcpts: &[&str]) -> String {
        let mut w = if first {
            String::new()
        } else {
            "RSET\r\n".into()
        };
        w.push_str("MAIL FROM:<s@a.test> SIZE=100\r\n");
        for r in rcpts {
            w.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        w.push_str("BDAT 3 LAST\r\nB\r\n");
        w
    }

    /// Issue 15: with CHUNKING and PIPELINING, three messages go out as MAIL + RCPT + BDAT LAST
    /// each, all before any reply after EHLO's; the replies, matched in order, all arrive later.
    #[test]
    fn bdat_three_messages_pipelined_without_waiting() {
        let jobs = vec![job(&["a@x.test"]), job(&["b@x.test"]), job(&["c@x.test"])];
        let now = Instant::now();
        let mut s = plain(jobs.clone())(now);
        let (mut w, mut ev) = (Vec::new(), Vec::new());
        pump(&mut s, now, &mut w, &mut ev);
        feed(&mut s, EHLO_CHUNK.as_bytes(), now, &mut w, &mut ev);
        let all = format!(
            "EHLO client.test\r\n{}{}{}",
            bdat_tx(true, &["a@x.test"]),
            bdat_tx(false, &["b@x.test"]),
            bdat_tx(false, &["c@x.test"])
        );
        assert_eq!(
            String::from_utf8(w).unwrap(),
            all,
            "everything sent before any reply"
        );
        assert!(outcomes(&ev).is_empty());
        let server = format!(
            "{EHLO_CHUNK}250 ok\r\n250 ok\r\n250 queued 1\r\n\
             250 reset\r\n250 ok\r\n250 ok\r\n250 queued 2\r\n\
             250 reset\r\n250 ok\r\n250 ok\r\n250 queued 3\r\n221 bye\r\n"
        );
        let (w, ev) = run_all_splits(&plain(jobs), &server);
        assert_eq!(w, format!("{all}QUIT\r\n"));
        assert_eq!(
            outcomes(&ev),
            (0..3)
                .map(|n| (
                    n,
                    vec![(RcptStatus::Sent, 250, format!("queued {}", n + 1))]
                ))
                .collect::<Vec<_>>()
        );
        assert_eq!(ev.last(), Some(&Action::Closed { error: None }));
        // `with_chunking(false)` (--no-chunking): DATA although CHUNKING is offered.
        let now = Instant::now();
        let mut s = plain(vec![job(&["a@x.test"])])(now).with_chunking(false);
        let (mut w, mut ev) = (Vec::new(), Vec::new());
        pump(&mut s, now, &mut w, &mut ev);
        feed(&mut s, EHLO_CHUNK.as_bytes(), now, &mut w, &mut ev);
        assert!(
            String::from_utf8(w)
                .unwrap()
                .ends_with("RCPT TO:<a@x.test>\r\nDATA\r\n")
        );
    }

    /// A refused RCPT in the middle of the pipeline affects only that recipient; a refused
    /// BDAT only its message; all RCPTs refused: the announced chunk is still sent, the BDAT's
    /// refusal read, and every recipient keeps its own RCPT reply.
    #[test]
    fn bdat_refusals_affect_only_their_message() {
        let jobs = vec![
            job(&["a@x.test"]),
            job(&["b@x.test", "bad@x.test"]),
            job(&["c@x.test"]),
            job(&["d@x.test"]),
        ];
        let server = format!(
            "{EHLO_CHUNK}250 ok\r\n250 ok\r\n250 queued 1\r\n\
             250 reset\r\n250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 queued 2\r\n\
             250 reset\r\n250 ok\r\n250 ok\r\n554 5.6.0 content refused\r\n\
             250 reset\r\n250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n221 bye\r\n"
        );
        let (w, ev) = run_all_splits(&plain(jobs), &server);
        assert_eq!(
            w,
            format!(
                "EHLO client.test\r\n{}{}{}{}QUIT\r\n",
                bdat_tx(true, &["a@x.test"]),
                bdat_tx(false, &["b@x.test", "bad@x.test"]),
                bdat_tx(false, &["c@x.test"]),
                bdat_tx(false, &["d@x.test"])
            )
        );
        let sent = |t: &str| (RcptStatus::Sent, 250, t.to_owned());
        assert_eq!(
            outcomes(&ev),
            vec![
                (0, vec![sent("queued 1")]),
                (
                    1,
                    vec![
                        sent("queued 2"),
                        (RcptStatus::Bounced, 550, "5.1.1 no such user".into())
                    ]
                ),
                (
                    2,
                    vec![(RcptStatus::Bounced, 554, "5.6.0 content refused".into())]
                ),
                (3, vec![(RcptStatus::Bounced, 550, "5.1.1 unknown".into())]),
            ]
        );
        assert_eq!(ev.last(), Some(&Action::Closed { error: None }));
        // A 4xx to the BDAT defers its message only.
        let server = format!(
            "{EHLO_CHUNK}250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n\
             250 reset\r\n250 ok\r\n250 ok\r\n250 queued 2\r\n221 bye\r\n"
        );
        let (_, ev) = run_all_splits(
            &plain(vec![job(&["a@x.test"]), job(&["b@x.test"])]),
            &server,
        );
        assert_eq!(
            outcomes(&ev),
            vec![
                (
                    0,
                    vec![(RcptStatus::Deferred, 451, "4.3.0 try later".into())]
                ),
                (1, vec![sent("queued 2")]),
            ]
        );
    }

    /// Replies of the wrong class to BDAT, a 250 to a BDAT that was never sent, and a 250 to a
    /// message nobody was accepted for are protocol errors: deferred 4.5.0, never "sent".
    #[test]
    fn bdat_protocol_errors() {
        for server in [
            format!("{EHLO_CHUNK}250 ok\r\n250 ok\r\n354 go ahead\r\n"),
            format!("{EHLO_CHUNK}250 ok\r\n250 ok\r\n150 hm\r\n"),
            format!("{EHLO_CHUNK}250 ok\r\n550 no\r\n250 queued\r\n"),
            format!("{EHLO_CHUNK}451 later\r\n503 no\r\n250 queued\r\n"),
        ] {
            let (w, ev) = run_all_splits(
                &plain(vec![job(&["a@x.test"]), job(&["b@x.test"])]),
                &server,
            );
            assert!(!w.contains("QUIT"), "closed at once: {w}");
            assert!(
                matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e.starts_with("protocol error")),
                "{ev:?}"
            );
            for (_, o) in outcomes(&ev) {
                for (st, code, text) in o {
                    assert_eq!((st, code), (RcptStatus::Deferred, 451));
                    assert!(text.starts_with("4.5.0 protocol error"), "{text}");
                }
            }
        }
        // A 250 before the driver pushed the chunk answers nothing that was sent.
        let now = Instant::now();
        let mut s = plain(vec![job(&["a@x.test"])])(now);
        s.handle_input(EHLO_CHUNK.as_bytes().split_at(14).0, now);
        let n = s.poll_output().len();
        s.output_written(n, now);
        s.handle_input(&EHLO_CHUNK.as_bytes()[14..], now);
        assert_eq!(s.poll_action(), Some(Action::SendChunks(0)));
        let n = s.poll_output().len();
        s.output_written(n, now);
        s.handle_input(b"250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n", now);
        let ev: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
        assert_eq!(outcomes(&ev)[0].1[0].0, RcptStatus::Deferred, "{ev:?}");
        assert!(
            matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e.contains("reply when none was expected")),
            "{ev:?}"
        );
    }

    /// The in-flight window: at most MAX_INFLIGHT_TX transactions before a reply; each final
    /// reply lets one more go; a refused chunk stops that message's further chunks.
    #[test]
    fn bdat_window_and_chunks() {
        let now = Instant::now();
        let jobs: Vec<Job> = (0..MAX_INFLIGHT_TX + 6)
            .map(|_| job(&["a@x.test"]))
            .collect();
        let mut s = plain(jobs)(now);
        let (mut w, mut ev) = (Vec::new(), Vec::new());
        pump(&mut s, now, &mut w, &mut ev);
        feed(&mut s, EHLO_CHUNK.as_bytes(), now, &mut w, &mut ev);
        let count = |w: &[u8]| String::from_utf8_lossy(w).matches("BDAT 3 LAST").count();
        assert_eq!(count(&w), MAX_INFLIGHT_TX);
        feed(
            &mut s,
            b"250 ok\r\n250 ok\r\n250 queued\r\n",
            now,
            &mut w,
            &mut ev,
        );
        assert_eq!(count(&w), MAX_INFLIGHT_TX + 1);
        // Several chunks: `BDAT n` then `BDAT n LAST`; after a refused chunk no more is sent.
        let mut s = plain(vec![job(&["a@x.test"]), job(&["b@x.test"])])(now);
        let mut w = Vec::new();
        s.handle_input(b"220 mx\r\n", now);
        w.extend_from_slice(s.poll_output());
        s.output_written(s.poll_output().len(), now);
        s.handle_input(&EHLO_CHUNK.as_bytes()[14..], now);
        assert_eq!(s.poll_action(), Some(Action::SendChunks(0)));
        assert_eq!(s.wants_body(), Some(0));
        s.push_chunk(b"abc\r\n", false, now);
        w.extend_from_slice(s.poll_output());
        s.output_written(s.poll_output().len(), now);
        s.handle_input(b"250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n", now);
        assert_eq!(
            s.poll_action(),
            Some(Action::JobDone(
                0,
                vec![(RcptStatus::Bounced, Reply::new(552, "5.3.4 too big"))]
            ))
        );
        // No further chunk of message 0: the next message follows at once.
        assert_eq!(s.poll_action(), Some(Action::SendChunks(1)));
        assert_eq!(s.wants_body(), Some(1));
        w.extend_from_slice(s.poll_output());
        let w = String::from_utf8(w).unwrap();
        assert!(
            w.ends_with(
                "BDAT 5\r\nabc\r\nRSET\r\nMAIL FROM:<s@a.test> SIZE=100\r\nRCPT TO:<b@x.test>\r\n"
            ),
            "{w}"
        );
    }

    /// The in-flight window is bounded by bytes as well as by transactions: no further chunk is
    /// wanted while MAX_INFLIGHT_BYTES are unanswered, and the next message does not start
    /// until replies bring what is in flight under it; a reply to a chunk that is not the last
    /// is enough (no round trip per message).
    #[test]
    fn bdat_window_bounded_by_bytes() {
        let now = Instant::now();
        let mut s = plain(vec![job(&["a@x.test"]), job(&["b@x.test"])])(now);
        let mut w = Vec::new();
        let flush = |s: &mut Session, w: &mut Vec<u8>| {
            let out = s.poll_output().to_vec();
            w.extend_from_slice(&out);
            s.output_written(out.len(), now);
        };
        s.handle_input(b"220 mx ESMTP\r\n", now);
        flush(&mut s, &mut w);
        s.handle_input(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n", now);
        flush(&mut s, &mut w);
        assert_eq!(s.poll_action(), Some(Action::SendChunks(0)));
        let chunk = vec![b'x'; 300_000];
        assert!(4 * chunk.len() as u64 > MAX_INFLIGHT_BYTES);
        assert!(3 * chunk.len() as u64 + 1000 < MAX_INFLIGHT_BYTES);
        for _ in 0..4 {
            assert_eq!(s.wants_body(), Some(0));
            s.push_chunk(&chunk, false, now);
            flush(&mut s, &mut w);
        }
        assert_eq!(s.wants_body(), None, "1.2 MB unanswered: no further chunk");
        // MAIL, RCPT and the first chunk answered: 900 kB in flight, room for the last chunk.
        s.handle_input(b"250 ok\r\n250 ok\r\n250 2.0.0 Ok: 300000 octets\r\n", now);
        assert_eq!(s.wants_body(), Some(0));
        s.push_chunk(&chunk, true, now);
        flush(&mut s, &mut w);
        // 1.2 MB in flight again: the second message waits, although only one is in flight.
        assert_eq!(s.poll_action(), None);
        assert!(!String::from_utf8_lossy(&w).contains("b@x.test"));
        // The second chunk's reply brings it to 600 kB: the next message goes at once.
        s.handle_input(b"250 2.0.0 Ok: 300000 octets\r\n", now);
        assert_eq!(s.poll_action(), Some(Action::SendChunks(1)));
        flush(&mut s, &mut w);
        let w = String::from_utf8_lossy(&w);
        assert!(
            w.ends_with(&format!(
                "BDAT 300000 LAST\r\n{}RSET\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<b@x.test>\r\n",
                "x".repeat(300_000)
            )),
            "{}",
            &w[w.len() - 200..]
        );
        assert_eq!(w.matches("BDAT 300000\r\n").count(), 4);
    }

    /// "452 too many recipients" with BDAT: the session has gone on to the next message when
    /// the 452 arrives; the recipients put back get a transaction of their own after it.
    #[test]
    fn bdat_too_many_recipients_come_back_later() {
        let jobs = vec![
            job(&["a@x.test", "b@x.test", "c@x.test"]),
            job(&["d@x.test"]),
        ];
        let server = format!(
            "{EHLO_CHUNK}250 ok\r\n250 ok\r\n250 ok\r\n452 4.5.3 too many recipients\r\n250 queued 1\r\n\
             250 reset\r\n250 ok\r\n250 ok\r\n250 queued 2\r\n\
             250 reset\r\n250 ok\r\n250 ok\r\n250 queued 3\r\n221 bye\r\n"
        );
        let (w, ev) = run_all_splits(&plain(jobs), &server);
        assert_eq!(
            w,
            format!(
                "EHLO client.test\r\n{}{}{}QUIT\r\n",
                bdat_tx(true, &["a@x.test", "b@x.test", "c@x.test"]),
                bdat_tx(false, &["d@x.test"]),
                bdat_tx(false, &["c@x.test"])
            )
        );
        let sent = |t: &str| (RcptStatus::Sent, 250, t.to_owned());
        assert_eq!(
            outcomes(&ev),
            vec![
                (1, vec![sent("queued 2")]),
                (
                    0,
                    vec![sent("queued 1"), sent("queued 1"), sent("queued 3")]
                ),
            ]
        );
        assert!(ev.contains(&Action::Accepted(
            0,
            vec![
                (0, Reply::new(250, "queued 1")),
                (1, Reply::new(250, "queued 1"))
            ]
        )));
    }

    /// Reply deadlines with BDAT: MAIL/RCPT the command limit, a chunk's reply the data-block
    /// limit, the reply to `BDAT LAST` the end-of-data limit (RFC 5321 §4.5.3.2.6, 10 min),
    /// each a total deadline from when the previous reply arrived.
    #[test]
    fn bdat_reply_deadlines() {
        let t0 = Instant::now();
        let timeouts = Timeouts {
            greeting: Duration::from_secs(1),
            command: Duration::from_secs(2),
            data_init: Duration::from_secs(3),
            data_block: Duration::from_secs(4),
            data_term: Duration::from_secs(5),
        };
        let mut s = Session::new("c", vec![job(&["a@x.test"])], timeouts, t0);
        s.handle_input(b"220 mx\r\n", t0);
        s.output_written(s.poll_output().len(), t0);
        s.handle_input(&EHLO_CHUNK.as_bytes()[14..], t0);
        assert_eq!(s.poll_action(), Some(Action::SendChunks(0)));
        s.push_chunk(b"ab\r\n", false, t0);
        s.push_chunk(b"c\r\n", true, t0);
        s.output_written(s.poll_output().len(), t0);
        let sec = |n| t0 + Duration::from_secs(n);
        assert_eq!(s.poll_timeout(), Some(sec(2)), "MAIL");
        s.handle_input(b"250 ok\r\n250 ok\r\n", sec(1));
        assert_eq!(s.poll_timeout(), Some(sec(1 + 4)), "BDAT chunk");
        s.handle_input(b"250 ok\r\n", sec(2));
        assert_eq!(s.poll_timeout(), Some(sec(2 + 5)), "BDAT LAST");
        s.handle_timeout(sec(7));
        let ev: Vec<_> = std::iter::from_fn(|| s.poll_action()).collect();
        assert!(
            matches!(ev.last(), Some(Action::Closed { error: Some(e) }) if e == "timeout waiting for reply to BDAT LAST"),
            "{ev:?}"
        );
        assert_eq!(s.unfinished(), vec![0], "not sent: the driver defers it");
    }

    /// Issue 15: DSN parameters (RFC 3461) go on MAIL and RCPT only to a server that offers
    /// DSN, as stored (xtext untouched); to others nothing extra is sent.
    #[test]
    fn dsn_parameters_only_where_offered() {
        let mut j = job(&["a@x.test", "b@x.test"]);
        j.dsn_mail = "RET=HDRS ENVID=QQ+2Bxyz".into();
        j.dsn_rcpt = vec!["NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40x.test".into()];
        let ehlo = "220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 DSN\r\n";
        let server =
            format!("{ehlo}250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n221 bye\r\n");
        let (w, ev) = run_all_splits(&plain(vec![j.clone()]), &server);
        assert_eq!(
            w,
            "EHLO client.test\r\nMAIL FROM:<s@a.test> RET=HDRS ENVID=QQ+2Bxyz\r\n\
             RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40x.test\r\n\
             RCPT TO:<b@x.test>\r\nDATA\r\nB\r\n.\r\nQUIT\r\n"
        );
        assert_eq!(outcomes(&ev)[0].1[1].0, RcptStatus::Sent);
        // Without DSN: the usual commands.
        let server =
            format!("{EHLO_PIPE}250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n221 bye\r\n");
        let (w, _) = run_all_splits(&plain(vec![j]), &server);
        assert!(
            w.contains("MAIL FROM:<s@a.test> SIZE=100\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"),
            "{w}"
        );
        assert!(!w.contains("NOTIFY") && !w.contains("RET="), "{w}");
        // The session says what the server offered.
        let now = Instant::now();
        let mut s = Session::new("client.test", vec![], Timeouts::rfc(), now);
        let (mut w, mut ev) = (Vec::new(), Vec::new());
        feed(&mut s, b"220 mx\r\n", now, &mut w, &mut ev);
        assert!(!s.extensions().dsn);
        feed(&mut s, b"250-mx\r\n250 DSN\r\n", now, &mut w, &mut ev);
        assert!(s.extensions().dsn, "{:?}", String::from_utf8_lossy(&w));
    }

    proptest::proptest! {
        /// Whatever a server answers, in whatever pieces: no panic, every job reported at most
        /// once, the session always ends, and a recipient is "sent" only in a job whose body
        /// went out (a reply of the wrong class never counts as delivery).
        #[test]
        fn any_server_transcript_keeps_the_invariants(
            replies in proptest::collection::vec(0usize..16, 0..40),
            step in 1usize..12,
            pipelining in proptest::bool::ANY,
            chunking in proptest::bool::ANY,
            max_rcpt in 1usize..4,
        ) {
            const LINES: [&str; 16] = [
                "220 mx", "250 ok", "251 ok", "354 go", "250 2.0.0 queued", "452 4.5.3 too many",
                "550 5.1.1 no", "451 4.3.0 later", "421 4.3.2 bye", "221 bye", "334 what",
                "220 client.test", "250-mx\r\n250 PIPELINING", "250-mx\r\n250 SIZE 10",
                "554 5.5.1 no valid recipients", "garbage",
            ];
            let mut server = match (pipelining, chunking) {
                (true, true) => "220 mx\r\n250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n".to_owned(),
                (true, false) => "220 mx\r\n250-mx\r\n250 PIPELINING\r\n".to_owned(),
                (false, _) => "220 mx\r\n250 mx\r\n".to_owned(),
            };
            for r in replies {
                server.push_str(LINES[r]);
                server.push_str("\r\n");
            }
            let now = Instant::now();
            let jobs = vec![job(&["a@x.test", "b@x.test", "c@x.test"]), job(&["d@y.test"])];
            let mut s = Session::new("client.test", jobs, Timeouts::rfc(), now).with_max_rcpt(max_rcpt);
            let (mut w, mut ev) = (Vec::new(), Vec::new());
            pump(&mut s, now, &mut w, &mut ev);
            for chunk in server.as_bytes().chunks(step) {
                feed(&mut s, chunk, now, &mut w, &mut ev);
            }
            s.handle_eof(None);
            pump(&mut s, now, &mut w, &mut ev);
            proptest::prop_assert!(matches!(ev.last(), Some(Action::Closed { .. })), "{:?}", ev);
            let mut bodies = [0usize; 2];
            let mut reported = [false; 2];
            let mut accepted: Vec<(usize, usize, Reply)> = Vec::new();
            for e in &ev {
                match e {
                    Action::SendBody(n) | Action::SendChunks(n) => bodies[*n] += 1,
                    Action::Accepted(n, list) => {
                        proptest::prop_assert!(!reported[*n], "accepted after the job's end");
                        proptest::prop_assert!(bodies[*n] > 0, "accepted without a body");
                        for (i, r) in list {
                            proptest::prop_assert!(
                                !accepted.iter().any(|(m, j, _)| m == n && j == i),
                                "accepted twice: {:?}", ev
                            );
                            accepted.push((*n, *i, r.clone()));
                        }
                    }
                    Action::JobDone(n, r) => {
                        // What was accepted early is in the job's results unchanged, as sent.
                        for (m, i, rep) in &accepted {
                            if m == n {
                                proptest::prop_assert_eq!(
                                    &r[*i], &(RcptStatus::Sent, rep.clone()), "{:?}", ev
                                );
                            }
                        }
                        proptest::prop_assert!(!reported[*n], "job {} reported twice", n);
                        reported[*n] = true;
                        proptest::prop_assert_eq!(r.len(), [3, 1][*n]);
                        let sent = r.iter().filter(|x| x.0 == RcptStatus::Sent).count();
                        proptest::prop_assert!(
                            sent == 0 || bodies[*n] > 0,
                            "job {} sent without a body: {:?}", n, ev
                        );
                        proptest::prop_assert!(sent <= bodies[*n] * max_rcpt);
                    }
                    _ => {}
                }
            }
            for n in s.unfinished() {
                proptest::prop_assert!(!reported[n]);
            }
        }
    }
}
