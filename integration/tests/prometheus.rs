//! The filter's metrics as Prometheus scrapes them from a live Envoy, read with a Prometheus
//! text-format parser: every metric of `marty_resilience_core::stats` for every route with the
//! route as the `marty_route` label (never inside the name), the types `docs/metrics.md`
//! documents, values that match the traffic sent and `/stats`; the bootstraps in `envoy/`
//! carrying the harness's tag regex; and the Grafana dashboard in `docs/grafana/` using only
//! metrics that a real scrape has.

mod common;

use marty_resilience_core::stats::{PluginStats, RouteStats};
use std::collections::{BTreeMap, BTreeSet};

use common::{answer, stat, wait_state, WAIT};
use marty_integration::envoy::{MARTY_ROUTE_TAG_NAME, MARTY_ROUTE_TAG_REGEX};
use marty_integration::{
    concurrently, http1, workspace_root, Envoy, EnvoyConfig, RouteSpec, Upstream,
};
use openmetrics_parser::PrometheusValue;
use regex::Regex;
use serde_json::{json, Value};

const ROUTE_PREFIX: &str = "marty_resilience_route_";
const GLOBAL_PREFIX: &str = "marty_resilience_";

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The filter's own stat lists (`marty_resilience_core::stats`), so this test follows them.
fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

struct Names {
    route_counters: Vec<String>,
    route_gauges: Vec<String>,
    global_counters: Vec<String>,
    global_gauges: Vec<String>,
}

fn names() -> Names {
    let names = Names {
        route_counters: strings(RouteStats::COUNTERS),
        route_gauges: strings(RouteStats::GAUGES),
        global_counters: strings(PluginStats::COUNTERS),
        global_gauges: strings(PluginStats::GAUGES),
    };
    assert!(names.route_counters.len() >= 12 && names.route_gauges.len() >= 3);
    assert!(names.global_counters.len() >= 4);
    names
}

/// `name -> "counter" | "gauge"` from the tables of docs/metrics.md (`| `name` | type | ...`).
fn documented_types() -> BTreeMap<String, String> {
    let row = Regex::new(r"^\| `([a-z_]+)` \| (counter|gauge) \|").expect("regex");
    read("docs/metrics.md")
        .lines()
        .filter_map(|line| row.captures(line))
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect()
}

/// One sample of the scrape, as the parser read it.
#[derive(Clone, Debug)]
struct Sample {
    metric: String,
    labels: BTreeMap<String, String>,
    /// The family's `# TYPE`.
    kind: String,
    value: f64,
}

/// Parses a whole `/stats/prometheus` body with a Prometheus text-format parser (a grammar:
/// any line it cannot read fails the parse). Histograms and summaries are left out.
fn parse(text: &str) -> Vec<Sample> {
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text).unwrap_or_else(|e| {
        let dir = std::env::temp_dir().join("marty-unparsed-scrape.txt");
        let _ = std::fs::write(&dir, text);
        panic!("the scrape does not parse ({}): {e}", dir.display())
    });
    let mut samples = Vec::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let value = match &sample.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                PrometheusValue::Histogram(_) | PrometheusValue::Summary(_) => continue,
            };
            let labels = sample
                .get_labelset()
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            samples.push(Sample {
                metric: name.clone(),
                labels,
                kind: family.family_type.to_string(),
                value,
            });
        }
    }
    samples
}

/// The filter's samples: metric name -> samples.
fn marty_samples(samples: &[Sample]) -> BTreeMap<String, Vec<&Sample>> {
    let mut out: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
    for sample in samples {
        if sample.metric.starts_with(GLOBAL_PREFIX) {
            out.entry(sample.metric.clone()).or_default().push(sample);
        }
    }
    out
}

/// The one sample of `metric` labelled `marty_route=route`.
fn route_sample<'a>(
    samples: &BTreeMap<String, Vec<&'a Sample>>,
    metric: &str,
    route: &str,
) -> &'a Sample {
    let found: Vec<&&Sample> = samples
        .get(metric)
        .into_iter()
        .flatten()
        .filter(|s| s.labels.get(MARTY_ROUTE_TAG_NAME).map(String::as_str) == Some(route))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{metric}{{marty_route=\"{route}\"}}: {found:?}"
    );
    found[0]
}

#[test]
fn envoy_bootstraps_carry_the_harness_tag_regex() {
    // The harness's own bootstrap.
    let harness = EnvoyConfig::new(1).bootstrap();
    assert_eq!(
        harness["stats_config"]["stats_tags"],
        json!([{"tag_name": MARTY_ROUTE_TAG_NAME, "regex": MARTY_ROUTE_TAG_REGEX}])
    );

    let dir = workspace_root().join("envoy");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut checked = Vec::new();
    for file in &files {
        let text = read(&format!("envoy/{file}"));
        let bootstrap: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("envoy/{file} is not YAML: {e}"));
        if !text.contains("envoy.filters.http.wasm") {
            continue;
        }
        let tags = bootstrap["stats_config"]["stats_tags"]
            .as_array()
            .unwrap_or_else(|| panic!("envoy/{file} loads the filter but has no stats_tags"));
        let marty: Vec<&Value> = tags
            .iter()
            .filter(|t| t["tag_name"] == MARTY_ROUTE_TAG_NAME)
            .collect();
        assert_eq!(marty.len(), 1, "envoy/{file}: {tags:?}");
        assert_eq!(
            marty[0]["regex"], MARTY_ROUTE_TAG_REGEX,
            "envoy/{file}: not the regex of integration/src/envoy.rs"
        );
        checked.push(file.as_str());
    }
    for required in ["demo.yaml", "envoy.yaml"] {
        assert!(
            checked.contains(&required),
            "envoy/{required} was not checked: {checked:?}"
        );
    }

    // The Istio bootstrap fragment (a ConfigMap holding JSON) says the same.
    let config_map: Value = serde_norway::from_str(&read("envoy/istio/stats-bootstrap.yaml"))
        .unwrap_or_else(|e| panic!("envoy/istio/stats-bootstrap.yaml: {e}"));
    let fragments: Vec<Value> = config_map["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| serde_json::from_str(v.as_str()?).ok())
        .collect();
    assert!(
        fragments.iter().any(|f| f["stats_config"]["stats_tags"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["tag_name"] == MARTY_ROUTE_TAG_NAME && t["regex"] == MARTY_ROUTE_TAG_REGEX)),
        "envoy/istio/stats-bootstrap.yaml: {fragments:?}"
    );
}

/// The routes of the scrape test: configured, annotated by metadata, and unnamed (`default`).
fn scrape_routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::new("users", "/users"),
        RouteSpec::new("orders", "/orders"),
        RouteSpec::new("reports", "/reports"),
        RouteSpec::new("inventory.v1", "/inventory").metadata(json!({"circuit_breaker": {}})),
        RouteSpec::unnamed("/"),
    ]
}

fn scrape_config() -> Value {
    json!({
        "routes": {
            "users": {"circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 60}},
            "orders": {"failure_injection": {
                "enabled": true,
                "base_failure_rate": 0.0,
                "method_specific_rates": {"/orders/abort": 1.0},
            }},
            "reports": {"circuit_breaker": {"max_concurrent_requests": 1}},
        },
    })
}

fn ok(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> u16 {
    http1(envoy.port(), "GET", path, headers)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status
}

#[test]
fn every_filter_metric_is_scraped_per_route_with_its_documented_type() {
    let names = names();
    let documented = documented_types();
    let upstream = Upstream::start();
    let envoy = common::envoy(&upstream, scrape_config(), scrape_routes());

    // users: a success, two failures (open), one rejection.
    assert_eq!(ok(&envoy, "/users", &answer("u", "200")), 200);
    assert_eq!(ok(&envoy, "/users", &answer("u", "500")), 500);
    assert_eq!(ok(&envoy, "/users", &answer("u", "500")), 500);
    wait_state(&envoy, "users", 1);
    assert_eq!(ok(&envoy, "/users", &answer("u", "200")), 503);
    // orders: an injected abort, and a trigger header refused (the trigger is off) on a request
    // that then succeeds.
    assert_eq!(ok(&envoy, "/orders/abort", &answer("o", "200")), 503);
    assert_eq!(
        ok(
            &envoy,
            "/orders/ok",
            &[("x-test-key", "o"), ("x-failure-inject", "abort=500")]
        ),
        200
    );
    // reports: two at once over a cap of one; at least one is turned away.
    let statuses = concurrently(2, |_| {
        ok(
            &envoy,
            "/reports",
            &[("x-test-key", "r"), ("x-upstream-delay-ms", "1500")],
        )
    });
    // inventory.v1 (metadata only) and default: one success each.
    assert_eq!(ok(&envoy, "/inventory/1", &answer("i", "200")), 200);
    assert_eq!(ok(&envoy, "/", &answer("d", "200")), 200);
    envoy.wait_for_stat(&stat("reports", "active_requests"), |v| v == 0, WAIT);

    let text = envoy.prometheus();
    let scrape = parse(&text);
    let samples = marty_samples(&scrape);
    let stats = envoy.stats();
    let dump = || {
        text.lines()
            .filter(|l| l.contains("marty_resilience"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Per-route metrics: one sample per route, labelled, typed as documented, equal to /stats.
    let routes = ["upstream", "users", "orders", "reports", "inventory_v1"];
    let route_metrics: Vec<(&String, &str)> = names
        .route_counters
        .iter()
        .map(|n| (n, "counter"))
        .chain(names.route_gauges.iter().map(|n| (n, "gauge")))
        .collect();
    for (leaf, expected_type) in &route_metrics {
        assert_eq!(
            documented.get(leaf.as_str()).map(String::as_str),
            Some(*expected_type),
            "docs/metrics.md: {leaf}"
        );
        let metric = format!("{ROUTE_PREFIX}{leaf}");
        for route in routes {
            let sample = route_sample(&samples, &metric, route);
            assert_eq!(sample.kind, *expected_type, "{metric}: {}", dump());
            let labels: BTreeSet<&String> = sample.labels.keys().collect();
            assert_eq!(
                labels.len(),
                1,
                "{metric}{:?}: only marty_route",
                sample.labels
            );
            let in_stats = stats
                .get(&stat(route, leaf))
                .unwrap_or_else(|| panic!("{} missing from /stats", stat(route, leaf)));
            assert_eq!(sample.value, *in_stats as f64, "{metric}{{{route}}}");
        }
    }

    // Filter-wide counters: no route label.
    for leaf in &names.global_counters {
        assert_eq!(
            documented.get(leaf.as_str()).map(String::as_str),
            Some("counter"),
            "{leaf}"
        );
        let metric = format!("{GLOBAL_PREFIX}{leaf}");
        let found = samples.get(&metric).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(found.len(), 1, "{metric}: {}", dump());
        assert_eq!(found[0].kind, "counter", "{metric}");
        assert!(
            found[0].labels.is_empty(),
            "{metric}: {:?}",
            found[0].labels
        );
        assert_eq!(found[0].value, 0.0, "{metric}: nothing went wrong");
    }
    for leaf in &names.global_gauges {
        assert_eq!(
            documented.get(leaf.as_str()).map(String::as_str),
            Some("gauge"),
            "{leaf}"
        );
        let metric = format!("{GLOBAL_PREFIX}{leaf}");
        let found = samples.get(&metric).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(found.len(), 1, "{metric}: {}", dump());
        assert_eq!(found[0].kind, "gauge", "{metric}");
    }

    // Nothing else: no route name left inside a metric name, no `_total` added by Envoy.
    let known: BTreeSet<String> = route_metrics
        .iter()
        .map(|(leaf, _)| format!("{ROUTE_PREFIX}{leaf}"))
        .chain(
            names
                .global_counters
                .iter()
                .chain(&names.global_gauges)
                .map(|leaf| format!("{GLOBAL_PREFIX}{leaf}")),
        )
        .collect();
    let scraped: BTreeSet<String> = samples.keys().cloned().collect();
    assert_eq!(scraped, known, "{}", dump());
    for route in ["users", "orders", "reports", "inventory"] {
        assert!(
            !scraped.iter().any(|m| m.contains(route)),
            "route {route} inside a metric name: {}",
            dump()
        );
    }

    // The values tell the story of the traffic above.
    let v = |leaf: &str, route: &str| {
        route_sample(&samples, &format!("{ROUTE_PREFIX}{leaf}"), route).value
    };
    assert_eq!(v("requests_total", "users"), 4.0);
    assert_eq!(v("success_total", "users"), 1.0);
    assert_eq!(v("failure_total", "users"), 2.0);
    assert_eq!(v("rejected_total", "users"), 1.0);
    assert_eq!(v("circuit_opened_total", "users"), 1.0);
    assert_eq!(v("circuit_half_opened_total", "users"), 0.0);
    assert_eq!(v("circuit_closed_total", "users"), 0.0);
    assert_eq!(v("circuit_state", "users"), 1.0);
    assert_eq!(v("concurrency_rejected_total", "users"), 0.0);

    assert_eq!(v("requests_total", "orders"), 2.0);
    assert_eq!(v("faults_aborted_total", "orders"), 1.0);
    assert_eq!(v("fault_header_rejected_total", "orders"), 1.0);
    assert_eq!(v("faults_delayed_total", "orders"), 0.0);
    assert_eq!(v("faults_overflow_total", "orders"), 0.0);
    assert_eq!(v("success_total", "orders"), 1.0);
    assert_eq!(
        v("failure_total", "orders"),
        0.0,
        "injected faults are no failures"
    );
    assert_eq!(v("active_faults", "orders"), 0.0);
    assert_eq!(v("circuit_state", "orders"), 0.0);

    let turned_away = statuses.iter().filter(|s| **s == 503).count() as f64;
    assert!(turned_away >= 1.0, "{statuses:?}");
    assert_eq!(v("requests_total", "reports"), 2.0);
    assert_eq!(v("concurrency_rejected_total", "reports"), turned_away);
    assert_eq!(v("rejected_total", "reports"), turned_away);
    assert_eq!(v("success_total", "reports"), 2.0 - turned_away);
    assert_eq!(v("active_requests", "reports"), 0.0);

    for route in ["inventory_v1", "upstream"] {
        assert_eq!(v("requests_total", route), 1.0, "{route}");
        assert_eq!(v("success_total", route), 1.0, "{route}");
        assert_eq!(v("circuit_state", route), 0.0, "{route}");
    }
    assert_eq!(upstream.count("u"), 3);
    assert_eq!(upstream.count("o"), 1);
}

// --- the Grafana dashboard ------------------------------------------------------------------

const DASHBOARD: &str = "docs/grafana/marty-resilience.json";

/// Every panel, rows' collapsed panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// `(panel title, expr)` of every query of every panel.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

fn metric_identifiers(expr: &str) -> BTreeSet<String> {
    Regex::new(r"\bmarty_resilience_[a-z_]+")
        .expect("regex")
        .find_iter(expr)
        .map(|m| m.as_str().to_string())
        .collect()
}

#[test]
fn dashboard_is_well_formed() {
    let dashboard: Value =
        serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert!(dashboard["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
            .clone()
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let route = variable("marty_route");
    assert_eq!(route["type"], "query");
    assert_eq!(route["multi"], true);
    assert_eq!(route["datasource"]["uid"], "${datasource}");
    let definition = "label_values(marty_resilience_route_requests_total, marty_route)";
    assert_eq!(route["definition"], definition);
    let query = route["query"].get("query").unwrap_or(&route["query"]);
    assert_eq!(query, definition);

    // `route_config_rejected_total` is filter-wide, whatever its name looks like.
    let listed = names();
    let globals: BTreeSet<String> = listed
        .global_counters
        .iter()
        .chain(&listed.global_gauges)
        .map(|leaf| format!("{GLOBAL_PREFIX}{leaf}"))
        .collect();
    let route_metric = Regex::new(r"(marty_resilience_route_[a-z_]+)(\{[^}]*\})?").expect("regex");
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(panel["gridPos"].is_object(), "{title}: no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            ids.insert(panel["id"].as_u64()),
            "{title}: duplicate or missing id"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in &targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(ref_ids.insert(target["refId"].as_str()), "{title}: refIds");
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: no expr"));
            let balanced = |open: char, close: char| {
                expr.chars().filter(|c| *c == open).count()
                    == expr.chars().filter(|c| *c == close).count()
            };
            assert!(
                balanced('(', ')') && balanced('{', '}') && balanced('[', ']'),
                "{title}: {expr}"
            );
            // Per-route metrics always follow the route picker.
            for caps in route_metric.captures_iter(expr) {
                if globals.contains(&caps[1]) {
                    continue;
                }
                let selector = caps.get(2).map_or("", |m| m.as_str());
                assert!(
                    selector.contains(r#"marty_route=~"$marty_route""#),
                    "{title}: {} without the route filter in {expr}",
                    &caps[1]
                );
            }
        }
    }

    // Every metric of the filter is on some panel.
    let names = names();
    let used: BTreeSet<String> = expressions(&dashboard)
        .iter()
        .flat_map(|(_, expr)| metric_identifiers(expr))
        .collect();
    let all: BTreeSet<String> = names
        .route_counters
        .iter()
        .chain(&names.route_gauges)
        .map(|leaf| format!("{ROUTE_PREFIX}{leaf}"))
        .chain(
            names
                .global_counters
                .iter()
                .chain(&names.global_gauges)
                .map(|leaf| format!("{GLOBAL_PREFIX}{leaf}")),
        )
        .collect();
    let unused: Vec<&String> = all.difference(&used).collect();
    assert!(unused.is_empty(), "metrics on no panel: {unused:?}");
}

#[test]
fn every_dashboard_metric_exists_in_a_live_scrape() {
    let dashboard: Value =
        serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(json!({"routes": {"users": {}}}).to_string())
        .routes(vec![
            RouteSpec::new("users", "/users"),
            RouteSpec::unnamed("/"),
        ]);
    let envoy = Envoy::start(&config).unwrap_or_else(|e| panic!("envoy starts: {e}"));
    assert_eq!(ok(&envoy, "/users", &answer("u", "200")), 200);

    let scrape = parse(&envoy.prometheus());
    let scraped: BTreeSet<&str> = scrape.iter().map(|s| s.metric.as_str()).collect();
    let mut missing = Vec::new();
    let expressions = expressions(&dashboard);
    assert!(expressions.len() >= 10, "{expressions:?}");
    for (title, expr) in &expressions {
        let ids = metric_identifiers(expr);
        assert!(!ids.is_empty(), "{title}: {expr} uses no filter metric");
        for id in ids {
            if !scraped.contains(id.as_str()) {
                missing.push(format!("{title}: {id}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in the scrape: {missing:#?}");
    // The label the variable lists is there, for the configured route (the unnamed route's
    // bucket, its cluster, exists only once a request takes it).
    let labelled: BTreeSet<&str> = scrape
        .iter()
        .filter(|s| s.metric == "marty_resilience_route_requests_total")
        .filter_map(|s| s.labels.get(MARTY_ROUTE_TAG_NAME).map(String::as_str))
        .collect();
    assert_eq!(labelled, BTreeSet::from(["users"]));
}
