//! Reliability against a real Envoy: held requests released on time under load, outcomes that
//! are not the upstream's, configurations whose stats Envoy drops, counters counted once, the
//! log level followed at run time, and the caps' slots given back whatever ends a request
//! (the router's own replies, resets, a reload, a VM that traps).

mod common;

use std::time::{Duration, Instant};

use common::{answer, stat, value, wait_state, WAIT};
use marty_integration::envoy::test_trap_wasm_path;
use marty_integration::{
    http1, http1_abort_after_headers, Envoy, EnvoyConfig, RawClient, RouteSpec, Upstream,
};
use serde_json::{json, Value};

fn hcm(bootstrap: &mut Value) -> &mut Value {
    bootstrap
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .expect("the harness bootstrap has one HCM")
}

#[test]
fn held_requests_are_released_while_more_keep_arriving() {
    // Envoy restarts a VM's tick timer whenever its period is set. Before, every held request
    // set the 5 ms period again, so a worker that held requests more often than every 5 ms
    // kept pushing its tick back: nothing held was released while arrivals went on, and
    // housekeeping (OPEN -> HALF_OPEN) stalled with it. Open loop: four senders each start a
    // request every ~1 ms (each delayed 50 ms) and keep going until the first one comes back.
    // The check is not a timing bound this machine's load could break: the first release must
    // come while arrivals are still going on (within 10 s), and HALF_OPEN must follow OPEN
    // meanwhile.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let upstream = Upstream::start();
    let config = json!({
        "failure_injection": {"enabled": true, "base_failure_rate": 0, "header_trigger": {"enabled": true},
                              "max_active_faults": 0, "delay": {"max": "1s"}},
        "routes": {"flaky": {"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 1}}}
    });
    let envoy = common::envoy(
        &upstream,
        config,
        vec![
            RouteSpec::new("flaky", "/flaky"),
            RouteSpec::new("held", "/"),
        ],
    );
    http1(envoy.port(), "GET", "/flaky", &answer("f", "503")).unwrap();
    wait_state(&envoy, "flaky", 1);

    const SENDERS: usize = 4;
    let deadline = Instant::now() + Duration::from_secs(10);
    let released = Arc::new(AtomicBool::new(false));
    let sent_after_release = Arc::new(AtomicUsize::new(0));
    let (first_tx, first_rx) = std::sync::mpsc::channel::<RawClient>();
    let port = envoy.port();
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let (released, after, first_tx) = (
                released.clone(),
                sent_after_release.clone(),
                first_tx.clone(),
            );
            std::thread::spawn(move || {
                let mut clients = Vec::new();
                let mut n = 0usize;
                while Instant::now() < deadline && after.load(Ordering::SeqCst) < 20 {
                    let client = RawClient::send(
                        port,
                        "GET",
                        "/",
                        &[("x-test-key", "held"), ("x-failure-inject", "delay=50ms")],
                    );
                    if i == 0 && n == 0 {
                        let _ = first_tx.send(client);
                    } else {
                        clients.push(client);
                    }
                    if released.load(Ordering::SeqCst) {
                        after.fetch_add(1, Ordering::SeqCst);
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                clients
            })
        })
        .collect();
    drop(first_tx);
    let mut first = first_rx.recv().expect("the first request was sent");
    let status = first.status_line(Duration::from_secs(10)).unwrap();
    released.store(true, Ordering::SeqCst);
    assert!(status.contains(" 200"), "{status}");
    assert!(
        Instant::now() < deadline,
        "nothing was released while requests kept arriving"
    );
    first.close();
    for sender in senders {
        for mut client in sender.join().unwrap() {
            let status = client.status_line(Duration::from_secs(10)).unwrap();
            assert!(status.contains(" 200"), "{status}");
            client.close();
        }
    }
    assert!(
        sent_after_release.load(Ordering::SeqCst) > 0,
        "arrivals were still going on when the first held request came back"
    );
    // Housekeeping kept its pace: the 1 s open period turned HALF_OPEN meanwhile.
    wait_state(&envoy, "flaky", 2);
}

#[test]
fn another_filter_s_local_reply_moves_no_breaker() {
    // Envoy's own fault filter after ours aborts every request with a 503 the upstream never
    // sent: not an upstream failure.
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(json!({"circuit_breaker": {"failure_threshold": 1}}).to_string())
        .routes(vec![RouteSpec::new("users", "/")]);
    let mut bootstrap = config.bootstrap();
    let filters = hcm(&mut bootstrap)["http_filters"]
        .as_array_mut()
        .expect("http_filters");
    filters.insert(
        1,
        json!({"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 503, "percentage": {"numerator": 100}}}}),
    );
    let envoy = Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        let r = http1(envoy.port(), "GET", "/", &answer("u", "200")).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-marty-circuit"), None, "the fault filter's 503");
    }
    envoy.wait_for_stat(&stat("users", "requests_total"), |v| v == 3, WAIT);
    assert_eq!(value(&envoy, "users", "failure_total"), 0);
    assert_eq!(value(&envoy, "users", "circuit_state"), 0);
    assert_eq!(upstream.count("u"), 0);
}

#[test]
fn a_stats_matcher_that_drops_the_filter_s_stats_makes_envoy_refuse_it() {
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(json!({}).to_string())
        .routes(vec![RouteSpec::new("users", "/")]);
    let mut bootstrap = config.bootstrap();
    bootstrap["stats_config"]["stats_matcher"] =
        json!({"exclusion_list": {"patterns": [{"prefix": "wasmcustom.marty_resilience."}]}});
    let error = Envoy::start_with_bootstrap(&config, &bootstrap)
        .err()
        .expect("Envoy refuses the plugin");
    assert!(
        error
            .log
            .contains("invalid marty-resilience configuration: Envoy does not keep"),
        "{}",
        error.log
    );
}

#[test]
fn with_both_placements_each_retry_is_counted_once() {
    // The upstream placement holds retries, the placement before the router counts them: the
    // count equals the tries the upstream saw beyond the first.
    let upstream = Upstream::start();
    let downstream = json!({"retry": {"enabled": true, "max_attempts": 3, "retry_on": ["5xx"],
        "per_try_timeout": 0, "backoff_strategy": "fixed", "base_delay": 0.01, "max_delay": 0.01}});
    let mut upstream_config = downstream.clone();
    upstream_config["mode"] = json!("upstream");
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(downstream.to_string())
        .routes(vec![RouteSpec::new("users", "/")]);
    let bootstrap = common::with_upstream_placement(&config, &upstream_config, true);
    let envoy = Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..4 {
        let key = format!("r{i}");
        let r = http1(
            envoy.port(),
            "GET",
            "/",
            &[
                ("x-test-key", key.as_str()),
                ("x-request-id", key.as_str()),
                ("x-upstream-fail-first", "2"),
            ],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let tries = upstream.total() as i64;
    assert_eq!(tries, 12, "three tries each");
    envoy.wait_for_stat(&stat("users", "requests_total"), |v| v == 4, WAIT);
    assert_eq!(value(&envoy, "users", "retry_attempts_total"), tries - 4);
    assert_eq!(
        envoy.stat("cluster.upstream.upstream_rq_retry"),
        Some(tries - 4)
    );
}

#[test]
fn a_grpc_server_stream_probe_closes_the_breaker_while_it_streams() {
    // The probe's stream outlives half_open_probe_timeout (1 s): before, its slot passed on
    // and its result was dropped as late, so a healthy streaming route never closed.
    let upstream = Upstream::start();
    let envoy = common::envoy(
        &upstream,
        json!({"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 1,
            "half_open_success_threshold": 1, "half_open_probe_timeout": 1}}),
        vec![RouteSpec::new("stream", "/").cluster(marty_integration::envoy::UPSTREAM_H2_CLUSTER)],
    );
    let failed = marty_integration::grpc_unary(
        envoy.port(),
        common::GRPC_PATH,
        &[("x-upstream-grpc-status", "14")],
    )
    .unwrap();
    assert_eq!(failed.code, tonic::Code::Unavailable);
    wait_state(&envoy, "stream", 1);
    wait_state(&envoy, "stream", 2);
    let port = envoy.port();
    let streaming = std::thread::spawn(move || {
        marty_integration::grpc_unary(port, common::GRPC_PATH, &[("x-upstream-stream-ms", "4000")])
    });
    let started = Instant::now();
    wait_state(&envoy, "stream", 0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed while the probe was still streaming"
    );
    let reply = streaming.join().unwrap().unwrap();
    assert_eq!(reply.code, tonic::Code::Ok);
    envoy.wait_for_stat(&stat("stream", "active_requests"), |v| v == 0, WAIT);
    assert_eq!(value(&envoy, "stream", "success_total"), 1, "counted once");
    assert_eq!(value(&envoy, "stream", "circuit_closed_total"), 1);
}

#[test]
fn raising_the_log_level_at_run_time_reaches_the_filter() {
    // The filter asks Envoy for the `wasm` log level on every housekeeping tick (250 ms), so
    // `/logging?wasm=debug` takes effect without a reload (docs/troubleshooting.md).
    let upstream = Upstream::start();
    let envoy = common::envoy(
        &upstream,
        json!({"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 60}}),
        vec![RouteSpec::new("users", "/")],
    );
    http1(envoy.port(), "GET", "/", &answer("u", "503")).unwrap();
    wait_state(&envoy, "users", 1);
    let line = "route users: rejected (marty_circuit_open)";
    http1(envoy.port(), "GET", "/", &answer("u", "200")).unwrap();
    assert!(!envoy.log().contains(line), "info level: no debug line yet");
    let raised = http1(envoy.admin_port(), "POST", "/logging?wasm=debug", &[]).unwrap();
    assert_eq!(raised.status, 200);
    let deadline = Instant::now() + WAIT;
    while !envoy.log().contains(line) {
        assert!(
            Instant::now() < deadline,
            "the filter never logged at debug"
        );
        http1(envoy.port(), "GET", "/", &answer("u", "200")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Adds a cluster `name` with the given endpoints (a copy of the harness's first cluster
/// otherwise).
fn add_cluster(bootstrap: &mut Value, name: &str, endpoints: Value) {
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters");
    let mut cluster = clusters[0].clone();
    cluster["name"] = json!(name);
    cluster["load_assignment"] = json!({"cluster_name": name, "endpoints": endpoints});
    clusters.push(cluster);
}

#[test]
fn slots_come_back_after_the_router_s_own_replies() {
    // Connect failure (UF), no healthy upstream (UH), upstream timeout (UT): Envoy answers
    // itself, and every slot of `active_requests` taken for those requests is given back, so
    // the bulkhead's cap stays whole.
    let upstream = Upstream::start();
    let closed_port = marty_integration::bootstrap_edit::free_port();
    let plugin = json!({"circuit_breaker": {"max_concurrent_requests": 2,
        "failure_threshold": 1000}});
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(plugin.to_string())
        .routes(vec![
            RouteSpec::new("refused", "/refused").cluster("refused"),
            RouteSpec::new("empty", "/empty").cluster("empty"),
            RouteSpec::new("slow", "/slow").timeout(Duration::from_millis(200)),
        ]);
    let mut bootstrap = config.bootstrap();
    add_cluster(
        &mut bootstrap,
        "refused",
        json!([{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": closed_port}}}}]}]),
    );
    add_cluster(&mut bootstrap, "empty", json!([]));
    let envoy = Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"));
    for (path, route, status, headers) in [
        ("/refused", "refused", 503, vec![]),
        ("/empty", "empty", 503, vec![]),
        ("/slow", "slow", 504, vec![("x-upstream-delay-ms", "3000")]),
    ] {
        for _ in 0..3 {
            let r = http1(envoy.port(), "GET", path, &headers).unwrap();
            assert_eq!(r.status, status, "{path}: {r:?}");
            assert_eq!(
                r.header("x-marty-bulkhead"),
                None,
                "{path}: the cap stays whole"
            );
        }
        envoy.wait_for_stat(&stat(route, "active_requests"), |v| v == 0, WAIT);
        assert_eq!(
            value(&envoy, route, "failure_total"),
            3,
            "{route}: upstream failures"
        );
    }
}

/// Polls `done` until it holds (every 50 ms, for at most [`WAIT`]).
#[track_caller]
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `held` caps requests at 4 and faults at 2; the header trigger may delay up to 60 s.
fn capped(service: &str) -> Value {
    json!({
        "service_name": service,
        "failure_injection": {"enabled": true, "base_failure_rate": 0,
                              "header_trigger": {"enabled": true}, "max_active_faults": 2,
                              "delay": {"max": "60s"}},
        "routes": {"held": {"circuit_breaker": {"max_concurrent_requests": 4,
                                                "failure_threshold": 1000}}}
    })
}

/// Starts 2 requests that wait `ms` at the upstream (key `key`) and 2 held `ms` by an injected
/// delay, and waits until the filter counts them: `held` is then at its request cap and its
/// fault cap.
fn fill_the_caps(envoy: &Envoy, upstream: &Upstream, key: &str, ms: u64) -> Vec<RawClient> {
    let (delay_ms, delay) = (ms.to_string(), format!("delay={ms}ms"));
    let at_upstream = [
        ("x-test-key", key),
        ("x-upstream-delay-ms", delay_ms.as_str()),
    ];
    let held = [("x-test-key", key), ("x-failure-inject", delay.as_str())];
    let mut clients: Vec<RawClient> = (0..2)
        .map(|_| RawClient::send(envoy.port(), "GET", "/", &at_upstream))
        .collect();
    wait_until("2 requests at the upstream", || {
        upstream.in_flight(key) == 2
    });
    clients.extend((0..2).map(|_| RawClient::send(envoy.port(), "GET", "/", &held)));
    envoy.wait_for_stat(&stat("held", "active_faults"), |v| v == 2, WAIT);
    envoy.wait_for_stat(&stat("held", "active_requests"), |v| v == 4, WAIT);
    clients
}

/// The whole request cap of `held` is usable, and no more: 4 requests reach the upstream, a
/// 5th is turned away by the bulkhead. Leaves nothing in flight.
fn assert_the_cap_is_whole(envoy: &Envoy, upstream: &Upstream, key: &str) {
    let wait = [("x-test-key", key), ("x-upstream-delay-ms", "60000")];
    let clients: Vec<RawClient> = (0..4)
        .map(|_| RawClient::send(envoy.port(), "GET", "/", &wait))
        .collect();
    wait_until("the whole cap at the upstream", || {
        upstream.in_flight(key) == 4
    });
    let over = http1(envoy.port(), "GET", "/", &[("x-test-key", key)]).unwrap();
    assert_eq!(over.status, 503, "{over:?}");
    assert_eq!(over.header("x-marty-bulkhead"), Some("full"));
    for client in clients {
        client.close();
    }
    envoy.wait_for_stat(&stat("held", "active_requests"), |v| v == 0, WAIT);
}

#[test]
fn a_trapped_vm_s_slots_come_back_and_the_caps_are_whole_again() {
    // A VM traps with requests at the upstream and requests held by a delay: it never gives
    // their slots back, and the gauges outlive it. Its lease does: the fresh VM that
    // FAIL_RELOAD starts claims it once it is stale and gives the slots back. One worker, so
    // the only VM that can do it is the trapped one's successor.
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .concurrency(1)
        .test_trap()
        .plugin_config(capped("trap").to_string())
        .routes(vec![RouteSpec::new("held", "/")]);
    let envoy = Envoy::start(&config).unwrap_or_else(|e| panic!("{e}"));
    let stuck = fill_the_caps(&envoy, &upstream, "before", 60_000);

    // The VM traps at its next tick, right after publishing its lease.
    let armed = http1(
        envoy.port(),
        "GET",
        "/",
        &[("x-test-key", "trap"), ("x-marty-test-trap", "tick")],
    )
    .unwrap();
    assert_eq!(armed.status, 200, "{armed:?}");
    envoy.wait_for_log(
        "proxy_on_tick failed: Uncaught RuntimeError: unreachable",
        WAIT,
    );
    wait_until(
        "a fresh VM admits a request (the trapped one's slots given back)",
        || {
            http1(envoy.port(), "GET", "/", &[("x-test-key", "after")])
                .is_ok_and(|r| r.status == 200)
        },
    );
    envoy.wait_for_stat(&stat("held", "active_requests"), |v| v == 0, WAIT);
    envoy.wait_for_stat(&stat("held", "active_faults"), |v| v == 0, WAIT);
    envoy.wait_for_stat(
        "wasmcustom.marty_resilience.counters_unflushed",
        |v| v == 0,
        WAIT,
    );
    assert_the_cap_is_whole(&envoy, &upstream, "cap");
    // The fault cap too: 2 delays are injected, a 3rd is not.
    let held: Vec<RawClient> = (0..2)
        .map(|_| {
            RawClient::send(
                envoy.port(),
                "GET",
                "/",
                &[("x-test-key", "f"), ("x-failure-inject", "delay=60s")],
            )
        })
        .collect();
    envoy.wait_for_stat(&stat("held", "active_faults"), |v| v == 2, WAIT);
    let third = http1(
        envoy.port(),
        "GET",
        "/",
        &[("x-test-key", "f"), ("x-failure-inject", "delay=60s")],
    )
    .unwrap();
    assert_eq!(third.status, 200, "not delayed: {third:?}");
    assert_eq!(value(&envoy, "held", "faults_overflow_total"), 1);
    for client in held.into_iter().chain(stuck) {
        client.close();
    }
}

#[test]
fn slots_come_back_after_resets_while_the_request_is_at_the_upstream() {
    // The upstream (HTTP/2) resets the stream, and a client goes away while its request waits
    // at the upstream: either way the stream ends without a response, and its slot comes back.
    let upstream = Upstream::start();
    let config = EnvoyConfig::new(upstream.port())
        .upstream_http2(true)
        .plugin_config(capped("resets").to_string())
        .routes(vec![RouteSpec::new("held", "/")]);
    let envoy = Envoy::start(&config).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..5 {
        let r = http1(
            envoy.port(),
            "GET",
            "/",
            &[("x-test-key", "reset"), ("x-upstream-reset", "1")],
        )
        .unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("x-marty-bulkhead"), None, "the cap stays whole");
    }
    envoy.wait_for_stat(&stat("held", "active_requests"), |v| v == 0, WAIT);
    for i in 0..5 {
        let key = format!("gone{i}");
        http1_abort_after_headers(
            envoy.port(),
            "/",
            &[("x-test-key", &key), ("x-upstream-delay-ms", "60000")],
            || {
                wait_until("the request at the upstream", || {
                    upstream.in_flight(&key) == 1
                })
            },
        );
    }
    envoy.wait_for_stat(&stat("held", "active_requests"), |v| v == 0, WAIT);
    assert_the_cap_is_whole(&envoy, &upstream, "cap");
}

#[test]
fn slots_held_across_a_reload_and_a_code_update_come_back() {
    // Requests at the upstream and held by a delay when the listener is updated: first the
    // plugin configuration (the same VM gets a second plugin), then the code (another module,
    // so a new VM). The requests finish under the plugin that admitted them, which gives their
    // slots back; the caps are whole under the new one.
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(capped("v1").to_string())
        .routes(vec![RouteSpec::new("held", "/")]);
    let (bootstrap, lds) = common::lds_bootstrap(&config, dir.path());
    let envoy = Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"));
    let updates = [
        ("v2", config.clone().plugin_config(capped("v2").to_string())),
        (
            "v3",
            config
                .clone()
                .plugin_config(capped("v3").to_string())
                .wasm_path(test_trap_wasm_path()),
        ),
    ];
    for (n, (service, update)) in updates.iter().enumerate() {
        let key = format!("in-flight-{service}");
        let clients = fill_the_caps(&envoy, &upstream, &key, 3000);
        common::write_lds(&lds, &common::listener(update));
        let accepted = i64::try_from(n).unwrap() + 2;
        envoy.wait_for_stat(
            "listener_manager.lds.update_success",
            |v| v == accepted,
            WAIT,
        );
        envoy.wait_for_log(&format!("configured: service \"{service}\""), WAIT);
        for mut client in clients {
            let status = client.status_line(WAIT).unwrap();
            assert!(status.contains(" 200"), "{service}: {status}");
            client.close();
        }
        envoy.wait_for_stat(&stat("held", "active_requests"), |v| v == 0, WAIT);
        envoy.wait_for_stat(&stat("held", "active_faults"), |v| v == 0, WAIT);
        assert_the_cap_is_whole(&envoy, &upstream, &format!("cap-{service}"));
    }
}
