//! The `retry` section: the retry policy a route asks Envoy's router for, through its own
//! retry headers, and the budget and backoff that bound it.

use serde_json::{json, Value};

use super::json::{
    array, boolean, duration_nanos, err, expected, integer, integer_u32, join, object,
    unknown_field,
};
use super::ConfigError;
use crate::retry::backoff::{Backoff, Strategy};
use crate::retry::budget;
use crate::NANOS_PER_SEC;

/// The retry settings in force on one route.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Off by default: retrying is a change of the service's behaviour (a POST retried on a
    /// 5xx runs twice), so it is on only where configured.
    pub enabled: bool,
    /// Attempts in all, the first included: `x-envoy-max-retries` is this minus one.
    pub max_attempts: u32,
    /// Envoy `retry_on` conditions (`x-envoy-retry-on`).
    pub retry_on: Vec<String>,
    /// Envoy gRPC conditions (`x-envoy-retry-grpc-on`).
    pub grpc_retry_on: Vec<String>,
    /// `x-envoy-retriable-status-codes` (used with the `retriable-status-codes` condition).
    pub retriable_status_codes: Vec<u16>,
    /// `x-envoy-upstream-rq-per-try-timeout-ms`; 0 leaves the route's own.
    pub per_try_timeout: u64,
    pub backoff: Backoff,
    pub budget: budget::Policy,
    /// Keep the retry headers a client sent instead of removing them.
    pub trust_client_headers: bool,
    /// The upstream placement records each try's outcome for the breaker (a retried failure
    /// is still a failure of the upstream), and the placement before the router records only
    /// HALF_OPEN probes.
    pub count_attempts: bool,
}

/// Envoy's retry headers: the ones the filter sets from the policy, and every one a client
/// could send to make the router retry (removed unless `trust_client_headers`).
pub const MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
pub const RETRY_ON_HEADER: &str = "x-envoy-retry-on";
pub const RETRY_GRPC_ON_HEADER: &str = "x-envoy-retry-grpc-on";
pub const RETRIABLE_STATUS_CODES_HEADER: &str = "x-envoy-retriable-status-codes";
pub const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
pub const CLIENT_RETRY_HEADERS: &[&str] = &[
    MAX_RETRIES_HEADER,
    RETRY_ON_HEADER,
    RETRY_GRPC_ON_HEADER,
    RETRIABLE_STATUS_CODES_HEADER,
    PER_TRY_TIMEOUT_HEADER,
    "x-envoy-retriable-header-names",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Envoy's `retry_on` conditions (router docs), the only ones accepted.
pub const RETRY_ON_CONDITIONS: &[&str] = &[
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
    "http3-post-connect-failure",
];

/// Envoy's `x-envoy-retry-grpc-on` conditions.
pub const GRPC_RETRY_ON_CONDITIONS: &[&str] = &[
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl RetryPolicy {
    /// The headers the filter sets on a request of this route, computed once per route: the
    /// policy, with `max_retries` as given (0 when retries are suppressed). Empty conditions and
    /// an unset per-try timeout set nothing.
    pub fn headers(&self, max_retries: u32) -> Vec<(&'static str, String)> {
        let mut headers = vec![(MAX_RETRIES_HEADER, max_retries.to_string())];
        if !self.retry_on.is_empty() {
            headers.push((RETRY_ON_HEADER, self.retry_on.join(",")));
        }
        if !self.grpc_retry_on.is_empty() {
            headers.push((RETRY_GRPC_ON_HEADER, self.grpc_retry_on.join(",")));
        }
        if !self.retriable_status_codes.is_empty() {
            let codes: Vec<String> = self
                .retriable_status_codes
                .iter()
                .map(u16::to_string)
                .collect();
            headers.push((RETRIABLE_STATUS_CODES_HEADER, codes.join(",")));
        }
        if self.per_try_timeout > 0 {
            let ms = self.per_try_timeout.div_ceil(1_000_000).max(1);
            headers.push((PER_TRY_TIMEOUT_HEADER, ms.to_string()));
        }
        headers
    }

    /// Retries a request may make when nothing suppresses them.
    pub fn max_retries(&self) -> u32 {
        self.max_attempts.saturating_sub(1)
    }
}

/// Most attempts a route may ask for. Envoy bounds retries on its own too: the cluster's
/// `max_retries` circuit breaker (3 concurrent retries by default) and the route's timeout.
pub const MAX_ATTEMPTS: u32 = 10;
/// Largest `multiplier` accepted.
pub const MAX_MULTIPLIER: f64 = 100.0;
/// Largest `polynomial_degree` accepted.
pub const MAX_POLYNOMIAL_DEGREE: u32 = 10;
/// Largest `budget.ratio` accepted (10 retries per request: more than any `max_attempts`).
pub const MAX_BUDGET_RATIO: f64 = 10.0;
/// Longest `budget.window` accepted: counts older than this say little about the route now.
pub const MAX_BUDGET_WINDOW_NS: u64 = 300 * NANOS_PER_SEC;

/// Field names of the section, in documentation order.
pub const FIELDS: &[&str] = &[
    "enabled",
    "max_attempts",
    "retry_on",
    "grpc_retry_on",
    "retriable_status_codes",
    "per_try_timeout",
    "base_delay",
    "max_delay",
    "backoff_strategy",
    "multiplier",
    "polynomial_degree",
    "jitter",
    "budget",
    "trust_client_headers",
    "count_attempts",
];
/// The fields as `MARTY_RESILIENCE_RETRY_<FIELD>` names them (`budget` flattened).
pub const ENV_FIELDS: &[&str] = &[
    "enabled",
    "max_attempts",
    "retry_on",
    "grpc_retry_on",
    "retriable_status_codes",
    "per_try_timeout",
    "base_delay",
    "max_delay",
    "backoff_strategy",
    "multiplier",
    "polynomial_degree",
    "jitter",
    "budget_ratio",
    "budget_min_retries_per_second",
    "budget_window",
    "trust_client_headers",
    "count_attempts",
];
/// Fields whose value is a list (an environment variable gives them comma-separated).
pub const LIST_FIELDS: &[&str] = &["retry_on", "grpc_retry_on", "retriable_status_codes"];
const BUDGET_FIELDS: &[&str] = &["ratio", "min_retries_per_second", "window"];

/// One layer's partial `retry` section: only the fields that layer sets (`budget` field by
/// field).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryPatch {
    pub enabled: Option<bool>,
    pub max_attempts: Option<u32>,
    pub retry_on: Option<Vec<String>>,
    pub grpc_retry_on: Option<Vec<String>>,
    pub retriable_status_codes: Option<Vec<u16>>,
    pub per_try_timeout: Option<u64>,
    pub base_delay: Option<u64>,
    pub max_delay: Option<u64>,
    pub backoff_strategy: Option<Strategy>,
    pub multiplier: Option<f64>,
    pub polynomial_degree: Option<u32>,
    pub jitter: Option<f64>,
    pub budget_ratio: Option<f64>,
    pub budget_min_retries_per_second: Option<u32>,
    pub budget_window: Option<u64>,
    pub trust_client_headers: Option<bool>,
    pub count_attempts: Option<bool>,
}

impl RetryPatch {
    /// Reads one field; `path` is what an error names (a JSON path or a variable name).
    pub fn set(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError> {
        match key {
            "enabled" => self.enabled = Some(boolean(value, path)?),
            "max_attempts" => self.max_attempts = Some(integer_u32(value, path, 1, MAX_ATTEMPTS)?),
            "retry_on" => {
                self.retry_on = Some(conditions(
                    value,
                    path,
                    RETRY_ON_CONDITIONS,
                    "Envoy retry_on conditions",
                    "an Envoy retry_on condition",
                )?)
            }
            "grpc_retry_on" => {
                self.grpc_retry_on = Some(conditions(
                    value,
                    path,
                    GRPC_RETRY_ON_CONDITIONS,
                    "Envoy gRPC retry conditions",
                    "an Envoy gRPC retry condition",
                )?)
            }
            "retriable_status_codes" => {
                self.retriable_status_codes = Some(status_codes(value, path)?)
            }
            "per_try_timeout" => self.per_try_timeout = Some(duration_nanos(value, path, true)?),
            "base_delay" => self.base_delay = Some(duration_nanos(value, path, false)?),
            "max_delay" => self.max_delay = Some(duration_nanos(value, path, false)?),
            "backoff_strategy" => {
                self.backoff_strategy = Some(value.as_str().and_then(Strategy::parse).ok_or_else(
                    || {
                        expected(
                            path,
                            "one of \"fixed\", \"linear\", \"exponential\", \"exponential_jitter\", \"fibonacci\", \"polynomial\", \"adaptive\"",
                            value,
                        )
                    },
                )?)
            }
            "multiplier" => self.multiplier = Some(number(value, path, 1.0, MAX_MULTIPLIER)?),
            "polynomial_degree" => {
                self.polynomial_degree = Some(integer_u32(value, path, 1, MAX_POLYNOMIAL_DEGREE)?)
            }
            "jitter" => self.jitter = Some(number(value, path, 0.0, 1.0)?),
            "budget" => {
                for (field, v) in object(value, path)? {
                    self.set_budget(field, v, &join(path, field))?;
                }
            }
            "trust_client_headers" => self.trust_client_headers = Some(boolean(value, path)?),
            "count_attempts" => self.count_attempts = Some(boolean(value, path)?),
            _ => return Err(unknown_field(path, FIELDS)),
        }
        Ok(())
    }

    /// Reads one field of `budget`.
    pub fn set_budget(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError> {
        match key {
            "ratio" => self.budget_ratio = Some(number(value, path, 0.0, MAX_BUDGET_RATIO)?),
            "min_retries_per_second" => {
                self.budget_min_retries_per_second = Some(integer_u32(value, path, 0, u32::MAX)?)
            }
            "window" => {
                let window = duration_nanos(value, path, false)?;
                if window > MAX_BUDGET_WINDOW_NS {
                    return Err(expected(
                        path,
                        "a duration > 0 and at most 300 s (seconds as a number, or a string like \"10s\" or \"5m\")",
                        value,
                    ));
                }
                self.budget_window = Some(window);
            }
            _ => return Err(unknown_field(path, BUDGET_FIELDS)),
        }
        Ok(())
    }

    /// Lays this patch over `policy`: fields it sets win, the rest stay.
    pub fn apply(&self, policy: &mut RetryPolicy) {
        fn take<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        take(&mut policy.enabled, &self.enabled);
        take(&mut policy.max_attempts, &self.max_attempts);
        take(&mut policy.retry_on, &self.retry_on);
        take(&mut policy.grpc_retry_on, &self.grpc_retry_on);
        take(
            &mut policy.retriable_status_codes,
            &self.retriable_status_codes,
        );
        take(&mut policy.per_try_timeout, &self.per_try_timeout);
        take(&mut policy.backoff.base_delay, &self.base_delay);
        take(&mut policy.backoff.max_delay, &self.max_delay);
        take(&mut policy.backoff.strategy, &self.backoff_strategy);
        take(&mut policy.backoff.multiplier, &self.multiplier);
        take(
            &mut policy.backoff.polynomial_degree,
            &self.polynomial_degree,
        );
        take(&mut policy.backoff.jitter, &self.jitter);
        take(&mut policy.budget.ratio, &self.budget_ratio);
        take(
            &mut policy.budget.min_retries_per_second,
            &self.budget_min_retries_per_second,
        );
        take(&mut policy.budget.window_ns, &self.budget_window);
        take(&mut policy.trust_client_headers, &self.trust_client_headers);
        take(&mut policy.count_attempts, &self.count_attempts);
    }
}

/// A list of distinct condition names, each exactly one of `allowed`.
fn conditions(
    value: &Value,
    path: &str,
    allowed: &[&str],
    list_what: &str,
    item_what: &str,
) -> Result<Vec<String>, ConfigError> {
    let items = array(value, path, list_what)?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let name = item
            .as_str()
            .filter(|name| allowed.contains(name))
            .ok_or_else(|| {
                expected(
                    &item_path,
                    &format!("{item_what} (one of: {})", allowed.join(", ")),
                    item,
                )
            })?;
        if out.iter().any(|seen| seen == name) {
            return Err(err(&item_path, format!("\"{name}\" is listed twice")));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// A list of distinct HTTP status codes 100-599.
fn status_codes(value: &Value, path: &str) -> Result<Vec<u16>, ConfigError> {
    let items = array(value, path, "HTTP status codes (integers 100-599)")?;
    let mut out: Vec<u16> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let code = integer(item, &item_path, 100, 599)? as u16;
        if out.contains(&code) {
            return Err(err(&item_path, format!("{code} is listed twice")));
        }
        out.push(code);
    }
    Ok(out)
}

/// A number in `[min, max]`, or a decimal string (`"0.5"`): Envoy's YAML loader turns
/// fractional numbers in route metadata into strings.
fn number(value: &Value, path: &str, min: f64, max: f64) -> Result<f64, ConfigError> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => crate::fault::header::decimal(s.trim()),
        _ => None,
    };
    parsed
        .filter(|n| *n >= min && *n <= max)
        .ok_or_else(|| expected(path, &format!("a number between {min} and {max}"), value))
}

/// Checks what only the resolved section can show (values from different layers together).
/// `retriable_status_codes` without the `retriable-status-codes` condition is accepted: Envoy
/// ignores the codes then, and a later layer may add the condition.
pub fn validate(policy: &RetryPolicy, path: &str) -> Result<(), ConfigError> {
    let backoff = &policy.backoff;
    if backoff.max_delay < backoff.base_delay {
        return Err(err(
            &join(path, "max_delay"),
            format!(
                "must be >= base_delay ({}), got {}",
                crate::duration::display(backoff.base_delay),
                crate::duration::display(backoff.max_delay)
            ),
        ));
    }
    Ok(())
}

/// The resolved section, as configuration would write it (reports, docs tests).
pub fn to_json(policy: &RetryPolicy) -> Value {
    let secs = |n: u64| n as f64 / NANOS_PER_SEC as f64;
    json!({
        "enabled": policy.enabled,
        "max_attempts": policy.max_attempts,
        "retry_on": policy.retry_on,
        "grpc_retry_on": policy.grpc_retry_on,
        "retriable_status_codes": policy.retriable_status_codes,
        "per_try_timeout": secs(policy.per_try_timeout),
        "base_delay": secs(policy.backoff.base_delay),
        "max_delay": secs(policy.backoff.max_delay),
        "backoff_strategy": policy.backoff.strategy.name(),
        "multiplier": policy.backoff.multiplier,
        "polynomial_degree": policy.backoff.polynomial_degree,
        "jitter": policy.backoff.jitter,
        "budget": {
            "ratio": policy.budget.ratio,
            "min_retries_per_second": policy.budget.min_retries_per_second,
            "window": secs(policy.budget.window_ns),
        },
        "trust_client_headers": policy.trust_client_headers,
        "count_attempts": policy.count_attempts,
    })
}
