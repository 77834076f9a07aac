//! One login check, on a pool thread: the users file's hash (`{ARGON2ID}`, `{SHA512-CRYPT}`,
//! `{BLF-CRYPT}` through [`crate::password`]) or an LDAP bind ([`super::ldap`]).
//!
//! No user enumeration by timing: an unknown user, or one that cannot log in, is checked
//! against a dummy `{ARGON2ID}` hash of the same cost as `smtpd hash-password` writes, so the
//! answer takes as long as a wrong password would.
//!
//! Owns: which source is asked and what its answer means. Must not: run on the reactor
//! thread, keep state between logins (but the dummy hash), or count failures.

use std::sync::{Arc, OnceLock};

use maildir_core::directory::Directory;
use maildir_core::users::Password;

use super::Verdict;
use super::ldap::{self, LdapConfig};
use crate::password;

/// Where passwords are checked.
#[derive(Debug)]
pub enum Source {
    /// The users file (`--users`), through the directory built from it.
    Users(Arc<Directory>),
    /// An LDAP directory (`--ldap-url`); the users file, if any, still names local domains.
    Ldap {
        /// How to reach and ask it.
        config: LdapConfig,
        /// For the local domains a login may carry (`alice@example.org`).
        directory: Option<Arc<Directory>>,
    },
}

/// The login checker the pool threads share.
#[derive(Debug)]
pub struct Backend {
    source: Source,
    dummy: OnceLock<Option<Password>>,
}

impl Backend {
    /// A checker for `source`.
    pub fn new(source: Source) -> Backend {
        Backend {
            source,
            dummy: OnceLock::new(),
        }
    }

    /// Checks `password` for `login`. Slow on purpose: call it on a pool thread.
    pub fn verify(&self, login: &str, password: &[u8]) -> Verdict {
        match &self.source {
            Source::Users(directory) => {
                let Some(name) = user_name(login, Some(directory)) else {
                    self.waste(password);
                    return Verdict::Bad;
                };
                match directory.users().get(&name) {
                    Some(user) => match password::verify(&user.password, password) {
                        Ok(true) => Verdict::Ok { user: name },
                        Ok(false) => Verdict::Bad,
                        Err(password::PasswordError::NoLogin) => {
                            self.waste(password);
                            Verdict::Bad
                        }
                        Err(e) => {
                            log::error!("login of {name:?}: {e}");
                            Verdict::TempFail(e.to_string())
                        }
                    },
                    None => {
                        self.waste(password);
                        Verdict::Bad
                    }
                }
            }
            Source::Ldap { config, directory } => {
                let Some(name) = user_name(login, directory.as_ref()) else {
                    return Verdict::Bad;
                };
                if password.is_empty() {
                    // An empty password is an unauthenticated bind (RFC 4513 §5.1.2) that
                    // most servers accept: never a login.
                    return Verdict::Bad;
                }
                match ldap::verify(config, &name, password) {
                    Ok(true) => Verdict::Ok { user: name },
                    Ok(false) => Verdict::Bad,
                    Err(e) => {
                        log::warn!("LDAP check of {name:?} failed: {e}");
                        Verdict::TempFail(e)
                    }
                }
            }
        }
    }

    /// Spends the time a real check would (the dummy hash is made once, on first use).
    fn waste(&self, password: &[u8]) {
        let dummy = self
            .dummy
            .get_or_init(|| match password::hash(b"dummy password") {
                Ok(h) => Some(dummy_password(&h)),
                Err(e) => {
                    log::error!("cannot make the dummy hash: {e}");
                    None
                }
            });
        if let Some(p) = dummy {
            let _ = password::verify(p, password);
        }
    }
}

fn dummy_password(stored: &str) -> Password {
    let (scheme, hash) = stored
        .strip_prefix('{')
        .and_then(|s| s.split_once('}'))
        .unwrap_or(("ARGON2ID", stored));
    Password::Hashed {
        scheme: scheme.to_owned(),
        hash: hash.to_owned(),
    }
}

/// The user name a login names: lower case; `alice@<local domain>` is `alice`. `None` for a
/// name that cannot be anyone's (empty, or with control characters, `/` or a foreign domain).
pub fn user_name(login: &str, directory: Option<&Arc<Directory>>) -> Option<String> {
    let lower = login.to_lowercase();
    let name = match lower.rsplit_once('@') {
        Some((local, domain)) => {
            let is_local = directory.is_some_and(|d| {
                let probe = format!("postmaster@{domain}");
                maildir_core::Mailbox::parse(&probe).is_ok_and(|m| d.is_local_domain(m.domain()))
            });
            if !is_local {
                return None;
            }
            local.to_owned()
        }
        None => lower,
    };
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.chars().any(|c| c.is_control() || c == '/');
    (!bad).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maildir_core::aliases::Aliases;
    use maildir_core::users::Users;

    fn directory(users: &str) -> Arc<Directory> {
        let users = Users::parse(users).unwrap();
        let aliases = Aliases::parse("postmaster: alice\n").unwrap();
        Arc::new(Directory::new(users, aliases, &["example.test".to_owned()], Some('+')).unwrap())
    }

    #[test]
    fn users_file_logins() {
        let h = password::hash(b"right").unwrap();
        let d = directory(&format!("alice:{h}::::\nbob:*::::\n"));
        let b = Backend::new(Source::Users(d));
        let ok = Verdict::Ok {
            user: "alice".into(),
        };
        assert_eq!(b.verify("alice", b"right"), ok);
        assert_eq!(b.verify("Alice@Example.TEST", b"right"), ok);
        assert_eq!(b.verify("alice", b"wrong"), Verdict::Bad);
        assert_eq!(b.verify("alice@elsewhere.test", b"right"), Verdict::Bad);
        assert_eq!(b.verify("bob", b""), Verdict::Bad);
        assert_eq!(b.verify("nobody", b"right"), Verdict::Bad);
        assert_eq!(b.verify("", b"right"), Verdict::Bad);
        assert_eq!(b.verify("../alice", b"right"), Verdict::Bad);
    }

    /// An unknown user costs what a known one with a wrong password does (within a factor
    /// that load cannot break: both are one argon2 verification).
    #[test]
    fn unknown_user_takes_a_hash_verification() {
        let h = password::hash(b"right").unwrap();
        let b = Backend::new(Source::Users(directory(&format!("alice:{h}::::\n"))));
        b.verify("nobody", b"x"); // makes the dummy hash
        let t = std::time::Instant::now();
        b.verify("nobody", b"x");
        let unknown = t.elapsed();
        let t = std::time::Instant::now();
        b.verify("alice", b"x");
        let known = t.elapsed();
        assert!(
            unknown * 4 > known,
            "unknown {unknown:?} vs known {known:?}"
        );
    }
}
