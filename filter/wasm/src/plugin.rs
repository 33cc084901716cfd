//! One loaded configuration on one VM (one per Envoy worker): the validated settings, the
//! buckets this VM has seen with their stat ids, and the route-name cache that lets a request
//! resolve its route with one property read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use log::{error, warn};
use marty_resilience_core::breaker::{Now, Record, Step, Transition};
use marty_resilience_core::config::{Settings, DEFAULT_ROUTE};
use marty_resilience_core::routes::{resolve, Route};
use marty_resilience_core::store::{self, UpdateError, Updated};
use marty_resilience_core::{pbstruct, NANOS_PER_SEC};

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
}

pub fn now() -> Now {
    Now {
        mono_ns: host::monotonic_ns(),
        unix_ms: host::unix_ms(),
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
        match store::ensure(&HostStore, &route.key) {
            Ok(_) => {}
            Err(e) => self.store_failed(&route.key, e),
        }
        let bucket = Rc::new(Bucket {
            metrics: RouteMetrics::define(&route.stat_name),
            view: RefCell::new(None),
            route: RefCell::new(Rc::new(route)),
        });
        let name = bucket.route.borrow().bucket.clone();
        self.buckets.borrow_mut().insert(name, bucket.clone());
        bucket
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
        let resolution = resolve(&self.settings, name, decoded.as_ref());
        if let Some(err) = resolution.metadata_error {
            error!("route {name}: route metadata rejected, plugin configuration applies: {err}");
            inc(self.globals.route_config_rejected);
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
                *bucket.view.borrow_mut() = Some(current);
                Ok(step)
            }
            Err(e) => {
                self.store_failed(&key, e);
                Err(e)
            }
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

    /// Housekeeping on every known bucket: lazy transitions that are due, and the state gauge
    /// re-recorded from the shared record.
    pub fn tick(&self) {
        let now = now();
        let buckets: Vec<Rc<Bucket>> = self.buckets.borrow().values().cloned().collect();
        for bucket in buckets {
            let policy = bucket.route.borrow().policy.circuit_breaker.clone();
            if !policy.enabled {
                continue;
            }
            if self
                .update(&bucket, |rec| {
                    marty_resilience_core::breaker::tick(rec, &policy, now)
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
