//! The plugin configuration: the Envoy plugin `configuration` string (JSON shaped like the Marty
//! YAML), the VM's `MARTY_RESILIENCE_*` environment variables, and per-route entries.
//!
//! Precedence, lowest first: the `environment` preset, the plugin JSON's top-level sections,
//! the environment variables, the plugin JSON's `routes.<name>` entry, and the route's own Envoy
//! metadata (`filter_metadata["marty.resilience"]`). Each layer overrides field by field.
//! Everything is validated at load; an error names the field path and what was expected.

mod breaker;
pub mod codes;
mod fault;
mod json;
mod presets;
pub mod retry;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

pub use breaker::{BreakerPatch, BreakerPolicy, MAX_HALF_OPEN_REQUESTS, RECOVERY_STRATEGIES};
pub use codes::{GrpcSet, StatusSet};
pub use fault::{FaultPatch, MAX_METHOD_RATES};
pub use retry::RetryPatch;

use crate::fault::FaultPolicy;
use crate::health::Cidr;
pub use presets::Environment;

use json::{err, expected, join, object, string, unknown_field};

/// A configuration rejected at load, naming where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path (`routes.users.circuit_breaker.failure_threshold`) or variable name.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Everything that applies to one route.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePolicy {
    pub circuit_breaker: BreakerPolicy,
    pub failure_injection: FaultPolicy,
    pub retry: retry::RetryPolicy,
}

impl RoutePolicy {
    /// The resolved policy as configuration would write it (reports, round trips).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "circuit_breaker": self.circuit_breaker.to_json(),
            "retry": retry::to_json(&self.retry),
            "failure_injection": fault::to_json(&self.failure_injection),
        })
    }

    /// Checks what only the resolved policy can show (values from different layers together);
    /// `prefix` is the path of the layer that resolved it (`""`, `routes.users`, ...).
    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        breaker::validate(&self.circuit_breaker, &join(prefix, "circuit_breaker"))?;
        retry::validate(&self.retry, &join(prefix, "retry"))?;
        fault::validate(&self.failure_injection, &join(prefix, "failure_injection"))
    }
}

/// One layer's partial route settings (a `routes` entry, a metadata entry, the top level).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePatch {
    pub circuit_breaker: BreakerPatch,
    pub failure_injection: FaultPatch,
    pub retry: RetryPatch,
}

const ROUTE_FIELDS: &[&str] = &["circuit_breaker", "retry", "failure_injection"];
const TOP_FIELDS: &[&str] = &[
    "service_name",
    "environment",
    "circuit_breaker",
    "retry",
    "failure_injection",
    "health",
    "mode",
    "routes",
];

/// Name of the shared bucket for requests on routes that are neither configured nor annotated.
pub const DEFAULT_ROUTE: &str = "default";

/// Longest route name accepted; names end up in stat names and shared-data keys.
pub const MAX_ROUTE_NAME_LEN: usize = 128;

impl RoutePatch {
    /// Parses the sections of a route entry (or of the top level) from `map`, ignoring `skip`.
    fn parse_sections(
        map: &Map<String, Value>,
        prefix: &str,
        allowed: &[&str],
        skip: &[&str],
    ) -> Result<Self, ConfigError> {
        let mut patch = Self::default();
        for (key, value) in map {
            let path = join(prefix, key);
            match key.as_str() {
                "circuit_breaker" => {
                    for (field, v) in object(value, &path)? {
                        patch.circuit_breaker.set(field, v, &join(&path, field))?;
                    }
                }
                "failure_injection" => {
                    for (field, v) in object(value, &path)? {
                        patch.failure_injection.set(field, v, &join(&path, field))?;
                    }
                }
                "retry" => {
                    for (field, v) in object(value, &path)? {
                        patch.retry.set(field, v, &join(&path, field))?;
                    }
                }
                other if skip.contains(&other) => {}
                _ => return Err(unknown_field(&path, allowed)),
            }
        }
        Ok(patch)
    }

    /// Parses a route entry: `{ "circuit_breaker": {...}, "retry": {...}, ... }`.
    pub fn parse(value: &Value, path: &str) -> Result<Self, ConfigError> {
        Self::parse_sections(object(value, path)?, path, ROUTE_FIELDS, &[])
    }

    pub fn apply(&self, policy: &mut RoutePolicy) {
        self.circuit_breaker.apply(&mut policy.circuit_breaker);
        self.failure_injection.apply(&mut policy.failure_injection);
        self.retry.apply(&mut policy.retry);
    }
}

/// The validated plugin configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub service_name: String,
    pub environment: Environment,
    /// Top-level policy: the `default` bucket, and the base of every route.
    pub defaults: RoutePolicy,
    /// Routes named in the plugin JSON, by Envoy route name, fully resolved.
    pub routes: BTreeMap<String, RoutePolicy>,
    /// `MARTY_FAILURE_INJECTION`: switches injection on (or off) on every route, whatever the
    /// layers below say.
    pub injection_switch: Option<bool>,
    pub health: HealthSettings,
    pub mode: Mode,
}

/// Where the filter sits in Envoy's chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// An HTTP filter before the router: breaker, faults, retry headers, health.
    #[default]
    Downstream,
    /// An upstream HTTP filter of the router (`upstream_http_filters`): it sees every try, and
    /// holds try n >= 2 for the route's backoff delay before it goes out.
    Upstream,
}

/// The `health` section: the filter answers its own health endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSettings {
    pub enabled: bool,
    /// JSON status (`get_resilience_health_status()`).
    pub path: String,
    /// Plain-text report for people.
    pub report_path: String,
    /// Peers allowed to ask; others get 404.
    pub allowed_sources: Vec<Cidr>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/resilience/health".to_string(),
            report_path: "/resilience/report".to_string(),
            allowed_sources: ["127.0.0.1/32", "::1/128"]
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
        }
    }
}

const HEALTH_FIELDS: &[&str] = &["enabled", "path", "report_path", "allowed_sources"];

impl HealthSettings {
    fn parse(value: &Value) -> Result<Self, ConfigError> {
        let mut health = Self::default();
        for (key, v) in object(value, "health")? {
            let path = join("health", key);
            match key.as_str() {
                "enabled" => health.enabled = json::boolean(v, &path)?,
                "path" => health.path = endpoint_path(v, &path)?,
                "report_path" => health.report_path = endpoint_path(v, &path)?,
                "allowed_sources" => {
                    let items = json::array(v, &path, "CIDR ranges")?;
                    health.allowed_sources = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            item.as_str().and_then(Cidr::parse).ok_or_else(|| {
                                expected(
                                    &format!("{path}[{i}]"),
                                    "a CIDR range such as \"10.0.0.0/8\" or \"::1/128\"",
                                    item,
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?;
                }
                _ => return Err(unknown_field(&path, HEALTH_FIELDS)),
            }
        }
        if health.path == health.report_path {
            return Err(err(
                "health.report_path",
                format!("must differ from health.path ({:?})", health.path),
            ));
        }
        Ok(health)
    }
}

fn endpoint_path(value: &Value, path: &str) -> Result<String, ConfigError> {
    match value.as_str() {
        Some(p) if p.starts_with('/') && p.len() <= 256 && !p.contains(['?', '#', ' ']) => {
            Ok(p.to_string())
        }
        _ => Err(expected(
            path,
            "a request path starting with '/' (no query, at most 256 bytes)",
            value,
        )),
    }
}

impl Settings {
    /// Parses the plugin configuration and the VM environment. An empty configuration means
    /// "all defaults" (Envoy passes nothing when `configuration` is unset).
    pub fn parse(config: &[u8], env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text =
            std::str::from_utf8(config).map_err(|_| err("", "configuration is not valid UTF-8"))?;
        let root: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(text)
                .map_err(|e| err("", format!("configuration is not valid JSON: {e}")))?
        };
        let map = object(&root, "(configuration)")?;

        // The JSON's own values are checked even where a variable overrides them.
        let json_environment = match map.get("environment") {
            Some(v) => Some(Environment::parse(v, "environment")?),
            None => None,
        };
        let json_service_name = match map.get("service_name") {
            Some(v) => Some(string(v, "service_name")?),
            None => None,
        };
        let env = EnvOverlay::parse(env)?;
        let environment = env.environment.or(json_environment).unwrap_or_default();
        let service_name = env
            .service_name
            .clone()
            .or(json_service_name)
            .unwrap_or_default();

        let top = RoutePatch::parse_sections(
            map,
            "",
            TOP_FIELDS,
            &["service_name", "environment", "routes", "health", "mode"],
        )?;
        let mode = match map.get("mode").map(|v| (v, v.as_str())) {
            None => Mode::Downstream,
            Some((_, Some("downstream"))) => Mode::Downstream,
            Some((_, Some("upstream"))) => Mode::Upstream,
            Some((v, _)) => return Err(expected("mode", "one of \"downstream\", \"upstream\"", v)),
        };
        let health = match map.get("health") {
            Some(v) => HealthSettings::parse(v)?,
            None => HealthSettings::default(),
        };
        let mut defaults = environment.preset();
        top.apply(&mut defaults);
        env.patch.apply(&mut defaults);
        let injection_switch = env.injection_switch;
        defaults.validate("")?;

        let mut routes = BTreeMap::new();
        if let Some(value) = map.get("routes") {
            let mut stat_names: BTreeMap<String, String> = BTreeMap::new();
            for (name, entry) in object(value, "routes")? {
                let path = format!("routes.{name}");
                check_route_name(name, &path)?;
                if let Some(other) = stat_names.insert(stat_name(name), name.clone()) {
                    return Err(err(
                        &path,
                        format!(
                            "route names \"{other}\" and \"{name}\" map to the same stat name \"{}\"",
                            stat_name(name)
                        ),
                    ));
                }
                let mut policy = defaults.clone();
                RoutePatch::parse(entry, &path)?.apply(&mut policy);
                policy.validate(&path)?;
                switch_injection(&mut policy, injection_switch);
                routes.insert(name.clone(), policy);
            }
        }
        switch_injection(&mut defaults, injection_switch);

        Ok(Self {
            service_name,
            environment,
            defaults,
            routes,
            injection_switch,
            health,
            mode,
        })
    }

    /// The policy of `route` with its Envoy route metadata laid over the plugin JSON.
    pub fn with_metadata(&self, route: &str, metadata: &Value) -> Result<RoutePolicy, ConfigError> {
        let path = format!("route_metadata[{route}].filter_metadata[marty.resilience]");
        let patch = RoutePatch::parse(metadata, &path)?;
        let mut policy = self
            .routes
            .get(route)
            .cloned()
            .unwrap_or_else(|| self.defaults.clone());
        patch.apply(&mut policy);
        policy.validate(&path)?;
        switch_injection(&mut policy, self.injection_switch);
        Ok(policy)
    }
}

/// Applies `MARTY_FAILURE_INJECTION` last, over every layer. Faults it turns on are reported
/// with the trigger `env`.
fn switch_injection(policy: &mut RoutePolicy, switch: Option<bool>) {
    let fault = &mut policy.failure_injection;
    match switch {
        Some(true) if !fault.enabled => {
            fault.enabled = true;
            fault.enabled_by_env = true;
        }
        Some(false) => {
            fault.enabled = false;
            fault.enabled_by_env = false;
        }
        _ => {}
    }
}

/// Rejects route names that cannot be told apart from the default bucket or are unreasonably long.
pub fn check_route_name(name: &str, path: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(err(path, "a route name must not be empty"));
    }
    if name == DEFAULT_ROUTE {
        return Err(err(
            path,
            "\"default\" is the bucket of unconfigured routes; configure it at the top level",
        ));
    }
    if name.len() > MAX_ROUTE_NAME_LEN {
        return Err(err(
            path,
            format!("a route name must be at most {MAX_ROUTE_NAME_LEN} bytes"),
        ));
    }
    Ok(())
}

/// The route name as it appears inside stat names: anything but `[A-Za-z0-9_-]` becomes `_`,
/// so a dot in a route name cannot break the `marty_route` tag extraction.
pub fn stat_name(route: &str) -> String {
    route
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the `MARTY_RESILIENCE_*` (and Marty's `MARTY_FAILURE_INJECTION*`) variables of the VM
/// say.
#[derive(Default)]
struct EnvOverlay {
    service_name: Option<String>,
    environment: Option<Environment>,
    patch: RoutePatch,
    injection_switch: Option<bool>,
}

const ENV_PREFIX: &str = "MARTY_RESILIENCE_";

/// Nested `failure_injection` objects, as variable-name prefixes.
const FAULT_NESTED: &[(&str, &str)] = &[
    ("ABORT_", "abort"),
    ("DELAY_", "delay"),
    ("HEADER_TRIGGER_", "header_trigger"),
];

impl EnvOverlay {
    fn parse(env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut overlay = Self::default();
        for (name, raw) in env {
            match name.as_str() {
                "MARTY_FAILURE_INJECTION" => {
                    overlay.injection_switch =
                        Some(match raw.trim().to_ascii_lowercase().as_str() {
                            "enabled" | "true" | "1" | "on" => true,
                            "disabled" | "false" | "0" | "off" => false,
                            _ => {
                                return Err(expected(
                                    name,
                                    "\"enabled\" or \"disabled\"",
                                    &Value::from(raw.as_str()),
                                ))
                            }
                        });
                    continue;
                }
                "MARTY_FAILURE_INJECTION_RATE" => {
                    if env
                        .iter()
                        .any(|(n, _)| n == "MARTY_RESILIENCE_FAILURE_INJECTION_BASE_FAILURE_RATE")
                    {
                        return Err(err(
                            name,
                            "set either MARTY_FAILURE_INJECTION_RATE or MARTY_RESILIENCE_FAILURE_INJECTION_BASE_FAILURE_RATE, not both",
                        ));
                    }
                    overlay.patch.failure_injection.set(
                        "base_failure_rate",
                        &env_value(raw),
                        name,
                    )?;
                    continue;
                }
                other if other.starts_with("MARTY_FAILURE_INJECTION_") => {
                    return Err(err(
                        name,
                        "unknown variable, expected MARTY_FAILURE_INJECTION or MARTY_FAILURE_INJECTION_RATE",
                    ));
                }
                _ => {}
            }
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            match rest {
                "SERVICE_NAME" => overlay.service_name = Some(raw.clone()),
                "ENVIRONMENT" => {
                    overlay.environment =
                        Some(Environment::parse(&Value::from(raw.as_str()), name)?)
                }
                _ => overlay.set_field(name, rest, raw)?,
            }
        }
        Ok(overlay)
    }

    /// `CIRCUIT_BREAKER_<FIELD>`, `RETRY_[BUDGET_]<FIELD>` or
    /// `FAILURE_INJECTION_[<OBJECT>_]<FIELD>`, upper case.
    fn set_field(&mut self, name: &str, rest: &str, raw: &str) -> Result<(), ConfigError> {
        let upper = rest
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if upper {
            if let Some(field) = rest.strip_prefix("CIRCUIT_BREAKER_") {
                let field = field.to_ascii_lowercase();
                if !breaker::FIELDS.contains(&field.as_str()) {
                    return Err(unknown_variable(name, "CIRCUIT_BREAKER", breaker::FIELDS));
                }
                let value = if breaker::LIST_FIELDS.contains(&field.as_str()) {
                    env_list(raw)
                } else {
                    env_value(raw)
                };
                return self.patch.circuit_breaker.set(&field, &value, name);
            } else if let Some(field) = rest.strip_prefix("RETRY_") {
                let field = field.to_ascii_lowercase();
                if !retry::ENV_FIELDS.contains(&field.as_str()) {
                    return Err(unknown_variable(name, "RETRY", retry::ENV_FIELDS));
                }
                let value = if retry::LIST_FIELDS.contains(&field.as_str()) {
                    env_list(raw)
                } else {
                    env_value(raw)
                };
                let retry = &mut self.patch.retry;
                return match field.strip_prefix("budget_") {
                    Some(inner) => retry.set_budget(inner, &value, name),
                    None => retry.set(&field, &value, name),
                };
            } else if let Some(field) = rest.strip_prefix("FAILURE_INJECTION_") {
                if !fault::ENV_FIELDS.contains(&field.to_ascii_lowercase().as_str()) {
                    return Err(unknown_variable(
                        name,
                        "FAILURE_INJECTION",
                        fault::ENV_FIELDS,
                    ));
                }
                let fault = &mut self.patch.failure_injection;
                for (prefix, object) in FAULT_NESTED {
                    if let Some(inner) = field.strip_prefix(prefix) {
                        let inner = inner.to_ascii_lowercase();
                        // Names and tokens are text even when they look like numbers.
                        let value = if matches!(inner.as_str(), "header" | "token") {
                            Value::from(raw)
                        } else {
                            env_value(raw)
                        };
                        return match *object {
                            "abort" => fault.set_abort(&inner, &value, name),
                            "delay" => fault.set_delay(&inner, &value, name),
                            _ => fault.set_header(&inner, &value, name),
                        };
                    }
                }
                return fault.set(&field.to_ascii_lowercase(), &env_value(raw), name);
            }
        }
        Err(err(
            name,
            "unknown variable, expected MARTY_RESILIENCE_SERVICE_NAME, MARTY_RESILIENCE_ENVIRONMENT, \
             MARTY_RESILIENCE_CIRCUIT_BREAKER_<FIELD>, MARTY_RESILIENCE_RETRY_<FIELD> or \
             MARTY_RESILIENCE_FAILURE_INJECTION_<FIELD> \
             (fields in upper case, as in docs/configuration.md)",
        ))
    }
}

fn unknown_variable(name: &str, section: &str, fields: &[&str]) -> ConfigError {
    let names: Vec<String> = fields
        .iter()
        .map(|f| format!("{ENV_PREFIX}{section}_{}", f.to_ascii_uppercase()))
        .collect();
    err(
        name,
        format!("unknown variable, expected one of: {}", names.join(", ")),
    )
}

/// An environment value as JSON when it is JSON (`5`, `true`, `[503]`), else as a string.
fn env_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw))
}

/// A list variable: a JSON array, or items separated by commas (`5xx,429`).
fn env_list(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Array(_)) => v,
        _ => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(env_value)
                .collect(),
        ),
    }
}

impl Environment {
    fn parse(value: &Value, path: &str) -> Result<Self, ConfigError> {
        match value.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("development") => Ok(Self::Development),
            Some("production") => Ok(Self::Production),
            Some("testing") => Ok(Self::Testing),
            _ => Err(expected(
                path,
                "one of \"development\", \"production\", \"testing\"",
                value,
            )),
        }
    }
}
