//! The `retry` section: the retry policy a route asks Envoy's router for, through its own
//! retry headers, and the budget and backoff that bound it.

use crate::retry::backoff::Backoff;
use crate::retry::budget;

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
