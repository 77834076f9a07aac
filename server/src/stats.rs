//! Telemetry: the reactor's counters ([`Stats`], with its serialisable [`StatsSnapshot`]) and
//! the log lines, both made from the typed values the sessions report ([`Event`], [`Counts`])
//! and from the reactor's own doings (refused connections, group-commit batches and latency,
//! local deliveries).
//!
//! Owns: what is counted (and the reason labels) and the text of the per-connection log lines (`connect from`,
//! `queued`/`rejected`, `TLS established`, `timeout after`, `disconnect from ... helo=1 ...`).
//! Must not: decide anything about a connection, or do I/O other than emitting log records.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use maildir_core::metrics::{Count, Histogram, HistogramSnapshot};
use proto::smtp::server::session::{Counts, Event, RcptRefusal, TxFailure};
use serde::{Deserialize, Serialize};

/// Why the reactor refused a connection before any session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` reached (`421 4.3.2`).
    TooManyConnections,
    /// `--max-per-ip` reached for an untrusted address (`421 4.7.0`).
    TooManyFromAddress,
}

/// Why a message was refused after DATA (the `reason` label of
/// `smtpd_messages_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRefusal {
    /// Over `--max-size` (`552 5.3.4`).
    Size,
    /// Over `--max-hops` (`554 5.4.6`).
    Hops,
    /// A `Delivered-To:` loop (`554 5.4.6`).
    Loop,
    /// A local user's quota (`452 4.2.2`).
    Quota,
    /// The queue file could not be created, written or committed (`451`/`452`).
    Storage,
}

impl MessageRefusal {
    /// Every reason, in the order of [`Stats::messages_refused`].
    pub const ALL: [MessageRefusal; 5] = [
        MessageRefusal::Size,
        MessageRefusal::Hops,
        MessageRefusal::Loop,
        MessageRefusal::Quota,
        MessageRefusal::Storage,
    ];

    /// Why a failed transaction failed.
    pub fn of(failure: &TxFailure) -> MessageRefusal {
        match failure {
            TxFailure::TooBig { .. } => MessageRefusal::Size,
            TxFailure::TooManyHops { .. } => MessageRefusal::Hops,
            TxFailure::DeliveredToLoop { .. } => MessageRefusal::Loop,
            TxFailure::MailboxFull { .. } => MessageRefusal::Quota,
            TxFailure::Begin(_) | TxFailure::Store { .. } => MessageRefusal::Storage,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            MessageRefusal::Size => "size",
            MessageRefusal::Hops => "hops",
            MessageRefusal::Loop => "loop",
            MessageRefusal::Quota => "quota",
            MessageRefusal::Storage => "storage",
        }
    }
}

/// Why a recipient was refused: the label values of `smtpd_recipients_refused_total`, in the
/// order of [`Stats::rcpts_refused`].
pub const RCPT_REFUSALS: [&str; 7] = [
    "no_transaction",
    "too_many",
    "smtputf8",
    "no_postmaster",
    "relay_denied",
    "unknown_user",
    "mailbox_full",
];

/// The index of a refusal's label in [`RCPT_REFUSALS`].
fn rcpt_refusal(r: &RcptRefusal) -> usize {
    match r {
        RcptRefusal::NoTransaction => 0,
        RcptRefusal::TooMany => 1,
        RcptRefusal::NeedSmtputf8 => 2,
        RcptRefusal::NoPostmaster => 3,
        RcptRefusal::RelayDenied(_) => 4,
        RcptRefusal::UnknownUser(_) => 5,
        RcptRefusal::MailboxFull(_) => 6,
    }
}

/// Bounds of the commit latency histogram, in microseconds (0.5 ms to 2.5 s).
const COMMIT_LATENCY_US: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000,
];
/// Bounds of the batch size histogram, in messages (the default `max_batch` is 512).
const BATCH_SIZE: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
/// Bounds of the transaction duration histogram (MAIL to the final reply), in microseconds
/// (1 ms to 5 min, the default command timeout).
const TX_DURATION_US: [u64; 12] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// Counters for the whole server since it started. The reactor updates them (and issue 13's
/// authentication through [`Stats::auth_succeeded`], [`Stats::auth_failed`] and
/// [`Stats::set_bans_active`]); other threads (the metrics exporter, the control socket) read
/// them at any time through an `Arc`: every field is an atomic, so reading never makes the
/// reactor wait. [`Stats::snapshot`] is the serialisable picture (`smtpctl show stats`).
#[derive(Debug)]
pub struct Stats {
    /// When the server started (wall clock, for the start time shown).
    started: SystemTime,
    /// When the server started (monotonic, for the uptime).
    started_at: Instant,
    /// Sessions begun.
    pub connections: Count,
    /// Connections refused at once because of `--max-connections`.
    pub refused_too_many: Count,
    /// Connections refused at once because of `--max-per-ip`.
    pub refused_per_ip: Count,
    /// Sessions whose connection is still open (a gauge).
    pub active: Count,
    /// Messages stored (`250 ... queued as`).
    pub accepted: Count,
    /// Octets of the messages stored (as received, dot-unstuffed).
    pub accepted_bytes: Count,
    /// Recipients of the messages stored.
    pub accepted_rcpts: Count,
    /// Messages refused after DATA, by [`MessageRefusal`] (index: position in
    /// [`MessageRefusal::ALL`]).
    pub messages_refused: [Count; 5],
    /// Recipients accepted (RCPT answered 250, whether the message was then stored or not).
    pub rcpts_accepted: Count,
    /// Recipients refused, by reason (index: position in [`RCPT_REFUSALS`]).
    pub rcpts_refused: [Count; 7],
    /// Octets received from clients (counted when the session ends).
    pub bytes_in: Count,
    /// Octets of replies sent (counted when the session ends).
    pub bytes_out: Count,
    /// Sessions ended by the idle timeout.
    pub timeouts: Count,
    /// TLS handshakes that finished.
    pub tls_handshakes: Count,
    /// Group-commit batches (one `new/` fsync each).
    pub commit_batches: Count,
    /// Messages in those batches (their sum: the mean is this over `commit_batches`).
    pub committed_in_batches: Count,
    /// Copies delivered to local users' Maildirs (durable).
    pub local_deliveries: Count,
    /// Successful authentications (issue 13).
    pub auth_successes: Count,
    /// Failed authentications (issue 13).
    pub auth_failures: Count,
    /// Client addresses banned now (issue 13; a gauge).
    pub bans_active: Count,
    /// From the hand-off to the group commit to the result (submit → durable), in seconds.
    pub commit_latency: Histogram,
    /// Messages per group-commit batch.
    pub batch_size: Histogram,
    /// From MAIL accepted to the final reply after the data (stored or refused), in seconds.
    pub tx_duration: Histogram,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    /// All zero, started now.
    pub fn new() -> Stats {
        Stats {
            started: SystemTime::now(),
            started_at: Instant::now(),
            connections: Count::default(),
            refused_too_many: Count::default(),
            refused_per_ip: Count::default(),
            active: Count::default(),
            accepted: Count::default(),
            accepted_bytes: Count::default(),
            accepted_rcpts: Count::default(),
            messages_refused: Default::default(),
            rcpts_accepted: Count::default(),
            rcpts_refused: Default::default(),
            bytes_in: Count::default(),
            bytes_out: Count::default(),
            timeouts: Count::default(),
            tls_handshakes: Count::default(),
            commit_batches: Count::default(),
            committed_in_batches: Count::default(),
            local_deliveries: Count::default(),
            auth_successes: Count::default(),
            auth_failures: Count::default(),
            bans_active: Count::default(),
            commit_latency: Histogram::micros(&COMMIT_LATENCY_US),
            batch_size: Histogram::new(&BATCH_SIZE, 1.0),
            tx_duration: Histogram::micros(&TX_DURATION_US),
        }
    }

    /// Counts one session event.
    pub fn record(&self, event: &Event) {
        match event {
            Event::Connected => {
                self.connections.inc();
                self.active.inc();
            }
            Event::TxCommitted { rcpts, size, .. } => {
                self.accepted.inc();
                self.accepted_bytes.add(*size);
                self.accepted_rcpts.add(*rcpts as u64);
            }
            Event::TxFailed(f) => {
                let why = MessageRefusal::of(f);
                if let Some(c) = self.messages_refused.get(why as usize) {
                    c.inc();
                }
            }
            Event::RcptAccepted => self.rcpts_accepted.inc(),
            Event::RcptRefused(r) => {
                if let Some(c) = self.rcpts_refused.get(rcpt_refusal(r)) {
                    c.inc();
                }
            }
            Event::Timeout { .. } => self.timeouts.inc(),
            Event::TlsEstablished(_) => self.tls_handshakes.inc(),
            Event::Transition { .. }
            | Event::TxBegin
            | Event::DiscardedAfterStartTls(_)
            | Event::NotSmtp
            | Event::TooManyErrors
            | Event::LostConnection { .. }
            | Event::Closed => {}
        }
    }

    /// Counts one session event and times its transaction: `tx` is the session's, `now` when
    /// the event was drained (the same reactor turn that made it).
    pub fn record_timed(&self, event: &Event, tx: &mut TxTimer, now: Instant) {
        match event {
            Event::TxBegin => tx.0 = Some(now),
            Event::TxCommitted { .. } | Event::TxFailed(_) => {
                if let Some(began) = tx.0.take() {
                    self.tx_duration
                        .observe_duration(now.saturating_duration_since(began));
                }
            }
            _ => {}
        }
        self.record(event);
    }

    /// A connection was refused before its session began.
    pub fn refused(&self, why: Refusal) {
        match why {
            Refusal::TooManyConnections => self.refused_too_many.inc(),
            Refusal::TooManyFromAddress => self.refused_per_ip.inc(),
        }
    }

    /// A connection whose session began is gone; `counts` is what its session did.
    pub fn connection_closed(&self, counts: &Counts) {
        self.active.dec();
        self.bytes_in.add(counts.bytes_in);
        self.bytes_out.add(counts.bytes_out);
    }

    /// A group-commit batch of `n` messages was published.
    pub fn commit_batch(&self, n: usize) {
        self.commit_batches.inc();
        self.committed_in_batches.add(n as u64);
        self.batch_size.observe(n as u64);
    }

    /// One commit took `latency` (submit → durable).
    pub fn commit_latency(&self, latency: Duration) {
        self.commit_latency.observe_duration(latency);
    }

    /// `n` local copies became durable in their users' Maildirs.
    pub fn local_delivered(&self, n: usize) {
        self.local_deliveries.add(n as u64);
    }

    /// A client authenticated.
    pub fn auth_succeeded(&self) {
        self.auth_successes.inc();
    }

    /// An authentication failed.
    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// `n` client addresses are banned now.
    pub fn set_bans_active(&self, n: usize) {
        self.bans_active.set(n as u64);
    }

    /// Mean messages per group-commit batch.
    pub fn mean_batch(&self) -> Option<f64> {
        let batches = self.commit_batches.get();
        (batches > 0).then(|| self.committed_in_batches.get() as f64 / batches as f64)
    }

    /// Mean commit latency.
    pub fn mean_commit_latency(&self) -> Option<Duration> {
        self.commit_latency
            .snapshot()
            .mean()
            .map(Duration::from_secs_f64)
    }

    /// When the server started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// How long the server has been running at `now`.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started_at)
    }

    /// The figures now, for `smtpctl show stats` (people and `--json`).
    pub fn snapshot(&self, now: Instant) -> StatsSnapshot {
        let by = |labels: &[&str], counts: &[Count]| -> BTreeMap<String, u64> {
            labels
                .iter()
                .zip(counts)
                .map(|(l, c)| ((*l).to_owned(), c.get()))
                .collect()
        };
        let reasons: Vec<&str> = MessageRefusal::ALL.iter().map(|r| r.label()).collect();
        StatsSnapshot {
            started_unix_secs: self
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            uptime_secs: self.uptime(now).as_secs(),
            connections: self.connections.get(),
            connections_refused: BTreeMap::from([
                ("max_connections".to_owned(), self.refused_too_many.get()),
                ("max_per_ip".to_owned(), self.refused_per_ip.get()),
            ]),
            sessions_active: self.active.get(),
            messages_accepted: self.accepted.get(),
            messages_accepted_bytes: self.accepted_bytes.get(),
            messages_accepted_rcpts: self.accepted_rcpts.get(),
            messages_refused: by(&reasons, &self.messages_refused),
            rcpts_accepted: self.rcpts_accepted.get(),
            rcpts_refused: by(&RCPT_REFUSALS, &self.rcpts_refused),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            timeouts: self.timeouts.get(),
            local_deliveries: self.local_deliveries.get(),
            commit_batches: self.commit_batches.get(),
            commit_batch_mean: self.mean_batch(),
            commit_latency: self.commit_latency.snapshot(),
            tx_duration: self.tx_duration.snapshot(),
            tls_handshakes: self.tls_handshakes.get(),
            auth_successes: self.auth_successes.get(),
            auth_failures: self.auth_failures.get(),
            bans_active: self.bans_active.get(),
        }
    }
}

/// When the transaction in progress of one session began (kept by the reactor per
/// connection, fed through [`Stats::record_timed`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct TxTimer(Option<Instant>);

/// What [`Stats`] held at one moment: `smtpctl show stats` prints it, `--json` serialises it.
/// Maps by reason list every reason, zeros included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Start time, seconds since the Unix epoch.
    pub started_unix_secs: u64,
    /// Seconds since the start.
    pub uptime_secs: u64,
    /// Sessions begun.
    pub connections: u64,
    /// Connections refused before a session began, by limit (`max_connections`,
    /// `max_per_ip`).
    pub connections_refused: BTreeMap<String, u64>,
    /// Sessions open now.
    pub sessions_active: u64,
    /// Messages stored.
    pub messages_accepted: u64,
    /// Their octets.
    pub messages_accepted_bytes: u64,
    /// Their recipients.
    pub messages_accepted_rcpts: u64,
    /// Messages refused after DATA, by reason (`size`, `hops`, `loop`, `quota`, `storage`).
    pub messages_refused: BTreeMap<String, u64>,
    /// Recipients accepted.
    pub rcpts_accepted: u64,
    /// Recipients refused, by reason ([`RCPT_REFUSALS`]).
    pub rcpts_refused: BTreeMap<String, u64>,
    /// Octets received by sessions that ended.
    pub bytes_in: u64,
    /// Octets sent by sessions that ended.
    pub bytes_out: u64,
    /// Sessions ended by the idle timeout.
    pub timeouts: u64,
    /// Copies delivered to local users.
    pub local_deliveries: u64,
    /// Group-commit batches.
    pub commit_batches: u64,
    /// Mean messages per batch (none before the first).
    pub commit_batch_mean: Option<f64>,
    /// Commit latency (submit → durable), seconds.
    pub commit_latency: HistogramSnapshot,
    /// Transaction duration (MAIL → final reply), seconds.
    pub tx_duration: HistogramSnapshot,
    /// TLS handshakes finished.
    pub tls_handshakes: u64,
    /// Successful authentications.
    pub auth_successes: u64,
    /// Failed authentications.
    pub auth_failures: u64,
    /// Addresses banned now.
    pub bans_active: u64,
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
    use maildir_core::{ForwardPath, ReversePath};
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
        let s = Stats::default();
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
        let snap = s.snapshot(Instant::now());
        assert_eq!(
            (snap.connections, snap.sessions_active, snap.rcpts_accepted),
            (1, 1, 1)
        );
        assert_eq!(snap.rcpts_refused["too_many"], 1);
        assert_eq!(snap.rcpts_refused.values().sum::<u64>(), 1);
        assert_eq!(snap.messages_refused["storage"], 1);
        assert_eq!(snap.messages_refused.values().sum::<u64>(), 1);
        assert_eq!((snap.tls_handshakes, snap.timeouts), (1, 1));
        assert_eq!(snap.connections_refused["max_connections"], 1);
        assert_eq!(snap.connections_refused["max_per_ip"], 2);
        s.connection_closed(&Counts {
            bytes_in: 10,
            bytes_out: 20,
            ..Counts::default()
        });
        assert_eq!(
            (s.active.get(), s.bytes_in.get(), s.bytes_out.get()),
            (0, 10, 20)
        );
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let s = Stats::default();
        let from = ReversePath::Null;
        for f in [
            TxFailure::TooBig {
                id: "a".into(),
                size: 2,
                limit: 1,
            },
            TxFailure::TooManyHops {
                id: "a".into(),
                hops: 2,
                limit: 1,
                from: from.clone(),
            },
            TxFailure::DeliveredToLoop {
                id: "a".into(),
                address: "x@y".into(),
                from,
            },
            TxFailure::MailboxFull {
                id: "a".into(),
                addresses: vec![],
                size: 1,
            },
            TxFailure::Store {
                id: "a".into(),
                error: StoreError::Failed,
            },
        ] {
            s.record(&Event::TxFailed(f));
        }
        let snap = s.snapshot(Instant::now());
        let want: BTreeMap<String, u64> = ["hops", "loop", "quota", "size", "storage"]
            .into_iter()
            .map(|r| (r.to_owned(), 1))
            .collect();
        assert_eq!(snap.messages_refused, want);
        let to = ForwardPath::Postmaster;
        for r in [
            RcptRefusal::NoTransaction,
            RcptRefusal::TooMany,
            RcptRefusal::NeedSmtputf8,
            RcptRefusal::NoPostmaster,
            RcptRefusal::RelayDenied(to.clone()),
            RcptRefusal::UnknownUser(to.clone()),
            RcptRefusal::MailboxFull(to),
        ] {
            s.record(&Event::RcptRefused(r));
        }
        let snap = s.snapshot(Instant::now());
        assert_eq!(snap.rcpts_refused.len(), RCPT_REFUSALS.len());
        assert!(snap.rcpts_refused.values().all(|&n| n == 1));
    }

    #[test]
    fn accepted_messages_count_bytes_and_recipients_and_their_time() {
        let s = Stats::default();
        let mut tx = TxTimer::default();
        let t0 = Instant::now();
        let committed = |size| Event::TxCommitted {
            id: "x".into(),
            from: ReversePath::Null,
            rcpts: 2,
            size,
        };
        s.record_timed(&Event::TxBegin, &mut tx, t0);
        s.record_timed(&committed(100), &mut tx, t0 + Duration::from_millis(20));
        // A commit without a MAIL timed before it (cannot happen) is counted, not timed.
        s.record_timed(&committed(50), &mut tx, t0 + Duration::from_millis(30));
        let snap = s.snapshot(t0);
        assert_eq!(
            (
                snap.messages_accepted,
                snap.messages_accepted_bytes,
                snap.messages_accepted_rcpts
            ),
            (2, 150, 4)
        );
        assert_eq!(snap.tx_duration.count, 1);
        assert!((snap.tx_duration.sum - 0.020).abs() < 1e-9);
    }

    #[test]
    fn commit_means() {
        let s = Stats::default();
        assert_eq!(s.mean_batch(), None);
        assert_eq!(s.mean_commit_latency(), None);
        s.commit_batch(3);
        s.commit_batch(1);
        s.commit_latency(Duration::from_millis(2));
        s.commit_latency(Duration::from_millis(4));
        assert_eq!(s.mean_batch(), Some(2.0));
        assert_eq!(s.mean_commit_latency(), Some(Duration::from_millis(3)));
        assert_eq!(s.batch_size.snapshot().count, 2);
    }

    #[test]
    fn the_snapshot_is_json() {
        let s = Stats::default();
        s.local_delivered(3);
        s.auth_succeeded();
        s.auth_failed();
        s.auth_failed();
        s.set_bans_active(4);
        let t = Instant::now();
        let snap = s.snapshot(t + Duration::from_secs(90));
        assert!(snap.uptime_secs >= 90);
        let json = serde_json::to_string(&snap).expect("serialises");
        let back: StatsSnapshot = serde_json::from_str(&json).expect("parses back");
        assert_eq!(
            (
                back.local_deliveries,
                back.auth_successes,
                back.auth_failures,
                back.bans_active
            ),
            (3, 1, 2, 4)
        );
        assert!(json.contains(r#""messages_refused":{"hops":0,"#), "{json}");
    }
}
