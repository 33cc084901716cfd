//! A recording [`Host`] for native tests of the request path.
//!
//! One [`FakeEnvoy`] is the process (shared data, stats, the clock); each [`FakeHost`] is one
//! VM (worker) in it, with the headers of the stream it is currently serving. Every call is
//! logged by name, so tests can assert what a request cost in host calls, not only what it did.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::{Host, LocalReply, Map, MetricKind};
use crate::store::{MemoryStore, SharedStore, StoreError};

/// What every VM of one Envoy process shares.
#[derive(Default)]
pub struct FakeEnvoy {
    pub store: MemoryStore,
    stats: RefCell<Vec<(String, MetricKind, i64)>>,
    clock_ns: Cell<u64>,
    /// Name prefixes whose stats Envoy does not keep, as a `stats_matcher` that excludes them:
    /// they are defined, but read 0 whatever is written (Envoy's null stats).
    pub excluded_stats: RefCell<Vec<String>>,
}

impl FakeEnvoy {
    pub fn new() -> Rc<Self> {
        let envoy = Self::default();
        envoy.clock_ns.set(1_000_000_000);
        Rc::new(envoy)
    }

    /// A stat's value by full name (0 when never defined, as Envoy's null stats read).
    pub fn stat(&self, name: &str) -> i64 {
        self.stats
            .borrow()
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or(0, |(_, _, v)| *v)
    }

    /// Every defined stat name.
    pub fn stat_names(&self) -> Vec<String> {
        self.stats
            .borrow()
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    fn excluded(&self, name: &str) -> bool {
        self.excluded_stats
            .borrow()
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
    }

    pub fn now_ns(&self) -> u64 {
        self.clock_ns.get()
    }

    pub fn advance_ms(&self, ms: u64) {
        self.clock_ns.set(self.clock_ns.get() + ms * 1_000_000);
    }
}

/// One VM of a [`FakeEnvoy`], serving one stream at a time.
pub struct FakeHost {
    pub envoy: Rc<FakeEnvoy>,
    headers: RefCell<HashMap<Map, Vec<(String, String)>>>,
    properties: RefCell<HashMap<String, Vec<u8>>>,
    /// Local replies sent, in order.
    pub replies: RefCell<Vec<LocalReply>>,
    pub filter_state: RefCell<Vec<(String, String)>>,
    /// Host calls made, by name, in order.
    pub calls: RefCell<Vec<&'static str>>,
    /// Draws handed out in order; 0.5 once they run out.
    pub draws: RefCell<VecDeque<f64>>,
    pub tick_period_ms: Cell<u32>,
    pub effective_context: Cell<u32>,
    /// Contexts resumed from the tick.
    pub resumed: RefCell<Vec<u32>>,
}

impl FakeHost {
    pub fn new(envoy: &Rc<FakeEnvoy>) -> Self {
        Self {
            envoy: envoy.clone(),
            headers: RefCell::default(),
            properties: RefCell::default(),
            replies: RefCell::default(),
            filter_state: RefCell::default(),
            calls: RefCell::default(),
            draws: RefCell::default(),
            tick_period_ms: Cell::new(0),
            effective_context: Cell::new(0),
            resumed: RefCell::default(),
        }
    }

    /// Starts a new stream: clears headers and the call log, keeps properties.
    pub fn new_stream(&self, request_headers: &[(&str, &str)]) {
        let mut maps = self.headers.borrow_mut();
        maps.clear();
        maps.insert(
            Map::RequestHeaders,
            request_headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        );
        self.calls.borrow_mut().clear();
    }

    pub fn set_headers(&self, map: Map, headers: &[(&str, &str)]) {
        self.headers.borrow_mut().insert(
            map,
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// The current value of a header, as the upstream would see it.
    pub fn header_value(&self, map: Map, name: &str) -> Option<String> {
        self.headers
            .borrow()
            .get(&map)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Sets a property (path segments joined with `.`); `None` removes it.
    pub fn set_property(&self, path: &str, value: Option<&[u8]>) {
        let mut props = self.properties.borrow_mut();
        match value {
            Some(v) => props.insert(path.to_string(), v.to_vec()),
            None => props.remove(path),
        };
    }

    /// Calls named `name` since the stream started.
    pub fn count(&self, name: &str) -> usize {
        self.calls.borrow().iter().filter(|c| **c == name).count()
    }

    /// Every call since the stream started, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls.borrow().clone()
    }

    pub fn last_reply(&self) -> Option<LocalReply> {
        self.replies.borrow().last().cloned()
    }

    fn log(&self, name: &'static str) {
        self.calls.borrow_mut().push(name);
    }
}

impl SharedStore for FakeHost {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.log("get_shared_data");
        self.envoy.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.log("set_shared_data");
        self.envoy.store.set(key, value, cas)
    }
}

impl Host for FakeHost {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.log("get_property");
        self.properties.borrow().get(&path.join(".")).cloned()
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.log("get_header");
        self.header_value(map, name).map(String::into_bytes)
    }

    fn set_header(&self, map: Map, name: &str, value: &str) {
        self.log("set_header");
        let mut maps = self.headers.borrow_mut();
        let headers = maps.entry(map).or_default();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_string(), value.to_string()));
    }

    fn remove_header(&self, map: Map, name: &str) {
        self.log("remove_header");
        if let Some(headers) = self.headers.borrow_mut().get_mut(&map) {
            headers.retain(|(n, _)| n != name);
        }
    }

    fn set_filter_state(&self, name: &str, value: &str) {
        self.log("set_property");
        self.filter_state
            .borrow_mut()
            .push((name.to_string(), value.to_string()));
    }

    fn send_local_reply(&self, reply: &LocalReply) -> bool {
        self.log("send_local_response");
        self.replies.borrow_mut().push(reply.clone());
        true
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        self.log("define_metric");
        let mut stats = self.envoy.stats.borrow_mut();
        let id = match stats.iter().position(|(n, _, _)| n == name) {
            Some(id) => id,
            None => {
                stats.push((name.to_string(), kind, 0));
                stats.len() - 1
            }
        };
        u32::try_from(id).ok()
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        self.log("increment_metric");
        if let Some((name, _, value)) = self.envoy.stats.borrow_mut().get_mut(id as usize) {
            if !self.envoy.excluded(name) {
                *value += delta;
            }
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.log("record_metric");
        if let Some((name, _, v)) = self.envoy.stats.borrow_mut().get_mut(id as usize) {
            if !self.envoy.excluded(name) {
                *v = i64::try_from(value).unwrap_or(i64::MAX);
            }
        }
    }

    fn get_metric(&self, id: u32) -> Option<u64> {
        self.log("get_metric");
        let stats = self.envoy.stats.borrow();
        let (_, _, value) = stats.get(id as usize)?;
        // Envoy's gauges are unsigned: a gauge moved below 0 wraps.
        Some(*value as u64)
    }

    fn monotonic_ns(&self) -> u64 {
        self.log("clock");
        self.envoy.clock_ns.get()
    }

    fn unix_ms(&self) -> u64 {
        self.log("clock");
        1_700_000_000_000 + self.envoy.clock_ns.get() / 1_000_000
    }

    fn draw(&self) -> f64 {
        self.draws.borrow_mut().pop_front().unwrap_or(0.5)
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        self.log("set_effective_context");
        self.effective_context.set(context_id);
        true
    }

    fn resume_request(&self) -> bool {
        self.log("continue_stream");
        self.resumed.borrow_mut().push(self.effective_context.get());
        true
    }

    fn set_tick_period_ms(&self, period: u32) {
        self.log("set_tick_period");
        self.tick_period_ms.set(period);
    }
}
