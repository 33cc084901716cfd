//! The marty-resilience Envoy filter: proxy-wasm glue over `marty-resilience-core`.
//!
//! Envoy runs one VM per worker (plus one on the main thread). Each VM loads the configuration
//! in [`Root::on_configure`]; state that must agree across workers (the breakers) lives in
//! proxy shared data under the plugin's `vm_id`; counters and gauges are Envoy stats, shared
//! by name across VMs.

mod health;
mod host;
mod logger;
mod metrics;
mod plugin;
mod stream;

use std::rc::Rc;

use log::{error, info};
use marty_resilience_core::config::Settings;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use plugin::Plugin;
use stream::Stream;

proxy_wasm::main! {{
    logger::install();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { plugin: None }) });
}}

struct Root {
    plugin: Option<Rc<Plugin>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        logger::refresh_level();
        plugin::calibrate_wall_clock();
        let config = host::plugin_configuration(size);
        let env: Vec<(String, String)> = std::env::vars().collect();
        match Settings::parse(&config, &env) {
            Ok(settings) => {
                info!(
                    "configured: service {:?}, environment {}, {} route(s)",
                    settings.service_name,
                    settings.environment.name(),
                    settings.routes.len()
                );
                let retries = std::iter::once(&settings.defaults)
                    .chain(settings.routes.values())
                    .any(|p| p.retry.enabled);
                if retries && settings.mode == marty_resilience_core::config::Mode::Downstream {
                    info!(
                        "retry: backoff_strategy times the tries only where the filter is also an \
                         upstream HTTP filter with mode \"upstream\"; elsewhere Envoy's \
                         retry_back_off does (docs/retries.md)"
                    );
                }
                self.plugin = Some(Rc::new(Plugin::new(settings)));
                host::set_tick_period_ms(plugin::TICK_MS);
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject the configuration; the log says why.
                error!("invalid marty-resilience configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(Stream::new(context_id, plugin)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
