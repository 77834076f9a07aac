//! Command line (and its `--config` TOML file, through `config_file`) → validated
//! configuration.
//!
//! Owns: the option names (they are the interface, see issue 4), defaults, and checks that need
//! no I/O. Must not: open the Maildir, resolve names or start anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use proto::smtp::client::session::Timeouts;

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
    /// Send everything to this one server instead of looking up MX records. Append
    /// `,tls=starttls` to require STARTTLS with it, or `,tls=implicit` for TLS from the first
    /// byte (RFC 8314, port 465 style), e.g. `mail.example:465,tls=implicit`.
    #[arg(long, value_name = "HOST[:PORT][,tls=starttls|implicit]")]
    pub smarthost: Option<String>,
    /// Send mail for DOMAIN (exact match, any case) to HOST instead of looking up its MX, and
    /// instead of the smarthost (Postfix's `transport_maps`), e.g. `example.org=127.0.0.1:25`
    /// to hand a domain smtpd delivers locally to smtpd; may be given several times. HOST is an
    /// IP address (`[::1]:25` with a port), or a name looked up like the smarthost's; the port
    /// defaults to --port. Such a route is configured on purpose: no "loops back to myself"
    /// check applies to it; --tls applies as for MX hosts.
    #[arg(long = "transport", value_name = "DOMAIN=HOST[:PORT]")]
    pub transport: Vec<String>,
    /// TLS policy towards MX hosts and the smarthost: `none` (never), `may` (STARTTLS when
    /// offered, certificate not checked, plaintext if it fails), `encrypt` (STARTTLS required),
    /// `verify` (STARTTLS and a certificate valid for the MX host name required).
    #[arg(long, value_name = "LEVEL", default_value = "may")]
    pub tls: TlsLevel,
    /// Extra trusted CA certificates (PEM) for `--tls verify`, beside the bundled Mozilla roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Name to give in EHLO/HELO (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// Most outbound connections at once (never more than one per MX host).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_connections: usize,
    /// Most recipients per transaction; more go in further transactions of the same session
    /// (Postfix's `smtp_destination_recipient_limit`).
    #[arg(long, value_name = "N", default_value_t = proto::smtp::client::session::DEFAULT_MAX_RCPT)]
    pub max_rcpt_per_transaction: usize,
    /// Bounce what could not be delivered after this many seconds in the queue (5 days).
    #[arg(long, value_name = "SECS", default_value_t = 5 * 24 * 3600)]
    pub queue_lifetime: u64,
    /// Send the sender a delay warning DSN (RFC 3464 `Action: delayed`, once per message) when
    /// mail is still deferred this many seconds after it was queued, for recipients whose
    /// NOTIFY asks for DELAY or is unspecified (4 hours; 0: never; Postfix's
    /// `delay_warning_time`).
    #[arg(long, value_name = "SECS", default_value_t = 4 * 3600)]
    pub delay_warning: u64,
    /// Ignore the retry schedule: try every queued message now.
    #[arg(long)]
    pub now: bool,
    /// Print the queue (id, sender, recipients with status, attempts, last error, next attempt).
    #[arg(long)]
    pub list: bool,
    /// One limit in seconds for connecting and for every reply (default: RFC 5321 §4.5.3.2).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Send with DATA even to servers that offer CHUNKING (RFC 3030 BDAT, used by default when
    /// offered together with PIPELINING).
    #[arg(long)]
    pub no_chunking: bool,
    /// TOML configuration file: every option is a key of the same name (`port = 2525`,
    /// `tls = "verify"`, `tls-ca = "ca.pem"`); the command line overrides it. With
    /// --interval, SIGHUP re-reads it between passes.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file and command line), print it as TOML and exit (0 valid,
    /// 1 not): the settings given, like `postconf -n`, or with `=all` every option.
    #[arg(long, value_name = "WHAT", num_args = 0..=1, require_equals = true,
          default_missing_value = "set", value_enum)]
    pub check_config: Option<config_file::Show>,
    /// With --interval: serve Prometheus metrics on http://ADDR:PORT/metrics
    /// (unauthenticated: bind it to loopback or a management network).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
}

/// The command line (program name first) with its `--config` file, validated: what a reload
/// reads. Every error is one line.
pub fn load(argv: &[std::ffi::OsString]) -> Result<Config, String> {
    config_file::parse::<Args>(argv)
        .map_err(|e| e.to_string())?
        .args
        .validate()
}

/// The TLS security level (Postfix's `smtp_tls_security_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum TlsLevel {
    /// Never use TLS.
    None,
    /// Opportunistic: STARTTLS when offered, no certificate check, plaintext when it fails.
    May,
    /// STARTTLS required; the certificate is not checked.
    Encrypt,
    /// STARTTLS required with a certificate chain valid for the MX host name.
    Verify,
}

/// How a smarthost is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostTls {
    /// As `--tls` says.
    Policy,
    /// STARTTLS required (at least `encrypt`).
    StartTls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

/// Where mail goes: by MX lookup, or all to one server (except the domains of
/// [`Config::transports`], which go to their own next hops either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Look up MX records for each domain.
    Mx,
    /// Everything to this host (name or IP) and optional port.
    Smarthost {
        host: String,
        port: Option<u16>,
        tls: SmarthostTls,
    },
}

/// A fixed next hop: a host name or IP address and an optional port (default: `--port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
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
    /// `--transport` routes: the domain (lower case, no trailing dot) → its next hop. They
    /// take precedence over `route`.
    pub transports: BTreeMap<String, NextHop>,
    pub helo: String,
    pub max_connections: usize,
    /// Most recipients per SMTP transaction.
    pub max_rcpt: usize,
    pub queue_lifetime: Duration,
    /// Delay warning after this long in the queue; `None`: never.
    pub delay_warning: Option<Duration>,
    pub ignore_schedule: bool,
    pub list: bool,
    pub timeouts: Timeouts,
    pub connect_timeout: Duration,
    /// TLS level for MX hosts and the smarthost (a `tls=` smarthost raises it to at least
    /// `encrypt`).
    pub tls: TlsLevel,
    /// TLS level towards `--transport` hosts: `--tls` as given (never raised by the
    /// smarthost's `tls=`, never implicit TLS).
    pub transport_tls: TlsLevel,
    /// TLS from the first byte (implicit-TLS smarthost).
    pub implicit_tls: bool,
    /// Extra CA certificates (PEM).
    pub tls_ca: Option<PathBuf>,
    /// BDAT to servers that offer CHUNKING and PIPELINING (false: `--no-chunking`, always DATA).
    pub chunking: bool,
    /// Where to serve Prometheus metrics (`--metrics`, with `--interval`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl Args {
    /// Checks the arguments and fills in defaults.
    pub fn validate(self) -> Result<Config, String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_rcpt_per_transaction == 0 {
            return Err("--max-rcpt-per-transaction must be at least 1".into());
        }
        let interval = match self.interval {
            Some(0) => return Err("--interval must be at least 1 second".into()),
            Some(s) => Some(Duration::from_secs(s)),
            None => None,
        };
        if self.metrics.is_some() && interval.is_none() {
            return Err("--metrics needs --interval (a run that exits cannot be scraped)".into());
        }
        if self.port == Some(0) {
            return Err("--port must be between 1 and 65535".into());
        }
        let route = match self.smarthost {
            None => Route::Mx,
            Some(s) => parse_smarthost(&s)?,
        };
        let mut transports = BTreeMap::new();
        for t in &self.transport {
            let (domain, hop) = parse_transport(t)?;
            if transports.insert(domain.clone(), hop).is_some() {
                return Err(format!("--transport: {domain} is given more than once"));
            }
        }
        let (mut tls, mut implicit_tls) = (self.tls, false);
        if let Route::Smarthost { tls: st, .. } = &route {
            if *st != SmarthostTls::Policy && tls == TlsLevel::None {
                return Err("--tls none conflicts with the smarthost's tls= setting".into());
            }
            match st {
                SmarthostTls::Policy => {}
                SmarthostTls::StartTls => tls = tls.max(TlsLevel::Encrypt),
                SmarthostTls::Implicit => {
                    tls = tls.max(TlsLevel::Encrypt);
                    implicit_tls = true;
                }
            }
        }
        if self.tls_ca.is_some() && tls != TlsLevel::Verify {
            return Err("--tls-ca is only used with --tls verify".into());
        }
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
            transports,
            helo,
            max_connections: self.max_connections,
            max_rcpt: self.max_rcpt_per_transaction,
            queue_lifetime: Duration::from_secs(self.queue_lifetime),
            delay_warning: (self.delay_warning > 0)
                .then(|| Duration::from_secs(self.delay_warning)),
            ignore_schedule: self.now,
            list: self.list,
            timeouts,
            connect_timeout,
            tls,
            transport_tls: self.tls,
            implicit_tls,
            tls_ca: self.tls_ca,
            chunking: !self.no_chunking,
            metrics: self.metrics,
        })
    }
}

/// `host`, `host:port`, `[ipv6]:port` or a bare IPv6 address, then optionally
/// `,tls=starttls` or `,tls=implicit`.
fn parse_smarthost(arg: &str) -> Result<Route, String> {
    let (s, tls) = match arg.split_once(',') {
        None => (arg, SmarthostTls::Policy),
        Some((s, "tls=starttls")) => (s, SmarthostTls::StartTls),
        Some((s, "tls=implicit")) => (s, SmarthostTls::Implicit),
        Some(_) => {
            return Err(format!(
                "--smarthost {arg:?}: expected HOST[:PORT] then optionally ,tls=starttls or ,tls=implicit"
            ));
        }
    };
    let NextHop { host, port } = parse_host_port(s)
        .ok_or_else(|| format!("--smarthost {arg:?}: expected HOST or HOST:PORT"))?;
    Ok(Route::Smarthost { host, port, tls })
}

/// `DOMAIN=HOST[:PORT]` (HOST as for [`parse_host_port`]): the domain in lower case without
/// its trailing dot, and where its mail goes.
fn parse_transport(arg: &str) -> Result<(String, NextHop), String> {
    let bad = |why: &str| format!("--transport {arg:?}: {why}");
    let Some((domain, hop)) = arg.split_once('=') else {
        return Err(bad("expected DOMAIN=HOST[:PORT]"));
    };
    let domain = domain.trim().trim_end_matches('.');
    if domain.is_empty() {
        return Err(bad("no domain before '='"));
    }
    let probe = format!("postmaster@{domain}");
    let domain = maildir_core::Mailbox::parse(&probe)
        .map_err(|e| bad(&format!("bad domain: {}", e.reason())))?
        .domain()
        .normalized();
    let hop = parse_host_port(hop.trim())
        .ok_or_else(|| bad("expected HOST or HOST:PORT after '=' (port 1 to 65535)"))?;
    Ok((domain, hop))
}

/// `host`, `host:port`, `[ipv6]:port` or a bare IPv6 address; `None` when it is none of these
/// (empty, port 0 or not a number, brackets or spaces in a name).
fn parse_host_port(s: &str) -> Option<NextHop> {
    if s.is_empty() {
        return None;
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return (addr.port() != 0).then(|| NextHop {
            host: addr.ip().to_string(),
            port: Some(addr.port()),
        });
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Some(NextHop {
            host: s.to_owned(),
            port: None,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(port) if port != 0 => (h, Some(port)),
            _ => return None,
        },
        None => (s, None),
    };
    if host.is_empty()
        || host.contains(|c: char| c.is_whitespace() || c.is_control() || "[]=,/@".contains(c))
    {
        return None;
    }
    Some(NextHop {
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
        assert_eq!(c.max_rcpt, 50);
        assert!(parse(&["--max-rcpt-per-transaction", "0"]).is_err());
        assert_eq!(
            parse(&["--max-rcpt-per-transaction", "3"])
                .unwrap()
                .max_rcpt,
            3
        );
        assert!(parse(&["--once", "--interval", "5"]).is_err());
        // Metrics are served by a process that keeps running.
        assert!(parse(&["--once", "--metrics", "127.0.0.1:9100"]).is_err());
        assert!(parse(&["--metrics", "127.0.0.1:9100"]).is_err());
        let m = parse(&["--interval", "5", "--metrics", "127.0.0.1:9100"]).unwrap();
        assert_eq!(m.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        // Delay warnings: 4 h by default, seconds as given, 0 turns them off.
        assert_eq!(c.delay_warning, Some(Duration::from_secs(4 * 3600)));
        let d = |v: &str| parse(&["--delay-warning", v]).map(|c| c.delay_warning);
        assert_eq!(d("1"), Ok(Some(Duration::from_secs(1))));
        assert_eq!(d("0"), Ok(None));
        assert!(d("-1").is_err() && d("4h").is_err());
        assert!(parse(&["--smarthost", "mx.test:0"]).is_err());
        assert!(parse(&["--helo", "a b"]).is_err());
        assert_eq!(
            parse(&["--smarthost", "127.0.0.2:2525"]).unwrap().route,
            Route::Smarthost {
                host: "127.0.0.2".into(),
                port: Some(2525),
                tls: SmarthostTls::Policy,
            }
        );
        assert_eq!(
            parse(&["--smarthost", "relay.test"]).unwrap().route,
            Route::Smarthost {
                host: "relay.test".into(),
                port: None,
                tls: SmarthostTls::Policy,
            }
        );
    }

    #[test]
    fn tls_levels_and_smarthost_tls() {
        assert_eq!(parse(&[]).unwrap().tls, TlsLevel::May);
        assert_eq!(parse(&["--tls", "none"]).unwrap().tls, TlsLevel::None);
        assert!(parse(&["--tls", "sometimes"]).is_err());
        let c = parse(&["--smarthost", "mail.example:465,tls=implicit"]).unwrap();
        assert_eq!(
            c.route,
            Route::Smarthost {
                host: "mail.example".into(),
                port: Some(465),
                tls: SmarthostTls::Implicit,
            }
        );
        assert!(c.implicit_tls);
        assert_eq!(c.tls, TlsLevel::Encrypt);
        let c = parse(&["--smarthost", "[::1]:587,tls=starttls", "--tls", "verify"]).unwrap();
        assert_eq!(c.tls, TlsLevel::Verify);
        assert!(!c.implicit_tls);
        assert!(parse(&["--smarthost", "m.example,tls=maybe"]).is_err());
        assert!(parse(&["--smarthost", "m.example,tls=implicit", "--tls", "none"]).is_err());
        assert!(parse(&["--tls-ca", "/x.pem"]).is_err());
        assert!(parse(&["--tls", "verify", "--tls-ca", "/x.pem"]).is_ok());
    }

    fn hop(host: &str, port: Option<u16>) -> NextHop {
        NextHop {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn transports() {
        assert!(parse(&[]).unwrap().transports.is_empty());
        let c = parse(&[
            "--transport",
            "Example.ORG.=127.0.0.1:2525",
            "--transport",
            "v6.test=[::1]:25",
            "--transport",
            "bare6.test=::1",
            "--transport",
            "name.test=mail.local.test",
            "--transport",
            "named-port.test=mail.local.test:587",
            "--smarthost",
            "relay.test",
        ])
        .unwrap();
        let t: Vec<(&str, NextHop)> = c
            .transports
            .iter()
            .map(|(d, h)| (d.as_str(), h.clone()))
            .collect();
        assert_eq!(
            t,
            vec![
                ("bare6.test", hop("::1", None)),
                ("example.org", hop("127.0.0.1", Some(2525))),
                ("name.test", hop("mail.local.test", None)),
                ("named-port.test", hop("mail.local.test", Some(587))),
                ("v6.test", hop("::1", Some(25))),
            ]
        );
        // The smarthost stays the route for every other domain.
        assert!(matches!(c.route, Route::Smarthost { .. }));
        for bad in [
            "=",
            "example.org",
            "example.org=",
            "=127.0.0.1:25",
            ".=127.0.0.1",
            "example.org=127.0.0.1:0",
            "example.org=mail.test:0",
            "example.org=mail.test:x",
            "example.org=mail.test:70000",
            "example.org=[::1]",
            "example.org=a b",
            "exa mple.org=127.0.0.1",
            "a@b=127.0.0.1",
            "example.org=127.0.0.1:25=x",
        ] {
            let e = parse(&["--transport", bad]).expect_err(bad);
            assert!(e.starts_with("--transport "), "{bad}: {e}");
        }
        // One domain, two routes: which one was meant?
        let e = parse(&[
            "--transport",
            "a.test=127.0.0.1",
            "--transport",
            "A.test.=127.0.0.2",
        ])
        .unwrap_err();
        assert!(e.contains("more than once"), "{e}");
    }

    #[test]
    fn transport_tls_is_the_tls_option_as_given() {
        let c = parse(&["--smarthost", "m.example:465,tls=implicit"]).unwrap();
        assert_eq!((c.tls, c.transport_tls), (TlsLevel::Encrypt, TlsLevel::May));
        let c = parse(&["--tls", "verify", "--transport", "a.test=127.0.0.1"]).unwrap();
        assert_eq!(c.transport_tls, TlsLevel::Verify);
        assert!(parse(&["--smarthost", "127.0.0.1:0"]).is_err());
    }
}
