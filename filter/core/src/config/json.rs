//! Typed reads out of a `serde_json::Value`, each naming the field path and what was expected.
//!
//! serde's derive reports "invalid type at line 3 column 7"; operators need
//! `routes.users.circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got -2`.

use serde_json::{Map, Value};

use super::ConfigError;
use crate::duration;

pub fn err(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// The value as it appeared, shortened so a pasted blob cannot flood the log.
pub fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// A bound as `{}` writes it (`0`, `100`, `0.5`), without `f64`'s `Display`: that costs the
/// module ~15 KB of float formatting. Whole numbers as integers; others as JSON writes them,
/// which is the same text for every bound the configuration has.
pub fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        (x as i64).to_string()
    } else {
        Value::from(x).to_string()
    }
}

pub fn expected(path: &str, what: &str, got: &Value) -> ConfigError {
    err(path, format!("expected {what}, got {}", shown(got)))
}

pub fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    value
        .as_object()
        .ok_or_else(|| expected(path, "an object", value))
}

pub fn unknown_field(path: &str, allowed: &[&str]) -> ConfigError {
    if allowed.is_empty() {
        err(path, "unknown field (this section takes no fields yet)")
    } else {
        err(
            path,
            format!("unknown field, expected one of: {}", allowed.join(", ")),
        )
    }
}

/// A duration that caps another (`max_delay` over `base_delay`) set below it; the two may come
/// from different layers, so the message names both values.
pub fn cap_below_floor(
    section: &str,
    cap: &str,
    cap_value: u64,
    floor: &str,
    floor_value: u64,
) -> ConfigError {
    err(
        &join(section, cap),
        format!(
            "must be >= {floor} ({}), got {}",
            duration::display(floor_value),
            duration::display(cap_value)
        ),
    )
}

pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

pub fn boolean(value: &Value, path: &str) -> Result<bool, ConfigError> {
    value
        .as_bool()
        .ok_or_else(|| expected(path, "a boolean", value))
}

pub fn string(value: &Value, path: &str) -> Result<String, ConfigError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| expected(path, "a string", value))
}

/// An integer in `[min, max]`; the message states the range the way people read it.
pub fn integer(value: &Value, path: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let what = if max == u64::MAX || max >= u32::MAX as u64 {
        format!("an integer >= {min}")
    } else {
        format!("an integer between {min} and {max}")
    };
    // 5.0 is accepted as 5: YAML-to-JSON tooling often emits floats.
    let as_int = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    match as_int {
        Some(n) if n >= min && n <= max => Ok(n),
        // Too large for the field: say where the ceiling is, not just the floor.
        Some(n) if n > max => Err(expected(
            path,
            &format!("an integer between {min} and {max}"),
            value,
        )),
        _ => Err(expected(path, &what, value)),
    }
}

pub fn integer_u32(value: &Value, path: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    let n = integer(value, path, u64::from(min), u64::from(max))?;
    u32::try_from(n).map_err(|_| expected(path, "a 32-bit integer", value))
}

/// A duration: seconds as a number, or a string with a unit; 0 only when `allow_zero`.
pub fn duration_nanos(value: &Value, path: &str, allow_zero: bool) -> Result<u64, ConfigError> {
    let what = if allow_zero {
        "a duration >= 0 (seconds as a number, or a string like \"250ms\" or \"30s\"; at most 1 day)"
    } else {
        "a duration > 0 (seconds as a number, or a string like \"250ms\" or \"30s\"; at most 1 day)"
    };
    let parsed = match value {
        Value::Number(n) => n.as_f64().and_then(duration::from_seconds),
        Value::String(s) => duration::parse(s),
        _ => None,
    };
    match parsed {
        Some(0) if !allow_zero => Err(expected(path, what, value)),
        Some(nanos) => Ok(nanos),
        None => Err(expected(path, what, value)),
    }
}

pub fn array<'a>(value: &'a Value, path: &str, what: &str) -> Result<&'a Vec<Value>, ConfigError> {
    value
        .as_array()
        .ok_or_else(|| expected(path, &format!("a list of {what}"), value))
}
