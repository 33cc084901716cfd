//! The marty-resilience Envoy filter: proxy-wasm glue over `marty-resilience-core`.
//!
//! Envoy runs one VM per worker (plus one on the main thread). Each VM loads the configuration
//! in [`Root::on_configure`]; state that must agree across workers (the breakers) lives in
//! proxy shared data under the plugin's `vm_id`; counters and gauges are Envoy stats, shared
//! by name across VMs. Every rule is in the core's `proxy` module: this crate reads the
//! configuration and the environment, hands proxy-wasm's callbacks to it ([`exports`]), and
//! implements its host over the ABI ([`abi`]).

mod abi;
mod exports;
mod logger;
#[cfg(feature = "test-trap")]
mod test_trap;

use std::ffi::OsString;
use std::rc::Rc;

use log::{error, info, warn};
use marty_resilience_core::config::{Notice, Settings};
use marty_resilience_core::proxy::scheduler::TICK_MS;
use marty_resilience_core::proxy::{Plugin, Stream};

use abi::Abi;

/// One plugin configuration's root context: the plugin once configured.
struct Root {
    plugin: Option<Rc<Plugin<Abi>>>,
}

/// The VM's environment as UTF-8 pairs. `std::env::vars()` panics on a variable that is not
/// UTF-8 (Envoy's `host_env_keys` can pass one): such a variable is skipped, and one named
/// like ours is kept lossily so the parser can reject it by name.
fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v): (OsString, OsString)| {
            let key = k.into_string().ok()?;
            match v.into_string() {
                Ok(value) => Some((key, value)),
                Err(raw) if key.starts_with("MARTY_") => {
                    Some((key, raw.to_string_lossy().into_owned()))
                }
                Err(_) => None,
            }
        })
        .collect()
}

impl Root {
    fn new() -> Self {
        Self { plugin: None }
    }

    /// Reads the plugin configuration; false makes Envoy reject it (the log says why).
    fn on_configure(&mut self, size: usize) -> bool {
        logger::refresh_level();
        let config = abi::plugin_configuration(size);
        match Settings::parse(&config, &environment()) {
            Ok(settings) => {
                info!(
                    "configured: service {:?}, environment {}, {} route(s)",
                    settings.service_name,
                    settings.environment.name(),
                    settings.routes.len()
                );
                for (level, line) in settings.notices() {
                    match level {
                        Notice::Info => info!("{line}"),
                        Notice::Warn => warn!("{line}"),
                    }
                }
                match Plugin::new(Abi::new(), settings) {
                    Ok(plugin) => {
                        self.plugin = Some(Rc::new(plugin));
                        abi::set_tick_period_ms(TICK_MS);
                        true
                    }
                    Err(e) => {
                        error!("invalid marty-resilience configuration: {e}");
                        false
                    }
                }
            }
            Err(e) => {
                // Returning false makes Envoy reject the configuration; the log says why.
                error!("invalid marty-resilience configuration: {e}");
                false
            }
        }
    }

    /// Envoy's housekeeping tick (every [`TICK_MS`]).
    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            if plugin.tick() {
                logger::refresh_level();
                #[cfg(feature = "test-trap")]
                test_trap::after_housekeeping();
            }
        }
    }

    /// A stream for the HTTP context `context_id`; `None` before a configuration is accepted.
    fn create_stream(&self, context_id: u32) -> Option<Stream<Abi>> {
        let plugin = self.plugin.clone()?;
        Some(Stream::new(context_id, plugin))
    }
}
