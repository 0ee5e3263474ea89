//! What the operator asks of order-store nodes, over their admin API.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use roomkeeper_api::{NodeInfo, NodeStatus, QuarantineReply, SalesGate, SalesGateReply};
use roomkeeper_control::http::JsonClient;
use serde_json::{json, Value};

use crate::resources::{ADMIN_PORT, API_PORT, RAFT_PORT};

/// The deadline of one admin call (status, faults, invariants).
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Adding a learner waits until it caught up; give it room.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {addr}: {message}")]
    Unreachable { addr: String, message: String },
    /// The node stays out of Raft: its id has been a member but its volume is
    /// empty (D11).
    #[error("node {addr} is quarantined as node {}: {}", reply.node_id, reply.message)]
    Quarantined {
        addr: String,
        reply: QuarantineReply,
    },
    #[error("node {addr} refused {path}: HTTP {status} {body}")]
    Refused {
        addr: String,
        path: String,
        status: u16,
        body: String,
    },
}

/// The admin API of one pod's node.
#[derive(Clone)]
pub struct NodeAdmin {
    http: JsonClient,
    token: Option<String>,
}

/// A node's advertised addresses, from its pod IP.
pub fn node_info(pod_ip: &str, region: &str, zone: &str) -> NodeInfo {
    NodeInfo {
        raft_addr: format!("{pod_ip}:{RAFT_PORT}"),
        api_addr: format!("{pod_ip}:{API_PORT}"),
        admin_addr: format!("{pod_ip}:{ADMIN_PORT}"),
        region: region.to_string(),
        zone: zone.to_string(),
    }
}

impl NodeAdmin {
    pub fn new(http: JsonClient, token: Option<String>) -> Self {
        NodeAdmin { http, token }
    }

    /// One admin call; anything but 2xx is a refusal naming the path.
    async fn call(
        &self,
        method: Method,
        pod_ip: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, NodeError> {
        let addr = format!("{pod_ip}:{ADMIN_PORT}");
        let reply = self
            .http
            .call(
                method,
                &addr,
                path,
                body.as_ref(),
                self.token.as_deref(),
                timeout,
            )
            .await
            .map_err(|e| NodeError::Unreachable {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
        if reply.status == 409 {
            if let Some(q) = QuarantineReply::from_body(&reply.body) {
                return Err(NodeError::Quarantined { addr, reply: q });
            }
        }
        if !(200..300).contains(&reply.status) {
            return Err(NodeError::Refused {
                addr,
                path: path.to_string(),
                status: reply.status,
                body: reply.body.to_string(),
            });
        }
        Ok(reply.body)
    }

    async fn post(
        &self,
        pod_ip: &str,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, NodeError> {
        self.call(Method::POST, pod_ip, path, Some(body), timeout)
            .await
    }

    pub async fn status(&self, pod_ip: &str) -> Result<NodeStatus, NodeError> {
        self.status_within(pod_ip, TIMEOUT).await
    }

    /// [`NodeAdmin::status`] with its own deadline: for a node a drill has
    /// frozen on purpose, whose answer would only come after the pause.
    pub async fn status_within(
        &self,
        pod_ip: &str,
        timeout: Duration,
    ) -> Result<NodeStatus, NodeError> {
        let body = self
            .call(Method::GET, pod_ip, "/admin/status", None, timeout)
            .await?;
        serde_json::from_value(body).map_err(|e| NodeError::Unreachable {
            addr: format!("{pod_ip}:{ADMIN_PORT}"),
            message: format!("unreadable status: {e}"),
        })
    }

    /// Replaces the node's drill fault settings (`POST /admin/faults`; the
    /// node must run with `--enable-test-faults`, else it answers 404
    /// `faults_disabled`). `{}` clears them.
    pub async fn set_faults(&self, pod_ip: &str, settings: Value) -> Result<(), NodeError> {
        self.post(pod_ip, "/admin/faults", settings, TIMEOUT)
            .await
            .map(|_| ())
    }

    /// The node's own audit of the order invariants: `(ok, detail)`.
    pub async fn invariants(&self, pod_ip: &str) -> Result<(bool, String), NodeError> {
        let body = self
            .call(Method::GET, pod_ip, "/admin/invariants", None, TIMEOUT)
            .await?;
        let ok = body["ok"].as_bool().unwrap_or(false);
        let detail = if ok {
            format!("ok at applied index {}", body["applied_index"])
        } else {
            body["violation"]
                .as_str()
                .unwrap_or("violation")
                .to_string()
        };
        Ok((ok, detail))
    }

    pub async fn init(
        &self,
        pod_ip: &str,
        members: &BTreeMap<u64, NodeInfo>,
    ) -> Result<(), NodeError> {
        self.post(
            pod_ip,
            "/admin/init",
            json!({ "members": members }),
            TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// A membership change naming a node and its addresses, on the leader.
    async fn post_member(
        &self,
        leader_ip: &str,
        path: &str,
        id: u64,
        node: &NodeInfo,
    ) -> Result<(), NodeError> {
        self.post(
            leader_ip,
            path,
            json!({ "node_id": id, "node": node }),
            MEMBERSHIP_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    pub async fn add_learner(
        &self,
        leader_ip: &str,
        id: u64,
        node: &NodeInfo,
    ) -> Result<(), NodeError> {
        self.post_member(leader_ip, "/admin/learners", id, node)
            .await
    }

    /// Records new addresses of an existing member (on the leader).
    pub async fn update_addresses(
        &self,
        leader_ip: &str,
        id: u64,
        node: &NodeInfo,
    ) -> Result<(), NodeError> {
        self.post_member(leader_ip, "/admin/addresses", id, node)
            .await
    }

    /// Tells one node where members are now (node-local, no Raft). Returns
    /// the ids it had not known there.
    pub async fn seed_peer_addresses(
        &self,
        pod_ip: &str,
        raft_addrs: &BTreeMap<u64, String>,
    ) -> Result<Vec<u64>, NodeError> {
        let body = self
            .post(
                pod_ip,
                "/admin/peer-addresses",
                json!({ "raft_addrs": raft_addrs }),
                TIMEOUT,
            )
            .await?;
        Ok(body["changed"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default())
    }

    pub async fn promote(&self, leader_ip: &str, id: u64) -> Result<(), NodeError> {
        self.post(
            leader_ip,
            "/admin/promote",
            json!({ "node_id": id }),
            MEMBERSHIP_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    pub async fn remove(&self, leader_ip: &str, id: u64) -> Result<(), NodeError> {
        self.post(
            leader_ip,
            "/admin/remove",
            json!({ "node_id": id }),
            MEMBERSHIP_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// Sets the node's sales gate; on the leader the replicated pause too
    /// (the node bounds that wait itself).
    pub async fn sales_gate(
        &self,
        pod_ip: &str,
        gate: &SalesGate,
    ) -> Result<SalesGateReply, NodeError> {
        let body = json!(gate);
        let reply = self.post(pod_ip, "/admin/sales", body, TIMEOUT).await?;
        serde_json::from_value(reply).map_err(|e| NodeError::Unreachable {
            addr: format!("{pod_ip}:{ADMIN_PORT}"),
            message: format!("unreadable sales gate reply: {e}"),
        })
    }

    pub async fn transfer_leader(&self, leader_ip: &str, to: u64) -> Result<(), NodeError> {
        self.post(
            leader_ip,
            "/admin/transfer-leader",
            json!({ "to": to }),
            TIMEOUT,
        )
        .await
        .map(|_| ())
    }
}
