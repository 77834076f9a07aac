//! smtpd's settings: the command line ([`Args`]), checked and completed by [`Args::validate`]
//! into one [`Config`] that holds every setting, the knobs without an option included (error
//! limit, thread counts, buffer limits, linger), and the trusted networks (CIDR) that may
//! relay. A `--config` TOML file gives the same options (its keys are these options' long
//! names, merged in by `config_file` before clap parses, see [`crate::load`]).
//!
//! Owns: defaults, validation, and the assembly of the reactor's and sessions' settings.
//! Must not: bind sockets, open the Maildir or read the certificate (`main` does, then hands
//! the results to [`Config::server_config`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use maildir_core::commit::SyncMode;
use maildir_core::local::Mailboxes;
use maildir_core::{Durability, Mailbox};

use crate::accounts::AccountFiles;
use crate::auth::settings::{LoginArgs, LoginSettings};

use crate::listeners::Service;
use crate::pop3::Pop3Settings;
use crate::reactor::ServerConfig;
use proto::pop3::session::Pop3Config;
use proto::smtp::server::auth::AuthSettings;
use proto::smtp::server::session::{OUTPUT_LIMIT, SessionConfig};

/// `--sync`: how the group commit makes queue files durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    /// An fdatasync per file.
    File,
    /// One syncfs per batch (a queue on a file system of its own).
    Filesystem,
}

/// Largest `--timeout` and `--shutdown-timeout` (a day): far beyond any real use, and far from
/// the limits of `Instant` arithmetic.
pub const MAX_SECS: u64 = 86_400;

/// Erroneous commands after which a session is closed with `421 4.7.0`.
pub const MAX_ERRORS: u32 = 20;
/// Unprocessed input kept per connection before reading stops (pipelined commands waiting).
pub const INBUF_MAX: usize = 64 * 1024;
/// How long a closed session may wait for its last reply to be read.
pub const LINGER: Duration = Duration::from_secs(5);
/// Descriptors kept back from the open-files limit for listeners, queue files and logging.
const RESERVED_FDS: usize = 256;

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

/// `--recipient-delimiter`: one character, or empty for none.
fn parse_delimiter(s: &str) -> Result<Delimiter, String> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (None, _) => Ok(Delimiter(None)),
        (Some(c), None) if c == '@' || c.is_whitespace() || c.is_control() => {
            Err(format!("'{s}' cannot separate a tag"))
        }
        (Some(c), None) => Ok(Delimiter(Some(c))),
        _ => Err(format!("'{s}': one character (or empty for none)")),
    }
}

/// The recipient delimiter: `alice+tag@` is delivered to alice; `None` turns tags off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiter(pub Option<char>);

/// Subcommands of smtpd (without one, smtpd serves).
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Cmd {
    /// Read a password on stdin and print its {ARGON2ID} hash for the --users file (like
    /// `doveadm pw`).
    HashPassword,
}

/// Command-line arguments of smtpd.
#[derive(Debug, Parser)]
#[command(
    name = "smtpd",
    version,
    about = "SMTP server: accepts mail on one event-loop thread and stores it durably in a Maildir (the relay queue), and delivers mail for its own domains to users' Maildirs",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// A tool instead of the server.
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// Maildir to queue mail for smtp-relay into (created if missing).
    #[arg(long, value_name = "DIR", required = true)]
    pub maildir: Option<PathBuf>,
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
    /// How queue files are made durable before 250: `file` (an fdatasync per file, then one
    /// fsync of new/ per batch; right on any file system) or `filesystem` (one syncfs per
    /// batch: fewer, larger writes and one journal commit, but it flushes everything written
    /// to that file system, so only for a queue on a file system of its own; Linux 5.8 or later
    /// reports write errors).
    #[arg(long, value_name = "MODE", value_enum, default_value = "file")]
    pub sync: SyncArg,
    /// A domain whose mail is delivered here, to the users' Maildirs under --mailboxes, from
    /// any client; may be given several times. Needs --mailboxes and --users.
    #[arg(long = "local-domain", value_name = "DOMAIN")]
    pub local_domain: Vec<String>,
    /// Root of the users' Maildirs: DIR/USER/{tmp,new,cur}, created on first delivery, mode
    /// 0700.
    #[arg(long, value_name = "DIR")]
    pub mailboxes: Option<PathBuf>,
    /// The users (Dovecot passwd-file format: name:{SCHEME}hash:uid:gid:gecos:home:shell:extra;
    /// an empty or '*' password receives mail but cannot log in).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Aliases, aliases(5) style: "name: target, target" (users, aliases, remote addresses).
    #[arg(long, value_name = "FILE")]
    pub aliases: Option<PathBuf>,
    /// Separates a tag from the user name: alice+news@ is delivered to alice (empty: no tags).
    #[arg(long, value_name = "CHAR", default_value = "+", value_parser = parse_delimiter)]
    pub recipient_delimiter: Delimiter,
    /// Most octets a user's Maildir may hold; a message that would take a user past it by more
    /// than 10 % (or a user already at it) gets 452 4.2.2, at RCPT (by SIZE=) or after the
    /// data [default: no quota].
    #[arg(long, value_name = "BYTES")]
    pub mailbox_quota: Option<u64>,
    /// Started as root: after binding the listeners and reading the key, serve as this user
    /// (its primary group unless --group) [default: stay as started, with a warning as root].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// With --user: serve with this group instead of the user's primary group.
    #[arg(long, value_name = "NAME", requires = "user")]
    pub group: Option<String>,
    /// Control socket for smtpctl (Unix socket, mode 0600) [default: MAILDIR/.smtpd/control].
    #[arg(long, value_name = "PATH", conflicts_with = "no_control")]
    pub control: Option<PathBuf>,
    /// No control socket.
    #[arg(long)]
    pub no_control: bool,
    /// TOML configuration file: every option is a key of the same name (`max-size = 1048576`,
    /// `local-domain = ["example.org"]`; `[tls] cert = ...` is --tls-cert); the command line
    /// overrides it. SIGHUP re-reads it (and every file it names).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file, command line, and the users, aliases and certificate
    /// files they name), print it as TOML and exit (0 valid, 1 not): the settings given, like
    /// `postconf -n`, or with `=all` every option with its default.
    #[arg(long, value_name = "WHAT", num_args = 0..=1, require_equals = true,
          default_missing_value = "set", value_enum)]
    pub check_config: Option<config_file::Show>,
    /// Most detailed log records written: off, error, warn, info, debug, trace [default: as
    /// RUST_LOG says, else info]. A reload applies a new value.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<log::LevelFilter>,
    /// Address for POP3 (port 110 style; STLS offered when a certificate is configured); may
    /// be given several times. Needs --local-domain: users read their Maildirs.
    #[arg(long = "pop3-listen", value_name = "ADDR:PORT")]
    pub pop3_listen: Vec<SocketAddr>,
    /// Address for POP3 over implicit TLS (port 995 style); may be given several times.
    #[arg(long = "pop3s-listen", value_name = "ADDR:PORT", requires = "tls_cert")]
    pub pop3s_listen: Vec<SocketAddr>,
    /// Seconds a POP3 session may wait for a command (or for the client to read) before it
    /// is closed (RFC 1939 autologout, 1 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub pop3_timeout: u64,
    /// Logins: SMTP AUTH, submission, lockout, LDAP.
    #[command(flatten)]
    pub login: LoginArgs,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (unauthenticated: bind it to
    /// loopback or a management network).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Log line format: journal (`<N>target: message`, syslog priority, no timestamp: journald
    /// adds its own), plain (env_logger's, with a timestamp) [default: journal when stderr is
    /// the journal (JOURNAL_STREAM), else SMTPD_LOG_FORMAT, else plain]. Needs a restart.
    #[arg(long, value_name = "FORMAT", value_parser = ["journal", "plain"])]
    pub log_format: Option<String>,
}

impl Args {
    /// Checks the arguments and fills in defaults.
    pub fn validate(self) -> Result<Config, String> {
        let maildir = self.maildir.ok_or("--maildir is required")?;
        let login = self.login.validate(self.users.is_some())?;
        let local = match (&self.mailboxes, &self.users) {
            _ if self.local_domain.is_empty() => {
                for (given, name) in [
                    (self.mailboxes.is_some(), "--mailboxes"),
                    (self.users.is_some(), "--users"),
                    (self.aliases.is_some(), "--aliases"),
                    (self.mailbox_quota.is_some(), "--mailbox-quota"),
                ] {
                    if given {
                        return Err(format!("{name} needs --local-domain"));
                    }
                }
                None
            }
            (None, _) => return Err("--local-domain needs --mailboxes".into()),
            (_, None) => return Err("--local-domain needs --users".into()),
            (Some(mailboxes), Some(users)) => {
                let mut domains: Vec<String> = Vec::new();
                for d in &self.local_domain {
                    let probe = format!("postmaster@{}", d.trim_end_matches('.'));
                    let m = Mailbox::parse(&probe)
                        .map_err(|e| format!("--local-domain '{d}': {}", e.reason()))?;
                    let lower = m.domain().normalized();
                    if !domains.contains(&lower) {
                        domains.push(lower);
                    }
                }
                Some(LocalConfig {
                    accounts: AccountFiles {
                        users: Some(users.clone()),
                        aliases: self.aliases.clone(),
                        local_domains: domains,
                        delimiter: self.recipient_delimiter.0,
                    },
                    mailboxes: mailboxes.clone(),
                    quota: self.mailbox_quota,
                })
            }
        };
        let hostname = self
            .hostname
            .or_else(maildir_core::maildir::system_hostname)
            .unwrap_or_else(|| "localhost".to_owned());
        let trusted = if self.trust.is_empty() {
            vec![Cidr::LOOPBACK_V4, Cidr::LOOPBACK_V6]
        } else {
            self.trust
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        };
        let pop3_wanted = !self.pop3_listen.is_empty() || !self.pop3s_listen.is_empty();
        // With local delivery POP3 can be served: on the listeners given here, or on sockets
        // systemd hands over.
        let pop3 = if local.is_none() {
            if pop3_wanted {
                return Err("--pop3-listen and --pop3s-listen need --local-domain".into());
            }
            None
        } else {
            Some(Pop3Settings {
                listen: self.pop3_listen,
                tls_listen: self.pop3s_listen,
                session: Arc::new(Pop3Config {
                    hostname: hostname.clone(),
                    timeout: Duration::from_secs(self.pop3_timeout),
                    max_errors: MAX_ERRORS,
                    stls: tls.is_some(),
                    allow_plaintext_auth: login.allow_plaintext,
                    output_limit: proto::pop3::session::OUTPUT_LIMIT,
                }),
            })
        };
        let control_is_default = !self.no_control && self.control.is_none();
        let control = match (self.no_control, self.control) {
            (true, _) => None,
            (false, Some(path)) => Some(path),
            (false, None) => Some(default_control(&maildir)),
        };
        let config = Config {
            control_is_default,
            control,
            maildir,
            local,
            listen: self.listen,
            tls_listen: self.tls_listen,
            session: SessionConfig {
                hostname,
                max_size: self.max_size,
                max_recipients: self.max_recipients,
                timeout: Duration::from_secs(self.timeout),
                max_errors: MAX_ERRORS,
                starttls: tls.is_some(),
                max_hops: self.max_hops,
                postmaster: self.postmaster,
                output_limit: OUTPUT_LIMIT,
                local: None,
                auth: AuthSettings {
                    enabled: self.users.is_some() || login.ldap.is_some(),
                    allow_plaintext: login.allow_plaintext,
                    received_user: login.received_auth_user,
                    external_users: login.ldap.is_some(),
                },
            },
            trusted,
            max_connections: self.max_connections,
            max_per_ip: self.max_per_ip,
            durability: if self.no_fsync {
                Durability::NoFsync
            } else {
                Durability::Fsync
            },
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            tls,
            sync_threads: maildir_core::commit::SYNC_THREADS,
            max_batch: crate::commit::MAX_BATCH,
            sync_mode: match self.sync {
                SyncArg::File => SyncMode::File,
                SyncArg::Filesystem => SyncMode::FileSystem,
            },
            handshake_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            inbuf_max: INBUF_MAX,
            linger: LINGER,
            run_as: self.user.map(|user| crate::privileges::RunAs {
                user,
                group: self.group,
            }),
            log_level: self.log_level,
            pop3,
            login,
            metrics: self.metrics,
        };
        config.check()?;
        Ok(config)
    }
}

/// The certificate chain and key files for STARTTLS and implicit TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Local delivery: where the accounts come from, where the users' Maildirs are, the quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The users and aliases files, the local domains and the recipient delimiter (read by
    /// [`crate::accounts::load`] at start, and again on reload).
    pub accounts: AccountFiles,
    /// Root of the users' Maildirs.
    pub mailboxes: PathBuf,
    /// Most octets per user's Maildir.
    pub quota: Option<u64>,
}

/// The control socket's path when `--control` is not given.
pub fn default_control(maildir: &std::path::Path) -> PathBuf {
    maildir.join(".smtpd").join("control")
}

/// Validated settings of smtpd.
#[derive(Debug, Clone)]
pub struct Config {
    /// The control socket (`--control`; None with `--no-control`).
    pub control: Option<PathBuf>,
    /// `control` is the default path: if it cannot be bound (a path too long for a Unix
    /// socket, say) smtpd warns and runs without one; a path given is required.
    pub control_is_default: bool,
    /// The relay queue Maildir.
    pub maildir: PathBuf,
    /// Local delivery, when `--local-domain` is given.
    pub local: Option<LocalConfig>,
    /// Plain listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listen addresses (need `tls`).
    pub tls_listen: Vec<SocketAddr>,
    /// Settings every session shares (host name, limits, timeout, error limit, output limit).
    pub session: SessionConfig,
    /// Networks allowed to relay (loopback by default).
    pub trusted: Vec<Cidr>,
    /// Most simultaneous connections; None: as many as the open-files limit allows (see
    /// [`Config::max_connections`]).
    pub max_connections: Option<usize>,
    /// Most simultaneous connections per untrusted address (0: unlimited).
    pub max_per_ip: usize,
    /// fsync before 250, or not (`--no-fsync`).
    pub durability: Durability,
    /// How long transfers may go on after a stop signal.
    pub shutdown_timeout: Duration,
    /// Certificate and key: STARTTLS and implicit TLS.
    pub tls: Option<TlsFiles>,
    /// Threads flushing queue files in parallel in the group commit.
    pub sync_threads: usize,
    /// Most messages the group commit makes durable in one batch (one fsync per `new/`).
    pub max_batch: usize,
    /// How the group commit syncs queue files (`--sync`).
    pub sync_mode: SyncMode,
    /// Threads running TLS handshakes (one per core, at most 4).
    pub handshake_threads: usize,
    /// Unprocessed input kept per connection before reading stops.
    pub inbuf_max: usize,
    /// How long a closed session may wait for its last reply to be read.
    pub linger: Duration,
    /// `--user`/`--group`: who to serve as once the listeners are bound.
    pub run_as: Option<crate::privileges::RunAs>,
    /// `--log-level`; None: as `RUST_LOG` says.
    pub log_level: Option<log::LevelFilter>,
    /// POP3 listeners (`--pop3-listen`, `--pop3s-listen`) and session settings, with local
    /// delivery (POP3 reads the users' Maildirs).
    pub pop3: Option<Pop3Settings>,
    /// Logins: lockout, failure delay, submission listeners, LDAP.
    pub login: LoginSettings,
    /// Where to serve Prometheus metrics (`--metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl Config {
    /// Every listen address with what it serves, in the order they are bound.
    pub fn listen_plan(&self) -> Vec<(SocketAddr, Service)> {
        let with = |addrs: &[SocketAddr], s: Service| -> Vec<(SocketAddr, Service)> {
            addrs.iter().map(|a| (*a, s)).collect()
        };
        let (pop3, pop3s) = match &self.pop3 {
            Some(p) => (p.listen.as_slice(), p.tls_listen.as_slice()),
            None => (&[][..], &[][..]),
        };
        [
            with(&self.listen, Service::Smtp),
            with(&self.tls_listen, Service::Smtps),
            with(&self.login.submission_listen, Service::Submission),
            with(pop3, Service::Pop3),
            with(pop3s, Service::Pop3s),
        ]
        .concat()
    }

    /// Checks the settings that no command-line option bounds (a configuration file could).
    pub fn check(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.tls_listen.is_empty() {
            return Err("an implicit TLS listener needs a certificate and key".into());
        }
        let s = &self.session;
        if s.timeout.is_zero() || s.timeout > Duration::from_secs(MAX_SECS) {
            return Err(format!("the timeout must be 1 to {MAX_SECS} seconds"));
        }
        if self.shutdown_timeout > Duration::from_secs(MAX_SECS) {
            return Err(format!(
                "the shutdown timeout must be 0 to {MAX_SECS} seconds"
            ));
        }
        for (name, n) in [
            ("max_errors", s.max_errors as usize),
            ("output_limit", s.output_limit),
            ("sync_threads", self.sync_threads),
            ("max_batch", self.max_batch),
            ("handshake_threads", self.handshake_threads),
            ("inbuf_max", self.inbuf_max),
        ] {
            if n == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The connection limit in force given the open-files limit: the one configured, lowered
    /// (with a warning) to what the descriptors allow, or all they allow.
    pub fn max_connections(&self, open_files: Option<u64>) -> usize {
        // Keep descriptors for listeners, queue files being written and logging; a queue file
        // that cannot be opened is answered 451, not a crash.
        let fd_budget = open_files.map_or(usize::MAX, |n| {
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .saturating_sub(RESERVED_FDS)
        });
        match self.max_connections {
            Some(n) if n > fd_budget => {
                log::warn!(
                    "--max-connections lowered from {n} to {fd_budget} to fit the open-files limit"
                );
                fd_budget.max(1)
            }
            Some(n) => n,
            None => fd_budget.max(1),
        }
    }

    /// The reactor's settings, with the connection limit in force and the loaded TLS
    /// configuration.
    pub fn server_config(
        &self,
        max_connections: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
        mailboxes: Option<Arc<Mailboxes>>,
    ) -> ServerConfig {
        ServerConfig {
            session: Arc::new(self.session.clone()),
            mailboxes,
            trusted: self.trusted.clone(),
            max_connections,
            max_per_ip: self.max_per_ip,
            durability: self.durability,
            shutdown_timeout: self.shutdown_timeout,
            tls,
            commit: crate::commit::Settings {
                threads: self.sync_threads,
                max_batch: self.max_batch,
                mode: self.sync_mode,
            },
            handshake_threads: self.handshake_threads,
            inbuf_max: self.inbuf_max,
            linger: self.linger,
            pop3: self.pop3.clone(),
            auth: crate::auth::settings::login_service(self),
            control: self.control.clone(),
            control_is_default: self.control_is_default,
        }
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
        assert_eq!(a.timeout, 86_400);
        let a = parse(&["--postmaster", "<ops@example.org>"]).unwrap();
        assert_eq!(a.postmaster.unwrap().to_string(), "ops@example.org");
        assert!(parse(&["--postmaster", "not an address"]).is_err());
        assert!(parse(&["--postmaster", "op\u{e9}@example.org"]).is_err());
        assert_eq!(parse(&[]).unwrap().max_hops, 50);
    }

    fn validate(extra: &[&str]) -> Result<Config, String> {
        Args::try_parse_from(["smtpd", "--maildir", "m"].iter().chain(extra.iter()))
            .map_err(|e| e.to_string())?
            .validate()
    }

    /// The defaults, and the knobs without an option.
    #[test]
    fn validate_fills_in_defaults() {
        let c = validate(&["--hostname", "mx.test"]).unwrap();
        assert_eq!(c.session.hostname, "mx.test");
        assert_eq!(c.session.max_errors, 20);
        assert_eq!(c.session.output_limit, 8 * 1024);
        assert_eq!(c.session.timeout, Duration::from_secs(300));
        assert!(!c.session.starttls);
        assert_eq!(c.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.trusted, vec![Cidr::LOOPBACK_V4, Cidr::LOOPBACK_V6]);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.sync_threads, 16);
        assert_eq!(c.max_batch, 512);
        assert_eq!(c.sync_mode, SyncMode::File);
        assert!((1..=4).contains(&c.handshake_threads));
        assert_eq!(c.inbuf_max, 64 * 1024);
        assert_eq!(c.linger, Duration::from_secs(5));
        assert!(c.tls.is_none());
        assert!(!validate(&[]).unwrap().session.hostname.is_empty());
    }

    /// Options given replace the defaults.
    #[test]
    fn validate_takes_the_options() {
        let c = validate(&[
            "--trust",
            "10.0.0.0/8",
            "--no-fsync",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-listen",
            "127.0.0.1:4650",
            "--shutdown-timeout",
            "0",
            "--sync",
            "filesystem",
        ])
        .unwrap();
        assert_eq!(c.trusted, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(c.durability, Durability::NoFsync);
        assert_eq!(c.sync_mode, SyncMode::FileSystem);
        assert!(c.session.starttls);
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert_eq!(c.shutdown_timeout, Duration::ZERO);
    }

    /// Settings no option bounds are still checked (for sources other than the command line).
    #[test]
    fn check_refuses_zero_knobs_and_tls_listeners_without_a_certificate() {
        let good = validate(&[]).unwrap();
        assert_eq!(good.check(), Ok(()));
        let mut c = good.clone();
        c.sync_threads = 0;
        assert!(c.check().unwrap_err().contains("sync_threads"));
        let mut c = good.clone();
        c.max_batch = 0;
        assert!(c.check().unwrap_err().contains("max_batch"));
        let mut c = good.clone();
        c.session.output_limit = 0;
        assert!(c.check().is_err());
        let mut c = good.clone();
        c.session.timeout = Duration::ZERO;
        assert!(c.check().is_err());
        let mut c = good.clone();
        c.shutdown_timeout = Duration::from_secs(MAX_SECS + 1);
        assert!(c.check().is_err());
        let mut c = good;
        c.tls_listen = vec!["127.0.0.1:465".parse().unwrap()];
        assert!(c.check().is_err());
    }

    /// The connection limit fits the open-files limit.
    #[test]
    fn max_connections_fits_the_descriptors() {
        let mut c = validate(&[]).unwrap();
        assert_eq!(c.max_connections(Some(1024)), 768);
        assert_eq!(c.max_connections(Some(100)), 1);
        assert_eq!(c.max_connections(None), usize::MAX);
        c.max_connections = Some(10);
        assert_eq!(c.max_connections(Some(1024)), 10);
        c.max_connections = Some(5000);
        assert_eq!(c.max_connections(Some(1024)), 768);
        c.max_connections = Some(0);
        assert_eq!(c.max_connections(Some(1024)), 0);
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

    /// The local-delivery flags: what needs what, the delimiter, the domains.
    #[test]
    fn local_delivery_flags() {
        assert!(validate(&[]).unwrap().local.is_none());
        let e = validate(&["--local-domain", "example.test", "--users", "u"]).unwrap_err();
        assert!(e.contains("--mailboxes"), "{e}");
        let e = validate(&["--local-domain", "example.test", "--mailboxes", "m"]).unwrap_err();
        assert!(e.contains("--users"), "{e}");
        let e = validate(&["--mailboxes", "m"]).unwrap_err();
        assert!(e.contains("--local-domain"), "{e}");
        assert!(validate(&["--mailbox-quota", "10"]).is_err());
        let c = validate(&[
            "--local-domain",
            "Example.TEST.",
            "--local-domain",
            "example.test",
            "--local-domain",
            "other.test",
            "--mailboxes",
            "m",
            "--users",
            "u",
            "--aliases",
            "a",
            "--mailbox-quota",
            "1000",
        ])
        .unwrap();
        let l = c.local.unwrap();
        assert_eq!(l.accounts.local_domains, ["example.test", "other.test"]);
        assert_eq!(l.accounts.delimiter, Some('+'));
        assert_eq!(l.accounts.aliases, Some(PathBuf::from("a")));
        assert_eq!(l.quota, Some(1000));
        let with = |d: &str| {
            validate(&[
                "--local-domain",
                "example.test",
                "--mailboxes",
                "m",
                "--users",
                "u",
                "--recipient-delimiter",
                d,
            ])
        };
        assert_eq!(
            with("-").unwrap().local.unwrap().accounts.delimiter,
            Some('-')
        );
        assert_eq!(with("").unwrap().local.unwrap().accounts.delimiter, None);
        assert!(with("+-").is_err());
        assert!(with("@").is_err());
        assert!(
            validate(&[
                "--local-domain",
                "bad domain",
                "--mailboxes",
                "m",
                "--users",
                "u"
            ])
            .is_err()
        );
    }

    /// `smtpd hash-password` is a subcommand that needs no --maildir and takes no server option.
    #[test]
    fn hash_password_is_a_subcommand() {
        let a = Args::try_parse_from(["smtpd", "hash-password"]).unwrap();
        assert_eq!(a.command, Some(Cmd::HashPassword));
        assert!(Args::try_parse_from(["smtpd", "--maildir", "m", "hash-password"]).is_err());
        assert!(Args::try_parse_from(["smtpd"]).is_err());
    }
}
