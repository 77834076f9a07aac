//! smtp-relay: drains a Maildir queue to the recipients' mail exchangers, all of one MX host's
//! mail over one pipelined connection.
//!
//! This file is thin: arguments, logging, run, exit code. Layout of the crate:
//! - [`config`]: command line and `--config` file → validated settings (`--check-config`
//!   prints them).
//! - [`queue`]: messages in `new/` with envelopes and state; `--list`.
//! - [`state`]: durable per-message progress in `Maildir/.relay/`, the run lock.
//! - [`mx`]: MX resolution with hickory on a DNS thread.
//! - [`plan`]: recipients grouped into jobs per route, how far a job travels (MX address,
//!   session and reconnect limits); the per-message tally.
//! - [`reactor`]: the long-lived mio loop moving bytes between sockets and sessions for every
//!   pass in flight.
//! - The protocol (client session with STARTTLS, reply parser, DATA encoding) is the `proto`
//!   crate (`proto::smtp::client`): pure, it cannot import mio, rustls or this crate.
//! - [`tls`]: rustls client configurations (`--tls`, `--tls-ca`), the server name and the
//!   trust word; the byte transport itself (plain TCP or TLS driven sans-io) is
//!   `net::Transport`, shared with smtpd.
//! - [`record`]: the recorder thread (state, DSNs, moving finished mail to `cur/`); [`dsn`]: RFC 3464.
//! - [`metrics`]: the Prometheus figures (`--metrics`) and their exporter.
//! - [`progress`]: the progress bar of a `--once` run on a terminal (nothing otherwise).
//! - [`run`]: passes over the queue (scan and resolve on a thread, plan, hand to the reactor,
//!   summarise), the interval timer, stopping; [`watch`]: the signal pipe and inotify.
//!
//! Exit status: 0 done (even if some mail was deferred, and after SIGTERM/SIGINT, which close
//! the sessions in progress and record their mail as deferred), 1 failure (unusable Maildir,
//! ..., a bad `--config` file or `--check-config` finding a fault), 2 bad arguments, 75 (EX_TEMPFAIL) another relay holds the lock.

mod config;
mod dsn;
mod metrics;
mod mx;
mod plan;
mod progress;
mod reactor;
mod record;
mod run;
mod tls;
mod watch;

use std::ffi::OsString;
use std::process::ExitCode;

use relay_queue::{queue, state};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let loaded = match config_file::parse::<config::Args>(&argv) {
        Ok(l) => l,
        Err(config_file::Error::Cli(e)) => e.exit(),
        Err(config_file::Error::File(e)) => {
            eprintln!("smtp-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let check = loaded.args.check_config;
    // A bad command line is a usage error (2); a bad file, or a check, says 1.
    let bad = if check.is_some() || loaded.file.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::from(2)
    };
    let (file, settings) = (loaded.file, loaded.settings);
    let cfg = match loaded.args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtp-relay: {e}");
            return bad;
        }
    };
    if let Some(show) = check {
        return check_config(&cfg, file, &settings, show);
    }
    let _log = maildir_core::logging::init("info");
    let reload = || config::load(&argv);
    match run::run(&cfg, &reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(run::RunError::Locked(msg)) => {
            eprintln!("smtp-relay: {msg}");
            ExitCode::from(75)
        }
        Err(run::RunError::Failed(msg)) => {
            eprintln!("smtp-relay: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: reads the files the settings name (the CA file), prints the settings.
fn check_config(
    cfg: &config::Config,
    file: Option<std::path::PathBuf>,
    settings: &[config_file::Setting],
    show: config_file::Show,
) -> ExitCode {
    if cfg.tls != config::TlsLevel::None
        && let Err(e) = tls::TlsContext::new(cfg.tls_ca.as_deref())
    {
        eprintln!("smtp-relay: {e}");
        return ExitCode::FAILURE;
    }
    let file = file.map_or_else(
        || "no --config file".to_owned(),
        |p| p.display().to_string(),
    );
    let what = match show {
        config_file::Show::Set => "settings given",
        config_file::Show::All => "every setting",
    };
    print!(
        "# smtp-relay configuration ({file}): valid; {what}\n{}",
        config_file::render(settings, show)
    );
    ExitCode::SUCCESS
}
