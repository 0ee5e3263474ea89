//! The operator's own Prometheus metrics (`roomkeeper_operator_*`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use roomkeeper_api::admin::NodeStatus;
use roomkeeper_playbook::health::RegionVisibility;
use roomkeeper_playbook::EngineMemory;

use crate::audit::{audit_commits, CommitLoss};

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
    /// Suppressed decisions by the guard that stopped them, per cluster.
    pub guard_blocks: IntCounterVec,
    /// `spec.slo` of every LiveRoomCluster, as series the chart's burn-rate
    /// rules join on (docs/decisions.md, "SLO objectives as operator series").
    slo_availability: GaugeVec,
    slo_latency: GaugeVec,
    /// What the operator itself sees of each cluster, for the invariant
    /// alerts (docs/decisions.md, "Invariant alerts from the operator's view").
    approvals_pending: IntGaugeVec,
    approval_oldest: GaugeVec,
    regions_visible: IntGaugeVec,
    regions_total: IntGaugeVec,
    committed_lost: IntCounterVec,
    /// The highest commit index each cluster's leader reported, per
    /// `(namespace, cluster)`; the commit audit compares the next leader's log with it.
    commit_high: Arc<Mutex<HashMap<(String, String), u64>>>,
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
                "spec.slo.p99LatencyMs of a LiveRoomCluster in seconds; le is the latency bucket the SLO is measured at (the objective itself; for a value off the allowed list, the largest bucket below it)",
            ),
            &["roomkeeper_namespace", "roomkeeper_cluster", "le"],
        )?;
        let approvals_pending = IntGaugeVec::new(
            Opts::new(
                "roomkeeper_operator_approvals_pending",
                "FailoverApproval requests of a LiveRoomCluster nobody has answered yet",
            ),
            SLO_LABELS,
        )?;
        let approval_oldest = GaugeVec::new(
            Opts::new(
                "roomkeeper_operator_approval_pending_oldest_seconds",
                "Age of the oldest unanswered FailoverApproval request of a LiveRoomCluster at the last playbook tick (0: none)",
            ),
            SLO_LABELS,
        )?;
        let regions_visible = IntGaugeVec::new(
            Opts::new(
                "roomkeeper_operator_regions_visible",
                "Regions of a LiveRoomCluster in which the operator reached at least one node at the last playbook tick",
            ),
            SLO_LABELS,
        )?;
        let regions_total = IntGaugeVec::new(
            Opts::new(
                "roomkeeper_operator_regions_total",
                "Regions a LiveRoomCluster spans (spec.regions)",
            ),
            SLO_LABELS,
        )?;
        let committed_lost = IntCounterVec::new(
            Opts::new(
                "roomkeeper_operator_committed_entries_lost_total",
                "Raft log entries a cluster's leader had reported committed that a later leader's log does not hold (acknowledged writes lost)",
            ),
            SLO_LABELS,
        )?;
        let guard_blocks = IntCounterVec::new(
            Opts::new(
                "roomkeeper_operator_playbook_guard_blocks_total",
                "Playbook decisions a guard suppressed, by guard (majorityVisible, neverBelowQuorum, cooldown, ...)",
            ),
            &["roomkeeper_namespace", "roomkeeper_cluster", "guard"],
        )?;
        registry.register(Box::new(guard_blocks.clone()))?;
        registry.register(Box::new(approvals_pending.clone()))?;
        registry.register(Box::new(approval_oldest.clone()))?;
        registry.register(Box::new(regions_visible.clone()))?;
        registry.register(Box::new(regions_total.clone()))?;
        registry.register(Box::new(committed_lost.clone()))?;
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
            guard_blocks,
            slo_availability,
            slo_latency,
            approvals_pending,
            approval_oldest,
            regions_visible,
            regions_total,
            committed_lost,
            commit_high: Arc::default(),
        })
    }

    /// The unanswered approval requests in `memory`: how many, and how long
    /// the oldest has waited at `now_ms`.
    pub fn set_approvals(
        &self,
        namespace: &str,
        cluster: &str,
        memory: &EngineMemory,
        now_ms: u64,
    ) {
        let pending = memory.pending_approvals();
        let oldest_ms = pending
            .iter()
            .map(|d| now_ms.saturating_sub(d.at_ms))
            .max()
            .unwrap_or(0);
        self.approvals_pending
            .with_label_values(&[namespace, cluster])
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        self.approval_oldest
            .with_label_values(&[namespace, cluster])
            .set(oldest_ms as f64 / 1000.0);
    }

    /// The regions the operator reached at its last look at the cluster.
    pub fn set_regions(&self, namespace: &str, cluster: &str, v: RegionVisibility) {
        self.regions_visible
            .with_label_values(&[namespace, cluster])
            .set(i64::from(v.visible));
        self.regions_total
            .with_label_values(&[namespace, cluster])
            .set(i64::from(v.total));
    }

    /// Runs the commit audit ([`audit_commits`]) on the nodes' statuses and
    /// counts lost entries; returns the loss, once, when there is one.
    pub fn audit_commits(
        &self,
        namespace: &str,
        cluster: &str,
        statuses: &[&NodeStatus],
    ) -> Option<CommitLoss> {
        let counter = self.committed_lost.with_label_values(&[namespace, cluster]);
        let Ok(mut highs) = self.commit_high.lock() else {
            return None;
        };
        let key = (namespace.to_string(), cluster.to_string());
        let high = highs.get(&key).copied().unwrap_or(0);
        let (next, loss) = audit_commits(high, statuses);
        highs.insert(key, next);
        if let Some(l) = &loss {
            counter.inc_by(l.lost_entries);
        }
        loss
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
    /// Also forgets its approval, region and commit-audit series (a cluster
    /// created again under the same name starts a new history).
    pub fn remove_slo(&self, namespace: &str, cluster: &str) {
        let _ = self
            .slo_availability
            .remove_label_values(&[namespace, cluster]);
        self.remove_latency(namespace, cluster);
        for g in [
            &self.approvals_pending,
            &self.regions_visible,
            &self.regions_total,
        ] {
            let _ = g.remove_label_values(&[namespace, cluster]);
        }
        let _ = self
            .approval_oldest
            .remove_label_values(&[namespace, cluster]);
        let _ = self
            .committed_lost
            .remove_label_values(&[namespace, cluster]);
        if let Ok(mut highs) = self.commit_high.lock() {
            highs.remove(&(namespace.to_string(), cluster.to_string()));
        }
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
        assert!(text.contains(r#"roomkeeper_operator_slo_latency_objective_seconds{le="0.05",roomkeeper_cluster="live",roomkeeper_namespace="shop"} 0.05"#), "{text}");
        // A new target moves the series to its bucket; the old one is gone.
        m.set_slo(
            "shop",
            "live",
            &SloSpec {
                p99_latency_ms: 250,
                ..slo.clone()
            },
        );
        let text = m.render();
        assert!(text.contains(r#"roomkeeper_operator_slo_latency_objective_seconds{le="0.25",roomkeeper_cluster="live",roomkeeper_namespace="shop"} 0.25"#), "{text}");
        assert!(
            !text.contains(r#"roomkeeper_operator_slo_latency_objective_seconds{le="0.05""#),
            "{text}"
        );
        m.remove_slo("shop", "live");
        let text = m.render();
        assert!(!text.contains("roomkeeper_operator_slo_"), "{text}");
    }

    #[test]
    fn the_operator_view_series_are_set_and_leave_with_the_cluster() {
        let m = OperatorMetrics::new().expect("registry");
        m.set_regions(
            "shop",
            "live",
            RegionVisibility {
                visible: 1,
                total: 3,
            },
        );
        m.set_approvals("shop", "live", &EngineMemory::default(), 10_000);
        let leader = |last: u64, committed: u64| NodeStatus {
            node_id: 1,
            role: roomkeeper_api::admin::role::LEADER.into(),
            leader_id: Some(1),
            term: 4,
            last_log_index: last,
            committed_index: committed,
            millis_since_quorum_ack: Some(20),
            ..Default::default()
        };
        assert!(m
            .audit_commits("shop", "live", &[&leader(50, 50)])
            .is_none());
        let loss = m
            .audit_commits("shop", "live", &[&leader(30, 30)])
            .expect("a loss");
        assert_eq!(loss.lost_entries, 20);
        let text = m.render();
        for want in [
            r#"roomkeeper_operator_regions_visible{roomkeeper_cluster="live",roomkeeper_namespace="shop"} 1"#,
            r#"roomkeeper_operator_regions_total{roomkeeper_cluster="live",roomkeeper_namespace="shop"} 3"#,
            r#"roomkeeper_operator_approvals_pending{roomkeeper_cluster="live",roomkeeper_namespace="shop"} 0"#,
            r#"roomkeeper_operator_approval_pending_oldest_seconds{roomkeeper_cluster="live",roomkeeper_namespace="shop"} 0"#,
            r#"roomkeeper_operator_committed_entries_lost_total{roomkeeper_cluster="live",roomkeeper_namespace="shop"} 20"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        m.remove_slo("shop", "live");
        let text = m.render();
        assert!(!text.contains(r#"roomkeeper_cluster="live""#), "{text}");
        // A cluster created again starts a new commit history: no loss.
        assert!(m.audit_commits("shop", "live", &[&leader(5, 5)]).is_none());
    }
}
