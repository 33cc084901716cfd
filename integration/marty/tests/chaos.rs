//! `marty chaos run --local` against the real topology: a shipped scenario passes and writes
//! its report; an expectation that cannot hold fails the run and says what was seen.
//! Needs the module (./scripts/build) and Envoy (ENVOY_BIN, or ./scripts/install-envoy).

mod common;

use common::{describe, marty, stdout};
use serde_json::Value;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn a_shipped_scenario_passes_and_writes_its_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report");
    let out = marty(&[
        "chaos",
        "run",
        "--local",
        "config/scenarios/breaker-opens-on-failures.yaml",
        "--report-dir",
        report.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("1 of 1 scenario(s) passed"),
        "{}",
        describe(&out)
    );

    let json: Value =
        serde_json::from_str(&read(&report.join("report.json"))).expect("report.json is JSON");
    assert_eq!(json["passed"], true);
    let scenario = &json["scenarios"][0];
    assert_eq!(scenario["name"], "breaker-opens-on-failures");
    let steps = scenario["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2);
    // The breaker really opened: most of the failing step was answered by the breaker.
    assert!(
        steps[1]["rejected"].as_u64().expect("rejected") > 0,
        "{scenario}"
    );

    let junit = read(&report.join("junit.xml"));
    assert!(
        junit.contains("<testsuite name=\"breaker-opens-on-failures\""),
        "{junit}"
    );
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");

    let svg = read(&report.join("breaker-opens-on-failures.svg"));
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains("breaker breaker"),
        "the breaker's lane is drawn"
    );
    assert_eq!(
        scenario["timeline"].as_str().map(|t| t.ends_with(".svg")),
        Some(true)
    );
}

#[test]
fn an_expectation_that_cannot_hold_fails_the_run_and_says_what_was_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report");
    let out = marty(&[
        "chaos",
        "run",
        "--local",
        "integration/marty/tests/fixtures/breaker-stays-closed.yaml",
        "--report-dir",
        report.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("FAIL breaker of route server is closed (stats): seen "))
        .unwrap_or_else(|| panic!("no failed expectation in\n{}", describe(&out)));
    assert!(!line.ends_with("seen closed"), "{line}");

    let json: Value =
        serde_json::from_str(&read(&report.join("report.json"))).expect("report.json is JSON");
    assert_eq!(json["passed"], false);
    let expectation = &json["scenarios"][0]["steps"][0]["expectations"][0];
    assert_eq!(expectation["passed"], false);
    assert_eq!(
        expectation["expectation"],
        "breaker of route server is closed (stats)"
    );
    let seen = expectation["seen"].as_str().expect("seen");
    assert!(seen == "open" || seen == "half_open", "seen {seen}");

    let junit = read(&report.join("junit.xml"));
    assert!(
        junit.contains(&format!(
            "<failure message=\"expected breaker of route server is closed (stats); seen {seen}\"/>"
        )),
        "{junit}"
    );
}
