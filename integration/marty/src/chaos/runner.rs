//! Runs a scenario: each step's traffic, a sampler of the breakers' state, and the
//! evaluation of the step's expectations against what Envoy and the client saw.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use super::scenario::{AdminName, Bounds, BreakerState, Expectation, Scenario, StateSource, Step};
use super::traffic::{self, lock, Clients, Kind, Outcome, Outcomes};

/// Where the scenario runs.
#[derive(Clone, Debug)]
pub struct Target {
    /// Base URL the traffic goes to (`http://127.0.0.1:10000`).
    pub url: String,
    /// The caller Envoy's admin (`http://127.0.0.1:9901`).
    pub admin: String,
    /// The next hop's admin, when it is reachable.
    pub server_admin: Option<String>,
    /// The filter's health endpoint path on `url`.
    pub health_path: String,
}

/// How often the breakers' state is read for the timeline and `recovers`.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// The filter's stats, by the name Envoy gives them.
const ROUTE_PREFIX: &str = "wasmcustom.marty_resilience.route.";

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub at: Duration,
    /// `circuit_state` per route (0 closed, 1 open, 2 half-open).
    pub states: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExpectationResult {
    pub expectation: String,
    pub passed: bool,
    pub seen: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub name: String,
    pub passed: bool,
    pub started_s: f64,
    pub ended_s: f64,
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub rejected: usize,
    pub latency: Option<LatencySummary>,
    pub expectations: Vec<ExpectationResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub file: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guide: Option<String>,
    pub passed: bool,
    pub duration_s: f64,
    pub steps: Vec<StepResult>,
    /// Set when the scenario could not run at all (admin unreachable...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    /// The routes whose breaker the timeline draws.
    #[serde(skip)]
    pub routes: Vec<String>,
}

pub async fn run(
    scenario: &Scenario,
    file: &str,
    target: &Target,
    clients: &Clients,
) -> ScenarioResult {
    let start = Instant::now();
    let outcomes: Outcomes = Arc::default();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = tokio::spawn(sample(
        clients.clone(),
        target.admin.clone(),
        start,
        samples.clone(),
    ));
    let mut steps = Vec::new();
    let mut error = None;
    for step in &scenario.steps {
        match run_step(scenario, step, target, clients, start, &outcomes, &samples).await {
            Ok(result) => {
                let failed = !result.passed;
                steps.push(result);
                // Later steps build on this one's state: once it failed they prove nothing.
                if failed {
                    break;
                }
            }
            Err(e) => {
                error = Some(format!("step {:?}: {e:#}", step.name));
                break;
            }
        }
    }
    sampler.abort();
    let passed =
        error.is_none() && steps.len() == scenario.steps.len() && steps.iter().all(|s| s.passed);
    let mut routes: Vec<String> = scenario
        .steps
        .iter()
        .flat_map(|s| s.expect.iter())
        .filter_map(|e| match e {
            Expectation::Breaker { route, .. }
            | Expectation::Transitions { route, .. }
            | Expectation::Recovers { route, .. } => Some(route.clone()),
            _ => None,
        })
        .collect();
    routes.sort();
    routes.dedup();
    let result = ScenarioResult {
        name: scenario.name.clone(),
        file: file.to_string(),
        description: scenario.description.clone(),
        guide: scenario.guide.clone(),
        passed,
        duration_s: start.elapsed().as_secs_f64(),
        steps,
        error,
        outcomes: lock(&outcomes).clone(),
        samples: lock(&samples).clone(),
        routes,
    };
    result
}

async fn sample(clients: Clients, admin: String, start: Instant, into: Arc<Mutex<Vec<Sample>>>) {
    loop {
        let at = start.elapsed();
        if let Ok(stats) = traffic::stats(&clients, &admin, Some("circuit_state")).await {
            let states = stats
                .into_iter()
                .filter_map(|(name, v)| {
                    let route = name
                        .strip_prefix(ROUTE_PREFIX)?
                        .strip_suffix(".circuit_state")?;
                    Some((route.to_string(), v))
                })
                .collect();
            lock(&into).push(Sample { at, states });
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

async fn run_step(
    scenario: &Scenario,
    step: &Step,
    target: &Target,
    clients: &Clients,
    start: Instant,
    outcomes: &Outcomes,
    samples: &Arc<Mutex<Vec<Sample>>>,
) -> Result<StepResult> {
    let step_start = start.elapsed();
    let before = Snapshot::read(clients, target).await?;
    let first = lock(outcomes).len();

    if let Some(t) = &step.traffic {
        let planned = traffic::planned(t);
        let bar = ProgressBar::new(planned);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} / {}", scenario.name, step.name));
        let drive = traffic::drive(clients, &target.url, t, start, outcomes.clone());
        tokio::pin!(drive);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                done = &mut drive => { done?; break; }
                _ = tick.tick() => {
                    let seen = &lock(outcomes)[first..];
                    let states = lock(samples).last().map(|s| {
                        s.states.iter().filter(|(_, v)| **v != 0)
                            .map(|(r, v)| format!("{r}={}", BreakerState::from_gauge(*v).map_or("?", BreakerState::name)))
                            .collect::<Vec<_>>().join(" ")
                    }).unwrap_or_default();
                    bar.set_position(seen.len() as u64);
                    bar.set_message(format!(
                        "ok {} err {} rejected {}{}{}",
                        seen.iter().filter(|o| o.kind == Kind::Ok).count(),
                        seen.iter().filter(|o| o.kind == Kind::Error).count(),
                        seen.iter().filter(|o| o.kind == Kind::Rejected).count(),
                        if states.is_empty() { "" } else { "  open/half-open: " },
                        states,
                    ));
                }
            }
        }
        bar.finish_and_clear();
    }
    if let Some(w) = step.wait {
        tokio::time::sleep(w.0).await;
    }

    let step_outcomes: Vec<Outcome> = lock(outcomes)[first..].to_vec();
    // Envoy's stats trail the replies a little (workers flush them): read again until every
    // expectation holds or `settle` is over, and report the last reading.
    let deadline = Instant::now() + step.settle.0;
    let results = loop {
        let after = Snapshot::read(clients, target).await?;
        let health = health_states(step, target, clients).await;
        let recent = lock(samples).clone();
        let results: Vec<ExpectationResult> = step
            .expect
            .iter()
            .map(|e| {
                evaluate(
                    e,
                    &before,
                    &after,
                    &health,
                    &step_outcomes,
                    &recent,
                    step_start,
                    target,
                )
            })
            .collect();
        if results.iter().all(|r| r.passed) || Instant::now() >= deadline {
            break results;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    let count = |k: Kind| step_outcomes.iter().filter(|o| o.kind == k).count();
    Ok(StepResult {
        name: step.name.clone(),
        passed: results.iter().all(|r| r.passed),
        started_s: step_start.as_secs_f64(),
        ended_s: start.elapsed().as_secs_f64(),
        requests: step_outcomes.len(),
        ok: count(Kind::Ok),
        errors: count(Kind::Error),
        rejected: count(Kind::Rejected),
        latency: latency_summary(&step_outcomes),
        expectations: results,
    })
}

/// Both admins' stats at one moment.
struct Snapshot {
    caller: BTreeMap<String, i64>,
    server: Option<BTreeMap<String, i64>>,
}

impl Snapshot {
    async fn read(clients: &Clients, target: &Target) -> Result<Self> {
        let caller = traffic::stats(clients, &target.admin, None).await?;
        let server = match &target.server_admin {
            Some(a) => Some(traffic::stats(clients, a, None).await?),
            None => None,
        };
        Ok(Self { caller, server })
    }

    fn of(&self, admin: AdminName) -> Option<&BTreeMap<String, i64>> {
        match admin {
            AdminName::Caller => Some(&self.caller),
            AdminName::Server => self.server.as_ref(),
        }
    }
}

/// Route states from the health endpoint, when a step asks for them.
async fn health_states(
    step: &Step,
    target: &Target,
    clients: &Clients,
) -> Result<BTreeMap<String, String>, String> {
    let wanted = step.expect.iter().any(|e| {
        matches!(
            e,
            Expectation::Breaker {
                source: StateSource::Health,
                ..
            }
        )
    });
    if !wanted {
        return Ok(BTreeMap::new());
    }
    let url = format!("{}{}", target.url.trim_end_matches('/'), target.health_path);
    let (status, body) = clients.get(&url).await.map_err(|e| format!("{e:#}"))?;
    let json: Value = serde_json::from_str(&body).map_err(|_| {
        format!("GET {url}: HTTP {status}, not the filter's JSON (is health.enabled set?)")
    })?;
    Ok(json["routes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(r, v)| Some((r.clone(), v["state"].as_str()?.to_string())))
        .collect())
}

fn route_stat(route: &str, leaf: &str) -> String {
    format!(
        "{ROUTE_PREFIX}{}.{leaf}",
        marty_resilience_core::config::stat_name(route)
    )
}

fn delta(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>, name: &str) -> Option<i64> {
    let a = *after.get(name)?;
    Some(a - before.get(name).copied().unwrap_or(0))
}

fn bounded(b: &Bounds, v: f64, what: &str) -> (bool, String) {
    (b.holds(v), format!("{what} {}", trim_float(v)))
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    e: &Expectation,
    before: &Snapshot,
    after: &Snapshot,
    health: &Result<BTreeMap<String, String>, String>,
    outcomes: &[Outcome],
    samples: &[Sample],
    step_start: Duration,
    target: &Target,
) -> ExpectationResult {
    let counter = |admin: AdminName, name: &str| -> Result<i64, String> {
        match (before.of(admin), after.of(admin)) {
            (Some(b), Some(a)) => {
                delta(b, a, name).ok_or_else(|| format!("no stat {name} in {admin} Envoy's /stats"))
            }
            _ => Err("no --server-admin given".to_string()),
        }
    };
    let share = |pred: &dyn Fn(&Outcome) -> bool| -> (f64, usize) {
        let n = outcomes.iter().filter(|o| pred(o)).count();
        (
            if outcomes.is_empty() {
                0.0
            } else {
                n as f64 / outcomes.len() as f64
            },
            n,
        )
    };
    let (passed, seen) = match e {
        Expectation::Breaker {
            route,
            state,
            source,
        } => match source {
            StateSource::Stats => match after.caller.get(&route_stat(route, "circuit_state")) {
                Some(v) => (
                    *v == state.gauge(),
                    BreakerState::from_gauge(*v)
                        .map_or("unknown", BreakerState::name)
                        .to_string(),
                ),
                None => (
                    false,
                    format!(
                        "no stat {} (has the route had traffic?)",
                        route_stat(route, "circuit_state")
                    ),
                ),
            },
            StateSource::Health => match health {
                Ok(states) => match states.get(route) {
                    Some(s) => (
                        s == state.name() || s.replace('-', "_") == state.name(),
                        s.clone(),
                    ),
                    None => (
                        false,
                        format!("route {route} not in the health endpoint's routes"),
                    ),
                },
                Err(why) => (false, why.clone()),
            },
        },
        Expectation::Transitions {
            route,
            to,
            min,
            max,
        } => {
            let leaf = match to {
                BreakerState::Open => "circuit_opened_total",
                BreakerState::HalfOpen => "circuit_half_opened_total",
                BreakerState::Closed => "circuit_closed_total",
            };
            match counter(AdminName::Caller, &route_stat(route, leaf)) {
                Ok(n) => (
                    Bounds::of(*min, *max).holds(n as f64),
                    format!("{n} transition(s) to {}", to.name()),
                ),
                Err(why) => (false, why),
            }
        }
        Expectation::Recovers { route, to, within } => {
            let name = marty_resilience_core::config::stat_name(route);
            let reached = samples
                .iter()
                .filter(|s| s.at >= step_start)
                .find(|s| s.states.get(&name) == Some(&to.gauge()));
            match reached {
                Some(s) => {
                    let took = s.at.saturating_sub(step_start);
                    (
                        took <= within.0,
                        format!("reached {} after {:.1}s", to.name(), took.as_secs_f64()),
                    )
                }
                None => {
                    let last = samples.last().and_then(|s| s.states.get(&name)).copied();
                    (
                        false,
                        format!(
                            "not {} by the end of the step (last state: {})",
                            to.name(),
                            last.and_then(BreakerState::from_gauge)
                                .map_or("unknown", BreakerState::name)
                        ),
                    )
                }
            }
        }
        Expectation::ErrorRate(b) => {
            let (rate, n) = share(&|o| o.kind != Kind::Ok);
            (
                b.holds(rate),
                format!("{} ({n} of {} requests)", trim_float(rate), outcomes.len()),
            )
        }
        Expectation::RejectedRate(b) => {
            let (rate, n) = share(&|o| o.kind == Kind::Rejected);
            (
                b.holds(rate),
                format!("{} ({n} of {} requests)", trim_float(rate), outcomes.len()),
            )
        }
        Expectation::Status { code, min, max } => {
            let (rate, n) = share(&|o| o.status == Some(*code));
            (
                Bounds::of(*min, *max).holds(rate),
                format!("{} ({n} of {} requests)", trim_float(rate), outcomes.len()),
            )
        }
        Expectation::UpstreamRequests {
            cluster,
            admin,
            min,
            max,
        } => match counter(*admin, &format!("cluster.{cluster}.upstream_rq_total")) {
            Ok(n) => bounded(&Bounds::of(*min, *max), n as f64, "requests:"),
            Err(why) => (false, why),
        },
        Expectation::Retries {
            cluster,
            route,
            admin,
            min,
            max,
        } => {
            let name = match (route, cluster) {
                (Some(r), _) => route_stat(r, "retry_attempts_total"),
                (None, Some(c)) => format!("cluster.{c}.upstream_rq_retry"),
                (None, None) => String::new(),
            };
            match counter(*admin, &name) {
                Ok(n) => bounded(&Bounds::of(*min, *max), n as f64, "retries:"),
                Err(why) => (false, why),
            }
        }
        Expectation::Latency {
            percentile,
            min,
            max,
        } => {
            let mut ms: Vec<f64> = outcomes
                .iter()
                .map(|o| o.latency.as_secs_f64() * 1000.0)
                .collect();
            match percentile_of(&mut ms, *percentile) {
                Some(v) => {
                    let b = Bounds::of(
                        min.map(|d| d.0.as_secs_f64() * 1000.0),
                        max.map(|d| d.0.as_secs_f64() * 1000.0),
                    );
                    (
                        b.holds(v),
                        format!("p{percentile} {v:.1}ms over {} requests", ms.len()),
                    )
                }
                None => (false, "no requests".to_string()),
            }
        }
        Expectation::Stat {
            name,
            admin,
            gauge,
            min,
            max,
        } => {
            let value = if *gauge {
                after
                    .of(*admin)
                    .ok_or_else(|| "no --server-admin given".to_string())
                    .and_then(|s| {
                        s.get(name)
                            .copied()
                            .ok_or_else(|| format!("no stat {name}"))
                    })
            } else {
                counter(*admin, name)
            };
            match value {
                Ok(v) => bounded(&Bounds::of(*min, *max), v as f64, "value"),
                Err(why) => (false, why),
            }
        }
    };
    let _ = target;
    ExpectationResult {
        expectation: e.describe(),
        passed,
        seen,
    }
}

/// Nearest-rank percentile.
pub fn percentile_of(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values.get(rank.clamp(1, values.len()) - 1).copied()
}

fn latency_summary(outcomes: &[Outcome]) -> Option<LatencySummary> {
    let mut ms: Vec<f64> = outcomes
        .iter()
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    Some(LatencySummary {
        p50_ms: percentile_of(&mut ms, 50.0)?,
        p90_ms: percentile_of(&mut ms, 90.0)?,
        p99_ms: percentile_of(&mut ms, 99.0)?,
        max_ms: percentile_of(&mut ms, 100.0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile_of;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile_of(&mut v, 50.0), Some(50.0));
        assert_eq!(percentile_of(&mut v, 95.0), Some(95.0));
        assert_eq!(percentile_of(&mut v, 100.0), Some(100.0));
        assert_eq!(percentile_of(&mut [3.0, 1.0, 2.0], 1.0), Some(1.0));
        assert_eq!(percentile_of(&mut [], 50.0), None);
    }
}
