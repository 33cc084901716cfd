//! `retry`'s readers of Envoy's try counts: the response's `x-envoy-attempt-count` (retries
//! counted toward the budget) and the `upstream.request_attempt_count` property (the upstream
//! placement's try number). Neither trusts a value it cannot read.

use marty_resilience_core::retry::{attempt_from_property, retries_reported, MAX_COUNTED_ATTEMPTS};

#[test]
fn the_response_attempt_count_gives_the_retries_made() {
    assert_eq!(retries_reported(None), 0);
    assert_eq!(retries_reported(Some(b"1")), 0);
    assert_eq!(retries_reported(Some(b"3")), 2);
    assert_eq!(retries_reported(Some(b" 2 ")), 1);
    assert_eq!(retries_reported(Some(b"0")), 0);
    assert_eq!(retries_reported(Some(b"x")), 0);
    assert_eq!(retries_reported(Some(b"-4")), 0);
    assert_eq!(
        retries_reported(Some(b"4000000000")),
        MAX_COUNTED_ATTEMPTS - 1
    );
}

#[test]
fn the_try_number_property_is_an_8_byte_integer_or_the_first_try() {
    assert_eq!(attempt_from_property(Some(&2u64.to_le_bytes())), 2);
    assert_eq!(attempt_from_property(Some(&1u64.to_le_bytes())), 1);
    // Never attempted (0), absent, of the wrong size, or past u32: read as the first try,
    // which is let through at once.
    assert_eq!(attempt_from_property(Some(&0u64.to_le_bytes())), 1);
    assert_eq!(attempt_from_property(None), 1);
    assert_eq!(attempt_from_property(Some(b"2")), 1);
    assert_eq!(attempt_from_property(Some(&[2, 0, 0, 0])), 1);
    assert_eq!(attempt_from_property(Some(&u64::MAX.to_le_bytes())), 1);
}
