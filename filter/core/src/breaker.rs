//! The per-route circuit breaker: a [`Record`] kept in proxy shared data, and the pure steps that
//! decide on it. Every step takes the current record and returns the record to write (if any)
//! and the transition it made (if any); [`update`] applies it with compare-and-swap,
//! so the one worker whose write lands is the one that reports the transition.
//!
//! - CLOSED: `failure_threshold` consecutive failures open it; `failure_reset_timeout` without
//!   a failure resets the count (measured from the latest failure).
//! - OPEN: everything is rejected until `open_until`; then HALF_OPEN.
//! - HALF_OPEN: probes hold one of `half_open_max_requests` slots (a lease with a deadline, so a
//!   probe that never reports back cannot wedge the breaker); `half_open_success_threshold`
//!   successes close it, one failure opens it again.
//!
//! Outcomes carry the `generation` they were admitted under. Every transition bumps it, so a
//! request admitted before a transition cannot move the breaker after it.

use crate::config::BreakerPolicy;
use crate::le::Reader;
use crate::NANOS_PER_SEC;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The value of the `circuit_state` gauge.
    pub fn gauge(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Closed),
            1 => Some(Self::Open),
            2 => Some(Self::HalfOpen),
            _ => None,
        }
    }

    /// The stored layout's byte: its own mapping, so a change to the gauge's values cannot
    /// silently change what older records mean.
    fn byte(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// The moment of a step: monotonic nanoseconds (shared by all workers of one Envoy) for every
/// deadline, and the wall clock only to report when a transition happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    pub mono_ns: u64,
    pub unix_ms: u64,
}

/// One route's breaker, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    pub generation: u32,
    pub consecutive_failures: u32,
    pub half_open_successes: u32,
    /// Trips since the breaker last closed (1 on the first open).
    pub trips: u32,
    pub last_failure_ns: u64,
    pub open_until_ns: u64,
    pub changed_at_ns: u64,
    pub changed_at_unix_ms: u64,
    /// HALF_OPEN probe slots: the lease deadline of the probe holding each, 0 when free.
    pub probes: Vec<u64>,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            state: State::Closed,
            generation: 0,
            consecutive_failures: 0,
            half_open_successes: 0,
            trips: 0,
            last_failure_ns: 0,
            open_until_ns: 0,
            changed_at_ns: 0,
            changed_at_unix_ms: 0,
            probes: Vec::new(),
        }
    }
}

/// Layout version, first byte of every value. A value of another version is treated as absent.
pub const RECORD_VERSION: u8 = 1;
const HEADER_LEN: usize = 51;

impl Record {
    /// Fixed little-endian layout: version, state, five u32 counters... see `decode`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 8 * self.probes.len());
        out.push(RECORD_VERSION);
        out.push(self.state.byte());
        for n in [
            self.generation,
            self.consecutive_failures,
            self.half_open_successes,
            self.trips,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in [
            self.last_failure_ns,
            self.open_until_ns,
            self.changed_at_ns,
            self.changed_at_unix_ms,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.push(self.probes.len().min(u8::MAX as usize) as u8);
        for lease in self.probes.iter().take(u8::MAX as usize) {
            out.extend_from_slice(&lease.to_le_bytes());
        }
        out
    }

    /// Total: any bytes either decode to a record or give `None`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.u8()? != RECORD_VERSION {
            return None;
        }
        let state = State::from_byte(r.u8()?)?;
        let generation = r.u32()?;
        let consecutive_failures = r.u32()?;
        let half_open_successes = r.u32()?;
        let trips = r.u32()?;
        let last_failure_ns = r.u64()?;
        let open_until_ns = r.u64()?;
        let changed_at_ns = r.u64()?;
        let changed_at_unix_ms = r.u64()?;
        let count = r.u8()?;
        let probes = (0..count).map(|_| r.u64()).collect::<Option<Vec<_>>>()?;
        if !r.is_done() {
            return None;
        }
        Some(Self {
            state,
            generation,
            consecutive_failures,
            half_open_successes,
            trips,
            last_failure_ns,
            open_until_ns,
            changed_at_ns,
            changed_at_unix_ms,
            probes,
        })
    }

    fn transition(&self, state: State, now: Now) -> Self {
        Self {
            state,
            generation: self.generation.wrapping_add(1),
            half_open_successes: 0,
            changed_at_ns: now.mono_ns,
            changed_at_unix_ms: now.unix_ms,
            probes: Vec::new(),
            ..self.clone()
        }
    }

    fn open(&self, policy: &BreakerPolicy, now: Now) -> Self {
        let mut next = self.transition(State::Open, now);
        next.trips = self.trips.saturating_add(1);
        next.open_until_ns = now
            .mono_ns
            .saturating_add(recovery_timeout(policy, next.trips));
        next
    }

    fn half_open(&self, policy: &BreakerPolicy, now: Now) -> Self {
        let mut next = self.transition(State::HalfOpen, now);
        next.probes = vec![0; policy.half_open_max_requests as usize];
        next
    }

    fn close(&self, now: Now) -> Self {
        let mut next = self.transition(State::Closed, now);
        next.consecutive_failures = 0;
        next.trips = 0;
        next.open_until_ns = 0;
        next
    }

    /// Nanoseconds until an OPEN breaker lets probes through (0 when it already may).
    pub fn remaining_open_ns(&self, now_ns: u64) -> u64 {
        match self.state {
            State::Open => self.open_until_ns.saturating_sub(now_ns),
            _ => 0,
        }
    }

    /// Probes currently holding a live lease.
    pub fn probes_in_flight(&self, now_ns: u64) -> usize {
        self.probes.iter().filter(|lease| **lease > now_ns).count()
    }
}

/// How long the breaker stays open on its `trips`-th consecutive trip (1 on the first open):
/// `recovery_backoff` applied to `recovery_timeout` as the base delay, capped by
/// `max_recovery_timeout`. `fixed` gives `recovery_timeout` on every trip. (Configuration
/// ensures the cap is at least `recovery_timeout`; a policy built otherwise is never cut below
/// it either.)
pub fn recovery_timeout(policy: &BreakerPolicy, trips: u32) -> u64 {
    use crate::retry::backoff::{Backoff, DEFAULT_MULTIPLIER, DEFAULT_POLYNOMIAL_DEGREE};
    Backoff {
        strategy: policy.recovery_backoff,
        base_delay: policy.recovery_timeout,
        max_delay: policy.max_recovery_timeout.max(policy.recovery_timeout),
        multiplier: DEFAULT_MULTIPLIER,
        polynomial_degree: DEFAULT_POLYNOMIAL_DEGREE,
        jitter: 0.0,
        adaptive: false,
    }
    .delay(trips, 0.0, 1.0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

impl Transition {
    pub fn to(self) -> State {
        match self {
            Self::Opened => State::Open,
            Self::HalfOpened => State::HalfOpen,
            Self::Closed => State::Closed,
        }
    }
}

/// What a request was admitted as; handed back with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub generation: u32,
    /// `(slot, lease deadline)` when the request is a HALF_OPEN probe.
    pub probe: Option<(usize, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Ticket),
    Reject {
        state: State,
        /// When the caller may expect to be let through again.
        retry_after_ns: u64,
    },
}

/// A step's result: what to answer, what to write, which transition the write makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<T> {
    pub result: T,
    pub write: Option<Record>,
    pub transition: Option<Transition>,
}

impl<T> Step<T> {
    fn keep(result: T) -> Self {
        Self {
            result,
            write: None,
            transition: None,
        }
    }
    fn write(result: T, record: Record, transition: Option<Transition>) -> Self {
        Self {
            result,
            write: Some(record),
            transition,
        }
    }
}

/// Decides whether a request may go upstream.
pub fn admit(rec: &Record, policy: &BreakerPolicy, now: Now) -> Step<Decision> {
    match rec.state {
        State::Closed => Step::keep(Decision::Allow(Ticket {
            generation: rec.generation,
            probe: None,
        })),
        State::Open if now.mono_ns < rec.open_until_ns => Step::keep(Decision::Reject {
            state: State::Open,
            retry_after_ns: rec.open_until_ns - now.mono_ns,
        }),
        State::Open => {
            // Recovery time is up: this request both moves the breaker and takes the first slot.
            let mut next = rec.half_open(policy, now);
            match take_probe_slot(&mut next, policy, now) {
                Some(ticket) => {
                    Step::write(Decision::Allow(ticket), next, Some(Transition::HalfOpened))
                }
                None => Step::keep(reject_half_open(rec, now)),
            }
        }
        State::HalfOpen => {
            let mut next = rec.clone();
            match take_probe_slot(&mut next, policy, now) {
                Some(ticket) => Step::write(Decision::Allow(ticket), next, None),
                None => Step::keep(reject_half_open(rec, now)),
            }
        }
    }
}

fn take_probe_slot(rec: &mut Record, policy: &BreakerPolicy, now: Now) -> Option<Ticket> {
    // The slot count follows the policy in force (it may have been reconfigured).
    rec.probes.resize(policy.half_open_max_requests as usize, 0);
    let slot = rec.probes.iter().position(|lease| *lease <= now.mono_ns)?;
    // The lease is the deadline, made unique among the slots (and never 0, which means free),
    // so a probe's ticket can never be mistaken for another's that took the slot at the same
    // instant.
    let deadline = now
        .mono_ns
        .saturating_add(policy.half_open_probe_timeout)
        .max(1);
    let previous = rec.probes.get(slot).copied().unwrap_or(0);
    let lease = unique_lease(deadline, previous, &rec.probes)?;
    *rec.probes.get_mut(slot)? = lease;
    Some(Ticket {
        generation: rec.generation,
        probe: Some((slot, lease)),
    })
}

/// The first of `deadline`, `deadline + 1`, … (then `deadline - 1`, … where adding saturates)
/// that no slot holds, that differs from the slot's previous lease, and is not 0. Bounded:
/// among `2 × slots + 1` candidates at most `slots + 1` are taken.
pub fn unique_lease(deadline: u64, previous: u64, probes: &[u64]) -> Option<u64> {
    let n = probes.len() as u64;
    let up = (0..=n).map(|i| deadline.saturating_add(i));
    let down = (1..=n).map(|i| deadline.saturating_sub(i));
    up.chain(down)
        .find(|lease| *lease != 0 && *lease != previous && !probes.contains(lease))
}

fn reject_half_open(rec: &Record, now: Now) -> Decision {
    // The earliest a slot can free up for sure is when the oldest lease expires.
    let soonest = rec
        .probes
        .iter()
        .filter(|lease| **lease > now.mono_ns)
        .min()
        .map_or(0, |lease| lease - now.mono_ns);
    Decision::Reject {
        state: State::HalfOpen,
        retry_after_ns: soonest,
    }
}

/// The classified result of an admitted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Says nothing about the upstream (the client went away first, say). Frees a probe slot.
    Ignored,
}

/// Folds the outcome of a request admitted with `ticket` into the record.
pub fn record(
    rec: &Record,
    policy: &BreakerPolicy,
    now: Now,
    ticket: Ticket,
    outcome: Outcome,
) -> Step<()> {
    if rec.generation != ticket.generation {
        return Step::keep(());
    }
    match (rec.state, ticket.probe) {
        (State::Closed, _) => match outcome {
            Outcome::Failure => {
                let mut next = rec.clone();
                let expired = rec.consecutive_failures > 0
                    && now.mono_ns.saturating_sub(rec.last_failure_ns)
                        >= policy.failure_reset_timeout;
                let before = if expired { 0 } else { rec.consecutive_failures };
                next.consecutive_failures = before.saturating_add(1);
                next.last_failure_ns = now.mono_ns;
                if next.consecutive_failures >= policy.failure_threshold {
                    let opened = next.open(policy, now);
                    Step::write((), opened, Some(Transition::Opened))
                } else {
                    Step::write((), next, None)
                }
            }
            Outcome::Success if rec.consecutive_failures > 0 => {
                let mut next = rec.clone();
                next.consecutive_failures = 0;
                Step::write((), next, None)
            }
            Outcome::Success | Outcome::Ignored => Step::keep(()),
        },
        (State::HalfOpen, Some((slot, lease))) => {
            if rec.probes.get(slot) != Some(&lease) {
                // The lease expired and the slot went to another probe: this result is late.
                return Step::keep(());
            }
            match outcome {
                Outcome::Failure => {
                    let mut failed = rec.clone();
                    failed.last_failure_ns = now.mono_ns;
                    Step::write((), failed.open(policy, now), Some(Transition::Opened))
                }
                Outcome::Success => {
                    let mut next = rec.clone();
                    release(&mut next, slot);
                    next.half_open_successes = next.half_open_successes.saturating_add(1);
                    if next.half_open_successes >= policy.half_open_success_threshold {
                        Step::write((), next.close(now), Some(Transition::Closed))
                    } else {
                        Step::write((), next, None)
                    }
                }
                Outcome::Ignored => {
                    let mut next = rec.clone();
                    release(&mut next, slot);
                    Step::write((), next, None)
                }
            }
        }
        // OPEN, or HALF_OPEN with a ticket that is not a probe: nothing to learn.
        _ => Step::keep(()),
    }
}

fn release(rec: &mut Record, slot: usize) {
    if let Some(lease) = rec.probes.get_mut(slot) {
        *lease = 0;
    }
}

/// Time-driven housekeeping, run from the tick of every worker (idempotent): an OPEN breaker
/// whose time is up becomes HALF_OPEN even when no request arrives, and a failure count older
/// than `failure_reset_timeout` is cleared, so stats and health tell the truth.
pub fn tick(rec: &Record, policy: &BreakerPolicy, now: Now) -> Step<()> {
    match rec.state {
        State::Open if now.mono_ns >= rec.open_until_ns => {
            Step::write((), rec.half_open(policy, now), Some(Transition::HalfOpened))
        }
        State::Closed
            if rec.consecutive_failures > 0
                && now.mono_ns.saturating_sub(rec.last_failure_ns)
                    >= policy.failure_reset_timeout =>
        {
            let mut next = rec.clone();
            next.consecutive_failures = 0;
            Step::write((), next, None)
        }
        _ => Step::keep(()),
    }
}

/// Whole seconds for `retry-after`, rounded up and at least 1 (0 would invite a hot loop).
pub fn retry_after_secs(ns: u64) -> u64 {
    ns.div_ceil(NANOS_PER_SEC).max(1)
}

/// Whether [`record`] would write nothing for this outcome, judged from a worker's last view
/// of the record instead of a shared-data read: a success, not a probe, admitted under the
/// view's generation while the view is CLOSED with no failure streak to reset. The common case
/// of every healthy request, so it must cost no shared-data read.
pub fn record_is_noop(view: Option<&Record>, ticket: Ticket, outcome: Outcome) -> bool {
    outcome == Outcome::Success
        && ticket.probe.is_none()
        && view.is_some_and(|view| {
            view.state == State::Closed
                && view.generation == ticket.generation
                && view.consecutive_failures == 0
        })
}

/// Admission from a worker's last view, without reading shared data, when nothing can have
/// changed since: the view is CLOSED and `circuit_opened_total` (an Envoy counter that every
/// worker opening the breaker increments right after its write lands) still reads what it read
/// before the view was taken (`opened_as_of_view`). `None`: read the record.
pub fn admit_cached(
    view: Option<&Record>,
    opened_as_of_view: Option<u64>,
    opened_now: Option<u64>,
) -> Option<Ticket> {
    let opened_now = opened_now?;
    if opened_as_of_view != Some(opened_now) {
        return None;
    }
    let view = view.filter(|v| v.state == State::Closed)?;
    Some(Ticket {
        generation: view.generation,
        probe: None,
    })
}

// --- Shared data: the record's codec and its read-modify-write -------------------------------

use crate::store::{self, Codec, SharedStore, UpdateError};

impl Codec for Record {
    fn encode(&self) -> Vec<u8> {
        Record::encode(self)
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Record::decode(bytes)
    }
}

/// The result of a successful [`update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated<T> {
    pub step: Step<T>,
    /// The record as it now stands (what was written, or what was read).
    pub current: Record,
    /// The stored value did not decode and was treated as fresh.
    pub was_corrupt: bool,
}

/// Reads the breaker record at `key`, lets `decide` compute a step, and writes the step's
/// record with CAS; on a lost race, reads again and re-decides. Only a write that lands reports
/// its transition, so each transition has exactly one author.
pub fn update<S: SharedStore + ?Sized, T>(
    shared: &S,
    key: &str,
    mut decide: impl FnMut(&Record) -> Step<T>,
) -> Result<Updated<T>, UpdateError> {
    let mut step = None;
    let (current, was_corrupt) = store::update_value(shared, key, |current: &Record| {
        let decided = decide(current);
        let write = decided.write.clone();
        step = Some(decided);
        write
    })?;
    match step {
        Some(step) => Ok(Updated {
            step,
            current,
            was_corrupt,
        }),
        None => Err(UpdateError::Exhausted),
    }
}

/// The breaker record at `key`: see [`store::load_value`].
pub fn load<S: SharedStore + ?Sized>(
    shared: &S,
    key: &str,
) -> Result<(Record, u32, bool), UpdateError> {
    store::load_value(shared, key)
}

/// Creates `key` with a fresh record unless it already holds one: see [`store::ensure_value`].
pub fn ensure<S: SharedStore + ?Sized>(shared: &S, key: &str) -> Result<bool, UpdateError> {
    store::ensure_value::<S, Record>(shared, key)
}

/// Forgets the breaker's history: a CLOSED record with no failure streak and no probes, under a
/// new generation (so requests admitted before cannot move it). For a breaker the
/// configuration no longer enables, and for a bucket nobody has used for `bucket_idle_timeout`.
/// Writes nothing when the record is already fresh.
pub fn reset(rec: &Record, now: Now) -> Step<()> {
    let fresh = rec.state == State::Closed && rec.consecutive_failures == 0 && rec.trips == 0;
    if fresh {
        return Step::keep(());
    }
    let transition = (rec.state != State::Closed).then_some(Transition::Closed);
    let mut next = rec.close(now);
    next.probes.clear();
    next.half_open_successes = 0;
    Step::write((), next, transition)
}

/// Rejection from a worker's last view, without reading shared data, while that view is OPEN
/// and its open period has not run out: before `open_until` nothing but time moves an OPEN
/// breaker (a reset by configuration or age is the rare exception, seen at the next read). The
/// path of every rejected request, so it must not copy the record into the VM.
pub fn reject_cached(view: Option<&Record>, now_ns: u64) -> Option<Decision> {
    let view = view.filter(|v| v.state == State::Open && now_ns < v.open_until_ns)?;
    Some(Decision::Reject {
        state: State::Open,
        retry_after_ns: view.open_until_ns - now_ns,
    })
}
