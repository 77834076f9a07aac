//! The command line of `smtpd` and the validated configuration built from it, including the
//! trusted networks (CIDR) that may relay.
//!
//! Parsing and validation only: nothing here binds sockets or opens the Maildir.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use maildir_core::Mailbox;

/// Largest `--timeout` and `--shutdown-timeout` (a day): far beyond any real use, and far from
/// the limits of `Instant` arithmetic.
pub const MAX_SECS: u64 = 86_400;

/// `--postmaster`: a plain ASCII mailbox, with or without angle brackets.
fn parse_postmaster(s: &str) -> Result<Mailbox, String> {
    let bare = s
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s);
    let m = Mailbox::parse(bare).map_err(|e| format!("'{s}': {}", e.reason()))?;
    if m.is_utf8() {
        return Err(format!("'{s}': must be ASCII"));
    }
    Ok(m)
}

/// Command-line arguments of smtpd.
#[derive(Debug, Parser)]
#[command(
    name = "smtpd",
    version,
    about = "SMTP server: accepts mail on one event-loop thread and stores it durably in a Maildir"
)]
pub struct Args {
    /// Maildir to deliver into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub maildir: PathBuf,
    /// Address to listen on; may be given several times.
    #[arg(
        long = "listen",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:2525"
    )]
    pub listen: Vec<SocketAddr>,
    /// Host name for the greeting and trace headers [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Network allowed to relay (CIDR or address); may be given several times.
    /// Replaces the default, which is loopback only (127.0.0.0/8 and ::1).
    #[arg(long = "trust", value_name = "CIDR")]
    pub trust: Vec<Cidr>,
    /// Largest message accepted, in octets (advertised in EHLO SIZE).
    #[arg(long, value_name = "BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_size: u64,
    /// Most recipients per message.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_recipients: usize,
    /// Most simultaneous connections [default: as many as the open-files limit allows].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one untrusted client address (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_per_ip: usize,
    /// Seconds to wait for each command or data line before 421 and close (1 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub timeout: u64,
    /// Seconds that transfers in progress may take to finish after SIGTERM/SIGINT (0 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=MAX_SECS))]
    pub shutdown_timeout: u64,
    /// Most `Received:` headers a message may carry; more is a mail loop: 554 5.4.6.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_hops: usize,
    /// Address that `RCPT TO:<postmaster>` is delivered to [default: refuse it, 550 5.1.1,
    /// since smtpd has no local delivery].
    #[arg(long, value_name = "ADDR", value_parser = parse_postmaster)]
    pub postmaster: Option<Mailbox>,
    /// PEM certificate chain: enables STARTTLS (and --tls-listen).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Address for implicit TLS (port 465 style, RFC 8314); may be given several times.
    #[arg(long = "tls-listen", value_name = "ADDR:PORT", requires = "tls_cert")]
    pub tls_listen: Vec<SocketAddr>,
    /// FOR BENCHMARKS ONLY: answer 250 without fsync; a crash may lose accepted mail.
    #[arg(long)]
    pub no_fsync: bool,
}

impl Args {
    /// The trusted networks in force: the given ones, or loopback by default.
    pub fn trusted_networks(&self) -> Vec<Cidr> {
        if self.trust.is_empty() {
            vec![Cidr::LOOPBACK_V4, Cidr::LOOPBACK_V6]
        } else {
            self.trust.clone()
        }
    }

    /// The idle timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// An IP network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    const LOOPBACK_V4: Cidr = Cidr {
        addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
        prefix: 8,
    };
    const LOOPBACK_V6: Cidr = Cidr {
        addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        prefix: 128,
    };

    /// True when `ip` lies in the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP network (expected ADDR/PREFIX)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded_and_postmaster_is_checked() {
        let parse = |extra: &[&str]| {
            Args::try_parse_from(["smtpd", "--maildir", "m"].iter().chain(extra.iter()))
        };
        assert!(parse(&["--timeout", "18446744073709551615"]).is_err());
        assert!(parse(&["--shutdown-timeout", "18446744073709551615"]).is_err());
        assert!(parse(&["--timeout", "86401"]).is_err());
        assert!(parse(&["--timeout", "0"]).is_err());
        let a = parse(&["--timeout", "86400", "--shutdown-timeout", "0"]).unwrap();
        assert_eq!(a.timeout(), Duration::from_secs(86_400));
        let a = parse(&["--postmaster", "<ops@example.org>"]).unwrap();
        assert_eq!(a.postmaster.unwrap().to_string(), "ops@example.org");
        assert!(parse(&["--postmaster", "not an address"]).is_err());
        assert!(parse(&["--postmaster", "op\u{e9}@example.org"]).is_err());
        assert_eq!(parse(&[]).unwrap().max_hops, 50);
    }

    #[test]
    fn cidr_contains() {
        let n: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(n.contains("127.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.2".parse().unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!("1.2.3.4/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
