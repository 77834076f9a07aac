//! smtp-relay: drains a Maildir queue to the recipients' mail exchangers, all of one MX host's
//! mail over one pipelined connection.
//!
//! This file is thin: arguments, logging, run, exit code. Layout of the crate:
//! - [`config`]: command line → validated settings.
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
//! - [`run`]: passes over the queue (scan and resolve on a thread, plan, hand to the reactor,
//!   summarise), the interval timer, stopping; [`watch`]: the signal pipe and inotify.
//!
//! Exit status: 0 done (even if some mail was deferred, and after SIGTERM/SIGINT, which close
//! the sessions in progress and record their mail as deferred), 1 failure (unusable Maildir,
//! ...), 2 bad arguments, 75 (EX_TEMPFAIL) another relay holds the lock.

mod config;
mod dsn;
mod mx;
mod plan;
mod reactor;
mod record;
mod run;
mod tls;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use relay_queue::{queue, state};

fn main() -> ExitCode {
    let cfg = match config::Args::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtp-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let _log = maildir_core::logging::init("info");
    match run::run(&cfg) {
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
