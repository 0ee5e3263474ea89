//! The seam through which the control loop changes the world, and the pure
//! choices every binding makes the same way (which voter takes leadership,
//! where an evacuated region's voters go). A binding implements [`Actuate`]
//! with its own means (processes and admin calls locally; pods, Kubernetes
//! objects and admin calls in the operator) and nothing else.

use std::collections::BTreeMap;
use std::future::Future;

use roomkeeper_api::{NodeId, ReplicatedGate, SalesGateReply};
use roomkeeper_playbook::{ActionKind, Decision, Target};

use crate::observation::{ClusterObservation, NodeObservation};

/// Why an action was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// The binding cannot do this; a human follows the runbook.
    #[error("{action} is not carried out by the {binding} binding; follow {runbook}")]
    Unsupported {
        action: &'static str,
        binding: &'static str,
        runbook: &'static str,
    },
    /// The action does not apply to its target.
    #[error("{action} does not apply to {target}")]
    NotApplicable {
        action: &'static str,
        target: String,
    },
    /// Nothing qualifies to carry the action out.
    #[error("{0}")]
    NoCandidate(String),
    /// The binding tried and failed.
    #[error("{0}")]
    Failed(String),
}

/// What a binding can do to the cluster. Each call carries out one step and
/// says what it did, in words a person reads in the decision log.
pub trait Actuate {
    /// The binding's name in messages (`local`, `Kubernetes`).
    fn binding(&self) -> &'static str;
    /// Restart (or recreate) the node's process or pod.
    fn restart_node(&mut self, id: NodeId)
        -> impl Future<Output = Result<String, ActError>> + Send;
    /// Ask the current leader `from` to hand leadership to `to`.
    fn transfer_leadership(
        &mut self,
        from: NodeId,
        to: NodeId,
    ) -> impl Future<Output = Result<String, ActError>> + Send;
    /// Route `weight` percent of the region's share of new buyers to it.
    fn set_traffic_weight(
        &mut self,
        region: &str,
        weight: u32,
    ) -> impl Future<Output = Result<String, ActError>> + Send;
    /// Replace voter `old` with a new node in `into_region`: add a learner,
    /// wait until it has caught up, promote it, remove `old`. Returns the new id.
    fn replace_voter(
        &mut self,
        old: NodeId,
        into_region: &str,
    ) -> impl Future<Output = Result<NodeId, ActError>> + Send;
    /// Pause (or resume) every sale: orders are refused with `sales_paused`.
    fn set_sales_paused(
        &mut self,
        paused: bool,
    ) -> impl Future<Output = Result<String, ActError>> + Send;
}

fn inside(target: &Target, n: &NodeObservation) -> bool {
    match target {
        Target::Node(id) => n.node_id == *id,
        Target::Region(r) => &n.region == r,
        Target::Shard => false,
    }
}

/// Who should take leadership away from `target`: `Ok(None)` when the leader
/// is already outside it; otherwise the voter outside the target that the
/// leader saw acknowledge within `ack_ms`, least behind first; never a
/// quarantined node.
pub fn successor(
    obs: &ClusterObservation,
    target: &Target,
    ack_ms: u64,
    quarantined: &[NodeId],
) -> Result<Option<(NodeId, NodeId)>, ActError> {
    let leader = obs
        .leader_status()
        .ok_or_else(|| ActError::NoCandidate("the shard has no leader to move".into()))?;
    let leader_inside = obs.node(leader.node_id).is_some_and(|n| inside(target, n));
    if !leader_inside {
        return Ok(None);
    }
    obs.nodes
        .iter()
        .filter(|n| !inside(target, n) && obs.voters.contains(&n.node_id))
        .filter(|n| !quarantined.contains(&n.node_id))
        .filter(|n| leader.acked_within(n.node_id, ack_ms))
        .min_by_key(|n| {
            (
                leader.progress_of(n.node_id).map_or(u64::MAX, |p| p.lag),
                n.node_id,
            )
        })
        .map(|n| Some((leader.node_id, n.node_id)))
        .ok_or_else(|| {
            ActError::NoCandidate(format!("no live voter outside {target} to take leadership"))
        })
}

/// Who should take leadership *into* `into` (a person's switchover to a
/// named node or region): `Ok(None)` when the leader is already there;
/// otherwise the voter inside `into` that the leader saw acknowledge within
/// `ack_ms`, least behind first; never a quarantined node. The same rule as
/// [`successor`], aimed instead of away.
pub fn successor_into(
    obs: &ClusterObservation,
    into: &Target,
    ack_ms: u64,
    quarantined: &[NodeId],
) -> Result<Option<(NodeId, NodeId)>, ActError> {
    let leader = obs
        .leader_status()
        .ok_or_else(|| ActError::NoCandidate("the shard has no leader to move".into()))?;
    if obs.node(leader.node_id).is_some_and(|n| inside(into, n)) {
        return Ok(None);
    }
    if let Target::Node(id) = into {
        let why = if !obs.voters.contains(id) {
            Some(format!("node {id} is not a voter of the shard"))
        } else if quarantined.contains(id) {
            Some(format!(
                "node {id} is quarantined (its restart budget was spent)"
            ))
        } else if !leader.acked_within(*id, ack_ms) {
            Some(format!(
                "the leader has not heard from node {id} within {ack_ms} ms: it is down, cut off or far behind"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ActError::NoCandidate(why));
        }
    }
    obs.nodes
        .iter()
        .filter(|n| inside(into, n) && obs.voters.contains(&n.node_id))
        .filter(|n| !quarantined.contains(&n.node_id))
        .filter(|n| leader.acked_within(n.node_id, ack_ms))
        .min_by_key(|n| {
            (
                leader.progress_of(n.node_id).map_or(u64::MAX, |p| p.lag),
                n.node_id,
            )
        })
        .map(|n| Some((leader.node_id, n.node_id)))
        .ok_or_else(|| {
            ActError::NoCandidate(format!(
                "no voter in {into} that the leader heard from within {ack_ms} ms can take leadership"
            ))
        })
}

/// Where each voter of an evacuated region goes: one region each, always the
/// surviving, not drained region that holds the fewest voters so far.
pub fn evacuation_plan(
    obs: &ClusterObservation,
    region: &str,
    drained: &[String],
) -> Result<Vec<(NodeId, String)>, ActError> {
    let doomed: Vec<NodeId> = obs
        .voters
        .iter()
        .copied()
        .filter(|v| obs.node(*v).is_some_and(|n| n.region == region))
        .collect();
    let mut per_region: BTreeMap<String, usize> = BTreeMap::new();
    for n in &obs.nodes {
        if n.region != region && !drained.contains(&n.region) {
            let entry = per_region.entry(n.region.clone()).or_insert(0);
            if obs.voters.contains(&n.node_id) {
                *entry += 1;
            }
        }
    }
    let mut plan = Vec::new();
    for old in doomed {
        let into = per_region
            .iter()
            .min_by_key(|(r, c)| (**c, (*r).clone()))
            .map(|(r, _)| r.clone())
            .ok_or_else(|| {
                ActError::NoCandidate("no surviving region to move voters into".into())
            })?;
        *per_region.entry(into.clone()).or_insert(0) += 1;
        plan.push((old, into));
    }
    Ok(plan)
}

/// What setting the sales gate of every node a binding reached did, in
/// words; both bindings call `POST /admin/sales` on each node and report
/// through this. It succeeds when at least one node answered: the edge gate
/// of a reachable node is what stops buyers, and the loop sets the gate
/// again on every node that drifts (see [`gate_drift`]).
pub fn sales_gate_summary(
    paused: bool,
    replies: &[(NodeId, Result<SalesGateReply, String>)],
) -> Result<String, ActError> {
    let verb = if paused { "paused" } else { "resumed" };
    let reached: Vec<String> = replies
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(id, _)| id.to_string())
        .collect();
    let unreachable: Vec<String> = replies
        .iter()
        .filter_map(|(id, r)| r.as_ref().err().map(|e| format!("{id} ({e})")))
        .collect();
    if reached.is_empty() {
        return Err(ActError::Failed(format!(
            "sales not {verb}: no node answered the sales gate call{}",
            if unreachable.is_empty() {
                String::new()
            } else {
                format!(": {}", unreachable.join(", "))
            }
        )));
    }
    let mut replicated = None;
    let mut failures = Vec::new();
    for (id, r) in replies {
        match r {
            Ok(SalesGateReply {
                replicated: ReplicatedGate::Committed,
                ..
            }) => replicated = Some(*id),
            Ok(SalesGateReply {
                replicated: ReplicatedGate::Failed { message },
                ..
            }) => failures.push(format!("leader {id}: {message}")),
            _ => {}
        }
    }
    let mut words = format!("sales {verb} at the edge of nodes {}", reached.join(", "));
    if !unreachable.is_empty() {
        words.push_str(&format!(" (unreachable: {})", unreachable.join(", ")));
    }
    match (replicated, failures.is_empty()) {
        (Some(id), _) => words.push_str(&format!("; the replicated gate committed by leader {id}")),
        (None, false) => words.push_str(&format!(
            "; the replicated gate not committed ({}): the edge gates hold",
            failures.join("; ")
        )),
        (None, true) => words.push_str("; no leader answered: the edge gates hold"),
    }
    Ok(words)
}

/// Nodes whose sales gate is not what the engine memory wants: a node whose
/// edge gate differs (a restarted node forgets it), or, when sales should
/// be open, a leader whose replicated state is still paused.
pub fn gate_drift(obs: &ClusterObservation, want_paused: bool) -> Vec<NodeId> {
    obs.nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .filter(|s| {
            s.edge_sales_paused != want_paused
                || (!want_paused && s.claims_leadership() && s.sales_paused)
        })
        .map(|s| s.node_id)
        .collect()
}

/// What the engine memory says the actuators must respect.
#[derive(Debug, Clone, Default)]
pub struct Constraints {
    /// Regions drained of traffic: no voter is moved into them.
    pub drained: Vec<String>,
    /// Nodes quarantined after their restart budget: never given leadership.
    pub quarantined: Vec<NodeId>,
    /// The playbook's replication threshold (`spec.health.replicatingAckMs`).
    pub ack_ms: u64,
}

/// Carries out one decision through the binding.
pub async fn carry_out<A: Actuate>(
    d: &Decision,
    obs: &ClusterObservation,
    actuator: &mut A,
    limits: &Constraints,
) -> Result<String, ActError> {
    let not_applicable = || ActError::NotApplicable {
        action: d.action.name(),
        target: d.target.to_string(),
    };
    match (d.action, &d.target) {
        (ActionKind::RecordEvent, _) => Ok("recorded".into()),
        (ActionKind::PageHuman, _) => Ok("paged".into()),
        (ActionKind::RestartNode, Target::Node(id)) => actuator.restart_node(*id).await,
        (ActionKind::TransferLeadershipAway, target) => {
            match successor(obs, target, limits.ack_ms, &limits.quarantined)? {
                None => Ok(format!("the leader is already outside {target}")),
                Some((from, to)) => actuator.transfer_leadership(from, to).await,
            }
        }
        (ActionKind::SetTrafficWeightZero, Target::Region(r)) => {
            actuator.set_traffic_weight(r, 0).await
        }
        (ActionKind::RestoreTrafficWeight, Target::Region(r)) => {
            actuator.set_traffic_weight(r, 100).await
        }
        (ActionKind::ReplaceVotersElsewhere, Target::Region(r)) => {
            let mut replaced = Vec::new();
            for (old, into) in evacuation_plan(obs, r, &limits.drained)? {
                let new = actuator.replace_voter(old, &into).await?;
                replaced.push(format!("{old}→{new} ({into})"));
            }
            if replaced.is_empty() {
                Ok(format!("{r} holds no voter any more"))
            } else {
                Ok(format!("voters of {r} replaced: {}", replaced.join(", ")))
            }
        }
        (ActionKind::PauseSales, _) => actuator.set_sales_paused(true).await,
        (ActionKind::ResumeSales, _) => actuator.set_sales_paused(false).await,
        (ActionKind::ForceRecoverFromMinority, _) => Err(ActError::Unsupported {
            action: ActionKind::ForceRecoverFromMinority.name(),
            binding: actuator.binding(),
            runbook: "runbooks/tier-t4-protect.md",
        }),
        _ => Err(not_applicable()),
    }
}

/// Carries out a person's switchover: leadership moves from the current
/// leader into `into` ([`successor_into`]). Any other decision is carried
/// out as [`carry_out`] does.
pub async fn carry_out_into<A: Actuate>(
    d: &Decision,
    obs: &ClusterObservation,
    actuator: &mut A,
    limits: &Constraints,
    into: &Target,
) -> Result<String, ActError> {
    if d.action != ActionKind::TransferLeadershipAway {
        return carry_out(d, obs, actuator, limits).await;
    }
    match successor_into(obs, into, limits.ack_ms, &limits.quarantined)? {
        None => Ok(format!("the leader is already in {into}")),
        Some((from, to)) => actuator.transfer_leadership(from, to).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_api::{NodeStatus, ReplicationProgress};

    fn obs(leader: u64, acks: &[(u64, u64, u64)]) -> ClusterObservation {
        let regions = ["eu", "eu", "us", "us", "ap"];
        let nodes = (1..=5u64)
            .map(|id| NodeObservation {
                node_id: id,
                region: regions[(id - 1) as usize].into(),
                zone: "a".into(),
                process_alive: Some(true),
                healthz_ok: true,
                status: (id == leader).then(|| NodeStatus {
                    node_id: id,
                    role: "leader".into(),
                    term: 2,
                    leader_id: Some(id),
                    voters: vec![1, 2, 3, 4, 5],
                    replication: acks
                        .iter()
                        .map(|(n, ms, lag)| {
                            (
                                n.to_string(),
                                ReplicationProgress {
                                    matched_index: Some(1),
                                    lag: *lag,
                                    millis_since_ack: Some(*ms),
                                },
                            )
                        })
                        .collect(),
                    ..NodeStatus::default()
                }),
            })
            .collect();
        ClusterObservation::new(0, nodes)
    }

    #[test]
    fn leadership_goes_to_the_live_voter_least_behind_outside_the_region() {
        let o = obs(1, &[(2, 10, 0), (3, 5_000, 0), (4, 10, 7), (5, 10, 3)]);
        let eu = Target::Region("eu".into());
        let s = successor(&o, &eu, 2_000, &[]).expect("a successor");
        assert_eq!(
            s,
            Some((1, 5)),
            "node 3 is silent, node 4 is further behind"
        );
        let s = successor(&o, &eu, 2_000, &[5]).expect("a successor");
        assert_eq!(s, Some((1, 4)), "a quarantined node never takes leadership");
    }

    #[test]
    fn a_leader_already_outside_is_left_alone_and_no_leader_is_an_error() {
        let o = obs(3, &[(1, 10, 0)]);
        assert_eq!(
            successor(&o, &Target::Region("eu".into()), 2_000, &[]),
            Ok(None)
        );
        let none = ClusterObservation::new(0, Vec::new());
        assert!(successor(&none, &Target::Shard, 2_000, &[]).is_err());
    }

    fn gate_reply(
        id: NodeId,
        replicated: ReplicatedGate,
    ) -> (NodeId, Result<SalesGateReply, String>) {
        (
            id,
            Ok(SalesGateReply {
                node_id: id,
                edge_paused: true,
                replicated,
            }),
        )
    }

    #[test]
    fn the_sales_gate_holds_when_any_node_answered_and_says_what_replicated() {
        let replies = vec![
            gate_reply(1, ReplicatedGate::Committed),
            gate_reply(2, ReplicatedGate::NotLeader { leader: Some(1) }),
            (3, Err("connection refused".to_string())),
        ];
        let words = sales_gate_summary(true, &replies).expect("paused");
        assert!(
            words.contains("paused at the edge of nodes 1, 2"),
            "{words}"
        );
        assert!(
            words.contains("unreachable: 3 (connection refused)"),
            "{words}"
        );
        assert!(words.contains("committed by leader 1"), "{words}");

        let no_quorum = vec![
            gate_reply(
                1,
                ReplicatedGate::Failed {
                    message: "not committed within 2000 ms".into(),
                },
            ),
            gate_reply(2, ReplicatedGate::NotLeader { leader: None }),
        ];
        let words = sales_gate_summary(true, &no_quorum).expect("paused at the edge");
        assert!(
            words.contains("not committed (leader 1: not committed within"),
            "{words}"
        );

        let nobody = vec![(1, Err("timeout".to_string()))];
        let err = sales_gate_summary(false, &nobody).expect_err("nobody answered");
        assert!(err.to_string().contains("sales not resumed"), "{err}");
    }

    #[test]
    fn gate_drift_names_forgetful_nodes_and_a_leader_still_paused() {
        let mut o = obs(1, &[]);
        assert!(gate_drift(&o, false).is_empty(), "all open, none wanted");
        assert_eq!(
            gate_drift(&o, true),
            vec![1],
            "only node 1 reports a status"
        );
        if let Some(s) = o.nodes[0].status.as_mut() {
            s.edge_sales_paused = true;
        }
        assert!(gate_drift(&o, true).is_empty());
        if let Some(s) = o.nodes[0].status.as_mut() {
            s.edge_sales_paused = false;
            s.sales_paused = true;
        }
        assert_eq!(
            gate_drift(&o, false),
            vec![1],
            "a leader still paused in the replicated state must be opened"
        );
    }

    #[test]
    fn a_switchover_goes_to_the_named_live_voter_or_says_why_not() {
        let o = obs(1, &[(2, 10, 0), (3, 5_000, 0), (4, 10, 7), (5, 10, 3)]);
        assert_eq!(
            successor_into(&o, &Target::Node(4), 2_000, &[]),
            Ok(Some((1, 4)))
        );
        assert_eq!(successor_into(&o, &Target::Node(1), 2_000, &[]), Ok(None));
        assert_eq!(
            successor_into(&o, &Target::Region("us".into()), 2_000, &[]),
            Ok(Some((1, 4))),
            "node 3 is silent, so us goes to node 4"
        );
        let silent = successor_into(&o, &Target::Node(3), 2_000, &[]).unwrap_err();
        assert!(
            silent.to_string().contains("not heard from node 3"),
            "{silent}"
        );
        let stranger = successor_into(&o, &Target::Node(9), 2_000, &[]).unwrap_err();
        assert!(stranger.to_string().contains("not a voter"), "{stranger}");
        let q = successor_into(&o, &Target::Node(5), 2_000, &[5]).unwrap_err();
        assert!(q.to_string().contains("quarantined"), "{q}");
    }

    #[test]
    fn evacuated_voters_spread_over_the_least_loaded_surviving_regions() {
        let o = obs(1, &[]);
        let plan = evacuation_plan(&o, "eu", &[]).expect("plan");
        assert_eq!(plan, vec![(1, "ap".to_string()), (2, "ap".to_string())]);
        let plan = evacuation_plan(&o, "us", &["ap".to_string()]).expect("plan");
        assert_eq!(plan, vec![(3, "eu".to_string()), (4, "eu".to_string())]);
        assert!(evacuation_plan(&o, "eu", &["us".into(), "ap".into()]).is_err());
    }
}
