//! Decodes route metadata into JSON. The filter reads the property `xds.route_metadata`, which
//! Envoy returns as a serialized `envoy.config.core.v3.Metadata` message; its
//! `filter_metadata["marty.resilience"]` entry is a `google.protobuf.Struct`. (Reading the entry
//! by its own path is no good: Envoy then flattens it into proxy-wasm pairs, where a number and
//! an 8-byte string look the same.)
//!
//! Total and bounded: any bytes give a value or an error, nesting is capped, no recursion
//! deeper than [`MAX_DEPTH`].

use serde_json::{Map, Number, Value};

/// Deeper metadata than this is refused; the configuration is three levels deep.
pub const MAX_DEPTH: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError;

struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or(DecodeError)?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError)?;
        self.take(len)
    }

    /// The next `(field number, wire type)`, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, DecodeError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        Ok(Some((key >> 3, (key & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.length_delimited().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => Err(DecodeError),
        }
    }
}

/// Finds `filter_metadata[namespace]` in a serialized `Metadata` message and decodes it;
/// `Ok(None)` when the route has no entry for that namespace.
pub fn filter_metadata(metadata: &[u8], namespace: &str) -> Result<Option<Value>, DecodeError> {
    let mut input = Input { bytes: metadata };
    let mut found = None;
    while let Some((field, wire)) = input.key()? {
        if field != 1 || wire != 2 {
            input.skip(wire)?;
            continue;
        }
        // A map entry: key (1) and Struct value (2). The last entry for a key wins, as in protobuf.
        let mut entry = Input {
            bytes: input.length_delimited()?,
        };
        let mut key: &[u8] = &[];
        let mut value: &[u8] = &[];
        while let Some((field, wire)) = entry.key()? {
            match (field, wire) {
                (1, 2) => key = entry.length_delimited()?,
                (2, 2) => value = entry.length_delimited()?,
                _ => entry.skip(wire)?,
            }
        }
        if key == namespace.as_bytes() {
            found = Some(value);
        }
    }
    found.map(decode_struct).transpose()
}

/// Decodes a `Struct` message into a JSON object.
pub fn decode_struct(bytes: &[u8]) -> Result<Value, DecodeError> {
    struct_at(bytes, 0)
}

fn struct_at(bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError);
    }
    let mut input = Input { bytes };
    let mut map = Map::new();
    while let Some((field, wire)) = input.key()? {
        if field == 1 && wire == 2 {
            let (key, value) = entry(input.length_delimited()?, depth)?;
            map.insert(key, value);
        } else {
            input.skip(wire)?;
        }
    }
    Ok(Value::Object(map))
}

/// A `map<string, Value>` entry: field 1 the key, field 2 the value.
fn entry(bytes: &[u8], depth: usize) -> Result<(String, Value), DecodeError> {
    let mut input = Input { bytes };
    let mut key = String::new();
    let mut value = Value::Null;
    while let Some((field, wire)) = input.key()? {
        match (field, wire) {
            (1, 2) => {
                key = String::from_utf8(input.length_delimited()?.to_vec())
                    .map_err(|_| DecodeError)?
            }
            (2, 2) => value = value_at(input.length_delimited()?, depth + 1)?,
            _ => input.skip(wire)?,
        }
    }
    Ok((key, value))
}

/// A `Value`: null (1), number (2, double), string (3), bool (4), struct (5), list (6).
fn value_at(bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError);
    }
    let mut input = Input { bytes };
    let mut value = Value::Null;
    while let Some((field, wire)) = input.key()? {
        value = match (field, wire) {
            (1, 0) => {
                input.varint()?;
                Value::Null
            }
            (2, 1) => {
                let raw: [u8; 8] = input.take(8)?.try_into().map_err(|_| DecodeError)?;
                number(f64::from_le_bytes(raw))
            }
            (3, 2) => Value::String(
                String::from_utf8(input.length_delimited()?.to_vec()).map_err(|_| DecodeError)?,
            ),
            (4, 0) => Value::Bool(input.varint()? != 0),
            (5, 2) => struct_at(input.length_delimited()?, depth + 1)?,
            (6, 2) => list_at(input.length_delimited()?, depth + 1)?,
            _ => {
                input.skip(wire)?;
                continue;
            }
        };
    }
    Ok(value)
}

fn list_at(bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    let mut input = Input { bytes };
    let mut items = Vec::new();
    while let Some((field, wire)) = input.key()? {
        if field == 1 && wire == 2 {
            items.push(value_at(input.length_delimited()?, depth + 1)?);
        } else {
            input.skip(wire)?;
        }
    }
    Ok(Value::Array(items))
}

/// Struct numbers are doubles; whole ones become JSON integers so `3` validates as an integer.
fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f >= 0.0 && f <= u64::MAX as f64 {
        Value::Number(Number::from(f as u64))
    } else if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 {
        Value::Number(Number::from(f as i64))
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}
