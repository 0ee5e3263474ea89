//! The roomkeeper Kubernetes operator.
#![forbid(unsafe_code)]
pub mod api_tls;
pub mod approval;
pub mod audit;
pub mod backoff;
pub mod controller;
pub mod crd;
pub mod drill;
pub mod evacuate;
pub mod history;
pub mod metrics;
pub mod nodes;
pub mod plan;
pub mod raft_certs;
pub mod regions;
pub mod resources;
pub mod risk;
pub mod runbooks;
pub mod runtime;
pub mod schedule;
pub mod switchover;
pub mod tier;
pub mod traffic;
pub mod validate;
