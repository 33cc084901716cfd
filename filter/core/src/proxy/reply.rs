//! Every local reply the filter sends: breaker and bulkhead rejections, injected aborts, and
//! the health endpoint's answers. gRPC requests get gRPC replies (trailers-only with a status).

use crate::breaker;
use crate::fault::AbortPolicy;
use crate::host::LocalReply;
use crate::NANOS_PER_SEC;

/// gRPC `UNAVAILABLE`: the status of every rejection, and the default of injected aborts.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// Why the filter refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    Open,
    HalfOpen,
    Concurrency,
}

impl Rejection {
    /// Envoy's response code details, visible as `%RESPONSE_CODE_DETAILS%` in access logs.
    pub fn details(self) -> &'static str {
        match self {
            Self::Open => "marty_circuit_open",
            Self::HalfOpen => "marty_circuit_half_open",
            Self::Concurrency => "marty_max_concurrent_requests",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Open => "circuit breaker is open",
            Self::HalfOpen => "circuit breaker is half-open and its probes are in flight",
            Self::Concurrency => "too many concurrent requests on this route",
        }
    }

    /// What the reply says it is: `x-marty-circuit: open | half-open` for the breaker,
    /// `x-marty-bulkhead: full` for `max_concurrent_requests`.
    fn marker(self) -> (&'static str, String) {
        match self {
            Self::Open => ("x-marty-circuit", "open".to_string()),
            Self::HalfOpen => ("x-marty-circuit", "half-open".to_string()),
            Self::Concurrency => ("x-marty-bulkhead", "full".to_string()),
        }
    }
}

/// What a calling Envoy reads on a rejection: `x-envoy-ratelimited` makes its router give up
/// instead of retrying (unless its policy names `envoy-ratelimited`), which `x-envoy-overloaded`
/// alone would not (Envoy retries an overloaded 503 since 1.15); `x-envoy-overloaded` is
/// Envoy's own mark of a circuit-broken drop, for the caller's logs and stats.
const NO_CALLER_RETRY: [(&str, &str); 2] = [
    ("x-envoy-ratelimited", "true"),
    ("x-envoy-overloaded", "true"),
];

/// 503 with `retry-after` for HTTP; trailers-only `UNAVAILABLE` with `grpc-retry-pushback-ms`
/// for gRPC.
pub fn rejection(
    reason: Rejection,
    retry_after_ns: u64,
    grpc: bool,
    prevent_caller_retries: bool,
) -> LocalReply {
    let mut reply = rejection_reply(reason, retry_after_ns, grpc);
    if prevent_caller_retries {
        reply
            .headers
            .extend(NO_CALLER_RETRY.map(|(n, v)| (n, v.to_string())));
    }
    reply
}

fn rejection_reply(reason: Rejection, retry_after_ns: u64, grpc: bool) -> LocalReply {
    let circuit = reason.marker();
    if grpc {
        let pushback_ms = retry_after_ns
            .div_ceil(NANOS_PER_SEC / 1000)
            .max(1)
            .to_string();
        LocalReply {
            status: 200,
            details: reason.details(),
            body: reason.message().as_bytes().to_vec(),
            headers: vec![circuit, ("grpc-retry-pushback-ms", pushback_ms)],
            grpc_status: Some(GRPC_UNAVAILABLE),
        }
    } else {
        let retry_after = breaker::retry_after_secs(retry_after_ns).to_string();
        LocalReply {
            status: 503,
            details: reason.details(),
            body: format!("{}\n", reason.message()).into_bytes(),
            headers: vec![
                circuit,
                ("retry-after", retry_after),
                ("content-type", "text/plain".to_string()),
            ],
            grpc_status: None,
        }
    }
}

/// An injected abort, marked `x-marty-fault: abort`.
pub fn fault_abort(abort: AbortPolicy, grpc: bool) -> LocalReply {
    const DETAILS: &str = "marty_fault_abort";
    let marker = ("x-marty-fault", "abort".to_string());
    if grpc {
        LocalReply {
            status: 200,
            details: DETAILS,
            body: b"fault injected by marty-resilience".to_vec(),
            headers: vec![marker],
            grpc_status: Some(abort.grpc_status),
        }
    } else {
        LocalReply {
            status: abort.http_status,
            details: DETAILS,
            body: b"fault injected by marty-resilience\n".to_vec(),
            headers: vec![marker, ("content-type", "text/plain".to_string())],
            grpc_status: None,
        }
    }
}

/// The health endpoint to a peer outside `allowed_sources`: as if it were not there.
pub fn health_not_allowed() -> LocalReply {
    LocalReply {
        status: 404,
        details: "marty_health_not_allowed",
        body: Vec::new(),
        headers: Vec::new(),
        grpc_status: None,
    }
}

pub fn health_method_not_allowed() -> LocalReply {
    LocalReply {
        status: 405,
        details: "marty_health_method",
        body: Vec::new(),
        headers: vec![("allow", "GET".to_string())],
        grpc_status: None,
    }
}

pub fn health(status: u16, body: String, content_type: &'static str) -> LocalReply {
    LocalReply {
        status,
        details: "marty_health",
        body: body.into_bytes(),
        headers: vec![
            ("content-type", content_type.to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        grpc_status: None,
    }
}
