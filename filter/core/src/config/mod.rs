//! The plugin configuration: the Envoy plugin `configuration` string (JSON shaped like the Marty
//! YAML), the VM's `MARTY_RESILIENCE_*` environment variables, and per-route entries.
//!
//! Precedence, lowest first: the `environment` preset, the plugin JSON's top-level sections,
//! the environment variables, the plugin JSON's `routes.<name>` entry, and the route's own Envoy
//! metadata (`filter_metadata["marty.resilience"]`). Each layer overrides field by field.
//! Everything is validated at load; an error names the field path and what was expected.
//!
//! Each section (`circuit_breaker`, `retry`, `failure_injection`, `health`) is declared once, as
//! a table with one row per field (`section!`, in `section.rs`): adding a field is one row, the
//! policy field it sets, and its docs (the docs and schema tests say when those are missing).

mod breaker;
pub mod codes;
mod fault;
mod json;
mod presets;
pub mod retry;
pub(crate) mod section;

use std::fmt;

use serde_json::{Map, Value};

pub use breaker::{BreakerPatch, BreakerPolicy, MAX_HALF_OPEN_REQUESTS, RECOVERY_STRATEGIES};
pub use codes::{GrpcSet, StatusSet};
pub use fault::{FaultPatch, MAX_METHOD_RATES};
pub use retry::RetryPatch;
pub use section::Section;

use crate::fault::FaultPolicy;
use crate::health::Cidr;
pub use presets::Environment;

use json::{err, expected, join, object, string, unknown_field};
use section::{plain, section, EnvKind};

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
        let mut map = serde_json::Map::new();
        section::insert_field(&mut map, "circuit_breaker", self.circuit_breaker.to_json());
        section::insert_field(&mut map, "retry", retry::to_json(&self.retry));
        let faults = fault::to_json(&self.failure_injection);
        section::insert_field(&mut map, "failure_injection", faults);
        Value::Object(map)
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
    "bucket_by",
    "max_buckets",
    "stat_prefix",
    "prevent_caller_retries",
    "bucket_idle_timeout",
    "routes",
];

/// The route name Istio gives every generated route (and many configurations give a catch-all
/// route): never a bucket, since it names no one destination. Requests on such a route, like
/// requests on unnamed routes, are bucketed by their upstream cluster.
pub const DEFAULT_ROUTE: &str = "default";

/// Longest bucket name (route or cluster name) accepted; names end up in stat names and
/// shared-data keys. Istio's cluster names (`outbound|<port>|<subset>|<fqdn>`) fit.
pub const MAX_ROUTE_NAME_LEN: usize = 255;

/// The default `max_buckets`.
pub const DEFAULT_MAX_BUCKETS: u32 = 1000;
/// The largest `max_buckets` (the shared bucket registry's bound).
pub const MAX_BUCKETS: u32 = crate::registry::MAX_REGISTERED as u32;
/// Longest `stat_prefix`.
pub const MAX_STAT_PREFIX_LEN: usize = 64;

/// What names a request's bucket (its breaker, records and stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BucketBy {
    /// The Envoy route name, or the upstream cluster for unnamed routes and routes named
    /// `default` (Istio's generated routes): per route in Envoy, per destination in Istio.
    #[default]
    Route,
    /// The upstream cluster always: one breaker per backend across routes.
    Cluster,
}

impl BucketBy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Route => "route",
            Self::Cluster => "cluster",
        }
    }
}

fn stat_prefix(value: &Value, path: &str) -> Result<String, ConfigError> {
    match value.as_str() {
        Some(p)
            if !p.is_empty()
                && p.len() <= MAX_STAT_PREFIX_LEN
                && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok(p.to_string())
        }
        _ => Err(expected(
            path,
            "a stat prefix: letters, digits and '_', starting with a letter or '_', at most 64 bytes",
            value,
        )),
    }
}

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
                "circuit_breaker" => patch.circuit_breaker.set_object(value, &path)?,
                "failure_injection" => patch.failure_injection.set_object(value, &path)?,
                "retry" => patch.retry.set_object(value, &path)?,
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

/// The routes named in the plugin JSON, by Envoy route name: a Vec sorted by name (one
/// binary search per lookup), not a `BTreeMap`, whose code for this key and value type would be
/// a second copy of serde_json's map in the module.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    entries: Vec<(String, RoutePolicy)>,
}

impl RouteTable {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(known, _)| known.as_str().cmp(name))
    }

    /// Adds or replaces the route `name`.
    pub fn insert(&mut self, name: String, policy: RoutePolicy) {
        match self.find(&name) {
            Ok(i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = policy;
                }
            }
            Err(i) => self.entries.insert(i, (name, policy)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&RoutePolicy> {
        let i = self.find(name).ok()?;
        self.entries.get(i).map(|(_, policy)| policy)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// The route names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(name, _)| name)
    }

    /// The routes with their policies, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &RoutePolicy)> {
        self.entries.iter().map(|(name, policy)| (name, policy))
    }

    /// The policies, sorted by route name.
    pub fn values(&self) -> impl Iterator<Item = &RoutePolicy> {
        self.entries.iter().map(|(_, policy)| policy)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'a> IntoIterator for &'a RouteTable {
    type Item = (&'a String, &'a RoutePolicy);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, RoutePolicy)>,
        fn(&'a (String, RoutePolicy)) -> (&'a String, &'a RoutePolicy),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(name, policy)| (name, policy))
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
    pub routes: RouteTable,
    /// `MARTY_FAILURE_INJECTION`: switches injection on (or off) on every route, whatever the
    /// layers below say.
    pub injection_switch: Option<bool>,
    pub health: HealthSettings,
    pub mode: Mode,
    pub bucket_by: BucketBy,
    /// Buckets one plugin instance creates at most; past it requests share [`OVERFLOW_BUCKET`].
    pub max_buckets: u32,
    /// Every stat name and shared-data key of this plugin instance is under it.
    pub stat_prefix: String,
    /// The filter's own rejections carry `x-envoy-ratelimited` (so a calling Envoy does not
    /// retry them) and `x-envoy-overloaded`.
    pub prevent_caller_retries: bool,
    /// A bucket no request has used for this long (nanoseconds) is forgotten: its record reset,
    /// its state gauge 0, and it leaves the health report (the plugin JSON's `routes` stay).
    pub bucket_idle_timeout: u64,
}

/// The default `bucket_idle_timeout`: 10 minutes, longer than any default open period.
pub const DEFAULT_BUCKET_IDLE_TIMEOUT_NS: u64 = 600 * crate::NANOS_PER_SEC;
/// The shortest `bucket_idle_timeout` accepted.
pub const MIN_BUCKET_IDLE_TIMEOUT_NS: u64 = crate::NANOS_PER_SEC;

/// The bucket requests share once `max_buckets` buckets exist. Its name cannot be a route or
/// cluster name the filter would bucket by: it is not a valid stat name and is refused in
/// `routes`.
pub const OVERFLOW_BUCKET: &str = "(overflow)";

/// How loud a [`Settings::notices`] line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    Info,
    Warn,
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
    /// The Envoy route the endpoint is served on. When set, only requests on that route are
    /// checked for the health paths, so no other request pays for reading its path.
    pub route: Option<String>,
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
            route: None,
        }
    }
}

section! {
    /// The `health` section as the plugin JSON gives it (it has no variables).
    pub struct HealthPatch for HealthSettings {
        enabled: value(bool, enabled, json::boolean, plain),
        path: value(String, path, endpoint_path, plain),
        report_path: value(String, report_path, endpoint_path, plain),
        allowed_sources: list(Vec<Cidr>, allowed_sources, cidrs, cidrs_json),
        route: value(Option<String>, route, health_route, route_json),
    }
}

fn health_route(value: &Value, path: &str) -> Result<Option<String>, ConfigError> {
    if value.is_null() {
        return Ok(None);
    }
    let name = string(value, path)?;
    check_route_name(&name, path)?;
    Ok(Some(name))
}

fn route_json(route: &Option<String>) -> Value {
    route.clone().map_or(Value::Null, Value::from)
}

impl HealthSettings {
    fn parse(value: &Value) -> Result<Self, ConfigError> {
        let mut patch = HealthPatch::default();
        patch.set_object(value, "health")?;
        let mut health = Self::default();
        patch.apply(&mut health);
        if health.path == health.report_path {
            return Err(err(
                "health.report_path",
                format!("must differ from health.path ({:?})", health.path),
            ));
        }
        Ok(health)
    }

    /// The settings as configuration would write them.
    pub fn to_json(&self) -> Value {
        HealthPatch::to_json(self)
    }
}

fn cidrs(value: &Value, path: &str) -> Result<Vec<Cidr>, ConfigError> {
    json::array(value, path, "CIDR ranges")?
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
        .collect()
}

fn cidrs_json(cidrs: &[Cidr]) -> Value {
    Value::from(cidrs.iter().map(ToString::to_string).collect::<Vec<_>>())
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

        // The top level's own fields are read below; the route sections by `parse_sections`.
        let own: Vec<&str> = TOP_FIELDS
            .iter()
            .copied()
            .filter(|f| !ROUTE_FIELDS.contains(f))
            .collect();
        let top = RoutePatch::parse_sections(map, "", TOP_FIELDS, &own)?;
        let bucket_by = match map.get("bucket_by").map(|v| (v, v.as_str())) {
            None | Some((_, Some("route"))) => BucketBy::Route,
            Some((_, Some("cluster"))) => BucketBy::Cluster,
            Some((v, _)) => return Err(expected("bucket_by", "one of \"route\", \"cluster\"", v)),
        };
        let max_buckets = match map.get("max_buckets") {
            Some(v) => json::integer_u32(v, "max_buckets", 1, MAX_BUCKETS)?,
            None => DEFAULT_MAX_BUCKETS,
        };
        let stat_prefix = match map.get("stat_prefix") {
            Some(v) => stat_prefix(v, "stat_prefix")?,
            None => crate::stats::PREFIX.to_string(),
        };
        let prevent_caller_retries = match map.get("prevent_caller_retries") {
            Some(v) => json::boolean(v, "prevent_caller_retries")?,
            None => true,
        };
        let bucket_idle_timeout = match map.get("bucket_idle_timeout") {
            Some(v) => {
                let nanos = json::duration_nanos(v, "bucket_idle_timeout", false)?;
                if nanos < MIN_BUCKET_IDLE_TIMEOUT_NS {
                    return Err(err(
                        "bucket_idle_timeout",
                        format!(
                            "must be at least 1s, got {}",
                            crate::duration::display(nanos)
                        ),
                    ));
                }
                nanos
            }
            None => DEFAULT_BUCKET_IDLE_TIMEOUT_NS,
        };
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

        let mut routes = RouteTable::default();
        if let Some(value) = map.get("routes") {
            // Stat names taken so far, sorted, each with the route name that took it.
            let mut stat_names: Vec<(String, String)> = Vec::new();
            for (name, entry) in object(value, "routes")? {
                let path = format!("routes.{name}");
                check_route_name(name, &path)?;
                let stat = stat_name(name);
                match stat_names.binary_search_by(|(taken, _)| taken.as_str().cmp(&stat)) {
                    Ok(i) => {
                        let other = stat_names.get(i).map_or("", |(_, other)| other.as_str());
                        return Err(err(
                            &path,
                            format!(
                                "route names \"{other}\" and \"{name}\" map to the same stat name \"{stat}\""
                            ),
                        ));
                    }
                    Err(i) => stat_names.insert(i, (stat, name.clone())),
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
            bucket_by,
            max_buckets,
            stat_prefix,
            prevent_caller_retries,
            bucket_idle_timeout,
        })
    }

    /// What the operator should know about an accepted configuration, as log lines: settings
    /// that only take effect with another placement of the filter.
    pub fn notices(&self) -> Vec<(Notice, String)> {
        let policies = || std::iter::once(&self.defaults).chain(self.routes.values());
        let mut out = Vec::new();
        if self.mode == Mode::Downstream {
            if policies().any(|p| p.retry.enabled) {
                out.push((
                    Notice::Info,
                    "retry: backoff_strategy times the tries only where the filter is also an \
                     upstream HTTP filter with mode \"upstream\"; elsewhere Envoy's \
                     retry_back_off does (docs/retries.md)"
                        .to_string(),
                ));
            }
            if policies().any(|p| p.retry.enabled && p.retry.count_attempts) {
                out.push((
                    Notice::Warn,
                    "retry.count_attempts: the breaker then learns outcomes only from the \
                     upstream placement (an instance with mode \"upstream\" in the router's \
                     upstream_http_filters); without one, it records nothing while CLOSED"
                        .to_string(),
                ));
            }
        }
        out
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
            "\"default\" (Istio's name for its generated routes) is never a bucket: requests on such routes are bucketed by their upstream cluster; key the entry by the cluster name",
        ));
    }
    if name == OVERFLOW_BUCKET || name.contains(['\n', '\r', '\0']) {
        return Err(err(
            path,
            "not a route or cluster name (reserved, or holds a line break or NUL)",
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
                        &section::env_value(EnvKind::Value, raw),
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
            let patch = &mut self.patch;
            if let Some(field) = rest.strip_prefix("CIRCUIT_BREAKER_") {
                return set_variable(
                    &mut patch.circuit_breaker,
                    "CIRCUIT_BREAKER",
                    field,
                    raw,
                    name,
                );
            } else if let Some(field) = rest.strip_prefix("RETRY_") {
                return set_variable(&mut patch.retry, "RETRY", field, raw, name);
            } else if let Some(field) = rest.strip_prefix("FAILURE_INJECTION_") {
                return set_variable(
                    &mut patch.failure_injection,
                    "FAILURE_INJECTION",
                    field,
                    raw,
                    name,
                );
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

/// Sets the field `field` (upper case, nested objects flattened: `BUDGET_WINDOW`) of the
/// section whose variables are `MARTY_RESILIENCE_<family>_<FIELD>`.
fn set_variable<S: Section>(
    section: &mut S,
    family: &str,
    field: &str,
    raw: &str,
    name: &str,
) -> Result<(), ConfigError> {
    let field = field.to_ascii_lowercase();
    let mut fields = Vec::new();
    S::env_fields(&mut fields, "");
    let unknown = || {
        let names: Vec<String> = fields
            .iter()
            .map(|f| format!("{ENV_PREFIX}{family}_{}", f.to_ascii_uppercase()))
            .collect();
        err(
            name,
            format!("unknown variable, expected one of: {}", names.join(", ")),
        )
    };
    if !fields.contains(&field) {
        return Err(unknown());
    }
    section
        .set_env(&field, raw, name)
        .unwrap_or_else(|| Err(unknown()))
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
