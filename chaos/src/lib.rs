//! Chaos drills for roomkeeper.
//!
//! This crate currently holds the pure part of a drill: the recorded client
//! [`History`] of an order-store run and the [`check`] function that judges
//! it (Jepsen-style). The checker does no I/O.
#![forbid(unsafe_code)]

pub mod checker;
pub mod history;

pub use checker::{check, Report, Violation, MAX_LINEARIZABILITY_OPS, MAX_SEARCH_STATES};
pub use history::{FinalOrder, History, Op, OpKind, OpResult};
