//! POP3 connections on smtpd's reactor thread: the POP3 listeners, the connections (each a
//! `net::Transport` and a pure [`Session`]), their idle deadlines, and the work the sessions
//! ask for: password checks (handed to the shared login pool, [`crate::auth::Authenticator`],
//! as SMTP AUTH's are: one lockout for both), the maildrop (the listing at login and the
//! removal at QUIT on [`super::maildrops`]'s thread; RETR/TOP streamed from the open file a
//! bounded amount per turn and the seen flag here) and STLS (through the reactor's TLS handshake pool).
//!
//! The reactor ([`crate::reactor`]) owns the poll, the signals, the handshake threads and the
//! SMTP connections; it passes every event whose token is POP3's ([`owns_token`]) to
//! [`Pop3::event`], and calls in for completions, timers, the ready list and shutdown. POP3
//! connections live in their own `Slab`, so the SMTP path is unchanged; the connection limits
//! count both ([`Ctx::other_conns`]).
//!
//! A banned address gets `-ERR [AUTH]` instead of the greeting and is closed (after the TLS
//! handshake on an implicit TLS listener, so that the client can read it).
//!
//! One session per maildrop (RFC 1939 §8 exclusive lock): the set of users with a session in
//! TRANSACTION is kept here; a second login gets `-ERR [IN-USE]`, and the user is released when
//! the connection goes, however it goes (QUIT, lost connection, timeout, shutdown).
//!
//! Must not: speak POP3 (that is `proto::pop3`), verify passwords on this thread, or hold a
//! whole message in memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use maildir_core::local::Mailboxes;
use maildir_core::maildrop::Maildrop;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token, Waker};
use net::handshake::{self, Handshakers};
use net::{ConnRef, Transport};
use proto::pop3::session::{
    Action, AuthResult, Event, MessageInfo, OpenError, Pop3Config, ReadError, Session,
};
use slab::Slab;

use super::maildrops::{self, Done, Job, Worker};
use crate::auth::{Answer, Authenticator, Request, Service, Verdict};
use crate::config::Cidr;
use crate::stats::{Refusal, Stats};
use crate::tls;

/// Tokens of POP3 listeners: `POP3_LISTENER + index` (between the reactor's SMTP listeners
/// and the control socket's tokens, below the SMTP connections).
pub const POP3_LISTENER: usize = 1 << 18;
/// Most POP3 listeners.
pub const MAX_LISTENERS: usize = 1024;
/// Tokens (and `ConnRef` keys, for the handshake pool) of POP3 connections: `POP3_CONN + key`.
const POP3_CONN: usize = 1 << 30;
/// Reads of the socket, or of a message file, one connection may do per turn.
const BUDGET: usize = 4;
/// Octets of message files one connection may read per turn (a RETR of a large message
/// shares the thread; many small ones go out in one turn instead of one or two per turn).
const FILE_BUDGET: usize = 4 * FILE_CHUNK;
/// Output gathered before it is written while a connection still makes progress.
const WRITE_AT: usize = 32 * 1024;
/// What an empty read (a message's end) costs of [`FILE_BUDGET`].
const FILE_END_COST: usize = 4096;
/// Bytes read from a message file at a time.
const FILE_CHUNK: usize = 64 * 1024;
/// Unprocessed input kept per connection before reading stops.
const INBUF_MAX: usize = 16 * 1024;
/// Connections one listener may accept per turn.
const ACCEPT_BUDGET: usize = 64;
/// Pause after an accept failure such as "too many open files" (as SMTP's listeners do).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// True when the reactor must pass an event with this token to [`Pop3::event`].
pub fn owns_token(t: usize) -> bool {
    (POP3_LISTENER..POP3_LISTENER + MAX_LISTENERS).contains(&t) || t >= POP3_CONN
}

/// True when a handshake result (by its `ConnRef` key) is a POP3 connection's.
pub fn owns_conn(conn: &ConnRef) -> bool {
    conn.key >= POP3_CONN
}

/// POP3's settings (built by [`crate::config::Config::server_config`]).
#[derive(Debug, Clone)]
pub struct Pop3Settings {
    /// Plain listeners (STLS offered when a certificate is configured).
    pub listen: Vec<SocketAddr>,
    /// Implicit TLS listeners (port 995 style).
    pub tls_listen: Vec<SocketAddr>,
    /// Settings every session shares.
    pub session: Arc<Pop3Config>,
}

/// What POP3 borrows from the reactor for one call.
pub struct Ctx<'a> {
    /// The poll's registry.
    pub registry: &'a Registry,
    /// The TLS handshake threads.
    pub handshakers: Option<&'a Handshakers>,
    /// Certificate and key.
    pub tls: Option<&'a Arc<rustls::ServerConfig>>,
    /// Connections per untrusted address, shared with SMTP.
    pub per_ip: &'a mut HashMap<IpAddr, usize>,
    /// Networks exempt from the per-address limit.
    pub trusted: &'a [Cidr],
    /// Most connections (SMTP and POP3 together).
    pub max_connections: usize,
    /// Most per untrusted address (0: no limit).
    pub max_per_ip: usize,
    /// SMTP connections open now.
    pub other_conns: usize,
    /// How long a closed session may wait for its last reply to be read.
    pub linger: Duration,
    /// The login pool and the bans (shared with SMTP AUTH); `None`: no logins.
    pub auth: Option<&'a mut Authenticator>,
    /// The server's counters: POP3 logins and refused connections count with SMTP's.
    pub stats: &'a Stats,
}

struct Conn {
    transport: Transport,
    session: Session,
    generation: u64,
    inbuf: Vec<u8>,
    timer_armed: bool,
    limited_ip: Option<IpAddr>,
    eof: bool,
    linger_until: Option<Instant>,
    starting_tls: bool,
    ready: bool,
    /// The maildrop once opened (and the user locked).
    maildrop: Option<Maildrop>,
    /// The user whose maildrop this connection holds.
    locked: Option<String>,
    /// The message file RETR/TOP is reading.
    message: Option<File>,
    /// The removal at QUIT is under way: the lock stays until it is done, even if the
    /// connection goes first.
    updating: bool,
    /// When it was accepted.
    started: Instant,
    /// Octets read from the client (after TLS).
    bytes_in: u64,
    /// Octets written to the client (before TLS).
    bytes_out: u64,
}

/// One POP3 connection as `smtpctl show sessions` shows it.
#[derive(Debug, Clone)]
pub struct ConnView {
    /// The connection's generation (unique while the server runs, with the SMTP ids in their
    /// own sequence).
    pub id: u64,
    /// Client address and port.
    pub client: SocketAddr,
    /// The session's state (`pop3 transaction`, ...).
    pub state: &'static str,
    /// When it was accepted.
    pub started: Instant,
    /// Octets read from the client.
    pub bytes_in: u64,
    /// Octets written to the client.
    pub bytes_out: u64,
    /// TLS protocol and cipher, once the handshake finished.
    pub tls: Option<String>,
    /// The user whose maildrop it holds.
    pub user: Option<String>,
}

/// The POP3 side of the reactor.
pub struct Pop3 {
    settings: Option<Pop3Settings>,
    listeners: Vec<(TcpListener, bool)>,
    conns: Slab<Conn>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    ready: VecDeque<(usize, u64)>,
    accept_ready: Vec<usize>,
    locked: HashSet<String>,
    mailboxes: Option<Arc<Mailboxes>>,
    next_generation: u64,
    scratch: Vec<u8>,
    shutting_down: bool,
    /// Accepting is paused after a failure until then.
    accept_paused_until: Option<Instant>,
    /// The thread listing and cleaning maildrops (with POP3 on).
    worker: Option<Worker>,
    /// Answers made here because the thread was gone, applied after the actions.
    done_here: Vec<Done>,
}

impl Pop3 {
    /// Serves POP3 on `bound` (listeners bound by `crate::listeners`, each with "implicit
    /// TLS") and starts the maildrop thread; without listeners POP3 is off. Listeners need
    /// `settings` (local delivery).
    pub fn bind(
        registry: &Registry,
        settings: Option<Pop3Settings>,
        bound: Vec<(TcpListener, bool)>,
        mailboxes: Option<Arc<Mailboxes>>,
        waker: Arc<Waker>,
    ) -> io::Result<Pop3> {
        if bound.is_empty() {
            return Ok(Pop3::off(settings, mailboxes));
        }
        if settings.is_none() || mailboxes.is_none() {
            return Err(io::Error::other(
                "POP3 listeners need local delivery (--local-domain, --mailboxes, --users)",
            ));
        }
        if bound.len() > MAX_LISTENERS {
            return Err(io::Error::other("too many POP3 listeners"));
        }
        let mut pop3 = Pop3::off(settings, mailboxes);
        for (i, (mut l, tls)) in bound.into_iter().enumerate() {
            registry.register(&mut l, Token(POP3_LISTENER + i), Interest::READABLE)?;
            pop3.listeners.push((l, tls));
        }
        pop3.worker = Some(Worker::spawn(waker)?);
        Ok(pop3)
    }

    /// POP3 without listeners (yet).
    fn off(settings: Option<Pop3Settings>, mailboxes: Option<Arc<Mailboxes>>) -> Pop3 {
        Pop3 {
            settings,
            listeners: Vec::new(),
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            accept_ready: Vec::new(),
            locked: HashSet::new(),
            mailboxes,
            next_generation: 0,
            scratch: vec![0; FILE_CHUNK],
            shutting_down: false,
            accept_paused_until: None,
            worker: None,
            done_here: Vec::new(),
        }
    }

    /// The addresses bound (for the start-up log line).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// True when some POP3 listener starts TLS at once (it needs a certificate).
    pub fn has_implicit_tls(&self) -> bool {
        self.listeners.iter().any(|(_, tls)| *tls)
    }

    /// Sessions opened from now on use `settings` (a reload); open ones keep theirs.
    /// Listeners stay as bound.
    pub fn set_settings(&mut self, settings: Option<Pop3Settings>) {
        if let Some(s) = settings {
            self.settings = Some(s);
        }
    }

    /// The open connections, for the operator.
    pub fn views(&self) -> Vec<ConnView> {
        self.conns
            .iter()
            .map(|(_, c)| ConnView {
                id: c.generation,
                client: c.session.peer(),
                state: c.session.state_name(),
                started: c.started,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                tls: match (c.transport.protocol_version(), c.transport.cipher_suite()) {
                    (Some(v), Some(s)) if !c.transport.is_handshaking() => Some(format!("{v} {s}")),
                    _ => None,
                },
                user: c.session.user().map(str::to_owned),
            })
            .collect()
    }

    /// Open POP3 connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no POP3 connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// True when some connection or listener has work left from its last turn.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || !self.accept_ready.is_empty()
    }

    /// The earliest deadline of a POP3 connection (or the end of an accept pause).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        [timer, self.accept_paused_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// A readiness event for a POP3 token.
    pub fn event(&mut self, token: usize, now: Instant, ctx: &mut Ctx<'_>) {
        if token >= POP3_CONN {
            self.drive(token - POP3_CONN, now, ctx);
        } else {
            self.accept(token - POP3_LISTENER, now, ctx);
        }
    }

    /// Answers from the maildrop thread.
    pub fn completions(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        while let Some(done) = self.worker.as_ref().and_then(Worker::try_recv) {
            if let Some(key) = self.apply(done, now) {
                self.drive(key, now, ctx);
            }
        }
    }

    /// Gives a maildrop answer to its session; returns the connection to drive (none when it
    /// is gone: a listing's lock went with it, a removal's lock goes now).
    fn apply(&mut self, done: Done, now: Instant) -> Option<usize> {
        let (conn_ref, user) = match &done {
            Done::Listed { conn, user, .. } | Done::Removed { conn, user, .. } => (*conn, user),
        };
        let key = conn_ref.key - POP3_CONN;
        let conn = match self.conns.get_mut(key) {
            Some(c) if c.generation == conn_ref.generation => c,
            _ => {
                if matches!(done, Done::Removed { .. }) {
                    self.locked.remove(user);
                }
                return None;
            }
        };
        match done {
            Done::Listed {
                result: Ok(drop), ..
            } => {
                let list = drop
                    .messages()
                    .iter()
                    .map(|e| MessageInfo {
                        size: e.size,
                        uid: e.uid.clone(),
                    })
                    .collect();
                conn.maildrop = Some(*drop);
                conn.session.handle_opened(Ok(list), now);
            }
            Done::Listed {
                result: Err(e),
                user,
                ..
            } => {
                log::error!("pop3: cannot list the maildrop of {user}: {e}");
                self.locked.remove(&user);
                conn.locked = None;
                conn.session.handle_opened(Err(OpenError::Failed), now);
            }
            Done::Removed { failures, .. } => {
                for e in &failures {
                    log::error!("pop3: cannot remove a deleted message: {e}");
                }
                conn.updating = false;
                conn.session.handle_updated(failures.is_empty());
            }
        }
        Some(key)
    }

    /// The login pool's answer for a POP3 session (when it is due: failures after the
    /// failure delay). A banned address's session is closed after its `-ERR [AUTH]`.
    pub fn login_answer(&mut self, answer: Answer, now: Instant, ctx: &mut Ctx<'_>) {
        let key = answer.conn.key - POP3_CONN;
        match answer.verdict {
            Verdict::Ok { .. } if !answer.banned => ctx.stats.auth_succeeded(),
            Verdict::TempFail(_) => {}
            _ => ctx.stats.auth_failed(),
        }
        let result = match answer.verdict {
            _ if answer.banned => AuthResult::Banned,
            Verdict::Ok { user } => AuthResult::Accepted(user),
            Verdict::Bad => AuthResult::Rejected,
            Verdict::TempFail(_) => AuthResult::Unavailable,
        };
        match self.conns.get_mut(key) {
            Some(conn) if conn.generation == answer.conn.generation => {
                conn.session.handle_authenticated(result, now);
                self.drive(key, now, ctx);
            }
            _ => {} // The client left before its answer came.
        }
    }

    /// Gives one more turn to connections and listeners with work left.
    pub fn serve_ready(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        for _ in 0..self.ready.len() {
            let Some((key, generation)) = self.ready.pop_front() else {
                break;
            };
            match self.conns.get_mut(key) {
                Some(conn) if conn.generation == generation => {
                    conn.ready = false;
                    self.drive(key, now, ctx);
                }
                _ => {}
            }
        }
        for index in std::mem::take(&mut self.accept_ready) {
            self.accept(index, now, ctx);
        }
    }

    fn accept(&mut self, index: usize, now: Instant, ctx: &mut Ctx<'_>) {
        if self.shutting_down || self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some((listener, tls)) = self.listeners.get(index) else {
                return;
            };
            let tls = *tls;
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, tls, now, ctx),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE and friends: retry on a timer instead of spinning (readiness is
                    // edge-triggered: without a retry the waiting connections would stay).
                    log::warn!("pop3: accept failed: {e}; pausing for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        if !self.accept_ready.contains(&index) {
            self.accept_ready.push(index);
        }
    }

    fn admit(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        tls: bool,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(settings) = &self.settings else {
            return;
        };
        let now = now.max(Instant::now());
        let trusted = ctx.trusted.iter().any(|n| n.contains(peer.ip()));
        let refusal = if self.conns.len() + ctx.other_conns >= ctx.max_connections {
            Some((
                Refusal::TooManyConnections,
                "-ERR [SYS/TEMP] Too many connections.\r\n",
            ))
        } else if !trusted
            && ctx.max_per_ip > 0
            && ctx.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= ctx.max_per_ip
        {
            Some((
                Refusal::TooManyFromAddress,
                "-ERR [SYS/TEMP] Too many connections from your address.\r\n",
            ))
        } else {
            None
        };
        if let Some((why, r)) = refusal {
            ctx.stats.refused(why);
            log::warn!(
                "pop3: refused connection from [{}]: {}",
                peer.ip(),
                r.trim_end()
            );
            if !tls {
                // A fresh socket's send buffer is empty: this write does not block or split.
                let _ = stream.write(r.as_bytes());
            }
            return;
        }
        let _ = stream.set_nodelay(true);
        let mut transport = Transport::plain(stream);
        let mut session = Session::new(settings.session.clone(), peer, now);
        let banned = ctx
            .auth
            .as_ref()
            .is_some_and(|a| a.is_banned(peer.ip(), SystemTime::now()));
        if banned {
            ctx.stats.refused(Refusal::Banned);
            log::warn!("pop3: refused connection from [{}]: banned", peer.ip());
            session.refuse_banned();
        }
        if tls {
            let Some(config) = ctx.tls else {
                return;
            };
            if let Err(e) = tls::start(&mut transport, config) {
                log::error!("pop3: cannot start TLS for {peer}: {e}");
                return;
            }
            session.handle_tls_started(now);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = transport.register(ctx.registry, Token(POP3_CONN + key)) {
            log::error!("pop3: cannot register connection from {peer}: {e}");
            return;
        }
        let limited_ip = (!trusted).then_some(peer.ip());
        if let Some(ip) = limited_ip {
            *ctx.per_ip.entry(ip).or_insert(0) += 1;
        }
        self.next_generation += 1;
        log::info!(
            "pop3: connect from [{}]{}",
            peer.ip(),
            if tls { " (TLS)" } else { "" }
        );
        entry.insert(Conn {
            transport,
            session,
            generation: self.next_generation,
            inbuf: Vec::new(),
            timer_armed: false,
            limited_ip,
            eof: false,
            linger_until: None,
            starting_tls: false,
            ready: false,
            maildrop: None,
            locked: None,
            message: None,
            updating: false,
            started: now,
            bytes_in: 0,
            bytes_out: 0,
        });
        self.drive(key, now, ctx);
    }

    /// Moves bytes for one connection until nothing more can be done without waiting, or until
    /// its budget for this turn is spent (then it goes on the ready list).
    fn drive(&mut self, key: usize, mut now: Instant, ctx: &mut Ctx<'_>) {
        let mut reads = 0;
        let mut file_octets = 0;
        let mut spent = false;
        loop {
            now = now.max(Instant::now());
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let mut progress = false;
            if !conn.inbuf.is_empty() && conn.session.wants_read() {
                let n = conn.session.handle_input(&conn.inbuf, now);
                conn.inbuf.drain(..n);
                progress |= n > 0;
            }
            progress |= self.run_actions(key, now, ctx);
            for done in std::mem::take(&mut self.done_here) {
                self.apply(done, now);
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            // The message being sent: a bounded share of the file per turn.
            if conn.message.is_some() && !conn.session.is_reading_message() {
                conn.message = None; // TOP had what it wanted.
            }
            if let Some(file) = &mut conn.message
                && conn.session.wants_message_data()
            {
                if file_octets >= FILE_BUDGET {
                    spent = true;
                } else {
                    progress = true;
                    let r = file.read(&mut self.scratch);
                    file_octets += r.as_ref().map_or(FILE_END_COST, |&n| n.max(FILE_END_COST));
                    match r {
                        Ok(0) => {
                            conn.message = None;
                            conn.session.handle_message_end(Ok(()), now);
                        }
                        Ok(n) => conn.session.handle_message_data(&self.scratch[..n], now),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::error!(
                                "pop3: reading a message for {} failed: {e}",
                                conn.locked.as_deref().unwrap_or("?")
                            );
                            conn.message = None;
                            conn.session.handle_message_end(Err(()), now);
                        }
                    }
                }
            }
            report(conn);
            let room = INBUF_MAX
                .saturating_sub(conn.inbuf.len())
                .min(self.scratch.len());
            let finishing_handshake = conn.session.is_closed()
                && conn.transport.is_handshaking()
                && !conn.session.poll_output().is_empty();
            let may_read =
                (conn.session.wants_read() || finishing_handshake) && !conn.eof && room > 0;
            if may_read && reads == BUDGET {
                spent = true;
            } else if may_read {
                reads += 1;
                match conn.transport.read(&mut self.scratch[..room]) {
                    Ok(0) => {
                        conn.eof = true;
                        conn.session.handle_eof();
                        progress = true;
                    }
                    Ok(n) => {
                        conn.inbuf.extend_from_slice(&self.scratch[..n]);
                        conn.bytes_in += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        let what = if conn.transport.is_handshaking() {
                            "TLS handshake failed"
                        } else {
                            "read error"
                        };
                        log::info!("pop3: {what} from [{}]: {e}", conn.session.peer().ip());
                        conn.eof = true;
                        conn.session.handle_eof();
                        progress = true;
                    }
                }
            }
            if spent && !conn.ready {
                conn.ready = true;
                self.ready.push_back((key, conn.generation));
            }
            self.offload_handshake(key, now, ctx);
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let blocked = !conn.session.wants_read() || !conn.session.wants_message_data();
            // Replies and messages of pipelined commands go out together: written once this
            // turn can do nothing more without writing, or once there is a socket buffer's
            // worth (one send per many small RETRs instead of two per message). A session
            // held by its output limit has WRITE_AT or more pending.
            let must_write = !progress
                || spent
                || conn.starting_tls
                || conn.session.is_closed()
                || conn.session.poll_output().len() >= WRITE_AT;
            if must_write && !flush(conn) {
                self.close(key, ctx);
                return;
            }
            progress |= blocked
                && (conn.session.wants_read()
                    || (conn.message.is_some() && conn.session.wants_message_data()));
            if conn.starting_tls
                && conn.session.poll_output().is_empty()
                && let Some(config) = ctx.tls
            {
                conn.starting_tls = false;
                if let Err(e) = tls::start(&mut conn.transport, config) {
                    log::error!("pop3: cannot start TLS: {e}");
                    self.close(key, ctx);
                    return;
                }
                conn.session.handle_tls_started(now);
                progress = true;
            }
            if conn.session.is_closed() {
                if conn.session.poll_output().is_empty() && !conn.transport.has_unsent() {
                    self.close(key, ctx);
                    return;
                }
                if conn.linger_until.is_none() {
                    let until = now + ctx.linger;
                    conn.linger_until = Some(until);
                    self.timers.push(Reverse((until, key, conn.generation)));
                }
            }
            if !progress || spent {
                break;
            }
        }
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.timer_armed
            && let Some(d) = conn.session.poll_timeout()
        {
            conn.timer_armed = true;
            self.timers.push(Reverse((d, key, conn.generation)));
        }
    }

    /// Carries out the session's actions. Returns true if there were any.
    fn run_actions(&mut self, key: usize, now: Instant, ctx: &mut Ctx<'_>) -> bool {
        let mut any = false;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        while let Some(action) = conn.session.poll_action() {
            any = true;
            match action {
                Action::Authenticate { user, password } => {
                    let conn_ref = ConnRef {
                        key: POP3_CONN + key,
                        generation: conn.generation,
                    };
                    match ctx.auth.as_deref_mut() {
                        Some(auth) => auth.submit(
                            Request {
                                conn: conn_ref,
                                service: Service::Pop3,
                                user,
                                password,
                                ip: conn.session.peer().ip(),
                            },
                            now,
                            SystemTime::now(),
                        ),
                        None => conn
                            .session
                            .handle_authenticated(AuthResult::Unavailable, now),
                    }
                }
                Action::Open { user } => match &self.mailboxes {
                    _ if self.locked.contains(&user) => {
                        conn.session.handle_opened(Err(OpenError::InUse), now)
                    }
                    None => conn.session.handle_opened(Err(OpenError::Failed), now),
                    Some(m) => {
                        // Locked from now: a second login while the listing is made is
                        // [IN-USE] too.
                        self.locked.insert(user.clone());
                        conn.locked = Some(user.clone());
                        let job = Job::List {
                            conn: ConnRef {
                                key: POP3_CONN + key,
                                generation: conn.generation,
                            },
                            root: m.path(&user),
                            user,
                        };
                        submit(&self.worker, job, &mut self.done_here);
                    }
                },
                Action::Read { message } => {
                    let result = match conn.maildrop.as_mut().map(|d| d.open(message)) {
                        Some(Ok(file)) => {
                            conn.message = Some(file);
                            Ok(())
                        }
                        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Err(ReadError::Gone),
                        Some(Err(e)) => {
                            log::error!("pop3: cannot open a message: {e}");
                            Err(ReadError::Failed)
                        }
                        None => Err(ReadError::Failed),
                    };
                    conn.session.handle_read_started(result, now);
                }
                Action::Seen { message } => {
                    if let Some(Err(e)) = conn.maildrop.as_mut().map(|d| d.mark_seen(message)) {
                        log::warn!("pop3: cannot mark a message seen: {e}");
                    }
                }
                Action::Update { deleted } => match (conn.maildrop.take(), &conn.locked) {
                    (Some(maildrop), Some(user)) => {
                        conn.updating = true;
                        let job = Job::Remove {
                            conn: ConnRef {
                                key: POP3_CONN + key,
                                generation: conn.generation,
                            },
                            user: user.clone(),
                            maildrop: Box::new(maildrop),
                            deleted,
                            mailboxes: self.mailboxes.clone(),
                        };
                        submit(&self.worker, job, &mut self.done_here);
                    }
                    _ => conn.session.handle_updated(false),
                },
                Action::StartTls => conn.starting_tls = true,
            }
        }
        any
    }

    fn offload_handshake(&mut self, key: usize, now: Instant, ctx: &mut Ctx<'_>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some((tls, input)) = conn.transport.take_handshake() else {
            return;
        };
        let job = handshake::Job {
            conn: ConnRef {
                key: POP3_CONN + key,
                generation: conn.generation,
            },
            tls,
            input,
        };
        let job = match ctx.handshakers {
            Some(pool) => match pool.submit(job) {
                Ok(()) => return,
                Err(job) => *job,
            },
            None => job,
        };
        log::error!("TLS handshake threads are gone");
        let done = handshake::process(job);
        self.handshake_done(done, now, ctx);
    }

    /// A handshake thread processed a POP3 connection's records.
    pub fn handshake_done(&mut self, done: handshake::Done, now: Instant, ctx: &mut Ctx<'_>) {
        let key = done.conn.key - POP3_CONN;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.generation != done.conn.generation {
            return;
        }
        if let Err(e) = conn
            .transport
            .handshake_done(done.tls, &done.output, done.error)
        {
            log::info!(
                "pop3: TLS handshake failed from [{}]: {e}",
                conn.session.peer().ip()
            );
            self.close(key, ctx);
            return;
        }
        self.drive(key, now, ctx);
    }

    /// Deadlines due: idle sessions time out, lingering ones are closed, a paused accept
    /// resumes.
    pub fn timers(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            for i in 0..self.listeners.len() {
                self.accept(i, now, ctx);
            }
        }
        while let Some(Reverse((t, key, generation))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            conn.timer_armed = false;
            if conn.session.is_closed() {
                if conn.linger_until.is_some_and(|t| now < t) {
                    continue;
                }
                self.close(key, ctx);
                continue;
            }
            match conn.session.poll_timeout() {
                Some(d) if d > now => {
                    conn.timer_armed = true;
                    self.timers.push(Reverse((d, key, generation)));
                }
                Some(_) => {
                    conn.session.handle_timeout(now);
                    self.drive(key, now, ctx);
                }
                None => {}
            }
        }
        if self.timers.len() > 2 * self.conns.len() + 64 {
            let conns = &self.conns;
            self.timers
                .retain(|Reverse((_, k, g))| conns.get(*k).is_some_and(|c| c.generation == *g));
        }
    }

    /// A stop signal: no new connections; sessions waiting for a command get
    /// `-ERR [SYS/TEMP]` and close, busy ones once their work is done.
    pub fn begin_shutdown(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        self.shutting_down = true;
        for (mut l, _) in self.listeners.drain(..) {
            let _ = ctx.registry.deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.session.begin_shutdown();
            }
            self.drive(key, now, ctx);
        }
    }

    /// The shutdown deadline: every session closes now.
    pub fn force_close_all(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.session.force_close();
            }
            self.drive(key, now, ctx);
            if self.conns.contains(key) {
                self.close(key, ctx);
            }
        }
    }

    fn close(&mut self, key: usize, ctx: &mut Ctx<'_>) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = conn.transport.deregister(ctx.registry);
        if let Some(ip) = conn.limited_ip
            && let Some(n) = ctx.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                ctx.per_ip.remove(&ip);
            }
        }
        // The maildrop lock goes with the connection, however it ended (after the removal at
        // QUIT, if that is still under way: see `apply`).
        if let Some(user) = conn.locked.take()
            && !conn.updating
        {
            self.locked.remove(&user);
        }
        report(&mut conn);
        log::info!("pop3: disconnect from [{}]", conn.session.peer().ip());
    }
}

/// Logs what the session reported.
fn report(conn: &mut Conn) {
    let ip = conn.session.peer().ip();
    while let Some(event) = conn.session.poll_event() {
        match event {
            Event::LoggedIn {
                user,
                messages,
                octets,
            } => log::info!(
                "pop3: login user={user} from [{ip}] messages={messages} octets={octets}"
            ),
            Event::LoginFailed { user, reason } => {
                log::warn!("pop3: login failed user={user:?} from [{ip}]: {reason}")
            }
            Event::Sent { .. } => {}
            Event::Updated { user, deleted, ok } => {
                log::info!("pop3: update user={user} deleted={deleted} ok={ok}")
            }
            Event::ReadFailed => log::warn!("pop3: message read failed for [{ip}]"),
            Event::Timeout => log::info!("pop3: timeout from [{ip}]"),
            Event::TooManyErrors => log::warn!("pop3: too many errors from [{ip}]"),
            Event::DiscardedAfterStls(n) => {
                log::warn!("pop3: discarded {n} octets pipelined after STLS from [{ip}]")
            }
        }
    }
}

/// Writes pending output until done or the socket is full. False if the connection broke.
fn flush(conn: &mut Conn) -> bool {
    if conn.transport.flush().is_err() {
        return false;
    }
    loop {
        let pending = conn.session.poll_output();
        if pending.is_empty() {
            return true;
        }
        match conn.transport.write(pending) {
            Ok(0) => return false,
            Ok(n) => {
                conn.session.output_written(n);
                conn.bytes_out += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Hands a job to the maildrop thread, or does it here when the thread is gone (the answer
/// waits in `done_here`).
fn submit(worker: &Option<Worker>, job: Job, done_here: &mut Vec<Done>) {
    let job = match worker {
        Some(w) => match w.submit(job) {
            Ok(()) => return,
            Err(job) => job,
        },
        None => job,
    };
    log::error!("pop3: the maildrop thread is gone");
    done_here.push(maildrops::run(job));
}
