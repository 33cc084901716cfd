//! `fault::decide`: the master switch, configured rates at their exact boundaries, the abort and
//! the delay drawn independently, path-specific rates, what `true` (the route's configured
//! fault) and explicit specs give, the `delay.max` ceiling, and which trigger is reported.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{for_each_seed, MS, S};
use marty_resilience_core::config::Environment;
use marty_resilience_core::fault::header::{CustomSpec, Spec};
use marty_resilience_core::fault::{
    decide, AbortPolicy, Draws, Fault, FaultPolicy, MethodRates, Trigger,
};
use rand::Rng;

/// The largest draw `[0, 1)` can give.
const MAX_DRAW: f64 = 1.0 - f64::EPSILON / 2.0;

/// Draws that fire any rate above 0, and draws that fire only a rate of 1.
const LOW: Draws = Draws {
    abort: 0.0,
    delay: 0.0,
};
const HIGH: Draws = Draws {
    abort: MAX_DRAW,
    delay: MAX_DRAW,
};

fn draws(abort: f64, delay: f64) -> Draws {
    Draws { abort, delay }
}

/// The preset's section, switched on, with distinct numbers: aborts 503 / gRPC 14 at rate 0,
/// delays of 1 s at rate 0, a 5 s ceiling.
fn policy() -> FaultPolicy {
    let mut p = Environment::Production.preset().failure_injection;
    p.enabled = true;
    p.base_failure_rate = 0.0;
    p.abort = AbortPolicy {
        http_status: 503,
        grpc_status: 14,
    };
    p.delay.duration = S;
    p.delay.rate = 0.0;
    p.delay.max = 5 * S;
    p
}

fn rates(entries: &[(&str, f64)]) -> MethodRates {
    MethodRates::new(entries.iter().map(|(k, r)| (k.to_string(), *r)))
}

const ABORT: AbortPolicy = AbortPolicy {
    http_status: 503,
    grpc_status: 14,
};

fn fault(abort: Option<AbortPolicy>, delay: Option<u64>, trigger: Trigger) -> Option<Fault> {
    Some(Fault {
        abort,
        delay,
        trigger,
    })
}

fn spec(f: impl FnOnce(&mut CustomSpec)) -> Spec {
    let mut s = CustomSpec::default();
    f(&mut s);
    Spec::Custom(s)
}

// ---------------------------------------------------------------------------------------------
// The master switch
// ---------------------------------------------------------------------------------------------

#[test]
fn the_preset_is_off_with_marty_defaults() {
    let p = Environment::Production.preset().failure_injection;
    assert!(!p.enabled);
    assert!(!p.enabled_by_env);
    assert_eq!(p.base_failure_rate, 0.05);
    assert!(p.method_specific_rates.is_empty());
    assert_eq!(p.abort, ABORT);
    assert_eq!(p.delay.duration, 250 * MS);
    assert_eq!(p.delay.rate, 0.0);
    assert_eq!(p.delay.max, 10 * S);
    assert_eq!(p.max_active_faults, 100);
    assert!(!p.header_trigger.enabled);
    assert_eq!(p.header_trigger.header, "x-failure-inject");
    assert_eq!(p.header_trigger.token, None);
    assert!(!p.header_trigger.propagate);
    for env in [
        Environment::Development,
        Environment::Production,
        Environment::Testing,
    ] {
        assert_eq!(env.preset().failure_injection, p, "{env:?}");
    }
}

#[test]
fn disabled_never_injects_whatever_is_asked() {
    let mut p = policy();
    p.enabled = false;
    p.base_failure_rate = 1.0;
    p.method_specific_rates = rates(&[("/users", 1.0), ("/", 1.0)]);
    p.delay.rate = 1.0;
    p.header_trigger.enabled = true;
    let everything = spec(|s| {
        s.abort_http = Some(500);
        s.abort_grpc = Some(2);
        s.delay = Some(S);
        s.rate = Some(1.0);
    });
    for enabled_by_env in [false, true] {
        p.enabled_by_env = enabled_by_env;
        for requested in [
            None,
            Some((Spec::Configured, Trigger::Header)),
            Some((Spec::Configured, Trigger::Metadata)),
            Some((everything, Trigger::Header)),
            Some((everything, Trigger::Metadata)),
        ] {
            for d in [LOW, HIGH, draws(0.5, 0.5)] {
                for path in ["/users", "/", ""] {
                    assert_eq!(decide(&p, path, requested, d), None, "{requested:?} {d:?}");
                }
            }
        }
    }
}

#[test]
fn enabled_with_nothing_configured_injects_nothing() {
    let p = policy();
    for d in [LOW, HIGH, draws(0.5, 0.5)] {
        assert_eq!(decide(&p, "/users", None, d), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Configured rates
// ---------------------------------------------------------------------------------------------

#[test]
fn a_configured_abort_fires_when_the_draw_is_below_the_rate() {
    let mut p = policy();
    p.base_failure_rate = 0.25;
    let abort = fault(Some(ABORT), None, Trigger::Config);
    assert_eq!(decide(&p, "/", None, draws(0.0, MAX_DRAW)), abort);
    assert_eq!(decide(&p, "/", None, draws(0.249_999, MAX_DRAW)), abort);
    assert_eq!(
        decide(&p, "/", None, draws(0.25 - f64::EPSILON / 8.0, MAX_DRAW)),
        abort
    );
    assert_eq!(decide(&p, "/", None, draws(0.25, MAX_DRAW)), None);
    assert_eq!(decide(&p, "/", None, draws(0.75, MAX_DRAW)), None);
    assert_eq!(decide(&p, "/", None, draws(MAX_DRAW, MAX_DRAW)), None);
}

#[test]
fn the_abort_carries_the_configured_statuses() {
    let mut p = policy();
    p.base_failure_rate = 1.0;
    p.abort = AbortPolicy {
        http_status: 429,
        grpc_status: 8,
    };
    assert_eq!(
        decide(&p, "/", None, LOW),
        fault(
            Some(AbortPolicy {
                http_status: 429,
                grpc_status: 8
            }),
            None,
            Trigger::Config
        )
    );
}

#[test]
fn rate_0_never_fires_and_rate_1_always_does() {
    let mut p = policy();
    p.delay.duration = 2 * S;
    for (abort_rate, delay_rate) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)] {
        p.base_failure_rate = abort_rate;
        p.delay.rate = delay_rate;
        for d in [LOW, HIGH, draws(0.5, 0.5), draws(0.0, MAX_DRAW)] {
            let got = decide(&p, "/", None, d);
            let abort = got.and_then(|f| f.abort);
            let delay = got.and_then(|f| f.delay);
            assert_eq!(abort.is_some(), abort_rate == 1.0, "{abort_rate} {d:?}");
            assert_eq!(delay.is_some(), delay_rate == 1.0, "{delay_rate} {d:?}");
            if let Some(nanos) = delay {
                assert_eq!(nanos, 2 * S);
            }
        }
    }
}

#[test]
fn a_configured_delay_fires_below_its_own_rate() {
    let mut p = policy();
    p.delay.rate = 0.3;
    let delay = fault(None, Some(S), Trigger::Config);
    assert_eq!(decide(&p, "/", None, draws(MAX_DRAW, 0.0)), delay);
    assert_eq!(decide(&p, "/", None, draws(MAX_DRAW, 0.299_999)), delay);
    assert_eq!(decide(&p, "/", None, draws(MAX_DRAW, 0.3)), None);
    assert_eq!(decide(&p, "/", None, draws(MAX_DRAW, MAX_DRAW)), None);
}

#[test]
fn a_configured_delay_of_zero_is_no_delay() {
    let mut p = policy();
    p.delay.rate = 1.0;
    p.delay.duration = 0;
    assert_eq!(decide(&p, "/", None, LOW), None);
    p.base_failure_rate = 1.0;
    assert_eq!(
        decide(&p, "/", None, LOW),
        fault(Some(ABORT), None, Trigger::Config)
    );
}

#[test]
fn a_configured_delay_is_capped_at_delay_max() {
    let mut p = policy();
    p.delay.rate = 1.0;
    p.delay.duration = 8 * S;
    p.delay.max = 2 * S;
    assert_eq!(
        decide(&p, "/", None, LOW),
        fault(None, Some(2 * S), Trigger::Config)
    );
    p.delay.duration = 2 * S;
    assert_eq!(
        decide(&p, "/", None, LOW),
        fault(None, Some(2 * S), Trigger::Config)
    );
}

#[test]
fn abort_and_delay_are_drawn_independently() {
    let mut p = policy();
    p.base_failure_rate = 0.5;
    p.delay.rate = 0.5;
    assert_eq!(
        decide(&p, "/", None, draws(0.1, 0.1)),
        fault(Some(ABORT), Some(S), Trigger::Config)
    );
    assert_eq!(
        decide(&p, "/", None, draws(0.1, 0.9)),
        fault(Some(ABORT), None, Trigger::Config)
    );
    assert_eq!(
        decide(&p, "/", None, draws(0.9, 0.1)),
        fault(None, Some(S), Trigger::Config)
    );
    assert_eq!(decide(&p, "/", None, draws(0.9, 0.9)), None);
}

#[test]
fn configured_frequencies_follow_the_rates_with_uniform_draws() {
    // Not a statistical test of a generator: with uniform draws, each kind fires at its own
    // rate and the two are independent (both at the product of the rates).
    let mut p = policy();
    p.base_failure_rate = 0.2;
    p.delay.rate = 0.4;
    let (mut aborts, mut delays, mut both) = (0u32, 0u32, 0u32);
    let n = 20_000;
    for_each_seed("configured frequencies", 0xFA_1001, 1, |rng| {
        for _ in 0..n {
            let got = decide(&p, "/", None, draws(rng.gen(), rng.gen()));
            let a = got.is_some_and(|f| f.abort.is_some());
            let d = got.is_some_and(|f| f.delay.is_some());
            aborts += u32::from(a);
            delays += u32::from(d);
            both += u32::from(a && d);
        }
        Ok(())
    });
    let share = |k: u32| f64::from(k) / f64::from(n);
    assert!((share(aborts) - 0.2).abs() < 0.02, "aborts {aborts}");
    assert!((share(delays) - 0.4).abs() < 0.02, "delays {delays}");
    assert!((share(both) - 0.08).abs() < 0.015, "both {both}");
}

#[test]
fn the_trigger_is_config_or_env_for_configured_rates() {
    let mut p = policy();
    p.base_failure_rate = 1.0;
    assert_eq!(decide(&p, "/", None, LOW).unwrap().trigger, Trigger::Config);
    p.enabled_by_env = true;
    assert_eq!(decide(&p, "/", None, LOW).unwrap().trigger, Trigger::Env);
    assert_eq!(Trigger::Config.name(), "config");
    assert_eq!(Trigger::Env.name(), "env");
    assert_eq!(Trigger::Header.name(), "header");
    assert_eq!(Trigger::Metadata.name(), "metadata");
}

// ---------------------------------------------------------------------------------------------
// method_specific_rates
// ---------------------------------------------------------------------------------------------

#[test]
fn an_exact_path_beats_any_prefix() {
    let m = rates(&[
        ("/users/42", 0.1),
        ("/users/", 0.9),
        ("/users/4*", 0.8),
        ("/*", 0.7),
    ]);
    assert_eq!(m.lookup("/users/42"), Some(0.1));
    assert_eq!(m.lookup("/users/43"), Some(0.8));
    assert_eq!(m.lookup("/users/420"), Some(0.8));
    assert_eq!(m.lookup("/users/5"), Some(0.9));
    assert_eq!(m.lookup("/orders"), Some(0.7));
}

#[test]
fn the_longest_prefix_wins_whatever_the_order() {
    let entries = [
        ("/a/", 0.1),
        ("/a/b/", 0.2),
        ("/a/b/c*", 0.3),
        ("/a/b/cd/", 0.4),
    ];
    for rotation in 0..entries.len() {
        let mut e = entries.to_vec();
        e.rotate_left(rotation);
        let m = rates(&e);
        assert_eq!(m.lookup("/a/x"), Some(0.1));
        assert_eq!(m.lookup("/a/b/x"), Some(0.2));
        assert_eq!(m.lookup("/a/b/c"), Some(0.3));
        assert_eq!(m.lookup("/a/b/cx"), Some(0.3));
        assert_eq!(m.lookup("/a/b/cd/e"), Some(0.4));
        // `/a/b/cd` has no trailing slash, so it is only under `/a/b/c*`.
        assert_eq!(m.lookup("/a/b/cd"), Some(0.3));
        assert_eq!(m.lookup("/a"), None);
        assert_eq!(m.lookup("/b/"), None);
    }
}

#[test]
fn a_star_suffix_is_a_prefix_a_trailing_slash_is_one_and_anything_else_is_exact() {
    let m = rates(&[
        ("/grpc.health.v1.Health/*", 0.5),
        ("/users*", 0.25),
        ("/orders", 0.75),
        ("/files/", 0.125),
    ]);
    assert_eq!(m.lookup("/grpc.health.v1.Health/Check"), Some(0.5));
    assert_eq!(m.lookup("/grpc.health.v1.Health/"), Some(0.5));
    assert_eq!(m.lookup("/grpc.health.v1.Health"), None);
    assert_eq!(m.lookup("/users"), Some(0.25));
    assert_eq!(m.lookup("/users-admin"), Some(0.25));
    assert_eq!(m.lookup("/users/1"), Some(0.25));
    assert_eq!(m.lookup("/orders"), Some(0.75));
    assert_eq!(m.lookup("/orders/1"), None);
    assert_eq!(m.lookup("/orders2"), None);
    assert_eq!(m.lookup("/files/"), Some(0.125));
    assert_eq!(m.lookup("/files/a/b"), Some(0.125));
    assert_eq!(m.lookup("/files"), None);
    // A `*` elsewhere is a literal character of an exact key.
    let literal = rates(&[("/a*b", 1.0)]);
    assert_eq!(literal.lookup("/a*b"), Some(1.0));
    assert_eq!(literal.lookup("/axb"), None);
}

#[test]
fn the_query_string_is_ignored() {
    let m = rates(&[("/users/42", 0.1), ("/orders/", 0.2)]);
    assert_eq!(m.lookup("/users/42?verbose=1"), Some(0.1));
    assert_eq!(m.lookup("/users/42?"), Some(0.1));
    assert_eq!(m.lookup("/users/42?a=1?b=2"), Some(0.1));
    assert_eq!(m.lookup("/orders/7?x=/users/42"), Some(0.2));
    assert_eq!(m.lookup("/other?/users/42"), None);
}

#[test]
fn without_a_matching_key_the_base_rate_applies() {
    let mut p = policy();
    p.base_failure_rate = 0.05;
    p.method_specific_rates = rates(&[("/users/", 1.0), ("/health", 0.0)]);
    assert_eq!(p.abort_rate("/users/1"), 1.0);
    assert_eq!(p.abort_rate("/health"), 0.0);
    assert_eq!(p.abort_rate("/orders"), 0.05);
    assert_eq!(p.abort_rate(""), 0.05);
    // Through decide, at the boundaries of each rate.
    let abort = fault(Some(ABORT), None, Trigger::Config);
    assert_eq!(
        decide(&p, "/users/1", None, draws(MAX_DRAW, MAX_DRAW)),
        abort
    );
    assert_eq!(decide(&p, "/health", None, LOW), None);
    assert_eq!(decide(&p, "/orders", None, draws(0.049, MAX_DRAW)), abort);
    assert_eq!(decide(&p, "/orders", None, draws(0.05, MAX_DRAW)), None);
}

#[test]
fn method_rates_set_the_abort_rate_only() {
    let mut p = policy();
    p.method_specific_rates = rates(&[("/slow", 0.0)]);
    p.delay.rate = 1.0;
    assert_eq!(
        decide(&p, "/slow", None, LOW),
        fault(None, Some(S), Trigger::Config)
    );
}

#[test]
fn method_rates_entries_round_trip() {
    let entries = [
        ("/users/42", 0.1),
        ("/users/", 0.9),
        ("/users/4*", 0.8),
        ("/*", 0.7),
        ("/a/*", 0.6),
        ("/a*b", 0.5),
    ];
    let m = rates(&entries);
    let mut got = m.entries();
    let mut want: Vec<(String, f64)> = entries.iter().map(|(k, r)| (k.to_string(), *r)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "keys come back as configured");
    assert_eq!(MethodRates::new(m.entries()), m);
    assert!(MethodRates::default().entries().is_empty());
    assert!(MethodRates::default().is_empty());
    assert!(!m.is_empty());
}

#[test]
fn method_rates_round_trip_and_lookup_agree_on_random_tables() {
    const SEGMENTS: &[&str] = &["a", "b", "ab", "users", "42", "x.y"];
    for_each_seed("method rates", 0xFA_1002, 2000, |rng| {
        let mut keys = std::collections::BTreeSet::new();
        for _ in 0..rng.gen_range(0..8) {
            let mut key = String::new();
            for _ in 0..rng.gen_range(1..4) {
                key.push('/');
                key.push_str(SEGMENTS[rng.gen_range(0..SEGMENTS.len())]);
            }
            match rng.gen_range(0..3) {
                0 => key.push('/'),
                1 => key.push('*'),
                _ => {}
            }
            keys.insert(key);
        }
        let entries: Vec<(String, f64)> = keys
            .into_iter()
            .map(|k| (k, f64::from(rng.gen_range(0..=100u32)) / 100.0))
            .collect();
        let m = MethodRates::new(entries.clone());
        let back = MethodRates::new(m.entries());
        ensure!(back == m, "{entries:?}: {:?} vs {m:?}", back);
        let mut listed = m.entries();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        ensure!(listed == entries, "{entries:?} listed as {listed:?}");
        // The reference rule: an exact key, else the longest matching prefix key.
        for _ in 0..8 {
            let mut path = String::new();
            for _ in 0..rng.gen_range(0..4) {
                path.push('/');
                path.push_str(SEGMENTS[rng.gen_range(0..SEGMENTS.len())]);
            }
            if rng.gen_bool(0.3) {
                path.push('/');
            }
            let exact = entries
                .iter()
                .find(|(k, _)| !k.ends_with('/') && !k.ends_with('*') && *k == path)
                .map(|(_, r)| *r);
            let want = exact.or_else(|| {
                entries
                    .iter()
                    .filter_map(|(k, r)| {
                        let prefix = k.strip_suffix('*').or(k.ends_with('/').then_some(k))?;
                        path.starts_with(prefix).then_some((prefix.len(), *r))
                    })
                    .max_by_key(|(len, _)| *len)
                    .map(|(_, r)| r)
            });
            ensure!(
                m.lookup(&path) == want,
                "{path:?} in {entries:?}: {:?}, expected {want:?}",
                m.lookup(&path)
            );
            let query = format!("{path}?q=1");
            ensure!(m.lookup(&query) == want, "{query:?} in {entries:?}");
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// `true`: the route's configured fault
// ---------------------------------------------------------------------------------------------

#[test]
fn configured_spec_aborts_for_sure_when_the_route_has_no_delay() {
    let mut p = policy();
    for base in [0.0, 0.05, 1.0] {
        p.base_failure_rate = base;
        for d in [LOW, HIGH] {
            assert_eq!(
                decide(&p, "/", Some((Spec::Configured, Trigger::Header)), d),
                fault(Some(ABORT), None, Trigger::Header),
                "base {base}"
            );
        }
    }
}

#[test]
fn configured_spec_delays_when_a_delay_is_configured_and_aborts_unless_delay_only() {
    let mut p = policy();
    p.delay.rate = 0.1;
    p.delay.duration = 3 * S;
    // Aborts configured too: both, for sure.
    p.base_failure_rate = 0.05;
    for d in [LOW, HIGH] {
        assert_eq!(
            decide(&p, "/", Some((Spec::Configured, Trigger::Metadata)), d),
            fault(Some(ABORT), Some(3 * S), Trigger::Metadata)
        );
    }
    // Delay-only route: the delay alone.
    p.base_failure_rate = 0.0;
    for d in [LOW, HIGH] {
        assert_eq!(
            decide(&p, "/", Some((Spec::Configured, Trigger::Metadata)), d),
            fault(None, Some(3 * S), Trigger::Metadata)
        );
    }
}

#[test]
fn configured_spec_reads_delay_only_per_path() {
    let mut p = policy();
    p.base_failure_rate = 0.05;
    p.method_specific_rates = rates(&[("/slow/", 0.0), ("/flaky", 0.5)]);
    p.delay.rate = 0.5;
    let asked = Some((Spec::Configured, Trigger::Header));
    assert_eq!(
        decide(&p, "/slow/1", asked, HIGH),
        fault(None, Some(S), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/flaky", asked, HIGH),
        fault(Some(ABORT), Some(S), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/other", asked, HIGH),
        fault(Some(ABORT), Some(S), Trigger::Header)
    );
    // And the other way round: base 0, a path with aborts.
    p.base_failure_rate = 0.0;
    assert_eq!(
        decide(&p, "/other", asked, HIGH),
        fault(None, Some(S), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/flaky", asked, HIGH),
        fault(Some(ABORT), Some(S), Trigger::Header)
    );
}

#[test]
fn configured_spec_needs_both_a_delay_rate_and_a_duration_for_a_delay() {
    let mut p = policy();
    p.base_failure_rate = 0.0;
    let asked = Some((Spec::Configured, Trigger::Header));
    // A duration but rate 0: no delay configured, so the abort.
    p.delay.rate = 0.0;
    p.delay.duration = 2 * S;
    assert_eq!(
        decide(&p, "/", asked, LOW),
        fault(Some(ABORT), None, Trigger::Header)
    );
    // A rate but duration 0: the same.
    p.delay.rate = 1.0;
    p.delay.duration = 0;
    assert_eq!(
        decide(&p, "/", asked, LOW),
        fault(Some(ABORT), None, Trigger::Header)
    );
}

#[test]
fn configured_spec_delay_is_capped_and_its_trigger_is_the_requesters() {
    let mut p = policy();
    p.delay.rate = 0.5;
    p.delay.duration = 9 * S;
    p.delay.max = 4 * S;
    // Switched on by the environment: a trigger still reports itself, not `env`.
    p.enabled_by_env = true;
    for trigger in [Trigger::Header, Trigger::Metadata] {
        assert_eq!(
            decide(&p, "/", Some((Spec::Configured, trigger)), HIGH),
            fault(None, Some(4 * S), trigger)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Explicit specs
// ---------------------------------------------------------------------------------------------

#[test]
fn custom_abort_overrides_the_http_status_and_keeps_the_grpc_one() {
    let mut p = policy();
    p.abort = AbortPolicy {
        http_status: 503,
        grpc_status: 4,
    };
    assert_eq!(
        decide(
            &p,
            "/",
            Some((spec(|s| s.abort_http = Some(418)), Trigger::Header)),
            HIGH
        ),
        fault(
            Some(AbortPolicy {
                http_status: 418,
                grpc_status: 4
            }),
            None,
            Trigger::Header
        )
    );
}

#[test]
fn custom_grpc_overrides_the_grpc_status_and_keeps_the_http_one() {
    let mut p = policy();
    p.abort.http_status = 502;
    assert_eq!(
        decide(
            &p,
            "/",
            Some((spec(|s| s.abort_grpc = Some(13)), Trigger::Metadata)),
            HIGH
        ),
        fault(
            Some(AbortPolicy {
                http_status: 502,
                grpc_status: 13
            }),
            None,
            Trigger::Metadata
        )
    );
    let both = spec(|s| {
        s.abort_http = Some(500);
        s.abort_grpc = Some(0);
    });
    assert_eq!(
        decide(&p, "/", Some((both, Trigger::Header)), HIGH),
        fault(
            Some(AbortPolicy {
                http_status: 500,
                grpc_status: 0
            }),
            None,
            Trigger::Header
        )
    );
}

#[test]
fn custom_specs_ignore_the_configured_rates() {
    let mut p = policy();
    // Nothing configured fires...
    p.base_failure_rate = 0.0;
    p.method_specific_rates = rates(&[("/", 0.0)]);
    p.delay.rate = 0.0;
    let abort_and_delay = spec(|s| {
        s.abort_http = Some(503);
        s.delay = Some(200 * MS);
    });
    // ...yet the request's own fault does, at its default rate of 1.
    assert_eq!(
        decide(&p, "/users", Some((abort_and_delay, Trigger::Header)), HIGH),
        fault(Some(ABORT), Some(200 * MS), Trigger::Header)
    );
    // And a configured delay does not join a custom abort.
    p.delay.rate = 1.0;
    assert_eq!(
        decide(
            &p,
            "/users",
            Some((spec(|s| s.abort_http = Some(503)), Trigger::Header)),
            LOW
        ),
        fault(Some(ABORT), None, Trigger::Header)
    );
}

#[test]
fn custom_delay_alone_and_capped_at_delay_max() {
    let mut p = policy();
    p.delay.max = 5 * S;
    let asked = |nanos: u64| Some((spec(|s| s.delay = Some(nanos)), Trigger::Header));
    assert_eq!(
        decide(&p, "/", asked(250 * MS), HIGH),
        fault(None, Some(250 * MS), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/", asked(5 * S), HIGH),
        fault(None, Some(5 * S), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/", asked(5 * S + 1), HIGH),
        fault(None, Some(5 * S), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/", asked(86_400 * S), HIGH),
        fault(None, Some(5 * S), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/", asked(1), HIGH),
        fault(None, Some(1), Trigger::Header)
    );
}

#[test]
fn a_custom_rate_applies_to_each_fault_with_its_own_draw() {
    let p = policy();
    let both = spec(|s| {
        s.abort_http = Some(500);
        s.delay = Some(S);
        s.rate = Some(0.5);
    });
    let asked = Some((both, Trigger::Header));
    let abort = AbortPolicy {
        http_status: 500,
        grpc_status: 14,
    };
    assert_eq!(
        decide(&p, "/", asked, draws(0.0, 0.0)),
        fault(Some(abort), Some(S), Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/", asked, draws(0.499_999, 0.5)),
        fault(Some(abort), None, Trigger::Header)
    );
    assert_eq!(
        decide(&p, "/", asked, draws(0.5, 0.499_999)),
        fault(None, Some(S), Trigger::Header)
    );
    assert_eq!(decide(&p, "/", asked, draws(0.5, 0.5)), None);
    assert_eq!(decide(&p, "/", asked, HIGH), None);
}

#[test]
fn a_custom_rate_of_0_never_fires_and_1_always_does() {
    let p = policy();
    for rate in [0.0, 1.0] {
        let asked = Some((
            spec(|s| {
                s.abort_http = Some(503);
                s.delay = Some(S);
                s.rate = Some(rate);
            }),
            Trigger::Metadata,
        ));
        for d in [LOW, HIGH, draws(0.5, 0.5)] {
            let want = (rate == 1.0).then_some(Fault {
                abort: Some(ABORT),
                delay: Some(S),
                trigger: Trigger::Metadata,
            });
            assert_eq!(decide(&p, "/", asked, d), want, "rate {rate} {d:?}");
        }
    }
}

#[test]
fn triggers_are_carried_through_unchanged() {
    let mut p = policy();
    p.base_failure_rate = 1.0;
    let custom = spec(|s| s.abort_http = Some(503));
    for enabled_by_env in [false, true] {
        p.enabled_by_env = enabled_by_env;
        for trigger in [Trigger::Header, Trigger::Metadata] {
            for asked in [Spec::Configured, custom] {
                let got = decide(&p, "/", Some((asked, trigger)), LOW).unwrap();
                assert_eq!(got.trigger, trigger, "{asked:?} env {enabled_by_env}");
            }
        }
    }
}

#[test]
fn a_decision_is_none_or_names_a_fault() {
    // Whatever the inputs, `Some` always carries an abort or a delay, every delay is within
    // delay.max, and an abort's statuses come from the spec or the policy.
    for_each_seed("decide", 0xFA_1003, 20_000, |rng| {
        let mut p = policy();
        p.enabled = rng.gen_bool(0.9);
        p.enabled_by_env = rng.gen_bool(0.3);
        p.base_failure_rate = [0.0, 1.0, rng.gen()][rng.gen_range(0..3)];
        p.delay.rate = [0.0, 1.0, rng.gen()][rng.gen_range(0..3)];
        p.delay.duration = [0, MS, 10 * S][rng.gen_range(0..3)];
        p.delay.max = [MS, 5 * S, 86_400 * S][rng.gen_range(0..3)];
        if rng.gen_bool(0.3) {
            p.method_specific_rates = rates(&[("/a/", rng.gen()), ("/a/b", rng.gen())]);
        }
        let requested = match rng.gen_range(0..3) {
            0 => None,
            1 => Some((Spec::Configured, Trigger::Header)),
            _ => Some((
                spec(|s| {
                    s.abort_http = rng.gen_bool(0.5).then(|| rng.gen_range(200..=599));
                    s.abort_grpc = rng.gen_bool(0.3).then(|| rng.gen_range(0..=16));
                    s.delay = rng.gen_bool(0.5).then(|| rng.gen_range(1..=86_400 * S));
                    s.rate = rng.gen_bool(0.5).then(|| rng.gen());
                }),
                Trigger::Metadata,
            )),
        };
        let path = ["/", "/a/x", "/a/b", "/a/b?x"][rng.gen_range(0..4)];
        let d = draws(rng.gen(), rng.gen());
        let got = decide(&p, path, requested, d);
        if !p.enabled {
            ensure!(got.is_none(), "disabled but {got:?}");
            return Ok(());
        }
        if let Some(f) = got {
            ensure!(f.abort.is_some() || f.delay.is_some(), "{f:?}");
            ensure!(f.delay.is_none_or(|n| n <= p.delay.max && n > 0), "{f:?}");
            match requested {
                None => ensure!(
                    f.trigger
                        == if p.enabled_by_env {
                            Trigger::Env
                        } else {
                            Trigger::Config
                        },
                    "{f:?}"
                ),
                Some((_, t)) => ensure!(f.trigger == t, "{f:?}"),
            }
            if let (Some(a), Some((Spec::Custom(s), _))) = (f.abort, requested) {
                ensure!(
                    a.http_status == s.abort_http.unwrap_or(p.abort.http_status)
                        && a.grpc_status == s.abort_grpc.unwrap_or(p.abort.grpc_status),
                    "{a:?} from {s:?}"
                );
            }
        }
        Ok(())
    });
}
