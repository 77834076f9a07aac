//! One relay run and the `--interval` loop: lock, scan, resolve, plan, send, record, summarise.
//!
//! Owns: the order of the steps and the summary line. Must not: speak SMTP, parse files or
//! write state itself (queue, mx, plan, reactor and record do).

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime};

use maildir_core::Maildir;

use crate::config::{Config, TlsLevel};
use crate::record::{RecorderConfig, Summary};
use crate::state::StateDir;
use crate::tls::TlsContext;
use crate::{mx, plan, queue, reactor, record, watch};

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

/// Runs as configured: `--list`, once, or every interval.
pub fn run(cfg: &Config) -> Result<(), RunError> {
    let md = Maildir::open(&cfg.maildir)
        .map_err(|e| format!("cannot use Maildir {}: {e}", cfg.maildir.display()))?;
    let states = StateDir::open(md.root()).map_err(|e| e.to_string())?;
    if cfg.list {
        let (msgs, bad) = queue::scan(&md, &states).map_err(|e| e.to_string())?;
        print!("{}", queue::render_list(&msgs, &bad, SystemTime::now()));
        return Ok(());
    }
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
    let tls = match cfg.tls {
        TlsLevel::None => None,
        _ => Some(TlsContext::new(cfg.tls_ca.as_deref())?),
    };
    let tls = tls.as_ref();
    let Some(period) = cfg.interval else {
        let line = run_once(cfg, tls, &md, &states)?;
        println!("{line}");
        return Ok(());
    };
    // Installed before the first run, so a stop signal during a run ends the loop after it.
    let watch = watch::NewMailWatch::new(md.new_dir()).map_err(|e| e.to_string())?;
    loop {
        match run_once(cfg, tls, &md, &states) {
            Ok(line) => log::info!("{line}"),
            Err(e) => log::error!("run failed: {e}"),
        }
        match watch.wait(period) {
            Ok(watch::Wake::NewMail) => log::debug!("new mail in {}", md.new_dir().display()),
            Ok(watch::Wake::Timeout) => {}
            Ok(watch::Wake::Stop) => {
                log::info!("stop signal: exiting");
                return Ok(());
            }
            Err(e) => return Err(format!("cannot wait for new mail: {e}").into()),
        }
    }
}

/// Sends everything due once; returns the summary line.
fn run_once(
    cfg: &Config,
    tls: Option<&TlsContext>,
    md: &Maildir,
    states: &StateDir,
) -> Result<String, String> {
    let started = Instant::now();
    let now = SystemTime::now();
    let (msgs, bad) = queue::scan(md, states).map_err(|e| e.to_string())?;
    for b in &bad {
        log::warn!("{}: skipped, not a queued message: {}", b.name, b.error);
    }
    let total = msgs.len();
    let due: Vec<_> = msgs
        .into_iter()
        .filter(|m| cfg.ignore_schedule || m.is_due(now))
        .collect();
    let waiting = total - due.len();
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
        Default::default()
    } else {
        mx::resolve_all(cfg, domains.into_iter().collect())?
    };
    let rcfg = RecorderConfig {
        reporting_mta: cfg.helo.clone(),
        queue_lifetime: cfg.queue_lifetime,
    };
    let (tx, recorder) = record::spawn(md.clone(), states.clone(), rcfg)
        .map_err(|e| format!("cannot start recorder thread: {e}"))?;
    let n_due = due.len();
    let (mut tally, jobs) = plan::build(due, &dns, tx, now);
    let sent = reactor::run(cfg, tls, &mut tally, jobs);
    drop(tally);
    let sum: Summary = recorder
        .join()
        .map_err(|_| "recorder thread panicked".to_owned())?;
    let stats = sent.map_err(|e| format!("reactor failed: {e}"))?;
    Ok(format!(
        "smtp-relay: {} delivered, {} deferred, {} bounced ({} of {} messages tried, {} not due, {} file(s) in new/ not queued messages; {} finished, {} bounce(s) queued; {} connection(s), {} failed; {:.3} s)",
        sum.delivered,
        sum.deferred,
        sum.bounced,
        n_due,
        total,
        waiting,
        bad.len(),
        sum.messages_done,
        sum.dsns,
        stats.connections,
        stats.failed_connects,
        started.elapsed().as_secs_f64()
    ))
}
