//! smtpd's Prometheus metrics (`--metrics ADDR:PORT`): the counters of [`Stats`] under their
//! exported names, read on each scrape by the exporter's thread ([`net::exporter`]).
//!
//! Owns: the metric names, help texts and labels of smtpd (listed in README.md, "Metrics").
//! Must not: count anything (the reactor does, in [`Stats`]) or lock what the reactor uses:
//! every figure is an atomic read, so a scrape never makes the reactor wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use maildir_core::metrics::HistogramSnapshot;
use net::exporter::{Exporter, counter, counter_family, gauge, histogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::stats::{MessageRefusal, RCPT_REFUSALS, Stats};

/// Serves `stats` on `addr` (`GET /metrics`) from a thread of its own.
pub fn serve(addr: SocketAddr, stats: Arc<Stats>) -> std::io::Result<Exporter> {
    Exporter::spawn(addr, registry(stats))
}

/// A registry whose one collector reads `stats` on each encoding.
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector(stats)));
    registry
}

/// Reads [`Stats`] on each scrape.
#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

/// Writes a histogram snapshot.
fn hist(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    histogram(enc, name, help, h.sum, h.count, &h.buckets)
}

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &*self.0;
        let e = &mut enc;
        counter(
            e,
            "smtpd_connections",
            "Sessions begun.",
            s.connections.get(),
        )?;
        counter_family(
            e,
            "smtpd_connections_refused",
            "Connections refused before a session began, by the limit reached (or a ban).",
            "reason",
            &[
                ("max_connections", s.refused_too_many.get()),
                ("max_per_ip", s.refused_per_ip.get()),
                ("banned", s.refused_banned.get()),
            ],
        )?;
        gauge(
            e,
            "smtpd_sessions_active",
            "Sessions whose connection is open.",
            s.active.get() as f64,
        )?;
        counter(
            e,
            "smtpd_messages_accepted",
            "Messages stored (250 queued as).",
            s.accepted.get(),
        )?;
        counter(
            e,
            "smtpd_accepted_bytes",
            "Octets of the messages stored, as received.",
            s.accepted_bytes.get(),
        )?;
        counter(
            e,
            "smtpd_accepted_recipients",
            "Recipients of the messages stored.",
            s.accepted_rcpts.get(),
        )?;
        let refused: Vec<(&str, u64)> = MessageRefusal::ALL
            .iter()
            .zip(&s.messages_refused)
            .map(|(r, c)| (r.label(), c.get()))
            .collect();
        counter_family(
            e,
            "smtpd_messages_refused",
            "Messages refused after the data, by reason.",
            "reason",
            &refused,
        )?;
        counter(
            e,
            "smtpd_recipients_accepted",
            "RCPT commands accepted.",
            s.rcpts_accepted.get(),
        )?;
        let rcpts: Vec<(&str, u64)> = RCPT_REFUSALS
            .iter()
            .zip(&s.rcpts_refused)
            .map(|(r, c)| (*r, c.get()))
            .collect();
        counter_family(
            e,
            "smtpd_recipients_refused",
            "RCPT commands refused, by reason.",
            "reason",
            &rcpts,
        )?;
        counter(
            e,
            "smtpd_received_bytes",
            "Octets received from clients (sessions that ended).",
            s.bytes_in.get(),
        )?;
        counter(
            e,
            "smtpd_sent_bytes",
            "Octets sent to clients (sessions that ended).",
            s.bytes_out.get(),
        )?;
        counter(
            e,
            "smtpd_timeouts",
            "Sessions ended by the idle timeout.",
            s.timeouts.get(),
        )?;
        counter(
            e,
            "smtpd_tls_handshakes",
            "TLS handshakes finished.",
            s.tls_handshakes.get(),
        )?;
        counter(
            e,
            "smtpd_local_deliveries",
            "Copies delivered to local users' Maildirs.",
            s.local_deliveries.get(),
        )?;
        counter(
            e,
            "smtpd_commit_batches",
            "Group-commit batches (one new/ fsync each).",
            s.commit_batches.get(),
        )?;
        counter_family(
            e,
            "smtpd_auth",
            "Authentication attempts, by result.",
            "result",
            &[
                ("success", s.auth_successes.get()),
                ("failure", s.auth_failures.get()),
            ],
        )?;
        gauge(
            e,
            "smtpd_bans_active",
            "Client addresses banned now.",
            s.bans_active.get() as f64,
        )?;
        let started = s
            .started()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge(
            e,
            "smtpd_start_time_seconds",
            "Start time, seconds since the Unix epoch.",
            started,
        )?;
        gauge(
            e,
            "smtpd_uptime_seconds",
            "Seconds since the start.",
            s.uptime(Instant::now()).as_secs_f64(),
        )?;
        hist(
            e,
            "smtpd_commit_latency_seconds",
            "From the hand-off to the group commit to durable (or failed).",
            &s.commit_latency.snapshot(),
        )?;
        hist(
            e,
            "smtpd_commit_batch_size",
            "Messages per group-commit batch.",
            &s.batch_size.snapshot(),
        )?;
        hist(
            e,
            "smtpd_transaction_duration_seconds",
            "From MAIL accepted to the final reply after the data.",
            &s.tx_duration.snapshot(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_text::encode;

    #[test]
    fn every_figure_is_exported() {
        let stats = Arc::new(Stats::new());
        stats.accepted.add(3);
        stats.messages_refused[MessageRefusal::Size as usize].inc();
        stats.commit_batch(2);
        let mut text = String::new();
        encode(&mut text, &registry(stats)).expect("encodes");
        for line in [
            "smtpd_messages_accepted_total 3",
            "smtpd_messages_refused_total{reason=\"size\"} 1",
            "smtpd_messages_refused_total{reason=\"quota\"} 0",
            "smtpd_recipients_refused_total{reason=\"relay_denied\"} 0",
            "smtpd_auth_total{result=\"failure\"} 0",
            "smtpd_commit_batch_size_bucket{le=\"2\"} 1",
            "smtpd_commit_batch_size_count 1",
            "smtpd_commit_latency_seconds_count 0",
            "smtpd_transaction_duration_seconds_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
