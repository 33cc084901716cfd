//! The breaker's life on one route, driven through a real Envoy: CLOSED → OPEN → HALF_OPEN →
//! CLOSED, and HALF_OPEN → OPEN, as HTTP/1.1, HTTP/2 and gRPC clients see it.

mod common;

use common::{answer, envoy, stat, value, wait_state, GRPC_PATH, WAIT};
use marty_integration::envoy::UPSTREAM_H2_CLUSTER;
use marty_integration::{grpc_unary, http1, http2, RouteSpec, Upstream};
use serde_json::json;

fn users_route() -> Vec<RouteSpec> {
    vec![RouteSpec::new("users", "/users"), RouteSpec::unnamed("/")]
}

#[test]
fn opens_after_consecutive_failures_and_stops_forwarding() {
    // failure_threshold 3: three 503s open the breaker; the fourth request never reaches the
    // upstream and gets the filter's own 503.
    let upstream = Upstream::start();
    let config = json!({"routes": {"users": {"circuit_breaker": {
        "failure_threshold": 3, "recovery_timeout": 30.0}}}});
    let envoy = envoy(&upstream, config, users_route());

    for _ in 0..3 {
        let r = http1(envoy.port(), "GET", "/users", &answer("u", "503")).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-marty-circuit"), None, "the upstream's own 503");
    }
    assert_eq!(upstream.count("u"), 3);

    let rejected = http1(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.header("x-marty-circuit"), Some("open"));
    let retry_after: u64 = rejected.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=30).contains(&retry_after),
        "retry-after {retry_after} must be the whole seconds left of the 30 s open period"
    );
    let over_h2 = http2(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    assert_eq!(over_h2.status, 503);
    assert_eq!(over_h2.header("x-marty-circuit"), Some("open"));
    assert_eq!(
        upstream.count("u"),
        3,
        "nothing reaches the upstream while open"
    );

    assert_eq!(value(&envoy, "users", "circuit_opened_total"), 1);
    assert_eq!(value(&envoy, "users", "failure_total"), 3);
    assert_eq!(value(&envoy, "users", "rejected_total"), 2);
    assert_eq!(value(&envoy, "users", "requests_total"), 5);
    assert_eq!(value(&envoy, "users", "circuit_state"), 1);
    // The unnamed route's bucket (its cluster) saw nothing: it does not even exist.
    assert_eq!(envoy.stat(&stat("upstream", "requests_total")), None);
}

#[test]
fn half_open_successes_close_the_breaker() {
    let upstream = Upstream::start();
    let config = json!({"routes": {"users": {"circuit_breaker": {
        "failure_threshold": 1, "recovery_timeout": 1.0, "half_open_success_threshold": 2}}}});
    let envoy = envoy(&upstream, config, users_route());

    assert_eq!(
        http1(envoy.port(), "GET", "/users", &answer("u", "500"))
            .unwrap()
            .status,
        500
    );
    wait_state(&envoy, "users", 1);
    // After recovery_timeout the tick moves the breaker to HALF_OPEN even without traffic.
    wait_state(&envoy, "users", 2);
    assert_eq!(value(&envoy, "users", "circuit_half_opened_total"), 1);

    // First probe succeeds: still half-open (threshold 2).
    let r = http1(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(value(&envoy, "users", "circuit_state"), 2);
    // Second probe succeeds: closed.
    let r = http2(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    assert_eq!(r.status, 200);
    wait_state(&envoy, "users", 0);
    assert_eq!(value(&envoy, "users", "circuit_closed_total"), 1);
    assert_eq!(upstream.count("u"), 3);

    // Closed again: traffic flows, and a single success does not need the breaker.
    let r = http1(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn a_failed_probe_opens_the_breaker_again() {
    let upstream = Upstream::start();
    let config = json!({"routes": {"users": {"circuit_breaker": {
        "failure_threshold": 2, "recovery_timeout": 1.0}}}});
    let envoy = envoy(&upstream, config, users_route());

    for _ in 0..2 {
        http1(envoy.port(), "GET", "/users", &answer("u", "502")).unwrap();
    }
    wait_state(&envoy, "users", 2);
    let probe = http1(envoy.port(), "GET", "/users", &answer("u", "503")).unwrap();
    assert_eq!(probe.status, 503);
    assert_eq!(
        probe.header("x-marty-circuit"),
        None,
        "the probe reached the upstream"
    );
    assert_eq!(value(&envoy, "users", "circuit_state"), 1);
    assert_eq!(value(&envoy, "users", "circuit_opened_total"), 2);

    let r = http1(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    assert_eq!(r.header("x-marty-circuit"), Some("open"));
    assert_eq!(upstream.count("u"), 3);
}

#[test]
fn a_success_resets_the_failure_streak() {
    let upstream = Upstream::start();
    let config = json!({"circuit_breaker": {"failure_threshold": 3}});
    let envoy = envoy(&upstream, config, vec![RouteSpec::unnamed("/")]);
    // fail, fail, succeed, fail, fail: never three in a row.
    for status in ["500", "500", "200", "500", "500"] {
        let r = http1(envoy.port(), "GET", "/", &answer("d", status)).unwrap();
        assert_eq!(r.status.to_string(), status);
    }
    assert_eq!(value(&envoy, "upstream", "circuit_state"), 0);
    assert_eq!(value(&envoy, "upstream", "circuit_opened_total"), 0);
    assert_eq!(value(&envoy, "upstream", "failure_total"), 4);
    assert_eq!(value(&envoy, "upstream", "success_total"), 1);
    // The third failure in a row opens it.
    http1(envoy.port(), "GET", "/", &answer("d", "500")).unwrap();
    wait_state(&envoy, "upstream", 1);
}

#[test]
fn grpc_clients_get_unavailable_with_pushback_while_open() {
    let upstream = Upstream::start();
    let config = json!({"routes": {"grpc": {"circuit_breaker": {
        "failure_threshold": 2, "recovery_timeout": 20.0}}}});
    let envoy = envoy(
        &upstream,
        config,
        vec![RouteSpec::new("grpc", "/marty.test.").cluster(UPSTREAM_H2_CLUSTER)],
    );
    let fail = [("x-test-key", "g"), ("x-upstream-grpc-status", "14")];
    for _ in 0..2 {
        let reply = grpc_unary(envoy.port(), GRPC_PATH, &fail).unwrap();
        assert_eq!(reply.code, tonic::Code::Unavailable);
        assert_eq!(reply.metadata("x-marty-circuit"), None);
    }
    let reply = grpc_unary(envoy.port(), GRPC_PATH, &[("x-test-key", "g")]).unwrap();
    assert_eq!(reply.code, tonic::Code::Unavailable);
    assert_eq!(reply.metadata("x-marty-circuit"), Some("open"));
    assert!(
        reply.message.contains("circuit breaker is open"),
        "{}",
        reply.message
    );
    let pushback: u64 = reply
        .metadata("grpc-retry-pushback-ms")
        .expect("pushback metadata")
        .parse()
        .unwrap();
    assert!((1..=20_000).contains(&pushback), "pushback {pushback} ms");
    assert_eq!(upstream.count("g"), 2);
    assert_eq!(value(&envoy, "grpc", "rejected_total"), 1);
    envoy.wait_for_stat(&stat("grpc", "circuit_opened_total"), |v| v == 1, WAIT);
}
