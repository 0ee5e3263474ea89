//! The wire types of the order store's APIs, shared by every plane: the node
//! serves them (order-store), the control plane and the operator read them,
//! the benchmark and the drills send them. Nothing here knows Raft, HTTP
//! servers or Kubernetes; it is plain serde data plus the few rules that
//! interpret it, so that every reader interprets it the same way.
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod framed;
pub mod leader;
pub mod metrics;
pub mod raft_identity;

pub use admin::{
    NodeId, NodeInfo, NodeStatus, QuarantineReply, ReplicatedGate, ReplicationProgress, SalesGate,
    SalesGateReply,
};
pub use leader::{leader_of, membership_of};
pub use roomkeeper_order_state::{LiveWindow, LiveWindowOfRoom};
