//! The harness itself, without the wasm filter: if these fail, filter tests prove nothing.

use std::time::Duration;

use http::Version;
use marty_integration::envoy::UPSTREAM_H2_CLUSTER;
use marty_integration::{
    client, concurrently, grpc_unary, http1, http2, Envoy, EnvoyConfig, RouteSpec, Upstream,
};

const GRPC_PATH: &str = "/marty.test.Echo/Call";

fn envoy_without_filter(upstream: &Upstream, upstream_http2: bool) -> Envoy {
    let config = EnvoyConfig::new(upstream.port())
        .with_filter(false)
        .upstream_http2(upstream_http2)
        .routes(vec![
            RouteSpec::new("grpc", "/marty.test.").cluster(UPSTREAM_H2_CLUSTER),
            RouteSpec::new("h2", "/h2/").cluster(UPSTREAM_H2_CLUSTER),
            RouteSpec::unnamed("/"),
        ]);
    Envoy::start(&config).expect("envoy without the filter starts")
}

#[test]
fn h1_and_h2_clients_reach_the_upstream() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, false);

    let r = http1(envoy.port(), "GET", "/a?x=1", &[("x-test-key", "h1")]).expect("h1 request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.count("h1"), 1);
    let seen = &upstream.requests("h1")[0];
    assert_eq!(seen.path, "/a?x=1");
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.version,
        Version::HTTP_11,
        "cluster `upstream` speaks h1 by default"
    );
    assert!(
        seen.header("x-request-id").is_some(),
        "envoy generates request ids"
    );

    let r = http2(envoy.port(), "POST", "/b", &[("x-test-key", "h2")]).expect("h2 request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.count("h2"), 1);
    assert_eq!(upstream.total(), 2);

    let r =
        http1(envoy.port(), "GET", "/h2/c", &[("x-test-key", "h2c")]).expect("h1 to h2 cluster");
    assert_eq!(r.status, 200);
    assert_eq!(upstream.requests("h2c")[0].version, Version::HTTP_2);

    envoy.wait_for_stat(
        "cluster.upstream.upstream_rq_total",
        |v| v == 2,
        Duration::from_secs(10),
    );
    let stats = envoy.stats();
    assert!(
        stats.contains_key("cluster.upstream.upstream_rq_total"),
        "{stats:?}"
    );
    assert!(envoy
        .prometheus()
        .contains("envoy_cluster_upstream_rq_total"));

    upstream.reset_counts();
    assert_eq!(upstream.total(), 0);
}

#[test]
fn http2_cluster_option_speaks_h2_upstream() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, true);
    let r = http1(envoy.port(), "GET", "/", &[("x-test-key", "k")]).expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(upstream.requests("k")[0].version, Version::HTTP_2);
}

#[test]
fn status_command_comes_back_through_envoy() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, false);
    for send in [http1, http2] {
        let r = send(envoy.port(), "GET", "/", &[("x-upstream-status", "503")]).expect("request");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            r.text().starts_with("upstream 503"),
            "body from the upstream, not envoy: {}",
            r.text()
        );
    }
}

#[test]
fn grpc_status_via_trailers_and_trailers_only() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, false);

    let ok = grpc_unary(envoy.port(), GRPC_PATH, &[("x-test-key", "g")]).expect("grpc call");
    assert_eq!(ok.code, tonic::Code::Ok, "{ok:?}");

    let r = grpc_unary(
        envoy.port(),
        GRPC_PATH,
        &[("x-test-key", "g"), ("x-upstream-grpc-status", "14")],
    )
    .expect("grpc call");
    assert_eq!(r.code, tonic::Code::Unavailable, "{r:?}");
    assert_eq!(r.message, "upstream grpc-status 14");

    let r = grpc_unary(
        envoy.port(),
        GRPC_PATH,
        &[
            ("x-test-key", "g"),
            ("x-upstream-grpc-status", "14"),
            ("x-upstream-grpc-trailers-only", "1"),
        ],
    )
    .expect("grpc call");
    assert_eq!(r.code, tonic::Code::Unavailable, "{r:?}");

    let seen = upstream.requests("g");
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.version == Version::HTTP_2 && r.path == GRPC_PATH));
}

#[test]
fn upstream_reset_is_a_503_from_envoy() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, false);
    // `/` goes to the h1 cluster (connection close), `/h2/` to the h2 one (RST_STREAM).
    for path in ["/", "/h2/x"] {
        let r = http1(
            envoy.port(),
            "GET",
            path,
            &[("x-test-key", path), ("x-upstream-reset", "1")],
        )
        .expect("request");
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert!(r.text().contains("reset"), "{path}: {}", r.text());
        assert_eq!(upstream.count(path), 1, "no retry policy, one attempt");
    }
    envoy.wait_for_stat(
        "cluster.upstream.upstream_rq_503",
        |v| v == 1,
        Duration::from_secs(10),
    );
}

#[test]
fn delay_overlaps_concurrent_requests() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, false);
    let statuses = concurrently(3, |_| {
        http1(
            envoy.port(),
            "GET",
            "/",
            &[("x-test-key", "slow"), ("x-upstream-delay-ms", "300")],
        )
        .expect("request")
        .status
    });
    assert_eq!(statuses, vec![200, 200, 200]);
    assert_eq!(upstream.max_in_flight("slow"), 3);
    assert_eq!(upstream.in_flight("slow"), 0);
}

#[test]
fn client_abort_reaches_the_upstream_as_a_reset() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, false);
    client::http1_abort_after_headers(
        envoy.port(),
        "/",
        &[("x-test-key", "abort"), ("x-upstream-delay-ms", "5000")],
        || upstream.wait_for_count("abort", 1, Duration::from_secs(5)),
    );
    envoy.wait_for_stat(
        "http.ingress.downstream_cx_destroy_remote_active_rq",
        |v| v == 1,
        Duration::from_secs(5),
    );
}

#[test]
fn fail_first_fails_k_times_per_request_id() {
    let upstream = Upstream::start();
    let send = |id: &str| {
        http1(
            upstream.port(),
            "GET",
            "/",
            &[
                ("x-request-id", id),
                ("x-upstream-fail-first", "2"),
                ("x-upstream-status", "500"),
            ],
        )
        .expect("direct request")
        .status
    };
    assert_eq!(
        [send("a"), send("a"), send("b"), send("a")],
        [500, 500, 500, 200]
    );
    let r = http1(
        upstream.port(),
        "GET",
        "/",
        &[("x-test-key", "k"), ("x-upstream-fail-first", "1")],
    )
    .expect("direct request");
    assert_eq!(r.status, 503, "default failing status");
}

#[test]
fn start_error_carries_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not a wasm module").expect("write bogus module");
    let err = match Envoy::start(&EnvoyConfig::new(1).wasm_path(&bogus)) {
        Ok(_) => panic!("envoy accepted a bogus wasm module"),
        Err(e) => e,
    };
    assert!(err.exit_status.is_some(), "{err}");
    assert!(err.log.to_lowercase().contains("wasm"), "{err}");
}

#[test]
fn loopback_clients_are_internal() {
    let upstream = Upstream::start();
    let envoy = envoy_without_filter(&upstream, false);
    // x-envoy-* headers are only honoured from internal clients.
    let r = http1(
        envoy.port(),
        "GET",
        "/",
        &[
            ("x-upstream-delay-ms", "2000"),
            ("x-envoy-upstream-rq-timeout-ms", "100"),
        ],
    )
    .expect("request");
    assert_eq!(r.status, 504, "{}", r.text());
    // ...and so is the client's request id, which fail-first keys on.
    let send = || {
        http1(
            envoy.port(),
            "GET",
            "/",
            &[("x-request-id", "fixed-id"), ("x-upstream-fail-first", "1")],
        )
        .expect("request")
    };
    assert_eq!(send().status, 503);
    assert_eq!(send().status, 200);
}
