//! What the section tables (`config/section.rs`) generate, checked field by field for every
//! field at once: a policy that differs from the production preset in every field is read the
//! same from the plugin JSON, from what `to_json` writes, and from one variable per field; and
//! the variables an "unknown variable" error lists are exactly those fields.
//!
//! A field added to a section without a value below fails `every_field_differs_from_the_preset`
//! until it gets one, so each new field is carried through every layer here.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use marty_resilience_core::config::{
    BreakerPatch, Environment, FaultPatch, HealthSettings, RetryPatch, RoutePolicy, Section,
    Settings,
};
use serde_json::{json, Value};

/// Every field set to something the production preset does not have.
fn everything_changed() -> Value {
    json!({
        "circuit_breaker": {
            "enabled": false,
            "failure_threshold": 7,
            "recovery_timeout": "1500ms",
            "recovery_backoff": "linear",
            "max_recovery_timeout": 120,
            "half_open_success_threshold": 4,
            "half_open_max_requests": 5,
            "half_open_probe_timeout": 9,
            "failure_reset_timeout": 45,
            "max_concurrent_requests": 100,
            "failure_status_codes": ["4xx", 503],
            "ignored_status_codes": [502],
            "failure_grpc_status": ["INTERNAL", 8],
            "count_connect_failures": false,
            "enable_metrics": false,
            "error_classifier": "default"
        },
        "retry": {
            "enabled": true,
            "max_attempts": 4,
            "retry_on": ["gateway-error"],
            "grpc_retry_on": ["cancelled"],
            "retriable_status_codes": [502, 504],
            "per_try_timeout": 0.75,
            "base_delay": 0.01,
            "max_delay": 2,
            "backoff_strategy": "fibonacci",
            "multiplier": 3,
            "polynomial_degree": 3,
            "jitter": 0.3,
            "budget": {"ratio": 0.5, "min_retries_per_second": 7, "window": 20},
            "trust_client_headers": true,
            "count_attempts": true,
            "enable_circuit_breaker": false,
            "enable_adaptive_delays": true
        },
        "failure_injection": {
            "enabled": true,
            "base_failure_rate": 0.25,
            "method_specific_rates": {"/slow": 0.5},
            "abort": {"http_status": 500, "grpc_status": "INTERNAL"},
            "delay": {"duration": 0.1, "rate": 0.2, "max": 3},
            "max_active_faults": 9,
            "header_trigger": {"enabled": true, "header": "x-chaos", "token": "s3cret", "propagate": true},
            "metadata_trigger": true
        }
    })
}

fn changed_policy() -> RoutePolicy {
    Settings::parse(everything_changed().to_string().as_bytes(), &[])
        .unwrap()
        .defaults
}

/// Fields with one accepted value: nothing else to set them to.
const SINGLE_VALUED: &[&str] = &["error_classifier"];

/// Objects in a section's JSON that are values, not nested objects of the section.
const OBJECT_VALUES: &[&str] = &["method_specific_rates"];

/// `(flattened field, value)` for every field of a resolved section's JSON; nested objects
/// flatten as their variables do (`budget.window` is `budget_window`).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    for (key, v) in value.as_object().unwrap() {
        let name = format!("{prefix}{key}");
        match v {
            Value::Object(_) if !OBJECT_VALUES.contains(&key.as_str()) => {
                leaves(&format!("{name}_"), v, out)
            }
            _ => out.push((name, v.clone())),
        }
    }
}

/// The section names of `RoutePolicy::to_json` with their variable families.
const SECTIONS: [(&str, &str); 3] = [
    ("circuit_breaker", "CIRCUIT_BREAKER"),
    ("retry", "RETRY"),
    ("failure_injection", "FAILURE_INJECTION"),
];

#[test]
fn every_field_differs_from_the_preset() {
    let changed = changed_policy().to_json();
    let production = Environment::Production.preset().to_json();
    for (section, _) in SECTIONS {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        leaves("", &changed[section], &mut ours);
        leaves("", &production[section], &mut theirs);
        assert_eq!(ours.len(), theirs.len(), "{section}");
        for ((field, value), (_, preset)) in ours.iter().zip(&theirs) {
            if SINGLE_VALUED.contains(&field.as_str()) {
                continue;
            }
            assert_ne!(
                value, preset,
                "{section}.{field}: give it a non-preset value in everything_changed()"
            );
        }
    }
}

#[test]
fn what_to_json_writes_parses_back_to_the_same_policy() {
    let policy = changed_policy();
    let mut written = policy.to_json();
    // Reports show whether a token is set, never the token: put it back to compare.
    written["failure_injection"]["header_trigger"]["token"] = json!("s3cret");
    let parsed = Settings::parse(written.to_string().as_bytes(), &[])
        .unwrap()
        .defaults;
    assert_eq!(parsed, policy, "{written}");
    assert_eq!(
        policy.to_json()["failure_injection"]["header_trigger"]["token"],
        "(set)"
    );
}

/// A field's value as a variable spells it: strings bare, everything else as JSON.
fn variable_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn one_variable_per_field_sets_the_same_policy() {
    let policy = changed_policy();
    let written = policy.to_json();
    let mut vars = Vec::new();
    for (section, family) in SECTIONS {
        let mut fields = Vec::new();
        leaves("", &written[section], &mut fields);
        for (field, value) in fields {
            let value = if field == "header_trigger_token" {
                json!("s3cret")
            } else {
                value
            };
            vars.push((
                format!("MARTY_RESILIENCE_{family}_{}", field.to_ascii_uppercase()),
                variable_value(&value),
            ));
        }
    }
    let parsed = Settings::parse(b"", &vars).unwrap_or_else(|e| panic!("{e}: {vars:?}"));
    assert_eq!(parsed.defaults, policy, "{vars:?}");
}

#[test]
fn the_variables_a_section_lists_are_its_fields() {
    let written = Environment::Production.preset().to_json();
    let listed: [(&str, Vec<String>); 3] = [
        ("circuit_breaker", variables::<BreakerPatch>()),
        ("retry", variables::<RetryPatch>()),
        ("failure_injection", variables::<FaultPatch>()),
    ];
    for (section, mut listed) in listed {
        let mut leaves_of = Vec::new();
        leaves("", &written[section], &mut leaves_of);
        let mut fields: Vec<String> = leaves_of.into_iter().map(|(field, _)| field).collect();
        fields.sort();
        listed.sort();
        assert_eq!(listed, fields, "{section}");
    }
    // The JSON field lists of unknown-field errors are the sections' top-level keys.
    for (section, fields) in [
        ("circuit_breaker", BreakerPatch::FIELDS),
        ("retry", RetryPatch::FIELDS),
        ("failure_injection", FaultPatch::FIELDS),
    ] {
        let mut keys: Vec<&str> = written[section]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut sorted = fields.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, keys, "{section}");
    }
}

fn variables<S: Section>() -> Vec<String> {
    let mut out = Vec::new();
    S::env_fields(&mut out, "");
    out
}

#[test]
fn health_settings_round_trip_through_to_json() {
    let default = HealthSettings::default();
    assert_eq!(
        default.to_json(),
        json!({
            "enabled": false,
            "path": "/resilience/health",
            "report_path": "/resilience/report",
            "route": null,
            "allowed_sources": ["127.0.0.1/32", "::1/128"],
        })
    );
    let config = json!({"health": {
        "enabled": true,
        "path": "/h",
        "report_path": "/r",
        "allowed_sources": ["10.0.0.0/8"],
        "route": "marty_health",
    }});
    let health = Settings::parse(config.to_string().as_bytes(), &[])
        .unwrap()
        .health;
    assert_eq!(health.to_json(), config["health"]);
    let again = Settings::parse(
        json!({"health": health.to_json()}).to_string().as_bytes(),
        &[],
    )
    .unwrap()
    .health;
    assert_eq!(again, health);
}
