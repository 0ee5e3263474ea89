//! Chaos drills for roomkeeper.
//!
//! - [`drill`]: the drill format (`ChaosDrill` spec) and its validation.
//! - [`history`] and [`recorder`]: the client history of a drill run.
//! - [`checker`]: the pure, Jepsen-style judge of a history.
//! - [`report`]: the drill report (JSON, text summary, HTML with an SVG timeline).
//!
//! Everything here is pure except the recorder's clock; injecting faults and
//! running load is the binding's job (`roomkeeper drill`, the operator).
#![forbid(unsafe_code)]

pub mod checker;
pub mod drill;
pub mod history;
pub mod recorder;
pub mod report;

pub use checker::{check, Report, Violation, MAX_LINEARIZABILITY_OPS, MAX_SEARCH_STATES};
pub use drill::{DrillManifest, DrillSpec, FaultKind, FaultSpec, ProbeKind, ProbeSpec};
pub use history::{FinalOrder, History, Op, OpKind, OpResult};
pub use recorder::Recorder;
