//! The files under `config/` against the parser, so the schema, the presets, the examples and
//! the documented error messages cannot drift from `marty_resilience_core::config`:
//!
//! - every `config/examples/*.json` and `config/presets/*.json` validates against
//!   `config/marty-resilience.schema.json` and is accepted by [`Settings::parse`];
//! - every `config/invalid/*.json` (`{"config": ..., "error": "..."}`) is rejected by both,
//!   the parser with exactly `error`;
//! - `config/presets/<env>.json` resolves to the code's preset, field for field;
//! - the schema's `default`s are the production preset's values;
//! - the preset tables of `docs/configuration.md` state the code's values;
//! - the schema and the parser accept and reject the same values, field by field.

use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use marty_resilience_core::config::{Environment, Settings};
use serde_json::{json, Value};

const ENVIRONMENTS: [Environment; 3] = [
    Environment::Development,
    Environment::Production,
    Environment::Testing,
];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The `*.json` files of `config/<dir>`, sorted.
fn json_files(dir: &str) -> Result<Vec<PathBuf>, String> {
    let dir = config_dir().join(dir);
    let entries = fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn schema() -> Result<Value, String> {
    read_json(&config_dir().join("marty-resilience.schema.json"))
}

/// A validator of `#/$defs/<def>` of the schema, or of the whole schema when `def` is `None`.
fn validator(def: Option<&str>) -> Result<Validator, String> {
    let schema = schema()?;
    jsonschema::meta::validate(&schema)
        .map_err(|e| format!("the schema is not a valid JSON Schema: {e}"))?;
    let target = match def {
        None => schema,
        Some(def) => json!({
            "$schema": schema.get("$schema"),
            "$defs": schema.get("$defs"),
            "$ref": format!("#/$defs/{def}"),
        }),
    };
    jsonschema::draft202012::new(&target).map_err(|e| format!("the schema does not compile: {e}"))
}

fn schema_errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn parse(config: &Value) -> Result<Settings, String> {
    Settings::parse(config.to_string().as_bytes(), &[]).map_err(|e| e.to_string())
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// JSON equality where `30` and `30.0` are the same number.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn examples_and_presets_validate_and_parse() -> Result<(), String> {
    let validator = validator(None)?;
    let examples = json_files("examples")?;
    assert!(
        examples.len() >= 5,
        "expected at least 5 examples, found {}",
        examples.len()
    );
    let mut failures = Vec::new();
    for path in examples.iter().chain(&json_files("presets")?) {
        let config = read_json(path)?;
        let errors = schema_errors(&validator, &config);
        if !errors.is_empty() {
            failures.push(format!("{}: schema rejects it: {errors:?}", path.display()));
        }
        if let Err(e) = parse(&config) {
            failures.push(format!("{}: parser rejects it: {e}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn invalid_configs_are_rejected_by_schema_and_parser_with_the_documented_error(
) -> Result<(), String> {
    let validator = validator(None)?;
    let files = json_files("invalid")?;
    assert!(
        files.len() >= 10,
        "expected at least 10 invalid configs, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let case = read_json(path)?;
        let (Some(config), Some(Value::String(error))) = (case.get("config"), case.get("error"))
        else {
            failures.push(format!(
                "{}: expected {{\"config\": ..., \"error\": \"...\"}}",
                path.display()
            ));
            continue;
        };
        if validator.is_valid(config) {
            failures.push(format!("{}: the schema accepts it", name(path)));
        }
        match parse(config) {
            Ok(_) => failures.push(format!("{}: the parser accepts it", name(path))),
            Err(got) if got != *error => failures.push(format!(
                "{}: the parser says\n    {got}\n  the file says\n    {error}",
                name(path)
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn preset_files_match_the_code() -> Result<(), String> {
    for env in ENVIRONMENTS {
        let path = config_dir().join(format!("presets/{}.json", env.name()));
        let file = read_json(&path)?;
        let settings = parse(&file).map_err(|e| format!("{}: {e}", path.display()))?;
        assert_eq!(settings.environment, env, "{}", path.display());

        let expected = env.preset().circuit_breaker.to_json();
        assert_eq!(
            settings.defaults.circuit_breaker.to_json(),
            expected,
            "{} resolves to other values than Environment::{env:?}.preset()",
            path.display()
        );

        // Every field is spelled out, with the preset's value as written, so the file alone
        // documents the preset (the environment alone would already give the same result).
        let written = file["circuit_breaker"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: no circuit_breaker section", path.display()));
        let expected = expected.as_object().expect("to_json gives an object");
        let mut missing: Vec<&String> = expected
            .keys()
            .filter(|k| !written.contains_key(*k))
            .collect();
        missing.sort();
        assert!(
            missing.is_empty(),
            "{} leaves out {missing:?}",
            path.display()
        );
        for (field, value) in written {
            let settled = parse(&json!({ "circuit_breaker": { field: value } }))
                .map(|s| s.defaults.circuit_breaker.to_json())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                same_json(&settled[field], &expected[field]),
                "{}: circuit_breaker.{field} is {value}, the preset has {}",
                path.display(),
                expected[field]
            );
        }
    }
    Ok(())
}

#[test]
fn schema_defaults_are_the_production_preset() -> Result<(), String> {
    let schema = schema()?;
    let production = Environment::Production.preset().circuit_breaker.to_json();
    let production = production.as_object().expect("to_json gives an object");
    let properties = schema["$defs"]["circuitBreaker"]["properties"]
        .as_object()
        .expect("$defs.circuitBreaker.properties");

    let mut in_schema: Vec<&String> = properties.keys().collect();
    let mut in_code: Vec<&String> = production.keys().collect();
    in_schema.sort();
    in_code.sort();
    assert_eq!(in_schema, in_code, "circuit_breaker fields: schema vs code");

    for (field, property) in properties {
        let default = property
            .get("default")
            .unwrap_or_else(|| panic!("circuit_breaker.{field} has no default in the schema"));
        assert!(
            same_json(default, &production[field]),
            "circuit_breaker.{field}: the schema's default is {default}, production has {}",
            production[field]
        );
        assert!(
            property.get("description").is_some_and(Value::is_string),
            "circuit_breaker.{field} has no description"
        );
    }

    assert_eq!(Environment::default(), Environment::Production);
    assert_eq!(schema["properties"]["environment"]["default"], "production");
    assert_eq!(
        parse(&json!({})).map(|s| s.environment),
        Ok(Environment::Production)
    );
    Ok(())
}

#[test]
fn example_route_entries_are_valid_route_metadata() -> Result<(), String> {
    let validator = validator(Some("routeEntry"))?;
    for path in json_files("examples")? {
        let mut config = read_json(&path)?;
        let settings = parse(&config).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(Value::Object(routes)) = config.as_object_mut().and_then(|c| c.remove("routes"))
        else {
            continue;
        };
        // The same configuration without its `routes`: the entries then come from metadata.
        let without_routes = parse(&config).map_err(|e| format!("{}: {e}", path.display()))?;
        for (route, entry) in routes {
            let errors = schema_errors(&validator, &entry);
            assert!(
                errors.is_empty(),
                "{}: routes.{route}: {errors:?}",
                name(&path)
            );
            // The entry given as the route's Envoy metadata resolves to the same policy.
            let from_metadata = without_routes
                .with_metadata(&route, &entry)
                .map_err(|e| format!("{}: {e}", name(&path)))?;
            assert_eq!(Some(&from_metadata), settings.routes.get(&route), "{route}");
        }
    }
    Ok(())
}

#[test]
fn issue_example_resolves_as_described() -> Result<(), String> {
    let config = read_json(&config_dir().join("examples/issue-user-service.json"))?;
    let settings = parse(&config)?;
    assert_eq!(settings.service_name, "user_service");
    assert_eq!(settings.environment, Environment::Production);
    assert_eq!(
        settings.defaults.circuit_breaker.to_json(),
        Environment::Production.preset().circuit_breaker.to_json()
    );
    let users = settings.routes["users"].circuit_breaker.to_json();
    assert_eq!(users["failure_threshold"], 3);
    assert_eq!(users["recovery_timeout"], 5.0);
    assert_eq!(users["failure_reset_timeout"], 60.0);
    Ok(())
}

/// Values on both sides of every rule the schema encodes: the schema and the parser must agree.
#[test]
fn schema_and_parser_agree_on_field_values() -> Result<(), String> {
    let validator = validator(None)?;
    let durations = [
        json!(30),
        json!(0.25),
        json!(86400),
        json!(0),
        json!(-1),
        json!(86400.5),
        json!("30s"),
        json!("250ms"),
        json!("1.5m"),
        json!("1h"),
        json!(" 2 s "),
        json!("5 ms"),
        json!("007"),
        json!("24h"),
        json!("24.0h"),
        json!("1440m"),
        json!("86400000ms"),
        json!("86400"),
        json!("0"),
        json!("0.0s"),
        json!("000ms"),
        json!("1."),
        json!(".5"),
        json!("1.5.2s"),
        json!("5 x"),
        json!("5S"),
        json!("2d"),
        json!("1e3"),
        json!("-1s"),
        json!("+1s"),
        json!("25h"),
        json!("24.5h"),
        json!("1441m"),
        json!("86401"),
        json!("86400.001s"),
        json!("86400001ms"),
        json!(""),
        json!(true),
        json!(null),
        json!([30]),
    ];
    let statuses = [
        json!(["5xx"]),
        json!(["5XX", "4xX", "1xx"]),
        json!([100, 599, "100", "599", "0503", "+503"]),
        json!([]),
        json!(["6xx"]),
        json!(["0xx"]),
        json!(["5x"]),
        json!(["xx5"]),
        json!([99]),
        json!([600]),
        json!(["600"]),
        json!(["099"]),
        json!([" 503"]),
        json!(["-503"]),
        json!([-503]),
        json!([true]),
        json!([null]),
        json!("5xx"),
        json!({}),
    ];
    let grpc = [
        json!([
            "UNAVAILABLE",
            "unavailable",
            "Deadline_Exceeded",
            "ok",
            "unauthenticated"
        ]),
        json!([0, 16, "0", "16", " 14 ", "+14", "014", " internal "]),
        json!([]),
        json!([17]),
        json!(["17"]),
        json!([-1]),
        json!(["-1"]),
        json!(["UNAVAILABLE_"]),
        json!(["DEADLINE EXCEEDED"]),
        json!(["TIMEOUT"]),
        json!([""]),
        json!([true]),
        json!("UNAVAILABLE"),
    ];
    let integers = [
        json!(1),
        json!(0),
        json!(-1),
        json!(64),
        json!(65),
        json!(5.0),
        json!(2.5),
        json!(4294967295_u64),
        json!(4294967296_u64),
        json!("5"),
        json!(null),
    ];
    let booleans = [
        json!(true),
        json!(false),
        json!(0),
        json!("true"),
        json!(null),
    ];

    let mut cases: Vec<Value> = Vec::new();
    let mut field = |name: &str, values: &[Value]| {
        for value in values {
            cases.push(json!({ "circuit_breaker": { name: value } }));
        }
    };
    for name in [
        "recovery_timeout",
        "half_open_probe_timeout",
        "failure_reset_timeout",
    ] {
        field(name, &durations);
    }
    field("failure_status_codes", &statuses);
    field("ignored_status_codes", &statuses);
    field("failure_grpc_status", &grpc);
    for name in [
        "failure_threshold",
        "half_open_success_threshold",
        "half_open_max_requests",
        "max_concurrent_requests",
    ] {
        field(name, &integers);
    }
    field("enabled", &booleans);
    field("count_connect_failures", &booleans);
    for env in [
        "production",
        "Production",
        "TESTING",
        "dEvElOpMeNt",
        "staging",
        "prod",
        " production",
        "",
    ] {
        cases.push(json!({ "environment": env }));
    }
    cases.push(json!({ "environment": 1 }));
    cases.push(json!({ "service_name": "" }));
    cases.push(json!({ "service_name": null }));
    for route in [
        "users",
        "Default",
        "default",
        "",
        "a.b/c d",
        &"r".repeat(128),
        &"r".repeat(129),
    ] {
        cases.push(json!({ "routes": { route: {} } }));
        cases.push(json!({ "routes": { route: { "circuit_breaker": {} } } }));
    }
    for section in ["retry", "failure_injection"] {
        cases.push(json!({ section: {} }));
        cases.push(json!({ section: { "attempts": 1 } }));
        cases.push(json!({ section: [] }));
        cases.push(json!({ "routes": { "users": { section: {} } } }));
        cases.push(json!({ "routes": { "users": { section: { "attempts": 1 } } } }));
    }

    let mut disagreements = Vec::new();
    for case in &cases {
        let by_schema = validator.is_valid(case);
        let by_parser = parse(case);
        if by_schema != by_parser.is_ok() {
            disagreements.push(format!(
                "{case}: schema {}, parser {}",
                if by_schema { "accepts" } else { "rejects" },
                by_parser.map_or_else(|e| format!("rejects ({e})"), |_| "accepts".into())
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    Ok(())
}

/// The cells of a markdown table row, trimmed, without the outer pipes.
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    if !line.starts_with('|') {
        return Vec::new();
    }
    line.trim_matches('|')
        .split('|')
        .map(|cell| cell.trim().to_string())
        .collect()
}

/// A preset value as docs/configuration.md writes it (`30s`, `5`, `["5xx"]`), without spaces.
fn doc_value(field: &str, value: &Value) -> String {
    match value.as_f64() {
        Some(secs) if field.ends_with("_timeout") => format!("`{secs}s`"),
        _ => format!("`{value}`"),
    }
}

fn squeeze(cell: &str) -> String {
    cell.chars().filter(|c| !c.is_whitespace()).collect()
}

/// docs/configuration.md states the preset values twice (the field table and the environments
/// table); both must say what the code does.
#[test]
fn docs_tables_match_the_presets() -> Result<(), String> {
    let path = config_dir().join("../docs/configuration.md");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let presets: Vec<(Environment, Value)> = ENVIRONMENTS
        .iter()
        .map(|env| (*env, env.preset().circuit_breaker.to_json()))
        .collect();
    let fields: Vec<String> = presets[0]
        .1
        .as_object()
        .expect("to_json gives an object")
        .keys()
        .cloned()
        .collect();
    let mut failures = Vec::new();

    // The field table: | `field` | type | meaning | development | production | testing |
    for field in &fields {
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(cells)
            .filter(|row| row.len() == 6 && row[0] == format!("`{field}`"))
            .collect();
        if rows.len() != 1 {
            failures.push(format!("{field}: {} rows in the field table", rows.len()));
            continue;
        }
        for ((env, preset), cell) in presets.iter().zip(&rows[0][3..]) {
            let want = doc_value(field, &preset[field]);
            if squeeze(cell) != squeeze(&want) {
                failures.push(format!(
                    "{field}, {env:?}: the docs say {cell}, the code {want}"
                ));
            }
        }
    }

    // The environments table: a header naming fields, then one row per environment.
    let lines: Vec<Vec<String>> = text.lines().map(cells).collect();
    let header = lines
        .iter()
        .find(|row| row.first().is_some_and(|c| c == "environment"))
        .ok_or("no environments table")?;
    for (env, preset) in &presets {
        let row = lines
            .iter()
            .find(|row| row.first() == Some(&format!("`{}`", env.name())))
            .ok_or_else(|| format!("no row for {env:?} in the environments table"))?;
        let mut checked = 0;
        for (name, cell) in header.iter().zip(row) {
            let field = name.trim_matches('`');
            if let Some(value) = preset.get(field) {
                checked += 1;
                let want = doc_value(field, value);
                if squeeze(cell) != squeeze(&want) {
                    failures.push(format!(
                        "environments table, {env:?}, {field}: the docs say {cell}, the code {want}"
                    ));
                }
            }
        }
        assert!(
            checked >= 6,
            "the environments table names {checked} fields"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
