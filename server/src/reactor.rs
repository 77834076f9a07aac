//! The reactor: one mio `Poll` serving every listener and connection on one thread.
//!
//! It moves bytes between sockets and each connection's [`Session`], hands the session's
//! queue-file actions to [`crate::store`], keeps idle deadlines in a heap, applies connection
//! limits, and stops cleanly on SIGTERM/SIGINT (SIGHUP reloads the configuration for new
//! sessions, see [`Server::reload`]). It holds no
//! protocol logic, no queue-file logic, and never waits on the disk flush (that is
//! [`crate::commit`]'s thread). It drains each session's events into [`crate::stats`] (counters
//! and log lines) after driving it, and once more when the connection goes.
//!
//! Fairness: each readiness turn of a connection reads at most [`READ_BUDGET`] times, and a
//! listener accepts at most 64 connections; one with work left goes on a ready list served
//! after the other events, so one client streaming without pause (or a burst of connections)
//! cannot keep the thread from the other connections, accepts, timers, signals or commit
//! completions.
//!
//! Logins: a session's `Authenticate` and `LookupUser` actions go to [`crate::auth`]'s pool,
//! answers come back through the Waker (glue in `reactor/logins.rs`); a banned address is
//! refused at accept.
//! The control socket ([`crate::control`]) is served here too; its requests are carried out
//! by `reactor::operator`, and the trace hook sits where replies are written ([`crate::trace`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, unbounded};
use maildir_core::local::Mailboxes;
use maildir_core::{Durability, Maildir};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use net::handshake::{self, Handshakers};
use net::{ConnRef, Transport};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::commit::Done;
use crate::config::Cidr;
use crate::control::{self, Control};
use crate::listeners::{Listener, Service};
use crate::stats::{self, Refusal, Stats, TxTimer};
use crate::store::{Commit, QueueFile, Store};
use crate::tls;
use crate::trace;
use proto::smtp::server::reply;
use proto::smtp::server::session::{Action, Session, SessionConfig};

mod operator;
mod reload;
pub use reload::ReloadSource;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_LISTENER: usize = 2;
const FIRST_CONN: usize = 1 << 20;
/// Read buffer shared by all connections.
const READ_CHUNK: usize = 64 * 1024;
/// Reads one connection may do in one turn before the others get theirs.
pub const READ_BUDGET: usize = 4;
/// Connections one listener may accept in one turn (the rest wait for the next round).
const ACCEPT_BUDGET: usize = 64;
/// Pause after an accept failure such as "too many open files".
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the reactor needs besides the sessions' shared settings (built by
/// [`crate::config::Config::server_config`]).
pub struct ServerConfig {
    /// Settings for every session.
    pub session: Arc<SessionConfig>,
    /// The users' Maildirs, for local delivery.
    pub mailboxes: Option<Arc<Mailboxes>>,
    /// Networks allowed to relay.
    pub trusted: Vec<Cidr>,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most simultaneous connections per untrusted address (0: unlimited).
    pub max_per_ip: usize,
    /// fsync before 250, or not.
    pub durability: Durability,
    /// How long transfers may go on after a stop signal.
    pub shutdown_timeout: Duration,
    /// Certificate and key for STARTTLS and implicit TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The group commit's threads, batch size and sync mode.
    pub commit: crate::commit::Settings,
    /// Threads running TLS handshakes.
    pub handshake_threads: usize,
    /// Unprocessed input kept per connection before reading stops (pipelined commands).
    pub inbuf_max: usize,
    /// How long a closed session may wait for its last reply to be read.
    pub linger: Duration,
    /// POP3 listeners and settings ([`crate::pop3`]); `None`: no POP3.
    pub pop3: Option<crate::pop3::Pop3Settings>,
    /// Logins (SMTP AUTH, POP3): the pool's settings and the password source; `None`: no
    /// logins.
    pub auth: Option<crate::auth::LoginService>,
    /// The control socket's path (None: no control socket).
    pub control: Option<PathBuf>,
    /// `control` was not given but defaulted: failing to bind it is a warning, not an error.
    pub control_is_default: bool,
}

mod logins;

struct Conn {
    transport: Transport,
    session: Session,
    generation: u64,
    /// Input the session has not consumed yet.
    inbuf: Vec<u8>,
    /// The message being stored.
    queue_file: QueueFile,
    /// A deadline for this connection is in the heap.
    timer_armed: bool,
    /// Counted against the per-address limit.
    limited_ip: Option<IpAddr>,
    eof: bool,
    /// Closed, waiting for the client to read its last reply until then
    /// ([`ServerConfig::linger`] after the close). An idle deadline still in the heap must not
    /// cut this short.
    linger_until: Option<Instant>,
    /// STARTTLS accepted: switch to TLS once the `220` is sent.
    starting_tls: bool,
    /// The handshake's outcome was given to the session.
    tls_reported: bool,
    /// On the ready list (its turn ended with input possibly left to read).
    ready: bool,
    /// The socket may hold input: set by each readiness event, cleared by a plain TCP read
    /// that found it empty (`WouldBlock`, or fewer bytes than asked for). Edge-triggered epoll
    /// reports every arrival, so a connection driven for another reason (a commit's result)
    /// does not try a read that can only say `WouldBlock`. TLS connections read regardless
    /// (rustls may hold plaintext already).
    readable: bool,
    /// When it connected (`show sessions`).
    started: Instant,
    /// What of its transcript the trace has published.
    trace: trace::Cursor,
    /// When its transaction in progress began (transaction duration histogram).
    tx_timer: TxTimer,
}

/// The server: listeners, connections, timers and the group-commit thread.
pub struct Server {
    poll: Poll,
    /// Listening sockets, and whether each speaks TLS from the first byte.
    /// SMTP and submission listeners (POP3's are `pop3`'s), each with what it serves.
    listeners: Vec<(TcpListener, Service)>,
    conns: Slab<Conn>,
    timers: BinaryHeap<TimerEntry>,
    /// Connections whose turn ended before they ran out of input, served in order.
    ready: VecDeque<(usize, u64)>,
    /// Listeners whose turn ended with connections possibly left to accept.
    accept_ready: Vec<usize>,
    config: ServerConfig,
    store: Store,
    done_rx: Receiver<Done>,
    handshakers: Option<Handshakers>,
    handshake_rx: Receiver<handshake::Done>,
    signals: Signals,
    per_ip: HashMap<IpAddr, usize>,
    next_generation: u64,
    scratch: Vec<u8>,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    /// The shutdown deadline passed and every session was closed.
    forced: bool,
    /// Counters, fed from the sessions' events and the group commit's results; shared with
    /// the threads that read them (metrics exporter).
    stats: Arc<Stats>,
    /// The control socket, if enabled.
    control: Option<Control>,
    /// `smtpctl pause smtp`: the listeners are deregistered.
    paused: bool,
    /// How to reload the configuration ([`Server::reload`]); none: reloading is refused.
    reload: Option<ReloadSource>,
    /// Wakes the poll: given to the handshake threads a reload may start.
    waker: Arc<Waker>,
    /// Where the handshake threads send their results (kept for threads a reload starts).
    handshake_tx: Sender<handshake::Done>,
    /// POP3 listeners and connections ([`crate::pop3`]).
    pop3: crate::pop3::Pop3,
    /// Login checks and bans (when there are accounts).
    auth: Option<crate::auth::Authenticator>,
}

/// SIGTERM, SIGINT and SIGHUP caught from now on (kept until the reactor reads them): made
/// before binding, so a signal sent as soon as the port answers is neither fatal nor lost.
pub fn stop_signals() -> io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP])
}

impl Server {
    /// Serves on listeners already bound (by [`crate::listeners::bind`] before dropping
    /// privileges, or handed over by systemd: `crate::systemd::listeners`), with the signals
    /// caught since [`stop_signals`], and starts the group-commit thread.
    pub fn with_listeners(
        bound: Vec<Listener>,
        mut signals: Signals,
        maildir: Maildir,
        mut config: ServerConfig,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::new();
        let mut pop3_listeners = Vec::new();
        for Listener {
            mut socket,
            service,
        } in bound
        {
            if service.pop3() {
                pop3_listeners.push((socket, service.implicit_tls()));
                continue;
            }
            let token = Token(FIRST_LISTENER + listeners.len());
            poll.registry()
                .register(&mut socket, token, Interest::READABLE)?;
            listeners.push((socket, service));
        }
        let auth = logins::start(&mut config, &waker)?;
        let control = match &config.control {
            Some(path) => match Control::bind(path, poll.registry()) {
                Ok(c) => Some(c),
                Err(e) if config.control_is_default => {
                    log::warn!("{e}; running without a control socket (give --control PATH)");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let (done_tx, done_rx) = unbounded();
        let store = Store::new(
            maildir,
            config.mailboxes.clone(),
            config.durability,
            config.commit,
            done_tx,
            waker.clone(),
        )?;
        let pop3 = crate::pop3::Pop3::bind(
            poll.registry(),
            config.pop3.clone(),
            pop3_listeners,
            config.mailboxes.clone(),
            waker.clone(),
        )?;
        let (handshake_tx, handshake_rx) = unbounded();
        let handshakers = match &config.tls {
            Some(_) => Some(Handshakers::spawn(
                config.handshake_threads,
                handshake_tx.clone(),
                waker.clone(),
            )?),
            None => None,
        };
        Ok(Server {
            poll,
            listeners,
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            accept_ready: Vec::new(),
            config,
            store,
            done_rx,
            handshakers,
            handshake_rx,
            signals,
            per_ip: HashMap::new(),
            next_generation: 0,
            scratch: vec![0; READ_CHUNK],
            accept_paused_until: None,
            shutdown_deadline: None,
            forced: false,
            stats: Arc::new(Stats::new()),
            control,
            paused: false,
            reload: None,
            waker,
            handshake_tx,
            pop3,
            auth,
        })
    }

    /// The server's counters so far (clone the `Arc` to read them from another thread).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .chain(self.pop3.local_addrs())
            .collect()
    }

    /// Runs until a stop signal and the end of the transfers in progress.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.ready.is_empty()
                && self.accept_ready.is_empty()
                && !self.pop3.has_ready()
            {
                self.next_wakeup()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                // Connections with input left: only look for new events, do not wait.
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    Token(t) if crate::pop3::owns_token(t) => {
                        self.with_pop3(|p, ctx| p.event(t, now, ctx))
                    }
                    WAKER => self.completions(now),
                    SIGNALS => self.signals(now),
                    Token(t) if t >= FIRST_CONN => {
                        let key = t - FIRST_CONN;
                        if (event.is_readable() || event.is_read_closed() || event.is_error())
                            && let Some(conn) = self.conns.get_mut(key)
                        {
                            conn.readable = true;
                        }
                        self.drive(key, now)
                    }
                    Token(t) if control::owns(t) => self.control_ready(t, now),
                    Token(t) => self.accept(t - FIRST_LISTENER, now),
                }
            }
            // Completions can arrive without an event of their own being seen yet.
            self.completions(now);
            self.serve_ready(now);
            for index in std::mem::take(&mut self.accept_ready) {
                self.accept(index, now);
            }
            self.timers(now);
            self.with_pop3(|p, ctx| {
                p.serve_ready(now, ctx);
                p.timers(now, ctx);
            });
            if self.control.as_ref().is_some_and(|c| c.tracing()) {
                self.flush_control();
            }
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                for i in 0..self.listeners.len() {
                    self.accept(i, now);
                }
            }
            if let Some(deadline) = self.shutdown_deadline {
                if now >= deadline && !self.forced {
                    // Once: afterwards only commits in flight remain, and their completions
                    // wake the poll (the deadline no longer does, see `next_wakeup`).
                    self.forced = true;
                    self.force_close_all(now);
                }
                if self.conns.is_empty() && self.pop3.is_empty() && self.store.in_flight() == 0 {
                    log::info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let timer = [timer, self.pop3.next_wakeup()].into_iter().flatten().min();
        let login = self.auth.as_ref().and_then(|a| a.next_deadline());
        let timer = timer.into_iter().chain(login).min();
        next_wakeup(
            timer,
            self.accept_paused_until,
            self.shutdown_deadline,
            self.forced,
        )
    }

    /// Gives one more turn to each connection that had input left (those whose turn ends
    /// short again go to the back of the list).
    fn serve_ready(&mut self, now: Instant) {
        for _ in 0..self.ready.len() {
            let Some((key, generation)) = self.ready.pop_front() else {
                break;
            };
            match self.conns.get_mut(key) {
                Some(conn) if conn.generation == generation => {
                    conn.ready = false;
                    self.drive(key, now);
                }
                _ => {}
            }
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        if self.accept_paused_until.is_some() || self.shutdown_deadline.is_some() || self.paused {
            return;
        }
        let mut accepted = 0;
        loop {
            let Some(&(ref listener, service)) = self.listeners.get(index) else {
                return;
            };
            if accepted == ACCEPT_BUDGET {
                // The connections already admitted get their turn first.
                if !self.accept_ready.contains(&index) {
                    self.accept_ready.push(index);
                }
                return;
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    accepted += 1;
                    self.admit(stream, peer, service, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; retry on a timer.
                    log::warn!("accept failed: {e}; pausing for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, service: Service, now: Instant) {
        // This connection may have arrived after the poll returned: its clock starts now.
        let now = now.max(Instant::now());
        let host = &self.config.session.hostname;
        let trusted = self.config.trusted.iter().any(|n| n.contains(peer.ip()));
        let banned = self
            .auth
            .as_ref()
            .is_some_and(|a| a.is_banned(peer.ip(), SystemTime::now()));
        let refusal = if banned {
            Some((Refusal::Banned, reply::banned(host)))
        } else if self.conns.len() + self.pop3.len() >= self.config.max_connections {
            Some((
                Refusal::TooManyConnections,
                reply::too_many_connections(host),
            ))
        } else if !trusted
            && self.config.max_per_ip > 0
            && self.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= self.config.max_per_ip
        {
            let r = reply::too_many_from(host, &peer.ip().to_string());
            Some((Refusal::TooManyFromAddress, r))
        } else {
            None
        };
        if let Some((why, r)) = refusal {
            self.stats.refused(why);
            log::warn!("refused connection from [{}]: {}", peer.ip(), r.text);
            let mut buf = Vec::new();
            r.write_to(&mut buf);
            // A fresh socket's send buffer is empty: this write does not block or split.
            let _ = stream.write(&buf);
            return;
        }
        let _ = stream.set_nodelay(true);
        let mut transport = Transport::plain(stream);
        let mut session = Session::new(self.config.session.clone(), peer, trusted, now);
        if service.submission() {
            session.set_submission();
        }
        if self.control.as_ref().is_some_and(|c| c.tracing()) {
            session.set_transcript(true);
        }
        if service.implicit_tls() {
            let Some(config) = &self.config.tls else {
                return;
            };
            if let Err(e) = tls::start(&mut transport, config) {
                log::error!("cannot start TLS for {peer}: {e}");
                return;
            }
            session.handle_tls_started(now);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = transport.register(self.poll.registry(), Token(FIRST_CONN + key)) {
            log::error!("cannot register connection from {peer}: {e}");
            return;
        }
        let limited_ip = (!trusted).then_some(peer.ip());
        if let Some(ip) = limited_ip {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        self.next_generation += 1;
        entry.insert(Conn {
            transport,
            session,
            generation: self.next_generation,
            inbuf: Vec::new(),
            queue_file: QueueFile::default(),
            timer_armed: false,
            limited_ip,
            eof: false,
            linger_until: None,
            starting_tls: false,
            tls_reported: false,
            ready: false,
            readable: true,
            started: now,
            trace: trace::Cursor::default(),
            tx_timer: TxTimer::default(),
        });
        self.drive(key, now);
    }

    /// Moves bytes for one connection until nothing more can be done without waiting, or
    /// until its read budget for this turn is spent (then it goes on the ready list).
    fn drive(&mut self, key: usize, mut now: Instant) {
        let mut reads = 0;
        let mut spent = false;
        loop {
            // Deadlines count from the moment a line is handled, never from the (earlier)
            // moment the poll returned: a timeout must not fire before it is due.
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
            progress |= self.run_actions(key, now);
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            report(conn, &self.stats);
            let room = read_room(conn.inbuf.len(), self.config.inbuf_max);
            // A session closed while its TLS handshake is under way (a stop signal right after
            // STARTTLS or an implicit TLS accept) reads on until the handshake is done: its
            // last reply (421) can only be sent then.
            let finishing_handshake = conn.session.is_closed()
                && conn.transport.is_handshaking()
                && !conn.session.poll_output().is_empty();
            let may_read = (conn.session.wants_read() || finishing_handshake)
                && !conn.eof
                && room > 0
                && (conn.readable || conn.transport.is_tls());
            if may_read && reads == READ_BUDGET {
                // Its turn is over: the rest waits for the next round of the event loop.
                spent = true;
                if !conn.ready {
                    conn.ready = true;
                    self.ready.push_back((key, conn.generation));
                }
            } else if may_read {
                reads += 1;
                match conn.transport.read(&mut self.scratch[..room]) {
                    Ok(0) => {
                        conn.eof = true;
                        conn.session.handle_eof();
                        progress = true;
                    }
                    Ok(n) => {
                        report_tls(conn);
                        if n < room && !conn.transport.is_tls() {
                            // The socket is empty: the next read waits for the next event.
                            conn.readable = false;
                        }
                        let data = &self.scratch[..n];
                        if conn.inbuf.is_empty() {
                            let used = conn.session.handle_input(data, now);
                            conn.inbuf.extend_from_slice(&data[used..]);
                        } else {
                            conn.inbuf.extend_from_slice(data);
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !conn.transport.is_tls() {
                            conn.readable = false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        let what = if conn.transport.is_handshaking() {
                            "TLS handshake failed"
                        } else {
                            "read error"
                        };
                        log::info!("{what} from [{}]: {e}", conn.session.peer().ip());
                        conn.eof = true;
                        conn.session.handle_eof();
                        progress = true;
                    }
                }
                progress |= self.run_actions(key, now);
            }
            self.offload_handshake(key);
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            report(conn, &self.stats);
            if let Some(control) = self.control.as_mut().filter(|c| c.tracing()) {
                trace::collect(&mut conn.session, &mut conn.trace, conn.generation, control);
            }
            let blocked = !conn.session.wants_read();
            if !flush(conn) {
                self.close(key);
                return;
            }
            // Sending replies can make room for more input: read it now, as no new readiness
            // event comes for input that arrived while the session was not reading.
            progress |= blocked && conn.session.wants_read();
            if conn.starting_tls
                && conn.session.poll_output().is_empty()
                && let Some(config) = &self.config.tls
            {
                conn.starting_tls = false;
                if let Err(e) = tls::start(&mut conn.transport, config) {
                    log::error!("cannot start TLS: {e}");
                    self.close(key);
                    return;
                }
                conn.session.handle_tls_started(now);
                progress = true;
            }
            if conn.session.is_closed() {
                // Replies still inside the transport (TLS records rustls holds) count too.
                if conn.session.poll_output().is_empty() && !conn.transport.has_unsent() {
                    self.close(key);
                    return;
                }
                if conn.linger_until.is_none() {
                    let until = now + self.config.linger;
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

    /// Carries out the session's actions: queue-file ones through [`Store`], STARTTLS here.
    /// Returns true if there were any.
    fn run_actions(&mut self, key: usize, now: Instant) -> bool {
        let mut any = false;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        while let Some(action) = conn.session.poll_action() {
            any = true;
            match action {
                Action::Begin => {
                    let result = self.store.begin(&mut conn.queue_file);
                    conn.session.handle_begun(result, now, SystemTime::now());
                }
                Action::Write(bytes) => conn.queue_file.write(bytes),
                Action::Commit(local) => {
                    let conn_ref = ConnRef {
                        key,
                        generation: conn.generation,
                    };
                    if let Commit::Done(result) =
                        self.store.commit(&mut conn.queue_file, conn_ref, local)
                    {
                        conn.session.handle_stored(result, now);
                    }
                }
                Action::Abort => conn.queue_file.abort(),
                Action::StartTls => conn.starting_tls = true,
                Action::Authenticate { user, password } => {
                    let conn_ref = ConnRef {
                        key,
                        generation: conn.generation,
                    };
                    logins::submit(&mut self.auth, conn, conn_ref, user, password, now);
                }
                Action::LookupUser { name } => {
                    let conn_ref = ConnRef {
                        key,
                        generation: conn.generation,
                    };
                    logins::lookup(&self.auth, conn, conn_ref, name, now);
                }
            }
        }
        any
    }

    /// Sends handshake records a connection collected to the handshake threads.
    fn offload_handshake(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some((tls, input)) = conn.transport.take_handshake() else {
            return;
        };
        let job = handshake::Job {
            conn: ConnRef {
                key,
                generation: conn.generation,
            },
            tls,
            input,
        };
        if let Some(pool) = &self.handshakers
            && let Err(job) = pool.submit(job)
        {
            // No pool thread left: do the work here rather than lose the connection.
            log::error!("TLS handshake threads are gone");
            let done = handshake::process(*job);
            self.handshake_done(done, Instant::now());
        }
    }

    /// A handshake thread processed a connection's records.
    fn handshake_done(&mut self, done: handshake::Done, now: Instant) {
        let ConnRef { key, generation } = done.conn;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        if let Err(e) = conn
            .transport
            .handshake_done(done.tls, &done.output, done.error)
        {
            log::info!(
                "TLS handshake failed from [{}]: {e}",
                conn.session.peer().ip()
            );
            self.close(key);
            return;
        }
        self.drive(key, now);
    }

    fn completions(&mut self, now: Instant) {
        while let Ok(done) = self.handshake_rx.try_recv() {
            if crate::pop3::owns_conn(&done.conn) {
                self.with_pop3(|p, ctx| p.handshake_done(done, now, ctx));
                continue;
            }
            self.handshake_done(done, now);
        }
        self.with_pop3(|p, ctx| p.completions(now, ctx));
        self.login_answers(now);
        while let Ok(done) = self.done_rx.try_recv() {
            self.store.completed();
            if let Some(n) = done.batch {
                self.stats.commit_batch(n);
            }
            self.stats.commit_latency(done.latency);
            if done.result.is_ok() {
                self.stats.local_delivered(done.local_copies);
            }
            let ConnRef { key, generation } = done.conn;
            match self.conns.get_mut(key) {
                Some(conn) if conn.generation == generation => {
                    conn.session.handle_stored(done.result, now);
                    self.drive(key, now);
                }
                _ => {} // The client left before the commit completed.
            }
        }
    }

    fn timers(&mut self, now: Instant) {
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
                // An idle deadline armed before the session closed is no reason to stop the
                // linger early: the linger's own entry ends it.
                if conn.linger_until.is_some_and(|t| now < t) {
                    continue;
                }
                // Its last reply was never read.
                self.close(key);
                continue;
            }
            match conn.session.poll_timeout() {
                Some(d) if d > now => {
                    conn.timer_armed = true;
                    self.timers.push(Reverse((d, key, generation)));
                }
                Some(_) => {
                    conn.session.handle_timeout(now);
                    self.drive(key, now);
                }
                None => {} // Re-armed by the next drive.
            }
        }
    }

    fn signals(&mut self, now: Instant) {
        let received: Vec<i32> = self.signals.pending().collect();
        if received.contains(&SIGHUP) {
            // Logs its outcome; a refused configuration leaves the one in force.
            let _ = self.reload();
        }
        if !received.iter().any(|&s| s == SIGTERM || s == SIGINT) {
            return;
        }
        if self.shutdown_deadline.is_some() {
            log::info!("second stop signal: closing every session now");
            self.force_close_all(now);
            return;
        }
        log::info!(
            "stop signal: no new connections; {} sessions get up to {:?} to finish",
            self.conns.len(),
            self.config.shutdown_timeout
        );
        self.shutdown_deadline = Some(now + self.config.shutdown_timeout);
        crate::systemd::stopping();
        for (mut l, _) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.with_pop3(|p, ctx| p.begin_shutdown(now, ctx));
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.session.begin_shutdown();
            }
            self.drive(key, now);
        }
    }

    fn force_close_all(&mut self, now: Instant) {
        self.with_pop3(|p, ctx| p.force_close_all(now, ctx));
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.session.force_close();
            }
            self.drive(key, now);
            // Whoever did not take its last reply goes now.
            if self.conns.contains(key) {
                self.close(key);
            }
        }
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = conn.transport.deregister(self.poll.registry());
        if let Some(ip) = conn.limited_ip
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        report(&mut conn, &self.stats);
        self.stats.connection_closed(conn.session.counts());
        log::info!(
            "disconnect from [{}] {}",
            conn.session.peer().ip(),
            stats::summary(conn.session.counts())
        );
        // Entries of closed connections would stay until they expire (up to the timeout):
        // drop them once they outnumber the live ones, so the heap stays O(connections).
        let conns = &self.conns;
        compact_timers(&mut self.timers, conns.len(), |key, generation| {
            conns.get(key).is_some_and(|c| c.generation == generation)
        });
    }

    /// Runs `f` on the POP3 side with what it borrows from the reactor.
    fn with_pop3(&mut self, f: impl FnOnce(&mut crate::pop3::Pop3, &mut crate::pop3::Ctx<'_>)) {
        let mut ctx = crate::pop3::Ctx {
            registry: self.poll.registry(),
            handshakers: self.handshakers.as_ref(),
            tls: self.config.tls.as_ref(),
            per_ip: &mut self.per_ip,
            trusted: &self.config.trusted,
            max_connections: self.config.max_connections,
            max_per_ip: self.config.max_per_ip,
            other_conns: self.conns.len(),
            linger: self.config.linger,
            auth: self.auth.as_mut(),
            stats: &self.stats,
        };
        f(&mut self.pop3, &mut ctx);
    }
}

/// When the poll must return at the latest: the first timer, the end of an accept pause, and
/// the shutdown deadline until it has been acted on (`forced`). A deadline already handled
/// must not count, or the poll would return at once forever while commits finish.
fn next_wakeup(
    timer: Option<Instant>,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    forced: bool,
) -> Option<Instant> {
    let shutdown = shutdown_deadline.filter(|_| !forced);
    [timer, accept_paused_until, shutdown]
        .into_iter()
        .flatten()
        .min()
}

/// A heap entry: when, which connection (slab key and generation).
type TimerEntry = Reverse<(Instant, usize, u64)>;

/// Removes the entries of connections that are gone once the heap holds more than two per
/// live connection (each has at most an idle deadline and a linger entry) plus some slack.
/// Amortised O(1) per closed connection.
fn compact_timers(
    timers: &mut BinaryHeap<TimerEntry>,
    live_conns: usize,
    live: impl Fn(usize, u64) -> bool,
) {
    if timers.len() > 2 * live_conns + 64 {
        timers.retain(|Reverse((_, key, generation))| live(*key, *generation));
    }
}

/// How many octets the next read may take: the unprocessed input stays within `inbuf_max`.
fn read_room(unprocessed: usize, inbuf_max: usize) -> usize {
    inbuf_max.saturating_sub(unprocessed).min(READ_CHUNK)
}

/// Counts and logs what the session reported since the last call.
fn report(conn: &mut Conn, stats: &Stats) {
    let peer = conn.session.peer();
    while let Some(event) = conn.session.poll_event() {
        stats.record_timed(&event, &mut conn.tx_timer, Instant::now);
        stats::log_event(peer, &event);
    }
}

/// Gives the session the TLS protocol and cipher once the handshake has finished.
fn report_tls(conn: &mut Conn) {
    if !conn.tls_reported
        && conn.transport.is_tls()
        && !conn.transport.is_handshaking()
        && let Some(info) = tls::info(&conn.transport)
    {
        conn.tls_reported = true;
        conn.session.handle_tls_established(info);
    }
}

/// Writes pending replies until done or the socket is full. False if the connection broke.
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
            Ok(n) => conn.session.output_written(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token has one owner: SMTP listeners, POP3 listeners, the control socket, SMTP
    /// connections and POP3 connections never share one.
    #[test]
    fn token_ranges_do_not_overlap() {
        use crate::pop3::conns::{MAX_LISTENERS, POP3_LISTENER};
        let control = control::LISTENER..=control::LISTENER + control::MAX_CLIENTS;
        let pop3_listeners = POP3_LISTENER..POP3_LISTENER + MAX_LISTENERS;
        for t in [WAKER.0, SIGNALS.0, FIRST_LISTENER, POP3_LISTENER - 1] {
            assert!(!control.contains(&t) && !crate::pop3::owns_token(t), "{t}");
            assert!(t < FIRST_CONN, "{t}");
        }
        for t in pop3_listeners.clone().chain(control.clone()) {
            assert!(t < FIRST_CONN, "{t}");
        }
        for t in pop3_listeners {
            assert!(crate::pop3::owns_token(t) && !control::owns(t), "{t}");
        }
        for t in control {
            assert!(control::owns(t) && !crate::pop3::owns_token(t), "{t}");
        }
        for t in [FIRST_CONN, FIRST_CONN + 1_000_000] {
            assert!(!control::owns(t) && !crate::pop3::owns_token(t), "{t}");
        }
    }

    /// Issue 10 item 17: the unprocessed input of a connection stays within 64 KiB.
    #[test]
    fn reads_keep_unprocessed_input_within_the_limit() {
        const INBUF_MAX: usize = crate::config::INBUF_MAX;
        for unprocessed in [0, 1, 100, INBUF_MAX - 1, INBUF_MAX, INBUF_MAX + 5] {
            let room = read_room(unprocessed, INBUF_MAX);
            assert!(
                unprocessed + room <= INBUF_MAX.max(unprocessed),
                "{unprocessed}"
            );
            assert!(room <= READ_CHUNK);
        }
        assert_eq!(read_room(0, INBUF_MAX), INBUF_MAX.min(READ_CHUNK));
        assert_eq!(read_room(INBUF_MAX - 10, INBUF_MAX), 10);
    }

    /// Issue 10 item 16: once the shutdown deadline has been acted on, it no longer wakes the
    /// poll (the reactor spun at 100% CPU while the last commits finished).
    #[test]
    fn handled_shutdown_deadline_does_not_wake_the_poll() {
        let past = Instant::now();
        let later = past + Duration::from_secs(60);
        assert_eq!(next_wakeup(None, None, Some(past), false), Some(past));
        assert_eq!(next_wakeup(None, None, Some(past), true), None);
        assert_eq!(
            next_wakeup(Some(later), None, Some(past), true),
            Some(later)
        );
        assert_eq!(
            next_wakeup(Some(later), Some(past), None, false),
            Some(past)
        );
    }

    /// Issue 10 item 17: entries of closed connections do not pile up in the timer heap.
    #[test]
    fn timer_heap_stays_proportional_to_live_connections() {
        let now = Instant::now();
        let mut timers = BinaryHeap::new();
        // 10 live connections (generation 0), then 10,000 connections that come and go.
        for key in 0..10 {
            timers.push(Reverse((now + Duration::from_secs(300), key, 0)));
        }
        let live = |_key: usize, generation: u64| generation == 0;
        for generation in 1..=10_000u64 {
            timers.push(Reverse((now + Duration::from_secs(300), 10, generation)));
            compact_timers(&mut timers, 10, live);
            assert!(timers.len() <= 2 * 10 + 65, "{} entries", timers.len());
        }
        compact_timers(&mut timers, 0, |_, _| false);
        assert!(timers.len() <= 64);
        let mut all = BinaryHeap::new();
        for key in 0..100 {
            all.push(Reverse((now, key, 0)));
        }
        compact_timers(&mut all, 100, live);
        assert_eq!(all.len(), 100, "live entries are kept");
    }
}
