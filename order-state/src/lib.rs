//! The order state machine of one roomkeeper shard.
//!
//! Pure and deterministic: no clocks, no I/O, no async. The order store feeds it
//! committed Raft log entries; tests feed it random command sequences and check
//! every invariant of DESIGN.md after every step.
#![forbid(unsafe_code)]

mod chunked;
pub mod command;
#[doc(hidden)]
pub mod fuzzing;
pub mod state;

pub use command::{
    check_live_windows, contact_key_id, Command, InvalidField, ListingState, ListingView,
    LiveWindow, OrderStatus, OrderView, Outcome, RejectCode, ResealedContact, RoomState, RoomView,
    Stamped,
};
pub use state::{InvariantViolation, LiveWindowOfRoom, ShardState, ShardStateV1, StateSummary};
