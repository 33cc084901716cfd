//! The health endpoint: `health.path` answers Marty's JSON status, `health.report_path` the
//! text report, to allowed peers only. Built from the shared breaker records, so any worker
//! answers for every bucket.

use super::reply;
use super::Plugin;
use crate::breaker;
use crate::health::{method_allowed, peer_ip, Endpoint, Report, RouteHealth};
use crate::host::{Host, Map};
use crate::{keys, registry};

/// Answers `endpoint` locally; nothing reaches the upstream.
pub fn answer<H: Host>(plugin: &Plugin<H>, endpoint: Endpoint) {
    let host = &plugin.host;
    let settings = &plugin.settings.health;
    let now = plugin.now();
    let allowed = host
        .property(&["source", "address"])
        .and_then(|a| String::from_utf8(a).ok())
        .and_then(|a| peer_ip(&a))
        .is_some_and(|ip| settings.allowed_sources.iter().any(|c| c.contains(ip)));
    if !allowed {
        host.send_local_reply(&reply::health_not_allowed());
        return;
    }
    if !method_allowed(host.header(Map::RequestHeaders, ":method").as_deref()) {
        host.send_local_reply(&reply::health_method_not_allowed());
        return;
    }

    let prefix = &plugin.settings.stat_prefix;
    // The buckets the configuration has: its `routes`, and every bucket some worker has used
    // within `bucket_idle_timeout` (older ones are being forgotten).
    let idle = plugin.settings.bucket_idle_timeout;
    let registered = registry::registered(host, prefix)
        .into_iter()
        .filter(|e| now.mono_ns.saturating_sub(e.seen_ns) < idle)
        .map(|e| e.name);
    // Sorted and unique, as the report lists them: each name inserted in its place (a Vec and
    // a binary search: no BTreeSet or sort code in the module).
    let mut names: Vec<String> = Vec::new();
    for name in registered
        .chain(plugin.settings.routes.keys().cloned())
        .chain(plugin.bucket_names())
    {
        if let Err(at) = names.binary_search(&name) {
            names.insert(at, name);
        }
    }
    let rows: Vec<_> = names
        .into_iter()
        .map(|name| {
            let record = breaker::load(host, &keys::breaker(prefix, &name))
                .map(|(record, _, _)| record)
                .unwrap_or_default();
            let policy = plugin.bucket_policy(&name);
            let active = plugin.active_requests(&name);
            (name, record, policy, active)
        })
        .collect();
    let report = Report {
        service_name: &plugin.settings.service_name,
        environment: plugin.settings.environment,
        now_mono_ns: now.mono_ns,
        now_unix_ms: now.unix_ms,
        routes: rows
            .iter()
            .map(|(name, record, policy, active)| RouteHealth {
                route: name,
                record,
                active_requests: *active,
                policy: policy.as_ref(),
            })
            .collect(),
    };
    let (body, content_type) = match endpoint {
        Endpoint::Status => (report.to_json().to_string(), "application/json"),
        Endpoint::Report => (report.to_text(), "text/plain; charset=utf-8"),
    };
    host.send_local_reply(&reply::health(report.status(), body, content_type));
}
