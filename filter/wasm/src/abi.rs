//! The [`Host`] over the proxy-wasm ABI, as results that never panic.
//!
//! The SDK's wrappers `panic!` on any status they did not expect (rust-sdk #82, #185), and a
//! panic traps the VM and every request on it. These declare the same ABI 0.2.1 imports with a
//! plain `u32` status and return `Option`/`Result`, so an odd answer from the host is handled
//! like any other input.

use std::cell::RefCell;
use std::ptr::{null, null_mut};

use marty_resilience_core::host::{Host, LocalReply, Map, MetricKind};
use marty_resilience_core::proxy::reply::GRPC_UNAVAILABLE;
use marty_resilience_core::store::{SharedStore, StoreError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
}

/// Writes a log line at an ABI level (0 trace .. 5 critical); a refusal loses only the line.
pub fn log(level: u32, message: &str) {
    // SAFETY: pointer to a live borrow for the duration of the call.
    unsafe {
        proxy_log(level, message.as_ptr(), message.len());
    }
}

/// The level Envoy logs Wasm at (ABI level numbers), if the host says.
pub fn log_level() -> Option<u32> {
    let mut level = 0;
    // SAFETY: pointer to a live local.
    unsafe { (proxy_get_log_level(&mut level) == OK).then_some(level) }
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn clock_time_get(clock_id: u32, precision: u64, time: *mut u64) -> u32;
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate` ([`crate::exports`]).
///
/// # Safety
/// `data` must be null or a block of `size` bytes the host just allocated with that export.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// The host of one VM. Zero-cost apart from the VM's random generator.
pub struct Abi {
    rng: RefCell<SmallRng>,
}

impl Abi {
    pub fn new() -> Self {
        Self {
            // Seeded from WASI `random_get` (Envoy's entropy); a fixed seed only if that fails.
            rng: RefCell::new(
                SmallRng::from_rng(rand::rngs::OsRng)
                    .unwrap_or_else(|_| SmallRng::seed_from_u64(0x006d_6172_7479)),
            ),
        }
    }
}

/// Longest property path encoded on the stack; every path the filter reads is far shorter.
const PATH_ON_STACK: usize = 64;

/// The ABI's property path encoding, each segment followed by a NUL, handed to `read`. Encoded
/// on the stack: the route name is read on every request, and a heap block per read (allocate,
/// free) is a cost for nothing.
fn with_encoded_path<T>(path: &[&str], read: impl FnOnce(&[u8]) -> T) -> T {
    let len: usize = path.iter().map(|p| p.len() + 1).sum();
    if len > PATH_ON_STACK {
        let mut encoded = Vec::with_capacity(len);
        for segment in path {
            encoded.extend_from_slice(segment.as_bytes());
            encoded.push(0);
        }
        return read(&encoded);
    }
    let mut buffer = [0u8; PATH_ON_STACK];
    let mut at = 0;
    for segment in path {
        let end = at + segment.len();
        if let Some(slot) = buffer.get_mut(at..end) {
            slot.copy_from_slice(segment.as_bytes());
        }
        // The NUL is already there.
        at = end + 1;
    }
    read(buffer.get(..len).unwrap_or_default())
}

impl Host for Abi {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        with_encoded_path(path, |encoded| {
            let mut data = null_mut();
            let mut size = 0;
            // SAFETY: pointers to live locals; the returned block is handed to `owned` once.
            unsafe {
                match proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) {
                    OK => owned(data, size),
                    _ => None,
                }
            }
        })
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: as in `property`.
        unsafe {
            match proxy_get_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            ) {
                OK => owned(data, size),
                _ => None,
            }
        }
    }

    fn set_header(&self, map: Map, name: &str, value: &str) {
        // SAFETY: pointers to live borrows for the duration of the call.
        unsafe {
            proxy_replace_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            );
        }
    }

    fn remove_header(&self, map: Map, name: &str) {
        // SAFETY: pointer to a live borrow for the duration of the call.
        unsafe {
            proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len());
        }
    }

    fn set_filter_state(&self, name: &str, value: &str) {
        // SAFETY: pointers to live borrows for the duration of the call.
        unsafe {
            proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
        }
    }

    fn send_local_reply(&self, reply: &LocalReply) -> bool {
        let serialized = serialize_pairs(&reply.headers);
        let grpc_status = reply.grpc_status.map_or(-1, |code| {
            i32::try_from(code).unwrap_or(GRPC_UNAVAILABLE as i32)
        });
        // SAFETY: all pointers are to live locals for the duration of the call.
        unsafe {
            proxy_send_local_response(
                u32::from(reply.status),
                reply.details.as_ptr(),
                reply.details.len(),
                if reply.body.is_empty() {
                    null()
                } else {
                    reply.body.as_ptr()
                },
                reply.body.len(),
                serialized.as_ptr(),
                serialized.len(),
                grpc_status,
            ) == OK
        }
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let mut id = 0;
        // SAFETY: pointers to live locals.
        unsafe {
            (proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) == OK)
                .then_some(id)
        }
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        // SAFETY: plain values. A failure only loses a count.
        unsafe {
            proxy_increment_metric(id, delta);
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        // SAFETY: plain values.
        unsafe {
            proxy_record_metric(id, value);
        }
    }

    fn get_metric(&self, id: u32) -> Option<u64> {
        let mut value = 0;
        // SAFETY: pointer to a live local.
        unsafe { (proxy_get_metric(id, &mut value) == OK).then_some(value) }
    }

    /// WASI `clock_time_get(MONOTONIC)`: one process-wide time base, so deadlines written by
    /// one worker mean the same to every other.
    fn monotonic_ns(&self) -> u64 {
        const MONOTONIC: u32 = 1;
        let mut now = 0;
        // SAFETY: pointer to a live local; on error `now` stays 0 and deadlines simply expire.
        unsafe {
            clock_time_get(MONOTONIC, 1, &mut now);
        }
        now
    }

    fn unix_ms(&self) -> u64 {
        let mut now = 0;
        // SAFETY: pointer to a live local.
        unsafe {
            proxy_get_current_time_nanoseconds(&mut now);
        }
        now / 1_000_000
    }

    fn draw(&self) -> f64 {
        self.rng.borrow_mut().gen::<f64>()
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        // SAFETY: plain value.
        unsafe { proxy_set_effective_context(context_id) == OK }
    }

    fn resume_request(&self) -> bool {
        const HTTP_REQUEST: u32 = 0;
        // SAFETY: plain value.
        unsafe { proxy_continue_stream(HTTP_REQUEST) == OK }
    }

    fn set_tick_period_ms(&self, period: u32) {
        set_tick_period_ms(period);
    }
}

/// Sets the calling VM's root tick period.
pub fn set_tick_period_ms(period: u32) {
    // SAFETY: plain value.
    unsafe {
        proxy_set_tick_period_milliseconds(period);
    }
}

/// The plugin configuration bytes (empty when none was given).
pub fn plugin_configuration(size: usize) -> Vec<u8> {
    const PLUGIN_CONFIGURATION: u32 = 7;
    let mut data = null_mut();
    let mut len = 0;
    // SAFETY: as in `property`.
    unsafe {
        match proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) {
            OK => owned(data, len).unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// The ABI's header-map encoding: count, then (name length, value length) pairs, then each
/// name and value followed by a NUL.
fn serialize_pairs(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// The host's shared data (per `vm_id`, shared by every worker of the Envoy process).
impl SharedStore for Abi {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        let mut cas = 0;
        // SAFETY: as in `property`.
        unsafe {
            match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
                OK => Ok(Some((owned(data, size).unwrap_or_default(), cas))),
                NOT_FOUND => Ok(None),
                status => Err(StoreError::Host(status)),
            }
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        // SAFETY: pointers to live borrows for the duration of the call.
        unsafe {
            match proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) {
                OK => Ok(()),
                CAS_MISMATCH => Err(StoreError::CasMismatch),
                status => Err(StoreError::Host(status)),
            }
        }
    }
}
