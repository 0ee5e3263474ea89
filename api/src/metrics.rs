//! Facts about the node's metrics that other planes rely on: the bucket
//! boundaries of the client API's latency histogram
//! (`roomkeeper_http_request_duration_seconds`). The operator picks the bucket
//! a latency SLO is measured at from the same list (docs/decisions.md, "SLO
//! objectives as operator series").

/// Upper bounds (seconds) of the latency histograms of a node: powers of two
/// from 0.5 ms to about 4 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096,
];

/// The bucket a latency objective of `target_seconds` is measured at: the
/// largest bound not above the target, so the alert is never more lenient
/// than the objective (a 50 ms target is measured as "within 32 ms"). `None`
/// when the target is below the smallest bucket.
pub fn latency_slo_bucket(target_seconds: f64) -> Option<f64> {
    LATENCY_BUCKETS_SECONDS
        .iter()
        .copied()
        .rfind(|b| *b <= target_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_never_exceeds_the_target() {
        assert_eq!(latency_slo_bucket(0.050), Some(0.032));
        assert_eq!(latency_slo_bucket(0.064), Some(0.064));
        assert_eq!(latency_slo_bucket(0.0641), Some(0.064));
        assert_eq!(latency_slo_bucket(10.0), Some(4.096));
        assert_eq!(latency_slo_bucket(0.0001), None);
    }

    #[test]
    fn buckets_render_as_prometheus_le_labels() {
        // The operator's `le` label must equal the node's exposition of the
        // same bound, which the prometheus crate writes with Rust's Display.
        let le: Vec<String> = LATENCY_BUCKETS_SECONDS.iter().map(f64::to_string).collect();
        assert_eq!(le[0], "0.0005");
        assert_eq!(le[6], "0.032");
    }
}
