//! The run loop: lock, then passes over the queue fed to one long-lived reactor, until the
//! queue is drained (`--once`) or a stop signal arrives.
//!
//! A pass: scan `new/` for due messages not already in flight and resolve their domains (on a
//! thread of its own, so sessions in progress keep going; the result comes back through the
//! reactor's waker), plan the jobs, start a recorder for the pass and hand the jobs to the
//! reactor, which starts sessions for MX hosts without one and queues the rest behind the
//! session in progress. When every recipient of the pass has a result, the pass's recorder
//! finishes and the pass's summary line is printed (`--once`: on stdout) or logged.
//! `--interval`: a pass starts every SECS after the previous scan, and at once when inotify
//! reports mail in `new/` (one scan at a time; wake-ups meanwhile give one more, at least 1 s
//! and at least as long as reading the queue took after the previous one).
//! A message stays "in flight" from its scan until its pass's recorder has finished, so a later
//! scan never sends it twice. SIGTERM/SIGINT (both modes): the reactor closes every session at
//! once (their messages deferred and recorded), waits for the recorders, exits 0. SIGHUP
//! (`--interval`): no new pass starts; once those in progress are recorded, the configuration
//! is read again and the run goes on with a new reactor (see [`run`]).
//!
//! Owns: the order of the steps, the in-flight set, the interval timer, the summary lines.
//! Must not: speak SMTP, parse files or write state itself (queue, mx, plan, reactor and
//! record do).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use maildir_core::Maildir;
use mio::unix::SourceFd;
use mio::{Interest, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{Config, TlsLevel};
use crate::mx::Resolution;
use crate::progress::Progress;
use crate::queue::Message;
use crate::reactor::{EXTERNAL, Reactor, Stats};
use crate::record::{RecorderConfig, Summary};
use crate::state::StateDir;
use crate::tls::TlsContext;
use crate::{mx, plan, queue, record, watch};

/// How a run failed.
#[derive(Debug)]
pub enum RunError {
    /// Another relay holds the lock on this Maildir.
    Locked(String),
    /// Anything else, in words.
    Failed(String),
}

impl From<String> for RunError {
    fn from(s: String) -> Self {
        RunError::Failed(s)
    }
}

/// Scans for new mail are at least this far apart, and at least as far as the last scan took,
/// so a steady stream of arriving mail does not keep the disk busy rescanning the queue.
const MIN_SCAN_GAP: Duration = Duration::from_secs(1);

const SIGNAL: Token = Token(EXTERNAL);
const NEW_MAIL: Token = Token(EXTERNAL + 1);
const WAKE: Token = Token(EXTERNAL + 2);
const RELOAD: Token = Token(EXTERNAL + 3);

/// What a scan thread found.
struct Scanned {
    started: Instant,
    /// How long reading `new/` took (without DNS).
    read: Duration,
    /// Messages in `new/`.
    total: usize,
    /// Not due yet.
    waiting: usize,
    /// Files in `new/` that are not queued messages (each logged with the reason).
    not_queued: usize,
    /// Due, not in flight when the scan started.
    due: Vec<Message>,
    /// Due but skipped: in flight.
    busy: usize,
    dns: HashMap<String, Resolution>,
}

/// A pass handed to the reactor, until its summary.
struct Pass {
    started: Instant,
    total: usize,
    waiting: usize,
    not_queued: usize,
    busy: usize,
    tried: usize,
    names: Vec<String>,
    stats: Stats,
    recorder: Option<JoinHandle<Summary>>,
    interrupted: bool,
}

/// A pass whose recorder finished (sent by the thread that joined it).
struct Recorded {
    pass: u64,
    summary: Result<Summary, String>,
}

/// How [`serve`] ended.
enum Ended {
    /// Stopped by a signal, or (`--once`) the queue drained.
    Done,
    /// SIGHUP, and every pass in progress is over: reload, then serve again.
    Reload,
}

/// Runs as configured: `--list`, once, or every interval. In `--interval` mode SIGHUP reloads
/// the configuration with `reload` between passes: the passes in progress finish under the
/// old settings, no new one starts, then the run goes on with the new settings (a refused
/// configuration is one error line, and the old one stays; `--maildir` and `--interval`
/// itself need a restart).
pub fn run(cfg: &Config, reload: &dyn Fn() -> Result<Config, String>) -> Result<(), RunError> {
    if cfg.list {
        print!("{}", queue::list(&cfg.maildir, SystemTime::now())?);
        return Ok(());
    }
    let md = Maildir::open(&cfg.maildir)
        .map_err(|e| format!("cannot use Maildir {}: {e}", cfg.maildir.display()))?;
    let states = StateDir::open(md.root()).map_err(|e| e.to_string())?;
    let _lock = match states.try_lock().map_err(|e| e.to_string())? {
        Some(l) => l,
        None => {
            return Err(RunError::Locked(format!(
                "another smtp-relay is running on {} (lock {}/.relay/lock is held); leaving",
                cfg.maildir.display(),
                cfg.maildir.display()
            )));
        }
    };
    // Once per process (a reload keeps it), once the lock is ours.
    let _metrics = match cfg.metrics {
        Some(addr) => {
            let e = crate::metrics::serve(addr).map_err(|e| e.to_string())?;
            log::info!("metrics on http://{}/metrics", e.local_addr());
            Some(e)
        }
        None => None,
    };
    // Before anything slow, so a stop signal at any moment is seen.
    let signals = watch::SignalPipe::install(&[SIGTERM, SIGINT])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    let hup = match cfg.interval {
        Some(_) => Some(
            watch::SignalPipe::install(&[SIGHUP])
                .map_err(|e| format!("cannot handle SIGHUP: {e}"))?,
        ),
        None => None,
    };
    let mut current = cfg.clone();
    loop {
        match serve(&current, &md, &states, &signals, hup.as_ref())? {
            Ended::Done => return Ok(()),
            Ended::Reload => match reload() {
                Ok(mut new) => {
                    if new.maildir != current.maildir {
                        log::warn!(
                            "reload: --maildir changed: that needs a restart; still relaying from {}",
                            current.maildir.display()
                        );
                        new.maildir = current.maildir.clone();
                    }
                    if new.interval.is_none() {
                        log::warn!("reload: --interval removed: that needs a restart");
                        new.interval = current.interval;
                    }
                    current = new;
                    log::info!("configuration reloaded");
                }
                Err(e) => {
                    log::error!("reload refused, the configuration in force stays: {e}")
                }
            },
        }
    }
}

/// Serves with one configuration: the reactor and the passes, until stopped, drained
/// (`--once`), or asked to reload (SIGHUP on `hup`, once the passes in progress are over).
fn serve(
    cfg: &Config,
    md: &Maildir,
    states: &StateDir,
    signals: &watch::SignalPipe,
    hup: Option<&watch::SignalPipe>,
) -> Result<Ended, RunError> {
    let (md, states) = (md.clone(), states.clone());
    let tls = match cfg.tls {
        TlsLevel::None => None,
        _ => Some(TlsContext::new(cfg.tls_ca.as_deref())?),
    };
    let mut reactor =
        Reactor::new(cfg, tls.as_ref()).map_err(|e| format!("cannot start reactor: {e}"))?;
    reactor
        .registry()
        .register(&mut SourceFd(&signals.fd()), SIGNAL, Interest::READABLE)
        .map_err(|e| format!("cannot poll the signal pipe: {e}"))?;
    if let Some(hup) = hup {
        reactor
            .registry()
            .register(&mut SourceFd(&hup.fd()), RELOAD, Interest::READABLE)
            .map_err(|e| format!("cannot poll the SIGHUP pipe: {e}"))?;
    }
    let mut reload_wanted = false;
    let watch = match cfg.interval {
        None => None,
        Some(_) => {
            let w = watch::NewMailWatch::new(md.new_dir()).map_err(|e| e.to_string())?;
            reactor
                .registry()
                .register(&mut SourceFd(&w.fd()), NEW_MAIL, Interest::READABLE)
                .map_err(|e| format!("cannot poll inotify: {e}"))?;
            Some(w)
        }
    };
    let waker = Arc::new(
        Waker::new(reactor.registry(), WAKE).map_err(|e| format!("cannot make a waker: {e}"))?,
    );
    let (scan_tx, scan_rx) = crossbeam_channel::unbounded();
    let (rec_tx, rec_rx) = crossbeam_channel::unbounded();
    let mut lp = Loop {
        cfg,
        md,
        states,
        waker,
        scan_tx,
        rec_tx,
        passes: HashMap::new(),
        by_key: HashMap::new(),
        next_pass: 0,
        in_flight: HashSet::new(),
        scanning: None,
        rescan: false,
        next_scan: None,
        scan_ended: None,
        failed: None,
        progress: Progress::new(cfg.interval.is_none()),
    };
    lp.start_scan();
    let mut woken = Vec::new();
    let mut stopped = false;
    loop {
        woken.clear();
        reactor
            .turn(lp.wake_at(), &mut woken)
            .map_err(|e| format!("reactor failed: {e}"))?;
        if woken.contains(&SIGNAL) && signals.take() {
            log::info!("stop signal: closing every session");
            stopped = true;
            for (key, tally) in reactor.stop() {
                drop(tally);
                lp.pass_done(key, &reactor, true);
            }
            break;
        }
        if woken.contains(&RELOAD) && hup.is_some_and(|h| h.take()) {
            log::info!("SIGHUP: reloading the configuration once the passes in progress are done");
            reload_wanted = true;
        }
        if woken.contains(&NEW_MAIL)
            && let Some(w) = &watch
        {
            w.drain();
            log::debug!("new mail in {}", lp.md.new_dir().display());
            lp.rescan = true;
        }
        while let Ok(res) = scan_rx.try_recv() {
            lp.scanned(res, &mut reactor);
        }
        for (key, tally) in reactor.take_done() {
            drop(tally);
            lp.pass_done(key, &reactor, false);
        }
        while let Ok(r) = rec_rx.try_recv() {
            lp.recorded(r);
        }
        if let Some(e) = lp.failed.take() {
            if cfg.interval.is_none() {
                return Err(RunError::Failed(e));
            }
            log::error!("run failed: {e}");
        }
        if let (Some(period), Some(at)) = (cfg.interval, lp.next_scan)
            && Instant::now() >= at
        {
            lp.next_scan = Some(Instant::now() + period);
            lp.rescan = true;
        }
        if reload_wanted && lp.scanning.is_none() && reactor.is_idle() && lp.passes.is_empty() {
            return Ok(Ended::Reload);
        }
        if lp.rescan
            && !reload_wanted
            && lp.scanning.is_none()
            && lp.earliest_scan().is_none_or(|t| Instant::now() >= t)
        {
            lp.start_scan();
        }
        if cfg.interval.is_none()
            && lp.scanning.is_none()
            && reactor.is_idle()
            && lp.passes.is_empty()
        {
            break;
        }
    }
    // Stopping or drained: wait for the recorders (their last batch's disk work). Another stop
    // signal meanwhile, or a minute without progress, leaves at once: what they did not record
    // is tried again by the next run (sent again at worst, never lost).
    let mut quiet = Duration::ZERO;
    while !lp.passes.is_empty() {
        match rec_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => {
                quiet = Duration::ZERO;
                lp.recorded(r);
            }
            Err(_) => quiet += Duration::from_millis(100),
        }
        if signals.take() {
            log::warn!("second stop signal: leaving without waiting for the recorders");
            break;
        }
        if quiet >= Duration::from_secs(60) {
            log::error!("recorders made no progress for 60 s; leaving");
            break;
        }
    }
    if stopped {
        log::info!("stop signal: exiting");
    }
    Ok(Ended::Done)
}

/// The state of the run loop beside the reactor.
struct Loop<'a> {
    cfg: &'a Config,
    md: Maildir,
    states: StateDir,
    waker: Arc<Waker>,
    scan_tx: Sender<Result<Scanned, String>>,
    rec_tx: Sender<Recorded>,
    /// Passes by id, until their recorder finished.
    passes: HashMap<u64, Pass>,
    /// Reactor pass keys → ids (keys are reused).
    by_key: HashMap<usize, u64>,
    next_pass: u64,
    /// Names of messages handed out and not yet recorded.
    in_flight: HashSet<String>,
    /// A scan running: names released since it started (it may have read them as they were).
    scanning: Option<HashSet<String>>,
    /// Scan again when the running one is done.
    rescan: bool,
    /// `--interval`: when the next scan is due.
    next_scan: Option<Instant>,
    /// When the last scan ended, and how long reading the queue took in it.
    scan_ended: Option<(Instant, Duration)>,
    /// A scan failed (`--once`: the run fails).
    failed: Option<String>,
    /// The progress bar of a `--once` run on a terminal (nothing otherwise).
    progress: Progress,
}

impl Loop<'_> {
    /// When a scan asked for by new mail may start.
    fn earliest_scan(&self) -> Option<Instant> {
        self.scan_ended.map(|(t, took)| t + took.max(MIN_SCAN_GAP))
    }

    /// When the loop must look again even if nothing happens.
    fn wake_at(&self) -> Option<Instant> {
        let rescan = if self.rescan && self.scanning.is_none() {
            self.earliest_scan()
        } else {
            None
        };
        match (self.next_scan, rescan) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Scans and resolves on a thread; the result comes back through the waker.
    fn start_scan(&mut self) {
        self.rescan = false;
        self.scanning = Some(HashSet::new());
        let (cfg, md, states) = (self.cfg.clone(), self.md.clone(), self.states.clone());
        let skip = self.in_flight.clone();
        let (tx, waker) = (self.scan_tx.clone(), Arc::clone(&self.waker));
        let spawned = std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || {
                let res = scan(&cfg, &md, &states, &skip);
                // The loop may be gone (stopped): nothing to do then.
                let _ = tx.send(res);
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            self.scanning = None;
            self.failed = Some(format!("cannot start scan thread: {e}"));
        }
    }

    /// A scan finished: plan its messages and hand them to the reactor.
    fn scanned(&mut self, res: Result<Scanned, String>, reactor: &mut Reactor) {
        let released = self.scanning.take().unwrap_or_default();
        if let Ok(s) = &res {
            self.scan_ended = Some((Instant::now(), s.read));
        }
        if let Some(p) = self.cfg.interval {
            self.next_scan = Some(Instant::now() + p);
        }
        let s = match res {
            Ok(s) => s,
            Err(e) => {
                self.failed = Some(e);
                return;
            }
        };
        // Messages that went in flight or were recorded while the scan ran: the scan may have
        // read them as they were before; a later scan sees them as they are.
        let mut busy = s.busy;
        let due: Vec<Message> = s
            .due
            .into_iter()
            .filter(|m| {
                let skip = self.in_flight.contains(&m.name) || released.contains(&m.name);
                busy += usize::from(skip);
                !skip
            })
            .collect();
        let rcfg = RecorderConfig {
            reporting_mta: self.cfg.helo.clone(),
            queue_lifetime: self.cfg.queue_lifetime,
            delay_warning: self.cfg.delay_warning,
            progress: self.progress.clone(),
        };
        let (tx, recorder) = match record::spawn(self.md.clone(), self.states.clone(), rcfg) {
            Ok(r) => r,
            Err(e) => {
                self.failed = Some(format!("cannot start recorder thread: {e}"));
                return;
            }
        };
        let names: Vec<String> = due.iter().map(|m| m.name.clone()).collect();
        self.in_flight.extend(names.iter().cloned());
        let tried = due.len();
        self.progress.add_messages(tried);
        let (tally, jobs) = plan::build(due, &s.dns, tx, SystemTime::now());
        let id = self.next_pass;
        self.next_pass += 1;
        self.passes.insert(
            id,
            Pass {
                started: s.started,
                total: s.total,
                waiting: s.waiting,
                not_queued: s.not_queued,
                busy,
                tried,
                names,
                stats: reactor.stats(),
                recorder: Some(recorder),
                interrupted: false,
            },
        );
        let key = reactor.add(tally, jobs);
        self.by_key.insert(key, id);
    }

    /// Every recipient of a pass has a result (or the pass was stopped): let its recorder
    /// finish on a thread that reports back.
    fn pass_done(&mut self, key: usize, reactor: &Reactor, interrupted: bool) {
        let Some(id) = self.by_key.remove(&key) else {
            return;
        };
        let Some(p) = self.passes.get_mut(&id) else {
            return;
        };
        p.interrupted = interrupted;
        let now = reactor.stats();
        p.stats = Stats {
            connections: now.connections - p.stats.connections,
            failed_connects: now.failed_connects - p.stats.failed_connects,
        };
        let Some(h) = p.recorder.take() else {
            return;
        };
        let (tx, waker) = (self.rec_tx.clone(), Arc::clone(&self.waker));
        let joined = std::thread::Builder::new()
            .name("recorded".into())
            .spawn(move || {
                let summary = h.join().map_err(|_| "recorder thread panicked".to_owned());
                let _ = tx.send(Recorded { pass: id, summary });
                let _ = waker.wake();
            });
        if let Err(e) = joined {
            log::error!("cannot start a thread to wait for the recorder: {e}");
            let _ = self.rec_tx.send(Recorded {
                pass: id,
                summary: Err(format!("recorder not awaited: {e}")),
            });
        }
    }

    /// A pass's recorder finished: its messages leave the in-flight set; the summary line.
    fn recorded(&mut self, r: Recorded) {
        let Some(p) = self.passes.remove(&r.pass) else {
            return;
        };
        for n in &p.names {
            self.in_flight.remove(n);
            if let Some(released) = &mut self.scanning {
                released.insert(n.clone());
            }
        }
        let sum = match r.summary {
            Ok(s) => s,
            Err(e) => {
                self.failed = Some(e);
                return;
            }
        };
        crate::metrics::relay().recorded(&sum);
        let mut counts = format!(
            "{} of {} messages tried, {} not due, {} file(s) in new/ not queued messages",
            p.tried, p.total, p.waiting, p.not_queued
        );
        if p.busy > 0 {
            counts.push_str(&format!(", {} already in progress", p.busy));
        }
        let line = format!(
            "smtp-relay: {} delivered, {} deferred, {} bounced ({counts}; {} finished, {} bounce(s) queued; {} connection(s), {} failed; {:.3} s{})",
            sum.delivered,
            sum.deferred,
            sum.bounced,
            sum.messages_done,
            sum.dsns,
            p.stats.connections,
            p.stats.failed_connects,
            p.started.elapsed().as_secs_f64(),
            if p.interrupted {
                "; interrupted by a stop signal"
            } else {
                ""
            }
        );
        if self.cfg.interval.is_none() {
            if self.passes.is_empty() {
                self.progress.finish();
            }
            println!("{line}");
        } else {
            log::info!("{line}");
        }
    }
}

/// The scan of one pass: messages in `new/`, the due ones not in `skip`, their domains resolved.
fn scan(
    cfg: &Config,
    md: &Maildir,
    states: &StateDir,
    skip: &HashSet<String>,
) -> Result<Scanned, String> {
    let started = Instant::now();
    let now = SystemTime::now();
    let (msgs, bad) = queue::scan(md, states).map_err(|e| e.to_string())?;
    let read = started.elapsed();
    crate::metrics::relay().scanned(msgs.len(), msgs.iter().map(|m| m.arrival).min());
    for b in &bad {
        log::warn!("{}: skipped: {}", b.name, b.error);
    }
    let total = msgs.len();
    let (due, waiting): (Vec<_>, Vec<_>) = msgs
        .into_iter()
        .partition(|m| cfg.ignore_schedule || m.is_due(now));
    let (busy, due): (Vec<_>, Vec<_>) = due.into_iter().partition(|m| skip.contains(&m.name));
    // The 8-bit check reads bodies: only of messages about to be sent.
    let due = queue::check_bodies(due);
    let domains: BTreeSet<String> = due
        .iter()
        .flat_map(|m| {
            m.open_rcpts()
                .into_iter()
                .filter_map(|r| plan::domain_of(&m.rcpts[r]))
        })
        .collect();
    let dns = if domains.is_empty() {
        HashMap::new()
    } else {
        mx::resolve_all(cfg, domains.into_iter().collect())?
    };
    Ok(Scanned {
        started,
        read,
        total,
        waiting: waiting.len(),
        not_queued: bad.len(),
        due,
        busy: busy.len(),
        dns,
    })
}
