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

#[test]
fn an_upstream_response_without_the_attempt_count_stops_the_reading_until_the_epoch_moves() {
    use marty_resilience_core::retry::reports::AttemptReports::{NotReported, Reported, Unknown};
    // Nothing known: read, and ask the origin only when the header is absent.
    assert!(Unknown.worth_reading());
    assert!(Unknown.needs_origin(false));
    assert!(!Unknown.needs_origin(true));
    // The upstream answered through the router and Envoy added nothing: not configured.
    let upstream = Some(&b"via_upstream"[..]);
    assert_eq!(Unknown.learn(false, upstream), NotReported);
    assert!(!NotReported.worth_reading());
    // Another filter's local reply never met the router, and the router's own replies without
    // a try say nothing either: they teach nothing. Nor does a host that did not say.
    assert_eq!(Unknown.learn(false, Some(b"rate_limited")), Unknown);
    assert_eq!(
        Unknown.learn(
            false,
            Some(b"upstream_reset_before_response_started{connection_failure}")
        ),
        Unknown
    );
    assert_eq!(Unknown.learn(false, None), Unknown);
    // One response with the header: read on every response of the epoch, whatever follows
    // (a bucket may span virtual hosts that differ).
    assert_eq!(Unknown.learn(true, None), Reported);
    assert_eq!(Reported.learn(false, upstream), Reported);
    assert!(!Reported.needs_origin(false));
    assert_eq!(NotReported.learn(true, None), Reported);
}
