//! Requests held by a delay (an injected fault, or a retry's backoff in the upstream
//! placement), resumed from the root's tick.
//!
//! The tick runs every [`TICK_MS`] for housekeeping and every [`FAST_TICK_MS`] while anything
//! is held. Envoy restarts the timer whenever the period is set, so the period is set only when
//! it changes: setting it on every held request would keep pushing the tick back on a worker
//! that holds requests more often than every 5 ms, releasing them late and stalling
//! housekeeping.

use std::cell::{Cell, RefCell};

use crate::host::Host;

/// Tick period while requests are held: the resolution of delays.
pub const FAST_TICK_MS: u32 = 5;
/// Tick period otherwise: breaker housekeeping.
pub const TICK_MS: u32 = 250;

/// A held request.
#[derive(Clone, Debug, PartialEq)]
pub struct Parked<R> {
    pub context_id: u32,
    pub until_ns: u64,
    /// What to do when the time is up instead of resuming (an abort after a delay).
    pub then: Option<R>,
}

pub struct Scheduler<R> {
    parked: RefCell<Vec<Parked<R>>>,
    fast: Cell<bool>,
}

impl<R> Default for Scheduler<R> {
    fn default() -> Self {
        Self {
            parked: RefCell::new(Vec::new()),
            fast: Cell::new(false),
        }
    }
}

impl<R> Scheduler<R> {
    pub fn park<H: Host>(&self, host: &H, parked: Parked<R>) {
        self.parked.borrow_mut().push(parked);
        if !self.fast.replace(true) {
            host.set_tick_period_ms(FAST_TICK_MS);
        }
    }

    /// Forgets a held request whose stream ended: it must never be resumed.
    pub fn unpark(&self, context_id: u32) {
        self.parked
            .borrow_mut()
            .retain(|parked| parked.context_id != context_id);
    }

    /// Takes every held request whose time is up; slows the tick once none is left.
    pub fn take_due<H: Host>(&self, host: &H, now_ns: u64) -> Vec<Parked<R>> {
        let due = {
            let mut parked = self.parked.borrow_mut();
            let (due, waiting): (Vec<_>, Vec<_>) =
                parked.drain(..).partition(|p| p.until_ns <= now_ns);
            *parked = waiting;
            due
        };
        if self.parked.borrow().is_empty() && self.fast.replace(false) {
            host.set_tick_period_ms(TICK_MS);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.parked.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.borrow().is_empty()
    }
}
