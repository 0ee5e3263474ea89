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
