//! `marty explain`: the policy each bucket resolves to, with the layer every value came from.
//!
//! The filter resolves a route in layers, each overriding field by field: the `environment`
//! preset, the plugin JSON's top level, the `MARTY_RESILIENCE_*` variables, the plugin JSON's
//! `routes.<name>` entry, the route's Envoy metadata, and last the `MARTY_FAILURE_INJECTION`
//! switch. The values printed are the filter's own resolution (`Settings::parse`,
//! `routes::resolve`); the sources come from replaying the layers with the core's public
//! patches: a value's source is the last layer that names its field, or failing that the last
//! layer that changed it.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use marty_resilience_core::config::{RoutePatch, RoutePolicy, Settings, DEFAULT_ROUTE};
use marty_resilience_core::routes;
use marty_resilience_core::NANOS_PER_SEC;
use serde_json::{json, Map, Value};

use crate::source::{merged_env, PluginSource};

#[derive(Clone, Debug, PartialEq)]
struct Source {
    layer: &'static str,
    from: String,
}

impl Source {
    fn new(layer: &'static str, from: impl Into<String>) -> Self {
        Self {
            layer,
            from: from.into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"layer": self.layer, "from": self.from})
    }
}

/// One layer of a route's resolution: the policy after it, and the fields it names.
struct Layer {
    policy: RoutePolicy,
    /// Field paths the layer names (as in `RoutePolicy::to_json`), with the source to print.
    named: Vec<(String, Source)>,
    /// The source for fields this layer changed without naming them.
    fallback: Source,
}

pub struct Request<'a> {
    pub source: &'a PluginSource,
    pub env: &'a [(String, String)],
    pub routes: &'a [String],
    pub metadata: &'a [(String, Value)],
}

/// The explanation as JSON: `{ service_name, environment, mode, health, buckets: { route:
/// { bucket, policy: {section: {field: {value, source}}}, retry_delays, ... } } }`.
pub fn explain(req: &Request<'_>) -> Result<Value> {
    let env = merged_env(req.source, req.env);
    let settings = match Settings::parse(&req.source.config, &env) {
        Ok(s) => s,
        Err(e) => bail!(
            "{}: {}{e}",
            req.source.location,
            crate::validate::REJECT_PREFIX
        ),
    };
    let root: Map<String, Value> = serde_json::from_slice::<Value>(&req.source.config)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();

    let base = base_layers(&settings, &root, &env)?;

    // The top level (under "default": the policy of every bucket not in `routes`, each named
    // route or destination getting its own breaker with it), every entry of the plugin JSON,
    // routes asked for, routes with metadata.
    let mut metadata: BTreeMap<String, Value> = req.source.route_metadata.iter().cloned().collect();
    metadata.extend(req.metadata.iter().cloned());
    let mut names: Vec<String> = vec![DEFAULT_ROUTE.to_string()];
    names.extend(settings.routes.keys().cloned());
    names.extend(metadata.keys().filter(|k| !k.is_empty()).cloned());
    names.extend(req.routes.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));

    let mut buckets = Map::new();
    for name in names {
        buckets.insert(
            name.clone(),
            explain_route(&settings, &root, &base, &env, &name, metadata.get(&name)),
        );
    }

    Ok(json!({
        "file": req.source.location.to_string(),
        "service_name": top_value(json!(settings.service_name), &root, &env, "service_name", "MARTY_RESILIENCE_SERVICE_NAME"),
        "environment": top_value(json!(settings.environment.name()), &root, &env, "environment", "MARTY_RESILIENCE_ENVIRONMENT"),
        "mode": top_value(json!(match settings.mode {
            marty_resilience_core::config::Mode::Downstream => "downstream",
            marty_resilience_core::config::Mode::Upstream => "upstream",
        }), &root, &env, "mode", ""),
        "health": health(&settings, &root),
        "buckets": buckets,
    }))
}

/// The preset, the plugin JSON's top level, and the variables: the layers every route shares.
fn base_layers(
    settings: &Settings,
    root: &Map<String, Value>,
    env: &[(String, String)],
) -> Result<Vec<Layer>> {
    let env_name = settings.environment.name();
    let preset = settings.environment.preset();
    let mut layers = vec![Layer {
        policy: preset.clone(),
        named: Vec::new(),
        fallback: Source::new(
            "preset",
            format!("environment {env_name} (config/presets/{env_name}.json)"),
        ),
    }];

    let sections: Map<String, Value> = root
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "circuit_breaker" | "retry" | "failure_injection"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut top = preset;
    RoutePatch::parse(&Value::Object(sections.clone()), "")
        .map_err(|e| anyhow::anyhow!("replaying the plugin JSON's top level: {e}"))?
        .apply(&mut top);
    layers.push(Layer {
        policy: top,
        named: key_paths(&Value::Object(sections), "")
            .into_iter()
            .map(|p| (p.clone(), Source::new("plugin JSON", p)))
            .collect(),
        fallback: Source::new("plugin JSON", "(top level)"),
    });

    // The variables' layer is the filter's own resolution without routes and without the
    // injection switch (which comes last, after the routes).
    let mut without_routes = root.clone();
    without_routes.remove("routes");
    let env_without_switch: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "MARTY_FAILURE_INJECTION")
        .cloned()
        .collect();
    let with_vars = Settings::parse(
        Value::Object(without_routes).to_string().as_bytes(),
        &env_without_switch,
    )
    .map_err(|e| anyhow::anyhow!("replaying the variables: {e}"))?;
    layers.push(Layer {
        policy: with_vars.defaults,
        named: env
            .iter()
            .filter_map(|(k, _)| Some((variable_path(k)?, Source::new("variable", k.clone()))))
            .collect(),
        fallback: Source::new("variable", "MARTY_RESILIENCE_*"),
    });
    Ok(layers)
}

fn explain_route(
    settings: &Settings,
    root: &Map<String, Value>,
    base: &[Layer],
    env: &[(String, String)],
    name: &str,
    metadata: Option<&Value>,
) -> Value {
    let resolution = routes::resolve(settings, name, metadata);
    let bucket = resolution.route.bucket.clone();
    let mut layers: Vec<&Layer> = base.iter().collect();
    let mut extra: Vec<Layer> = Vec::new();
    let mut current = base
        .last()
        .map(|l| l.policy.clone())
        .unwrap_or_else(|| settings.defaults.clone());

    let path = format!("routes.{name}");
    if let Some(entry) = root.get("routes").and_then(|r| r.get(name)) {
        if let Ok(patch) = RoutePatch::parse(entry, &path) {
            patch.apply(&mut current);
            extra.push(Layer {
                policy: current.clone(),
                named: key_paths(entry, "")
                    .into_iter()
                    .map(|p| {
                        let from = format!("{path}.{p}");
                        (p, Source::new("route entry", from))
                    })
                    .collect(),
                fallback: Source::new("route entry", path.clone()),
            });
        }
    }
    if let (Some(meta), None) = (metadata, &resolution.metadata_error) {
        let meta_path = format!("route_metadata[{name}].filter_metadata[marty.resilience]");
        if let Ok(patch) = RoutePatch::parse(meta, &meta_path) {
            patch.apply(&mut current);
            extra.push(Layer {
                policy: current.clone(),
                named: key_paths(meta, "")
                    .into_iter()
                    .map(|p| {
                        let from = format!("{meta_path}.{p}");
                        (p, Source::new("route metadata", from))
                    })
                    .collect(),
                fallback: Source::new("route metadata", meta_path.clone()),
            });
        }
    }
    if let Some((_, v)) = env.iter().find(|(k, _)| k == "MARTY_FAILURE_INJECTION") {
        extra.push(Layer {
            policy: resolution.route.policy.clone(),
            named: vec![(
                "failure_injection.enabled".to_string(),
                Source::new("variable", format!("MARTY_FAILURE_INJECTION={v}")),
            )],
            fallback: Source::new("variable", "MARTY_FAILURE_INJECTION"),
        });
    }
    layers.extend(extra.iter());

    let policy = &resolution.route.policy;
    let annotated = annotate(&policy.to_json(), "", &layers);
    let mut out = json!({
        "bucket": bucket,
        "stat_name": resolution.route.stat_name,
        "policy": annotated,
        "retry_delays": retry_delays(policy),
    });
    if bucket != name {
        out["note"] = json!(format!(
            "route {name:?} is neither in the plugin JSON nor annotated: it shares the {DEFAULT_ROUTE} bucket"
        ));
    }
    if let Some(e) = resolution.metadata_error {
        out["metadata_ignored"] = json!(format!(
            "the filter ignores this route's metadata (and logs why): {e}"
        ));
    }
    out
}

/// Replaces every leaf of `resolved` with `{value, source}`.
fn annotate(resolved: &Value, at: &str, layers: &[&Layer]) -> Value {
    match resolved {
        Value::Object(map) if !map.is_empty() => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), annotate(v, &join(at, k), layers)))
                .collect(),
        ),
        leaf => json!({"value": leaf, "source": source_of(at, layers).to_json()}),
    }
}

fn source_of(leaf: &str, layers: &[&Layer]) -> Source {
    let mut source = layers
        .first()
        .map(|l| l.fallback.clone())
        .unwrap_or_else(|| Source::new("preset", ""));
    let mut previous: Option<Value> = None;
    for layer in layers {
        let value = layer.policy.to_json().pointer(&pointer(leaf)).cloned();
        let named = layer.named.iter().find(|(p, _)| covers(p, leaf));
        if let Some((_, s)) = named {
            source = s.clone();
        } else if previous.is_some() && value != previous {
            source = layer.fallback.clone();
        }
        previous = value;
    }
    source
}

/// Whether a field named by a layer (`circuit_breaker.failure_status_codes`,
/// `failure_injection.method_specific_rates`) is, holds, or sits inside `leaf`.
fn covers(named: &str, leaf: &str) -> bool {
    named == leaf
        || leaf.starts_with(&format!("{named}."))
        || named.starts_with(&format!("{leaf}."))
}

fn pointer(path: &str) -> String {
    path.split('.')
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// The leaf paths of a configuration object (arrays and empty objects are leaves).
fn key_paths(value: &Value, at: &str) -> Vec<String> {
    match value {
        Value::Object(map) if !map.is_empty() => map
            .iter()
            .flat_map(|(k, v)| key_paths(v, &join(at, k)))
            .collect(),
        _ if at.is_empty() => Vec::new(),
        _ => vec![at.to_string()],
    }
}

/// The policy field a variable sets (docs/configuration.md, "Environment variables").
fn variable_path(name: &str) -> Option<String> {
    if name == "MARTY_FAILURE_INJECTION_RATE" {
        return Some("failure_injection.base_failure_rate".to_string());
    }
    let rest = name.strip_prefix("MARTY_RESILIENCE_")?;
    let lower = |s: &str| s.to_ascii_lowercase();
    if let Some(f) = rest.strip_prefix("CIRCUIT_BREAKER_") {
        return Some(format!("circuit_breaker.{}", lower(f)));
    }
    if let Some(f) = rest.strip_prefix("RETRY_BUDGET_") {
        return Some(format!("retry.budget.{}", lower(f)));
    }
    if let Some(f) = rest.strip_prefix("RETRY_") {
        return Some(format!("retry.{}", lower(f)));
    }
    if let Some(f) = rest.strip_prefix("FAILURE_INJECTION_") {
        for (prefix, object) in [
            ("ABORT_", "abort"),
            ("DELAY_", "delay"),
            ("HEADER_TRIGGER_", "header_trigger"),
        ] {
            if let Some(inner) = f.strip_prefix(prefix) {
                return Some(format!("failure_injection.{object}.{}", lower(inner)));
            }
        }
        return Some(format!("failure_injection.{}", lower(f)));
    }
    None
}

/// The delay before each retry, written out: what `backoff_strategy` and its parameters give.
fn retry_delays(policy: &RoutePolicy) -> Value {
    let retry = &policy.retry;
    let secs = |ns: u64| ns as f64 / NANOS_PER_SEC as f64;
    let delays: Vec<Value> = (1..=retry.max_retries())
        .map(|k| {
            // A failure ratio of 0.5 is where `adaptive` neither grows nor shrinks.
            json!({
                "retry": k,
                "attempt": k + 1,
                "min_seconds": secs(retry.backoff.min_delay(k, 0.5)),
                "max_seconds": secs(retry.backoff.delay(k, 0.5, 0.0)),
            })
        })
        .collect();
    json!({
        "value": delays,
        "source": Source::new(
            "computed",
            format!(
                "retry.backoff_strategy ({}), base_delay, max_delay, multiplier, polynomial_degree, jitter; \
                 adaptive at a failure ratio of 0.5; applied only where the filter is also an upstream \
                 HTTP filter with mode \"upstream\" (docs/retries.md)",
                retry.backoff.strategy.name()
            ),
        )
        .to_json(),
    })
}

fn top_value(
    value: Value,
    root: &Map<String, Value>,
    env: &[(String, String)],
    key: &str,
    variable: &str,
) -> Value {
    let source = if !variable.is_empty() && env.iter().any(|(k, _)| k == variable) {
        Source::new("variable", variable)
    } else if root.contains_key(key) {
        Source::new("plugin JSON", key)
    } else {
        Source::new("default", "the filter's built-in default")
    };
    json!({"value": value, "source": source.to_json()})
}

fn health(settings: &Settings, root: &Map<String, Value>) -> Value {
    let h = &settings.health;
    let given = root.get("health").and_then(Value::as_object);
    let field = |key: &str, value: Value| {
        let source = if given.is_some_and(|g| g.contains_key(key)) {
            Source::new("plugin JSON", format!("health.{key}"))
        } else {
            Source::new("default", "the filter's built-in default")
        };
        json!({"value": value, "source": source.to_json()})
    };
    let sources: Vec<String> = h.allowed_sources.iter().map(|c| c.to_string()).collect();
    json!({
        "enabled": field("enabled", json!(h.enabled)),
        "path": field("path", json!(h.path)),
        "report_path": field("report_path", json!(h.report_path)),
        "allowed_sources": field("allowed_sources", json!(sources)),
    })
}

/// The explanation as a table: one block per bucket, one line per value.
pub fn table(explained: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, name: &str, v: &Value| {
        let value = match &v["value"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let source = format!(
            "{}: {}",
            v["source"]["layer"].as_str().unwrap_or(""),
            v["source"]["from"].as_str().unwrap_or("")
        );
        out.push_str(&format!("  {name:<45} {value:<24} {source}\n"));
    };
    out.push_str(&format!("{}\n", explained["file"].as_str().unwrap_or("")));
    for key in ["service_name", "environment", "mode"] {
        line(&mut out, key, &explained[key]);
    }
    let mut flat = Vec::new();
    flatten(&explained["health"], "health", &mut flat);
    for (name, v) in &flat {
        line(&mut out, name, v);
    }
    if let Some(buckets) = explained["buckets"].as_object() {
        for (route, b) in buckets {
            if route == DEFAULT_ROUTE {
                out.push_str(
                    "\ntop level: every bucket not in `routes` (each named route or destination \
                     cluster gets its own breaker with this policy)\n",
                );
            } else {
                out.push_str(&format!(
                    "\nroute {route:?} (bucket {}, stats <stat_prefix>.route.{}.*)\n",
                    b["bucket"].as_str().unwrap_or(""),
                    b["stat_name"].as_str().unwrap_or("")
                ));
            }
            for key in ["note", "metadata_ignored"] {
                if let Some(n) = b[key].as_str() {
                    out.push_str(&format!("  note: {n}\n"));
                }
            }
            let mut flat = Vec::new();
            flatten(&b["policy"], "", &mut flat);
            for (name, v) in &flat {
                line(&mut out, name, v);
            }
            let delays: Vec<String> = b["retry_delays"]["value"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let (lo, hi) = (
                        d["min_seconds"].as_f64().unwrap_or(0.0),
                        d["max_seconds"].as_f64().unwrap_or(0.0),
                    );
                    if (hi - lo).abs() < 1e-9 {
                        format!("{}ms", (lo * 1000.0).round())
                    } else {
                        format!("{}-{}ms", (lo * 1000.0).round(), (hi * 1000.0).round())
                    }
                })
                .collect();
            out.push_str(&format!(
                "  {:<45} {}\n",
                "retry delays (before retry 1, 2, ...)",
                if delays.is_empty() {
                    "(no retries)".to_string()
                } else {
                    delays.join(", ")
                }
            ));
        }
    }
    out
}

/// `{value, source}` leaves with their dotted paths.
fn flatten<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a Value)>) {
    if v.get("source").is_some() && v.get("value").is_some() {
        out.push((at.to_string(), v));
        return;
    }
    if let Some(map) = v.as_object() {
        for (k, child) in map {
            flatten(child, &join(at, k), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{covers, variable_path};

    #[test]
    fn variables_map_to_the_fields_they_set() {
        let cases = [
            (
                "MARTY_RESILIENCE_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
                "circuit_breaker.failure_threshold",
            ),
            ("MARTY_RESILIENCE_RETRY_BUDGET_RATIO", "retry.budget.ratio"),
            ("MARTY_RESILIENCE_RETRY_BASE_DELAY", "retry.base_delay"),
            (
                "MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER_TOKEN",
                "failure_injection.header_trigger.token",
            ),
            (
                "MARTY_RESILIENCE_FAILURE_INJECTION_ABORT_HTTP_STATUS",
                "failure_injection.abort.http_status",
            ),
            (
                "MARTY_FAILURE_INJECTION_RATE",
                "failure_injection.base_failure_rate",
            ),
        ];
        for (var, field) in cases {
            assert_eq!(variable_path(var).as_deref(), Some(field), "{var}");
        }
        assert_eq!(variable_path("PATH"), None);
    }

    #[test]
    fn a_named_field_covers_its_leaves_and_its_parent_object() {
        assert!(covers(
            "circuit_breaker.failure_threshold",
            "circuit_breaker.failure_threshold"
        ));
        assert!(covers(
            "failure_injection.method_specific_rates",
            "failure_injection.method_specific_rates./a"
        ));
        assert!(covers(
            "failure_injection.method_specific_rates./a",
            "failure_injection.method_specific_rates"
        ));
        assert!(!covers(
            "circuit_breaker.failure_threshold",
            "circuit_breaker.failure_thresholds"
        ));
    }
}
