//! The files under `config/` against the parser, so the schema, the presets, the examples and
//! the documented error messages cannot drift from `marty_resilience_core::config`:
//!
//! - every `config/examples/*.json` and `config/presets/*.json` validates against
//!   `config/marty-resilience.schema.json` and is accepted by [`Settings::parse`];
//! - every `config/invalid/*.json` (`{"config": ..., "error": "..."}`) is rejected by both,
//!   the parser with exactly `error` (a case with `"schema_accepts": "<reason>"` breaks a rule
//!   on resolved values that only the parser checks, and the schema must accept it);
//! - `config/presets/<env>.json` resolves to the code's preset, and spells out every field of
//!   `circuit_breaker`, `retry` and `failure_injection` (nested objects included) with the
//!   preset's value;
//! - the schema's `default`s are the production preset's values, nested objects included
//!   (fault injection has the same defaults in every environment);
//! - the preset tables, the `retry` table and the `failure_injection` table of
//!   `docs/configuration.md` state the code's values;
//! - the schema and the parser accept and reject the same values, field by field.

use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use marty_resilience_core::config::{Environment, HealthSettings, Settings};
use marty_resilience_core::NANOS_PER_SEC;
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
        // A check on resolved values (two fields, possibly from different layers) is the
        // parser's alone; such a case says why the schema accepts it, and the schema must.
        match case.get("schema_accepts") {
            None if validator.is_valid(config) => {
                failures.push(format!("{}: the schema accepts it", name(path)))
            }
            Some(Value::String(_)) if !validator.is_valid(config) => failures.push(format!(
                "{}: says the schema accepts it, but the schema rejects it",
                name(path)
            )),
            Some(other) if !other.is_string() => failures.push(format!(
                "{}: \"schema_accepts\" must be the reason, a string",
                name(path)
            )),
            _ => {}
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

/// The sections a preset file spells out in full, as `RoutePolicy::to_json` names them.
const SECTIONS: [&str; 3] = ["circuit_breaker", "retry", "failure_injection"];

/// The keys of `expected` (an object) that `written` leaves out, one level of nested objects
/// included (`abort.http_status`).
fn left_out(written: &Value, expected: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    let Some(expected) = expected.as_object() else {
        return missing;
    };
    for (key, value) in expected {
        match written.get(key) {
            None => missing.push(key.clone()),
            Some(inner)
                if value.is_object() && !value.as_object().is_some_and(|o| o.is_empty()) =>
            {
                missing.extend(
                    left_out(inner, value)
                        .into_iter()
                        .map(|k| format!("{key}.{k}")),
                );
            }
            Some(_) => {}
        }
    }
    missing.sort();
    missing
}

#[test]
fn preset_files_match_the_code() -> Result<(), String> {
    for env in ENVIRONMENTS {
        let path = config_dir().join(format!("presets/{}.json", env.name()));
        let file = read_json(&path)?;
        let settings = parse(&file).map_err(|e| format!("{}: {e}", path.display()))?;
        assert_eq!(settings.environment, env, "{}", path.display());
        assert_eq!(
            settings.defaults,
            env.preset(),
            "{} resolves to other values than Environment::{env:?}.preset()",
            path.display()
        );

        let resolved = settings.defaults.to_json();
        let preset = env.preset().to_json();
        for section in SECTIONS {
            let expected = &preset[section];
            assert_eq!(
                resolved[section],
                *expected,
                "{}: {section} resolves to other values than Environment::{env:?}.preset()",
                path.display()
            );

            // Every field is spelled out, with the preset's value as written, so the file alone
            // documents the preset (the environment alone would already give the same result).
            let written = file[section]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no {section} section", path.display()));
            let missing = left_out(&file[section], expected);
            assert!(
                missing.is_empty(),
                "{}: {section} leaves out {missing:?}",
                path.display()
            );
            for (field, value) in written {
                let settled = parse(&json!({ section: { field: value } }))
                    .map(|s| s.defaults.to_json())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    same_json(&settled[section][field], &expected[field]),
                    "{}: {section}.{field} is {value}, the preset has {}",
                    path.display(),
                    expected[field]
                );
            }
        }
    }
    Ok(())
}

/// Checks the `default` and `description` of every property of `def` (a schema object) against
/// `code` (the object the code resolves to), descending into nested objects; `path` names the
/// section in messages.
fn check_schema_defaults(def: &Value, code: &Value, path: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let Some(properties) = def["properties"].as_object() else {
        return vec![format!("{path}: no properties in the schema")];
    };
    let Some(code) = code.as_object() else {
        return vec![format!("{path}: the code gives {code}, not an object")];
    };
    let mut in_schema: Vec<&String> = properties.keys().collect();
    let mut in_code: Vec<&String> = code.keys().collect();
    in_schema.sort();
    in_code.sort();
    if in_schema != in_code {
        failures.push(format!(
            "{path} fields: the schema has {in_schema:?}, the code {in_code:?}"
        ));
    }
    for (field, property) in properties {
        let Some(value) = code.get(field) else {
            continue;
        };
        match property.get("default") {
            None => failures.push(format!("{path}.{field} has no default in the schema")),
            Some(default) if !same_json(default, value) => failures.push(format!(
                "{path}.{field}: the schema's default is {default}, the code has {value}"
            )),
            Some(_) => {}
        }
        if !property.get("description").is_some_and(Value::is_string) {
            failures.push(format!("{path}.{field} has no description"));
        }
        if property.get("properties").is_some() {
            failures.extend(check_schema_defaults(
                property,
                value,
                &format!("{path}.{field}"),
            ));
        }
    }
    failures
}

#[test]
fn schema_defaults_are_the_production_preset() -> Result<(), String> {
    let schema = schema()?;
    let production = Environment::Production.preset().to_json();
    let mut failures = Vec::new();
    for (section, def) in [
        ("circuit_breaker", "circuitBreaker"),
        ("retry", "retry"),
        ("failure_injection", "failureInjection"),
    ] {
        failures.extend(check_schema_defaults(
            &schema["$defs"][def],
            &production[section],
            section,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Fault injection is the same, and off, in every environment.
    for env in ENVIRONMENTS {
        assert_eq!(
            env.preset().failure_injection,
            Environment::Production.preset().failure_injection,
            "{env:?}"
        );
        assert!(!env.preset().failure_injection.enabled, "{env:?}");
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
    let users = settings
        .routes
        .get("users")
        .unwrap()
        .circuit_breaker
        .to_json();
    assert_eq!(users["failure_threshold"], 3);
    assert_eq!(users["recovery_timeout"], 5.0);
    assert_eq!(users["failure_reset_timeout"], 60.0);

    // The issue's retry block, as written, on every route.
    let retry = &settings.defaults.retry;
    assert_eq!(settings.routes.get("users").unwrap().retry, *retry);
    assert!(retry.enabled);
    assert_eq!(retry.max_retries(), 2);
    // `retriable-status-codes` [503] adds nothing to `5xx`: left out (one header write less).
    assert_eq!(
        retry.headers(retry.max_retries()),
        vec![
            ("x-envoy-max-retries", "2".to_string()),
            ("x-envoy-retry-on", "5xx,reset,connect-failure".to_string()),
            (
                "x-envoy-retry-grpc-on",
                "unavailable,deadline-exceeded".to_string()
            ),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "2000".to_string()),
        ]
    );
    assert_eq!(retry.backoff.base_delay, 100 * MS);
    assert_eq!(retry.backoff.max_delay, 60 * NANOS_PER_SEC);
    assert_eq!(retry.backoff.strategy.name(), "exponential_jitter");
    assert_eq!(retry.budget.ratio, 0.2);
    assert_eq!(retry.budget.min_retries_per_second, 10);
    assert_eq!(retry.budget.window_ns, 10 * NANOS_PER_SEC);
    assert!(!retry.trust_client_headers);
    Ok(())
}

#[test]
fn retries_example_resolves_as_described() -> Result<(), String> {
    let config = read_json(&config_dir().join("examples/retries.json"))?;
    let settings = parse(&config)?;
    let base = &settings.defaults.retry;
    assert!(base.enabled);
    assert_eq!(base.max_attempts, 3);
    assert_eq!(base.per_try_timeout, 2 * NANOS_PER_SEC);
    assert_eq!(base.budget.ratio, 0.1);
    // The rest is the production preset's.
    let production = Environment::Production.preset().retry;
    assert_eq!(base.backoff, production.backoff);
    assert_eq!(base.budget.window_ns, production.budget.window_ns);

    let cb = &settings.defaults.circuit_breaker;
    assert_eq!(cb.recovery_backoff.name(), "exponential");
    assert_eq!(cb.max_recovery_timeout, 300 * NANOS_PER_SEC);

    assert!(!settings.routes.get("payments").unwrap().retry.enabled);
    let search = &settings.routes.get("search").unwrap().retry;
    assert!(search.enabled);
    assert_eq!(search.max_attempts, 4);
    assert_eq!(search.retriable_status_codes, vec![503, 429]);
    assert_eq!(search.backoff.strategy.name(), "fibonacci");
    assert_eq!(search.backoff.base_delay, 50 * MS);
    assert_eq!(search.backoff.max_delay, 2 * NANOS_PER_SEC);
    // Budget fields are laid over one by one.
    assert_eq!(search.budget.ratio, 0.1);
    assert_eq!(search.budget.min_retries_per_second, 20);
    let get = &settings.routes.get("inventory.v1/Get").unwrap().retry;
    assert_eq!(get.grpc_retry_on, vec!["unavailable", "resource-exhausted"]);
    assert_eq!(get.per_try_timeout, 0);
    assert_eq!(get.retry_on, base.retry_on);
    Ok(())
}

const MS: u64 = NANOS_PER_SEC / 1000;

#[test]
fn chaos_example_resolves_as_described() -> Result<(), String> {
    let config = read_json(&config_dir().join("examples/chaos-testing.json"))?;
    let settings = parse(&config)?;
    assert_eq!(settings.environment, Environment::Testing);
    let fault = &settings.defaults.failure_injection;
    assert!(fault.enabled);
    assert!(
        !fault.enabled_by_env,
        "enabled by configuration, not by MARTY_FAILURE_INJECTION"
    );
    for (path, rate) in [
        ("/health", 0.0),
        ("/health?probe=1", 0.0),
        ("/test", 0.2),
        // Keys without a trailing "/" or "*" match exactly.
        ("/test/x", 0.1),
        ("/users.UserService/GetUser", 0.5),
        // The exact key wins over the prefix "/users.UserService/*".
        ("/users.UserService/ListUsers", 0.3),
        ("/orders", 0.1),
    ] {
        assert_eq!(fault.abort_rate(path), rate, "{path}");
    }
    assert_eq!(fault.abort.http_status, 503);
    assert_eq!(fault.abort.grpc_status, 14);
    assert_eq!(fault.delay.duration, 200 * MS);
    assert_eq!(fault.delay.rate, 0.1);
    assert_eq!(fault.delay.max, 5 * NANOS_PER_SEC);
    assert_eq!(fault.max_active_faults, 50);
    let trigger = &fault.header_trigger;
    assert!(trigger.enabled);
    assert_eq!(trigger.header, "x-failure-inject");
    assert!(trigger.token.is_some());
    assert!(!trigger.propagate);
    // The breaker is the testing preset's.
    assert_eq!(
        settings.defaults.circuit_breaker,
        Environment::Testing.preset().circuit_breaker
    );
    Ok(())
}

#[test]
fn route_scoped_injection_example_resolves_as_described() -> Result<(), String> {
    let config = read_json(&config_dir().join("examples/route-scoped-injection.json"))?;
    let settings = parse(&config)?;
    // Off on the default bucket: only the routes that say so inject.
    let base = &settings.defaults.failure_injection;
    assert!(!base.enabled);
    assert_eq!(base.abort.http_status, 500);
    assert_eq!(base.max_active_faults, 20);

    let users = &settings.routes.get("users").unwrap().failure_injection;
    assert!(users.enabled);
    assert_eq!(users.abort_rate("/users/42"), 0.1);
    assert_eq!(users.abort_rate("/users/health"), 0.0);
    assert_eq!(
        users.abort_rate("/users"),
        0.02,
        "\"/users/\" is a prefix of \"/users/...\" only"
    );
    // Inherited from the top level, field by field.
    assert_eq!(users.abort.http_status, 500);
    assert_eq!(users.abort.grpc_status, 14);
    assert_eq!(users.max_active_faults, 20);

    let reserve = &settings
        .routes
        .get("inventory.v1.Inventory/Reserve")
        .unwrap()
        .failure_injection;
    assert!(reserve.enabled);
    assert_eq!(reserve.abort_rate("/inventory.v1.Inventory/Reserve"), 0.0);
    assert_eq!(
        reserve.abort.grpc_status, 4,
        "DEADLINE_EXCEEDED, named in lower case"
    );
    assert_eq!(reserve.abort.http_status, 500);
    assert_eq!(reserve.delay.duration, NANOS_PER_SEC);
    assert_eq!(reserve.delay.rate, 0.25);
    assert_eq!(reserve.delay.max, 10 * NANOS_PER_SEC, "the default ceiling");

    let checkout = &settings.routes.get("checkout").unwrap();
    assert_eq!(checkout.circuit_breaker.failure_threshold, 3);
    let checkout = &checkout.failure_injection;
    assert!(checkout.enabled);
    assert_eq!(checkout.abort_rate("/checkout"), 0.0);
    assert!(checkout.header_trigger.enabled);
    assert_eq!(
        checkout.header_trigger.header, "x-chaos-checkout",
        "stored lower case"
    );
    assert_eq!(checkout.header_trigger.token, None);
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
    // Status list items, each probed alone (a list is rejected at its first bad item).
    let status_items = [
        json!("5xx"),
        json!("5XX"),
        json!("4xX"),
        json!("1xx"),
        json!(100),
        json!(599),
        json!(503.0),
        json!("100"),
        json!("599"),
        json!("503"),
        json!("6xx"),
        json!("0xx"),
        json!("5x"),
        json!("xx5"),
        json!("5xxx"),
        json!(99),
        json!(600),
        json!(503.5),
        json!("600"),
        json!("099"),
        json!("0503"),
        json!("+503"),
        json!("-503"),
        json!(" 503"),
        json!("503 "),
        json!("5 03"),
        json!("50"),
        json!(-503),
        json!(true),
        json!(null),
        json!(["5xx"]),
    ];
    let mut statuses: Vec<Value> = status_items.iter().map(|item| json!([item])).collect();
    statuses.extend([
        json!(["5xx", 429, "418"]),
        json!([]),
        json!(["5xx", "0503"]),
        json!("5xx"),
        json!({}),
    ]);
    // gRPC codes, each probed alone in a list and as `failure_injection.abort.grpc_status`.
    let grpc_items = [
        json!("UNAVAILABLE"),
        json!("unavailable"),
        json!("Deadline_Exceeded"),
        json!("ok"),
        json!("unauthenticated"),
        json!(" internal "),
        json!(0),
        json!(16),
        json!("0"),
        json!("7"),
        json!("07"),
        json!("00"),
        json!("16"),
        json!(" 14 "),
        json!("+14"),
        json!("-1"),
        json!("014"),
        json!("016"),
        json!("17"),
        json!("99"),
        json!(17),
        json!(-1),
        json!(2.5),
        json!("UNAVAILABLE_"),
        json!("DEADLINE EXCEEDED"),
        json!("TIMEOUT"),
        json!(""),
        json!(" "),
        json!(true),
        json!(null),
    ];
    let mut grpc: Vec<Value> = grpc_items.iter().map(|item| json!([item])).collect();
    grpc.extend([
        // A whole float is an integer in a list.
        json!([14.0]),
        json!(["UNAVAILABLE", "deadline_exceeded", 13, "2"]),
        json!([]),
        json!("UNAVAILABLE"),
    ]);
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

    let rates = [
        json!(0),
        json!(0.0),
        json!(0.05),
        json!(1),
        json!(1.0),
        json!(-0.1),
        json!(1.01),
        json!(2),
        json!("0.5"),
        json!(null),
        json!(true),
    ];
    let http_statuses = [
        json!(200),
        json!(503),
        json!(599),
        json!(503.0),
        json!(199),
        json!(600),
        json!(100),
        json!(-503),
        json!(503.5),
        json!("503"),
        json!(null),
    ];
    let header_names = [
        json!("x-failure-inject"),
        json!("X-Chaos_Test-2"),
        json!("a"),
        json!("h".repeat(64)),
        json!("h".repeat(65)),
        json!(""),
        json!("x chaos"),
        json!("x-chaos:"),
        json!(":path"),
        json!("x.chaos"),
        json!("é"),
        json!(5),
        json!(null),
    ];
    let tokens = [
        json!(null),
        json!("s3cret"),
        json!("t".repeat(256)),
        json!("t".repeat(257)),
        json!(""),
        json!(12345),
        json!(true),
    ];
    let method_rates = [
        json!({}),
        json!({"/health": 0.0, "/test": 0.2, "/users.UserService/GetUser": 0.5}),
        json!({"/": 1}),
        json!({"/users/": 0.1, "/users*": 0.2}),
        json!({ format!("/{}", "p".repeat(255)): 0.5 }),
        json!({ format!("/{}", "p".repeat(256)): 0.5 }),
        json!({"health": 0.1}),
        json!({"": 0.1}),
        json!({" /health": 0.1}),
        json!({"/health": 1.5}),
        json!({"/health": -1}),
        json!({"/health": "0.5"}),
        json!({"/health": null}),
        json!([]),
        json!(null),
        Value::Object((0..256).map(|i| (format!("/m{i}"), json!(0.1))).collect()),
        Value::Object((0..257).map(|i| (format!("/m{i}"), json!(0.1))).collect()),
    ];

    let mut cases: Vec<Value> = Vec::new();
    let mut field = |name: &str, values: &[Value]| {
        for value in values {
            cases.push(json!({ "circuit_breaker": { name: value } }));
        }
    };
    for name in ["half_open_probe_timeout", "failure_reset_timeout"] {
        field(name, &durations);
    }
    let strategies = [
        json!("fixed"),
        json!("linear"),
        json!("exponential"),
        json!("exponential_jitter"),
        json!("fibonacci"),
        json!("polynomial"),
        json!("adaptive"),
        json!("Fixed"),
        json!("EXPONENTIAL"),
        json!("exponential-jitter"),
        json!(" fixed"),
        json!(""),
        json!(1),
        json!(null),
    ];
    field("recovery_backoff", &strategies);
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

    // With the other side of `max_recovery_timeout >= recovery_timeout` out of the way (a check
    // on resolved values that JSON Schema cannot express).
    for d in &durations {
        cases.push(
            json!({ "circuit_breaker": { "recovery_timeout": d, "max_recovery_timeout": 86400 } }),
        );
        cases.push(
            json!({ "circuit_breaker": { "recovery_timeout": "1ms", "max_recovery_timeout": d } }),
        );
    }

    // failure_injection, field by field (nested objects one field at a time).
    let mut fault = |path: &[&str], values: &[Value]| {
        for value in values {
            let mut case = value.clone();
            for key in path.iter().rev() {
                case = json!({ *key: case });
            }
            cases.push(json!({ "failure_injection": case }));
        }
    };
    fault(&["enabled"], &booleans);
    fault(&["base_failure_rate"], &rates);
    fault(&["method_specific_rates"], &method_rates);
    fault(&["abort", "http_status"], &http_statuses);
    fault(&["abort", "grpc_status"], &grpc_items);
    // With the ceiling at its maximum, so only the field's own rule is probed (duration <=
    // max is a check on resolved values that JSON Schema cannot express).
    let with_max: Vec<Value> = durations
        .iter()
        .map(|d| json!({"duration": d, "max": 86400}))
        .collect();
    fault(&["delay"], &with_max);
    fault(&["delay", "rate"], &rates);
    // With a zero duration, for the same reason.
    let with_duration: Vec<Value> = durations
        .iter()
        .map(|m| json!({"duration": 0, "max": m}))
        .collect();
    fault(&["delay"], &with_duration);
    fault(&["max_active_faults"], &integers);
    fault(&["header_trigger", "enabled"], &booleans);
    fault(&["header_trigger", "propagate"], &booleans);
    fault(&["header_trigger", "header"], &header_names);
    fault(&["header_trigger", "token"], &tokens);
    for section in ["abort", "delay", "header_trigger"] {
        fault(
            &[section],
            &[json!({}), json!({"other": 1}), json!([]), json!(null)],
        );
    }
    fault(&["other"], &[json!(1)]);
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
    cases.extend(retry_probes(&durations, &integers, &booleans, &strategies));
    for section in ["retry", "failure_injection"] {
        cases.push(json!({ section: {} }));
        cases.push(json!({ section: { "attempts": 1 } }));
        cases.push(json!({ section: [] }));
        cases.push(json!({ "routes": { "users": { section: {} } } }));
        cases.push(json!({ "routes": { "users": { section: { "attempts": 1 } } } }));
    }
    cases.push(json!({ "routes": { "users": { "failure_injection": { "enabled": true } } } }));
    cases.push(json!({
        "routes": { "users": { "failure_injection": { "delay": { "max": 0 } } } }
    }));

    cases.extend(health_probes());

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

/// Values on both sides of every rule of the `retry` section, field by field (`budget` one field
/// at a time). Not probed: `budget.window` strings over 300 s (`"10m"`: the parser rejects them;
/// the schema bounds only numbers there).
fn retry_probes(
    durations: &[Value],
    integers: &[Value],
    booleans: &[Value],
    strategies: &[Value],
) -> Vec<Value> {
    let mut cases = Vec::new();
    let mut field = |name: &str, values: &[Value]| {
        for value in values {
            cases.push(json!({ "retry": { name: value } }));
        }
    };
    field("enabled", booleans);
    field("trust_client_headers", booleans);
    field("backoff_strategy", strategies);
    field("per_try_timeout", durations);
    let attempts = [
        json!(1),
        json!(3),
        json!(10),
        json!(3.0),
        json!(0),
        json!(11),
        json!(-1),
        json!(2.5),
        json!("3"),
        json!(null),
    ];
    field("max_attempts", &attempts);
    field("polynomial_degree", &attempts);
    let conditions = [
        json!([]),
        json!(["5xx"]),
        json!([
            "5xx",
            "gateway-error",
            "reset",
            "reset-before-request",
            "connect-failure",
            "envoy-ratelimited",
            "retriable-4xx",
            "refused-stream",
            "retriable-status-codes",
            "retriable-headers",
            "http3-post-connect-failure"
        ]),
        json!(["5XX"]),
        json!(["5xx", "5xx"]),
        json!(["timeout"]),
        json!([" reset"]),
        json!(["unavailable"]),
        json!([5]),
        json!([null]),
        json!("5xx"),
        json!({}),
        json!(null),
    ];
    field("retry_on", &conditions);
    let grpc_conditions = [
        json!([]),
        json!(["unavailable", "deadline-exceeded"]),
        json!([
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable"
        ]),
        json!(["UNAVAILABLE"]),
        json!(["deadline_exceeded"]),
        json!(["unavailable", "unavailable"]),
        json!(["5xx"]),
        json!([14]),
        json!("unavailable"),
        json!(null),
    ];
    field("grpc_retry_on", &grpc_conditions);
    let codes = [
        json!([]),
        json!([503]),
        json!([100, 599]),
        json!([503.0]),
        json!([429, 503]),
        json!([99]),
        json!([600]),
        json!([503.5]),
        json!(["503"]),
        json!(["5xx"]),
        json!([503, 503]),
        json!([503, 503.0]),
        json!([-503]),
        json!([null]),
        json!(503),
        json!(null),
    ];
    field("retriable_status_codes", &codes);
    let multipliers = [
        json!(1),
        json!(1.0),
        json!(2.5),
        json!(100),
        json!(0.99),
        json!(0),
        json!(100.5),
        json!(-2),
        json!("2"),
        json!("2.5"),
        json!(" 10.0 "),
        json!("01.5"),
        json!("100"),
        json!("100.0"),
        json!("100.5"),
        json!("0.5"),
        json!("99.99"),
        json!("1."),
        json!(".5"),
        json!("-2"),
        json!("2e1"),
        json!(""),
        json!(true),
        json!(null),
    ];
    field("multiplier", &multipliers);
    let fractions = [
        json!(0),
        json!(0.5),
        json!(1),
        json!(1.01),
        json!(-0.1),
        json!(2),
        json!("0.5"),
        json!("1"),
        json!("1.0"),
        json!("1.5"),
        json!("00.25"),
        json!(".5"),
        json!(""),
        json!(null),
        json!(true),
    ];
    field("jitter", &fractions);
    // The delays, each with the other side of `max_delay >= base_delay` out of the way.
    for d in durations {
        cases.push(json!({ "retry": { "base_delay": d, "max_delay": 86400 } }));
        cases.push(json!({ "retry": { "base_delay": "1ms", "max_delay": d } }));
    }
    let mut budget = |name: &str, values: &[Value]| {
        for value in values {
            cases.push(json!({ "retry": { "budget": { name: value } } }));
        }
    };
    let ratios = [
        json!(0),
        json!(0.2),
        json!(10),
        json!(10.5),
        json!(-0.1),
        json!(11),
        json!("0.2"),
        json!("10"),
        json!("10.0"),
        json!("10.01"),
        json!("9.99"),
        json!("010"),
        json!("11"),
        json!("-1"),
        json!(""),
        json!(null),
    ];
    budget("ratio", &ratios);
    budget("min_retries_per_second", integers);
    let windows = [
        json!(10),
        json!(0.5),
        json!(300),
        json!(300.5),
        json!(301),
        json!(86400),
        json!(0),
        json!(-1),
        json!("10s"),
        json!("5m"),
        json!("300"),
        json!("250ms"),
        json!("0s"),
        json!("1d"),
        json!(null),
        json!(true),
    ];
    budget("window", &windows);
    for value in [json!({}), json!({"other": 1}), json!([]), json!(null)] {
        cases.push(json!({ "retry": { "budget": value } }));
    }
    cases.push(json!({ "retry": { "attempts": 3 } }));
    cases.push(json!({ "routes": { "users": { "retry": { "max_attempts": 3, "budget": { "window": 30 } } } } }));
    cases
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

/// The leaves of a resolved section as `(dotted name, value)`; an empty object is a leaf.
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&name, inner, out);
            }
        }
        _ => out.push((prefix.to_string(), value.clone())),
    }
}

/// docs/configuration.md's `failure_injection` table (| `field` | type | meaning | default |,
/// nested fields dotted) states the defaults the code has in every environment.
#[test]
fn docs_failure_injection_table_matches_the_defaults() -> Result<(), String> {
    let path = config_dir().join("../docs/configuration.md");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut fields = Vec::new();
    leaves(
        "",
        &Environment::Production.preset().to_json()["failure_injection"],
        &mut fields,
    );
    assert!(fields.len() >= 13, "{fields:?}");
    let mut failures = Vec::new();
    for (field, value) in &fields {
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(cells)
            .filter(|row| row.len() == 4 && row[0] == format!("`{field}`"))
            .collect();
        if rows.len() != 1 {
            failures.push(format!(
                "failure_injection.{field}: {} rows in the table",
                rows.len()
            ));
            continue;
        }
        let cell = rows[0][3].trim_matches('`');
        // Durations are written with a unit (`0.25s`), everything else as JSON.
        let written = if field.starts_with("delay.") && field != "delay.rate" {
            cell.strip_suffix('s')
                .and_then(|n| serde_json::from_str::<Value>(n).ok())
        } else {
            serde_json::from_str::<Value>(cell).ok()
        };
        if !written.is_some_and(|w| same_json(&w, value)) {
            failures.push(format!(
                "failure_injection.{field}: the docs say {}, the code {value}",
                rows[0][3]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Values on both sides of every rule of the `health` section. Not probed: `path` and
/// `report_path` both given and equal (the parser rejects it; JSON Schema cannot compare two
/// values) and paths over 256 bytes but not 256 characters (the schema counts characters).
fn health_probes() -> Vec<Value> {
    let booleans = [
        json!(true),
        json!(false),
        json!(0),
        json!("true"),
        json!(null),
    ];
    let paths = [
        json!("/"),
        json!("/resilience/health"),
        json!("/a/b"),
        json!("//"),
        json!("/a%20b"),
        json!("/a\tb"),
        json!("/é"),
        json!(format!("/{}", "p".repeat(255))),
        json!(format!("/{}", "p".repeat(256))),
        json!("/x?y"),
        json!("/x#y"),
        json!("/x y"),
        json!(" /x"),
        json!(""),
        json!("x"),
        json!(5),
        json!(null),
    ];
    // Each probed alone in a list (a list is rejected at its first bad item).
    let sources = [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "0.0.0.0/0",
        "10.1.2.3",
        "10.0.0.0/032",
        "10.0.0.0/0000000008",
        " 10.0.0.0/8",
        "10.0.0.0 /8",
        "\t10.0.0.0",
        "10.0.0.0 ",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/-1",
        "10.0.0.0/8/8",
        "10.0.0.0/ 8",
        "10.0.0.0/8 ",
        "256.0.0.0/8",
        "10.0.0/8",
        "10.00.0.0/8",
        "010.0.0.0/8",
        "1.2.3.4.5",
        "10.0.0.0/8,11.0.0.0/8",
        "::1/128",
        "::/0",
        "::",
        "::1",
        "fd00::/8",
        "2001:db8::/32",
        "2001:DB8::1",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8/64",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1::8",
        "0000:0000::",
        "::ffff:10.0.0.1",
        "::ffff:10.0.0.1/104",
        "::1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4",
        "1::2:3:4:5:1.2.3.4",
        "1:2:3:4:5::1.2.3.4",
        " ::1",
        "::1 /128",
        "::1/0128",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7",
        "1::2::3",
        ":::",
        "1:2:3:4:5:6:7:1.2.3.4",
        "1::2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6::1.2.3.4",
        "1.2.3.4::",
        "::ffff:1.2.3.04",
        "::1/129",
        "::1/128 ",
        "[::1]/128",
        "fe80::1%eth0",
        "12345::",
        "g::1",
        "",
        " ",
        "/8",
    ];
    let mut cases = vec![
        json!({ "health": {} }),
        json!({ "health": [] }),
        json!({ "health": null }),
        json!({ "health": true }),
        json!({ "health": { "other": 1 } }),
        json!({ "health": { "allowed_sources": [] } }),
        json!({ "health": { "allowed_sources": "10.0.0.0/8" } }),
        json!({ "health": { "allowed_sources": [5] } }),
        json!({ "health": { "allowed_sources": [null] } }),
        json!({ "health": { "allowed_sources": ["10.0.0.0/8", "::1/128", "192.168.1.7"] } }),
        json!({ "health": { "allowed_sources": ["10.0.0.0/8", "10.0.0.0/40"] } }),
        // Each path clashing with the other's default.
        json!({ "health": { "path": "/resilience/report" } }),
        json!({ "health": { "report_path": "/resilience/health" } }),
        json!({ "health": { "path": "/resilience/report", "report_path": "/r" } }),
        json!({ "health": { "path": "/h", "report_path": "/resilience/health" } }),
        json!({ "health": { "path": "/h", "report_path": "/r" } }),
        json!({ "routes": { "users": { "health": {} } } }),
    ];
    for value in booleans {
        cases.push(json!({ "health": { "enabled": value } }));
    }
    for value in &paths {
        cases.push(json!({ "health": { "path": value } }));
        cases.push(json!({ "health": { "report_path": value } }));
    }
    for source in sources {
        cases.push(json!({ "health": { "allowed_sources": [source] } }));
    }
    cases
}

/// The schema's `health` defaults and fields are the code's (`HealthSettings::default()`).
#[test]
fn schema_health_defaults_are_the_code() -> Result<(), String> {
    let schema = schema()?;
    let code = HealthSettings::default();
    let resolved = code.to_json();
    let failures = check_schema_defaults(&schema["properties"]["health"], &resolved, "health");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // `{}` and no section at all are the same.
    assert_eq!(parse(&json!({ "health": {} }))?.health, code);
    assert_eq!(parse(&json!({}))?.health, code);
    Ok(())
}

/// docs/configuration.md's `retry` table (| `retry.<field>` | type | meaning | development |
/// production | testing |, `budget` fields dotted) states each preset's values.
#[test]
fn docs_retry_table_matches_the_presets() -> Result<(), String> {
    let path = config_dir().join("../docs/configuration.md");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let presets: Vec<Vec<(String, Value)>> = ENVIRONMENTS
        .iter()
        .map(|env| {
            let mut fields = Vec::new();
            leaves("", &env.preset().to_json()["retry"], &mut fields);
            fields
        })
        .collect();
    assert!(presets[0].len() >= 16, "{:?}", presets[0]);
    let durations = [
        "per_try_timeout",
        "base_delay",
        "max_delay",
        "budget.window",
    ];
    let mut failures = Vec::new();
    for (i, (field, _)) in presets[0].iter().enumerate() {
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(cells)
            .filter(|row| row.len() == 6 && row[0] == format!("`retry.{field}`"))
            .collect();
        if rows.len() != 1 {
            failures.push(format!("retry.{field}: {} rows in the table", rows.len()));
            continue;
        }
        for ((env, fields), cell) in ENVIRONMENTS.iter().zip(&presets).zip(&rows[0][3..]) {
            let value = &fields[i].1;
            let cell = cell.trim_matches('`');
            let written = if durations.contains(&field.as_str()) {
                cell.strip_suffix('s')
                    .and_then(|n| serde_json::from_str::<Value>(n).ok())
            } else {
                serde_json::from_str::<Value>(cell).ok()
            };
            if !written.is_some_and(|w| same_json(&w, value)) {
                failures.push(format!(
                    "retry.{field}, {env:?}: the docs say {cell}, the code {value}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The Marty guide's own configuration loads unchanged and means what the guide says.
#[test]
fn the_guides_configuration_loads_and_means_what_the_guide_says() -> Result<(), String> {
    let parse_file = |name: &str| -> Result<Settings, String> {
        let config = read_json(&config_dir().join(name))?;
        Settings::parse(config.to_string().as_bytes(), &[]).map_err(|e| format!("{name}: {e}"))
    };
    let production = parse_file("examples/guide-production.json")?;
    let policy = &production.defaults;
    assert_eq!(policy.circuit_breaker.failure_threshold, 5);
    assert_eq!(policy.circuit_breaker.recovery_timeout, 30 * NANOS_PER_SEC);
    assert!(policy.circuit_breaker.enable_metrics);
    // A retry section without `enabled` retries, as the guide's does.
    assert!(policy.retry.enabled);
    assert_eq!(policy.retry.max_attempts, 5);
    assert_eq!(policy.retry.backoff.base_delay, NANOS_PER_SEC / 5);
    assert_eq!(policy.retry.backoff.max_delay, 60 * NANOS_PER_SEC);
    assert_eq!(
        policy.retry.backoff.strategy,
        marty_resilience_core::retry::backoff::Strategy::ExponentialJitter
    );
    assert!(policy.retry.backoff.adaptive);
    assert!(!policy.failure_injection.enabled);

    let fields = parse_file("examples/guide-field-names.json")?;
    let policy = &fields.defaults;
    assert_eq!(policy.circuit_breaker.half_open_success_threshold, 2);
    assert_eq!(
        policy.circuit_breaker.failure_reset_timeout,
        60 * NANOS_PER_SEC
    );
    assert_eq!(policy.circuit_breaker.max_concurrent_requests, 10);
    assert!(policy.retry.enabled && policy.retry.enable_circuit_breaker);
    Ok(())
}
