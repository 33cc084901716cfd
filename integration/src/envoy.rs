//! Starts a real Envoy with the filter in front of a test upstream. The bootstrap is
//! built as JSON in code (Envoy reads JSON as YAML), so a test that needs something the
//! builder lacks can edit [`EnvoyConfig::bootstrap`]'s result and use
//! [`Envoy::start_with_bootstrap`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client;
use crate::workspace_root;

/// Envoy files every metric a wasm module defines under this prefix: `/stats` shows
/// `wasmcustom.marty_resilience.route.<route>.requests_total`, while `/stats/prometheus`
/// strips it (`marty_resilience_route_requests_total{marty_route="<route>"}`).
pub const WASM_CUSTOM_PREFIX: &str = "wasmcustom.";

/// Stats tag extractor for per-route filter metrics: the first group is cut out of the
/// name, the second becomes the `marty_route` tag value. Tag extractors see the name
/// with its `wasmcustom.` prefix (checked on Envoy 1.40 with a probe module).
pub const MARTY_ROUTE_TAG_REGEX: &str = r"^wasmcustom\.[A-Za-z0-9_]+\.route\.((.+?)\.)[a-z_]+$";
pub const MARTY_ROUTE_TAG_NAME: &str = "marty_route";

/// Filter-chain key the route metadata goes under.
pub const METADATA_NAMESPACE: &str = "marty.resilience";

/// How long [`Envoy::start`] waits for LIVE before giving up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for workers to flush their deferred counts before stats are read (the tick is
/// 250 ms; a worker under load holds counts again right after each flush).
const COUNTS_SETTLE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// Route name as Envoy knows it; empty = unnamed route.
    pub name: String,
    pub prefix: String,
    /// Put under `metadata.filter_metadata["marty.resilience"]`.
    pub metadata: Option<Value>,
    /// Cluster to route to; None = `upstream`.
    pub cluster: Option<String>,
    /// Route timeout; None = Envoy's default (15 s).
    pub timeout: Option<Duration>,
    /// Envoy `retry_policy` object, verbatim.
    pub retry_policy: Option<Value>,
}

impl RouteSpec {
    pub fn new(name: &str, prefix: &str) -> Self {
        RouteSpec {
            name: name.to_string(),
            prefix: prefix.to_string(),
            metadata: None,
            cluster: None,
            timeout: None,
            retry_policy: None,
        }
    }

    pub fn unnamed(prefix: &str) -> Self {
        Self::new("", prefix)
    }

    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    pub fn cluster(mut self, cluster: &str) -> Self {
        self.cluster = Some(cluster.to_string());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn retry_policy(mut self, policy: Value) -> Self {
        self.retry_policy = Some(policy);
        self
    }

    fn to_json(&self) -> Value {
        let mut action = json!({
            "cluster": self.cluster.as_deref().unwrap_or(UPSTREAM_CLUSTER),
        });
        if let Some(t) = self.timeout {
            action["timeout"] = json!(duration(t));
        }
        if let Some(p) = &self.retry_policy {
            action["retry_policy"] = p.clone();
        }
        let mut route = json!({
            "match": {"prefix": self.prefix},
            "route": action,
        });
        if !self.name.is_empty() {
            route["name"] = json!(self.name);
        }
        if let Some(m) = &self.metadata {
            route["metadata"] = json!({"filter_metadata": {METADATA_NAMESPACE: m}});
        }
        route
    }
}

/// Cluster speaking HTTP/1.1 or h2c according to [`EnvoyConfig::upstream_http2`].
pub const UPSTREAM_CLUSTER: &str = "upstream";
/// Cluster that always speaks h2c to the same upstream port (gRPC needs it).
pub const UPSTREAM_H2_CLUSTER: &str = "upstream_h2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    FailOpen,
    FailClosed,
    FailReload,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailReload => "FAIL_RELOAD",
        }
    }
}

/// The test build of the module (`./scripts/build` makes it): `$MARTY_TEST_TRAP_WASM`, else
/// `<workspace>/target/wasm32-wasip1/release/marty_resilience_test_trap.wasm`.
pub fn test_trap_wasm_path() -> PathBuf {
    std::env::var_os("MARTY_TEST_TRAP_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/wasm32-wasip1/release/marty_resilience_test_trap.wasm")
        })
}

#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    pub concurrency: u32,
    /// None: `$MARTY_WASM`, else `<workspace>/target/wasm32-wasip1/release/marty_resilience.wasm`.
    pub wasm_path: Option<PathBuf>,
    /// None: `$ENVOY_BIN`, else whatever `scripts/install-envoy` prints.
    pub envoy_bin: Option<PathBuf>,
    /// The plugin's `configuration` (a StringValue), normally JSON.
    pub plugin_config: String,
    pub vm_env: Vec<(String, String)>,
    pub routes: Vec<RouteSpec>,
    pub upstream_port: u16,
    pub upstream_http2: bool,
    /// False runs Envoy without the wasm filter, to test the harness itself.
    pub with_filter: bool,
    pub failure_policy: FailurePolicy,
    pub route_tag_regex: String,
}

impl EnvoyConfig {
    pub fn new(upstream_port: u16) -> Self {
        EnvoyConfig {
            concurrency: 2,
            wasm_path: None,
            envoy_bin: None,
            plugin_config: "{}".to_string(),
            vm_env: Vec::new(),
            routes: vec![RouteSpec::unnamed("/")],
            upstream_port,
            upstream_http2: false,
            with_filter: true,
            failure_policy: FailurePolicy::FailOpen,
            route_tag_regex: MARTY_ROUTE_TAG_REGEX.to_string(),
        }
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    pub fn wasm_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.wasm_path = Some(path.into());
        self
    }

    pub fn envoy_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.envoy_bin = Some(path.into());
        self
    }

    pub fn plugin_config(mut self, config: impl Into<String>) -> Self {
        self.plugin_config = config.into();
        self
    }

    pub fn vm_env(mut self, key: &str, value: &str) -> Self {
        self.vm_env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn routes(mut self, routes: Vec<RouteSpec>) -> Self {
        self.routes = routes;
        self
    }

    pub fn upstream_http2(mut self, on: bool) -> Self {
        self.upstream_http2 = on;
        self
    }

    pub fn with_filter(mut self, on: bool) -> Self {
        self.with_filter = on;
        self
    }

    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Loads the test build of the module, which a request can make trap
    /// (`x-marty-test-trap: now|tick`, see filter/wasm/src/test_trap.rs), with `FAIL_RELOAD`,
    /// so that a fresh VM replaces the trapped one.
    pub fn test_trap(self) -> Self {
        self.wasm_path(test_trap_wasm_path())
            .failure_policy(FailurePolicy::FailReload)
    }

    /// The module Envoy will load; panics with what to do when it is not built.
    pub fn resolved_wasm_path(&self) -> PathBuf {
        let path = self
            .wasm_path
            .clone()
            .or_else(|| std::env::var_os("MARTY_WASM").map(PathBuf::from))
            .unwrap_or_else(|| {
                workspace_root().join("target/wasm32-wasip1/release/marty_resilience.wasm")
            });
        assert!(
            path.is_file(),
            "wasm module {} not found: run ./scripts/build first (or set MARTY_WASM)",
            path.display()
        );
        path
    }

    pub fn resolved_envoy_bin(&self) -> PathBuf {
        if let Some(bin) = &self.envoy_bin {
            return bin.clone();
        }
        if let Some(bin) = std::env::var_os("ENVOY_BIN") {
            return PathBuf::from(bin);
        }
        installed_envoy().to_path_buf()
    }

    /// The whole bootstrap; edit it and pass it to [`Envoy::start_with_bootstrap`] for
    /// anything the builder does not cover (e.g. upstream HTTP filters).
    pub fn bootstrap(&self) -> Value {
        let mut http_filters = Vec::new();
        if self.with_filter {
            http_filters.push(self.wasm_filter());
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        let routes: Vec<Value> = self.routes.iter().map(RouteSpec::to_json).collect();

        json!({
            "admin": {"address": socket_address(0)},
            "stats_config": {
                "stats_tags": [{"tag_name": MARTY_ROUTE_TAG_NAME, "regex": self.route_tag_regex}],
                "use_all_default_tags": true,
            },
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": socket_address(0),
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "ingress",
                                "codec_type": "AUTO",
                                // Loopback clients count as internal so tests may send x-envoy-* headers.
                                "use_remote_address": true,
                                "internal_address_config": {"cidr_ranges": [
                                    {"address_prefix": "127.0.0.1", "prefix_len": 32},
                                    {"address_prefix": "::1", "prefix_len": 128},
                                ]},
                                "generate_request_id": true,
                                "route_config": {
                                    "name": "local",
                                    "virtual_hosts": [{
                                        "name": "local",
                                        "domains": ["*"],
                                        "routes": routes,
                                    }],
                                },
                                "http_filters": http_filters,
                            },
                        }],
                    }],
                }],
                "clusters": [
                    self.cluster(UPSTREAM_CLUSTER, self.upstream_http2),
                    self.cluster(UPSTREAM_H2_CLUSTER, true),
                ],
            },
        })
    }

    fn wasm_filter(&self) -> Value {
        let env: serde_json::Map<String, Value> = self
            .vm_env
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "marty_resilience",
                    "root_id": "marty_resilience",
                    "failure_policy": self.failure_policy.as_str(),
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.plugin_config,
                    },
                    "vm_config": {
                        "vm_id": "marty_resilience",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": self.resolved_wasm_path()}},
                        "environment_variables": {"key_values": env},
                    },
                },
            },
        })
    }

    fn cluster(&self, name: &str, http2: bool) -> Value {
        // Envoy's own breakers must never be what a test observes.
        let thresholds: Vec<Value> = ["DEFAULT", "HIGH"]
            .iter()
            .map(|p| {
                json!({
                    "priority": p,
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "max_retries": 100000,
                })
            })
            .collect();
        let mut cluster = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "circuit_breakers": {"thresholds": thresholds},
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(self.upstream_port)}}]}],
            },
        });
        if http2 {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            });
        }
        cluster
    }
}

fn socket_address(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn duration(d: Duration) -> String {
    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
}

/// Runs `scripts/install-envoy` once per test process.
fn installed_envoy() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = workspace_root().join("scripts/install-envoy");
        // Retried: the script's `envoy --version | grep -q` under pipefail fails now and
        // then when grep exits before envoy's last write (SIGPIPE).
        let mut last = String::new();
        for _ in 0..3 {
            let out = Command::new(&script)
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = stdout.lines().last().unwrap_or_default().trim();
            if out.status.success() && !path.is_empty() {
                return PathBuf::from(path);
            }
            last = format!(
                "{} ({}): {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        panic!(
            "{} failed: {last}; set ENVOY_BIN to use another binary",
            script.display()
        )
    })
}

/// Envoy did not become ready: it exited (bad config, plugin rejected its
/// configuration...) or timed out. Carries the whole log for assertions.
pub struct StartError {
    /// None when Envoy was still running at the deadline (and was killed).
    pub exit_status: Option<ExitStatus>,
    pub reason: String,
    /// Envoy's log file followed by its stderr.
    pub log: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "envoy did not start: {}", self.reason)?;
        if let Some(s) = self.exit_status {
            writeln!(f, "{s}")?;
        }
        writeln!(f, "--- envoy log (last 100 lines) ---")?;
        f.write_str(&tail(&self.log, 100))
    }
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StartError {}

/// The last `lines` lines, minus the ~100-line extension and header-map listing Envoy
/// prints at startup, which would otherwise fill any tail of a short-lived instance.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !is_startup_listing(l)).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_startup_listing(line: &str) -> bool {
    let Some(at) = line.find("][info][main] [source/server/server.cc:") else {
        return false;
    };
    line[at..]
        .split_once("] ")
        .and_then(|(_, rest)| rest.split_once("] "))
        .is_some_and(|(_, message)| message.starts_with("  "))
}

/// One GET of admin `/ready`: Ok when Envoy answers 200 LIVE. The one readiness probe of the
/// harness, the demo driver and `./scripts/demo`.
pub fn admin_ready(admin_port: u16) -> Result<(), String> {
    let r = client::http1(admin_port, "GET", "/ready", &[])?;
    if r.status == 200 && r.text().trim() == "LIVE" {
        Ok(())
    } else {
        Err(format!(
            "/ready answered {} {:?}",
            r.status,
            r.text().trim()
        ))
    }
}

/// A running Envoy in its own temp dir; dropping it kills the process.
pub struct Envoy {
    child: Child,
    dir: Option<tempfile::TempDir>,
    port: u16,
    admin_port: u16,
}

impl Envoy {
    pub fn start(config: &EnvoyConfig) -> Result<Envoy, StartError> {
        Self::start_with_bootstrap(config, &config.bootstrap())
    }

    /// Starts with a caller-edited bootstrap; `config` only supplies the binary and the
    /// concurrency.
    pub fn start_with_bootstrap(
        config: &EnvoyConfig,
        bootstrap: &Value,
    ) -> Result<Envoy, StartError> {
        let bin = config.resolved_envoy_bin();
        let dir = tempfile::Builder::new()
            .prefix("marty-envoy-")
            .tempdir()
            .expect("create envoy temp dir");
        let bootstrap_path = dir.path().join("bootstrap.yaml");
        std::fs::write(
            &bootstrap_path,
            serde_json::to_string_pretty(bootstrap).expect("serialize bootstrap"),
        )
        .expect("write bootstrap");
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let stdout = File::create(dir.path().join("stdout")).expect("create envoy stdout file");
        let stderr = File::create(dir.path().join("stderr")).expect("create envoy stderr file");

        let child = Command::new(&bin)
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--concurrency", &config.concurrency.to_string()])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--log-level", "info", "--component-log-level", "wasm:debug"])
            .arg("--log-path")
            .arg(&log_path)
            // The log file is otherwise flushed every 10 s: wait_for_log would lag.
            .args(["--file-flush-interval-msec", "50"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn envoy {}: {e}", bin.display()));

        let mut envoy = Envoy {
            child,
            dir: Some(dir),
            port: 0,
            admin_port: 0,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_wait = String::from("admin address file not written yet");
        loop {
            match envoy.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(StartError {
                        exit_status: Some(status),
                        reason: "envoy exited during startup".into(),
                        log: envoy.full_log(),
                    });
                }
                Ok(None) => {}
                Err(e) => panic!("wait on envoy: {e}"),
            }
            if Instant::now() >= deadline {
                let _ = envoy.child.kill();
                let _ = envoy.child.wait();
                return Err(StartError {
                    exit_status: None,
                    reason: format!("not ready after {START_TIMEOUT:?}: {last_wait}"),
                    log: envoy.full_log(),
                });
            }
            match envoy.probe_ready(&admin_path) {
                Ok(()) => return Ok(envoy),
                Err(why) => last_wait = why,
            }
            std::thread::sleep(POLL);
        }
    }

    /// One readiness probe: admin address known, /ready says LIVE, listener port known.
    fn probe_ready(&mut self, admin_path: &Path) -> Result<(), String> {
        if self.admin_port == 0 {
            let text = std::fs::read_to_string(admin_path).unwrap_or_default();
            let port = text
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0);
            self.admin_port = port.ok_or("admin address file not written yet")?;
        }
        admin_ready(self.admin_port)?;
        let (_, body) = self.admin_get("/listeners?format=json")?;
        let json: Value =
            serde_json::from_str(&body).map_err(|e| format!("/listeners json: {e}: {body}"))?;
        let port = json["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == "ingress")
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("ingress listener port not in /listeners: {body}"))?;
        self.port = port;
        Ok(())
    }

    /// The port of the listener `name` (for bootstraps with more than the `ingress` one).
    pub fn listener_port(&self, name: &str) -> Option<u16> {
        let (_, body) = self.admin_get("/listeners?format=json").ok()?;
        let json: Value = serde_json::from_str(&body).ok()?;
        json["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
    }

    fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = client::http1(self.admin_port, "GET", path, &[])?;
        Ok((resp.status, resp.text()))
    }

    fn admin_ok(&self, path: &str) -> String {
        let (status, body) = self
            .admin_get(path)
            .unwrap_or_else(|e| panic!("envoy admin {path}: {e}"));
        assert_eq!(status, 200, "envoy admin {path}: {body}");
        body
    }

    /// The listener's port (HTTP/1.1 and h2c prior knowledge).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The Envoy process id (to read its memory from `/proc`, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The temp dir holding bootstrap.yaml, envoy.log, stdout and stderr.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("envoy temp dir").path()
    }

    /// The log file as written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("envoy.log")).unwrap_or_default()
    }

    fn full_log(&self) -> String {
        let mut log = self.log();
        let stderr = std::fs::read_to_string(self.dir().join("stderr")).unwrap_or_default();
        if !stderr.trim().is_empty() {
            log.push_str("\n--- stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// Counters and gauges by full (untagged) name; histograms and text readouts are
    /// left out.
    /// Every stat, once the filter's workers have added their deferred counts
    /// (`requests_total`, `success_total`: each worker adds them up and flushes them on its
    /// tick, see docs/metrics.md) to Envoy's counters: waits, for at most
    /// [`COUNTS_SETTLE`], until every `counters_unflushed` gauge reads 0.
    pub fn stats(&self) -> BTreeMap<String, i64> {
        self.wait_for_flushed_counts();
        self.stats_as_they_are()
    }

    /// Polls until no worker holds unflushed counts. Bounded: a VM that trapped with counts
    /// pending keeps its gauge up until its lease is reclaimed.
    fn wait_for_flushed_counts(&self) {
        let deadline = Instant::now() + COUNTS_SETTLE;
        loop {
            let body = self.admin_ok("/stats?format=json&filter=counters_unflushed%24");
            let pending = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|json| {
                    json["stats"].as_array().map(|stats| {
                        stats
                            .iter()
                            .any(|s| s["value"].as_i64().is_some_and(|v| v != 0))
                    })
                })
                .unwrap_or(false);
            if !pending || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every stat as the admin shows it now, without waiting for deferred counts.
    pub fn stats_as_they_are(&self) -> BTreeMap<String, i64> {
        let body = self.admin_ok("/stats?format=json");
        let json: Value = serde_json::from_str(&body).expect("parse /stats?format=json");
        json["stats"]
            .as_array()
            .expect("/stats json has a stats array")
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_i64()?)))
            .collect()
    }

    pub fn stat(&self, name: &str) -> Option<i64> {
        self.stats().remove(name)
    }

    /// A metric the wasm module defined, by the name the module gave it.
    pub fn wasm_stat(&self, name: &str) -> Option<i64> {
        self.stat(&format!("{WASM_CUSTOM_PREFIX}{name}"))
    }

    /// `/stats/prometheus`, once deferred counts are in (see [`Envoy::stats`]).
    pub fn prometheus(&self) -> String {
        self.wait_for_flushed_counts();
        self.admin_ok("/stats/prometheus")
    }

    /// Polls until the stat exists and satisfies `pred`; returns its value. Stats are
    /// flushed asynchronously from workers, so tests wait rather than read once. Wasm
    /// metrics need [`WASM_CUSTOM_PREFIX`] in front of their name.
    #[track_caller]
    pub fn wait_for_stat(&self, name: &str, pred: impl Fn(i64) -> bool, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.stat(name);
            if let Some(v) = value.filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "stat {name} did not reach the expected value within {timeout:?}; last value: {}",
                value.map_or_else(|| "absent".to_string(), |v| v.to_string())
            );
            std::thread::sleep(POLL);
        }
    }

    /// Polls the log until it contains `needle`; panics with the log's tail otherwise.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "envoy log did not contain {needle:?} within {timeout:?}; last lines:\n{}",
                tail(&log, 50)
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.full_log();
            // Keep the dir so the bootstrap can be rerun by hand.
            let kept = self.dir.take().map(tempfile::TempDir::keep);
            eprintln!(
                "--- envoy log (last 200 lines; files kept in {}) ---\n{}\n--- end envoy log ---",
                kept.map_or_else(|| "?".to_string(), |p| p.display().to_string()),
                tail(&log, 200)
            );
        }
    }
}
