//! Fault injection through a real Envoy: the configured rates, the `x-failure-inject` header
//! (with its token and its grammar), the `failure_inject` metadata and the environment switch;
//! delays held by the filter and released from the tick; `max_active_faults` across both
//! workers; and what injected faults do (and do not do) to the breaker.

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::{assert_both_workers_served, stat, value, wait_state, GRPC_PATH, WAIT};
use marty_integration::envoy::UPSTREAM_H2_CLUSTER;
use marty_integration::{
    concurrently, grpc_unary, http1, http2, Envoy, EnvoyConfig, RawClient, Response, RouteSpec,
    Upstream,
};
use serde_json::{json, Value};

const TRIGGER: &str = "x-failure-inject";
const TOKEN: &str = "x-failure-inject-token";

/// A `failure_injection` section that is on but injects nothing by itself (the preset's 5 %
/// base rate would otherwise abort requests at random), with `extra` laid over it.
fn injection(extra: Value) -> Value {
    let mut section = json!({"enabled": true, "base_failure_rate": 0.0});
    for (k, v) in extra.as_object().expect("extra is an object") {
        section[k] = v.clone();
    }
    section
}

/// `injection` with the header trigger switched on.
fn with_header(extra: Value) -> Value {
    let mut section = injection(extra);
    section["header_trigger"]["enabled"] = json!(true);
    section
}

fn route_entry(section: Value) -> Value {
    json!({"failure_injection": section})
}

fn start(upstream: &Upstream, config: Value, routes: Vec<RouteSpec>) -> Envoy {
    common::envoy(upstream, config, routes)
}

/// A GET counted under `key` carrying `x-failure-inject: value`.
fn get(envoy: &Envoy, path: &str, key: &str, trigger: &str) -> Response {
    http1(
        envoy.port(),
        "GET",
        path,
        &[("x-test-key", key), (TRIGGER, trigger)],
    )
    .unwrap()
}

fn is_injected_abort(r: &Response, status: u16) -> bool {
    r.status == status && r.header("x-marty-fault") == Some("abort")
}

/// Where the access log of [`start_logged`] writes: Envoy's stdout, which the harness keeps
/// in the Envoy's directory.
fn access_log_path(envoy: &Envoy) -> PathBuf {
    envoy.dir().join("stdout")
}

const ACCESS_LOG_FORMAT: &str = "key=%REQ(X-TEST-KEY)% status=%RESPONSE_CODE% \
fault=%FILTER_STATE(wasm.marty.resilience.fault:PLAIN)% \
trigger=%FILTER_STATE(wasm.marty.resilience.fault_trigger:PLAIN)%\n";

/// Starts Envoy with an access log of the fault filter state (on stdout) and `before`
/// placed ahead of the wasm filter.
fn start_logged(config: EnvoyConfig, before: Vec<Value>) -> Envoy {
    let mut bootstrap = config.bootstrap();
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    hcm["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/stdout",
            "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
        },
    }]);
    let filters = hcm["http_filters"]
        .as_array_mut()
        .expect("http_filters is a list");
    for (i, filter) in before.into_iter().enumerate() {
        filters.insert(i, filter);
    }
    Envoy::start_with_bootstrap(&config, &bootstrap)
        .unwrap_or_else(|e| panic!("envoy with an access log starts: {e}"))
}

/// Polls the access log for the line of the request counted under `key` (keys are unique
/// per request in the tests that read it).
#[track_caller]
fn access_log_line(envoy: &Envoy, key: &str) -> String {
    let needle = format!("key={key} ");
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(access_log_path(envoy)).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.starts_with(&needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for key {key} within {WAIT:?}; log:\n{log}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a counter of the filter to reach exactly `n`.
#[track_caller]
fn wait_counter(envoy: &Envoy, route: &str, leaf: &str, n: i64) {
    envoy.wait_for_stat(&stat(route, leaf), |v| v == n, WAIT);
}

/// The 99.999 % two-sided normal approximation of a binomial count: mean ± 4.42 σ. A full test
/// run draws three such counts, so a correct filter fails one in ~30,000 runs (at 3.29 σ, 99.9 %,
/// a clean-clone run saw 71 aborts of 400 at rate 0.25, 3.3 σ low); a rate off by 0.1 still fails.
fn binomial_interval(n: usize, p: f64) -> (f64, f64) {
    let n = n as f64;
    let mean = n * p;
    let half = 4.42 * (n * p * (1.0 - p)).sqrt();
    (mean - half, mean + half)
}

#[test]
fn header_trigger_is_honoured_only_where_enabled() {
    // The header is ignored (counted, stripped) where only injection is on, and where the header
    // trigger is on, `true` gives the route's configured abort and `abort=N` the status asked for.
    let upstream = Upstream::start();
    let config = json!({"routes": {
        "closed": route_entry(injection(json!({}))),
        "open": route_entry(with_header(json!({}))),
        "custom": route_entry(with_header(json!({"abort": {"http_status": 500}}))),
        "renamed": route_entry(with_header(json!({"header_trigger": {"header": "X-Chaos"}}))),
    }});
    let envoy = start(
        &upstream,
        config,
        vec![
            RouteSpec::new("closed", "/closed"),
            RouteSpec::new("open", "/open"),
            RouteSpec::new("custom", "/custom"),
            RouteSpec::new("renamed", "/renamed"),
        ],
    );

    // Header trigger off: the request goes through as if the header were not there, minus it.
    let r = get(&envoy, "/closed", "closed", "true");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-marty-fault"), None);
    wait_counter(&envoy, "closed", "fault_header_rejected_total", 1);
    let seen = upstream.requests("closed");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header(TRIGGER),
        None,
        "an ignored trigger header is removed before the upstream"
    );
    assert_eq!(value(&envoy, "closed", "faults_aborted_total"), 0);

    // Header trigger on: `true` is the configured abort (503 by default), over h1 and h2.
    let r = get(&envoy, "/open", "open", "true");
    assert!(is_injected_abort(&r, 503), "{r:?}");
    let r = http2(
        envoy.port(),
        "GET",
        "/open",
        &[("x-test-key", "open"), (TRIGGER, "true")],
    )
    .unwrap();
    assert!(is_injected_abort(&r, 503), "{r:?}");
    // `abort=418` picks the status.
    let r = get(&envoy, "/open", "open", "abort=418");
    assert!(is_injected_abort(&r, 418), "{r:?}");
    wait_counter(&envoy, "open", "faults_aborted_total", 3);
    assert_eq!(
        upstream.count("open"),
        0,
        "an abort never reaches the upstream"
    );
    assert_eq!(value(&envoy, "open", "fault_header_rejected_total"), 0);

    // A route's own abort.http_status is what `true` gives there; `abort=N` still wins.
    let r = get(&envoy, "/custom", "custom", "true");
    assert!(is_injected_abort(&r, 500), "{r:?}");
    let r = get(&envoy, "/custom", "custom", "abort=429");
    assert!(is_injected_abort(&r, 429), "{r:?}");
    wait_counter(&envoy, "custom", "faults_aborted_total", 2);
    assert_eq!(upstream.count("custom"), 0);

    // A renamed trigger header: `x-chaos` is the trigger there, `x-failure-inject` just a
    // header the filter leaves alone.
    let r = http1(
        envoy.port(),
        "GET",
        "/renamed",
        &[("x-test-key", "renamed"), ("x-chaos", "abort=418")],
    )
    .unwrap();
    assert!(is_injected_abort(&r, 418), "{r:?}");
    let r = get(&envoy, "/renamed", "renamed", "abort=418");
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.requests("renamed");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header(TRIGGER), Some("abort=418"));
    assert_eq!(value(&envoy, "renamed", "fault_header_rejected_total"), 0);

    // Without the header nothing happens anywhere.
    for path in ["/closed", "/open", "/custom", "/renamed"] {
        let r = http1(envoy.port(), "GET", path, &[("x-test-key", "plain")]).unwrap();
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(upstream.count("plain"), 4);
    envoy.wait_for_stat(&stat("open", "active_faults"), |v| v == 0, WAIT);
}

#[test]
fn the_token_gates_the_header_and_never_reaches_the_upstream() {
    // With a token configured only a request presenting it is faulted; the token header is
    // always removed, the trigger header too unless `propagate` (and then only when accepted).
    let upstream = Upstream::start();
    let mut propagate = with_header(json!({}));
    propagate["header_trigger"]["token"] = json!("s3cret");
    propagate["header_trigger"]["propagate"] = json!(true);
    let mut guarded = with_header(json!({}));
    guarded["header_trigger"]["token"] = json!("s3cret");
    let config = json!({"routes": {
        "guarded": route_entry(guarded),
        "forwarded": route_entry(propagate),
    }});
    let envoy = start(
        &upstream,
        config,
        vec![
            RouteSpec::new("guarded", "/guarded"),
            RouteSpec::new("forwarded", "/forwarded"),
        ],
    );
    let send = |path: &str, key: &str, trigger: &str, token: Option<&str>| {
        let mut headers = vec![("x-test-key", key), (TRIGGER, trigger)];
        if let Some(t) = token {
            headers.push((TOKEN, t));
        }
        http1(envoy.port(), "GET", path, &headers).unwrap()
    };

    // Right token: injected.
    let r = send("/guarded", "right", "abort=418", Some("s3cret"));
    assert!(is_injected_abort(&r, 418), "{r:?}");
    assert_eq!(upstream.count("right"), 0);
    // Wrong token (same length, and another length) and no token: ignored, counted, stripped.
    for (key, t) in [
        ("wrong", Some("s3creT")),
        ("short", Some("s3")),
        ("missing", None),
    ] {
        let r = send("/guarded", key, "abort=418", t);
        assert_eq!(r.status, 200, "{key}: {r:?}");
        assert_eq!(r.header("x-marty-fault"), None, "{key}");
        let seen = upstream.requests(key);
        assert_eq!(seen.len(), 1, "{key}");
        assert_eq!(seen[0].header(TOKEN), None, "{key}: token forwarded");
        assert_eq!(seen[0].header(TRIGGER), None, "{key}: trigger forwarded");
    }
    wait_counter(&envoy, "guarded", "fault_header_rejected_total", 3);
    assert_eq!(value(&envoy, "guarded", "faults_aborted_total"), 1);

    // A token without a trigger header is still removed.
    let r = http1(
        envoy.port(),
        "GET",
        "/guarded",
        &[("x-test-key", "token-only"), (TOKEN, "s3cret")],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(upstream.requests("token-only")[0].header(TOKEN), None);

    // propagate: an accepted trigger (a delay, so the request does go upstream) travels on,
    // the token never does.
    let r = send("/forwarded", "fwd-ok", "delay=10ms", Some("s3cret"));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.requests("fwd-ok");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header(TRIGGER), Some("delay=10ms"));
    assert_eq!(seen[0].header(TOKEN), None);
    wait_counter(&envoy, "forwarded", "faults_delayed_total", 1);
    // ... a refused one (wrong token) does not.
    let r = send("/forwarded", "fwd-bad", "delay=10ms", Some("nope"));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.requests("fwd-bad");
    assert_eq!(seen[0].header(TRIGGER), None);
    assert_eq!(seen[0].header(TOKEN), None);
    wait_counter(&envoy, "forwarded", "fault_header_rejected_total", 1);
    assert_eq!(value(&envoy, "forwarded", "faults_delayed_total"), 1);
}

#[test]
fn invalid_trigger_values_are_ignored_and_counted() {
    // Values outside the grammar never fault the request: it reaches the upstream with 200 and
    // `fault_header_rejected_total` counts each one.
    let upstream = Upstream::start();
    let config = json!({"routes": {"r": route_entry(with_header(json!({})))}});
    let envoy = start(&upstream, config, vec![RouteSpec::new("r", "/")]);

    // Valid but for its length: 300 bytes of `abort=418` followed by empty items.
    let too_long = format!("abort=418{}", ";".repeat(291));
    assert_eq!(too_long.len(), 300);
    let invalid = [
        "abort=99",
        "abort=600",
        "delay=-1s",
        "delay=0ms",
        "rate=2",
        "rate=0.5",
        "bogus",
        "abort=503;abort=502",
        "delay=1s,delay=2s",
        "abort=503;colour=red",
        too_long.as_str(),
    ];
    for (i, trigger) in invalid.iter().enumerate() {
        let r = get(&envoy, "/x", "invalid", trigger);
        assert_eq!(r.status, 200, "{trigger:?}: {r:?}");
        assert_eq!(r.header("x-marty-fault"), None, "{trigger:?}");
        wait_counter(&envoy, "r", "fault_header_rejected_total", i as i64 + 1);
        assert_eq!(upstream.count("invalid"), i + 1, "{trigger:?}");
    }
    assert!(upstream
        .requests("invalid")
        .iter()
        .all(|r| r.header(TRIGGER).is_none()));
    assert_eq!(value(&envoy, "r", "faults_aborted_total"), 0);
    assert_eq!(value(&envoy, "r", "faults_delayed_total"), 0);

    // The same item list at exactly 256 bytes is accepted.
    let longest = format!("abort=418{}", ";".repeat(247));
    assert_eq!(longest.len(), 256);
    let r = get(&envoy, "/x", "longest", &longest);
    assert!(is_injected_abort(&r, 418), "{r:?}");
    assert_eq!(
        value(&envoy, "r", "fault_header_rejected_total"),
        invalid.len() as i64
    );
}

#[test]
fn grpc_requests_get_a_trailers_only_grpc_status() {
    // gRPC metadata are headers: `grpc=RESOURCE_EXHAUSTED` reaches a tonic client as that code
    // and `true` as the default UNAVAILABLE, marked x-marty-fault, without reaching the upstream.
    let upstream = Upstream::start();
    let config = json!({"routes": {
        "grpc": route_entry(with_header(json!({}))),
        "grpc-custom": route_entry(with_header(json!({"abort": {"grpc_status": "DEADLINE_EXCEEDED"}}))),
    }});
    let envoy = start(
        &upstream,
        config,
        vec![
            RouteSpec::new("grpc", "/marty.test.").cluster(UPSTREAM_H2_CLUSTER),
            RouteSpec::new("grpc-custom", "/marty.other.").cluster(UPSTREAM_H2_CLUSTER),
        ],
    );

    let reply = grpc_unary(
        envoy.port(),
        GRPC_PATH,
        &[("x-test-key", "g"), (TRIGGER, "grpc=RESOURCE_EXHAUSTED")],
    )
    .unwrap();
    assert_eq!(reply.code, tonic::Code::ResourceExhausted, "{reply:?}");
    assert_eq!(reply.metadata("x-marty-fault"), Some("abort"), "{reply:?}");

    let reply = grpc_unary(
        envoy.port(),
        GRPC_PATH,
        &[("x-test-key", "g"), (TRIGGER, "true")],
    )
    .unwrap();
    assert_eq!(reply.code, tonic::Code::Unavailable, "{reply:?}");
    assert_eq!(reply.metadata("x-marty-fault"), Some("abort"), "{reply:?}");

    // Numbers work too.
    let reply = grpc_unary(
        envoy.port(),
        GRPC_PATH,
        &[("x-test-key", "g"), (TRIGGER, "grpc=7")],
    )
    .unwrap();
    assert_eq!(reply.code, tonic::Code::PermissionDenied, "{reply:?}");

    // The route's abort.grpc_status is what `true` gives there.
    let reply = grpc_unary(
        envoy.port(),
        "/marty.other.Echo/Call",
        &[("x-test-key", "g"), (TRIGGER, "true")],
    )
    .unwrap();
    assert_eq!(reply.code, tonic::Code::DeadlineExceeded, "{reply:?}");
    assert_eq!(reply.metadata("x-marty-fault"), Some("abort"), "{reply:?}");

    assert_eq!(upstream.count("g"), 0);
    wait_counter(&envoy, "grpc", "faults_aborted_total", 3);
    wait_counter(&envoy, "grpc-custom", "faults_aborted_total", 1);

    // A delay holds a gRPC call (its request body included) before the upstream.
    let sent = Instant::now();
    let reply = grpc_unary(
        envoy.port(),
        GRPC_PATH,
        &[("x-test-key", "g-delay"), (TRIGGER, "delay=300ms")],
    )
    .unwrap();
    assert_eq!(reply.code, tonic::Code::Ok, "{reply:?}");
    assert!(sent.elapsed() >= Duration::from_millis(300));
    let seen = upstream.requests("g-delay");
    assert_eq!(seen.len(), 1);
    let held = seen[0].at.duration_since(sent);
    assert!(
        held >= Duration::from_millis(300),
        "reached upstream after {held:?}"
    );
    // The route still works without the header.
    let reply = grpc_unary(envoy.port(), GRPC_PATH, &[("x-test-key", "ok")]).unwrap();
    assert_eq!(reply.code, tonic::Code::Ok, "{reply:?}");
    assert_eq!(upstream.count("ok"), 1);
}

#[test]
fn base_failure_rate_aborts_the_configured_share_of_requests() {
    // 2000 requests at base_failure_rate 0.2 (configured trigger, no header): the number of
    // injected aborts lies in the 99.9 % binomial interval, and every other request is served.
    const N: usize = 2000;
    const THREADS: usize = 8;
    let upstream = Upstream::start();
    let config = json!({"failure_injection": {"enabled": true, "base_failure_rate": 0.2}});
    let envoy = start(&upstream, config, vec![RouteSpec::unnamed("/")]);

    let per_thread = concurrently(THREADS, |_| {
        let mut aborted = 0usize;
        let mut other = Vec::new();
        for _ in 0..N / THREADS {
            let r = http1(envoy.port(), "GET", "/rate", &[("x-test-key", "rate")]).unwrap();
            if is_injected_abort(&r, 503) {
                aborted += 1;
            } else if r.status != 200 || r.header("x-marty-fault").is_some() {
                other.push(r);
            }
        }
        (aborted, other)
    });
    let aborted: usize = per_thread.iter().map(|(a, _)| a).sum();
    let unexpected: Vec<&Response> = per_thread.iter().flat_map(|(_, o)| o).collect();
    assert!(
        unexpected.is_empty(),
        "neither 200 nor an abort: {unexpected:?}"
    );

    let (low, high) = binomial_interval(N, 0.2);
    assert!(
        (low..=high).contains(&(aborted as f64)),
        "{aborted} aborts of {N} at rate 0.2: outside [{low:.0}, {high:.0}]"
    );
    assert_eq!(upstream.count("rate"), N - aborted);
    wait_counter(&envoy, "upstream", "faults_aborted_total", aborted as i64);
    assert_eq!(value(&envoy, "upstream", "fault_header_rejected_total"), 0);
    assert_both_workers_served(&envoy);
}

#[test]
fn the_header_rate_applies_per_request() {
    // `rate=` in the trigger header makes each request's fault a draw: `rate=0.25` aborts a
    // binomial share, `rate=0` never injects (and is no rejection), `rate=1` always does.
    const N: usize = 400;
    let upstream = Upstream::start();
    let config = json!({"failure_injection": with_header(json!({}))});
    let envoy = start(&upstream, config, vec![RouteSpec::unnamed("/")]);
    let aborts = |trigger: &str, n: usize| -> usize {
        concurrently(4, |_| {
            (0..n / 4)
                .filter(|_| {
                    let r = get(&envoy, "/", trigger, trigger);
                    assert!(
                        r.status == 200 || is_injected_abort(&r, 503),
                        "{trigger}: {r:?}"
                    );
                    r.status == 503
                })
                .count()
        })
        .into_iter()
        .sum()
    };

    let aborted = aborts("abort=503;rate=0.25", N);
    let (low, high) = binomial_interval(N, 0.25);
    assert!(
        (low..=high).contains(&(aborted as f64)),
        "{aborted} aborts of {N} at rate 0.25: outside [{low:.0}, {high:.0}]"
    );
    assert_eq!(upstream.count("abort=503;rate=0.25"), N - aborted);
    assert_eq!(aborts("abort=503;rate=0", 40), 0);
    assert_eq!(aborts("rate=1;abort=503", 40), 40);
    wait_counter(
        &envoy,
        "upstream",
        "faults_aborted_total",
        (aborted + 40) as i64,
    );
    assert_eq!(value(&envoy, "upstream", "fault_header_rejected_total"), 0);
}

#[test]
fn method_specific_rates_prefer_exact_paths_then_the_longest_prefix() {
    // Exact keys beat prefix keys (`/`-terminated or `*`), the longest prefix wins, the query
    // string is ignored, and a path no key matches gets base_failure_rate.
    let upstream = Upstream::start();
    let config = json!({"failure_injection": {
        "enabled": true,
        "base_failure_rate": 0.0,
        "method_specific_rates": {
            "/health": 0.0,
            "/h*": 1.0,
            "/api/": 1.0,
            "/api/keep": 0.0,
            "/api/v2/": 0.0,
            "/exact": 0.5,
        },
    }});
    let envoy = start(&upstream, config, vec![RouteSpec::unnamed("/")]);
    let aborts = |path: &str, n: usize| -> usize {
        concurrently(4, |_| {
            (0..n / 4)
                .map(|_| {
                    let r = http1(envoy.port(), "GET", path, &[("x-test-key", path)]).unwrap();
                    assert!(
                        r.status == 200 || is_injected_abort(&r, 503),
                        "{path}: {r:?}"
                    );
                    usize::from(r.status == 503)
                })
                .sum::<usize>()
        })
        .into_iter()
        .sum()
    };

    // Never: exact key 0.0 (over a prefix 1.0 that also matches), longer prefix 0.0, no key.
    for (path, n) in [
        ("/health", 200),
        ("/api/keep", 40),
        ("/api/keep?verbose=1", 40),
        ("/api/v2/users", 40),
        ("/exact/sub", 40),
        ("/other", 40),
    ] {
        assert_eq!(aborts(path, n), 0, "{path} must never be aborted");
        assert_eq!(upstream.count(path), n, "{path}");
    }
    // Always: prefix keys at 1.0 where no exact key matches.
    for path in ["/api/x", "/api/keeper", "/api/", "/hello", "/h"] {
        assert_eq!(aborts(path, 40), 40, "{path} must always be aborted");
        assert_eq!(upstream.count(path), 0, "{path}");
    }
    // Half: the exact key's 0.5, checked statistically.
    let n = 400;
    let aborted = aborts("/exact", n);
    let (low, high) = binomial_interval(n, 0.5);
    assert!(
        (low..=high).contains(&(aborted as f64)),
        "{aborted} aborts of {n} at rate 0.5: outside [{low:.0}, {high:.0}]"
    );
    wait_counter(
        &envoy,
        "upstream",
        "faults_aborted_total",
        (5 * 40 + aborted) as i64,
    );
}

#[test]
fn delays_hold_requests_for_at_least_their_duration() {
    // A delay holds the request before the upstream for at least its duration, whether asked by
    // the header or configured, and a header delay longer than delay.max is cut to delay.max.
    let upstream = Upstream::start();
    let config = json!({"routes": {
        "header": route_entry(with_header(json!({}))),
        "configured": route_entry(injection(json!({"delay": {"duration": 0.2, "rate": 1.0}}))),
        "capped": route_entry(with_header(json!({"delay": {"max": 0.5}}))),
    }});
    let envoy = start(
        &upstream,
        config,
        vec![
            RouteSpec::new("header", "/header"),
            RouteSpec::new("configured", "/configured"),
            RouteSpec::new("capped", "/capped"),
        ],
    );
    let timed = |path: &str, key: &str, trigger: Option<&str>| {
        let mut headers = vec![("x-test-key", key)];
        if let Some(t) = trigger {
            headers.push((TRIGGER, t));
        }
        let sent = Instant::now();
        let r = http1(envoy.port(), "GET", path, &headers).unwrap();
        (r, sent, sent.elapsed())
    };
    let held_at_upstream = |key: &str, sent: Instant| -> Duration {
        let seen = upstream.requests(key);
        assert_eq!(seen.len(), 1, "{key}");
        seen[0].at.duration_since(sent)
    };

    // Header delay: 300 ms before the upstream sees it.
    let (r, sent, elapsed) = timed("/header", "h300", Some("delay=300ms"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-marty-fault"), None);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    let held = held_at_upstream("h300", sent);
    assert!(
        held >= Duration::from_millis(300),
        "reached upstream after {held:?}"
    );
    wait_counter(&envoy, "header", "faults_delayed_total", 1);

    // Delay and abort together: held, then answered locally.
    let (r, _, elapsed) = timed("/header", "both", Some("delay=200ms;abort=502"));
    assert!(is_injected_abort(&r, 502), "{r:?}");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert_eq!(upstream.count("both"), 0);
    wait_counter(&envoy, "header", "faults_delayed_total", 2);
    wait_counter(&envoy, "header", "faults_aborted_total", 1);

    // Configured delay (rate 1.0, 0.2 s): no header needed.
    let (r, sent, elapsed) = timed("/configured", "conf", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    let held = held_at_upstream("conf", sent);
    assert!(
        held >= Duration::from_millis(200),
        "reached upstream after {held:?}"
    );
    wait_counter(&envoy, "configured", "faults_delayed_total", 1);

    // 60 s asked, delay.max 0.5 s: the request completes at all (the client gives up after
    // 30 s), after at least the ceiling.
    let (r, sent, elapsed) = timed("/capped", "cap", Some("delay=60s"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    let held = held_at_upstream("cap", sent);
    assert!(
        held >= Duration::from_millis(500),
        "reached upstream after {held:?}"
    );
    wait_counter(&envoy, "capped", "faults_delayed_total", 1);

    for route in ["header", "configured", "capped"] {
        envoy.wait_for_stat(&stat(route, "active_faults"), |v| v == 0, WAIT);
    }
}

#[test]
fn a_client_leaving_during_a_delay_releases_the_fault() {
    // A client that hangs up while its request is held frees the fault slot, and the held
    // request is never resumed towards the upstream; the filter keeps serving.
    let upstream = Upstream::start();
    let config = json!({"routes": {"r": route_entry(with_header(json!({})))}});
    let envoy = start(&upstream, config, vec![RouteSpec::new("r", "/")]);

    let sent = Instant::now();
    let client = RawClient::send(
        envoy.port(),
        "GET",
        "/held",
        &[("x-test-key", "gone"), (TRIGGER, "delay=2s")],
    );
    envoy.wait_for_stat(&stat("r", "active_faults"), |v| v == 1, WAIT);
    client.close();
    envoy.wait_for_stat(&stat("r", "active_faults"), |v| v == 0, WAIT);

    // Nothing can be polled for "never": wait out the delay the request would have had.
    let resume_at = sent + Duration::from_millis(2500);
    thread::sleep(resume_at.saturating_duration_since(Instant::now()));
    assert_eq!(
        upstream.count("gone"),
        0,
        "a request whose client left was resumed"
    );

    // Later requests, delayed or not, are served.
    let r = get(&envoy, "/after", "after", "delay=50ms");
    assert_eq!(r.status, 200, "{r:?}");
    let r = http1(envoy.port(), "GET", "/", &[("x-test-key", "after")]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count("after"), 2);
    wait_counter(&envoy, "r", "faults_delayed_total", 2);
    envoy.wait_for_stat(&stat("r", "active_faults"), |v| v == 0, WAIT);
    // A client going away is no upstream failure.
    assert_eq!(value(&envoy, "r", "failure_total"), 0);

    let log = envoy.log();
    for bad in ["panicked", "wasm_fail", "Uncaught", "Wasm VM failed"] {
        assert!(!log.contains(bad), "envoy log mentions {bad:?}:\n{log}");
    }
}

#[test]
fn an_h2_stream_cancelled_during_a_delay_releases_the_fault() {
    // An HTTP/2 client resetting its stream (RST_STREAM, connection kept open) while the
    // request is held frees the fault slot, and the request never reaches the upstream.
    let upstream = Upstream::start();
    let config = json!({"routes": {"r": route_entry(with_header(json!({})))}});
    let envoy = start(&upstream, config, vec![RouteSpec::new("r", "/")]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let port = envoy.port();

    let sent = Instant::now();
    let (mut sender, connection) = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        (sender, tokio::spawn(conn))
    });
    let request = http::Request::builder()
        .uri(format!("http://127.0.0.1:{port}/held"))
        .header("x-test-key", "cancelled")
        .header(TRIGGER, "delay=2s")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let call = runtime.spawn(sender.send_request(request));
    envoy.wait_for_stat(&stat("r", "active_faults"), |v| v == 1, WAIT);
    // Dropping the response future resets the stream.
    call.abort();
    envoy.wait_for_stat(&stat("r", "active_faults"), |v| v == 0, WAIT);
    assert!(
        !connection.is_finished(),
        "the connection stays up: only the stream was reset"
    );

    // Nothing can be polled for "never": wait out the delay the request would have had.
    let resume_at = sent + Duration::from_millis(2500);
    thread::sleep(resume_at.saturating_duration_since(Instant::now()));
    assert_eq!(
        upstream.count("cancelled"),
        0,
        "a cancelled request was resumed"
    );
    let r = http2(
        envoy.port(),
        "GET",
        "/",
        &[("x-test-key", "after"), (TRIGGER, "delay=20ms")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.count("after"), 1);
    envoy.wait_for_stat(&stat("r", "active_faults"), |v| v == 0, WAIT);
    drop(sender);
}

#[test]
fn max_active_faults_caps_held_requests_across_workers() {
    // 16 concurrent delay requests on both workers with max_active_faults 3: at most 3 are held,
    // the rest overflow and go straight to the upstream, and every request is answered.
    const N: usize = 16;
    const DELAY: Duration = Duration::from_millis(1500);
    let upstream = Upstream::start();
    let config =
        json!({"routes": {"r": route_entry(with_header(json!({"max_active_faults": 3})))}});
    let envoy = start(&upstream, config, vec![RouteSpec::new("r", "/")]);
    let keys: Vec<String> = (0..N).map(|i| format!("burst-{i}")).collect();

    let (results, samples) = thread::scope(|s| {
        let burst = s.spawn(|| {
            concurrently(N, |i| {
                let sent = Instant::now();
                let r = http1(
                    envoy.port(),
                    "GET",
                    "/",
                    &[("x-test-key", keys[i].as_str()), (TRIGGER, "delay=1500ms")],
                )
                .unwrap();
                (r, sent)
            })
        });
        // Once every request has been decided (delayed or overflowed), the gauge only moves
        // down as held requests are released: sample it until the burst is over.
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = envoy.stats();
            let decided = stats.get(&stat("r", "faults_delayed_total")).unwrap_or(&0)
                + stats.get(&stat("r", "faults_overflow_total")).unwrap_or(&0);
            if decided == N as i64 || burst.is_finished() {
                break;
            }
            assert!(Instant::now() < deadline, "only {decided} of {N} decided");
            thread::sleep(Duration::from_millis(5));
        }
        let mut samples = Vec::new();
        while !burst.is_finished() {
            samples.push(value(&envoy, "r", "active_faults"));
        }
        (burst.join().unwrap(), samples)
    });

    let delayed = value(&envoy, "r", "faults_delayed_total");
    let overflow = value(&envoy, "r", "faults_overflow_total");
    assert_eq!(delayed + overflow, N as i64);
    assert!(
        (1..=3).contains(&delayed),
        "{delayed} delayed, {overflow} overflowed"
    );
    let max_seen = samples.iter().copied().max().unwrap_or(0);
    assert!(
        max_seen <= 3,
        "active_faults reached {max_seen} ({} samples)",
        samples.len()
    );

    assert!(
        results
            .iter()
            .all(|(r, _)| r.status == 200 && r.header("x-marty-fault").is_none()),
        "{results:?}"
    );
    // Held requests reach the upstream only after the delay; the overflowed ones went on
    // at once, so exactly `delayed` requests arrived late.
    let late = results
        .iter()
        .zip(&keys)
        .filter(|((_, sent), key)| {
            let seen = upstream.requests(key);
            assert_eq!(seen.len(), 1, "{key}");
            seen[0].at.duration_since(*sent) >= DELAY
        })
        .count();
    assert_eq!(late as i64, delayed, "{overflow} overflowed");
    envoy.wait_for_stat(&stat("r", "active_faults"), |v| v == 0, WAIT);
    assert_both_workers_served(&envoy);
}

#[test]
fn injected_aborts_never_count_toward_the_breaker() {
    // Injected aborts leave a one-failure breaker closed; a delayed request that then fails at
    // the upstream is a real failure and opens it.
    let upstream = Upstream::start();
    let mut entry = route_entry(with_header(json!({})));
    entry["circuit_breaker"] = json!({"failure_threshold": 1, "recovery_timeout": 60.0});
    let envoy = start(
        &upstream,
        json!({"routes": {"b": entry}}),
        vec![RouteSpec::new("b", "/")],
    );

    for _ in 0..5 {
        let r = http1(
            envoy.port(),
            "GET",
            "/",
            &[
                ("x-test-key", "inj"),
                (TRIGGER, "true"),
                ("x-upstream-status", "500"),
            ],
        )
        .unwrap();
        assert!(is_injected_abort(&r, 503), "{r:?}");
    }
    wait_counter(&envoy, "b", "faults_aborted_total", 5);
    assert_eq!(upstream.count("inj"), 0);
    assert_eq!(value(&envoy, "b", "circuit_state"), 0);
    assert_eq!(value(&envoy, "b", "failure_total"), 0);
    assert_eq!(value(&envoy, "b", "rejected_total"), 0);
    assert_eq!(value(&envoy, "b", "circuit_opened_total"), 0);
    let r = http1(envoy.port(), "GET", "/", &[("x-test-key", "ok")]).unwrap();
    assert_eq!(r.status, 200, "still closed: {r:?}");

    // Delayed, then a 503 from the upstream: counted, and the breaker opens.
    let r = http1(
        envoy.port(),
        "GET",
        "/",
        &[
            ("x-test-key", "late-fail"),
            (TRIGGER, "delay=50ms"),
            ("x-upstream-status", "503"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-marty-fault"), None, "the upstream's own 503");
    assert_eq!(upstream.count("late-fail"), 1);
    wait_counter(&envoy, "b", "failure_total", 1);
    wait_state(&envoy, "b", 1);
    let r = http1(envoy.port(), "GET", "/", &[("x-test-key", "ok")]).unwrap();
    assert_eq!(r.header("x-marty-circuit"), Some("open"), "{r:?}");
}

#[test]
fn a_delay_is_counted_only_when_it_is_applied() {
    // faults_delayed_total counts injected delays: a request the breaker rejects before it is
    // held was not delayed, so either it is held for its delay first, or nothing says it was.
    let upstream = Upstream::start();
    let mut entry = route_entry(with_header(json!({})));
    entry["circuit_breaker"] = json!({"failure_threshold": 1, "recovery_timeout": 60.0});
    let envoy = start_logged(
        EnvoyConfig::new(upstream.port())
            .plugin_config(json!({"routes": {"b": entry}}).to_string())
            .routes(vec![RouteSpec::new("b", "/")]),
        vec![],
    );
    let r = http1(
        envoy.port(),
        "GET",
        "/",
        &[("x-test-key", "trip"), ("x-upstream-status", "500")],
    )
    .unwrap();
    assert_eq!(r.status, 500);
    wait_state(&envoy, "b", 1);

    let sent = Instant::now();
    let r = get(&envoy, "/", "rejected-delay", "delay=1s");
    let elapsed = sent.elapsed();
    assert_eq!(r.header("x-marty-circuit"), Some("open"), "{r:?}");
    if elapsed < Duration::from_secs(1) {
        let line = access_log_line(&envoy, "rejected-delay");
        assert_eq!(
            value(&envoy, "b", "faults_delayed_total"),
            0,
            "answered after {elapsed:?}, yet counted as delayed; access log: {line}"
        );
        assert_eq!(line, "key=rejected-delay status=503 fault=- trigger=-");
    }
    envoy.wait_for_stat(&stat("b", "active_faults"), |v| v == 0, WAIT);
}

/// `envoy.filters.http.header_to_metadata`: `x-meta-inject` becomes the `failure_inject`
/// metadata the filter reads.
fn header_to_metadata() -> Value {
    json!({
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
            "request_rules": [{
                "header": "x-meta-inject",
                "on_header_present": {
                    "metadata_namespace": "marty.resilience",
                    "key": "failure_inject",
                    "type": "STRING",
                },
                "remove": true,
            }],
        },
    })
}

#[test]
fn the_metadata_trigger_works_without_the_header_trigger() {
    // `failure_inject` dynamic metadata set by an earlier filter faults the request where
    // injection is on, even with the header trigger off; invalid metadata is counted and ignored.
    let upstream = Upstream::start();
    let config = json!({"routes": {
        "meta": route_entry(injection(json!({"metadata_trigger": true}))),
        "off": {"circuit_breaker": {"failure_threshold": 5}},
        // Injection on, but the metadata trigger not: the metadata is never looked at.
        "unread": route_entry(injection(json!({}))),
    }});
    let envoy = start_logged(
        EnvoyConfig::new(upstream.port())
            .plugin_config(config.to_string())
            .routes(vec![
                RouteSpec::new("meta", "/meta"),
                RouteSpec::new("off", "/off"),
                RouteSpec::new("unread", "/unread"),
            ]),
        vec![header_to_metadata()],
    );
    let send = |path: &str, key: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("x-test-key", key)];
        all.extend_from_slice(headers);
        http1(envoy.port(), "GET", path, &all).unwrap()
    };

    let r = send("/meta", "m-abort", &[("x-meta-inject", "abort=418")]);
    assert!(is_injected_abort(&r, 418), "{r:?}");
    assert_eq!(upstream.count("m-abort"), 0);
    assert_eq!(
        access_log_line(&envoy, "m-abort"),
        "key=m-abort status=418 fault=abort trigger=metadata"
    );

    let r = send("/meta", "m-delay", &[("x-meta-inject", "delay=100ms")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.count("m-delay"), 1);
    assert_eq!(
        access_log_line(&envoy, "m-delay"),
        "key=m-delay status=200 fault=delay trigger=metadata"
    );
    wait_counter(&envoy, "meta", "faults_aborted_total", 1);
    wait_counter(&envoy, "meta", "faults_delayed_total", 1);

    // Invalid metadata: counted, ignored.
    let r = send("/meta", "m-bad", &[("x-meta-inject", "abort=99")]);
    assert_eq!(r.status, 200, "{r:?}");
    wait_counter(&envoy, "meta", "fault_header_rejected_total", 1);
    // The header trigger is still off here: counted, ignored, stripped.
    let r = send("/meta", "m-header", &[(TRIGGER, "abort=418")]);
    assert_eq!(r.status, 200, "{r:?}");
    wait_counter(&envoy, "meta", "fault_header_rejected_total", 2);
    assert_eq!(upstream.requests("m-header")[0].header(TRIGGER), None);
    assert_eq!(
        access_log_line(&envoy, "m-header"),
        "key=m-header status=200 fault=- trigger=-"
    );

    // Where injection is off the metadata is not read at all.
    let r = send("/unread", "m-unread", &[("x-meta-inject", "abort=418")]);
    assert_eq!(r.status, 200, "metadata_trigger off: {r:?}");
    let r = send("/off", "m-off", &[("x-meta-inject", "abort=418")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.count("m-off"), 1);
    assert_eq!(value(&envoy, "off", "faults_aborted_total"), 0);
    assert_eq!(value(&envoy, "off", "fault_header_rejected_total"), 0);
    assert_eq!(value(&envoy, "meta", "faults_aborted_total"), 1);
}

#[test]
fn the_environment_switch_injects_on_every_route() {
    // MARTY_FAILURE_INJECTION=enabled with rate 1.0 aborts every request on every route, named
    // or not, with the trigger reported as `env`.
    let upstream = Upstream::start();
    let config = json!({"routes": {"orders": {"circuit_breaker": {"failure_threshold": 1}}}});
    let envoy = start_logged(
        EnvoyConfig::new(upstream.port())
            .plugin_config(config.to_string())
            .vm_env("MARTY_FAILURE_INJECTION", "enabled")
            .vm_env("MARTY_FAILURE_INJECTION_RATE", "1.0")
            .routes(vec![
                RouteSpec::new("orders", "/orders"),
                RouteSpec::unnamed("/"),
            ]),
        vec![],
    );
    for (path, key) in [
        ("/orders", "env-1"),
        ("/orders/2", "env-2"),
        ("/else", "env-3"),
    ] {
        let r = http1(envoy.port(), "GET", path, &[("x-test-key", key)]).unwrap();
        assert!(is_injected_abort(&r, 503), "{path}: {r:?}");
        assert_eq!(
            access_log_line(&envoy, key),
            format!("key={key} status=503 fault=abort trigger=env")
        );
    }
    let r = http2(envoy.port(), "GET", "/else", &[("x-test-key", "env-4")]).unwrap();
    assert!(is_injected_abort(&r, 503), "{r:?}");
    assert_eq!(upstream.total(), 0);
    wait_counter(&envoy, "orders", "faults_aborted_total", 2);
    wait_counter(&envoy, "upstream", "faults_aborted_total", 2);
    // Injected, so never a failure: the one-failure breaker stays closed.
    assert_eq!(value(&envoy, "orders", "circuit_state"), 0);
}

#[test]
fn filter_state_names_the_fault_and_its_trigger() {
    // `wasm.marty.resilience.fault` and `.fault_trigger` in the access log: abort/header,
    // delay/header, abort/config, and nothing on a request without a fault.
    let upstream = Upstream::start();
    let config = json!({"routes": {
        "h": route_entry(with_header(json!({}))),
        "c": route_entry(injection(json!({"base_failure_rate": 1.0, "abort": {"http_status": 502}}))),
    }});
    let envoy = start_logged(
        EnvoyConfig::new(upstream.port())
            .plugin_config(config.to_string())
            .routes(vec![RouteSpec::new("h", "/h"), RouteSpec::new("c", "/c")]),
        vec![],
    );

    let r = get(&envoy, "/h", "fs-abort", "abort=418");
    assert!(is_injected_abort(&r, 418), "{r:?}");
    assert_eq!(
        access_log_line(&envoy, "fs-abort"),
        "key=fs-abort status=418 fault=abort trigger=header"
    );
    let r = get(&envoy, "/h", "fs-delay", "delay=20ms");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        access_log_line(&envoy, "fs-delay"),
        "key=fs-delay status=200 fault=delay trigger=header"
    );
    let r = get(&envoy, "/h", "fs-both", "delay=20ms;abort=504");
    assert!(is_injected_abort(&r, 504), "{r:?}");
    assert_eq!(
        access_log_line(&envoy, "fs-both"),
        "key=fs-both status=504 fault=abort trigger=header"
    );
    let r = http1(envoy.port(), "GET", "/c", &[("x-test-key", "fs-config")]).unwrap();
    assert!(is_injected_abort(&r, 502), "{r:?}");
    assert_eq!(
        access_log_line(&envoy, "fs-config"),
        "key=fs-config status=502 fault=abort trigger=config"
    );
    let r = http1(envoy.port(), "GET", "/h", &[("x-test-key", "fs-none")]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        access_log_line(&envoy, "fs-none"),
        "key=fs-none status=200 fault=- trigger=-"
    );
}

#[test]
fn routes_without_injection_pass_the_trigger_header_through() {
    // Documented pass-through: where failure_injection is off the filter does not read the
    // trigger header, so it reaches the upstream as sent and nothing is counted.
    let upstream = Upstream::start();
    let config = json!({"routes": {
        "faulty": route_entry(with_header(json!({}))),
        "plain": {"circuit_breaker": {"failure_threshold": 5}},
    }});
    let envoy = start(
        &upstream,
        config,
        vec![
            RouteSpec::new("faulty", "/faulty"),
            RouteSpec::new("plain", "/plain"),
            // Injection switched on by the route's own Envoy metadata, not the plugin JSON (an
            // integer rate: see yaml_route_metadata_accepts_fractional_rates).
            RouteSpec::new("annotated", "/annotated").metadata(route_entry(json!({
                "enabled": true, "base_failure_rate": 0, "header_trigger": {"enabled": true}}))),
            RouteSpec::unnamed("/"),
        ],
    );

    for (path, route) in [("/plain", "plain"), ("/else", "upstream")] {
        for trigger in ["true", "abort=418", "bogus"] {
            let r = http1(
                envoy.port(),
                "GET",
                path,
                &[("x-test-key", route), (TRIGGER, trigger), (TOKEN, "t")],
            )
            .unwrap();
            assert_eq!(r.status, 200, "{path} {trigger}: {r:?}");
            assert_eq!(r.header("x-marty-fault"), None);
        }
        let seen = upstream.requests(route);
        let forwarded: Vec<Option<&str>> = seen.iter().map(|r| r.header(TRIGGER)).collect();
        assert_eq!(
            forwarded,
            vec![Some("true"), Some("abort=418"), Some("bogus")],
            "{path}"
        );
        assert!(seen.iter().all(|r| r.header(TOKEN) == Some("t")), "{path}");
        for leaf in [
            "faults_aborted_total",
            "faults_delayed_total",
            "faults_overflow_total",
            "fault_header_rejected_total",
            "active_faults",
        ] {
            assert_eq!(value(&envoy, route, leaf), 0, "{route}.{leaf}");
        }
        wait_counter(&envoy, route, "requests_total", 3);
    }
    // Meanwhile the same header on the injecting routes is honoured.
    for (path, route) in [("/faulty", "faulty"), ("/annotated", "annotated")] {
        let r = get(&envoy, path, route, "abort=418");
        assert!(is_injected_abort(&r, 418), "{path}: {r:?}");
        wait_counter(&envoy, route, "faults_aborted_total", 1);
        assert_eq!(upstream.count(route), 0, "{path}");
    }
}

#[test]
fn yaml_route_metadata_accepts_fractional_rates() {
    // The docs' route-metadata example writes rates as YAML floats; the harness's bootstrap is
    // YAML too, so a metadata rate of 1.0 must abort every request on the route.
    let upstream = Upstream::start();
    let envoy = start(
        &upstream,
        json!({}),
        vec![
            RouteSpec::new("rated", "/rated").metadata(route_entry(json!({
                "enabled": true, "base_failure_rate": 1.0}))),
            RouteSpec::new("delayed", "/delayed").metadata(route_entry(json!({
                "enabled": true, "base_failure_rate": 0, "delay": {"duration": "50ms", "rate": 1.0}}))),
        ],
    );
    let r = http1(envoy.port(), "GET", "/rated", &[("x-test-key", "rated")]).unwrap();
    let rejected = envoy
        .wasm_stat("marty_resilience.route_config_rejected_total")
        .unwrap_or(0);
    assert!(
        is_injected_abort(&r, 503),
        "base_failure_rate 1.0 in route metadata: {} (route_config_rejected_total {rejected})",
        r.status
    );
    let r = http1(
        envoy.port(),
        "GET",
        "/delayed",
        &[("x-test-key", "delayed")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    wait_counter(&envoy, "delayed", "faults_delayed_total", 1);
    assert_eq!(
        envoy.wasm_stat("marty_resilience.route_config_rejected_total"),
        Some(0)
    );
}
