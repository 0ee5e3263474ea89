//! Fuzz target: see `roomkeeper_order_store::fuzzing::raft_frame`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomkeeper_order_store::fuzzing::raft_frame(data));
