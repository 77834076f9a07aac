//! Telemetry: the reactor's counters ([`Stats`]) and the log lines, both made from the typed
//! values the sessions report ([`Event`], [`Counts`]) and from the reactor's own doings
//! (refused connections, group-commit batches).
//!
//! Owns: what is counted and the text of the per-connection log lines (`connect from`,
//! `queued`/`rejected`, `TLS established`, `timeout after`, `disconnect from ... helo=1 ...`).
//! Must not: decide anything about a connection, or do I/O other than emitting log records.

use std::net::SocketAddr;
use std::time::Duration;

use proto::smtp::server::session::{Counts, Event, RcptRefusal, TxFailure};

/// Why the reactor refused a connection before any session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` reached (`421 4.3.2`).
    TooManyConnections,
    /// `--max-per-ip` reached for an untrusted address (`421 4.7.0`).
    TooManyFromAddress,
    /// The address is banned after failed logins (`421 4.7.0`).
    Banned,
}

/// Counters for the whole server, updated by the reactor.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Sessions begun.
    pub connections: u64,
    /// Connections refused at once because of `--max-connections`.
    pub refused_too_many: u64,
    /// Connections refused at once because of `--max-per-ip`.
    pub refused_per_ip: u64,
    /// Connections refused at once because their address is banned (failed logins).
    pub refused_banned: u64,
    /// Successful logins (SMTP AUTH).
    pub auth_ok: u64,
    /// Refused logins (SMTP AUTH: wrong credentials, banned, or not checked).
    pub auth_refused: u64,
    /// Sessions whose connection is still open.
    pub active: u64,
    /// Messages stored (`250 ... queued as`).
    pub accepted: u64,
    /// Messages refused after DATA (size, hops, storage).
    pub refused_messages: u64,
    /// Recipients accepted.
    pub rcpts_accepted: u64,
    /// Recipients refused.
    pub rcpts_refused: u64,
    /// Octets received from clients (sessions that ended).
    pub bytes_in: u64,
    /// Octets of replies sent (sessions that ended).
    pub bytes_out: u64,
    /// Sessions ended by the idle timeout.
    pub timeouts: u64,
    /// TLS handshakes that finished.
    pub tls_handshakes: u64,
    /// Group-commit batches (one `new/` fsync each).
    pub commit_batches: u64,
    /// Messages in those batches (their sum: the mean is this over `commit_batches`).
    pub committed_in_batches: u64,
    /// Commits whose latency was measured (from hand-off to the group commit to its result).
    pub commit_latency_count: u64,
    /// The sum of those latencies.
    pub commit_latency_sum: Duration,
}

impl Stats {
    /// Counts one session event.
    pub fn record(&mut self, event: &Event) {
        match event {
            Event::Connected => {
                self.connections += 1;
                self.active += 1;
            }
            Event::TxCommitted { .. } => self.accepted += 1,
            Event::TxFailed(_) => self.refused_messages += 1,
            Event::RcptAccepted => self.rcpts_accepted += 1,
            Event::RcptRefused(_) => self.rcpts_refused += 1,
            Event::Timeout { .. } => self.timeouts += 1,
            Event::TlsEstablished(_) => self.tls_handshakes += 1,
            Event::Authenticated { .. } => self.auth_ok += 1,
            Event::AuthRefused(_) => self.auth_refused += 1,
            Event::Transition { .. }
            | Event::TxBegin
            | Event::DiscardedAfterStartTls(_)
            | Event::NotSmtp
            | Event::TooManyErrors
            | Event::LostConnection { .. }
            | Event::Closed => {}
        }
    }

    /// A connection was refused before its session began.
    pub fn refused(&mut self, why: Refusal) {
        match why {
            Refusal::TooManyConnections => self.refused_too_many += 1,
            Refusal::TooManyFromAddress => self.refused_per_ip += 1,
            Refusal::Banned => self.refused_banned += 1,
        }
    }

    /// A connection whose session began is gone; `counts` is what its session did.
    pub fn connection_closed(&mut self, counts: &Counts) {
        self.active = self.active.saturating_sub(1);
        self.bytes_in += counts.bytes_in;
        self.bytes_out += counts.bytes_out;
    }

    /// A group-commit batch of `n` messages was published.
    pub fn commit_batch(&mut self, n: usize) {
        self.commit_batches += 1;
        self.committed_in_batches += n as u64;
    }

    /// One commit took `latency`.
    pub fn commit_latency(&mut self, latency: Duration) {
        self.commit_latency_count += 1;
        self.commit_latency_sum += latency;
    }

    /// Mean messages per group-commit batch.
    pub fn mean_batch(&self) -> Option<f64> {
        (self.commit_batches > 0)
            .then(|| self.committed_in_batches as f64 / self.commit_batches as f64)
    }

    /// Mean commit latency.
    pub fn mean_commit_latency(&self) -> Option<Duration> {
        let n = u32::try_from(self.commit_latency_count).ok()?;
        (n > 0).then(|| self.commit_latency_sum / n)
    }
}

/// Log target of the session's lines: the module that wrote them before they became events, so
/// `RUST_LOG` filters keep working.
const SESSION: &str = "smtpd::session";
/// Log target of the `connect from` line (the reactor wrote it).
const REACTOR: &str = "smtpd::reactor";

/// Logs one session event of the client at `peer` (the text of these lines is what operators
/// and the tests grep).
pub fn log_event(peer: SocketAddr, event: &Event) {
    let ip = peer.ip();
    match event {
        Event::Connected => log::info!(target: REACTOR, "connect from [{ip}]:{}", peer.port()),
        Event::Transition { from, to } => log::debug!(target: SESSION, "[{ip}] {from} -> {to}"),
        Event::RcptRefused(RcptRefusal::RelayDenied(to)) => {
            log::info!(target: SESSION, "reject: RCPT from [{ip}]: relay access denied: to={to}");
        }
        Event::RcptRefused(RcptRefusal::UnknownUser(to)) => {
            log::info!(target: SESSION, "reject: RCPT from [{ip}]: user unknown: to={to}");
        }
        Event::RcptRefused(RcptRefusal::MailboxFull(to)) => {
            log::info!(target: SESSION, "reject: RCPT from [{ip}]: mailbox full: to={to}");
        }
        Event::TxCommitted {
            id,
            from,
            rcpts,
            size,
        } => {
            log::info!(target: SESSION, "{id}: from={from}, nrcpt={rcpts}, size={size}, client=[{ip}]")
        }
        Event::TxFailed(TxFailure::Begin(e)) => {
            log::warn!(target: SESSION, "{peer}: cannot create queue file: {e:?}");
        }
        Event::TxFailed(TxFailure::TooBig { id, size, limit }) => {
            log::info!(target: SESSION, "{id}: rejected: message size {size} exceeds limit {limit}, client=[{ip}]")
        }
        Event::TxFailed(TxFailure::TooManyHops {
            id,
            hops,
            limit,
            from,
        }) => log::info!(
            target: SESSION,
            "{id}: rejected: {hops} Received: headers exceed the hop limit {limit} (mail loop?), from={from}, client=[{ip}]"
        ),
        Event::TxFailed(TxFailure::DeliveredToLoop { id, address, from }) => log::info!(
            target: SESSION,
            "{id}: rejected: mail loop: already delivered to {address} (Delivered-To), from={from}, client=[{ip}]"
        ),
        Event::TxFailed(TxFailure::MailboxFull {
            id,
            addresses,
            size,
        }) => log::info!(
            target: SESSION,
            "{id}: rejected: mailbox full: a message of {size} octets would exceed the quota of {}, client=[{ip}]",
            addresses.join(", ")
        ),
        Event::TxFailed(TxFailure::Store { id, error }) => {
            log::warn!(target: SESSION, "{id}: not stored ({error:?}), client=[{ip}]");
        }
        Event::DiscardedAfterStartTls(n) => {
            log::warn!(target: SESSION, "[{ip}] discarded {n} octets sent after STARTTLS");
        }
        Event::TlsEstablished(info) => {
            log::info!(target: SESSION, "[{ip}] TLS established: {} {}", info.version, info.cipher);
        }
        Event::NotSmtp => log::warn!(target: SESSION, "non-SMTP command from [{ip}]"),
        Event::TooManyErrors => log::info!(target: SESSION, "too many errors from [{ip}]"),
        Event::Timeout { state } => {
            log::info!(target: SESSION, "timeout after {state} from [{ip}]")
        }
        Event::LostConnection { state } => {
            log::info!(target: SESSION, "lost connection after {state} from [{ip}]");
        }
        Event::Authenticated { user } => {
            log::info!(target: SESSION, "[{ip}] AUTH ok: user={user}");
        }
        Event::AuthRefused(outcome) => {
            log::info!(target: SESSION, "[{ip}] AUTH refused: {outcome:?}");
        }
        Event::TxBegin | Event::RcptAccepted | Event::RcptRefused(_) | Event::Closed => {}
    }
}

/// The Postfix-style command counts of the disconnect line: `helo=1 mail=1 ... accepted=1`
/// (zero counts left out, `accepted` always given).
pub fn summary(c: &Counts) -> String {
    let mut parts = Vec::new();
    for (name, n) in [
        ("helo", c.helo),
        ("ehlo", c.ehlo),
        ("mail", c.mail),
        ("rcpt", c.rcpt),
        ("data", c.data),
        ("bdat", c.bdat),
        ("rset", c.rset),
        ("quit", c.quit),
        ("other", c.other),
        ("errors", c.errors),
    ] {
        if n > 0 {
            parts.push(format!("{name}={n}"));
        }
    }
    parts.push(format!("accepted={}", c.accepted));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::smtp::server::session::{StoreError, TlsInfo};

    #[test]
    fn summary_leaves_out_zero_counts() {
        let c = Counts {
            helo: 1,
            mail: 2,
            rcpt: 3,
            errors: 1,
            accepted: 1,
            ..Counts::default()
        };
        assert_eq!(summary(&c), "helo=1 mail=2 rcpt=3 errors=1 accepted=1");
        assert_eq!(summary(&Counts::default()), "accepted=0");
    }

    #[test]
    fn events_feed_the_counters() {
        let mut s = Stats::default();
        for e in [
            Event::Connected,
            Event::TxBegin,
            Event::RcptAccepted,
            Event::RcptRefused(RcptRefusal::TooMany),
            Event::TlsEstablished(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "X".into(),
            }),
            Event::TxFailed(TxFailure::Begin(StoreError::Full)),
            Event::Timeout { state: "idle" },
            Event::Closed,
        ] {
            s.record(&e);
        }
        s.refused(Refusal::TooManyConnections);
        s.refused(Refusal::TooManyFromAddress);
        s.refused(Refusal::TooManyFromAddress);
        assert_eq!(
            (s.connections, s.active, s.rcpts_accepted, s.rcpts_refused),
            (1, 1, 1, 1)
        );
        assert_eq!(
            (s.tls_handshakes, s.refused_messages, s.timeouts),
            (1, 1, 1)
        );
        assert_eq!((s.refused_too_many, s.refused_per_ip), (1, 2));
        s.connection_closed(&Counts {
            bytes_in: 10,
            bytes_out: 20,
            ..Counts::default()
        });
        assert_eq!((s.active, s.bytes_in, s.bytes_out), (0, 10, 20));
    }

    #[test]
    fn commit_means() {
        let mut s = Stats::default();
        assert_eq!(s.mean_batch(), None);
        assert_eq!(s.mean_commit_latency(), None);
        s.commit_batch(3);
        s.commit_batch(1);
        s.commit_latency(Duration::from_millis(2));
        s.commit_latency(Duration::from_millis(4));
        assert_eq!(s.mean_batch(), Some(2.0));
        assert_eq!(s.mean_commit_latency(), Some(Duration::from_millis(3)));
    }
}
