//! One loaded configuration on one VM (one per Envoy worker): the validated settings, the
//! buckets this VM has seen with their stat ids, the route-name cache that lets a request
//! resolve its route with one property read, and the tick's housekeeping.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use log::{error, warn};

use super::bucket::BucketState;
use super::scheduler::{Parked, Scheduler, TICK_MS};
use crate::breaker::{self, Now, Record, Step, Transition, Updated};
use crate::config::{RoutePolicy, Settings, DEFAULT_ROUTE};
use crate::fault::AbortPolicy;
use crate::host::Host;
use crate::routes::{resolve, Route};
use crate::stats::{PluginStats, RouteStats, PREFIX};
use crate::store::UpdateError;
use crate::{keys, pbstruct, registry, retry::budget, NANOS_PER_SEC};

/// How long a resolved route is trusted before its metadata is read again, so an RDS update
/// of the route's `marty.resilience` entry takes effect without reloading the plugin.
const ROUTE_REFRESH_NS: u64 = 10 * NANOS_PER_SEC;

/// Route names cached per VM. Names come from Envoy's route configuration (the operator), so
/// this is never reached in practice; past it, routes are resolved on every request.
const MAX_CACHED_ROUTES: usize = 4096;

/// The `filter_metadata` namespace of per-route entries.
pub const NAMESPACE: &str = "marty.resilience";

/// What a held request does when its time is up, instead of resuming: an injected abort
/// (a fault with both a delay and an abort), answered like the request's protocol.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThenAbort {
    pub abort: AbortPolicy,
    pub grpc: bool,
}

struct Cached {
    bucket: Rc<BucketState>,
    /// The cache epoch it was resolved in; the tick moves the epoch every
    /// [`ROUTE_REFRESH_NS`], so a request never needs the clock to know its entry is stale.
    epoch: u64,
}

pub struct Plugin<H: Host> {
    pub host: H,
    pub settings: Settings,
    pub stats: PluginStats,
    buckets: RefCell<HashMap<String, Rc<BucketState>>>,
    by_route: RefCell<HashMap<String, Cached>>,
    /// Stat names in use, by bucket: two buckets must not share one.
    stat_names: RefCell<HashMap<String, String>>,
    pub scheduler: Scheduler<ThenAbort>,
    /// The wall clock minus the monotonic clock, measured once: the wall time of a transition
    /// is only reported, so deriving it saves a host call per request.
    wall_offset_ms: u64,
    last_housekeeping_ns: Cell<u64>,
    route_epoch: Cell<u64>,
    route_epoch_started_ns: Cell<u64>,
}

impl<H: Host> Plugin<H> {
    /// Sets up the configured buckets: stats defined, shared keys created if missing (before
    /// any traffic, which is what makes creation race-free for them).
    pub fn new(host: H, settings: Settings) -> Self {
        let wall_offset_ms = host
            .unix_ms()
            .saturating_sub(host.monotonic_ns() / 1_000_000);
        let plugin = Self {
            stats: PluginStats::define(&host, PREFIX),
            host,
            settings,
            buckets: RefCell::new(HashMap::new()),
            by_route: RefCell::new(HashMap::new()),
            stat_names: RefCell::new(HashMap::new()),
            scheduler: Scheduler::default(),
            wall_offset_ms,
            last_housekeeping_ns: Cell::new(0),
            route_epoch: Cell::new(0),
            route_epoch_started_ns: Cell::new(0),
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

    pub fn now(&self) -> Now {
        let mono_ns = self.host.monotonic_ns();
        Now {
            mono_ns,
            unix_ms: self.wall_offset_ms.saturating_add(mono_ns / 1_000_000),
        }
    }

    /// The bucket for `route`, created (stats defined, key ensured) on first sight.
    fn bucket(&self, route: Route) -> Rc<BucketState> {
        if let Some(bucket) = self.buckets.borrow().get(&route.bucket) {
            *bucket.route.borrow_mut() = Rc::new(route);
            return bucket.clone();
        }
        if let Err(e) = breaker::ensure(&self.host, &route.key) {
            self.store_failed(&route.key, e);
        }
        if let Err(e) = registry::register(&self.host, &route.bucket) {
            self.store_failed(&keys::registry(), e);
        }
        self.stat_names
            .borrow_mut()
            .insert(route.stat_name.clone(), route.bucket.clone());
        let stats = RouteStats::define(&self.host, &RouteStats::scope(PREFIX, &route.stat_name));
        let name = route.bucket.clone();
        let bucket = Rc::new(BucketState::new(route, stats));
        self.buckets.borrow_mut().insert(name, bucket.clone());
        bucket
    }

    pub fn bucket_names(&self) -> Vec<String> {
        self.buckets.borrow().keys().cloned().collect()
    }

    /// The policy this VM resolved for a bucket, if it knows the bucket.
    pub fn bucket_policy(&self, name: &str) -> Option<RoutePolicy> {
        self.buckets
            .borrow()
            .get(name)
            .map(|b| b.route.borrow().policy.clone())
    }

    /// The bucket's in-flight gauge (shared by every worker), for buckets this VM knows.
    pub fn active_requests(&self, name: &str) -> u64 {
        self.buckets
            .borrow()
            .get(name)
            .and_then(|b| b.stats.active_requests.get(&self.host))
            .unwrap_or(0)
    }

    /// The bucket already using `route`'s stat name, if it is another one.
    fn stat_name_taken(&self, route: &Route) -> Option<String> {
        self.stat_names
            .borrow()
            .get(&route.stat_name)
            .filter(|bucket| **bucket != route.bucket)
            .cloned()
    }

    /// Holds a request until `until_ns`, then resumes it (or sends `then`).
    pub fn park(&self, context_id: u32, until_ns: u64, then: Option<ThenAbort>) {
        self.scheduler.park(
            &self.host,
            Parked {
                context_id,
                until_ns,
                then,
            },
        );
    }

    /// Resumes (or aborts) every held request whose delay is over.
    fn release_due(&self, now_ns: u64) {
        for parked in self.scheduler.take_due(&self.host, now_ns) {
            if !self.host.set_effective_context(parked.context_id) {
                continue;
            }
            match parked.then {
                Some(then) => {
                    self.host
                        .send_local_reply(&super::reply::fault_abort(then.abort, then.grpc));
                }
                None => {
                    self.host.resume_request();
                }
            }
        }
    }

    /// Resolves the Envoy route `name` (empty for unnamed routes) to its bucket.
    pub fn resolve(&self, name: &str) -> Rc<BucketState> {
        let epoch = self.route_epoch.get();
        if let Some(cached) = self.by_route.borrow().get(name) {
            if cached.epoch == epoch {
                return cached.bucket.clone();
            }
        }
        // Unnamed routes cannot be told apart, so they never carry their own entry.
        let metadata = if name.is_empty() {
            None
        } else {
            self.host.property(&["xds", "route_metadata"])
        };
        let decoded = match metadata
            .as_deref()
            .map(|m| pbstruct::filter_metadata(m, NAMESPACE))
        {
            Some(Ok(entry)) => entry,
            Some(Err(_)) => {
                warn!("route {name}: route metadata could not be decoded; ignored");
                self.stats.route_config_rejected.inc(&self.host);
                None
            }
            None => None,
        };
        let mut resolution = resolve(&self.settings, name, decoded.as_ref());
        if let Some(err) = resolution.metadata_error {
            error!("route {name}: route metadata rejected, plugin configuration applies: {err}");
            self.stats.route_config_rejected.inc(&self.host);
        }
        if let Some(other) = self.stat_name_taken(&resolution.route) {
            error!(
                "route {name}: its stat name {:?} is already used by route {other:?}; route metadata ignored",
                resolution.route.stat_name
            );
            self.stats.route_config_rejected.inc(&self.host);
            resolution = resolve(&self.settings, name, None);
        }
        let bucket = self.bucket(resolution.route);
        let mut cache = self.by_route.borrow_mut();
        if cache.len() < MAX_CACHED_ROUTES || cache.contains_key(name) {
            cache.insert(
                name.to_string(),
                Cached {
                    bucket: bucket.clone(),
                    epoch,
                },
            );
        }
        bucket
    }

    /// Runs a breaker step on `bucket` with CAS, and reports what it did to the stats.
    pub fn update<T>(
        &self,
        bucket: &BucketState,
        decide: impl FnMut(&Record) -> Step<T>,
    ) -> Result<Step<T>, UpdateError> {
        let key = bucket.route.borrow().key.clone();
        // Read before the record, so a transition that lands in between moves the counter
        // past this value and the cached admission will not trust the (older) record.
        let opened_before = bucket.stats.opened.get(&self.host);
        match breaker::update(&self.host, &key, decide) {
            Ok(Updated {
                step,
                current,
                was_corrupt,
            }) => {
                if was_corrupt {
                    warn!("{key}: stored breaker state was unreadable; reset to closed");
                    self.stats.state_reset.inc(&self.host);
                }
                if let Some(transition) = step.transition {
                    self.report_transition(bucket, transition, &key);
                }
                if step.transition.is_some() || bucket.view.borrow().is_none() {
                    bucket
                        .stats
                        .circuit_state
                        .record(&self.host, current.state.gauge());
                }
                let closed = current.state == breaker::State::Closed && step.transition.is_none();
                bucket
                    .opened_as_of_view
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

    fn report_transition(&self, bucket: &BucketState, transition: Transition, key: &str) {
        let stats = &bucket.stats;
        let counter = match transition {
            Transition::Opened => stats.opened,
            Transition::HalfOpened => stats.half_opened,
            Transition::Closed => stats.closed,
        };
        counter.inc(&self.host);
        log::info!("{key}: circuit {}", transition.to().name());
    }

    /// Adds this worker's retry-budget counts to the route's shared record and keeps the
    /// budget as it now stands: requests decide on it until the next tick.
    fn flush_budget(&self, bucket: &BucketState, route: &Route, now_ns: u64) {
        let key = keys::budget(&route.bucket);
        let mut state = bucket.budget.borrow_mut();
        let (pending, snapshot) = &mut *state;
        match budget::flush(
            &self.host,
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

    pub fn store_failed(&self, key: &str, e: UpdateError) {
        match e {
            UpdateError::Exhausted => {
                log::debug!("{key}: compare-and-swap kept losing; request let through");
                self.stats.cas_exhausted.inc(&self.host);
            }
            UpdateError::Host(status) => {
                warn!("{key}: shared data call failed with status {status}");
                self.stats.shared_data_errors.inc(&self.host);
            }
        }
    }

    /// The root's tick: held requests that are due, then (every [`TICK_MS`]) housekeeping on
    /// every known bucket that may need it (quiet CLOSED ones are skipped, so the cost follows
    /// the routes in trouble, not all routes): lazy transitions that are due, the retry budget
    /// flushed, and the state gauge re-recorded from the shared record.
    ///
    /// Returns whether housekeeping ran (the glue refreshes its log level then).
    pub fn tick(&self) -> bool {
        let now = self.now();
        self.release_due(now.mono_ns);
        let since = now.mono_ns.saturating_sub(self.last_housekeeping_ns.get());
        if since < u64::from(TICK_MS) * 1_000_000 {
            return false;
        }
        self.last_housekeeping_ns.set(now.mono_ns);
        let epoch_age = now
            .mono_ns
            .saturating_sub(self.route_epoch_started_ns.get());
        if epoch_age >= ROUTE_REFRESH_NS {
            self.route_epoch.set(self.route_epoch.get().wrapping_add(1));
            self.route_epoch_started_ns.set(now.mono_ns);
        }
        let buckets: Vec<Rc<BucketState>> = self.buckets.borrow().values().cloned().collect();
        for bucket in buckets {
            let route = bucket.route();
            if route.policy.retry.enabled {
                self.flush_budget(&bucket, &route, now.mono_ns);
            }
            let policy = &route.policy.circuit_breaker;
            if !policy.enabled || bucket.is_quiet(&self.host) {
                continue;
            }
            if self
                .update(&bucket, |rec| breaker::tick(rec, policy, now))
                .is_ok()
            {
                if let Some(view) = bucket.view.borrow().as_ref() {
                    bucket
                        .stats
                        .circuit_state
                        .record(&self.host, view.state.gauge());
                }
            }
        }
        true
    }
}
