//! smtp-stress: N concurrent randomised SMTP sessions from one mio loop, every reply checked
//! against the expected code; exit status 1 on any mismatch.
//!
//! `smtp-stress proxy --delay 25ms LISTEN TARGET` instead runs the delay proxy (see [`proxy`]):
//! a load run's command line never starts with the word `proxy`, so old invocations are
//! unchanged.
//!
//! Layout: `cli` (command line), `rng` (seeded generator), `script` (session scripts),
//! `reply` (reply parser), `check` (one session against its script), `stats` (counters and
//! latencies), `reactor` (the mio loop), `report` (printing), `maildir` (the stored-file count),
//! `proxy/` (the delay proxy subcommand: its own command line, delay line and mio loop).

mod check;
mod cli;
mod maildir;
mod proxy;
mod reactor;
mod reply;
mod report;
mod rng;
mod script;
mod stats;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if proxy::requested(&argv) {
        return proxy::main(&argv);
    }
    let args = cli::Args::parse_from(argv);
    let clock_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let latencies = args.latencies.clone();
    let cfg = match args.into_config(clock_seed) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtp-stress: {e}");
            return ExitCode::from(2);
        }
    };
    match raise_nofile() {
        Ok(limit) if limit < cfg.connections as u64 + 16 => {
            eprintln!(
                "smtp-stress: open-files limit {limit} is too low for {} connections",
                cfg.connections
            );
            return ExitCode::from(2);
        }
        Ok(_) => {}
        Err(e) => eprintln!("smtp-stress: cannot raise the open-files limit: {e}"),
    }
    let before = match &cfg.maildir {
        Some(dir) => match maildir::count_new(dir) {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("smtp-stress: {}: {e}", dir.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut printer = report::Printer::new(std::io::stdout().is_terminal());
    let (stats, elapsed) = match reactor::run(&cfg, &mut printer) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtp-stress: {e}");
            return ExitCode::from(2);
        }
    };
    printer.finish();
    if let Some(path) = &latencies {
        let text: String = stats
            .transactions
            .samples()
            .iter()
            .map(|us| format!("{us}\n"))
            .collect();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("smtp-stress: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    println!("{}", report::summary(&cfg, &stats, elapsed));
    let mut ok = stats.mismatches == 0;
    if let (Some(dir), Some(before)) = (&cfg.maildir, before) {
        match maildir::count_new(dir) {
            Ok(after) => {
                let stored = after.saturating_sub(before);
                let verdict = if stored == stats.delivered {
                    "ok"
                } else {
                    "MISMATCH"
                };
                println!(
                    "maildir: {stored} new files in {} (before {before}, after {after}), delivered {}: {verdict}",
                    dir.join("new").display(),
                    stats.delivered
                );
                if stats.uncertain > 0 {
                    println!(
                        "maildir: {} failed sessions had a message in flight",
                        stats.uncertain
                    );
                }
                ok &= stored == stats.delivered;
            }
            Err(e) => {
                println!("maildir: {}: {e}", dir.display());
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub(crate) fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}
