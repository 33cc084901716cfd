//! One HTTP stream: on the request headers, inject a fault or not, then admit or reject; watch
//! the response, and report the outcome when the stream ends. Host reads are kept to what the
//! decision needs: the route name per request, `:status` per response, `grpc-status` only where
//! gRPC puts it, Envoy's response flags only when the status alone is not conclusive, and the
//! fault triggers only on routes where fault injection is enabled.

use std::rc::Rc;

use log::debug;
use marty_resilience_core::breaker::{self, Decision, Outcome, State, Ticket};
use marty_resilience_core::classify::{classify, needs_flags, Response};
use marty_resilience_core::config::Mode;
use marty_resilience_core::fault::Fault;
use marty_resilience_core::NANOS_PER_SEC;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::health;
use crate::host::{self, Map};
use crate::metrics::inc;
use crate::plugin::{now, AbortReply, Bucket, Plugin};

mod faults;
mod retries;

pub struct Stream {
    context_id: u32,
    plugin: Rc<Plugin>,
    bucket: Option<Rc<Bucket>>,
    /// Present while the request counts toward the breaker.
    ticket: Option<Ticket>,
    /// The request holds a slot of `active_requests`.
    active: bool,
    response: Response,
    /// The request holds a slot of `active_faults`.
    fault_active: bool,
    /// The request is held by an injected delay.
    parked: bool,
    /// `:path`, when something already needed it.
    path: Option<String>,
    /// The route's retry policy applied to this request (its attempts are then counted).
    retries_enabled: bool,
    finished: bool,
}

impl Stream {
    pub fn new(context_id: u32, plugin: Rc<Plugin>) -> Self {
        Self {
            context_id,
            plugin,
            bucket: None,
            ticket: None,
            active: false,
            response: Response::default(),
            fault_active: false,
            parked: false,
            path: None,
            retries_enabled: false,
            finished: false,
        }
    }

    fn on_request(&mut self) -> Action {
        let now = now();
        let route_name = host::property(&["xds", "route_name"])
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        if self.plugin.settings.mode == Mode::Upstream {
            return self.on_upstream_try(&route_name, now);
        }
        if self.plugin.settings.health.enabled {
            // Only here does every request pay for reading its path.
            let path = request_path();
            if let Some(endpoint) = health::endpoint(&self.plugin.settings.health, &path) {
                return health::answer(&self.plugin, endpoint);
            }
            self.path = Some(path);
        }
        let bucket = self.plugin.resolve(&route_name, now.mono_ns);
        self.bucket = Some(bucket.clone());
        inc(bucket.metrics.requests);

        let route = bucket.route.borrow().clone();
        let fault = if route.policy.failure_injection.enabled {
            self.choose_fault(&bucket, &route.policy.failure_injection)
        } else {
            None
        };
        let delay = match fault {
            // An aborted request never reaches the upstream, so it never meets the breaker.
            Some(Fault {
                abort: Some(abort),
                delay,
                ..
            }) => {
                self.applied(&bucket, fault.as_ref());
                let reply = AbortReply {
                    http_status: abort.http_status,
                    grpc_status: is_grpc().then_some(abort.grpc_status),
                };
                return match delay {
                    Some(nanos) => self.hold(now.mono_ns, nanos, Some(reply)),
                    None if reply.send() => Action::Pause,
                    None => Action::Continue,
                };
            }
            Some(Fault { delay, .. }) => delay,
            None => None,
        };
        match self.admit(&bucket, now) {
            Action::Continue if route.policy.retry.enabled => {
                self.apply_retry_policy(&bucket, &route.policy.retry);
                match delay {
                    Some(nanos) => {
                        self.applied(&bucket, fault.as_ref());
                        self.hold(now.mono_ns, nanos, None)
                    }
                    None => Action::Continue,
                }
            }
            Action::Continue => match delay {
                Some(nanos) => {
                    self.applied(&bucket, fault.as_ref());
                    self.hold(now.mono_ns, nanos, None)
                }
                None => Action::Continue,
            },
            rejected => {
                // Rejected before its delay began: the fault never happened.
                if std::mem::take(&mut self.fault_active) {
                    host::increment_metric(bucket.metrics.active_faults, -1);
                }
                rejected
            }
        }
    }

    /// The breaker's admission; `Continue` when the request may go upstream.
    fn admit(&mut self, bucket: &Rc<Bucket>, now: breaker::Now) -> Action {
        let route = bucket.route.borrow().clone();
        let policy = &route.policy.circuit_breaker;
        if !policy.enabled {
            return Action::Continue;
        }
        let decision = match bucket.admit_fast() {
            Some(ticket) => Decision::Allow(ticket),
            None => match self
                .plugin
                .update(bucket, |rec| breaker::admit(rec, policy, now))
            {
                Ok(step) => step.result,
                // Shared state unavailable: let the request through untracked (fail open).
                Err(_) => return Action::Continue,
            },
        };
        match decision {
            Decision::Allow(ticket) => {
                self.ticket = Some(ticket);
                host::increment_metric(bucket.metrics.active_requests, 1);
                self.active = true;
                if policy.max_concurrent_requests > 0 {
                    // Increment first, then read: of racing requests, the one whose increment
                    // came last sees every other, so the cap is never exceeded (it may reject
                    // a request it could have let through, never the reverse).
                    let in_flight = host::get_metric(bucket.metrics.active_requests).unwrap_or(0);
                    if in_flight > u64::from(policy.max_concurrent_requests) {
                        self.release(Outcome::Ignored);
                        inc(bucket.metrics.concurrency_rejected);
                        return self.reject(bucket, RejectReason::Concurrency, 0);
                    }
                }
                Action::Continue
            }
            Decision::Reject {
                state,
                retry_after_ns,
            } => {
                let reason = if state == State::HalfOpen {
                    RejectReason::HalfOpen
                } else {
                    RejectReason::Open
                };
                self.reject(bucket, reason, retry_after_ns)
            }
        }
    }

    /// Answers locally: 503 for HTTP, a trailers-only UNAVAILABLE for gRPC.
    fn reject(&mut self, bucket: &Bucket, reason: RejectReason, retry_after_ns: u64) -> Action {
        inc(bucket.metrics.rejected);
        let route = bucket.route.borrow().bucket.clone();
        debug!("route {route}: rejected ({})", reason.details());
        let retry_after = breaker::retry_after_secs(retry_after_ns).to_string();
        let pushback_ms = retry_after_ns
            .div_ceil(NANOS_PER_SEC / 1000)
            .max(1)
            .to_string();
        let sent = if is_grpc() {
            host::send_local_response(
                200,
                reason.details(),
                reason.message().as_bytes(),
                &[
                    ("x-marty-circuit", reason.circuit()),
                    ("grpc-retry-pushback-ms", &pushback_ms),
                ],
                14,
            )
        } else {
            host::send_local_response(
                503,
                reason.details(),
                format!("{}\n", reason.message()).as_bytes(),
                &[
                    ("x-marty-circuit", reason.circuit()),
                    ("retry-after", &retry_after),
                    ("content-type", "text/plain"),
                ],
                -1,
            )
        };
        if sent {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// Ends the request's part in the breaker exactly once, whichever callback comes first.
    fn release(&mut self, outcome: Outcome) {
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        if std::mem::take(&mut self.active) {
            host::increment_metric(bucket.metrics.active_requests, -1);
        }
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        match outcome {
            Outcome::Success => inc(bucket.metrics.success),
            Outcome::Failure => {
                inc(bucket.metrics.failure);
                if self.retries_enabled {
                    bucket.budget.borrow_mut().0.failure();
                }
            }
            Outcome::Ignored => {}
        }
        // With count_attempts the upstream placement records every try; here only probes.
        let route = bucket.route.borrow().clone();
        let tries_recorded_upstream = self.plugin.settings.mode == Mode::Downstream
            && route.policy.retry.enabled
            && route.policy.retry.count_attempts
            && ticket.probe.is_none();
        if tries_recorded_upstream {
            return;
        }
        // The common case, a success with no failure streak to reset, needs no shared write.
        let nothing_to_do = outcome == Outcome::Success
            && ticket.probe.is_none()
            && bucket.view.borrow().as_ref().is_some_and(|view| {
                view.state == State::Closed
                    && view.generation == ticket.generation
                    && view.consecutive_failures == 0
            });
        if nothing_to_do {
            return;
        }
        let now = now();
        let _ = self.plugin.update(&bucket, |rec| {
            breaker::record(rec, &route.policy.circuit_breaker, now, ticket, outcome)
        });
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if std::mem::take(&mut self.parked) {
            // The stream ended while held (the client left): it must never be resumed.
            self.plugin.unpark(self.context_id);
        }
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        if std::mem::take(&mut self.fault_active) {
            host::increment_metric(bucket.metrics.active_faults, -1);
        }
        if self.ticket.is_none() {
            self.release(Outcome::Ignored);
            return;
        }
        let route = bucket.route.borrow().clone();
        let policy = &route.policy.circuit_breaker;
        if needs_flags(policy, &self.response) {
            self.response.flags = host::property(&["response", "flags"])
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_le_bytes);
        }
        let outcome = classify(policy, &self.response);
        self.release(outcome);
    }
}

#[derive(Clone, Copy)]
enum RejectReason {
    Open,
    HalfOpen,
    Concurrency,
}

impl RejectReason {
    /// Envoy's response code details, visible as `%RESPONSE_CODE_DETAILS%` in access logs.
    fn details(self) -> &'static str {
        match self {
            Self::Open => "marty_circuit_open",
            Self::HalfOpen => "marty_circuit_half_open",
            Self::Concurrency => "marty_max_concurrent_requests",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Open => "circuit breaker is open",
            Self::HalfOpen => "circuit breaker is half-open and its probes are in flight",
            Self::Concurrency => "too many concurrent requests on this route",
        }
    }

    fn circuit(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::HalfOpen => "half-open",
            Self::Concurrency => "closed",
        }
    }
}

fn request_path() -> String {
    host::header(Map::RequestHeaders, ":path")
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_default()
}

/// gRPC requests get gRPC replies. Read only when the filter replies itself.
fn is_grpc() -> bool {
    host::header(Map::RequestHeaders, "content-type")
        .is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

fn parse_u32(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.on_request()
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if self.retries_enabled {
            self.count_attempts();
        }
        if self.ticket.is_none() {
            return Action::Continue;
        }
        self.response.http_status = host::header(Map::ResponseHeaders, ":status")
            .and_then(|s| parse_u32(&s))
            .and_then(|s| u16::try_from(s).ok());
        if end_of_stream {
            // A headers-only response is where gRPC puts the status of a trailers-only reply.
            self.response.complete = true;
            self.response.grpc_status =
                host::header(Map::ResponseHeaders, "grpc-status").and_then(|s| parse_u32(&s));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.response.complete = true;
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        if self.ticket.is_some() {
            self.response.complete = true;
            self.response.grpc_status =
                host::header(Map::ResponseTrailers, "grpc-status").and_then(|s| parse_u32(&s));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
    }
}
