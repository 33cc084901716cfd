//! Whether Envoy reports a route's tries in its responses, learned once per route epoch
//! instead of asked on every response.
//!
//! The placement before the router counts retries from the response's
//! `x-envoy-attempt-count`, which Envoy's router adds to every response it answers (the
//! upstream's and its own local replies alike) only where the virtual host sets
//! `include_attempt_count_in_response`. Where it is not set (Istio's default), reading the
//! absent header costs ~4k instructions per response and tells nothing. A response that came
//! from the upstream through the router (`response.code_details` is `via_upstream`) without the
//! header proves the setting is off for the route: the header is then not read again until the
//! route epoch moves (the same ~10 s after which the route's metadata is read again, so a
//! route configuration update is picked up as quickly).

/// What one VM knows, in the current route epoch, of a bucket's attempt reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttemptReports {
    /// Nothing yet: read the header.
    #[default]
    Unknown,
    /// A response carried the header: read it on every response.
    Reported,
    /// An upstream response came without it: not read again this epoch.
    NotReported,
}

impl AttemptReports {
    /// Whether a response's `x-envoy-attempt-count` is worth reading.
    pub fn worth_reading(self) -> bool {
        self != Self::NotReported
    }

    /// Whether a response's origin must be asked to learn from it: only while nothing is known
    /// and the header was absent (an absent header on another filter's local reply, which
    /// never met the router, says nothing).
    pub fn needs_origin(self, header_present: bool) -> bool {
        self == Self::Unknown && !header_present
    }

    /// What a response teaches. `code_details`: Envoy's `response.code_details`, only asked
    /// when [`Self::needs_origin`]. Only `via_upstream` (the upstream answered through the
    /// router) is taken as proof that the setting is off: the router's own replies (timeouts,
    /// resets) carry the header too where it is set, but only once a try was made, so their
    /// lack of it proves nothing. Once a response carried the header, the epoch
    /// keeps reading it: a bucket can span virtual hosts, and one that reports must not be
    /// silenced by one that does not.
    pub fn learn(self, header_present: bool, code_details: Option<&[u8]>) -> Self {
        match self {
            _ if header_present => Self::Reported,
            Self::Unknown if code_details == Some(b"via_upstream") => Self::NotReported,
            known => known,
        }
    }
}
