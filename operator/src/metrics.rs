//! The operator's own Prometheus metrics (`roomkeeper_operator_*`).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::crd::SloSpec;

#[derive(Clone)]
pub struct OperatorMetrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub reconcile_duration: Histogram,
    pub errors: IntCounterVec,
    pub writes: IntCounterVec,
    pub leader: IntGauge,
    pub playbook_decisions: IntCounterVec,
    /// `spec.slo` of every LiveRoomCluster, as series the chart's burn-rate
    /// rules join on (docs/decisions.md, "SLO objectives as operator series").
    slo_availability: GaugeVec,
    slo_latency: GaugeVec,
}

/// Labels naming a LiveRoomCluster on the SLO series. Not `namespace`: the
/// scrape adds the operator pod's own namespace under that name.
const SLO_LABELS: &[&str] = &["roomkeeper_namespace", "roomkeeper_cluster"];

impl OperatorMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "roomkeeper_operator_reconciles_total",
            "LiveRoomCluster reconciles run",
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "roomkeeper_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "roomkeeper_operator_reconcile_errors_total",
                "Failed reconciles by kind of error",
            ),
            &["kind"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "roomkeeper_operator_writes_total",
                "Objects written to the API server, by kind",
            ),
            &["kind"],
        )?;
        let leader = IntGauge::new(
            "roomkeeper_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        let playbook_decisions = IntCounterVec::new(
            Opts::new(
                "roomkeeper_operator_playbook_decisions_total",
                "Playbook decisions by action and disposition",
            ),
            &["action", "disposition"],
        )?;
        let slo_availability = GaugeVec::new(
            Opts::new(
                "roomkeeper_operator_slo_availability_objective_ratio",
                "spec.slo.availabilityPercent of a LiveRoomCluster, as a ratio (0.9995)",
            ),
            SLO_LABELS,
        )?;
        let slo_latency = GaugeVec::new(
            Opts::new(
                "roomkeeper_operator_slo_latency_objective_seconds",
                "spec.slo.p99LatencyMs of a LiveRoomCluster in seconds; le is the latency bucket the SLO is measured at (the largest not above it)",
            ),
            &["roomkeeper_namespace", "roomkeeper_cluster", "le"],
        )?;
        registry.register(Box::new(slo_availability.clone()))?;
        registry.register(Box::new(slo_latency.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(playbook_decisions.clone()))?;
        Ok(OperatorMetrics {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            writes,
            leader,
            playbook_decisions,
            slo_availability,
            slo_latency,
        })
    }

    /// Publishes a cluster's objectives (on every reconcile, so an edit of
    /// `spec.slo` reaches the alerts at the next scrape).
    pub fn set_slo(&self, namespace: &str, cluster: &str, slo: &SloSpec) {
        self.slo_availability
            .with_label_values(&[namespace, cluster])
            .set(slo.availability_percent / 100.0);
        let target = slo.p99_latency_ms as f64 / 1000.0;
        let bucket = roomkeeper_api::metrics::latency_slo_bucket(target)
            .or_else(|| {
                roomkeeper_api::metrics::LATENCY_BUCKETS_SECONDS
                    .first()
                    .copied()
            })
            .unwrap_or(target);
        // Only one bucket per cluster: drop the series of an older target.
        self.remove_latency(namespace, cluster);
        self.slo_latency
            .with_label_values(&[namespace, cluster, &bucket.to_string()])
            .set(target);
    }

    /// Forgets a deleted cluster's objectives.
    pub fn remove_slo(&self, namespace: &str, cluster: &str) {
        let _ = self
            .slo_availability
            .remove_label_values(&[namespace, cluster]);
        self.remove_latency(namespace, cluster);
    }

    fn remove_latency(&self, namespace: &str, cluster: &str) {
        for b in roomkeeper_api::metrics::LATENCY_BUCKETS_SECONDS {
            let _ = self
                .slo_latency
                .remove_label_values(&[namespace, cluster, &b.to_string()]);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_series_follow_the_spec_and_leave_with_the_cluster() {
        let m = OperatorMetrics::new().expect("registry");
        let slo = SloSpec::default();
        m.set_slo("shop", "live", &slo);
        let text = m.render();
        assert!(text.contains(r#"roomkeeper_operator_slo_availability_objective_ratio{roomkeeper_cluster="live",roomkeeper_namespace="shop"} 0.9995"#), "{text}");
        assert!(text.contains(r#"roomkeeper_operator_slo_latency_objective_seconds{le="0.032",roomkeeper_cluster="live",roomkeeper_namespace="shop"} 0.05"#), "{text}");
        // A new target moves the series to its bucket; the old one is gone.
        m.set_slo(
            "shop",
            "live",
            &SloSpec {
                p99_latency_ms: 300,
                ..slo.clone()
            },
        );
        let text = m.render();
        assert!(text.contains(r#"le="0.256""#), "{text}");
        assert!(!text.contains(r#"le="0.032""#), "{text}");
        m.remove_slo("shop", "live");
        let text = m.render();
        assert!(!text.contains("roomkeeper_operator_slo_"), "{text}");
    }
}
