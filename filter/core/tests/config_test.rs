//! `config::Settings`: presets, the five layers of precedence, environment variables, status
//! sets, and the exact error texts operators see.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{for_each_seed, MS, S};
use marty_resilience_core::config::RECOVERY_STRATEGIES;
use marty_resilience_core::config::{
    codes::grpc_code, stat_name, BreakerPolicy, ConfigError, Environment, GrpcSet, RoutePolicy,
    Settings, StatusSet, DEFAULT_ROUTE, MAX_HALF_OPEN_REQUESTS, MAX_METHOD_RATES,
    MAX_ROUTE_NAME_LEN,
};
use marty_resilience_core::fault::{
    self, AbortPolicy, DelayPolicy, Draws, FaultPolicy, HeaderTrigger, Trigger,
};
use rand::Rng;
use serde_json::{json, Value};

fn parse(config: &str) -> Settings {
    match Settings::parse(config.as_bytes(), &[]) {
        Ok(s) => s,
        Err(e) => panic!("{config} was rejected: {e}"),
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_env(config: &str, pairs: &[(&str, &str)]) -> Settings {
    match Settings::parse(config.as_bytes(), &env(pairs)) {
        Ok(s) => s,
        Err(e) => panic!("{config} with {pairs:?} was rejected: {e}"),
    }
}

/// The error text (`path: message`) for a configuration.
fn error(config: &str) -> String {
    error_env(config, &[])
}

fn error_env(config: &str, pairs: &[(&str, &str)]) -> String {
    match Settings::parse(config.as_bytes(), &env(pairs)) {
        Ok(s) => panic!("{config} with {pairs:?} was accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

fn cb(config: &str) -> BreakerPolicy {
    parse(config).defaults.circuit_breaker
}

const CB_FIELDS: &str = "enabled, failure_threshold, recovery_timeout, recovery_backoff, \
    max_recovery_timeout, half_open_success_threshold, half_open_max_requests, half_open_probe_timeout, \
    failure_reset_timeout, max_concurrent_requests, failure_status_codes, \
    ignored_status_codes, failure_grpc_status, count_connect_failures, enable_metrics, error_classifier";

const FI_FIELDS: &str = "enabled, base_failure_rate, method_specific_rates, abort, delay, \
    max_active_faults, header_trigger, metadata_trigger";

const UNKNOWN_VARIABLE: &str = "unknown variable, expected MARTY_RESILIENCE_SERVICE_NAME, \
    MARTY_RESILIENCE_ENVIRONMENT, MARTY_RESILIENCE_CIRCUIT_BREAKER_<FIELD>, \
    MARTY_RESILIENCE_RETRY_<FIELD> or MARTY_RESILIENCE_FAILURE_INJECTION_<FIELD> (fields in upper case, as in \
    docs/configuration.md)";

const DURATION: &str = "a duration > 0 (seconds as a number, or a string like \"250ms\" or \
    \"30s\"; at most 1 day)";

// ---------------------------------------------------------------- presets

#[test]
fn an_empty_configuration_is_the_production_preset() {
    for text in ["", "   \n", "{}"] {
        let s = parse(text);
        assert_eq!(s.environment, Environment::Production);
        assert_eq!(s.service_name, "");
        assert!(s.routes.is_empty());
        assert_eq!(s.defaults, Environment::Production.preset());
    }
}

#[test]
fn the_production_preset_has_the_marty_defaults() {
    let p = Environment::Production.preset().circuit_breaker;
    assert!(p.enabled);
    assert_eq!(p.failure_threshold, 5);
    assert_eq!(p.recovery_timeout, 30 * S);
    assert_eq!(p.half_open_success_threshold, 2);
    assert_eq!(p.half_open_max_requests, 1);
    assert_eq!(p.half_open_probe_timeout, 30 * S);
    assert_eq!(p.failure_reset_timeout, 60 * S);
    assert_eq!(p.max_concurrent_requests, 0);
    assert_eq!(p.failure_status_codes, StatusSet::classes(&[5]));
    assert_eq!(p.ignored_status_codes, StatusSet::codes(&[501]));
    assert_eq!(p.failure_grpc_status, GrpcSet::of(&[2, 4, 13, 14]));
    assert!(p.count_connect_failures);
}

#[test]
fn the_development_preset_trips_late_and_probes_generously() {
    let p = cb(r#"{"environment": "development"}"#);
    let prod = Environment::Production.preset().circuit_breaker;
    assert_eq!(p.failure_threshold, 10);
    assert_eq!(p.recovery_timeout, 10 * S);
    assert_eq!(p.half_open_success_threshold, 1);
    assert_eq!(p.half_open_max_requests, 3);
    assert_eq!(p.failure_reset_timeout, 30 * S);
    // The rest is production's.
    assert_eq!(p.half_open_probe_timeout, prod.half_open_probe_timeout);
    assert_eq!(p.failure_status_codes, prod.failure_status_codes);
    assert_eq!(p.ignored_status_codes, prod.ignored_status_codes);
    assert_eq!(p.failure_grpc_status, prod.failure_grpc_status);
    assert_eq!(p.count_connect_failures, prod.count_connect_failures);
    assert_eq!(p.enabled, prod.enabled);
}

#[test]
fn the_testing_preset_recovers_fast() {
    let s = parse(r#"{"environment": "testing"}"#);
    assert_eq!(s.environment, Environment::Testing);
    let p = s.defaults.circuit_breaker;
    assert_eq!(p.failure_threshold, 3);
    assert_eq!(p.recovery_timeout, S);
    assert_eq!(p.half_open_success_threshold, 1);
    assert_eq!(p.half_open_max_requests, 1);
    assert_eq!(p.half_open_probe_timeout, 5 * S);
    assert_eq!(p.failure_reset_timeout, 10 * S);
    assert_eq!(p.max_concurrent_requests, 0);
}

#[test]
fn environment_names_are_case_insensitive_and_named_back() {
    assert_eq!(
        parse(r#"{"environment": "Development"}"#).environment,
        Environment::Development
    );
    assert_eq!(
        parse(r#"{"environment": "PRODUCTION"}"#).environment,
        Environment::Production
    );
    assert_eq!(Environment::Development.name(), "development");
    assert_eq!(Environment::Production.name(), "production");
    assert_eq!(Environment::Testing.name(), "testing");
}

#[test]
fn service_name_comes_from_the_json() {
    assert_eq!(parse(r#"{"service_name": "users"}"#).service_name, "users");
}

// ---------------------------------------------------------------- precedence

const LAYERED: &str = r#"{
    "environment": "development",
    "circuit_breaker": {"failure_threshold": 4, "recovery_timeout": 20, "half_open_max_requests": 2},
    "routes": {
        "users": {"circuit_breaker": {"recovery_timeout": "7s"}},
        "orders": {}
    }
}"#;

#[test]
fn top_level_json_overrides_the_preset_field_by_field() {
    let p = cb(LAYERED);
    assert_eq!(p.failure_threshold, 4);
    assert_eq!(p.recovery_timeout, 20 * S);
    assert_eq!(p.half_open_max_requests, 2);
    // Untouched fields keep the development preset's values.
    assert_eq!(p.half_open_success_threshold, 1);
    assert_eq!(p.failure_reset_timeout, 30 * S);
}

#[test]
fn environment_variables_override_the_top_level_json() {
    let s = parse_env(
        LAYERED,
        &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "6")],
    );
    let p = &s.defaults.circuit_breaker;
    assert_eq!(p.failure_threshold, 6);
    assert_eq!(
        p.recovery_timeout,
        20 * S,
        "JSON still applies where env is silent"
    );
    // Routes are built on the defaults, so they see the variable too.
    assert_eq!(
        s.routes
            .get("orders")
            .unwrap()
            .circuit_breaker
            .failure_threshold,
        6
    );
    assert_eq!(
        s.routes
            .get("users")
            .unwrap()
            .circuit_breaker
            .failure_threshold,
        6
    );
}

#[test]
fn a_route_entry_overrides_environment_variables() {
    let s = parse_env(
        LAYERED,
        &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "9")],
    );
    assert_eq!(s.defaults.circuit_breaker.recovery_timeout, 9 * S);
    assert_eq!(
        s.routes
            .get("orders")
            .unwrap()
            .circuit_breaker
            .recovery_timeout,
        9 * S
    );
    assert_eq!(
        s.routes
            .get("users")
            .unwrap()
            .circuit_breaker
            .recovery_timeout,
        7 * S
    );
    // Field by field: the route's other fields come from below.
    assert_eq!(
        s.routes
            .get("users")
            .unwrap()
            .circuit_breaker
            .failure_threshold,
        4
    );
}

#[test]
fn route_metadata_overrides_the_route_entry() {
    let s = parse_env(
        LAYERED,
        &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "6")],
    );
    let meta = json!({"circuit_breaker": {"recovery_timeout": 1, "half_open_max_requests": 5}});
    let p = s.with_metadata("users", &meta).unwrap().circuit_breaker;
    assert_eq!(p.recovery_timeout, S, "metadata beats the route entry's 7s");
    assert_eq!(
        p.half_open_max_requests, 5,
        "metadata beats the top level's 2"
    );
    assert_eq!(p.failure_threshold, 6, "env still applies below");
    assert_eq!(
        p.half_open_success_threshold, 1,
        "preset still applies below"
    );
}

#[test]
fn route_metadata_of_an_unconfigured_route_lays_over_the_defaults() {
    let s = parse(LAYERED);
    let p = s
        .with_metadata("search", &json!({"circuit_breaker": {"enabled": false}}))
        .unwrap();
    let expected = RoutePolicy {
        circuit_breaker: BreakerPolicy {
            enabled: false,
            ..s.defaults.circuit_breaker.clone()
        },
        failure_injection: s.defaults.failure_injection.clone(),
        retry: s.defaults.retry.clone(),
    };
    assert_eq!(p, expected);
    assert_eq!(s.with_metadata("search", &json!({})).unwrap(), s.defaults);
}

#[test]
fn every_field_can_be_set_at_every_layer() {
    // One distinct value per field and layer; each layer must win over the ones below.
    let layer = |n: u32| {
        json!({
            "enabled": n % 2 == 0,
            "failure_threshold": n,
            "recovery_timeout": n,
            "recovery_backoff": RECOVERY_STRATEGIES[n as usize % 5].name(),
            "max_recovery_timeout": 10 * n,
            "half_open_success_threshold": n,
            "half_open_max_requests": n,
            "half_open_probe_timeout": n,
            "failure_reset_timeout": n,
            "max_concurrent_requests": n,
            "failure_status_codes": [400 + n],
            "ignored_status_codes": [500 + n],
            "failure_grpc_status": [n],
            "count_connect_failures": n % 2 == 0,
            "enable_metrics": n % 2 == 1,
            "error_classifier": "default",
        })
    };
    let expect = |n: u32| BreakerPolicy {
        enabled: n % 2 == 0,
        failure_threshold: n,
        recovery_timeout: u64::from(n) * S,
        recovery_backoff: RECOVERY_STRATEGIES[n as usize % 5],
        max_recovery_timeout: 10 * u64::from(n) * S,
        half_open_success_threshold: n,
        half_open_max_requests: n,
        half_open_probe_timeout: u64::from(n) * S,
        failure_reset_timeout: u64::from(n) * S,
        max_concurrent_requests: n,
        failure_status_codes: StatusSet::codes(&[400 + n as u16]),
        ignored_status_codes: StatusSet::codes(&[500 + n as u16]),
        failure_grpc_status: GrpcSet::of(&[n]),
        count_connect_failures: n % 2 == 0,
        enable_metrics: n % 2 == 1,
        error_classifier: Default::default(),
    };
    let env_vars: Vec<(String, String)> = layer(3)
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                format!("MARTY_RESILIENCE_CIRCUIT_BREAKER_{}", k.to_uppercase()),
                v.to_string(),
            )
        })
        .collect();
    let config = json!({
        "circuit_breaker": layer(2),
        "routes": {"r": {"circuit_breaker": layer(4)}},
    })
    .to_string();
    let top_only = Settings::parse(config.as_bytes(), &[]).unwrap();
    assert_eq!(top_only.defaults.circuit_breaker, expect(2));
    let s = Settings::parse(config.as_bytes(), &env_vars).unwrap();
    assert_eq!(s.defaults.circuit_breaker, expect(3));
    assert_eq!(s.routes.get("r").unwrap().circuit_breaker, expect(4));
    let meta = json!({"circuit_breaker": layer(5)});
    assert_eq!(
        s.with_metadata("r", &meta).unwrap().circuit_breaker,
        expect(5)
    );
}

// ---------------------------------------------------------------- environment variables

#[test]
fn environment_variable_values_take_json_or_plain_text() {
    let s = parse_env(
        "",
        &[
            ("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "5"),
            ("MARTY_RESILIENCE_CIRCUIT_BREAKER_ENABLED", "false"),
            ("MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "250ms"),
            (
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_PROBE_TIMEOUT",
                "2.5",
            ),
            (
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_RESET_TIMEOUT",
                "1m",
            ),
        ],
    );
    let p = s.defaults.circuit_breaker;
    assert_eq!(p.failure_threshold, 5);
    assert!(!p.enabled);
    assert_eq!(p.recovery_timeout, 250 * MS);
    assert_eq!(p.half_open_probe_timeout, 2500 * MS);
    assert_eq!(p.failure_reset_timeout, 60 * S);
}

#[test]
fn list_variables_take_commas_or_json_arrays() {
    let s = parse_env(
        "",
        &[
            (
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_STATUS_CODES",
                "5xx, 429",
            ),
            (
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_IGNORED_STATUS_CODES",
                "[503, \"4xx\"]",
            ),
            (
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_GRPC_STATUS",
                "unavailable,4",
            ),
        ],
    );
    let p = s.defaults.circuit_breaker;
    assert!(p.failure_status_codes.contains(500));
    assert!(p.failure_status_codes.contains(429));
    assert!(!p.failure_status_codes.contains(404));
    assert!(p.ignored_status_codes.contains(503));
    assert!(p.ignored_status_codes.contains(404));
    assert_eq!(p.failure_grpc_status, GrpcSet::of(&[14, 4]));
}

#[test]
fn a_single_item_list_variable_needs_no_brackets() {
    let p = parse_env(
        "",
        &[(
            "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_STATUS_CODES",
            "503",
        )],
    )
    .defaults
    .circuit_breaker;
    assert_eq!(p.failure_status_codes, StatusSet::codes(&[503]));
}

#[test]
fn an_empty_list_variable_empties_the_set() {
    let p = parse_env(
        "",
        &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_STATUS_CODES", "")],
    )
    .defaults
    .circuit_breaker;
    assert_eq!(p.failure_status_codes, StatusSet::default());
    assert!(!p.failure_status_codes.contains(503));
}

#[test]
fn environment_and_service_name_variables_override_the_json() {
    let s = parse_env(
        r#"{"environment": "development", "service_name": "from-json"}"#,
        &[
            ("MARTY_RESILIENCE_ENVIRONMENT", "Testing"),
            ("MARTY_RESILIENCE_SERVICE_NAME", "from-env"),
        ],
    );
    assert_eq!(s.environment, Environment::Testing);
    assert_eq!(s.service_name, "from-env");
    assert_eq!(s.defaults, Environment::Testing.preset());
}

#[test]
fn the_service_name_variable_is_taken_verbatim() {
    // Not parsed as JSON: a numeric-looking name stays a string.
    let s = parse_env("", &[("MARTY_RESILIENCE_SERVICE_NAME", "42")]);
    assert_eq!(s.service_name, "42");
}

#[test]
fn other_variables_are_ignored() {
    let s = parse_env(
        "",
        &[
            ("PATH", "/usr/bin"),
            ("MARTY_OTHER_THING", "x"),
            ("marty_resilience_environment", "testing"),
            ("XMARTY_RESILIENCE_ENVIRONMENT", "testing"),
        ],
    );
    assert_eq!(s.environment, Environment::Production);
}

#[test]
fn unknown_marty_resilience_variables_are_rejected() {
    // Outside any section: the general list of variable families.
    for name in ["MARTY_RESILIENCE_FOO", "MARTY_RESILIENCE_RETRIES"] {
        assert_eq!(
            error_env("", &[(name, "1")]),
            format!("{name}: {UNKNOWN_VARIABLE}")
        );
    }
    // Inside a section: every variable the section has, spelled as variables.
    let breaker_vars = "MARTY_RESILIENCE_CIRCUIT_BREAKER_ENABLED, MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD, \
        MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_TIMEOUT, MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_BACKOFF, \
        MARTY_RESILIENCE_CIRCUIT_BREAKER_MAX_RECOVERY_TIMEOUT, MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_SUCCESS_THRESHOLD, \
        MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_MAX_REQUESTS, MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_PROBE_TIMEOUT, \
        MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_RESET_TIMEOUT, MARTY_RESILIENCE_CIRCUIT_BREAKER_MAX_CONCURRENT_REQUESTS, \
        MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_STATUS_CODES, MARTY_RESILIENCE_CIRCUIT_BREAKER_IGNORED_STATUS_CODES, \
        MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_GRPC_STATUS, MARTY_RESILIENCE_CIRCUIT_BREAKER_COUNT_CONNECT_FAILURES, MARTY_RESILIENCE_CIRCUIT_BREAKER_ENABLE_METRICS, MARTY_RESILIENCE_CIRCUIT_BREAKER_ERROR_CLASSIFIER";
    for name in [
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_FOO",
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_",
    ] {
        assert_eq!(
            error_env("", &[(name, "1")]),
            format!("{name}: unknown variable, expected one of: {breaker_vars}")
        );
    }
    let fault_vars = "MARTY_RESILIENCE_FAILURE_INJECTION_ENABLED, MARTY_RESILIENCE_FAILURE_INJECTION_BASE_FAILURE_RATE, \
        MARTY_RESILIENCE_FAILURE_INJECTION_METHOD_SPECIFIC_RATES, MARTY_RESILIENCE_FAILURE_INJECTION_MAX_ACTIVE_FAULTS, \
        MARTY_RESILIENCE_FAILURE_INJECTION_METADATA_TRIGGER, \
        MARTY_RESILIENCE_FAILURE_INJECTION_ABORT_HTTP_STATUS, MARTY_RESILIENCE_FAILURE_INJECTION_ABORT_GRPC_STATUS, \
        MARTY_RESILIENCE_FAILURE_INJECTION_DELAY_DURATION, MARTY_RESILIENCE_FAILURE_INJECTION_DELAY_RATE, \
        MARTY_RESILIENCE_FAILURE_INJECTION_DELAY_MAX, MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER_ENABLED, \
        MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER_HEADER, MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER_TOKEN, \
        MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER_PROPAGATE";
    for name in [
        // The nested objects are set one field at a time, never whole.
        "MARTY_RESILIENCE_FAILURE_INJECTION_ABORT",
        "MARTY_RESILIENCE_FAILURE_INJECTION_DELAY",
        "MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER",
        "MARTY_RESILIENCE_FAILURE_INJECTION_RATE",
        "MARTY_RESILIENCE_FAILURE_INJECTION_ABORT_CODE",
        "MARTY_RESILIENCE_FAILURE_INJECTION_DELAY_JITTER",
    ] {
        assert_eq!(
            error_env("", &[(name, "1")]),
            format!("{name}: unknown variable, expected one of: {fault_vars}")
        );
    }
    // Marty's own switch has two variables and no others.
    assert_eq!(
        error_env("", &[("MARTY_FAILURE_INJECTION_RATIO", "0.1")]),
        "MARTY_FAILURE_INJECTION_RATIO: unknown variable, expected MARTY_FAILURE_INJECTION or MARTY_FAILURE_INJECTION_RATE"
    );
    assert_eq!(
        error_env(
            "",
            &[
                ("MARTY_FAILURE_INJECTION_RATE", "0.1"),
                (
                    "MARTY_RESILIENCE_FAILURE_INJECTION_BASE_FAILURE_RATE",
                    "0.2"
                )
            ]
        ),
        "MARTY_FAILURE_INJECTION_RATE: set either MARTY_FAILURE_INJECTION_RATE or \
         MARTY_RESILIENCE_FAILURE_INJECTION_BASE_FAILURE_RATE, not both"
    );
}

#[test]
fn variable_names_must_be_upper_case() {
    // Field names in lower (or mixed) case were once accepted; they are unknown variables now.
    for name in [
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_failure_threshold",
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_Failure_Threshold",
        "MARTY_RESILIENCE_FAILURE_INJECTION_enabled",
        "MARTY_RESILIENCE_FAILURE_INJECTION_ABORT_http_status",
        "MARTY_RESILIENCE_Failure_Injection_ENABLED",
        "MARTY_RESILIENCE_circuit_breaker_FAILURE_THRESHOLD",
    ] {
        assert_eq!(
            error_env("", &[(name, "3")]),
            format!("{name}: {UNKNOWN_VARIABLE}"),
            "{name}"
        );
    }
    // The upper-case spelling of the same field is fine.
    let s = parse_env(
        "",
        &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3")],
    );
    assert_eq!(s.defaults.circuit_breaker.failure_threshold, 3);
}

#[test]
fn invalid_variable_values_name_the_variable() {
    assert_eq!(
        error_env(
            "",
            &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0")]
        ),
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD: expected an integer between 1 and 1000000, got 0"
    );
    assert_eq!(
        error_env(
            "",
            &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "five")]
        ),
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD: expected an integer between 1 and 1000000, got \"five\""
    );
    assert_eq!(
        error_env("", &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_ENABLED", "yes")]),
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_ENABLED: expected a boolean, got \"yes\""
    );
    assert_eq!(
        error_env(
            "",
            &[(
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_STATUS_CODES",
                "5xx,6xx"
            )]
        ),
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_STATUS_CODES[1]: expected an HTTP status code \
         (100-599) or a class like \"5xx\", got \"6xx\""
    );
    assert_eq!(
        error_env("", &[("MARTY_RESILIENCE_ENVIRONMENT", "staging")]),
        "MARTY_RESILIENCE_ENVIRONMENT: expected one of \"development\", \"production\", \
         \"testing\", got \"staging\""
    );
}

#[test]
fn a_bad_variable_is_reported_even_when_the_json_is_fine() {
    // The environment is validated at load like the JSON: a typo cannot pass silently.
    let msg = error_env(
        r#"{"circuit_breaker": {"failure_threshold": 3}}"#,
        &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "soon")],
    );
    assert_eq!(
        msg,
        format!(
            "MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_TIMEOUT: expected {DURATION}, got \"soon\""
        )
    );
}

// ---------------------------------------------------------------- durations

#[test]
fn durations_are_seconds_or_strings_with_units() {
    let d = |v: Value| {
        // The longest open period is raised too: it must be at least recovery_timeout.
        let config =
            json!({"circuit_breaker": {"recovery_timeout": v, "max_recovery_timeout": "24h"}})
                .to_string();
        cb(&config).recovery_timeout
    };
    assert_eq!(d(json!(30)), 30 * S);
    assert_eq!(d(json!(0.25)), 250 * MS);
    assert_eq!(d(json!("250ms")), 250 * MS);
    assert_eq!(d(json!("30s")), 30 * S);
    assert_eq!(d(json!("1m")), 60 * S);
    assert_eq!(d(json!("1.5m")), 90 * S);
    assert_eq!(d(json!("1h")), 3600 * S);
    assert_eq!(d(json!("12")), 12 * S);
    assert_eq!(d(json!(" 2s ")), 2 * S);
    assert_eq!(d(json!(86_400)), 86_400 * S);
}

#[test]
fn bad_durations_are_rejected_with_the_expected_forms() {
    for bad in [
        json!(0),
        json!(-1),
        json!("0s"),
        json!("abc"),
        json!("5d"),
        json!("-1s"),
        json!(".5s"),
        json!("5.s"),
        json!("1e3"),
        json!(86_401),
        json!("25h"),
        json!(true),
        json!([1]),
        json!(null),
    ] {
        let config =
            json!({"routes": {"users": {"circuit_breaker": {"half_open_probe_timeout": bad}}}})
                .to_string();
        assert_eq!(
            error(&config),
            format!(
                "routes.users.circuit_breaker.half_open_probe_timeout: expected {DURATION}, got {bad}"
            )
        );
    }
}

#[test]
fn a_duration_that_rounds_to_zero_nanoseconds_is_rejected() {
    let msg = error(r#"{"circuit_breaker": {"failure_reset_timeout": 1e-10}}"#);
    assert!(
        msg.starts_with("circuit_breaker.failure_reset_timeout: expected a duration > 0"),
        "{msg}"
    );
    assert_eq!(
        cb(r#"{"circuit_breaker": {"failure_reset_timeout": 1e-9}}"#).failure_reset_timeout,
        1
    );
}

// ---------------------------------------------------------------- error texts

#[test]
fn a_negative_threshold_in_a_route_names_the_full_path() {
    assert_eq!(
        error(r#"{"routes": {"users": {"circuit_breaker": {"failure_threshold": -2}}}}"#),
        "routes.users.circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got -2"
    );
}

#[test]
fn integers_must_be_whole_and_in_range() {
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_threshold": 0}}"#),
        "circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got 0"
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"half_open_success_threshold": 2.5}}"#),
        "circuit_breaker.half_open_success_threshold: expected an integer between 1 and 10000, got 2.5"
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_threshold": "5"}}"#),
        "circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got \"5\""
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"max_concurrent_requests": -1}}"#),
        "circuit_breaker.max_concurrent_requests: expected an integer >= 0, got -1"
    );
    // Whole floats, as YAML-to-JSON tools write them, are integers.
    assert_eq!(
        cb(r#"{"circuit_breaker": {"failure_threshold": 5.0}}"#).failure_threshold,
        5
    );
    assert_eq!(
        cb(r#"{"circuit_breaker": {"max_concurrent_requests": 0}}"#).max_concurrent_requests,
        0
    );
}

#[test]
fn integers_above_32_bits_are_rejected() {
    // The message is about the path; the value must not wrap into a small threshold.
    let msg = error(r#"{"circuit_breaker": {"failure_threshold": 4294967296}}"#);
    assert!(
        msg.starts_with("circuit_breaker.failure_threshold: expected "),
        "{msg}"
    );
    assert!(msg.ends_with(", got 4294967296"), "{msg}");
    assert_eq!(
        cb(r#"{"circuit_breaker": {"max_concurrent_requests": 4294967295}}"#)
            .max_concurrent_requests,
        u32::MAX
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_threshold": 1000001}}"#),
        "circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got 1000001"
    );
}

#[test]
fn half_open_max_requests_is_bounded_by_the_probe_slots_of_one_value() {
    assert_eq!(MAX_HALF_OPEN_REQUESTS, 64);
    assert_eq!(
        cb(r#"{"circuit_breaker": {"half_open_max_requests": 64}}"#).half_open_max_requests,
        64
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"half_open_max_requests": 65}}"#),
        "circuit_breaker.half_open_max_requests: expected an integer between 1 and 64, got 65"
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"half_open_max_requests": 0}}"#),
        "circuit_breaker.half_open_max_requests: expected an integer between 1 and 64, got 0"
    );
}

#[test]
fn wrong_types_are_named_with_the_value_seen() {
    assert_eq!(
        error(r#"{"circuit_breaker": {"enabled": "true"}}"#),
        "circuit_breaker.enabled: expected a boolean, got \"true\""
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"count_connect_failures": 1}}"#),
        "circuit_breaker.count_connect_failures: expected a boolean, got 1"
    );
    assert_eq!(
        error(r#"{"circuit_breaker": 5}"#),
        "circuit_breaker: expected an object, got 5"
    );
    assert_eq!(
        error(r#"{"service_name": 5}"#),
        "service_name: expected a string, got 5"
    );
    assert_eq!(
        error(r#"{"environment": "staging"}"#),
        "environment: expected one of \"development\", \"production\", \"testing\", got \"staging\""
    );
    assert_eq!(
        error(r#"{"environment": null}"#),
        "environment: expected one of \"development\", \"production\", \"testing\", got null"
    );
    assert_eq!(
        error(r#"{"routes": []}"#),
        "routes: expected an object, got []"
    );
    assert_eq!(
        error(r#"{"routes": {"users": true}}"#),
        "routes.users: expected an object, got true"
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_status_codes": "5xx"}}"#),
        "circuit_breaker.failure_status_codes: expected a list of HTTP status codes or classes, \
         got \"5xx\""
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_grpc_status": 14}}"#),
        "circuit_breaker.failure_grpc_status: expected a list of gRPC status names or numbers, \
         got 14"
    );
}

#[test]
fn a_long_value_is_shortened_in_the_message() {
    let long = "x".repeat(200);
    let msg = error(&format!(
        r#"{{"circuit_breaker": {{"enabled": "{long}"}}}}"#
    ));
    let shown = format!("\"{}...", "x".repeat(76));
    assert_eq!(
        msg,
        format!("circuit_breaker.enabled: expected a boolean, got {shown}")
    );
}

#[test]
fn unknown_fields_list_the_expected_ones() {
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_treshold": 3}}"#),
        format!("circuit_breaker.failure_treshold: unknown field, expected one of: {CB_FIELDS}")
    );
    assert_eq!(
        error(r#"{"circuit_breakers": {}}"#),
        "circuit_breakers: unknown field, expected one of: service_name, environment, \
         circuit_breaker, retry, failure_injection, health, mode, bucket_by, max_buckets, stat_prefix, prevent_caller_retries, bucket_idle_timeout, routes"
    );
    assert_eq!(
        error(r#"{"routes": {"users": {"timeout": 1}}}"#),
        "routes.users.timeout: unknown field, expected one of: circuit_breaker, retry, \
         failure_injection"
    );
    // A route entry cannot set top-level-only fields.
    assert_eq!(
        error(r#"{"routes": {"users": {"environment": "testing"}}}"#),
        "routes.users.environment: unknown field, expected one of: circuit_breaker, retry, \
         failure_injection"
    );
}

#[test]
fn an_empty_retry_section_changes_nothing() {
    let s = parse(
        r#"{"retry": {}, "failure_injection": {},
            "routes": {"users": {"retry": {}, "failure_injection": {}}}}"#,
    );
    assert_eq!(s.defaults, Environment::Production.preset());
    assert_eq!(
        *s.routes.get("users").unwrap(),
        Environment::Production.preset()
    );
    // The section's own fields and errors: tests/retry_config_test.rs.
    assert_eq!(
        error(r#"{"routes": {"users": {"retry": {"attempts": 3}}}}"#),
        "routes.users.retry.attempts: unknown field, expected one of: enabled, max_attempts, \
         retry_on, grpc_retry_on, retriable_status_codes, per_try_timeout, base_delay, \
         max_delay, backoff_strategy, multiplier, polynomial_degree, jitter, budget, \
         trust_client_headers, count_attempts, enable_circuit_breaker, enable_adaptive_delays"
    );
    assert_eq!(
        error(r#"{"retry": true}"#),
        "retry: expected an object, got true"
    );
    // failure_injection is no longer reserved: its fields are read, and checked.
    assert_eq!(
        error(r#"{"routes": {"users": {"failure_injection": {"abort": 1}}}}"#),
        "routes.users.failure_injection.abort: expected an object, got 1"
    );
    assert_eq!(
        error(r#"{"routes": {"users": {"failure_injection": {"abort_percent": 10}}}}"#),
        format!(
            "routes.users.failure_injection.abort_percent: unknown field, expected one of: \
             {FI_FIELDS}"
        )
    );
}

#[test]
fn invalid_json_and_non_objects_are_rejected() {
    let msg = error(r#"{"circuit_breaker": "#);
    assert!(
        msg.starts_with("configuration is not valid JSON: "),
        "{msg}"
    );
    assert_eq!(
        error("[1, 2]"),
        "(configuration): expected an object, got [1,2]"
    );
    assert_eq!(error("3"), "(configuration): expected an object, got 3");
    assert_eq!(
        Settings::parse(&[0xff, 0xfe], &[]).unwrap_err().to_string(),
        "configuration is not valid UTF-8"
    );
}

#[test]
fn config_errors_carry_path_and_message_apart() {
    let e = Settings::parse(br#"{"circuit_breaker": {"enabled": 1}}"#, &[]).unwrap_err();
    assert_eq!(
        e,
        ConfigError {
            path: "circuit_breaker.enabled".into(),
            message: "expected a boolean, got 1".into(),
        }
    );
    let pathless = ConfigError {
        path: String::new(),
        message: "m".into(),
    };
    assert_eq!(pathless.to_string(), "m");
}

// ---------------------------------------------------------------- route names

#[test]
fn a_route_named_default_is_rejected() {
    assert_eq!(
        error(r#"{"routes": {"default": {}}}"#),
        "routes.default: \"default\" (Istio's name for its generated routes) is never a bucket: requests on such routes are bucketed by their upstream cluster; key the entry by the cluster name"
    );
    assert_eq!(DEFAULT_ROUTE, "default");
}

#[test]
fn an_empty_route_name_is_rejected() {
    assert_eq!(
        error(r#"{"routes": {"": {}}}"#),
        "routes.: a route name must not be empty"
    );
}

#[test]
fn route_names_are_bounded_in_length() {
    let ok = "r".repeat(MAX_ROUTE_NAME_LEN);
    let s = parse(&format!(r#"{{"routes": {{"{ok}": {{}}}}}}"#));
    assert!(s.routes.contains_key(&ok));
    let long = "r".repeat(MAX_ROUTE_NAME_LEN + 1);
    assert_eq!(
        error(&format!(r#"{{"routes": {{"{long}": {{}}}}}}"#)),
        format!("routes.{long}: a route name must be at most {MAX_ROUTE_NAME_LEN} bytes")
    );
}

#[test]
fn two_route_names_with_the_same_stat_name_are_rejected() {
    assert_eq!(
        error(r#"{"routes": {"a.b": {}, "a_b": {}}}"#),
        "routes.a_b: route names \"a.b\" and \"a_b\" map to the same stat name \"a_b\""
    );
}

#[test]
fn stat_names_keep_only_safe_characters() {
    assert_eq!(stat_name("users-v2_x"), "users-v2_x");
    assert_eq!(stat_name("a.b/c d"), "a_b_c_d");
    assert_eq!(stat_name("é"), "_");
}

#[test]
fn configured_routes_are_resolved_in_full() {
    let s = parse(LAYERED);
    assert_eq!(s.routes.len(), 2);
    assert_eq!(*s.routes.get("orders").unwrap(), s.defaults);
    assert_eq!(
        s.routes.get("users").unwrap().circuit_breaker,
        BreakerPolicy {
            recovery_timeout: 7 * S,
            ..s.defaults.circuit_breaker.clone()
        }
    );
}

#[test]
fn metadata_errors_name_the_route_and_the_field() {
    let s = parse("");
    let e = s
        .with_metadata(
            "users",
            &json!({"circuit_breaker": {"failure_threshold": -2}}),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "route_metadata[users].filter_metadata[marty.resilience].circuit_breaker.failure_threshold: \
         expected an integer between 1 and 1000000, got -2"
    );
    let e = s.with_metadata("users", &json!("nope")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route_metadata[users].filter_metadata[marty.resilience]: expected an object, got \"nope\""
    );
    let e = s
        .with_metadata("users", &json!({"service_name": "x"}))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "route_metadata[users].filter_metadata[marty.resilience].service_name: unknown field, \
         expected one of: circuit_breaker, retry, failure_injection"
    );
}

// ---------------------------------------------------------------- status and gRPC sets

#[test]
fn status_sets_take_classes_and_exact_codes() {
    let set = StatusSet::parse(&json!(["5xx", "4XX", 429, "418"]), "x").unwrap();
    for code in [400, 404, 499, 500, 599, 429, 418] {
        assert!(set.contains(code), "{code}");
    }
    for code in [100, 200, 399, 600, 99, 0, 999] {
        assert!(!set.contains(code), "{code}");
    }
    assert_eq!(set.to_json(), json!(["4xx", "5xx", 429, 418]));
    let exact = StatusSet::parse(&json!([503]), "x").unwrap();
    assert!(exact.contains(503));
    assert!(!exact.contains(500));
}

#[test]
fn bad_status_set_items_are_named_by_index() {
    let e = |v: Value| StatusSet::parse(&v, "p").unwrap_err().to_string();
    let what = "an HTTP status code (100-599) or a class like \"5xx\"";
    assert_eq!(
        e(json!([500, 600])),
        "p[1]: expected an HTTP status code (100-599), got 600"
    );
    assert_eq!(
        e(json!([99])),
        "p[0]: expected an HTTP status code (100-599), got 99"
    );
    assert_eq!(
        e(json!([-1])),
        "p[0]: expected an HTTP status code (100-599), got -1"
    );
    assert_eq!(
        e(json!(["6xx"])),
        format!("p[0]: expected {what}, got \"6xx\"")
    );
    assert_eq!(
        e(json!(["0xx"])),
        format!("p[0]: expected {what}, got \"0xx\"")
    );
    assert_eq!(
        e(json!(["5xxx"])),
        format!("p[0]: expected {what}, got \"5xxx\"")
    );
    assert_eq!(
        e(json!(["700"])),
        format!("p[0]: expected {what}, got \"700\"")
    );
    assert_eq!(e(json!([null])), format!("p[0]: expected {what}, got null"));
    assert_eq!(
        e(json!([["5xx"]])),
        format!("p[0]: expected {what}, got [\"5xx\"]")
    );
}

#[test]
fn status_set_constructors_ignore_classes_outside_1xx_to_5xx() {
    // Classes are bits of a byte; nonsense classes must neither panic nor match anything.
    let set = StatusSet::classes(&[0, 6, 7, 8, 9, 200, 255]);
    for status in (0..1000).step_by(7) {
        assert!(!set.contains(status), "{status}");
    }
    assert_eq!(set.to_json(), json!([]));
}

#[test]
fn grpc_sets_take_names_in_any_case_and_numbers() {
    let set = GrpcSet::parse(
        &json!(["UNAVAILABLE", "internal", "Deadline_Exceeded", 2, "8"]),
        "g",
    )
    .unwrap();
    assert_eq!(set, GrpcSet::of(&[14, 13, 4, 2, 8]));
    for code in [14, 13, 4, 2, 8] {
        assert!(set.contains(code));
    }
    assert!(!set.contains(0));
    assert!(!set.contains(17));
    assert!(!set.contains(u32::MAX));
    assert_eq!(
        set.to_json(),
        json!([
            "UNKNOWN",
            "DEADLINE_EXCEEDED",
            "RESOURCE_EXHAUSTED",
            "INTERNAL",
            "UNAVAILABLE"
        ])
    );
    assert_eq!(grpc_code("ok"), Some(0));
    assert_eq!(grpc_code(" unauthenticated "), Some(16));
    assert_eq!(grpc_code("16"), Some(16));
    assert_eq!(grpc_code("17"), None);
    assert_eq!(grpc_code("UNAVAILABLE_"), None);
    assert_eq!(grpc_code(""), None);
    assert_eq!(GrpcSet::of(&[17, 99]), GrpcSet::default());
}

#[test]
fn bad_grpc_items_are_named_by_index() {
    let what = "a gRPC status name (e.g. \"UNAVAILABLE\") or number 0-16";
    let e = |v: Value| GrpcSet::parse(&v, "g").unwrap_err().to_string();
    assert_eq!(e(json!([14, 17])), format!("g[1]: expected {what}, got 17"));
    assert_eq!(
        e(json!(["UNAVAILBLE"])),
        format!("g[0]: expected {what}, got \"UNAVAILBLE\"")
    );
    assert_eq!(e(json!([-1])), format!("g[0]: expected {what}, got -1"));
    assert_eq!(e(json!([true])), format!("g[0]: expected {what}, got true"));
}

#[test]
fn named_grpc_codes_are_the_codes_of_their_names() {
    use marty_resilience_core::config::codes::{
        GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL, GRPC_UNAVAILABLE, GRPC_UNKNOWN,
    };
    for (code, name) in [
        (GRPC_UNKNOWN, "UNKNOWN"),
        (GRPC_DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        (GRPC_INTERNAL, "INTERNAL"),
        (GRPC_UNAVAILABLE, "UNAVAILABLE"),
    ] {
        assert_eq!(grpc_code(name), Some(code), "{name}");
    }
    // A fault that names no gRPC status aborts with UNAVAILABLE.
    assert_eq!(fault::DEFAULT_GRPC_STATUS, GRPC_UNAVAILABLE);
}

// ---------------------------------------------------------------- round trips

#[test]
fn resolved_policies_round_trip_through_to_json() {
    // What `to_json` writes is a circuit_breaker section that parses back to the same policy.
    for_each_seed("policy to_json round trip", 0xC0F1_0001, 500, |rng| {
        let codes: Vec<u16> = (0..rng.gen_range(0..4))
            .map(|_| rng.gen_range(100..600))
            .collect();
        let classes: Vec<u8> = (1..=5).filter(|_| rng.gen_bool(0.3)).collect();
        let mut failure = StatusSet::classes(&classes);
        if !codes.is_empty() {
            let mut items: Vec<Value> = failure.to_json().as_array().cloned().unwrap_or_default();
            items.extend(codes.iter().map(|c| json!(c)));
            failure = StatusSet::parse(&Value::Array(items), "x").map_err(|e| e.to_string())?;
        }
        let duration = |rng: &mut rand::rngs::StdRng| rng.gen_range(1..=86_400 * S);
        let recovery_timeout = duration(rng);
        let policy = BreakerPolicy {
            enabled: rng.gen(),
            failure_threshold: rng.gen_range(1..=1_000_000),
            recovery_timeout,
            recovery_backoff: RECOVERY_STRATEGIES[rng.gen_range(0..5)],
            max_recovery_timeout: rng.gen_range(recovery_timeout..=86_400 * S),
            half_open_success_threshold: rng.gen_range(1..=1000),
            half_open_max_requests: rng.gen_range(1..=MAX_HALF_OPEN_REQUESTS),
            half_open_probe_timeout: duration(rng),
            failure_reset_timeout: duration(rng),
            max_concurrent_requests: rng.gen(),
            failure_status_codes: failure,
            ignored_status_codes: StatusSet::codes(&codes),
            failure_grpc_status: GrpcSet::of(&[rng.gen_range(0..17), rng.gen_range(0..17)]),
            count_connect_failures: rng.gen(),
            enable_metrics: rng.gen(),
            error_classifier: Default::default(),
        };
        let config = json!({"circuit_breaker": policy.to_json()}).to_string();
        let parsed = Settings::parse(config.as_bytes(), &[])
            .map_err(|e| format!("{config}: {e}"))?
            .defaults
            .circuit_breaker;
        ensure!(
            parsed == policy,
            "{config} parsed to {parsed:?}, not {policy:?}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------- failure injection

const FI: &str = "MARTY_RESILIENCE_FAILURE_INJECTION_";

fn fi(config: &str) -> FaultPolicy {
    parse(config).defaults.failure_injection
}

/// `MARTY_RESILIENCE_FAILURE_INJECTION_<suffix>`.
fn fi_var(suffix: &str) -> String {
    format!("{FI}{suffix}")
}

/// A request that a configured rate of `rate` aborts: the draw is below every rate above 0.
const ABORT_DRAW: Draws = Draws {
    abort: 0.0,
    delay: 0.999,
};

#[test]
fn failure_injection_is_off_with_the_same_defaults_in_every_environment() {
    for env in [
        Environment::Development,
        Environment::Production,
        Environment::Testing,
    ] {
        let f = env.preset().failure_injection;
        assert!(!f.enabled, "{env:?}");
        assert!(!f.enabled_by_env, "{env:?}");
        assert_eq!(f.base_failure_rate, 0.05);
        assert!(f.method_specific_rates.is_empty());
        assert_eq!(
            f.abort,
            AbortPolicy {
                http_status: 503,
                grpc_status: 14
            }
        );
        assert_eq!(
            f.delay,
            DelayPolicy {
                duration: 250 * MS,
                rate: 0.0,
                max: 10 * S
            }
        );
        assert_eq!(f.max_active_faults, 100);
        assert_eq!(
            f.header_trigger,
            HeaderTrigger {
                enabled: false,
                header: "x-failure-inject".into(),
                token: None,
                propagate: false
            }
        );
        // Off means no trigger injects anything, whatever the draw.
        assert_eq!(fault::decide(&f, "/", None, ABORT_DRAW), None);
    }
}

#[test]
fn every_failure_injection_field_is_read_from_the_json() {
    let f = fi(r#"{"failure_injection": {
        "enabled": true,
        "base_failure_rate": 0.3,
        "method_specific_rates": {"/health": 0, "/users/": 0.5},
        "abort": {"http_status": 500, "grpc_status": "internal"},
        "delay": {"duration": "100ms", "rate": 0.25, "max": "2s"},
        "max_active_faults": 0,
        "header_trigger": {"enabled": true, "header": "X-Chaos", "token": "s3cret", "propagate": true}
    }}"#);
    assert!(f.enabled);
    assert!(!f.enabled_by_env);
    assert_eq!(f.base_failure_rate, 0.3);
    assert_eq!(f.abort_rate("/health"), 0.0);
    assert_eq!(f.abort_rate("/users/7"), 0.5);
    assert_eq!(f.abort_rate("/orders"), 0.3);
    assert_eq!(
        f.abort,
        AbortPolicy {
            http_status: 500,
            grpc_status: 13
        }
    );
    assert_eq!(
        f.delay,
        DelayPolicy {
            duration: 100 * MS,
            rate: 0.25,
            max: 2 * S
        }
    );
    assert_eq!(f.max_active_faults, 0, "0 is unlimited");
    assert_eq!(
        f.header_trigger,
        HeaderTrigger {
            enabled: true,
            header: "x-chaos".into(),
            token: Some("s3cret".into()),
            propagate: true
        }
    );
}

#[test]
fn failure_injection_edge_values_are_accepted() {
    let f = fi(r#"{"failure_injection": {
        "base_failure_rate": 1,
        "abort": {"http_status": 200, "grpc_status": 0},
        "delay": {"duration": 0, "rate": 1.0, "max": 86400},
        "max_active_faults": 4294967295,
        "header_trigger": {"header": "h", "token": null}
    }}"#);
    assert_eq!(f.base_failure_rate, 1.0);
    assert_eq!(f.abort.http_status, 200);
    assert_eq!(f.abort.grpc_status, 0);
    assert_eq!(f.delay.duration, 0, "a zero delay is allowed");
    assert_eq!(f.delay.max, 86_400 * S);
    assert_eq!(f.max_active_faults, u32::MAX);
    assert_eq!(f.header_trigger.header, "h");
    assert_eq!(f.header_trigger.token, None);
    for (status, code) in [
        (json!("UNAVAILABLE"), 14),
        (json!(" deadline_exceeded "), 4),
        (json!(16), 16),
        (json!("7"), 7),
        (json!(" 14 "), 14),
    ] {
        let config = json!({"failure_injection": {"abort": {"grpc_status": status}}});
        assert_eq!(fi(&config.to_string()).abort.grpc_status, code, "{status}");
    }
    assert_eq!(
        fi(r#"{"failure_injection": {"abort": {"http_status": 503.0}}}"#)
            .abort
            .http_status,
        503
    );
}

#[test]
fn bad_failure_injection_values_name_the_field() {
    const GRPC: &str = "a gRPC status name (e.g. \"UNAVAILABLE\") or number 0-16";
    const HEADER: &str = "a header name of letters, digits, '-' and '_' (at most 64)";
    const TOKEN: &str = "null or a non-empty string of at most 256 bytes";
    let cases = [
        (
            json!({"base_failure_rate": 1.5}),
            "failure_injection.base_failure_rate: expected a rate between 0 and 1, got 1.5",
        ),
        (
            json!({"delay": {"rate": -0.5}}),
            "failure_injection.delay.rate: expected a rate between 0 and 1, got -0.5",
        ),
        (
            json!({"abort": {"http_status": 600}}),
            "failure_injection.abort.http_status: expected an integer between 200 and 599, got 600",
        ),
        (
            json!({"abort": {"http_status": 199}}),
            "failure_injection.abort.http_status: expected an integer between 200 and 599, got 199",
        ),
        (
            json!({"max_active_faults": 4294967296_u64}),
            "failure_injection.max_active_faults: expected an integer between 0 and 4294967295, \
             got 4294967296",
        ),
        (
            json!({"max_active_faults": -1}),
            "failure_injection.max_active_faults: expected an integer >= 0, got -1",
        ),
        (
            json!({"delay": {"max": 0}}),
            "failure_injection.delay.max: expected a duration > 0 (seconds as a number, or a \
             string like \"250ms\" or \"30s\"; at most 1 day), got 0",
        ),
        (
            json!({"delay": {"duration": "25h"}}),
            "failure_injection.delay.duration: expected a duration >= 0 (seconds as a number, or \
             a string like \"250ms\" or \"30s\"; at most 1 day), got \"25h\"",
        ),
        (
            json!({"delay": {"jitter": 1}}),
            "failure_injection.delay.jitter: unknown field, expected one of: duration, rate, max",
        ),
        (
            json!({"abort": {"status": 503}}),
            "failure_injection.abort.status: unknown field, expected one of: http_status, \
             grpc_status",
        ),
        (
            json!({"header_trigger": {"name": "x"}}),
            "failure_injection.header_trigger.name: unknown field, expected one of: enabled, \
             header, token, propagate",
        ),
        (
            json!({"delay": 5}),
            "failure_injection.delay: expected an object, got 5",
        ),
        (
            json!({"enabled": "true"}),
            "failure_injection.enabled: expected a boolean, got \"true\"",
        ),
    ];
    for (section, message) in cases {
        let config = json!({ "failure_injection": section }).to_string();
        assert_eq!(error(&config), message, "{config}");
    }
    for (status, shown) in [
        (json!(17), "17"),
        (json!(-1), "-1"),
        (json!("17"), "\"17\""),
        (json!("016"), "\"016\""),
        (json!("+14"), "\"+14\""),
        (json!("TIMEOUT"), "\"TIMEOUT\""),
        (json!(""), "\"\""),
        (json!(null), "null"),
    ] {
        let config = json!({"failure_injection": {"abort": {"grpc_status": status}}});
        assert_eq!(
            error(&config.to_string()),
            format!("failure_injection.abort.grpc_status: expected {GRPC}, got {shown}")
        );
    }
    for header in [
        json!(""),
        json!("x chaos"),
        json!("x-chaos:"),
        json!("x.chaos"),
        json!("h".repeat(65)),
        json!(5),
    ] {
        let config = json!({"failure_injection": {"header_trigger": {"header": header}}});
        let msg = error(&config.to_string());
        let want = if header.is_string() {
            format!("failure_injection.header_trigger.header: expected {HEADER}, got ")
        } else {
            "failure_injection.header_trigger.header: expected a string, got ".to_string()
        };
        assert!(msg.starts_with(&want), "{msg}");
    }
    for token in [
        json!(""),
        json!("t".repeat(257)),
        json!(12345),
        json!(false),
    ] {
        let config = json!({"failure_injection": {"header_trigger": {"token": token}}});
        let msg = error(&config.to_string());
        assert!(
            msg.starts_with(&format!(
                "failure_injection.header_trigger.token: expected {TOKEN}, got "
            )),
            "{msg}"
        );
    }
}

#[test]
fn method_specific_rates_keys_are_paths_and_bounded() {
    let key = |k: &str| {
        let config = json!({"failure_injection": {"method_specific_rates": {k: 0.5}}});
        Settings::parse(config.to_string().as_bytes(), &[]).map_err(|e| e.to_string())
    };
    assert!(key("/").is_ok());
    assert!(key(&format!("/{}", "p".repeat(255))).is_ok());
    for bad in ["health", "", " /health", "*"] {
        assert_eq!(
            key(bad).unwrap_err(),
            format!(
                "failure_injection.method_specific_rates[\"{bad}\"]: expected a request path key \
                 starting with '/' (at most 256 bytes), got \"{bad}\""
            )
        );
    }
    let long = format!("/{}", "p".repeat(256));
    assert!(key(&long).is_err(), "257 bytes");
    assert_eq!(
        error(r#"{"failure_injection": {"method_specific_rates": {"/users": 1.01}}}"#),
        "failure_injection.method_specific_rates[\"/users\"]: expected a rate between 0 and 1, \
         got 1.01"
    );
    assert_eq!(
        error(r#"{"failure_injection": {"method_specific_rates": [["/users", 0.5]]}}"#),
        "failure_injection.method_specific_rates: expected an object, got [[\"/users\",0.5]]"
    );

    assert_eq!(MAX_METHOD_RATES, 256);
    let table = |n: usize| {
        let rates: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("/m{i}"), json!(0.1))).collect();
        json!({"failure_injection": {"method_specific_rates": rates}}).to_string()
    };
    assert_eq!(
        fi(&table(MAX_METHOD_RATES)).abort_rate("/m255"),
        0.1,
        "256 entries"
    );
    assert_eq!(
        error(&table(MAX_METHOD_RATES + 1)),
        "failure_injection.method_specific_rates: expected at most 256 entries, got 257"
    );
}

#[test]
fn method_specific_rates_match_exact_keys_then_the_longest_prefix() {
    let f = fi(r#"{"failure_injection": {
        "base_failure_rate": 0.05,
        "method_specific_rates": {
            "/health": 0.0,
            "/test": 0.2,
            "/users.UserService/GetUser": 0.5,
            "/users.UserService/*": 0.3,
            "/users.UserService/Get*": 0.4,
            "/api/": 0.6,
            "/api/v2/": 0.7,
            "/api/v2/ping": 0.8
        }
    }}"#);
    for (path, rate) in [
        ("/health", 0.0),
        ("/health?full=1", 0.0),
        ("/healthz", 0.05),
        ("/test", 0.2),
        ("/test/", 0.05),
        ("/test/x", 0.05),
        ("/users.UserService/GetUser", 0.5),
        ("/users.UserService/GetUsers", 0.4),
        ("/users.UserService/ListUsers", 0.3),
        ("/users.UserService", 0.05),
        ("/api/v1/x", 0.6),
        ("/api/v2/x", 0.7),
        ("/api/v2/ping", 0.8),
        ("/api/v2/ping/x", 0.7),
        ("/api", 0.05),
        ("/", 0.05),
        ("", 0.05),
    ] {
        assert_eq!(f.abort_rate(path), rate, "{path}");
    }
}

#[test]
fn failure_injection_layers_merge_nested_objects_field_by_field() {
    let config = r#"{
        "failure_injection": {
            "enabled": true,
            "base_failure_rate": 0.1,
            "method_specific_rates": {"/a": 0.9},
            "abort": {"http_status": 500, "grpc_status": "INTERNAL"},
            "header_trigger": {"enabled": true, "header": "x-chaos"}
        },
        "routes": {
            "users": {"failure_injection": {
                "abort": {"http_status": 502},
                "method_specific_rates": {"/b": 0.8},
                "header_trigger": {"propagate": true}
            }},
            "orders": {}
        }
    }"#;
    let s = parse_env(
        config,
        &[
            (&fi_var("BASE_FAILURE_RATE"), "0.2"),
            (&fi_var("ABORT_GRPC_STATUS"), "UNAVAILABLE"),
            (&fi_var("DELAY_RATE"), "0.5"),
        ],
    );
    let top = &s.defaults.failure_injection;
    assert_eq!(top.base_failure_rate, 0.2, "the variable beats the JSON");
    assert_eq!(
        top.abort,
        AbortPolicy {
            http_status: 500,
            grpc_status: 14
        },
        "abort merged field by field: JSON's http_status, the variable's grpc_status"
    );
    assert_eq!(top.delay.rate, 0.5);
    assert_eq!(top.delay.duration, 250 * MS, "the default still applies");
    assert_eq!(top.abort_rate("/a"), 0.9);
    assert_eq!(s.routes.get("orders").unwrap().failure_injection, *top);

    let users = &s.routes.get("users").unwrap().failure_injection;
    assert_eq!(
        users.abort,
        AbortPolicy {
            http_status: 502,
            grpc_status: 14
        }
    );
    // The route's table replaces the top level's as a whole.
    assert_eq!(users.abort_rate("/b"), 0.8);
    assert_eq!(users.abort_rate("/a"), 0.2);
    assert_eq!(
        users.header_trigger,
        HeaderTrigger {
            enabled: true,
            header: "x-chaos".into(),
            token: None,
            propagate: true
        }
    );

    // Route metadata over the route entry, field by field again.
    let meta = json!({"failure_injection": {
        "abort": {"grpc_status": 4},
        "delay": {"duration": "1s"},
        "method_specific_rates": {}
    }});
    let p = s.with_metadata("users", &meta).unwrap().failure_injection;
    assert_eq!(
        p.abort,
        AbortPolicy {
            http_status: 502,
            grpc_status: 4
        }
    );
    assert_eq!(p.delay.duration, S);
    assert_eq!(p.delay.rate, 0.5);
    assert!(
        p.method_specific_rates.is_empty(),
        "an empty table empties it"
    );
    assert_eq!(p.abort_rate("/b"), 0.2);
    assert!(p.header_trigger.propagate);
}

#[test]
fn every_failure_injection_variable_sets_its_field() {
    let s = parse_env(
        "",
        &[
            (&fi_var("ENABLED"), "true"),
            (&fi_var("BASE_FAILURE_RATE"), "0.3"),
            (
                &fi_var("METHOD_SPECIFIC_RATES"),
                r#"{"/health": 0, "/users/": 0.5}"#,
            ),
            (&fi_var("MAX_ACTIVE_FAULTS"), "7"),
            (&fi_var("ABORT_HTTP_STATUS"), "500"),
            (&fi_var("ABORT_GRPC_STATUS"), "deadline_exceeded"),
            (&fi_var("DELAY_DURATION"), "100ms"),
            (&fi_var("DELAY_RATE"), "0.25"),
            (&fi_var("DELAY_MAX"), "2s"),
            (&fi_var("HEADER_TRIGGER_ENABLED"), "true"),
            (&fi_var("HEADER_TRIGGER_HEADER"), "X-Chaos"),
            (&fi_var("HEADER_TRIGGER_TOKEN"), "s3cret"),
            (&fi_var("HEADER_TRIGGER_PROPAGATE"), "true"),
        ],
    );
    let f = s.defaults.failure_injection;
    assert!(f.enabled);
    assert!(
        !f.enabled_by_env,
        "a field like any other, not the MARTY_FAILURE_INJECTION switch"
    );
    assert_eq!(s.injection_switch, None);
    assert_eq!(f.base_failure_rate, 0.3);
    assert_eq!(f.abort_rate("/health"), 0.0);
    assert_eq!(f.abort_rate("/users/1"), 0.5);
    assert_eq!(f.abort_rate("/other"), 0.3);
    assert_eq!(f.max_active_faults, 7);
    assert_eq!(
        f.abort,
        AbortPolicy {
            http_status: 500,
            grpc_status: 4
        }
    );
    assert_eq!(
        f.delay,
        DelayPolicy {
            duration: 100 * MS,
            rate: 0.25,
            max: 2 * S
        }
    );
    assert_eq!(
        f.header_trigger,
        HeaderTrigger {
            enabled: true,
            header: "x-chaos".into(),
            token: Some("s3cret".into()),
            propagate: true
        }
    );

    // Numbers work for the gRPC status and the durations too.
    let f = parse_env(
        "",
        &[
            (&fi_var("ABORT_GRPC_STATUS"), "13"),
            (&fi_var("DELAY_DURATION"), "0"),
            (&fi_var("DELAY_MAX"), "1.5"),
            (&fi_var("ENABLED"), "false"),
        ],
    )
    .defaults
    .failure_injection;
    assert_eq!(f.abort.grpc_status, 13);
    assert_eq!(f.delay.duration, 0);
    assert_eq!(f.delay.max, 1500 * MS);
    assert!(!f.enabled);
}

#[test]
fn bad_failure_injection_variables_name_the_variable() {
    let cases: [(&str, &str, &str); 8] = [
        ("ENABLED", "yes", "expected a boolean, got \"yes\""),
        (
            "BASE_FAILURE_RATE",
            "2",
            "expected a rate between 0 and 1, got 2",
        ),
        (
            "ABORT_HTTP_STATUS",
            "600",
            "expected an integer between 200 and 599, got 600",
        ),
        (
            "ABORT_GRPC_STATUS",
            "17",
            "expected a gRPC status name (e.g. \"UNAVAILABLE\") or number 0-16, got 17",
        ),
        (
            "DELAY_MAX",
            "0",
            "expected a duration > 0 (seconds as a number, or a string like \"250ms\" or \
             \"30s\"; at most 1 day), got 0",
        ),
        (
            "MAX_ACTIVE_FAULTS",
            "-1",
            "expected an integer >= 0, got -1",
        ),
        (
            "HEADER_TRIGGER_HEADER",
            "x chaos",
            "expected a header name of letters, digits, '-' and '_' (at most 64), got \"x chaos\"",
        ),
        (
            "METHOD_SPECIFIC_RATES",
            "/health=0",
            "expected an object, got \"/health=0\"",
        ),
    ];
    for (suffix, value, message) in cases {
        let name = fi_var(suffix);
        assert_eq!(
            error_env("", &[(&name, value)]),
            format!("{name}: {message}")
        );
    }
    // Inside the table the key is named after the variable.
    assert_eq!(
        error_env(
            "",
            &[(&fi_var("METHOD_SPECIFIC_RATES"), r#"{"health": 0.5}"#)]
        ),
        format!(
            "{FI}METHOD_SPECIFIC_RATES[\"health\"]: expected a request path key starting with \
             '/' (at most 256 bytes), got \"health\""
        )
    );
}

#[test]
fn the_token_and_header_variables_stay_text() {
    // A token that looks like a number (or a boolean, or JSON) is the text as given.
    for token in ["12345", "true", "null", "0.5", "\"quoted\"", "{\"a\":1}"] {
        let f = parse_env("", &[(&fi_var("HEADER_TRIGGER_TOKEN"), token)])
            .defaults
            .failure_injection;
        assert_eq!(f.header_trigger.token.as_deref(), Some(token), "{token}");
    }
    let f = parse_env("", &[(&fi_var("HEADER_TRIGGER_HEADER"), "42")])
        .defaults
        .failure_injection;
    assert_eq!(f.header_trigger.header, "42");
    // In the JSON a token must be a string.
    assert_eq!(
        error(r#"{"failure_injection": {"header_trigger": {"token": 12345}}}"#),
        "failure_injection.header_trigger.token: expected null or a non-empty string of at most \
         256 bytes, got a number"
    );
    // A rejected token is described, never printed: errors end up in logs.
    let long = "s".repeat(300);
    let msg = error(&format!(
        r#"{{"failure_injection": {{"header_trigger": {{"token": "{long}"}}}}}}"#
    ));
    assert!(msg.ends_with("got a string of 300 bytes"), "{msg}");
    assert!(!msg.contains("sss"), "{msg}");
    // An empty variable is an empty token: rejected, not "no token".
    assert_eq!(
        error_env("", &[(&fi_var("HEADER_TRIGGER_TOKEN"), "")]),
        format!(
            "{FI}HEADER_TRIGGER_TOKEN: expected null or a non-empty string of at most 256 \
             bytes, got an empty string"
        )
    );
    // The variable's token replaces the JSON's, and the resolved policy never shows it.
    let s = parse_env(
        r#"{"failure_injection": {"header_trigger": {"token": "from-json"}}}"#,
        &[(&fi_var("HEADER_TRIGGER_TOKEN"), "from-env-secret")],
    );
    assert_eq!(
        s.defaults.failure_injection.header_trigger.token.as_deref(),
        Some("from-env-secret")
    );
    let shown = s.defaults.to_json().to_string();
    assert!(!shown.contains("from-env-secret"), "{shown}");
    assert_eq!(
        s.defaults.to_json()["failure_injection"]["header_trigger"]["token"],
        "(set)"
    );
}

#[test]
fn marty_failure_injection_enabled_switches_injection_on_over_every_layer() {
    let config = r#"{
        "failure_injection": {"enabled": false, "base_failure_rate": 0.1},
        "routes": {
            "off": {"failure_injection": {"enabled": false, "base_failure_rate": 0.4}},
            "on": {"failure_injection": {"enabled": true}},
            "plain": {}
        }
    }"#;
    let s = parse_env(config, &[("MARTY_FAILURE_INJECTION", "enabled")]);
    assert_eq!(s.injection_switch, Some(true));
    for policy in [
        &s.defaults,
        s.routes.get("off").unwrap(),
        s.routes.get("plain").unwrap(),
    ] {
        let f = &policy.failure_injection;
        assert!(f.enabled && f.enabled_by_env, "{f:?}");
    }
    // The rest of the section still comes from the layers.
    assert_eq!(s.defaults.failure_injection.base_failure_rate, 0.1);
    assert_eq!(
        s.routes
            .get("off")
            .unwrap()
            .failure_injection
            .base_failure_rate,
        0.4
    );
    // A route its configuration enables reports its faults as configured ones.
    let on = &s.routes.get("on").unwrap().failure_injection;
    assert!(on.enabled && !on.enabled_by_env);

    // Route metadata cannot switch it off either, on configured and unconfigured routes.
    let meta = json!({"failure_injection": {"enabled": false}});
    for route in ["on", "off", "search"] {
        let f = s.with_metadata(route, &meta).unwrap().failure_injection;
        assert!(f.enabled && f.enabled_by_env, "{route}: {f:?}");
    }

    // Faults the rates inject where only the variable enabled them report the trigger `env`.
    let fault = fault::decide(&s.defaults.failure_injection, "/", None, ABORT_DRAW).unwrap();
    assert_eq!(fault.trigger, Trigger::Env);
    assert_eq!(fault.trigger.name(), "env");
    let fault = fault::decide(on, "/", None, ABORT_DRAW).unwrap();
    assert_eq!(fault.trigger, Trigger::Config);
}

#[test]
fn marty_failure_injection_disabled_switches_injection_off_over_every_layer() {
    let config = r#"{
        "failure_injection": {"enabled": true, "base_failure_rate": 1},
        "routes": {"on": {"failure_injection": {"enabled": true}}}
    }"#;
    let s = parse_env(config, &[("MARTY_FAILURE_INJECTION", "disabled")]);
    assert_eq!(s.injection_switch, Some(false));
    let meta = json!({"failure_injection": {"enabled": true}});
    let policies = [
        s.defaults.failure_injection.clone(),
        s.routes.get("on").unwrap().failure_injection.clone(),
        s.with_metadata("on", &meta).unwrap().failure_injection,
        s.with_metadata("search", &meta).unwrap().failure_injection,
    ];
    for f in &policies {
        assert!(!f.enabled && !f.enabled_by_env, "{f:?}");
        assert_eq!(fault::decide(f, "/", None, ABORT_DRAW), None);
    }
    // Also over the variable that sets the field.
    let s = parse_env(
        "",
        &[
            (&fi_var("ENABLED"), "true"),
            ("MARTY_FAILURE_INJECTION", "off"),
        ],
    );
    assert!(!s.defaults.failure_injection.enabled);
}

#[test]
fn marty_failure_injection_takes_enabled_disabled_and_boolean_words() {
    for on in [
        "enabled", "ENABLED", "Enabled", "true", "TRUE", "1", "on", " On ",
    ] {
        let s = parse_env("", &[("MARTY_FAILURE_INJECTION", on)]);
        assert_eq!(s.injection_switch, Some(true), "{on:?}");
        assert!(s.defaults.failure_injection.enabled, "{on:?}");
    }
    for off in ["disabled", "DISABLED", "false", "0", "off", "Off"] {
        let s = parse_env(
            r#"{"failure_injection": {"enabled": true}}"#,
            &[("MARTY_FAILURE_INJECTION", off)],
        );
        assert_eq!(s.injection_switch, Some(false), "{off:?}");
        assert!(!s.defaults.failure_injection.enabled, "{off:?}");
    }
    assert_eq!(parse("").injection_switch, None);
    for bad in ["yes", "no", "", "2", "enable", "\"enabled\""] {
        assert_eq!(
            error_env("", &[("MARTY_FAILURE_INJECTION", bad)]),
            format!(
                "MARTY_FAILURE_INJECTION: expected \"enabled\" or \"disabled\", got {}",
                Value::from(bad)
            )
        );
    }
}

#[test]
fn marty_failure_injection_rate_is_the_plugin_level_base_rate() {
    let config = r#"{
        "failure_injection": {"base_failure_rate": 0.3},
        "routes": {
            "users": {"failure_injection": {"base_failure_rate": 0.5}},
            "orders": {}
        }
    }"#;
    let s = parse_env(config, &[("MARTY_FAILURE_INJECTION_RATE", "0.1")]);
    assert_eq!(s.defaults.failure_injection.base_failure_rate, 0.1);
    assert_eq!(
        s.routes
            .get("orders")
            .unwrap()
            .failure_injection
            .base_failure_rate,
        0.1
    );
    // Route entries and route metadata still override it.
    assert_eq!(
        s.routes
            .get("users")
            .unwrap()
            .failure_injection
            .base_failure_rate,
        0.5
    );
    let meta = json!({"failure_injection": {"base_failure_rate": 0.7}});
    assert_eq!(
        s.with_metadata("orders", &meta)
            .unwrap()
            .failure_injection
            .base_failure_rate,
        0.7
    );
    // It switches nothing on.
    assert!(!s.defaults.failure_injection.enabled);
    assert_eq!(s.injection_switch, None);

    for (raw, rate) in [("0", 0.0), ("1", 1.0), ("0.25", 0.25)] {
        let s = parse_env("", &[("MARTY_FAILURE_INJECTION_RATE", raw)]);
        assert_eq!(
            s.defaults.failure_injection.base_failure_rate, rate,
            "{raw}"
        );
    }
    for (raw, shown) in [
        ("1.5", "1.5"),
        ("-0.1", "-0.1"),
        ("10%", "\"10%\""),
        ("", "\"\""),
    ] {
        assert_eq!(
            error_env("", &[("MARTY_FAILURE_INJECTION_RATE", raw)]),
            format!("MARTY_FAILURE_INJECTION_RATE: expected a rate between 0 and 1, got {shown}")
        );
    }
}

// ---------------------------------------------------------------- overridden JSON values

#[test]
fn the_json_service_name_and_environment_are_checked_even_when_overridden() {
    assert_eq!(
        error_env(
            r#"{"service_name": 42}"#,
            &[("MARTY_RESILIENCE_SERVICE_NAME", "users")]
        ),
        "service_name: expected a string, got 42"
    );
    assert_eq!(
        error_env(
            r#"{"service_name": null}"#,
            &[("MARTY_RESILIENCE_SERVICE_NAME", "users")]
        ),
        "service_name: expected a string, got null"
    );
    let environment = "environment: expected one of \"development\", \"production\", \
                       \"testing\", got \"staging\"";
    assert_eq!(
        error_env(
            r#"{"environment": "staging"}"#,
            &[("MARTY_RESILIENCE_ENVIRONMENT", "testing")]
        ),
        environment
    );
    // The JSON is checked before the variables.
    assert_eq!(
        error_env(
            r#"{"environment": "staging"}"#,
            &[("MARTY_RESILIENCE_ENVIRONMENT", "bogus")]
        ),
        environment
    );
    assert_eq!(
        error_env(
            r#"{"environment": "testing"}"#,
            &[("MARTY_RESILIENCE_ENVIRONMENT", "bogus")]
        ),
        "MARTY_RESILIENCE_ENVIRONMENT: expected one of \"development\", \"production\", \
         \"testing\", got \"bogus\""
    );
    // Valid JSON values are still overridden.
    let s = parse_env(
        r#"{"service_name": "json", "environment": "development"}"#,
        &[
            ("MARTY_RESILIENCE_SERVICE_NAME", "env"),
            ("MARTY_RESILIENCE_ENVIRONMENT", "testing"),
        ],
    );
    assert_eq!(s.service_name, "env");
    assert_eq!(s.environment, Environment::Testing);
}

#[test]
fn mode_selects_the_placement() {
    use marty_resilience_core::config::Mode;
    let parse = |json: &str| Settings::parse(json.as_bytes(), &[]);
    assert_eq!(parse("{}").unwrap().mode, Mode::Downstream);
    assert_eq!(
        parse(r#"{"mode": "upstream"}"#).unwrap().mode,
        Mode::Upstream
    );
    assert_eq!(
        parse(r#"{"mode": "sideways"}"#).unwrap_err().to_string(),
        "mode: expected one of \"downstream\", \"upstream\", got \"sideways\""
    );
}
