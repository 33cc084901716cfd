//! The callbacks the module exports to Envoy (proxy-wasm ABI 0.2.1), handed to this VM's roots
//! and streams.
//!
//! In place of the SDK's dispatcher: that one keeps every context behind a `Box<dyn ...>` of
//! traits whose default methods reach every host call of the SDK (HTTP and gRPC callouts,
//! queues, buffers), all of which the module then carried, and it `panic!`s on a context id it
//! does not know. Here an unknown id (or a callback arriving while the same context is already
//! running) is answered with the harmless default. Callbacks the filter has no use for are not
//! exported; Envoy skips a callback the module does not export.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use marty_resilience_core::fast_map::FastMap;
use marty_resilience_core::proxy::{Action, Stream};

use crate::abi::Abi;
use crate::Root;

thread_local! {
    /// One root per plugin configuration sharing this VM, by context id.
    static ROOTS: RefCell<Vec<(u32, Root)>> = const { RefCell::new(Vec::new()) };
    /// The HTTP streams in flight, by context id.
    static STREAMS: RefCell<FastMap<u32, Stream<Abi>>> = RefCell::new(FastMap::default());
}

/// `Continue` and `Pause` as the ABI numbers them.
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

fn action(action: Action) -> u32 {
    match action {
        Action::Continue => CONTINUE,
        Action::Pause => PAUSE,
    }
}

/// Runs `f` on the root `context_id`; `None` when there is no such root (or it is busy).
fn with_root<T>(context_id: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
    ROOTS.with(|roots| {
        let mut roots = roots.try_borrow_mut().ok()?;
        let (_, root) = roots.iter_mut().find(|(id, _)| *id == context_id)?;
        Some(f(root))
    })
}

/// Runs `f` on the stream `context_id`; `None` when there is no such stream (or it is busy).
fn with_stream<T>(context_id: u32, f: impl FnOnce(&mut Stream<Abi>) -> T) -> Option<T> {
    STREAMS.with(|streams| {
        let mut streams = streams.try_borrow_mut().ok()?;
        Some(f(streams.get_mut(&context_id)?))
    })
}

extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor's entry point: Envoy calls it once, before any callback.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the constructors run once, here, as the WASI reactor model asks of `_initialize`.
    unsafe { __wasm_call_ctors() };
    crate::logger::install();
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// A block for the host to fill; `abi::owned` takes it back as a `Vec<u8>` of `size` bytes.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut block: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: the capacity is `size`; the bytes stay uninitialised until the host writes them.
    unsafe { block.set_len(size) };
    Box::into_raw(block.into_boxed_slice()).cast::<u8>()
}

// Neither `proxy_on_done` nor `proxy_on_log` is exported: a stream's end is handled in
// `proxy_on_delete`, which Envoy calls from the filter's `onDestroy` (after the access log,
// with the stream's info still readable), and Envoy skips a callback the module does not
// export. Two callbacks fewer per request, ~1.8k instructions each (docs/performance.md).

/// A root (no parent) per plugin, or an HTTP stream under its plugin's root.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    if parent_context_id == 0 {
        ROOTS.with(|roots| {
            if let Ok(mut roots) = roots.try_borrow_mut() {
                roots.retain(|(id, _)| *id != context_id);
                roots.push((context_id, Root::new()));
            }
        });
    } else if let Some(Some(stream)) =
        with_root(parent_context_id, |root| root.create_stream(context_id))
    {
        STREAMS.with(|streams| {
            if let Ok(mut streams) = streams.try_borrow_mut() {
                streams.insert(context_id, stream);
            }
        });
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool {
    with_root(context_id, |root| {
        root.on_configure(plugin_configuration_size)
    })
    .unwrap_or(false)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with_root(context_id, Root::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    end_of_stream: bool,
) -> u32 {
    #[cfg(feature = "test-trap")]
    if crate::test_trap::on_request_headers() {
        return CONTINUE;
    }
    with_stream(context_id, |s| action(s.on_request_headers(end_of_stream))).unwrap_or(CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _num_headers: usize,
    end_of_stream: bool,
) -> u32 {
    with_stream(context_id, |s| action(s.on_response_headers(end_of_stream))).unwrap_or(CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(
    context_id: u32,
    _body_size: usize,
    end_of_stream: bool,
) -> u32 {
    with_stream(context_id, |s| action(s.on_response_body(end_of_stream))).unwrap_or(CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    with_stream(context_id, |s| action(s.on_response_trailers())).unwrap_or(CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    let removed = STREAMS.with(|streams| {
        streams
            .try_borrow_mut()
            .ok()
            .and_then(|mut streams| streams.remove(&context_id))
    });
    if let Some(mut stream) = removed {
        stream.on_delete();
    } else {
        ROOTS.with(|roots| {
            if let Ok(mut roots) = roots.try_borrow_mut() {
                roots.retain(|(id, _)| *id != context_id);
            }
        });
    }
}
