//! Fault injection: which fault, if any, a request gets.
//!
//! Three triggers, in order of trust: the `failure_inject` dynamic metadata set by an earlier
//! filter of the operator's chain, the `x-failure-inject` request header (only where
//! `header_trigger.enabled`, and with its token when one is configured), and the configured
//! rates. `failure_injection.enabled` is the master switch for all three. As in Envoy's fault
//! filter, the abort and the delay are decided independently, each with its own random draw.
//!
//! Decisions take the random draws as arguments (`u` in `[0, 1)`), so every rule is tested
//! with exact inputs.

pub mod header;

use header::Spec;

/// The gRPC status of a fault that names none.
pub const DEFAULT_GRPC_STATUS: u32 = crate::config::codes::GRPC_UNAVAILABLE;

/// What aborts look like on a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortPolicy {
    pub http_status: u16,
    pub grpc_status: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DelayPolicy {
    /// Nanoseconds a configured delay holds the request.
    pub duration: u64,
    /// Probability of a configured delay.
    pub rate: f64,
    /// Ceiling of any delay a trigger asks for (nanoseconds).
    pub max: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTrigger {
    pub enabled: bool,
    /// Lowercase header name.
    pub header: String,
    pub token: Option<String>,
    /// Forward the trigger header upstream (the token never is).
    pub propagate: bool,
}

/// Header carrying the trigger's token.
pub const TOKEN_HEADER: &str = "x-failure-inject-token";

/// Path-specific abort rates: exact paths, and prefixes (keys ending in `/` or `*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodRates {
    exact: Vec<(String, f64)>,
    /// Prefixes (without a trailing `*`), longest first, with the key as configured.
    prefixes: Vec<(String, f64, String)>,
}

impl MethodRates {
    pub fn new(entries: impl IntoIterator<Item = (String, f64)>) -> Self {
        let mut rates = Self::default();
        for (key, rate) in entries {
            let prefix = if let Some(prefix) = key.strip_suffix('*') {
                prefix.to_string()
            } else if key.ends_with('/') {
                key.clone()
            } else {
                rates.exact.push((key, rate));
                continue;
            };
            // Kept in order as it grows (longest first, then by name; equal prefixes in the
            // order given): what a stable sort gave, without its code in the module.
            let at = rates.prefixes.partition_point(|(p, _, _)| {
                p.len() > prefix.len() || (p.len() == prefix.len() && *p <= prefix)
            });
            rates.prefixes.insert(at, (prefix, rate, key));
        }
        rates
    }

    /// The rate for `path` (query string excluded): an exact key wins, then the longest
    /// prefix key.
    pub fn lookup(&self, path: &str) -> Option<f64> {
        let path = path.split('?').next().unwrap_or(path);
        self.exact
            .iter()
            .find(|(key, _)| key == path)
            .map(|(_, rate)| *rate)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(prefix, _, _)| path.starts_with(prefix.as_str()))
                    .map(|(_, rate, _)| *rate)
            })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Every entry with its key as configured.
    pub fn entries(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self.exact.clone();
        out.extend(
            self.prefixes
                .iter()
                .map(|(_, rate, key)| (key.clone(), *rate)),
        );
        out
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultPolicy {
    /// Master switch of every trigger.
    pub enabled: bool,
    /// The switch was thrown by `MARTY_FAILURE_INJECTION=enabled`, not by configuration.
    pub enabled_by_env: bool,
    /// Probability of an abort where no method rate applies.
    pub base_failure_rate: f64,
    pub method_specific_rates: MethodRates,
    pub abort: AbortPolicy,
    pub delay: DelayPolicy,
    /// Faults in progress at once on the route, across workers; 0 means no limit.
    pub max_active_faults: u32,
    pub header_trigger: HeaderTrigger,
    /// Honour the `failure_inject` dynamic metadata another filter of the chain sets. Off
    /// unless configured: looking for it costs a host call on every request of the route.
    pub metadata_trigger: bool,
}

impl FaultPolicy {
    /// The configured abort rate on `path`.
    pub fn abort_rate(&self, path: &str) -> f64 {
        self.method_specific_rates
            .lookup(path)
            .unwrap_or(self.base_failure_rate)
    }
}

/// What set a fault off (the `fault_trigger` filter state value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Config,
    Header,
    Metadata,
    Env,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Header => "header",
            Self::Metadata => "metadata",
            Self::Env => "env",
        }
    }
}

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    /// Reply locally with this HTTP status, or for gRPC requests this gRPC status.
    pub abort: Option<AbortPolicy>,
    /// Hold the request this long first (nanoseconds).
    pub delay: Option<u64>,
    pub trigger: Trigger,
}

/// Independent random draws in `[0, 1)`, one per fault kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draws {
    pub abort: f64,
    pub delay: f64,
}

fn fires(rate: f64, draw: f64) -> bool {
    // A rate of 1 always fires and 0 never does, whatever the draw.
    draw < rate
}

/// Decides the fault for a request on `path`, given what a trigger asked for (`requested`,
/// with the trigger it came from) and the draws. `None`: the request proceeds untouched.
pub fn decide(
    policy: &FaultPolicy,
    path: &str,
    requested: Option<(Spec, Trigger)>,
    draws: Draws,
) -> Option<Fault> {
    if !policy.enabled {
        return None;
    }
    let fault = match requested {
        None => {
            let abort = fires(policy.abort_rate(path), draws.abort).then_some(policy.abort);
            let delay = (policy.delay.duration > 0 && fires(policy.delay.rate, draws.delay))
                .then_some(policy.delay.duration.min(policy.delay.max));
            let trigger = if policy.enabled_by_env {
                Trigger::Env
            } else {
                Trigger::Config
            };
            Fault {
                abort,
                delay,
                trigger,
            }
        }
        Some((Spec::Configured, trigger)) => {
            // The route's configured fault, for sure: its delay if it has one configured,
            // and its abort unless the route is configured for delays only.
            let delay_only = policy.delay.rate > 0.0
                && policy.delay.duration > 0
                && policy.abort_rate(path) == 0.0;
            let delay = (policy.delay.rate > 0.0 && policy.delay.duration > 0)
                .then_some(policy.delay.duration.min(policy.delay.max));
            Fault {
                abort: (!delay_only).then_some(policy.abort),
                delay,
                trigger,
            }
        }
        Some((Spec::Custom(spec), trigger)) => {
            let rate = spec.rate.unwrap_or(1.0);
            let wants_abort = spec.abort_http.is_some() || spec.abort_grpc.is_some();
            let abort = (wants_abort && fires(rate, draws.abort)).then(|| AbortPolicy {
                http_status: spec.abort_http.unwrap_or(policy.abort.http_status),
                grpc_status: spec.abort_grpc.unwrap_or(policy.abort.grpc_status),
            });
            let delay = spec
                .delay
                .filter(|_| fires(rate, draws.delay))
                .map(|d| d.min(policy.delay.max));
            Fault {
                abort,
                delay,
                trigger,
            }
        }
    };
    (fault.abort.is_some() || fault.delay.is_some()).then_some(fault)
}
