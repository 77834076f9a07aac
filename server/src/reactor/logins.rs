//! The reactor's side of logins: starting the [`Authenticator`], handing a session's `Authenticate` action to the pool, and giving each answer
//! back to its session when it is due (failures after the failure delay), closing the
//! session of a banned address.
//!
//! Owns: the glue between sessions and [`crate::auth`]. Must not: verify anything itself,
//! or wait: answers come through the Waker and the reactor's wake-up deadline.

use std::io;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mio::Waker;
use net::ConnRef;
use proto::sasl::Secret;
use proto::smtp::server::auth::{AuthOutcome, UserLookup};

use super::{Conn, Server, ServerConfig};
use crate::auth::{Answer, Authenticator, LookupRequest, Request, Service, Verdict};

/// Starts the login pool when there are accounts (loads the bans of the last run).
pub(super) fn start(
    config: &mut ServerConfig,
    waker: &Arc<Waker>,
) -> io::Result<Option<Authenticator>> {
    let Some(service) = config.auth.take() else {
        return Ok(None);
    };
    Authenticator::spawn(
        service.pool,
        service.backend,
        waker.clone(),
        SystemTime::now(),
    )
    .map(Some)
    .map_err(io::Error::other)
}

/// Hands a session's login to the pool (or answers `454` at once without one).
pub(super) fn submit(
    auth: &mut Option<Authenticator>,
    conn: &mut Conn,
    conn_ref: ConnRef,
    user: String,
    password: Secret,
    now: Instant,
) {
    let Some(auth) = auth else {
        conn.session.handle_auth(AuthOutcome::TempFail, now);
        return;
    };
    let req = Request {
        conn: conn_ref,
        service: Service::Smtp,
        user,
        password: password.take(),
        ip: conn.session.peer().ip(),
    };
    auth.submit(req, now, SystemTime::now());
}

/// Hands a session's recipient look-up (a user perhaps known to LDAP only) to the pool.
pub(super) fn lookup(
    auth: &Option<Authenticator>,
    conn: &mut Conn,
    conn_ref: ConnRef,
    name: String,
    now: Instant,
) {
    let queued = auth.as_ref().is_some_and(|a| {
        a.submit_lookup(LookupRequest {
            conn: conn_ref,
            name,
        })
    });
    if !queued {
        conn.session.handle_user_lookup(UserLookup::TempFail, now);
    }
}

/// The session's view of an answer.
fn outcome(answer: Answer) -> AuthOutcome {
    match answer.verdict {
        _ if answer.banned => AuthOutcome::Banned,
        Verdict::Ok { user } => AuthOutcome::Ok(user),
        Verdict::Bad => AuthOutcome::Bad,
        Verdict::TempFail(_) => AuthOutcome::TempFail,
    }
}

impl Server {
    /// Takes the pool's answers that are due and gives each to its session.
    pub(super) fn login_answers(&mut self, now: Instant) {
        let Some(auth) = &mut self.auth else {
            return;
        };
        auth.collect(now, SystemTime::now());
        self.stats.set_bans_active(auth.bans().len());
        let mut due = Vec::new();
        while let Some(a) = auth.poll_answer(now) {
            due.push(a);
        }
        for answer in due {
            if crate::pop3::owns_conn(&answer.conn) {
                self.with_pop3(|p, ctx| p.login_answer(answer, now, ctx));
                continue;
            }
            let ConnRef { key, generation } = answer.conn;
            match self.conns.get_mut(key) {
                Some(conn) if conn.generation == generation => match answer.service {
                    Service::Smtp => {
                        conn.session.handle_auth(outcome(answer), now);
                        self.drive(key, now);
                    }
                    Service::Pop3 => {
                        log::error!("a POP3 login answer for an SMTP session: dropped");
                    }
                },
                _ => {} // The client left before its answer came.
            }
        }
        let Some(auth) = &mut self.auth else {
            return;
        };
        let mut looked_up = Vec::new();
        while let Some(l) = auth.poll_lookup() {
            looked_up.push(l);
        }
        for l in looked_up {
            let ConnRef { key, generation } = l.conn;
            if let Some(conn) = self.conns.get_mut(key)
                && conn.generation == generation
            {
                let found = match l.found {
                    Ok(true) => UserLookup::Found,
                    Ok(false) => UserLookup::Missing,
                    Err(e) => {
                        log::warn!("LDAP look-up for a recipient failed: {e}");
                        UserLookup::TempFail
                    }
                };
                conn.session.handle_user_lookup(found, now);
                self.drive(key, now);
            }
        }
    }
}
