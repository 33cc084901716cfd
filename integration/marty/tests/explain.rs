//! `marty explain`: the filter's own resolution, with a source for every value.

mod common;

use common::{describe, marty, root, stdout};
use marty_resilience_core::config::Settings;
use serde_json::Value;

const LAYERS: &[&str] = &[
    "preset",
    "plugin JSON",
    "variable",
    "route entry",
    "route metadata",
    "default",
    "computed",
];

/// Every `{value, source}` leaf under `v`, with its path.
fn leaves<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    if v.get("value").is_some() || v.get("source").is_some() {
        out.push((at, v));
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                leaves(child, format!("{at}.{k}"), out);
            }
        }
        other => panic!("{at}: a bare value without a source: {other}"),
    }
}

fn explain(args: &[&str]) -> Value {
    let mut all = vec![
        "explain",
        "config/examples/per-route-overrides.json",
        "--json",
    ];
    all.extend_from_slice(args);
    let out = marty(&all);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("not JSON: {e}\n{}", describe(&out)))
}

fn source<'a>(json: &'a Value, route: &str, field: &str) -> (&'a str, &'a str, &'a Value) {
    let pointer = format!("/buckets/{route}/policy/{}", field.replace('.', "/"));
    let leaf = json
        .pointer(&pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {json}"));
    (
        leaf["source"]["layer"].as_str().expect("layer"),
        leaf["source"]["from"].as_str().expect("from"),
        &leaf["value"],
    )
}

#[test]
fn every_value_has_a_source() {
    let json = explain(&[]);
    let mut found = Vec::new();
    for key in ["service_name", "environment", "mode", "health", "buckets"] {
        let v = json.get(key).unwrap_or_else(|| panic!("no {key}"));
        if key == "buckets" {
            for (route, bucket) in v.as_object().expect("buckets object") {
                leaves(&bucket["policy"], format!("{route}.policy"), &mut found);
                leaves(
                    &bucket["retry_delays"],
                    format!("{route}.retry_delays"),
                    &mut found,
                );
            }
        } else {
            leaves(v, key.to_string(), &mut found);
        }
    }
    assert!(found.len() > 6 * 40, "only {} values", found.len());
    for (path, leaf) in &found {
        let layer = leaf["source"]["layer"].as_str().unwrap_or_default();
        let from = leaf["source"]["from"].as_str().unwrap_or_default();
        assert!(leaf.get("value").is_some(), "{path}: no value");
        assert!(LAYERS.contains(&layer), "{path}: layer {layer:?}");
        assert!(!from.is_empty(), "{path}: empty source");
    }
}

#[test]
fn values_are_the_filters_own_resolution() {
    let json = explain(&[]);
    let config =
        std::fs::read(root().join("config/examples/per-route-overrides.json")).expect("read");
    let settings = Settings::parse(&config, &[]).expect("example parses");
    let mut expected = vec![("default".to_string(), settings.defaults.to_json())];
    expected.extend(
        settings
            .routes
            .iter()
            .map(|(r, p)| (r.clone(), p.to_json())),
    );
    for (route, policy) in expected {
        let mut want = Vec::new();
        flat(&policy, String::new(), &mut want);
        for (path, value) in want {
            let (_, _, got) = source(&json, &route, &path);
            assert_eq!(got, &value, "{route}: {path}");
        }
    }
}

fn flat(v: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                flat(child, here, out);
            }
        }
        other => out.push((at, other.clone())),
    }
}

#[test]
fn sources_name_the_layer_that_set_each_value() {
    let json = explain(&[
        "--env",
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_PROBE_TIMEOUT=12",
        "--metadata",
        r#"checkout={"circuit_breaker": {"failure_threshold": 9}}"#,
    ]);
    assert_eq!(
        source(&json, "checkout", "circuit_breaker.failure_threshold"),
        (
            "route metadata",
            "route_metadata[checkout].filter_metadata[marty.resilience].circuit_breaker.failure_threshold",
            &Value::from(9)
        )
    );
    assert_eq!(
        source(&json, "checkout", "circuit_breaker.recovery_timeout"),
        (
            "route entry",
            "routes.checkout.circuit_breaker.recovery_timeout",
            &Value::from(60.0)
        )
    );
    assert_eq!(
        source(&json, "default", "circuit_breaker.recovery_timeout"),
        (
            "plugin JSON",
            "circuit_breaker.recovery_timeout",
            &Value::from(30.0)
        )
    );
    assert_eq!(
        source(
            &json,
            "static-assets",
            "circuit_breaker.half_open_probe_timeout"
        ),
        (
            "variable",
            "MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_PROBE_TIMEOUT",
            &Value::from(12.0)
        )
    );
    let (layer, from, _) = source(&json, "default", "retry.max_attempts");
    assert_eq!(layer, "preset");
    assert!(from.contains("production"), "{from}");
    // The same value written again by a route entry is still the entry's.
    let (layer, _, _) = source(
        &json,
        "payments.charge",
        "circuit_breaker.failure_status_codes",
    );
    assert_eq!(layer, "route entry");
}

#[test]
fn retry_delays_are_written_out() {
    let json = explain(&[
        "--env",
        "MARTY_RESILIENCE_RETRY_BACKOFF_STRATEGY=exponential",
    ]);
    let delays = json
        .pointer("/buckets/default/retry_delays/value")
        .and_then(Value::as_array)
        .expect("retry_delays");
    // production: 5 attempts, base 0.2 s, doubling.
    let min: Vec<f64> = delays
        .iter()
        .map(|d| d["min_seconds"].as_f64().expect("min"))
        .collect();
    assert_eq!(min, vec![0.2, 0.4, 0.8, 1.6]);
}
