//! Turns what Envoy reported about a finished stream into a breaker [`Outcome`].
//!
//! Order of evidence: Envoy's response flags (connect failure, reset, timeout: an upstream
//! fault whatever the status said), then the gRPC status (trailers or trailers-only), then the
//! HTTP status. A stream with none of these ended on the client's side and says nothing about
//! the upstream. The filter's own local replies never get here: they are never admitted.

pub use crate::breaker::Outcome;
use crate::config::codes::{GRPC_DEADLINE_EXCEEDED, GRPC_UNAVAILABLE};
use crate::config::BreakerPolicy;

/// Bits of Envoy's `response.flags` property (`StreamInfo::CoreResponseFlag` indices).
pub mod flags {
    /// UH: no healthy upstream host.
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1;
    /// UT: upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
    /// LR: connection local reset.
    pub const LOCAL_RESET: u64 = 1 << 3;
    /// UR: upstream remote reset.
    pub const UPSTREAM_REMOTE_RESET: u64 = 1 << 4;
    /// UF: upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
    /// UC: upstream connection termination.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
    /// DC: downstream connection termination.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;
    /// URX: upstream retry limit exceeded.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 1 << 15;
    /// UMSDR: upstream max stream duration reached.
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 1 << 19;
    /// UPE: upstream protocol error.
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 1 << 23;
    /// DR: downstream remote reset.
    pub const DOWNSTREAM_REMOTE_RESET: u64 = 1 << 28;

    /// The upstream failed to connect, reset, or timed out.
    pub const UPSTREAM_FAULT: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_RETRY_LIMIT_EXCEEDED
        | UPSTREAM_MAX_STREAM_DURATION_REACHED
        | UPSTREAM_PROTOCOL_ERROR;
}

/// What the filter saw of the response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub http_status: Option<u16>,
    /// From the trailers, or from the headers of a trailers-only reply.
    pub grpc_status: Option<u32>,
    /// The response reached end of stream.
    pub complete: bool,
    /// Envoy's `response.flags`, when the glue read them (see [`needs_flags`]).
    pub flags: Option<u64>,
}

fn by_status(policy: &BreakerPolicy, r: &Response) -> Option<Outcome> {
    if let Some(code) = r.grpc_status {
        return Some(if policy.failure_grpc_status.contains(code) {
            Outcome::Failure
        } else {
            Outcome::Success
        });
    }
    r.http_status.map(|status| {
        if policy.failure_status_codes.contains(status)
            && !policy.ignored_status_codes.contains(status)
        {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    })
}

/// Whether the flags matter for this response. Reading them costs a host call, so the glue
/// only does when they can change the answer: the stream did not complete, the status alone
/// would count a failure, or the status is one Envoy itself answers upstream faults with (a
/// connect failure is a 503, a timeout a 504; gRPC callers see UNAVAILABLE or
/// DEADLINE_EXCEEDED), which `count_connect_failures` decides on even where the status
/// codes would not.
pub fn needs_flags(policy: &BreakerPolicy, r: &Response) -> bool {
    let envoy_fault_status = matches!(r.http_status, Some(502..=504))
        || matches!(
            r.grpc_status,
            Some(GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE)
        );
    !r.complete || envoy_fault_status || by_status(policy, r) != Some(Outcome::Success)
}

pub fn classify(policy: &BreakerPolicy, r: &Response) -> Outcome {
    let flags = r.flags.unwrap_or(0);
    if flags & flags::UPSTREAM_FAULT != 0 {
        return if policy.count_connect_failures {
            Outcome::Failure
        } else {
            Outcome::Ignored
        };
    }
    if !r.complete
        && flags & (flags::DOWNSTREAM_CONNECTION_TERMINATION | flags::DOWNSTREAM_REMOTE_RESET) != 0
    {
        return Outcome::Ignored;
    }
    by_status(policy, r).unwrap_or(Outcome::Ignored)
}

/// Whether a response is the upstream's answer, from Envoy's `response.code_details`: the
/// upstream's own (`via_upstream`), or the router's on its behalf when the upstream failed
/// (connect failure, reset, timeout, no healthy upstream: those details start with `upstream_`
/// or name the missing upstream, and set a fault flag). Anything else is a local reply of
/// Envoy or of another filter (`route_not_found`, `direct_response`, a fault filter's abort, a
/// rate limit, an authorization denial): it says nothing about the upstream. Unknown details
/// (`None`: the host did not say) count as the upstream's, as before this check existed.
pub fn from_upstream(code_details: Option<&[u8]>, flags: Option<u64>) -> bool {
    if flags.unwrap_or(0) & flags::UPSTREAM_FAULT != 0 {
        return true;
    }
    match code_details {
        None => true,
        Some(details) => {
            details == b"via_upstream"
                || details.starts_with(b"upstream_")
                || details == b"no_healthy_upstream"
                || details.starts_with(b"maintenance_mode")
        }
    }
}

/// Whether [`from_upstream`] must be asked: only an outcome that could move the breaker, a
/// failure, or a probe's success (one local 200 must not close a breaker). A CLOSED breaker's
/// success needs no check, so healthy traffic pays nothing for it.
pub fn needs_origin(outcome: Outcome, is_probe: bool) -> bool {
    outcome == Outcome::Failure || (is_probe && outcome == Outcome::Success)
}

/// Whether a HALF_OPEN probe's outcome is settled at its response headers, before the stream
/// ends: the response goes on (a gRPC stream, server-sent events, a WebSocket, a long
/// download) and its status already says success. Waiting for the end would outlive
/// `half_open_probe_timeout`, pass the probe's slot on and drop its result as late: a healthy
/// streaming route would never close. A failure carried later in the trailers is then not
/// this probe's to report.
pub fn probe_settled_at_headers(policy: &BreakerPolicy, r: &Response) -> bool {
    !r.complete && r.grpc_status.is_none() && by_status(policy, r) == Some(Outcome::Success)
}
