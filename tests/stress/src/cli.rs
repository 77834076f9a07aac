//! The command line, validated once into a [`Config`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::script::Limits;

/// SMTP load and stress client: N concurrent randomised sessions from one thread, every reply
/// checked against the expected code.
#[derive(Debug, Parser)]
#[command(
    name = "smtp-stress",
    version,
    after_help = "The delay proxy: smtp-stress proxy --delay 25ms LISTEN TARGET \
                  (smtp-stress proxy --help)."
)]
pub struct Args {
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Run for this many seconds (default 10 unless --count is given).
    #[arg(long, value_name = "SECS", conflicts_with = "count")]
    pub duration: Option<f64>,
    /// Run this many sessions.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Seed of the random sessions (decimal or 0x hex); default: from the clock. Printed, so a
    /// run can be replayed.
    #[arg(long, value_name = "S", value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// Probability that a session provokes one error.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub error_rate: f64,
    /// The server's Maildir: at the end, files in DIR/new must equal the messages delivered.
    #[arg(long, value_name = "DIR")]
    pub maildir: Option<PathBuf>,
    /// The server's recipient limit (for the too-many-recipients class).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_recipients: usize,
    /// The server's message size limit in octets (for the oversize class; checked in EHLO).
    #[arg(long, value_name = "BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_size: u64,
    /// The server's idle timeout; enables the silent class (expects 421 4.4.2).
    #[arg(long, value_name = "SECS")]
    pub silent_timeout: Option<u64>,
    /// Seconds to wait for any reply before counting a mismatch.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub reply_timeout: u64,
    /// The server.
    #[arg(value_name = "HOST:PORT")]
    pub target: String,
    /// Write every delivered transaction's latency (MAIL to the reply after the dot), in
    /// microseconds, one per line, to FILE (scripts/bench.sh plots their histogram).
    #[arg(long, value_name = "FILE")]
    pub latencies: Option<PathBuf>,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad seed {s:?}: {e}"))
}

/// When a run stops starting sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many sessions.
    Count(u64),
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Concurrent connections.
    pub connections: usize,
    /// When to stop.
    pub stop: Stop,
    /// Seed of the run.
    pub seed: u64,
    /// Probability of an error session.
    pub error_rate: f64,
    /// Maildir to check.
    pub maildir: Option<PathBuf>,
    /// The server's limits.
    pub limits: Limits,
    /// Longest wait for a reply.
    pub reply_timeout: Duration,
}

impl Args {
    /// Validates the arguments; `clock_seed` is used when no seed was given.
    pub fn into_config(self, clock_seed: u64) -> Result<Config, String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("--error-rate must be between 0 and 1".into());
        }
        let stop = match (self.duration, self.count) {
            (_, Some(n)) => Stop::Count(n),
            (Some(d), None) if d.is_finite() && d > 0.0 => Stop::After(Duration::from_secs_f64(d)),
            (Some(_), None) => return Err("--duration must be a positive number of seconds".into()),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        let addr = self
            .target
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.target))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.target))?;
        Ok(Config {
            addr,
            connections: self.connections,
            stop,
            seed: self.seed.unwrap_or(clock_seed),
            error_rate: self.error_rate,
            maildir: self.maildir,
            limits: Limits {
                max_recipients: self.max_recipients,
                max_size: self.max_size,
                silent_timeout: self.silent_timeout.map(Duration::from_secs),
            },
            reply_timeout: Duration::from_secs(self.reply_timeout.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let a = Args::try_parse_from(std::iter::once("smtp-stress").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        a.into_config(7)
    }

    #[test]
    fn defaults_and_options() {
        let c = parse(&["127.0.0.1:25"]).unwrap();
        assert_eq!(c.connections, 32);
        assert_eq!(c.stop, Stop::After(Duration::from_secs(10)));
        assert_eq!(c.seed, 7);
        assert_eq!(c.limits.max_recipients, 100);
        assert_eq!(c.limits.max_size, 25 * 1024 * 1024);
        assert!(c.limits.silent_timeout.is_none());
        let c = parse(&[
            "--count",
            "5",
            "--seed",
            "0x10",
            "--error-rate",
            "0.2",
            "--silent-timeout",
            "2",
            "localhost:25",
        ])
        .unwrap();
        assert_eq!(c.stop, Stop::Count(5));
        assert_eq!(c.seed, 16);
        assert_eq!(c.limits.silent_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_arguments() {
        assert!(parse(&["--duration", "1", "--count", "2", "127.0.0.1:25"]).is_err());
        assert!(parse(&["--error-rate", "1.5", "127.0.0.1:25"]).is_err());
        assert!(parse(&["--connections", "0", "127.0.0.1:25"]).is_err());
        assert!(parse(&["--seed", "x", "127.0.0.1:25"]).is_err());
        assert!(parse(&["nohostport"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
