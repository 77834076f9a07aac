//! The live transaction stream: turns what a session did since the last look (its command
//! transcript and the reply octets it queued) into trace events for the control socket's
//! subscribers ([`crate::control::Control::publish`]).
//!
//! Owns: which octets of a session's output were already traced, the line splitting, and the
//! masking of AUTH arguments. Must not: run when nobody subscribes (the reactor checks
//! [`crate::control::Control::tracing`] first, so with no subscriber the cost is that check),
//! or read the clock more than once per call.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::smtp::server::session::Session;

use crate::control::Control;
use crate::control::wire::{Direction, TraceEvent};

/// Where the trace of one session stands.
#[derive(Debug, Default)]
pub struct Cursor {
    /// Octets of output (sent and pending) already traced.
    traced_out: u64,
}

impl Cursor {
    /// A cursor for a session whose output so far is not to be traced (a subscriber arrived
    /// in the middle of it).
    pub fn skipping(session: &Session) -> Cursor {
        Cursor {
            traced_out: produced(session),
        }
    }
}

/// Octets the session has queued as replies so far.
fn produced(session: &Session) -> u64 {
    session.counts().bytes_out + session.poll_output().len() as u64
}

/// Publishes the commands the session handled and the replies it queued since the last call.
pub fn collect(session: &mut Session, cursor: &mut Cursor, id: u64, control: &mut Control) {
    let peer = session.peer();
    let mut time_ms = None;
    let mut stamp = || {
        *time_ms.get_or_insert_with(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    };
    while let Some(line) = session.poll_command() {
        let line = mask_auth(&String::from_utf8_lossy(&line));
        control.publish(event(stamp(), id, peer, Direction::Client, line));
    }
    let total = produced(session);
    let new = total.saturating_sub(cursor.traced_out);
    cursor.traced_out = total;
    if new == 0 {
        return;
    }
    let pending = session.poll_output();
    let start = pending
        .len()
        .saturating_sub(usize::try_from(new).unwrap_or(usize::MAX));
    let time = stamp();
    for line in pending[start..].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(line).into_owned();
        control.publish(event(time, id, peer, Direction::Server, text));
    }
}

fn event(
    time_ms: u64,
    session: u64,
    client: SocketAddr,
    dir: Direction,
    line: String,
) -> TraceEvent {
    TraceEvent {
        time_ms,
        session,
        client,
        dir,
        line,
    }
}

/// `AUTH PLAIN dGVzdA==` → `AUTH PLAIN ***`: credentials never reach the trace.
fn mask_auth(line: &str) -> String {
    let mut words = line.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some(verb), Some(mech), Some(_)) if verb.eq_ignore_ascii_case("AUTH") => {
            format!("{verb} {mech} ***")
        }
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_arguments_are_masked() {
        assert_eq!(mask_auth("AUTH PLAIN dGVzdA=="), "AUTH PLAIN ***");
        assert_eq!(mask_auth("auth login x y"), "auth login ***");
        assert_eq!(mask_auth("AUTH LOGIN"), "AUTH LOGIN");
        assert_eq!(mask_auth("MAIL FROM:<a@b>"), "MAIL FROM:<a@b>");
    }
}
