//! The fault-injection half of a stream: reading the triggers (metadata, header, token),
//! deciding, taking a `max_active_faults` slot, holding delayed requests, and counting what was
//! really applied. The decisions themselves are [`crate::fault`].

use log::debug;

use super::Stream;
use crate::fault::header::{self as trigger, Spec};
use crate::fault::{self, Draws, Fault, FaultPolicy, Trigger, TOKEN_HEADER};
use crate::host::{Host, Map};
use crate::proxy::bucket::{BucketState, Slot};
use crate::proxy::plugin::{ThenAbort, NAMESPACE};
use crate::proxy::Action;

impl<H: Host> Stream<H> {
    /// Counts a fault that is being applied and records it for access logs.
    pub(super) fn applied(&self, bucket: &BucketState, fault: Option<&Fault>) {
        let Some(fault) = fault else {
            return;
        };
        let kind = if fault.abort.is_some() {
            bucket.count(self.host(), bucket.stats.faults_aborted, 1);
            "abort"
        } else {
            "delay"
        };
        if fault.delay.is_some() {
            bucket.count(self.host(), bucket.stats.faults_delayed, 1);
        }
        self.host().set_filter_state("marty.resilience.fault", kind);
        self.host()
            .set_filter_state("marty.resilience.fault_trigger", fault.trigger.name());
        debug!(
            "route {}: injecting {kind} ({})",
            bucket.route.borrow().bucket,
            fault.trigger.name()
        );
    }

    /// Holds the request for `nanos`, then resumes it (or sends `then`) from the tick.
    pub(super) fn hold(&mut self, nanos: u64, then: Option<ThenAbort>) -> Action {
        let now_ns = self.plugin.host.monotonic_ns();
        self.plugin
            .park(self.context_id, now_ns.saturating_add(nanos), then);
        self.parked = true;
        Action::Pause
    }

    /// Reads the triggers, decides, and takes a slot of `max_active_faults` for the fault it
    /// returns (counted by `applied` once it really happens).
    pub(super) fn choose_fault(
        &mut self,
        bucket: &BucketState,
        policy: &FaultPolicy,
    ) -> Option<Fault> {
        // The resolved route, shared: its name is only for the log lines.
        let resolved = bucket.route();
        let route = resolved.bucket.as_str();
        let requested = self.requested_fault(bucket, policy, route);
        let needs_path = !policy.method_specific_rates.is_empty()
            && !matches!(requested, Some((Spec::Custom(_), _)));
        let path = match &self.path {
            Some(path) => path.clone(),
            None if needs_path => self.request_path(),
            None => String::new(),
        };
        let draws = Draws {
            abort: self.host().draw(),
            delay: self.host().draw(),
        };
        let fault = fault::decide(policy, &path, requested, draws)?;

        // Counted only when a fault would have been injected; racing workers can only
        // under-inject (as for max_concurrent_requests).
        if !bucket.take_slot(self.host(), Slot::Fault, policy.max_active_faults) {
            bucket.count(self.host(), bucket.stats.faults_overflow, 1);
            debug!("route {route}: fault not injected, max_active_faults reached");
            return None;
        }
        self.fault_active = true;
        Some(fault)
    }

    /// The fault a trigger asks for: the `failure_inject` dynamic metadata (set by the
    /// operator's chain, trusted), else the trigger header (honoured only where enabled and
    /// with its token). Strips the header and token on the way.
    fn requested_fault(
        &self,
        bucket: &BucketState,
        policy: &FaultPolicy,
        route: &str,
    ) -> Option<(Spec, Trigger)> {
        let host = self.host();
        let mut requested = None;
        let metadata = if policy.metadata_trigger {
            host.property(&["metadata", "filter_metadata", NAMESPACE, "failure_inject"])
        } else {
            None
        };
        if let Some(value) = metadata {
            match trigger::parse(&value) {
                Ok(spec) => requested = Some((spec, Trigger::Metadata)),
                Err(invalid) => {
                    bucket.count(host, bucket.stats.fault_header_rejected, 1);
                    debug!(
                        "route {route}: failure_inject metadata ignored: {}",
                        invalid.reason()
                    );
                }
            }
        }

        let header_trigger = &policy.header_trigger;
        // Where a token is configured it never travels upstream, whether or not it was right.
        // Where none is, the header means nothing to the filter and passes untouched (saving a
        // host call per request).
        let presented = if header_trigger.token.is_some() {
            let presented = host.header(Map::RequestHeaders, TOKEN_HEADER);
            if presented.is_some() {
                host.remove_header(Map::RequestHeaders, TOKEN_HEADER);
            }
            presented
        } else {
            None
        };
        if let Some(value) = host.header(Map::RequestHeaders, &header_trigger.header) {
            let accepted = self.header_fault(bucket, policy, route, &value, presented.as_deref());
            if !(header_trigger.propagate && accepted.is_some()) {
                host.remove_header(Map::RequestHeaders, &header_trigger.header);
            }
            return requested.or(accepted);
        }
        requested
    }

    /// Validates a trigger header. Every refusal is counted and logged at debug with a reason
    /// from a fixed set (never the value).
    fn header_fault(
        &self,
        bucket: &BucketState,
        policy: &FaultPolicy,
        route: &str,
        value: &[u8],
        presented_token: Option<&[u8]>,
    ) -> Option<(Spec, Trigger)> {
        let header_trigger = &policy.header_trigger;
        let refused = |reason: &str| {
            bucket.count(self.host(), bucket.stats.fault_header_rejected, 1);
            debug!(
                "route {route}: {} header ignored: {reason}",
                header_trigger.header
            );
            None
        };
        if !header_trigger.enabled {
            return refused("the header trigger is not enabled on this route");
        }
        if let Some(expected) = &header_trigger.token {
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
