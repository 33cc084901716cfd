//! `duration`: seconds as numbers, strings with units, the one-day bound, and display.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{for_each_seed, MS, S};
use marty_resilience_core::duration::{display, from_seconds, parse, MAX_DURATION_NANOS};
use rand::Rng;

#[test]
fn from_seconds_converts_and_rounds_to_the_nanosecond() {
    assert_eq!(from_seconds(0.0), Some(0));
    assert_eq!(from_seconds(1.0), Some(S));
    assert_eq!(from_seconds(0.25), Some(250 * MS));
    assert_eq!(from_seconds(1e-9), Some(1));
    assert_eq!(from_seconds(0.4e-9), Some(0));
    assert_eq!(from_seconds(0.6e-9), Some(1));
}

#[test]
fn from_seconds_rejects_negative_non_finite_and_over_a_day() {
    assert_eq!(MAX_DURATION_NANOS, 86_400 * S);
    assert_eq!(from_seconds(86_400.0), Some(MAX_DURATION_NANOS));
    assert_eq!(from_seconds(86_400.000_001), None);
    assert_eq!(from_seconds(-1e-9), None);
    assert_eq!(from_seconds(f64::NAN), None);
    assert_eq!(from_seconds(f64::INFINITY), None);
    assert_eq!(from_seconds(f64::NEG_INFINITY), None);
    assert_eq!(from_seconds(f64::MAX), None);
}

#[test]
fn parse_knows_ms_s_m_h_and_bare_seconds() {
    assert_eq!(parse("250ms"), Some(250 * MS));
    assert_eq!(parse("0.5ms"), Some(500_000));
    assert_eq!(parse("30s"), Some(30 * S));
    assert_eq!(parse("30"), Some(30 * S));
    assert_eq!(parse("1.5m"), Some(90 * S));
    assert_eq!(parse("1h"), Some(3600 * S));
    assert_eq!(parse("24h"), Some(MAX_DURATION_NANOS));
    assert_eq!(parse("0s"), Some(0));
    // Surrounding and inner blanks are tolerated.
    assert_eq!(parse("  5s "), Some(5 * S));
    assert_eq!(parse("5 s"), Some(5 * S));
}

#[test]
fn parse_rejects_malformed_text() {
    for bad in [
        "", " ", "s", "ms", "abc", "5d", "5S", "5MS", "-1s", "+1s", ".5s", "5.s", "1.2.3s", "1e3",
        "1_000ms", "5 5s", "24.001h", "86401", "5s5", "∞s",
    ] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
}

#[test]
fn parse_agrees_with_from_seconds_for_every_unit() {
    for_each_seed("duration units", 0xD0_0001, 5000, |rng| {
        let whole: u32 = rng.gen_range(0..100_000);
        let frac: u32 = rng.gen_range(0..1000);
        let (unit, scale) =
            [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)][rng.gen_range(0..4)];
        let text = format!("{whole}.{frac:03}{unit}");
        let value: f64 = format!("{whole}.{frac:03}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let expected = from_seconds(value * scale);
        ensure!(
            parse(&text) == expected,
            "{text}: {:?} vs {expected:?}",
            parse(&text)
        );
        Ok(())
    });
}

#[test]
fn parse_never_panics_on_arbitrary_text() {
    for_each_seed("duration fuzz", 0xD0_0002, 20_000, |rng| {
        let alphabet: Vec<char> = "0123456789.msh -+eE_ \u{e9}\u{221e}".chars().collect();
        let len = rng.gen_range(0..12);
        let text: String = (0..len)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect();
        if let Some(n) = parse(&text) {
            ensure!(
                n <= MAX_DURATION_NANOS,
                "{text:?} parsed to {n} beyond a day"
            );
        }
        Ok(())
    });
}

#[test]
fn display_shows_seconds() {
    assert_eq!(display(250 * MS), "0.25s");
    assert_eq!(display(30 * S), "30s");
    assert_eq!(display(0), "0s");
    assert_eq!(display(1), "0.000000001s");
}
