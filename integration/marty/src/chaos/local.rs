//! The local chaos topology, as in a mesh: the caller's Envoy (breaker, retries) in front of
//! the server's Envoy (fault injection) in front of the harness upstream. The bootstraps are
//! `envoy/chaos-caller.yaml` and `envoy/chaos-server.yaml`, run as written except for their
//! ports (free ones here) and the module path (absolute).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use marty_integration::{Envoy, EnvoyConfig, Upstream};
use rand::Rng;
use serde_json::Value;

use super::runner::Target;

/// The variable the server's bootstrap reads its header-trigger token from
/// (`host_env_keys`), and the scenario variable that carries it to the requests.
pub const TOKEN_ENV: &str = "MARTY_RESILIENCE_FAILURE_INJECTION_HEADER_TRIGGER_TOKEN";
pub const TOKEN_VAR: &str = "MARTY_CHAOS_TOKEN";

/// Running processes; dropping this stops both Envoys and the upstream.
pub struct Local {
    // Field order is drop order: the caller goes first, the upstream last.
    caller: Envoy,
    server: Envoy,
    _upstream: Upstream,
    pub token: String,
}

impl Local {
    /// Starts the topology. Call before any other thread reads the environment: the server
    /// Envoy inherits the token through it.
    pub fn start(root: &Path, wasm: Option<PathBuf>) -> Result<Self> {
        let wasm = wasm
            .or_else(|| std::env::var_os("MARTY_WASM").map(PathBuf::from))
            .unwrap_or_else(|| root.join("target/wasm32-wasip1/release/marty_resilience.wasm"));
        if !wasm.is_file() {
            bail!(
                "the module {} is not built: run ./scripts/build (or pass --wasm)",
                wasm.display()
            );
        }
        let wasm = wasm.canonicalize()?;
        // A fresh token per run, given to the server Envoy through its environment as the
        // docs recommend (never in the bootstrap), and to the scenarios as ${MARTY_CHAOS_TOKEN}.
        let token: String = {
            let mut rng = rand::thread_rng();
            (0..32)
                .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
                .collect()
        };
        std::env::set_var(TOKEN_ENV, &token);

        let upstream = Upstream::start();
        let config = EnvoyConfig::new(upstream.port()).concurrency(2);

        let mut server_bootstrap = load(&root.join("envoy/chaos-server.yaml"))?;
        rewrite(&mut server_bootstrap, "app", upstream.port(), &wasm);
        let server = Envoy::start_with_bootstrap(&config, &server_bootstrap)
            .map_err(|e| anyhow!("the server Envoy (envoy/chaos-server.yaml): {e}"))?;

        let mut caller_bootstrap = load(&root.join("envoy/chaos-caller.yaml"))?;
        rewrite(&mut caller_bootstrap, "server", server.port(), &wasm);
        let caller = Envoy::start_with_bootstrap(&config, &caller_bootstrap)
            .map_err(|e| anyhow!("the caller Envoy (envoy/chaos-caller.yaml): {e}"))?;
        Ok(Self {
            caller,
            server,
            _upstream: upstream,
            token,
        })
    }

    pub fn target(&self) -> Target {
        Target {
            url: self.caller.url(""),
            admin: format!("http://127.0.0.1:{}", self.caller.admin_port()),
            server_admin: Some(format!("http://127.0.0.1:{}", self.server.admin_port())),
            health_path: "/resilience/health".to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "caller Envoy {} (admin :{}, {}), server Envoy :{} (admin :{}, {})",
            self.caller.url(""),
            self.caller.admin_port(),
            self.caller.dir().display(),
            self.server.port(),
            self.server.admin_port(),
            self.server.dir().display()
        )
    }
}

fn load(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Free ports for the admin and the `ingress` listener, `cluster`'s endpoint on `port`, and
/// the module by absolute path.
fn rewrite(bootstrap: &mut Value, cluster: &str, port: u16, wasm: &Path) {
    if let Some(p) = bootstrap.pointer_mut("/admin/address/socket_address/port_value") {
        *p = Value::from(0);
    }
    for listener in array(bootstrap, "/static_resources/listeners") {
        if listener["name"] == "ingress" {
            if let Some(p) = listener.pointer_mut("/address/socket_address/port_value") {
                *p = Value::from(0);
            }
        }
    }
    for c in array(bootstrap, "/static_resources/clusters") {
        if c["name"] == cluster {
            for group in array(c, "/load_assignment/endpoints") {
                for endpoint in array(group, "/lb_endpoints") {
                    if let Some(p) =
                        endpoint.pointer_mut("/endpoint/address/socket_address/port_value")
                    {
                        *p = Value::from(port);
                    }
                }
            }
        }
    }
    set_module(bootstrap, wasm);
}

fn array<'a>(v: &'a mut Value, pointer: &str) -> impl Iterator<Item = &'a mut Value> {
    v.pointer_mut(pointer)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

fn set_module(v: &mut Value, wasm: &Path) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "filename" && child.as_str().is_some_and(|f| f.ends_with(".wasm")) {
                    *child = Value::from(wasm.display().to_string());
                } else {
                    set_module(child, wasm);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| set_module(c, wasm)),
        _ => {}
    }
}
