//! Edits of the harness bootstrap ([`crate::EnvoyConfig::bootstrap`]) for tests that need
//! what the builder does not do: the module fetched over HTTP (`code.remote`), an access log
//! showing `%RESPONSE_CODE_DETAILS%`, a fixed admin port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Name of the cluster [`use_remote_code`] adds for the module server.
pub const MODULE_CLUSTER: &str = "wasm_modules";

/// The `HttpConnectionManager` config of the harness's `ingress` listener.
pub fn http_connection_manager(bootstrap: &mut Value) -> &mut Value {
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    assert!(
        hcm["@type"]
            .as_str()
            .is_some_and(|t| t.ends_with("HttpConnectionManager")),
        "not the harness bootstrap: {hcm}"
    );
    hcm
}

/// The one virtual host of the harness's route table.
pub fn virtual_host(bootstrap: &mut Value) -> &mut Value {
    let vhost = &mut http_connection_manager(bootstrap)["route_config"]["virtual_hosts"][0];
    assert!(
        vhost["routes"].is_array(),
        "no virtual host with routes: {vhost}"
    );
    vhost
}

/// The wasm filter's `config` (an `envoy.extensions.wasm.v3.PluginConfig`).
pub fn wasm_plugin_config(bootstrap: &mut Value) -> &mut Value {
    let filters = http_connection_manager(bootstrap)["http_filters"]
        .as_array_mut()
        .expect("http_filters is an array");
    let wasm = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .expect("the bootstrap has the wasm filter (EnvoyConfig::with_filter(true))");
    &mut wasm["typed_config"]["config"]
}

/// Makes Envoy fetch the module from `http://127.0.0.1:<server_port><path>` through a new
/// static cluster [`MODULE_CLUSTER`] instead of reading `code.local`: `sha256` is what the
/// fetched bytes must hash to, `num_retries` the fetch retries (backoff 100 ms to 500 ms).
pub fn use_remote_code(
    bootstrap: &mut Value,
    server_port: u16,
    path: &str,
    sha256: &str,
    num_retries: u32,
) {
    wasm_plugin_config(bootstrap)["vm_config"]["code"] = json!({
        "remote": {
            "http_uri": {
                "uri": format!("http://127.0.0.1:{server_port}{path}"),
                "cluster": MODULE_CLUSTER,
                "timeout": "5s",
            },
            "sha256": sha256,
            "retry_policy": {
                "num_retries": num_retries,
                "retry_back_off": {"base_interval": "0.1s", "max_interval": "0.5s"},
            },
        },
    });
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters is an array")
        .push(json!({
            "name": MODULE_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": MODULE_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": server_port,
                }}}}]}],
            },
        }));
}

/// Puts the admin API on a fixed port (the harness otherwise asks for port 0), for a test
/// that must reach it before Envoy is ready.
pub fn set_admin_port(bootstrap: &mut Value, port: u16) {
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(port);
}

/// A file access log in its own temp dir, one line per request:
/// `<path> <status> <response code details>`, read line by line as requests complete.
pub struct AccessLog {
    dir: tempfile::TempDir,
    seen: usize,
}

impl AccessLog {
    pub fn new() -> AccessLog {
        let dir = tempfile::Builder::new()
            .prefix("marty-access-log-")
            .tempdir()
            .expect("create access log dir");
        AccessLog { dir, seen: 0 }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Adds the log to the harness listener.
    pub fn add_to(&self, bootstrap: &mut Value) {
        http_connection_manager(bootstrap)["access_log"] = json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": self.path(),
                "log_format": {"text_format_source": {
                    "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n",
                }},
            },
        }]);
    }

    /// The next line not returned yet, waiting up to `timeout` for it. Envoy writes a line
    /// when the stream ends and flushes every `--file-flush-interval-msec` (50 ms under the
    /// harness).
    #[track_caller]
    pub fn next_line(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.path()).unwrap_or_default();
            if let Some(line) = text.lines().nth(self.seen) {
                self.seen += 1;
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "access log line {} not written within {timeout:?}; log so far:\n{text}",
                self.seen + 1
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for AccessLog {
    fn default() -> Self {
        Self::new()
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
