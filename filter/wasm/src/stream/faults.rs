//! The fault-injection half of a stream: reading the triggers (metadata, header, token),
//! deciding, taking a `max_active_faults` slot, holding delayed requests, and counting what was
//! really applied. The decisions themselves are `marty_resilience_core::fault`.

use log::debug;
use marty_resilience_core::fault::header::{self as trigger, Spec};
use marty_resilience_core::fault::{self, Draws, Fault, FaultPolicy, Trigger, TOKEN_HEADER};
use proxy_wasm::types::Action;

use super::{request_path, Stream};
use crate::host::{self, Map};
use crate::metrics::inc;
use crate::plugin::{AbortReply, Bucket, Parked, NAMESPACE};

impl Stream {
    /// Counts a fault that is being applied and records it for access logs.
    pub(super) fn applied(&self, bucket: &Bucket, fault: Option<&Fault>) {
        let Some(fault) = fault else {
            return;
        };
        let kind = if fault.abort.is_some() {
            inc(bucket.metrics.faults_aborted);
            "abort"
        } else {
            "delay"
        };
        if fault.delay.is_some() {
            inc(bucket.metrics.faults_delayed);
        }
        host::set_filter_state("marty.resilience.fault", kind);
        host::set_filter_state("marty.resilience.fault_trigger", fault.trigger.name());
        debug!(
            "route {}: injecting {kind} ({})",
            bucket.route.borrow().bucket,
            fault.trigger.name()
        );
    }

    /// Holds the request for `nanos`, then resumes it (or sends `then_abort`) from the tick.
    pub(super) fn hold(
        &mut self,
        now_ns: u64,
        nanos: u64,
        then_abort: Option<AbortReply>,
    ) -> Action {
        self.plugin.park(Parked {
            context_id: self.context_id,
            until_ns: now_ns.saturating_add(nanos),
            then_abort,
        });
        self.parked = true;
        Action::Pause
    }

    /// Reads the triggers, decides, and takes a slot of `max_active_faults` for the fault it
    /// returns (counted by `applied` once it really happens).
    pub(super) fn choose_fault(&mut self, bucket: &Bucket, policy: &FaultPolicy) -> Option<Fault> {
        let route = bucket.route.borrow().bucket.clone();
        let requested = self.requested_fault(bucket, policy, &route);
        let needs_path = !policy.method_specific_rates.is_empty()
            && !matches!(requested, Some((Spec::Custom(_), _)));
        let path = match &self.path {
            Some(path) => path.clone(),
            None if needs_path => request_path(),
            None => String::new(),
        };
        let draws = Draws {
            abort: self.plugin.draw(),
            delay: self.plugin.draw(),
        };
        let fault = fault::decide(policy, &path, requested, draws)?;

        // Take a slot first, then check: racing workers can only under-inject (as for
        // max_concurrent_requests). Counted only when a fault would have been injected.
        host::increment_metric(bucket.metrics.active_faults, 1);
        if policy.max_active_faults > 0 {
            let active = host::get_metric(bucket.metrics.active_faults).unwrap_or(0);
            if active > u64::from(policy.max_active_faults) {
                host::increment_metric(bucket.metrics.active_faults, -1);
                inc(bucket.metrics.faults_overflow);
                debug!("route {route}: fault not injected, max_active_faults reached");
                return None;
            }
        }
        self.fault_active = true;
        Some(fault)
    }

    /// The fault a trigger asks for: the `failure_inject` dynamic metadata (set by the
    /// operator's chain, trusted), else the trigger header (honoured only where enabled and
    /// with its token). Strips the header and token on the way.
    fn requested_fault(
        &self,
        bucket: &Bucket,
        policy: &FaultPolicy,
        route: &str,
    ) -> Option<(Spec, Trigger)> {
        let mut requested = None;
        if let Some(value) =
            host::property(&["metadata", "filter_metadata", NAMESPACE, "failure_inject"])
        {
            match trigger::parse(&value) {
                Ok(spec) => requested = Some((spec, Trigger::Metadata)),
                Err(invalid) => {
                    inc(bucket.metrics.fault_header_rejected);
                    debug!(
                        "route {route}: failure_inject metadata ignored: {}",
                        invalid.reason()
                    );
                }
            }
        }

        let trigger = &policy.header_trigger;
        // The token never travels upstream, whether or not it was right or needed.
        if trigger.token.is_none() {
            host::remove_header(Map::RequestHeaders, TOKEN_HEADER);
        } else {
            let presented = host::header(Map::RequestHeaders, TOKEN_HEADER);
            host::remove_header(Map::RequestHeaders, TOKEN_HEADER);
            if let Some(value) = host::header(Map::RequestHeaders, &trigger.header) {
                let accepted =
                    self.header_fault(bucket, policy, route, &value, presented.as_deref());
                self.strip_trigger(trigger.propagate && accepted.is_some(), &trigger.header);
                return requested.or(accepted);
            }
            return requested;
        }
        if let Some(value) = host::header(Map::RequestHeaders, &trigger.header) {
            let accepted = self.header_fault(bucket, policy, route, &value, None);
            self.strip_trigger(trigger.propagate && accepted.is_some(), &trigger.header);
            return requested.or(accepted);
        }
        requested
    }

    fn strip_trigger(&self, keep: bool, header: &str) {
        if !keep {
            host::remove_header(Map::RequestHeaders, header);
        }
    }

    /// Validates a trigger header. Every refusal is counted and logged at debug with a reason
    /// from a fixed set (never the value).
    fn header_fault(
        &self,
        bucket: &Bucket,
        policy: &FaultPolicy,
        route: &str,
        value: &[u8],
        presented_token: Option<&[u8]>,
    ) -> Option<(Spec, Trigger)> {
        let trigger = &policy.header_trigger;
        let refused = |reason: &str| {
            inc(bucket.metrics.fault_header_rejected);
            debug!("route {route}: {} header ignored: {reason}", trigger.header);
            None
        };
        if !trigger.enabled {
            return refused("the header trigger is not enabled on this route");
        }
        if let Some(expected) = &trigger.token {
            match presented_token {
                None => return refused("missing x-failure-inject-token"),
                Some(token) if !trigger::token_matches(token, expected.as_bytes()) => {
                    return refused("wrong x-failure-inject-token")
                }
                Some(_) => {}
            }
        }
        match trigger::parse(value) {
            Ok(spec) => Some((spec, Trigger::Header)),
            Err(invalid) => refused(invalid.reason()),
        }
    }
}
