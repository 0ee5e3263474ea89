//! The sale on a local cluster: the room and listings, the storefront's
//! traffic map over the cluster's regions, and the final read of a drill.

use std::collections::BTreeMap;
use std::time::Duration;

use roomkeeper_control::load::{EndpointSignal, EndpointStats, TrafficMap};
use roomkeeper_control::recorded_load::{final_read_at, FinalReadError, FinalState};
use roomkeeper_control::setup::{create_sale_at, ListingSpec, SetupError};

use crate::cluster::{LocalCluster, LocalError};

/// Why the sale could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    #[error(transparent)]
    Cluster(#[from] LocalError),
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// Creates a live room and its open listings through the leader.
pub async fn create_sale(
    cluster: &LocalCluster,
    room: &str,
    title: &str,
    home_region: &str,
    listings: &[ListingSpec],
) -> Result<(), SaleError> {
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let api = cluster
        .info(leader)
        .map(|i| i.api_addr.clone())
        .ok_or(LocalError::UnknownNode(leader))?;
    create_sale_at(
        &cluster.http,
        &api,
        &cluster.cfg.client_token,
        room,
        title,
        home_region,
        listings,
    )
    .await
    .map_err(SaleError::from)
}

/// A traffic map with every region's nodes at weight 100.
pub fn traffic_map(cluster: &LocalCluster) -> TrafficMap {
    let traffic = TrafficMap::default();
    for r in &cluster.cfg.regions {
        let addrs = cluster
            .nodes
            .values()
            .filter(|n| n.info.region == r.name)
            .map(|n| n.info.api_addr.clone())
            .collect();
        traffic.set_endpoints(&r.name, addrs);
        traffic.set_weight(&r.name, 100);
    }
    traffic
}

/// Reads every listing and every order of the given buyers, linearizably,
/// leader first.
pub async fn final_read(
    cluster: &mut LocalCluster,
    room: &str,
    buyers: &[(String, String)],
) -> Result<FinalState, FinalReadError> {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let mut addrs = Vec::new();
    for id in ids {
        if cluster.is_running(id) {
            if let Some(i) = cluster.info(id) {
                addrs.push(i.api_addr.clone());
            }
        }
    }
    if addrs.is_empty() {
        return Err(FinalReadError::NoNode);
    }
    if let Some(l) = cluster.leader().await.and_then(|l| cluster.info(l)) {
        addrs.retain(|a| *a != l.api_addr);
        addrs.insert(0, l.api_addr.clone());
    }
    let http = cluster.http.clone();
    let token = cluster.cfg.client_token.clone();
    final_read_at(&http, &addrs, &token, room, buyers).await
}

/// Points the storefront at every node of each region (new nodes join their
/// region's pool), except the `excluded` ones (quarantined by the playbook).
pub fn refresh_endpoints(cluster: &LocalCluster, traffic: &TrafficMap, excluded: &[u64]) {
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in cluster.nodes.values().filter(|n| !excluded.contains(&n.id)) {
        by_region
            .entry(n.info.region.clone())
            .or_default()
            .push(n.info.api_addr.clone());
    }
    for (region, addrs) in by_region {
        traffic.set_endpoints(&region, addrs);
    }
}

/// What buyers felt of each node recently (latency, served or not), keyed by
/// node id: the control loop's client-side signals. The demo's load and a
/// drill's recorded load both record into an [`EndpointStats`].
pub fn node_signals(
    cluster: &LocalCluster,
    endpoints: &EndpointStats,
) -> BTreeMap<u64, EndpointSignal> {
    let by_addr = endpoints.endpoint_signals();
    cluster
        .nodes
        .values()
        .filter_map(|n| by_addr.get(&n.info.api_addr).map(|s| (n.id, *s)))
        .collect()
}
