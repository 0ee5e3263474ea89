//! The one health-snapshot builder: an observation (and what clients felt)
//! becomes the engine's [`HealthSnapshot`]. Both bindings call this; the
//! thresholds it applies come from the playbook, never from a binding.

use std::collections::BTreeMap;

use roomkeeper_api::NodeId;
use roomkeeper_playbook::{
    ControllerView, HealthSnapshot, NodeHealth, Playbook, Role, RoomLiveWindow, ShardHealth,
};

use crate::load::EndpointSignal;
use crate::observation::ClusterObservation;

/// How the builder reads an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRules {
    /// A follower that acknowledged the leader within this is being replicated to.
    pub replicating_ack_ms: u64,
    /// Regions the cluster spans (the controller's majority is counted against it).
    pub regions_total: u32,
}

impl SnapshotRules {
    /// The rules a playbook states, for a cluster of `regions_total` regions.
    pub fn from_playbook(playbook: &Playbook, regions_total: u32) -> Self {
        Self {
            replicating_ack_ms: playbook.health.replicating_ack_ms,
            regions_total,
        }
    }
}

/// Builds the engine's snapshot of one tick. Nodes that are no longer members
/// of the shard (removed by an evacuation, or retired after a wiped volume)
/// leave the health view: no tier may act on, or spend a budget on, a node the
/// group has let go.
pub fn build(
    obs: &ClusterObservation,
    signals: &BTreeMap<NodeId, EndpointSignal>,
    rules: SnapshotRules,
) -> HealthSnapshot {
    let leader = obs.leader_status();
    let mut regions_reachable: Vec<String> = obs
        .nodes
        .iter()
        .filter(|n| n.healthz_ok)
        .map(|n| n.region.clone())
        .collect();
    regions_reachable.sort();
    regions_reachable.dedup();
    let nodes = obs
        .nodes
        .iter()
        .filter(|n| obs.is_member(n.node_id))
        .map(|n| {
            let progress = leader.and_then(|l| l.progress_of(n.node_id));
            let is_leader = obs.leader == Some(n.node_id);
            let signal = signals.get(&n.node_id).filter(|s| s.requests > 0);
            NodeHealth {
                node_id: n.node_id,
                region: n.region.clone(),
                zone: n.zone.clone(),
                reachable_by_controller: n.healthz_ok,
                process_alive: n.process_alive,
                self_reported_role: n
                    .status
                    .as_ref()
                    .and_then(|s| Role::from_admin_name(&s.role)),
                leader_sees_replicating: match (leader, is_leader, progress) {
                    (Some(_), true, _) => Some(true),
                    (Some(l), false, Some(_)) => {
                        Some(l.acked_within(n.node_id, rules.replicating_ack_ms))
                    }
                    _ => None,
                },
                lag_entries: progress.map(|p| p.lag),
                // A p99 over no served order says nothing: leave it out
                // rather than report "0 ms".
                order_p99_ms: signal.filter(|s| s.p99_ms > 0.0).map(|s| s.p99_ms),
                error_rate: signal.map(|s| s.error_rate),
                disk_ok: None,
            }
        })
        .collect();
    HealthSnapshot {
        at_ms: obs.at_ms,
        controller: ControllerView {
            regions_reachable,
            regions_total: rules.regions_total,
        },
        nodes,
        shard: ShardHealth {
            leader: obs.leader,
            term: obs.term,
            voters: obs.voters.clone(),
            learners: obs.learners.clone(),
        },
        live_windows: live_windows(obs),
    }
}

/// The rooms' live windows every answering node reported, once each (nodes
/// a little behind may not know a new window yet: the union counts).
fn live_windows(obs: &ClusterObservation) -> Vec<RoomLiveWindow> {
    let mut seen = std::collections::BTreeSet::new();
    for n in &obs.nodes {
        for w in n.status.iter().flat_map(|s| &s.live_windows) {
            seen.insert((
                w.window.start_ms,
                w.window.end_ms,
                w.room.clone(),
                w.home_region.clone(),
                w.window.expected_peak_orders_per_s,
            ));
        }
    }
    seen.into_iter()
        .map(
            |(start_ms, end_ms, room, home_region, expected_peak_orders_per_s)| RoomLiveWindow {
                room,
                home_region,
                start_ms,
                end_ms,
                expected_peak_orders_per_s,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeObservation;
    use roomkeeper_api::{NodeStatus, ReplicationProgress};

    fn rules() -> SnapshotRules {
        SnapshotRules {
            replicating_ack_ms: 2_000,
            regions_total: 3,
        }
    }

    fn node(id: u64, region: &str, status: Option<NodeStatus>) -> NodeObservation {
        NodeObservation {
            node_id: id,
            region: region.into(),
            zone: format!("{region}-a"),
            process_alive: Some(status.is_some()),
            healthz_ok: status.is_some(),
            status,
        }
    }

    fn leader(voters: &[u64], acks: &[(u64, u64)]) -> NodeStatus {
        NodeStatus {
            node_id: 1,
            role: "leader".into(),
            term: 4,
            leader_id: Some(1),
            voters: voters.to_vec(),
            replication: acks
                .iter()
                .map(|(id, ms)| {
                    (
                        id.to_string(),
                        ReplicationProgress {
                            matched_index: Some(10),
                            lag: 0,
                            millis_since_ack: Some(*ms),
                        },
                    )
                })
                .collect(),
            ..NodeStatus::default()
        }
    }

    #[test]
    fn live_windows_are_the_union_of_what_nodes_report() {
        let w = |room: &str, start_ms| roomkeeper_api::LiveWindowOfRoom {
            room: room.into(),
            home_region: "ap".into(),
            window: roomkeeper_api::LiveWindow {
                start_ms,
                end_ms: start_ms + 10,
                expected_peak_orders_per_s: 900,
            },
        };
        let mut a = leader(&[1, 2], &[(2, 10)]);
        a.live_windows = vec![w("r1", 5), w("r2", 1)];
        let mut b = leader(&[1, 2], &[]);
        b.node_id = 2;
        b.live_windows = vec![w("r1", 5)];
        let obs =
            ClusterObservation::new(1_000, vec![node(1, "ap", Some(a)), node(2, "eu", Some(b))]);
        let snap = build(&obs, &BTreeMap::new(), rules());
        let rooms: Vec<(&str, u64)> = snap
            .live_windows
            .iter()
            .map(|w| (w.room.as_str(), w.start_ms))
            .collect();
        assert_eq!(rooms, vec![("r2", 1), ("r1", 5)]);
        assert_eq!(snap.live_windows[0].home_region, "ap");
        assert_eq!(snap.live_windows[0].expected_peak_orders_per_s, 900);
    }

    #[test]
    fn a_node_removed_from_the_membership_leaves_the_health_view() {
        // Node 3 was replaced by node 6 during an evacuation; its process is
        // gone for good. No tier may target it any more.
        let obs = ClusterObservation::new(
            1_000,
            vec![
                node(1, "eu", Some(leader(&[1, 2, 6], &[(2, 10), (6, 10)]))),
                node(2, "us", None),
                node(3, "ap", None),
                node(6, "us", None),
            ],
        );
        let snap = build(&obs, &BTreeMap::new(), rules());
        let ids: Vec<u64> = snap.nodes.iter().map(|n| n.node_id).collect();
        assert_eq!(ids, vec![1, 2, 6]);
    }

    #[test]
    fn replication_is_judged_by_the_playbooks_ack_threshold() {
        let obs = ClusterObservation::new(
            1_000,
            vec![
                node(1, "eu", Some(leader(&[1, 2, 3], &[(2, 1_500), (3, 2_500)]))),
                node(2, "us", None),
                node(3, "ap", None),
            ],
        );
        let snap = build(&obs, &BTreeMap::new(), rules());
        let seen: Vec<Option<bool>> = snap
            .nodes
            .iter()
            .map(|n| n.leader_sees_replicating)
            .collect();
        assert_eq!(seen, vec![Some(true), Some(true), Some(false)]);
    }

    #[test]
    fn a_p99_over_no_served_order_is_no_evidence() {
        let obs = ClusterObservation::new(1_000, vec![node(1, "eu", Some(leader(&[1], &[])))]);
        let signals = BTreeMap::from([(
            1,
            EndpointSignal {
                p99_ms: 0.0,
                error_rate: 1.0,
                requests: 40,
                served_per_second: 0.0,
            },
        )]);
        let snap = build(&obs, &signals, rules());
        assert_eq!(snap.nodes[0].order_p99_ms, None);
        assert_eq!(snap.nodes[0].error_rate, Some(1.0));
    }
}
