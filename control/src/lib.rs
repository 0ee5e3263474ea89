//! The control plane's local binding: a health monitor over node admin APIs,
//! actuators over local processes, and a flash-sale load. The Kubernetes
//! binding (operator/) reuses the same engine with other actuators.
#![forbid(unsafe_code)]

pub mod control_loop;
pub mod http;
pub mod load;
pub mod local_cluster;
pub mod metrics;
pub mod monitor;
pub mod recorded_load;
pub mod setup;
