//! The `circuit_breaker` section: its resolved policy, and the partial form ("patch") that each
//! configuration layer (preset, plugin JSON, environment, route entry, route metadata) provides.

use serde_json::Value;

use super::codes::{GrpcSet, StatusSet};
use super::json::{boolean, cap_below_floor, expected};
use super::section::{duration, plain, seconds, section, strategy_name, u32_in, Section};
use super::ConfigError;
use crate::retry::backoff::Strategy;

/// Largest `failure_threshold`: a breaker that needs more consecutive failures never opens in
/// practice, which is a misconfiguration to reject, not a policy.
pub const MAX_FAILURE_THRESHOLD: u32 = 1_000_000;
/// Largest `half_open_success_threshold`: probes go one (or a few) at a time, so a larger
/// threshold would keep a recovered upstream HALF_OPEN for hours.
pub const MAX_HALF_OPEN_SUCCESSES: u32 = 10_000;

/// Probe slots live inside one fixed-size shared-data value; this bounds its size.
pub const MAX_HALF_OPEN_REQUESTS: u32 = 64;

/// The breaker settings in force on one route.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    pub enabled: bool,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before letting probes through (nanoseconds); with
    /// `recovery_backoff`, the open period of the first trip.
    pub recovery_timeout: u64,
    /// How the open period grows with consecutive trips (deterministic strategies only;
    /// `fixed` keeps `recovery_timeout` on every trip).
    pub recovery_backoff: Strategy,
    /// Cap of the open period however many trips (nanoseconds); at least `recovery_timeout`.
    pub max_recovery_timeout: u64,
    /// Probe successes in HALF_OPEN that close the breaker.
    pub half_open_success_threshold: u32,
    /// Probes allowed in flight at once in HALF_OPEN, across all workers.
    pub half_open_max_requests: u32,
    /// A probe that never reports back frees its slot after this long (nanoseconds).
    pub half_open_probe_timeout: u64,
    /// Failures older than this no longer count toward the threshold (nanoseconds).
    pub failure_reset_timeout: u64,
    /// Requests in flight on the route across all workers; 0 means unlimited.
    pub max_concurrent_requests: u32,
    pub failure_status_codes: StatusSet,
    pub ignored_status_codes: StatusSet,
    pub failure_grpc_status: GrpcSet,
    /// Count upstream connect failures, resets and timeouts (Envoy response flags).
    pub count_connect_failures: bool,
    /// Marty's `enable_metrics`: the per-request counters (`requests_total`, `success_total`,
    /// ...) of the route. Off, they are not counted (a host call each saved); the gauges and
    /// transition counters, which correctness reads, always are.
    pub enable_metrics: bool,
    pub error_classifier: ErrorClassifier,
}

impl BreakerPolicy {
    /// The resolved values, as configuration would write them (health reports, docs tests).
    pub fn to_json(&self) -> Value {
        BreakerPatch::to_json(self)
    }
}

section! {
    /// One layer's partial `circuit_breaker` section: only the fields that layer sets.
    pub struct BreakerPatch for BreakerPolicy {
        enabled: value(bool, enabled, boolean, plain),
        failure_threshold: value(u32, failure_threshold, u32_in(1, MAX_FAILURE_THRESHOLD), plain),
        recovery_timeout: value(u64, recovery_timeout, duration, seconds),
        recovery_backoff: value(Strategy, recovery_backoff, recovery_backoff, strategy_name),
        max_recovery_timeout: value(u64, max_recovery_timeout, duration, seconds),
        half_open_success_threshold:
            value(u32, half_open_success_threshold, u32_in(1, MAX_HALF_OPEN_SUCCESSES), plain),
        half_open_max_requests:
            value(u32, half_open_max_requests, u32_in(1, MAX_HALF_OPEN_REQUESTS), plain),
        half_open_probe_timeout: value(u64, half_open_probe_timeout, duration, seconds),
        failure_reset_timeout: value(u64, failure_reset_timeout, duration, seconds),
        max_concurrent_requests: value(u32, max_concurrent_requests, u32_in(0, u32::MAX), plain),
        failure_status_codes:
            list(StatusSet, failure_status_codes, StatusSet::parse, StatusSet::to_json),
        ignored_status_codes:
            list(StatusSet, ignored_status_codes, StatusSet::parse, StatusSet::to_json),
        failure_grpc_status:
            list(GrpcSet, failure_grpc_status, GrpcSet::parse, |s: &GrpcSet| s.to_json()),
        count_connect_failures: value(bool, count_connect_failures, boolean, plain),
        enable_metrics: value(bool, enable_metrics, boolean, plain),
        error_classifier: value(ErrorClassifier, error_classifier, error_classifier, classifier_name),
    }
}

/// Marty's `error_classifier`. In a proxy, what counts as a failure is configured by status
/// (`failure_status_codes`, `ignored_status_codes`, `failure_grpc_status`,
/// `count_connect_failures`); the only classifier is the default one, which applies them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorClassifier;

fn error_classifier(value: &Value, path: &str) -> Result<ErrorClassifier, ConfigError> {
    match value.as_str() {
        Some("default" | "DefaultErrorClassifier") => Ok(ErrorClassifier),
        _ => Err(expected(
            path,
            "\"default\" (a proxy classifies by status: set failure_status_codes, ignored_status_codes, failure_grpc_status)",
            value,
        )),
    }
}

fn classifier_name(_: &ErrorClassifier) -> Value {
    Value::from("default")
}

/// Strategies `recovery_backoff` accepts: the deterministic ones. A breaker's open period is
/// shared by every worker and reported in `retry-after`, so it takes no random draw, and it
/// has no failure ratio to adapt to.
pub const RECOVERY_STRATEGIES: [Strategy; 5] = [
    Strategy::Fixed,
    Strategy::Linear,
    Strategy::Exponential,
    Strategy::Fibonacci,
    Strategy::Polynomial,
];

fn recovery_backoff(value: &Value, path: &str) -> Result<Strategy, ConfigError> {
    value
        .as_str()
        .and_then(Strategy::parse)
        .filter(|s| RECOVERY_STRATEGIES.contains(s))
        .ok_or_else(|| {
            expected(
                path,
                "one of \"fixed\", \"linear\", \"exponential\", \"fibonacci\", \"polynomial\"",
                value,
            )
        })
}

/// Checks what only the resolved section can show (values from different layers together).
pub fn validate(policy: &BreakerPolicy, path: &str) -> Result<(), ConfigError> {
    // The ceiling only matters when the open period grows; a fixed one ignores it.
    let grows = policy.recovery_backoff != crate::retry::backoff::Strategy::Fixed;
    if grows && policy.max_recovery_timeout < policy.recovery_timeout {
        return Err(cap_below_floor(
            path,
            "max_recovery_timeout",
            policy.max_recovery_timeout,
            "recovery_timeout",
            policy.recovery_timeout,
        ));
    }
    Ok(())
}
