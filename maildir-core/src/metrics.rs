//! Lock-free counters and histograms that a reactor bumps and another thread reads at any time
//! (the Prometheus exporter, the control socket), so reading the figures never makes the
//! reactor wait.
//!
//! Owns: [`Count`] (a counter or gauge over one `AtomicU64`), [`Histogram`] (fixed bucket
//! bounds, one `AtomicU64` per bucket) and their serialisable [`HistogramSnapshot`].
//! Must not: know what is counted, format any exposition text (prometheus-client does, in
//! the programs' collectors) or do I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A counter or gauge. Relaxed atomics: each value is exact, but two values read one after the
/// other may straddle an update (a scrape is a moment, not a transaction).
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes one away (a gauge), never below zero.
    pub fn dec(&self) {
        // fetch_update only fails when the closure returns None, i.e. at zero: nothing to do.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// Sets the value (a gauge).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed bucket bounds, observations in whole units (microseconds, messages):
/// an observation costs a binary search over the bounds and two atomic additions.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive, as Prometheus' `le`), ascending, in units.
    bounds: &'static [u64],
    /// One count per bound, then the overflow (`+Inf`) bucket; not cumulative.
    buckets: Box<[AtomicU64]>,
    /// Sum of the observations, in units.
    sum: AtomicU64,
    /// The size of a unit in the exported base unit (1e-6 for microseconds → seconds).
    scale: f64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending, in units); `scale` converts a unit into the unit
    /// exported (seconds for durations).
    pub fn new(bounds: &'static [u64], scale: f64) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// A histogram of durations with bounds in microseconds, exported in seconds.
    pub fn micros(bounds: &'static [u64]) -> Histogram {
        Histogram::new(bounds, 1e-6)
    }

    /// Records one observation of `v` units.
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration (for histograms made with [`Histogram::micros`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The counts now, in the exported unit. The count is the sum of the buckets read, so the
    /// `+Inf` bucket always equals it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        let mut count = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let bound = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |&u| u as f64 * self.scale);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            count,
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
            buckets,
        }
    }
}

/// A histogram's figures at one moment, in the exported unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Observations.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// `(upper bound, observations in this bucket only)`, the last bound infinite: the form
    /// prometheus-client's `encode_histogram` takes. Not serialised (JSON has no infinity).
    #[serde(skip)]
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// The mean observation, if there was any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_gauges() {
        let c = Count::default();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
        c.dec();
        assert_eq!(c.get(), 4);
        c.set(0);
        c.dec();
        assert_eq!(c.get(), 0, "a gauge never goes below zero");
    }

    #[test]
    fn observations_land_in_their_bucket() {
        static BOUNDS: [u64; 3] = [1, 10, 100];
        let h = Histogram::new(&BOUNDS, 1.0);
        for v in [0, 1, 2, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 5225.0);
        assert_eq!(
            s.buckets,
            vec![(1.0, 2), (10.0, 2), (100.0, 2), (f64::INFINITY, 2)]
        );
    }

    #[test]
    fn durations_are_exported_in_seconds() {
        static BOUNDS: [u64; 2] = [1_000, 1_000_000];
        let h = Histogram::micros(&BOUNDS);
        h.observe_duration(Duration::from_millis(1));
        h.observe_duration(Duration::from_millis(3));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 1), (1.0, 1), (f64::INFINITY, 0)]);
        assert!((s.sum - 0.004).abs() < 1e-12);
        assert_eq!(s.mean().map(|m| (m * 1e6).round()), Some(2000.0));
        assert_eq!(Histogram::micros(&BOUNDS).snapshot().mean(), None);
    }
}
