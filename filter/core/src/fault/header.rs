//! The `x-failure-inject` grammar (also the value of the `failure_inject` metadata trigger):
//!
//! ```text
//! value := "true" | "1" | "on" | "enabled"          inject the route's configured fault
//!        | item (( ";" | "," ) item)*
//! item  := "abort=" <HTTP status 200-599>
//!        | "grpc="  <gRPC status name or number 0-16>
//!        | "delay=" <duration: "250ms", "1.5s", or seconds>
//!        | "rate="  <probability 0..1>
//! ```
//!
//! Keys are case-insensitive, blanks around items and `=` are allowed, an empty item (a
//! trailing `;`) is skipped, and a key may appear once. Anything else is rejected with a reason
//! from a fixed set, so a client can never make the filter log or count something unbounded.

use crate::config::codes::grpc_code;
use crate::duration;

/// Longest value looked at; longer ones are rejected unread.
pub const MAX_VALUE_LEN: usize = 256;

/// What a trigger asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Spec {
    /// `true`: this route's configured fault, at rate 1.
    Configured,
    /// An explicit fault.
    Custom(CustomSpec),
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CustomSpec {
    pub abort_http: Option<u16>,
    pub abort_grpc: Option<u32>,
    /// Nanoseconds, before the route's `delay.max` ceiling.
    pub delay: Option<u64>,
    /// Probability of each fault on this request; 1 when not given.
    pub rate: Option<f64>,
}

/// Why a trigger value was refused (a fixed set: it ends up in logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    TooLong,
    NotUtf8,
    Empty,
    UnknownKey,
    DuplicateKey,
    BadAbortStatus,
    BadGrpcStatus,
    BadDelay,
    BadRate,
    Malformed,
}

impl Invalid {
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooLong => "value longer than 256 bytes",
            Self::NotUtf8 => "value is not UTF-8",
            Self::Empty => "empty value",
            Self::UnknownKey => "unknown key (expected abort, grpc, delay or rate)",
            Self::DuplicateKey => "a key appears twice",
            Self::BadAbortStatus => "abort must be an HTTP status 200-599",
            Self::BadGrpcStatus => "grpc must be a gRPC status name or 0-16",
            Self::BadDelay => "delay must be a duration > 0 such as 250ms or 1.5s",
            Self::BadRate => "rate must be a number between 0 and 1",
            Self::Malformed => "expected true or key=value items separated by ; or ,",
        }
    }
}

/// Parses a trigger value. Total: any bytes give a spec or a reason.
pub fn parse(value: &[u8]) -> Result<Spec, Invalid> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Invalid::TooLong);
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| Invalid::NotUtf8)?
        .trim();
    if text.is_empty() {
        return Err(Invalid::Empty);
    }
    if ["true", "1", "on", "enabled"]
        .iter()
        .any(|word| text.eq_ignore_ascii_case(word))
    {
        return Ok(Spec::Configured);
    }
    let mut spec = CustomSpec::default();
    let mut any = false;
    for item in text.split([';', ',']).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let (key, raw) = item.split_once('=').ok_or(Invalid::Malformed)?;
        let (key, raw) = (key.trim(), raw.trim());
        any = true;
        if key.eq_ignore_ascii_case("abort") {
            let status = Some(raw)
                .filter(|r| r.len() == 3 && r.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|r| r.parse::<u16>().ok())
                .filter(|s| (200..=599).contains(s) && !bodiless(u32::from(*s)))
                .ok_or(Invalid::BadAbortStatus)?;
            set_once(&mut spec.abort_http, status)?;
        } else if key.eq_ignore_ascii_case("grpc") {
            set_once(
                &mut spec.abort_grpc,
                grpc_code(raw).ok_or(Invalid::BadGrpcStatus)?,
            )?;
        } else if key.eq_ignore_ascii_case("delay") {
            let nanos = duration::parse(raw)
                .filter(|n| *n > 0)
                .ok_or(Invalid::BadDelay)?;
            set_once(&mut spec.delay, nanos)?;
        } else if key.eq_ignore_ascii_case("rate") {
            let rate = decimal(raw)
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or(Invalid::BadRate)?;
            set_once(&mut spec.rate, rate)?;
        } else {
            return Err(Invalid::UnknownKey);
        }
    }
    if !any {
        return Err(Invalid::Empty);
    }
    if spec.abort_http.is_none() && spec.abort_grpc.is_none() && spec.delay.is_none() {
        // `rate=0.5` alone names no fault.
        return Err(Invalid::Malformed);
    }
    Ok(Spec::Custom(spec))
}

/// `0`, `1`, `0.25`, `1.0`: digits with at most one dot between digits; no sign, exponent or
/// blank. The one number syntax of rates, in headers and in configuration.
pub fn decimal(text: &str) -> Option<f64> {
    crate::decimal::parse(text)
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), Invalid> {
    if slot.is_some() {
        return Err(Invalid::DuplicateKey);
    }
    *slot = Some(value);
    Ok(())
}

/// Compares a presented token with the configured one in time independent of where they
/// first differ (the length still shows; tokens are secrets, not their lengths).
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    if presented.len() != expected.len() {
        return false;
    }
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Statuses whose responses carry no body (204 No Content, 304 Not Modified): an abort's reply
/// has one, so they are refused as abort statuses.
pub fn bodiless(status: u32) -> bool {
    matches!(status, 204 | 304)
}
