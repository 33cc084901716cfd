//! The marty-resilience Envoy filter: proxy-wasm glue over `marty-resilience-core`.
//!
//! Envoy runs one VM per worker (plus one on the main thread). Each VM loads the configuration
//! in [`Root::on_configure`]; state that must agree across workers (the breakers) lives in
//! proxy shared data under the plugin's `vm_id`; counters and gauges are Envoy stats, shared
//! by name across VMs. Every rule is in the core's `proxy` module: this crate reads the
//! configuration and the environment, hands proxy-wasm's callbacks to it, and implements its
//! host over the ABI ([`abi`]).

mod abi;
mod logger;

use std::ffi::OsString;
use std::rc::Rc;

use log::{error, info, warn};
use marty_resilience_core::config::{Notice, Settings};
use marty_resilience_core::proxy::scheduler::TICK_MS;
use marty_resilience_core::proxy::{self, Plugin, Stream};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use abi::Abi;

proxy_wasm::main! {{
    logger::install();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { plugin: None }) });
}}

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

impl Context for Root {}

impl RootContext for Root {
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

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            if plugin.tick() {
                logger::refresh_level();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(StreamContext(Stream::new(context_id, plugin))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// proxy-wasm's HTTP callbacks, handed to the core's [`Stream`].
struct StreamContext(Stream<Abi>);

fn action(action: proxy::Action) -> Action {
    match action {
        proxy::Action::Continue => Action::Continue,
        proxy::Action::Pause => Action::Pause,
    }
}

impl Context for StreamContext {
    fn on_done(&mut self) -> bool {
        self.0.on_done();
        true
    }
}

impl HttpContext for StreamContext {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        action(self.0.on_request_headers())
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(end_of_stream))
    }

    fn on_http_response_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_body(end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        action(self.0.on_response_trailers())
    }

    fn on_log(&mut self) {
        self.0.on_log();
    }
}
