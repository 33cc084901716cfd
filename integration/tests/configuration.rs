//! Configuration as Envoy delivers it: rejected at load with the field path, VM environment
//! variables, per-route entries, route metadata, and the shared `default` bucket.

mod common;

use common::{answer, envoy, stat, value, wait_state, WAIT};
use marty_integration::{http1, Envoy, EnvoyConfig, RouteSpec, Upstream};
use serde_json::json;

#[test]
fn an_invalid_configuration_is_rejected_naming_the_field() {
    let upstream = Upstream::start();
    let cases = [
        (
            json!({"routes": {"users": {"circuit_breaker": {"failure_threshold": -2}}}})
                .to_string(),
            "routes.users.circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got -2",
        ),
        (
            json!({"circuit_breaker": {"recovery_timout": 3}}).to_string(),
            "circuit_breaker.recovery_timout: unknown field, expected one of:",
        ),
        (
            json!({"circuit_breaker": {"recovery_timeout": "soon"}}).to_string(),
            "circuit_breaker.recovery_timeout: expected a duration > 0",
        ),
        (
            "{\"circuit_breaker\": ".to_string(),
            "configuration is not valid JSON",
        ),
    ];
    for (config, message) in cases {
        let error = Envoy::start(&EnvoyConfig::new(upstream.port()).plugin_config(config.clone()))
            .err()
            .unwrap_or_else(|| panic!("Envoy accepted {config}"));
        assert!(
            error.log.contains(&format!(
                "invalid marty-resilience configuration: {message}"
            )),
            "{config}: log does not say {message:?}:\n{}",
            error.log
        );
    }
}

#[test]
fn an_invalid_environment_variable_is_rejected_by_name() {
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port()).vm_env(
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_MAX_REQUESTS",
        "100",
    );
    let error = Envoy::start(&config).err().expect("rejected");
    assert!(error.log.contains(
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_MAX_REQUESTS: expected an integer between 1 and 64, got 100"
    ), "{}", error.log);
}

#[test]
fn environment_variables_override_the_plugin_json() {
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(json!({"circuit_breaker": {"failure_threshold": 10}}).to_string())
        .vm_env("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2")
        .vm_env(
            "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_STATUS_CODES",
            "418",
        )
        .routes(vec![RouteSpec::unnamed("/")]);
    let envoy = Envoy::start(&config).unwrap();
    // 500 is no longer a failure; 418 is, and two of them open the breaker.
    http1(envoy.port(), "GET", "/", &answer("e", "500")).unwrap();
    http1(envoy.port(), "GET", "/", &answer("e", "418")).unwrap();
    assert_eq!(value(&envoy, "upstream", "circuit_state"), 0);
    http1(envoy.port(), "GET", "/", &answer("e", "418")).unwrap();
    wait_state(&envoy, "upstream", 1);
}

#[test]
fn named_routes_get_their_own_buckets_and_unnamed_ones_their_clusters() {
    let upstream = Upstream::start();
    let config = json!({
        "circuit_breaker": {"failure_threshold": 100},
        "routes": {"users": {"circuit_breaker": {"failure_threshold": 1}}}
    });
    let envoy = envoy(
        &upstream,
        config,
        vec![
            RouteSpec::new("users", "/users"),
            RouteSpec::new("orders", "/orders"),
            RouteSpec::unnamed("/"),
        ],
    );
    // A named route not in the plugin JSON gets its own bucket with the top-level policy;
    // requests on the unnamed route, whatever their paths, share their cluster's. Names come
    // from Envoy's route and cluster tables: client input never creates buckets.
    for path in ["/orders/1", "/orders/2?x=y", "/anything", "/a/b/c"] {
        http1(envoy.port(), "GET", path, &answer("d", "200")).unwrap();
    }
    assert_eq!(value(&envoy, "orders", "requests_total"), 2);
    assert_eq!(value(&envoy, "upstream", "requests_total"), 2);
    assert!(!envoy.stats().keys().any(|k| k.contains("anything")));

    // `users` trips on its own threshold without touching the others.
    http1(envoy.port(), "GET", "/users", &answer("u", "500")).unwrap();
    wait_state(&envoy, "users", 1);
    assert_eq!(value(&envoy, "upstream", "circuit_state"), 0);
    assert_eq!(value(&envoy, "orders", "circuit_state"), 0);
    let r = http1(envoy.port(), "GET", "/orders", &answer("d", "200")).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn route_metadata_wins_over_the_plugin_json() {
    let upstream = Upstream::start();
    let config = json!({"routes": {"users": {"circuit_breaker": {"failure_threshold": 50}}}});
    let annotated = json!({"circuit_breaker": {
        "failure_threshold": 2, "failure_status_codes": ["5xx", 429], "recovery_timeout": "45s"}});
    let envoy = envoy(
        &upstream,
        config,
        vec![
            RouteSpec::new("users", "/users").metadata(annotated),
            RouteSpec::new("payments", "/payments")
                .metadata(json!({"circuit_breaker": {"failure_threshold": 1}})),
            RouteSpec::unnamed("/"),
        ],
    );
    http1(envoy.port(), "GET", "/users", &answer("u", "429")).unwrap();
    assert_eq!(value(&envoy, "users", "circuit_state"), 0);
    http1(envoy.port(), "GET", "/users", &answer("u", "429")).unwrap();
    wait_state(&envoy, "users", 1);
    let r = http1(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        retry_after > 30 && retry_after <= 45,
        "recovery_timeout from metadata: {retry_after}"
    );

    // Another route's metadata applies to its own bucket only.
    http1(envoy.port(), "GET", "/payments", &answer("p", "503")).unwrap();
    wait_state(&envoy, "payments", 1);
    assert_eq!(envoy.stat(&stat("upstream", "requests_total")), None);
}

#[test]
fn invalid_route_metadata_is_reported_and_the_plugin_json_applies() {
    let upstream = Upstream::start();
    let config = json!({"routes": {"users": {"circuit_breaker": {"failure_threshold": 1}}}});
    let envoy = envoy(
        &upstream,
        config,
        vec![
            RouteSpec::new("users", "/users")
                .metadata(json!({"circuit_breaker": {"failure_threshold": "many"}})),
            RouteSpec::unnamed("/"),
        ],
    );
    http1(envoy.port(), "GET", "/users", &answer("u", "500")).unwrap();
    wait_state(&envoy, "users", 1);
    envoy.wait_for_log(
        "route_metadata[users].filter_metadata[marty.resilience].circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got \"many\"",
        WAIT,
    );
    assert!(
        envoy
            .stat("wasmcustom.marty_resilience.route_config_rejected_total")
            .unwrap()
            >= 1
    );
}

#[test]
fn prometheus_shows_the_route_as_a_label() {
    let upstream = Upstream::start();
    let envoy = envoy(
        &upstream,
        json!({"routes": {"users": {}}}),
        vec![RouteSpec::new("users", "/users"), RouteSpec::unnamed("/")],
    );
    http1(envoy.port(), "GET", "/users", &answer("u", "200")).unwrap();
    envoy.wait_for_stat(&stat("users", "requests_total"), |v| v == 1, WAIT);
    let text = envoy.prometheus();
    assert!(
        text.contains("marty_resilience_route_requests_total{marty_route=\"users\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("marty_route=\"upstream\""),
        "no request took the unnamed route"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("marty_resilience_route_users")),
        "no route name left inside a metric name"
    );
}

/// The Marty guide's own configuration files load in Envoy unchanged and do what the guide says:
/// its `retry` section (no `enabled`) retries, its breaker opens after `failure_threshold`.
#[test]
fn the_guides_configuration_files_run_in_envoy_as_documented() {
    let read = |name: &str| {
        std::fs::read_to_string(marty_integration::workspace_root().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    for file in [
        "config/examples/guide-production.json",
        "config/examples/guide-field-names.json",
    ] {
        let upstream = Upstream::start();
        let config = EnvoyConfig::new(upstream.port())
            .plugin_config(read(file))
            .routes(vec![RouteSpec::new("users", "/")]);
        let envoy = Envoy::start(&config).unwrap_or_else(|e| panic!("{file}: {e}"));
        // One failed try, then a success: retried by the guide's retry section.
        let r = http1(
            envoy.port(),
            "GET",
            "/",
            &[("x-test-key", "retried"), ("x-upstream-fail-first", "1")],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{file}: {r:?}");
        assert_eq!(upstream.count("retried"), 2, "{file}: one retry");
        // failure_threshold 5: five failures open the breaker (retries exhausted each time).
        for _ in 0..5 {
            http1(envoy.port(), "GET", "/", &answer("failing", "503")).unwrap();
        }
        wait_state(&envoy, "users", 1);
        let rejected = http1(envoy.port(), "GET", "/", &answer("after", "200")).unwrap();
        assert_eq!(rejected.header("x-marty-circuit"), Some("open"), "{file}");
        assert_eq!(upstream.count("after"), 0, "{file}");
    }
}
