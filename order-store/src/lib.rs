//! The roomkeeper order store: one node of a Raft-replicated shard.
//!
//! Layers, each meeting the others only through openraft's traits:
//! - `log_store`: the durable Raft log (raft-log, group commit, checksums);
//! - `state_machine`: committed entries applied to the order state, snapshots;
//! - `transport`: framed, pipelined node-to-node RPCs, bounded and checked per frame;
//! - `raft_tls`: mutual TLS between nodes, node identities, issuing certificates;
//! - `proposer`: batching client commands into log entries, overload and quorum checks;
//! - `api` / `admin`: the client and admin HTTP listeners;
//! - `auth`: scoped client tokens (token file, hashed secrets, scopes);
//! - `http_server`: their accept loop: timeouts, connection caps, JSON refusals;
//! - `dead_leader`: a fast, lease-safe election when the leader's process is gone;
//! - `node`: wiring and metrics;
//! - `quarantine`: the admin listener of a node that must not join Raft (wiped volume).
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod contact;
pub mod dead_leader;
pub mod faults;
pub mod framed_api;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_server;
pub mod http_tls;
pub mod log_store;
pub mod metrics;
pub mod node;
pub mod precheck;
pub mod probe;
pub mod proposer;
pub mod quarantine;
pub mod raft_tls;
pub mod raft_types;
pub mod rate_limit;
pub mod state_machine;
pub mod transport;
pub mod wire;

pub use node::{NodeConfig, NodeContext, NodeError, NodeHandle, RaftSecurity};
pub use raft_types::{NodeId, NodeInfo};

#[cfg(test)]
mod openapi_contract {
    //! Keeps `api/openapi.yaml` true: every route the node serves is documented.

    fn routes(src: &str) -> Vec<String> {
        src.split(".route(")
            .skip(1)
            .filter_map(|s| s.trim_start().strip_prefix('"'))
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_route_is_in_the_openapi_file() {
        let spec = include_str!("../api/openapi.yaml");
        let documented: Vec<&str> = spec
            .lines()
            .filter(|l| l.starts_with("  /"))
            .map(|l| l.trim().trim_end_matches(':'))
            .collect();
        let mut served = routes(include_str!("api.rs"));
        served.extend(routes(include_str!("admin.rs")));
        served.extend(["/healthz", "/readyz", "/metrics"].map(String::from));
        assert!(served.len() > 15, "route scan found too little: {served:?}");
        for r in &served {
            assert!(
                documented.contains(&r.as_str()),
                "route {r} is served but not in api/openapi.yaml"
            );
        }
        for d in &documented {
            assert!(
                served.iter().any(|r| r == d),
                "api/openapi.yaml documents {d}, which no router serves"
            );
        }
    }
}
