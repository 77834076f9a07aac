//! Logins (SMTP AUTH, POP3): who may log in, checked off the reactor thread, and the lockout
//! of addresses that guess passwords.
//!
//! - [`pool`]: the [`Authenticator`]: a few threads verifying [`Request`]s (argon2 and LDAP
//!   never run on the reactor), their [`Answer`]s brought back through the reactor's
//!   `mio::Waker`, failures held back for the failure delay, the bans applied.
//! - [`verify`]: one check of a user name and password against the users file or LDAP.
//! - [`bans`]: the lockout policy (pure, clock passed in) and the bans file's format;
//!   [`ban_file`]: that file's I/O, on a thread of its own.
//! - [`settings`]: the login options and their checks.
//! - [`ldap`]: binds against an LDAP directory (pool threads only); [`ldap_escape`]: RFC 4515
//!   filter and RFC 4514 DN value escaping (pure).
//!
//! Use from the reactor: [`Authenticator::submit`] when a session asks to verify; after a
//! Waker event [`Authenticator::collect`], then [`Authenticator::poll_answer`] until `None`
//! (also when [`Authenticator::next_deadline`] passes); [`Authenticator::is_banned`] on each
//! new connection.
//!
//! Must not: touch a socket or a session, or decide what a protocol says about an answer.

pub mod ban_file;
pub mod bans;
pub mod ldap;
pub mod ldap_escape;
pub mod pool;
pub mod settings;
pub mod verify;

use std::net::IpAddr;

use net::ConnRef;

pub use bans::{Ban, BanPolicy, Bans};
pub use pool::{AuthConfig, Authenticator, LoginService};
pub use verify::Backend;

/// Which protocol a login is for (both count toward the same lockout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// SMTP AUTH.
    Smtp,
    /// POP3 USER/PASS or AUTH.
    Pop3,
}

impl Service {
    /// `smtp` or `pop3`, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp => "smtp",
            Service::Pop3 => "pop3",
        }
    }
}

/// A login to verify.
pub struct Request {
    /// Whose login it is (stale answers are dropped by the generation).
    pub conn: ConnRef,
    /// SMTP or POP3.
    pub service: Service,
    /// The user name as the client gave it.
    pub user: String,
    /// The password as the client gave it (cleared once verified).
    pub password: Vec<u8>,
    /// The client's address (for the lockout and the log).
    pub ip: IpAddr,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("conn", &self.conn)
            .field("service", &self.service)
            .field("user", &self.user)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right: logged in as `user` (the users file's name, lower case).
    Ok {
        /// The canonical user name (its Maildir is `<mailboxes>/<user>`).
        user: String,
    },
    /// Unknown user, wrong password, an account that cannot log in, or a banned address.
    Bad,
    /// The check could not be made (LDAP unreachable, a broken hash): try again later.
    TempFail(String),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Whose login it was.
    pub conn: ConnRef,
    /// SMTP or POP3.
    pub service: Service,
    /// The user name as the client gave it.
    pub login: String,
    /// The client's address.
    pub ip: IpAddr,
    /// The outcome. A banned address always gets [`Verdict::Bad`], right password or not.
    pub verdict: Verdict,
    /// The address is banned (this failure started the ban, or it already was): the session
    /// must be closed after its reply.
    pub banned: bool,
}
