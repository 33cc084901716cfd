//! Sets of HTTP status codes (`"5xx"` classes and exact codes) and of gRPC status codes
//! (canonical names or numbers), as written in `failure_status_codes`,
//! `ignored_status_codes` and `failure_grpc_status`.

use serde_json::Value;

use super::json::{array, expected};
use super::ConfigError;

/// HTTP statuses: whole classes (`"5xx"`) plus exact codes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusSet {
    /// Bit `n` set means the class `n`xx (1..=5) is in the set.
    classes: u8,
    codes: Vec<u16>,
}

impl StatusSet {
    /// The classes `1..=5` among `classes` (`5` is `5xx`); others are not status classes.
    pub fn classes(classes: &[u8]) -> Self {
        let mut set = Self::default();
        for class in classes.iter().filter(|class| (1..=5).contains(*class)) {
            set.classes |= 1 << class;
        }
        set
    }

    pub fn codes(codes: &[u16]) -> Self {
        Self {
            classes: 0,
            codes: codes.to_vec(),
        }
    }

    pub fn contains(&self, status: u16) -> bool {
        let class = status / 100;
        (1..=5).contains(&class) && self.classes & (1 << class) != 0 || self.codes.contains(&status)
    }

    /// The set as configuration would write it (for reports and round trips).
    pub fn to_json(&self) -> Value {
        let mut items: Vec<Value> = (1..=5u8)
            .filter(|class| self.classes & (1 << class) != 0)
            .map(|class| Value::from(format!("{class}xx")))
            .collect();
        items.extend(self.codes.iter().map(|code| Value::from(*code)));
        Value::Array(items)
    }

    pub fn parse(value: &Value, path: &str) -> Result<Self, ConfigError> {
        const WHAT: &str = "an HTTP status code (100-599) or a class like \"5xx\"";
        let mut set = Self::default();
        for (i, item) in array(value, path, "HTTP status codes or classes")?
            .iter()
            .enumerate()
        {
            let item_path = format!("{path}[{i}]");
            match item {
                Value::Number(_) => set.codes.push(http_code(item, &item_path)?),
                Value::String(text) => match text.to_ascii_lowercase().as_bytes() {
                    [digit @ b'1'..=b'5', b'x', b'x'] => set.classes |= 1 << (digit - b'0'),
                    [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => set.codes.push(
                        u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                    ),
                    _ => return Err(expected(&item_path, WHAT, item)),
                },
                _ => return Err(expected(&item_path, WHAT, item)),
            }
        }
        Ok(set)
    }
}

fn http_code(value: &Value, path: &str) -> Result<u16, ConfigError> {
    super::json::integer(value, path, 100, 599)
        .ok()
        .and_then(|code| u16::try_from(code).ok())
        .ok_or_else(|| expected(path, "an HTTP status code (100-599)", value))
}

/// gRPC status codes the filter itself names (the rest are only read, by name or number).
pub const GRPC_UNKNOWN: u32 = 2;
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
pub const GRPC_INTERNAL: u32 = 13;
pub const GRPC_UNAVAILABLE: u32 = 14;

/// The canonical gRPC status names, indexed by code.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Parses a gRPC status given by canonical name (any case) or number 0..=16.
pub fn grpc_code(text: &str) -> Option<u32> {
    let text = text.trim();
    if !text.is_empty() && text.len() <= 2 && text.bytes().all(|b| b.is_ascii_digit()) {
        // No leading zero ("07"), as for HTTP codes.
        if text.len() == 2 && text.starts_with('0') {
            return None;
        }
        return text.parse::<u32>().ok().filter(|n| *n <= 16);
    }
    GRPC_STATUS_NAMES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .and_then(|i| u32::try_from(i).ok())
}

/// gRPC status codes 0..=16 as a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcSet(u32);

impl GrpcSet {
    pub fn of(codes: &[u32]) -> Self {
        Self(
            codes
                .iter()
                .filter(|c| **c <= 16)
                .fold(0, |acc, c| acc | 1 << c),
        )
    }

    pub fn contains(&self, code: u32) -> bool {
        code <= 16 && self.0 & (1 << code) != 0
    }

    pub fn to_json(self) -> Value {
        Value::Array(
            GRPC_STATUS_NAMES
                .iter()
                .enumerate()
                .filter(|(code, _)| self.0 & (1 << code) != 0)
                .map(|(_, name)| Value::from(*name))
                .collect(),
        )
    }

    pub fn parse(value: &Value, path: &str) -> Result<Self, ConfigError> {
        const WHAT: &str = "a gRPC status name (e.g. \"UNAVAILABLE\") or number 0-16";
        let mut set = 0u32;
        for (i, item) in array(value, path, "gRPC status names or numbers")?
            .iter()
            .enumerate()
        {
            let code = match item {
                Value::Number(_) => super::json::integer(item, path, 0, 16)
                    .ok()
                    .map(|n| n as u32),
                Value::String(s) => grpc_code(s),
                _ => None,
            };
            match code {
                Some(code) => set |= 1 << code,
                None => return Err(expected(&format!("{path}[{i}]"), WHAT, item)),
            }
        }
        Ok(Self(set))
    }
}
