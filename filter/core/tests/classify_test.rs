//! What a finished stream says about the upstream: flags first, then gRPC status, then HTTP
//! status; and when the glue must pay for reading Envoy's flags.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::for_each_seed;
use marty_resilience_core::classify::{classify, flags, needs_flags, Outcome, Response};
use marty_resilience_core::config::{BreakerPolicy, Environment, GrpcSet, StatusSet};
use rand::Rng;

fn production() -> BreakerPolicy {
    Environment::Production.preset().circuit_breaker
}

fn http(status: u16) -> Response {
    Response {
        http_status: Some(status),
        grpc_status: None,
        complete: true,
        flags: None,
    }
}

fn grpc(http_status: u16, grpc_status: u32) -> Response {
    Response {
        http_status: Some(http_status),
        grpc_status: Some(grpc_status),
        complete: true,
        flags: None,
    }
}

fn with_flags(r: Response, f: u64) -> Response {
    Response {
        flags: Some(f),
        ..r
    }
}

fn incomplete(r: Response) -> Response {
    Response {
        complete: false,
        ..r
    }
}

/// Every upstream-fault flag, one by one, with its Envoy short name.
const UPSTREAM_FLAGS: [(&str, u64); 8] = [
    ("UH", flags::NO_HEALTHY_UPSTREAM),
    ("UT", flags::UPSTREAM_REQUEST_TIMEOUT),
    ("UR", flags::UPSTREAM_REMOTE_RESET),
    ("UF", flags::UPSTREAM_CONNECTION_FAILURE),
    ("UC", flags::UPSTREAM_CONNECTION_TERMINATION),
    ("URX", flags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
    ("UMSDR", flags::UPSTREAM_MAX_STREAM_DURATION_REACHED),
    ("UPE", flags::UPSTREAM_PROTOCOL_ERROR),
];

#[test]
fn flag_bits_are_envoys_core_response_flag_indices() {
    assert_eq!(flags::NO_HEALTHY_UPSTREAM, 1 << 1);
    assert_eq!(flags::UPSTREAM_REQUEST_TIMEOUT, 1 << 2);
    assert_eq!(flags::LOCAL_RESET, 1 << 3);
    assert_eq!(flags::UPSTREAM_REMOTE_RESET, 1 << 4);
    assert_eq!(flags::UPSTREAM_CONNECTION_FAILURE, 1 << 5);
    assert_eq!(flags::UPSTREAM_CONNECTION_TERMINATION, 1 << 6);
    assert_eq!(flags::DOWNSTREAM_CONNECTION_TERMINATION, 1 << 14);
    assert_eq!(flags::UPSTREAM_RETRY_LIMIT_EXCEEDED, 1 << 15);
    assert_eq!(flags::UPSTREAM_MAX_STREAM_DURATION_REACHED, 1 << 19);
    assert_eq!(flags::UPSTREAM_PROTOCOL_ERROR, 1 << 23);
    assert_eq!(flags::DOWNSTREAM_REMOTE_RESET, 1 << 28);
    let all = UPSTREAM_FLAGS.iter().fold(0, |acc, (_, f)| acc | f);
    assert_eq!(flags::UPSTREAM_FAULT, all);
}

#[test]
fn upstream_fault_flags_are_failures_whatever_the_status() {
    let p = production();
    for (name, f) in UPSTREAM_FLAGS {
        for r in [
            http(200),
            http(503),
            grpc(200, 0),
            incomplete(http(200)),
            Response::default(),
        ] {
            assert_eq!(
                classify(&p, &with_flags(r, f)),
                Outcome::Failure,
                "{name} on {r:?}"
            );
        }
    }
}

#[test]
fn upstream_fault_flags_are_ignored_without_count_connect_failures() {
    let p = BreakerPolicy {
        count_connect_failures: false,
        ..production()
    };
    for (name, f) in UPSTREAM_FLAGS {
        // Envoy's own 503/504 for the fault must not count either.
        for r in [http(503), http(504), incomplete(Response::default())] {
            assert_eq!(
                classify(&p, &with_flags(r, f)),
                Outcome::Ignored,
                "{name} on {r:?}"
            );
        }
    }
    // Without a fault flag, the status still decides.
    assert_eq!(classify(&p, &http(503)), Outcome::Failure);
}

#[test]
fn downstream_resets_on_incomplete_streams_are_ignored() {
    let p = production();
    for f in [
        flags::DOWNSTREAM_CONNECTION_TERMINATION,
        flags::DOWNSTREAM_REMOTE_RESET,
    ] {
        assert_eq!(
            classify(&p, &with_flags(incomplete(http(503)), f)),
            Outcome::Ignored
        );
        assert_eq!(
            classify(&p, &with_flags(incomplete(Response::default()), f)),
            Outcome::Ignored
        );
        // A complete response stands on its status even if the client left afterwards.
        assert_eq!(classify(&p, &with_flags(http(503), f)), Outcome::Failure);
        assert_eq!(classify(&p, &with_flags(http(200), f)), Outcome::Success);
        // An upstream fault outranks the client going away.
        assert_eq!(
            classify(
                &p,
                &with_flags(incomplete(http(200)), f | flags::UPSTREAM_REMOTE_RESET)
            ),
            Outcome::Failure
        );
    }
}

#[test]
fn local_reset_alone_is_not_an_upstream_fault() {
    let p = production();
    assert_eq!(
        classify(&p, &with_flags(http(200), flags::LOCAL_RESET)),
        Outcome::Success
    );
    assert_eq!(
        classify(
            &p,
            &with_flags(incomplete(Response::default()), flags::LOCAL_RESET)
        ),
        Outcome::Ignored
    );
}

#[test]
fn a_stream_with_no_status_and_no_flags_is_ignored() {
    let p = production();
    assert_eq!(classify(&p, &Response::default()), Outcome::Ignored);
    assert_eq!(
        classify(&p, &with_flags(Response::default(), 0)),
        Outcome::Ignored
    );
    let complete_without_status = Response {
        complete: true,
        ..Response::default()
    };
    assert_eq!(classify(&p, &complete_without_status), Outcome::Ignored);
}

#[test]
fn five_hundreds_fail_except_the_ignored_501() {
    let p = production();
    for status in [500, 502, 503, 504, 599] {
        assert_eq!(classify(&p, &http(status)), Outcome::Failure, "{status}");
    }
    assert_eq!(classify(&p, &http(501)), Outcome::Success);
}

#[test]
fn ignored_status_codes_win_over_failure_status_codes() {
    let p = BreakerPolicy {
        failure_status_codes: StatusSet::codes(&[503, 429]),
        ignored_status_codes: StatusSet::codes(&[503]),
        ..production()
    };
    assert_eq!(classify(&p, &http(503)), Outcome::Success);
    assert_eq!(classify(&p, &http(429)), Outcome::Failure);
    let whole_class_ignored = BreakerPolicy {
        ignored_status_codes: StatusSet::classes(&[5]),
        ..production()
    };
    assert_eq!(classify(&whole_class_ignored, &http(500)), Outcome::Success);
}

#[test]
fn client_errors_never_trip_unless_listed() {
    let p = production();
    for status in [400, 401, 403, 404, 409, 429, 499] {
        assert_eq!(classify(&p, &http(status)), Outcome::Success, "{status}");
    }
    for status in [100, 200, 204, 301, 304] {
        assert_eq!(classify(&p, &http(status)), Outcome::Success, "{status}");
    }
    let with_429 = BreakerPolicy {
        failure_status_codes: StatusSet::parse(&serde_json::json!(["5xx", 429]), "x").unwrap(),
        ..production()
    };
    assert_eq!(classify(&with_429, &http(429)), Outcome::Failure);
    assert_eq!(classify(&with_429, &http(404)), Outcome::Success);
    let with_4xx = BreakerPolicy {
        failure_status_codes: StatusSet::classes(&[4]),
        ..production()
    };
    assert_eq!(classify(&with_4xx, &http(404)), Outcome::Failure);
    assert_eq!(classify(&with_4xx, &http(503)), Outcome::Success);
}

#[test]
fn grpc_status_takes_precedence_over_http_200() {
    let p = production();
    // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE fail by default.
    for code in [2, 4, 13, 14] {
        assert_eq!(classify(&p, &grpc(200, code)), Outcome::Failure, "{code}");
    }
    // Application errors do not.
    for code in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16] {
        assert_eq!(classify(&p, &grpc(200, code)), Outcome::Success, "{code}");
    }
    // And a gRPC status also outranks a failing HTTP status.
    assert_eq!(classify(&p, &grpc(503, 0)), Outcome::Success);
    // Codes outside 0..=16 are in no set.
    assert_eq!(classify(&p, &grpc(200, 17)), Outcome::Success);
    assert_eq!(classify(&p, &grpc(200, u32::MAX)), Outcome::Success);
}

#[test]
fn a_grpc_status_alone_decides_an_incomplete_stream() {
    let p = production();
    let trailers_only = Response {
        http_status: None,
        grpc_status: Some(14),
        complete: false,
        flags: Some(0),
    };
    assert_eq!(classify(&p, &trailers_only), Outcome::Failure);
}

#[test]
fn failure_grpc_status_is_configurable() {
    let p = BreakerPolicy {
        failure_grpc_status: GrpcSet::of(&[8]),
        ..production()
    };
    assert_eq!(classify(&p, &grpc(200, 8)), Outcome::Failure);
    assert_eq!(classify(&p, &grpc(200, 14)), Outcome::Success);
}

#[test]
fn needs_flags_only_when_the_status_is_not_a_plain_success_or_the_stream_is_incomplete() {
    let p = production();
    // Conclusive successes: no host call.
    assert!(!needs_flags(&p, &http(200)));
    assert!(!needs_flags(&p, &http(404)));
    assert!(!needs_flags(&p, &http(501)));
    assert!(!needs_flags(&p, &grpc(200, 0)));
    assert!(!needs_flags(&p, &grpc(200, 5)));
    // A failing status may be Envoy's own reply to a fault the policy ignores.
    assert!(needs_flags(&p, &http(500)));
    assert!(needs_flags(&p, &http(503)));
    assert!(needs_flags(&p, &grpc(200, 13)));
    assert!(needs_flags(&p, &grpc(200, 14)));
    // No status at all, or the stream did not finish.
    assert!(needs_flags(&p, &Response::default()));
    assert!(needs_flags(&p, &incomplete(http(200))));
    assert!(needs_flags(&p, &incomplete(grpc(200, 0))));
}

#[test]
fn needs_flags_for_the_statuses_envoy_answers_upstream_faults_with_even_when_not_listed() {
    // Nothing counts by status here, yet 502-504 and gRPC DEADLINE_EXCEEDED/UNAVAILABLE may
    // be Envoy's own replies to a connect failure or timeout, which count_connect_failures
    // decides on.
    let p = BreakerPolicy {
        failure_status_codes: StatusSet::default(),
        failure_grpc_status: GrpcSet::default(),
        ..production()
    };
    for status in [502, 503, 504] {
        assert!(needs_flags(&p, &http(status)), "{status}");
        assert_eq!(classify(&p, &http(status)), Outcome::Success);
        assert_eq!(
            classify(
                &p,
                &with_flags(http(status), flags::UPSTREAM_CONNECTION_FAILURE)
            ),
            Outcome::Failure,
            "{status} with UF"
        );
    }
    for code in [4, 14] {
        assert!(needs_flags(&p, &grpc(200, code)), "grpc {code}");
        assert_eq!(
            classify(
                &p,
                &with_flags(grpc(200, code), flags::UPSTREAM_REQUEST_TIMEOUT)
            ),
            Outcome::Failure
        );
    }
    // Other statuses that do not count need no flags.
    for status in [200, 500, 501, 505] {
        assert!(!needs_flags(&p, &http(status)), "{status}");
    }
    for code in [2, 13] {
        assert!(!needs_flags(&p, &grpc(200, code)), "grpc {code}");
    }
}

#[test]
fn an_envoy_fault_http_status_needs_flags_even_under_a_grpc_success() {
    // An HTTP 503 carrying grpc-status 0 is decided by the gRPC status, but the HTTP status
    // alone still makes the glue read the flags.
    let p = production();
    assert!(needs_flags(&p, &grpc(503, 0)));
    assert_eq!(classify(&p, &grpc(503, 0)), Outcome::Success);
}

#[test]
fn skipping_flags_never_changes_the_outcome_unless_an_upstream_fault_was_flagged() {
    // When needs_flags says no, classifying without flags must agree with classifying with
    // any flags that carry no upstream fault (a complete success is already conclusive).
    for_each_seed("needs_flags soundness", 0xF1A6_0001, 20_000, |rng| {
        let p = BreakerPolicy {
            count_connect_failures: rng.gen(),
            failure_status_codes: StatusSet::classes(&[rng.gen_range(1..=5)]),
            ignored_status_codes: StatusSet::codes(&[rng.gen_range(100..600)]),
            failure_grpc_status: GrpcSet::of(&[rng.gen_range(0..17), rng.gen_range(0..17)]),
            ..production()
        };
        let r = Response {
            http_status: rng.gen_bool(0.9).then(|| rng.gen_range(100..600)),
            grpc_status: rng.gen_bool(0.3).then(|| rng.gen_range(0..20)),
            complete: rng.gen_bool(0.8),
            flags: None,
        };
        if needs_flags(&p, &r) {
            return Ok(());
        }
        let without = classify(&p, &r);
        ensure!(
            without == Outcome::Success,
            "no flags needed, yet {r:?} is {without:?}"
        );
        let other: u64 = rng.gen::<u64>() & !flags::UPSTREAM_FAULT;
        let with = classify(&p, &with_flags(r, other));
        ensure!(
            with == without,
            "flags {other:#x} changed {r:?}: {without:?} -> {with:?}"
        );
        Ok(())
    });
}
