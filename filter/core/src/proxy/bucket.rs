//! What one VM knows of one bucket: its resolved route, its stat ids, its last view of the
//! shared breaker record, and its retry-budget counts.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::breaker::{self, Record, State, Ticket};
use crate::host::Host;
use crate::lease;
use crate::proxy::take_slot;
use crate::retry::budget;
use crate::retry::reports::AttemptReports;
use crate::routes::Route;
use crate::stats::{RouteStats, Stat};

pub struct BucketState {
    /// The latest resolution of the bucket's route (policy may change with metadata).
    pub route: RefCell<Rc<Route>>,
    pub stats: RouteStats,
    /// The record as this VM last read or wrote it: lets a success skip the write when there
    /// is no failure streak to reset.
    pub view: RefCell<Option<Record>>,
    /// This worker's retry-budget counts since the last flush, and the budget as of it.
    pub budget: RefCell<(budget::Pending, Option<budget::Snapshot>)>,
    /// `circuit_opened_total` as it stood before the read that last showed the breaker
    /// CLOSED (see [`breaker::admit_cached`]).
    pub opened_as_of_view: Cell<Option<u64>>,
    /// The route's `enable_metrics`, as of its latest resolution.
    metrics_on: Cell<bool>,
    /// A request used the bucket since the tick last looked (set on the hot path: no host call).
    pub used: Cell<bool>,
    /// When the tick last saw the bucket used (monotonic ns).
    pub last_used_ns: Cell<u64>,
    /// Requests and successes counted since the last flush, not yet in the Envoy counters
    /// (see [`Deferred`]).
    deferred_requests: Cell<u64>,
    deferred_success: Cell<u64>,
    /// Uncapped `active_requests` moves not yet in the Envoy gauge (see [`InFlight::Deferred`]).
    deferred_active: Cell<i64>,
    /// The VM forgot the bucket (aged out) while streams may still hold it: their moves then
    /// go to Envoy at once, since no flush will look at this bucket again.
    retired: Cell<bool>,
    /// Slots of `active_requests` / `active_faults` this VM holds in the bucket: counted here
    /// next to every gauge move (no host call), published by the tick in this VM's lease so
    /// that the slots come back if the VM dies ([`crate::lease`]).
    held_requests: Cell<u32>,
    held_faults: Cell<u32>,
    /// Whether Envoy reports this bucket's tries in its responses, and the route epoch that
    /// was learned in ([`AttemptReports`]).
    attempt_reports: Cell<(u64, AttemptReports)>,
    /// The VM said once that the bucket's responses carry no attempt count.
    unreported_logged: Cell<bool>,
}

/// How a request holds its `active_requests` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlight {
    /// No slot.
    None,
    /// Moved on the Envoy gauge as it happened: the route has a `max_concurrent_requests` cap,
    /// which reads the gauge and must see every worker's requests at once.
    Gauge,
    /// Added up in the VM and moved on the gauge at the next flush: with no cap, nothing
    /// reads the gauge on the request path, and two gauge moves per request (~1k instructions
    /// each) are saved. The gauge is then at most one tick behind.
    Deferred,
}

/// A gauge slot a request can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `active_requests` (`max_concurrent_requests`).
    Request,
    /// `active_faults` (`max_active_faults`).
    Fault,
}

/// The per-request counters of the healthy path. Every request and nearly every response
/// would move them, and a counter increment is a host call (~1k instructions), so a worker
/// adds them up in its own memory and the tick adds the sums to Envoy's counters
/// ([`Plugin::flush_counts`](super::Plugin::flush_counts)): they are at most one tick
/// behind. The other counters (failures, rejections, faults, retries) move as they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deferred {
    Requests,
    Success,
}

impl BucketState {
    pub fn new(route: Route, stats: RouteStats) -> Self {
        Self {
            metrics_on: Cell::new(route.policy.circuit_breaker.enable_metrics),
            used: Cell::new(true),
            last_used_ns: Cell::new(0),
            route: RefCell::new(Rc::new(route)),
            stats,
            view: RefCell::new(None),
            budget: RefCell::new((budget::Pending::default(), None)),
            opened_as_of_view: Cell::new(None),
            deferred_requests: Cell::new(0),
            deferred_success: Cell::new(0),
            deferred_active: Cell::new(0),
            retired: Cell::new(false),
            held_requests: Cell::new(0),
            held_faults: Cell::new(0),
            attempt_reports: Cell::new((0, AttemptReports::Unknown)),
            unreported_logged: Cell::new(false),
        }
    }

    pub fn route(&self) -> Rc<Route> {
        self.route.borrow().clone()
    }

    /// Takes a new resolution of the bucket's route (its policy may have changed).
    pub fn set_route(&self, route: Route) {
        self.metrics_on
            .set(route.policy.circuit_breaker.enable_metrics);
        *self.route.borrow_mut() = Rc::new(route);
    }

    /// Adds `n` to a per-request counter, unless the route has `enable_metrics: false`.
    /// (Gauges and transition counters, which the filter reads, are never skipped.)
    pub fn count<H: Host>(&self, host: &H, counter: Stat, n: i64) {
        if self.metrics_on.get() {
            counter.add(host, n);
        }
    }

    /// Adds one to a deferred counter; `false` when the route keeps no per-request counters
    /// (`enable_metrics: false`).
    pub fn count_deferred(&self, counter: Deferred) -> bool {
        if !self.metrics_on.get() {
            return false;
        }
        let cell = self.deferred(counter);
        cell.set(cell.get().saturating_add(1));
        true
    }

    /// Moves the in-flight count of an uncapped slot by `delta`: in the VM (`true`, to be
    /// flushed), or on the gauge at once when the bucket is retired (`false`).
    pub fn move_active_deferred<H: Host>(&self, host: &H, delta: i64) -> bool {
        if self.retired.get() {
            self.stats.active_requests.add(host, delta);
            self.held_moved(delta);
            return false;
        }
        self.deferred_active
            .set(self.deferred_active.get().saturating_add(delta));
        true
    }

    /// The VM forgets the bucket: what it still holds goes to Envoy now, and later moves go
    /// straight to the gauge.
    pub fn retire<H: Host>(&self, host: &H) {
        self.flush_deferred(host);
        self.retired.set(true);
    }

    fn deferred(&self, counter: Deferred) -> &Cell<u64> {
        match counter {
            Deferred::Requests => &self.deferred_requests,
            Deferred::Success => &self.deferred_success,
        }
    }

    /// Adds the deferred counts to the Envoy counters, and the deferred in-flight moves to the
    /// gauge.
    pub fn flush_deferred<H: Host>(&self, host: &H) {
        for (counter, stat) in [
            (Deferred::Requests, self.stats.requests),
            (Deferred::Success, self.stats.success),
        ] {
            let n = self.deferred(counter).replace(0);
            if n > 0 {
                stat.add(host, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let active = self.deferred_active.replace(0);
        if active != 0 {
            self.stats.active_requests.add(host, active);
            self.held_moved(active);
        }
    }

    fn slot(&self, slot: Slot) -> (Stat, &Cell<u32>) {
        match slot {
            Slot::Request => (self.stats.active_requests, &self.held_requests),
            Slot::Fault => (self.stats.active_faults, &self.held_faults),
        }
    }

    /// Takes a slot of the gauge's cap (`cap == 0`: no cap); see [`take_slot`].
    pub fn take_slot<H: Host>(&self, host: &H, slot: Slot, cap: u32) -> bool {
        let (gauge, held) = self.slot(slot);
        let taken = take_slot(host, gauge, cap);
        if taken {
            held.set(held.get().saturating_add(1));
        }
        taken
    }

    /// What this VM holds of `active_requests` after it moved the gauge by `delta` for
    /// uncapped slots (their lease follows the gauge, not the requests).
    fn held_moved(&self, delta: i64) {
        let held = i64::from(self.held_requests.get()).saturating_add(delta);
        self.held_requests
            .set(u32::try_from(held.max(0)).unwrap_or(u32::MAX));
    }

    /// Gives back a slot taken with [`Self::take_slot`].
    pub fn give_back<H: Host>(&self, host: &H, slot: Slot) {
        let (gauge, held) = self.slot(slot);
        gauge.add(host, -1);
        held.set(held.get().saturating_sub(1));
    }

    /// The slots this VM holds in the bucket, for its lease (`None`: none).
    pub fn held(&self) -> Option<lease::BucketSlots> {
        let (requests, faults) = (self.held_requests.get(), self.held_faults.get());
        (requests > 0 || faults > 0).then(|| lease::BucketSlots {
            stat_name: self.route.borrow().stat_name.clone(),
            requests,
            faults,
        })
    }

    /// What is known of the bucket's attempt reports in the route epoch `epoch` (nothing in
    /// a new epoch).
    pub fn attempt_reports(&self, epoch: u64) -> AttemptReports {
        match self.attempt_reports.get() {
            (learned_in, known) if learned_in == epoch => known,
            _ => AttemptReports::Unknown,
        }
    }

    /// Records what a response taught about attempt reports in `epoch`; `true` the first time
    /// the VM learns that the bucket's responses carry none (to say so once).
    pub fn learned_attempt_reports(&self, epoch: u64, known: AttemptReports) -> bool {
        self.attempt_reports.set((epoch, known));
        known == AttemptReports::NotReported && !self.unreported_logged.replace(true)
    }

    /// Admission from this VM's view when no worker can have opened the breaker since: one
    /// counter read instead of a shared-data read, which must copy the record into the VM.
    pub fn admit_cached<H: Host>(&self, host: &H) -> Option<Ticket> {
        breaker::admit_cached(
            self.view.borrow().as_ref(),
            self.opened_as_of_view.get(),
            self.stats.opened.get(host),
        )
    }

    /// Nothing for the tick to do: CLOSED with no failure streak as of the last read, and no
    /// worker has opened the breaker since (the state gauge is then already right).
    pub fn is_quiet<H: Host>(&self, host: &H) -> bool {
        self.admit_cached(host).is_some()
            && self
                .view
                .borrow()
                .as_ref()
                .is_some_and(|v| v.consecutive_failures == 0 && v.state == State::Closed)
    }
}
