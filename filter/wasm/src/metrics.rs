//! Every stat the filter exports, defined once per bucket per VM (never per request: defining
//! takes Envoy's symbol-table lock). Names are `marty_resilience.route.<route>.<leaf>`; the
//! bootstrap's `stats_tags` turns `<route>` into the Prometheus label `marty_route`.
//!
//! Counters are per-worker increments of one shared Envoy stat, so they add up exactly.
//! `active_requests` is an Envoy gauge moved with +1/-1 from every worker, which also makes it
//! the cross-worker in-flight count that `max_concurrent_requests` reads. `circuit_state` is
//! recorded from the shared breaker record by whichever worker last saw it change, and
//! re-recorded from that record on every tick, so it converges to the truth.

use crate::host::{self, MetricKind};

/// Per-route counter leaves, in documentation order.
pub const ROUTE_COUNTERS: [&str; 15] = [
    "requests_total",
    "success_total",
    "failure_total",
    "rejected_total",
    "circuit_opened_total",
    "circuit_half_opened_total",
    "circuit_closed_total",
    "concurrency_rejected_total",
    "faults_aborted_total",
    "faults_delayed_total",
    "faults_overflow_total",
    "fault_header_rejected_total",
    "retry_attempts_total",
    "retries_suppressed_breaker_total",
    "retries_suppressed_budget_total",
];

pub const ROUTE_GAUGES: [&str; 3] = ["circuit_state", "active_requests", "active_faults"];

/// Filter-wide counters: the filter's own health.
pub const GLOBAL_COUNTERS: [&str; 4] = [
    "cas_exhausted_total",
    "shared_data_errors_total",
    "state_reset_total",
    "route_config_rejected_total",
];

pub const PREFIX: &str = "marty_resilience";

/// Stat ids of one bucket. `None` when the host refused a definition: the stat is then skipped.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteMetrics {
    pub requests: Option<u32>,
    pub success: Option<u32>,
    pub failure: Option<u32>,
    pub rejected: Option<u32>,
    pub opened: Option<u32>,
    pub half_opened: Option<u32>,
    pub closed: Option<u32>,
    pub concurrency_rejected: Option<u32>,
    pub faults_aborted: Option<u32>,
    pub faults_delayed: Option<u32>,
    pub faults_overflow: Option<u32>,
    pub fault_header_rejected: Option<u32>,
    pub retry_attempts: Option<u32>,
    pub retries_suppressed_breaker: Option<u32>,
    pub retries_suppressed_budget: Option<u32>,
    pub circuit_state: Option<u32>,
    pub active_requests: Option<u32>,
    pub active_faults: Option<u32>,
}

impl RouteMetrics {
    pub fn define(stat_name: &str) -> Self {
        let counter = |leaf: &str| {
            host::define_metric(
                MetricKind::Counter,
                &format!("{PREFIX}.route.{stat_name}.{leaf}"),
            )
        };
        let gauge = |leaf: &str| {
            host::define_metric(
                MetricKind::Gauge,
                &format!("{PREFIX}.route.{stat_name}.{leaf}"),
            )
        };
        let [requests, success, failure, rejected, opened, half_opened, closed, concurrency_rejected, faults_aborted, faults_delayed, faults_overflow, fault_header_rejected, retry_attempts, retries_suppressed_breaker, retries_suppressed_budget] =
            ROUTE_COUNTERS.map(counter);
        let [circuit_state, active_requests, active_faults] = ROUTE_GAUGES.map(gauge);
        Self {
            requests,
            success,
            failure,
            rejected,
            opened,
            half_opened,
            closed,
            concurrency_rejected,
            faults_aborted,
            faults_delayed,
            faults_overflow,
            fault_header_rejected,
            retry_attempts,
            retries_suppressed_breaker,
            retries_suppressed_budget,
            circuit_state,
            active_requests,
            active_faults,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalMetrics {
    pub cas_exhausted: Option<u32>,
    pub shared_data_errors: Option<u32>,
    pub state_reset: Option<u32>,
    pub route_config_rejected: Option<u32>,
}

impl GlobalMetrics {
    pub fn define() -> Self {
        let [cas_exhausted, shared_data_errors, state_reset, route_config_rejected] =
            GLOBAL_COUNTERS
                .map(|leaf| host::define_metric(MetricKind::Counter, &format!("{PREFIX}.{leaf}")));
        Self {
            cas_exhausted,
            shared_data_errors,
            state_reset,
            route_config_rejected,
        }
    }
}

pub fn inc(id: Option<u32>) {
    host::increment_metric(id, 1);
}
