//! The breaker shared by Envoy's workers: concurrent requests on fresh connections land on both
//! workers (`--concurrency 2`), and the shared-data CAS must make them agree.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{answer, assert_both_workers_served, envoy, stat, value, wait_state, WAIT};
use marty_integration::{
    concurrently, http1, http1_abort_after_headers, RawClient, RouteSpec, Upstream,
};
use serde_json::json;

fn statuses(results: &[u16]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for s in results {
        *counts.entry(*s).or_insert(0) += 1;
    }
    counts
}

#[test]
fn opens_exactly_once_when_many_concurrent_requests_fail_on_both_workers() {
    let upstream = Upstream::start();
    let config = json!({"circuit_breaker": {"failure_threshold": 5, "recovery_timeout": 60.0}});
    let envoy = envoy(&upstream, config, vec![RouteSpec::unnamed("/")]);

    for round in 0..3 {
        let results = concurrently(24, |_| {
            http1(envoy.port(), "GET", "/", &answer("f", "503"))
                .map(|r| r.status)
                .unwrap_or(0)
        });
        assert!(
            results.iter().all(|s| *s == 503),
            "round {round}: {results:?}"
        );
    }
    wait_state(&envoy, "upstream", 1);
    assert_both_workers_served(&envoy);
    assert_eq!(
        value(&envoy, "upstream", "circuit_opened_total"),
        1,
        "one trip, whatever the number of workers and concurrent failures"
    );
    let reached = upstream.count("f");
    assert!(
        reached >= 5,
        "at least failure_threshold failures got through: {reached}"
    );
    assert_eq!(
        value(&envoy, "upstream", "failure_total") + value(&envoy, "upstream", "rejected_total"),
        72
    );

    // Once open, nothing more reaches the upstream, from either worker.
    let results = concurrently(16, |_| {
        http1(envoy.port(), "GET", "/", &answer("f", "200"))
            .map(|r| (r.status, r.header("x-marty-circuit").map(str::to_string)))
            .unwrap()
    });
    assert!(results
        .iter()
        .all(|(s, c)| *s == 503 && c.as_deref() == Some("open")));
    assert_eq!(upstream.count("f"), reached);
}

#[test]
fn half_open_admits_exactly_max_probes_across_workers() {
    let upstream = Upstream::start();
    let config = json!({"circuit_breaker": {
        "failure_threshold": 1, "recovery_timeout": 1.0,
        "half_open_max_requests": 2, "half_open_success_threshold": 5}});
    let envoy = envoy(&upstream, config, vec![RouteSpec::unnamed("/")]);

    http1(envoy.port(), "GET", "/", &answer("trip", "500")).unwrap();
    wait_state(&envoy, "upstream", 2);

    // 20 concurrent requests; the probes that get through stay at the upstream for 1.5 s, so
    // their slots are held while all the others arrive.
    let headers = [("x-test-key", "p"), ("x-upstream-delay-ms", "1500")];
    let results = concurrently(20, |_| http1(envoy.port(), "GET", "/", &headers).unwrap());
    let counts = statuses(&results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_both_workers_served(&envoy);
    assert_eq!(upstream.count("p"), 2, "statuses {counts:?}");
    assert_eq!(counts.get(&200), Some(&2), "{counts:?}");
    assert_eq!(counts.get(&503), Some(&18), "{counts:?}");
    assert!(results
        .iter()
        .filter(|r| r.status == 503)
        .all(|r| r.header("x-marty-circuit") == Some("half-open")));
    // Two successes of five needed: still half-open, slots free again.
    assert_eq!(value(&envoy, "upstream", "circuit_state"), 2);
}

#[test]
fn max_concurrent_requests_caps_requests_in_flight_across_workers() {
    let upstream = Upstream::start();
    let config = json!({"circuit_breaker": {"max_concurrent_requests": 3}});
    let envoy = envoy(&upstream, config, vec![RouteSpec::unnamed("/")]);

    // Each admitted request holds its slot for 3 s, far longer than the 12 take to arrive.
    let headers = [("x-test-key", "c"), ("x-upstream-delay-ms", "3000")];
    let results = concurrently(12, |_| http1(envoy.port(), "GET", "/", &headers).unwrap());
    let counts = statuses(&results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(
        upstream.max_in_flight("c") <= 3,
        "{}",
        upstream.max_in_flight("c")
    );
    assert!(counts.get(&200).copied().unwrap_or(0) >= 1, "{counts:?}");
    let rejected = counts.get(&503).copied().unwrap_or(0) as i64;
    assert!(rejected >= 1, "{counts:?}");
    assert_eq!(
        counts.values().sum::<usize>(),
        12,
        "only 200 and 503: {counts:?}"
    );
    assert_eq!(upstream.count("c") as i64, 12 - rejected);
    assert_eq!(
        value(&envoy, "upstream", "concurrency_rejected_total"),
        rejected
    );
    assert!(results
        .iter()
        .filter(|r| r.status == 503)
        .all(|r| r.header("x-marty-bulkhead") == Some("full")
            && r.header("x-marty-circuit").is_none()
            && r.header("x-envoy-ratelimited") == Some("true")));
    envoy.wait_for_stat(&stat("upstream", "active_requests"), |v| v == 0, WAIT);
    // Over-capacity rejections are not upstream failures.
    assert_eq!(value(&envoy, "upstream", "circuit_opened_total"), 0);
}

#[test]
fn clients_that_disconnect_release_their_slots() {
    let upstream = Upstream::start();
    let config = json!({"circuit_breaker": {"max_concurrent_requests": 2}});
    let envoy = envoy(&upstream, config, vec![RouteSpec::unnamed("/")]);

    // Two requests park at the upstream, then their clients hang up mid-request.
    let headers = [("x-test-key", "gone"), ("x-upstream-delay-ms", "5000")];
    let a = RawClient::send(envoy.port(), "GET", "/", &headers);
    let b = RawClient::send(envoy.port(), "GET", "/", &headers);
    upstream.wait_for_count("gone", 2, WAIT);
    assert_eq!(value(&envoy, "upstream", "active_requests"), 2);
    a.close();
    b.close();
    envoy.wait_for_stat(&stat("upstream", "active_requests"), |v| v == 0, WAIT);

    // The slots are free again: two more requests are admitted.
    http1_abort_after_headers(envoy.port(), "/", &headers, || {
        upstream.wait_for_count("gone", 3, WAIT)
    });
    let ok = http1(envoy.port(), "GET", "/", &[("x-test-key", "ok")]).unwrap();
    assert_eq!(ok.status, 200);
    envoy.wait_for_stat(&stat("upstream", "active_requests"), |v| v == 0, WAIT);
    // A client going away says nothing about the upstream.
    assert_eq!(value(&envoy, "upstream", "failure_total"), 0);
}

#[test]
fn a_probe_that_never_reports_back_frees_its_slot_after_the_probe_timeout() {
    let upstream = Upstream::start();
    let config = json!({"circuit_breaker": {
        "failure_threshold": 1, "recovery_timeout": 1.0,
        "half_open_max_requests": 1, "half_open_probe_timeout": 3.0}});
    let envoy = envoy(
        &upstream,
        config,
        vec![RouteSpec::unnamed("/").timeout(Duration::from_secs(30))],
    );
    http1(envoy.port(), "GET", "/", &answer("trip", "500")).unwrap();
    wait_state(&envoy, "upstream", 2);

    // The probe hangs at the upstream far longer than its lease.
    let stuck = RawClient::send(
        envoy.port(),
        "GET",
        "/",
        &[("x-test-key", "stuck"), ("x-upstream-delay-ms", "20000")],
    );
    upstream.wait_for_count("stuck", 1, WAIT);

    // Until the lease expires others are turned away; afterwards one more probe goes through,
    // while the first is still in flight.
    let deadline = Instant::now() + WAIT;
    let mut rejected = 0;
    loop {
        let r = http1(envoy.port(), "GET", "/", &[("x-test-key", "next")]).unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.header("x-marty-circuit"), Some("half-open"));
        rejected += 1;
        assert!(
            Instant::now() < deadline,
            "the stuck probe's slot never freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rejected >= 1, "the slot was held while the lease was live");
    assert_eq!(
        upstream.in_flight("stuck"),
        1,
        "the first probe is still at the upstream"
    );
    stuck.close();
}
