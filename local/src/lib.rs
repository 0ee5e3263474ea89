//! The control plane's local binding: order-store nodes as processes on this
//! machine, one loopback address range per region. It implements the control
//! loop's seams — [`roomkeeper_control::Observe`] and
//! [`roomkeeper_control::Actuate`] — for `roomkeeper demo`, `roomkeeper drill`
//! and the end-to-end tests; the operator implements the same seams for pods.
#![forbid(unsafe_code)]

pub mod actuate;
pub mod cluster;
pub mod observe;
pub mod sale;

pub use actuate::LocalActuator;
pub use cluster::{
    LocalCluster, LocalClusterConfig, LocalError, LocalNode, NodeFaults, RegionSpec,
};
