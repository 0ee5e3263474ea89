//! Facts about the node's metrics that other planes rely on: the bucket
//! boundaries of the client API's latency histogram
//! (`roomkeeper_http_request_duration_seconds`) and the latency objectives a
//! LiveRoomCluster may declare. The operator names the bucket a latency SLO
//! is measured at from the same list (docs/decisions.md, "SLO objectives as
//! operator series"); the burn-rate rules join on that bucket's `le`.

/// Upper bounds (seconds) of the latency histograms of a node: the 1-2.5-5
/// series from 0.5 ms to 5 s, 13 buckets. Every allowed latency objective
/// ([`SLO_LATENCY_OPTIONS_MS`]) is one of them, so an SLO is measured at
/// exactly its threshold, not at the bucket below.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The values `spec.slo.p99LatencyMs` may take: every bucket bound that is a
/// whole number of milliseconds.
pub const SLO_LATENCY_OPTIONS_MS: &[i64] = &[1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// The bucket a latency objective of `target_seconds` is measured at: the
/// bucket equal to it for an allowed objective; for any other (a CRD older
/// than the option list let it through) the largest bound not above the
/// target, so the alert is never more lenient than the objective. `None`
/// when the target is below the smallest bucket.
pub fn latency_slo_bucket(target_seconds: f64) -> Option<f64> {
    LATENCY_BUCKETS_SECONDS
        .iter()
        .copied()
        .rfind(|b| *b <= target_seconds * (1.0 + 1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_objective_is_exactly_a_bucket() {
        for ms in SLO_LATENCY_OPTIONS_MS {
            let target = *ms as f64 / 1000.0;
            let bucket = latency_slo_bucket(target).expect("a bucket");
            assert_eq!(bucket, target, "{ms} ms is measured at {bucket} s");
            // The rendered `le` is the target's own decimal form: what the
            // operator exports and the node exposes must be the same string.
            assert_eq!(bucket.to_string(), target.to_string());
        }
        // And every whole-millisecond bucket is an allowed objective.
        for b in LATENCY_BUCKETS_SECONDS {
            let ms = b * 1000.0;
            if ms.fract() == 0.0 {
                assert!(SLO_LATENCY_OPTIONS_MS.contains(&(ms as i64)), "{b} s");
            }
        }
        // The 5 ms objective the issue names needs a 0.005 bound.
        assert!(LATENCY_BUCKETS_SECONDS.contains(&0.005));
    }

    #[test]
    fn buckets_are_few_and_increasing() {
        assert!(LATENCY_BUCKETS_SECONDS.len() <= 14, "series count");
        assert!(LATENCY_BUCKETS_SECONDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn an_objective_off_the_list_is_measured_at_the_bucket_below() {
        assert_eq!(latency_slo_bucket(0.030), Some(0.025));
        assert_eq!(latency_slo_bucket(0.050), Some(0.05));
        assert_eq!(latency_slo_bucket(10.0), Some(5.0));
        assert_eq!(latency_slo_bucket(0.0001), None);
    }

    #[test]
    fn buckets_render_as_prometheus_le_labels() {
        // The operator's `le` label must equal the node's exposition of the
        // same bound, which the prometheus crate writes with Rust's Display
        // (whole seconds as "1" and "5": the rules strip a ".0" that
        // Prometheus 3 adds to histogram `le` values, so both match).
        let le: Vec<String> = LATENCY_BUCKETS_SECONDS.iter().map(f64::to_string).collect();
        assert_eq!(le[0], "0.0005");
        assert_eq!(le[3], "0.005");
        assert_eq!(le[10], "1");
    }
}
