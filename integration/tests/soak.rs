//! Soak: a two-worker Envoy with the module in front of a flapping upstream, under steady load
//! with fault injection and retries on, for `MARTY_SOAK_DURATION` (`60s`, `10m`; run it with
//! `scripts/soak DURATION`). Ignored by a plain `cargo test`: it runs for as long as it is told.
//!
//! The upstream flaps in cycles of `MARTY_SOAK_CYCLE` (default 20 s): healthy for 40% of the
//! cycle, failing for 20% (most requests answered 503, the others failing once so a retry
//! succeeds), slow for 40% (every answer 100 ms late). Each request commands its own answer
//! through the harness upstream's headers and carries a unique `x-test-key`, so the upstream's
//! records say, per downstream request, how many attempts reached it and whether the last one
//! failed.
//!
//! One route, the filter in the downstream placement only (one count per downstream request),
//! no timeouts that Envoy could answer itself. At the end, with `C` the client's own counts
//! and `U` the upstream's:
//!
//! 1. no trap: Envoy's log has no Wasm VM failure and no `wasm.*` failure stat moved;
//! 2. `active_requests` and `active_faults` read 0;
//! 3. `requests_total` = requests C sent (each got a response);
//!    `rejected_total` = C's responses carrying `x-marty-circuit` or `x-marty-bulkhead`;
//!    `faults_aborted_total` = C's responses carrying `x-marty-fault: abort`;
//! 4. requests that reached U (distinct keys) = `requests_total - rejected_total -
//!    faults_aborted_total` = `success_total + failure_total`;
//! 5. `failure_total` = U's requests whose last attempt was commanded to fail, and
//!    `success_total` the others (and C saw 200 exactly for those);
//! 6. `retry_attempts_total` = attempts U received - requests that reached U;
//! 7. Envoy's RSS at the end is less than 1% above its RSS after the first cycle (warm-up).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{stat, WAIT};
use marty_integration::bootstrap_edit::virtual_host;
use marty_integration::{http1, Envoy, EnvoyConfig, RouteSpec, Upstream};
use serde_json::json;

const ROUTE: &str = "soak";
/// Client threads, each sending one request at a time.
const THREADS: usize = 6;
/// Requests per second per thread at most (a steady pace, not a measurement).
const RATE_PER_THREAD: u32 = 20;
/// How late the slow phase answers.
const SLOW_MS: &str = "100";
/// Allowed RSS growth after warm-up, in percent.
const MAX_RSS_GROWTH_PERCENT: f64 = 1.0;

/// `90`, `90s`, `10m`, `1h`.
fn parse_duration(text: &str) -> Duration {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3600),
        _ => (text, 1),
    };
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a duration such as 60s or 10m, not {text:?}"));
    Duration::from_secs(n * scale)
}

fn setting(name: &str, default: &str) -> Duration {
    parse_duration(&std::env::var(name).unwrap_or_else(|_| default.to_string()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Healthy,
    Failing,
    Slow,
}

fn phase_at(elapsed: Duration, cycle: Duration) -> Phase {
    let position = (elapsed.as_millis() % cycle.as_millis()) as f64 / cycle.as_millis() as f64;
    if position < 0.4 {
        Phase::Healthy
    } else if position < 0.6 {
        Phase::Failing
    } else {
        Phase::Slow
    }
}

/// What the `n`-th request of a thread commands the upstream to do in `phase`.
fn commands(phase: Phase, n: u64) -> Vec<(&'static str, &'static str)> {
    let once = n.is_multiple_of(10);
    match phase {
        Phase::Healthy if once => vec![("x-upstream-fail-first", "1")],
        Phase::Healthy => vec![],
        Phase::Failing if n % 10 < 7 => vec![("x-upstream-status", "503")],
        Phase::Failing => vec![("x-upstream-fail-first", "1")],
        Phase::Slow if once => vec![
            ("x-upstream-delay-ms", SLOW_MS),
            ("x-upstream-fail-first", "1"),
        ],
        Phase::Slow => vec![("x-upstream-delay-ms", SLOW_MS)],
    }
}

/// What the client saw of one request.
struct Seen {
    key: String,
    status: u16,
    rejected: bool,
    aborted: bool,
}

fn plugin_config() -> serde_json::Value {
    json!({
        "circuit_breaker": {
            "failure_threshold": 5,
            "recovery_timeout": 1,
            "max_recovery_timeout": 4,
            "half_open_max_requests": 2,
            "half_open_success_threshold": 2,
            "max_concurrent_requests": 5
        },
        "retry": {
            "enabled": true, "max_attempts": 3, "retry_on": ["5xx"],
            "per_try_timeout": 0, "base_delay": 0.005, "max_delay": 0.05
        },
        "failure_injection": {
            "enabled": true,
            "base_failure_rate": 0.02,
            "abort": {"http_status": 503},
            "delay": {"duration": 0.05, "rate": 0.03},
            "max_active_faults": 2
        },
        "routes": {ROUTE: {}}
    })
}

fn start_envoy(upstream: &Upstream) -> Envoy {
    let config = EnvoyConfig::new(upstream.port())
        .concurrency(2)
        .plugin_config(plugin_config().to_string())
        .routes(vec![RouteSpec::new(ROUTE, "/")]);
    let mut bootstrap = config.bootstrap();
    // The filter counts retries from the attempt count Envoy reports in responses.
    virtual_host(&mut bootstrap)["include_attempt_count_in_response"] = json!(true);
    Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"))
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The `wasm.*` stats that say a VM failed or was replaced.
fn wasm_failure_stats(envoy: &Envoy) -> Vec<(String, i64)> {
    envoy
        .stats()
        .into_iter()
        .filter(|(k, _)| k.starts_with("wasm."))
        .filter(|(k, _)| {
            k.contains("fail")
                || k.contains("reload")
                || k.ends_with(".created")
                || k.contains("crash")
        })
        .collect()
}

fn filter_stat(envoy: &Envoy, leaf: &str) -> i64 {
    envoy
        .stat(&stat(ROUTE, leaf))
        .unwrap_or_else(|| panic!("stat {} missing", stat(ROUTE, leaf)))
}

const COUNTERS: &[&str] = &[
    "requests_total",
    "success_total",
    "failure_total",
    "rejected_total",
    "concurrency_rejected_total",
    "faults_aborted_total",
    "faults_delayed_total",
    "faults_overflow_total",
    "retry_attempts_total",
    "retries_suppressed_breaker_total",
    "retries_suppressed_budget_total",
    "circuit_opened_total",
    "circuit_half_opened_total",
    "circuit_closed_total",
];

/// The filter's counters once they stop moving (workers flush stats asynchronously).
fn settled_counters(envoy: &Envoy, sent: i64) -> HashMap<&'static str, i64> {
    envoy.wait_for_stat(&stat(ROUTE, "requests_total"), |v| v >= sent, WAIT);
    let read = || -> HashMap<&'static str, i64> {
        COUNTERS
            .iter()
            .map(|leaf| (*leaf, filter_stat(envoy, leaf)))
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = read();
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the filter's counters kept moving"
        );
        last = now;
    }
}

#[test]
#[ignore = "long-running: scripts/soak DURATION"]
fn soak() {
    let duration = setting("MARTY_SOAK_DURATION", "60s");
    let cycle = setting("MARTY_SOAK_CYCLE", "20s");
    assert!(
        duration >= cycle * 2,
        "a soak needs at least two cycles ({cycle:?} each): one to warm up, one to compare"
    );
    let upstream = Upstream::start();
    let envoy = start_envoy(&upstream);
    let pid = envoy.pid();
    let wasm_before = wasm_failure_stats(&envoy);

    let seen: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let rss: Mutex<Vec<(Duration, u64)>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let interval = Duration::from_secs(1) / RATE_PER_THREAD;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                rss.lock().unwrap().push((start.elapsed(), rss_kib(pid)));
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let loaders: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (seen, errors) = (&seen, &errors);
                let port = envoy.port();
                s.spawn(move || {
                    for n in 0u64.. {
                        let next = start + interval * n as u32;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        let elapsed = start.elapsed();
                        if elapsed >= duration {
                            break;
                        }
                        let key = format!("t{thread}-{n}");
                        let mut headers = commands(phase_at(elapsed, cycle), n);
                        headers.push(("x-test-key", &key));
                        match http1(port, "GET", "/", &headers) {
                            Ok(r) => seen.lock().unwrap().push(Seen {
                                status: r.status,
                                rejected: r.header("x-marty-circuit").is_some()
                                    || r.header("x-marty-bulkhead").is_some(),
                                aborted: r.header("x-marty-fault") == Some("abort"),
                                key,
                            }),
                            Err(e) => errors.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        for loader in loaders {
            loader.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    let load_time = start.elapsed();
    let seen = seen.into_inner().unwrap();
    let errors = errors.into_inner().unwrap();
    let rss = rss.into_inner().unwrap();

    // 2. Every gauge back to 0 once the last response is in.
    for gauge in ["active_requests", "active_faults"] {
        envoy.wait_for_stat(&stat(ROUTE, gauge), |v| v == 0, WAIT);
    }
    let sent = (seen.len() + errors.len()) as i64;
    let c = settled_counters(&envoy, sent);

    // The upstream's own view, per downstream request (key).
    #[derive(Default)]
    struct Reached {
        attempts: u64,
        fail_first: Option<u64>,
        status_503: bool,
    }
    let received = upstream.all_requests();
    let mut reached: HashMap<String, Reached> = HashMap::new();
    for r in &received {
        let entry = reached.entry(r.key.clone()).or_default();
        entry.attempts += 1;
        entry.fail_first = r
            .header("x-upstream-fail-first")
            .and_then(|v| v.parse().ok());
        entry.status_503 = r.header("x-upstream-status") == Some("503");
    }
    let failed = |r: &Reached| match r.fail_first {
        Some(k) => r.attempts <= k,
        None => r.status_503,
    };
    let upstream_failed = reached.values().filter(|r| failed(r)).count() as i64;
    let upstream_requests = reached.len() as i64;
    let upstream_attempts = received.len() as i64;
    let client_rejected = seen.iter().filter(|s| s.rejected).count() as i64;
    let client_aborted = seen.iter().filter(|s| s.aborted).count() as i64;

    // 1. No trap.
    let log = envoy.log();
    let trap_lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("Wasm VM failed")
                || l.contains("Uncaught")
                || l.contains("RuntimeError")
                || l.contains("wasm_fail_stream")
                || l.contains("panicked")
        })
        .take(5)
        .collect();
    let wasm_after = wasm_failure_stats(&envoy);

    // 7. RSS: after the first cycle against the end of the load.
    let baseline = rss
        .iter()
        .find(|(t, _)| *t >= cycle)
        .map(|(_, v)| *v)
        .expect("an RSS sample after warm-up");
    let last = rss.last().map(|(_, v)| *v).expect("an RSS sample");
    let peak_after_warmup = rss
        .iter()
        .filter(|(t, _)| *t >= cycle)
        .map(|(_, v)| *v)
        .max()
        .unwrap_or(last);
    let growth = (last as f64 - baseline as f64) / baseline as f64 * 100.0;

    eprintln!(
        "SOAK SUMMARY\n\
         duration {load_time:.1?} (cycle {cycle:?}), {THREADS} client threads\n\
         client: sent {sent}, responses {}, errors {}, 200s {}, rejected (x-marty-circuit, x-marty-bulkhead) {client_rejected}, fault aborts {client_aborted}\n\
         upstream: requests reached {upstream_requests}, attempts {upstream_attempts}, last attempt failed {upstream_failed}\n\
         filter: {}\n\
         Envoy RSS KiB: start {}, after warm-up {baseline}, peak after warm-up {peak_after_warmup}, end {last} ({growth:+.2}%)\n\
         wasm stats before {wasm_before:?}\n\
         wasm stats after {wasm_after:?}",
        seen.len(),
        errors.len(),
        seen.iter().filter(|s| s.status == 200).count(),
        COUNTERS
            .iter()
            .map(|k| format!("{k}={}", c[k]))
            .collect::<Vec<_>>()
            .join(" "),
        rss.first().map_or(0, |(_, v)| *v),
    );

    assert!(
        errors.is_empty(),
        "requests without a response: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(
        trap_lines.is_empty(),
        "Wasm VM failure in Envoy's log: {trap_lines:?}"
    );
    assert_eq!(
        wasm_before, wasm_after,
        "a wasm.* failure/reload stat moved"
    );

    assert_eq!(c["requests_total"], sent, "requests_total vs requests sent");
    assert_eq!(
        c["rejected_total"], client_rejected,
        "rejected_total vs x-marty-circuit and x-marty-bulkhead responses"
    );
    assert_eq!(
        c["faults_aborted_total"], client_aborted,
        "faults_aborted_total vs x-marty-fault: abort responses"
    );
    let forwarded = c["requests_total"] - c["rejected_total"] - c["faults_aborted_total"];
    assert_eq!(
        upstream_requests, forwarded,
        "requests that reached the upstream vs forwarded"
    );
    assert_eq!(
        c["success_total"] + c["failure_total"],
        forwarded,
        "outcomes vs forwarded requests"
    );
    assert_eq!(
        c["failure_total"], upstream_failed,
        "failure_total vs the upstream's failed requests"
    );
    assert_eq!(
        c["success_total"],
        upstream_requests - upstream_failed,
        "success_total vs the upstream's other requests"
    );
    assert_eq!(
        c["retry_attempts_total"],
        upstream_attempts - upstream_requests,
        "retry_attempts_total vs the upstream's extra attempts"
    );
    let by_key: HashMap<&str, &Reached> = reached.iter().map(|(k, r)| (k.as_str(), r)).collect();
    let disagreements: Vec<String> = seen
        .iter()
        .filter_map(|s| {
            let r = by_key.get(s.key.as_str())?;
            ((s.status == 200) == failed(r)).then(|| format!("{} got {}", s.key, s.status))
        })
        .take(5)
        .collect();
    assert!(
        disagreements.is_empty(),
        "client statuses vs upstream outcomes: {disagreements:?}"
    );

    // The run exercised what it claims to: flapping, rejections, faults, retries.
    for leaf in [
        "circuit_opened_total",
        "circuit_closed_total",
        "rejected_total",
        "faults_aborted_total",
        "faults_delayed_total",
        "retry_attempts_total",
    ] {
        assert!(c[leaf] > 0, "{leaf} is 0: the soak did not exercise it");
    }

    assert!(
        growth < MAX_RSS_GROWTH_PERCENT,
        "Envoy's RSS grew {growth:.2}% after warm-up ({baseline} KiB -> {last} KiB)"
    );
}
