//! The local health monitor: every node's admin status and `/healthz`, polled
//! concurrently, plus what the process supervisor knows.

use std::collections::BTreeMap;
use std::time::Duration;

use roomkeeper_api::NodeStatus;
use roomkeeper_control::observation::{ClusterObservation, NodeObservation, Observe};

use crate::cluster::LocalCluster;

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
    let nodes = results
        .into_iter()
        .filter_map(|(id, status, healthz_ok)| {
            let info = cluster_ref.info(id)?;
            Some(NodeObservation {
                node_id: id,
                region: info.region.clone(),
                zone: info.zone.clone(),
                process_alive: Some(alive.get(&id).copied().unwrap_or(false)),
                healthz_ok,
                status,
            })
        })
        .collect();
    ClusterObservation::new(at_ms, nodes)
}

impl Observe for LocalCluster {
    async fn observe(&mut self, at_ms: u64) -> ClusterObservation {
        observe(self, at_ms).await
    }
}
