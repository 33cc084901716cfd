//! Fuzz target: see `marty_resilience_core::fuzzing::lease_record` for the input layout and invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = marty_resilience_core::fuzzing::lease_record(data) {
        panic!("lease_record: {broken}");
    }
});
