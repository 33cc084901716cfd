//! The stored layout of a breaker record: exact round trips, and totality of `decode` (any
//! bytes give a record or `None`, never a panic).

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::for_each_seed;
use marty_resilience_core::breaker::{Record, State, RECORD_VERSION};
use marty_resilience_core::config::MAX_HALF_OPEN_REQUESTS;
use rand::rngs::StdRng;
use rand::Rng;

/// The fixed part of the layout: version, state, 4 u32, 4 u64, probe count.
const HEADER_LEN: usize = 1 + 1 + 4 * 4 + 4 * 8 + 1;

fn sample() -> Record {
    Record {
        state: State::HalfOpen,
        generation: 0x0102_0304,
        consecutive_failures: 7,
        half_open_successes: 1,
        trips: 3,
        last_failure_ns: 11,
        open_until_ns: 22,
        changed_at_ns: 33,
        changed_at_unix_ms: 1_700_000_000_123,
        probes: vec![0, 44, u64::MAX],
    }
}

fn random_record(rng: &mut StdRng) -> Record {
    let state = match rng.gen_range(0..3) {
        0 => State::Closed,
        1 => State::Open,
        _ => State::HalfOpen,
    };
    let n = rng.gen_range(0..=MAX_HALF_OPEN_REQUESTS as usize);
    Record {
        state,
        generation: rng.gen(),
        consecutive_failures: rng.gen(),
        half_open_successes: rng.gen(),
        trips: rng.gen(),
        last_failure_ns: rng.gen(),
        open_until_ns: rng.gen(),
        changed_at_ns: rng.gen(),
        changed_at_unix_ms: rng.gen(),
        probes: (0..n)
            .map(|_| if rng.gen_bool(0.3) { 0 } else { rng.gen() })
            .collect(),
    }
}

#[test]
fn the_default_record_round_trips() {
    let bytes = Record::default().encode();
    assert_eq!(bytes.len(), HEADER_LEN);
    assert_eq!(bytes[0], RECORD_VERSION);
    assert_eq!(Record::decode(&bytes), Some(Record::default()));
}

#[test]
fn the_layout_is_fixed_little_endian() {
    let bytes = sample().encode();
    assert_eq!(bytes.len(), HEADER_LEN + 3 * 8);
    assert_eq!(bytes[0], RECORD_VERSION);
    assert_eq!(bytes[1], 2, "state byte is the gauge value");
    assert_eq!(&bytes[2..6], &[4, 3, 2, 1], "generation, little-endian");
    assert_eq!(bytes[HEADER_LEN - 1], 3, "probe count");
    assert_eq!(&bytes[HEADER_LEN + 16..], &u64::MAX.to_le_bytes());
    assert_eq!(Record::decode(&bytes), Some(sample()));
}

#[test]
fn random_records_round_trip_exactly() {
    for_each_seed("codec round trip", 0xC0DE_0001, 2000, |rng| {
        let rec = random_record(rng);
        let bytes = rec.encode();
        ensure!(
            bytes.len() == HEADER_LEN + 8 * rec.probes.len(),
            "length {} for {} probes",
            bytes.len(),
            rec.probes.len()
        );
        ensure!(
            Record::decode(&bytes).as_ref() == Some(&rec),
            "{rec:?} did not round trip"
        );
        Ok(())
    });
}

#[test]
fn every_truncation_of_a_valid_record_decodes_to_none() {
    let bytes = sample().encode();
    for len in 0..bytes.len() {
        assert_eq!(Record::decode(&bytes[..len]), None, "prefix of {len} bytes");
    }
}

#[test]
fn trailing_bytes_decode_to_none() {
    let mut bytes = sample().encode();
    bytes.push(0);
    assert_eq!(Record::decode(&bytes), None);
}

#[test]
fn another_layout_version_decodes_to_none() {
    for version in [0u8, RECORD_VERSION + 1, 0xff] {
        let mut bytes = sample().encode();
        bytes[0] = version;
        assert_eq!(Record::decode(&bytes), None, "version {version}");
    }
}

#[test]
fn an_unknown_state_byte_decodes_to_none() {
    for state in [3u8, 0x80, 0xff] {
        let mut bytes = sample().encode();
        bytes[1] = state;
        assert_eq!(Record::decode(&bytes), None, "state {state}");
    }
}

#[test]
fn a_probe_count_larger_than_the_value_decodes_to_none() {
    let mut bytes = sample().encode();
    bytes[HEADER_LEN - 1] = 4;
    assert_eq!(Record::decode(&bytes), None);
    bytes[HEADER_LEN - 1] = 0xff;
    assert_eq!(Record::decode(&bytes), None);
}

#[test]
fn random_bytes_never_panic_and_what_decodes_is_canonical() {
    let mut decoded = 0;
    for_each_seed("codec random bytes", 0xC0DE_0002, 20_000, |rng| {
        let shaped = rng.gen_bool(0.5);
        let len = if shaped {
            // Near a valid length, so a fair share gets past the length checks.
            (HEADER_LEN + 8 * rng.gen_range(0..8)).saturating_add_signed(rng.gen_range(-2..=2))
        } else {
            rng.gen_range(0..HEADER_LEN + 8 * 8)
        };
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if shaped && len >= HEADER_LEN {
            bytes[0] = RECORD_VERSION;
            bytes[1] = rng.gen_range(0..4);
            bytes[HEADER_LEN - 1] = ((len - HEADER_LEN) / 8) as u8 + rng.gen_range(0..2);
        }
        if let Some(rec) = Record::decode(&bytes) {
            decoded += 1;
            ensure!(
                rec.encode() == bytes,
                "decoded {rec:?} re-encodes differently"
            );
        }
        Ok(())
    });
    assert!(
        common::replaying() || decoded > 200,
        "only {decoded} random inputs decoded: the generator is too weak"
    );
}

#[test]
fn mutations_of_valid_records_never_panic() {
    for_each_seed("codec mutations", 0xC0DE_0003, 5000, |rng| {
        let mut bytes = random_record(rng).encode();
        match rng.gen_range(0..4) {
            0 => {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] = rng.gen();
            }
            1 => {
                let keep = rng.gen_range(0..bytes.len());
                bytes.truncate(keep);
            }
            2 => bytes.extend((0..rng.gen_range(1..16)).map(|_| rng.gen::<u8>())),
            _ => {
                let i = rng.gen_range(0..bytes.len());
                bytes.remove(i);
            }
        }
        if let Some(rec) = Record::decode(&bytes) {
            ensure!(
                rec.encode() == bytes,
                "decoded {rec:?} re-encodes differently"
            );
        }
        Ok(())
    });
}
