//! Helpers shared by the integration tests of the core crate: policies, clocks, a single-worker
//! breaker driver that checks every step it applies, and seeded randomness that names its seed
//! when a property fails.

#![allow(dead_code)]

use marty_resilience_core::breaker::{
    self, Decision, Now, Outcome, Record, State, Step, Ticket, Transition,
};
use marty_resilience_core::config::{BreakerPolicy, Environment};
use marty_resilience_core::NANOS_PER_SEC;
use rand::rngs::StdRng;
use rand::SeedableRng;

pub const S: u64 = NANOS_PER_SEC;
pub const MS: u64 = NANOS_PER_SEC / 1000;

/// A moment: monotonic nanoseconds, with a wall clock that is visibly derived from it.
pub fn at(mono_ns: u64) -> Now {
    Now {
        mono_ns,
        unix_ms: 1_700_000_000_000 + mono_ns / MS,
    }
}

/// The production preset with small, distinct numbers that make each rule visible:
/// 3 failures open, 10 s open, 2 probe successes close, 2 probe slots, 5 s leases, 60 s reset.
pub fn policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_threshold: 3,
        recovery_timeout: 10 * S,
        half_open_success_threshold: 2,
        half_open_max_requests: 2,
        half_open_probe_timeout: 5 * S,
        failure_reset_timeout: 60 * S,
        ..Environment::Production.preset().circuit_breaker
    }
}

/// Checks what every step must satisfy, then returns its parts: a transition implies a write
/// into the transition's state with the generation bumped by one, and a write without a
/// transition keeps the state and the generation.
pub fn checked<T>(before: &Record, step: Step<T>) -> (T, Option<Record>, Option<Transition>) {
    match (&step.write, step.transition) {
        (Some(next), Some(t)) => {
            assert_eq!(
                next.state,
                t.to(),
                "transition {t:?} wrote state {:?}",
                next.state
            );
            assert_ne!(
                before.state, next.state,
                "transition {t:?} did not change the state"
            );
            assert_eq!(
                next.generation,
                before.generation.wrapping_add(1),
                "a transition bumps the generation by one"
            );
            assert!(
                legal(before.state, next.state),
                "illegal transition {:?} -> {:?}",
                before.state,
                next.state
            );
        }
        (Some(next), None) => {
            assert_eq!(
                next.state, before.state,
                "a state change without a transition"
            );
            assert_eq!(
                next.generation, before.generation,
                "generation moved silently"
            );
        }
        (None, Some(t)) => panic!("transition {t:?} reported without a write"),
        (None, None) => {}
    }
    (step.result, step.write, step.transition)
}

/// The only transitions a breaker makes.
pub fn legal(from: State, to: State) -> bool {
    matches!(
        (from, to),
        (State::Closed, State::Open)
            | (State::Open, State::HalfOpen)
            | (State::HalfOpen, State::Closed)
            | (State::HalfOpen, State::Open)
    )
}

/// One breaker driven by one worker: applies each step's write, checking it with [`checked`].
pub struct Breaker {
    pub rec: Record,
    pub policy: BreakerPolicy,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            rec: Record::default(),
            policy,
        }
    }

    fn apply<T>(&mut self, step: Step<T>) -> (T, Option<Transition>, bool) {
        let (result, write, transition) = checked(&self.rec, step);
        let wrote = write.is_some();
        if let Some(next) = write {
            self.rec = next;
        }
        (result, transition, wrote)
    }

    /// Admits at `t`; returns the decision and the transition it made.
    pub fn admit(&mut self, t: u64) -> (Decision, Option<Transition>) {
        let step = breaker::admit(&self.rec, &self.policy, at(t));
        let (d, tr, _) = self.apply(step);
        (d, tr)
    }

    /// Admits at `t` and expects a ticket.
    pub fn allow(&mut self, t: u64) -> Ticket {
        match self.admit(t).0 {
            Decision::Allow(ticket) => ticket,
            other => panic!("expected the request at {t} to be allowed, got {other:?}"),
        }
    }

    /// Admits at `t` and expects a rejection; returns `(state, retry_after_ns)`.
    pub fn reject(&mut self, t: u64) -> (State, u64) {
        match self.admit(t).0 {
            Decision::Reject {
                state,
                retry_after_ns,
            } => (state, retry_after_ns),
            other => panic!("expected the request at {t} to be rejected, got {other:?}"),
        }
    }

    /// Records `outcome` for `ticket` at `t`; returns the transition and whether it wrote.
    pub fn record(
        &mut self,
        t: u64,
        ticket: Ticket,
        outcome: Outcome,
    ) -> (Option<Transition>, bool) {
        let step = breaker::record(&self.rec, &self.policy, at(t), ticket, outcome);
        let ((), tr, wrote) = self.apply(step);
        (tr, wrote)
    }

    /// A request admitted and answered at `t`.
    pub fn request(&mut self, t: u64, outcome: Outcome) -> Option<Transition> {
        let ticket = self.allow(t);
        self.record(t, ticket, outcome).0
    }

    pub fn tick(&mut self, t: u64) -> (Option<Transition>, bool) {
        let step = breaker::tick(&self.rec, &self.policy, at(t));
        let ((), tr, wrote) = self.apply(step);
        (tr, wrote)
    }
}

/// The seed of a randomized test: `MARTY_TEST_SEED` when set (to replay a failure), else a
/// fixed value so CI is deterministic.
pub fn base_seed(default: u64) -> u64 {
    std::env::var("MARTY_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// A single seed is being replayed (`MARTY_TEST_SEED` is set): aggregate checks are off.
pub fn replaying() -> bool {
    std::env::var("MARTY_TEST_SEED").is_ok()
}

/// Runs `case` for `cases` consecutive seeds from `base_seed(default)`; a failing case panics
/// with its seed and the way to replay it alone.
pub fn for_each_seed(
    name: &str,
    default: u64,
    cases: u64,
    mut case: impl FnMut(&mut StdRng) -> Result<(), String>,
) {
    let base = base_seed(default);
    let cases = if replaying() { 1 } else { cases };
    for i in 0..cases {
        let seed = base.wrapping_add(i);
        let mut rng = StdRng::seed_from_u64(seed);
        if let Err(message) = case(&mut rng) {
            panic!(
                "{name}: case with seed {seed} failed (replay: MARTY_TEST_SEED={seed}): {message}"
            );
        }
    }
}

/// `ensure!(cond, "fmt", args)`: returns `Err(message)` from a property case.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}
