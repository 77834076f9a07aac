//! The proxy's mio loop, on one thread: accepts on the listener, connects to the target for each
//! connection, reads each side into the [`DelayLine`] of its direction and writes what is due to
//! the other side. Deadlines live in one binary heap of (due time, connection, direction), at
//! most one live entry per direction (stale ones are recognised and skipped); a timerfd armed
//! for the earliest wakes the poll with nanosecond precision (epoll's own timeout counts whole
//! milliseconds, rounded up: up to 1 ms late per hop, a fifth of a 5 ms delay). Nothing
//! sleeps: the loop only waits in `poll`.
//!
//! A side is read only while its direction holds less than the limit (edge-triggered readiness
//! is remembered, so reading resumes when room appears). An end of stream read on one side is
//! passed on as a shutdown of the other side's writing half once the data before it has been
//! written, after the same delay; a connection is closed when both ends of stream have been
//! passed on, when a write fails, or when the target cannot be reached.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::Config;
use super::delay::DelayLine;

const LISTENER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);
/// The heap key of the listener's retry after an accept failure.
const ACCEPT_RETRY: usize = usize::MAX;
/// After an accept failure (such as too many open files), accepting resumes this much later.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// One read.
const READ_BUF: usize = 64 * 1024;

/// Side 0 is the accepted client, side 1 the connection to the target. Direction `d` carries
/// the bytes read on side `d` to side `1 - d`.
struct Side {
    stream: TcpStream,
    /// Readiness seen and not yet used up (edge-triggered).
    readable: bool,
    writable: bool,
    /// Our writing half was shut down (the other side's end of stream passed on).
    write_shut: bool,
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    sides: [Side; 2],
    lines: [DelayLine; 2],
    /// The due time of the heap entry of each direction, if one is live.
    armed: [Option<Instant>; 2],
    /// The connection to the target is established.
    connected: bool,
    /// Bytes written out in each direction.
    moved: [u64; 2],
}

/// Why a connection ends.
enum End {
    Done,
    Failed(String),
}

/// A one-shot CLOCK_MONOTONIC timerfd (the clock of [`Instant`] on Linux), readable once it
/// expires.
struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new descriptor
        // that only this value owns.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor (checked above).
        Ok(TimerFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Expires `after` from now (at least 1 ns: zero would disarm it), replacing any earlier
    /// setting and expiry count.
    fn set(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid descriptor, a valid itimerspec, and a null old-value pointer (allowed).
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiry count away (nothing to read is fine).
    fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer from a valid descriptor.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
    }
}

/// A listening proxy.
pub struct Proxy {
    cfg: Config,
    poll: Poll,
    timer: TimerFd,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, usize)>>,
    accept_paused: bool,
    next_id: u64,
    buf: Vec<u8>,
}

impl Proxy {
    /// Binds the listener and prints `listening on ADDR` on stdout.
    pub fn bind(cfg: &Config) -> io::Result<Proxy> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let timer = TimerFd::new()?;
        poll.registry().register(
            &mut SourceFd(&timer.fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        let addr = listener.local_addr()?;
        {
            let mut out = io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        eprintln!(
            "proxy: {addr} -> {}, one-way delay {:?}, at most {} bytes held per direction",
            cfg.target, cfg.delay, cfg.buffer
        );
        Ok(Proxy {
            cfg: cfg.clone(),
            poll,
            timer,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            accept_paused: false,
            next_id: 1,
            buf: vec![0; READ_BUF],
        })
    }

    /// Runs until an error of the poll itself.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut touched: Vec<usize> = Vec::new();
        loop {
            // The earliest deadline: due already, poll without waiting; else the timerfd wakes
            // the poll then. A stale setting only wakes the loop once for nothing.
            let mut timeout = None;
            if let Some(Reverse((due, _, _))) = self.timers.peek() {
                let wait = due.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    timeout = Some(Duration::ZERO);
                } else {
                    self.timer.set(wait)?;
                }
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    self.timer.clear();
                    continue;
                }
                if ev.token() == LISTENER {
                    if !self.accept_paused {
                        self.accept(&mut touched);
                    }
                    continue;
                }
                let (i, side) = (ev.token().0 / 2, ev.token().0 % 2);
                let Some(Some(c)) = self.conns.get_mut(i) else {
                    continue;
                };
                // Errors and hang-ups show up as a read or write that says so.
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    c.sides[side].readable = true;
                }
                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                    c.sides[side].writable = true;
                }
                touched.push(i);
            }
            let now = Instant::now();
            while let Some(&Reverse((due, key, dir))) = self.timers.peek() {
                if due > now {
                    break;
                }
                self.timers.pop();
                if key == ACCEPT_RETRY {
                    self.accept_paused = false;
                    self.accept(&mut touched);
                } else if let Some(Some(c)) = self.conns.get_mut(key) {
                    if c.armed[dir] == Some(due) {
                        c.armed[dir] = None;
                    }
                    touched.push(key);
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for i in touched.drain(..) {
                self.service(i, now);
            }
        }
    }

    /// Accepts every waiting connection and starts its connection to the target.
    fn accept(&mut self, touched: &mut Vec<usize>) {
        loop {
            let (client, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("proxy: accept: {e}; pausing {ACCEPT_PAUSE:?}");
                    self.accept_paused = true;
                    self.timers
                        .push(Reverse((Instant::now() + ACCEPT_PAUSE, ACCEPT_RETRY, 0)));
                    return;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let upstream = match TcpStream::connect(self.cfg.target) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "proxy: #{id} from {peer}: connect to {}: {e}",
                        self.cfg.target
                    );
                    continue; // dropping the client closes it
                }
            };
            let i = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let side = |stream| Side {
                stream,
                readable: false,
                writable: false,
                write_shut: false,
            };
            let line = || DelayLine::new(self.cfg.delay, self.cfg.buffer);
            let mut c = Conn {
                id,
                peer,
                sides: [side(client), side(upstream)],
                lines: [line(), line()],
                armed: [None, None],
                connected: false,
                moved: [0, 0],
            };
            for (s, side) in c.sides.iter_mut().enumerate() {
                // Small writes must not wait for Nagle: the proxy adds only its own delay.
                let _ = side.stream.set_nodelay(true);
                if let Err(e) = self.poll.registry().register(
                    &mut side.stream,
                    Token(i * 2 + s),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    eprintln!("proxy: #{id} from {peer}: register: {e}");
                    self.free.push(i);
                    return;
                }
            }
            eprintln!("proxy: #{id} from {peer} accepted");
            self.conns[i] = Some(c);
            touched.push(i);
        }
    }

    /// Moves what can move on connection `i` and re-arms its timers; closes it when it ends.
    fn service(&mut self, i: usize, now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(i) else {
            return;
        };
        let end = match c.pump(now, &mut self.buf) {
            Ok(()) if c.sides[0].write_shut && c.sides[1].write_shut => Some(End::Done),
            Ok(()) => None,
            Err(e) => Some(End::Failed(e)),
        };
        if let Some(end) = end {
            self.close(i, end);
            return;
        }
        for dir in 0..2 {
            if c.armed[dir].is_some() {
                continue;
            }
            // Due now means waiting for the other side to become writable (or connected):
            // its readiness event brings the loop back, not a timer.
            if let Some(due) = c.lines[dir].next_due().filter(|d| *d > now) {
                c.armed[dir] = Some(due);
                self.timers.push(Reverse((due, i, dir)));
            }
        }
    }

    fn close(&mut self, i: usize, end: End) {
        let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        for side in &mut c.sides {
            let _ = self.poll.registry().deregister(&mut side.stream);
        }
        let held = c.lines[0].buffered() + c.lines[1].buffered();
        let how = match end {
            End::Done => "closed".to_string(),
            End::Failed(why) => format!("ended ({why}; {held} bytes held discarded)"),
        };
        eprintln!(
            "proxy: #{} from {} {how}; {} bytes to the target, {} bytes back",
            c.id, c.peer, c.moved[0], c.moved[1]
        );
        self.free.push(i);
        // Dropping the streams closes both sockets. Only a failure ends a connection before
        // both lines are empty.
    }
}

impl Conn {
    /// Writes what is due at `now`, reads what there is room for, writes again (with no delay
    /// what was just read is due at once). An error ends the connection.
    fn pump(&mut self, now: Instant, buf: &mut [u8]) -> Result<(), String> {
        if !self.connected {
            self.check_connect()?;
        }
        for dir in 0..2 {
            self.write(dir, now)?;
            self.read(dir, buf);
            self.write(dir, Instant::now())?;
        }
        Ok(())
    }

    /// Finishes the non-blocking connect to the target once it says it is done.
    fn check_connect(&mut self) -> Result<(), String> {
        let up = &mut self.sides[1];
        if !up.writable && !up.readable {
            return Ok(());
        }
        match up.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Err(format!("connect to the target: {e}")),
            Ok(None) => {}
        }
        match up.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                Ok(())
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotConnected
                    || e.raw_os_error() == Some(libc::EINPROGRESS) =>
            {
                // Not yet: a spurious event; the next one brings the outcome.
                up.writable = false;
                up.readable = false;
                Ok(())
            }
            Err(e) => Err(format!("connect to the target: {e}")),
        }
    }

    /// Reads side `dir` into its line while it has room, each read stamped with the clock at
    /// that moment (not the turn's `now`: bytes that arrived meanwhile must not leave early). A
    /// read error counts as the end of stream (the other side's writes then fail if the socket
    /// is gone).
    fn read(&mut self, dir: usize, buf: &mut [u8]) {
        if dir == 1 && !self.connected {
            return;
        }
        let (side, line) = (&mut self.sides[dir], &mut self.lines[dir]);
        while side.readable && !line.eof_read() && line.has_room() {
            let r = side.stream.read(buf);
            let now = Instant::now();
            match r {
                Ok(0) => line.push_eof(now),
                Ok(n) => line.push(now, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => side.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => line.push_eof(now),
            }
        }
    }

    /// Writes the due bytes of direction `dir` to the other side, then its end of stream when
    /// that is due.
    fn write(&mut self, dir: usize, now: Instant) -> Result<(), String> {
        let out = 1 - dir;
        if out == 1 && !self.connected {
            return Ok(());
        }
        let (line, side) = (&mut self.lines[dir], &mut self.sides[out]);
        while side.writable {
            let Some(bytes) = line.ready(now) else { break };
            match side.stream.write(bytes) {
                Ok(0) => return Err("a write took nothing".into()),
                Ok(n) => {
                    line.consume(n);
                    self.moved[dir] += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => side.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let whom = if out == 0 { "client" } else { "target" };
                    return Err(format!("write to the {whom}: {e}"));
                }
            }
        }
        if !side.write_shut && line.eof_ready(now) {
            side.write_shut = true;
            // The peer may be gone already; then the other direction ends it too.
            let _ = side.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }
}
