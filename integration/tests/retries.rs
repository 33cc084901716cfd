//! Retries through Envoy's own router, driven by the headers the filter sets from the route's
//! retry policy: attempt counts as the upstream sees them, client retry headers, no retries
//! into a probing upstream, and the shared retry budget.

mod common;

use std::time::{Duration, Instant};

use common::{envoy, stat, value, wait_state, GRPC_PATH, WAIT};
use marty_integration::bootstrap_edit::virtual_host;
use marty_integration::envoy::UPSTREAM_H2_CLUSTER;
use marty_integration::{
    concurrently, grpc_unary, http1, http2, Envoy, EnvoyConfig, RouteSpec, Upstream,
};
use serde_json::{json, Value};

/// Starts Envoy with the virtual host reporting attempt counts in responses, which is how the
/// filter counts retries toward the budget.
fn envoy_counting_attempts(upstream: &Upstream, plugin: Value) -> Envoy {
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(plugin.to_string())
        .routes(vec![
            RouteSpec::new("users", "/users"),
            RouteSpec::unnamed("/"),
        ]);
    let mut bootstrap = config.bootstrap();
    virtual_host(&mut bootstrap)["include_attempt_count_in_response"] = json!(true);
    Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"))
}

fn retry_policy(extra: Value) -> Value {
    let mut policy = json!({
        "enabled": true, "max_attempts": 3, "retry_on": ["5xx"],
        "per_try_timeout": 0, "base_delay": 0.001, "max_delay": 0.01
    });
    if let (Some(p), Some(e)) = (policy.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    policy
}

/// A request the upstream fails `k` times (by request id) before answering 200.
fn failing_first<'a>(id: &'a str, k: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("x-test-key", id),
        ("x-request-id", id),
        ("x-upstream-fail-first", k),
    ]
}

#[test]
fn envoy_retries_as_the_route_policy_says() {
    let upstream = Upstream::start();
    let envoy = envoy(
        &upstream,
        json!({"routes": {"users": {"retry": retry_policy(json!({}))}}}),
        vec![RouteSpec::new("users", "/users"), RouteSpec::unnamed("/")],
    );
    // Two failures, then success: three attempts, the client sees 200.
    let r = http1(envoy.port(), "GET", "/users", &failing_first("a", "2")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count("a"), 3);
    // Three failures: max_attempts 3 runs out, the client sees the last 503.
    let r = http1(envoy.port(), "GET", "/users", &failing_first("b", "3")).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(upstream.count("b"), 3);
    // The unconfigured route has retries off: one attempt.
    let r = http1(envoy.port(), "GET", "/other", &failing_first("c", "1")).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(upstream.count("c"), 1);
    // The policy reached Envoy as headers, which the router consumed.
    let seen = &upstream.requests("a")[0];
    assert_eq!(seen.header("x-envoy-max-retries"), None);
    // This virtual host does not report attempts: the filter learns it from an upstream
    // response (and then stops reading the header for the route epoch), and says so.
    envoy.wait_for_log(
        "route users: Envoy does not report attempts in its responses",
        WAIT,
    );
    assert_eq!(value(&envoy, "users", "retry_attempts_total"), 0);
}

#[test]
fn client_retry_headers_are_removed_unless_trusted() {
    let upstream = Upstream::start();
    let plugin = |trust: bool| {
        json!({"routes": {"users": {"retry": retry_policy(json!({
            "max_attempts": 1, "trust_client_headers": trust}))}}})
    };
    let client_asks = |id: &'static str| {
        let mut headers = failing_first(id, "3");
        headers.extend([("x-envoy-max-retries", "5"), ("x-envoy-retry-on", "5xx")]);
        headers
    };
    // Loopback clients are internal to the harness's Envoy, so Envoy itself would honour them.
    let strict = envoy(
        &upstream,
        plugin(false),
        vec![RouteSpec::new("users", "/users")],
    );
    let r = http1(strict.port(), "GET", "/users", &client_asks("strict")).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        upstream.count("strict"),
        1,
        "the client's retries were dropped"
    );

    let trusting = envoy(
        &upstream,
        plugin(true),
        vec![RouteSpec::new("users", "/users")],
    );
    let r = http1(trusting.port(), "GET", "/users", &client_asks("trusted")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream.count("trusted"),
        4,
        "three retries as the client asked"
    );
}

#[test]
fn no_retries_into_a_half_open_breaker() {
    let upstream = Upstream::start();
    let envoy = envoy(
        &upstream,
        json!({"routes": {"users": {
            "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 1.0},
            "retry": retry_policy(json!({}))}}}),
        vec![RouteSpec::new("users", "/users")],
    );
    // The first request fails all three attempts and opens the breaker.
    http1(envoy.port(), "GET", "/users", &failing_first("trip", "5")).unwrap();
    wait_state(&envoy, "users", 1);
    wait_state(&envoy, "users", 2);
    // The probe fails once: with retries it would have succeeded on its second attempt.
    let r = http1(envoy.port(), "GET", "/users", &failing_first("probe", "1")).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(upstream.count("probe"), 1, "the probe was not retried");
    assert_eq!(
        value(&envoy, "users", "retries_suppressed_breaker_total"),
        1
    );
    wait_state(&envoy, "users", 1);
}

#[test]
fn the_retry_budget_stops_retries_in_a_storm_and_allows_them_after() {
    let upstream = Upstream::start();
    // Two retries per second of a 1 s window, nothing in proportion to requests.
    let envoy = envoy_counting_attempts(
        &upstream,
        json!({"routes": {"users": {
            "circuit_breaker": {"enabled": false},
            "retry": retry_policy(json!({
                "budget": {"ratio": 0.0, "min_retries_per_second": 2, "window": 1.0}}))}}}),
    );
    // A storm on both workers: every request fails every attempt. Workers share their counts on
    // a 250 ms tick, so the storm goes on until the budget bites (bounded).
    let deadline = Instant::now() + WAIT;
    let mut ids: Vec<String> = Vec::new();
    while value(&envoy, "users", "retries_suppressed_budget_total") == 0 {
        assert!(Instant::now() < deadline, "the budget never ran out");
        let batch: Vec<String> = (ids.len()..ids.len() + 10)
            .map(|i| format!("storm-{i}"))
            .collect();
        concurrently(batch.len(), |i| {
            let id = batch[i].as_str();
            http1(envoy.port(), "GET", "/users", &failing_first(id, "9")).map(|r| r.status)
        });
        ids.extend(batch);
    }
    common::assert_both_workers_served(&envoy);
    let attempts: usize = ids.iter().map(|id| upstream.count(id)).sum();
    assert!(
        attempts < ids.len() * 3,
        "retries went on regardless: {attempts} attempts for {} requests",
        ids.len()
    );
    envoy.wait_for_stat(
        &stat("users", "retry_attempts_total"),
        |v| v as usize == attempts - ids.len(),
        WAIT,
    );
    // Once the window has passed, a request is retried again.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("after-{n}");
        http1(envoy.port(), "GET", "/users", &failing_first(&id, "1")).unwrap();
        if upstream.count(&id) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "retries never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    envoy.wait_for_stat(&stat("users", "active_requests"), |v| v == 0, WAIT);
    assert!(
        !envoy.log().contains("does not report attempts"),
        "a virtual host that reports attempts was taken for one that does not"
    );
}

/// Envoy's Wasm host clears the route cache whenever a filter changes the request headers, so
/// the router matches the route again with the headers the filter set (docs/retries.md, "What
/// Envoy does"). Pinned here because routes that match on the retry headers would then take
/// the request: the filter's policy is that of the route as first matched.
#[test]
fn envoy_matches_the_route_again_after_the_filter_sets_its_retry_headers() {
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(json!({"routes": {"users": {"retry": retry_policy(json!({}))}}}).to_string())
        .routes(vec![
            RouteSpec::new("users", "/users"),
            RouteSpec::unnamed("/"),
        ]);
    let mut bootstrap = config.bootstrap();
    let routes = virtual_host(&mut bootstrap)["routes"]
        .as_array_mut()
        .expect("routes is an array");
    // First in the table: any request that carries `x-envoy-max-retries`.
    routes.insert(
        0,
        json!({
            "name": "carries_max_retries",
            "match": {"prefix": "/", "headers": [{"name": "x-envoy-max-retries", "present_match": true}]},
            "direct_response": {"status": 299, "body": {"inline_string": "matched again"}}
        }),
    );
    let envoy = Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"));
    // Matched as `users` (no such header yet); the filter sets `x-envoy-max-retries`; the
    // router matches again and the first route answers.
    let r = http1(envoy.port(), "GET", "/users", &[("x-test-key", "a")]).unwrap();
    assert_eq!(r.status, 299);
    assert_eq!(upstream.count("a"), 0);
    // Where retries are off the filter writes nothing, and the request goes upstream.
    let r = http1(envoy.port(), "GET", "/other", &[("x-test-key", "b")]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count("b"), 1);
}

/// The route's gRPC conditions (`x-envoy-retry-grpc-on`) reach Envoy with a gRPC call, which
/// sends its message in the body, and are left out of a request that ends with its headers: no
/// gRPC call looks like that, and the write is saved (docs/retries.md).
#[test]
fn grpc_conditions_retry_a_grpc_call_and_are_left_out_of_a_request_without_a_body() {
    let upstream = Upstream::start();
    let policy = retry_policy(json!({"grpc_retry_on": ["unavailable"]}));
    let envoy = envoy(
        &upstream,
        json!({"routes": {"grpc": {"retry": policy}}}),
        vec![RouteSpec::new("grpc", "/marty.test.").cluster(UPSTREAM_H2_CLUSTER)],
    );
    // The first try answers trailers-only UNAVAILABLE (HTTP 200): only the gRPC condition
    // matches it, and Envoy retries.
    let unavailable_once = |key| {
        vec![
            ("x-test-key", key),
            ("x-upstream-fail-first", "1"),
            ("x-upstream-grpc-trailers-only", "1"),
        ]
    };
    let reply = grpc_unary(envoy.port(), GRPC_PATH, &unavailable_once("call")).unwrap();
    assert_eq!(reply.code, tonic::Code::Ok, "{}", reply.message);
    assert_eq!(upstream.count("call"), 2);
    // The same answer to a request without a body: no gRPC conditions, no retry.
    let mut headers = unavailable_once("bodiless");
    headers.push(("content-type", "application/grpc"));
    let r = http2(envoy.port(), "GET", GRPC_PATH, &headers).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(upstream.count("bodiless"), 1);
}
