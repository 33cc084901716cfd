//! What counts as an upstream failure, as seen through a real Envoy: HTTP status classes and
//! ignored codes, gRPC status in trailers and in trailers-only replies, and Envoy's own
//! record of resets and connect failures.

mod common;

use common::{answer, envoy, value, wait_state, GRPC_PATH};
use marty_integration::envoy::UPSTREAM_H2_CLUSTER;
use marty_integration::{grpc_unary, http1, Envoy, EnvoyConfig, RouteSpec, Upstream};
use serde_json::json;

fn trips_on_first_failure(extra: serde_json::Value) -> serde_json::Value {
    let mut breaker = json!({"failure_threshold": 1, "recovery_timeout": 60.0});
    if let (Some(b), Some(e)) = (breaker.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    json!({ "circuit_breaker": breaker })
}

#[test]
fn client_errors_and_ignored_codes_do_not_trip() {
    let upstream = Upstream::start();
    let envoy = envoy(
        &upstream,
        trips_on_first_failure(json!({"failure_status_codes": ["5xx", 429]})),
        vec![RouteSpec::unnamed("/")],
    );
    // 404 and 400 are the client's problem; 501 is ignored by default.
    for status in ["404", "400", "501", "200"] {
        let r = http1(envoy.port(), "GET", "/", &answer("s", status)).unwrap();
        assert_eq!(r.status.to_string(), status);
    }
    assert_eq!(value(&envoy, "upstream", "circuit_state"), 0);
    assert_eq!(value(&envoy, "upstream", "success_total"), 4);
    // 429 was listed explicitly, so it counts.
    http1(envoy.port(), "GET", "/", &answer("s", "429")).unwrap();
    wait_state(&envoy, "upstream", 1);
    assert_eq!(value(&envoy, "upstream", "failure_total"), 1);
}

fn grpc_envoy(upstream: &Upstream) -> Envoy {
    envoy(
        upstream,
        trips_on_first_failure(json!({})),
        vec![RouteSpec::unnamed("/").cluster(UPSTREAM_H2_CLUSTER)],
    )
}

#[test]
fn grpc_status_in_trailers_is_classified() {
    let upstream = Upstream::start();
    let envoy = grpc_envoy(&upstream);
    // OK and NOT_FOUND are not server failures, despite both being HTTP 200.
    for code in ["0", "5"] {
        grpc_unary(envoy.port(), GRPC_PATH, &[("x-upstream-grpc-status", code)]).unwrap();
    }
    assert_eq!(value(&envoy, "upstream_h2", "circuit_state"), 0);
    assert_eq!(value(&envoy, "upstream_h2", "success_total"), 2);
    // INTERNAL in the trailers is.
    let reply = grpc_unary(envoy.port(), GRPC_PATH, &[("x-upstream-grpc-status", "13")]).unwrap();
    assert_eq!(reply.code, tonic::Code::Internal);
    wait_state(&envoy, "upstream_h2", 1);
}

#[test]
fn grpc_status_of_a_trailers_only_reply_is_classified() {
    let upstream = Upstream::start();
    let envoy = grpc_envoy(&upstream);
    let reply = grpc_unary(
        envoy.port(),
        GRPC_PATH,
        &[
            ("x-upstream-grpc-status", "4"),
            ("x-upstream-grpc-trailers-only", "1"),
        ],
    )
    .unwrap();
    assert_eq!(reply.code, tonic::Code::DeadlineExceeded);
    wait_state(&envoy, "upstream_h2", 1);
    assert_eq!(value(&envoy, "upstream_h2", "failure_total"), 1);
}

#[test]
fn upstream_resets_count_only_when_connect_failures_count() {
    let upstream = Upstream::start();
    let counting = envoy(
        &upstream,
        trips_on_first_failure(json!({})),
        vec![RouteSpec::unnamed("/")],
    );
    let r = http1(counting.port(), "GET", "/", &[("x-upstream-reset", "1")]).unwrap();
    assert_eq!(r.status, 503, "Envoy answers the reset itself");
    wait_state(&counting, "upstream", 1);

    let not_counting = envoy(
        &upstream,
        trips_on_first_failure(json!({"count_connect_failures": false})),
        vec![RouteSpec::unnamed("/")],
    );
    for _ in 0..3 {
        let r = http1(
            not_counting.port(),
            "GET",
            "/",
            &[("x-upstream-reset", "1")],
        )
        .unwrap();
        assert_eq!(r.status, 503);
    }
    assert_eq!(value(&not_counting, "upstream", "circuit_state"), 0);
    assert_eq!(value(&not_counting, "upstream", "failure_total"), 0);
    assert_eq!(value(&not_counting, "upstream", "success_total"), 0);
}

#[test]
fn connect_failures_count() {
    // An upstream port nobody listens on: Envoy's router fails to connect (flag UF).
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = EnvoyConfig::new(closed_port)
        .plugin_config(trips_on_first_failure(json!({"failure_status_codes": [500]})).to_string())
        .routes(vec![RouteSpec::unnamed("/")]);
    let envoy = Envoy::start(&config).unwrap();
    let r = http1(envoy.port(), "GET", "/", &[]).unwrap();
    assert_eq!(r.status, 503);
    // 503 is not in failure_status_codes: only the connect failure itself opened the breaker.
    wait_state(&envoy, "upstream", 1);
    let r = http1(envoy.port(), "GET", "/", &[]).unwrap();
    assert_eq!(r.header("x-marty-circuit"), Some("open"));
}
