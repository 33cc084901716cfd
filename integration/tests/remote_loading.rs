//! The module fetched over HTTP (`vm_config.code.remote`), as Envoy 1.40 does it: one fetch on
//! the main thread before the workers start, checked against `sha256`, retried per
//! `retry_policy`; and what happens when the module cannot be had: Envoy starts all the same
//! and `failure_policy` decides whether the listener passes traffic without the filter or
//! answers 503. Also runs `envoy/remote.yaml` for real, which `--mode validate` cannot do (it
//! does not fetch).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{answer, wait_state, WAIT};
use marty_integration::bootstrap_edit::{
    free_port, set_admin_port, use_remote_code, wasm_plugin_config, AccessLog,
};
use marty_integration::file_server::{sha256_hex, FileServer};
use marty_integration::{
    http1, workspace_root, Envoy, EnvoyConfig, FailurePolicy, RouteSpec, Upstream,
};
use serde_json::{json, Value};

const MODULE_PATH: &str = "/marty_resilience.wasm";

/// Envoy's warning for every remote `code` (envoyproxy/envoy#25052).
const UNSTABLE_WARNING: &str = "Wasm remote code fetch is unstable and may cause a crash";
/// Envoy's warning once the last retry failed, whatever the reason.
const RETRIES_EXHAUSTED: &str = "Retry limit exceeded for fetching data from remote data source.";
const FAILED_TO_LOAD: &str = "Plugin marty_resilience failed to load";
/// Logged when the plugin has no VM whatever `failure_policy` says: Envoy 1.40 tests the
/// deprecated `fail_open` flag there, not the policy.
const FAIL_CLOSED_MESSAGE: &str = "Plugin configured to fail closed failed to load";

fn module() -> Vec<u8> {
    let path = EnvoyConfig::new(0).resolved_wasm_path();
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A file server with the built module at [`MODULE_PATH`].
fn serve_module() -> FileServer {
    let server = FileServer::start();
    server.put(MODULE_PATH, module());
    server
}

/// `users` opens after one failure; everything else shares `default`.
fn config(upstream: &Upstream) -> EnvoyConfig {
    EnvoyConfig::new(upstream.port())
        .plugin_config(
            json!({"routes": {"users": {"circuit_breaker": {
                "failure_threshold": 1, "recovery_timeout": "60s"}}}})
            .to_string(),
        )
        .routes(vec![
            RouteSpec::new("users", "/users"),
            RouteSpec::unnamed("/"),
        ])
}

/// The harness bootstrap for `config`, fetching the module from `server_port`.
fn remote_bootstrap(
    config: &EnvoyConfig,
    server_port: u16,
    sha256: &str,
    num_retries: u32,
) -> Value {
    let mut bootstrap = config.bootstrap();
    use_remote_code(
        &mut bootstrap,
        server_port,
        MODULE_PATH,
        sha256,
        num_retries,
    );
    bootstrap
}

fn start(config: &EnvoyConfig, bootstrap: &Value) -> Envoy {
    Envoy::start_with_bootstrap(config, bootstrap).unwrap_or_else(|e| panic!("{e}"))
}

/// The filter is there: one upstream failure opens `users`, the next request is rejected.
fn assert_filter_acts(envoy: &Envoy, upstream: &Upstream) {
    let first = http1(envoy.port(), "GET", "/users", &answer("acts", "503")).unwrap();
    assert_eq!(first.status, 503);
    assert_eq!(first.header("x-marty-circuit"), None, "the upstream's 503");
    wait_state(envoy, "users", 1);
    let second = http1(envoy.port(), "GET", "/users", &answer("acts", "503")).unwrap();
    assert_eq!(second.status, 503);
    assert_eq!(second.header("x-marty-circuit"), Some("open"));
    assert_eq!(
        upstream.count("acts"),
        1,
        "the rejected request stayed local"
    );
}

#[test]
fn the_module_is_fetched_once_over_http_and_the_filter_acts() {
    let upstream = Upstream::start();
    let server = serve_module();
    let config = config(&upstream);
    let bootstrap = remote_bootstrap(&config, server.port(), &sha256_hex(&module()), 2);
    let envoy = start(&config, &bootstrap);

    // Fetched by the main thread before the workers started; the workers clone that VM.
    assert_eq!(server.requests(MODULE_PATH), 1);
    assert_eq!(envoy.stat("wasm.remote_load_fetch_successes"), Some(1));
    assert_eq!(envoy.stat("wasm.remote_load_fetch_failures"), Some(0));
    assert_eq!(envoy.stat("wasm.remote_load_cache_misses"), Some(1));
    envoy.wait_for_log("configured: service", WAIT);
    envoy.wait_for_log(UNSTABLE_WARNING, WAIT);

    assert_filter_acts(&envoy, &upstream);
    assert_eq!(
        server.requests(MODULE_PATH),
        1,
        "serving traffic fetches nothing"
    );
}

#[test]
fn envoy_is_not_ready_until_the_module_has_arrived() {
    let upstream = Upstream::start();
    let server = serve_module();
    server.hold();
    let config = config(&upstream);
    let mut bootstrap = remote_bootstrap(&config, server.port(), &sha256_hex(&module()), 2);
    // The harness learns the admin port only once Envoy is ready: fix it to look earlier.
    let admin = free_port();
    set_admin_port(&mut bootstrap, admin);
    let starting = {
        let config = config.clone();
        std::thread::spawn(move || Envoy::start_with_bootstrap(&config, &bootstrap))
    };

    server.wait_for_requests(MODULE_PATH, 1, WAIT);
    // The static listener's init waits for the module: the server is not ready, and the
    // workers have not started.
    let ready = http1(admin, "GET", "/ready", &[]).unwrap();
    assert_eq!((ready.status, ready.text().trim()), (503, "INITIALIZING"));
    let stats = http1(admin, "GET", "/stats?filter=remote_load_fetch", &[])
        .unwrap()
        .text();
    assert!(
        stats.contains("wasm.remote_load_fetch_successes: 0"),
        "{stats}"
    );

    server.release();
    let envoy = starting
        .join()
        .expect("start thread")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(envoy.admin_port(), admin);
    assert_eq!(envoy.stat("wasm.remote_load_fetch_successes"), Some(1));
    assert_filter_acts(&envoy, &upstream);
}

#[test]
fn a_module_server_failing_at_first_is_retried_per_retry_policy() {
    let upstream = Upstream::start();
    let server = serve_module();
    server.fail_next(2, 503);
    let config = config(&upstream);
    let bootstrap = remote_bootstrap(&config, server.port(), &sha256_hex(&module()), 3);
    let envoy = start(&config, &bootstrap);

    assert_eq!(server.requests(MODULE_PATH), 3, "two 503s, then the module");
    assert_eq!(envoy.stat("wasm.remote_load_fetch_successes"), Some(1));
    assert_eq!(envoy.stat("wasm.remote_load_fetch_failures"), Some(0));
    assert!(!envoy.log().contains(RETRIES_EXHAUSTED));
    assert_filter_acts(&envoy, &upstream);
}

fn policy_key(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::FailOpen => "open",
        FailurePolicy::FailClosed => "closed",
        FailurePolicy::FailReload => "reload",
    }
}

/// Envoy started, but without a VM for the plugin: FAIL_OPEN passes requests through without
/// the filter; FAIL_CLOSED and FAIL_RELOAD answer 503 `wasm_fail_stream` to every request.
fn assert_no_vm_and_policy_applies(
    envoy: &Envoy,
    upstream: &Upstream,
    access: &mut AccessLog,
    policy: FailurePolicy,
) {
    let key = policy_key(policy);
    for path in ["/users", "/other"] {
        let response = http1(envoy.port(), "GET", path, &answer(key, "200")).unwrap();
        let line = access.next_line(WAIT);
        match policy {
            FailurePolicy::FailOpen => {
                assert_eq!(response.status, 200, "{policy:?}");
                assert_eq!(line, format!("{path} 200 via_upstream"));
            }
            FailurePolicy::FailClosed | FailurePolicy::FailReload => {
                assert_eq!(response.status, 503, "{policy:?}");
                assert!(response.body.is_empty(), "{:?}", response.text());
                assert_eq!(response.header("x-marty-circuit"), None);
                assert_eq!(line, format!("{path} 503 wasm_fail_stream"));
            }
        }
    }
    let expected = if policy == FailurePolicy::FailOpen {
        2
    } else {
        0
    };
    assert_eq!(upstream.count(key), expected, "{policy:?}");
    let stats = envoy.stats();
    assert!(
        !stats.keys().any(|k| k.starts_with("wasmcustom.")),
        "no VM ever ran the filter: {:?}",
        stats
            .keys()
            .filter(|k| k.starts_with("wasm"))
            .collect::<Vec<_>>()
    );
    // A module that never loaded is not reloaded, even under FAIL_RELOAD.
    for counter in [
        "vm_reload_success",
        "vm_reload_failure",
        "vm_reload_backoff",
    ] {
        let name = format!("wasm.marty_resilience.{counter}");
        assert_eq!(envoy.stat(&name).unwrap_or(0), 0, "{name}");
    }
}

#[test]
fn a_module_that_does_not_match_its_sha256_is_refused_and_the_failure_policy_decides() {
    let upstream = Upstream::start();
    let server = serve_module();
    let wrong = sha256_hex(b"another module");
    for policy in [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::FailReload,
    ] {
        let before = server.requests(MODULE_PATH);
        let config = config(&upstream).failure_policy(policy);
        let mut bootstrap = remote_bootstrap(&config, server.port(), &wrong, 2);
        let mut access = AccessLog::new();
        access.add_to(&mut bootstrap);
        // Envoy starts all the same: the module arrives after the listener was accepted.
        let envoy = start(&config, &bootstrap);

        assert_eq!(
            server.requests(MODULE_PATH) - before,
            3,
            "{policy:?}: the fetch and its two retries"
        );
        envoy.wait_for_log(RETRIES_EXHAUSTED, WAIT);
        envoy.wait_for_log(FAILED_TO_LOAD, WAIT);
        envoy.wait_for_log(FAIL_CLOSED_MESSAGE, WAIT);
        assert!(!envoy.log().contains("configured: service"), "{policy:?}");
        assert_eq!(envoy.stat("wasm.remote_load_fetch_failures"), Some(1));
        assert_eq!(envoy.stat("wasm.remote_load_fetch_successes"), Some(0));
        assert_no_vm_and_policy_applies(&envoy, &upstream, &mut access, policy);
    }
}

#[test]
fn a_module_server_that_is_down_is_retried_then_the_failure_policy_decides() {
    let upstream = Upstream::start();
    // Nothing listens there.
    let down = free_port();
    let config = config(&upstream).failure_policy(FailurePolicy::FailOpen);
    let mut bootstrap = remote_bootstrap(&config, down, &sha256_hex(&module()), 2);
    let mut access = AccessLog::new();
    access.add_to(&mut bootstrap);
    let envoy = start(&config, &bootstrap);

    envoy.wait_for_log(RETRIES_EXHAUSTED, WAIT);
    envoy.wait_for_log(FAILED_TO_LOAD, WAIT);
    assert_eq!(envoy.stat("wasm.remote_load_fetch_failures"), Some(1));
    assert_eq!(
        envoy.stat("cluster.wasm_modules.upstream_cx_connect_fail"),
        Some(3),
        "the fetch and its two retries"
    );
    assert_no_vm_and_policy_applies(&envoy, &upstream, &mut access, FailurePolicy::FailOpen);
}

#[test]
fn nack_on_code_cache_miss_makes_a_static_bootstrap_fail_to_start() {
    let upstream = Upstream::start();
    let server = serve_module();
    let config = config(&upstream);
    let mut bootstrap = remote_bootstrap(&config, server.port(), &sha256_hex(&module()), 2);
    wasm_plugin_config(&mut bootstrap)["vm_config"]["nack_on_code_cache_miss"] = json!(true);

    // At startup the module cache is always empty: the plugin is refused on the spot (only
    // a background fetch is started), which in a bootstrap is fatal.
    let error = Envoy::start_with_bootstrap(&config, &bootstrap)
        .err()
        .expect("Envoy refuses the bootstrap");
    assert!(
        error.exit_status.is_some_and(|s| !s.success()),
        "Envoy exits: {error}"
    );
    for line in [
        UNSTABLE_WARNING,
        FAILED_TO_LOAD,
        "Unable to create Wasm plugin marty_resilience",
    ] {
        assert!(error.log.contains(line), "{line:?} missing: {error}");
    }
}

/// Envoy on a bootstrap file from `envoy/`, run from the repository root; killed on drop.
struct FileEnvoy {
    child: Child,
    log: PathBuf,
}

impl FileEnvoy {
    fn start(bootstrap: &Path, log: &Path, admin: u16) -> FileEnvoy {
        let out = std::fs::File::create(log).expect("create envoy log");
        let child = Command::new(EnvoyConfig::new(0).resolved_envoy_bin())
            .arg("-c")
            .arg(bootstrap)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "info"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn envoy");
        let mut envoy = FileEnvoy {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = envoy.child.try_wait().expect("wait on envoy") {
                panic!("envoy exited ({status}):\n{}", envoy.log());
            }
            if let Ok(r) = http1(admin, "GET", "/ready", &[]) {
                if r.status == 200 && r.text().trim() == "LIVE" {
                    return envoy;
                }
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready in 30 s:\n{}",
                envoy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FileEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn replace_exactly(text: &str, from: &str, to: &str, count: usize) -> String {
    let found = text.matches(from).count();
    assert_eq!(found, count, "{from:?} in envoy/remote.yaml");
    text.replace(from, to)
}

#[test]
fn envoy_remote_yaml_fetches_the_module_and_configures_it() {
    let upstream = Upstream::start();
    let server = serve_module();
    let yaml = std::fs::read_to_string(workspace_root().join("envoy/remote.yaml"))
        .expect("read envoy/remote.yaml");
    let (front, admin) = (free_port(), free_port());
    let mut text = replace_exactly(
        &yaml,
        "sha256: SHA256_OF_MARTY_RESILIENCE_WASM",
        &format!("sha256: {}", sha256_hex(&module())),
        1,
    );
    for (from, to) in [
        ("port_value: 10000", front),
        ("port_value: 9901", admin),
        ("port_value: 8080", upstream.port()),
        ("port_value: 8000", server.port()),
    ] {
        text = replace_exactly(&text, from, &format!("port_value: {to}"), 1);
    }
    text = replace_exactly(
        &text,
        "uri: http://127.0.0.1:8000/",
        &format!("uri: http://127.0.0.1:{}/", server.port()),
        1,
    );
    let dir = tempfile::Builder::new()
        .prefix("marty-remote-yaml-")
        .tempdir()
        .expect("temp dir");
    let bootstrap = dir.path().join("remote.yaml");
    std::fs::write(&bootstrap, text).expect("write bootstrap");
    let envoy = FileEnvoy::start(&bootstrap, &dir.path().join("envoy.log"), admin);

    assert_eq!(server.requests(MODULE_PATH), 1);
    let log = envoy.log();
    assert!(log.contains(UNSTABLE_WARNING), "{log}");
    assert!(
        log.contains("configured: service \"user_service\", environment production, 1 route(s)"),
        "{log}"
    );
    // The file's policy for `users`: three failures open it.
    for _ in 0..3 {
        let r = http1(front, "GET", "/users", &answer("yaml", "500")).unwrap();
        assert_eq!(r.status, 500);
    }
    let rejected = http1(front, "GET", "/users", &answer("yaml", "500")).unwrap();
    assert_eq!(rejected.status, 503, "{}", envoy.log());
    assert_eq!(rejected.header("x-marty-circuit"), Some("open"));
    assert_eq!(upstream.count("yaml"), 3);
    let prometheus = http1(admin, "GET", "/stats/prometheus", &[])
        .unwrap()
        .text();
    assert!(
        prometheus.contains("marty_resilience_route_circuit_state{marty_route=\"users\"} 1"),
        "{prometheus}"
    );
}
