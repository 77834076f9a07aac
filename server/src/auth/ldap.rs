//! Checking a password against an LDAP directory (ldap3's blocking `LdapConn`, rustls for
//! `ldaps://`), on a login pool thread only: a simple bind as the user, either with a DN made
//! from a template (`--ldap-bind-dn 'uid=%u,ou=people,dc=example,dc=test'`) or with the DN a
//! search finds (`--ldap-base`, `--ldap-filter '(uid=%u)'`, bound first as
//! `--ldap-search-dn` when given). The user name is escaped for the DN (RFC 4514) or the
//! filter (RFC 4515) by [`super::ldap_escape`].
//!
//! Owns: the LDAP settings and the conversation. Must not: run on the reactor thread, or
//! count failures.

use std::time::Duration;

use ldap3::{LdapConn, LdapConnSettings, Scope, SearchEntry};

use super::ldap_escape::{self, dn_value, filter_value};

/// Result code of a bind with a wrong password (RFC 4511 `invalidCredentials`).
const INVALID_CREDENTIALS: u32 = 49;

/// How the user's DN is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `--ldap-bind-dn`: the DN is the template with `%u` replaced.
    BindDn(String),
    /// `--ldap-base` and `--ldap-filter`: search, then bind as the one entry found.
    Search {
        /// Where to search (subtree).
        base: String,
        /// The filter, with `%u`.
        filter: String,
        /// Bind as this before searching (`--ldap-search-dn`), with its password.
        search_bind: Option<(String, String)>,
    },
}

/// The LDAP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// How the user's DN is found.
    pub lookup: Lookup,
    /// Limit for connecting and for each operation.
    pub timeout: Duration,
}

/// Binds as `user` with `password`: `Ok(true)` when the directory accepts it, `Ok(false)`
/// for wrong credentials or a user it does not know, `Err` when it could not be asked
/// (unreachable, timeout, a protocol error): a temporary failure.
pub fn verify(config: &LdapConfig, user: &str, password: &[u8]) -> Result<bool, String> {
    let password =
        std::str::from_utf8(password).map_err(|_| "the password is not UTF-8".to_owned());
    let Ok(password) = password else {
        return Ok(false);
    };
    let settings = LdapConnSettings::new().set_conn_timeout(config.timeout);
    let mut ldap = LdapConn::with_settings(settings, &config.url)
        .map_err(|e| format!("cannot connect to {}: {e}", config.url))?;
    let result = match &config.lookup {
        Lookup::BindDn(template) => {
            let dn = ldap_escape::fill(template, user, dn_value);
            bind(&mut ldap, config.timeout, &dn, password)
        }
        Lookup::Search {
            base,
            filter,
            search_bind,
        } => search_then_bind(
            &mut ldap,
            config.timeout,
            user,
            password,
            base,
            filter,
            search_bind.as_ref(),
        ),
    };
    let _ = ldap.unbind();
    result
}

fn bind(ldap: &mut LdapConn, timeout: Duration, dn: &str, password: &str) -> Result<bool, String> {
    let r = ldap
        .with_timeout(timeout)
        .simple_bind(dn, password)
        .map_err(|e| format!("bind: {e}"))?;
    match r.rc {
        0 => Ok(true),
        INVALID_CREDENTIALS => Ok(false),
        rc => Err(format!("bind: result {rc} {}", r.text)),
    }
}

fn search_then_bind(
    ldap: &mut LdapConn,
    timeout: Duration,
    user: &str,
    password: &str,
    base: &str,
    filter: &str,
    search_bind: Option<&(String, String)>,
) -> Result<bool, String> {
    if let Some((dn, pw)) = search_bind
        && !bind(ldap, timeout, dn, pw)?
    {
        return Err(format!("the search DN {dn:?} was refused"));
    }
    let filter = ldap_escape::fill(filter, user, filter_value);
    let (entries, _) = ldap
        .with_timeout(timeout)
        .search(base, Scope::Subtree, &filter, vec!["1.1"])
        .and_then(|r| r.success())
        .map_err(|e| format!("search {filter}: {e}"))?;
    let [entry] = &entries[..] else {
        if entries.len() > 1 {
            log::warn!("LDAP: {} entries match {filter}: no login", entries.len());
        }
        return Ok(false);
    };
    let dn = SearchEntry::construct(entry.clone()).dn;
    bind(ldap, timeout, &dn, password)
}
