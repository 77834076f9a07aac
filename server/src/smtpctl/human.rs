//! smtpctl's text for people: the counters, the sessions table, trace lines and the monitor's
//! per-second deltas.
//!
//! Owns: layout only. Must not: talk to the socket.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::control::wire::{Direction, SessionView, StatsView, TraceEvent};

/// A by-reason map as `total (reason n, reason n)`, zeros left out.
fn by_reason(m: &BTreeMap<String, u64>) -> String {
    let total: u64 = m.values().sum();
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

/// Sum of a by-reason map.
pub fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

/// `show stats` as aligned `name  value` lines.
pub fn stats(v: &StatsView) -> String {
    let s = &v.stats;
    let ms = |h: &maildir_core::metrics::HistogramSnapshot| {
        h.mean()
            .map_or("-".to_owned(), |m| format!("{:.2} ms", m * 1000.0))
    };
    let rows: Vec<(&str, String)> = vec![
        ("uptime", duration(s.uptime_secs)),
        (
            "accepting",
            if v.accepting { "yes" } else { "no (paused)" }.into(),
        ),
        ("connections", s.connections.to_string()),
        ("connections refused", by_reason(&s.connections_refused)),
        ("sessions active", s.sessions_active.to_string()),
        ("messages accepted", s.messages_accepted.to_string()),
        (
            "messages accepted bytes",
            s.messages_accepted_bytes.to_string(),
        ),
        ("messages refused", by_reason(&s.messages_refused)),
        ("recipients accepted", s.rcpts_accepted.to_string()),
        ("recipients refused", by_reason(&s.rcpts_refused)),
        ("local deliveries", s.local_deliveries.to_string()),
        ("bytes in", s.bytes_in.to_string()),
        ("bytes out", s.bytes_out.to_string()),
        ("timeouts", s.timeouts.to_string()),
        ("tls handshakes", s.tls_handshakes.to_string()),
        ("auth successes", s.auth_successes.to_string()),
        ("auth failures", s.auth_failures.to_string()),
        ("bans active", s.bans_active.to_string()),
        ("commit batches", s.commit_batches.to_string()),
        (
            "commit batch mean",
            s.commit_batch_mean
                .map_or("-".into(), |m| format!("{m:.2}")),
        ),
        ("commit latency mean", ms(&s.commit_latency)),
        ("transaction mean", ms(&s.tx_duration)),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// `show sessions` as a table.
pub fn sessions(v: &[SessionView]) -> String {
    let mut s = format!(
        "{:>8}  {:<40}  {:<10}  {:>6}  {:>10}  {:>10}  {:<8}  {}\n",
        "ID", "CLIENT", "STATE", "AGE", "IN", "OUT", "TLS", "USER"
    );
    for x in v {
        s.push_str(&format!(
            "{:>8}  {:<40}  {:<10}  {:>6}  {:>10}  {:>10}  {:<8}  {}\n",
            x.id,
            x.client.to_string(),
            x.state,
            duration(x.age_secs),
            x.bytes_in,
            x.bytes_out,
            x.tls
                .as_deref()
                .and_then(|t| t.split(' ').next())
                .unwrap_or("-"),
            x.user.as_deref().unwrap_or("-"),
        ));
    }
    s.push_str(&format!("-- {} sessions\n", v.len()));
    s
}

/// One trace line: `12:34:56.789 #17 [192.0.2.1]:4567 > MAIL FROM:<a@b>` (`>` from the
/// client, `<` from the server; the time is UTC).
pub fn trace_line(e: &TraceEvent) -> String {
    let ms = e.time_ms % 86_400_000;
    let arrow = match e.dir {
        Direction::Client => '>',
        Direction::Server => '<',
    };
    format!(
        "{:02}:{:02}:{:02}.{:03} #{} [{}]:{} {arrow} {}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000,
        e.session,
        e.client.ip(),
        e.client.port(),
        e.line
    )
}

/// `3d04h`, `1h02m`, `5m07s`, `42s`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// What changed in one monitor interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    /// New sessions.
    pub connections: u64,
    /// Sessions open now (not a delta).
    pub sessions_active: u64,
    /// Messages accepted.
    pub messages_accepted: u64,
    /// Messages refused.
    pub messages_refused: u64,
    /// Recipients accepted.
    pub recipients_accepted: u64,
    /// Recipients refused.
    pub recipients_refused: u64,
    /// Connections refused at once (both limits).
    pub connections_refused: u64,
    /// Octets received.
    pub bytes_in: u64,
    /// Group-commit batches.
    pub commit_batches: u64,
    /// TLS handshakes.
    pub tls_handshakes: u64,
}

/// The change from `a` to `b` (a counter that went down, after a restart, counts from 0).
pub fn delta(a: &StatsView, b: &StatsView) -> Delta {
    let d = |x: u64, y: u64| y.checked_sub(x).unwrap_or(y);
    let (a, b) = (&a.stats, &b.stats);
    Delta {
        connections: d(a.connections, b.connections),
        sessions_active: b.sessions_active,
        messages_accepted: d(a.messages_accepted, b.messages_accepted),
        messages_refused: d(total(&a.messages_refused), total(&b.messages_refused)),
        recipients_accepted: d(a.rcpts_accepted, b.rcpts_accepted),
        recipients_refused: d(total(&a.rcpts_refused), total(&b.rcpts_refused)),
        connections_refused: d(total(&a.connections_refused), total(&b.connections_refused)),
        bytes_in: d(a.bytes_in, b.bytes_in),
        commit_batches: d(a.commit_batches, b.commit_batches),
        tls_handshakes: d(a.tls_handshakes, b.tls_handshakes),
    }
}

/// The monitor's column heads.
pub const MONITOR_HEADER: &str =
    "    conn  active  accepted  refused  rcpt-ok  rcpt-no  conn-ref    bytes-in  batches  tls";

/// One monitor line: the deltas from `a` to `b`.
pub fn monitor_line(a: &StatsView, b: &StatsView) -> String {
    let x = delta(a, b);
    format!(
        "{:>8}  {:>6}  {:>8}  {:>7}  {:>7}  {:>7}  {:>8}  {:>10}  {:>7}  {:>3}",
        x.connections,
        x.sessions_active,
        x.messages_accepted,
        x.messages_refused,
        x.recipients_accepted,
        x.recipients_refused,
        x.connections_refused,
        x.bytes_in,
        x.commit_batches,
        x.tls_handshakes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_show_time_session_client_and_direction() {
        let e = TraceEvent {
            time_ms: 86_400_000 * 3 + 3_723_004,
            session: 17,
            client: "192.0.2.1:4567".parse().unwrap(),
            dir: Direction::Client,
            line: "MAIL FROM:<a@b>".into(),
        };
        assert_eq!(
            trace_line(&e),
            "01:02:03.004 #17 [192.0.2.1]:4567 > MAIL FROM:<a@b>"
        );
    }

    fn view(accepted: u64, active: u64) -> StatsView {
        let mut stats = crate::stats::Stats::new().snapshot(std::time::Instant::now());
        stats.messages_accepted = accepted;
        stats.sessions_active = active;
        StatsView {
            accepting: true,
            stats,
        }
    }

    #[test]
    fn deltas_and_durations() {
        let a = view(5, 9);
        let b = view(8, 2);
        let d = delta(&a, &b);
        assert_eq!((d.messages_accepted, d.sessions_active), (3, 2));
        assert_eq!(
            delta(&b, &a).messages_accepted,
            5,
            "a restart counts from 0"
        );
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(307), "5m07s");
        assert_eq!(duration(3720), "1h02m");
        assert_eq!(duration(2 * 86_400 + 3600), "2d01h");
    }
}
