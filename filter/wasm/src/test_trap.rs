//! Test builds only (`--features test-trap`, built by `./scripts/build` as
//! `marty_resilience_test_trap.wasm`): a way to make the VM trap on purpose, so the Envoy
//! suite can test what a trap leaves behind (`integration/tests/reliability.rs`). The shipped
//! module has none of it (`./scripts/build` checks that the header name is not in it): nothing
//! a client sends can trap it.
//!
//! A request with `x-marty-test-trap: now` traps the VM in its request headers; with
//! `x-marty-test-trap: tick` it is let through untouched and the VM traps at its next
//! housekeeping tick, right after that tick published the VM's lease, so a test knows what the
//! lease held.

use std::cell::Cell;

use marty_resilience_core::host::{Host, Map};

use crate::abi::Abi;

const HEADER: &str = "x-marty-test-trap";

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// `true` when the request is the trap's own (the filter then leaves it alone).
pub fn on_request_headers() -> bool {
    match Abi::new().header(Map::RequestHeaders, HEADER).as_deref() {
        Some(b"now") => trap(),
        Some(b"tick") => {
            ARMED.with(|armed| armed.set(true));
            true
        }
        _ => false,
    }
}

/// Traps if a request asked for it at the tick.
pub fn after_housekeeping() {
    if ARMED.with(Cell::get) {
        trap();
    }
}

/// What a panic is on this target, without the panic machinery: Envoy reports it as
/// `Uncaught RuntimeError: unreachable`.
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}
