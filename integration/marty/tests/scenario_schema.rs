//! `config/chaos-scenario.schema.json` and marty's own reading of scenarios agree: on every
//! shipped scenario (both accept) and on broken ones (both reject).

mod common;

use common::{describe, files, marty, root};
use serde_json::Value;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("config/chaos-scenario.schema.json"))
        .expect("read the schema");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::draft202012::new(&schema).expect("the schema compiles")
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).expect("YAML")
}

#[test]
fn every_shipped_scenario_satisfies_the_schema_and_marty() {
    let validator = schema();
    let mut scenarios = files("config/scenarios", ".yaml");
    scenarios.extend(files("integration/marty/tests/fixtures", ".yaml"));
    assert!(scenarios.len() >= 7, "{scenarios:?}");
    for path in &scenarios {
        let doc = yaml(&std::fs::read_to_string(root().join(path)).expect("read"));
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{path}: {errors:#?}");
    }
    let mut args = vec!["chaos", "check"];
    args.extend(scenarios.iter().map(String::as_str));
    let out = marty(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn broken_scenarios_are_rejected_by_both() {
    let validator = schema();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = "name: x\nsteps:\n  - name: a\n    traffic: { rate: 5, duration: 1s, path: /users }\n    expect:\n      - breaker: { route: users, state: open }\n";
    assert!(validator.is_valid(&yaml(good)), "the base case is valid");
    let broken = [
        (
            "unknown-field",
            good.replace("rate: 5", "rate: 5, burst: 3"),
        ),
        ("no-rate", good.replace("rate: 5, ", "")),
        (
            "bad-duration",
            good.replace("duration: 1s", "duration: soon"),
        ),
        ("bad-state", good.replace("state: open", "state: ajar")),
        ("unknown-expectation", good.replace("breaker:", "weather:")),
        (
            "path-without-slash",
            good.replace("path: /users", "path: users"),
        ),
        ("no-steps", "name: x\nsteps: []\n".to_string()),
    ];
    for (name, text) in broken {
        assert!(
            !validator.is_valid(&yaml(&text)),
            "the schema accepts {name}:\n{text}"
        );
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &text).expect("write");
        let out = marty(&["chaos", "check", path.to_str().expect("utf-8 path")]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "marty accepts {name}: {}",
            describe(&out)
        );
    }
}
