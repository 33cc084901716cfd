//! The three Marty environments and the values they give to fields the JSON leaves out.
//! `config/presets/*.json` and `docs/configuration.md` state the same values; a test keeps them
//! in step.

use super::breaker::ErrorClassifier;
use super::codes::{
    GrpcSet, StatusSet, GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL, GRPC_UNAVAILABLE, GRPC_UNKNOWN,
};
use super::retry::RetryPolicy;
use super::{BreakerPolicy, RoutePolicy};
use crate::retry::backoff::{Backoff, Strategy};
use crate::retry::budget;
use crate::NANOS_PER_SEC;

/// Selects the preset (`environment` in the JSON, `MARTY_RESILIENCE_ENVIRONMENT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Environment {
    /// Lenient: trips late, recovers quickly, probes generously.
    Development,
    /// Conservative: the Marty defaults. Chosen when nothing is said.
    #[default]
    Production,
    /// Fast recovery, so test suites do not wait.
    Testing,
}

/// gRPC codes that mean "the server side failed".
const DEFAULT_FAILURE_GRPC: [u32; 4] = [
    GRPC_UNKNOWN,
    GRPC_DEADLINE_EXCEEDED,
    GRPC_INTERNAL,
    GRPC_UNAVAILABLE,
];

const fn secs(s: u64) -> u64 {
    s * NANOS_PER_SEC
}

impl Environment {
    /// The Marty retry defaults of each environment (production from the guide's YAML).
    fn retry_preset(self) -> RetryPolicy {
        let (max_attempts, base_ms, max_secs) = match self {
            Self::Production => (5, 200, 60),
            Self::Development => (3, 100, 10),
            Self::Testing => (3, 50, 1),
        };
        RetryPolicy {
            enabled: false,
            max_attempts,
            retry_on: ["5xx", "reset", "connect-failure", "retriable-status-codes"]
                .map(String::from)
                .to_vec(),
            grpc_retry_on: ["unavailable", "deadline-exceeded"]
                .map(String::from)
                .to_vec(),
            retriable_status_codes: vec![503],
            per_try_timeout: secs(2),
            backoff: Backoff::new(
                Strategy::ExponentialJitter,
                base_ms * NANOS_PER_SEC / 1000,
                secs(max_secs),
            ),
            budget: budget::Policy::default(),
            trust_client_headers: false,
            count_attempts: false,
            enable_circuit_breaker: true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
            Self::Testing => "testing",
        }
    }

    pub fn preset(self) -> RoutePolicy {
        let production = BreakerPolicy {
            enabled: true,
            failure_threshold: 5,
            recovery_timeout: secs(30),
            recovery_backoff: Strategy::Fixed,
            max_recovery_timeout: secs(300),
            half_open_success_threshold: 2,
            half_open_max_requests: 1,
            half_open_probe_timeout: secs(30),
            failure_reset_timeout: secs(60),
            max_concurrent_requests: 0,
            failure_status_codes: StatusSet::classes(&[5]),
            ignored_status_codes: StatusSet::codes(&[501]),
            failure_grpc_status: GrpcSet::of(&DEFAULT_FAILURE_GRPC),
            count_connect_failures: true,
            enable_metrics: true,
            error_classifier: ErrorClassifier,
        };
        let circuit_breaker = match self {
            Self::Production => production,
            Self::Development => BreakerPolicy {
                failure_threshold: 10,
                recovery_timeout: secs(10),
                half_open_success_threshold: 1,
                half_open_max_requests: 3,
                failure_reset_timeout: secs(30),
                ..production
            },
            Self::Testing => BreakerPolicy {
                failure_threshold: 3,
                recovery_timeout: secs(1),
                half_open_success_threshold: 1,
                half_open_max_requests: 1,
                half_open_probe_timeout: secs(5),
                failure_reset_timeout: secs(10),
                ..production
            },
        };
        RoutePolicy {
            circuit_breaker,
            // Fault injection is off in every environment: it is on only where configured.
            failure_injection: super::fault::default_policy(),
            // Retries too: they change what a service sees (a POST retried runs twice).
            retry: self.retry_preset(),
        }
    }
}
