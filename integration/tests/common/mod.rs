//! Shared bits of the filter's end-to-end tests.
#![allow(dead_code)]

use std::time::Duration;

use marty_integration::{Envoy, EnvoyConfig, RouteSpec, Upstream};
use serde_json::Value;

/// Upper bound of every poll: generous, because Envoy and V8 share two cores with the tests.
pub const WAIT: Duration = Duration::from_secs(15);

pub const GRPC_PATH: &str = "/marty.test.Echo/Call";

/// The full `/stats` name of a per-route stat of the filter.
pub fn stat(route: &str, leaf: &str) -> String {
    format!("wasmcustom.marty_resilience.route.{route}.{leaf}")
}

/// Starts Envoy with the filter configured by `plugin_config` in front of `upstream`.
pub fn envoy(upstream: &Upstream, plugin_config: Value, routes: Vec<RouteSpec>) -> Envoy {
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(plugin_config.to_string())
        .routes(routes);
    Envoy::start(&config).unwrap_or_else(|e| panic!("envoy with the filter starts: {e}"))
}

/// Request headers that make the upstream answer `status`, counted under `key`.
pub fn answer(key: &'static str, status: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![("x-test-key", key), ("x-upstream-status", status)]
}

/// Polls the route's `circuit_state` gauge until it reads `state` (0 closed, 1 open, 2 half-open).
pub fn wait_state(envoy: &Envoy, route: &str, state: i64) {
    envoy.wait_for_stat(&stat(route, "circuit_state"), |v| v == state, WAIT);
}

pub fn value(envoy: &Envoy, route: &str, leaf: &str) -> i64 {
    envoy.stat(&stat(route, leaf)).unwrap_or_else(|| {
        panic!(
            "stat {} missing; stats: {:?}",
            stat(route, leaf),
            envoy
                .stats()
                .keys()
                .filter(|k| k.contains("marty"))
                .collect::<Vec<_>>()
        )
    })
}

/// Asserts that both Envoy workers accepted connections on the front listener, so a race test
/// really raced across VMs.
pub fn assert_both_workers_served(envoy: &Envoy) {
    let stats = envoy.stats();
    for worker in 0..2 {
        // The front listener is the only one; its stat name carries the configured address.
        let suffix = format!(".worker_{worker}.downstream_cx_total");
        let accepted: i64 = stats
            .iter()
            .filter(|(k, _)| k.starts_with("listener.") && k.ends_with(&suffix))
            .filter(|(k, _)| !k.starts_with("listener.admin."))
            .map(|(_, v)| *v)
            .sum();
        assert!(accepted > 0, "worker {worker} accepted no connection");
    }
}

/// The harness bootstrap of `config` with the filter also in the router's
/// `upstream_http_filters`, configured by `upstream_plugin` (`"mode": "upstream"`); with
/// `in_response`, the virtual host reports attempts (`include_attempt_count_in_response`). The
/// upstream placement needs no `include_request_attempt_count`: it reads Envoy's own try number.
pub fn with_upstream_placement(
    config: &EnvoyConfig,
    upstream_plugin: &Value,
    in_response: bool,
) -> Value {
    let mut bootstrap = config.bootstrap();
    let hcm = bootstrap
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .expect("the harness bootstrap has one HCM");
    let vhost = &mut hcm["route_config"]["virtual_hosts"][0];
    if in_response {
        vhost["include_attempt_count_in_response"] = serde_json::json!(true);
    }
    let filters = hcm["http_filters"].as_array_mut().expect("http_filters");
    let mut wasm = filters[0].clone();
    wasm["name"] = serde_json::json!("marty_resilience_upstream");
    wasm["typed_config"]["config"]["name"] = serde_json::json!("marty_resilience_upstream");
    wasm["typed_config"]["config"]["configuration"]["value"] =
        serde_json::json!(upstream_plugin.to_string());
    let router = filters.last_mut().expect("the router is last");
    router["typed_config"]["upstream_http_filters"] = serde_json::json!([
        wasm,
        {"name": "envoy.filters.http.upstream_codec",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}
    ]);
    bootstrap
}

/// The harness bootstrap with its listener moved to LDS served from a file in `dir`; returns
/// the path to rewrite for updates.
pub fn lds_bootstrap(config: &EnvoyConfig, dir: &std::path::Path) -> (Value, std::path::PathBuf) {
    let mut bootstrap = config.bootstrap();
    let listeners = bootstrap["static_resources"]
        .as_object_mut()
        .expect("static_resources")
        .remove("listeners")
        .expect("listeners");
    let lds = dir.join("lds.json");
    write_lds(&lds, &listeners[0]);
    bootstrap["node"] = serde_json::json!({"id": "marty-test", "cluster": "marty-test"});
    bootstrap["dynamic_resources"] = serde_json::json!({"lds_config": {
        "resource_api_version": "V3",
        "path_config_source": {"path": lds, "watched_directory": {"path": dir}},
    }});
    (bootstrap, lds)
}

/// Replaces the LDS file atomically (Envoy watches the directory for the move).
pub fn write_lds(path: &std::path::Path, listener: &Value) {
    let mut listener = listener.clone();
    listener["@type"] = serde_json::json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::json!({"resources": [listener]}).to_string(),
    )
    .expect("write lds");
    std::fs::rename(&tmp, path).expect("move lds into place");
}

/// The harness listener for `config`.
pub fn listener(config: &EnvoyConfig) -> Value {
    config.bootstrap()["static_resources"]["listeners"][0].clone()
}
