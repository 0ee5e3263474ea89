//! The local actuators: restart a process, call the leader's admin API, steer
//! the storefront's traffic map, replace voters with new processes.

use std::time::Duration;

use roomkeeper_api::NodeId;
use roomkeeper_control::actuate::{sales_gate_summary, ActError, Actuate};
use roomkeeper_control::load::TrafficMap;

use crate::cluster::LocalCluster;
use crate::sale::refresh_endpoints;

/// The local binding of [`Actuate`]: the cluster's processes and the load's
/// traffic map (the storefront of the demo and the drills).
pub struct LocalActuator<'a> {
    pub cluster: &'a mut LocalCluster,
    pub traffic: &'a TrafficMap,
}

fn failed(e: impl std::fmt::Display) -> ActError {
    ActError::Failed(e.to_string())
}

impl Actuate for LocalActuator<'_> {
    fn binding(&self) -> &'static str {
        "local"
    }

    async fn restart_node(&mut self, id: NodeId) -> Result<String, ActError> {
        if self.cluster.is_running(id) {
            self.cluster.kill(id).await;
        }
        self.cluster.spawn(id).map_err(failed)?;
        self.cluster
            .wait_healthy(id, Duration::from_secs(10))
            .await
            .map_err(failed)?;
        self.cluster.apply_wan_latency().await;
        Ok(format!("node {id} restarted"))
    }

    async fn transfer_leadership(&mut self, from: NodeId, to: NodeId) -> Result<String, ActError> {
        self.cluster.transfer_leader(to).await.map_err(failed)?;
        Ok(format!("leader {from} handed leadership to node {to}"))
    }

    async fn set_traffic_weight(&mut self, region: &str, weight: u32) -> Result<String, ActError> {
        self.traffic.set_weight(region, weight);
        Ok(format!("traffic weight of {region} set to {weight}"))
    }

    async fn replace_voter(&mut self, old: NodeId, into_region: &str) -> Result<NodeId, ActError> {
        let new = self
            .cluster
            .replace_voter(old, into_region)
            .await
            .map_err(failed)?;
        refresh_endpoints(self.cluster, self.traffic, &[]);
        Ok(new)
    }

    async fn set_sales_paused(&mut self, paused: bool) -> Result<String, ActError> {
        // The store refuses orders itself (the nodes' sales gate), as on
        // Kubernetes; the storefront stops sending them too.
        let reason = if paused {
            "T4: the control loop paused sales"
        } else {
            "the control loop resumed sales"
        };
        let replies = self.cluster.set_sales_gate(paused, reason).await;
        let words = sales_gate_summary(paused, &replies)?;
        self.traffic.set_paused(paused);
        Ok(if paused {
            format!("{words}; the storefront stops taking orders")
        } else {
            words
        })
    }
}
