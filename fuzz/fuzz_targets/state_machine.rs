//! Fuzz target: see `roomkeeper_order_state::fuzzing::commands`: any command
//! sequence keeps every invariant (the checker is the oracle).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomkeeper_order_state::fuzzing::commands(data));
