//! `marty validate` against the repository's own configurations, and against Envoy's verdict.

mod common;

use common::{describe, files, marty, root, stdout};
use marty_integration::{Envoy, EnvoyConfig, Upstream};
use serde_json::Value;

const REJECTED: &str = "invalid marty-resilience configuration: ";

#[test]
fn every_example_bootstrap_and_istio_manifest_is_accepted() {
    let mut args = vec!["validate".to_string()];
    args.extend(files("config/examples", ".json"));
    args.extend(files("envoy/istio", ".yaml"));
    args.extend(files("envoy", ".yaml"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = marty(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    for example in files("config/examples", ".json") {
        assert!(
            text.contains(&format!("ok    {example}: accepted")),
            "{example} not reported accepted:\n{text}"
        );
    }
    // The manifest with the WasmPlugin is really read, not skipped.
    assert!(
        text.contains(
            "ok    envoy/istio/wasmplugin.yaml [WasmPlugin shop/marty-resilience]: accepted"
        ),
        "{text}"
    );
    assert!(!text.contains(REJECTED), "{text}");
}

#[test]
fn every_invalid_case_is_rejected_with_the_error_it_documents() {
    let cases = files("config/invalid", ".json");
    let mut args = vec!["validate".to_string()];
    args.extend(cases.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = marty(&args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    for case in &cases {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(root().join(case)).expect("read case"))
                .expect("case is JSON");
        let error = json["error"].as_str().expect("case has an error");
        let line = format!("{case} [its \"config\"]: {REJECTED}{error}");
        assert!(
            text.lines().any(|l| l == line),
            "expected the line\n  {line}\nin:\n{text}"
        );
    }
    assert!(!text.contains("warn"), "{text}");
}

#[test]
fn one_invalid_file_among_valid_ones_fails_the_run() {
    let out = marty(&[
        "validate",
        "config/examples/minimal.json",
        "config/invalid/retry-max-attempts-zero.json",
        "config/examples/retries.json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        stdout(&out).matches(REJECTED).count(),
        1,
        "{}",
        describe(&out)
    );
}

#[test]
fn variables_given_with_env_are_checked_as_the_vm_would() {
    let ok = marty(&[
        "validate",
        "config/examples/minimal.json",
        "--env",
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD=7",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    let bad = marty(&[
        "validate",
        "config/examples/minimal.json",
        "--env",
        "MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_MAX_REQUESTS=100",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    assert!(
        stdout(&bad).contains(&format!(
            "config/examples/minimal.json: {REJECTED}MARTY_RESILIENCE_CIRCUIT_BREAKER_HALF_OPEN_MAX_REQUESTS: expected an integer between 1 and 64, got 100"
        )),
        "{}",
        describe(&bad)
    );
}

#[test]
fn bad_route_metadata_in_a_bootstrap_is_a_warning_not_a_rejection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = std::fs::read_to_string(root().join("envoy/demo.yaml"))
        .expect("read demo.yaml")
        .replace("failure_threshold: 5", "failure_threshold: many");
    let path = dir.path().join("demo.yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = marty(&["validate", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("route \"orders\": metadata the filter will ignore (and log): route_metadata[orders].filter_metadata[marty.resilience].circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got \"many\""),
        "{}",
        describe(&out)
    );
}

/// The line `marty validate` prints for a rejected file is the one Envoy logs when the filter
/// refuses the same configuration: checked for a few cases against a real Envoy.
#[test]
fn rejections_read_as_envoy_logs_them() {
    let upstream = Upstream::start();
    for case in [
        "config/invalid/retry-max-attempts-zero.json",
        "config/invalid/failure-injection-header-name-invalid.json",
        "config/invalid/unknown-top-level-field.json",
        "config/invalid/max-recovery-timeout-below-recovery-timeout.json",
    ] {
        let out = marty(&["validate", case]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let text = stdout(&out);
        let message = text
            .lines()
            .find_map(|l| l.split_once(REJECTED).map(|(_, m)| m.to_string()))
            .unwrap_or_else(|| panic!("{case}: no rejection line in {text}"));

        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(root().join(case)).expect("read case"))
                .expect("case is JSON");
        // The same bytes marty checked: the case's `config`, compact.
        let config = EnvoyConfig::new(upstream.port()).plugin_config(json["config"].to_string());
        let error = Envoy::start(&config)
            .err()
            .unwrap_or_else(|| panic!("Envoy accepted {case}"));
        let logged = format!("{REJECTED}{message}");
        assert!(
            error.log.lines().any(|l| l.ends_with(&logged)),
            "{case}: Envoy's log has no line ending in\n  {logged}\n{}",
            error.log
        );
    }
}

#[test]
fn a_variable_rejection_reads_as_envoy_logs_it() {
    let var = "MARTY_RESILIENCE_RETRY_MAX_ATTEMPTS";
    let out = marty(&[
        "validate",
        "config/examples/minimal.json",
        "--env",
        &format!("{var}=0"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let message = text
        .lines()
        .find_map(|l| l.split_once(REJECTED).map(|(_, m)| m.to_string()))
        .unwrap_or_else(|| panic!("no rejection line in {text}"));
    let upstream = Upstream::start();
    let error = Envoy::start(&EnvoyConfig::new(upstream.port()).vm_env(var, "0"))
        .err()
        .expect("Envoy rejects the variable");
    let logged = format!("{REJECTED}{message}");
    assert!(
        error.log.lines().any(|l| l.ends_with(&logged)),
        "Envoy's log has no line ending in\n  {logged}\n{}",
        error.log
    );
}
