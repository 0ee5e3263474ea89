//! The health monitor: polls every node's admin API and process liveness and
//! builds one observation of the cluster per tick.

use std::collections::BTreeMap;
use std::time::Duration;

use roomkeeper_order_store::admin::NodeStatus;
use serde::Serialize;

use crate::local_cluster::LocalCluster;

/// What the controller saw of one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeObservation {
    pub node_id: u64,
    pub region: String,
    pub zone: String,
    pub process_alive: bool,
    /// False when the controller cannot see the process (e.g. it is cut off
    /// from the node's region), so `process_alive` carries no information.
    pub process_visible: bool,
    /// An independent probe of the controller: `/healthz` answered.
    pub healthz_ok: bool,
    /// The node's own answer, if it answered.
    pub status: Option<NodeStatus>,
}

/// One tick of observations.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterObservation {
    pub at_ms: u64,
    pub nodes: Vec<NodeObservation>,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl ClusterObservation {
    /// The leader's status, if a leader answered.
    pub fn leader_status(&self) -> Option<&NodeStatus> {
        let l = self.leader?;
        self.nodes
            .iter()
            .find(|n| n.node_id == l)
            .and_then(|n| n.status.as_ref())
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
        n.process_visible = false;
    }
    if let Some(l) = obs.leader {
        if !obs
            .nodes
            .iter()
            .any(|n| n.node_id == l && n.status.is_some())
        {
            obs.leader = None;
        }
    }
}

/// Polls every known node once, concurrently.
pub async fn observe(cluster: &mut LocalCluster, at_ms: u64) -> ClusterObservation {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let mut alive = BTreeMap::new();
    for id in &ids {
        alive.insert(*id, cluster.is_running(*id));
    }
    let cluster_ref: &LocalCluster = cluster;
    let polls = ids.iter().map(|id| async move {
        let status = tokio::time::timeout(Duration::from_millis(800), cluster_ref.status(*id))
            .await
            .ok()
            .flatten();
        let healthz = cluster_ref.healthz(*id).await;
        (*id, status, healthz)
    });
    let results: Vec<(u64, Option<NodeStatus>, bool)> = futures_util::future::join_all(polls).await;
    let mut nodes = Vec::new();
    for (id, status, healthz_ok) in results {
        let Some(info) = cluster_ref.info(id) else {
            continue;
        };
        nodes.push(NodeObservation {
            node_id: id,
            region: info.region.clone(),
            zone: info.zone.clone(),
            process_alive: alive.get(&id).copied().unwrap_or(false),
            process_visible: true,
            healthz_ok,
            status,
        });
    }
    // The leader with the highest term among those claiming leadership.
    let leader = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term)
        .map(|s| s.node_id);
    let reference = leader
        .and_then(|l| nodes.iter().find(|n| n.node_id == l))
        .and_then(|n| n.status.clone())
        .or_else(|| {
            nodes
                .iter()
                .filter_map(|n| n.status.clone())
                .max_by_key(|s| s.term)
        });
    ClusterObservation {
        at_ms,
        leader,
        term: reference.as_ref().map_or(0, |s| s.term),
        voters: reference
            .as_ref()
            .map(|s| s.voters.clone())
            .unwrap_or_default(),
        learners: reference
            .as_ref()
            .map(|s| s.learners.clone())
            .unwrap_or_default(),
        nodes,
    }
}
