//! The retry half of a stream: the route's policy as Envoy's own retry headers, set before the
//! router, with retries switched off while the breaker is not CLOSED or the route's retry
//! budget is spent; and the attempts Envoy reports (`x-envoy-attempt-count`, with the virtual
//! host's `include_attempt_count_in_response`) counted toward the budget.

use log::debug;
use marty_resilience_core::breaker::{Now, State, Ticket};
use marty_resilience_core::config::retry::{RetryPolicy, CLIENT_RETRY_HEADERS};
use marty_resilience_core::store;
use proxy_wasm::types::Action;

use super::Stream;
use crate::host::{self, HostStore, Map};
use crate::metrics::inc;
use crate::plugin::Bucket;

/// Attempts counted from one response, at most: Envoy's own retry limit is far lower.
const MAX_COUNTED_ATTEMPTS: u32 = 16;

impl Stream {
    /// Upstream mode: this is one try of a request. A retry (try n >= 2, from the router's
    /// `x-envoy-attempt-count`, which the virtual host's `include_request_attempt_count` adds) is
    /// held for the route's backoff delay before it goes out; the first try passes at once.
    pub(super) fn on_upstream_try(&mut self, route_name: &str, now: Now) -> Action {
        let bucket = self.plugin.resolve(route_name, now.mono_ns);
        self.bucket = Some(bucket.clone());
        let route = bucket.route.borrow().clone();
        let retry = &route.policy.retry;
        if !retry.enabled {
            return Action::Continue;
        }
        if retry.count_attempts && route.policy.circuit_breaker.enabled {
            // Every try's outcome goes to the breaker, while it is CLOSED: probes are admitted
            // and recorded before the router.
            self.ticket = bucket.admit_fast().or_else(|| {
                store::load(&HostStore, &route.key)
                    .ok()
                    .filter(|(record, _, _)| record.state == State::Closed)
                    .map(|(record, _, _)| Ticket {
                        generation: record.generation,
                        probe: None,
                    })
            });
        }
        let attempt = host::header(Map::RequestHeaders, "x-envoy-attempt-count")
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u32>().ok())
            .unwrap_or(1);
        if attempt < 2 {
            return Action::Continue;
        }
        inc(bucket.metrics.retry_attempts);
        let failure_ratio = bucket
            .budget
            .borrow()
            .1
            .as_ref()
            .map_or(0.0, |s| s.failure_ratio);
        let delay = retry
            .backoff
            .delay(attempt - 1, failure_ratio, self.plugin.draw());
        debug!(
            "route {}: try {attempt} held {} ms ({})",
            route.bucket,
            delay / 1_000_000,
            retry.backoff.strategy.name()
        );
        if delay == 0 {
            return Action::Continue;
        }
        self.hold(now.mono_ns, delay, None)
    }

    pub(super) fn apply_retry_policy(&mut self, bucket: &Bucket, policy: &RetryPolicy) {
        self.retries_enabled = true;
        let probe = self.ticket.is_some_and(|t| t.probe.is_some());
        let max_retries = {
            let mut budget = bucket.budget.borrow_mut();
            let (pending, snapshot) = &mut *budget;
            pending.request();
            if probe {
                // No retries into a probing upstream (Marty's enable_circuit_breaker).
                inc(bucket.metrics.retries_suppressed_breaker);
                0
            } else if snapshot
                .as_ref()
                .is_some_and(|s| !s.allows_retry_with(pending, &policy.budget))
            {
                inc(bucket.metrics.retries_suppressed_budget);
                debug!(
                    "route {}: retry budget spent; no retries",
                    bucket.route.borrow().bucket
                );
                0
            } else {
                policy.max_retries()
            }
        };
        let headers = policy.headers(max_retries);
        if policy.trust_client_headers {
            // The client's own retry headers win; the policy fills in what it did not send.
            for (name, value) in &headers {
                if host::header(Map::RequestHeaders, name).is_none() {
                    host::set_header(Map::RequestHeaders, name, value);
                }
            }
            return;
        }
        for (name, value) in &headers {
            host::set_header(Map::RequestHeaders, name, value);
        }
        // A client must not be able to multiply load on a struggling upstream.
        for name in CLIENT_RETRY_HEADERS {
            if !headers.iter().any(|(set, _)| set == name) {
                host::remove_header(Map::RequestHeaders, name);
            }
        }
    }

    /// Retries Envoy made for this request, from the response's `x-envoy-attempt-count`.
    pub(super) fn count_attempts(&mut self) {
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        let attempts = host::header(Map::ResponseHeaders, "x-envoy-attempt-count")
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u32>().ok())
            .unwrap_or(1)
            .min(MAX_COUNTED_ATTEMPTS);
        let retries = attempts.saturating_sub(1);
        if retries == 0 {
            return;
        }
        host::increment_metric(bucket.metrics.retry_attempts, i64::from(retries));
        let mut budget = bucket.budget.borrow_mut();
        for _ in 0..retries {
            budget.0.retry();
        }
    }
}
