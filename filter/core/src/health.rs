//! The health endpoint's answers: Marty's `get_resilience_health_status()` (JSON, 200 when
//! every breaker is CLOSED, 503 otherwise) and its text health report, built from the shared
//! breaker records so every worker tells the same story.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::config::section::insert_field;

use crate::breaker::{Record, State};
use crate::config::{Environment, RoutePolicy};
use crate::NANOS_PER_SEC;

/// An address range such as `127.0.0.1/32` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` (a bare address means a single host).
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max)?
            }
            Some(_) => return None,
            None => max,
        };
        Some(Self { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address on a dual-stack listener.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The peer address from Envoy's `source.address` (`1.2.3.4:5678` or `[::1]:5678`).
pub fn peer_ip(address: &str) -> Option<IpAddr> {
    if let Ok(ip) = address.parse() {
        return Some(ip);
    }
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// One route as the report shows it.
pub struct RouteHealth<'a> {
    pub route: &'a str,
    pub record: &'a Record,
    pub active_requests: u64,
    /// The settings this worker resolved for the route; `None` for a route only another
    /// worker has seen (annotated by metadata).
    pub policy: Option<&'a RoutePolicy>,
}

pub struct Report<'a> {
    pub service_name: &'a str,
    pub environment: Environment,
    pub now_mono_ns: u64,
    pub now_unix_ms: u64,
    /// Sorted by route name.
    pub routes: Vec<RouteHealth<'a>>,
}

impl Report<'_> {
    pub fn overall_healthy(&self) -> bool {
        self.routes.iter().all(|r| r.record.state == State::Closed)
    }

    /// 200 when every breaker is CLOSED, 503 otherwise (the Marty semantics).
    pub fn status(&self) -> u16 {
        if self.overall_healthy() {
            200
        } else {
            503
        }
    }

    pub fn to_json(&self) -> Value {
        // Map inserts through one helper rather than `json!`, whose `to_value` calls pulled
        // serde's value serializer for each field type into the module (with RoutePolicy::to_json: ~7.9 KB); the values
        // (and so the JSON) are the same.
        let mut routes = Map::new();
        for r in &self.routes {
            let mut entry = Map::new();
            let rec = r.record;
            let now = self.now_mono_ns;
            insert_field(&mut entry, "state", Value::from(rec.state.name()));
            insert_field(
                &mut entry,
                "healthy",
                Value::from(rec.state == State::Closed),
            );
            insert_field(
                &mut entry,
                "consecutive_failures",
                Value::from(rec.consecutive_failures),
            );
            let until_half_open = Value::from(secs(rec.remaining_open_ns(now)));
            insert_field(&mut entry, "seconds_until_half_open", until_half_open);
            insert_field(
                &mut entry,
                "active_requests",
                Value::from(r.active_requests),
            );
            insert_field(
                &mut entry,
                "probes_in_flight",
                Value::from(rec.probes_in_flight(now)),
            );
            insert_field(&mut entry, "trips", Value::from(rec.trips));
            insert_field(
                &mut entry,
                "last_transition_unix_ms",
                Value::from(last_transition(rec)),
            );
            if let Some(policy) = r.policy {
                if let Value::Object(settings) = policy.to_json() {
                    entry.extend(settings);
                }
            }
            routes.insert(r.route.to_string(), Value::Object(entry));
        }
        let mut report = Map::new();
        insert_field(
            &mut report,
            "overall_healthy",
            Value::from(self.overall_healthy()),
        );
        insert_field(&mut report, "service_name", Value::from(self.service_name));
        insert_field(
            &mut report,
            "environment",
            Value::from(self.environment.name()),
        );
        insert_field(
            &mut report,
            "timestamp_unix_ms",
            Value::from(self.now_unix_ms),
        );
        insert_field(&mut report, "routes", Value::Object(routes));
        Value::Object(report)
    }

    /// A report for people: a summary, then one line per route.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "marty-resilience health report\nservice: {}\nenvironment: {}\noverall: {}\nroutes: {}\n",
            if self.service_name.is_empty() { "-" } else { self.service_name },
            self.environment.name(),
            if self.overall_healthy() { "healthy" } else { "DEGRADED" },
            self.routes.len(),
        );
        let width = self.routes.iter().map(|r| r.route.len()).max().unwrap_or(0);
        for r in &self.routes {
            let remaining = r.record.remaining_open_ns(self.now_mono_ns);
            let half_open_in = if r.record.state == State::Open {
                tenths_of_seconds(remaining)
            } else {
                "-".to_string()
            };
            let faults = match r.policy {
                Some(p) if p.failure_injection.enabled => "on",
                Some(_) => "off",
                None => "?",
            };
            out.push_str(&format!(
                "{:<width$}  state={:<9}  consecutive_failures={}  half_open_in={}  active_requests={}  probes={}  trips={}  last_transition={}  faults={}\n",
                r.route,
                r.record.state.name(),
                r.record.consecutive_failures,
                half_open_in,
                r.active_requests,
                r.record.probes_in_flight(self.now_mono_ns),
                r.record.trips,
                last_transition(r.record).map_or("never".to_string(), format_unix_ms),
                faults,
            ));
        }
        out
    }
}

fn secs(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_SEC as f64
}

/// `12.3s`: nanoseconds rounded to a tenth of a second, in integers (`{:.1}` on an `f64`
/// would cost the module ~10 KB of float formatting).
fn tenths_of_seconds(nanos: u64) -> String {
    let tenths = nanos / (NANOS_PER_SEC / 10)
        + u64::from(nanos % (NANOS_PER_SEC / 10) >= NANOS_PER_SEC / 20);
    format!("{}.{}s", tenths / 10, tenths % 10)
}

fn last_transition(record: &Record) -> Option<u64> {
    (record.changed_at_unix_ms != 0).then_some(record.changed_at_unix_ms)
}

/// `2026-11-28T13:54:26.123Z` from milliseconds since the epoch (UTC, proleptic Gregorian).
pub fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Which endpoint a request path names, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Marty's JSON status.
    Status,
    /// The text report.
    Report,
}

/// The endpoint `path` (with any query) names under `settings`.
pub fn endpoint(settings: &crate::config::HealthSettings, path: &str) -> Option<Endpoint> {
    let path = path.split('?').next().unwrap_or(path);
    if path == settings.path {
        Some(Endpoint::Status)
    } else if path == settings.report_path {
        Some(Endpoint::Report)
    } else {
        None
    }
}

/// Only `GET` and `HEAD` read the health endpoint.
pub fn method_allowed(method: Option<&[u8]>) -> bool {
    matches!(method, Some(b"GET" | b"HEAD"))
}
