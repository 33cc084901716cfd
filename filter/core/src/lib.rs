//! The decisions of the marty-resilience filter, with no proxy-wasm dependency.
//!
//! The filter's life is: configuration JSON → [`config::Settings`] (validated once, at load);
//! per request, a route name → [`routes::RouteTable`] → a policy and a shared-data key;
//! [`breaker::admit`] decides from the route's shared [`breaker::Record`]; when the stream ends,
//! [`classify::classify`] turns what Envoy reported into an [`classify::Outcome`], and
//! [`breaker::record`] folds it into the record. Every read-modify-write of shared state goes
//! through [`store::update_value`], a bounded compare-and-swap loop over the [`store::SharedStore`]
//! trait, which the wasm crate implements over the host and tests implement in memory.
//!
//! Time is always passed in (monotonic nanoseconds, process-wide in Envoy), so every rule is
//! tested natively with exact boundaries.

pub mod breaker;
pub mod classify;
pub mod config;
pub mod decimal;
pub mod duration;
pub mod fast_map;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod host;
pub mod keys;
mod le;
pub mod lease;
pub mod pbstruct;
pub mod proxy;
pub mod registry;
pub mod retry;
pub mod routes;
pub mod stats;
pub mod store;

/// Nanoseconds per second, for the conversions that deadlines need.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;
