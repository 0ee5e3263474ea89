//! What a binding saw of the cluster in one tick, before any interpretation:
//! per node, the controller's own probes and the node's answer. Bindings fill
//! it through [`Observe`]; the one snapshot builder ([`crate::snapshot`])
//! turns it into the engine's health snapshot.

use std::collections::BTreeMap;
use std::future::Future;

use roomkeeper_api::{leader_of, membership_of, NodeId, NodeStatus};
use serde::Serialize;

use crate::load::EndpointSignal;

/// What the controller saw of one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeObservation {
    pub node_id: NodeId,
    pub region: String,
    pub zone: String,
    /// The process (or pod container) runs, as the binding's supervisor sees
    /// it; `None` when the binding cannot see the process (a pod on a node the
    /// operator does not run, or a controller cut off from the region).
    pub process_alive: Option<bool>,
    /// An independent probe of the controller: `/healthz` (or the status call) answered.
    pub healthz_ok: bool,
    /// The node's own answer, if it answered.
    pub status: Option<NodeStatus>,
}

/// One tick of observations, with the leader and membership read from the
/// answers by the one rule every plane uses ([`roomkeeper_api::leader_of`]).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterObservation {
    pub at_ms: u64,
    pub nodes: Vec<NodeObservation>,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ClusterObservation {
    /// Derives leader, term and membership from the nodes' answers.
    pub fn new(at_ms: u64, nodes: Vec<NodeObservation>) -> Self {
        let statuses = nodes.iter().filter_map(|n| n.status.as_ref());
        let leader = leader_of(statuses.clone()).map(|s| s.node_id);
        let reference = membership_of(statuses);
        let (term, voters, learners) = reference.map_or((0, Vec::new(), Vec::new()), |s| {
            (s.term, s.voters.clone(), s.learners.clone())
        });
        Self {
            at_ms,
            leader,
            term,
            voters,
            learners,
            nodes,
        }
    }

    /// The leader's status, if a leader answered.
    pub fn leader_status(&self) -> Option<&NodeStatus> {
        let l = self.leader?;
        self.node(l).and_then(|n| n.status.as_ref())
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeObservation> {
        self.nodes.iter().find(|n| n.node_id == id)
    }

    /// The node is a voter or learner of the membership the answers agree on.
    /// With no membership known (nobody answered), every node counts.
    pub fn is_member(&self, id: NodeId) -> bool {
        (self.voters.is_empty() && self.learners.is_empty())
            || self.voters.contains(&id)
            || self.learners.contains(&id)
    }

    /// Regions in a stable order.
    pub fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self.nodes.iter().map(|n| n.region.clone()).collect();
        r.sort();
        r.dedup();
        r
    }
}

/// Applies a controller-side partition: the controller sees nothing of the
/// nodes in `regions` (no status, no probe, no process view).
pub fn hide_regions(obs: &mut ClusterObservation, regions: &[String]) {
    for n in obs.nodes.iter_mut().filter(|n| regions.contains(&n.region)) {
        n.status = None;
        n.healthz_ok = false;
        n.process_alive = None;
    }
    *obs = ClusterObservation::new(obs.at_ms, std::mem::take(&mut obs.nodes));
}

/// The seam through which a binding tells the control loop what it sees.
pub trait Observe {
    /// Polls every node once and returns what was seen at `at_ms`.
    fn observe(&mut self, at_ms: u64) -> impl Future<Output = ClusterObservation> + Send;
    /// Client-side signals per node since the previous call (empty when the
    /// binding has no storefront to ask).
    fn client_signals(&mut self) -> BTreeMap<NodeId, EndpointSignal> {
        BTreeMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, region: &str, role: &str, term: u64, voters: &[u64]) -> NodeObservation {
        NodeObservation {
            node_id: id,
            region: region.into(),
            zone: format!("{region}-a"),
            process_alive: Some(true),
            healthz_ok: true,
            status: Some(NodeStatus {
                node_id: id,
                role: role.into(),
                term,
                leader_id: (role == "leader").then_some(id),
                voters: voters.to_vec(),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn a_stale_leader_claim_does_not_make_a_leader() {
        let obs = ClusterObservation::new(
            0,
            vec![
                node(1, "eu", "leader", 2, &[1, 2, 3]),
                node(2, "us", "follower", 3, &[1, 2, 3]),
            ],
        );
        assert_eq!(obs.leader, None);
        assert_eq!(obs.term, 3);
    }

    #[test]
    fn hiding_the_leaders_region_hides_the_leader() {
        let mut obs = ClusterObservation::new(
            0,
            vec![
                node(1, "eu", "leader", 2, &[1, 2]),
                node(2, "us", "follower", 2, &[1, 2]),
            ],
        );
        assert_eq!(obs.leader, Some(1));
        hide_regions(&mut obs, &["eu".to_string()]);
        assert_eq!(obs.leader, None);
        assert_eq!(
            obs.voters,
            vec![1, 2],
            "membership from the visible answers"
        );
    }
}
