//! One loaded configuration on one VM (one per Envoy worker): the validated settings, the
//! buckets this VM has seen with their stat ids, the route-name cache that lets a request
//! resolve its route with one property read, and the tick's housekeeping.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use log::{error, warn};

use super::bucket::{BucketState, Deferred};
use super::scheduler::{Parked, Scheduler, TICK_MS};
use crate::breaker::{self, Now, Record, Step, Transition};
use crate::config::{RoutePolicy, Settings, OVERFLOW_BUCKET};
use crate::fast_map::FastMap;
use crate::fault::AbortPolicy;
use crate::host::Host;
use crate::routes::{named_by, resolve, NamedBy, Route};
use crate::stats::{PluginStats, RouteStats};
use crate::store::UpdateError;
use crate::{keys, lease, pbstruct, registry, retry::budget, NANOS_PER_SEC};

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
    /// `None`: requests on this route have no upstream cluster, so no bucket.
    bucket: Option<Rc<BucketState>>,
    /// The cache epoch it was resolved in; the tick moves the epoch every
    /// [`ROUTE_REFRESH_NS`], so a request never needs the clock to know its entry is stale.
    epoch: u64,
}

pub struct Plugin<H: Host> {
    pub host: H,
    pub settings: Settings,
    pub stats: PluginStats,
    buckets: RefCell<FastMap<String, Rc<BucketState>>>,
    /// Buckets by Envoy route name (route-named buckets).
    by_route: RefCell<FastMap<String, Cached>>,
    /// Buckets by upstream cluster name (cluster-named buckets).
    by_cluster: RefCell<FastMap<String, Cached>>,
    /// Names sent to the overflow bucket and warned about (bounded).
    overflow_warned: RefCell<Vec<String>>,
    /// Stat names in use, by bucket: two buckets must not share one.
    stat_names: RefCell<Vec<(String, String)>>,
    pub scheduler: Scheduler<ThenAbort>,
    /// The wall clock minus the monotonic clock, measured once: the wall time of a transition
    /// is only reported, so deriving it saves a host call per request.
    wall_offset_ms: u64,
    last_housekeeping_ns: Cell<u64>,
    route_epoch: Cell<u64>,
    route_epoch_started_ns: Cell<u64>,
    last_stamp_ns: Cell<u64>,
    /// Some bucket holds deferred counts.
    counts_pending: Cell<bool>,
    /// This VM holds a +1 on `counters_unflushed` (see [`Self::flush_counts`]).
    unflushed_held: Cell<bool>,
    /// This VM's lease on its slots, what it last published in it and when.
    lease_id: Cell<Option<u32>>,
    published: RefCell<lease::Holdings>,
    published_ns: Cell<u64>,
}

impl<H: Host> Plugin<H> {
    /// Sets up the configured buckets: stats defined, shared keys created if missing (before
    /// any traffic, which is what makes creation race-free for them). Refuses to run when
    /// Envoy does not keep the filter's stats (a `stats_matcher` that excludes them hands out
    /// stats that always read 0): the bulkhead, the fault cap and the cross-worker check of
    /// the cached admission read them, and would silently stop working.
    pub fn new(host: H, settings: Settings) -> Result<Self, String> {
        let wall_offset_ms = host
            .unix_ms()
            .saturating_sub(host.monotonic_ns() / 1_000_000);
        let plugin = Self {
            stats: PluginStats::define(&host, &settings.stat_prefix),
            host,
            settings,
            buckets: RefCell::new(FastMap::default()),
            by_route: RefCell::new(FastMap::default()),
            by_cluster: RefCell::new(FastMap::default()),
            overflow_warned: RefCell::new(Vec::new()),
            stat_names: RefCell::new(Vec::new()),
            scheduler: Scheduler::default(),
            wall_offset_ms,
            last_housekeeping_ns: Cell::new(0),
            route_epoch: Cell::new(0),
            route_epoch_started_ns: Cell::new(0),
            last_stamp_ns: Cell::new(0),
            counts_pending: Cell::new(false),
            unflushed_held: Cell::new(false),
            lease_id: Cell::new(None),
            published: RefCell::new(lease::Holdings::default()),
            published_ns: Cell::new(0),
        };
        let configured: Vec<Route> = plugin
            .settings
            .routes
            .iter()
            .map(|(name, policy)| Route::new(&plugin.settings.stat_prefix, name, policy.clone()))
            .collect();
        plugin.stats.stats_kept.record(&plugin.host, 1);
        if plugin.stats.stats_kept.get(&plugin.host) != Some(1) {
            return Err(format!(
                "Envoy does not keep this filter's stats ({0}.stats_kept reads 0: a stats_matcher \
                 excludes them?); the bulkhead, max_active_faults and the breaker's cross-worker \
                 check read them. Include every stat starting with \"wasmcustom.{0}.\"",
                plugin.settings.stat_prefix
            ));
        }
        for route in configured {
            plugin.bucket(route);
        }
        Ok(plugin)
    }

    pub fn now(&self) -> Now {
        let mono_ns = self.host.monotonic_ns();
        Now {
            mono_ns,
            unix_ms: self.wall_offset_ms.saturating_add(mono_ns / 1_000_000),
        }
    }

    /// The bucket for `route`, created (stats defined, key ensured, registered) on first sight;
    /// the overflow bucket when the instance has `max_buckets` buckets already or the name
    /// cannot be one (its stat name is another bucket's).
    fn bucket(&self, route: Route) -> Rc<BucketState> {
        if let Some(bucket) = self.buckets.borrow().get(&route.bucket) {
            bucket.set_route(route);
            return bucket.clone();
        }
        if route.bucket != OVERFLOW_BUCKET {
            if let Some(reason) = self.refuse(&route) {
                return self.overflow(&route.bucket, reason);
            }
        }
        self.create(route)
    }

    /// Why `route` cannot have a bucket of its own, if it cannot.
    fn refuse(&self, route: &Route) -> Option<&'static str> {
        let max = self.settings.max_buckets as usize;
        if self.buckets.borrow().len() >= max {
            return Some("max_buckets reached");
        }
        if let Some(other) = self.stat_name_taken(route) {
            error!(
                "bucket {:?}: its stat name {:?} is already used by bucket {other:?}",
                route.bucket, route.stat_name
            );
            return Some("stat name taken");
        }
        let now_ns = self.host.monotonic_ns();
        match registry::register(
            &self.host,
            &self.settings.stat_prefix,
            &route.bucket,
            max,
            now_ns,
        ) {
            Ok(true) => None,
            Ok(false) => Some("max_buckets reached"),
            Err(e) => {
                // Shared data unavailable: the bucket is created (fail open), just not listed.
                self.store_failed(&keys::registry(&self.settings.stat_prefix), e);
                None
            }
        }
    }

    fn overflow(&self, name: &str, reason: &str) -> Rc<BucketState> {
        let mut warned = self.overflow_warned.borrow_mut();
        let unwarned = warned.binary_search_by(|w| w.as_str().cmp(name)).err();
        if let Some(at) = unwarned.filter(|_| warned.len() < MAX_CACHED_ROUTES) {
            warned.insert(at, name.to_string());
            warn!("bucket {name:?} shares the overflow bucket: {reason}");
            self.stats.buckets_overflow.inc(&self.host);
        }
        drop(warned);
        let existing = self.buckets.borrow().get(OVERFLOW_BUCKET).cloned();
        existing.unwrap_or_else(|| {
            let _ = registry::register(
                &self.host,
                &self.settings.stat_prefix,
                OVERFLOW_BUCKET,
                self.settings.max_buckets as usize + 1,
                self.host.monotonic_ns(),
            );
            self.create(resolve(&self.settings, OVERFLOW_BUCKET, None).route)
        })
    }

    fn create(&self, route: Route) -> Rc<BucketState> {
        if let Err(e) = breaker::ensure(&self.host, &route.key) {
            self.store_failed(&route.key, e);
        }
        {
            let mut stat_names = self.stat_names.borrow_mut();
            match find_stat_name(&stat_names, &route.stat_name) {
                Ok(i) => {
                    if let Some(entry) = stat_names.get_mut(i) {
                        entry.1 = route.bucket.clone();
                    }
                }
                Err(i) => stat_names.insert(i, (route.stat_name.clone(), route.bucket.clone())),
            }
        }
        let scope = RouteStats::scope(&self.settings.stat_prefix, &route.stat_name);
        let stats = RouteStats::define(&self.host, &scope);
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
        let stat_names = self.stat_names.borrow();
        let i = find_stat_name(&stat_names, &route.stat_name).ok()?;
        stat_names
            .get(i)
            .map(|(_, bucket)| bucket)
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

    /// The route epoch: moved by the tick every [`ROUTE_REFRESH_NS`] (and when buckets are
    /// forgotten); what is learned of a route holds for one epoch.
    pub fn route_epoch(&self) -> u64 {
        self.route_epoch.get()
    }

    /// The bucket of a request on the Envoy route `route_name` (empty for unnamed routes);
    /// `None` when the request has no upstream cluster (no route, `direct_response`,
    /// redirect): no breaker counts it. A route-named bucket costs no host call once cached;
    /// a cluster-named one reads the cluster name on every request.
    pub fn bucket_for(&self, route_name: &str) -> Option<Rc<BucketState>> {
        let bucket = self.find_bucket(route_name)?;
        // For ageing: a flag, no host call.
        bucket.used.set(true);
        Some(bucket)
    }

    fn find_bucket(&self, route_name: &str) -> Option<Rc<BucketState>> {
        let epoch = self.route_epoch.get();
        match named_by(self.settings.bucket_by, route_name) {
            NamedBy::Route => {
                if let Some(cached) = self.by_route.borrow().get(route_name) {
                    if cached.epoch == epoch {
                        return cached.bucket.clone();
                    }
                }
                // Whether the route goes upstream at all is a property of the route: learned
                // once per route and refresh, not per request.
                let bucket = self
                    .host
                    .property(&["xds", "cluster_name"])
                    .map(|_| self.resolve_route(route_name));
                cache(&self.by_route, route_name, bucket.clone(), epoch);
                bucket
            }
            NamedBy::Cluster => {
                let cluster = self.host.property(&["xds", "cluster_name"])?;
                let cluster = String::from_utf8(cluster).ok()?;
                if let Some(cached) = self.by_cluster.borrow().get(&cluster) {
                    if cached.epoch == epoch {
                        return cached.bucket.clone();
                    }
                }
                let bucket = self.bucket(resolve(&self.settings, &cluster, None).route);
                cache(&self.by_cluster, &cluster, Some(bucket.clone()), epoch);
                Some(bucket)
            }
        }
    }

    /// The bucket of the named route `name`, with its route metadata.
    fn resolve_route(&self, name: &str) -> Rc<BucketState> {
        let metadata = self.host.property(&["xds", "route_metadata"]);
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
        let resolution = resolve(&self.settings, name, decoded.as_ref());
        if let Some(err) = resolution.metadata_error {
            error!("route {name}: route metadata rejected, plugin configuration applies: {err}");
            self.stats.route_config_rejected.inc(&self.host);
        }
        self.bucket(resolution.route)
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
        let result = breaker::update(&self.host, &key, decide).map(|updated| {
            let transition = updated.step.transition;
            self.updated(
                bucket,
                &key,
                opened_before,
                transition,
                updated.current,
                updated.was_corrupt,
            );
            updated.step
        });
        if let Err(e) = result {
            self.store_failed(&key, e);
        }
        result
    }

    /// [`Self::update`]'s bookkeeping after a write or a read, once for every `T` (a copy per
    /// caller's step type would be the same code again in the module).
    #[inline(never)]
    fn updated(
        &self,
        bucket: &BucketState,
        key: &str,
        opened_before: Option<u64>,
        transition: Option<Transition>,
        current: Record,
        was_corrupt: bool,
    ) {
        if was_corrupt {
            warn!("{key}: stored breaker state was unreadable; reset to closed");
            self.stats.state_reset.inc(&self.host);
        }
        if let Some(transition) = transition {
            self.report_transition(bucket, transition, key);
        }
        if transition.is_some() || bucket.view.borrow().is_none() {
            bucket
                .stats
                .circuit_state
                .record(&self.host, current.state.gauge());
        }
        let closed = current.state == breaker::State::Closed && transition.is_none();
        bucket
            .opened_as_of_view
            .set(if closed { opened_before } else { None });
        *bucket.view.borrow_mut() = Some(current);
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
        let key = keys::budget(&self.settings.stat_prefix, &route.bucket);
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

    /// Bucket ageing, from the tick: stamps the buckets this worker saw used in the shared
    /// registry (at most every quarter of `bucket_idle_timeout`, and every 30 s), forgets the
    /// ones it has not seen used for `bucket_idle_timeout`, and has the registry drop (and
    /// their records reset) the ones no worker has stamped for that long. The plugin JSON's
    /// `routes` are never forgotten.
    fn age_buckets(&self, now: Now) {
        let idle = self.settings.bucket_idle_timeout;
        let every = (idle / 4).min(30 * NANOS_PER_SEC);
        if now.mono_ns.saturating_sub(self.last_stamp_ns.get()) < every {
            return;
        }
        self.last_stamp_ns.set(now.mono_ns);
        let prefix = &self.settings.stat_prefix;
        let mut used = Vec::new();
        let mut forgotten = Vec::new();
        for (name, bucket) in self.buckets.borrow().iter() {
            // A bucket this VM holds slots in is in use, however long ago its request came.
            if bucket.used.replace(false) || bucket.held().is_some() {
                bucket.last_used_ns.set(now.mono_ns);
                used.push(name.clone());
            } else if now.mono_ns.saturating_sub(bucket.last_used_ns.get()) >= idle
                && !self.settings.routes.contains_key(name)
            {
                forgotten.push(name.clone());
            }
        }
        if !used.is_empty() {
            if let Err(e) = registry::stamp(&self.host, prefix, &used, now.mono_ns) {
                self.store_failed(&keys::registry(prefix), e);
            }
        }
        if !forgotten.is_empty() {
            let mut buckets = self.buckets.borrow_mut();
            let mut stat_names = self.stat_names.borrow_mut();
            for name in &forgotten {
                if let Some(bucket) = buckets.remove(name) {
                    bucket.retire(&self.host);
                    if let Ok(i) = find_stat_name(&stat_names, &bucket.route.borrow().stat_name) {
                        stat_names.remove(i);
                    }
                }
            }
            // Cached resolutions point at the forgotten buckets: resolve afresh.
            self.route_epoch.set(self.route_epoch.get().wrapping_add(1));
        }
        let keep: Vec<String> = self.settings.routes.keys().cloned().collect();
        match registry::expire(&self.host, prefix, &keep, idle, now.mono_ns) {
            Ok(expired) => {
                for name in expired {
                    log::info!("bucket {name:?}: unused for bucket_idle_timeout; forgotten");
                    let key = keys::breaker(prefix, &name);
                    if let Err(e) =
                        breaker::update(&self.host, &key, |rec| breaker::reset(rec, now))
                    {
                        self.store_failed(&key, e);
                    }
                    let scope = RouteStats::scope(prefix, &crate::config::stat_name(&name));
                    let gauge = crate::stats::Stat::define(
                        &self.host,
                        crate::host::MetricKind::Gauge,
                        &format!("{scope}.circuit_state"),
                    );
                    gauge.record(&self.host, 0);
                }
            }
            Err(e) => self.store_failed(&keys::registry(prefix), e),
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

    /// Counts a request or a success of `bucket` toward the Envoy counter at the next flush.
    /// The first count after a quiet tick also moves `counters_unflushed` (+1 for this VM), so
    /// whoever reads the counters can tell when every worker's counts are in.
    pub fn count_later(&self, bucket: &BucketState, counter: Deferred) {
        if bucket.count_deferred(counter)
            && !self.counts_pending.replace(true)
            && !self.unflushed_held.replace(true)
        {
            self.stats.counters_unflushed.add(&self.host, 1);
        }
    }

    /// Takes an uncapped `active_requests` slot (`delta` +1) or gives it back (-1), deferred
    /// like the counts: pending until the next flush.
    pub fn move_active_later(&self, bucket: &BucketState, delta: i64) {
        if bucket.move_active_deferred(&self.host, delta)
            && !self.counts_pending.replace(true)
            && !self.unflushed_held.replace(true)
        {
            self.stats.counters_unflushed.add(&self.host, 1);
        }
    }

    /// Adds every bucket's deferred counts to the Envoy counters (from the tick, and when the
    /// plugin goes away). This VM's +1 on `counters_unflushed` is kept until a tick finds
    /// nothing to add: under steady traffic the gauge does not move at every tick, and the
    /// lease the tick publishes next holds it, so a VM that traps before its next tick does
    /// not leave it up for good.
    pub fn flush_counts(&self) {
        if self.counts_pending.replace(false) {
            for bucket in self.buckets.borrow().values() {
                bucket.flush_deferred(&self.host);
            }
        } else if self.unflushed_held.replace(false) {
            self.stats.counters_unflushed.add(&self.host, -1);
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
        // Before ageing, which may forget buckets.
        self.flush_counts();
        let epoch_age = now
            .mono_ns
            .saturating_sub(self.route_epoch_started_ns.get());
        if epoch_age >= ROUTE_REFRESH_NS {
            self.route_epoch.set(self.route_epoch.get().wrapping_add(1));
            self.route_epoch_started_ns.set(now.mono_ns);
        }
        self.age_buckets(now);
        let buckets: Vec<Rc<BucketState>> = self.buckets.borrow().values().cloned().collect();
        for bucket in buckets {
            let route = bucket.route();
            if route.policy.retry.enabled {
                self.flush_budget(&bucket, &route, now.mono_ns);
            }
            let policy = &route.policy.circuit_breaker;
            if !policy.enabled {
                // A breaker the configuration no longer enables must not stay OPEN in shared
                // data (health would report it for good): reset it once.
                let settled = bucket
                    .view
                    .borrow()
                    .as_ref()
                    .is_some_and(|v| v.state == breaker::State::Closed);
                if !settled {
                    let _ = self.update(&bucket, |rec| breaker::reset(rec, now));
                    bucket.stats.circuit_state.record(&self.host, 0);
                }
                continue;
            }
            if bucket.is_quiet(&self.host) {
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
        self.renew_lease(now.mono_ns);
        true
    }

    /// What this VM holds on the gauges now.
    fn holdings(&self) -> lease::Holdings {
        lease::Holdings {
            unflushed: u32::from(self.unflushed_held.get()),
            buckets: self
                .buckets
                .borrow()
                .values()
                .filter_map(|b| b.held())
                .collect(),
        }
    }

    /// Publishes this VM's holdings in its lease and gives back the slots of VMs whose
    /// leases went stale ([`lease::renew`]); from the tick, and when the plugin goes away.
    fn renew_lease(&self, now_ns: u64) {
        let holdings = self.holdings();
        let own = self.lease_id.get();
        let changed = own.is_none() || holdings != *self.published.borrow();
        let key = keys::leases(&self.settings.stat_prefix);
        let due = now_ns.saturating_sub(self.published_ns.get()) >= lease::HEARTBEAT_NS;
        match lease::renew(&self.host, &key, own, &holdings, due, now_ns) {
            Ok(renewal) => {
                if renewal.was_claimed {
                    // Another VM took this one for dead and gave back what it had published:
                    // those slots are still held here.
                    self.move_gauges(&self.published.borrow(), 1);
                }
                for dead in &renewal.reclaimed {
                    self.move_gauges(dead, -1);
                }
                if renewal.was_corrupt {
                    self.stats.state_reset.inc(&self.host);
                }
                if !renewal.reclaimed.is_empty() {
                    warn!("{key}: slots of VMs that stopped ticking given back");
                }
                self.lease_id.set(renewal.id);
                *self.published.borrow_mut() = if renewal.id.is_some() {
                    holdings
                } else {
                    lease::Holdings::default()
                };
                if changed || due {
                    // The lease's heartbeat, if it has one, is now.
                    self.published_ns.set(now_ns);
                }
            }
            Err(e) => self.store_failed(&key, e),
        }
    }

    /// Adds `holdings` (`sign` 1) to the gauges or takes them off (`sign` -1). Taking off stops
    /// at 0: a VM's last published holdings can be a tick older than its last moves.
    fn move_gauges(&self, holdings: &lease::Holdings, sign: i64) {
        let host = &self.host;
        let apply = |gauge: crate::stats::Stat, n: u32| {
            let mut n = i64::from(n);
            if sign < 0 {
                let now = gauge.get(host).and_then(|v| i64::try_from(v).ok());
                n = n.min(now.unwrap_or(0));
            }
            if n > 0 {
                gauge.add(host, sign * n);
            }
        };
        apply(self.stats.counters_unflushed, holdings.unflushed);
        for slots in &holdings.buckets {
            // Defines the bucket's every stat (a claim is rare; the definitions are shared).
            let scope = RouteStats::scope(&self.settings.stat_prefix, &slots.stat_name);
            let stats = RouteStats::define(host, &scope);
            apply(stats.active_requests, slots.requests);
            apply(stats.active_faults, slots.faults);
        }
    }
}

impl<H: Host> Drop for Plugin<H> {
    /// A replaced configuration's last counts are not lost with it, and its lease is
    /// given up (its streams, which hold the plugin, are all gone: it holds no slot).
    fn drop(&mut self) {
        self.flush_counts();
        // Nothing left to add.
        self.flush_counts();
        if self.lease_id.get().is_some() {
            self.renew_lease(self.host.monotonic_ns());
        }
    }
}

fn cache(
    map: &RefCell<FastMap<String, Cached>>,
    name: &str,
    bucket: Option<Rc<BucketState>>,
    epoch: u64,
) {
    let mut map = map.borrow_mut();
    if map.len() < MAX_CACHED_ROUTES || map.contains_key(name) {
        map.insert(name.to_string(), Cached { bucket, epoch });
    }
}

/// Where `stat_name` is (or would go) in the plugin's stat names, sorted by stat name, each with
/// the bucket using it. A sorted Vec rather than a hash map: it changes only when a bucket is
/// made or forgotten, and a map of this type would be one more copy of the hash table's code in
/// the module.
fn find_stat_name(names: &[(String, String)], stat_name: &str) -> Result<usize, usize> {
    names.binary_search_by(|(known, _)| known.as_str().cmp(stat_name))
}
