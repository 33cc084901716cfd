//! The retry half of a stream: the route's policy as Envoy's own retry headers, set before the
//! router, with retries switched off while the breaker is not CLOSED or the route's retry
//! budget is spent; the attempts Envoy reports (`x-envoy-attempt-count`, with the virtual
//! host's `include_attempt_count_in_response`) counted toward the budget; and, in the upstream
//! placement, each retry held for the route's backoff delay.

use log::{debug, info};

use super::Stream;
use crate::breaker::{self, State, Ticket};
use crate::config::retry::RetryPolicy;
use crate::host::{Host, Map};
use crate::proxy::bucket::BucketState;
use crate::proxy::Action;
use crate::retry::{self, Suppressed};

/// Where Envoy reports a request's tries (the virtual host's `include_attempt_count_in_response`).
const ATTEMPT_COUNT_HEADER: &str = "x-envoy-attempt-count";

impl<H: Host> Stream<H> {
    /// Upstream mode: this is one try of a request. A retry (try n >= 2, by the router's
    /// `upstream.request_attempt_count`) is held for the route's backoff delay before it goes
    /// out; the first try passes at once.
    pub(super) fn on_upstream_try(&mut self, route_name: &str) -> Action {
        let Some(bucket) = self.plugin.bucket_for(route_name) else {
            return Action::Continue;
        };
        self.bucket = Some(bucket.clone());
        let route = bucket.route();
        let policy = &route.policy.retry;
        if !policy.enabled {
            return Action::Continue;
        }
        if policy.count_attempts && route.policy.circuit_breaker.enabled {
            // Every try's outcome goes to the breaker, while it is CLOSED: probes are admitted
            // and recorded before the router.
            self.ticket = bucket.admit_cached(self.host()).or_else(|| {
                breaker::load(self.host(), &route.key)
                    .ok()
                    .filter(|(record, _, _)| record.state == State::Closed)
                    .map(|(record, _, _)| Ticket {
                        generation: record.generation,
                        probe: None,
                    })
            });
        }
        // Envoy's own count of this request's tries, not a header a client could have sent.
        let attempt = retry::attempt_from_property(
            self.host()
                .property(&["upstream", "request_attempt_count"])
                .as_deref(),
        );
        if attempt < 2 {
            return Action::Continue;
        }
        // Not counted in `retry_attempts_total` here: the placement before the router counts
        // retries from the response's `x-envoy-attempt-count`, and counting here too would
        // count each retry twice where both placements run.
        let attempt = attempt.min(policy.max_attempts.max(2));
        let failure_ratio = bucket
            .budget
            .borrow()
            .1
            .as_ref()
            .map_or(0.0, |s| s.failure_ratio);
        let delay = policy
            .backoff
            .delay(attempt - 1, failure_ratio, self.host().draw());
        debug!(
            "route {}: try {attempt} held {} ms ({})",
            route.bucket,
            delay / 1_000_000,
            policy.backoff.strategy.name()
        );
        if delay == 0 {
            return Action::Continue;
        }
        self.hold(delay, None)
    }

    /// Sets the route's retry headers (`has_body`: the request did not end with its headers,
    /// see [`RetryHeaders::for_request`](crate::config::retry::RetryHeaders::for_request)).
    pub(super) fn apply_retry_policy(
        &mut self,
        bucket: &BucketState,
        policy: &RetryPolicy,
        has_body: bool,
    ) {
        self.retries_enabled = true;
        let is_probe = self.ticket.is_some_and(|t| t.probe.is_some());
        let max_retries = {
            let mut budget = bucket.budget.borrow_mut();
            let (pending, snapshot) = &mut *budget;
            pending.request();
            match retry::max_retries(policy, is_probe, snapshot.as_ref(), pending) {
                Ok(n) => n,
                Err(Suppressed::Probe) => {
                    bucket.count(self.host(), bucket.stats.retries_suppressed_breaker, 1);
                    0
                }
                Err(Suppressed::Budget) => {
                    bucket.count(self.host(), bucket.stats.retries_suppressed_budget, 1);
                    debug!(
                        "route {}: retry budget spent; no retries",
                        bucket.route.borrow().bucket
                    );
                    0
                }
            }
        };
        let route = bucket.route();
        let headers = &route.retry_headers;
        let host = self.host();
        // Built with the policy's retries; a suppressed request says 0 instead.
        let suppressed = max_retries != policy.max_retries();
        if policy.trust_client_headers {
            // The client's own retry headers win; the policy fills in what it did not send.
            for (i, name, v) in headers.for_request(has_body) {
                if host.header(Map::RequestHeaders, name).is_none() {
                    host.set_header(Map::RequestHeaders, name, written(i, v, suppressed));
                }
            }
            return;
        }
        for (i, name, v) in headers.for_request(has_body) {
            host.set_header(Map::RequestHeaders, name, written(i, v, suppressed));
        }
        // A client must not be able to multiply load on a struggling upstream.
        for name in &headers.remove {
            host.remove_header(Map::RequestHeaders, name);
        }
    }

    /// Retries Envoy made for this request, from the response's `x-envoy-attempt-count`, on
    /// routes where Envoy reports them (learned once per route epoch:
    /// [`AttemptReports`](crate::retry::reports::AttemptReports)).
    pub(super) fn count_attempts(&mut self) {
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        let epoch = self.plugin.route_epoch();
        let known = bucket.attempt_reports(epoch);
        if !known.worth_reading() {
            return;
        }
        let host = self.host();
        let reported = host.header(Map::ResponseHeaders, ATTEMPT_COUNT_HEADER);
        let present = reported.is_some();
        let code_details = if known.needs_origin(present) {
            host.property(&["response", "code_details"])
        } else {
            None
        };
        let learned = known.learn(present, code_details.as_deref());
        if learned != known && bucket.learned_attempt_reports(epoch, learned) {
            info!(
                "route {}: Envoy does not report attempts in its responses \
                 (include_attempt_count_in_response): the retry budget sees no retries",
                bucket.route.borrow().bucket
            );
        }
        let retries = retry::retries_reported(reported.as_deref());
        if retries == 0 {
            return;
        }
        bucket.count(host, bucket.stats.retry_attempts, i64::from(retries));
        let mut budget = bucket.budget.borrow_mut();
        for _ in 0..retries {
            budget.0.retry();
        }
    }
}

/// The value of the `i`th prebuilt header: `x-envoy-max-retries` (the first) says 0 when the
/// request's retries are suppressed.
fn written(i: usize, value: &str, suppressed: bool) -> &str {
    if i == 0 && suppressed {
        "0"
    } else {
        value
    }
}
