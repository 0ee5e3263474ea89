//! End-to-end test helpers live in the integration tests of this crate.
