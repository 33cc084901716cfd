//! The `circuit_breaker` section: its resolved policy, and the partial form ("patch") that each
//! configuration layer (preset, plugin JSON, environment, route entry, route metadata) provides.

use serde_json::{json, Value};

use super::codes::{GrpcSet, StatusSet};
use super::json::{boolean, duration_nanos, err, expected, integer_u32, join, unknown_field};
use super::ConfigError;
use crate::retry::backoff::Strategy;

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
}

impl BreakerPolicy {
    /// The resolved values, as configuration would write them (health reports, docs tests).
    pub fn to_json(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "failure_threshold": self.failure_threshold,
            "recovery_timeout": secs(self.recovery_timeout),
            "recovery_backoff": self.recovery_backoff.name(),
            "max_recovery_timeout": secs(self.max_recovery_timeout),
            "half_open_success_threshold": self.half_open_success_threshold,
            "half_open_max_requests": self.half_open_max_requests,
            "half_open_probe_timeout": secs(self.half_open_probe_timeout),
            "failure_reset_timeout": secs(self.failure_reset_timeout),
            "max_concurrent_requests": self.max_concurrent_requests,
            "failure_status_codes": self.failure_status_codes.to_json(),
            "ignored_status_codes": self.ignored_status_codes.to_json(),
            "failure_grpc_status": self.failure_grpc_status.to_json(),
            "count_connect_failures": self.count_connect_failures,
        })
    }
}

fn secs(nanos: u64) -> f64 {
    nanos as f64 / crate::NANOS_PER_SEC as f64
}

/// One layer's partial `circuit_breaker` section: only the fields that layer sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BreakerPatch {
    pub enabled: Option<bool>,
    pub failure_threshold: Option<u32>,
    pub recovery_timeout: Option<u64>,
    pub recovery_backoff: Option<Strategy>,
    pub max_recovery_timeout: Option<u64>,
    pub half_open_success_threshold: Option<u32>,
    pub half_open_max_requests: Option<u32>,
    pub half_open_probe_timeout: Option<u64>,
    pub failure_reset_timeout: Option<u64>,
    pub max_concurrent_requests: Option<u32>,
    pub failure_status_codes: Option<StatusSet>,
    pub ignored_status_codes: Option<StatusSet>,
    pub failure_grpc_status: Option<GrpcSet>,
    pub count_connect_failures: Option<bool>,
}

/// Field names of the section, in documentation order.
pub const FIELDS: &[&str] = &[
    "enabled",
    "failure_threshold",
    "recovery_timeout",
    "recovery_backoff",
    "max_recovery_timeout",
    "half_open_success_threshold",
    "half_open_max_requests",
    "half_open_probe_timeout",
    "failure_reset_timeout",
    "max_concurrent_requests",
    "failure_status_codes",
    "ignored_status_codes",
    "failure_grpc_status",
    "count_connect_failures",
];

/// Fields whose value is a list (an environment variable gives them comma-separated).
pub const LIST_FIELDS: &[&str] = &[
    "failure_status_codes",
    "ignored_status_codes",
    "failure_grpc_status",
];

impl BreakerPatch {
    /// Reads one field; `path` is what an error names (a JSON path or a variable name).
    pub fn set(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError> {
        match key {
            "enabled" => self.enabled = Some(boolean(value, path)?),
            "failure_threshold" => {
                self.failure_threshold = Some(integer_u32(value, path, 1, u32::MAX)?)
            }
            "recovery_timeout" => self.recovery_timeout = Some(duration_nanos(value, path, false)?),
            "recovery_backoff" => self.recovery_backoff = Some(recovery_backoff(value, path)?),
            "max_recovery_timeout" => {
                self.max_recovery_timeout = Some(duration_nanos(value, path, false)?)
            }
            "half_open_success_threshold" => {
                self.half_open_success_threshold = Some(integer_u32(value, path, 1, u32::MAX)?)
            }
            "half_open_max_requests" => {
                self.half_open_max_requests =
                    Some(integer_u32(value, path, 1, MAX_HALF_OPEN_REQUESTS)?)
            }
            "half_open_probe_timeout" => {
                self.half_open_probe_timeout = Some(duration_nanos(value, path, false)?)
            }
            "failure_reset_timeout" => {
                self.failure_reset_timeout = Some(duration_nanos(value, path, false)?)
            }
            "max_concurrent_requests" => {
                self.max_concurrent_requests = Some(integer_u32(value, path, 0, u32::MAX)?)
            }
            "failure_status_codes" => {
                self.failure_status_codes = Some(StatusSet::parse(value, path)?)
            }
            "ignored_status_codes" => {
                self.ignored_status_codes = Some(StatusSet::parse(value, path)?)
            }
            "failure_grpc_status" => self.failure_grpc_status = Some(GrpcSet::parse(value, path)?),
            "count_connect_failures" => self.count_connect_failures = Some(boolean(value, path)?),
            _ => return Err(unknown_field(path, FIELDS)),
        }
        Ok(())
    }

    /// Lays this patch over `policy`: fields it sets win, the rest stay.
    pub fn apply(&self, policy: &mut BreakerPolicy) {
        fn take<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        take(&mut policy.enabled, &self.enabled);
        take(&mut policy.failure_threshold, &self.failure_threshold);
        take(&mut policy.recovery_timeout, &self.recovery_timeout);
        take(&mut policy.recovery_backoff, &self.recovery_backoff);
        take(&mut policy.max_recovery_timeout, &self.max_recovery_timeout);
        take(
            &mut policy.half_open_success_threshold,
            &self.half_open_success_threshold,
        );
        take(
            &mut policy.half_open_max_requests,
            &self.half_open_max_requests,
        );
        take(
            &mut policy.half_open_probe_timeout,
            &self.half_open_probe_timeout,
        );
        take(
            &mut policy.failure_reset_timeout,
            &self.failure_reset_timeout,
        );
        take(
            &mut policy.max_concurrent_requests,
            &self.max_concurrent_requests,
        );
        take(&mut policy.failure_status_codes, &self.failure_status_codes);
        take(&mut policy.ignored_status_codes, &self.ignored_status_codes);
        take(&mut policy.failure_grpc_status, &self.failure_grpc_status);
        take(
            &mut policy.count_connect_failures,
            &self.count_connect_failures,
        );
    }
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
        return Err(err(
            &join(path, "max_recovery_timeout"),
            format!(
                "must be >= recovery_timeout ({}), got {}",
                crate::duration::display(policy.recovery_timeout),
                crate::duration::display(policy.max_recovery_timeout)
            ),
        ));
    }
    Ok(())
}
