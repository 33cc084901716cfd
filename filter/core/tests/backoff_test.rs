//! `retry::backoff`: every strategy's sequence pinned in exact nanoseconds, the `max_delay`
//! cap, jitter bounds over random draws, `adaptive` monotonic in the failure ratio, and
//! totality for extreme and non-finite inputs.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{for_each_seed, MS, S};
use marty_resilience_core::retry::backoff::{
    Backoff, Strategy, DEFAULT_JITTER, DEFAULT_MULTIPLIER, DEFAULT_POLYNOMIAL_DEGREE,
};
use rand::Rng;

const DAY: u64 = 86_400 * S;

/// The largest draw `[0, 1)` can give.
const MAX_DRAW: f64 = 1.0 - f64::EPSILON / 2.0;

/// The module doc's example: base 100 ms, multiplier 2, degree 2, jitter 0.5, max 60 s.
fn example(strategy: Strategy) -> Backoff {
    Backoff {
        strategy,
        base_delay: 100 * MS,
        max_delay: 60 * S,
        multiplier: 2.0,
        polynomial_degree: 2,
        jitter: 0.5,
        adaptive: false,
    }
}

/// Delays for k = 1..=10, at failure ratio `f` and draw `draw`.
fn sequence(backoff: &Backoff, f: f64, draw: f64) -> Vec<u64> {
    (1..=10).map(|k| backoff.delay(k, f, draw)).collect()
}

fn ms(values: [u64; 10]) -> Vec<u64> {
    values.iter().map(|v| v * MS).collect()
}

#[test]
fn names_round_trip_and_only_snake_case_parses() {
    let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            "fixed",
            "linear",
            "exponential",
            "exponential_jitter",
            "fibonacci",
            "polynomial",
            "adaptive"
        ]
    );
    for strategy in Strategy::ALL {
        assert_eq!(Strategy::parse(strategy.name()), Some(strategy));
    }
    for bad in [
        "",
        "FIXED",
        "Exponential",
        "exponential-jitter",
        "exponentialJitter",
        " linear",
        "linear ",
        "jitter",
    ] {
        assert_eq!(Strategy::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn new_takes_the_defaults() {
    let b = Backoff::new(Strategy::Polynomial, 7, 9);
    assert_eq!(
        b,
        Backoff {
            strategy: Strategy::Polynomial,
            base_delay: 7,
            max_delay: 9,
            multiplier: DEFAULT_MULTIPLIER,
            polynomial_degree: DEFAULT_POLYNOMIAL_DEGREE,
            jitter: DEFAULT_JITTER,
            adaptive: false,
        }
    );
    assert_eq!((DEFAULT_MULTIPLIER, DEFAULT_POLYNOMIAL_DEGREE), (2.0, 2));
    assert_eq!(DEFAULT_JITTER, 0.5);
}

#[test]
fn fixed_sequence() {
    let b = example(Strategy::Fixed);
    assert_eq!(sequence(&b, 0.0, 0.0), ms([100; 10]));
}

#[test]
fn linear_sequence() {
    let b = example(Strategy::Linear);
    assert_eq!(
        sequence(&b, 0.0, 0.0),
        ms([100, 200, 300, 400, 500, 600, 700, 800, 900, 1000])
    );
}

#[test]
fn exponential_sequence() {
    let b = example(Strategy::Exponential);
    assert_eq!(
        sequence(&b, 0.0, 0.0),
        ms([100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200])
    );
    assert_eq!(b.delay(11, 0.0, 0.0), 60 * S, "102.4 s capped");
}

#[test]
fn exponential_jitter_sequence_at_both_ends_of_the_draw() {
    let b = example(Strategy::ExponentialJitter);
    let top = ms([100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200]);
    let bottom = ms([50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600]);
    assert_eq!(sequence(&b, 0.0, 0.0), top, "draw 0: the exponential delay");
    assert_eq!(
        sequence(&b, 0.0, 0.5),
        ms([75, 150, 300, 600, 1200, 2400, 4800, 9600, 19200, 38400])
    );
    let min: Vec<u64> = (1..=10).map(|k| b.min_delay(k, 0.0)).collect();
    assert_eq!(min, bottom, "min_delay: e × (1 − jitter)");
    // The largest draw stays above the lower bound by at most rounding.
    for (k, (lo, hi)) in (1..=10).zip(bottom.iter().zip(&top)) {
        let d = b.delay(k, 0.0, MAX_DRAW);
        assert!(*lo <= d && d < *hi, "k={k}: {d}");
    }
    // Capped first, then jittered.
    assert_eq!(b.delay(11, 0.0, 0.0), 60 * S);
    assert_eq!(b.min_delay(11, 0.0), 30 * S);
}

#[test]
fn fibonacci_sequence() {
    let b = example(Strategy::Fibonacci);
    assert_eq!(
        sequence(&b, 0.0, 0.0),
        ms([100, 100, 200, 300, 500, 800, 1300, 2100, 3400, 5500])
    );
    // F(20) = 6765: 676.5 s, capped.
    assert_eq!(b.delay(20, 0.0, 0.0), 60 * S);
    let unit = Backoff {
        base_delay: 1,
        max_delay: u64::MAX,
        ..b
    };
    assert_eq!(
        unit.delay(93, 0.0, 0.0),
        12_200_160_415_121_876_738,
        "F(93)"
    );
    assert_eq!(unit.delay(94, 0.0, 0.0), u64::MAX, "F(94) saturates");
}

#[test]
fn polynomial_sequence() {
    let b = example(Strategy::Polynomial);
    assert_eq!(
        sequence(&b, 0.0, 0.0),
        ms([100, 400, 900, 1600, 2500, 3600, 4900, 6400, 8100, 10000])
    );
    let cubic = Backoff {
        polynomial_degree: 3,
        ..b
    };
    assert_eq!(
        sequence(&cubic, 0.0, 0.0),
        ms([100, 800, 2700, 6400, 12500, 21600, 34300, 51200, 60000, 60000])
    );
    let flat = Backoff {
        polynomial_degree: 0,
        ..b
    };
    assert_eq!(sequence(&flat, 0.0, 0.0), ms([100; 10]));
}

#[test]
fn adaptive_sequence_scales_exponential_by_failure_ratio() {
    let b = example(Strategy::Adaptive);
    assert_eq!(
        sequence(&b, 0.0, 0.0),
        ms([50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600]),
        "nothing fails: ×0.5"
    );
    assert_eq!(
        sequence(&b, 0.5, 0.0),
        sequence(&example(Strategy::Exponential), 0.0, 0.0),
        "half fails: ×1"
    );
    assert_eq!(
        sequence(&b, 1.0, 0.0),
        ms([200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000]),
        "everything fails: ×2, capped"
    );
    // Scaled before the cap: a healthy route still reaches max_delay.
    assert_eq!(b.delay(12, 0.0, 0.0), 60 * S);
    // f = 0.25: ×2^(−0.5).
    let expected = (100.0 * MS as f64 * 0.5f64.sqrt()).round() as u64;
    assert!(b.delay(1, 0.25, 0.0).abs_diff(expected) <= 1);
}

#[test]
fn only_jitter_reads_the_draw_and_only_adaptive_the_failure_ratio() {
    for strategy in Strategy::ALL {
        let b = example(strategy);
        for k in 1..=12 {
            if strategy != Strategy::ExponentialJitter {
                assert_eq!(b.delay(k, 0.3, 0.0), b.delay(k, 0.3, 0.9), "{strategy:?}");
                assert_eq!(b.min_delay(k, 0.3), b.delay(k, 0.3, 0.5), "{strategy:?}");
            }
            if strategy != Strategy::Adaptive {
                assert_eq!(b.delay(k, 0.0, 0.4), b.delay(k, 1.0, 0.4), "{strategy:?}");
            }
        }
    }
}

#[test]
fn retry_zero_is_the_first_retry() {
    for strategy in Strategy::ALL {
        let b = example(strategy);
        assert_eq!(b.delay(0, 0.3, 0.4), b.delay(1, 0.3, 0.4), "{strategy:?}");
    }
}

#[test]
fn every_strategy_is_capped_and_never_decreases_with_the_retry() {
    for strategy in Strategy::ALL {
        let b = example(strategy);
        let mut previous = 0;
        for k in 1..=1000 {
            let d = b.delay(k, 0.7, 0.5);
            assert!(d <= b.max_delay, "{strategy:?} k={k}: {d}");
            assert!(d >= previous, "{strategy:?} k={k}: {d} < {previous}");
            previous = d;
        }
        if strategy == Strategy::Fixed {
            assert_eq!(previous, 100 * MS);
        } else {
            // Draw 0.5 with jitter 0.5 takes a quarter off.
            let expected = if strategy == Strategy::ExponentialJitter {
                45 * S
            } else {
                b.max_delay
            };
            assert_eq!(previous, expected, "{strategy:?} reaches the cap");
        }
        // A base above the cap gives the cap from the first retry.
        let low = Backoff {
            max_delay: 40 * MS,
            ..b
        };
        assert_eq!(low.delay(1, 0.5, 0.0), 40 * MS, "{strategy:?}");
    }
}

#[test]
fn jitter_stays_between_min_delay_and_the_exponential_delay() {
    for_each_seed("jitter bounds", 0x6a17, 2000, |rng| {
        let base = rng.gen_range(0..=10 * S);
        let b = Backoff {
            strategy: Strategy::ExponentialJitter,
            base_delay: base,
            max_delay: rng.gen_range(0..=120 * S),
            multiplier: rng.gen_range(1.0..4.0),
            polynomial_degree: 2,
            jitter: if rng.gen_bool(0.1) {
                [0.0, 1.0][rng.gen_range(0..2)]
            } else {
                rng.gen_range(0.0..=1.0)
            },
            adaptive: false,
        };
        let exponential = Backoff {
            strategy: Strategy::Exponential,
            ..b
        };
        let k = rng.gen_range(1..=40);
        let f = rng.gen_range(0.0..=1.0);
        let e = exponential.delay(k, f, 0.0);
        let lower = b.min_delay(k, f);
        ensure!(b.delay(k, f, 0.0) == e, "{b:?} k={k}: draw 0 is not e={e}");
        ensure!(
            lower == ((e as f64 * (1.0 - b.jitter)).round() as u64).min(e),
            "{b:?} k={k}: min_delay {lower} is not e × (1 − jitter), e={e}"
        );
        for _ in 0..20 {
            let draw: f64 = rng.gen();
            let d = b.delay(k, f, draw);
            ensure!(
                lower <= d && d <= e,
                "{b:?} k={k} draw={draw}: {d} outside [{lower}, {e}]"
            );
        }
        Ok(())
    });
}

#[test]
fn jitter_spreads_over_its_whole_range() {
    let b = example(Strategy::ExponentialJitter);
    let mut rng = rand::thread_rng();
    let delays: Vec<u64> = (0..10_000).map(|_| b.delay(4, 0.0, rng.gen())).collect();
    let (lo, hi) = (400 * MS, 800 * MS);
    let min = *delays.iter().min().unwrap();
    let max = *delays.iter().max().unwrap();
    assert!(min >= lo && max <= hi, "{min}..{max}");
    // Uniform: 10 000 draws cover both ends to within 1 % of the range and split evenly.
    assert!(min < lo + 4 * MS && max > hi - 4 * MS, "{min}..{max}");
    let below_middle = delays.iter().filter(|d| **d < 600 * MS).count();
    assert!((4_500..5_500).contains(&below_middle), "{below_middle}");
}

#[test]
fn adaptive_is_monotonic_in_the_failure_ratio() {
    for_each_seed("adaptive monotonic", 0xada9, 2000, |rng| {
        let b = Backoff {
            strategy: Strategy::Adaptive,
            base_delay: rng.gen_range(0..=S),
            max_delay: rng.gen_range(0..=120 * S),
            multiplier: rng.gen_range(1.0..3.0),
            polynomial_degree: 2,
            jitter: 0.5,
            adaptive: false,
        };
        let k = rng.gen_range(1..=30);
        let mut ratios: Vec<f64> = (0..10).map(|_| rng.gen_range(0.0..=1.0)).collect();
        ratios.extend([0.0, 0.5, 1.0]);
        ratios.sort_by(f64::total_cmp);
        let delays: Vec<u64> = ratios.iter().map(|f| b.delay(k, *f, 0.0)).collect();
        ensure!(
            delays.windows(2).all(|w| w[0] <= w[1]),
            "{b:?} k={k}: {ratios:?} → {delays:?}"
        );
        let exponential = Backoff {
            strategy: Strategy::Exponential,
            ..b
        };
        ensure!(
            b.delay(k, 0.5, 0.0) == exponential.delay(k, 0.0, 0.0),
            "{b:?} k={k}: f = 0.5 is not the exponential delay"
        );
        Ok(())
    });
}

#[test]
fn non_finite_failure_ratios_are_clamped_and_nan_is_taken_as_all_failing() {
    let b = example(Strategy::Adaptive);
    for k in [1, 5, 10, 20] {
        let none = b.delay(k, 0.0, 0.0);
        let all = b.delay(k, 1.0, 0.0);
        assert_eq!(b.delay(k, f64::NAN, 0.0), all, "NaN → 1");
        assert_eq!(b.delay(k, f64::INFINITY, 0.0), all, "+∞ → 1");
        assert_eq!(b.delay(k, 7.0, 0.0), all, "7 → 1");
        assert_eq!(b.delay(k, f64::NEG_INFINITY, 0.0), none, "−∞ → 0");
        assert_eq!(b.delay(k, -0.5, 0.0), none, "−0.5 → 0");
    }
}

#[test]
fn out_of_range_parameters_are_made_safe() {
    // A multiplier below 1 (or NaN) is 1: the exponential strategies hold at base.
    for multiplier in [0.5, 0.0, -3.0, f64::NAN, f64::NEG_INFINITY] {
        for strategy in [
            Strategy::Exponential,
            Strategy::ExponentialJitter,
            Strategy::Adaptive,
        ] {
            let b = Backoff {
                multiplier,
                ..example(strategy)
            };
            assert_eq!(
                b.delay(10, 0.5, 0.0),
                100 * MS,
                "{strategy:?} ×{multiplier}"
            );
        }
    }
    // Jitter and draw are clamped to [0, 1], NaN to 0.
    let j = example(Strategy::ExponentialJitter);
    let e = j.delay(3, 0.0, 0.0);
    assert_eq!(e, 400 * MS);
    for draw in [f64::NAN, -1.0, f64::NEG_INFINITY] {
        assert_eq!(j.delay(3, 0.0, draw), e, "draw {draw}");
    }
    for draw in [1.0, 2.0, f64::INFINITY] {
        assert_eq!(j.delay(3, 0.0, draw), 200 * MS, "draw {draw}");
    }
    for (jitter, expected) in [
        (f64::NAN, 400),
        (-1.0, 400),
        (0.0, 400),
        (1.0, 0),
        (5.0, 0),
        (f64::INFINITY, 0),
    ] {
        let b = Backoff { jitter, ..j };
        assert_eq!(b.min_delay(3, 0.0), expected * MS, "jitter {jitter}");
    }
}

#[test]
fn extreme_inputs_never_panic_overflow_or_exceed_the_cap() {
    let retries = [0, 1, 2, 63, 64, 65, 93, 94, 1000, i32::MAX as u32, u32::MAX];
    let multipliers = [1.0, 1.5, 2.0, 1e300, f64::MAX, f64::INFINITY, f64::NAN, 0.0];
    let degrees = [0, 1, 2, 64, 1000, u32::MAX];
    let bases = [0, 1, 100 * MS, DAY, u64::MAX];
    let maxes = [0, 1, 60 * S, DAY, u64::MAX];
    let ratios = [0.0, 0.5, 1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    let draws = [0.0, MAX_DRAW, f64::NAN, f64::INFINITY, -1.0];
    for strategy in Strategy::ALL {
        for &base_delay in &bases {
            for &max_delay in &maxes {
                for &multiplier in &multipliers {
                    for &polynomial_degree in &degrees {
                        let b = Backoff {
                            strategy,
                            base_delay,
                            max_delay,
                            multiplier,
                            polynomial_degree,
                            jitter: 1.0,
                            adaptive: false,
                        };
                        for &k in &retries {
                            for &f in &ratios {
                                for &draw in &draws {
                                    let d = b.delay(k, f, draw);
                                    assert!(d <= max_delay, "{b:?} k={k} f={f} draw={draw}: {d}");
                                    assert!(b.min_delay(k, f) <= d, "{b:?} k={k} f={f}");
                                    if base_delay == 0 {
                                        assert_eq!(d, 0, "{b:?} k={k}: no base, no delay");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_largest_retry_saturates_at_the_cap() {
    for strategy in Strategy::ALL {
        let b = Backoff {
            base_delay: DAY,
            max_delay: u64::MAX,
            multiplier: 1e300,
            polynomial_degree: 1000,
            ..example(strategy)
        };
        let d = b.delay(u32::MAX, 1.0, 0.0);
        match strategy {
            Strategy::Fixed => assert_eq!(d, DAY),
            _ => assert_eq!(d, u64::MAX, "{strategy:?}"),
        }
        // The second retry already saturates with multiplier 1e300, the Fibonacci and linear
        // ones only later.
        let second = b.delay(2, 1.0, 0.0);
        match strategy {
            Strategy::Fixed | Strategy::Fibonacci => assert_eq!(second, DAY, "{strategy:?}"),
            Strategy::Linear => assert_eq!(second, 2 * DAY),
            _ => assert_eq!(second, u64::MAX, "{strategy:?}"),
        }
    }
}

#[test]
fn enable_adaptive_delays_scales_any_strategy_by_the_failure_ratio_and_still_caps() {
    let fixed = Backoff {
        adaptive: true,
        ..Backoff::new(Strategy::Fixed, 100 * MS, 150 * MS)
    };
    assert_eq!(fixed.delay(3, 0.0, 0.0), 50 * MS, "nothing fails: half");
    assert_eq!(
        fixed.delay(3, 0.5, 0.0),
        100 * MS,
        "half fails: as configured"
    );
    assert_eq!(
        fixed.delay(3, 1.0, 0.0),
        150 * MS,
        "everything fails: doubled, then capped"
    );
    let plain = Backoff::new(Strategy::Fixed, 100 * MS, 150 * MS);
    assert_eq!(
        plain.delay(3, 1.0, 0.0),
        100 * MS,
        "off: the ratio does not matter"
    );
}
