//! Live reload ([`Server::reload`], on SIGHUP and the control socket's `reload`): re-reads the
//! command line's `--config` file and every file it names through [`crate::load`], builds a
//! complete new configuration, and swaps it in for NEW sessions only. Each session holds the
//! `Arc<SessionConfig>` it started with (limits, host name, users and aliases, quota), so the
//! sessions in progress finish under the old settings.
//!
//! What a reload changes: the session settings (`--max-size`, `--max-recipients`, `--timeout`,
//! `--hostname`, `--max-hops`, `--postmaster`, local domains, users, aliases, delimiter,
//! quota), the trusted networks, `--max-connections`, `--max-per-ip`, `--shutdown-timeout`,
//! `--log-level`, the certificate and key (STARTTLS and implicit TLS handshakes started
//! afterwards use the new ones), the accounts logins are checked against (users file, LDAP
//! settings) and POP3's session settings. What needs a restart, with a warning and the old
//! value kept: the listeners (`--listen`, `--tls-listen`, `--submission-listen`,
//! `--pop3-listen`, `--pop3s-listen`), the control socket, `--metrics`, `--maildir`,
//! `--mailboxes`, `--no-fsync`, the lockout and the login pool. A configuration
//! that turns local delivery on (none at start) is refused: the group commit was started
//! without the users' Maildirs.
//!
//! Owns: the comparison of old and new, the swap, the log lines of a reload. Must not: read
//! files itself (that is `load`), or touch a session in progress.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::Arc;

use maildir_core::local::Mailboxes;
use net::handshake::Handshakers;

use super::Server;
use crate::config::Config;
use crate::listeners::Service;

/// What a reload needs besides the files: how smtpd was started and what is in force.
#[derive(Debug)]
pub struct ReloadSource {
    /// The command line smtpd was started with (program name first): re-read with its
    /// `--config` file, so the command line still overrides the file.
    pub argv: Vec<OsString>,
    /// The open-files limit, which bounds `--max-connections`.
    pub open_files: Option<u64>,
    /// The configuration in force.
    pub config: Config,
    /// The users' Maildirs the group commit writes to (local delivery).
    pub mailboxes: Option<Arc<Mailboxes>>,
    /// The queue and the mailboxes share a file system (see `LocalPolicy::spool_is_copy`).
    pub spool_is_copy: bool,
    /// The log level at start (from `RUST_LOG`), restored when `--log-level` goes away.
    pub start_level: log::LevelFilter,
}

impl Server {
    /// Gives the server what [`Server::reload`] needs; without it a reload is refused.
    pub fn set_reload(&mut self, source: ReloadSource) {
        self.reload = Some(source);
    }

    /// Re-reads the configuration (the `--config` file and every file it names: users, aliases,
    /// certificate and key) and puts it in force for the sessions that start from now on.
    /// Sessions in progress keep the settings they started with.
    ///
    /// Logs the outcome itself: on success one `configuration reloaded` line, plus one warning
    /// per setting that only a restart can change (returned too, for the control socket); on
    /// failure exactly one error line, and the configuration in force stays (the error is
    /// returned as well).
    ///
    /// It runs on the reactor thread (reading the files, counting the quota usage of every
    /// user), which the other connections wait for: the line says how long it took.
    pub fn reload(&mut self) -> Result<Vec<String>, String> {
        let started = std::time::Instant::now();
        match self.try_reload() {
            Ok((warnings, summary, level)) => {
                for w in &warnings {
                    log::warn!("reload: {w}");
                }
                log::info!(
                    "configuration reloaded in {:.1} ms: {summary}",
                    started.elapsed().as_secs_f64() * 1000.0
                );
                if let Some(level) = level {
                    let start = self
                        .reload
                        .as_ref()
                        .map_or(log::max_level(), |s| s.start_level);
                    crate::load::apply_log_level(level, start);
                }
                Ok(warnings)
            }
            Err(e) => {
                log::error!("reload refused, the configuration in force stays: {e}");
                Err(e)
            }
        }
    }

    /// The work of [`Server::reload`], without its log lines: (warnings, summary, the log
    /// level to put in force if `--log-level` changed).
    fn try_reload(&mut self) -> Result<(Vec<String>, String, NewLevel), String> {
        let Some(source) = &self.reload else {
            return Err("this server was not given its command line".into());
        };
        let loaded = crate::load::from_argv(&source.argv)?;
        let mut config = loaded.config;
        let old = &source.config;
        let old_level = old.log_level;
        let mut warnings = Vec::new();
        if listeners(&config) != listeners(old) {
            warnings.push(
                "the listeners (--listen, --tls-listen, --submission-listen, --pop3-listen, \
                 --pop3s-listen) changed: that \
                 needs a restart; still listening as before"
                    .to_owned(),
            );
        }
        if config.metrics != old.metrics {
            warnings
                .push("--metrics changed: that needs a restart; still serving as before".into());
        }
        if config.maildir != old.maildir {
            warnings.push(format!(
                "--maildir changed: that needs a restart; mail still goes to {}",
                old.maildir.display()
            ));
        }
        if config.durability != old.durability {
            warnings.push("--no-fsync changed: that needs a restart".to_owned());
        }
        if config.sync_mode != old.sync_mode {
            warnings.push("--sync changed: that needs a restart".to_owned());
        }
        let (new_l, old_l) = (&config.login, &old.login);
        if (&new_l.bans, new_l.failure_delay, new_l.threads)
            != (&old_l.bans, old_l.failure_delay, old_l.threads)
        {
            warnings.push(
                "the lockout and login pool (--max-auth-failures, --ban-time, --ban-exempt, \
                 --auth-failure-delay) changed: that needs a restart; still as before"
                    .to_owned(),
            );
        }
        if config.control != old.control {
            warnings.push(
                "the control socket (--control, --no-control) changed: that needs a restart; \
                 still served as before"
                    .to_owned(),
            );
            config.control = old.control.clone();
        }
        let mut summary = Vec::new();
        if let (Some(local), Some(directory)) = (&config.local, loaded.directory) {
            let Some(mailboxes) = &source.mailboxes else {
                return Err(
                    "local delivery was off at start: turning it on needs a restart".into(),
                );
            };
            if old
                .local
                .as_ref()
                .is_some_and(|l| l.mailboxes != local.mailboxes)
            {
                warnings.push(format!(
                    "--mailboxes changed: that needs a restart; users' mail still goes to {}",
                    mailboxes.root().display()
                ));
            }
            summary.push(format!(
                "{} users, {} aliases",
                directory.users().len(),
                directory.aliases().len()
            ));
            config.session.local = Some(crate::load::local_policy(
                local,
                directory,
                mailboxes,
                source.spool_is_copy,
            )?);
        }
        let implicit_tls =
            self.listeners.iter().any(|(_, s)| s.implicit_tls()) || self.pop3.has_implicit_tls();
        if loaded.tls.is_none() && implicit_tls {
            return Err("the implicit TLS listeners need a certificate until a restart".into());
        }
        if loaded.tls.is_some() && self.handshakers.is_none() {
            let pool = Handshakers::spawn(
                config.handshake_threads,
                self.handshake_tx.clone(),
                self.waker.clone(),
            )
            .map_err(|e| format!("cannot start the TLS handshake threads: {e}"))?;
            self.handshakers = Some(pool);
        }
        // Everything is ready: swap. Nothing below can fail.
        // Logins from now on check the new users file (or LDAP settings); the login pool
        // itself starts and stops only with the server, and AUTH is offered only with it.
        match (&self.auth, crate::auth::settings::login_service(&config)) {
            (Some(auth), Some(service)) => auth.set_backend(service.backend),
            (None, Some(_)) => {
                warnings.push(
                    "logins were off at start (no --users or --ldap-url): turning them on \
                     needs a restart"
                        .to_owned(),
                );
                config.session.auth.enabled = false;
            }
            (Some(_), None) => {
                warnings.push(
                    "logins were on at start: turning them off needs a restart; the accounts \
                     in force stay"
                        .to_owned(),
                );
                config.session.auth = self.config.session.auth.clone();
            }
            (None, None) => {}
        }
        let max_connections = config.max_connections(source.open_files);
        let c = &mut self.config;
        c.session = Arc::new(config.session.clone());
        c.trusted = config.trusted.clone();
        c.max_connections = max_connections;
        c.max_per_ip = config.max_per_ip;
        c.shutdown_timeout = config.shutdown_timeout;
        c.tls = loaded.tls;
        self.pop3.set_settings(config.pop3.clone());
        // After the summary line below is written, at the old level; only when the file's
        // level changed (an unrelated reload keeps what `smtpctl log level` set).
        let level = (config.log_level != old_level).then_some(config.log_level);
        summary.insert(0, format!("max-size {}", config.session.max_size));
        if let Some(file) = &loaded.file {
            summary.insert(0, file.display().to_string());
        }
        if let Some(source) = &mut self.reload {
            // What cannot change stays as it is in force.
            config.listen = source.config.listen.clone();
            config.tls_listen = source.config.tls_listen.clone();
            config.login.submission_listen = source.config.login.submission_listen.clone();
            config.login.bans = source.config.login.bans.clone();
            config.login.failure_delay = source.config.login.failure_delay;
            config.login.threads = source.config.login.threads;
            if let (Some(new), Some(old)) = (&mut config.pop3, &source.config.pop3) {
                new.listen = old.listen.clone();
                new.tls_listen = old.tls_listen.clone();
            }
            config.metrics = source.config.metrics;
            config.maildir = source.config.maildir.clone();
            config.durability = source.config.durability;
            config.sync_mode = source.config.sync_mode;
            if let (Some(new), Some(old)) = (&mut config.local, &source.config.local) {
                new.mailboxes = old.mailboxes.clone();
            }
            source.config = config;
        }
        Ok((warnings, summary.join(", "), level))
    }
}

/// A reload's `--log-level`: `None` when it did not change, else the new value (itself `None`
/// when the option is gone: `RUST_LOG` decides again).
type NewLevel = Option<Option<log::LevelFilter>>;

/// Every listening address with what it serves: a change to this set needs a restart.
fn listeners(c: &Config) -> BTreeSet<(SocketAddr, Service)> {
    c.listen_plan().into_iter().collect()
}
