//! The health endpoint: `health.path` answers Marty's JSON status, `health.report_path` the text
//! report, to allowed peers only. Built from the shared breaker records, so any worker answers
//! for all of them.

use std::collections::BTreeSet;

use marty_resilience_core::config::HealthSettings;
use marty_resilience_core::health::{peer_ip, Report, RouteHealth};
use marty_resilience_core::store::{self, breaker_key};
use proxy_wasm::types::Action;

use crate::host::{self, HostStore, Map};
use crate::plugin::{now, Plugin};

/// Which endpoint a request path names, if any.
pub enum Endpoint {
    Status,
    Report,
}

pub fn endpoint(settings: &HealthSettings, path: &str) -> Option<Endpoint> {
    let path = path.split('?').next().unwrap_or(path);
    if path == settings.path {
        Some(Endpoint::Status)
    } else if path == settings.report_path {
        Some(Endpoint::Report)
    } else {
        None
    }
}

/// Answers the endpoint locally; nothing reaches the upstream.
pub fn answer(plugin: &Plugin, endpoint: Endpoint) -> Action {
    let settings = &plugin.settings.health;
    let allowed = host::property(&["source", "address"])
        .and_then(|a| String::from_utf8(a).ok())
        .and_then(|a| peer_ip(&a))
        .is_some_and(|ip| settings.allowed_sources.iter().any(|c| c.contains(ip)));
    if !allowed {
        host::send_local_response(404, "marty_health_not_allowed", b"", &[], -1);
        return Action::Pause;
    }
    let is_get =
        host::header(Map::RequestHeaders, ":method").is_some_and(|m| m == b"GET" || m == b"HEAD");
    if !is_get {
        host::send_local_response(405, "marty_health_method", b"", &[("allow", "GET")], -1);
        return Action::Pause;
    }

    let now = now();
    let mut names: BTreeSet<String> = store::registered(&HostStore).into_iter().collect();
    names.extend(plugin.bucket_names());
    let rows: Vec<_> = names
        .into_iter()
        .map(|name| {
            let record = store::load(&HostStore, &breaker_key(&name))
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
                policy: policy.as_deref(),
            })
            .collect(),
    };
    let (body, content_type) = match endpoint {
        Endpoint::Status => (report.to_json().to_string(), "application/json"),
        Endpoint::Report => (report.to_text(), "text/plain; charset=utf-8"),
    };
    host::send_local_response(
        u32::from(report.status()),
        "marty_health",
        body.as_bytes(),
        &[
            ("content-type", content_type),
            ("cache-control", "no-store"),
        ],
        -1,
    );
    Action::Pause
}
