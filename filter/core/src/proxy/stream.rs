//! One HTTP stream: on the request headers, inject a fault or not, then admit or reject; watch
//! the response, and report the outcome when the stream ends. Host reads are kept to what the
//! decision needs: the route name per request, `:status` per response, `grpc-status` only where
//! gRPC puts it, Envoy's response flags only when the status alone is not conclusive, and the
//! fault triggers only on routes where fault injection is enabled.

mod faults;
mod retries;

use std::rc::Rc;

use log::debug;

use super::bucket::{BucketState, Deferred, InFlight, Slot};
use super::plugin::ThenAbort;
use super::reply::{self, Rejection};
use super::{health_endpoint, Action, Plugin};
use crate::breaker::{self, Decision, Outcome, State, Ticket};
use crate::classify::{
    classify, from_upstream, needs_flags, needs_origin, probe_settled_at_headers, Response,
};
use crate::config::Mode;
use crate::fault::Fault;
use crate::health;
use crate::host::{Host, Map};
use crate::retry;

pub struct Stream<H: Host> {
    context_id: u32,
    plugin: Rc<Plugin<H>>,
    bucket: Option<Rc<BucketState>>,
    /// Present while the request counts toward the breaker.
    ticket: Option<Ticket>,
    /// How the request holds its slot of `active_requests`.
    slot: InFlight,
    response: Response,
    /// The request holds a slot of `active_faults`.
    fault_active: bool,
    /// The request is held by a delay.
    parked: bool,
    /// `:path`, when something already needed it.
    path: Option<String>,
    /// The route's retry policy applied to this request (its attempts are then counted).
    retries_enabled: bool,
    finished: bool,
}

impl<H: Host> Stream<H> {
    pub fn new(context_id: u32, plugin: Rc<Plugin<H>>) -> Self {
        Self {
            context_id,
            plugin,
            bucket: None,
            ticket: None,
            slot: InFlight::None,
            response: Response::default(),
            fault_active: false,
            parked: false,
            path: None,
            retries_enabled: false,
            finished: false,
        }
    }

    fn host(&self) -> &H {
        &self.plugin.host
    }

    /// `end_of_stream`: the request ended with its headers (it has no body).
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let route_name = self
            .host()
            .property(&["xds", "route_name"])
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        if self.plugin.settings.mode == Mode::Upstream {
            return self.on_upstream_try(&route_name);
        }
        let health = &self.plugin.settings.health;
        if health.enabled
            && health
                .route
                .as_deref()
                .is_none_or(|route| route == route_name)
        {
            // Without `health.route`, every request pays for reading its path here.
            let path = self.request_path();
            if let Some(endpoint) = health::endpoint(&self.plugin.settings.health, &path) {
                health_endpoint::answer(&self.plugin, endpoint);
                return Action::Pause;
            }
            self.path = Some(path);
        }
        let Some(bucket) = self.plugin.bucket_for(&route_name) else {
            // No upstream cluster: nothing for a breaker, a fault or a retry to act on.
            return Action::Continue;
        };
        self.bucket = Some(bucket.clone());
        self.plugin.count_later(&bucket, Deferred::Requests);

        let route = bucket.route();
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
                let then = ThenAbort {
                    abort,
                    grpc: self.is_grpc(),
                };
                return match delay {
                    Some(nanos) => self.hold(nanos, Some(then)),
                    None => self.send(&reply::fault_abort(then.abort, then.grpc)),
                };
            }
            Some(Fault { delay, .. }) => delay,
            None => None,
        };
        match self.admit(&bucket) {
            Action::Continue => {
                if route.policy.retry.enabled {
                    self.apply_retry_policy(&bucket, &route.policy.retry, !end_of_stream);
                }
                match delay {
                    Some(nanos) => {
                        self.applied(&bucket, fault.as_ref());
                        self.hold(nanos, None)
                    }
                    None => Action::Continue,
                }
            }
            Action::Pause => {
                // Rejected before its delay began: the fault never happened.
                if std::mem::take(&mut self.fault_active) {
                    bucket.give_back(self.host(), Slot::Fault);
                }
                Action::Pause
            }
        }
    }

    /// Sends a local reply; `Pause` once Envoy took it (it then ends the stream).
    fn send(&self, reply: &crate::host::LocalReply) -> Action {
        if self.host().send_local_reply(reply) {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// The breaker's admission; `Continue` when the request may go upstream.
    fn admit(&mut self, bucket: &Rc<BucketState>) -> Action {
        let route = bucket.route();
        let policy = &route.policy.circuit_breaker;
        if !policy.enabled {
            return Action::Continue;
        }
        let decision = match bucket.admit_cached(self.host()) {
            Some(ticket) => Decision::Allow(ticket),
            None => {
                // The clock only past the cached admission: it needs no time.
                let now = self.plugin.now();
                let cached = breaker::reject_cached(bucket.view.borrow().as_ref(), now.mono_ns);
                match cached {
                    Some(rejection) => rejection,
                    None => match self
                        .plugin
                        .update(bucket, |rec| breaker::admit(rec, policy, now))
                    {
                        Ok(step) => step.result,
                        // Shared state unavailable: let the request through untracked.
                        Err(_) => return Action::Continue,
                    },
                }
            }
        };
        match decision {
            Decision::Allow(ticket) => {
                self.ticket = Some(ticket);
                if policy.max_concurrent_requests == 0 {
                    self.plugin.move_active_later(bucket, 1);
                    self.slot = InFlight::Deferred;
                    return Action::Continue;
                }
                if !bucket.take_slot(self.host(), Slot::Request, policy.max_concurrent_requests) {
                    // A probe's lease is given back at once.
                    self.release(Outcome::Ignored);
                    bucket.count(self.host(), bucket.stats.concurrency_rejected, 1);
                    return self.reject(bucket, Rejection::Concurrency, 0);
                }
                self.slot = InFlight::Gauge;
                Action::Continue
            }
            Decision::Reject {
                state,
                retry_after_ns,
            } => {
                let reason = if state == State::HalfOpen {
                    Rejection::HalfOpen
                } else {
                    Rejection::Open
                };
                self.reject(bucket, reason, retry_after_ns)
            }
        }
    }

    /// Answers locally: 503 for HTTP, a trailers-only UNAVAILABLE for gRPC.
    fn reject(&mut self, bucket: &BucketState, reason: Rejection, retry_after_ns: u64) -> Action {
        bucket.count(self.host(), bucket.stats.rejected, 1);
        debug!(
            "route {}: rejected ({})",
            bucket.route.borrow().bucket,
            reason.details()
        );
        self.send(&reply::rejection(
            reason,
            retry_after_ns,
            self.is_grpc(),
            self.plugin.settings.prevent_caller_retries,
        ))
    }

    /// Ends the request's part in the breaker exactly once, whichever callback comes first.
    fn release(&mut self, outcome: Outcome) {
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        match std::mem::replace(&mut self.slot, InFlight::None) {
            InFlight::None => {}
            InFlight::Gauge => bucket.give_back(self.host(), Slot::Request),
            InFlight::Deferred => self.plugin.move_active_later(&bucket, -1),
        }
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if outcome == Outcome::Failure && self.retries_enabled {
            bucket.budget.borrow_mut().0.failure();
        }
        let route = bucket.route();
        if retry::outcome_recorded_upstream(
            self.plugin.settings.mode,
            &route.policy.retry,
            route.policy.circuit_breaker.enabled,
            ticket.probe.is_some(),
        ) {
            // The upstream placement counts and records every try: counting the request here
            // too would count it twice.
            return;
        }
        match outcome {
            Outcome::Success => self.plugin.count_later(&bucket, Deferred::Success),
            Outcome::Failure => bucket.count(self.host(), bucket.stats.failure, 1),
            Outcome::Ignored => {}
        }
        if breaker::record_is_noop(bucket.view.borrow().as_ref(), ticket, outcome) {
            return;
        }
        let now = self.plugin.now();
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
            self.plugin.scheduler.unpark(self.context_id);
        }
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        if std::mem::take(&mut self.fault_active) {
            bucket.give_back(self.host(), Slot::Fault);
        }
        if self.ticket.is_none() {
            self.release(Outcome::Ignored);
            return;
        }
        let route = bucket.route();
        let policy = &route.policy.circuit_breaker;
        if needs_flags(policy, &self.response) {
            self.response.flags = self
                .host()
                .property(&["response", "flags"])
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_le_bytes);
        }
        let mut outcome = classify(policy, &self.response);
        let is_probe = self.ticket.is_some_and(|t| t.probe.is_some());
        // In the upstream placement every response is a try's own answer.
        if self.plugin.settings.mode == Mode::Downstream && needs_origin(outcome, is_probe) {
            let details = self.host().property(&["response", "code_details"]);
            if !from_upstream(details.as_deref(), self.response.flags) {
                outcome = Outcome::Ignored;
            }
        }
        self.release(outcome);
    }

    fn request_path(&self) -> String {
        self.host()
            .header(Map::RequestHeaders, ":path")
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default()
    }

    /// gRPC requests get gRPC replies. Read only when the filter replies itself.
    fn is_grpc(&self) -> bool {
        self.host()
            .header(Map::RequestHeaders, "content-type")
            .is_some_and(|ct| ct.starts_with(b"application/grpc"))
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        if self.retries_enabled {
            self.count_attempts();
        }
        if self.ticket.is_none() {
            return Action::Continue;
        }
        self.response.http_status = self
            .host()
            .header(Map::ResponseHeaders, ":status")
            .and_then(|s| parse_u32(&s))
            .and_then(|s| u16::try_from(s).ok());
        if end_of_stream {
            // A headers-only response is where gRPC puts the status of a trailers-only reply.
            self.response.complete = true;
            self.response.grpc_status = self
                .host()
                .header(Map::ResponseHeaders, "grpc-status")
                .and_then(|s| parse_u32(&s));
        } else {
            self.settle_streaming_probe();
        }
        Action::Continue
    }

    /// A probe whose response goes on past its headers is settled by them (see
    /// [`probe_settled_at_headers`]): its success is recorded now, its slot given back; the
    /// request keeps its `active_requests` slot until the stream ends.
    fn settle_streaming_probe(&mut self) {
        let (Some(bucket), Some(ticket)) = (self.bucket.clone(), self.ticket) else {
            return;
        };
        if ticket.probe.is_none() || self.plugin.settings.mode != Mode::Downstream {
            return;
        }
        let route = bucket.route();
        let policy = &route.policy.circuit_breaker;
        if !probe_settled_at_headers(policy, &self.response) {
            return;
        }
        let details = self.host().property(&["response", "code_details"]);
        if !from_upstream(details.as_deref(), None) {
            return;
        }
        self.ticket = None;
        self.plugin.count_later(&bucket, Deferred::Success);
        let now = self.plugin.now();
        let _ = self.plugin.update(&bucket, |rec| {
            breaker::record(rec, policy, now, ticket, Outcome::Success)
        });
    }

    pub fn on_response_body(&mut self, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.response.complete = true;
        }
        Action::Continue
    }

    pub fn on_response_trailers(&mut self) -> Action {
        if self.ticket.is_some() {
            self.response.complete = true;
            self.response.grpc_status = self
                .host()
                .header(Map::ResponseTrailers, "grpc-status")
                .and_then(|s| parse_u32(&s));
        }
        Action::Continue
    }

    /// The stream is going away (Envoy's `onDestroy`, after its access log): classify, give
    /// back its slots, record its outcome.
    pub fn on_delete(&mut self) {
        self.finish();
    }
}

fn parse_u32(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}
