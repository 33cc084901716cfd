//! `routes::resolve`: which bucket and policy a request's Envoy route gets.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::S;
use marty_resilience_core::config::{BreakerPolicy, RoutePolicy, Settings, DEFAULT_ROUTE};
use marty_resilience_core::routes::{resolve, Route};
use serde_json::json;

fn settings() -> Settings {
    let config = r#"{
        "circuit_breaker": {"failure_threshold": 4},
        "routes": {"users": {"circuit_breaker": {"failure_threshold": 9}}, "api.v1": {}}
    }"#;
    Settings::parse(config.as_bytes(), &[]).unwrap()
}

fn with_threshold(base: &RoutePolicy, failure_threshold: u32) -> RoutePolicy {
    RoutePolicy {
        circuit_breaker: BreakerPolicy {
            failure_threshold,
            ..base.circuit_breaker.clone()
        },
        failure_injection: base.failure_injection.clone(),
        retry: base.retry.clone(),
    }
}

#[test]
fn a_configured_route_gets_its_own_bucket_and_policy() {
    let s = settings();
    let r = resolve(&s, "users", None);
    assert_eq!(r.metadata_error, None);
    assert_eq!(r.route.bucket, "users");
    assert_eq!(r.route.stat_name, "users");
    assert_eq!(r.route.key, "marty.resilience/v1/cb/users");
    assert_eq!(r.route.policy.circuit_breaker.failure_threshold, 9);
}

#[test]
fn a_configured_route_with_a_dot_keeps_its_name_but_not_in_stat_names() {
    let r = resolve(&settings(), "api.v1", None);
    assert_eq!(r.route.bucket, "api.v1");
    assert_eq!(r.route.stat_name, "api_v1");
    assert_eq!(r.route.key, "marty.resilience/v1/cb/api.v1");
}

#[test]
fn unconfigured_and_unnamed_routes_share_the_default_bucket() {
    let s = settings();
    for name in ["orders", "", "USERS", "users "] {
        let r = resolve(&s, name, None);
        assert_eq!(
            r.route,
            Route::new(DEFAULT_ROUTE, s.defaults.clone()),
            "{name:?}"
        );
        assert_eq!(r.route.key, "marty.resilience/v1/cb/default");
        assert_eq!(r.route.policy.circuit_breaker.failure_threshold, 4);
        assert_eq!(r.metadata_error, None);
    }
}

#[test]
fn metadata_gives_an_unconfigured_route_its_own_bucket() {
    let s = settings();
    let meta = json!({"circuit_breaker": {"recovery_timeout": "2s"}});
    let r = resolve(&s, "orders", Some(&meta));
    assert_eq!(r.metadata_error, None);
    assert_eq!(r.route.bucket, "orders");
    assert_eq!(r.route.key, "marty.resilience/v1/cb/orders");
    assert_eq!(r.route.policy.circuit_breaker.recovery_timeout, 2 * S);
    assert_eq!(r.route.policy.circuit_breaker.failure_threshold, 4);
    // Even an empty entry is an annotation: the route is split off from `default`.
    let r = resolve(&s, "orders", Some(&json!({})));
    assert_eq!(r.route, Route::new("orders", s.defaults.clone()));
}

#[test]
fn metadata_lays_over_a_configured_route() {
    let s = settings();
    let meta = json!({"circuit_breaker": {"failure_threshold": 2}});
    let r = resolve(&s, "users", Some(&meta));
    assert_eq!(r.metadata_error, None);
    assert_eq!(r.route.bucket, "users");
    assert_eq!(r.route.policy, with_threshold(&s.routes["users"], 2));
}

#[test]
fn invalid_metadata_is_reported_and_the_plugin_configuration_applies() {
    let s = settings();
    let bad = json!({"circuit_breaker": {"enabled": "no"}});
    // On a configured route: its JSON entry still applies.
    let r = resolve(&s, "users", Some(&bad));
    assert_eq!(r.route, Route::new("users", s.routes["users"].clone()));
    assert_eq!(
        r.metadata_error.map(|e| e.to_string()).as_deref(),
        Some(
            "route_metadata[users].filter_metadata[marty.resilience].circuit_breaker.enabled: \
             expected a boolean, got \"no\""
        )
    );
    // On an unconfigured route: it stays in `default`, so a bad annotation cannot create a
    // bucket (nor disable the breaker).
    let r = resolve(&s, "orders", Some(&bad));
    assert_eq!(r.route, Route::new(DEFAULT_ROUTE, s.defaults.clone()));
    assert!(r.metadata_error.is_some());
}

#[test]
fn metadata_on_an_unnamed_route_is_rejected() {
    let s = settings();
    let meta = json!({"circuit_breaker": {"failure_threshold": 2}});
    let r = resolve(&s, "", Some(&meta));
    assert_eq!(r.route, Route::new(DEFAULT_ROUTE, s.defaults.clone()));
    assert_eq!(
        r.metadata_error.map(|e| e.to_string()).as_deref(),
        Some("route_metadata[].filter_metadata[marty.resilience]: a route name must not be empty")
    );
}

#[test]
fn metadata_on_a_route_named_default_is_rejected() {
    let s = settings();
    let meta = json!({"circuit_breaker": {"failure_threshold": 2}});
    let r = resolve(&s, DEFAULT_ROUTE, Some(&meta));
    assert_eq!(r.route.policy, s.defaults);
    let e = r.metadata_error.expect("rejected");
    assert_eq!(
        e.path,
        "route_metadata[default].filter_metadata[marty.resilience]"
    );
}

#[test]
fn metadata_on_an_overlong_route_name_is_rejected() {
    let s = settings();
    let name = "r".repeat(129);
    let r = resolve(&s, &name, Some(&json!({})));
    assert_eq!(r.route.bucket, DEFAULT_ROUTE);
    assert!(r.metadata_error.is_some());
}
