//! The control plane, written once: what a binding observed becomes a health
//! snapshot (one builder), the pure playbook engine decides, and the
//! decisions are carried out through the binding's [`Actuate`]. The engine
//! memory lives in a [`MemoryStore`], decisions go to a [`Journal`]. This
//! crate knows neither processes nor Kubernetes: `local/` and `operator/` are
//! its two bindings. It also holds what both bindings drive the store with:
//! the JSON admin/client HTTP client and the flash-sale load.
#![forbid(unsafe_code)]

pub mod actuate;
pub mod control_loop;
pub mod http;
pub mod load;
pub mod memory_store;
pub mod metrics;
pub mod observation;
pub mod recorded_load;
pub mod setup;
pub mod snapshot;
pub mod state;

pub use actuate::{ActError, Actuate};
pub use control_loop::{ControlError, ControlLoop};
pub use memory_store::{FileStore, Journal, MemoryStore, StoreError};
pub use observation::{ClusterObservation, NodeObservation, Observe};
pub use snapshot::SnapshotRules;
