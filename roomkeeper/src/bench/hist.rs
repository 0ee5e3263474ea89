//! A small log-linear latency histogram (HDR-like).
//!
//! Values (microseconds) below 256 have one bucket each; above that every
//! power of two is split into 128 equal sub-buckets, so a reported value is
//! within 1/128 (< 0.8 %) of the recorded one. Percentiles report the highest
//! value of the bucket that holds the requested rank (as HdrHistogram's
//! "highest equivalent value" does), clamped to the largest value recorded.

/// Sub-bucket resolution: 2^7 = 128 sub-buckets per power of two.
const SUB_BITS: u32 = 7;
const HALF: u64 = 1 << SUB_BITS;
const LINEAR: u64 = 2 * HALF;

#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

fn index_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let bits = 64 - v.leading_zeros();
    let shift = bits - (SUB_BITS + 1);
    let top = v >> shift; // in [HALF, 2*HALF)
    (LINEAR + u64::from(shift - 1) * HALF + (top - HALF)) as usize
}

/// Lowest and highest value that land in bucket `idx`.
fn bounds_of(idx: usize) -> (u64, u64) {
    let idx = idx as u64;
    if idx < LINEAR {
        return (idx, idx);
    }
    let rel = idx - LINEAR;
    let shift = rel / HALF + 1;
    let top = rel % HALF + HALF;
    let low = top << shift;
    let high = low.saturating_add((1u64 << shift) - 1);
    (low, high)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        let idx = index_of(v);
        if idx >= self.counts.len() {
            self.counts.resize(idx + 1, 0);
        }
        self.counts[idx] += 1;
        if self.total == 0 || v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
        self.total += 1;
        self.sum += u128::from(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (dst, src) in self.counts.iter_mut().zip(&other.counts) {
            *dst += *src;
        }
        if self.total == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
        self.sum += other.sum;
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at percentile `p` (0 < p ≤ 100); 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let p = p.clamp(0.0, 100.0);
        let rank = ((p / 100.0) * self.total as f64).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0u64;
        for (idx, c) in self.counts.iter().enumerate() {
            seen += *c;
            if seen >= rank {
                let (_, high) = bounds_of(idx);
                return high.min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut expected_low = 0u64;
        for idx in 0..4000usize {
            let (low, high) = bounds_of(idx);
            assert_eq!(
                low, expected_low,
                "bucket {idx} starts where the last ended"
            );
            assert!(high >= low);
            assert_eq!(index_of(low), idx);
            assert_eq!(index_of(high), idx);
            expected_low = high + 1;
        }
        assert_eq!(index_of(u64::MAX), index_of(u64::MAX - 1));
    }

    #[test]
    fn relative_error_is_below_one_percent() {
        for v in [300u64, 1_000, 4_095, 65_537, 1_234_567, 987_654_321] {
            let (low, high) = bounds_of(index_of(v));
            assert!(low <= v && v <= high);
            assert!(
                ((high - low) as f64) / (v as f64) < 0.01,
                "{v}: {low}..{high}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        let within = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.01, "got {got}, want about {want}");
        };
        within(h.percentile(50.0), 5_000);
        within(h.percentile(99.0), 9_900);
        within(h.percentile(99.9), 9_990);
        assert_eq!(h.percentile(100.0), 10_000);
        assert_eq!(h.max(), 10_000);
        assert!((h.mean() - 5_000.5).abs() < 1e-9);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in [3u64, 3, 3, 7, 200] {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 3);
        assert_eq!(h.percentile(80.0), 7);
        assert_eq!(h.percentile(99.0), 200);
        assert_eq!(h.percentile(0.0), 3);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::default();
        assert_eq!(h.percentile(99.0), 0);
        assert_eq!(h.mean(), 0.0);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        let mut all = Histogram::default();
        for v in 0..5_000u64 {
            let x = v * v % 100_003;
            if v % 3 == 0 {
                a.record(x);
            } else {
                b.record(x);
            }
            all.record(x);
        }
        a.merge(&b);
        for p in [1.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            assert_eq!(a.percentile(p), all.percentile(p));
        }
        assert_eq!(a.count(), all.count());
        assert_eq!(a.max(), all.max());
        let mut empty = Histogram::default();
        empty.merge(&all);
        assert_eq!(empty.percentile(50.0), all.percentile(50.0));
    }

    #[test]
    fn single_large_value_is_clamped_to_max() {
        let mut h = Histogram::default();
        h.record(480_123);
        assert_eq!(h.percentile(50.0), 480_123);
        assert_eq!(h.percentile(99.9), 480_123);
    }
}
