//! The network side: one mio `Poll` on one thread drives every connection. It only moves bytes
//! between sockets and each session's [`Run`], starts a new session on a connection slot when
//! one finishes, and enforces the deadlines the runs ask for.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::check::Run;
use crate::cli::{Config, Stop};
use crate::rng::Rng;
use crate::script::generate;
use crate::stats::Stats;

/// How often deadlines are scanned (and the longest poll wait).
const TICK: Duration = Duration::from_millis(50);

/// Most connections opened but not yet greeted. SMTP is server-speaks-first: a burst of
/// thousands of SYNs overflows the server's SYN and accept queues, and a connection completed
/// by a SYN cookie whose last ACK the kernel then dropped looks open to the client but does
/// not exist on the server until the client sends something, so nobody ever speaks. Ramping
/// up keeps the queues short.
const MAX_CONNECTING: usize = 256;

struct Conn {
    stream: TcpStream,
    run: Run,
    greeted: bool,
}

/// What the loop reports to its caller while it runs.
pub trait Observer {
    /// A session ended with a mismatch.
    fn mismatch(&mut self, run: &Run);
    /// About once a second.
    fn progress(&mut self, stats: &Stats, elapsed: Duration, open: usize);
}

/// Runs sessions until the configured stop, then lets the open ones finish. Returns the
/// counters and the elapsed time.
pub fn run(cfg: &Config, obs: &mut impl Observer) -> io::Result<(Stats, Duration)> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Conn>> = (0..cfg.connections).map(|_| None).collect();
    let mut free: Vec<usize> = (0..cfg.connections).rev().collect();
    let mut touched: Vec<usize> = Vec::new();
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut next_scan = start + TICK;
    let mut next_progress = start + Duration::from_secs(1);
    let mut started = 0u64;
    let mut connecting = 0usize;
    loop {
        let now = Instant::now();
        let starting = match cfg.stop {
            Stop::After(d) => now < start + d,
            Stop::Count(n) => started < n,
        };
        while starting && connecting < MAX_CONNECTING {
            let Some(i) = free.pop() else { break };
            let script = generate(
                &mut Rng::for_session(cfg.seed, started),
                cfg.error_rate,
                &cfg.limits,
            );
            let mut run = Run::new(started, script, cfg.limits.max_size, cfg.reply_timeout, now);
            started += 1;
            match TcpStream::connect(cfg.addr).and_then(|mut s| {
                s.set_nodelay(true)?;
                poll.registry()
                    .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                    .map(|()| s)
            }) {
                Ok(stream) => {
                    connecting += 1;
                    slots[i] = Some(Conn {
                        stream,
                        run,
                        greeted: false,
                    });
                }
                Err(e) => {
                    run.io_error(&e);
                    end_session(&mut stats, run, obs);
                    free.push(i);
                }
            }
            if let Stop::Count(n) = cfg.stop
                && started >= n
            {
                break;
            }
        }
        let open = cfg.connections - free.len();
        if open == 0 && !starting {
            return Ok((stats, start.elapsed()));
        }
        match poll.poll(&mut events, Some(TICK)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        touched.clear();
        for ev in events.iter() {
            let i = ev.token().0;
            if let Some(Some(c)) = slots.get_mut(i) {
                drive(c, &mut buf, now, &mut stats);
                if !c.greeted && c.run.greeted() {
                    c.greeted = true;
                    connecting -= 1;
                }
                touched.push(i);
            }
        }
        if now >= next_scan {
            next_scan = now + TICK;
            for (i, slot) in slots.iter_mut().enumerate() {
                if let Some(c) = slot
                    && c.run.deadline().is_some_and(|d| d <= now)
                {
                    c.run.timeout(now);
                    touched.push(i);
                }
            }
        }
        for &i in &touched {
            // `touched` may name a slot twice (an event and a deadline); take() sees to that.
            if slots[i].as_ref().is_some_and(|c| c.run.is_finished())
                && let Some(mut c) = slots[i].take()
            {
                if !c.greeted {
                    connecting -= 1;
                }
                let _ = poll.registry().deregister(&mut c.stream);
                end_session(&mut stats, c.run, obs);
                free.push(i);
            }
        }
        if now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            obs.progress(&stats, start.elapsed(), cfg.connections - free.len());
        }
    }
}

fn end_session(stats: &mut Stats, run: Run, obs: &mut impl Observer) {
    stats.sessions += 1;
    match run.status() {
        crate::check::Status::Done => {
            if let Some(c) = run.script().error {
                *stats.provoked.entry(c).or_default() += 1;
            }
        }
        _ => {
            stats.mismatches += 1;
            if run.message_in_flight() {
                stats.uncertain += 1;
            }
            obs.mismatch(&run);
        }
    }
}

/// Moves bytes both ways until the socket would block or the session is over (edge-triggered
/// readiness: both directions are drained on every event).
fn drive(c: &mut Conn, buf: &mut [u8], now: Instant, stats: &mut Stats) {
    loop {
        let mut progress = false;
        while !c.run.to_send().is_empty() {
            match c.stream.write(c.run.to_send()) {
                Ok(0) => return c.run.io_error(&io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    c.run.written(n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    break;
                }
                Err(e) => return c.run.io_error(&e),
            }
        }
        loop {
            match c.stream.read(buf) {
                Ok(0) => return c.run.eof(),
                Ok(n) => {
                    c.run.received(&buf[..n], now, stats);
                    progress = true;
                    if c.run.is_finished() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    break;
                }
                Err(e) => return c.run.io_error(&e),
            }
        }
        if !progress || c.run.is_finished() {
            return;
        }
    }
}
