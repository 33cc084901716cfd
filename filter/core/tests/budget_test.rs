//! `retry::budget`: the time-bucketed window at its exact boundaries, lazy rotation, the
//! `min_retries_per_second` floor and the ratio, the failure ratio, the codec (round trip, and
//! total on any bytes), `flush` keeping counts it could not write, and four threads flushing
//! through `MemoryStore` without losing a count.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use common::{for_each_seed, MS, S};
use marty_resilience_core::retry::budget::{
    self, add, allows_retry, failure_ratio, flush, slot_width, totals, Pending, Policy, Record,
    Slot, Snapshot, RECORD_LEN, RECORD_VERSION, SLOTS,
};
use marty_resilience_core::store::{
    MemoryStore, SharedStore, StoreError, UpdateError, MAX_CAS_ATTEMPTS,
};
use rand::Rng;

const WINDOW: u64 = 10 * S;
const KEY: &str = "marty_resilience/v1/budget/users";

fn policy(ratio: f64, min_retries_per_second: u32) -> Policy {
    Policy {
        window_ns: WINDOW,
        ratio,
        min_retries_per_second,
    }
}

/// A record with `(requests, retries, failures)` added at each `(time, counts)`.
fn built(events: &[(u64, (u32, u32, u32))]) -> Record {
    events
        .iter()
        .fold(Record::default(), |rec, (t, (q, r, f))| {
            add(&rec, *t, WINDOW, *q, *r, *f)
        })
}

#[test]
fn key_and_defaults() {
    assert_eq!(
        marty_resilience_core::keys::budget("marty_resilience", "users"),
        "marty_resilience/v1/budget/users"
    );
    assert_eq!(
        Policy::default(),
        Policy {
            window_ns: 10 * S,
            ratio: 0.2,
            min_retries_per_second: 10,
        }
    );
    assert_eq!(SLOTS, 10);
    assert_eq!(RECORD_LEN, 209);
}

#[test]
fn bucket_width_is_a_tenth_of_the_window_and_at_least_1ns() {
    assert_eq!(slot_width(10 * S), S);
    assert_eq!(slot_width(25), 2);
    assert_eq!(slot_width(10), 1);
    assert_eq!(slot_width(9), 1);
    assert_eq!(slot_width(0), 1);
    assert_eq!(slot_width(u64::MAX), u64::MAX / 10);
}

#[test]
fn a_count_leaves_the_window_exactly_a_window_after_its_bucket_starts() {
    // Added at 3.5 s: slot [3 s, 4 s), counted while now < 13 s.
    let rec = built(&[(3 * S + 500 * MS, (4, 2, 1))]);
    assert_eq!(totals(&rec, 3 * S + 500 * MS, WINDOW), (4, 2, 1));
    assert_eq!(totals(&rec, 13 * S - 1, WINDOW), (4, 2, 1));
    assert_eq!(totals(&rec, 13 * S, WINDOW), (0, 0, 0));
    assert_eq!(totals(&rec, u64::MAX, WINDOW), (0, 0, 0));
    // Added at the first instant of its slot: the same deadline, a full window later.
    let rec = built(&[(3 * S, (1, 0, 0))]);
    assert_eq!(totals(&rec, 13 * S - 1, WINDOW), (1, 0, 0));
    assert_eq!(totals(&rec, 13 * S, WINDOW), (0, 0, 0));
    // At the last instant: (SLOTS − 1) widths plus 1 ns later it is gone.
    let rec = built(&[(4 * S - 1, (1, 0, 0))]);
    assert_eq!(totals(&rec, 13 * S - 1, WINDOW), (1, 0, 0));
    assert_eq!(totals(&rec, 13 * S, WINDOW), (0, 0, 0));
}

#[test]
fn the_window_sums_its_ten_buckets_and_drops_each_in_turn() {
    // One request in each second 0..10, i + 1 retries in second i.
    let events: Vec<(u64, (u32, u32, u32))> = (0..10u32)
        .map(|i| (u64::from(i) * S + 1, (1, i + 1, 0)))
        .collect();
    let rec = built(&events);
    assert_eq!(totals(&rec, 10 * S - 1, WINDOW), (10, 55, 0));
    for gone in 1..=10u64 {
        // At (10 + gone − 1) s the first `gone` seconds have left.
        let retries: u64 = (gone + 1..=10).sum();
        assert_eq!(
            totals(&rec, (9 + gone) * S, WINDOW),
            (10 - gone, retries, 0),
            "{gone} gone"
        );
    }
}

#[test]
fn a_stale_bucket_is_zeroed_before_reuse_and_others_are_kept() {
    let rec = built(&[(3 * S, (5, 5, 5)), (5 * S, (1, 1, 1))]);
    // 13 s reuses the slot of 3 s: its old counts are gone, those of 5 s remain.
    let rec = add(&rec, 13 * S + 7, WINDOW, 2, 0, 0);
    assert_eq!(
        rec.slots[3],
        Slot {
            epoch: 13,
            requests: 2,
            retries: 0,
            failures: 0
        }
    );
    assert_eq!(
        rec.slots[5],
        Slot {
            epoch: 5,
            requests: 1,
            retries: 1,
            failures: 1
        }
    );
    assert_eq!(totals(&rec, 13 * S + 7, WINDOW), (3, 1, 1));
    // The same slot accumulates.
    let rec = add(&rec, 13 * S + 999 * MS, WINDOW, 1, 2, 3);
    assert_eq!(
        rec.slots[3],
        Slot {
            epoch: 13,
            requests: 3,
            retries: 2,
            failures: 3
        }
    );
}

#[test]
fn stale_buckets_are_dropped_however_long_the_route_was_quiet() {
    let events: Vec<(u64, (u32, u32, u32))> = (0..10u64).map(|i| (i * S, (7, 3, 2))).collect();
    let rec = built(&events);
    assert_eq!(totals(&rec, 9 * S, WINDOW), (70, 30, 20));
    let later = 3600 * S + 400 * MS;
    assert_eq!(totals(&rec, later, WINDOW), (0, 0, 0));
    assert!(allows_retry(&rec, later, &policy(0.0, 1)));
    assert_eq!(failure_ratio(&rec, later, WINDOW), 0.0);
    // A new count after the silence stands alone, in a slot that held a stale slot.
    let rec = add(&rec, later, WINDOW, 1, 0, 1);
    assert_eq!(totals(&rec, later, WINDOW), (1, 0, 1));
    assert_eq!(rec.slots[0].epoch, 3600);
}

#[test]
fn counts_added_over_an_empty_bucket_naming_another_epoch_stay_readable() {
    // Found by fuzzing (fuzz/regressions/budget_record/): the decoder accepts an empty slot
    // whatever its epoch; one naming a later epoch of another slot used to keep that epoch
    // when counts were added, giving a record that no longer decodes (the counts were lost as
    // "corrupt" on the next read).
    let mut rec = Record {
        width_ns: S,
        ..Record::default()
    };
    rec.slots[5].epoch = 262_144; // slot 4's epoch, in slot 5, with no counts
    let bytes = rec.encode();
    assert_eq!(Record::decode(&bytes).as_ref(), Some(&rec));
    let rec = add(&rec, 15 * S, WINDOW, 1, 1, 1);
    assert_eq!(Record::decode(&rec.encode()).as_ref(), Some(&rec));
    assert_eq!(rec.slots[5].epoch, 15);
    assert_eq!(totals(&rec, 15 * S, WINDOW), (1, 1, 1));
}

#[test]
fn counts_saturate() {
    let rec = built(&[(0, (u32::MAX, u32::MAX, u32::MAX)), (1, (1, 1, 1))]);
    assert_eq!(rec.slots[0].requests, u32::MAX);
    let events: Vec<(u64, (u32, u32, u32))> = (0..10u64)
        .map(|i| (i * S, (u32::MAX, u32::MAX, u32::MAX)))
        .collect();
    let max = 10 * u64::from(u32::MAX);
    assert_eq!(totals(&built(&events), 9 * S, WINDOW), (max, max, max));
}

#[test]
fn a_later_bucket_than_now_keeps_its_epoch_and_takes_the_counts() {
    // Another worker's clock ran a whole window ahead (theoretical in Envoy): nothing is lost.
    let rec = built(&[(13 * S, (1, 0, 0))]);
    let rec = add(&rec, 3 * S, WINDOW, 2, 0, 0);
    assert_eq!(rec.slots[3].epoch, 13);
    assert_eq!(totals(&rec, 13 * S, WINDOW), (3, 0, 0));
    assert_eq!(totals(&rec, 3 * S, WINDOW), (3, 0, 0));
}

#[test]
fn a_record_of_another_window_reads_as_empty_and_restarts() {
    let rec = built(&[(3 * S, (4, 4, 4))]);
    assert_eq!(totals(&rec, 3 * S, 20 * S), (0, 0, 0));
    assert_eq!(totals(&Record::default(), 0, WINDOW), (0, 0, 0));
    let wider = add(&rec, 3 * S, 20 * S, 1, 0, 0);
    assert_eq!(wider.width_ns, 2 * S);
    assert_eq!(totals(&wider, 3 * S, 20 * S), (1, 0, 0));
    assert_eq!(totals(&wider, 3 * S, WINDOW), (0, 0, 0));
}

#[test]
fn the_floor_allows_min_retries_per_second_times_the_window_without_requests() {
    // 10 retries a second over 10 s: 100.
    let p = policy(0.2, 10);
    assert_eq!(p.allowance(0), 100.0);
    let at = |retries: u32| built(&[(S, (0, retries, 0))]);
    assert!(allows_retry(&Record::default(), 0, &p));
    assert!(allows_retry(&at(99), S, &p));
    assert!(!allows_retry(&at(100), S, &p));
    // Once the retries leave the window the floor is whole again.
    assert!(allows_retry(&at(100), 11 * S, &p));
    // No floor and no ratio: never.
    assert!(!allows_retry(&Record::default(), 0, &policy(0.2, 0)));
    assert!(!allows_retry(
        &built(&[(S, (1000, 0, 0))]),
        S,
        &policy(0.0, 0)
    ));
    // The floor scales with the window.
    let short = Policy {
        window_ns: 500 * MS,
        ..policy(0.0, 10)
    };
    assert_eq!(short.allowance(0), 5.0);
    let rec = |retries| add(&Record::default(), 0, short.window_ns, 0, retries, 0);
    assert!(allows_retry(&rec(4), 0, &short));
    assert!(!allows_retry(&rec(5), 0, &short));
}

#[test]
fn the_ratio_allows_a_share_of_the_windows_requests() {
    let p = policy(0.2, 0);
    let rec = |requests: u32, retries: u32| built(&[(2 * S, (requests, retries, 0))]);
    assert!(allows_retry(&rec(100, 19), 2 * S, &p));
    assert!(!allows_retry(&rec(100, 20), 2 * S, &p));
    // 101 requests: 20.2, so a 21st retry is allowed, a 22nd not.
    assert!(allows_retry(&rec(101, 20), 2 * S, &p));
    assert!(!allows_retry(&rec(101, 21), 2 * S, &p));
    // Ratio and floor add up: 0.2 × 100 + 1 × 10.
    let both = policy(0.2, 1);
    assert!(allows_retry(&rec(100, 29), 2 * S, &both));
    assert!(!allows_retry(&rec(100, 30), 2 * S, &both));
    // When the requests age out before the retries, the budget shrinks with them.
    let rec = built(&[(0, (100, 0, 0)), (5 * S, (0, 10, 0))]);
    assert!(allows_retry(&rec, 9 * S, &p));
    assert!(!allows_retry(&rec, 10 * S, &p));
    // A ratio above 1, and nonsense ratios taken as 0.
    assert_eq!(policy(1.5, 0).allowance(10), 15.0);
    assert_eq!(policy(-1.0, 1).allowance(10), 10.0);
    assert_eq!(policy(f64::NAN, 1).allowance(10), 10.0);
}

#[test]
fn failure_ratio_is_failed_attempts_over_attempts() {
    assert_eq!(failure_ratio(&Record::default(), 0, WINDOW), 0.0);
    let rec = built(&[(0, (6, 2, 2)), (S, (1, 1, 4))]);
    assert_eq!(failure_ratio(&rec, S, WINDOW), 0.6);
    // Failures are flushed when attempts end, possibly a slot after the attempts: at the
    // window's edge they may outnumber the attempts left, and the ratio stays at 1.
    assert_eq!(
        failure_ratio(&rec, 10 * S, WINDOW),
        1.0,
        "4 failures, 2 attempts"
    );
    assert_eq!(failure_ratio(&rec, 11 * S, WINDOW), 0.0, "nothing left");
    let only_failures = built(&[(0, (0, 0, 3))]);
    assert_eq!(
        failure_ratio(&only_failures, 0, WINDOW),
        0.0,
        "no attempts: 0"
    );
    let healthy = built(&[(0, (10, 0, 0))]);
    assert_eq!(failure_ratio(&healthy, 0, WINDOW), 0.0);
}

#[test]
fn a_snapshot_caches_the_decision_and_pending_retries_count_against_it() {
    let p = policy(0.2, 0);
    let rec = built(&[(0, (100, 17, 39))]);
    let snap = Snapshot::of(&rec, 0, &p);
    assert_eq!(
        snap,
        Snapshot {
            requests: 100,
            retries: 17,
            failures: 39,
            allows_retry: true,
            failure_ratio: 39.0 / 117.0,
        }
    );
    let mut pending = Pending::default();
    assert!(snap.allows_retry_with(&pending, &p));
    pending.retry();
    pending.retry();
    assert!(snap.allows_retry_with(&pending, &p), "19 < 20");
    pending.retry();
    assert!(!snap.allows_retry_with(&pending, &p), "20 of 20");
    for _ in 0..5 {
        pending.request();
    }
    assert!(snap.allows_retry_with(&pending, &p), "20 < 21");
    pending.failure();
    assert_eq!(
        pending,
        Pending {
            requests: 5,
            retries: 3,
            failures: 1
        }
    );
}

#[test]
fn codec_round_trips() {
    for_each_seed("budget codec", 0xb0d9, 500, |rng| {
        let mut rec = Record {
            width_ns: rng.gen(),
            ..Record::default()
        };
        for (i, slot) in rec.slots.iter_mut().enumerate() {
            *slot = Slot {
                epoch: rng.gen_range(0..u64::MAX / 10) * 10 + i as u64,
                requests: rng.gen(),
                retries: rng.gen(),
                failures: rng.gen(),
            };
        }
        let bytes = rec.encode();
        ensure!(bytes.len() == RECORD_LEN, "{} bytes", bytes.len());
        ensure!(bytes[0] == RECORD_VERSION, "version {}", bytes[0]);
        ensure!(Record::decode(&bytes) == Some(rec.clone()), "{rec:?}");
        Ok(())
    });
    let fresh = Record::default();
    assert_eq!(Record::decode(&fresh.encode()), Some(fresh));
}

#[test]
fn codec_layout_is_little_endian_and_fixed() {
    let rec = built(&[(3 * S, (0x0102_0304, 5, 6))]);
    let bytes = rec.encode();
    assert_eq!(&bytes[1..9], &S.to_le_bytes(), "width");
    let bucket3 = 9 + 3 * 20;
    assert_eq!(&bytes[bucket3..bucket3 + 8], &3u64.to_le_bytes());
    assert_eq!(&bytes[bucket3 + 8..bucket3 + 12], &[4, 3, 2, 1]);
    assert_eq!(
        &bytes[bucket3 + 12..bucket3 + 20],
        &[5, 0, 0, 0, 6, 0, 0, 0]
    );
}

#[test]
fn codec_rejects_other_versions_lengths_and_misplaced_buckets() {
    let good = built(&[(3 * S, (1, 2, 3))]).encode();
    assert!(Record::decode(&good).is_some());
    assert_eq!(Record::decode(&[]), None);
    let mut other = good.clone();
    other[0] = 2;
    assert_eq!(Record::decode(&other), None);
    assert_eq!(Record::decode(&good[..RECORD_LEN - 1]), None);
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(Record::decode(&longer), None);
    // Slot 3 claiming epoch 4.
    let mut misplaced = good.clone();
    misplaced[9 + 3 * 20] = 4;
    assert_eq!(Record::decode(&misplaced), None);
    // An empty slot may hold any epoch (a fresh record holds 0 everywhere).
    let mut empty = Record::default().encode();
    empty[9 + 3 * 20] = 4;
    assert!(Record::decode(&empty).is_some());
}

#[test]
fn decoding_any_bytes_never_panics_and_what_decodes_is_canonical() {
    for_each_seed("budget decode", 0xdec0, 5000, |rng| {
        let len = if rng.gen_bool(0.5) {
            RECORD_LEN
        } else {
            rng.gen_range(0..2 * RECORD_LEN)
        };
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if let Some(first) = bytes.first_mut() {
            if rng.gen_bool(0.7) {
                *first = RECORD_VERSION;
            }
        }
        // Mostly empty slots, so that some inputs decode.
        if len == RECORD_LEN && rng.gen_bool(0.5) {
            for i in 0..SLOTS {
                if rng.gen_bool(0.8) {
                    bytes[9 + i * 20 + 8..9 + i * 20 + 20].fill(0);
                }
            }
        }
        if let Some(rec) = Record::decode(&bytes) {
            ensure!(
                rec.encode() == bytes,
                "{rec:?} does not re-encode to its bytes"
            );
            let width = rec.width_ns.saturating_mul(SLOTS as u64);
            let _ = totals(&rec, rng.gen(), width);
            let _ = add(&rec, rng.gen(), width, rng.gen(), rng.gen(), rng.gen());
        }
        Ok(())
    });
}

#[test]
fn flush_writes_pending_counts_once_and_empties_them() {
    let store = MemoryStore::new();
    let p = policy(0.2, 0);
    assert_eq!(budget::ensure(&store, KEY), Ok(true));
    assert_eq!(budget::ensure(&store, KEY), Ok(false));
    let mut pending = Pending {
        requests: 10,
        retries: 1,
        failures: 3,
    };
    let flushed = flush(&store, KEY, &mut pending, 2 * S, &p).unwrap();
    assert!(pending.is_empty());
    assert!(!flushed.was_corrupt);
    assert_eq!(
        (flushed.snapshot.requests, flushed.snapshot.retries),
        (10, 1)
    );
    assert!(flushed.snapshot.allows_retry, "1 < 2");
    let (bytes, token) = store.get(KEY).unwrap().unwrap();
    assert_eq!(Record::decode(&bytes), Some(flushed.record.clone()));
    // Nothing pending: a read, no write, and the snapshot follows the clock.
    let read = flush(&store, KEY, &mut pending, 12 * S, &p).unwrap();
    assert_eq!(store.get(KEY).unwrap().unwrap().1, token, "no write");
    assert_eq!(read.snapshot.requests, 0, "aged out");
    assert!(!read.snapshot.allows_retry, "no requests, no floor");
    // A missing key is created by the first flush.
    let mut pending = Pending {
        requests: 1,
        ..Pending::default()
    };
    let other = "marty.resilience/v1/budget/other";
    flush(&store, other, &mut pending, 0, &p).unwrap();
    assert_eq!(
        totals(&budget::load(&store, other).unwrap().0, 0, WINDOW),
        (1, 0, 0)
    );
}

#[test]
fn a_corrupt_value_is_treated_as_fresh_and_overwritten() {
    let store = MemoryStore::new();
    store.put_raw(KEY, b"not a budget");
    let p = policy(0.2, 1);
    let mut pending = Pending::default();
    let read = flush(&store, KEY, &mut pending, 0, &p).unwrap();
    assert!(read.was_corrupt);
    assert_eq!(
        store.get(KEY).unwrap().unwrap().0,
        b"not a budget",
        "reads never write"
    );
    pending.request();
    let written = flush(&store, KEY, &mut pending, 0, &p).unwrap();
    assert!(written.was_corrupt);
    assert_eq!(
        totals(&budget::load(&store, KEY).unwrap().0, 0, WINDOW),
        (1, 0, 0)
    );
    // ensure repairs a corrupt value too.
    store.put_raw(KEY, b"\x01");
    assert_eq!(budget::ensure(&store, KEY), Ok(true));
    let (rec, _, corrupt) = budget::load(&store, KEY).unwrap();
    assert_eq!((rec, corrupt), (Record::default(), false));
}

/// A store whose writes always lose the race, or always fail.
struct Failing {
    inner: MemoryStore,
    error: StoreError,
    sets: Cell<u32>,
}

impl SharedStore for Failing {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }
    fn set(&self, _: &str, _: &[u8], cas: u32) -> Result<(), StoreError> {
        assert_ne!(cas, 0, "never an unconditional write");
        self.sets.set(self.sets.get() + 1);
        Err(self.error)
    }
}

#[test]
fn a_flush_that_cannot_write_keeps_its_counts_for_the_next_tick() {
    let p = policy(0.2, 0);
    let before = Pending {
        requests: 3,
        retries: 2,
        failures: 1,
    };
    for (error, expected, sets) in [
        (
            StoreError::CasMismatch,
            UpdateError::Exhausted,
            MAX_CAS_ATTEMPTS,
        ),
        (StoreError::Host(7), UpdateError::Host(7), 1),
    ] {
        let store = Failing {
            inner: MemoryStore::new(),
            error,
            sets: Cell::new(0),
        };
        let mut pending = before;
        assert_eq!(flush(&store, KEY, &mut pending, 0, &p), Err(expected));
        assert_eq!(pending, before);
        assert_eq!(store.sets.get(), sets);
        // The next tick, with a store that works, lands them all.
        flush(&store.inner, KEY, &mut pending, S, &p).unwrap();
        assert!(pending.is_empty());
        let rec = budget::load(&store.inner, KEY).unwrap().0;
        assert_eq!(totals(&rec, S, WINDOW), (3, 2, 1));
    }
}

/// `MemoryStore` that yields between a worker's read and its write, so flushes interleave,
/// and counts the lost races.
struct Contended {
    inner: MemoryStore,
    mismatches: AtomicU64,
}

impl SharedStore for Contended {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let got = self.inner.get(key);
        thread::yield_now();
        got
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        assert_ne!(cas, 0, "never an unconditional write");
        let result = self.inner.set(key, value, cas);
        if result == Err(StoreError::CasMismatch) {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[test]
// wasm32-wasip1 has no threads (spawning fails): this runs natively only.
#[cfg_attr(target_family = "wasm", ignore = "needs threads")]
fn four_workers_flushing_concurrently_lose_no_count() {
    const WORKERS: u64 = 4;
    const TICKS: u64 = 400;
    let store = Contended {
        inner: MemoryStore::new(),
        mismatches: AtomicU64::new(0),
    };
    // The key starts missing: the first flushes race to create it, and since none writes
    // with token 0 the losers re-read and add to the winner's record.
    let p = policy(0.2, 10);
    let sent: Vec<(u64, u64, u64, u64)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let store = &store;
                scope.spawn(move || {
                    let mut rng = rand::thread_rng();
                    let mut pending = Pending::default();
                    let (mut q, mut r, mut f, mut exhausted) = (0u64, 0u64, 0u64, 0u64);
                    for tick in 0..TICKS {
                        for _ in 0..rng.gen_range(0..20) {
                            match rng.gen_range(0..3) {
                                0 => {
                                    pending.request();
                                    q += 1;
                                }
                                1 => {
                                    pending.retry();
                                    r += 1;
                                }
                                _ => {
                                    pending.failure();
                                    f += 1;
                                }
                            }
                        }
                        // Every worker's clock stays inside one window: nothing ages out.
                        let now = tick * 5 * MS + w;
                        match flush(store, KEY, &mut pending, now, &p) {
                            Ok(flushed) => assert!(pending.is_empty(), "{flushed:?}"),
                            Err(UpdateError::Exhausted) => exhausted += 1,
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    // Shutdown: flush until what is left has landed.
                    while !pending.is_empty() {
                        if flush(store, KEY, &mut pending, TICKS * 5 * MS, &p).is_err() {
                            exhausted += 1;
                        }
                    }
                    (q, r, f, exhausted)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let expected = sent
        .iter()
        .fold((0, 0, 0), |(q, r, f), s| (q + s.0, r + s.1, f + s.2));
    let rec = budget::load(&store.inner, KEY).unwrap().0;
    assert_eq!(totals(&rec, TICKS * 5 * MS, WINDOW), expected);
    let exhausted: u64 = sent.iter().map(|s| s.3).sum();
    println!(
        "{} CAS mismatches, {exhausted} exhausted flushes, {expected:?} counted",
        store.mismatches.load(Ordering::Relaxed)
    );
}
