//! Prometheus metrics of the control plane: the monitor's view of every node
//! and region, and the playbook engine's decisions. Names are defined here once.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use roomkeeper_api::NodeId;
use roomkeeper_playbook::{Decision, Disposition, EngineMemory, GuardBudgets, HealthSnapshot};

use crate::load::EndpointSignal;

/// Metrics of one controller.
#[derive(Clone)]
pub struct ControlMetrics {
    registry: Registry,
    node_view_up: IntGaugeVec,
    node_lag_entries: IntGaugeVec,
    region_reachable: IntGaugeVec,
    shard_has_leader: IntGauge,
    shard_voters: IntGauge,
    decisions_total: IntCounterVec,
    guard_blocked_total: IntCounterVec,
    action_failures_total: IntCounterVec,
    tier_active: IntGaugeVec,
    sales_paused: IntGauge,
    traffic_weight: IntGaugeVec,
    region_stranded: IntGaugeVec,
    region_served: GaugeVec,
    quarantined: IntGaugeVec,
    rate_limit_remaining: IntGauge,
    failure_budget_remaining: IntGaugeVec,
    restart_budget_remaining: IntGaugeVec,
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

impl ControlMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let m = Self {
            registry: Registry::new(),
            node_view_up: gauge_vec(
                "roomkeeper_monitor_node_view_up",
                "1 when this view sees the node up (views: own_answer, controller_probe, process, leader_replication)",
                &["node_id", "region", "view"],
            )?,
            node_lag_entries: gauge_vec(
                "roomkeeper_monitor_node_lag_entries",
                "Entries the node is behind the leader, as the leader reports it",
                &["node_id", "region"],
            )?,
            region_reachable: gauge_vec(
                "roomkeeper_monitor_region_reachable",
                "1 when the controller reaches at least one node of the region",
                &["region"],
            )?,
            shard_has_leader: IntGauge::new("roomkeeper_monitor_shard_has_leader", "1 when the shard has a leader")?,
            shard_voters: IntGauge::new("roomkeeper_monitor_shard_voters", "Voters in the shard's membership")?,
            decisions_total: IntCounterVec::new(
                Opts::new("roomkeeper_playbook_decisions_total", "Playbook decisions by tier, action and disposition"),
                &["tier", "action", "disposition"],
            )?,
            guard_blocked_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_guard_blocked_total",
                    "Decisions a guard held back, by guard (snake_case: live_window, cooldown, never_below_quorum, …)",
                ),
                &["reason"],
            )?,
            action_failures_total: IntCounterVec::new(
                Opts::new("roomkeeper_playbook_action_failures_total", "Executed playbook actions that failed"),
                &["action"],
            )?,
            tier_active: gauge_vec(
                "roomkeeper_playbook_tier_active",
                "Activations of each tier currently open (firing or standing down)",
                &["tier"],
            )?,
            sales_paused: IntGauge::new(
                "roomkeeper_playbook_sales_paused",
                "1 while the playbook holds sales paused",
            )?,
            traffic_weight: gauge_vec(
                "roomkeeper_playbook_traffic_weight_percent",
                "Share of its buyers a region receives, as the playbook set it (0 drained, 100 normal)",
                &["region"],
            )?,
            region_stranded: gauge_vec(
                "roomkeeper_playbook_region_stranded",
                "1 when a region is drained but no tier holds it drained (the engine restores it; alert if it stays)",
                &["region"],
            )?,
            region_served: GaugeVec::new(
                Opts::new(
                    "roomkeeper_region_orders_served_per_second",
                    "Orders the region's nodes served per second, as the storefront's clients saw it",
                ),
                &["region"],
            )?,
            quarantined: gauge_vec(
                "roomkeeper_playbook_node_quarantined",
                "1 while a node is quarantined after spending its restart budget (kept out of leadership and traffic)",
                &["node_id"],
            )?,
            rate_limit_remaining: IntGauge::new(
                "roomkeeper_playbook_rate_limit_remaining",
                "Disruptive actions the rate limit still allows in the current window",
            )?,
            failure_budget_remaining: gauge_vec(
                "roomkeeper_playbook_failure_budget_remaining",
                "Failures an action on a target may still have before retries stop and a human is paged",
                &["action", "target"],
            )?,
            restart_budget_remaining: gauge_vec(
                "roomkeeper_playbook_restart_budget_remaining",
                "Restarts a node may still have in the window before it is quarantined",
                &["node_id"],
            )?,
        };
        m.registry.register(Box::new(m.node_view_up.clone()))?;
        m.registry.register(Box::new(m.sales_paused.clone()))?;
        m.registry.register(Box::new(m.traffic_weight.clone()))?;
        m.registry.register(Box::new(m.region_stranded.clone()))?;
        m.registry.register(Box::new(m.region_served.clone()))?;
        m.registry.register(Box::new(m.quarantined.clone()))?;
        m.registry
            .register(Box::new(m.rate_limit_remaining.clone()))?;
        m.registry
            .register(Box::new(m.failure_budget_remaining.clone()))?;
        m.registry
            .register(Box::new(m.restart_budget_remaining.clone()))?;
        m.registry.register(Box::new(m.node_lag_entries.clone()))?;
        m.registry.register(Box::new(m.region_reachable.clone()))?;
        m.registry.register(Box::new(m.shard_has_leader.clone()))?;
        m.registry.register(Box::new(m.shard_voters.clone()))?;
        m.registry.register(Box::new(m.decisions_total.clone()))?;
        m.registry
            .register(Box::new(m.guard_blocked_total.clone()))?;
        m.registry
            .register(Box::new(m.action_failures_total.clone()))?;
        m.registry.register(Box::new(m.tier_active.clone()))?;
        Ok(m)
    }

    /// Records the monitor's view of one tick.
    pub fn observe(&self, snap: &HealthSnapshot) {
        self.node_view_up.reset();
        self.node_lag_entries.reset();
        for n in &snap.nodes {
            let id = n.node_id.to_string();
            let views = [
                ("own_answer", Some(n.self_reported_role.is_some())),
                ("controller_probe", Some(n.reachable_by_controller)),
                ("process", n.process_alive),
                ("leader_replication", n.leader_sees_replicating),
            ];
            for (view, up) in views {
                if let Some(up) = up {
                    self.node_view_up
                        .with_label_values(&[&id, &n.region, view])
                        .set(i64::from(up));
                }
            }
            if let Some(lag) = n.lag_entries {
                self.node_lag_entries
                    .with_label_values(&[&id, &n.region])
                    .set(lag as i64);
            }
        }
        let mut regions: Vec<&str> = snap.nodes.iter().map(|n| n.region.as_str()).collect();
        regions.sort_unstable();
        regions.dedup();
        for r in regions {
            let reachable = snap.controller.regions_reachable.iter().any(|x| x == r);
            self.region_reachable
                .with_label_values(&[r])
                .set(i64::from(reachable));
        }
        self.shard_has_leader
            .set(i64::from(snap.shard.leader.is_some()));
        self.shard_voters.set(snap.shard.voters.len() as i64);
    }

    /// Counts a decision.
    pub fn decided(&self, d: &Decision) {
        let disposition = match &d.disposition {
            Disposition::Execute => "execute".to_string(),
            Disposition::DryRun => "dry_run".to_string(),
            Disposition::AwaitingApproval { .. } => "awaiting_approval".to_string(),
            Disposition::Suppressed { guard, .. } => format!("suppressed_{}", guard.name()),
        };
        let action = serde_json::to_value(d.action)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        self.decisions_total
            .with_label_values(&[&d.tier, &action, &disposition])
            .inc();
        if let Disposition::Suppressed { guard, .. } = &d.disposition {
            self.guard_blocked_total
                .with_label_values(&[&snake_case(guard.name())])
                .inc();
        }
    }

    /// Counts a failed action.
    pub fn failed(&self, d: &Decision) {
        let action = serde_json::to_value(d.action)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        self.action_failures_total
            .with_label_values(&[&action])
            .inc();
    }

    /// Mirrors the open tier activations.
    pub fn tiers(&self, memory: &EngineMemory) {
        self.tier_active.reset();
        for a in memory.activations() {
            self.tier_active.with_label_values(&[&a.tier]).inc();
        }
    }

    /// Mirrors what the playbook holds: sales, traffic weights, stranded
    /// regions, quarantines, what buyers get per region, and every guard's
    /// remaining budget (`budgets`, as the loop computed them this tick).
    pub fn playbook_state(
        &self,
        budgets: &GuardBudgets,
        memory: &EngineMemory,
        snap: &HealthSnapshot,
        signals: &BTreeMap<NodeId, EndpointSignal>,
    ) {
        self.sales_paused
            .set(i64::from(memory.sales_paused().is_some()));
        let mut regions: Vec<&str> = snap.nodes.iter().map(|n| n.region.as_str()).collect();
        regions.extend(memory.drained_regions().keys().map(String::as_str));
        regions.sort_unstable();
        regions.dedup();
        self.traffic_weight.reset();
        self.region_stranded.reset();
        self.region_served.reset();
        for r in regions {
            let drained = memory.drained_regions().contains_key(r);
            self.traffic_weight
                .with_label_values(&[r])
                .set(if drained { 0 } else { 100 });
            self.region_stranded
                .with_label_values(&[r])
                .set(i64::from(crate::state::is_stranded(memory, r)));
            let served: f64 = snap
                .nodes
                .iter()
                .filter(|n| n.region == r)
                .filter_map(|n| signals.get(&n.node_id))
                .map(|s| s.served_per_second)
                .sum();
            self.region_served.with_label_values(&[r]).set(served);
        }
        self.quarantined.reset();
        for id in memory.quarantined_nodes().keys() {
            self.quarantined
                .with_label_values(&[&id.to_string()])
                .set(1);
        }
        self.rate_limit_remaining
            .set(i64::from(budgets.rate_limit_remaining));
        self.failure_budget_remaining.reset();
        for f in &budgets.failure_budgets {
            self.failure_budget_remaining
                .with_label_values(&[f.action.name(), &f.target.to_string()])
                .set(i64::from(f.remaining));
        }
        self.restart_budget_remaining.reset();
        for r in &budgets.restart_budgets {
            self.restart_budget_remaining
                .with_label_values(&[&r.node.to_string()])
                .set(i64::from(r.remaining));
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "control metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `liveWindow` → `live_window`.
fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_playbook::{ActionKind, Guard, Phase, Target};

    #[test]
    fn guard_blocks_are_counted_by_snake_case_reason() {
        let m = ControlMetrics::new().unwrap();
        let d = Decision {
            id: 1,
            at_ms: 0,
            tier: "move".into(),
            level: Some(2),
            phase: Phase::Escalate,
            action: ActionKind::SetTrafficWeightZero,
            target: Target::Region("ap".into()),
            reason: String::new(),
            evidence: Vec::new(),
            disposition: Disposition::Suppressed {
                guard: Guard::LiveWindow,
                why: "deferred".into(),
            },
            follows: None,
        };
        m.decided(&d);
        m.decided(&d);
        let text = m.render();
        assert!(
            text.contains("roomkeeper_guard_blocked_total{reason=\"live_window\"} 2"),
            "{text}"
        );
    }
}
