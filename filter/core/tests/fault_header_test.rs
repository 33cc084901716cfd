//! `fault::header`: the `x-failure-inject` grammar (also the `failure_inject` metadata value),
//! every accepted form and every refusal with its exact reason, the token comparison, and a
//! property: no input makes `parse` panic, and whatever it accepts re-parses to the same spec
//! when written back out.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{base_seed, replaying, MS, S};
use marty_resilience_core::config::codes::GRPC_STATUS_NAMES;
use marty_resilience_core::duration::MAX_DURATION_NANOS;
use marty_resilience_core::fault::header::{
    parse, token_matches, CustomSpec, Invalid, Spec, MAX_VALUE_LEN,
};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

fn custom(text: &str) -> CustomSpec {
    match parse(text.as_bytes()) {
        Ok(Spec::Custom(spec)) => spec,
        other => panic!("{text:?}: expected a custom spec, got {other:?}"),
    }
}

fn refused(text: &str) -> Invalid {
    match parse(text.as_bytes()) {
        Err(invalid) => invalid,
        Ok(spec) => panic!("{text:?}: expected a refusal, got {spec:?}"),
    }
}

fn abort(status: u16) -> CustomSpec {
    CustomSpec {
        abort_http: Some(status),
        ..CustomSpec::default()
    }
}

fn grpc(code: u32) -> CustomSpec {
    CustomSpec {
        abort_grpc: Some(code),
        ..CustomSpec::default()
    }
}

fn delay(nanos: u64) -> CustomSpec {
    CustomSpec {
        delay: Some(nanos),
        ..CustomSpec::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted forms
// ---------------------------------------------------------------------------------------------

#[test]
fn the_configured_words_in_any_case_with_blanks() {
    for word in ["true", "1", "on", "enabled"] {
        for variant in [
            word.to_string(),
            word.to_ascii_uppercase(),
            mixed_case(word),
            format!("  {word}"),
            format!("{word}  "),
            format!("\t {} \t", word.to_ascii_uppercase()),
        ] {
            assert_eq!(
                parse(variant.as_bytes()),
                Ok(Spec::Configured),
                "{variant:?}"
            );
        }
    }
    // The words are whole values, not items.
    assert_eq!(refused("true;"), Invalid::Malformed);
    assert_eq!(refused("true,abort=503"), Invalid::Malformed);
    assert_eq!(refused("yes"), Invalid::Malformed);
    assert_eq!(refused("t rue"), Invalid::Malformed);
    assert_eq!(refused("0"), Invalid::Malformed);
    assert_eq!(refused("false"), Invalid::Malformed);
    assert_eq!(refused("off"), Invalid::Malformed);
}

fn mixed_case(word: &str) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn each_key_alone() {
    assert_eq!(custom("abort=503"), abort(503));
    assert_eq!(custom("grpc=UNAVAILABLE"), grpc(14));
    assert_eq!(custom("delay=250ms"), delay(250 * MS));
    // rate alone names no fault (see the refusals); with a fault it is carried.
    assert_eq!(
        custom("abort=500;rate=0.25"),
        CustomSpec {
            abort_http: Some(500),
            rate: Some(0.25),
            ..CustomSpec::default()
        }
    );
}

#[test]
fn abort_takes_every_status_from_200_to_599_but_the_bodiless_ones() {
    for status in 200..=599u16 {
        if status == 204 || status == 304 {
            // The abort's reply has a body, which these statuses cannot carry.
            assert_eq!(refused(&format!("abort={status}")), Invalid::BadAbortStatus);
        } else {
            assert_eq!(custom(&format!("abort={status}")), abort(status));
        }
    }
}

#[test]
fn combinations_with_either_separator() {
    let all = CustomSpec {
        abort_http: Some(503),
        abort_grpc: Some(4),
        delay: Some(2 * S),
        rate: Some(0.5),
    };
    for text in [
        "abort=503;grpc=DEADLINE_EXCEEDED;delay=2s;rate=0.5",
        "abort=503,grpc=DEADLINE_EXCEEDED,delay=2s,rate=0.5",
        "abort=503;grpc=DEADLINE_EXCEEDED,delay=2s;rate=0.5",
        "rate=0.5,delay=2s;grpc=4,abort=503",
        "delay=2000ms;abort=503;rate=0.50;grpc=4",
    ] {
        assert_eq!(custom(text), all, "{text:?}");
    }
    assert_eq!(
        custom("abort=503;delay=1s"),
        CustomSpec {
            abort_http: Some(503),
            delay: Some(S),
            ..CustomSpec::default()
        }
    );
    assert_eq!(
        custom("grpc=internal,delay=100ms"),
        CustomSpec {
            abort_grpc: Some(13),
            delay: Some(100 * MS),
            ..CustomSpec::default()
        }
    );
    assert_eq!(
        custom("delay=1s;rate=0.1"),
        CustomSpec {
            delay: Some(S),
            rate: Some(0.1),
            ..CustomSpec::default()
        }
    );
}

#[test]
fn keys_are_case_insensitive() {
    assert_eq!(custom("ABORT=503"), abort(503));
    assert_eq!(custom("Abort=503"), abort(503));
    assert_eq!(custom("GRPC=14"), grpc(14));
    assert_eq!(custom("gRpC=14"), grpc(14));
    assert_eq!(custom("DELAY=1s"), delay(S));
    assert_eq!(
        custom("Delay=1s;RATE=1"),
        CustomSpec {
            delay: Some(S),
            rate: Some(1.0),
            ..CustomSpec::default()
        }
    );
}

#[test]
fn blanks_around_items_and_equals_signs() {
    let both = CustomSpec {
        abort_http: Some(503),
        delay: Some(S),
        ..CustomSpec::default()
    };
    for text in [
        " abort=503;delay=1s ",
        "abort = 503 ; delay = 1s",
        "abort\t=\t503 ,\tdelay=\t1s",
        "   abort   =503;   delay=   1s   ",
        "abort=503 ;delay=1 s",
    ] {
        assert_eq!(custom(text), both, "{text:?}");
    }
}

#[test]
fn empty_items_and_trailing_separators_are_skipped() {
    for text in [
        "abort=503;",
        "abort=503,",
        "abort=503;;",
        ";abort=503",
        ",abort=503",
        ";,; abort=503 ;,;",
        "abort=503; ;",
    ] {
        assert_eq!(custom(text), abort(503), "{text:?}");
    }
    assert_eq!(
        custom("abort=503;;delay=1s,,"),
        CustomSpec {
            abort_http: Some(503),
            delay: Some(S),
            ..CustomSpec::default()
        }
    );
}

#[test]
fn delay_units_and_bare_seconds() {
    assert_eq!(custom("delay=250ms"), delay(250 * MS));
    assert_eq!(custom("delay=0.5ms"), delay(500_000));
    assert_eq!(custom("delay=1.5s"), delay(1500 * MS));
    assert_eq!(custom("delay=2s"), delay(2 * S));
    assert_eq!(custom("delay=1.5m"), delay(90 * S));
    assert_eq!(custom("delay=1m"), delay(60 * S));
    assert_eq!(custom("delay=1h"), delay(3600 * S));
    assert_eq!(custom("delay=24h"), delay(MAX_DURATION_NANOS));
    // A bare number is seconds.
    assert_eq!(custom("delay=3"), delay(3 * S));
    assert_eq!(custom("delay=0.25"), delay(250 * MS));
    // The smallest delay: one nanosecond.
    assert_eq!(custom("delay=0.000001ms"), delay(1));
    // The grammar does not cap delays; the route's delay.max does (see fault_test.rs).
    assert_eq!(custom("delay=86400"), delay(MAX_DURATION_NANOS));
}

#[test]
fn grpc_statuses_by_name_in_any_case_and_by_number() {
    for (code, name) in GRPC_STATUS_NAMES.iter().enumerate() {
        let code = code as u32;
        assert_eq!(custom(&format!("grpc={name}")), grpc(code), "{name}");
        assert_eq!(
            custom(&format!("grpc={}", name.to_ascii_lowercase())),
            grpc(code)
        );
        assert_eq!(custom(&format!("grpc={}", mixed_case(name))), grpc(code));
        assert_eq!(custom(&format!("grpc={code}")), grpc(code));
    }
}

#[test]
fn rate_bounds_are_inclusive() {
    let with_rate = |rate: f64| CustomSpec {
        abort_http: Some(503),
        rate: Some(rate),
        ..CustomSpec::default()
    };
    assert_eq!(custom("abort=503;rate=0"), with_rate(0.0));
    assert_eq!(custom("abort=503;rate=0.0"), with_rate(0.0));
    assert_eq!(custom("abort=503;rate=1"), with_rate(1.0));
    assert_eq!(custom("abort=503;rate=1.0"), with_rate(1.0));
    assert_eq!(custom("abort=503;rate=0.001"), with_rate(0.001));
    assert_eq!(custom("abort=503;rate=0.999999"), with_rate(0.999_999));
}

// ---------------------------------------------------------------------------------------------
// Refusals, each with its reason
// ---------------------------------------------------------------------------------------------

#[test]
fn length_limit_is_256_bytes() {
    assert_eq!(MAX_VALUE_LEN, 256);
    // A valid value padded to exactly 256 bytes is read...
    let at_limit = format!("{:<256}", "abort=503");
    assert_eq!(at_limit.len(), 256);
    assert_eq!(parse(at_limit.as_bytes()), Ok(Spec::Custom(abort(503))));
    let separators = format!("abort=503{}", ";".repeat(256 - 9));
    assert_eq!(separators.len(), 256);
    assert_eq!(parse(separators.as_bytes()), Ok(Spec::Custom(abort(503))));
    // ...one byte more is refused unread, whatever it holds.
    let over = format!("{at_limit} ");
    assert_eq!(over.len(), 257);
    assert_eq!(parse(over.as_bytes()), Err(Invalid::TooLong));
    assert_eq!(parse(&[b';'; 257]), Err(Invalid::TooLong));
    assert_eq!(parse(&[0xff; 257]), Err(Invalid::TooLong));
    assert_eq!(parse(&[b' '; 10_000]), Err(Invalid::TooLong));
}

#[test]
fn non_utf8_is_refused() {
    assert_eq!(parse(&[0xff]), Err(Invalid::NotUtf8));
    assert_eq!(parse(b"abort=503\xff"), Err(Invalid::NotUtf8));
    assert_eq!(parse(b"\xc3"), Err(Invalid::NotUtf8));
    assert_eq!(parse(b"true\x80"), Err(Invalid::NotUtf8));
    // Overlong encoding of '/', and a UTF-16 surrogate encoded as UTF-8.
    assert_eq!(parse(b"\xc0\xaf"), Err(Invalid::NotUtf8));
    assert_eq!(parse(b"\xed\xa0\x80"), Err(Invalid::NotUtf8));
}

#[test]
fn empty_and_blank_values_are_refused() {
    for text in ["", " ", "\t", "   \t  ", ";", ",", ";;;", " ; , ; ", ",,,,"] {
        assert_eq!(refused(text), Invalid::Empty, "{text:?}");
    }
}

#[test]
fn unknown_keys_are_refused() {
    for text in [
        "foo=1",
        "aborts=503",
        "ab ort=503",
        "=503",
        " = 503",
        "status=503",
        "percentage=50",
        "abort=503;foo=1",
        "delay=1s,x=y",
    ] {
        assert_eq!(refused(text), Invalid::UnknownKey, "{text:?}");
    }
}

#[test]
fn duplicate_keys_are_refused_whatever_their_case_or_value() {
    for text in [
        "abort=503;abort=503",
        "abort=503;ABORT=500",
        "grpc=14,grpc=UNAVAILABLE",
        "delay=1s;Delay=2s",
        "abort=503;rate=1;rate=0.5",
        "abort=503;delay=1s;abort=502",
    ] {
        assert_eq!(refused(text), Invalid::DuplicateKey, "{text:?}");
    }
}

#[test]
fn abort_statuses_outside_200_599_are_refused() {
    for raw in [
        "199",
        "600",
        "0",
        "100",
        "1000",
        "65536",
        "99999999999",
        "-503",
        "abc",
        "",
        "503.0",
        "5 03",
        "5e2",
        "0x1f7",
        "503ms",
    ] {
        assert_eq!(
            refused(&format!("abort={raw}")),
            Invalid::BadAbortStatus,
            "abort={raw:?}"
        );
    }
}

#[test]
fn grpc_statuses_outside_0_16_are_refused() {
    for raw in [
        "17",
        "99",
        "100",
        "-1",
        "+1",
        "bogus",
        "",
        "UNAVAILABLEX",
        "UN AVAILABLE",
        "1.0",
        "STATUS_UNAVAILABLE",
        // No leading zeros.
        "00",
        "07",
        "09",
        "014",
    ] {
        assert_eq!(
            refused(&format!("grpc={raw}")),
            Invalid::BadGrpcStatus,
            "grpc={raw:?}"
        );
    }
}

#[test]
fn bad_delays_are_refused() {
    for raw in [
        "0",
        "0s",
        "0ms",
        "0.0",
        "-1",
        "-1s",
        "abc",
        "",
        "1d",
        "1S",
        "1MS",
        "1e3",
        ".5s",
        "5.s",
        "24.001h",
        "86401",
        "1 2s",
        // Rounds to 0 ns.
        "0.0000000001s",
    ] {
        assert_eq!(
            refused(&format!("delay={raw}")),
            Invalid::BadDelay,
            "delay={raw:?}"
        );
    }
}

#[test]
fn rates_outside_0_1_are_refused() {
    for raw in [
        "-0.1",
        "1.1",
        "1.0000001",
        "2",
        "-1",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "infinity",
        "abc",
        "",
        "50%",
        "0,5",
    ] {
        let text = format!("abort=503;rate={raw}");
        // `rate=0,5` splits into `rate=0` and an item `5` with no '='.
        let expected = if raw == "0,5" {
            Invalid::Malformed
        } else {
            Invalid::BadRate
        };
        assert_eq!(refused(&text), expected, "{text:?}");
    }
}

#[test]
fn items_without_equals_sign_are_malformed() {
    for text in [
        "abort",
        "abort 503",
        "abort:503",
        "abort=503;delay",
        "delay=1s,5",
        "hello",
        "true false",
    ] {
        assert_eq!(refused(text), Invalid::Malformed, "{text:?}");
    }
}

#[test]
fn a_rate_alone_names_no_fault() {
    assert_eq!(refused("rate=0.5"), Invalid::Malformed);
    assert_eq!(refused("rate=1;"), Invalid::Malformed);
    assert_eq!(refused(" RATE = 0 "), Invalid::Malformed);
}

#[test]
fn the_first_bad_item_decides_the_reason() {
    assert_eq!(refused("foo=1;abort=999"), Invalid::UnknownKey);
    assert_eq!(refused("abort=999;foo=1"), Invalid::BadAbortStatus);
    assert_eq!(refused("abort=503;abort=999"), Invalid::BadAbortStatus);
    assert_eq!(refused("delay=0;abort"), Invalid::BadDelay);
    assert_eq!(refused("abort;delay=0"), Invalid::Malformed);
}

#[test]
fn every_reason_is_a_fixed_nonempty_text() {
    let mut seen = std::collections::BTreeSet::new();
    for invalid in ALL_INVALID {
        let reason = invalid.reason();
        assert!(!reason.is_empty() && reason.is_ascii(), "{invalid:?}");
        assert!(seen.insert(reason), "{invalid:?} shares its reason");
    }
    assert!(Invalid::TooLong.reason().contains("256"));
}

// ---------------------------------------------------------------------------------------------
// The token
// ---------------------------------------------------------------------------------------------

#[test]
fn token_matches_only_the_same_bytes() {
    assert!(token_matches(b"s3cret", b"s3cret"));
    assert!(token_matches(&[0xff, 0], &[0xff, 0]));
    // Same length, one byte off: first, middle, last.
    assert!(!token_matches(b"x3cret", b"s3cret"));
    assert!(!token_matches(b"s3Cret", b"s3cret"));
    assert!(!token_matches(b"s3creT", b"s3cret"));
    // Prefixes and extensions either way.
    assert!(!token_matches(b"s3cre", b"s3cret"));
    assert!(!token_matches(b"s3cret", b"s3cre"));
    assert!(!token_matches(b"s3cret ", b"s3cret"));
    assert!(!token_matches(b"s3cret\0", b"s3cret"));
    // Different lengths, whatever the content.
    assert!(!token_matches(b"a", b"ab"));
    assert!(!token_matches(b"abcdefgh", b"a"));
    // Empty: never matches a real token. (Configuration rejects an empty token, so two empty
    // values, which compare equal, never meet in the filter.)
    assert!(!token_matches(b"", b"s3cret"));
    assert!(!token_matches(b"s3cret", b""));
    assert!(token_matches(b"", b""));
}

#[test]
fn token_matches_agrees_with_equality_on_random_tokens() {
    for_each_case("token equality", 0x70_6B3E, 20_000, |rng| {
        let a = random_bytes(rng, 0..8, b"ab\0\xff");
        let b = if rng.gen_bool(0.3) {
            a.clone()
        } else {
            random_bytes(rng, 0..8, b"ab\0\xff")
        };
        ensure!(
            token_matches(&a, &b) == (a == b),
            "{a:?} vs {b:?}: {}",
            token_matches(&a, &b)
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Properties: total, and accepted values round-trip
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a generator cheap enough to seed per case, so the 200 000 cases below stay fast
/// in debug builds (seeding and running `StdRng` per case costs more than parsing).
struct Gen(u64);

impl RngCore for Gen {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// As `common::for_each_seed`, with [`Gen`]: runs `case` for `cases` consecutive seeds from
/// `base_seed(default)` (one when `MARTY_TEST_SEED` replays a failure), naming the seed of a
/// failing case.
fn for_each_case(
    name: &str,
    default: u64,
    cases: u64,
    mut case: impl FnMut(&mut Gen) -> Result<(), String>,
) {
    let base = base_seed(default);
    let cases = if replaying() { 1 } else { cases };
    for i in 0..cases {
        let seed = base.wrapping_add(i);
        if let Err(message) = case(&mut Gen(seed)) {
            panic!(
                "{name}: case with seed {seed} failed (replay: MARTY_TEST_SEED={seed}): {message}"
            );
        }
    }
}

/// Writes `spec` back out in the grammar, with random (but valid) spelling: key case, item
/// order, separators, blanks, trailing separators, grpc by name or number, delay unit.
fn serialise(spec: &Spec, rng: &mut Gen) -> String {
    let spec = match spec {
        Spec::Configured => {
            let word = *["true", "1", "on", "enabled"].choose(rng).unwrap();
            return format!("{}{}{}", blank(rng), random_case(word, rng), blank(rng));
        }
        Spec::Custom(spec) => spec,
    };
    let mut items = Vec::new();
    if let Some(status) = spec.abort_http {
        items.push(("abort", status.to_string()));
    }
    if let Some(code) = spec.abort_grpc {
        let value = if rng.gen_bool(0.5) {
            random_case(GRPC_STATUS_NAMES[code as usize], rng)
        } else {
            code.to_string()
        };
        items.push(("grpc", value));
    }
    if let Some(nanos) = spec.delay {
        items.push(("delay", delay_text(nanos, rng)));
    }
    if let Some(rate) = spec.rate {
        // Rates are plain decimals (no exponent, sign or leading dot); Display writes the
        // shortest such text that parses back to the same value.
        items.push(("rate", format!("{rate}")));
    }
    items.shuffle(rng);
    let mut out = String::new();
    for (i, (key, value)) in items.iter().enumerate() {
        if i > 0 {
            out.push(if rng.gen_bool(0.5) { ';' } else { ',' });
        }
        out.push_str(&format!(
            "{}{}{}={}{}{}",
            blank(rng),
            random_case(key, rng),
            blank(rng),
            blank(rng),
            value,
            blank(rng)
        ));
    }
    if rng.gen_bool(0.2) {
        out.push(';');
    }
    out
}

/// A delay in a unit that represents it exactly: whole hours, minutes, seconds or
/// milliseconds when it is one, else seconds with nine decimals.
fn delay_text(nanos: u64, rng: &mut Gen) -> String {
    let mut options = vec![format!("{}.{:09}s", nanos / S, nanos % S)];
    if nanos % (3600 * S) == 0 {
        options.push(format!("{}h", nanos / (3600 * S)));
    }
    if nanos % (60 * S) == 0 {
        options.push(format!("{}m", nanos / (60 * S)));
    }
    if nanos % S == 0 {
        options.push(format!("{}s", nanos / S));
        options.push(format!("{}", nanos / S));
    }
    if nanos % MS == 0 {
        options.push(format!("{}ms", nanos / MS));
    }
    options.choose(rng).unwrap().clone()
}

fn blank(rng: &mut Gen) -> &'static str {
    ["", "", "", " ", "  ", "\t"].choose(rng).unwrap()
}

fn random_case(text: &str, rng: &mut Gen) -> String {
    text.chars()
        .map(|c| {
            if rng.gen_bool(0.5) {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn random_bytes(rng: &mut Gen, len: std::ops::Range<usize>, alphabet: &[u8]) -> Vec<u8> {
    let n = rng.gen_range(len);
    (0..n).map(|_| *alphabet.choose(rng).unwrap()).collect()
}

/// A random valid spec (what a well-behaved client might ask for).
fn random_spec(rng: &mut Gen) -> Spec {
    if rng.gen_bool(0.1) {
        return Spec::Configured;
    }
    loop {
        let spec = CustomSpec {
            abort_http: rng
                .gen_bool(0.5)
                .then(|| rng.gen_range(200..=599))
                .filter(|s| *s != 204 && *s != 304),
            abort_grpc: rng.gen_bool(0.3).then(|| rng.gen_range(0..=16)),
            delay: rng.gen_bool(0.5).then(|| match rng.gen_range(0..4) {
                0 => rng.gen_range(1..=MAX_DURATION_NANOS),
                1 => rng.gen_range(1..=10_000) * MS,
                2 => rng.gen_range(1..=3600) * S,
                _ => rng.gen_range(1..=24) * 3600 * S,
            }),
            rate: rng.gen_bool(0.5).then(|| match rng.gen_range(0..4) {
                0 => 0.0,
                1 => 1.0,
                2 => f64::from(rng.gen_range(0..=1000u32)) / 1000.0,
                _ => rng.gen::<f64>(),
            }),
        };
        if spec.abort_http.is_some() || spec.abort_grpc.is_some() || spec.delay.is_some() {
            return Spec::Custom(spec);
        }
    }
}

/// Fragments the grammar is made of, plus things it is not, for inputs that get past the
/// first checks often enough to exercise every branch.
const FRAGMENTS: &[&str] = &[
    "abort",
    "ABORT",
    "grpc",
    "Grpc",
    "delay",
    "rate",
    "RATE",
    "=",
    "=",
    ";",
    ";",
    ",",
    " ",
    "\t",
    "true",
    "on",
    "1",
    "enabled",
    "0",
    "1",
    "5",
    "9",
    "503",
    "200",
    "599",
    "600",
    "199",
    "17",
    "16",
    ".",
    "..",
    "-",
    "+",
    "e",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "NaN",
    "inf",
    "UNAVAILABLE",
    "internal",
    "x",
    "\u{a0}",
    "é",
    "\u{2028}",
    "∞",
    "\0",
    "%",
    "*",
    "?",
    "1.5",
    "0.5",
    "24h",
    "86400",
    "86401",
];

fn random_fragments(rng: &mut Gen) -> Vec<u8> {
    let n = rng.gen_range(0..24);
    let mut out = String::new();
    for _ in 0..n {
        out.push_str(FRAGMENTS.choose(rng).unwrap());
    }
    out.into_bytes()
}

/// A few random edits of `value`: byte insertions, deletions, replacements, duplications.
fn mutate(mut value: Vec<u8>, rng: &mut Gen) -> Vec<u8> {
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=value.len());
        let byte = if rng.gen_bool(0.7) {
            *b"abortgrpcdelayrate=;, .0123456789msh-e"
                .choose(rng)
                .unwrap()
        } else {
            rng.gen()
        };
        match rng.gen_range(0..4) {
            0 => value.insert(at, byte),
            1 if at < value.len() => {
                value.remove(at);
            }
            2 if at < value.len() => value[at] = byte,
            3 => {
                let end = rng.gen_range(at..=value.len());
                let copy = value[at..end].to_vec();
                value.splice(at..at, copy);
            }
            _ => value.push(byte),
        }
    }
    value
}

/// What every accepted spec satisfies.
fn well_formed(spec: &Spec) -> Result<(), String> {
    if let Spec::Custom(c) = spec {
        ensure!(
            c.abort_http.is_some() || c.abort_grpc.is_some() || c.delay.is_some(),
            "accepted a spec naming no fault: {c:?}"
        );
        ensure!(
            c.abort_http
                .is_none_or(|s| (200..=599).contains(&s) && s != 204 && s != 304),
            "{c:?}"
        );
        ensure!(c.abort_grpc.is_none_or(|g| g <= 16), "{c:?}");
        ensure!(
            c.delay.is_none_or(|d| d > 0 && d <= MAX_DURATION_NANOS),
            "{c:?}"
        );
        ensure!(c.rate.is_none_or(|r| (0.0..=1.0).contains(&r)), "{c:?}");
    }
    Ok(())
}

/// `parse` must not panic, must refuse anything over the length limit, and whatever it accepts
/// is well formed and re-parses to the same spec when written back out.
fn check(value: &[u8], rng: &mut Gen) -> Result<(), String> {
    let parsed = std::panic::catch_unwind(|| parse(value))
        .map_err(|_| format!("parse panicked on {value:?}"))?;
    if value.len() > MAX_VALUE_LEN {
        ensure!(
            parsed == Err(Invalid::TooLong),
            "{} bytes: {parsed:?}",
            value.len()
        );
    }
    if let Ok(spec) = parsed {
        well_formed(&spec).map_err(|e| format!("{:?}: {e}", String::from_utf8_lossy(value)))?;
        let text = serialise(&spec, rng);
        let again = parse(text.as_bytes());
        ensure!(
            again == Ok(spec),
            "{:?} gave {spec:?}; written back as {text:?} it gave {again:?}",
            String::from_utf8_lossy(value)
        );
    }
    Ok(())
}

/// Every refusal, in declaration order.
const ALL_INVALID: [Invalid; 10] = [
    Invalid::TooLong,
    Invalid::NotUtf8,
    Invalid::Empty,
    Invalid::UnknownKey,
    Invalid::DuplicateKey,
    Invalid::BadAbortStatus,
    Invalid::BadGrpcStatus,
    Invalid::BadDelay,
    Invalid::BadRate,
    Invalid::Malformed,
];

/// Bytes a grammar-biased random string is drawn from: every key letter, the separators, digits,
/// units, blanks, and a few bytes that are not ASCII.
const BIASED: &[u8] = b"abortgrpcdelayrateABORTDELAYtrueonenabled=====;;;,,,   \t.0123456789512msh-+eE\x00\x7f\x80\xc3\xa9\xff";

/// Tallies what a property run reached, so a generator that stops reaching some branch fails.
#[derive(Default)]
struct Reached {
    accepted: u32,
    refused: [u32; ALL_INVALID.len()],
}

impl Reached {
    fn count(&mut self, value: &[u8]) {
        match parse(value) {
            Ok(_) => self.accepted += 1,
            Err(e) => {
                let i = ALL_INVALID.iter().position(|x| *x == e).unwrap();
                self.refused[i] += 1;
            }
        }
    }

    fn expect(&self, accepted: u32, refusals: &[Invalid]) {
        if replaying() {
            return;
        }
        assert!(
            self.accepted >= accepted,
            "only {} inputs accepted",
            self.accepted
        );
        for invalid in refusals {
            let i = ALL_INVALID.iter().position(|x| x == invalid).unwrap();
            assert!(
                self.refused[i] >= 10,
                "refusal {invalid:?} reached {} times: {:?}",
                self.refused[i],
                self.refused
            );
        }
    }
}

#[test]
fn random_byte_strings_never_panic_and_accepted_ones_round_trip() {
    let mut reached = Reached::default();
    for_each_case("header grammar (random bytes)", 0xFA_0001, 200_000, |rng| {
        let mut value = vec![0u8; rng.gen_range(0..=300)];
        rng.fill(&mut value[..]);
        if rng.gen_bool(0.5) {
            // Half of them drawn from the grammar's own bytes, to get past the first checks.
            for byte in value.iter_mut() {
                *byte = BIASED[usize::from(*byte) % BIASED.len()];
            }
            value.truncate(rng.gen_range(0..=40));
        }
        reached.count(&value);
        check(&value, rng)
    });
    reached.expect(
        0,
        &[
            Invalid::TooLong,
            Invalid::NotUtf8,
            Invalid::Empty,
            Invalid::UnknownKey,
            Invalid::Malformed,
        ],
    );
}

#[test]
fn mutated_and_combined_values_never_panic_and_accepted_ones_round_trip() {
    let mut reached = Reached::default();
    for_each_case("header grammar (mutations)", 0xFA_0003, 40_000, |rng| {
        let value = match rng.gen_range(0..3) {
            // Valid values with a few random edits.
            0 => mutate(serialise(&random_spec(rng), rng).into_bytes(), rng),
            // Fragments of the grammar.
            1 => random_fragments(rng),
            // Two valid values joined: disjoint keys combine, shared ones are duplicates.
            _ => {
                let sep = if rng.gen_bool(0.5) { ";" } else { "," };
                format!(
                    "{}{sep}{}",
                    serialise(&random_spec(rng), rng),
                    serialise(&random_spec(rng), rng)
                )
                .into_bytes()
            }
        };
        reached.count(&value);
        check(&value, rng)
    });
    // Every refusal but the length and encoding ones, which the raw bytes above reach.
    reached.expect(2_000, &ALL_INVALID[2..]);
}

#[test]
fn valid_specs_round_trip_through_any_spelling() {
    for_each_case("header grammar (valid specs)", 0xFA_0002, 20_000, |rng| {
        let spec = random_spec(rng);
        let text = serialise(&spec, rng);
        let parsed = parse(text.as_bytes());
        ensure!(
            parsed == Ok(spec),
            "{spec:?} written as {text:?} parsed as {parsed:?}"
        );
        Ok(())
    });
}
