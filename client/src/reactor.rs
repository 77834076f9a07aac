//! The mio reactor: every outbound SMTP connection, on one thread, for as long as the relay runs.
//!
//! Owns: the jobs handed in by the passes of the run loop ([`Reactor::add`]: a pass's tally and
//! its jobs; a pass ends when its tally has every result, [`Reactor::take_done`]), connecting
//! (non-blocking, with a deadline), at most one connection per MX address and at most
//! `--max-connections` in all (jobs for an address with a session wait for the next one, so a
//! slow host delays only its own mail), moving bytes between sockets and each connection's pure
//! [`Session`], streaming bodies from the queued files through the [`BodyEncoder`] (DATA) or,
//! for BDAT, the [`ChunkEncoder`] in chunks of at most [`CHUNK`] octets read from the file (the
//! last one `BDAT n LAST`; a message is never held whole), deadlines in
//! a heap (stale entries skipped by generation), sending jobs on after a failure (what a
//! connection's end means is [`JobSpec::after_close`]'s decision; recipients that got a 4xx go
//! to the next MX address), closing everything at a stop signal ([`Reactor::stop`]), and the
//! Postfix-style log line per recipient attempt. A session to a `--transport` target
//! ([`Target::transport`]) holds only such jobs and has the session's "loops back to myself"
//! check off. TLS: which STARTTLS policy each connection gets (`--tls` as given for transport
//! targets), starting the handshake on the transport when the
//! session asks, telling the session when it completed, the Postfix-style TLS log line, and the
//! fallback of `--tls may` (a failed handshake → the same host again in plaintext on a new
//! connection, remembered for an hour). Tokens from [`EXTERNAL`] up are the caller's
//! (signals, inotify, its waker): [`Reactor::turn`] hands their events back.
//! Must not: parse SMTP itself, scan the queue, decide retry schedules, or write to the Maildir
//! (results go to the recorder through each pass's [`Tally`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use net::Transport;
use slab::Slab;

use crate::config::{Config, TlsLevel};
use crate::mx::Target;
use crate::plan::{JobSpec, Next, Tally};
use crate::record::Attempt;
use crate::state::RcptState;
use crate::tls::{self, TlsContext};
use proto::smtp::client::body::{BodyEncoder, ChunkEncoder};
use proto::smtp::client::session::{self, Action, RcptStatus, Session, StartTls};

/// Bytes read from a queued file at a time.
const CHUNK: usize = 64 * 1024;

/// Tokens from here up belong to the caller; connections use slab keys below.
pub const EXTERNAL: usize = usize::MAX / 2;

/// How long `--tls may` sends to a host in plaintext after a failed handshake with it, before
/// trying STARTTLS again (the reactor lives as long as an `--interval` daemon).
const TLS_FALLBACK: Duration = Duration::from_secs(3600);

/// Why sessions closed by [`Reactor::stop`] end.
const STOPPING: &str = "delivery interrupted: smtp-relay is stopping";

/// Whether a connection has ended, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// Still in use.
    Open,
    /// The session ended normally (QUIT answered).
    Done,
    /// It ended early, for this reason.
    Error(String),
}

impl Ending {
    fn is_open(&self) -> bool {
        *self == Ending::Open
    }

    /// Why it ended early, if it did.
    fn error(&self) -> Option<String> {
        match self {
            Ending::Error(e) => Some(e.clone()),
            Ending::Open | Ending::Done => None,
        }
    }
}

/// What the reactor did so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Connections that reached the server.
    pub connections: usize,
    /// Connection attempts that failed.
    pub failed_connects: usize,
}

struct BodySource {
    file: File,
    enc: Encoding,
}

/// How a message body goes out.
enum Encoding {
    /// After DATA: dot-stuffed, long lines broken, ended by the dot.
    Data(BodyEncoder),
    /// As BDAT chunks; `left` octets of the file are still to be read.
    Chunks { enc: ChunkEncoder, left: u64 },
}

/// Where a connection is with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsStage {
    Plain,
    Handshaking,
    Up,
}

struct Conn {
    transport: Transport,
    /// The STARTTLS policy this session got.
    mode: StartTls,
    /// The TLS level it was chosen from (`--tls`, or as raised by the smarthost's `tls=`).
    level: TlsLevel,
    tls: TlsStage,
    target: Target,
    session: Session,
    /// Keys of the reactor's jobs, in session job order.
    jobs: Vec<usize>,
    connected: bool,
    connect_deadline: Instant,
    body: Option<BodySource>,
    generation: u64,
    armed: Option<Instant>,
    closed: Ending,
    /// Jobs this session reported done (the server took or refused them, or a protocol error
    /// or a close mid-job ended them): progress, for [`JobSpec::after_close`].
    answered: usize,
    /// The session ended because a reply (or the body's progress) took too long.
    timed_out: bool,
}

/// A pass in flight: its tally and how many of its jobs are not finished. Every finished job
/// has a result for each of its recipients, so a pass without jobs has them all.
struct PassSlot {
    tally: Tally,
    jobs: usize,
}

/// A job of one pass.
struct Job {
    /// Key of the pass's tally.
    pass: usize,
    spec: JobSpec,
}

/// The reactor and everything in flight.
pub struct Reactor<'a> {
    cfg: &'a Config,
    tls: Option<&'a TlsContext>,
    /// Hosts whose TLS handshake failed, and when (`may`: plaintext for [`TLS_FALLBACK`]).
    tls_failed: HashMap<String, Instant>,
    poll: Poll,
    events: Events,
    tokens: Vec<usize>,
    conns: Slab<Conn>,
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    jobs: Slab<Job>,
    /// The passes in flight.
    passes: Slab<PassSlot>,
    /// Jobs waiting, per address.
    queues: HashMap<SocketAddr, Vec<usize>>,
    /// Addresses with waiting jobs, in the order they first got some.
    order: VecDeque<SocketAddr>,
    /// Addresses with a connection open.
    active: HashSet<SocketAddr>,
    next_gen: u64,
    stats: Stats,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Set by `stop`: nothing is retried or started any more.
    stopping: bool,
}

impl<'a> Reactor<'a> {
    /// A reactor with nothing to do yet. `tls` is needed unless `--tls none`.
    pub fn new(cfg: &'a Config, tls: Option<&'a TlsContext>) -> io::Result<Reactor<'a>> {
        Ok(Reactor {
            cfg,
            tls,
            tls_failed: HashMap::new(),
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            tokens: Vec::with_capacity(1024),
            conns: Slab::new(),
            heap: BinaryHeap::new(),
            jobs: Slab::new(),
            passes: Slab::new(),
            queues: HashMap::new(),
            order: VecDeque::new(),
            active: HashSet::new(),
            next_gen: 0,
            stats: Stats::default(),
            buf: vec![0; CHUNK],
            scratch: Vec::with_capacity(CHUNK * 2),
            stopping: false,
        })
    }

    /// Where the caller registers its own sources, with tokens from [`EXTERNAL`] up.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Counters since the start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// True when no pass is in flight.
    pub fn is_idle(&self) -> bool {
        self.passes.is_empty()
    }

    /// Takes a pass: its tally and its jobs. Returns the pass's key (see [`Reactor::take_done`]).
    pub fn add(&mut self, tally: Tally, jobs: Vec<JobSpec>) -> usize {
        let pass = self.passes.insert(PassSlot {
            tally,
            jobs: jobs.len(),
        });
        for spec in jobs {
            let key = self.jobs.insert(Job { pass, spec });
            self.enqueue(key);
        }
        pass
    }

    /// Passes whose every recipient has a result, with their tallies (drop one to let its
    /// recorder finish).
    pub fn take_done(&mut self) -> Vec<(usize, Tally)> {
        let keys: Vec<usize> = self
            .passes
            .iter()
            .filter(|(_, p)| p.jobs == 0)
            .map(|(k, _)| k)
            .collect();
        keys.into_iter()
            .map(|k| (k, self.passes.remove(k).tally))
            .collect()
    }

    /// Stop signal: closes every connection at once (their jobs are deferred and recorded),
    /// drops the jobs still waiting for a connection (not tried: their messages keep their
    /// state), and returns every pass with what was tried already sent to its recorder.
    pub fn stop(&mut self) -> Vec<(usize, Tally)> {
        self.stopping = true;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(c) = self.conns.get_mut(k)
                && c.closed.is_open()
            {
                c.closed = Ending::Error(STOPPING.into());
            }
            self.finish(k);
        }
        self.queues.clear();
        self.order.clear();
        self.jobs.clear();
        let keys: Vec<usize> = self.passes.iter().map(|(k, _)| k).collect();
        keys.into_iter()
            .map(|k| {
                let mut t = self.passes.remove(k).tally;
                t.flush_tried();
                (k, t)
            })
            .collect()
    }

    /// One turn: opens the connections the limits allow, waits for readiness until the next
    /// deadline (or `until`), moves bytes, fires deadlines. Events on the caller's tokens are
    /// appended to `external`.
    pub fn turn(&mut self, until: Option<Instant>, external: &mut Vec<Token>) -> io::Result<()> {
        if !self.stopping {
            self.start_sessions();
        }
        let now = Instant::now();
        let timer = self.heap.peek().map(|Reverse((t, _, _))| *t);
        let wake = match (timer, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = wake.map(|t| t.saturating_duration_since(now));
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        self.tokens.clear();
        self.tokens
            .extend(self.events.iter().map(|ev| ev.token().0));
        for i in 0..self.tokens.len() {
            let key = self.tokens[i];
            if key >= EXTERNAL {
                external.push(Token(key));
            } else if self.conns.contains(key) {
                self.drive(key);
            }
        }
        self.fire_deadlines();
        Ok(())
    }

    fn fire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, key, generation))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.generation != generation || c.armed != Some(t) {
                continue;
            }
            c.armed = None;
            let actual = if c.connected {
                c.session.poll_timeout()
            } else {
                Some(c.connect_deadline)
            };
            if let Some(a) = actual.filter(|a| *a > now) {
                c.armed = Some(a);
                self.heap.push(Reverse((a, key, generation)));
                continue;
            }
            if !c.connected {
                c.closed = Ending::Error(format!(
                    "connect timeout after {:?}",
                    self.cfg.connect_timeout
                ));
            } else {
                c.timed_out = true;
                c.session.handle_timeout(now);
            }
            self.drive(key);
        }
    }

    fn enqueue(&mut self, key: usize) {
        let Some(job) = self.jobs.get(key) else {
            return;
        };
        let addr = job.spec.target().addr;
        let q = self.queues.entry(addr).or_default();
        if q.is_empty() {
            self.order.push_back(addr);
        }
        q.push(key);
    }

    /// Opens connections for waiting addresses while the limits allow.
    fn start_sessions(&mut self) {
        let mut skipped = Vec::new();
        while self.active.len() < self.cfg.max_connections {
            let Some(addr) = self.order.pop_front() else {
                break;
            };
            if self.active.contains(&addr) {
                skipped.push(addr);
                continue;
            }
            let Some(list) = self.queues.remove(&addr) else {
                continue;
            };
            self.connect(addr, list);
        }
        for a in skipped.into_iter().rev() {
            self.order.push_front(a);
        }
    }

    fn connect(&mut self, addr: SocketAddr, list: Vec<usize>) {
        let now = Instant::now();
        // Jobs of `--transport` routes and of other routes to the same address never share a
        // session (the loop check and the TLS level differ): those unlike the first job wait
        // for the next session to this address.
        let is_transport = |j: &Job| j.spec.target().transport;
        let transport = list
            .iter()
            .find_map(|&k| self.jobs.get(k))
            .is_some_and(is_transport);
        let (list, later): (Vec<usize>, Vec<usize>) = list.into_iter().partition(|&k| {
            self.jobs
                .get(k)
                .is_none_or(|j| is_transport(j) == transport)
        });
        for key in later {
            self.enqueue(key);
        }
        let mut keys = Vec::with_capacity(list.len());
        let mut sjobs = Vec::with_capacity(list.len());
        for key in list {
            let Some(job) = self.jobs.get(key) else {
                continue;
            };
            let Some(m) = self
                .passes
                .get(job.pass)
                .and_then(|p| p.tally.message(job.spec.msg))
            else {
                // Every recipient has a result already: nothing left to send.
                self.remove_job(key);
                continue;
            };
            sjobs.push(session::Job {
                sender: m.sender.to_string(),
                rcpts: job
                    .spec
                    .rcpts
                    .iter()
                    .map(|&r| m.rcpts[r].to_string())
                    .collect(),
                size: m.body_len,
                eight_bit: m.eight_bit,
                dsn_mail: [
                    m.ret.map(|r| format!("RET={r}")),
                    m.envid.as_ref().map(|e| format!("ENVID={e}")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
                dsn_rcpt: job
                    .spec
                    .rcpts
                    .iter()
                    .map(|&r| m.rcpt_dsn(r).to_string())
                    .collect(),
            });
            keys.push(key);
        }
        let Some(target) = keys
            .first()
            .and_then(|&k| self.jobs.get(k))
            .map(|j| j.spec.target().clone())
        else {
            return;
        };
        // A transport next hop gets `--tls` as given, never the smarthost's `tls=`.
        let (level, implicit) = if target.transport {
            (self.cfg.transport_tls, false)
        } else {
            (self.cfg.tls, self.cfg.implicit_tls)
        };
        let mode = match level {
            _ if self.tls.is_none() => StartTls::Off,
            TlsLevel::None => StartTls::Off,
            _ if implicit => StartTls::Implicit,
            TlsLevel::May
                if self
                    .tls_failed
                    .get(&target.host)
                    .is_some_and(|t| now.saturating_duration_since(*t) < TLS_FALLBACK) =>
            {
                StartTls::Off
            }
            TlsLevel::May => StartTls::May,
            TlsLevel::Encrypt | TlsLevel::Verify => StartTls::Require,
        };
        let session = Session::new(&self.cfg.helo, sjobs, self.cfg.timeouts, now)
            .with_starttls(mode)
            .with_max_rcpt(self.cfg.max_rcpt)
            .with_chunking(self.cfg.chunking)
            .with_loop_check(!target.transport);
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.stats.failed_connects += 1;
                crate::metrics::relay().connection(&target.host, false);
                self.fail_over(
                    &keys,
                    &target,
                    &format!("connect to {}[{}]: {e}", target.host, addr),
                );
                return;
            }
        };
        // Pipelined writes are small and followed by waiting for a reply: Nagle would hold
        // them for the peer's delayed ACK (40 ms a message).
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY: {e}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= EXTERNAL {
            self.fail_over(&keys, &target, "too many connections");
            return;
        }
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.fail_over(&keys, &target, &format!("cannot register socket: {e}"));
            return;
        }
        self.next_gen += 1;
        let deadline = now + self.cfg.connect_timeout;
        entry.insert(Conn {
            transport: Transport::plain(stream),
            mode,
            level,
            tls: TlsStage::Plain,
            target,
            session,
            jobs: keys,
            connected: false,
            connect_deadline: deadline,
            body: None,
            generation: self.next_gen,
            armed: Some(deadline),
            closed: Ending::Open,
            answered: 0,
            timed_out: false,
        });
        self.heap.push(Reverse((deadline, key, self.next_gen)));
        self.active.insert(addr);
    }

    /// Moves bytes for one connection until it would block, then handles its end if it ended.
    fn drive(&mut self, key: usize) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.closed.is_open() && !c.connected {
            match c.transport.tcp().take_error() {
                Ok(Some(e)) | Err(e) => c.closed = Ending::Error(format!("connect: {e}")),
                Ok(None) => match c.transport.tcp().peer_addr() {
                    Ok(_) => {
                        c.connected = true;
                        self.stats.connections += 1;
                        crate::metrics::relay().connection(&c.target.host, true);
                        c.session.output_written(0, now);
                        if c.mode == StartTls::Implicit {
                            begin_tls(c, self.tls);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => c.closed = Ending::Error(format!("connect: {e}")),
                },
            }
        }
        let mut retries = Vec::new();
        if c.connected && c.closed.is_open() {
            let mut ctx = Ctx {
                jobs: &mut self.jobs,
                passes: &mut self.passes,
                retries: &mut retries,
                tls: self.tls,
            };
            // Read everything available, until the session ends: a server flooding the
            // connection gets a protocol error (every input is bounded in the session) and is
            // read no further, so it cannot keep the reactor to itself.
            while !c.session.is_closed() {
                match c.transport.read(&mut self.buf) {
                    Ok(0) => {
                        c.session.handle_eof(None);
                        break;
                    }
                    Ok(n) => {
                        check_handshake(c, self.tls, now);
                        c.session.handle_input(&self.buf[..n], now)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        c.session.handle_eof(Some(&e.to_string()));
                        break;
                    }
                }
            }
            check_handshake(c, self.tls, now);
            loop {
                handle_actions(c, &mut ctx);
                if !c.closed.is_open() {
                    break;
                }
                let pumped = pump_body(c, &mut self.buf, &mut self.scratch, now);
                // Small messages pipelined back to back (BDAT) share a write.
                if (!pumped || c.session.poll_output().len() >= CHUNK) && write_pending(c, now) {
                    break; // the socket is full: a writable event brings us back
                }
                if !pumped {
                    handle_actions(c, &mut ctx);
                    // Everything was written and the socket still has room. Readiness is
                    // edge-triggered, so no writable event will resume a body that paused on
                    // a full output buffer, or output the actions just made: go on now.
                    let more = !c.session.poll_output().is_empty()
                        || (c.body.is_some() && c.session.wants_body().is_some());
                    if more && c.closed.is_open() {
                        continue;
                    }
                    break;
                }
            }
        }
        let closed = !c.closed.is_open();
        if !closed {
            // Lazy deadlines: arm only when earlier than the armed one; a fired entry re-arms.
            let deadline = if c.connected {
                c.session.poll_timeout()
            } else {
                Some(c.connect_deadline)
            };
            if let Some(t) = deadline
                && c.armed.is_none_or(|a| t < a)
            {
                c.armed = Some(t);
                self.heap.push(Reverse((t, key, c.generation)));
            }
        }
        for job in retries {
            if let Some(p) = self.passes.get_mut(job.pass) {
                p.jobs += 1;
            }
            let k = self.jobs.insert(job);
            self.enqueue(k);
        }
        if closed {
            self.finish(key);
        }
    }

    /// A connection ended: jobs it did not finish go to the same address again (the server
    /// closed after taking other messages), their next address, or are deferred.
    fn finish(&mut self, key: usize) {
        let mut c = self.conns.remove(key);
        c.transport.close_notify();
        let _ = c.transport.deregister(self.poll.registry());
        self.active.remove(&c.target.addr);
        if !c.connected {
            self.stats.failed_connects += 1;
            crate::metrics::relay().connection(&c.target.host, false);
        }
        let error = c.closed.error();
        let unfinished: Vec<usize> = c
            .session
            .unfinished()
            .into_iter()
            .filter_map(|n| c.jobs.get(n).copied())
            .collect();
        if unfinished.is_empty() {
            log::debug!("closed connection to {}[{}]", c.target.host, c.target.addr);
            return;
        }
        let why = error.unwrap_or_else(|| "session ended early".into());
        if c.tls == TlsStage::Handshaking && !self.stopping {
            let why = format!(
                "{}[{}]: TLS handshake failed: {}",
                c.target.host,
                c.target.addr,
                why.strip_prefix("lost connection: ").unwrap_or(&why)
            );
            if c.mode == StartTls::May {
                // Postfix's `may`: the same host again, in plaintext, on a new connection.
                log::info!("{why}: trying again in plaintext");
                self.tls_failed
                    .insert(c.target.host.clone(), Instant::now());
                for j in unfinished {
                    self.enqueue(j);
                }
                return;
            }
            self.fail_over(&unfinished, &c.target, &why);
            return;
        }
        let why = format!("{}[{}]: {why}", c.target.host, c.target.addr);
        let ended = Ended {
            answered: c.answered,
            stalled: c.timed_out,
        };
        self.route(&unfinished, &c.target, &why, ended);
    }

    /// Removes a finished job from its pass's count.
    fn remove_job(&mut self, key: usize) -> Option<Job> {
        let job = self.jobs.try_remove(key)?;
        if let Some(p) = self.passes.get_mut(job.pass) {
            p.jobs = p.jobs.saturating_sub(1);
        }
        Some(job)
    }

    /// Jobs that could not be tried at their address: the next address, else deferred.
    fn fail_over(&mut self, list: &[usize], target: &Target, why: &str) {
        self.route(list, target, why, Ended::default());
    }

    /// Sends jobs a connection did not finish where [`JobSpec::after_close`] says: a new
    /// connection to the same address, the next address, or deferral (always when stopping).
    fn route(&mut self, list: &[usize], target: &Target, why: &str, ended: Ended) {
        let (mut again, mut moved, mut deferred) = (0, 0, 0);
        for &k in list {
            let Some(job) = self.jobs.get_mut(k) else {
                continue;
            };
            let next = if self.stopping {
                Next::Defer
            } else {
                job.spec.after_close(ended.answered > 0, ended.stalled)
            };
            match next {
                Next::Same => {
                    again += 1;
                    self.enqueue(k);
                    continue;
                }
                Next::Address => {
                    moved += 1;
                    self.enqueue(k);
                    continue;
                }
                Next::Defer => {}
            }
            deferred += 1;
            let Some(job) = self.remove_job(k) else {
                continue;
            };
            let Some(tally) = self.passes.get_mut(job.pass).map(|p| &mut p.tally) else {
                continue;
            };
            for &r in &job.spec.rcpts {
                if tally.has_result(job.spec.msg, r) {
                    // Taken in an earlier transaction of this job (`Accepted`).
                    continue;
                }
                let a = Attempt {
                    state: RcptState::Deferred,
                    text: why.to_owned(),
                    status: "4.4.1".into(),
                    smtp: false,
                    remote: Some(target.host.clone()),
                    dsn: false,
                };
                log_attempt(tally, job.spec.msg, r, target, &a);
                tally.record(job.spec.msg, r, a);
            }
        }
        if again > 0 {
            log::info!(
                "{why}: connecting again for {again} message(s) after {} on that connection",
                ended.answered
            );
        }
        if moved > 0 {
            log::info!("{why}: trying the next MX host for {moved} message(s)");
        }
        if deferred > 0 {
            log::debug!("{why}: {deferred} message(s) deferred");
        }
    }
}

/// How a connection that left jobs unfinished ended.
#[derive(Debug, Default, Clone, Copy)]
struct Ended {
    /// Jobs the server took or refused on it.
    answered: usize,
    /// It ended by a timeout.
    stalled: bool,
}

/// What [`handle_actions`] works on besides the connection.
struct Ctx<'r> {
    jobs: &'r mut Slab<Job>,
    passes: &'r mut Slab<PassSlot>,
    /// Recipients that got a 4xx here and go on to the next MX address.
    retries: &'r mut Vec<Job>,
    tls: Option<&'r TlsContext>,
}

fn pump_body(c: &mut Conn, buf: &mut [u8], scratch: &mut Vec<u8>, now: Instant) -> bool {
    if c.session.wants_body().is_none() {
        return false;
    }
    let Some(b) = c.body.as_mut() else {
        return false;
    };
    scratch.clear();
    let enc = match &mut b.enc {
        Encoding::Data(enc) => enc,
        Encoding::Chunks { enc, left } => {
            if *left == 0 {
                enc.finish(scratch);
                c.session.push_chunk(scratch, true, now);
                c.body = None;
                return true;
            }
            let want = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
            match b.file.read(&mut buf[..want]) {
                Ok(0) => {
                    c.session
                        .abort("cannot read queued message: it is shorter than when queued");
                    c.body = None;
                }
                Ok(n) => {
                    *left -= n as u64;
                    enc.encode(&buf[..n], scratch);
                    if *left == 0 {
                        enc.finish(scratch);
                        c.session.push_chunk(scratch, true, now);
                        c.body = None;
                    } else {
                        c.session.push_chunk(scratch, false, now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.session.abort(&format!("cannot read queued message: {e}"));
                    c.body = None;
                }
            }
            return true;
        }
    };
    match b.file.read(buf) {
        Ok(0) => {
            enc.finish(scratch);
            c.session.push_body(scratch);
            c.session.end_body(now);
            c.body = None;
        }
        Ok(n) => {
            enc.encode(&buf[..n], scratch);
            c.session.push_body(scratch);
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => {
            c.session.abort(&format!("cannot read queued message: {e}"));
            c.body = None;
        }
    }
    true
}

/// Starts the TLS handshake on the connection's transport (implicit TLS, or after `220` to
/// STARTTLS).
fn begin_tls(c: &mut Conn, ctx: Option<&TlsContext>) {
    let Some(ctx) = ctx else {
        c.session.abort("TLS is not configured");
        return;
    };
    let config = if c.level == TlsLevel::Verify {
        &ctx.strict
    } else {
        &ctx.lax
    };
    let name = tls::server_name(&c.target.host, c.target.addr.ip());
    match tls::start(&mut c.transport, config, name) {
        Ok(()) => c.tls = TlsStage::Handshaking,
        Err(e) => c.session.abort(&format!("cannot start TLS: {e}")),
    }
}

/// A handshake under way that has completed: log it and let the session go on.
fn check_handshake(c: &mut Conn, ctx: Option<&TlsContext>, now: Instant) {
    if c.tls != TlsStage::Handshaking || c.transport.is_handshaking() {
        return;
    }
    c.tls = TlsStage::Up;
    if let (Some(ctx), Some(conn)) = (ctx, c.transport.tls()) {
        let name = tls::server_name(&c.target.host, c.target.addr.ip());
        log::info!(
            "{} TLS connection established to {}[{}]:{}: {}",
            ctx.trust(conn, &name, c.level == TlsLevel::Verify),
            c.target.host,
            c.target.addr.ip(),
            c.target.addr.port(),
            tls::describe(&c.transport)
        );
    }
    c.session.handle_tls_started(now);
}

/// Writes pending output until done or the socket would block; true when it would block.
fn write_pending(c: &mut Conn, now: Instant) -> bool {
    if let Err(e) = c.transport.flush() {
        c.session.handle_eof(Some(&e.to_string()));
        return false;
    }
    while !c.session.poll_output().is_empty() {
        match c.transport.write(c.session.poll_output()) {
            Ok(n) => c.session.output_written(n, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                c.session.handle_eof(Some(&e.to_string()));
                return false;
            }
        }
    }
    c.transport.has_unsent()
}

/// Handles a connection's session actions: body starts, per-job results, the end.
fn handle_actions(c: &mut Conn, ctx: &mut Ctx) {
    while let Some(ev) = c.session.poll_action() {
        match ev {
            Action::StartTls => begin_tls(c, ctx.tls),
            Action::StartTlsRefused(reply) => log::info!(
                "{}[{}]: STARTTLS refused ({}): continuing in plaintext",
                c.target.host,
                c.target.addr,
                reply.one_line()
            ),
            Action::SendBody(n) | Action::SendChunks(n) => {
                let chunks = matches!(ev, Action::SendChunks(_));
                let Some(job) = c.jobs.get(n).and_then(|&k| ctx.jobs.get(k)) else {
                    continue;
                };
                let Some(m) = ctx
                    .passes
                    .get(job.pass)
                    .and_then(|p| p.tally.message(job.spec.msg))
                else {
                    continue;
                };
                let opened = File::open(&m.path)
                    .and_then(|mut f| f.seek(SeekFrom::Start(m.body_offset)).map(|_| f));
                match opened {
                    Ok(file) => {
                        let enc = if chunks {
                            Encoding::Chunks {
                                enc: ChunkEncoder::default(),
                                left: m.body_len,
                            }
                        } else {
                            Encoding::Data(BodyEncoder::default())
                        };
                        c.body = Some(BodySource { file, enc })
                    }
                    Err(e) => c
                        .session
                        .abort(&format!("cannot open {}: {e}", m.path.display())),
                }
            }
            Action::Accepted(n, list) => {
                // Recorded now (a crash or a stop before the job ends must not send to them
                // again); the job's `JobDone` later skips them.
                let Some(job) = c.jobs.get(n).and_then(|&k| ctx.jobs.get(k)) else {
                    continue;
                };
                let Some(slot) = ctx.passes.get_mut(job.pass) else {
                    continue;
                };
                for (k, reply) in list {
                    let Some(&r) = job.spec.rcpts.get(k) else {
                        continue;
                    };
                    if slot.tally.has_result(job.spec.msg, r) {
                        continue;
                    }
                    let a = Attempt {
                        state: RcptState::Delivered,
                        status: reply.status(),
                        text: reply.one_line(),
                        smtp: true,
                        remote: Some(c.target.host.clone()),
                        dsn: c.session.extensions().dsn,
                    };
                    log_attempt(&slot.tally, job.spec.msg, r, &c.target, &a);
                    slot.tally.record(job.spec.msg, r, a);
                }
            }
            Action::JobDone(n, results) => {
                c.answered += 1;
                let Some(&key) = c.jobs.get(n) else {
                    continue;
                };
                if !ctx.jobs.contains(key) {
                    continue;
                }
                let job = ctx.jobs.remove(key);
                let Some(slot) = ctx.passes.get_mut(job.pass) else {
                    continue;
                };
                slot.jobs = slot.jobs.saturating_sub(1);
                let tally = &mut slot.tally;
                // A 4xx here: the next MX address may take it in this run (RFC 5321 §5.1;
                // Postfix keeps soft-failed recipients for the next server).
                let mut next = job.spec.clone();
                next.answered();
                let can_move = next.next_address();
                let mut moved = Vec::new();
                for (k, (status, reply)) in results.into_iter().enumerate() {
                    let Some(&r) = job.spec.rcpts.get(k) else {
                        continue;
                    };
                    if tally.has_result(job.spec.msg, r) {
                        // Recorded by `Accepted` already.
                        continue;
                    }
                    if status == RcptStatus::Deferred && can_move {
                        if let Some(m) = tally.message(job.spec.msg) {
                            log::info!(
                                "{}: to={}, relay={}[{}]:{}, status=retry ({}): trying the next MX host",
                                m.name,
                                m.rcpts[r],
                                c.target.host,
                                c.target.addr.ip(),
                                c.target.addr.port(),
                                reply.one_line()
                            );
                        }
                        moved.push(r);
                        continue;
                    }
                    let a = Attempt {
                        state: match status {
                            RcptStatus::Sent => RcptState::Delivered,
                            RcptStatus::Deferred => RcptState::Deferred,
                            RcptStatus::Bounced => RcptState::Bounced,
                        },
                        status: reply.status(),
                        text: reply.one_line(),
                        smtp: true,
                        remote: Some(c.target.host.clone()),
                        dsn: c.session.extensions().dsn,
                    };
                    log_attempt(tally, job.spec.msg, r, &c.target, &a);
                    tally.record(job.spec.msg, r, a);
                }
                if !moved.is_empty() {
                    next.rcpts = moved;
                    ctx.retries.push(Job {
                        pass: job.pass,
                        spec: next,
                    });
                }
            }
            Action::Closed { error } => {
                if c.closed.is_open() {
                    c.closed = error.map_or(Ending::Done, Ending::Error);
                }
            }
        }
    }
}

fn log_attempt(tally: &Tally, msg: usize, rcpt: usize, t: &Target, a: &Attempt) {
    let Some(m) = tally.message(msg) else { return };
    let delay = SystemTime::now()
        .duration_since(m.arrival)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let status = match a.state {
        RcptState::Delivered => "sent",
        RcptState::Bounced => "bounced",
        _ => "deferred",
    };
    log::info!(
        target: crate::record::AUDIT,
        "{}: to={}, relay={}[{}]:{}, delay={delay:.2}, status={status} ({})",
        m.name,
        m.rcpts[rcpt],
        t.host,
        t.addr.ip(),
        t.addr.port(),
        a.text
    );
}
