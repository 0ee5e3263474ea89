//! The admin API's answers (`/admin/status`, quarantine refusals) and the
//! description of a member the nodes, the control plane and the operator share.

use std::collections::{BTreeMap, BTreeSet};

use roomkeeper_order_state::LiveWindowOfRoom;
use serde::{Deserialize, Serialize};

/// A Raft node id. Handed out once per cluster and never reused.
pub type NodeId = u64;

/// How peers, clients and the control plane reach a node, and where it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub raft_addr: String,
    pub api_addr: String,
    pub admin_addr: String,
    pub region: String,
    pub zone: String,
}

/// Per-follower replication progress as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicationProgress {
    pub matched_index: Option<u64>,
    pub lag: u64,
    /// Time since the follower last acknowledged the leader (heartbeat or append).
    #[serde(default)]
    pub millis_since_ack: Option<u64>,
}

/// The role names `/admin/status` reports.
pub mod role {
    pub const LEADER: &str = "leader";
    pub const FOLLOWER: &str = "follower";
    pub const CANDIDATE: &str = "candidate";
    pub const LEARNER: &str = "learner";
    pub const SHUTDOWN: &str = "shutdown";
}

/// The node's view of itself and its shard (`GET /admin/status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub region: String,
    pub zone: String,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub millis_since_quorum_ack: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub members: BTreeMap<String, NodeInfo>,
    pub replication: BTreeMap<String, ReplicationProgress>,
    pub orders: u64,
    pub sales_paused: bool,
    pub test_faults_enabled: bool,
    /// The process started on an empty data directory (a new member, or one
    /// whose volume was wiped).
    #[serde(default)]
    pub fresh_data_dir: bool,
    /// The node-local sales gate is closed: this node refuses orders with
    /// `sales_paused` before any Raft work (`POST /admin/sales`).
    #[serde(default)]
    pub edge_sales_paused: bool,
    /// Live windows of this shard's rooms that are on air now or start within
    /// [`LIVE_WINDOW_HORIZON_MS`] (by this node's clock and applied state),
    /// each with its room and home region, so a control loop reads them with
    /// the status call it already makes (no request per room).
    #[serde(default)]
    pub live_windows: Vec<LiveWindowOfRoom>,
    /// The node's plain-HTTP listener for `/metrics`, `/healthz` and
    /// `/readyz` (`--metrics-addr`), when it has one: what Prometheus and
    /// kubelet probes reach while the admin API demands the operator's
    /// certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// The node's framed order protocol listener (`--framed-api-addr`,
    /// docs/framed-api.md), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framed_api_addr: Option<String>,
}

/// How far ahead `NodeStatus::live_windows` looks: 30 minutes.
pub const LIVE_WINDOW_HORIZON_MS: u64 = 30 * 60 * 1000;

impl NodeStatus {
    /// The node says it leads, and names itself as the leader.
    pub fn claims_leadership(&self) -> bool {
        self.role == role::LEADER && self.leader_id == Some(self.node_id)
    }

    /// The leader's record of `id`'s progress (`None` for the leader itself
    /// and for nodes it does not replicate to).
    pub fn progress_of(&self, id: NodeId) -> Option<&ReplicationProgress> {
        self.replication.get(&id.to_string())
    }

    /// `id` is the leader itself, or acknowledged it within `within_ms`.
    pub fn acked_within(&self, id: NodeId, within_ms: u64) -> bool {
        id == self.node_id
            || self
                .progress_of(id)
                .and_then(|p| p.millis_since_ack)
                .is_some_and(|ms| ms <= within_ms)
    }

    /// Voters and learners of the membership this node knows.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// `POST /admin/sales`: close (or open) the node's sales gate. The node
/// refuses orders with `sales_paused` at its API edge at once, needing no
/// quorum; a leader also commits the replicated pause so every replica and
/// any later leader refuse orders too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesGate {
    pub paused: bool,
    /// Why, in words; recorded with the replicated pause.
    #[serde(default)]
    pub reason: String,
}

/// What became of the replicated pause asked of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplicatedGate {
    /// The leader committed the change.
    Committed,
    /// This node is not the leader; only its edge gate changed.
    NotLeader { leader: Option<NodeId> },
    /// The leader could not commit it (no quorum, timeout).
    Failed { message: String },
}

/// The answer to [`SalesGate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesGateReply {
    pub node_id: NodeId,
    /// The node's edge gate after the call.
    pub edge_paused: bool,
    pub replicated: ReplicatedGate,
}

/// The error code every admin call of a quarantined node answers with (HTTP 409).
pub const WIPED_VOLUME: &str = "wiped_volume";

/// The body of a quarantined node's refusals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineReply {
    pub code: String,
    pub message: String,
    pub node_id: NodeId,
}

impl QuarantineReply {
    /// Reads a refusal body; `None` unless it is a quarantine reply.
    pub fn from_body(body: &serde_json::Value) -> Option<QuarantineReply> {
        let r: QuarantineReply = serde_json::from_value(body.clone()).ok()?;
        (r.code == WIPED_VOLUME).then_some(r)
    }
}

/// A line of a joined-ids list that is not a node id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: node id {word:?} is not a number")]
pub struct BadJoinedId {
    pub line: usize,
    pub word: String,
}

/// Reads a joined-ids list (the operator's record of ids that have been Raft
/// members): numbers separated by white space, `#` starts a comment.
pub fn parse_joined_ids(text: &str) -> Result<BTreeSet<NodeId>, BadJoinedId> {
    let mut ids = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        for word in line.split_whitespace() {
            let id = word.parse().map_err(|_| BadJoinedId {
                line: n + 1,
                word: word.to_string(),
            })?;
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// One contact key as reports show it (never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactKey {
    pub id: u8,
    /// Marked `retired` in the key file: opens, never seals.
    pub retired: bool,
    /// Marked `staged` in the key file: opens, does not seal yet.
    #[serde(default)]
    pub staged: bool,
}

/// `GET /admin/contact-keys`: which keys one node holds and how many of its
/// stored contacts each key id seals. `ok` is false while any contact is
/// sealed under a retired key or a key this node does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactKeysReport {
    pub node_id: NodeId,
    /// The Raft index this node had applied when it counted.
    pub applied_index: u64,
    /// The key id new contacts are sealed under (the newest not retired).
    pub sealing_key_id: u8,
    pub keys: Vec<ContactKey>,
    /// Stored contacts per key id (decimal string keys, as JSON objects need).
    pub records: BTreeMap<String, u64>,
    /// Contacts under a key marked retired.
    pub under_retired_keys: u64,
    /// Contacts under a key id this node does not hold (unreadable here).
    pub under_unknown_keys: u64,
    pub ok: bool,
}

/// `POST /admin/contact-keys/reseal` (the leader only): re-seal every
/// contact not under the sealing key, in batches through Raft.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResealRequest {
    /// Contacts per Raft entry (1 to 256; default 256).
    #[serde(default)]
    pub batch: Option<u32>,
}

/// The answer to [`ResealRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResealReply {
    pub node_id: NodeId,
    pub sealing_key_id: u8,
    /// Contacts replaced under the sealing key.
    pub resealed: u64,
    /// Contacts the leader found already moved when its entry applied.
    pub skipped: u64,
    /// Raft entries proposed.
    pub batches: u64,
    /// Contacts under a key this node does not hold: left as they are.
    pub unreadable: u64,
}
