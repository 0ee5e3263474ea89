//! The roomkeeper order store: one node of a Raft-replicated shard.
//!
//! Layers, each meeting the others only through openraft's traits:
//! - `log_store`: the durable Raft log (raft-log, group commit, checksums);
//! - `state_machine`: committed entries applied to the order state, snapshots;
//! - `transport`: framed, pipelined node-to-node RPCs;
//! - `proposer`: batching client commands into log entries, overload and quorum checks;
//! - `api` / `admin`: the client and admin HTTP listeners;
//! - `node`: wiring and metrics.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod contact;
pub mod faults;
pub mod log_store;
pub mod metrics;
pub mod node;
pub mod proposer;
pub mod raft_types;
pub mod state_machine;
pub mod transport;
pub mod wire;

pub use node::{NodeConfig, NodeContext, NodeError, NodeHandle};
pub use raft_types::{NodeId, NodeInfo};
