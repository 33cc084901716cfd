//! The `failure_injection` section, resolved and as each configuration layer gives it.

use serde_json::{json, Map, Value};

use super::codes::grpc_code;
use super::json::{
    boolean, duration_nanos, expected, integer_u32, join, object, string, unknown_field,
};
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

pub const FIELDS: &[&str] = &[
    "enabled",
    "base_failure_rate",
    "method_specific_rates",
    "abort",
    "delay",
    "max_active_faults",
    "header_trigger",
];
/// The fields as `MARTY_RESILIENCE_FAILURE_INJECTION_<FIELD>` names them (nested ones flattened).
pub const ENV_FIELDS: &[&str] = &[
    "enabled",
    "base_failure_rate",
    "method_specific_rates",
    "max_active_faults",
    "abort_http_status",
    "abort_grpc_status",
    "delay_duration",
    "delay_rate",
    "delay_max",
    "header_trigger_enabled",
    "header_trigger_header",
    "header_trigger_token",
    "header_trigger_propagate",
];
const ABORT_FIELDS: &[&str] = &["http_status", "grpc_status"];
const DELAY_FIELDS: &[&str] = &["duration", "rate", "max"];
const HEADER_FIELDS: &[&str] = &["enabled", "header", "token", "propagate"];

/// The defaults every preset shares: off, and when switched on, Marty's 5 % of 503s.
pub fn default_policy() -> FaultPolicy {
    FaultPolicy {
        enabled: false,
        enabled_by_env: false,
        base_failure_rate: 0.05,
        method_specific_rates: MethodRates::default(),
        abort: AbortPolicy {
            http_status: 503,
            grpc_status: 14,
        },
        delay: DelayPolicy {
            duration: NANOS_PER_SEC / 4,
            rate: 0.0,
            max: 10 * NANOS_PER_SEC,
        },
        max_active_faults: 100,
        header_trigger: HeaderTrigger {
            enabled: false,
            header: "x-failure-inject".to_string(),
            token: None,
            propagate: false,
        },
    }
}

/// One layer's partial section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPatch {
    pub enabled: Option<bool>,
    pub base_failure_rate: Option<f64>,
    pub method_specific_rates: Option<MethodRates>,
    pub abort_http_status: Option<u16>,
    pub abort_grpc_status: Option<u32>,
    pub delay_duration: Option<u64>,
    pub delay_rate: Option<f64>,
    pub delay_max: Option<u64>,
    pub max_active_faults: Option<u32>,
    pub header_enabled: Option<bool>,
    pub header_name: Option<String>,
    /// `Some(None)`: the layer explicitly sets `token: null`.
    pub header_token: Option<Option<String>>,
    pub header_propagate: Option<bool>,
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

fn sub<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    object(value, path)
}

impl FaultPatch {
    /// Reads one field of the section; nested objects (`abort`, `delay`, `header_trigger`)
    /// are read field by field, so a layer may set `abort.http_status` alone.
    pub fn set(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError> {
        match key {
            "enabled" => self.enabled = Some(boolean(value, path)?),
            "base_failure_rate" => self.base_failure_rate = Some(rate(value, path)?),
            "method_specific_rates" => {
                self.method_specific_rates = Some(method_rates(value, path)?)
            }
            "max_active_faults" => {
                self.max_active_faults = Some(integer_u32(value, path, 0, u32::MAX)?)
            }
            "abort" => {
                for (field, v) in sub(value, path)? {
                    self.set_abort(field, v, &join(path, field))?;
                }
            }
            "delay" => {
                for (field, v) in sub(value, path)? {
                    self.set_delay(field, v, &join(path, field))?;
                }
            }
            "header_trigger" => {
                for (field, v) in sub(value, path)? {
                    self.set_header(field, v, &join(path, field))?;
                }
            }
            _ => return Err(unknown_field(path, FIELDS)),
        }
        Ok(())
    }

    pub fn set_abort(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError> {
        match key {
            "http_status" => {
                let status = integer_u32(value, path, 200, 599)?;
                self.abort_http_status = u16::try_from(status).ok();
            }
            "grpc_status" => {
                let code = match value {
                    Value::String(s) => grpc_code(s),
                    Value::Number(_) => super::json::integer(value, path, 0, 16)
                        .ok()
                        .map(|n| n as u32),
                    _ => None,
                };
                self.abort_grpc_status = Some(code.ok_or_else(|| {
                    expected(
                        path,
                        "a gRPC status name (e.g. \"UNAVAILABLE\") or number 0-16",
                        value,
                    )
                })?);
            }
            _ => return Err(unknown_field(path, ABORT_FIELDS)),
        }
        Ok(())
    }

    pub fn set_delay(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError> {
        match key {
            "duration" => self.delay_duration = Some(duration_nanos(value, path, true)?),
            "rate" => self.delay_rate = Some(rate(value, path)?),
            "max" => self.delay_max = Some(duration_nanos(value, path, false)?),
            _ => return Err(unknown_field(path, DELAY_FIELDS)),
        }
        Ok(())
    }

    pub fn set_header(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError> {
        match key {
            "enabled" => self.header_enabled = Some(boolean(value, path)?),
            "propagate" => self.header_propagate = Some(boolean(value, path)?),
            "header" => {
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
                // The trigger header is removed from requests: it must not be one that means
                // something else.
                if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("x-envoy-") {
                    return Err(expected(
                        path,
                        "a header of its own (not the token header, an x-envoy-* header, or a standard request header)",
                        value,
                    ));
                }
                self.header_name = Some(name);
            }
            "token" => {
                self.header_token = Some(match value {
                    Value::Null => None,
                    Value::String(s) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
                    _ => {
                        return Err(expected(
                            path,
                            "null or a non-empty string of at most 256 bytes",
                            value,
                        ))
                    }
                })
            }
            _ => return Err(unknown_field(path, HEADER_FIELDS)),
        }
        Ok(())
    }

    pub fn apply(&self, policy: &mut FaultPolicy) {
        fn take<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        if self.enabled == Some(true) {
            // Configuration itself turns injection on here: faults are not the env switch's.
            policy.enabled_by_env = false;
        }
        take(&mut policy.enabled, &self.enabled);
        take(&mut policy.base_failure_rate, &self.base_failure_rate);
        take(
            &mut policy.method_specific_rates,
            &self.method_specific_rates,
        );
        take(&mut policy.abort.http_status, &self.abort_http_status);
        take(&mut policy.abort.grpc_status, &self.abort_grpc_status);
        take(&mut policy.delay.duration, &self.delay_duration);
        take(&mut policy.delay.rate, &self.delay_rate);
        take(&mut policy.delay.max, &self.delay_max);
        take(&mut policy.max_active_faults, &self.max_active_faults);
        take(&mut policy.header_trigger.enabled, &self.header_enabled);
        take(&mut policy.header_trigger.header, &self.header_name);
        take(&mut policy.header_trigger.token, &self.header_token);
        take(&mut policy.header_trigger.propagate, &self.header_propagate);
    }
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
    let secs = |n: u64| n as f64 / NANOS_PER_SEC as f64;
    let rates: Map<String, Value> = policy
        .method_specific_rates
        .entries()
        .into_iter()
        .map(|(k, r)| (k, Value::from(r)))
        .collect();
    json!({
        "enabled": policy.enabled,
        "base_failure_rate": policy.base_failure_rate,
        "method_specific_rates": rates,
        "abort": {
            "http_status": policy.abort.http_status,
            "grpc_status": super::codes::GRPC_STATUS_NAMES
                .get(policy.abort.grpc_status as usize)
                .copied()
                .unwrap_or("UNKNOWN"),
        },
        "delay": {
            "duration": secs(policy.delay.duration),
            "rate": policy.delay.rate,
            "max": secs(policy.delay.max),
        },
        "max_active_faults": policy.max_active_faults,
        "header_trigger": {
            "enabled": policy.header_trigger.enabled,
            "header": policy.header_trigger.header,
            "token": policy.header_trigger.token.as_ref().map(|_| "(set)"),
            "propagate": policy.header_trigger.propagate,
        },
    })
}
