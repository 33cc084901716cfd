//! What Envoy 1.40 does when the module cannot load or its VM fails, by `failure_policy`,
//! pinned so the docs (docs/install.md, docs/troubleshooting.md) can rely on it:
//!
//! - (a) a module that is not Wasm and (b) a plugin configuration the filter rejects stop
//!   Envoy at startup whatever the policy when the module is a local file; fetched over HTTP,
//!   the failure comes after the listener was accepted, so Envoy starts and the policy
//!   decides (FAIL_OPEN: no filter; FAIL_CLOSED: 503 `wasm_fail_stream`).
//! - (c) at run time: a host call Envoy refuses is absorbed by the filter itself (the policy
//!   is not involved), including a refused log call, which used to trap the VM through the
//!   SDK's logger. With no way left to make the filter trap from outside, what Envoy does with
//!   a VM that traps is documented from that earlier observation (docs/install.md): the
//!   request that met the trap gets 503 `wasm_fail_stream`; then FAIL_OPEN bypasses the filter
//!   on that worker, FAIL_CLOSED answers 503, FAIL_RELOAD starts a fresh VM that finds the
//!   breakers where they were (they live in shared data).
//! - (d) a configuration update the filter rejects is refused and the old one keeps serving.
//!
//! The former trap setup is kept as a regression test: `capability_restriction_config`
//! denies `proxy_log`, a route carries invalid metadata, which the filter reports with
//! `error!`, and the VMs start with the wasm log level at `error` (the harness runs Envoy with
//! `wasm:debug`, so the module is fetched over HTTP and held until the test has lowered the
//! level through the admin API).

mod common;

use common::{answer, lds_bootstrap, listener, stat, wait_state, write_lds, GRPC_PATH, WAIT};
use marty_integration::bootstrap_edit::{
    free_port, set_admin_port, use_remote_code, wasm_plugin_config, AccessLog,
};
use marty_integration::envoy::UPSTREAM_H2_CLUSTER;
use marty_integration::file_server::{sha256_hex, FileServer};
use marty_integration::{
    grpc_unary, http1, Envoy, EnvoyConfig, FailurePolicy, RouteSpec, Upstream,
};
use serde_json::{json, Value};

const POLICIES: [FailurePolicy; 3] = [
    FailurePolicy::FailOpen,
    FailurePolicy::FailClosed,
    FailurePolicy::FailReload,
];
const MODULE_PATH: &str = "/marty_resilience.wasm";
const FAILED_TO_LOAD: &str = "Plugin marty_resilience failed to load";
/// Envoy 1.40 logs this for every policy (it tests the deprecated `fail_open` flag).
const FAIL_CLOSED_MESSAGE: &str = "Plugin configured to fail closed failed to load";
const UNABLE_TO_CREATE: &str = "Unable to create Wasm plugin marty_resilience";
const NOT_WASM: &[u8] = b"this is not a wasm module\n";
/// `failure_threshold` 0 is refused by the filter's `on_configure`.
const REJECTED_CONFIG: &str = r#"{"circuit_breaker": {"failure_threshold": 0}}"#;
const REJECTED_MESSAGE: &str = "invalid marty-resilience configuration: circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got 0";
const TRAP: &str = "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable";

fn module() -> Vec<u8> {
    let path = EnvoyConfig::new(0).resolved_wasm_path();
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn key(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::FailOpen => "open",
        FailurePolicy::FailClosed => "closed",
        FailurePolicy::FailReload => "reload",
    }
}

/// `users` opens after one failure and stays open.
fn users_config() -> String {
    json!({"routes": {"users": {"circuit_breaker": {
        "failure_threshold": 1, "recovery_timeout": "60s"}}}})
    .to_string()
}

#[track_caller]
fn assert_refused_at_startup(config: &EnvoyConfig, bootstrap: &Value, lines: &[&str]) {
    let error = Envoy::start_with_bootstrap(config, bootstrap)
        .err()
        .unwrap_or_else(|| panic!("{:?}: Envoy started", config.failure_policy));
    assert!(
        error.exit_status.is_some_and(|s| s.code() == Some(1)),
        "{:?}: Envoy exits with status 1: {error}",
        config.failure_policy
    );
    for line in lines {
        assert!(
            error.log.contains(line),
            "{:?}: {line:?} missing: {error}",
            config.failure_policy
        );
    }
}

/// Envoy runs without a VM for the plugin: FAIL_OPEN forwards without the filter, the other
/// policies answer 503 `wasm_fail_stream` (empty body) without reaching the upstream.
fn assert_policy_without_vm(
    envoy: &Envoy,
    upstream: &Upstream,
    access: &mut AccessLog,
    policy: FailurePolicy,
) {
    let response = http1(envoy.port(), "GET", "/users", &answer(key(policy), "500")).unwrap();
    let line = access.next_line(WAIT);
    if policy == FailurePolicy::FailOpen {
        assert_eq!(
            (response.status, line.as_str()),
            (500, "/users 500 via_upstream")
        );
        assert_eq!(upstream.count(key(policy)), 1);
    } else {
        assert_eq!(
            (response.status, line.as_str()),
            (503, "/users 503 wasm_fail_stream"),
            "{policy:?}"
        );
        assert!(response.body.is_empty());
        assert_eq!(upstream.count(key(policy)), 0);
    }
    assert!(
        !envoy.stats().keys().any(|k| k.starts_with("wasmcustom.")),
        "{policy:?}: the filter never ran"
    );
}

// (a) A module that is not Wasm.

#[test]
fn a_local_module_that_is_not_wasm_stops_envoy_whatever_the_policy() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, NOT_WASM).expect("write garbage module");
    for policy in POLICIES {
        let config = EnvoyConfig::new(upstream.port())
            .wasm_path(&garbage)
            .failure_policy(policy);
        assert_refused_at_startup(
            &config,
            &config.bootstrap(),
            &[
                "Wasm VM failed Failed to parse corrupted Wasm module",
                "Wasm VM failed Failed to load Wasm code",
                FAILED_TO_LOAD,
                FAIL_CLOSED_MESSAGE,
                UNABLE_TO_CREATE,
            ],
        );
    }
}

#[test]
fn a_remote_module_that_is_not_wasm_leaves_the_listener_to_the_failure_policy() {
    let upstream = Upstream::start();
    let server = FileServer::start();
    server.put(MODULE_PATH, NOT_WASM.to_vec());
    for policy in [FailurePolicy::FailOpen, FailurePolicy::FailClosed] {
        let config = EnvoyConfig::new(upstream.port())
            .plugin_config(users_config())
            .routes(vec![RouteSpec::new("users", "/users")])
            .failure_policy(policy);
        let mut bootstrap = config.bootstrap();
        // The sha256 matches: the download succeeds, loading the bytes fails.
        use_remote_code(
            &mut bootstrap,
            server.port(),
            MODULE_PATH,
            &sha256_hex(NOT_WASM),
            0,
        );
        let mut access = AccessLog::new();
        access.add_to(&mut bootstrap);
        let envoy = Envoy::start_with_bootstrap(&config, &bootstrap)
            .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        envoy.wait_for_log("Wasm VM failed Failed to parse corrupted Wasm module", WAIT);
        envoy.wait_for_log(FAILED_TO_LOAD, WAIT);
        assert_eq!(envoy.stat("wasm.remote_load_fetch_successes"), Some(1));
        assert_policy_without_vm(&envoy, &upstream, &mut access, policy);
    }
}

// (b) A plugin configuration the filter rejects (`on_configure` returns false).

#[test]
fn a_rejected_plugin_configuration_stops_envoy_whatever_the_policy() {
    let upstream = Upstream::start();
    for policy in POLICIES {
        let config = EnvoyConfig::new(upstream.port())
            .plugin_config(REJECTED_CONFIG)
            .failure_policy(policy);
        assert_refused_at_startup(
            &config,
            &config.bootstrap(),
            &[
                REJECTED_MESSAGE,
                "Wasm VM failed Failed to configure base Wasm plugin",
                FAILED_TO_LOAD,
                FAIL_CLOSED_MESSAGE,
                UNABLE_TO_CREATE,
            ],
        );
    }
}

#[test]
fn a_rejected_plugin_configuration_of_a_remote_module_leaves_the_listener_to_the_policy() {
    let upstream = Upstream::start();
    let server = FileServer::start();
    let code = module();
    server.put(MODULE_PATH, code.clone());
    for policy in [FailurePolicy::FailOpen, FailurePolicy::FailClosed] {
        let config = EnvoyConfig::new(upstream.port())
            .plugin_config(REJECTED_CONFIG)
            .routes(vec![
                RouteSpec::new("users", "/users"),
                RouteSpec::new("grpc", "/marty.test.").cluster(UPSTREAM_H2_CLUSTER),
            ])
            .failure_policy(policy);
        let mut bootstrap = config.bootstrap();
        use_remote_code(
            &mut bootstrap,
            server.port(),
            MODULE_PATH,
            &sha256_hex(&code),
            0,
        );
        let mut access = AccessLog::new();
        access.add_to(&mut bootstrap);
        // Unlike with a local file, Envoy starts: configuration runs once the module arrived.
        let envoy = Envoy::start_with_bootstrap(&config, &bootstrap)
            .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        envoy.wait_for_log(REJECTED_MESSAGE, WAIT);
        envoy.wait_for_log("Wasm VM failed Failed to configure base Wasm plugin", WAIT);
        envoy.wait_for_log(FAILED_TO_LOAD, WAIT);
        assert_policy_without_vm(&envoy, &upstream, &mut access, policy);

        // gRPC callers get the gRPC form of the policy's reply.
        let reply = grpc_unary(envoy.port(), GRPC_PATH, &[("x-test-key", "g")]).unwrap();
        let line = access.next_line(WAIT);
        if policy == FailurePolicy::FailOpen {
            assert_eq!(reply.code, tonic::Code::Ok);
            assert_eq!(line, format!("{GRPC_PATH} 200 via_upstream"));
        } else {
            assert_eq!(reply.code, tonic::Code::Unavailable, "{reply:?}");
            assert_eq!(line, format!("{GRPC_PATH} 200 wasm_fail_stream"));
        }
    }
}

// (c) Failures at run time.

/// Every import and export name of a Wasm module: the capabilities it could use.
fn module_interface(code: &[u8]) -> Vec<String> {
    fn leb(code: &[u8], at: &mut usize) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = code[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                return value;
            }
        }
    }
    fn name(code: &[u8], at: &mut usize) -> String {
        let len = leb(code, at) as usize;
        let name = String::from_utf8_lossy(&code[*at..*at + len]).into_owned();
        *at += len;
        name
    }
    fn limits(code: &[u8], at: &mut usize) {
        let flags = code[*at];
        *at += 1;
        leb(code, at);
        if flags & 1 != 0 {
            leb(code, at);
        }
    }
    assert_eq!(&code[..4], b"\0asm", "a Wasm module");
    let mut names = Vec::new();
    let mut at = 8;
    while at < code.len() {
        let id = code[at];
        at += 1;
        let size = leb(code, &mut at) as usize;
        let end = at + size;
        let mut p = at;
        match id {
            2 => {
                for _ in 0..leb(code, &mut p) {
                    let _module = name(code, &mut p);
                    names.push(name(code, &mut p));
                    let kind = code[p];
                    p += 1;
                    match kind {
                        0 => {
                            leb(code, &mut p);
                        }
                        1 => {
                            p += 1;
                            limits(code, &mut p);
                        }
                        2 => limits(code, &mut p),
                        _ => p += 2,
                    }
                }
            }
            7 => {
                for _ in 0..leb(code, &mut p) {
                    names.push(name(code, &mut p));
                    p += 1;
                    leb(code, &mut p);
                }
            }
            _ => {}
        }
        at = end;
    }
    names
}

/// `capability_restriction_config` allowing everything the module imports or exports except
/// `denied`. Envoy 1.40 accepts the field but flags it deprecated.
fn restrict(bootstrap: &mut Value, denied: &str) {
    let allowed: serde_json::Map<String, Value> = module_interface(&module())
        .into_iter()
        .filter(|n| n != denied)
        .map(|n| (n, json!({})))
        .collect();
    assert!(allowed.contains_key("proxy_on_request_headers"));
    wasm_plugin_config(bootstrap)["capability_restriction_config"] =
        json!({"allowed_capabilities": allowed});
}

#[test]
fn a_host_call_envoy_refuses_is_absorbed_by_the_filter_not_the_policy() {
    let upstream = Upstream::start();
    for policy in [FailurePolicy::FailOpen, FailurePolicy::FailClosed] {
        let config = EnvoyConfig::new(upstream.port())
            .plugin_config(users_config())
            .routes(vec![RouteSpec::new("users", "/users")])
            .failure_policy(policy);
        let mut bootstrap = config.bootstrap();
        restrict(&mut bootstrap, "proxy_get_shared_data");
        let envoy = Envoy::start_with_bootstrap(&config, &bootstrap)
            .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        envoy.wait_for_log(
            "Using deprecated option 'envoy.extensions.wasm.v3.PluginConfig.capability_restriction_config'",
            WAIT,
        );

        // The breaker cannot read its state: every request goes through untracked, the
        // failures open nothing, and no request is failed by Envoy.
        for _ in 0..3 {
            let r = http1(envoy.port(), "GET", "/users", &answer(key(policy), "500")).unwrap();
            assert_eq!(r.status, 500, "{policy:?}");
            assert_eq!(r.header("x-marty-circuit"), None);
        }
        assert_eq!(upstream.count(key(policy)), 3);
        envoy.wait_for_log(
            "Attempted call to restricted proxy-wasm capability: proxy_get_shared_data",
            WAIT,
        );
        envoy.wait_for_log(
            "marty_resilience/v1/cb/users: shared data call failed with status 10",
            WAIT,
        );
        envoy.wait_for_stat(
            "wasmcustom.marty_resilience.shared_data_errors_total",
            |v| v >= 3,
            WAIT,
        );
        assert_eq!(
            envoy.stat(&stat("users", "requests_total")),
            Some(3),
            "the filter still ran"
        );
        assert_eq!(envoy.stat(&stat("users", "failure_total")), Some(0));
        assert_eq!(
            envoy.stat("wasm.marty_resilience.vm_reload_success"),
            Some(0)
        );
    }
}

/// Starts Envoy (one worker, so every request meets the same VM) whose VM traps on any
/// request to `/bad`: see the module documentation.
fn envoy_that_traps_on_bad(upstream: &Upstream, policy: FailurePolicy) -> (Envoy, AccessLog) {
    let code = module();
    let server = FileServer::start();
    server.put(MODULE_PATH, code.clone());
    server.hold();
    let config = EnvoyConfig::new(upstream.port())
        .concurrency(1)
        .plugin_config(users_config())
        .routes(vec![
            RouteSpec::new("users", "/users"),
            // Invalid route metadata: the filter logs an error the first time it resolves it.
            RouteSpec::new("bad", "/bad")
                .metadata(json!({"circuit_breaker": {"failure_threshold": 0}})),
            RouteSpec::unnamed("/"),
        ])
        .failure_policy(policy);
    let mut bootstrap = config.bootstrap();
    use_remote_code(
        &mut bootstrap,
        server.port(),
        MODULE_PATH,
        &sha256_hex(&code),
        0,
    );
    restrict(&mut bootstrap, "proxy_log");
    let admin = free_port();
    set_admin_port(&mut bootstrap, admin);
    let access = AccessLog::new();
    access.add_to(&mut bootstrap);

    let starting = std::thread::spawn(move || Envoy::start_with_bootstrap(&config, &bootstrap));
    server.wait_for_requests(MODULE_PATH, 1, WAIT);
    let level = http1(admin, "POST", "/logging?wasm=error", &[]).unwrap();
    assert_eq!(level.status, 200, "{}", level.text());
    server.release();
    let envoy = starting
        .join()
        .expect("start thread")
        .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
    (envoy, access)
}

/// One request; its status, `x-marty-circuit` and access log line.
fn get(
    envoy: &Envoy,
    access: &mut AccessLog,
    path: &str,
    key: &'static str,
    status: &'static str,
) -> (u16, Option<String>, String) {
    let r = http1(envoy.port(), "GET", path, &answer(key, status)).unwrap();
    let circuit = r.header("x-marty-circuit").map(str::to_string);
    (r.status, circuit, access.next_line(WAIT))
}

#[test]
fn a_log_call_envoy_refuses_does_not_trap_the_vm() {
    // This setup used to trap the VM: the SDK's logger unwraps `proxy_log`, which
    // capability_restriction_config denies, and logging the invalid metadata of `/bad` killed
    // the VM (the request got 503 `wasm_fail_stream`, then the failure policy decided). The
    // filter now logs through its own host call, which takes a refusal like any other answer.
    let upstream = Upstream::start();
    for policy in POLICIES {
        let (envoy, mut access) = envoy_that_traps_on_bad(&upstream, policy);
        let k = key(policy);

        let opened = get(&envoy, &mut access, "/users", k, "500");
        assert_eq!(opened, (500, None, "/users 500 via_upstream".into()));
        wait_state(&envoy, "users", 1);

        // The request whose route metadata is logged as invalid goes through untouched...
        let logged = get(&envoy, &mut access, "/bad", k, "200");
        assert_eq!(
            logged,
            (200, None, "/bad 200 via_upstream".into()),
            "{policy:?}"
        );
        envoy.wait_for_log(
            "Attempted call to restricted proxy-wasm capability: proxy_log",
            WAIT,
        );
        // ...and the filter is still there: the open breaker keeps rejecting.
        let rejected = get(&envoy, &mut access, "/users", k, "500");
        assert_eq!(
            rejected,
            (
                503,
                Some("open".into()),
                "/users 503 marty_circuit_open".into()
            ),
            "{policy:?}"
        );
        assert!(!envoy.log().contains(TRAP), "{policy:?}: the VM trapped");
        assert_eq!(upstream.count(k), 2, "{policy:?}");
        assert_eq!(
            envoy.stat("wasm.marty_resilience.vm_reload_success"),
            Some(0)
        );
    }
}

// (d) A configuration update the filter rejects.

#[test]
fn a_configuration_update_the_filter_rejects_is_refused_and_the_old_one_keeps_serving() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = EnvoyConfig::new(upstream.port())
        .plugin_config(users_config())
        .routes(vec![
            RouteSpec::new("users", "/users"),
            RouteSpec::unnamed("/"),
        ]);
    let (bootstrap, lds) = lds_bootstrap(&config, dir.path());
    let envoy = Envoy::start_with_bootstrap(&config, &bootstrap).unwrap_or_else(|e| panic!("{e}"));
    let r = http1(envoy.port(), "GET", "/users", &answer("u", "500")).unwrap();
    assert_eq!(r.status, 500);
    wait_state(&envoy, "users", 1);

    // A listener update whose plugin configuration the filter rejects: Envoy refuses the
    // whole update (over xDS: a NACK) and keeps the listener it has.
    let rejected = config.clone().plugin_config(
        json!({"routes": {"users": {"circuit_breaker": {"failure_threshold": 0}}}}).to_string(),
    );
    write_lds(&lds, &listener(&rejected));
    envoy.wait_for_stat("listener_manager.lds.update_rejected", |v| v == 1, WAIT);
    envoy.wait_for_log(
        "invalid marty-resilience configuration: routes.users.circuit_breaker.failure_threshold: expected an integer between 1 and 1000000, got 0",
        WAIT,
    );
    envoy.wait_for_log(
        "Filesystem config update rejected: Error adding/updating listener(s) ingress: Unable to create Wasm plugin marty_resilience",
        WAIT,
    );
    assert_eq!(envoy.stat("listener_manager.lds.update_success"), Some(1));
    let still = http1(envoy.port(), "GET", "/users", &answer("u", "500")).unwrap();
    assert_eq!(still.status, 503);
    assert_eq!(still.header("x-marty-circuit"), Some("open"));

    // An accepted update reconfigures the plugin (same vm_id, so the same shared data): the
    // breaker is still open under the new configuration.
    let accepted = config.clone().plugin_config(
        json!({"service_name": "v2", "routes": {"users": {"circuit_breaker": {
            "failure_threshold": 1, "recovery_timeout": "60s"}}}})
        .to_string(),
    );
    write_lds(&lds, &listener(&accepted));
    envoy.wait_for_stat("listener_manager.lds.update_success", |v| v == 2, WAIT);
    envoy.wait_for_log("configured: service \"v2\"", WAIT);
    envoy.wait_for_stat(
        "listener_manager.total_listeners_draining",
        |v| v == 0,
        WAIT,
    );
    let after = http1(envoy.port(), "GET", "/users", &answer("u", "500")).unwrap();
    assert_eq!(after.status, 503);
    assert_eq!(after.header("x-marty-circuit"), Some("open"));
    assert_eq!(upstream.count("u"), 1);
}
