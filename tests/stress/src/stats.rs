//! Counters and latency samples of a run: replies per command kind (exact percentiles from
//! the sorted samples), whole transactions, messages delivered, errors provoked, mismatches.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::check::Sink;
use crate::script::{ErrorClass, Kind};

/// Percentiles of one series, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Series(Vec<u64>);

impl Series {
    /// Adds a sample.
    pub fn add(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// The samples, in the order taken.
    pub fn samples(&self) -> &[u64] {
        &self.0
    }

    /// Percentiles (nearest rank), `None` when empty.
    pub fn summary(&self) -> Option<Summary> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Summary {
            count: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }
}

/// Everything a run counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Replies that matched, by command kind.
    pub latency: BTreeMap<Kind, Series>,
    /// MAIL sent to the reply after the dot, for delivered messages.
    pub transactions: Series,
    /// Replies that matched.
    pub ops: u64,
    /// 250 replies after a message.
    pub delivered: u64,
    /// Sessions finished (as scripted or not).
    pub sessions: u64,
    /// Sessions that provoked each error class.
    pub provoked: BTreeMap<ErrorClass, u64>,
    /// Sessions ended by a mismatch.
    pub mismatches: u64,
    /// Failed sessions that may have left an unacknowledged message in the server.
    pub uncertain: u64,
}

impl Sink for Stats {
    fn reply(&mut self, kind: Kind, latency: Duration) {
        self.ops += 1;
        self.latency.entry(kind).or_default().add(latency);
    }

    fn delivered(&mut self) {
        self.delivered += 1;
    }

    fn transaction(&mut self, latency: Duration) {
        self.transactions.add(latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Series::default();
        assert_eq!(s.summary(), None);
        for us in (1..=100).rev() {
            s.add(Duration::from_micros(us));
        }
        let sum = s.summary().unwrap();
        assert_eq!((sum.count, sum.p50, sum.p99, sum.max), (100, 50, 99, 100));
        let mut one = Series::default();
        one.add(Duration::from_millis(3));
        assert_eq!(one.summary().unwrap().p99, 3000);
    }

    #[test]
    fn sink_counts() {
        let mut st = Stats::default();
        st.reply(Kind::Mail, Duration::from_micros(5));
        st.reply(Kind::Mail, Duration::from_micros(7));
        st.delivered();
        assert_eq!(st.ops, 2);
        assert_eq!(st.delivered, 1);
        assert_eq!(st.latency[&Kind::Mail].summary().unwrap().max, 7);
    }
}
