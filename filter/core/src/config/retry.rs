//! The `retry` section: the retry policy a route asks Envoy's router for, through its own
//! retry headers, and the budget and backoff that bound it.

use serde_json::Value;

use super::json::{array, boolean, cap_below_floor, err, expected, integer, number};
use super::section::{
    duration, duration_or_zero, plain, seconds, section, strategy_name, u32_in, Section,
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
    /// Marty's `enable_circuit_breaker`: no retries for a HALF_OPEN probe (the breaker decides
    /// from one try). Off, a probe is retried like any request.
    pub enable_circuit_breaker: bool,
}

/// Envoy's retry headers: the ones the filter sets from the policy, and every one a client
/// could send to make the router retry (removed unless `trust_client_headers`).
pub const MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
pub const RETRY_ON_HEADER: &str = "x-envoy-retry-on";
pub const RETRY_GRPC_ON_HEADER: &str = "x-envoy-retry-grpc-on";
pub const RETRIABLE_STATUS_CODES_HEADER: &str = "x-envoy-retriable-status-codes";
pub const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
///
/// Only the headers that could make a request go out more often than the policy says, or hold
/// it longer, need removing: the filter always sets `x-envoy-max-retries`, which bounds every
/// retry and hedge whatever other header a client sends, and replaces each header it sets. So
/// what is left to remove is a per-try timeout the policy leaves unset (a shorter one would
/// spend the retries faster). A client's `x-envoy-attempt-count` is not removed: nothing reads
/// it (the upstream placement times a try by Envoy's own `upstream.request_attempt_count`, and
/// the router replaces the header where the virtual host asks for it). Each removal is a host
/// call per request: the list is kept to these.
pub const CLIENT_RETRY_HEADERS: &[&str] =
    &[MAX_RETRIES_HEADER, RETRY_ON_HEADER, PER_TRY_TIMEOUT_HEADER];

/// A route's retry headers, built once per route resolution rather than per request: the
/// request path only writes them (and, with retries suppressed, `x-envoy-max-retries: 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryHeaders {
    /// What to set, `x-envoy-max-retries` first with the policy's retries.
    pub set: Vec<(&'static str, String)>,
    /// The client retry headers the policy does not set, to remove.
    pub remove: Vec<&'static str>,
    /// Where `x-envoy-retry-grpc-on` is in `set`, if the policy has gRPC conditions: only a
    /// request with a body gets it ([`RetryHeaders::for_request`]).
    grpc_on: Option<usize>,
}

impl RetryHeaders {
    pub fn new(policy: &RetryPolicy) -> Self {
        let set = policy.headers(policy.max_retries());
        let remove = CLIENT_RETRY_HEADERS
            .iter()
            .copied()
            .filter(|name| !set.iter().any(|(s, _)| s == name))
            .collect();
        let grpc_on = set
            .iter()
            .position(|(name, _)| *name == RETRY_GRPC_ON_HEADER);
        Self {
            set,
            remove,
            grpc_on,
        }
    }

    /// The headers a request gets, each with its index in `set` (0 is `x-envoy-max-retries`).
    ///
    /// `x-envoy-retry-grpc-on` goes only on a request with a body. Envoy's gRPC conditions
    /// match the `grpc-status` of a gRPC reply, and a gRPC call sends its messages in the body
    /// (a unary call exactly one, even an empty one: a 5-byte frame). A request that ends with
    /// its headers (a GET, a DELETE) is therefore not a gRPC call, and the header would tell
    /// the router nothing: left out, it saves a header write (~5k instructions) per request.
    /// The exceptions are a streaming call that sends no message at all in its headers frame,
    /// and a filter after this one that turns a request into a gRPC call (gRPC-JSON
    /// transcoding): docs/retries.md says so.
    pub fn for_request(&self, has_body: bool) -> impl Iterator<Item = (usize, &'static str, &str)> {
        self.set
            .iter()
            .enumerate()
            .filter(move |(i, _)| has_body || Some(*i) != self.grpc_on)
            .map(|(i, (name, value))| (i, *name, value.as_str()))
    }
}

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
        // `retriable-status-codes` adds nothing where `5xx` already retries every listed code:
        // left out, it saves a header write per request.
        let covered = self.retry_on.iter().any(|c| c == "5xx")
            && self
                .retriable_status_codes
                .iter()
                .all(|c| (500..=599).contains(c));
        let retry_on: Vec<&str> = self
            .retry_on
            .iter()
            .map(String::as_str)
            .filter(|c| !(covered && *c == "retriable-status-codes"))
            .collect();
        if !retry_on.is_empty() {
            headers.push((RETRY_ON_HEADER, retry_on.join(",")));
        }
        if !self.grpc_retry_on.is_empty() {
            headers.push((RETRY_GRPC_ON_HEADER, self.grpc_retry_on.join(",")));
        }
        if !self.retriable_status_codes.is_empty() && !covered {
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

section! {
    /// One layer's partial `retry` section: only the fields that layer sets.
    pub struct RetryPatch for RetryPolicy {
        @before_apply enable_when_configured;
        enabled: value(bool, enabled, boolean, plain),
        max_attempts: value(u32, max_attempts, u32_in(1, MAX_ATTEMPTS), plain),
        retry_on: list(Vec<String>, retry_on, retry_on, plain),
        grpc_retry_on: list(Vec<String>, grpc_retry_on, grpc_retry_on, plain),
        retriable_status_codes: list(Vec<u16>, retriable_status_codes, status_codes, plain),
        per_try_timeout: value(u64, per_try_timeout, duration_or_zero, seconds),
        base_delay: value(u64, backoff.base_delay, duration, seconds),
        max_delay: value(u64, backoff.max_delay, duration, seconds),
        backoff_strategy: value(Strategy, backoff.strategy, backoff_strategy, strategy_name),
        multiplier: value(f64, backoff.multiplier, number_in(1.0, MAX_MULTIPLIER), plain),
        polynomial_degree:
            value(u32, backoff.polynomial_degree, u32_in(1, MAX_POLYNOMIAL_DEGREE), plain),
        jitter: value(f64, backoff.jitter, number_in(0.0, 1.0), plain),
        budget: object(BudgetPatch),
        trust_client_headers: value(bool, trust_client_headers, boolean, plain),
        count_attempts: value(bool, count_attempts, boolean, plain),
        enable_circuit_breaker: value(bool, enable_circuit_breaker, boolean, plain),
        enable_adaptive_delays: value(bool, backoff.adaptive, boolean, plain),
    }
}

section! {
    /// One layer's partial `retry.budget`.
    pub struct BudgetPatch for RetryPolicy {
        ratio: value(f64, budget.ratio, number_in(0.0, MAX_BUDGET_RATIO), plain),
        min_retries_per_second:
            value(u32, budget.min_retries_per_second, u32_in(0, u32::MAX), plain),
        window: value(u64, budget.window_ns, budget_window, seconds),
    }
}

/// A layer that configures retries without saying `enabled` asks for retries: the guide's
/// `retry` section (max_attempts, base_delay, backoff_strategy, ...) has no switch, and
/// retries. Presets keep retries off; `"enabled": false` in a layer keeps them off there.
fn enable_when_configured(patch: &RetryPatch, policy: &mut RetryPolicy) {
    if patch.enabled.is_none() && *patch != RetryPatch::default() {
        policy.enabled = true;
    }
}

fn retry_on(value: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
    conditions(
        value,
        path,
        RETRY_ON_CONDITIONS,
        "Envoy retry_on conditions",
        "an Envoy retry_on condition",
    )
}

fn grpc_retry_on(value: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
    conditions(
        value,
        path,
        GRPC_RETRY_ON_CONDITIONS,
        "Envoy gRPC retry conditions",
        "an Envoy gRPC retry condition",
    )
}

fn backoff_strategy(value: &Value, path: &str) -> Result<Strategy, ConfigError> {
    value.as_str().and_then(Strategy::parse).ok_or_else(|| {
        expected(
            path,
            "one of \"fixed\", \"linear\", \"exponential\", \"exponential_jitter\", \"fibonacci\", \"polynomial\", \"adaptive\"",
            value,
        )
    })
}

fn budget_window(value: &Value, path: &str) -> Result<u64, ConfigError> {
    let window = duration(value, path)?;
    if window > MAX_BUDGET_WINDOW_NS {
        return Err(expected(
            path,
            "a duration > 0 and at most 300 s (seconds as a number, or a string like \"10s\" or \"5m\")",
            value,
        ));
    }
    Ok(window)
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
fn number_in(min: f64, max: f64) -> impl Fn(&Value, &str) -> Result<f64, ConfigError> {
    move |value, path| {
        let parsed = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => crate::fault::header::decimal(s.trim()),
            _ => None,
        };
        parsed.filter(|n| *n >= min && *n <= max).ok_or_else(|| {
            let range = format!("a number between {} and {}", number(min), number(max));
            expected(path, &range, value)
        })
    }
}

/// Checks what only the resolved section can show (values from different layers together).
/// `retriable_status_codes` without the `retriable-status-codes` condition is accepted: Envoy
/// ignores the codes then, and a later layer may add the condition.
pub fn validate(policy: &RetryPolicy, path: &str) -> Result<(), ConfigError> {
    let backoff = &policy.backoff;
    if backoff.max_delay < backoff.base_delay {
        return Err(cap_below_floor(
            path,
            "max_delay",
            backoff.max_delay,
            "base_delay",
            backoff.base_delay,
        ));
    }
    Ok(())
}

/// The resolved section, as configuration would write it (reports, docs tests).
pub fn to_json(policy: &RetryPolicy) -> Value {
    RetryPatch::to_json(policy)
}
