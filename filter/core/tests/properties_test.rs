//! Model-based property test of the breaker: a reference model written from the rules in the
//! `breaker` module docs, run side by side with the real steps applied through
//! `breaker::update` on a `MemoryStore`, over thousands of random sequences.
//!
//! Interpretations the model makes of the prose rules (each is also pinned by a unit test):
//! - deadlines are exclusive: OPEN rejects while `now < open_until`; a lease holds its slot
//!   while `now < lease`; a failure streak stops counting once `now - last_failure >=
//!   failure_reset_timeout` (measured from the latest failure of the streak);
//! - the request that finds an expired OPEN breaker moves it to HALF_OPEN and is its first
//!   probe; any free slot may be taken, the lease is `now + half_open_probe_timeout`;
//! - a probe's result counts while its slot still holds its lease (a slow probe whose slot was
//!   not re-leased still counts); results of another generation never count.
//!
//! Replay a failing case with `MARTY_TEST_SEED=<seed> cargo test --test properties_test`.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashSet;

use common::{at, for_each_seed, legal, replaying};
use marty_resilience_core::breaker::Updated;
use marty_resilience_core::breaker::{
    self, Decision, Outcome, Record, State, Step, Ticket, Transition,
};
use marty_resilience_core::config::{BreakerPolicy, Environment};
use marty_resilience_core::store::MemoryStore;
use rand::rngs::StdRng;
use rand::Rng;

const KEY: &str = "marty.resilience/v1/cb/prop";

// ---------------------------------------------------------------- the reference model

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Closed {
        failures: u32,
        last_failure: u64,
    },
    Open {
        until: u64,
    },
    /// `leases[i]` is the deadline of the probe holding slot `i`, 0 when free.
    HalfOpen {
        successes: u32,
        leases: Vec<u64>,
    },
}

#[derive(Clone, Debug)]
struct Model {
    p: BreakerPolicy,
    phase: Phase,
    generation: u32,
    trips: u32,
    changed_at: u64,
}

/// What the model expects of an admission.
#[derive(Debug)]
enum Expect {
    Pass {
        generation: u32,
    },
    /// A probe: any slot in `free` (after the transition, if `half_opens`), leased until `lease`.
    Probe {
        half_opens: bool,
        free: Vec<usize>,
        lease: u64,
    },
    Reject {
        state: State,
        retry_after: u64,
    },
}

impl Model {
    fn new(p: BreakerPolicy) -> Self {
        Self {
            p,
            phase: Phase::Closed {
                failures: 0,
                last_failure: 0,
            },
            generation: 0,
            trips: 0,
            changed_at: 0,
        }
    }

    fn enter(&mut self, phase: Phase, now: u64) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
        self.changed_at = now;
    }

    fn trip(&mut self, now: u64) {
        self.trips = self.trips.saturating_add(1);
        let until = now.saturating_add(self.p.recovery_timeout);
        self.enter(Phase::Open { until }, now);
    }

    fn half_open(&mut self, now: u64) {
        let leases = vec![0; self.p.half_open_max_requests as usize];
        self.enter(
            Phase::HalfOpen {
                successes: 0,
                leases,
            },
            now,
        );
    }

    fn expect_admit(&self, now: u64) -> Expect {
        let lease = now.saturating_add(self.p.half_open_probe_timeout).max(1);
        match &self.phase {
            Phase::Closed { .. } => Expect::Pass {
                generation: self.generation,
            },
            Phase::Open { until } if now < *until => Expect::Reject {
                state: State::Open,
                retry_after: until - now,
            },
            Phase::Open { .. } => Expect::Probe {
                half_opens: true,
                free: (0..self.p.half_open_max_requests as usize).collect(),
                lease,
            },
            Phase::HalfOpen { leases, .. } => {
                let free: Vec<usize> = (0..leases.len()).filter(|i| leases[*i] <= now).collect();
                if free.is_empty() {
                    let soonest = leases.iter().min().copied().unwrap_or(now);
                    Expect::Reject {
                        state: State::HalfOpen,
                        retry_after: soonest - now,
                    }
                } else {
                    Expect::Probe {
                        half_opens: false,
                        free,
                        lease,
                    }
                }
            }
        }
    }

    /// The lease a probe taking `slot` gets: the deadline, moved past any lease another slot
    /// holds and past the slot's previous lease, so every ticket is unique.
    fn unique_lease(&self, deadline: u64, slot: usize, half_opens: bool) -> u64 {
        let leases = match (&self.phase, half_opens) {
            (Phase::HalfOpen { leases, .. }, false) => leases.clone(),
            _ => vec![0; self.p.half_open_max_requests as usize],
        };
        // The model's own statement of the rule: the first candidate, counting up from the
        // deadline and then down where adding saturates, that is free, new to the slot, not 0.
        let previous = leases.get(slot).copied().unwrap_or(0);
        let n = leases.len() as u64;
        (0..=n)
            .map(|i| deadline.saturating_add(i))
            .chain((1..=n).map(|i| deadline.saturating_sub(i)))
            .find(|l| *l != 0 && *l != previous && !leases.contains(l))
            .unwrap_or(deadline)
    }

    /// Applies an admission the real breaker granted as a probe in `slot`.
    fn take(&mut self, now: u64, half_opens: bool, slot: usize, lease: u64) {
        if half_opens {
            self.half_open(now);
        }
        if let Phase::HalfOpen { leases, .. } = &mut self.phase {
            leases[slot] = lease;
        }
    }

    fn record(&mut self, now: u64, ticket: Ticket, outcome: Outcome) -> Option<Transition> {
        if ticket.generation != self.generation {
            return None;
        }
        match (&mut self.phase, ticket.probe) {
            // The generation names the CLOSED period the request was admitted in.
            (
                Phase::Closed {
                    failures,
                    last_failure,
                },
                _,
            ) => match outcome {
                Outcome::Failure => {
                    let stale = *failures > 0
                        && now.saturating_sub(*last_failure) >= self.p.failure_reset_timeout;
                    *failures = if stale { 1 } else { failures.saturating_add(1) };
                    *last_failure = now;
                    if *failures >= self.p.failure_threshold {
                        self.trip(now);
                        Some(Transition::Opened)
                    } else {
                        None
                    }
                }
                Outcome::Success => {
                    *failures = 0;
                    None
                }
                Outcome::Ignored => None,
            },
            (Phase::HalfOpen { successes, leases }, Some((slot, lease)))
                if leases.get(slot) == Some(&lease) =>
            {
                match outcome {
                    Outcome::Failure => {
                        self.trip(now);
                        Some(Transition::Opened)
                    }
                    Outcome::Success => {
                        leases[slot] = 0;
                        *successes += 1;
                        if *successes >= self.p.half_open_success_threshold {
                            self.trips = 0;
                            self.enter(
                                Phase::Closed {
                                    failures: 0,
                                    last_failure: 0,
                                },
                                now,
                            );
                            Some(Transition::Closed)
                        } else {
                            None
                        }
                    }
                    Outcome::Ignored => {
                        leases[slot] = 0;
                        None
                    }
                }
            }
            _ => None,
        }
    }

    fn tick(&mut self, now: u64) -> Option<Transition> {
        match &mut self.phase {
            Phase::Open { until } if now >= *until => {
                self.half_open(now);
                Some(Transition::HalfOpened)
            }
            Phase::Closed {
                failures,
                last_failure,
            } if *failures > 0
                && now.saturating_sub(*last_failure) >= self.p.failure_reset_timeout =>
            {
                *failures = 0;
                None
            }
            _ => None,
        }
    }

    /// Whether the stored record says what the model says.
    fn matches(&self, rec: &Record) -> Result<(), String> {
        let state = match self.phase {
            Phase::Closed { .. } => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        };
        ensure!(
            rec.state == state,
            "state {:?}, model {:?}",
            rec.state,
            self.phase
        );
        ensure!(
            rec.generation == self.generation,
            "generation {}, model {}",
            rec.generation,
            self.generation
        );
        ensure!(
            rec.trips == self.trips,
            "trips {}, model {}",
            rec.trips,
            self.trips
        );
        ensure!(
            rec.changed_at_ns == self.changed_at,
            "changed_at {}, model {}",
            rec.changed_at_ns,
            self.changed_at
        );
        match &self.phase {
            Phase::Closed {
                failures,
                last_failure,
            } => {
                ensure!(
                    rec.consecutive_failures == *failures,
                    "failures {}, model {failures}",
                    rec.consecutive_failures
                );
                ensure!(
                    *failures == 0 || rec.last_failure_ns == *last_failure,
                    "last failure {}, model {last_failure}",
                    rec.last_failure_ns
                );
                ensure!(rec.probes.is_empty(), "probes {:?} in CLOSED", rec.probes);
            }
            Phase::Open { until } => {
                ensure!(
                    rec.open_until_ns == *until,
                    "open until {}, model {until}",
                    rec.open_until_ns
                );
                ensure!(rec.probes.is_empty(), "probes {:?} in OPEN", rec.probes);
            }
            Phase::HalfOpen { successes, leases } => {
                ensure!(
                    rec.half_open_successes == *successes,
                    "successes {}, model {successes}",
                    rec.half_open_successes
                );
                ensure!(
                    &rec.probes == leases,
                    "probes {:?}, model {leases:?}",
                    rec.probes
                );
            }
        }
        Ok(())
    }

    /// The next moments at which some rule changes its answer, to aim the clock at.
    fn deadlines(&self) -> Vec<u64> {
        match &self.phase {
            Phase::Closed {
                failures,
                last_failure,
            } if *failures > 0 => vec![last_failure.saturating_add(self.p.failure_reset_timeout)],
            Phase::Closed { .. } => vec![],
            Phase::Open { until } => vec![*until],
            Phase::HalfOpen { leases, .. } => leases.iter().copied().filter(|l| *l > 0).collect(),
        }
    }
}

// ---------------------------------------------------------------- the real breaker

/// Runs one real step through the store and checks what every step must satisfy.
fn real<T>(s: &MemoryStore, decide: impl FnMut(&Record) -> Step<T>) -> Result<Updated<T>, String> {
    let (before, _, _) = breaker::load(s, KEY).map_err(|e| format!("load: {e:?}"))?;
    let updated = breaker::update(s, KEY, decide).map_err(|e| format!("update: {e:?}"))?;
    let (after, _, corrupt) = breaker::load(s, KEY).map_err(|e| format!("load: {e:?}"))?;
    ensure!(!corrupt, "the store holds an unreadable value");
    ensure!(
        updated.current == after,
        "update returned {:?}, store holds {after:?}",
        updated.current
    );
    // Exactly one transition per state change, legal, with the generation bumped by one.
    match updated.step.transition {
        Some(t) => {
            ensure!(
                after.state == t.to(),
                "reported {t:?}, state is {:?}",
                after.state
            );
            ensure!(
                legal(before.state, after.state),
                "illegal {:?} -> {:?}",
                before.state,
                after.state
            );
            ensure!(
                after.generation == before.generation.wrapping_add(1),
                "generation {} -> {} across {t:?}",
                before.generation,
                after.generation
            );
        }
        None => {
            ensure!(
                after.state == before.state,
                "unreported change {:?} -> {:?}",
                before.state,
                after.state
            );
            ensure!(
                after.generation == before.generation,
                "generation moved without a transition"
            );
        }
    }
    Ok(updated)
}

// ---------------------------------------------------------------- the property

fn random_policy(rng: &mut StdRng) -> BreakerPolicy {
    BreakerPolicy {
        failure_threshold: rng.gen_range(1..=4),
        recovery_timeout: rng.gen_range(1..=50),
        half_open_success_threshold: rng.gen_range(1..=3),
        half_open_max_requests: rng.gen_range(1..=4),
        half_open_probe_timeout: rng.gen_range(1..=30),
        failure_reset_timeout: rng.gen_range(1..=60),
        ..Environment::Production.preset().circuit_breaker
    }
}

fn random_outcome(rng: &mut StdRng) -> Outcome {
    match rng.gen_range(0..100) {
        0..=44 => Outcome::Failure,
        45..=84 => Outcome::Success,
        _ => Outcome::Ignored,
    }
}

/// A ticket handed out by the real breaker, and whether it already reported once.
struct Held {
    ticket: Ticket,
    reported: bool,
}

impl Held {
    fn new(ticket: Ticket) -> Self {
        Self {
            ticket,
            reported: false,
        }
    }
}

#[derive(Default, Debug)]
struct Coverage {
    transitions: [u64; 3],
    probes: u64,
    late_probes: u64,
    stale: u64,
    rejections: u64,
}

fn run_sequence(rng: &mut StdRng, steps: usize, cov: &mut Coverage) -> Result<(), String> {
    let p = random_policy(rng);
    let s = MemoryStore::new();
    breaker::ensure(&s, KEY).map_err(|e| format!("{e:?}"))?;
    let mut model = Model::new(p.clone());
    // Mostly from 0; sometimes at the end of the clock, to exercise saturation.
    let mut now: u64 = if rng.gen_bool(0.05) {
        u64::MAX - rng.gen_range(0..200)
    } else {
        rng.gen_range(0..1000)
    };
    let mut tickets: Vec<Held> = Vec::new();
    let mut issued: HashSet<(u32, Option<(usize, u64)>)> = HashSet::new();
    let mut log: Vec<String> = Vec::new();

    for step in 0..steps {
        let context = |log: &[String]| {
            let tail = log.len().saturating_sub(40);
            format!("policy {p:?}\nlast steps:\n  {}", log[tail..].join("\n  "))
        };
        let mut seen: Option<Transition> = None;
        let roll = rng.gen_range(0..100);
        let what = match roll {
            // Advance the clock: a little, or onto / just before a deadline.
            0..=29 => {
                let deadlines = model.deadlines();
                let target = if !deadlines.is_empty() && rng.gen_bool(0.6) {
                    let d = deadlines[rng.gen_range(0..deadlines.len())];
                    d.saturating_sub(rng.gen_range(0..=1))
                } else {
                    now.saturating_add(rng.gen_range(0..=3))
                };
                now = now.max(target);
                format!("t = {now}")
            }
            30..=59 => {
                let expect = model.expect_admit(now);
                let updated = real(&s, |rec| breaker::admit(rec, &p, at(now)))
                    .map_err(|e| format!("step {step}: admit: {e}\n{}", context(&log)))?;
                let decision = updated.step.result;
                let transition = updated.step.transition;
                match (&expect, decision) {
                    (Expect::Pass { generation }, Decision::Allow(t)) => {
                        ensure!(
                            t.generation == *generation && t.probe.is_none() && transition.is_none(),
                            "step {step}: admit at {now}: {t:?}/{transition:?}, model {expect:?}\n{}",
                            context(&log)
                        );
                        tickets.push(Held::new(t));
                    }
                    (
                        Expect::Probe {
                            half_opens,
                            free,
                            lease,
                        },
                        Decision::Allow(t),
                    ) => {
                        let expected_transition = half_opens.then_some(Transition::HalfOpened);
                        let ok = match t.probe {
                            Some((slot, l)) => {
                                free.contains(&slot)
                                    && l == model.unique_lease(*lease, slot, *half_opens)
                            }
                            None => false,
                        } && transition == expected_transition
                            && t.generation
                                == model.generation.wrapping_add(u32::from(*half_opens));
                        ensure!(
                            ok,
                            "step {step}: admit at {now}: {t:?}/{transition:?}, model {expect:?}\n{}",
                            context(&log)
                        );
                        if let Some((slot, l)) = t.probe {
                            model.take(now, *half_opens, slot, l);
                        }
                        cov.probes += 1;
                        issued.insert((t.generation, t.probe));
                        tickets.push(Held::new(t));
                    }
                    (
                        Expect::Reject { state, retry_after },
                        Decision::Reject {
                            state: real_state,
                            retry_after_ns,
                        },
                    ) => {
                        ensure!(
                            *state == real_state && *retry_after == retry_after_ns && retry_after_ns > 0,
                            "step {step}: admit at {now}: rejected {real_state:?} retry {retry_after_ns}, model {expect:?}\n{}",
                            context(&log)
                        );
                        ensure!(transition.is_none(), "a rejection reported {transition:?}");
                        cov.rejections += 1;
                    }
                    _ => {
                        return Err(format!(
                            "step {step}: admit at {now}: {decision:?}, model {expect:?}\n{}",
                            context(&log)
                        ))
                    }
                }
                seen = transition;
                format!("admit @{now} -> {decision:?} {transition:?}")
            }
            60..=86 if !tickets.is_empty() => {
                let i = rng.gen_range(0..tickets.len());
                // A probe released at `now` and re-leased at the same `now` gets an identical
                // ticket; a repeated report of the first would then be the second's. The glue
                // reports each ticket once, so repeats are only made where they are unambiguous.
                let twin = tickets[i].reported
                    && tickets
                        .iter()
                        .any(|h| !h.reported && h.ticket == tickets[i].ticket);
                if twin {
                    tickets.swap_remove(i);
                    log.push("(a repeat that would be its twin's report: dropped)".into());
                    continue;
                }
                // Usually the ticket reports once; sometimes it stays to report again.
                let ticket = if rng.gen_bool(0.9) {
                    tickets.swap_remove(i).ticket
                } else {
                    tickets[i].reported = true;
                    tickets[i].ticket
                };
                let outcome = random_outcome(rng);
                if ticket.generation != model.generation {
                    cov.stale += 1;
                }
                if let Some((_, lease)) = ticket.probe {
                    if lease <= now {
                        cov.late_probes += 1;
                    }
                }
                let expected = model.record(now, ticket, outcome);
                let updated = real(&s, |rec| breaker::record(rec, &p, at(now), ticket, outcome))
                    .map_err(|e| format!("step {step}: record: {e}\n{}", context(&log)))?;
                ensure!(
                    updated.step.transition == expected,
                    "step {step}: record {ticket:?} {outcome:?} at {now}: {:?}, model {expected:?}\n{}",
                    updated.step.transition,
                    context(&log)
                );
                seen = expected;
                format!("record {ticket:?} {outcome:?} @{now} -> {expected:?}")
            }
            87..=94 => {
                let expected = model.tick(now);
                let updated = real(&s, |rec| breaker::tick(rec, &p, at(now)))
                    .map_err(|e| format!("step {step}: tick: {e}\n{}", context(&log)))?;
                ensure!(
                    updated.step.transition == expected,
                    "step {step}: tick at {now}: {:?}, model {expected:?}\n{}",
                    updated.step.transition,
                    context(&log)
                );
                seen = expected;
                format!("tick @{now} -> {expected:?}")
            }
            _ => {
                // A ticket nobody was given: any generation, any slot, a non-zero lease (a
                // real lease is never 0), and never one that was handed out.
                let mut ticket = Ticket {
                    generation: model
                        .generation
                        .wrapping_add(rng.gen_range(0..3))
                        .wrapping_sub(1),
                    probe: rng.gen_bool(0.5).then(|| {
                        (
                            rng.gen_range(0..5),
                            now.saturating_add(rng.gen_range(1..40)),
                        )
                    }),
                };
                if issued.contains(&(ticket.generation, ticket.probe)) {
                    ticket.probe = None;
                }
                let outcome = random_outcome(rng);
                let expected = model.record(now, ticket, outcome);
                let updated = real(&s, |rec| breaker::record(rec, &p, at(now), ticket, outcome))
                    .map_err(|e| format!("step {step}: forged record: {e}\n{}", context(&log)))?;
                ensure!(
                    updated.step.transition == expected,
                    "step {step}: forged {ticket:?} {outcome:?}: {:?}, model {expected:?}\n{}",
                    updated.step.transition,
                    context(&log)
                );
                seen = expected;
                format!("forged {ticket:?} {outcome:?} @{now} -> {expected:?}")
            }
        };
        log.push(what);
        match seen {
            Some(Transition::Opened) => cov.transitions[0] += 1,
            Some(Transition::HalfOpened) => cov.transitions[1] += 1,
            Some(Transition::Closed) => cov.transitions[2] += 1,
            None => {}
        }

        // The stored record is the model's, after every step.
        let (rec, _, _) = breaker::load(&s, KEY).map_err(|e| format!("{e:?}"))?;
        model.matches(&rec).map_err(|e| {
            format!(
                "step {step}: after {}: {e}\n{}",
                log[log.len() - 1],
                context(&log)
            )
        })?;
        // Probes holding live leases never exceed the slots.
        ensure!(
            rec.probes_in_flight(now) <= p.half_open_max_requests as usize,
            "step {step}: {} probes in flight, max {}",
            rec.probes_in_flight(now),
            p.half_open_max_requests
        );
        // Counted from the history, not from the record: probes of the current generation
        // that have not reported and whose lease is still live.
        let live = tickets
            .iter()
            .filter(|h| !h.reported && h.ticket.generation == rec.generation)
            .filter_map(|h| h.ticket.probe)
            .filter(|(_, lease)| *lease > now)
            .count();
        ensure!(
            live <= p.half_open_max_requests as usize,
            "step {step}: {live} outstanding live probes, max {}: {:?} in {:?}\n{}",
            p.half_open_max_requests,
            tickets
                .iter()
                .filter(|h| !h.reported && h.ticket.generation == rec.generation)
                .map(|h| h.ticket)
                .collect::<Vec<_>>(),
            rec.probes,
            context(&log)
        );
    }
    Ok(())
}

/// Runs `cases` random sequences of `steps` steps and checks the generator reached every
/// rule at least `min` times per thousand sequences (scaled by the length of a sequence).
fn check_model(name: &str, seed: u64, cases: u64, steps: usize) {
    let mut cov = Coverage::default();
    for_each_seed(name, seed, cases, |rng| run_sequence(rng, steps, &mut cov));
    println!("{name}: {cov:?}");
    if replaying() {
        return;
    }
    // The generator must actually reach every rule, or the property proves little. Floors
    // are about a third of what the fixed seeds reach.
    let per = |n: u64| n * cases * steps as u64 / (1000 * 200);
    let [opened, half_opened, closed] = cov.transitions;
    assert!(
        opened > per(1_500),
        "{name}: only {opened} Opened transitions"
    );
    assert!(
        half_opened > per(1_500),
        "{name}: only {half_opened} HalfOpened transitions"
    );
    assert!(
        closed > per(300),
        "{name}: only {closed} Closed transitions"
    );
    assert!(
        cov.probes > per(4_500),
        "{name}: only {} probes",
        cov.probes
    );
    assert!(
        cov.late_probes > per(2_000),
        "{name}: only {} late probe results",
        cov.late_probes
    );
    assert!(
        cov.stale > per(3_000),
        "{name}: only {} stale results",
        cov.stale
    );
    assert!(
        cov.rejections > per(5_000),
        "{name}: only {} rejections",
        cov.rejections
    );
}

#[test]
fn the_breaker_follows_its_reference_model_through_the_store() {
    check_model("breaker model", 0x5EED_0000, 2000, 150);
}

#[test]
fn the_breaker_follows_its_reference_model_over_long_histories() {
    check_model("breaker model, long histories", 0x5EED_1000, 400, 750);
}
