//! The Raft type configuration of a shard: what a log entry carries, what applying
//! it returns, and how a node is described to its peers.

use std::fmt;
use std::io::Cursor;

use roomkeeper_order_state::{Command, Outcome};
use serde::{Deserialize, Serialize};

pub use roomkeeper_api::admin::{NodeId, NodeInfo};

/// One Raft log entry's application data: client commands proposed together,
/// stamped with the leader's time once (see docs/decisions.md, D2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub at_ms: u64,
    pub commands: Vec<Command>,
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} at {}", self.commands.len(), self.at_ms)
    }
}

/// The outcomes of a batch, in command order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// Snapshots travel and install as one in-memory buffer.
pub type SnapshotData = Cursor<Vec<u8>>;

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
