//! Latency samples: percentiles for the table and the JSON, and the distribution for the plot.

use serde::Serialize;

/// Latencies in nanoseconds, one per operation.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

/// A summary of [`Samples`], in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// How many samples.
    pub count: u64,
    /// Their mean.
    pub mean_ns: f64,
    /// The smallest.
    pub min_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// The largest.
    pub max_ns: u64,
}

impl Samples {
    /// Room for about `n` samples.
    pub fn with_capacity(n: usize) -> Samples {
        Samples { ns: Vec::with_capacity(n), sorted: true }
    }

    /// Adds one sample.
    pub fn push(&mut self, ns: u64) {
        self.sorted = self.sorted && self.ns.last().is_none_or(|&l| l <= ns);
        self.ns.push(ns);
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.ns.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
    }

    /// The value below which a fraction `q` (0..=1) of the samples lie (nearest rank); 0 when
    /// empty.
    pub fn quantile(&mut self, q: f64) -> u64 {
        self.sort();
        if self.ns.is_empty() {
            return 0;
        }
        let rank = (q.clamp(0.0, 1.0) * self.ns.len() as f64).ceil() as usize;
        self.ns[rank.clamp(1, self.ns.len()) - 1]
    }

    /// Count, mean and percentiles.
    pub fn summary(&mut self) -> Summary {
        if self.ns.is_empty() {
            return Summary::default();
        }
        let sum: u128 = self.ns.iter().map(|&v| u128::from(v)).sum();
        Summary {
            count: self.ns.len() as u64,
            mean_ns: sum as f64 / self.ns.len() as f64,
            min_ns: self.quantile(0.0),
            p50_ns: self.quantile(0.50),
            p90_ns: self.quantile(0.90),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
            max_ns: self.quantile(1.0),
        }
    }

    /// The cumulative distribution as about `points` pairs (latency in µs, fraction of samples at
    /// or below it), evenly spaced in fraction plus a denser tail (99th to 100th percentile), for
    /// a plot.
    pub fn cdf(&mut self, points: usize) -> Vec<(f64, f64)> {
        if self.ns.is_empty() || points < 2 {
            return Vec::new();
        }
        let grid = (0..points).map(|i| i as f64 / points as f64);
        let tail = [0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];
        let mut qs: Vec<f64> = grid.chain(tail).collect();
        qs.sort_by(f64::total_cmp);
        qs.dedup();
        qs.into_iter().map(|q| (self.quantile(q) as f64 / 1000.0, q)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = Samples::default();
        for v in (1..=100).rev() {
            s.push(v * 1000);
        }
        let sum = s.summary();
        assert_eq!((sum.count, sum.min_ns, sum.p50_ns, sum.p99_ns, sum.max_ns), (100, 1000, 50_000, 99_000, 100_000));
        assert!((sum.mean_ns - 50_500.0).abs() < 1e-6);
        let cdf = s.cdf(10);
        assert_eq!(cdf.first(), Some(&(1.0, 0.0)));
        assert!(cdf.contains(&(99.0, 0.99)));
        assert_eq!(cdf.last(), Some(&(100.0, 1.0)));
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(Samples::default().summary(), Summary::default());
    }
}

/// One named series of timed operations: what was measured, its rate and its latencies.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// What was timed, for people.
    pub what: String,
    /// Operations per second over the whole run.
    pub ops_per_sec: f64,
    /// Latency of one operation.
    pub latency: Summary,
    /// The distribution, for the plot (not in the JSON).
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
}

impl Measured {
    /// Summarises `samples` taken over `elapsed` seconds.
    pub fn new(what: impl Into<String>, mut samples: Samples, elapsed_secs: f64) -> Measured {
        let ops_per_sec = if elapsed_secs > 0.0 { samples.len() as f64 / elapsed_secs } else { 0.0 };
        Measured { what: what.into(), ops_per_sec, latency: samples.summary(), cdf: samples.cdf(400) }
    }
}

/// `ours / reference`, when both are positive.
pub fn ratio(ours: f64, reference: f64) -> Option<f64> {
    (ours > 0.0 && reference > 0.0).then(|| ours / reference)
}
