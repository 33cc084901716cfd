//! The scenario file: steps of traffic, each with expectations. Its JSON Schema is
//! `config/chaos-scenario.schema.json`; docs/chaos-testing.md describes it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// What of the Marty guide this reproduces (e.g. `FailureScenario("high_latency", failure_rate=0.3)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guide: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// Traffic to send during the step; none = only observe (for `wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    /// Observe without traffic for this long (after the traffic, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Dur>,
    /// How long after the traffic Envoy's stats may take to show what is expected.
    #[serde(default = "default_settle")]
    pub settle: Dur,
    #[serde(default)]
    pub expect: Vec<Expectation>,
}

fn default_settle() -> Dur {
    Dur(Duration::from_secs(3))
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
    Grpc,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    #[serde(default)]
    pub protocol: Protocol,
    /// Requests started per second (the schedule is fixed: a slow reply does not slow it
    /// down, up to `concurrency` requests in flight).
    pub rate: f64,
    #[serde(default = "one")]
    pub concurrency: u32,
    pub duration: Dur,
    #[serde(default = "get")]
    pub method: String,
    /// Path (and query) on the target; for gRPC, `/package.Service/Method`.
    pub path: String,
    /// Request headers, e.g. `x-failure-inject: "abort=503"` and
    /// `x-failure-inject-token: "${MARTY_CHAOS_TOKEN}"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout on the client.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

fn one() -> u32 {
    1
}
fn get() -> String {
    "GET".to_string()
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The filter's `circuit_state` gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    pub fn from_gauge(v: i64) -> Option<Self> {
        match v {
            0 => Some(Self::Closed),
            1 => Some(Self::Open),
            2 => Some(Self::HalfOpen),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Which Envoy's admin an expectation reads.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AdminName {
    /// `--admin`: the Envoy in front of the client (breaker, retries).
    #[default]
    Caller,
    /// `--server-admin`: the next hop's Envoy (fault injection), when there is one.
    Server,
}

impl fmt::Display for AdminName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Caller => "caller",
            Self::Server => "server",
        })
    }
}

/// Where a breaker's state is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StateSource {
    /// The route's `circuit_state` gauge in the admin's `/stats`.
    #[default]
    Stats,
    /// The filter's health endpoint on the target (`--health-path`).
    Health,
}

/// Bounds; an unset bound always holds.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Expectation {
    /// The route's breaker is in `state` once the traffic is over (within `settle`).
    Breaker {
        route: String,
        state: BreakerState,
        #[serde(default)]
        source: StateSource,
    },
    /// Transitions of the route's breaker during the step (the filter's
    /// `circuit_opened_total`, `circuit_half_opened_total`, `circuit_closed_total`).
    Transitions {
        route: String,
        to: BreakerState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// The route's breaker reaches `to` within `within` of the step's start.
    Recovers {
        route: String,
        #[serde(default = "closed")]
        to: BreakerState,
        within: Dur,
    },
    /// Share of the step's requests that failed (5xx, gRPC error, no response), the
    /// breaker's rejections included.
    ErrorRate(Bounds),
    /// Share of the step's requests the breaker answered itself (`x-marty-circuit`).
    RejectedRate(Bounds),
    /// Share of the step's requests answered with this HTTP status.
    Status {
        code: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// Requests that reached a cluster during the step (`cluster.<name>.upstream_rq_total`).
    UpstreamRequests {
        cluster: String,
        #[serde(default)]
        admin: AdminName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// Retries during the step: the cluster's `upstream_rq_retry`, or with `route`, the
    /// filter's `retry_attempts_total` of that route.
    Retries {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<String>,
        #[serde(default)]
        admin: AdminName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// A latency percentile of the step's requests, as the client measured it.
    Latency {
        percentile: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<Dur>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<Dur>,
    },
    /// Any counter or gauge of an admin's `/stats` (counters as a change over the step,
    /// gauges as their value at the end).
    Stat {
        name: String,
        #[serde(default)]
        admin: AdminName,
        #[serde(default)]
        gauge: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
}

fn closed() -> BreakerState {
    BreakerState::Closed
}

/// A duration: `250ms`, `3s`, `1.5s`, `2m`, or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        let seconds = match Raw::deserialize(d)? {
            Raw::Seconds(s) => s,
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom)?,
        };
        if !(0.0..=3600.0).contains(&seconds) {
            return Err(serde::de::Error::custom(format!(
                "a duration between 0 and 1h, got {seconds}s"
            )));
        }
        Ok(Dur(Duration::from_secs_f64(seconds)))
    }
}

fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .map(|n| n * scale)
        .map_err(|_| format!("a duration such as 250ms, 3s or 1.5s, got {text:?}"))
}

/// Reads a scenario, replacing `${NAME}` (and `${NAME:-default}`) with `vars`, then the
/// process environment, then the default.
/// With `lenient`, a variable that is not set stays as written (for `marty chaos check`).
pub fn load(path: &Path, vars: &BTreeMap<String, String>, lenient: bool) -> Result<Scenario> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let text = substitute(&text, vars, lenient).with_context(|| format!("{}", path.display()))?;
    // Through JSON values: YAML's own enum form is a `!tag`, while scenarios write an
    // expectation as a one-key map (`- breaker: {...}`), as JSON does.
    let value: serde_json::Value =
        serde_norway::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let scenario: Scenario = serde_json::from_value(value).with_context(|| {
        format!(
            "{}: not a scenario (config/chaos-scenario.schema.json)",
            path.display()
        )
    })?;
    check(&scenario).with_context(|| format!("{}", path.display()))?;
    Ok(scenario)
}

fn check(s: &Scenario) -> Result<()> {
    if s.steps.is_empty() {
        bail!("a scenario needs at least one step");
    }
    for step in &s.steps {
        if let Some(t) = &step.traffic {
            if !(t.rate > 0.0 && t.rate <= 10_000.0) {
                bail!(
                    "step {:?}: rate must be between 0 and 10000 requests per second",
                    step.name
                );
            }
            if t.concurrency == 0 || t.concurrency > 1000 {
                bail!(
                    "step {:?}: concurrency must be between 1 and 1000",
                    step.name
                );
            }
            if !t.path.starts_with('/') {
                bail!("step {:?}: path must start with '/'", step.name);
            }
        }
        for e in &step.expect {
            if let Expectation::Latency { percentile, .. } = e {
                if !(*percentile > 0.0 && *percentile <= 100.0) {
                    bail!(
                        "step {:?}: latency percentile must be in (0, 100]",
                        step.name
                    );
                }
            }
            if let Expectation::Retries {
                cluster: None,
                route: None,
                ..
            } = e
            {
                bail!("step {:?}: retries needs a cluster or a route", step.name);
            }
        }
    }
    Ok(())
}

fn substitute(text: &str, vars: &BTreeMap<String, String>, lenient: bool) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            bail!("unclosed ${{ in {:?}", &rest[start..]);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let value = vars
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .or_else(|| default.map(str::to_string));
        match value {
            Some(v) => out.push_str(&v),
            None if lenient => out.push_str(&rest[start..start + 2 + end + 1]),
            None => {
                bail!("${{{name}}} is not set (pass --var {name}=... or set it in the environment)")
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Expectation {
    /// A one-line statement of the expectation, as reports name it.
    pub fn describe(&self) -> String {
        fn bounds(b: &Bounds, unit: &str) -> String {
            match (b.min, b.max) {
                (Some(lo), Some(hi)) => format!("between {lo}{unit} and {hi}{unit}"),
                (Some(lo), None) => format!(">= {lo}{unit}"),
                (None, Some(hi)) => format!("<= {hi}{unit}"),
                (None, None) => "anything".to_string(),
            }
        }
        match self {
            Self::Breaker {
                route,
                state,
                source,
            } => format!(
                "breaker of route {route} is {} ({})",
                state.name(),
                match source {
                    StateSource::Stats => "stats",
                    StateSource::Health => "health endpoint",
                }
            ),
            Self::Transitions {
                route,
                to,
                min,
                max,
            } => format!(
                "breaker of route {route} went to {} {} time(s)",
                to.name(),
                bounds(&Bounds::of(*min, *max), "")
            ),
            Self::Recovers { route, to, within } => {
                format!(
                    "breaker of route {route} reaches {} within {within}",
                    to.name()
                )
            }
            Self::ErrorRate(b) => format!("error rate {}", bounds(b, "")),
            Self::RejectedRate(b) => format!("rejected rate {}", bounds(b, "")),
            Self::Status { code, min, max } => format!(
                "share of HTTP {code} {}",
                bounds(&Bounds::of(*min, *max), "")
            ),
            Self::UpstreamRequests {
                cluster,
                admin,
                min,
                max,
            } => format!(
                "requests reaching cluster {cluster} ({admin} Envoy) {}",
                bounds(&Bounds::of(*min, *max), "")
            ),
            Self::Retries {
                cluster,
                route,
                admin,
                min,
                max,
            } => match (route, cluster) {
                (Some(r), _) => format!(
                    "retries on route {r} ({admin} Envoy) {}",
                    bounds(&Bounds::of(*min, *max), "")
                ),
                (None, Some(c)) => format!(
                    "retries to cluster {c} ({admin} Envoy) {}",
                    bounds(&Bounds::of(*min, *max), "")
                ),
                (None, None) => "retries".to_string(),
            },
            Self::Latency {
                percentile,
                min,
                max,
            } => {
                let b = Bounds {
                    min: min.map(|d| d.0.as_secs_f64() * 1000.0),
                    max: max.map(|d| d.0.as_secs_f64() * 1000.0),
                };
                format!("p{percentile} latency {}", bounds(&b, "ms"))
            }
            Self::Stat {
                name,
                admin,
                gauge,
                min,
                max,
            } => format!(
                "{} {name} ({admin} Envoy) {}",
                if *gauge { "gauge" } else { "change of counter" },
                bounds(&Bounds::of(*min, *max), "")
            ),
        }
    }
}

impl Bounds {
    pub fn of(min: Option<f64>, max: Option<f64>) -> Self {
        Self { min, max }
    }

    pub fn holds(&self, v: f64) -> bool {
        self.min.is_none_or(|lo| v >= lo) && self.max.is_none_or(|hi| v <= hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("250ms"), Ok(0.25));
        assert_eq!(parse_duration("3s"), Ok(3.0));
        assert_eq!(parse_duration(" 1.5s "), Ok(1.5));
        assert_eq!(parse_duration("2m"), Ok(120.0));
        assert_eq!(parse_duration("4"), Ok(4.0));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn variables_come_from_vars_then_the_default() {
        let vars: BTreeMap<String, String> = [("TOKEN".to_string(), "abc".to_string())].into();
        assert_eq!(
            substitute(
                "t: ${TOKEN}, r: ${MARTY_TEST_UNSET_ROUTE:-users}",
                &vars,
                false
            )
            .ok(),
            Some("t: abc, r: users".to_string())
        );
        assert!(substitute("${MARTY_TEST_UNSET_VAR}", &vars, false).is_err());
        assert_eq!(
            substitute("x ${MARTY_TEST_UNSET_VAR} y", &vars, true).ok(),
            Some("x ${MARTY_TEST_UNSET_VAR} y".to_string())
        );
        assert!(substitute("${UNCLOSED", &vars, false).is_err());
    }

    #[test]
    fn bounds_are_inclusive_and_unset_ones_always_hold() {
        assert!(Bounds::of(Some(1.0), Some(1.0)).holds(1.0));
        assert!(!Bounds::of(Some(1.0), None).holds(0.5));
        assert!(!Bounds::of(None, Some(0.0)).holds(0.1));
        assert!(Bounds::default().holds(f64::MAX));
    }
}
