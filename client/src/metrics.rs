//! smtp-relay's Prometheus metrics (`--metrics ADDR:PORT`, with `--interval`): recipients
//! delivered / deferred / bounced, the queue's size and the age of its oldest message,
//! connections per MX host, DNS latency. One set per process ([`relay`]): the scan thread, the
//! reactor and the run loop bump it where the thing happens, without plumbing; the exporter's
//! thread ([`net::exporter`]) reads it on each scrape.
//!
//! Owns: the figures, their exported names, help texts and labels (README.md, "Metrics").
//! Must not: make the reactor wait on a scrape: counters are atomics; the per-MX map is a
//! mutex held only to add one or to copy it (a few entries), never while encoding.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use maildir_core::metrics::{Count, Histogram};
use net::exporter::{Exporter, counter, counter_family, gauge, histogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::record::Summary;

/// Bounds of the DNS latency histogram, in microseconds (1 ms to 10 s: two 5 s attempts).
const DNS_LATENCY_US: [u64; 11] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000, 10_000_000,
];

/// Most MX host names given a series of their own; connections to further hosts are counted
/// under `mx="other"` (a queue for many domains must not grow the exposition without bound).
const MAX_MX_SERIES: usize = 1000;

/// The relay's figures since the start.
#[derive(Debug)]
pub struct RelayMetrics {
    /// Recipients delivered (2xx).
    pub delivered: Count,
    /// Recipients deferred (to be tried again).
    pub deferred: Count,
    /// Recipients bounced (5xx, expired, undeliverable).
    pub bounced: Count,
    /// Messages finished (every recipient delivered or bounced: moved to `cur/`).
    pub messages_finished: Count,
    /// Delivery status notifications queued.
    pub dsns: Count,
    /// Passes over the queue finished.
    pub passes: Count,
    /// Messages in `new/` at the last scan, less those finished since.
    pub queue_size: Count,
    /// Arrival of the oldest of them, seconds since the Unix epoch (0: none).
    oldest_arrival: Count,
    /// Per MX host name: connections made, connection attempts that failed.
    mx: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Time to resolve one domain (MX, then addresses), in seconds.
    pub dns_latency: Histogram,
}

/// The process's figures.
pub fn relay() -> &'static RelayMetrics {
    static METRICS: LazyLock<RelayMetrics> = LazyLock::new(|| RelayMetrics {
        delivered: Count::default(),
        deferred: Count::default(),
        bounced: Count::default(),
        messages_finished: Count::default(),
        dsns: Count::default(),
        passes: Count::default(),
        queue_size: Count::default(),
        oldest_arrival: Count::default(),
        mx: Mutex::new(BTreeMap::new()),
        dns_latency: Histogram::micros(&DNS_LATENCY_US),
    });
    &METRICS
}

impl RelayMetrics {
    /// A scan found `size` messages in `new/`, the oldest queued at `oldest`.
    pub fn scanned(&self, size: usize, oldest: Option<SystemTime>) {
        self.queue_size.set(size as u64);
        let secs = oldest
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs().max(1));
        self.oldest_arrival.set(secs);
    }

    /// A pass was recorded.
    pub fn recorded(&self, sum: &Summary) {
        self.passes.inc();
        self.delivered.add(sum.delivered as u64);
        self.deferred.add(sum.deferred as u64);
        self.bounced.add(sum.bounced as u64);
        self.messages_finished.add(sum.messages_done as u64);
        self.dsns.add(sum.dsns as u64);
        let left = self
            .queue_size
            .get()
            .saturating_sub(sum.messages_done as u64);
        self.queue_size.set(left);
        if left == 0 {
            self.oldest_arrival.set(0);
        }
    }

    /// A connection to MX host `host` was made (`ok`) or failed.
    pub fn connection(&self, host: &str, ok: bool) {
        let mut mx = self.mx.lock().unwrap_or_else(PoisonError::into_inner);
        let host = if mx.len() < MAX_MX_SERIES || mx.contains_key(host) {
            host
        } else {
            "other"
        };
        let e = mx.entry(host.to_owned()).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// Seconds the oldest queued message has waited at `now` (0 with an empty queue).
    pub fn oldest_age(&self, now: SystemTime) -> f64 {
        match self.oldest_arrival.get() {
            0 => 0.0,
            secs => now
                .duration_since(UNIX_EPOCH + Duration::from_secs(secs))
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// Serves the process's figures on `addr` (`GET /metrics`) from a thread of its own.
pub fn serve(addr: SocketAddr) -> std::io::Result<Exporter> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector));
    Exporter::spawn(addr, registry)
}

/// Reads [`relay`] on each scrape.
#[derive(Debug)]
struct RelayCollector;

impl Collector for RelayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = relay();
        let e = &mut enc;
        counter(
            e,
            "smtp_relay_delivered",
            "Recipients delivered.",
            m.delivered.get(),
        )?;
        counter(
            e,
            "smtp_relay_deferred",
            "Recipient attempts deferred (tried again later).",
            m.deferred.get(),
        )?;
        counter(
            e,
            "smtp_relay_bounced",
            "Recipients bounced.",
            m.bounced.get(),
        )?;
        counter(
            e,
            "smtp_relay_messages_finished",
            "Messages with every recipient delivered or bounced.",
            m.messages_finished.get(),
        )?;
        counter(
            e,
            "smtp_relay_dsns",
            "Delivery status notifications queued.",
            m.dsns.get(),
        )?;
        counter(
            e,
            "smtp_relay_passes",
            "Passes over the queue finished.",
            m.passes.get(),
        )?;
        gauge(
            e,
            "smtp_relay_queue_size",
            "Messages in new/ at the last scan, less those finished since.",
            m.queue_size.get() as f64,
        )?;
        gauge(
            e,
            "smtp_relay_oldest_message_age_seconds",
            "How long the oldest of them has waited (0: empty queue).",
            m.oldest_age(SystemTime::now()),
        )?;
        let mx = m.mx.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let made: Vec<(&str, u64)> = mx.iter().map(|(h, c)| (h.as_str(), c.0)).collect();
        counter_family(
            e,
            "smtp_relay_connections",
            "Connections made, by MX host.",
            "mx",
            &made,
        )?;
        let failed: Vec<(&str, u64)> = mx.iter().map(|(h, c)| (h.as_str(), c.1)).collect();
        counter_family(
            e,
            "smtp_relay_connect_failures",
            "Connection attempts that failed, by MX host.",
            "mx",
            &failed,
        )?;
        let h = m.dns_latency.snapshot();
        histogram(
            e,
            "smtp_relay_dns_latency_seconds",
            "Time to resolve one domain (MX, then addresses).",
            h.sum,
            h.count,
            &h.buckets,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_gauges_follow_scans_and_passes() {
        let m = RelayMetrics {
            delivered: Count::default(),
            deferred: Count::default(),
            bounced: Count::default(),
            messages_finished: Count::default(),
            dsns: Count::default(),
            passes: Count::default(),
            queue_size: Count::default(),
            oldest_arrival: Count::default(),
            mx: Mutex::new(BTreeMap::new()),
            dns_latency: Histogram::micros(&DNS_LATENCY_US),
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        m.scanned(3, Some(t));
        assert_eq!(m.oldest_age(t + Duration::from_secs(60)), 60.0);
        m.recorded(&Summary {
            delivered: 2,
            deferred: 1,
            bounced: 0,
            messages_done: 2,
            dsns: 0,
        });
        assert_eq!(m.queue_size.get(), 1);
        assert_eq!(m.oldest_age(t + Duration::from_secs(60)), 60.0);
        m.recorded(&Summary {
            delivered: 1,
            deferred: 0,
            bounced: 0,
            messages_done: 1,
            dsns: 0,
        });
        assert_eq!((m.queue_size.get(), m.delivered.get()), (0, 3));
        assert_eq!(m.oldest_age(t), 0.0, "an empty queue has no oldest message");
        m.scanned(0, None);
        assert_eq!(m.oldest_age(t), 0.0);
        m.connection("mx1.test", true);
        m.connection("mx1.test", false);
        m.connection("mx2.test", true);
        let mx = m.mx.lock().expect("not poisoned").clone();
        assert_eq!(mx["mx1.test"], (1, 1));
        assert_eq!(mx["mx2.test"], (1, 0));
        for i in 0..2 * MAX_MX_SERIES {
            m.connection(&format!("mx{i}.many.test"), true);
        }
        m.connection("mx1.test", true);
        let mx = m.mx.lock().expect("not poisoned").clone();
        assert_eq!(mx.len(), MAX_MX_SERIES + 1, "bounded, plus other");
        assert_eq!(
            mx["mx1.test"],
            (2, 1),
            "a host already named keeps its series"
        );
        assert!(mx["other"].0 >= MAX_MX_SERIES as u64);
    }
}
