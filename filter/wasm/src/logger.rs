//! Logging to Envoy without the SDK's logger, which unwraps the host's answer: a `proxy_log`
//! denied by `capability_restriction_config` would otherwise trap the VM.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::abi as host;

struct Logger;

static LOGGER: Logger = Logger;
/// The level Envoy logs the `wasm` component at, refreshed on every housekeeping tick so
/// `/logging?wasm=debug` takes effect without a reload.
static LEVEL: AtomicUsize = AtomicUsize::new(log::LevelFilter::Info as usize);

/// Installs the logger and a panic hook that logs the panic before the VM aborts.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        std::panic::set_hook(Box::new(|info| host::log(5, &info.to_string())));
    }
    // The level is read in on_configure: host calls are not for `_initialize`.
    log::set_max_level(log::LevelFilter::Info);
}

/// Follows Envoy's current level for the `wasm` component (a debug line costs a host call, so
/// only what Envoy would print is sent).
pub fn refresh_level() {
    let filter = match host::log_level() {
        Some(0) => log::LevelFilter::Trace,
        Some(1) => log::LevelFilter::Debug,
        Some(2) | None => log::LevelFilter::Info,
        Some(3) => log::LevelFilter::Warn,
        Some(4) => log::LevelFilter::Error,
        Some(_) => log::LevelFilter::Off,
    };
    LEVEL.store(filter as usize, Ordering::Relaxed);
    log::set_max_level(filter);
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() as usize <= LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        host::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
