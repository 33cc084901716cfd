//! `routes`: which bucket names a request (`named_by`), and which policy a bucket gets
//! (`resolve`).

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::S;
use marty_resilience_core::config::{
    BreakerPolicy, BucketBy, RoutePolicy, Settings, DEFAULT_ROUTE, MAX_ROUTE_NAME_LEN,
};
use marty_resilience_core::routes::{named_by, resolve, NamedBy, Route};
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

const PREFIX: &str = "marty_resilience";

#[test]
fn a_route_name_names_the_bucket_unless_it_is_empty_or_default() {
    assert_eq!(named_by(BucketBy::Route, "users"), NamedBy::Route);
    assert_eq!(named_by(BucketBy::Route, "orders"), NamedBy::Route);
    assert_eq!(named_by(BucketBy::Route, ""), NamedBy::Cluster);
    assert_eq!(named_by(BucketBy::Route, DEFAULT_ROUTE), NamedBy::Cluster);
    // Only exactly Istio's name: a route called "Default" is an ordinary route.
    assert_eq!(named_by(BucketBy::Route, "Default"), NamedBy::Route);
    for name in ["users", "", DEFAULT_ROUTE] {
        assert_eq!(named_by(BucketBy::Cluster, name), NamedBy::Cluster);
    }
}

#[test]
fn a_configured_route_gets_its_own_bucket_and_policy() {
    let s = settings();
    let r = resolve(&s, "users", None);
    assert_eq!(r.metadata_error, None);
    assert_eq!(r.route.bucket, "users");
    assert_eq!(r.route.stat_name, "users");
    assert_eq!(r.route.key, "marty_resilience/v1/cb/users");
    assert_eq!(r.route.policy.circuit_breaker.failure_threshold, 9);
}

#[test]
fn a_configured_route_with_a_dot_keeps_its_name_but_not_in_stat_names() {
    let r = resolve(&settings(), "api.v1", None);
    assert_eq!(r.route.bucket, "api.v1");
    assert_eq!(r.route.stat_name, "api_v1");
    assert_eq!(r.route.key, "marty_resilience/v1/cb/api.v1");
}

#[test]
fn every_unlisted_name_gets_its_own_bucket_with_the_top_level_policy() {
    let s = settings();
    for name in [
        "orders",
        "USERS",
        "users ",
        "outbound|8080||reviews.default.svc.cluster.local",
    ] {
        let r = resolve(&s, name, None);
        assert_eq!(
            r.route,
            Route::new(PREFIX, name, s.defaults.clone()),
            "{name:?}"
        );
        assert_eq!(r.route.policy.circuit_breaker.failure_threshold, 4);
        assert_eq!(r.metadata_error, None);
    }
    let istio = resolve(&s, "outbound|8080||reviews.default.svc.cluster.local", None);
    assert_eq!(
        istio.route.stat_name,
        "outbound_8080__reviews_default_svc_cluster_local"
    );
}

#[test]
fn a_routes_entry_keyed_by_a_cluster_name_applies_to_that_cluster() {
    let config = r#"{"routes": {"outbound|9080||ratings.default.svc.cluster.local":
        {"circuit_breaker": {"failure_threshold": 2}}}}"#;
    let s = Settings::parse(config.as_bytes(), &[]).unwrap();
    let r = resolve(&s, "outbound|9080||ratings.default.svc.cluster.local", None);
    assert_eq!(r.route.policy.circuit_breaker.failure_threshold, 2);
}

#[test]
fn the_stat_prefix_scopes_every_key() {
    let s = Settings::parse(br#"{"stat_prefix": "edge"}"#, &[]).unwrap();
    assert_eq!(resolve(&s, "users", None).route.key, "edge/v1/cb/users");
}

#[test]
fn metadata_lays_over_an_unlisted_route() {
    let s = settings();
    let meta = json!({"circuit_breaker": {"recovery_timeout": "2s"}});
    let r = resolve(&s, "orders", Some(&meta));
    assert_eq!(r.metadata_error, None);
    assert_eq!(r.route.bucket, "orders");
    assert_eq!(r.route.policy.circuit_breaker.recovery_timeout, 2 * S);
    assert_eq!(r.route.policy.circuit_breaker.failure_threshold, 4);
    let r = resolve(&s, "orders", Some(&json!({})));
    assert_eq!(r.route, Route::new(PREFIX, "orders", s.defaults.clone()));
}

#[test]
fn metadata_lays_over_a_configured_route() {
    let s = settings();
    let meta = json!({"circuit_breaker": {"failure_threshold": 2}});
    let r = resolve(&s, "users", Some(&meta));
    assert_eq!(r.metadata_error, None);
    assert_eq!(r.route.bucket, "users");
    assert_eq!(
        r.route.policy,
        with_threshold(s.routes.get("users").unwrap(), 2)
    );
}

#[test]
fn invalid_metadata_is_reported_and_the_plugin_configuration_applies() {
    let s = settings();
    let bad = json!({"circuit_breaker": {"enabled": "no"}});
    let r = resolve(&s, "users", Some(&bad));
    assert_eq!(
        r.route,
        Route::new(PREFIX, "users", s.routes.get("users").unwrap().clone())
    );
    assert_eq!(
        r.metadata_error.map(|e| e.to_string()).as_deref(),
        Some(
            "route_metadata[users].filter_metadata[marty.resilience].circuit_breaker.enabled: \
             expected a boolean, got \"no\""
        )
    );
    // On an unlisted route: the top-level policy, so a bad annotation cannot disable the
    // breaker.
    let r = resolve(&s, "orders", Some(&bad));
    assert_eq!(r.route, Route::new(PREFIX, "orders", s.defaults.clone()));
    assert!(r.metadata_error.is_some());
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
    let name = "r".repeat(MAX_ROUTE_NAME_LEN + 1);
    let r = resolve(
        &s,
        &name,
        Some(&json!({"circuit_breaker": {"failure_threshold": 2}})),
    );
    assert_eq!(r.route.policy, s.defaults);
    assert!(r.metadata_error.is_some());
}
