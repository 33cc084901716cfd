//! The request path, over a [`Host`](crate::host::Host): what the filter does with each
//! request and response, and the per-VM state it keeps.
//!
//! The wasm crate only adapts proxy-wasm's callbacks to [`Plugin`] and [`Stream`] and
//! implements the host over the ABI; every rule lives here, where native tests drive it with
//! [`crate::host::fake::FakeHost`].
//!
//! - [`plugin`]: one loaded configuration on one VM: buckets, route resolution, breaker
//!   updates, the tick's housekeeping.
//! - [`bucket`]: what one VM knows of one bucket.
//! - [`stream`]: one HTTP stream (route → fault → admit → retry headers → response → outcome).
//! - [`scheduler`]: requests held by a delay, resumed from the tick.
//! - [`reply`]: every local reply the filter sends.
//! - [`health_endpoint`]: the health endpoint's answer.

pub mod bucket;
pub mod health_endpoint;
pub mod plugin;
pub mod reply;
pub mod scheduler;
pub mod stream;

pub use bucket::BucketState;
pub use plugin::Plugin;
pub use stream::Stream;

/// What a callback tells Envoy to do with the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// Takes a slot of a cap kept in a cross-worker gauge: increment first, then read. Of racing
/// requests, the one whose increment came last sees every other, so the cap is never exceeded
/// (it may refuse a request it could have let through, never the reverse). `cap == 0`: no cap.
/// On `false` the increment is already undone.
///
/// A reading above `i64::MAX` is a gauge that went below 0 (Envoy's gauges are unsigned and
/// wrap): a lease reclaim raced a live -1 ([`crate::lease`]). It holds fewer slots than the
/// cap, so it is within it.
pub fn take_slot<H: crate::host::Host>(host: &H, gauge: crate::stats::Stat, cap: u32) -> bool {
    gauge.add(host, 1);
    let taken = gauge.get(host).unwrap_or(0);
    if cap > 0 && taken > u64::from(cap) && i64::try_from(taken).is_ok() {
        gauge.add(host, -1);
        return false;
    }
    true
}
