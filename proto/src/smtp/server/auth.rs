//! SMTP AUTH (RFC 4954) for the server session: when it is offered, the SASL exchange
//! (`PLAIN` with or without an initial response, `LOGIN`, `*` to cancel) up to the
//! credentials the driver must verify, and the answer it gives back.
//!
//! Pure: the session calls [`start`] for an `AUTH` command and [`respond`] for each line of
//! the exchange; each returns the next [`Step`]. Must not: check a password, count failures
//! or decide what an authenticated client may do (the session does).

use super::reply::{self, Reply};
use crate::sasl::{self, Credentials, Mechanism, SaslError, Secret};

/// How SMTP AUTH is offered (all off by default: no accounts, no AUTH).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// There are accounts to log in with: AUTH may be offered.
    pub enabled: bool,
    /// Offer it on unencrypted connections from any address (`--allow-plaintext-auth`);
    /// otherwise only over TLS and to loopback clients.
    pub allow_plaintext: bool,
    /// Name the user in the `Received:` header (`--received-auth-user`).
    pub received_user: bool,
}

/// The driver's answer to `Action::Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Logged in as this user (the canonical name).
    Ok(String),
    /// Wrong user name or password: `535 5.7.8`.
    Bad,
    /// The client's address is banned (this failure banned it, or it already was):
    /// `535 5.7.8`, then `421 4.7.0` and the session ends.
    Banned,
    /// The password could not be checked now: `454 4.7.0`.
    TempFail,
}

/// Where a SASL exchange stands, waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// `AUTH PLAIN` without an initial response: the `PLAIN` message comes next.
    Plain,
    /// `AUTH LOGIN`: the user name comes next.
    LoginUser,
    /// `AUTH LOGIN`, user name given: the password comes next.
    LoginPassword(String),
}

/// What the session does next.
#[derive(Debug)]
pub enum Step {
    /// Send `334 <challenge>` and wait for the client's line in this state.
    Challenge(&'static str, Exchange),
    /// Verify these credentials (the driver answers with an [`AuthOutcome`]).
    Verify(Credentials),
    /// The exchange is over: send this error reply.
    Fail(Reply),
}

/// The `AUTH mechanism [initial]` command.
pub fn start(mechanism: &str, initial: Option<&str>) -> Step {
    let Some(m) = Mechanism::parse(mechanism) else {
        return Step::Fail(reply::AUTH_MECHANISM);
    };
    match (m, initial) {
        (Mechanism::Plain, None) => Step::Challenge("", Exchange::Plain),
        (Mechanism::Plain, Some(ir)) => respond(Exchange::Plain, ir),
        (Mechanism::Login, None) => Step::Challenge(sasl::LOGIN_USERNAME, Exchange::LoginUser),
        (Mechanism::Login, Some(ir)) => respond(Exchange::LoginUser, ir),
    }
}

/// One line of the client's during an exchange (the line end removed).
pub fn respond(exchange: Exchange, line: &str) -> Step {
    let message = match sasl::decode(line) {
        Ok(m) => m,
        Err(e) => return Step::Fail(failure(e)),
    };
    let result = match exchange {
        Exchange::Plain => sasl::plain(&message).map(Step::Verify),
        Exchange::LoginUser => sasl::login_user(&message)
            .map(|u| Step::Challenge(sasl::LOGIN_PASSWORD, Exchange::LoginPassword(u))),
        Exchange::LoginPassword(user) => Ok(Step::Verify(Credentials {
            user,
            password: Secret(message),
        })),
    };
    result.unwrap_or_else(|e| Step::Fail(failure(e)))
}

fn failure(e: SaslError) -> Reply {
    match e {
        SaslError::Cancelled => reply::AUTH_CANCELLED,
        SaslError::Malformed => reply::AUTH_BAD_RESPONSE,
    }
}
