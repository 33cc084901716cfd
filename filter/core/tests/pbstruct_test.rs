//! `pbstruct`: route metadata as Envoy serializes it (`envoy.config.core.v3.Metadata` whose
//! `filter_metadata` map holds `google.protobuf.Struct`s), built here by a tiny encoder.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::for_each_seed;
use marty_resilience_core::pbstruct::{decode_struct, filter_metadata, DecodeError, MAX_DEPTH};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Map, Value};

const NS: &str = "marty.resilience";

// ---------------------------------------------------------------- a tiny protobuf encoder

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn key(field: u64, wire: u8, out: &mut Vec<u8>) {
    varint(field << 3 | u64::from(wire), out);
}

fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `google.protobuf.Value`: null 1, number 2, string 3, bool 4, struct 5, list 6.
fn pb_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Value::Null => {
            key(1, 0, &mut out);
            varint(0, &mut out);
        }
        Value::Number(n) => {
            key(2, 1, &mut out);
            out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
        }
        Value::String(s) => bytes_field(3, s.as_bytes(), &mut out),
        Value::Bool(b) => {
            key(4, 0, &mut out);
            varint(u64::from(*b), &mut out);
        }
        Value::Object(map) => bytes_field(5, &pb_struct(map), &mut out),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                bytes_field(1, &pb_value(item), &mut list);
            }
            bytes_field(6, &list, &mut out);
        }
    }
    out
}

/// `google.protobuf.Struct`: `map<string, Value> fields = 1`.
fn pb_struct(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in map {
        let mut entry = Vec::new();
        bytes_field(1, k.as_bytes(), &mut entry);
        bytes_field(2, &pb_value(v), &mut entry);
        bytes_field(1, &entry, &mut out);
    }
    out
}

/// `envoy.config.core.v3.Metadata`: `map<string, Struct> filter_metadata = 1`.
fn pb_metadata(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ns, st) in entries {
        let mut entry = Vec::new();
        bytes_field(1, ns.as_bytes(), &mut entry);
        bytes_field(2, st, &mut entry);
        bytes_field(1, &entry, &mut out);
    }
    out
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn metadata_of(v: Value) -> Vec<u8> {
    let st = pb_struct(&object(v));
    pb_metadata(&[(NS, &st)])
}

// ---------------------------------------------------------------- decoding

#[test]
fn a_route_entry_decodes_to_the_json_it_was_written_from() {
    let entry = json!({
        "circuit_breaker": {
            "enabled": true,
            "failure_threshold": 3,
            "recovery_timeout": "250ms",
            "failure_status_codes": ["5xx", 429],
            "failure_grpc_status": ["UNAVAILABLE"],
            "count_connect_failures": false,
        },
        "retry": {},
    });
    let bytes = metadata_of(entry.clone());
    assert_eq!(filter_metadata(&bytes, NS), Ok(Some(entry)));
}

#[test]
fn whole_numbers_become_integers_and_others_stay_floats() {
    let st = pb_struct(&object(json!({
        "three": 3.0, "neg": -2.0, "zero": 0.0, "half": 2.5, "tiny": 1e-9, "big": 1e20,
    })));
    let v = decode_struct(&st).unwrap();
    assert!(v["three"].is_u64());
    assert_eq!(v["three"], json!(3));
    assert!(v["neg"].is_i64());
    assert_eq!(v["neg"], json!(-2));
    assert_eq!(v["zero"], json!(0));
    assert!(v["half"].is_f64());
    assert_eq!(v["half"], json!(2.5));
    assert_eq!(v["tiny"], json!(1e-9));
    assert_eq!(v["big"], json!(1e20));
}

#[test]
fn non_finite_numbers_become_null() {
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut value = Vec::new();
        key(2, 1, &mut value);
        value.extend_from_slice(&f.to_le_bytes());
        let mut entry = Vec::new();
        bytes_field(1, b"x", &mut entry);
        bytes_field(2, &value, &mut entry);
        let mut st = Vec::new();
        bytes_field(1, &entry, &mut st);
        assert_eq!(decode_struct(&st), Ok(json!({"x": null})), "{f}");
    }
}

#[test]
fn nulls_bools_strings_and_lists_decode() {
    let v = json!({
        "n": null, "t": true, "f": false, "s": "héllo", "empty": "",
        "list": [1, "two", [3.5], {"four": 4}, null, false], "none": [], "obj": {},
    });
    assert_eq!(decode_struct(&pb_struct(&object(v.clone()))), Ok(v));
}

#[test]
fn an_absent_namespace_is_none() {
    let other = pb_struct(&object(json!({"x": 1})));
    assert_eq!(filter_metadata(&[], NS), Ok(None));
    assert_eq!(
        filter_metadata(&pb_metadata(&[("envoy.lb", &other)]), NS),
        Ok(None)
    );
    // A prefix of the namespace is not the namespace.
    assert_eq!(
        filter_metadata(&pb_metadata(&[("marty", &other)]), NS),
        Ok(None)
    );
}

#[test]
fn the_namespace_is_found_among_others_and_the_last_entry_wins() {
    let a = pb_struct(&object(json!({"v": 1})));
    let b = pb_struct(&object(json!({"v": 2})));
    let noise = pb_struct(&object(json!({"other": true})));
    let bytes = pb_metadata(&[(NS, &a), ("envoy.lb", &noise), (NS, &b)]);
    assert_eq!(filter_metadata(&bytes, NS), Ok(Some(json!({"v": 2}))));
    assert_eq!(
        filter_metadata(&bytes, "envoy.lb"),
        Ok(Some(json!({"other": true})))
    );
}

#[test]
fn an_entry_without_a_value_is_an_empty_object() {
    let mut entry = Vec::new();
    bytes_field(1, NS.as_bytes(), &mut entry);
    let mut bytes = Vec::new();
    bytes_field(1, &entry, &mut bytes);
    assert_eq!(filter_metadata(&bytes, NS), Ok(Some(json!({}))));
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let st = pb_struct(&object(json!({"a": 1})));
    let mut bytes = Vec::new();
    // typed_filter_metadata (field 2, an Any map) and unknown fields of each wire type.
    bytes_field(2, b"\x0a\x03abc", &mut bytes);
    key(7, 0, &mut bytes);
    varint(300, &mut bytes);
    key(8, 1, &mut bytes);
    bytes.extend_from_slice(&[0; 8]);
    key(9, 5, &mut bytes);
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend(pb_metadata(&[(NS, &st)]));
    assert_eq!(filter_metadata(&bytes, NS), Ok(Some(json!({"a": 1}))));
}

#[test]
fn malformed_input_is_an_error() {
    let good = metadata_of(json!({"a": "b"}));
    // One map entry, cut anywhere inside: its length prefix promises more than there is.
    for len in 1..good.len() {
        assert_eq!(
            filter_metadata(&good[..len], NS),
            Err(DecodeError),
            "cut at {len}"
        );
    }
    // A length beyond the input.
    assert_eq!(filter_metadata(&[0x0a, 0x05, 0x01], NS), Err(DecodeError));
    // Group wire types (3, 4) and the unused 6, 7.
    for wire in [3u8, 4, 6, 7] {
        assert_eq!(filter_metadata(&[(1 << 3) | wire], NS), Err(DecodeError));
    }
    // An unterminated varint, and one longer than ten bytes.
    assert_eq!(filter_metadata(&[0x80], NS), Err(DecodeError));
    assert_eq!(filter_metadata(&[0xff; 11], NS), Err(DecodeError));
    // A key that is not UTF-8, inside the namespace's struct.
    let mut entry = Vec::new();
    bytes_field(1, &[0xff, 0xfe], &mut entry);
    bytes_field(2, &pb_value(&json!(1)), &mut entry);
    let mut st = Vec::new();
    bytes_field(1, &entry, &mut st);
    assert_eq!(
        filter_metadata(&pb_metadata(&[(NS, &st)]), NS),
        Err(DecodeError)
    );
}

#[test]
fn a_malformed_struct_of_another_namespace_is_not_decoded() {
    // Only the namespace asked for is decoded; another filter's odd metadata is not our error.
    let bad_struct = [0x0a, 0x02, 0xff, 0xff];
    let good = pb_struct(&object(json!({"ok": true})));
    let bytes = pb_metadata(&[("someone.else", &bad_struct), (NS, &good)]);
    assert_eq!(filter_metadata(&bytes, NS), Ok(Some(json!({"ok": true}))));
}

// ---------------------------------------------------------------- depth

/// `depth` structs nested as `{"a": {"a": ... {}}}`, built inside out.
fn nested_structs(depth: usize) -> Vec<u8> {
    let mut inner = pb_struct(&Map::new());
    for _ in 0..depth {
        let mut value = Vec::new();
        bytes_field(5, &inner, &mut value);
        let mut entry = Vec::new();
        bytes_field(1, b"a", &mut entry);
        bytes_field(2, &value, &mut entry);
        inner = Vec::new();
        bytes_field(1, &entry, &mut inner);
    }
    inner
}

fn nested_json(depth: usize) -> Value {
    (0..depth).fold(json!({}), |inner, _| json!({ "a": inner }))
}

#[test]
fn nesting_as_deep_as_a_configuration_decodes() {
    for depth in 0..=4 {
        assert_eq!(
            decode_struct(&nested_structs(depth)),
            Ok(nested_json(depth))
        );
    }
}

#[test]
fn nesting_of_max_depth_structs_is_an_error() {
    assert_eq!(decode_struct(&nested_structs(MAX_DEPTH)), Err(DecodeError));
    let st = nested_structs(MAX_DEPTH);
    assert_eq!(
        filter_metadata(&pb_metadata(&[(NS, &st)]), NS),
        Err(DecodeError)
    );
}

/// Lists nested `levels` deep (`[[[...]]]`) as a struct field, built back to front in linear
/// time so the input can be far deeper than any stack would allow recursing into.
fn deeply_nested_lists(levels: usize) -> Vec<u8> {
    // Bytes are produced reversed: each wrapper's prefix is appended reversed after its body.
    fn prefix(field: u64, rev: &mut Vec<u8>) {
        let mut p = Vec::new();
        key(field, 2, &mut p);
        varint(rev.len() as u64, &mut p);
        rev.extend(p.iter().rev());
    }
    let mut rev: Vec<u8> = Vec::new();
    for _ in 0..levels {
        prefix(1, &mut rev); // ListValue.values = Value
        prefix(6, &mut rev); // Value.list_value = ListValue
    }
    let mut entry_rev = rev;
    prefix(2, &mut entry_rev); // entry value
    let mut k = Vec::new();
    bytes_field(1, b"deep", &mut k);
    entry_rev.extend(k.iter().rev());
    prefix(1, &mut entry_rev); // Struct.fields entry
    entry_rev.reverse();
    entry_rev
}

#[test]
fn absurdly_deep_nesting_is_an_error_not_a_stack_overflow() {
    // Sanity of the builder: shallow lists decode.
    assert_eq!(
        decode_struct(&deeply_nested_lists(2)),
        Ok(json!({"deep": [[null]]}))
    );
    let deep = deeply_nested_lists(200_000);
    assert!(deep.len() > 1_000_000);
    assert_eq!(decode_struct(&deep), Err(DecodeError));
    assert_eq!(
        filter_metadata(&pb_metadata(&[(NS, &deep)]), NS),
        Err(DecodeError)
    );
}

// ---------------------------------------------------------------- properties

/// A random JSON tree whose numbers survive a trip through a double, in normalized form.
fn random_json(rng: &mut StdRng, depth: usize) -> Value {
    let leaf = depth == 0 || rng.gen_bool(0.4);
    match rng.gen_range(0..if leaf { 4 } else { 6 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 => match rng.gen_range(0..3) {
            0 => json!(rng.gen_range(0..1_000_000u64)),
            1 => json!(-rng.gen_range(1..1_000_000i64)),
            _ => json!(rng.gen_range(0..1000) as f64 + 0.5),
        },
        3 => {
            let len = rng.gen_range(0..8);
            Value::String((0..len).map(|_| rng.gen_range('a'..='z')).collect())
        }
        4 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.gen_range(0..4))
                .map(|i| (format!("k{i}"), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

#[test]
fn random_structs_round_trip() {
    for_each_seed("pbstruct round trip", 0x9B_0001, 2000, |rng| {
        let map: Map<String, Value> = (0..rng.gen_range(0..5))
            .map(|i| (format!("f{i}"), random_json(rng, 3)))
            .collect();
        let expected = Value::Object(map.clone());
        let bytes = pb_metadata(&[(NS, &pb_struct(&map))]);
        let got = filter_metadata(&bytes, NS);
        ensure!(
            got == Ok(Some(expected.clone())),
            "{expected} decoded as {got:?}"
        );
        Ok(())
    });
}

#[test]
fn random_bytes_never_panic() {
    for_each_seed("pbstruct random bytes", 0x9B_0002, 20_000, |rng| {
        let len = rng.gen_range(0..64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let _ = filter_metadata(&bytes, NS);
        let _ = decode_struct(&bytes);
        Ok(())
    });
}

#[test]
fn mutated_metadata_never_panics() {
    for_each_seed("pbstruct mutations", 0x9B_0003, 5000, |rng| {
        let map: Map<String, Value> = (0..rng.gen_range(1..4))
            .map(|i| (format!("f{i}"), random_json(rng, 3)))
            .collect();
        let mut bytes = pb_metadata(&[(NS, &pb_struct(&map))]);
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            match rng.gen_range(0..3) {
                0 => bytes[i] = rng.gen(),
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, rng.gen()),
            }
            if bytes.is_empty() {
                break;
            }
        }
        let _ = filter_metadata(&bytes, NS);
        Ok(())
    });
}
