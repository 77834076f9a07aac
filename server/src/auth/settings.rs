//! The login options of smtpd (`--max-auth-failures`, `--ban-time`, `--ban-exempt`,
//! `--auth-failure-delay`, `--allow-plaintext-auth`, `--received-auth-user`,
//! `--submission-listen`, `--ldap-*`), flattened into [`crate::config::Args`], and their
//! checked form [`LoginSettings`] in [`crate::config::Config`].
//!
//! Owns: these options' defaults and checks. Must not: start threads or read files.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::bans::BanPolicy;
use super::ldap::{LdapConfig, Lookup};
use super::pool::{AuthConfig, FAILURE_DELAY, LoginService};
use super::verify::{Backend, Source};
use crate::config::{Cidr, Config};

/// Default `--ldap-filter`.
pub const LDAP_FILTER: &str = "(uid=%u)";
/// Limit for connecting to LDAP and for each LDAP operation.
pub const LDAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Login options on the command line.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Failed logins (SMTP AUTH and POP3 together) after which a client address is banned
    /// (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_auth_failures: u32,
    /// Seconds a ban lasts (1 to 86400 × 365).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400 * 365))]
    pub ban_time: u64,
    /// Network never banned (CIDR or address); may be given several times [default: none].
    #[arg(long = "ban-exempt", value_name = "CIDR")]
    pub ban_exempt: Vec<Cidr>,
    /// Milliseconds a failed login waits before its reply (0 to 60000).
    #[arg(long, value_name = "MS", default_value_t = FAILURE_DELAY.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub auth_failure_delay: u64,
    /// Offer AUTH (and POP3 logins) on unencrypted connections from any address, not only
    /// over TLS and from loopback.
    #[arg(long)]
    pub allow_plaintext_auth: bool,
    /// Name the logged-in user in the Received: header ("Authenticated sender: NAME").
    #[arg(long)]
    pub received_auth_user: bool,
    /// Submission listener (port 587 style, RFC 6409): MAIL needs AUTH first; may be given
    /// several times.
    #[arg(long = "submission-listen", value_name = "ADDR:PORT")]
    pub submission_listen: Vec<SocketAddr>,
    /// Check passwords against this LDAP server (ldap://HOST:PORT or ldaps://HOST:PORT)
    /// instead of the users file.
    #[arg(long, value_name = "URL")]
    pub ldap_url: Option<String>,
    /// Bind DN template for LDAP logins, %u is the user name (RFC 4514 escaped), e.g.
    /// 'uid=%u,ou=people,dc=example,dc=test'.
    #[arg(long, value_name = "DN", conflicts_with = "ldap_base")]
    pub ldap_bind_dn: Option<String>,
    /// Search base for search-then-bind LDAP logins.
    #[arg(long, value_name = "DN")]
    pub ldap_base: Option<String>,
    /// Search filter for search-then-bind, %u is the user name (RFC 4515 escaped).
    #[arg(long, value_name = "FILTER", default_value = LDAP_FILTER)]
    pub ldap_filter: String,
    /// DN to bind as before searching [default: search anonymously].
    #[arg(long, value_name = "DN", requires = "ldap_search_password")]
    pub ldap_search_dn: Option<String>,
    /// Password of --ldap-search-dn.
    #[arg(long, value_name = "PASSWORD", requires = "ldap_search_dn")]
    pub ldap_search_password: Option<String>,
}

/// The checked login settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSettings {
    /// The lockout.
    pub bans: BanPolicy,
    /// Delay before a failed login is answered.
    pub failure_delay: Duration,
    /// Login verifying threads.
    pub threads: usize,
    /// `--allow-plaintext-auth`.
    pub allow_plaintext: bool,
    /// `--received-auth-user`.
    pub received_auth_user: bool,
    /// `--submission-listen`.
    pub submission_listen: Vec<SocketAddr>,
    /// `--ldap-url` and how to find a user's DN.
    pub ldap: Option<LdapConfig>,
}

impl LoginArgs {
    /// Checks the options. `has_users`: a users file is given (a password source).
    pub fn validate(self, has_users: bool) -> Result<LoginSettings, String> {
        let ldap = match self.ldap_url {
            None => {
                for (given, name) in [
                    (self.ldap_bind_dn.is_some(), "--ldap-bind-dn"),
                    (self.ldap_base.is_some(), "--ldap-base"),
                    (self.ldap_search_dn.is_some(), "--ldap-search-dn"),
                ] {
                    if given {
                        return Err(format!("{name} needs --ldap-url"));
                    }
                }
                None
            }
            Some(url) => {
                if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
                    return Err(format!(
                        "--ldap-url '{url}': must start with ldap:// or ldaps://"
                    ));
                }
                let lookup = match (self.ldap_bind_dn, self.ldap_base) {
                    (Some(t), None) if t.contains("%u") => Lookup::BindDn(t),
                    (Some(t), None) => {
                        return Err(format!("--ldap-bind-dn '{t}': must contain %u"));
                    }
                    (None, Some(base)) => {
                        if !self.ldap_filter.contains("%u") {
                            return Err(format!(
                                "--ldap-filter '{}': must contain %u",
                                self.ldap_filter
                            ));
                        }
                        Lookup::Search {
                            base,
                            filter: self.ldap_filter,
                            search_bind: self.ldap_search_dn.zip(self.ldap_search_password),
                        }
                    }
                    _ => return Err("--ldap-url needs --ldap-bind-dn or --ldap-base".into()),
                };
                Some(LdapConfig {
                    url,
                    lookup,
                    timeout: LDAP_TIMEOUT,
                })
            }
        };
        if !self.submission_listen.is_empty() && !has_users && ldap.is_none() {
            return Err(
                "--submission-listen needs accounts to log in with (--users or --ldap-url)".into(),
            );
        }
        Ok(LoginSettings {
            bans: BanPolicy {
                max_failures: self.max_auth_failures,
                ban_time: Duration::from_secs(self.ban_time),
                exempt: self.ban_exempt,
            },
            failure_delay: Duration::from_millis(self.auth_failure_delay),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            allow_plaintext: self.allow_plaintext_auth,
            received_auth_user: self.received_auth_user,
            submission_listen: self.submission_listen,
            ldap,
        })
    }
}

/// The login pool's settings and password source for `config`: LDAP when `--ldap-url` is
/// given, otherwise the users file (the directory main loaded into the sessions' local
/// policy); `None` without either.
pub fn login_service(config: &Config) -> Option<LoginService> {
    let directory = config.session.local.as_ref().map(|p| p.directory.clone());
    let source = match (&config.login.ldap, directory) {
        (Some(ldap), directory) => Source::Ldap {
            config: ldap.clone(),
            directory,
        },
        (None, Some(d)) => Source::Users(d),
        (None, None) => return None,
    };
    Some(LoginService {
        pool: config.login.pool(&config.maildir),
        backend: Arc::new(Backend::new(source)),
    })
}

impl LoginSettings {
    /// The pool's settings, the bans file inside the queue Maildir at `maildir`.
    pub fn pool(&self, maildir: &Path) -> AuthConfig {
        AuthConfig {
            threads: self.threads,
            failure_delay: self.failure_delay,
            bans: self.bans.clone(),
            bans_file: super::ban_file::path(maildir),
        }
    }
}
