//! Fuzz target: see `roomkeeper_order_store::fuzzing::framed_stream`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomkeeper_order_store::fuzzing::framed_stream(data));
