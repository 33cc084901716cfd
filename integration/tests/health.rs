//! The health endpoint through a real Envoy: off by default (the paths go upstream); on, the
//! JSON status (checked against `config/health-response.schema.json`) and the text report, 200
//! while every breaker is closed and 503 once one is not; peers outside `allowed_sources` and
//! methods other than GET/HEAD turned away without touching the upstream; and the same route
//! set whichever worker answers, including a route only one worker has met.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{answer, assert_both_workers_served, stat, value, wait_state, WAIT};
use marty_integration::{http1, workspace_root, Envoy, EnvoyConfig, Response, RouteSpec, Upstream};
use serde_json::{json, Value};

const HEALTH: &str = "/resilience/health";
const REPORT: &str = "/resilience/report";

/// Fresh connections per worker check: enough that the kernel spreads them over both workers.
const SAMPLES: usize = 40;

fn routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::new("users", "/users"),
        RouteSpec::new("orders", "/orders"),
        RouteSpec::unnamed("/"),
    ]
}

/// `users` trips on its first failure and stays open 30 s; `orders` keeps the preset.
fn config(health: Value) -> Value {
    json!({
        "service_name": "user_service",
        "environment": "production",
        "health": health,
        "routes": {
            "users": {"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 30}},
            "orders": {},
        },
    })
}

fn start(upstream: &Upstream, health: Value) -> Envoy {
    common::envoy(upstream, config(health), routes())
}

fn get(envoy: &Envoy, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    http1(envoy.port(), method, path, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn validator() -> jsonschema::Validator {
    let path = workspace_root().join("config/health-response.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reply's JSON, after checking its headers and validating it against the schema.
fn status_json(validator: &jsonschema::Validator, reply: &Response) -> Value {
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let json: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("health reply is not JSON: {e}: {}", reply.text()));
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{json:#}\n{errors:#?}");
    json
}

fn route_names(json: &Value) -> BTreeSet<String> {
    json["routes"]
        .as_object()
        .unwrap_or_else(|| panic!("no routes object: {json}"))
        .keys()
        .cloned()
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(ToString::to_string).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[test]
fn off_by_default_the_paths_go_upstream() {
    let upstream = Upstream::start();
    let config = json!({"routes": {"users": {}}});
    let envoy = common::envoy(&upstream, config, routes());
    for path in [HEALTH, REPORT, "/resilience/health?x=1"] {
        let r = get(&envoy, "GET", path, &answer("h", "200"));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text(),
            "upstream 200 key=h\n",
            "the upstream's reply, not a report"
        );
    }
    assert_eq!(upstream.count("h"), 3);
    assert_eq!(value(&envoy, "upstream", "requests_total"), 3);

    // "enabled": false is the same.
    let upstream = Upstream::start();
    let envoy = start(&upstream, json!({"enabled": false}));
    let r = get(&envoy, "GET", HEALTH, &answer("h", "200"));
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count("h"), 1);
}

#[test]
fn all_closed_answers_200_with_the_documented_json() {
    let upstream = Upstream::start();
    let envoy = start(&upstream, json!({"enabled": true}));
    let validator = validator();

    let before = unix_ms();
    let reply = get(&envoy, "GET", HEALTH, &[]);
    let after = unix_ms();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = status_json(&validator, &reply);
    assert_eq!(json["overall_healthy"], true);
    assert_eq!(json["service_name"], "user_service");
    assert_eq!(json["environment"], "production");
    let at = json["timestamp_unix_ms"].as_u64().unwrap_or(0);
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&at),
        "timestamp {at} outside [{before}, {after}]"
    );
    assert_eq!(route_names(&json), names(&["orders", "users"]));
    for (name, route) in json["routes"].as_object().into_iter().flatten() {
        assert_eq!(route["state"], "closed", "{name}");
        assert_eq!(route["healthy"], true, "{name}");
        assert_eq!(route["trips"], 0, "{name}");
        assert_eq!(route["last_transition_unix_ms"], Value::Null, "{name}");
        // Configured routes are set up by every worker: settings always shown.
        assert!(route.get("circuit_breaker").is_some(), "{name}: {route}");
    }
    assert_eq!(
        json["routes"]["users"]["circuit_breaker"]["failure_threshold"],
        1
    );
    assert_eq!(
        json["routes"]["users"]["circuit_breaker"]["recovery_timeout"],
        30.0
    );
    assert_eq!(
        json["routes"]["orders"]["circuit_breaker"]["failure_threshold"],
        5
    );

    // The query string does not matter; a longer path is not the endpoint.
    let with_query = get(&envoy, "GET", "/resilience/health?verbose=1", &[]);
    assert_eq!(with_query.status, 200);
    status_json(&validator, &with_query);
    let head = get(&envoy, "HEAD", HEALTH, &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        upstream.total(),
        0,
        "the endpoint never reaches the upstream"
    );
    // Nor does it count as traffic on any route.
    for route in ["users", "orders"] {
        assert_eq!(value(&envoy, route, "requests_total"), 0, "{route}");
    }

    let other = get(&envoy, "GET", "/resilience/healthz", &answer("z", "200"));
    assert_eq!(other.status, 200);
    assert_eq!(
        upstream.count("z"),
        1,
        "only the exact path is the endpoint"
    );
}

/// The text report's route lines as `route -> {key: value}`.
fn report_rows(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    text.lines()
        .skip(5)
        .map(|line| {
            let mut words = line.split_whitespace();
            let route = words.next().unwrap_or_default().to_string();
            let fields = words
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (route, fields)
        })
        .collect()
}

#[test]
fn a_tripped_route_turns_the_answer_to_503() {
    let upstream = Upstream::start();
    let envoy = start(&upstream, json!({"enabled": true}));
    let validator = validator();

    let before = unix_ms();
    let failed = get(&envoy, "GET", "/users", &answer("u", "503"));
    assert_eq!(failed.status, 503);
    assert_eq!(
        failed.header("x-marty-circuit"),
        None,
        "the upstream's own 503"
    );
    wait_state(&envoy, "users", 1);
    let after = unix_ms();

    let reply = get(&envoy, "GET", HEALTH, &[]);
    assert_eq!(reply.status, 503, "{}", reply.text());
    let json = status_json(&validator, &reply);
    assert_eq!(json["overall_healthy"], false);
    let users = &json["routes"]["users"];
    assert_eq!(users["state"], "open");
    assert_eq!(users["healthy"], false);
    assert_eq!(users["trips"], 1);
    let wait = users["seconds_until_half_open"].as_f64().unwrap_or(0.0);
    assert!(wait > 0.0 && wait <= 30.0, "seconds_until_half_open {wait}");
    let changed = users["last_transition_unix_ms"].as_u64().unwrap_or(0);
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&changed),
        "last transition {changed} outside [{before}, {after}]"
    );
    assert_eq!(json["routes"]["orders"]["state"], "closed");
    assert_eq!(json["routes"]["orders"]["healthy"], true);

    let report = get(&envoy, "GET", REPORT, &[]);
    assert_eq!(report.status, 503);
    assert_eq!(
        report.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(report.header("cache-control"), Some("no-store"));
    let text = report.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "marty-resilience health report",
            "service: user_service",
            "environment: production",
            "overall: DEGRADED",
            "routes: 2",
        ],
        "{text}"
    );
    assert_eq!(lines.len(), 7, "one line per route:\n{text}");
    let order: Vec<&str> = lines[5..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(order, ["orders", "users"], "sorted by route");
    let rows = report_rows(&text);
    for (route, fields) in &rows {
        let facts = &json["routes"][route.as_str()];
        assert_eq!(facts["state"], fields["state"].as_str(), "{route}");
        assert_eq!(facts["trips"].to_string(), fields["trips"], "{route}");
        assert_eq!(
            facts["consecutive_failures"].to_string(),
            fields["consecutive_failures"],
            "{route}"
        );
        assert_eq!(fields["faults"], "off", "{route}");
    }
    let half_open_in: f64 = rows["users"]["half_open_in"]
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("half_open_in of users: {text}"));
    assert!(half_open_in > 0.0 && half_open_in <= 30.0, "{text}");
    assert_eq!(rows["orders"]["half_open_in"], "-");
    assert_eq!(rows["orders"]["last_transition"], "never");
    assert!(rows["users"]["last_transition"].ends_with('Z'), "{text}");

    // Only the one failing request ever reached the upstream.
    assert_eq!(upstream.total(), 1);
}

#[test]
fn peers_outside_allowed_sources_get_404_and_nothing_goes_upstream() {
    let upstream = Upstream::start();
    let envoy = start(
        &upstream,
        json!({"enabled": true, "allowed_sources": ["10.0.0.0/8"]}),
    );
    let xff = [("x-forwarded-for", "10.1.2.3")];
    for (method, path, headers) in [
        ("GET", HEALTH, &[][..]),
        ("GET", REPORT, &[][..]),
        ("HEAD", HEALTH, &[][..]),
        ("POST", HEALTH, &[][..]),
        ("GET", "/resilience/health?x=1", &[][..]),
        // With use_remote_address (the harness sets it), a forwarded-for header changes nothing.
        ("GET", HEALTH, &xff[..]),
    ] {
        let r = get(&envoy, method, path, headers);
        assert_eq!(r.status, 404, "{method} {path} {headers:?}");
        assert!(r.body.is_empty(), "{method} {path}: {}", r.text());
        assert_eq!(r.header("content-type"), None);
    }
    assert_eq!(upstream.total(), 0, "the upstream received nothing");
    // The rest of the traffic is untouched.
    let r = get(&envoy, "GET", "/users", &answer("u", "200"));
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count("u"), 1);
}

#[test]
fn without_use_remote_address_envoy_takes_the_source_from_x_forwarded_for() {
    // The filter reads source.address. Without use_remote_address Envoy sets it from the last
    // X-Forwarded-For entry, so any client can claim an allowed address: this is why
    // docs/health.md asks for use_remote_address (or for the endpoint to stay off) on
    // listeners that untrusted clients reach.
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(
            config(json!({"enabled": true, "allowed_sources": ["10.0.0.0/8"]})).to_string(),
        )
        .routes(routes());
    let mut bootstrap = config.bootstrap();
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    assert_eq!(
        hcm["use_remote_address"], true,
        "the harness's bootstrap changed shape"
    );
    hcm["use_remote_address"] = json!(false);
    let envoy = Envoy::start_with_bootstrap(&config, &bootstrap)
        .unwrap_or_else(|e| panic!("envoy starts: {e}"));

    assert_eq!(
        get(&envoy, "GET", HEALTH, &[]).status,
        404,
        "loopback is not allowed"
    );
    let spoofed = get(&envoy, "GET", HEALTH, &[("x-forwarded-for", "10.1.2.3")]);
    assert_eq!(
        spoofed.status, 200,
        "source.address came from X-Forwarded-For"
    );
    let not_last = get(
        &envoy,
        "GET",
        HEALTH,
        &[("x-forwarded-for", "10.1.2.3, 192.0.2.1")],
    );
    assert_eq!(not_last.status, 404, "only the last entry counts");
    assert_eq!(upstream.total(), 0);
}

#[test]
fn methods_other_than_get_and_head_get_405() {
    let upstream = Upstream::start();
    let envoy = start(&upstream, json!({"enabled": true}));
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in [HEALTH, REPORT] {
            let r = get(&envoy, method, path, &[]);
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET"), "{method} {path}");
        }
    }
    assert_eq!(get(&envoy, "HEAD", REPORT, &[]).status, 200);
    assert_eq!(upstream.total(), 0);
}

#[test]
fn every_worker_reports_the_same_routes() {
    let upstream = Upstream::start();
    let envoy = start(&upstream, json!({"enabled": true}));
    let validator = validator();
    let expected = names(&["orders", "users"]);
    for i in 0..SAMPLES {
        let reply = get(&envoy, "GET", HEALTH, &[]);
        assert_eq!(reply.status, 200, "reply {i}");
        let json = status_json(&validator, &reply);
        assert_eq!(route_names(&json), expected, "reply {i}");
        let text = get(&envoy, "GET", REPORT, &[]).text();
        let rows: BTreeSet<String> = report_rows(&text).into_keys().collect();
        assert_eq!(rows, expected, "report {i}:\n{text}");
    }
    assert_both_workers_served(&envoy);
}

#[test]
fn a_route_met_by_one_worker_is_reported_by_every_worker() {
    // `inventory` exists only in its route metadata: a worker creates its bucket when a request
    // first takes the route. One request, so one worker; every worker must then report it, and
    // its breaker state, from the shared registry and record.
    let upstream = Upstream::start();
    let mut routes = routes();
    routes.insert(
        0,
        RouteSpec::new("inventory", "/inventory")
            .metadata(json!({"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 60}})),
    );
    let envoy = common::envoy(&upstream, config(json!({"enabled": true})), routes);
    let validator = validator();

    let before = status_json(&validator, &get(&envoy, "GET", HEALTH, &[]));
    assert_eq!(
        route_names(&before),
        names(&["orders", "users"]),
        "no request took inventory yet"
    );

    let failed = get(&envoy, "GET", "/inventory/1", &answer("i", "500"));
    assert_eq!(failed.status, 500);
    wait_state(&envoy, "inventory", 1);
    assert_eq!(value(&envoy, "inventory", "requests_total"), 1);

    let mut with_settings = 0;
    for i in 0..SAMPLES {
        let reply = get(&envoy, "GET", HEALTH, &[]);
        assert_eq!(reply.status, 503, "reply {i}: inventory is open");
        let json = status_json(&validator, &reply);
        assert_eq!(
            route_names(&json),
            names(&["inventory", "orders", "users"]),
            "reply {i}"
        );
        let inventory = &json["routes"]["inventory"];
        assert_eq!(inventory["state"], "open", "reply {i}");
        assert_eq!(inventory["trips"], 1, "reply {i}");
        // Settings only from the worker that resolved the route, and then the metadata's.
        if let Some(breaker) = inventory.get("circuit_breaker") {
            with_settings += 1;
            assert_eq!(breaker["failure_threshold"], 1, "reply {i}");
            assert_eq!(breaker["recovery_timeout"], 60.0, "reply {i}");
        }
        let text = get(&envoy, "GET", REPORT, &[]).text();
        let rows = report_rows(&text);
        assert_eq!(rows["inventory"]["state"], "open", "report {i}:\n{text}");
        let faults = rows["inventory"]["faults"].as_str();
        assert!(faults == "off" || faults == "?", "report {i}:\n{text}");
    }
    assert_both_workers_served(&envoy);
    eprintln!("{with_settings} of {SAMPLES} replies came from the worker that met inventory");
    assert_eq!(upstream.count("i"), 1);
    envoy.wait_for_stat(&stat("inventory", "circuit_opened_total"), |v| v == 1, WAIT);
}
