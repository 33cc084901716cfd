//! Retries: how long a retry waits ([`backoff`]), whether a route may retry at all
//! ([`budget`]), and the per-request decisions the filter makes from them.

pub mod backoff;
pub mod budget;
pub mod reports;

use crate::config::retry::RetryPolicy;
use crate::config::Mode;

/// Why a request goes out with retries switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suppressed {
    /// The request is a HALF_OPEN probe: no retries into a probing upstream (Marty's
    /// `enable_circuit_breaker`).
    Probe,
    /// The route's retry budget is spent.
    Budget,
}

/// The `x-envoy-max-retries` a request gets: the policy's, unless it is a probe (with
/// `enable_circuit_breaker`, the default) or the
/// budget (as of the last flush plus this worker's unflushed counts) has no room for a retry.
pub fn max_retries(
    policy: &RetryPolicy,
    is_probe: bool,
    snapshot: Option<&budget::Snapshot>,
    pending: &budget::Pending,
) -> Result<u32, Suppressed> {
    if is_probe && policy.enable_circuit_breaker {
        return Err(Suppressed::Probe);
    }
    if snapshot.is_some_and(|s| !s.allows_retry_with(pending, &policy.budget)) {
        return Err(Suppressed::Budget);
    }
    Ok(policy.max_retries())
}

/// Whether the breaker learns this request's outcome from the upstream placement, try by try
/// (`count_attempts`), instead of from the placement before the router. Probes are always
/// recorded before the router: only it holds their lease.
pub fn outcome_recorded_upstream(
    mode: Mode,
    policy: &RetryPolicy,
    breaker_enabled: bool,
    is_probe: bool,
) -> bool {
    mode == Mode::Downstream
        && breaker_enabled
        && policy.enabled
        && policy.count_attempts
        && !is_probe
}

/// Attempts counted from one response at most: Envoy's own retry limit is far lower.
pub const MAX_COUNTED_ATTEMPTS: u32 = 16;

/// The retries a response's `x-envoy-attempt-count` reports (0 when absent or unreadable).
pub fn retries_reported(attempt_count: Option<&[u8]>) -> u32 {
    attempt_number(attempt_count)
        .min(MAX_COUNTED_ATTEMPTS)
        .saturating_sub(1)
}

/// The try number of Envoy's `upstream.request_attempt_count` property (an 8-byte
/// little-endian integer; 1 when absent or unreadable).
pub fn attempt_from_property(value: Option<&[u8]>) -> u32 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// The try number of `x-envoy-attempt-count` (1 when absent or unreadable).
pub fn attempt_number(attempt_count: Option<&[u8]>) -> u32 {
    attempt_count
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u32>().ok())
        .unwrap_or(1)
}
