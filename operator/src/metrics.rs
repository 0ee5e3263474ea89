//! The operator's own Prometheus metrics (`roomkeeper_operator_*`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct OperatorMetrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub reconcile_duration: Histogram,
    pub errors: IntCounterVec,
    pub writes: IntCounterVec,
    pub leader: IntGauge,
    pub playbook_decisions: IntCounterVec,
}

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
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
