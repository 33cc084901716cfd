//! Which bucket (breaker, stats) and which policy a request's Envoy route gets.
//!
//! Buckets are named only by the operator: routes named in the plugin JSON, routes whose Envoy
//! metadata carries a `marty.resilience` entry, and `default` for everything else. What a client
//! sends (path, host, headers) never names a bucket, so it cannot grow state or stats.

use serde_json::Value;

use crate::config::{
    check_route_name, stat_name, ConfigError, RoutePolicy, Settings, DEFAULT_ROUTE,
};
use crate::keys;

/// A resolved route: everything the request path needs, computed once per route per worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The bucket: the Envoy route name, or `default`.
    pub bucket: String,
    /// The bucket as it appears in stat names.
    pub stat_name: String,
    /// The shared-data key of the bucket's breaker.
    pub key: String,
    pub policy: RoutePolicy,
}

impl Route {
    pub fn new(bucket: &str, policy: RoutePolicy) -> Self {
        Self {
            bucket: bucket.to_string(),
            stat_name: stat_name(bucket),
            key: keys::breaker(bucket),
            policy,
        }
    }
}

/// The outcome of resolving a route, with the reason metadata was not used, if it was not.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    pub route: Route,
    pub metadata_error: Option<ConfigError>,
}

/// Resolves `route_name` (the `xds.route_name` property, empty for unnamed routes) given the
/// route's `marty.resilience` metadata entry, if it has one. Invalid metadata is reported and
/// ignored: the plugin JSON still applies, so a bad annotation cannot disable the breaker.
pub fn resolve(settings: &Settings, route_name: &str, metadata: Option<&Value>) -> Resolution {
    let from_json = || match settings.routes.get(route_name) {
        Some(policy) => Route::new(route_name, policy.clone()),
        None => Route::new(DEFAULT_ROUTE, settings.defaults.clone()),
    };
    let Some(metadata) = metadata else {
        return Resolution {
            route: from_json(),
            metadata_error: None,
        };
    };
    let path = format!("route_metadata[{route_name}].filter_metadata[marty.resilience]");
    let checked = check_route_name(route_name, &path)
        .and_then(|()| settings.with_metadata(route_name, metadata));
    match checked {
        Ok(policy) => Resolution {
            route: Route::new(route_name, policy),
            metadata_error: None,
        },
        Err(error) => Resolution {
            route: from_json(),
            metadata_error: Some(error),
        },
    }
}
