//! The host seam: every effect the request path has on Envoy, as one trait.
//!
//! The filter's flow ([`crate::proxy`]) is generic over [`Host`]: the wasm crate implements it
//! over the proxy-wasm ABI (monomorphised, so the seam costs nothing at run time), and native
//! tests implement it with [`fake::FakeHost`], which records every call. A change to the
//! request path therefore has a millisecond test before it has an Envoy test, and each host
//! call a request makes is visible and countable.

pub mod fake;

use crate::store::SharedStore;

/// The header maps the filter reads or writes (the ABI's `MapType` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
}

/// A reply the filter sends instead of forwarding the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`).
    pub details: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// `Some`: Envoy answers a gRPC request trailers-only with this status and `body` as the
    /// `grpc-message`.
    pub grpc_status: Option<u32>,
}

/// Everything the filter asks of Envoy. Every method is total: a host error reads as "absent"
/// or is ignored, because a panic would trap the VM and every request on it.
pub trait Host: SharedStore {
    /// A property by path (`["xds", "route_name"]`); `None` when absent.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// A header (or trailer) value of the current stream; `None` when absent.
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    fn set_header(&self, map: Map, name: &str, value: &str);
    /// Removes every value of a header; a missing header is not an error.
    fn remove_header(&self, map: Map, name: &str);
    /// Writes filter state `wasm.<name>` (access logs read it; Wasm cannot write dynamic
    /// metadata).
    fn set_filter_state(&self, name: &str, value: &str);
    /// Replies locally on the current (or effective) stream; `false` if the host refused.
    fn send_local_reply(&self, reply: &LocalReply) -> bool;

    /// Defines a stat; `None` if the host refuses (it is then simply not kept).
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, delta: i64);
    fn record_metric(&self, id: u32, value: u64);
    fn get_metric(&self, id: u32) -> Option<u64>;

    /// The process-wide monotonic clock (deadlines written by one worker mean the same to all).
    fn monotonic_ns(&self) -> u64;
    /// The wall clock, only to report when things happened.
    fn unix_ms(&self) -> u64;
    /// A uniform draw in `[0, 1)`.
    fn draw(&self) -> f64;

    /// Makes a held stream the one later calls apply to (from the tick).
    fn set_effective_context(&self, context_id: u32) -> bool;
    /// Resumes the effective stream's paused request.
    fn resume_request(&self) -> bool;
    /// The VM's root tick period.
    fn set_tick_period_ms(&self, period: u32);
}
