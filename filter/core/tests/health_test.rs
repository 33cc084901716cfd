//! The health endpoint's pieces that need no host: who may ask (`Cidr`, `peer_ip`), what the
//! JSON status and the text report say about each route, the status code, and the timestamps.

// Test code: a failed expectation is a panic with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::IpAddr;

use marty_resilience_core::breaker::{Record, State};
use marty_resilience_core::config::{Environment, RoutePolicy, Settings};
use marty_resilience_core::health::{format_unix_ms, peer_ip, Cidr, Report, RouteHealth};
use marty_resilience_core::NANOS_PER_SEC;
use serde_json::{json, Value};

const S: u64 = NANOS_PER_SEC;

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("test address {text}: {e}"))
}

fn cidr(text: &str) -> Cidr {
    Cidr::parse(text).unwrap_or_else(|| panic!("{text:?} should parse as a CIDR range"))
}

#[test]
fn ipv4_ranges_contain_their_addresses_only() {
    let net = cidr("10.0.0.0/8");
    for inside in ["10.0.0.0", "10.0.0.1", "10.255.255.255", "10.1.2.3"] {
        assert!(net.contains(ip(inside)), "{inside} in 10.0.0.0/8");
    }
    for outside in ["9.255.255.255", "11.0.0.0", "127.0.0.1", "0.0.0.0"] {
        assert!(!net.contains(ip(outside)), "{outside} not in 10.0.0.0/8");
    }

    let odd = cidr("192.168.1.128/25");
    assert!(odd.contains(ip("192.168.1.128")));
    assert!(odd.contains(ip("192.168.1.255")));
    assert!(!odd.contains(ip("192.168.1.127")));

    // Host bits in the network are ignored, as the mask says.
    let loose = cidr("10.1.2.3/8");
    assert!(loose.contains(ip("10.200.0.1")));
    assert_eq!(loose.to_string(), "10.1.2.3/8");
}

#[test]
fn host_routes_and_the_whole_space() {
    let host = cidr("127.0.0.1/32");
    assert!(host.contains(ip("127.0.0.1")));
    assert!(!host.contains(ip("127.0.0.2")));
    assert!(!host.contains(ip("126.0.0.1")));

    // A bare address is a single host.
    assert_eq!(cidr("127.0.0.1"), host);
    assert_eq!(cidr("::1"), cidr("::1/128"));
    assert_eq!(cidr("::1").to_string(), "::1/128");

    let everything = cidr("0.0.0.0/0");
    for any in ["0.0.0.0", "1.2.3.4", "255.255.255.255", "127.0.0.1"] {
        assert!(everything.contains(ip(any)), "{any} in 0.0.0.0/0");
    }
    // Families never mix: an IPv4 range says nothing about IPv6 peers, and back.
    assert!(!everything.contains(ip("::1")));
    let everything6 = cidr("::/0");
    assert!(everything6.contains(ip("::1")));
    assert!(everything6.contains(ip("2001:db8::1")));
    assert!(!everything6.contains(ip("1.2.3.4")));

    // /0 with host bits set still covers everything.
    assert!(cidr("8.8.8.8/0").contains(ip("1.1.1.1")));
}

#[test]
fn ipv6_ranges() {
    let loopback = cidr("::1/128");
    assert!(loopback.contains(ip("::1")));
    assert!(!loopback.contains(ip("::2")));
    assert!(!loopback.contains(ip("127.0.0.1")));

    let ula = cidr("fd00::/8");
    assert!(ula.contains(ip("fd12:3456::1")));
    assert!(ula.contains(ip("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    assert!(!ula.contains(ip("fe80::1")));
    assert!(!ula.contains(ip("fc00::1")));

    let doc = cidr("2001:DB8::/32");
    assert!(doc.contains(ip("2001:db8:ffff::1")));
    assert!(!doc.contains(ip("2001:db9::1")));
    assert_eq!(doc.to_string(), "2001:db8::/32");

    let odd = cidr("2001:db8::/33");
    assert!(odd.contains(ip("2001:db8:7fff::1")));
    assert!(!odd.contains(ip("2001:db8:8000::1")));
}

#[test]
fn ipv4_mapped_peers_are_matched_as_ipv4() {
    // A dual-stack listener reports an IPv4 client as ::ffff:a.b.c.d.
    let mapped = ip("::ffff:10.1.2.3");
    assert!(cidr("10.0.0.0/8").contains(mapped));
    assert!(cidr("10.1.2.3/32").contains(mapped));
    assert!(!cidr("11.0.0.0/8").contains(mapped));
    assert!(cidr("127.0.0.1/32").contains(ip("::ffff:127.0.0.1")));
    assert!(!cidr("127.0.0.1/32").contains(ip("::ffff:127.0.0.2")));
    // Since the peer is turned into IPv4, an IPv6 range never matches it, not even ::/0 or
    // the mapped range itself: allow IPv4 clients with IPv4 ranges.
    assert!(!cidr("::/0").contains(mapped));
    assert!(!cidr("::ffff:0:0/96").contains(mapped));
    // The IPv4-compatible form (::a.b.c.d, deprecated) is not mapped: it stays IPv6.
    assert!(!cidr("10.0.0.0/8").contains(ip("::10.1.2.3")));
}

#[test]
fn prefix_bounds_and_spelling() {
    assert!(Cidr::parse("10.0.0.0/32").is_some());
    assert!(Cidr::parse("10.0.0.0/0").is_some());
    assert!(Cidr::parse("::/128").is_some());
    assert_eq!(Cidr::parse("10.0.0.0/008"), Cidr::parse("10.0.0.0/8"));
    // Blanks around the address are tolerated, not around the prefix.
    assert_eq!(Cidr::parse(" 10.0.0.0 /8"), Cidr::parse("10.0.0.0/8"));
    assert_eq!(Cidr::parse("10.0.0.1 "), Cidr::parse("10.0.0.1/32"));
    for invalid in [
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/256",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/-8",
        "10.0.0.0/ 8",
        "10.0.0.0/8 ",
        "10.0.0.0/8/8",
        "10.0.0.0/x",
        "/8",
        "",
        " ",
        "10.0.0",
        "10.0.0.256",
        "010.0.0.0",
        "1.2.3.4.5",
        "localhost",
        "[::1]",
        "[::1]/128",
        "fe80::1%eth0",
        "1::2::3",
        "12345::",
        "10.0.0.0/8,11.0.0.0/8",
    ] {
        assert_eq!(Cidr::parse(invalid), None, "{invalid:?} must be rejected");
    }
}

#[test]
fn peer_ip_reads_envoy_source_addresses() {
    assert_eq!(peer_ip("127.0.0.1:54321"), Some(ip("127.0.0.1")));
    assert_eq!(peer_ip("10.1.2.3:0"), Some(ip("10.1.2.3")));
    assert_eq!(peer_ip("[::1]:54321"), Some(ip("::1")));
    assert_eq!(peer_ip("[2001:db8::7]:443"), Some(ip("2001:db8::7")));
    assert_eq!(
        peer_ip("[::ffff:10.1.2.3]:8080"),
        Some(ip("::ffff:10.1.2.3"))
    );
    // Bare addresses (no port), as some hosts report them.
    assert_eq!(peer_ip("127.0.0.1"), Some(ip("127.0.0.1")));
    assert_eq!(peer_ip("::1"), Some(ip("::1")));
    assert_eq!(peer_ip("2001:db8::7"), Some(ip("2001:db8::7")));
    // Nothing that is not an IP address: a pipe path, a name, garbage.
    for none in [
        "",
        ":80",
        "localhost:80",
        "/var/run/envoy.sock",
        "[]:80",
        "1.2.3:80",
    ] {
        assert_eq!(peer_ip(none), None, "{none:?}");
    }
}

#[test]
fn default_sources_are_loopback_only() {
    let settings = Settings::parse(b"{}", &[]).unwrap_or_else(|e| panic!("{e}"));
    let allowed = |peer: &str| {
        let peer = peer_ip(peer).unwrap_or_else(|| panic!("{peer}"));
        settings
            .health
            .allowed_sources
            .iter()
            .any(|c| c.contains(peer))
    };
    assert!(!settings.health.enabled);
    assert!(allowed("127.0.0.1:40000"));
    assert!(allowed("[::1]:40000"));
    assert!(allowed("[::ffff:127.0.0.1]:40000"));
    assert!(!allowed("127.0.0.2:40000"), "only 127.0.0.1, not 127/8");
    assert!(!allowed("10.0.0.1:40000"));
    assert!(!allowed("[::2]:40000"));
}

// --- the report ---------------------------------------------------------------------------

const NOW_NS: u64 = 1_000 * S;
const NOW_UNIX_MS: u64 = 1_795_874_066_123; // 2026-11-28T13:54:26.123Z

fn closed() -> Record {
    Record::default()
}

fn open(remaining_ns: u64, changed_unix_ms: u64) -> Record {
    Record {
        state: State::Open,
        generation: 1,
        consecutive_failures: 3,
        trips: 1,
        open_until_ns: NOW_NS + remaining_ns,
        changed_at_ns: NOW_NS - S,
        changed_at_unix_ms: changed_unix_ms,
        ..Record::default()
    }
}

fn half_open(probes: Vec<u64>) -> Record {
    Record {
        state: State::HalfOpen,
        generation: 2,
        trips: 2,
        changed_at_ns: NOW_NS - S,
        changed_at_unix_ms: NOW_UNIX_MS - 1000,
        probes,
        ..Record::default()
    }
}

fn report<'a>(routes: Vec<RouteHealth<'a>>) -> Report<'a> {
    Report {
        service_name: "user_service",
        environment: Environment::Testing,
        now_mono_ns: NOW_NS,
        now_unix_ms: NOW_UNIX_MS,
        routes,
    }
}

fn row<'a>(
    route: &'a str,
    record: &'a Record,
    policy: Option<&'a RoutePolicy>,
    active: u64,
) -> RouteHealth<'a> {
    RouteHealth {
        route,
        record,
        active_requests: active,
        policy,
    }
}

#[test]
fn all_closed_is_healthy_200() {
    let policy = Environment::Production.preset();
    let (a, b) = (closed(), closed());
    let report = report(vec![
        row("default", &a, Some(&policy), 0),
        row("users", &b, Some(&policy), 4),
    ]);
    assert!(report.overall_healthy());
    assert_eq!(report.status(), 200);
    let json = report.to_json();
    assert_eq!(json["overall_healthy"], true);
    assert_eq!(json["service_name"], "user_service");
    assert_eq!(json["environment"], "testing");
    assert_eq!(json["timestamp_unix_ms"], NOW_UNIX_MS);
    let users = &json["routes"]["users"];
    assert_eq!(users["state"], "closed");
    assert_eq!(users["healthy"], true);
    assert_eq!(users["consecutive_failures"], 0);
    assert_eq!(users["seconds_until_half_open"], 0.0);
    assert_eq!(users["active_requests"], 4);
    assert_eq!(users["probes_in_flight"], 0);
    assert_eq!(users["trips"], 0);
    assert_eq!(
        users["last_transition_unix_ms"],
        Value::Null,
        "never changed"
    );
    assert_eq!(
        users["circuit_breaker"],
        policy.to_json()["circuit_breaker"]
    );
    assert_eq!(
        users["failure_injection"],
        policy.to_json()["failure_injection"]
    );
}

#[test]
fn no_routes_at_all_is_healthy() {
    let report = report(Vec::new());
    assert_eq!(report.status(), 200);
    assert_eq!(report.to_json()["routes"], json!({}));
    assert!(report.to_text().contains("routes: 0\n"));
}

#[test]
fn any_breaker_not_closed_is_503() {
    let policy = Environment::Production.preset();
    let (a, b) = (closed(), open(12_500_000_000, NOW_UNIX_MS - 2000));
    let one_open = report(vec![
        row("default", &a, Some(&policy), 0),
        row("users", &b, Some(&policy), 0),
    ]);
    assert!(!one_open.overall_healthy());
    assert_eq!(one_open.status(), 503);
    let json = one_open.to_json();
    assert_eq!(json["overall_healthy"], false);
    let users = &json["routes"]["users"];
    assert_eq!(users["state"], "open");
    assert_eq!(users["healthy"], false);
    assert_eq!(users["consecutive_failures"], 3);
    assert_eq!(users["seconds_until_half_open"], 12.5);
    assert_eq!(users["trips"], 1);
    assert_eq!(users["last_transition_unix_ms"], NOW_UNIX_MS - 2000);
    assert_eq!(json["routes"]["default"]["healthy"], true);

    // Half-open is not healthy either.
    let c = half_open(vec![NOW_NS + S, 0]);
    let probing = report(vec![row("users", &c, Some(&policy), 1)]);
    assert_eq!(probing.status(), 503);
    let users = &probing.to_json()["routes"]["users"];
    assert_eq!(users["state"], "half-open");
    assert_eq!(users["healthy"], false);
    assert_eq!(users["seconds_until_half_open"], 0.0);
    assert_eq!(
        users["probes_in_flight"], 1,
        "one live lease, one free slot"
    );
}

#[test]
fn expired_probe_leases_and_past_deadlines_count_as_nothing() {
    let policy = Environment::Production.preset();
    // A lease that ran out is not a probe in flight.
    let stale = half_open(vec![NOW_NS - 1, NOW_NS]);
    let json = report(vec![row("r", &stale, Some(&policy), 0)]).to_json();
    assert_eq!(json["routes"]["r"]["probes_in_flight"], 0);
    // OPEN past its deadline (the tick has not moved it yet): nothing left to wait.
    let due = Record {
        open_until_ns: NOW_NS - S,
        ..open(0, NOW_UNIX_MS)
    };
    let json = report(vec![row("r", &due, Some(&policy), 0)]).to_json();
    assert_eq!(json["routes"]["r"]["state"], "open");
    assert_eq!(json["routes"]["r"]["seconds_until_half_open"], 0.0);
}

#[test]
fn settings_are_shown_only_for_routes_this_worker_resolved() {
    let policy = Environment::Production.preset();
    let (a, b) = (closed(), closed());
    let json = report(vec![
        row("mine", &a, Some(&policy), 0),
        row("theirs", &b, None, 2),
    ])
    .to_json();
    let mine = json["routes"]["mine"]
        .as_object()
        .unwrap_or_else(|| panic!("{json}"));
    let theirs = json["routes"]["theirs"]
        .as_object()
        .unwrap_or_else(|| panic!("{json}"));
    assert!(mine.contains_key("circuit_breaker"));
    assert!(mine.contains_key("retry"));
    assert!(mine.contains_key("failure_injection"));
    assert!(!theirs.contains_key("circuit_breaker"));
    assert!(!theirs.contains_key("retry"));
    assert!(!theirs.contains_key("failure_injection"));
    // The shared facts are there for both.
    let facts = [
        "state",
        "healthy",
        "consecutive_failures",
        "seconds_until_half_open",
        "active_requests",
        "probes_in_flight",
        "trips",
        "last_transition_unix_ms",
    ];
    for key in facts {
        assert!(mine.contains_key(key), "{key}");
        assert!(theirs.contains_key(key), "{key}");
    }
    assert_eq!(theirs.len(), facts.len());
    assert_eq!(mine.len(), facts.len() + 3);
    assert_eq!(theirs["active_requests"], 2);
}

#[test]
fn the_header_token_is_never_shown() {
    let config = json!({"failure_injection": {"header_trigger": {"enabled": true, "token": "s3cret-token"}}});
    let settings =
        Settings::parse(config.to_string().as_bytes(), &[]).unwrap_or_else(|e| panic!("{e}"));
    let record = closed();
    let report = report(vec![row("default", &record, Some(&settings.defaults), 0)]);
    let json = report.to_json();
    assert_eq!(
        json["routes"]["default"]["failure_injection"]["header_trigger"]["token"],
        "(set)"
    );
    assert!(!json.to_string().contains("s3cret-token"));
    assert!(!report.to_text().contains("s3cret-token"));
}

#[test]
fn text_report_has_a_summary_and_one_aligned_line_per_route() {
    let mut faulty = Environment::Production.preset();
    faulty.failure_injection.enabled = true;
    let quiet = Environment::Production.preset();
    let a = closed();
    let b = open(12_340_000_000, 1_709_164_800_000);
    let c = half_open(vec![NOW_NS + S]);
    let report = report(vec![
        row("default", &a, Some(&quiet), 0),
        row("orders.create", &b, Some(&faulty), 2),
        row("users", &c, None, 1),
    ]);
    let text = report.to_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "marty-resilience health report",
            "service: user_service",
            "environment: testing",
            "overall: DEGRADED",
            "routes: 3",
        ],
        "{text}"
    );
    assert_eq!(lines.len(), 8, "{text}");
    let expected = [
        "default        state=closed     consecutive_failures=0  half_open_in=-  active_requests=0  probes=0  trips=0  last_transition=never  faults=off",
        "orders.create  state=open       consecutive_failures=3  half_open_in=12.3s  active_requests=2  probes=0  trips=1  last_transition=2024-02-29T00:00:00.000Z  faults=on",
        "users          state=half-open  consecutive_failures=0  half_open_in=-  active_requests=1  probes=1  trips=2  last_transition=2026-11-28T13:54:25.123Z  faults=?",
    ];
    assert_eq!(lines[5..], expected, "{text}");
    assert!(text.ends_with('\n'));
}

#[test]
fn text_report_of_a_healthy_nameless_service() {
    let a = closed();
    let policy = Environment::Production.preset();
    let report = Report {
        service_name: "",
        environment: Environment::Production,
        now_mono_ns: NOW_NS,
        now_unix_ms: NOW_UNIX_MS,
        routes: vec![row("default", &a, Some(&policy), 0)],
    };
    let text = report.to_text();
    assert!(text.starts_with(
        "marty-resilience health report\nservice: -\nenvironment: production\noverall: healthy\nroutes: 1\n"
    ), "{text}");
    assert_eq!(report.to_json()["service_name"], "");
}

#[test]
fn json_and_text_tell_the_same_facts() {
    let policy = Environment::Production.preset();
    let records = [closed(), open(3 * S, NOW_UNIX_MS - 5), half_open(vec![])];
    let names = ["a", "b", "c"];
    let report = report(
        names
            .iter()
            .zip(&records)
            .map(|(name, record)| row(name, record, Some(&policy), 7))
            .collect(),
    );
    let json = report.to_json();
    let text = report.to_text();
    for (name, line) in names.iter().zip(text.lines().skip(5)) {
        let route = &json["routes"][*name];
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{key} in {line:?}"))
                .to_string()
        };
        assert!(line.starts_with(name));
        assert_eq!(route["state"], field("state"));
        assert_eq!(
            route["consecutive_failures"].to_string(),
            field("consecutive_failures")
        );
        assert_eq!(route["trips"].to_string(), field("trips"));
        assert_eq!(
            route["active_requests"].to_string(),
            field("active_requests")
        );
        assert_eq!(route["probes_in_flight"].to_string(), field("probes"));
        let last = match route["last_transition_unix_ms"].as_u64() {
            Some(ms) => format_unix_ms(ms),
            None => "never".to_string(),
        };
        assert_eq!(last, field("last_transition"));
    }
}

#[test]
fn format_unix_ms_against_known_dates() {
    for (ms, text) in [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (86_399_999, "1970-01-01T23:59:59.999Z"),
        (86_400_000, "1970-01-02T00:00:00.000Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (951_868_800_000, "2000-03-01T00:00:00.000Z"),
        (946_684_799_999, "1999-12-31T23:59:59.999Z"),
        (1_709_164_800_000, "2024-02-29T00:00:00.000Z"),
        (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
        (1_709_251_200_000, "2024-03-01T00:00:00.000Z"),
        (1_677_628_800_000, "2023-03-01T00:00:00.000Z"),
        (1_795_874_066_123, "2026-11-28T13:54:26.123Z"),
        (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
    ] {
        assert_eq!(format_unix_ms(ms), text, "{ms}");
    }
}

// --- the reply's JSON Schema --------------------------------------------------------------

fn response_schema() -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/health-response.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("not a valid JSON Schema: {e}"));
    for example in schema["examples"].as_array().into_iter().flatten() {
        let validator = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{e}"));
        let errors: Vec<String> = validator
            .iter_errors(example)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "the schema's own example: {errors:?}");
    }
    jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e}"))
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{instance}\n{errors:#?}");
}

#[test]
fn every_reply_the_core_can_build_matches_the_response_schema() {
    let validator = response_schema();
    let configs = [
        json!({}),
        json!({"environment": "development", "service_name": "svc"}),
        json!({"circuit_breaker": {"failure_status_codes": ["5xx", "4XX", 429], "ignored_status_codes": [],
               "failure_grpc_status": [0, "unauthenticated"], "max_concurrent_requests": 10}}),
        json!({"failure_injection": {"enabled": true, "base_failure_rate": 1,
               "method_specific_rates": {"/a": 0, "/b/": 0.5},
               "abort": {"http_status": 500, "grpc_status": "internal"},
               "delay": {"duration": 0, "rate": 0, "max": "250ms"},
               "header_trigger": {"enabled": true, "header": "X-Chaos", "token": "t", "propagate": true}}}),
    ];
    let records = [
        closed(),
        open(3 * S, NOW_UNIX_MS - 10),
        open(0, NOW_UNIX_MS),
        half_open(vec![NOW_NS + S, NOW_NS - S, 0]),
        Record {
            consecutive_failures: 2,
            changed_at_unix_ms: 1,
            ..closed()
        },
    ];
    for config in &configs {
        let settings = Settings::parse(config.to_string().as_bytes(), &[])
            .unwrap_or_else(|e| panic!("{config}: {e}"));
        let policy = &settings.defaults;
        for record in &records {
            for known in [true, false] {
                let report = Report {
                    service_name: &settings.service_name,
                    environment: settings.environment,
                    now_mono_ns: NOW_NS,
                    now_unix_ms: NOW_UNIX_MS,
                    routes: vec![
                        row("default", &records[0], Some(policy), 0),
                        row("users.v1/Get", record, known.then_some(policy), 3),
                    ],
                };
                assert_valid(&validator, &report.to_json());
            }
        }
    }
    assert_valid(&validator, &report(Vec::new()).to_json());
}

#[test]
fn the_response_schema_rejects_replies_that_contradict_themselves() {
    let validator = response_schema();
    let policy = Environment::Production.preset();
    let (a, b) = (closed(), open(3 * S, NOW_UNIX_MS));
    let good = report(vec![
        row("default", &a, Some(&policy), 0),
        row("users", &b, None, 0),
    ])
    .to_json();
    assert_valid(&validator, &good);
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut reply = good.clone();
        edit(&mut reply);
        assert!(!validator.is_valid(&reply), "accepted: {reply}");
    };
    broken(&|r| r["overall_healthy"] = json!(true));
    broken(&|r| r["routes"]["users"]["healthy"] = json!(true));
    broken(&|r| r["routes"]["default"]["healthy"] = json!(false));
    broken(&|r| r["routes"]["default"]["seconds_until_half_open"] = json!(1.5));
    broken(&|r| r["routes"]["users"]["state"] = json!("OPEN"));
    broken(&|r| r["routes"]["users"]["last_transition_unix_ms"] = json!("yesterday"));
    broken(&|r| r["routes"]["users"]["extra"] = json!(1));
    broken(&|r| r["environment"] = json!("staging"));
    broken(&|r| {
        if let Some(route) = r["routes"]["default"].as_object_mut() {
            route.remove("failure_injection");
        }
    });
    broken(&|r| {
        r["routes"]["default"]["failure_injection"]["header_trigger"]["token"] = json!("s3cret")
    });
    broken(&|r| r["routes"] = json!({}));
}
