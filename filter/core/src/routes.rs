//! Which bucket (breaker, records, stats) and which policy a request gets.
//!
//! A request's bucket is named by the operator's tables, never by a client: its Envoy route name
//! (`xds.route_name`) when the route has one other than `default`; otherwise (an unnamed route,
//! or Istio's generated route `default`) its upstream cluster (`xds.cluster_name`, e.g.
//! `outbound|8080||reviews.default.svc.cluster.local`). With `bucket_by: cluster` the cluster
//! always names it. A request with no upstream cluster (no route, `direct_response`, redirect)
//! is in no bucket. Every bucket gets the top-level policy, its `routes` entry if it has one,
//! and, for a bucket named by a route, that route's `marty.resilience` metadata.

use serde_json::Value;

use crate::config::retry::RetryHeaders;
use crate::config::{
    check_route_name, stat_name, BucketBy, ConfigError, RoutePolicy, Settings, DEFAULT_ROUTE,
};
use crate::keys;

/// What names the bucket of a request on the route `route_name` (empty when unnamed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedBy {
    /// The route name itself.
    Route,
    /// The request's upstream cluster.
    Cluster,
}

/// Whether `route_name` names its requests' bucket, or their cluster does.
pub fn named_by(bucket_by: BucketBy, route_name: &str) -> NamedBy {
    match bucket_by {
        BucketBy::Route if !route_name.is_empty() && route_name != DEFAULT_ROUTE => NamedBy::Route,
        _ => NamedBy::Cluster,
    }
}

/// A resolved bucket: everything the request path needs, computed once per bucket per worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The bucket's name: a route or cluster name.
    pub bucket: String,
    /// The bucket as it appears in stat names.
    pub stat_name: String,
    /// The shared-data key of the bucket's breaker.
    pub key: String,
    pub policy: RoutePolicy,
    /// The policy's retry headers, as the request path writes them.
    pub retry_headers: RetryHeaders,
}

impl Route {
    pub fn new(stat_prefix: &str, bucket: &str, policy: RoutePolicy) -> Self {
        Self {
            bucket: bucket.to_string(),
            stat_name: stat_name(bucket),
            key: keys::breaker(stat_prefix, bucket),
            retry_headers: RetryHeaders::new(&policy.retry),
            policy,
        }
    }
}

/// The outcome of resolving a bucket, with the reason metadata was not used, if it was not.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    pub route: Route,
    pub metadata_error: Option<ConfigError>,
}

/// Resolves the bucket `bucket` given its route's `marty.resilience` metadata entry, if it has
/// one (only buckets named by a route carry metadata). Invalid metadata is reported and ignored:
/// the plugin JSON still applies, so a bad annotation cannot disable the breaker.
pub fn resolve(settings: &Settings, bucket: &str, metadata: Option<&Value>) -> Resolution {
    let from_json = || {
        let policy = settings
            .routes
            .get(bucket)
            .cloned()
            .unwrap_or_else(|| settings.defaults.clone());
        Route::new(&settings.stat_prefix, bucket, policy)
    };
    let Some(metadata) = metadata else {
        return Resolution {
            route: from_json(),
            metadata_error: None,
        };
    };
    let path = format!("route_metadata[{bucket}].filter_metadata[marty.resilience]");
    let checked =
        check_route_name(bucket, &path).and_then(|()| settings.with_metadata(bucket, metadata));
    match checked {
        Ok(policy) => Resolution {
            route: Route::new(&settings.stat_prefix, bucket, policy),
            metadata_error: None,
        },
        Err(error) => Resolution {
            route: from_json(),
            metadata_error: Some(error),
        },
    }
}
