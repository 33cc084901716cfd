//! Shared state: `MemoryStore` with Envoy's shared-data semantics, `ensure`, `load`, and the
//! bounded compare-and-swap loop of `update`.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use common::{at, policy};
use marty_resilience_core::breaker::{
    self, Decision, Outcome, Record, State, Step, Transition, Updated,
};
use marty_resilience_core::keys::breaker as breaker_key;
use marty_resilience_core::store::{
    self, MemoryStore, SharedStore, StoreError, UpdateError, MAX_CAS_ATTEMPTS,
};

const KEY: &str = "marty.resilience/v1/cb/users";

fn token(store: &MemoryStore, key: &str) -> u32 {
    store.get(key).unwrap().expect("key exists").1
}

fn value(store: &MemoryStore, key: &str) -> Vec<u8> {
    store.get(key).unwrap().expect("key exists").0
}

fn open_record() -> Record {
    Record {
        state: State::Open,
        generation: 1,
        consecutive_failures: 3,
        trips: 1,
        open_until_ns: 99,
        ..Record::default()
    }
}

/// A step that always writes `rec` (and reports `transition`).
fn write(rec: Record, transition: Option<Transition>) -> Step<()> {
    Step {
        result: (),
        write: Some(rec),
        transition,
    }
}

fn keep() -> Step<()> {
    Step {
        result: (),
        write: None,
        transition: None,
    }
}

// ---------------------------------------------------------------- MemoryStore

#[test]
fn a_missing_key_reads_as_none() {
    let store = MemoryStore::new();
    assert_eq!(store.get("nope"), Ok(None));
    assert!(store.keys().is_empty());
}

#[test]
fn a_missing_key_is_created_whatever_the_token() {
    let store = MemoryStore::new();
    assert_eq!(store.set("a", b"1", 0), Ok(()));
    assert_eq!(store.set("b", b"2", 12345), Ok(()));
    assert_eq!(value(&store, "a"), b"1");
    assert_eq!(value(&store, "b"), b"2");
    let mut keys = store.keys();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
}

#[test]
fn cas_zero_writes_unconditionally() {
    let store = MemoryStore::new();
    store.set("k", b"first", 0).unwrap();
    store.set("k", b"second", 0).unwrap();
    assert_eq!(value(&store, "k"), b"second");
}

#[test]
fn a_stale_token_is_a_mismatch_and_changes_nothing() {
    let store = MemoryStore::new();
    store.set("k", b"v1", 0).unwrap();
    let t1 = token(&store, "k");
    // The current token wins.
    assert_eq!(store.set("k", b"v2", t1), Ok(()));
    let t2 = token(&store, "k");
    assert_ne!(t1, t2);
    // The old one no longer does.
    assert_eq!(store.set("k", b"v3", t1), Err(StoreError::CasMismatch));
    assert_eq!(store.get("k"), Ok(Some((b"v2".to_vec(), t2))));
}

#[test]
fn tokens_are_never_zero_and_every_write_gets_a_new_one() {
    let store = MemoryStore::new();
    let mut seen = HashSet::new();
    for i in 0..500u32 {
        let key = format!("k{}", i % 7);
        store.set(&key, &i.to_le_bytes(), 0).unwrap();
        let t = token(&store, &key);
        assert_ne!(t, 0);
        assert!(seen.insert(t), "token {t} handed out twice");
    }
}

#[test]
fn put_raw_bypasses_cas_and_invalidates_held_tokens() {
    let store = MemoryStore::new();
    store.set("k", b"v", 0).unwrap();
    let held = token(&store, "k");
    store.put_raw("k", b"raw");
    assert_eq!(value(&store, "k"), b"raw");
    assert_eq!(store.set("k", b"mine", held), Err(StoreError::CasMismatch));
}

#[test]
fn breaker_keys_are_versioned_and_carry_the_raw_route_name() {
    assert_eq!(
        breaker_key("marty_resilience", "users"),
        "marty_resilience/v1/cb/users"
    );
    assert_eq!(
        breaker_key("marty_resilience", "a.b"),
        "marty_resilience/v1/cb/a.b"
    );
    assert_eq!(
        breaker_key("edge", "outbound|80||a.b"),
        "edge/v1/cb/outbound|80||a.b",
        "each stat_prefix has its own keys"
    );
}

// ---------------------------------------------------------------- load / ensure

#[test]
fn load_of_a_missing_key_is_a_fresh_record_with_the_absent_token() {
    // Never 0, which Envoy takes as "write unconditionally": a key created by another worker
    // between this read and the write must make the write fail.
    let store = MemoryStore::new();
    assert_eq!(
        breaker::load(&store, KEY),
        Ok((Record::default(), store::ABSENT_CAS, false))
    );
}

#[test]
fn load_reports_unreadable_values_as_fresh_and_corrupt() {
    let store = MemoryStore::new();
    store.put_raw(KEY, b"garbage");
    let t = token(&store, KEY);
    assert_eq!(breaker::load(&store, KEY), Ok((Record::default(), t, true)));
}

#[test]
fn ensure_creates_a_fresh_record_once() {
    let store = MemoryStore::new();
    assert_eq!(breaker::ensure(&store, KEY), Ok(true));
    assert_eq!(Record::decode(&value(&store, KEY)), Some(Record::default()));
    let t = token(&store, KEY);
    // Idempotent: a second run neither reports a creation nor writes.
    assert_eq!(breaker::ensure(&store, KEY), Ok(false));
    assert_eq!(token(&store, KEY), t);
}

#[test]
fn ensure_keeps_existing_state_across_a_reload() {
    let store = MemoryStore::new();
    store.set(KEY, &open_record().encode(), 0).unwrap();
    let t = token(&store, KEY);
    assert_eq!(breaker::ensure(&store, KEY), Ok(false));
    assert_eq!(token(&store, KEY), t);
    assert_eq!(Record::decode(&value(&store, KEY)), Some(open_record()));
}

#[test]
fn ensure_replaces_a_corrupt_or_old_layout_value() {
    let mut old_layout = open_record().encode();
    old_layout[0] = 0;
    for bad in [b"garbage".to_vec(), Vec::new(), old_layout] {
        let store = MemoryStore::new();
        store.put_raw(KEY, &bad);
        assert_eq!(breaker::ensure(&store, KEY), Ok(true), "{bad:?}");
        assert_eq!(Record::decode(&value(&store, KEY)), Some(Record::default()));
        assert_eq!(breaker::ensure(&store, KEY), Ok(false));
    }
}

#[test]
fn ensure_leaves_a_concurrent_fix_of_a_corrupt_value_alone() {
    // Between ensure's read and its write, another worker repaired the value: its write stands.
    let store = Hooked::new();
    store.inner.put_raw(KEY, b"garbage");
    *store.before_set.borrow_mut() = Some(Box::new(|inner: &MemoryStore| {
        inner.put_raw(KEY, &open_record().encode());
    }));
    assert!(breaker::ensure(&store, KEY).is_ok());
    assert_eq!(
        Record::decode(&value(&store.inner, KEY)),
        Some(open_record())
    );
}

// ---------------------------------------------------------------- update

#[test]
fn update_without_a_write_does_not_create_the_key() {
    let store = MemoryStore::new();
    let updated = breaker::update(&store, KEY, |_| keep()).unwrap();
    assert_eq!(updated.current, Record::default());
    assert!(!updated.was_corrupt);
    assert!(store.keys().is_empty());
}

#[test]
fn update_writes_the_step_record_and_returns_it_with_its_transition() {
    let store = MemoryStore::new();
    breaker::ensure(&store, KEY).unwrap();
    let updated = breaker::update(&store, KEY, |rec| {
        assert_eq!(rec, &Record::default());
        write(open_record(), Some(Transition::Opened))
    })
    .unwrap();
    assert_eq!(
        updated,
        Updated {
            step: write(open_record(), Some(Transition::Opened)),
            current: open_record(),
            was_corrupt: false,
        }
    );
    assert_eq!(Record::decode(&value(&store, KEY)), Some(open_record()));
}

#[test]
fn update_returns_the_record_it_read_when_the_step_keeps_it() {
    let store = MemoryStore::new();
    store.set(KEY, &open_record().encode(), 0).unwrap();
    let t = token(&store, KEY);
    let updated = breaker::update(&store, KEY, |_| keep()).unwrap();
    assert_eq!(updated.current, open_record());
    assert_eq!(token(&store, KEY), t, "nothing written");
}

#[test]
fn a_corrupt_value_is_reported_and_replaced_on_the_next_write() {
    let store = MemoryStore::new();
    store.put_raw(KEY, b"\x01not a record");
    let p = policy();
    // An admission in (fresh) CLOSED writes nothing: still corrupt, reported every time.
    for _ in 0..2 {
        let updated = breaker::update(&store, KEY, |rec| breaker::admit(rec, &p, at(0))).unwrap();
        assert!(updated.was_corrupt);
        assert!(matches!(updated.step.result, Decision::Allow(_)));
        assert_eq!(value(&store, KEY), b"\x01not a record");
    }
    // A failure writes: the value is replaced by a readable record.
    let ticket = match breaker::admit(&Record::default(), &p, at(0)).result {
        Decision::Allow(t) => t,
        other => panic!("{other:?}"),
    };
    let updated = breaker::update(&store, KEY, |rec| {
        breaker::record(rec, &p, at(1), ticket, Outcome::Failure)
    })
    .unwrap();
    assert!(updated.was_corrupt);
    assert_eq!(updated.current.consecutive_failures, 1);
    let stored = Record::decode(&value(&store, KEY)).expect("readable now");
    assert_eq!(stored.consecutive_failures, 1);
    // From now on it is not corrupt.
    let updated = breaker::update(&store, KEY, |_| keep()).unwrap();
    assert!(!updated.was_corrupt);
}

#[test]
fn update_gives_up_after_max_cas_attempts_against_a_store_that_always_mismatches() {
    let store = AlwaysMismatch::default();
    let mut decisions = 0;
    let result = breaker::update(&store, KEY, |_| {
        decisions += 1;
        write(open_record(), Some(Transition::Opened))
    });
    assert_eq!(result, Err(UpdateError::Exhausted));
    assert_eq!(decisions, MAX_CAS_ATTEMPTS);
    assert_eq!(store.gets.get(), MAX_CAS_ATTEMPTS);
    assert_eq!(store.sets.get(), MAX_CAS_ATTEMPTS);
}

#[test]
fn update_rereads_and_redecides_after_each_lost_race() {
    // Two rivals write before our write on the first two attempts; the third lands.
    let store = Hooked::new();
    breaker::ensure(&store.inner, KEY).unwrap();
    let rivals = Cell::new(0u32);
    *store.before_set.borrow_mut() = Some(Box::new(move |inner: &MemoryStore| {
        if rivals.get() < 2 {
            rivals.set(rivals.get() + 1);
            let (bytes, _) = inner.get(KEY).unwrap().unwrap();
            let mut rec = Record::decode(&bytes).unwrap();
            rec.consecutive_failures += 1;
            inner.set(KEY, &rec.encode(), 0).unwrap();
        }
    }));
    let mut seen = Vec::new();
    let updated = breaker::update(&store, KEY, |rec| {
        seen.push(rec.consecutive_failures);
        let mut next = rec.clone();
        next.consecutive_failures += 10;
        write(next, None)
    })
    .unwrap();
    // Each attempt decided on what the rival left, so no increment is lost.
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(updated.current.consecutive_failures, 12);
    let stored = Record::decode(&value(&store.inner, KEY)).unwrap();
    assert_eq!(stored.consecutive_failures, 12);
}

#[test]
fn only_the_write_that_lands_reports_a_transition() {
    // We decide to open the breaker, but a rival opens it first: our retry sees OPEN, our
    // ticket is stale, and we report nothing. The rival is the transition's only author.
    let p = policy();
    let rival_transition = RefCell::new(None);
    let store = Hooked::new();
    let almost = Record {
        consecutive_failures: 2,
        last_failure_ns: 1,
        ..Record::default()
    };
    store.inner.set(KEY, &almost.encode(), 0).unwrap();
    let ticket = match breaker::admit(&almost, &p, at(1)).result {
        Decision::Allow(t) => t,
        other => panic!("{other:?}"),
    };
    let rt = &rival_transition;
    let pp = p.clone();
    *store.before_set.borrow_mut() = Some(Box::new(move |inner: &MemoryStore| {
        if rt.borrow().is_none() {
            let updated = breaker::update(inner, KEY, |rec| {
                breaker::record(rec, &pp, at(2), ticket, Outcome::Failure)
            })
            .unwrap();
            *rt.borrow_mut() = Some(updated.step.transition);
        }
    }));
    let mut attempts = 0;
    let updated = breaker::update(&store, KEY, |rec| {
        attempts += 1;
        breaker::record(rec, &p, at(3), ticket, Outcome::Failure)
    })
    .unwrap();
    assert_eq!(*rival_transition.borrow(), Some(Some(Transition::Opened)));
    assert_eq!(attempts, 2);
    assert_eq!(updated.step.transition, None);
    assert_eq!(updated.step.write, None);
    assert_eq!(updated.current.state, State::Open);
    assert_eq!(updated.current.generation, 1);
}

#[test]
fn host_errors_are_passed_through_without_retrying() {
    let on_get = Failing {
        get: Some(StoreError::Host(3)),
        set: None,
        sets: Cell::new(0),
    };
    assert_eq!(
        breaker::update(&on_get, KEY, |_| write(open_record(), None)),
        Err(UpdateError::Host(3))
    );
    assert_eq!(breaker::ensure(&on_get, KEY), Err(UpdateError::Host(3)));
    assert_eq!(breaker::load(&on_get, KEY), Err(UpdateError::Host(3)));

    let on_set = Failing {
        get: None,
        set: Some(StoreError::Host(9)),
        sets: Cell::new(0),
    };
    assert_eq!(
        breaker::update(&on_set, KEY, |_| write(open_record(), None)),
        Err(UpdateError::Host(9))
    );
    assert_eq!(on_set.sets.get(), 1, "a host error is not a lost race");
    assert_eq!(breaker::ensure(&on_set, KEY), Err(UpdateError::Host(9)));
}

#[test]
fn a_mismatch_reported_by_get_is_a_host_error() {
    let odd = Failing {
        get: Some(StoreError::CasMismatch),
        set: None,
        sets: Cell::new(0),
    };
    assert_eq!(breaker::load(&odd, KEY), Err(UpdateError::Host(0)));
}

// ---------------------------------------------------------------- test doubles

/// Every read finds a fresh record; every write loses the race.
#[derive(Default)]
struct AlwaysMismatch {
    gets: Cell<u32>,
    sets: Cell<u32>,
}

impl SharedStore for AlwaysMismatch {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.gets.set(self.gets.get() + 1);
        Ok(Some((Record::default().encode(), 7 + self.gets.get())))
    }
    fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
        self.sets.set(self.sets.get() + 1);
        Err(StoreError::CasMismatch)
    }
}

/// A `MemoryStore` with a hook run just before each `set`: a rival worker's write.
struct Hooked<'a> {
    inner: MemoryStore,
    #[allow(clippy::type_complexity)]
    before_set: RefCell<Option<Box<dyn FnMut(&MemoryStore) + 'a>>>,
}

impl Hooked<'_> {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            before_set: RefCell::new(None),
        }
    }
}

impl SharedStore for Hooked<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if let Some(hook) = self.before_set.borrow_mut().as_mut() {
            hook(&self.inner);
        }
        self.inner.set(key, value, cas)
    }
}

/// Answers with fixed errors.
struct Failing {
    get: Option<StoreError>,
    set: Option<StoreError>,
    sets: Cell<u32>,
}

impl SharedStore for Failing {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match self.get {
            Some(e) => Err(e),
            None => Ok(Some((b"junk".to_vec(), 5))),
        }
    }
    fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
        self.sets.set(self.sets.get() + 1);
        match self.set {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[test]
fn the_registry_lists_each_bucket_once_and_skips_names_it_could_not_read_back() {
    use marty_resilience_core::registry::{register, registered};
    let shared = MemoryStore::new();
    assert!(registered(&shared, "p").is_empty());
    for (name, listed) in [
        ("users", true),
        ("orders", true),
        ("users", true),
        ("", false),
        ("two\nlines", false),
    ] {
        assert_eq!(
            register(&shared, "p", name, 10, 5).unwrap(),
            listed,
            "{name:?}"
        );
    }
    let listed: Vec<String> = registered(&shared, "p")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listed, ["users", "orders"]);
    assert!(registered(&shared, "other").is_empty(), "per stat_prefix");
}

#[test]
fn the_registry_is_bounded() {
    use marty_resilience_core::registry::{register, registered, MAX_REGISTERED};
    let shared = MemoryStore::new();
    assert!(register(&shared, "p", "a", 2, 0).unwrap());
    assert!(register(&shared, "p", "b", 2, 0).unwrap());
    assert!(
        !register(&shared, "p", "c", 2, 0).unwrap(),
        "full: not listed"
    );
    assert!(register(&shared, "p", "a", 2, 0).unwrap(), "already listed");
    for i in 0..MAX_REGISTERED + 5 {
        register(&shared, "q", &format!("r{i}"), usize::MAX, 0).unwrap();
    }
    assert_eq!(registered(&shared, "q").len(), MAX_REGISTERED);
}

#[test]
fn the_registry_retries_a_lost_race_through_the_bounded_loop() {
    use marty_resilience_core::registry::{register, registered};
    // Our first write loses to another worker's registration; the second lands.
    let shared = Hooked::new();
    let raced = Cell::new(false);
    *shared.before_set.borrow_mut() = Some(Box::new(move |inner: &MemoryStore| {
        if !raced.replace(true) {
            register(inner, "p", "other", 10, 0).unwrap();
        }
    }));
    assert!(register(&shared, "p", "mine", 10, 0).unwrap());
    let names: Vec<String> = registered(&shared.inner, "p")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"mine".to_string()) && names.contains(&"other".to_string()));
}

#[test]
fn the_registry_stamps_use_and_expires_what_nobody_used_but_the_kept_ones() {
    use marty_resilience_core::registry::{expire, register, registered, stamp};
    let shared = MemoryStore::new();
    for name in ["kept", "used", "idle"] {
        register(&shared, "p", name, 10, 100).unwrap();
    }
    stamp(&shared, "p", &["used".to_string()], 1_000).unwrap();
    let expired = expire(&shared, "p", &["kept".to_string()], 500, 1_200).unwrap();
    assert_eq!(expired, ["idle"]);
    let left: Vec<(String, u64)> = registered(&shared, "p")
        .into_iter()
        .map(|e| (e.name, e.seen_ns))
        .collect();
    assert_eq!(
        left,
        [("kept".to_string(), 100), ("used".to_string(), 1_000)]
    );
}

#[test]
fn a_registry_written_before_stamps_existed_still_reads() {
    use marty_resilience_core::registry::registered;
    let shared = MemoryStore::new();
    shared.put_raw(
        &marty_resilience_core::keys::registry("p"),
        b"users\norders",
    );
    let names: Vec<(String, u64)> = registered(&shared, "p")
        .into_iter()
        .map(|e| (e.name, e.seen_ns))
        .collect();
    assert_eq!(names, [("users".to_string(), 0), ("orders".to_string(), 0)]);
}
