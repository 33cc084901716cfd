//! The `retry` section of `config::Settings`: fields, layers (budget field by field), the
//! `MARTY_RESILIENCE_RETRY_*` variables, checks on resolved values and the exact error texts.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{MS, S};
use marty_resilience_core::config::retry::RetryPolicy;
use marty_resilience_core::config::{Environment, Settings};
use marty_resilience_core::retry::backoff::Strategy;
use serde_json::json;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_env(config: &str, pairs: &[(&str, &str)]) -> Settings {
    Settings::parse(config.as_bytes(), &env(pairs))
        .unwrap_or_else(|e| panic!("{config} with {pairs:?} was rejected: {e}"))
}

fn retry(config: &str) -> RetryPolicy {
    parse_env(config, &[]).defaults.retry
}

fn error_env(config: &str, pairs: &[(&str, &str)]) -> String {
    match Settings::parse(config.as_bytes(), &env(pairs)) {
        Ok(s) => panic!(
            "{config} with {pairs:?} was accepted: {:?}",
            s.defaults.retry
        ),
        Err(e) => e.to_string(),
    }
}

fn error(config: &str) -> String {
    error_env(config, &[])
}

#[test]
fn every_field_is_read() {
    let r = retry(
        r#"{"retry": {"enabled": true, "max_attempts": 4, "retry_on": ["gateway-error", "refused-stream"],
            "grpc_retry_on": ["internal"], "retriable_status_codes": [429, 503.0],
            "per_try_timeout": "1500ms", "base_delay": "25ms", "max_delay": "3s",
            "backoff_strategy": "polynomial", "multiplier": "1.5", "polynomial_degree": 3,
            "jitter": 0.25, "budget": {"ratio": 1.5, "min_retries_per_second": 0, "window": "1m"},
            "trust_client_headers": true}}"#,
    );
    assert!(r.enabled);
    assert_eq!(r.max_attempts, 4);
    assert_eq!(r.retry_on, ["gateway-error", "refused-stream"]);
    assert_eq!(r.grpc_retry_on, ["internal"]);
    assert_eq!(r.retriable_status_codes, [429, 503]);
    assert_eq!(r.per_try_timeout, 1500 * MS);
    assert_eq!(r.backoff.base_delay, 25 * MS);
    assert_eq!(r.backoff.max_delay, 3 * S);
    assert_eq!(r.backoff.strategy, Strategy::Polynomial);
    assert_eq!(r.backoff.multiplier, 1.5);
    assert_eq!(r.backoff.polynomial_degree, 3);
    assert_eq!(r.backoff.jitter, 0.25);
    assert_eq!(r.budget.ratio, 1.5);
    assert_eq!(r.budget.min_retries_per_second, 0);
    assert_eq!(r.budget.window_ns, 60 * S);
    assert!(r.trust_client_headers);
    assert_eq!(
        r.headers(r.max_retries()),
        vec![
            ("x-envoy-max-retries", "3".to_string()),
            (
                "x-envoy-retry-on",
                "gateway-error,refused-stream".to_string()
            ),
            ("x-envoy-retry-grpc-on", "internal".to_string()),
            ("x-envoy-retriable-status-codes", "429,503".to_string()),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "1500".to_string()),
        ]
    );
}

#[test]
fn each_preset_keeps_its_retry_values_and_an_empty_section_changes_nothing() {
    for env in [
        Environment::Development,
        Environment::Production,
        Environment::Testing,
    ] {
        let config = json!({"environment": env.name(), "retry": {}}).to_string();
        assert_eq!(retry(&config), env.preset().retry, "{env:?}");
        assert!(!env.preset().retry.enabled);
    }
}

#[test]
fn layers_override_field_by_field_and_budget_fields_one_by_one() {
    let config = r#"{
        "retry": {"enabled": true, "max_attempts": 2, "budget": {"ratio": 0.5}},
        "routes": {"users": {"retry": {"max_attempts": 4, "budget": {"window": 30}}}}
    }"#;
    let s = parse_env(
        config,
        &[
            ("MARTY_RESILIENCE_RETRY_MAX_ATTEMPTS", "3"),
            ("MARTY_RESILIENCE_RETRY_BUDGET_MIN_RETRIES_PER_SECOND", "5"),
            ("MARTY_RESILIENCE_RETRY_RETRY_ON", "5xx, reset"),
            ("MARTY_RESILIENCE_RETRY_RETRIABLE_STATUS_CODES", "503,429"),
            ("MARTY_RESILIENCE_RETRY_BACKOFF_STRATEGY", "fibonacci"),
            ("MARTY_RESILIENCE_RETRY_BASE_DELAY", "50ms"),
            ("MARTY_RESILIENCE_RETRY_JITTER", "0.1"),
        ],
    );
    let top = &s.defaults.retry;
    assert!(top.enabled);
    assert_eq!(top.max_attempts, 3, "the variable wins over the top level");
    assert_eq!(top.retry_on, ["5xx", "reset"]);
    assert_eq!(top.retriable_status_codes, [503, 429]);
    assert_eq!(top.backoff.strategy, Strategy::Fibonacci);
    assert_eq!(top.backoff.base_delay, 50 * MS);
    assert_eq!(top.backoff.jitter, 0.1);
    assert_eq!(top.budget.ratio, 0.5);
    assert_eq!(top.budget.min_retries_per_second, 5);
    assert_eq!(top.budget.window_ns, 10 * S);

    let users = &s.routes.get("users").unwrap().retry;
    assert_eq!(
        users.max_attempts, 4,
        "the route entry wins over the variable"
    );
    assert_eq!(users.budget.ratio, 0.5);
    assert_eq!(users.budget.min_retries_per_second, 5);
    assert_eq!(users.budget.window_ns, 30 * S);
    assert_eq!(users.retry_on, top.retry_on);

    // Route metadata over the route entry, with a fractional number as Envoy's YAML gives it.
    let meta = json!({"retry": {"enabled": false, "budget": {"ratio": "0.05"}}});
    let p = s.with_metadata("users", &meta).unwrap().retry;
    assert!(!p.enabled);
    assert_eq!(p.max_attempts, 4);
    assert_eq!(p.budget.ratio, 0.05);
    assert_eq!(p.budget.window_ns, 30 * S);
}

#[test]
fn max_delay_is_checked_on_the_resolved_policy() {
    // Each layer alone is fine; together they are not.
    assert_eq!(
        error(r#"{"retry": {"base_delay": 2}, "routes": {"users": {"retry": {"max_delay": 1}}}}"#),
        "routes.users.retry.max_delay: must be >= base_delay (2s), got 1s"
    );
    assert_eq!(
        error_env(
            r#"{"retry": {"max_delay": "100ms"}}"#,
            &[("MARTY_RESILIENCE_RETRY_BASE_DELAY", "0.2")]
        ),
        "retry.max_delay: must be >= base_delay (0.2s), got 0.1s"
    );
    let s = parse_env("", &[]);
    assert_eq!(
        s.with_metadata("users", &json!({"retry": {"base_delay": "2m"}}))
            .unwrap_err()
            .to_string(),
        "route_metadata[users].filter_metadata[marty.resilience].retry.max_delay: must be >= \
         base_delay (120s), got 60s"
    );
    // Equal is fine, and codes without their condition are accepted.
    let r = retry(
        r#"{"retry": {"base_delay": 1, "max_delay": 1, "retry_on": ["5xx"], "retriable_status_codes": [503]}}"#,
    );
    assert_eq!(r.backoff.max_delay, S);
}

#[test]
fn recovery_backoff_fields_are_read_and_checked() {
    let s = parse_env(
        r#"{"circuit_breaker": {"recovery_backoff": "exponential", "max_recovery_timeout": "10m"}}"#,
        &[(
            "MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_BACKOFF",
            "fibonacci",
        )],
    );
    let cb = &s.defaults.circuit_breaker;
    assert_eq!(cb.recovery_backoff, Strategy::Fibonacci);
    assert_eq!(cb.max_recovery_timeout, 600 * S);
    // The ceiling only binds a growing open period: a fixed one may exceed it.
    assert_eq!(
        error(
            r#"{"circuit_breaker": {"recovery_timeout": 600, "recovery_backoff": "exponential"}}"#
        ),
        "circuit_breaker.max_recovery_timeout: must be >= recovery_timeout (600s), got 300s"
    );
    let fixed = parse_env(r#"{"circuit_breaker": {"recovery_timeout": 600}}"#, &[]);
    assert_eq!(fixed.defaults.circuit_breaker.recovery_timeout, 600 * S);
    for bad in ["exponential_jitter", "adaptive", "Exponential"] {
        assert_eq!(
            error_env(
                "",
                &[("MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_BACKOFF", bad)]
            ),
            format!(
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_RECOVERY_BACKOFF: expected one of \"fixed\", \
                 \"linear\", \"exponential\", \"fibonacci\", \"polynomial\", got \"{bad}\""
            )
        );
    }
}

#[test]
fn field_errors_name_the_path_and_what_was_expected() {
    let cases = [
        (
            r#"{"retry": {"max_attempts": 11}}"#,
            "retry.max_attempts: expected an integer between 1 and 10, got 11",
        ),
        (
            r#"{"retry": {"retry_on": "5xx"}}"#,
            "retry.retry_on: expected a list of Envoy retry_on conditions, got \"5xx\"",
        ),
        (
            r#"{"retry": {"grpc_retry_on": ["unavailable", "unavailable"]}}"#,
            "retry.grpc_retry_on[1]: \"unavailable\" is listed twice",
        ),
        (
            r#"{"retry": {"retriable_status_codes": [503, 503.0]}}"#,
            "retry.retriable_status_codes[1]: 503 is listed twice",
        ),
        (
            r#"{"retry": {"retriable_status_codes": ["503"]}}"#,
            "retry.retriable_status_codes[0]: expected an integer between 100 and 599, got \"503\"",
        ),
        (
            r#"{"retry": {"per_try_timeout": -1}}"#,
            "retry.per_try_timeout: expected a duration >= 0 (seconds as a number, or a string \
             like \"250ms\" or \"30s\"; at most 1 day), got -1",
        ),
        (
            r#"{"retry": {"base_delay": 0}}"#,
            "retry.base_delay: expected a duration > 0 (seconds as a number, or a string like \
             \"250ms\" or \"30s\"; at most 1 day), got 0",
        ),
        (
            r#"{"retry": {"multiplier": 0.5}}"#,
            "retry.multiplier: expected a number between 1 and 100, got 0.5",
        ),
        (
            r#"{"retry": {"polynomial_degree": 11}}"#,
            "retry.polynomial_degree: expected an integer between 1 and 10, got 11",
        ),
        (
            r#"{"retry": {"budget": {"ratio": 11}}}"#,
            "retry.budget.ratio: expected a number between 0 and 10, got 11",
        ),
        (
            r#"{"retry": {"budget": {"min_retries_per_second": -1}}}"#,
            "retry.budget.min_retries_per_second: expected an integer >= 0, got -1",
        ),
        (
            r#"{"retry": {"budget": {"window": "10m"}}}"#,
            "retry.budget.window: expected a duration > 0 and at most 300 s (seconds as a number, \
             or a string like \"10s\" or \"5m\"), got \"10m\"",
        ),
        (
            r#"{"retry": {"budget": 1}}"#,
            "retry.budget: expected an object, got 1",
        ),
        (
            r#"{"retry": {"trust_client_headers": "yes"}}"#,
            "retry.trust_client_headers: expected a boolean, got \"yes\"",
        ),
    ];
    for (config, want) in cases {
        assert_eq!(error(config), want, "{config}");
    }
}

#[test]
fn unknown_retry_variables_list_the_section_s_variables() {
    let vars = "MARTY_RESILIENCE_RETRY_ENABLED, MARTY_RESILIENCE_RETRY_MAX_ATTEMPTS, \
        MARTY_RESILIENCE_RETRY_RETRY_ON, MARTY_RESILIENCE_RETRY_GRPC_RETRY_ON, \
        MARTY_RESILIENCE_RETRY_RETRIABLE_STATUS_CODES, MARTY_RESILIENCE_RETRY_PER_TRY_TIMEOUT, \
        MARTY_RESILIENCE_RETRY_BASE_DELAY, MARTY_RESILIENCE_RETRY_MAX_DELAY, \
        MARTY_RESILIENCE_RETRY_BACKOFF_STRATEGY, MARTY_RESILIENCE_RETRY_MULTIPLIER, \
        MARTY_RESILIENCE_RETRY_POLYNOMIAL_DEGREE, MARTY_RESILIENCE_RETRY_JITTER, \
        MARTY_RESILIENCE_RETRY_BUDGET_RATIO, MARTY_RESILIENCE_RETRY_BUDGET_MIN_RETRIES_PER_SECOND, \
        MARTY_RESILIENCE_RETRY_BUDGET_WINDOW, MARTY_RESILIENCE_RETRY_TRUST_CLIENT_HEADERS, \
        MARTY_RESILIENCE_RETRY_COUNT_ATTEMPTS, MARTY_RESILIENCE_RETRY_ENABLE_CIRCUIT_BREAKER, MARTY_RESILIENCE_RETRY_ENABLE_ADAPTIVE_DELAYS";
    for name in [
        "MARTY_RESILIENCE_RETRY_ATTEMPTS",
        "MARTY_RESILIENCE_RETRY_BUDGET",
        "MARTY_RESILIENCE_RETRY_BUDGET_PERCENT",
        "MARTY_RESILIENCE_RETRY_",
    ] {
        assert_eq!(
            error_env("", &[(name, "1")]),
            format!("{name}: unknown variable, expected one of: {vars}")
        );
    }
    assert_eq!(
        error_env("", &[("MARTY_RESILIENCE_RETRY_RETRY_ON", "5xx,timeout")]),
        "MARTY_RESILIENCE_RETRY_RETRY_ON[1]: expected an Envoy retry_on condition (one of: 5xx, \
         gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, \
         retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, \
         http3-post-connect-failure), got \"timeout\""
    );
    // An empty list variable is an empty list.
    let s = parse_env("", &[("MARTY_RESILIENCE_RETRY_GRPC_RETRY_ON", "")]);
    assert!(s.defaults.retry.grpc_retry_on.is_empty());
}

#[test]
fn resolved_retry_policies_round_trip_through_to_json() {
    let config = r#"{"retry": {"enabled": true, "max_attempts": 2, "retry_on": [],
        "per_try_timeout": 0, "base_delay": "1ms", "max_delay": 0.5, "backoff_strategy": "adaptive",
        "multiplier": 3, "jitter": 0, "budget": {"ratio": 0, "window": 0.1}}}"#;
    let policy = parse_env(config, &[]).defaults;
    let written = json!({"retry": policy.to_json()["retry"]}).to_string();
    assert_eq!(retry(&written), policy.retry, "{written}");
    assert_eq!(policy.to_json()["retry"]["budget"]["window"], 0.1);
    assert_eq!(policy.to_json()["retry"]["backoff_strategy"], "adaptive");
}
