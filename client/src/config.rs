//! Command line → validated configuration.
//!
//! Owns: the option names (they are the interface, see issue 4), defaults, and checks that need
//! no I/O. Must not: open the Maildir, resolve names or start anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::session::Timeouts;

/// Drain a Maildir queue to the recipients' mail exchangers, one pipelined session per MX host.
#[derive(Debug, Parser)]
#[command(name = "smtp-relay", version)]
pub struct Args {
    /// The Maildir whose new/ holds the queued messages.
    #[arg(long, value_name = "DIR")]
    pub maildir: PathBuf,
    /// Send everything due, print a summary and exit (the default).
    #[arg(long, conflicts_with = "interval")]
    pub once: bool,
    /// Keep running: wake every SECS seconds, and at once when mail appears in new/.
    #[arg(long, value_name = "SECS")]
    pub interval: Option<u64>,
    /// Nameserver to ask instead of the system resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub dns: Option<SocketAddr>,
    /// Port to connect to on every MX host instead of 25.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Send everything to this one server instead of looking up MX records.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub smarthost: Option<String>,
    /// Name to give in EHLO/HELO (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// Most outbound connections at once (never more than one per MX host).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_connections: usize,
    /// Bounce what could not be delivered after this many seconds in the queue (5 days).
    #[arg(long, value_name = "SECS", default_value_t = 5 * 24 * 3600)]
    pub queue_lifetime: u64,
    /// Ignore the retry schedule: try every queued message now.
    #[arg(long)]
    pub now: bool,
    /// Print the queue (id, sender, recipients with status, attempts, last error, next attempt).
    #[arg(long)]
    pub list: bool,
    /// One limit in seconds for connecting and for every reply (default: RFC 5321 §4.5.3.2).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Where mail goes: by MX lookup, or all to one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Look up MX records for each domain.
    Mx,
    /// Everything to this host (name or IP) and optional port.
    Smarthost { host: String, port: Option<u16> },
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub maildir: PathBuf,
    /// None: run once and exit.
    pub interval: Option<Duration>,
    pub dns: Option<SocketAddr>,
    pub port: u16,
    pub route: Route,
    pub helo: String,
    pub max_connections: usize,
    pub queue_lifetime: Duration,
    pub ignore_schedule: bool,
    pub list: bool,
    pub timeouts: Timeouts,
    pub connect_timeout: Duration,
}

impl Args {
    /// Checks the arguments and fills in defaults.
    pub fn validate(self) -> Result<Config, String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        let interval = match self.interval {
            Some(0) => return Err("--interval must be at least 1 second".into()),
            Some(s) => Some(Duration::from_secs(s)),
            None => None,
        };
        if self.port == Some(0) {
            return Err("--port must be between 1 and 65535".into());
        }
        let route = match self.smarthost {
            None => Route::Mx,
            Some(s) => parse_smarthost(&s)?,
        };
        let helo = match self.helo {
            Some(h)
                if h.is_empty()
                    || h.bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) =>
            {
                return Err(format!("--helo {h:?} is not a host name"));
            }
            Some(h) => h,
            None => {
                maildir_core::maildir::system_hostname().unwrap_or_else(|| "localhost".to_owned())
            }
        };
        let (timeouts, connect_timeout) = match self.timeout {
            Some(0) => return Err("--timeout must be at least 1 second".into()),
            Some(s) => (
                Timeouts::all(Duration::from_secs(s)),
                Duration::from_secs(s),
            ),
            None => (Timeouts::rfc(), Duration::from_secs(30)),
        };
        Ok(Config {
            maildir: self.maildir,
            interval,
            dns: self.dns,
            port: self.port.unwrap_or(25),
            route,
            helo,
            max_connections: self.max_connections,
            queue_lifetime: Duration::from_secs(self.queue_lifetime),
            ignore_schedule: self.now,
            list: self.list,
            timeouts,
            connect_timeout,
        })
    }
}

/// `host`, `host:port`, `[ipv6]:port` or a bare IPv6 address.
fn parse_smarthost(s: &str) -> Result<Route, String> {
    let bad = || format!("--smarthost {s:?}: expected HOST or HOST:PORT");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Route::Smarthost {
            host: addr.ip().to_string(),
            port: Some(addr.port()),
        });
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(Route::Smarthost {
            host: s.to_owned(),
            port: None,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p.parse().map_err(|_| bad())?;
            if port == 0 {
                return Err(bad());
            }
            (h, Some(port))
        }
        None => (s, None),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') {
        return Err(bad());
    }
    Ok(Route::Smarthost {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["smtp-relay", "--maildir", "/tmp/x"];
        v.extend_from_slice(args);
        Args::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn defaults_and_checks() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.port, 25);
        assert_eq!(c.route, Route::Mx);
        assert!(c.interval.is_none());
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--once", "--interval", "5"]).is_err());
        assert!(parse(&["--smarthost", "mx.test:0"]).is_err());
        assert!(parse(&["--helo", "a b"]).is_err());
        assert_eq!(
            parse(&["--smarthost", "127.0.0.2:2525"]).unwrap().route,
            Route::Smarthost {
                host: "127.0.0.2".into(),
                port: Some(2525)
            }
        );
        assert_eq!(
            parse(&["--smarthost", "relay.test"]).unwrap().route,
            Route::Smarthost {
                host: "relay.test".into(),
                port: None
            }
        );
    }
}
