//! Every stat the filter exports, declared once.
//!
//! Like Envoy's `ALL_FAULT_FILTER_STATS(COUNTER, GAUGE)`, one [`stats!`] list per scope
//! generates the struct of stat ids, their definition (once per bucket per VM, never per
//! request: defining takes Envoy's symbol-table lock) and the list of names that docs and tests
//! read (`RouteStats::COUNTERS`, ...). Names are `<prefix>.route.<bucket>.<leaf>` per bucket and
//! `<prefix>.<leaf>` plugin-wide; the bootstrap's `stats_tags` turns `<bucket>` into the
//! Prometheus label `marty_route`.
//!
//! Counters are per-worker increments of one shared Envoy stat, so they add up exactly.
//! `active_requests` / `active_faults` are gauges moved +1/-1 from every worker, which makes
//! them the cross-worker in-flight counts that the caps read; the -1s of a VM that traps are
//! made by another VM through its lease ([`crate::lease`]). `circuit_state` is recorded from
//! the shared breaker record by whichever worker last saw it change, and re-recorded on ticks.

use crate::host::{Host, MetricKind};

/// The default `stat_prefix`.
pub const PREFIX: &str = "marty_resilience";

/// One stat's id; `None` when the host refused the definition (the stat is then not kept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat(pub Option<u32>);

impl Stat {
    pub fn define<H: Host + ?Sized>(host: &H, kind: MetricKind, name: &str) -> Self {
        Self(host.define_metric(kind, name))
    }

    pub fn inc<H: Host + ?Sized>(self, host: &H) {
        self.add(host, 1);
    }

    pub fn add<H: Host + ?Sized>(self, host: &H, delta: i64) {
        if let Some(id) = self.0 {
            host.increment_metric(id, delta);
        }
    }

    pub fn record<H: Host + ?Sized>(self, host: &H, value: u64) {
        if let Some(id) = self.0 {
            host.record_metric(id, value);
        }
    }

    pub fn get<H: Host + ?Sized>(self, host: &H) -> Option<u64> {
        host.get_metric(self.0?)
    }
}

/// Declares a scope's stats: `counters { field: "leaf", ... } gauges { ... }`, in
/// documentation order.
macro_rules! stats {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            counters { $($counter:ident: $counter_leaf:literal,)* }
            gauges { $($gauge:ident: $gauge_leaf:literal,)* }
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name {
            $(pub $counter: Stat,)*
            $(pub $gauge: Stat,)*
        }

        impl $name {
            /// Counter leaves, in documentation order.
            pub const COUNTERS: &'static [&'static str] = &[$($counter_leaf),*];
            /// Gauge leaves, in documentation order.
            pub const GAUGES: &'static [&'static str] = &[$($gauge_leaf),*];

            /// Defines every stat as `<scope>.<leaf>`.
            pub fn define<H: Host + ?Sized>(host: &H, scope: &str) -> Self {
                Self {
                    $($counter: Stat::define(
                        host,
                        MetricKind::Counter,
                        &format!("{scope}.{}", $counter_leaf),
                    ),)*
                    $($gauge: Stat::define(
                        host,
                        MetricKind::Gauge,
                        &format!("{scope}.{}", $gauge_leaf),
                    ),)*
                }
            }
        }
    };
}

stats! {
    /// The stats of one bucket: `<prefix>.route.<bucket>.<leaf>`.
    pub struct RouteStats {
        counters {
            requests: "requests_total",
            success: "success_total",
            failure: "failure_total",
            rejected: "rejected_total",
            opened: "circuit_opened_total",
            half_opened: "circuit_half_opened_total",
            closed: "circuit_closed_total",
            concurrency_rejected: "concurrency_rejected_total",
            faults_aborted: "faults_aborted_total",
            faults_delayed: "faults_delayed_total",
            faults_overflow: "faults_overflow_total",
            fault_header_rejected: "fault_header_rejected_total",
            retry_attempts: "retry_attempts_total",
            retries_suppressed_breaker: "retries_suppressed_breaker_total",
            retries_suppressed_budget: "retries_suppressed_budget_total",
        }
        gauges {
            circuit_state: "circuit_state",
            active_requests: "active_requests",
            active_faults: "active_faults",
        }
    }
}

stats! {
    /// Plugin-wide stats, the filter's own health: `<prefix>.<leaf>`.
    pub struct PluginStats {
        counters {
            cas_exhausted: "cas_exhausted_total",
            shared_data_errors: "shared_data_errors_total",
            state_reset: "state_reset_total",
            route_config_rejected: "route_config_rejected_total",
            buckets_overflow: "buckets_overflow_total",
        }
        gauges {
            stats_kept: "stats_kept",
            counters_unflushed: "counters_unflushed",
        }
    }
}

impl RouteStats {
    /// The scope of a bucket's stats, given its stat-safe name.
    pub fn scope(prefix: &str, stat_name: &str) -> String {
        format!("{prefix}.route.{stat_name}")
    }
}
