//! Backoff on Envoy's real retries: the module placed a second time, as an upstream HTTP filter
//! of the router with `"mode": "upstream"`, holds each retry for its strategy's delay. The
//! upstream records when each try arrives; the gaps must be at least the strategy's delays
//! (lower bounds only: this machine is noisy).

mod common;

use std::time::Duration;

use marty_integration::{http1, Envoy, EnvoyConfig, RouteSpec, Upstream};
use serde_json::{json, Value};

/// Starts Envoy with the filter before the router (retry headers) and again in the router's
/// `upstream_http_filters` (backoff), Envoy's own backoff at its minimum so the strategy
/// governs.
fn envoy_with_backoff(upstream: &Upstream, downstream: Value) -> Envoy {
    let mut upstream_config = downstream.clone();
    upstream_config["mode"] = json!("upstream");
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(downstream.to_string())
        .routes(vec![RouteSpec::new("users", "/users").retry_policy(
            json!({
                "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"}
            }),
        )]);
    let bootstrap = common::with_upstream_placement(&config, &upstream_config, false);
    Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends one request that fails its first three tries and returns the gaps between the tries
/// as the upstream saw them.
fn gaps(strategy: &str, base: f64, extra: Value) -> Vec<Duration> {
    let upstream = Upstream::start();
    let mut retry = json!({
        "enabled": true, "max_attempts": 4, "retry_on": ["5xx"], "per_try_timeout": 0,
        "backoff_strategy": strategy, "base_delay": base, "max_delay": 2.0
    });
    if let (Some(r), Some(e)) = (retry.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let envoy = envoy_with_backoff(
        &upstream,
        json!({"circuit_breaker": {"enabled": false}, "retry": retry}),
    );
    let id = format!("backoff-{strategy}");
    let headers = [
        ("x-test-key", id.as_str()),
        ("x-request-id", id.as_str()),
        ("x-upstream-fail-first", "3"),
    ];
    let r = http1(envoy.port(), "GET", "/users", &headers).unwrap();
    assert_eq!(r.status, 200, "{strategy}: the fourth try succeeds");
    let tries = upstream.requests(&id);
    assert_eq!(tries.len(), 4, "{strategy}");
    tries.windows(2).map(|w| w[1].at - w[0].at).collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn assert_at_least(strategy: &str, gaps: &[Duration], floors: &[Duration]) {
    for (i, (gap, floor)) in gaps.iter().zip(floors).enumerate() {
        assert!(
            gap >= floor,
            "{strategy}: retry {} came after {gap:?}, the strategy holds it {floor:?}",
            i + 1
        );
    }
    // The sum stays under max_delay per retry, plus a generous margin for this machine.
    let total: Duration = gaps.iter().sum();
    assert!(
        total < Duration::from_secs(2) * 3 + Duration::from_secs(5),
        "{strategy}: {total:?}"
    );
}

#[test]
fn fixed_backoff_holds_every_retry_for_the_base_delay() {
    let g = gaps("fixed", 0.3, json!({}));
    assert_at_least("fixed", &g, &[ms(300), ms(300), ms(300)]);
}

#[test]
fn linear_backoff_grows_by_the_base_delay() {
    let g = gaps("linear", 0.15, json!({}));
    assert_at_least("linear", &g, &[ms(150), ms(300), ms(450)]);
}

#[test]
fn exponential_backoff_doubles() {
    let g = gaps("exponential", 0.1, json!({"multiplier": 2.0}));
    assert_at_least("exponential", &g, &[ms(100), ms(200), ms(400)]);
}

#[test]
fn fibonacci_backoff_follows_the_sequence() {
    let g = gaps("fibonacci", 0.15, json!({}));
    assert_at_least("fibonacci", &g, &[ms(150), ms(150), ms(300)]);
}

#[test]
fn with_count_attempts_every_failed_try_counts_toward_the_breaker() {
    // failure_threshold 3 and three tries per request: one request whose tries all fail opens
    // the breaker when tries are counted, and leaves it closed when only requests are.
    for count_attempts in [true, false] {
        let upstream = Upstream::start();
        let envoy = envoy_with_backoff(
            &upstream,
            json!({
                "circuit_breaker": {"failure_threshold": 3, "recovery_timeout": 30.0},
                "retry": {"enabled": true, "max_attempts": 3, "retry_on": ["5xx"],
                          "per_try_timeout": 0, "backoff_strategy": "fixed",
                          "base_delay": 0.01, "max_delay": 0.01,
                          "count_attempts": count_attempts}
            }),
        );
        let id = format!("all-fail-{count_attempts}");
        let headers = [
            ("x-test-key", id.as_str()),
            ("x-request-id", id.as_str()),
            ("x-upstream-fail-first", "5"),
        ];
        let r = http1(envoy.port(), "GET", "/users", &headers).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(upstream.count(&id), 3, "three tries");
        if count_attempts {
            // The plugin JSON configures the top level: the route `users` gets it, in its own bucket.
            common::wait_state(&envoy, "users", 1);
            let r = http1(envoy.port(), "GET", "/users", &[("x-test-key", "next")]).unwrap();
            assert_eq!(r.header("x-marty-circuit"), Some("open"));
            assert_eq!(upstream.count("next"), 0);
        } else {
            envoy.wait_for_stat(
                &common::stat("users", "failure_total"),
                |v| v == 1,
                common::WAIT,
            );
            assert_eq!(common::value(&envoy, "users", "circuit_state"), 0);
        }
    }
}

#[test]
fn the_upstream_placement_applies_the_route_s_own_policy() {
    // Configured for the route `users` only: the upstream filter must know which route a try
    // belongs to (Envoy's `xds.route_name` in the upstream filter chain).
    let upstream = Upstream::start();
    let retry = json!({
        "enabled": true, "max_attempts": 3, "retry_on": ["5xx"], "per_try_timeout": 0,
        "backoff_strategy": "fixed", "base_delay": 0.3, "max_delay": 1.0
    });
    let envoy = envoy_with_backoff(
        &upstream,
        json!({"circuit_breaker": {"enabled": false}, "routes": {"users": {"retry": retry}}}),
    );
    let headers = [
        ("x-test-key", "per-route"),
        ("x-request-id", "per-route"),
        ("x-upstream-fail-first", "2"),
    ];
    let r = http1(envoy.port(), "GET", "/users", &headers).unwrap();
    assert_eq!(r.status, 200);
    let tries = upstream.requests("per-route");
    assert_eq!(tries.len(), 3);
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert_at_least("fixed, per route", &gaps, &[ms(300), ms(300)]);
}

#[test]
fn a_client_sent_attempt_count_does_not_hold_a_first_try() {
    // The upstream placement times a try by Envoy's own try number, so a client claiming its
    // request is the fifth try (the virtual host does not set the header here) is not held for
    // a backoff: with a 60 s delay, a hold would outlast the client's 30 s timeout.
    let upstream = Upstream::start();
    let envoy = envoy_with_backoff(
        &upstream,
        json!({"circuit_breaker": {"enabled": false},
               "retry": {"enabled": true, "max_attempts": 5, "retry_on": ["5xx"],
                         "per_try_timeout": 0, "backoff_strategy": "fixed",
                         "base_delay": 60.0, "max_delay": 60.0}}),
    );
    let headers = [
        ("x-test-key", "claims-fifth"),
        ("x-envoy-attempt-count", "5"),
    ];
    let r = http1(envoy.port(), "GET", "/users", &headers).unwrap();
    assert_eq!(r.status, 200);
    let tries = upstream.requests("claims-fifth");
    assert_eq!(tries.len(), 1);
    assert_eq!(
        tries[0]
            .headers
            .iter()
            .find(|(name, _)| name == "x-envoy-attempt-count")
            .map(|(_, value)| value.as_str()),
        Some("5"),
        "the client's header reached the upstream: the filter let it be and ignored it"
    );
}
