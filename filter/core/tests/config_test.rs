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
use marty_resilience_core::config::{
    codes::grpc_code, stat_name, BreakerPolicy, ConfigError, Environment, GrpcSet, RoutePolicy,
    Settings, StatusSet, DEFAULT_ROUTE, MAX_HALF_OPEN_REQUESTS, MAX_ROUTE_NAME_LEN,
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

const CB_FIELDS: &str = "enabled, failure_threshold, recovery_timeout, \
    half_open_success_threshold, half_open_max_requests, half_open_probe_timeout, \
    failure_reset_timeout, max_concurrent_requests, failure_status_codes, \
    ignored_status_codes, failure_grpc_status, count_connect_failures";

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
    assert_eq!(s.routes["orders"].circuit_breaker.failure_threshold, 6);
    assert_eq!(s.routes["users"].circuit_breaker.failure_threshold, 6);
}

#[test]
fn a_route_entry_overrides_environment_variables() {
    let s = parse_env(
        LAYERED,
        &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "9")],
    );
    assert_eq!(s.defaults.circuit_breaker.recovery_timeout, 9 * S);
    assert_eq!(s.routes["orders"].circuit_breaker.recovery_timeout, 9 * S);
    assert_eq!(s.routes["users"].circuit_breaker.recovery_timeout, 7 * S);
    // Field by field: the route's other fields come from below.
    assert_eq!(s.routes["users"].circuit_breaker.failure_threshold, 4);
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
            "half_open_success_threshold": n,
            "half_open_max_requests": n,
            "half_open_probe_timeout": n,
            "failure_reset_timeout": n,
            "max_concurrent_requests": n,
            "failure_status_codes": [400 + n],
            "ignored_status_codes": [500 + n],
            "failure_grpc_status": [n],
            "count_connect_failures": n % 2 == 0,
        })
    };
    let expect = |n: u32| BreakerPolicy {
        enabled: n % 2 == 0,
        failure_threshold: n,
        recovery_timeout: u64::from(n) * S,
        half_open_success_threshold: n,
        half_open_max_requests: n,
        half_open_probe_timeout: u64::from(n) * S,
        failure_reset_timeout: u64::from(n) * S,
        max_concurrent_requests: n,
        failure_status_codes: StatusSet::codes(&[400 + n as u16]),
        ignored_status_codes: StatusSet::codes(&[500 + n as u16]),
        failure_grpc_status: GrpcSet::of(&[n]),
        count_connect_failures: n % 2 == 0,
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
    assert_eq!(s.routes["r"].circuit_breaker, expect(4));
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
    assert_eq!(
        error_env("", &[("MARTY_RESILIENCE_FOO", "1")]),
        "MARTY_RESILIENCE_FOO: unknown variable, expected MARTY_RESILIENCE_SERVICE_NAME, \
         MARTY_RESILIENCE_ENVIRONMENT or MARTY_RESILIENCE_CIRCUIT_BREAKER_<FIELD>"
    );
    assert_eq!(
        error_env("", &[("MARTY_RESILIENCE_RETRY_ATTEMPTS", "3")]),
        "MARTY_RESILIENCE_RETRY_ATTEMPTS: unknown variable (this version of the filter has no \
         retry or failure_injection fields yet)"
    );
    assert_eq!(
        error_env("", &[("MARTY_RESILIENCE_FAILURE_INJECTION_RATE", "3")]),
        "MARTY_RESILIENCE_FAILURE_INJECTION_RATE: unknown variable (this version of the filter \
         has no retry or failure_injection fields yet)"
    );
    assert_eq!(
        error_env("", &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FOO", "1")]),
        format!(
            "MARTY_RESILIENCE_CIRCUIT_BREAKER_FOO: unknown field, expected one of: {CB_FIELDS}"
        )
    );
}

#[test]
fn invalid_variable_values_name_the_variable() {
    assert_eq!(
        error_env(
            "",
            &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0")]
        ),
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD: expected an integer >= 1, got 0"
    );
    assert_eq!(
        error_env(
            "",
            &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "five")]
        ),
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD: expected an integer >= 1, got \"five\""
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
        let config = json!({"circuit_breaker": {"recovery_timeout": v}}).to_string();
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
        "routes.users.circuit_breaker.failure_threshold: expected an integer >= 1, got -2"
    );
}

#[test]
fn integers_must_be_whole_and_in_range() {
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_threshold": 0}}"#),
        "circuit_breaker.failure_threshold: expected an integer >= 1, got 0"
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"half_open_success_threshold": 2.5}}"#),
        "circuit_breaker.half_open_success_threshold: expected an integer >= 1, got 2.5"
    );
    assert_eq!(
        error(r#"{"circuit_breaker": {"failure_threshold": "5"}}"#),
        "circuit_breaker.failure_threshold: expected an integer >= 1, got \"5\""
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
        cb(r#"{"circuit_breaker": {"failure_threshold": 4294967295}}"#).failure_threshold,
        u32::MAX
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
         circuit_breaker, retry, failure_injection, routes"
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
fn reserved_sections_accept_only_an_empty_object() {
    let s = parse(
        r#"{"retry": {}, "failure_injection": {},
            "routes": {"users": {"retry": {}, "failure_injection": {}}}}"#,
    );
    assert_eq!(s.defaults, Environment::Production.preset());
    assert_eq!(
        error(r#"{"retry": {"attempts": 3}}"#),
        "retry.attempts: unknown field (this section takes no fields yet)"
    );
    assert_eq!(
        error(r#"{"routes": {"users": {"failure_injection": {"abort": 1}}}}"#),
        "routes.users.failure_injection.abort: unknown field (this section takes no fields yet)"
    );
    assert_eq!(
        error(r#"{"retry": true}"#),
        "retry: expected an object, got true"
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
        "routes.default: \"default\" is the bucket of unconfigured routes; configure it at the top level"
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
        format!("routes.{long}: a route name must be at most 128 bytes")
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
    assert_eq!(s.routes["orders"], s.defaults);
    assert_eq!(
        s.routes["users"].circuit_breaker,
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
         expected an integer >= 1, got -2"
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
        let policy = BreakerPolicy {
            enabled: rng.gen(),
            failure_threshold: rng.gen_range(1..=u32::MAX),
            recovery_timeout: duration(rng),
            half_open_success_threshold: rng.gen_range(1..=1000),
            half_open_max_requests: rng.gen_range(1..=MAX_HALF_OPEN_REQUESTS),
            half_open_probe_timeout: duration(rng),
            failure_reset_timeout: duration(rng),
            max_concurrent_requests: rng.gen(),
            failure_status_codes: failure,
            ignored_status_codes: StatusSet::codes(&codes),
            failure_grpc_status: GrpcSet::of(&[rng.gen_range(0..17), rng.gen_range(0..17)]),
            count_connect_failures: rng.gen(),
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
