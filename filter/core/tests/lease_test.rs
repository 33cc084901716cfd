//! Leases on the slots of the gauges (`filter/core/src/lease.rs`): a VM publishes what it
//! holds on its tick; a VM that stops ticking (trapped) has its slots given back by the first
//! live VM once its lease is stale, exactly once; a VM that was only slow takes back what was
//! given back for it; a VM that goes away cleanly gives up its lease; the record is bounded
//! and its decoder total. Workers are plugins on one `FakeEnvoy`; a trap is a plugin (and its
//! streams) that is never called again nor dropped (`std::mem::forget`).

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::rc::Rc;

use marty_resilience_core::config::Settings;
use marty_resilience_core::host::fake::{FakeEnvoy, FakeHost};
use marty_resilience_core::host::Map;
use marty_resilience_core::keys;
use marty_resilience_core::lease::{
    self, BucketSlots, Holdings, Lease, Leases, MAX_LEASES, STALE_NS, TOMBSTONE_NS,
};
use marty_resilience_core::proxy::scheduler::TICK_MS;
use marty_resilience_core::proxy::{Action, Plugin, Stream};
use marty_resilience_core::store::{Codec, MemoryStore, SharedStore};

/// `users` caps requests at 3 and faults at 2; delays are held up to 60 s.
const CONFIG: &str = r#"{
  "failure_injection": {"enabled": true, "base_failure_rate": 0,
                        "header_trigger": {"enabled": true}, "max_active_faults": 2,
                        "delay": {"max": "60s"}},
  "routes": {"users": {"circuit_breaker": {"max_concurrent_requests": 3}}}
}"#;

struct Worker {
    plugin: Rc<Plugin<FakeHost>>,
    next_id: std::cell::Cell<u32>,
}

impl Worker {
    fn new(envoy: &Rc<FakeEnvoy>) -> Self {
        let settings = Settings::parse(CONFIG.as_bytes(), &[]).unwrap();
        Self {
            plugin: Rc::new(Plugin::new(FakeHost::new(envoy), settings).unwrap()),
            next_id: std::cell::Cell::new(1),
        }
    }

    /// A request on `users` that stays in flight (at the upstream, or held with `headers`).
    fn start(&self, headers: &[(&str, &str)]) -> (Stream<FakeHost>, Action) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let host = &self.plugin.host;
        host.set_property("xds.route_name", Some(b"users"));
        host.set_property("xds.cluster_name", Some(b"upstream"));
        let mut all = vec![(":method", "GET"), (":path", "/")];
        all.extend_from_slice(headers);
        host.new_stream(&all);
        let mut stream = Stream::new(id, self.plugin.clone());
        let action = stream.on_request_headers(true);
        (stream, action)
    }

    fn admitted(&self) -> Stream<FakeHost> {
        let (stream, action) = self.start(&[]);
        assert_eq!(action, Action::Continue, "admitted");
        stream
    }

    fn finish(&self, mut stream: Stream<FakeHost>) {
        self.plugin
            .host
            .set_headers(Map::ResponseHeaders, &[(":status", "200")]);
        stream.on_response_headers(true);
        stream.on_delete();
    }

    fn tick(&self) {
        self.plugin.tick();
    }
}

fn gauge(envoy: &FakeEnvoy, leaf: &str) -> i64 {
    envoy.stat(&format!("marty_resilience.route.users.{leaf}"))
}

/// The leases record as stored (none before a VM first held a slot at its tick).
fn stored(envoy: &FakeEnvoy) -> Leases {
    match envoy.store.get(&keys::leases("marty_resilience")).unwrap() {
        Some((bytes, _)) => Leases::decode(&bytes).expect("the stored leases decode"),
        None => Leases::default(),
    }
}

/// Advances the clock by `ms` and ticks every worker given.
fn ticks(envoy: &FakeEnvoy, ms: u64, workers: &[&Worker]) {
    let mut left = ms;
    while left > 0 {
        let step = left.min(u64::from(TICK_MS));
        envoy.advance_ms(step);
        left -= step;
        for w in workers {
            w.tick();
        }
    }
}

/// A worker that traps: never called again, never dropped.
fn trap(worker: Worker, streams: Vec<Stream<FakeHost>>) {
    std::mem::forget(streams);
    std::mem::forget(worker);
}

#[test]
fn a_worker_publishes_what_it_holds_on_its_tick() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(&envoy);
    let held = [a.admitted(), a.admitted()];
    let (delayed, action) = a.start(&[("x-failure-inject", "delay=30s")]);
    assert_eq!(action, Action::Pause);
    assert!(stored(&envoy).leases.is_empty(), "not before the tick");
    ticks(&envoy, u64::from(TICK_MS), &[&a]);
    let leases = stored(&envoy).leases;
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(
        leases[0].holdings,
        Holdings {
            unflushed: 1,
            buckets: vec![BucketSlots {
                stat_name: "users".into(),
                requests: 3,
                faults: 1
            }]
        }
    );
    for stream in held {
        a.finish(stream);
    }
    let mut delayed = delayed;
    delayed.on_delete();
    // Two quiet ticks: the counts are flushed and nothing is held; the lease is given up.
    ticks(&envoy, 2 * u64::from(TICK_MS), &[&a]);
    assert!(stored(&envoy).leases.is_empty(), "{:?}", stored(&envoy));
}

#[test]
fn a_trapped_worker_s_slots_come_back_once_its_lease_is_stale() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(&envoy);
    let b = Worker::new(&envoy);
    let mut streams = vec![a.admitted()];
    let (delayed, action) = a.start(&[("x-failure-inject", "delay=30s")]);
    assert_eq!(action, Action::Pause);
    streams.push(delayed);
    ticks(&envoy, u64::from(TICK_MS), &[&a, &b]);
    let live = b.admitted();
    assert_eq!(gauge(&envoy, "active_requests"), 3, "the cap is reached");
    assert_eq!(gauge(&envoy, "active_faults"), 1);
    trap(a, streams);

    // Within the stale bound, nothing is given back.
    ticks(&envoy, STALE_NS / 1_000_000 - 2 * u64::from(TICK_MS), &[&b]);
    assert_eq!(gauge(&envoy, "active_requests"), 3);
    // Past it, once: b's own slot stays counted.
    ticks(&envoy, 2 * u64::from(TICK_MS), &[&b]);
    assert_eq!(gauge(&envoy, "active_requests"), 1);
    assert_eq!(gauge(&envoy, "active_faults"), 0);
    // a's +1 (kept across its last tick) is given back too; b's own went at a quiet tick.
    assert_eq!(envoy.stat("marty_resilience.counters_unflushed"), 0);
    // The cap (3) is whole again: b holds 1 and takes 2 more, and no 4th.
    let more = [b.admitted(), b.admitted()];
    let (_, fourth) = b.start(&[]);
    assert_eq!(fourth, Action::Pause, "the cap still holds");
    b.finish(live);
    for stream in more {
        b.finish(stream);
    }
    assert_eq!(gauge(&envoy, "active_requests"), 0);
}

#[test]
fn two_live_workers_claim_a_dead_lease_once() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(&envoy);
    let b = Worker::new(&envoy);
    let c = Worker::new(&envoy);
    let streams = vec![a.admitted(), a.admitted()];
    ticks(&envoy, u64::from(TICK_MS), &[&a, &b, &c]);
    let live = c.admitted();
    trap(a, streams);
    ticks(
        &envoy,
        STALE_NS / 1_000_000 + 2 * u64::from(TICK_MS),
        &[&b, &c],
    );
    assert_eq!(gauge(&envoy, "active_requests"), 1, "c's request only");
    let leases = stored(&envoy).leases;
    assert_eq!(leases.iter().filter(|l| l.claimed).count(), 1, "{leases:?}");
    c.finish(live);
    assert_eq!(gauge(&envoy, "active_requests"), 0);
}

#[test]
fn a_worker_that_was_only_slow_takes_back_what_was_given_back_for_it() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(&envoy);
    let b = Worker::new(&envoy);
    let streams = [a.admitted(), a.admitted()];
    ticks(&envoy, u64::from(TICK_MS), &[&a, &b]);
    // a does not tick for longer than the stale bound: b gives its slots back.
    ticks(&envoy, STALE_NS / 1_000_000 + u64::from(TICK_MS), &[&b]);
    assert_eq!(gauge(&envoy, "active_requests"), 0);
    // a wakes up: its requests are still in flight, and counted again.
    ticks(&envoy, u64::from(TICK_MS), &[&a, &b]);
    assert_eq!(gauge(&envoy, "active_requests"), 2);
    for stream in streams {
        a.finish(stream);
    }
    assert_eq!(gauge(&envoy, "active_requests"), 0);
    // Its fresh lease is renewed and never claimed while it ticks.
    ticks(&envoy, 2 * STALE_NS / 1_000_000, &[&a, &b]);
    assert_eq!(gauge(&envoy, "active_requests"), 0);
}

#[test]
fn a_plugin_that_goes_away_gives_up_its_lease() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(&envoy);
    let stream = a.admitted();
    ticks(&envoy, u64::from(TICK_MS), &[&a]);
    assert_eq!(stored(&envoy).leases.len(), 1);
    a.finish(stream);
    drop(a);
    assert!(stored(&envoy).leases.is_empty(), "{:?}", stored(&envoy));
    assert_eq!(envoy.stat("marty_resilience.counters_unflushed"), 0);
    assert_eq!(gauge(&envoy, "active_requests"), 0);
}

#[test]
fn a_trapped_worker_s_unflushed_counts_gauge_comes_back() {
    let envoy = FakeEnvoy::new();
    let a = Worker::new(&envoy);
    let b = Worker::new(&envoy);
    let stream = a.admitted();
    a.finish(stream);
    // The tick adds the counts, and keeps a's +1 (more may come before the next one).
    ticks(&envoy, u64::from(TICK_MS), &[&a, &b]);
    assert_eq!(envoy.stat("marty_resilience.counters_unflushed"), 1);
    a.finish(a.admitted());
    trap(a, Vec::new());
    ticks(&envoy, STALE_NS / 1_000_000 + u64::from(TICK_MS), &[&b]);
    assert_eq!(envoy.stat("marty_resilience.counters_unflushed"), 0);
}

fn holding(n: u32) -> Holdings {
    Holdings {
        unflushed: 0,
        buckets: vec![BucketSlots {
            stat_name: "users".into(),
            requests: n,
            faults: 0,
        }],
    }
}

#[test]
fn the_record_is_bounded_and_tombstones_make_room_first() {
    const KEY: &str = "p/v1/leases";
    let store = MemoryStore::new();
    let now = 10 * STALE_NS;
    for _ in 0..MAX_LEASES {
        let renewal = lease::renew(&store, KEY, None, &holding(1), false, now).unwrap();
        assert!(renewal.id.is_some());
    }
    let full = lease::renew(&store, KEY, None, &holding(1), false, now).unwrap();
    assert_eq!(full.id, None, "no room among live leases");
    // Every lease goes stale: one renewal claims them all, and its own lease has room.
    let later = now + STALE_NS;
    let claimed = lease::renew(&store, KEY, None, &holding(1), false, later).unwrap();
    assert_eq!(claimed.reclaimed.len(), MAX_LEASES);
    assert!(claimed.id.is_some(), "a tombstone made room");
    let (bytes, _) = store.get(KEY).unwrap().unwrap();
    assert!(Leases::decode(&bytes).unwrap().leases.len() <= MAX_LEASES);
    // Tombstones are forgotten after their time.
    let own = claimed.id;
    let much_later = later + TOMBSTONE_NS;
    lease::renew(&store, KEY, own, &holding(1), true, much_later).unwrap();
    let (bytes, _) = store.get(KEY).unwrap().unwrap();
    let leases = Leases::decode(&bytes).unwrap().leases;
    assert_eq!(leases.len(), 1, "{leases:?}");
}

#[test]
fn a_corrupt_record_never_panics_and_is_replaced() {
    let record = Leases {
        next_id: 9,
        leases: vec![Lease {
            id: 3,
            heartbeat_ns: 5,
            claimed: false,
            holdings: holding(2),
        }],
    };
    let bytes = record.encode();
    assert_eq!(Leases::decode(&bytes), Some(record));
    for cut in 0..bytes.len() {
        assert_eq!(Leases::decode(&bytes[..cut]), None, "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(Leases::decode(&longer), None);
    let mut flag = bytes.clone();
    flag[1 + 4 + 2 + 4 + 8] = 2;
    assert_eq!(
        Leases::decode(&flag),
        None,
        "a claimed flag that is not 0 or 1"
    );

    let store = MemoryStore::new();
    store.put_raw("k", b"\x01\xff\xff\xff\xff\xff\xff garbage");
    let renewal = lease::renew(&store, "k", None, &holding(1), false, 1).unwrap();
    assert!(renewal.was_corrupt);
    assert!(renewal.id.is_some());
}
