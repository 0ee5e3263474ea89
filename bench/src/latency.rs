//! Order latency, in microseconds, kept in an HdrHistogram (`hdrhistogram`)
//! with two significant digits: values below 256 have a bucket each, every
//! power of two above is split into 128 sub-buckets, so a reported value is
//! within 1/128 (< 0.8 %) of the recorded one. Percentiles report the highest
//! value of the bucket that holds the requested rank (HdrHistogram's "highest
//! equivalent value"). This wrapper only fixes that configuration and gives
//! an empty histogram the reading 0.

use hdrhistogram::Histogram;

/// Two significant digits: 256 sub-buckets, 128 per power of two above 256.
const SIGNIFICANT_DIGITS: u8 = 2;

#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // Auto-resizing, so any u64 can be recorded; `new` fails only for
        // more than five significant digits.
        Self(
            Histogram::new(SIGNIFICANT_DIGITS)
                .expect("two significant digits is a valid HdrHistogram precision"),
        )
    }
}

impl Latency {
    pub fn record(&mut self, micros: u64) {
        // `record` grows the histogram as needed (`saturating_record` would
        // clamp to its current range); it fails only beyond i64::MAX / 2.
        if self.0.record(micros).is_err() {
            self.0.saturating_record(micros);
        }
    }

    pub fn merge(&mut self, other: &Latency) {
        // Both auto-resize with the same precision, so adding cannot fail.
        if let Err(e) = self.0.add(&other.0) {
            tracing::warn!(error = %e, "could not merge latency histograms");
        }
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The highest value of the bucket that holds the largest value recorded.
    pub fn max(&self) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.max()
        }
    }

    /// Mean of the bucket midpoints; 0 when empty.
    pub fn mean(&self) -> f64 {
        self.0.mean()
    }

    /// The value at percentile `p` (0 < p ≤ 100); 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_percentile(p.clamp(0.0, 100.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let h = Latency::default().0;
        let mut expected_low = 0u64;
        for bucket in 0..4000usize {
            let low = h.lowest_equivalent(expected_low);
            let high = h.highest_equivalent(expected_low);
            assert_eq!(
                low, expected_low,
                "bucket {bucket} starts where the last ended"
            );
            assert!(high >= low);
            // One value per bucket below 256, then 128 buckets per power of two.
            let width = high - low + 1;
            if low < 256 {
                assert_eq!(width, 1, "bucket {bucket} at {low}");
            } else {
                let power = 63 - low.leading_zeros();
                assert_eq!(width, 1u64 << (power - 7), "bucket {bucket} at {low}");
            }
            expected_low = high + 1;
        }
    }

    #[test]
    fn relative_error_is_below_one_percent() {
        let h = Latency::default().0;
        for v in [300u64, 1_000, 4_095, 65_537, 1_234_567, 987_654_321] {
            let (low, high) = (h.lowest_equivalent(v), h.highest_equivalent(v));
            assert!(low <= v && v <= high);
            assert!(
                ((high - low) as f64) / (v as f64) < 0.01,
                "{v}: {low}..{high}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Latency::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        let within = |got: f64, want: f64| {
            let err = (got - want).abs() / want;
            assert!(err < 0.01, "got {got}, want about {want}");
        };
        within(h.percentile(50.0) as f64, 5_000.0);
        within(h.percentile(99.0) as f64, 9_900.0);
        within(h.percentile(99.9) as f64, 9_990.0);
        within(h.percentile(100.0) as f64, 10_000.0);
        assert_eq!(h.percentile(100.0), h.max());
        within(h.max() as f64, 10_000.0);
        within(h.mean(), 5_000.5);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Latency::default();
        for v in [3u64, 3, 3, 7, 200] {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 3);
        assert_eq!(h.percentile(80.0), 7);
        assert_eq!(h.percentile(99.0), 200);
        assert_eq!(h.percentile(0.0), 3);
        assert_eq!(h.max(), 200);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Latency::default();
        assert_eq!(h.percentile(99.0), 0);
        assert_eq!(h.max(), 0);
        assert_eq!(h.mean(), 0.0);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        let mut all = Latency::default();
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
        let mut empty = Latency::default();
        empty.merge(&all);
        assert_eq!(empty.percentile(50.0), all.percentile(50.0));
    }

    #[test]
    fn a_single_value_is_every_percentile() {
        let mut h = Latency::default();
        h.record(480_123);
        let p50 = h.percentile(50.0);
        assert_eq!(h.percentile(99.9), p50);
        assert_eq!(h.max(), p50);
        assert!(p50 >= 480_123 && (p50 - 480_123) as f64 / 480_123.0 < 1.0 / 128.0);
    }
}
