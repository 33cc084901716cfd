//! One loaded configuration on one VM (one per Envoy worker): the validated settings, the
//! buckets this VM has seen with their stat ids, and the route-name cache that lets a request
//! resolve its route with one property read.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{error, warn};
use marty_resilience_core::breaker::{Now, Record, State, Step, Transition};
use marty_resilience_core::config::{Settings, DEFAULT_ROUTE};
use marty_resilience_core::retry::budget;
use marty_resilience_core::routes::{resolve, Route};
use marty_resilience_core::store::{self, UpdateError, Updated};
use marty_resilience_core::{pbstruct, NANOS_PER_SEC};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::host::{self, HostStore};
use crate::metrics::{inc, GlobalMetrics, RouteMetrics};

/// How long a resolved route is trusted before its metadata is read again, so an RDS update
/// of the route's `marty.resilience` entry takes effect without reloading the plugin.
const ROUTE_REFRESH_NS: u64 = 10 * NANOS_PER_SEC;

/// Route names cached per VM. Names come from Envoy's route configuration (the operator), so
/// this is never reached in practice; past it, routes are resolved on every request.
const MAX_CACHED_ROUTES: usize = 4096;

/// The `filter_metadata` namespace of per-route entries.
pub const NAMESPACE: &str = "marty.resilience";

/// A breaker bucket as this VM knows it.
pub struct Bucket {
    /// The latest resolution of the bucket's route (policy may change with metadata).
    pub route: RefCell<Rc<Route>>,
    pub metrics: RouteMetrics,
    /// The record as this VM last read or wrote it: lets a success skip the write when there
    /// is no failure streak to reset.
    pub view: RefCell<Option<Record>>,
    /// This worker's retry-budget counts since the last flush, and the route's budget as of it.
    pub budget: RefCell<(budget::Pending, Option<budget::Snapshot>)>,
    /// `circuit_opened_total` as it stood before the read that last showed the breaker CLOSED.
    /// While the counter still reads the same, no worker has opened the breaker since, so a
    /// request can be admitted from `view` without reading shared data (see `admit_fast`).
    pub closed_as_of_opened: Cell<Option<u64>>,
}

impl Bucket {
    /// Nothing for the tick to do: CLOSED with no failure streak as of the last read, and no
    /// worker has opened the breaker since (the state gauge is then already right).
    pub fn is_quiet(&self) -> bool {
        self.admit_fast().is_some()
            && self
                .view
                .borrow()
                .as_ref()
                .is_some_and(|v| v.consecutive_failures == 0)
    }

    /// Admission without shared data when nothing can have changed: the breaker was CLOSED at
    /// the last read and `circuit_opened_total` (one Envoy counter, which every worker that
    /// opens the breaker increments right after its write lands) has not moved. A counter read
    /// costs a tenth of a shared-data read, which must copy the record into the VM.
    pub fn admit_fast(&self) -> Option<marty_resilience_core::breaker::Ticket> {
        let opened = host::get_metric(self.metrics.opened)?;
        if self.closed_as_of_opened.get() != Some(opened) {
            return None;
        }
        let view = self.view.borrow();
        let view = view.as_ref().filter(|v| v.state == State::Closed)?;
        Some(marty_resilience_core::breaker::Ticket {
            generation: view.generation,
            probe: None,
        })
    }
}

struct Cached {
    bucket: Rc<Bucket>,
    expires_ns: u64,
}

pub struct Plugin {
    pub settings: Settings,
    pub globals: GlobalMetrics,
    buckets: RefCell<HashMap<String, Rc<Bucket>>>,
    by_route: RefCell<HashMap<String, Cached>>,
    /// Stat names in use, by bucket: two buckets must not share one.
    stat_names: RefCell<HashMap<String, String>>,
    /// Requests held by an injected delay on this VM, resumed from the tick.
    parked: RefCell<Vec<Parked>>,
    last_housekeeping_ns: Cell<u64>,
    rng: RefCell<SmallRng>,
}

/// A request held by an injected delay.
pub struct Parked {
    pub context_id: u32,
    pub until_ns: u64,
    /// Abort once the delay is over (a fault with both), instead of resuming.
    pub then_abort: Option<AbortReply>,
}

/// The local reply of an injected abort.
#[derive(Clone, Copy, Debug)]
pub struct AbortReply {
    pub http_status: u16,
    /// Set for gRPC requests: the reply is then trailers-only with this status.
    pub grpc_status: Option<u32>,
}

impl AbortReply {
    /// Replies on the current (or effective) stream, marked `x-marty-fault: abort`.
    pub fn send(self) -> bool {
        const DETAILS: &str = "marty_fault_abort";
        let headers = [("x-marty-fault", "abort")];
        match self.grpc_status {
            Some(code) => host::send_local_response(
                200,
                DETAILS,
                b"fault injected by marty-resilience",
                &headers,
                i32::try_from(code).unwrap_or(14),
            ),
            None => host::send_local_response(
                u32::from(self.http_status),
                DETAILS,
                b"fault injected by marty-resilience\n",
                &[("x-marty-fault", "abort"), ("content-type", "text/plain")],
                -1,
            ),
        }
    }
}

/// Tick period while requests are held: the resolution of injected delays.
pub const FAST_TICK_MS: u32 = 5;
/// Tick period otherwise: breaker housekeeping.
pub const TICK_MS: u32 = 250;

/// The wall clock minus the monotonic clock, in milliseconds, measured once per VM: the wall
/// time of a transition is only reported, so deriving it from the monotonic clock saves a host
/// call per request.
static WALL_OFFSET_MS: AtomicU64 = AtomicU64::new(0);

pub fn calibrate_wall_clock() {
    let offset = host::unix_ms().saturating_sub(host::monotonic_ns() / 1_000_000);
    WALL_OFFSET_MS.store(offset, Ordering::Relaxed);
}

pub fn now() -> Now {
    let mono_ns = host::monotonic_ns();
    Now {
        mono_ns,
        unix_ms: WALL_OFFSET_MS
            .load(Ordering::Relaxed)
            .saturating_add(mono_ns / 1_000_000),
    }
}

impl Plugin {
    /// Sets up the configured buckets: stats defined, shared keys created if missing (before
    /// any traffic, which is what makes creation race-free for them).
    pub fn new(settings: Settings) -> Self {
        let plugin = Self {
            settings,
            globals: GlobalMetrics::define(),
            buckets: RefCell::new(HashMap::new()),
            by_route: RefCell::new(HashMap::new()),
            stat_names: RefCell::new(HashMap::new()),
            parked: RefCell::new(Vec::new()),
            last_housekeeping_ns: Cell::new(0),
            // Seeded from WASI `random_get` (Envoy's entropy); a fixed seed only if that fails.
            rng: RefCell::new(
                SmallRng::from_rng(rand::rngs::OsRng)
                    .unwrap_or_else(|_| SmallRng::seed_from_u64(0x006d_6172_7479)),
            ),
        };
        let mut initial = vec![Route::new(DEFAULT_ROUTE, plugin.settings.defaults.clone())];
        initial.extend(
            plugin
                .settings
                .routes
                .iter()
                .map(|(name, policy)| Route::new(name, policy.clone())),
        );
        for route in initial {
            plugin.bucket(route);
        }
        plugin
    }

    /// The bucket for `route`, created (stats defined, key ensured) on first sight.
    fn bucket(&self, route: Route) -> Rc<Bucket> {
        if let Some(bucket) = self.buckets.borrow().get(&route.bucket) {
            *bucket.route.borrow_mut() = Rc::new(route);
            return bucket.clone();
        }
        if let Err(e) = store::ensure(&HostStore, &route.key) {
            self.store_failed(&route.key, e);
        }
        if let Err(e) = store::register(&HostStore, &route.bucket) {
            self.store_failed(store::ROUTES_KEY, e);
        }
        self.stat_names
            .borrow_mut()
            .insert(route.stat_name.clone(), route.bucket.clone());
        let bucket = Rc::new(Bucket {
            metrics: RouteMetrics::define(&route.stat_name),
            view: RefCell::new(None),
            closed_as_of_opened: Cell::new(None),
            budget: RefCell::new((budget::Pending::default(), None)),
            route: RefCell::new(Rc::new(route)),
        });
        let name = bucket.route.borrow().bucket.clone();
        self.buckets.borrow_mut().insert(name, bucket.clone());
        bucket
    }

    pub fn bucket_names(&self) -> Vec<String> {
        self.buckets.borrow().keys().cloned().collect()
    }

    /// The policy this VM resolved for a bucket, if it knows the bucket.
    pub fn bucket_policy(
        &self,
        name: &str,
    ) -> Option<Rc<marty_resilience_core::config::RoutePolicy>> {
        self.buckets
            .borrow()
            .get(name)
            .map(|b| Rc::new(b.route.borrow().policy.clone()))
    }

    /// The bucket's in-flight gauge, read from Envoy (shared by every worker).
    pub fn active_requests(&self, name: &str) -> u64 {
        let known = self
            .buckets
            .borrow()
            .get(name)
            .map(|b| b.metrics.active_requests);
        let id = known.unwrap_or_else(|| {
            // A bucket only another worker created: its gauge is the same Envoy stat.
            host::define_metric(
                host::MetricKind::Gauge,
                &format!(
                    "{}.route.{}.active_requests",
                    crate::metrics::PREFIX,
                    marty_resilience_core::config::stat_name(name)
                ),
            )
        });
        host::get_metric(id).unwrap_or(0)
    }

    /// The bucket already using `route`'s stat name, if it is another one.
    fn stat_name_taken(&self, route: &Route) -> Option<String> {
        self.stat_names
            .borrow()
            .get(&route.stat_name)
            .filter(|bucket| **bucket != route.bucket)
            .cloned()
    }

    /// A uniform draw in `[0, 1)`.
    pub fn draw(&self) -> f64 {
        self.rng.borrow_mut().gen::<f64>()
    }

    /// Holds a request until `until_ns`; the tick speeds up while anything is held.
    pub fn park(&self, parked: Parked) {
        self.parked.borrow_mut().push(parked);
        host::set_tick_period_ms(FAST_TICK_MS);
    }

    /// Forgets a held request whose stream ended: it must never be resumed.
    pub fn unpark(&self, context_id: u32) {
        self.parked
            .borrow_mut()
            .retain(|parked| parked.context_id != context_id);
    }

    /// Resumes (or aborts) every held request whose delay is over.
    fn release_due(&self, now_ns: u64) {
        let due: Vec<Parked> = {
            let mut parked = self.parked.borrow_mut();
            let (due, waiting) = parked.drain(..).partition(|p| p.until_ns <= now_ns);
            *parked = waiting;
            due
        };
        for parked in due {
            if !host::set_effective_context(parked.context_id) {
                continue;
            }
            match parked.then_abort {
                Some(reply) => {
                    reply.send();
                }
                None => {
                    host::resume_request();
                }
            }
        }
        if self.parked.borrow().is_empty() {
            host::set_tick_period_ms(TICK_MS);
        }
    }

    /// Resolves the Envoy route `name` (empty for unnamed routes) to its bucket.
    pub fn resolve(&self, name: &str, now_ns: u64) -> Rc<Bucket> {
        if let Some(cached) = self.by_route.borrow().get(name) {
            if cached.expires_ns > now_ns {
                return cached.bucket.clone();
            }
        }
        // Unnamed routes cannot be told apart, so they never carry their own entry.
        let metadata = if name.is_empty() {
            None
        } else {
            host::property(&["xds", "route_metadata"])
        };
        let decoded = match metadata
            .as_deref()
            .map(|m| pbstruct::filter_metadata(m, NAMESPACE))
        {
            Some(Ok(entry)) => entry,
            Some(Err(_)) => {
                warn!("route {name}: route metadata could not be decoded; ignored");
                inc(self.globals.route_config_rejected);
                None
            }
            None => None,
        };
        let mut resolution = resolve(&self.settings, name, decoded.as_ref());
        if let Some(err) = resolution.metadata_error {
            error!("route {name}: route metadata rejected, plugin configuration applies: {err}");
            inc(self.globals.route_config_rejected);
        }
        if let Some(other) = self.stat_name_taken(&resolution.route) {
            error!(
                "route {name}: its stat name {:?} is already used by route {other:?}; route metadata ignored",
                resolution.route.stat_name
            );
            inc(self.globals.route_config_rejected);
            resolution = resolve(&self.settings, name, None);
        }
        let bucket = self.bucket(resolution.route);
        let mut cache = self.by_route.borrow_mut();
        if cache.len() < MAX_CACHED_ROUTES || cache.contains_key(name) {
            cache.insert(
                name.to_string(),
                Cached {
                    bucket: bucket.clone(),
                    expires_ns: now_ns.saturating_add(ROUTE_REFRESH_NS),
                },
            );
        }
        bucket
    }

    /// Runs a breaker step on `bucket` with CAS, and reports what it did to the stats.
    pub fn update<T>(
        &self,
        bucket: &Bucket,
        decide: impl FnMut(&Record) -> Step<T>,
    ) -> Result<Step<T>, UpdateError> {
        let key = bucket.route.borrow().key.clone();
        // Read before the record, so a transition that lands in between moves the counter
        // past this value and the fast path will not trust the (older) record.
        let opened_before = host::get_metric(bucket.metrics.opened);
        match store::update(&HostStore, &key, decide) {
            Ok(Updated {
                step,
                current,
                was_corrupt,
            }) => {
                if was_corrupt {
                    warn!("{key}: stored breaker state was unreadable; reset to closed");
                    inc(self.globals.state_reset);
                }
                if let Some(transition) = step.transition {
                    report_transition(bucket, transition, &key);
                }
                if step.transition.is_some() || bucket.view.borrow().is_none() {
                    host::record_metric(bucket.metrics.circuit_state, current.state.gauge());
                }
                let closed = current.state == State::Closed && step.transition.is_none();
                bucket
                    .closed_as_of_opened
                    .set(if closed { opened_before } else { None });
                *bucket.view.borrow_mut() = Some(current);
                Ok(step)
            }
            Err(e) => {
                self.store_failed(&key, e);
                Err(e)
            }
        }
    }

    /// Adds this worker's retry-budget counts to the route's shared record and keeps the
    /// budget as it now stands: requests decide on it until the next tick.
    fn flush_budget(&self, bucket: &Bucket, route: &Route, now_ns: u64) {
        let key = budget::budget_key(&route.bucket);
        let mut state = bucket.budget.borrow_mut();
        let (pending, snapshot) = &mut *state;
        match budget::flush(
            &HostStore,
            &key,
            pending,
            now_ns,
            &route.policy.retry.budget,
        ) {
            Ok(flushed) => *snapshot = Some(flushed.snapshot),
            // The counts stay pending for the next tick.
            Err(e) => self.store_failed(&key, e),
        }
    }

    fn store_failed(&self, key: &str, e: UpdateError) {
        match e {
            UpdateError::Exhausted => {
                log::debug!("{key}: compare-and-swap kept losing; request let through");
                inc(self.globals.cas_exhausted);
            }
            UpdateError::Host(status) => {
                warn!("{key}: shared data call failed with status {status}");
                inc(self.globals.shared_data_errors);
            }
        }
    }

    /// Housekeeping on every known bucket that may need it (quiet CLOSED ones are skipped, so
    /// the cost follows the routes in trouble, not all routes): lazy transitions that are due,
    /// and the state gauge re-recorded from the shared record.
    pub fn tick(&self) {
        let now = now();
        self.release_due(now.mono_ns);
        let since = now.mono_ns.saturating_sub(self.last_housekeeping_ns.get());
        if since < u64::from(TICK_MS) * 1_000_000 {
            return;
        }
        self.last_housekeeping_ns.set(now.mono_ns);
        crate::logger::refresh_level();
        let buckets: Vec<Rc<Bucket>> = self.buckets.borrow().values().cloned().collect();
        for bucket in buckets {
            let route = bucket.route.borrow().clone();
            if route.policy.retry.enabled {
                self.flush_budget(&bucket, &route, now.mono_ns);
            }
            let policy = &route.policy.circuit_breaker;
            if !policy.enabled || bucket.is_quiet() {
                continue;
            }
            if self
                .update(&bucket, |rec| {
                    marty_resilience_core::breaker::tick(rec, policy, now)
                })
                .is_ok()
            {
                if let Some(view) = bucket.view.borrow().as_ref() {
                    host::record_metric(bucket.metrics.circuit_state, view.state.gauge());
                }
            }
        }
    }
}

fn report_transition(bucket: &Bucket, transition: Transition, key: &str) {
    let metrics = &bucket.metrics;
    let counter = match transition {
        Transition::Opened => metrics.opened,
        Transition::HalfOpened => metrics.half_opened,
        Transition::Closed => metrics.closed,
    };
    inc(counter);
    log::info!("{key}: circuit {}", transition.to().name());
}
