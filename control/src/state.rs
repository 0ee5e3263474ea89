//! What the control loop holds, as a drill judges it: traffic weight per
//! region, sales, open tiers, stranded regions and where the leader is. Both
//! bindings build it here from the engine memory (the local one also from the
//! storefront's routing), so a drill reads the same thing locally and on
//! Kubernetes.

use std::collections::BTreeMap;

use roomkeeper_chaos::report::ControlState;
use roomkeeper_playbook::{ActivationPhase, EngineMemory, Target};

use crate::load::TrafficMap;
use crate::observation::ClusterObservation;

/// A region the engine drained that no active tier holds there: nobody will
/// restore its traffic (a gauge, and a failed drill).
pub fn is_stranded(memory: &EngineMemory, region: &str) -> bool {
    memory.drained_regions().contains_key(region) && !held(memory, region)
}

/// The control loop's state at `at_ms` (the caller's clock). `routing` is the
/// storefront's traffic map when the binding routes buyers itself (local);
/// without it the weights are the engine memory's (drained: 0).
pub fn control_state(
    memory: &EngineMemory,
    obs: &ClusterObservation,
    routing: Option<&TrafficMap>,
    at_ms: u64,
) -> ControlState {
    let routed = routing.map(TrafficMap::weights).unwrap_or_default();
    let mut regions: Vec<&str> = obs.nodes.iter().map(|n| n.region.as_str()).collect();
    regions.extend(memory.drained_regions().keys().map(String::as_str));
    regions.extend(routed.keys().map(String::as_str));
    regions.sort_unstable();
    regions.dedup();
    let weights: BTreeMap<String, u32> = regions
        .iter()
        .map(|r| {
            let engine = if memory.drained_regions().contains_key(*r) {
                0
            } else {
                100
            };
            let w = routed.get(*r).copied().unwrap_or(100).min(engine);
            (r.to_string(), w)
        })
        .collect();
    let stranded = regions
        .iter()
        .filter(|r| weights.get(**r).is_some_and(|w| *w == 0) && !held(memory, r))
        .map(|r| r.to_string())
        .collect();
    let tiers = memory
        .activations()
        .iter()
        .map(|a| {
            let phase = match a.phase {
                ActivationPhase::Active => "active",
                _ => "standing down",
            };
            format!("T{} {} on {}: {phase}", a.level, a.tier, a.target)
        })
        .collect();
    let leader_away = match obs.leader {
        None => Some("no leader elected".to_string()),
        Some(l) if memory.is_quarantined(l) => Some(format!("leader {l} is quarantined")),
        Some(l) => obs
            .nodes
            .iter()
            .find(|n| n.node_id == l)
            .filter(|n| weights.get(&n.region).is_some_and(|w| *w == 0))
            .map(|n| format!("leader {l} is in region {} at weight 0", n.region)),
    };
    ControlState {
        at_ms,
        weights,
        sales_paused: memory.sales_paused().is_some() || routing.is_some_and(TrafficMap::is_paused),
        tiers,
        stranded,
        leader: obs.leader,
        leader_away,
    }
}

/// An active tier holds `region` (it drained it on purpose and will restore it).
fn held(memory: &EngineMemory, region: &str) -> bool {
    memory.activations().iter().any(|a| {
        a.phase == ActivationPhase::Active && a.target == Target::Region(region.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeObservation;
    use roomkeeper_api::NodeStatus;

    fn node(id: u64, region: &str, leader: bool) -> NodeObservation {
        NodeObservation {
            node_id: id,
            region: region.into(),
            zone: format!("{region}-a"),
            process_alive: Some(true),
            healthz_ok: true,
            status: Some(NodeStatus {
                node_id: id,
                role: if leader { "leader" } else { "follower" }.into(),
                term: 2,
                leader_id: Some(1),
                voters: vec![1, 2],
                ..NodeStatus::default()
            }),
        }
    }

    fn memory(drained: &[&str]) -> EngineMemory {
        let regions: serde_json::Map<String, serde_json::Value> = drained
            .iter()
            .map(|r| (r.to_string(), serde_json::json!("engine")))
            .collect();
        serde_json::from_value(serde_json::json!({
            "nextDecisionId": 1, "records": [], "activations": [], "drainedRegions": regions
        }))
        .expect("memory")
    }

    #[test]
    fn a_drained_region_no_tier_holds_is_stranded_and_not_normal() {
        let obs = ClusterObservation::new(0, vec![node(1, "eu", true), node(2, "ap", false)]);
        let s = control_state(&memory(&["ap"]), &obs, None, 7);
        assert_eq!(s.at_ms, 7);
        assert_eq!(s.weights["ap"], 0);
        assert_eq!(s.weights["eu"], 100);
        assert_eq!(s.stranded, vec!["ap".to_string()]);
        assert!(is_stranded(&memory(&["ap"]), "ap"));
        assert_eq!(s.not_normal(), vec!["region ap at weight 0".to_string()]);
        assert_eq!(s.leader, Some(1));
        assert_eq!(s.leader_away, None);
        let s = control_state(&memory(&[]), &obs, None, 7);
        assert!(s.not_normal().is_empty(), "{s:?}");
    }

    #[test]
    fn the_storefronts_routing_counts_and_a_leader_in_a_drained_region_is_away() {
        let obs = ClusterObservation::new(0, vec![node(1, "eu", true), node(2, "ap", false)]);
        let routing = TrafficMap::default();
        routing.set_weight("eu", 0);
        routing.set_paused(true);
        let s = control_state(&memory(&[]), &obs, Some(&routing), 0);
        assert_eq!(s.weights["eu"], 0);
        assert!(s.sales_paused);
        assert_eq!(s.stranded, vec!["eu".to_string()]);
        assert_eq!(
            s.leader_away.as_deref(),
            Some("leader 1 is in region eu at weight 0")
        );
        let headless = ClusterObservation::new(0, vec![node(2, "ap", false)]);
        let s = control_state(&memory(&[]), &headless, None, 0);
        assert_eq!(s.leader_away.as_deref(), Some("no leader elected"));
    }
}
