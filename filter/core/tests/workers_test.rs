//! Real threads sharing one store, as Envoy workers share proxy shared data: each simulates
//! requests (admit, outcome, record) and housekeeping ticks through `breaker::update` on one key,
//! with a shared logical clock, through failure storms and quiet spells.
//!
//! A logging store serializes every write that lands, with the operation that made it and the
//! record it replaced. From that log the test checks:
//! - every landed write was decided on the very record it replaced (no lost update), and
//!   replaying the operation on that record gives exactly what was written;
//! - the transitions the workers reported are exactly the state changes in the log, kind by
//!   kind, and their number is the final generation;
//! - failures recorded in CLOSED by the workers add up to the increments the record saw;
//! - at no grant did a HALF_OPEN generation have more live probes than its slots;
//! - lost CAS races and exhausted updates are counted (exhaustion may be 0).
//!
//! No sleeps: the only pauses are `yield_now` between a read and its write, to widen races.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;

use common::{at, base_seed, legal};
use marty_resilience_core::breaker::{
    self, Decision, Outcome, Record, State, Step, Ticket, Transition,
};
use marty_resilience_core::config::{BreakerPolicy, Environment};
use marty_resilience_core::store::{MemoryStore, SharedStore, StoreError, UpdateError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEY: &str = "marty.resilience/v1/cb/storm";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Admit {
        now: u64,
    },
    Record {
        now: u64,
        ticket: Ticket,
        outcome: Outcome,
    },
    Tick {
        now: u64,
    },
}

/// One write that landed, in store order.
#[derive(Clone, Debug)]
struct Entry {
    worker: usize,
    op: Op,
    before: Record,
    after: Record,
}

thread_local! {
    /// The operation this thread is running, read by the store when a write lands.
    static CURRENT: Cell<Option<(usize, Op)>> = const { Cell::new(None) };
    /// A cheap per-thread generator for the store's yields.
    static JITTER: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// A `MemoryStore` that logs every landed write under one lock (so the log is the store's
/// order) and sometimes yields between a read and the write that follows it.
struct LoggingStore {
    inner: MemoryStore,
    log: Mutex<Vec<Entry>>,
    /// Yield after a read once in this many reads (0: never).
    yield_one_in: u64,
    mismatches: AtomicU64,
}

impl SharedStore for LoggingStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let got = self.inner.get(key);
        if self.yield_one_in > 0 {
            let roll = JITTER.with(|j| {
                let mut x = j.get();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                j.set(x);
                x
            });
            if roll % self.yield_one_in == 0 {
                thread::yield_now();
            }
        }
        got
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let before = match self.inner.get(key)? {
            Some((bytes, _)) => Record::decode(&bytes).expect("the store holds a record"),
            None => Record::default(),
        };
        let result = self.inner.set(key, value, cas);
        match result {
            Ok(()) => {
                let (worker, op) = CURRENT.with(Cell::get).expect("writes come from workers");
                let after = Record::decode(value).expect("workers write records");
                log.push(Entry {
                    worker,
                    op,
                    before,
                    after,
                });
            }
            Err(StoreError::CasMismatch) => {
                self.mismatches.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }
}

/// What one worker saw.
#[derive(Default, Debug)]
struct Report {
    /// Each write of this worker that landed: the operation, the record it was decided on,
    /// the record written.
    landed: Vec<(Op, Record, Record)>,
    opened: u64,
    half_opened: u64,
    closed: u64,
    /// Failures this worker recorded that landed in CLOSED, in the generation they were
    /// admitted under.
    closed_failures: u64,
    exhausted: u64,
    requests: u64,
    rejected: u64,
    probes: u64,
    hung: u64,
}

struct Scenario {
    name: &'static str,
    workers: usize,
    requests: u64,
    policy: BreakerPolicy,
    /// Clock units of each alternating storm / quiet spell.
    spell: u64,
    yield_one_in: u64,
}

/// Runs `op` through `breaker::update`, noting what landed and which transition it reported.
fn step<T>(
    s: &LoggingStore,
    worker: usize,
    op: Op,
    report: &mut Report,
    mut decide: impl FnMut(&Record) -> Step<T>,
) -> Option<(T, Record, bool)> {
    CURRENT.with(|c| c.set(Some((worker, op))));
    let mut base = Record::default();
    let result = breaker::update(s, KEY, |rec| {
        base = rec.clone();
        decide(rec)
    });
    CURRENT.with(|c| c.set(None));
    match result {
        Ok(updated) => {
            let wrote = updated.step.write.is_some();
            if let Some(written) = &updated.step.write {
                report.landed.push((op, base.clone(), written.clone()));
            }
            match updated.step.transition {
                Some(Transition::Opened) => report.opened += 1,
                Some(Transition::HalfOpened) => report.half_opened += 1,
                Some(Transition::Closed) => report.closed += 1,
                None => {}
            }
            Some((updated.step.result, base, wrote))
        }
        Err(UpdateError::Exhausted) => {
            report.exhausted += 1;
            None
        }
        Err(e) => panic!("worker {worker}: host error {e:?} from a memory store"),
    }
}

fn worker(id: usize, seed: u64, sc: &Scenario, s: &LoggingStore, clock: &AtomicU64) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let p = &sc.policy;
    let mut report = Report::default();
    let tick = |rng: &mut StdRng| clock.fetch_add(rng.gen_range(0..=2), Ordering::SeqCst);
    for i in 0..sc.requests {
        if i % 16 == (id as u64) % 16 {
            let now = tick(&mut rng);
            step(s, id, Op::Tick { now }, &mut report, |rec| {
                breaker::tick(rec, p, at(now))
            });
        }
        report.requests += 1;
        let now = tick(&mut rng);
        let Some((decision, _, _)) = step(s, id, Op::Admit { now }, &mut report, |rec| {
            breaker::admit(rec, p, at(now))
        }) else {
            continue; // Exhausted: let through untracked, as the glue does.
        };
        let ticket = match decision {
            Decision::Allow(ticket) => ticket,
            Decision::Reject { .. } => {
                report.rejected += 1;
                continue;
            }
        };
        if ticket.probe.is_some() {
            report.probes += 1;
            // Some probes never report: their lease must free the slot.
            if rng.gen_bool(0.05) {
                report.hung += 1;
                continue;
            }
        }
        let storm = (now / sc.spell) % 2 == 0;
        let outcome = match rng.gen_range(0..100) {
            0..=4 => Outcome::Ignored,
            n if n < if storm { 85 } else { 10 } => Outcome::Failure,
            _ => Outcome::Success,
        };
        // The request takes a while.
        let now = tick(&mut rng) + rng.gen_range(0..3);
        let op = Op::Record {
            now,
            ticket,
            outcome,
        };
        if let Some(((), base, wrote)) = step(s, id, op, &mut report, |rec| {
            breaker::record(rec, p, at(now), ticket, outcome)
        }) {
            if wrote
                && outcome == Outcome::Failure
                && base.state == State::Closed
                && base.generation == ticket.generation
            {
                report.closed_failures += 1;
            }
        }
    }
    report
}

fn replay(op: Op, p: &BreakerPolicy, rec: &Record) -> (Option<Record>, Option<Transition>) {
    match op {
        Op::Admit { now } => {
            let s = breaker::admit(rec, p, at(now));
            (s.write, s.transition)
        }
        Op::Record {
            now,
            ticket,
            outcome,
        } => {
            let s = breaker::record(rec, p, at(now), ticket, outcome);
            (s.write, s.transition)
        }
        Op::Tick { now } => {
            let s = breaker::tick(rec, p, at(now));
            (s.write, s.transition)
        }
    }
}

fn run(sc: &Scenario, seed: u64) {
    let s = LoggingStore {
        inner: MemoryStore::new(),
        log: Mutex::new(Vec::new()),
        yield_one_in: sc.yield_one_in,
        mismatches: AtomicU64::new(0),
    };
    // Created before traffic, as the filter does at configure time.
    breaker::ensure(&s.inner, KEY).unwrap();
    let clock = AtomicU64::new(1);
    let reports: Vec<Report> = thread::scope(|scope| {
        let handles: Vec<_> = (0..sc.workers)
            .map(|id| {
                let (s, clock) = (&s, &clock);
                let worker_seed = seed.wrapping_mul(31).wrapping_add(id as u64);
                scope.spawn(move || worker(id, worker_seed, sc, s, clock))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let log = s.log.into_inner().unwrap();
    let (last, _, _) = breaker::load(&s.inner, KEY).unwrap();
    // The seed fixes each worker's choices; the interleaving is the scheduler's.
    let ctx = format!("{} (seed {seed}: MARTY_TEST_SEED={seed})", sc.name);
    let p = &sc.policy;

    // 1. The log is a chain: each write replaced the previous one.
    let mut prev = Record::default();
    for (i, e) in log.iter().enumerate() {
        assert_eq!(
            e.before,
            prev,
            "{ctx}: write {i} did not replace write {}",
            i.wrapping_sub(1)
        );
        prev = e.after.clone();
    }
    assert_eq!(
        prev, last,
        "{ctx}: the store holds something the log does not end with"
    );

    // 2. No lost update: each worker's landed writes are its entries in the log, in order, and
    //    each was decided on the record it actually replaced. Replaying it gives the same.
    let mut by_worker: HashMap<usize, Vec<&Entry>> = HashMap::new();
    for e in &log {
        by_worker.entry(e.worker).or_default().push(e);
    }
    for (id, r) in reports.iter().enumerate() {
        let entries = by_worker.remove(&id).unwrap_or_default();
        assert_eq!(
            entries.len(),
            r.landed.len(),
            "{ctx}: worker {id} landed {} writes, the log has {}",
            r.landed.len(),
            entries.len()
        );
        for (k, (e, (op, base, written))) in entries.iter().zip(&r.landed).enumerate() {
            assert_eq!(e.op, *op, "{ctx}: worker {id} write {k}: op");
            assert_eq!(&e.after, written, "{ctx}: worker {id} write {k}: value");
            assert_eq!(
                &e.before, base,
                "{ctx}: worker {id} write {k} ({op:?}) was decided on a record it did not replace"
            );
        }
    }
    for (i, e) in log.iter().enumerate() {
        let (write, _) = replay(e.op, p, &e.before);
        assert_eq!(
            write.as_ref(),
            Some(&e.after),
            "{ctx}: write {i} ({:?}) does not replay",
            e.op
        );
    }

    // 3. Reported transitions are exactly the log's state changes, and the final generation.
    let mut changes: BTreeMap<(u8, u8), u64> = BTreeMap::new();
    for (i, e) in log.iter().enumerate() {
        if e.before.state != e.after.state {
            assert!(
                legal(e.before.state, e.after.state),
                "{ctx}: write {i}: illegal {:?} -> {:?}",
                e.before.state,
                e.after.state
            );
            assert_eq!(e.after.generation, e.before.generation.wrapping_add(1));
            *changes
                .entry((e.before.state.gauge() as u8, e.after.state.gauge() as u8))
                .or_default() += 1;
        } else {
            assert_eq!(e.after.generation, e.before.generation, "{ctx}: write {i}");
        }
    }
    let count = |from: State, to: State| {
        changes
            .get(&(from.gauge() as u8, to.gauge() as u8))
            .copied()
            .unwrap_or(0)
    };
    let opened: u64 = reports.iter().map(|r| r.opened).sum();
    let half_opened: u64 = reports.iter().map(|r| r.half_opened).sum();
    let closed: u64 = reports.iter().map(|r| r.closed).sum();
    assert_eq!(
        opened,
        count(State::Closed, State::Open) + count(State::HalfOpen, State::Open),
        "{ctx}: Opened"
    );
    assert_eq!(
        half_opened,
        count(State::Open, State::HalfOpen),
        "{ctx}: HalfOpened"
    );
    assert_eq!(
        closed,
        count(State::HalfOpen, State::Closed),
        "{ctx}: Closed"
    );
    assert_eq!(
        u64::from(last.generation),
        opened + half_opened + closed,
        "{ctx}: the generation counts every transition once"
    );

    // 4. Failures counted in CLOSED add up to what the record saw: each one that landed moved
    //    the streak of the record it replaced up by one (from zero if that streak had
    //    expired), or opened the breaker.
    let mut increments = 0u64;
    for e in &log {
        let Op::Record {
            now,
            ticket,
            outcome: Outcome::Failure,
        } = e.op
        else {
            continue;
        };
        if e.before.state != State::Closed || e.before.generation != ticket.generation {
            continue;
        }
        let expired = e.before.consecutive_failures > 0
            && now.saturating_sub(e.before.last_failure_ns) >= p.failure_reset_timeout;
        let streak = if expired {
            0
        } else {
            e.before.consecutive_failures
        };
        if e.after.state == State::Open || e.after.consecutive_failures == streak + 1 {
            increments += 1;
        }
    }
    let counted: u64 = reports.iter().map(|r| r.closed_failures).sum();
    assert_eq!(
        counted, increments,
        "{ctx}: CLOSED failures counted vs seen by the record"
    );

    // 5. Live probes per HALF_OPEN generation, from grants and releases in the log (not from
    //    the slot vector): at each grant, the unreleased probes whose lease is still live
    //    fit in the slots and hold distinct slots.
    let mut outstanding: Vec<(usize, u64)> = Vec::new();
    let mut generation = u32::MAX;
    let mut grants_per_generation: Vec<u64> = Vec::new();
    let mut most_live = 0;
    for e in &log {
        if e.after.state != State::HalfOpen || e.after.generation != generation {
            outstanding.clear();
            generation = e.after.generation;
            if e.after.state == State::HalfOpen {
                grants_per_generation.push(0);
            }
        }
        match e.op {
            Op::Admit { now } if e.after.state == State::HalfOpen => {
                let old = |i: usize| {
                    if e.before.state == State::HalfOpen {
                        e.before.probes.get(i).copied().unwrap_or(0)
                    } else {
                        0
                    }
                };
                let granted: Vec<(usize, u64)> = e
                    .after
                    .probes
                    .iter()
                    .enumerate()
                    .filter(|(i, lease)| **lease != old(*i))
                    .map(|(i, lease)| (i, *lease))
                    .collect();
                assert_eq!(granted.len(), 1, "{ctx}: an admission granted {granted:?}");
                outstanding.retain(|(_, lease)| *lease > now);
                outstanding.push(granted[0]);
                if let Some(n) = grants_per_generation.last_mut() {
                    *n += 1;
                }
                let live = outstanding.len();
                most_live = most_live.max(live);
                assert!(
                    live <= p.half_open_max_requests as usize,
                    "{ctx}: {live} live probes in generation {generation}: {outstanding:?}"
                );
                let mut slots: Vec<usize> = outstanding.iter().map(|(s, _)| *s).collect();
                slots.sort_unstable();
                slots.dedup();
                assert_eq!(slots.len(), live, "{ctx}: two live probes share a slot");
            }
            Op::Record {
                ticket: Ticket {
                    probe: Some(probe), ..
                },
                ..
            } => outstanding.retain(|held| *held != probe),
            _ => {}
        }
    }

    // 6. Every lost race was retried or counted: nothing else is expected of exhaustion.
    let exhausted: u64 = reports.iter().map(|r| r.exhausted).sum();
    let requests: u64 = reports.iter().map(|r| r.requests).sum();
    let rejected: u64 = reports.iter().map(|r| r.rejected).sum();
    let probes: u64 = reports.iter().map(|r| r.probes).sum();
    let hung: u64 = reports.iter().map(|r| r.hung).sum();
    let most_grants = grants_per_generation.iter().max().copied().unwrap_or(0);
    println!(
        "{}: {} writes, {requests} requests, {rejected} rejected, {probes} probes ({hung} hung), \
         transitions: {opened} opened / {half_opened} half-opened / {closed} closed, \
         {} CAS mismatches, {exhausted} exhausted updates, at most {most_live} live probes and \
         {most_grants} grants in one HALF_OPEN generation",
        sc.name,
        log.len(),
        s.mismatches.load(Ordering::Relaxed),
    );
    // The scenario must actually cycle the breaker, or the checks above prove little.
    assert!(opened >= 200, "{ctx}: only {opened} openings");
    assert!(
        half_opened >= 200,
        "{ctx}: only {half_opened} half-openings"
    );
    assert!(closed >= 15, "{ctx}: only {closed} closings");
    assert!(probes >= 300, "{ctx}: only {probes} probes");
}

fn storm_policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_threshold: 5,
        recovery_timeout: 100,
        half_open_success_threshold: 2,
        half_open_max_requests: 3,
        half_open_probe_timeout: 60,
        // Long enough that only successes end a streak, short enough to matter in spells.
        failure_reset_timeout: 1_000,
        ..Environment::Production.preset().circuit_breaker
    }
}

#[test]
// wasm32-wasip1 has no threads (spawning fails): these run natively only.
#[cfg_attr(target_family = "wasm", ignore = "needs threads")]
fn workers_hammering_one_breaker_lose_no_update_and_report_each_transition_once() {
    let seed = base_seed(0x57_0A11);
    run(
        &Scenario {
            name: "six workers, yielding between read and write",
            workers: 6,
            requests: 15_000,
            policy: storm_policy(),
            spell: 1_500,
            yield_one_in: 2,
        },
        seed,
    );
}

#[test]
// wasm32-wasip1 has no threads (spawning fails): these run natively only.
#[cfg_attr(target_family = "wasm", ignore = "needs threads")]
fn eight_workers_with_one_probe_slot_and_short_streaks() {
    let seed = base_seed(0x57_0A12);
    run(
        &Scenario {
            name: "eight workers, one probe slot",
            workers: 8,
            requests: 8_000,
            policy: BreakerPolicy {
                failure_threshold: 3,
                recovery_timeout: 60,
                half_open_success_threshold: 1,
                half_open_max_requests: 1,
                half_open_probe_timeout: 20,
                failure_reset_timeout: 15,
                ..Environment::Production.preset().circuit_breaker
            },
            spell: 1_000,
            yield_one_in: 1,
        },
        seed,
    );
}
