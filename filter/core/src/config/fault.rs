//! The `failure_injection` section, resolved and as each configuration layer gives it.

use serde_json::{Map, Value};

use super::codes::grpc_code;
use super::json::{boolean, expected, integer_u32, join, object, string};
use super::section::{duration, duration_or_zero, plain, seconds, section, u32_in, Section};
use super::ConfigError;
use crate::fault::{AbortPolicy, DelayPolicy, FaultPolicy, HeaderTrigger, MethodRates};
use crate::NANOS_PER_SEC;

/// Most `method_specific_rates` entries accepted: the table is scanned per request.
pub const MAX_METHOD_RATES: usize = 256;
const MAX_PATH_LEN: usize = 256;

/// Headers the trigger header may not be: it is stripped from requests.
const RESERVED_HEADERS: &[&str] = &[
    crate::fault::TOKEN_HEADER,
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "user-agent",
    "accept",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "traceparent",
    "grpc-timeout",
];

/// The defaults every preset shares: off, and when switched on, Marty's 5 % of 503s.
pub fn default_policy() -> FaultPolicy {
    FaultPolicy {
        enabled: false,
        enabled_by_env: false,
        base_failure_rate: 0.05,
        method_specific_rates: MethodRates::default(),
        abort: AbortPolicy {
            http_status: 503,
            grpc_status: crate::fault::DEFAULT_GRPC_STATUS,
        },
        delay: DelayPolicy {
            duration: NANOS_PER_SEC / 4,
            rate: 0.0,
            max: 10 * NANOS_PER_SEC,
        },
        max_active_faults: 100,
        metadata_trigger: false,
        header_trigger: HeaderTrigger {
            enabled: false,
            header: "x-failure-inject".to_string(),
            token: None,
            propagate: false,
        },
    }
}

section! {
    /// One layer's partial `failure_injection` section: only the fields that layer sets.
    pub struct FaultPatch for FaultPolicy {
        @before_apply configured_injection_is_not_the_switch;
        @variables objects_last;
        enabled: value(bool, enabled, boolean, plain),
        base_failure_rate: value(f64, base_failure_rate, rate, plain),
        method_specific_rates:
            value(MethodRates, method_specific_rates, method_rates, method_rates_json),
        abort: object(AbortPatch),
        delay: object(DelayPatch),
        max_active_faults: value(u32, max_active_faults, u32_in(0, u32::MAX), plain),
        header_trigger: object(HeaderTriggerPatch),
        metadata_trigger: value(bool, metadata_trigger, boolean, plain),
    }
}

section! {
    /// One layer's partial `failure_injection.abort`.
    pub struct AbortPatch for FaultPolicy {
        http_status: value(u16, abort.http_status, http_status, plain),
        grpc_status: value(u32, abort.grpc_status, grpc_status, grpc_status_name),
    }
}

section! {
    /// One layer's partial `failure_injection.delay`.
    pub struct DelayPatch for FaultPolicy {
        duration: value(u64, delay.duration, duration_or_zero, seconds),
        rate: value(f64, delay.rate, rate, plain),
        max: value(u64, delay.max, duration, seconds),
    }
}

section! {
    /// One layer's partial `failure_injection.header_trigger`.
    pub struct HeaderTriggerPatch for FaultPolicy {
        enabled: value(bool, header_trigger.enabled, boolean, plain),
        header: text(String, header_trigger.header, trigger_header, plain),
        // `token: null` unsets a token a lower layer set.
        token: text(Option<String>, header_trigger.token, token, redacted),
        propagate: value(bool, header_trigger.propagate, boolean, plain),
    }
}

/// A layer that turns injection on itself takes it over from the `MARTY_FAILURE_INJECTION`
/// switch: its faults are not reported as the switch's.
fn configured_injection_is_not_the_switch(patch: &FaultPatch, policy: &mut FaultPolicy) {
    if patch.enabled == Some(true) {
        policy.enabled_by_env = false;
    }
}

/// A probability: a number, or a decimal string (`"0.25"`), since Envoy's YAML loader turns
/// fractional numbers in route metadata into strings.
fn rate(value: &Value, path: &str) -> Result<f64, ConfigError> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => crate::fault::header::decimal(s.trim()),
        _ => None,
    };
    parsed
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| expected(path, "a rate between 0 and 1", value))
}

/// An abort's status: 200-599 but not 204 or 304, which cannot carry the reply's body.
fn http_status(value: &Value, path: &str) -> Result<u16, ConfigError> {
    let status = integer_u32(value, path, 200, 599)?;
    if crate::fault::header::bodiless(status) {
        return Err(super::json::err(
            path,
            format!("{status} cannot carry the abort's body; use another status"),
        ));
    }
    u16::try_from(status).map_err(|_| expected(path, "a 16-bit integer", value))
}

fn grpc_status(value: &Value, path: &str) -> Result<u32, ConfigError> {
    let code = match value {
        Value::String(s) => grpc_code(s),
        Value::Number(_) => super::json::integer(value, path, 0, 16)
            .ok()
            .and_then(|n| u32::try_from(n).ok()),
        _ => None,
    };
    code.ok_or_else(|| {
        expected(
            path,
            "a gRPC status name (e.g. \"UNAVAILABLE\") or number 0-16",
            value,
        )
    })
}

fn grpc_status_name(code: &u32) -> Value {
    let name = usize::try_from(*code)
        .ok()
        .and_then(|i| super::codes::GRPC_STATUS_NAMES.get(i));
    Value::from(name.copied().unwrap_or("UNKNOWN"))
}

fn trigger_header(value: &Value, path: &str) -> Result<String, ConfigError> {
    let name = string(value, path)?.to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(expected(
            path,
            "a header name of letters, digits, '-' and '_' (at most 64)",
            value,
        ));
    }
    // The trigger header is removed from requests: it must not be one that means something
    // else.
    if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("x-envoy-") {
        return Err(expected(
            path,
            "a header of its own (not the token header, an x-envoy-* header, or a standard request header)",
            value,
        ));
    }
    Ok(name)
}

/// A token is a secret: a rejected one is described (its kind and length), never shown, since
/// configuration errors end up in logs.
fn token(value: &Value, path: &str) -> Result<Option<String>, ConfigError> {
    let seen = match value {
        Value::Null => return Ok(None),
        Value::String(s) if !s.is_empty() && s.len() <= 256 => return Ok(Some(s.clone())),
        Value::String(s) if s.is_empty() => "an empty string".to_string(),
        Value::String(s) => format!("a string of {} bytes", s.len()),
        Value::Bool(_) => "a boolean".to_string(),
        Value::Number(_) => "a number".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    };
    Err(super::json::err(
        path,
        format!("expected null or a non-empty string of at most 256 bytes, got {seen}"),
    ))
}

/// Reports say whether a token is set, never what it is.
fn redacted(token: &Option<String>) -> Value {
    Value::from(token.as_ref().map(|_| "(set)"))
}

fn method_rates_json(rates: &MethodRates) -> Value {
    // Inserted one by one rather than collected: `collect` into the map sorts (a stable sort's
    // code in the module); insertion keeps the last of equal keys as well.
    let mut map = Map::new();
    for (key, rate) in rates.entries() {
        map.insert(key, Value::from(rate));
    }
    Value::Object(map)
}

fn method_rates(value: &Value, path: &str) -> Result<MethodRates, ConfigError> {
    let map = object(value, path)?;
    if map.len() > MAX_METHOD_RATES {
        return Err(expected(
            path,
            &format!("at most {MAX_METHOD_RATES} entries"),
            &Value::from(map.len()),
        ));
    }
    let mut entries = Vec::with_capacity(map.len());
    for (key, v) in map {
        let entry_path = format!("{path}[\"{key}\"]");
        if !key.starts_with('/') || key.len() > MAX_PATH_LEN {
            return Err(expected(
                &entry_path,
                "a request path key starting with '/' (at most 256 bytes)",
                &Value::from(key.as_str()),
            ));
        }
        entries.push((key.clone(), rate(v, &entry_path)?));
    }
    Ok(MethodRates::new(entries))
}

/// Checks what only the resolved section can show (values from different layers together).
pub fn validate(policy: &FaultPolicy, path: &str) -> Result<(), ConfigError> {
    if policy.delay.duration > policy.delay.max {
        return Err(super::json::err(
            &join(path, "delay.duration"),
            format!(
                "must not exceed delay.max ({}), got {}",
                crate::duration::display(policy.delay.max),
                crate::duration::display(policy.delay.duration)
            ),
        ));
    }
    Ok(())
}

/// The resolved section, as configuration would write it (reports, docs tests).
pub fn to_json(policy: &FaultPolicy) -> Value {
    FaultPatch::to_json(policy)
}
