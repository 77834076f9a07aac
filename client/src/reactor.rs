//! The mio reactor: every outbound SMTP connection of a run, on one thread.
//!
//! Owns: connecting (non-blocking, with a deadline), at most one connection per MX address and
//! at most `--max-connections` in all, moving bytes between sockets and each connection's pure
//! [`Session`], streaming bodies from the queued files through the [`BodyEncoder`], deadlines in
//! a heap (stale entries skipped by generation), failing over to the next MX address, and the
//! Postfix-style log line per recipient attempt. TLS: which STARTTLS policy each connection
//! gets, starting the handshake on the transport when the session asks, telling the session
//! when it completed, the Postfix-style TLS log line, and the fallback of `--tls may` (a failed
//! handshake → the same host again in plaintext on a new connection, remembered for the run).
//! Must not: parse SMTP itself, decide retry
//! schedules, or write to the Maildir (results go to the recorder through the [`Tally`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::body::BodyEncoder;
use crate::config::{Config, TlsLevel};
use crate::mx::Target;
use crate::plan::{JobSpec, Tally};
use crate::record::Attempt;
use crate::session::{self, Event, RcptStatus, Session, StartTls};
use crate::state::RcptState;
use crate::tls::{self, TlsContext, Transport};

/// Bytes read from a queued file at a time.
const CHUNK: usize = 64 * 1024;

/// What a run of the reactor did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Connections that reached the server.
    pub connections: usize,
    /// Connection attempts that failed.
    pub failed_connects: usize,
}

struct BodySource {
    file: File,
    enc: BodyEncoder,
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
    tls: TlsStage,
    target: Target,
    session: Session,
    /// Indexes into the reactor's jobs, in session job order.
    jobs: Vec<usize>,
    connected: bool,
    connect_deadline: Instant,
    body: Option<BodySource>,
    generation: u64,
    armed: Option<Instant>,
    closed: Option<Option<String>>,
}

/// Runs the jobs to completion; results go to `tally`. `tls` is needed unless `--tls none`.
pub fn run(
    cfg: &Config,
    tls: Option<&TlsContext>,
    tally: &mut Tally,
    jobs: Vec<JobSpec>,
) -> io::Result<Stats> {
    let mut r = Reactor {
        cfg,
        tls,
        tls_failed: HashSet::new(),
        poll: Poll::new()?,
        conns: Slab::new(),
        heap: BinaryHeap::new(),
        jobs,
        queues: HashMap::new(),
        order: VecDeque::new(),
        active: HashSet::new(),
        next_gen: 0,
        stats: Stats::default(),
        buf: vec![0; CHUNK],
        scratch: Vec::with_capacity(CHUNK * 2),
    };
    for j in 0..r.jobs.len() {
        r.enqueue(j);
    }
    r.run(tally)?;
    Ok(r.stats)
}

struct Reactor<'a> {
    cfg: &'a Config,
    tls: Option<&'a TlsContext>,
    /// Hosts whose TLS handshake failed in this run (`may`: plaintext from now on).
    tls_failed: HashSet<String>,
    poll: Poll,
    conns: Slab<Conn>,
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    jobs: Vec<JobSpec>,
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
}

impl Reactor<'_> {
    fn enqueue(&mut self, j: usize) {
        let spec = &self.jobs[j];
        let addr = spec.route[spec.pos].addr;
        let q = self.queues.entry(addr).or_default();
        if q.is_empty() {
            self.order.push_back(addr);
        }
        q.push(j);
    }

    fn run(&mut self, tally: &mut Tally) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.start_sessions(tally);
            if self.conns.is_empty() {
                if self.order.is_empty() {
                    return Ok(());
                }
                continue;
            }
            let now = Instant::now();
            let timeout = self
                .heap
                .peek()
                .map(|Reverse((t, _, _))| t.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                let key = ev.token().0;
                if self.conns.contains(key) {
                    self.drive(key, tally);
                }
            }
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
                    c.closed = Some(Some(format!(
                        "connect timeout after {:?}",
                        self.cfg.connect_timeout
                    )));
                } else {
                    c.session.handle_timeout(now);
                }
                self.drive(key, tally);
            }
        }
    }

    /// Opens connections for waiting addresses while the limits allow.
    fn start_sessions(&mut self, tally: &mut Tally) {
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
            self.connect(addr, list, tally);
        }
        for a in skipped.into_iter().rev() {
            self.order.push_front(a);
        }
    }

    fn connect(&mut self, addr: SocketAddr, list: Vec<usize>, tally: &mut Tally) {
        let now = Instant::now();
        let target = {
            let s = &self.jobs[list[0]];
            s.route[s.pos].clone()
        };
        let mut sjobs = Vec::with_capacity(list.len());
        for &j in &list {
            let spec = &self.jobs[j];
            let Some(m) = tally.message(spec.msg) else {
                continue;
            };
            sjobs.push(session::Job {
                sender: m.sender.to_string(),
                rcpts: spec.rcpts.iter().map(|&r| m.rcpts[r].to_string()).collect(),
                size: m.body_len,
                eight_bit: m.eight_bit,
                utf8: m.utf8(),
            });
        }
        let mode = match self.cfg.tls {
            _ if self.tls.is_none() => StartTls::Off,
            TlsLevel::None => StartTls::Off,
            _ if self.cfg.implicit_tls => StartTls::Implicit,
            TlsLevel::May if self.tls_failed.contains(&target.host) => StartTls::Off,
            TlsLevel::May => StartTls::May,
            TlsLevel::Encrypt | TlsLevel::Verify => StartTls::Require,
        };
        let session =
            Session::new(&self.cfg.helo, sjobs, self.cfg.timeouts, now).with_starttls(mode);
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.stats.failed_connects += 1;
                self.fail_over(
                    &list,
                    &target,
                    &format!("connect to {}[{}]: {e}", target.host, addr),
                    tally,
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
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.fail_over(
                &list,
                &target,
                &format!("cannot register socket: {e}"),
                tally,
            );
            return;
        }
        self.next_gen += 1;
        let deadline = now + self.cfg.connect_timeout;
        entry.insert(Conn {
            transport: Transport::plain(stream),
            mode,
            tls: TlsStage::Plain,
            target,
            session,
            jobs: list,
            connected: false,
            connect_deadline: deadline,
            body: None,
            generation: self.next_gen,
            armed: Some(deadline),
            closed: None,
        });
        self.heap.push(Reverse((deadline, key, self.next_gen)));
        self.active.insert(addr);
    }

    /// Moves bytes for one connection until it would block, then handles its end if it ended.
    fn drive(&mut self, key: usize, tally: &mut Tally) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.closed.is_none() && !c.connected {
            match c.transport.tcp.take_error() {
                Ok(Some(e)) | Err(e) => c.closed = Some(Some(format!("connect: {e}"))),
                Ok(None) => match c.transport.tcp.peer_addr() {
                    Ok(_) => {
                        c.connected = true;
                        self.stats.connections += 1;
                        c.session.consumed(0, now);
                        if c.mode == StartTls::Implicit {
                            begin_tls(c, self.tls, self.cfg.tls);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => c.closed = Some(Some(format!("connect: {e}"))),
                },
            }
        }
        if c.connected && c.closed.is_none() {
            // Read everything available.
            loop {
                match c.transport.read(&mut self.buf) {
                    Ok(0) => {
                        c.session.handle_eof(None);
                        break;
                    }
                    Ok(n) => {
                        check_handshake(c, self.tls, self.cfg.tls, now);
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
            check_handshake(c, self.tls, self.cfg.tls, now);
            loop {
                handle_events(c, &self.jobs, tally, self.tls, self.cfg.tls);
                if c.closed.is_some() {
                    break;
                }
                let pumped = pump_body(c, &mut self.buf, &mut self.scratch, now);
                if write_pending(c, now) {
                    break; // the socket is full: a writable event brings us back
                }
                if !pumped {
                    handle_events(c, &self.jobs, tally, self.tls, self.cfg.tls);
                    break;
                }
            }
        }
        if c.closed.is_some() {
            self.finish(key, tally);
            return;
        }
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

    /// A connection ended: jobs it did not finish go to their next address, or are deferred.
    fn finish(&mut self, key: usize, tally: &mut Tally) {
        let mut c = self.conns.remove(key);
        c.transport.close_notify();
        let _ = self.poll.registry().deregister(&mut c.transport.tcp);
        self.active.remove(&c.target.addr);
        if !c.connected {
            self.stats.failed_connects += 1;
        }
        let error = c.closed.clone().flatten();
        let unfinished: Vec<usize> = c
            .session
            .unfinished()
            .into_iter()
            .map(|n| c.jobs[n])
            .collect();
        if unfinished.is_empty() {
            log::debug!("closed connection to {}[{}]", c.target.host, c.target.addr);
            return;
        }
        let why = error.unwrap_or_else(|| "session ended early".into());
        if c.tls == TlsStage::Handshaking {
            let why = format!(
                "{}[{}]: TLS handshake failed: {}",
                c.target.host,
                c.target.addr,
                why.strip_prefix("lost connection: ").unwrap_or(&why)
            );
            if c.mode == StartTls::May {
                // Postfix's `may`: the same host again, in plaintext, on a new connection.
                log::info!("{why}: trying again in plaintext");
                self.tls_failed.insert(c.target.host.clone());
                for j in unfinished {
                    self.enqueue(j);
                }
                return;
            }
            self.fail_over(&unfinished, &c.target, &why, tally);
            return;
        }
        let why = format!("{}[{}]: {why}", c.target.host, c.target.addr);
        self.fail_over(&unfinished, &c.target, &why, tally);
    }

    fn fail_over(&mut self, list: &[usize], target: &Target, why: &str, tally: &mut Tally) {
        log::info!(
            "{why}: trying the next MX host for {} message(s)",
            list.len()
        );
        for &j in list {
            self.jobs[j].pos += 1;
            let spec = &self.jobs[j];
            if spec.pos < spec.route.len() {
                self.enqueue(j);
                continue;
            }
            let (msg, rcpts) = (spec.msg, spec.rcpts.clone());
            for r in rcpts {
                let a = Attempt {
                    state: RcptState::Deferred,
                    text: why.to_owned(),
                    status: "4.4.1".into(),
                    smtp: false,
                    remote: Some(target.host.clone()),
                };
                log_attempt(tally, msg, r, target, &a);
                tally.record(msg, r, a);
            }
        }
    }
}

/// Feeds one chunk of the body to the session when it wants one; true if it did.
fn pump_body(c: &mut Conn, buf: &mut [u8], scratch: &mut Vec<u8>, now: Instant) -> bool {
    if c.session.wants_body().is_none() {
        return false;
    }
    let Some(b) = c.body.as_mut() else {
        return false;
    };
    scratch.clear();
    match b.file.read(buf) {
        Ok(0) => {
            b.enc.finish(scratch);
            c.session.push_body(scratch);
            c.session.end_body(now);
            c.body = None;
        }
        Ok(n) => {
            b.enc.encode(&buf[..n], scratch);
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
fn begin_tls(c: &mut Conn, ctx: Option<&TlsContext>, level: TlsLevel) {
    let Some(ctx) = ctx else {
        c.session.abort("TLS is not configured");
        return;
    };
    let config = if level == TlsLevel::Verify {
        &ctx.strict
    } else {
        &ctx.lax
    };
    let name = tls::server_name(&c.target.host, c.target.addr.ip());
    match c.transport.start_tls(config, name) {
        Ok(()) => c.tls = TlsStage::Handshaking,
        Err(e) => c.session.abort(&format!("cannot start TLS: {e}")),
    }
}

/// A handshake under way that has completed: log it and let the session go on.
fn check_handshake(c: &mut Conn, ctx: Option<&TlsContext>, level: TlsLevel, now: Instant) {
    if c.tls != TlsStage::Handshaking || c.transport.is_handshaking() {
        return;
    }
    c.tls = TlsStage::Up;
    if let (Some(ctx), Some(conn)) = (ctx, c.transport.tls()) {
        let name = tls::server_name(&c.target.host, c.target.addr.ip());
        log::info!(
            "{} TLS connection established to {}[{}]:{}: {}",
            ctx.trust(conn, &name, level == TlsLevel::Verify),
            c.target.host,
            c.target.addr.ip(),
            c.target.addr.port(),
            tls::describe(conn)
        );
    }
    c.session.tls_established(now);
}

/// Writes pending output until done or the socket would block; true when it would block.
fn write_pending(c: &mut Conn, now: Instant) -> bool {
    if let Err(e) = c.transport.flush() {
        c.session.handle_eof(Some(&e.to_string()));
        return false;
    }
    while !c.session.output().is_empty() {
        match c.transport.write(c.session.output()) {
            Ok(n) => c.session.consumed(n, now),
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

/// Handles a connection's session events: body starts, per-job results, the end.
fn handle_events(
    c: &mut Conn,
    jobs: &[JobSpec],
    tally: &mut Tally,
    tls: Option<&TlsContext>,
    level: TlsLevel,
) {
    while let Some(ev) = c.session.poll_event() {
        match ev {
            Event::StartTls => begin_tls(c, tls, level),
            Event::StartTlsRefused(reply) => log::info!(
                "{}[{}]: STARTTLS refused ({}): continuing in plaintext",
                c.target.host,
                c.target.addr,
                reply.one_line()
            ),
            Event::SendBody(n) => {
                let Some(spec) = c.jobs.get(n).map(|&j| &jobs[j]) else {
                    continue;
                };
                let Some(m) = tally.message(spec.msg) else {
                    continue;
                };
                let opened = File::open(&m.path)
                    .and_then(|mut f| f.seek(SeekFrom::Start(m.body_offset)).map(|_| f));
                match opened {
                    Ok(file) => {
                        c.body = Some(BodySource {
                            file,
                            enc: BodyEncoder::default(),
                        })
                    }
                    Err(e) => c
                        .session
                        .abort(&format!("cannot open {}: {e}", m.path.display())),
                }
            }
            Event::JobDone(n, results) => {
                let Some(spec) = c.jobs.get(n).map(|&j| &jobs[j]) else {
                    continue;
                };
                for (k, (status, reply)) in results.into_iter().enumerate() {
                    let Some(&r) = spec.rcpts.get(k) else {
                        continue;
                    };
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
                    };
                    log_attempt(tally, spec.msg, r, &c.target, &a);
                    tally.record(spec.msg, r, a);
                }
            }
            Event::Closed { error } => {
                if c.closed.is_none() {
                    c.closed = Some(error);
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
