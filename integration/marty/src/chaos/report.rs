//! The run's report: a text summary, JSON, and JUnit XML for CI systems.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::runner::ScenarioResult;

pub fn text(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        let _ = writeln!(
            out,
            "{} {} ({:.1}s) {}",
            if r.passed { "PASS" } else { "FAIL" },
            r.name,
            r.duration_s,
            r.file
        );
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  error: {e}");
        }
        for s in &r.steps {
            let latency = s
                .latency
                .as_ref()
                .map(|l| format!(", p50 {:.0}ms p99 {:.0}ms", l.p50_ms, l.p99_ms))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  step {}: {} request(s): {} ok, {} error(s), {} rejected{latency}",
                s.name, s.requests, s.ok, s.errors, s.rejected
            );
            for e in &s.expectations {
                let _ = writeln!(
                    out,
                    "    {} {}: seen {}",
                    if e.passed { "ok  " } else { "FAIL" },
                    e.expectation,
                    e.seen
                );
            }
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let _ = writeln!(out, "{passed} of {} scenario(s) passed", results.len());
    out
}

pub fn json(results: &[ScenarioResult], timelines: &[Option<String>]) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .zip(timelines.iter().chain(std::iter::repeat(&None)))
        .map(|(r, t)| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Some(t) = t {
                v["timeline"] = json!(t);
            }
            v
        })
        .collect();
    json!({
        "passed": results.iter().all(|r| r.passed),
        "scenarios": scenarios,
    })
}

/// JUnit XML: a test suite per scenario, a test case per expectation.
pub fn junit(results: &[ScenarioResult]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total: usize = results.iter().map(cases).sum();
    let failures: usize = results.iter().map(failed_cases).sum();
    let _ = writeln!(
        out,
        "<testsuites name=\"marty chaos\" tests=\"{total}\" failures=\"{failures}\">"
    );
    for r in results {
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">",
            xml(&r.name),
            cases(r),
            failed_cases(r),
            r.duration_s
        );
        if let Some(e) = &r.error {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{}\" name=\"run\"><failure message=\"{}\"/></testcase>",
                xml(&r.name),
                xml(e)
            );
        }
        for s in &r.steps {
            for e in &s.expectations {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{}: {}\" time=\"{:.3}\"",
                    xml(&r.name),
                    xml(&s.name),
                    xml(&e.expectation),
                    s.ended_s - s.started_s
                );
                if e.passed {
                    out.push_str("/>\n");
                } else {
                    let _ = writeln!(
                        out,
                        "><failure message=\"expected {}; seen {}\"/></testcase>",
                        xml(&e.expectation),
                        xml(&e.seen)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn cases(r: &ScenarioResult) -> usize {
    r.steps.iter().map(|s| s.expectations.len()).sum::<usize>() + usize::from(r.error.is_some())
}

fn failed_cases(r: &ScenarioResult) -> usize {
    r.steps
        .iter()
        .flat_map(|s| s.expectations.iter())
        .filter(|e| !e.passed)
        .count()
        + usize::from(r.error.is_some())
}

pub fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => " ".to_string(),
            c => c.to_string(),
        })
        .collect()
}
