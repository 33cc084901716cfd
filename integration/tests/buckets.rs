//! Breakers where Envoy and Istio users expect them: one per named route, one per destination
//! cluster for unnamed routes and Istio's `default` routes, bounded by `max_buckets`, kept apart
//! per plugin instance by `stat_prefix`; and rejections a calling Envoy does not retry.

mod common;

use common::{answer, stat, value, wait_state, WAIT};
use marty_integration::envoy::UPSTREAM_CLUSTER;
use marty_integration::{http1, Envoy, EnvoyConfig, RouteSpec, Upstream};
use serde_json::{json, Value};

const REVIEWS: &str = "outbound|8080||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";
const REVIEWS_STAT: &str = "outbound_8080__reviews_default_svc_cluster_local";
const RATINGS_STAT: &str = "outbound_9080__ratings_default_svc_cluster_local";

/// The harness bootstrap with more clusters, each a copy of `upstream` under another name.
fn with_clusters(config: &EnvoyConfig, names: &[&str]) -> Value {
    let mut bootstrap = config.bootstrap();
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    let template = clusters
        .iter()
        .find(|c| c["name"] == UPSTREAM_CLUSTER)
        .expect("the upstream cluster")
        .clone();
    for name in names {
        let mut cluster = template.clone();
        cluster["name"] = json!(name);
        cluster["load_assignment"]["cluster_name"] = json!(name);
        clusters.push(cluster);
    }
    bootstrap
}

fn start(config: &EnvoyConfig, bootstrap: &Value) -> Envoy {
    Envoy::start_with_bootstrap(config, bootstrap).unwrap_or_else(|e| panic!("envoy starts: {e}"))
}

#[test]
fn two_unlisted_named_routes_have_a_breaker_each() {
    let upstream = Upstream::start();
    let config = json!({"circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 60}});
    let envoy = common::envoy(
        &upstream,
        config,
        vec![
            RouteSpec::new("orders", "/orders"),
            RouteSpec::new("counted", "/counted"),
        ],
    );
    for _ in 0..2 {
        http1(envoy.port(), "GET", "/orders", &answer("o", "503")).unwrap();
    }
    wait_state(&envoy, "orders", 1);
    let rejected = http1(envoy.port(), "GET", "/orders", &answer("o", "200")).unwrap();
    assert_eq!(rejected.header("x-marty-circuit"), Some("open"));
    let counted = http1(envoy.port(), "GET", "/counted", &answer("c", "200")).unwrap();
    assert_eq!(counted.status, 200, "{counted:?}");
    assert_eq!(value(&envoy, "counted", "circuit_state"), 0);
    assert_eq!(value(&envoy, "counted", "requests_total"), 1);
    assert_eq!(value(&envoy, "orders", "requests_total"), 3);
    assert_eq!(upstream.count("c"), 1);
}

#[test]
fn istio_default_routes_get_a_breaker_per_destination_and_unrouted_requests_none() {
    let upstream = Upstream::start();
    let plugin = json!({
        "circuit_breaker": {"failure_threshold": 3, "recovery_timeout": 60},
        // A `routes` entry keyed by a cluster name applies to that destination.
        "routes": {RATINGS: {"circuit_breaker": {"failure_threshold": 1}}},
    });
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(plugin.to_string())
        .routes(vec![
            RouteSpec::new("default", "/reviews").cluster(REVIEWS),
            RouteSpec::new("default", "/ratings").cluster(RATINGS),
        ]);
    let envoy = start(&config, &with_clusters(&config, &[REVIEWS, RATINGS]));

    for _ in 0..3 {
        http1(envoy.port(), "GET", "/reviews", &answer("rv", "503")).unwrap();
    }
    wait_state(&envoy, REVIEWS_STAT, 1);
    let ratings = http1(envoy.port(), "GET", "/ratings", &answer("ra", "200")).unwrap();
    assert_eq!(ratings.status, 200, "failing reviews leaves ratings closed");
    assert_eq!(value(&envoy, RATINGS_STAT, "circuit_state"), 0);
    // ratings' own entry: one failure opens it.
    http1(envoy.port(), "GET", "/ratings", &answer("ra", "500")).unwrap();
    wait_state(&envoy, RATINGS_STAT, 1);

    // No route matched: Envoy's 404, counted by no breaker.
    let before = envoy.stats();
    let unrouted = http1(envoy.port(), "GET", "/nowhere", &[]).unwrap();
    assert_eq!(unrouted.status, 404);
    let after = envoy.stats();
    let moved: Vec<_> = after
        .iter()
        .filter(|(k, v)| k.contains(".route.") && before.get(*k) != Some(*v))
        .collect();
    assert!(moved.is_empty(), "an unrouted request moved {moved:?}");
}

#[test]
fn bucket_by_cluster_shares_one_breaker_across_routes() {
    let upstream = Upstream::start();
    let config = json!({"bucket_by": "cluster",
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 60}});
    let envoy = common::envoy(
        &upstream,
        config,
        vec![
            RouteSpec::new("users", "/users"),
            RouteSpec::new("orders", "/orders"),
        ],
    );
    http1(envoy.port(), "GET", "/users", &answer("u", "503")).unwrap();
    http1(envoy.port(), "GET", "/orders", &answer("o", "503")).unwrap();
    wait_state(&envoy, UPSTREAM_CLUSTER, 1);
    let r = http1(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    assert_eq!(r.header("x-marty-circuit"), Some("open"));
    assert_eq!(envoy.stat(&stat("users", "requests_total")), None);
}

#[test]
fn past_max_buckets_new_names_share_the_overflow_bucket() {
    let upstream = Upstream::start();
    let routes: Vec<RouteSpec> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| RouteSpec::new(n, &format!("/{n}")))
        .collect();
    let envoy = common::envoy(&upstream, json!({"max_buckets": 2}), routes);
    for name in ["a", "b", "c", "d", "c"] {
        let r = http1(
            envoy.port(),
            "GET",
            &format!("/{name}"),
            &answer("k", "200"),
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }
    envoy.wait_for_stat(&stat("_overflow_", "requests_total"), |v| v == 3, WAIT);
    assert_eq!(value(&envoy, "a", "requests_total"), 1);
    assert_eq!(value(&envoy, "b", "requests_total"), 1);
    assert_eq!(envoy.stat(&stat("c", "requests_total")), None);
    let overflowed = envoy
        .stat("wasmcustom.marty_resilience.buckets_overflow_total")
        .unwrap_or(0);
    // c and d, once per worker that met them.
    assert!((2..=4).contains(&overflowed), "{overflowed}");
    envoy.wait_for_log("shares the overflow bucket", WAIT);
}

#[test]
fn two_instances_with_their_own_stat_prefix_keep_their_own_bulkhead() {
    // Two listeners, one filter instance each, the same route name: each instance's
    // `max_concurrent_requests: 2` is its own.
    let upstream = Upstream::start();
    let plugin = |prefix: &str| {
        json!({"stat_prefix": prefix, "routes": {"slow": {"circuit_breaker": {
            "max_concurrent_requests": 2}}}})
        .to_string()
    };
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(plugin("edge_a"))
        .routes(vec![RouteSpec::new("slow", "/")]);
    let mut bootstrap = config.bootstrap();
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    let mut second = listeners[0].clone();
    second["name"] = json!("second");
    let filters = second["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array_mut()
        .expect("http filters");
    filters[0]["typed_config"]["config"]["configuration"]["value"] = json!(plugin("edge_b"));
    listeners.push(second);
    let envoy = start(&config, &bootstrap);
    let second_port = envoy.listener_port("second").expect("second listener");

    let slow = [("x-test-key", "slow"), ("x-upstream-delay-ms", "3000")];
    let held: Vec<_> = (0..2)
        .map(|_| marty_integration::RawClient::send(envoy.port(), "GET", "/", &slow))
        .collect();
    envoy.wait_for_stat(
        "wasmcustom.edge_a.route.slow.active_requests",
        |v| v == 2,
        WAIT,
    );
    // The first instance is full; the second's two slots are free.
    let full = http1(envoy.port(), "GET", "/", &answer("k", "200")).unwrap();
    assert_eq!(full.header("x-marty-bulkhead"), Some("full"));
    let other: Vec<u16> = marty_integration::concurrently(2, |_| {
        http1(second_port, "GET", "/", &answer("other", "200"))
            .unwrap()
            .status
    });
    assert_eq!(other, [200, 200]);
    assert_eq!(
        envoy.stat("wasmcustom.edge_b.route.slow.concurrency_rejected_total"),
        Some(0)
    );
    for client in held {
        client.close();
    }
}

#[test]
fn a_calling_envoy_does_not_retry_our_rejection() {
    // Ours: the breaker opens after one failure. The caller: an Envoy (no filter) whose route
    // retries 503 three times, as Istio's default policy does.
    let upstream = Upstream::start();
    let ours = common::envoy(
        &upstream,
        json!({"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 60}}),
        vec![RouteSpec::new("users", "/")],
    );
    http1(ours.port(), "GET", "/", &answer("u", "503")).unwrap();
    wait_state(&ours, "users", 1);

    let caller = Envoy::start(
        &EnvoyConfig::new(ours.port())
            .with_filter(false)
            .routes(vec![RouteSpec::new("to_ours", "/").retry_policy(json!({
                "retry_on": "5xx,gateway-error,connect-failure,retriable-status-codes",
                "retriable_status_codes": [503],
                "num_retries": 3,
            }))]),
    )
    .unwrap_or_else(|e| panic!("caller starts: {e}"));
    let r = http1(caller.port(), "GET", "/", &answer("u", "200")).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        value(&ours, "users", "rejected_total"),
        1,
        "reached ours once"
    );
    assert_eq!(
        caller
            .stat("cluster.upstream.upstream_rq_retry")
            .unwrap_or(0),
        0,
        "the caller did not retry"
    );

    // Switched off, the caller retries: 1 + 3 attempts.
    let upstream = Upstream::start();
    let ours = common::envoy(
        &upstream,
        json!({"prevent_caller_retries": false,
               "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 60}}),
        vec![RouteSpec::new("users", "/")],
    );
    http1(ours.port(), "GET", "/", &answer("u", "503")).unwrap();
    wait_state(&ours, "users", 1);
    let caller = Envoy::start(
        &EnvoyConfig::new(ours.port())
            .with_filter(false)
            .routes(vec![
                RouteSpec::new("to_ours", "/").retry_policy(json!({
                "retry_on": "5xx", "num_retries": 3,
                "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"}})),
            ]),
    )
    .unwrap_or_else(|e| panic!("caller starts: {e}"));
    let r = http1(caller.port(), "GET", "/", &answer("u", "200")).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(value(&ours, "users", "rejected_total"), 4);
}
