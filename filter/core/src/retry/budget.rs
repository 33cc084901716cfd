//! A per-route retry budget kept in proxy shared data (as Finagle's `RetryBudget` and tower's
//! `retry::budget`): retries are allowed while the retries of the recent window stay under
//!
//! ```text
//! ratio × requests(window) + min_retries_per_second × window_seconds
//! ```
//!
//! so a route retries at most `ratio` of its traffic, plus a small floor that lets a quiet route
//! retry at all. Here `requests` counts original requests (first attempts), `retries` counts
//! attempts 2 and later, and `failures` counts failed attempts of either kind; the failure
//! ratio `failures / (requests + retries)` is what the `adaptive` backoff scales by.
//!
//! # The record
//!
//! A time-bucketed ring of [`SLOTS`] slots, each `window / SLOTS` wide, in ONE fixed-size
//! little-endian value (version byte, slot width, then per slot its epoch — the slot's
//! start in widths since time 0 — and its three counts). A slot serves epochs congruent to its
//! slot; it is reused lazily: [`add`] zeroes a slot whose epoch is older than the one it adds
//! to, and [`totals`] counts only slots of the last `SLOTS` epochs. So a count added at time
//! `t` is counted exactly while `now < (t / width + SLOTS) × width`: the window covers between
//! `(SLOTS − 1) × width` and `SLOTS × width` of history. The width is `window / SLOTS`
//! rounded down and at least 1 ns; a record of another width (the window was reconfigured)
//! reads as empty and the next [`add`] starts it afresh.
//!
//! # Shared-data traffic
//!
//! Per-request shared-data traffic is what the filter avoids: a read-modify-write per request
//! would serialise every worker on Envoy's one shared-data lock. Instead each worker counts its
//! requests, retries and failures locally in a [`Pending`], and on its tick [`flush`]es them
//! with one bounded compare-and-swap loop (as [`crate::breaker::update`] does for the breaker).
//! The flush recomputes the route's [`Snapshot`] from the record it read or wrote, and the
//! worker caches it: retry decisions and the adaptive failure ratio come from the cache, so
//! they are at most one tick stale. A flush that loses its races [`MAX_CAS_ATTEMPTS`] times
//! keeps its counts for the next tick, so no count is lost, only delayed. Counts are dated at
//! the flush, not when they happened: at most one tick late in a window of seconds.
//!
//! The key is [`crate::keys::budget`]: `marty.resilience/v1/budget/<route>`, created at configure time
//! with [`ensure`] (as breaker keys are), since keys cannot be deleted.

use crate::le::Reader;
use crate::store::{self, Codec, SharedStore, UpdateError};
use crate::NANOS_PER_SEC;

/// Slots of the ring.
pub const SLOTS: usize = 10;

/// Layout version, first byte of every value. A value of another version is treated as absent.
pub const RECORD_VERSION: u8 = 1;

const SLOT_LEN: usize = 8 + 4 + 4 + 4;
/// Length of every encoded record.
pub const RECORD_LEN: usize = 1 + 8 + SLOTS * SLOT_LEN;

/// Finagle's defaults: a 10 s window, 20 % of requests, 10 retries a second.
pub const DEFAULT_WINDOW_NS: u64 = 10 * NANOS_PER_SEC;
pub const DEFAULT_RATIO: f64 = 0.2;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

/// A route's budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// How far back requests and retries count (nanoseconds).
    pub window_ns: u64,
    /// Retries allowed per original request (0.2: one retry per five requests). Negative or
    /// NaN counts as 0.
    pub ratio: f64,
    /// Retries allowed each second of the window however few requests there are.
    pub min_retries_per_second: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            window_ns: DEFAULT_WINDOW_NS,
            ratio: DEFAULT_RATIO,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
        }
    }
}

impl Policy {
    /// Retries the window allows for `requests` original requests.
    pub fn allowance(&self, requests: u64) -> f64 {
        let ratio = if self.ratio > 0.0 { self.ratio } else { 0.0 };
        let window_secs = self.window_ns as f64 / NANOS_PER_SEC as f64;
        ratio * requests as f64 + f64::from(self.min_retries_per_second) * window_secs
    }
}

/// The counts of one slot of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// Start of the slot, in slot widths since time 0.
    pub epoch: u64,
    pub requests: u32,
    pub retries: u32,
    pub failures: u32,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.requests == 0 && self.retries == 0 && self.failures == 0
    }
}

/// One route's budget, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Width of every slot (nanoseconds); 0 in a fresh record.
    pub width_ns: u64,
    /// Slot `i` holds an epoch `e` with `e % SLOTS == i`.
    pub slots: [Slot; SLOTS],
}

/// The slot width for `window_ns`: a tenth of it, at least 1 ns.
pub fn slot_width(window_ns: u64) -> u64 {
    (window_ns / SLOTS as u64).max(1)
}

fn slot_of(epoch: u64) -> usize {
    // Less than SLOTS, so the cast is exact.
    (epoch % SLOTS as u64) as usize
}

impl Record {
    /// Fixed little-endian layout of [`RECORD_LEN`] bytes: version, width, then per slot its
    /// epoch (u64) and requests, retries, failures (u32 each).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.width_ns.to_le_bytes());
        for slot in &self.slots {
            out.extend_from_slice(&slot.epoch.to_le_bytes());
            for n in [slot.requests, slot.retries, slot.failures] {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        out
    }

    /// Total: any bytes either decode to a record or give `None` (wrong version or length, or
    /// a slot with counts outside its epoch's slot).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.u8()? != RECORD_VERSION {
            return None;
        }
        let mut record = Self {
            width_ns: r.u64()?,
            ..Self::default()
        };
        for (i, slot) in record.slots.iter_mut().enumerate() {
            *slot = Slot {
                epoch: r.u64()?,
                requests: r.u32()?,
                retries: r.u32()?,
                failures: r.u32()?,
            };
            if !slot.is_empty() && slot_of(slot.epoch) != i {
                return None;
            }
        }
        if !r.is_done() {
            return None;
        }
        Some(record)
    }
}

/// `rec` with the counts added to the slot of `now_ns` (saturating). A slot last used for
/// an older epoch is zeroed first; one holding a newer epoch (another worker's clock read
/// later than ours by a whole window, which Envoy's process-wide monotonic clock makes
/// theoretical) keeps its epoch and takes the counts, so none is lost.
pub fn add(
    rec: &Record,
    now_ns: u64,
    window_ns: u64,
    requests: u32,
    retries: u32,
    failures: u32,
) -> Record {
    let width = slot_width(window_ns);
    let mut next = if rec.width_ns == width {
        rec.clone()
    } else {
        Record {
            width_ns: width,
            ..Record::default()
        }
    };
    let epoch = now_ns / width;
    if let Some(slot) = next.slots.get_mut(slot_of(epoch)) {
        // An empty slot holds nothing to keep, whatever epoch it names: it takes ours. (The
        // decoder accepts any epoch in an empty slot; keeping a newer one that is not of
        // this slot would write a record the decoder then refuses as corrupt.)
        if slot.epoch < epoch || slot.is_empty() {
            *slot = Slot {
                epoch,
                ..Slot::default()
            };
        }
        slot.requests = slot.requests.saturating_add(requests);
        slot.retries = slot.retries.saturating_add(retries);
        slot.failures = slot.failures.saturating_add(failures);
    }
    next
}

/// `(requests, retries, failures)` of the slots inside the window at `now_ns`: those of the
/// last [`SLOTS`] epochs, the current one included (and any from a later epoch, see [`add`]).
pub fn totals(rec: &Record, now_ns: u64, window_ns: u64) -> (u64, u64, u64) {
    let width = slot_width(window_ns);
    if rec.width_ns != width {
        return (0, 0, 0);
    }
    let epoch = now_ns / width;
    rec.slots
        .iter()
        .filter(|b| b.epoch.saturating_add(SLOTS as u64) > epoch)
        .fold((0, 0, 0), |(q, r, f), b| {
            (
                q + u64::from(b.requests),
                r + u64::from(b.retries),
                f + u64::from(b.failures),
            )
        })
}

/// Whether one more retry fits: the window's retries are under [`Policy::allowance`].
pub fn allows_retry(rec: &Record, now_ns: u64, policy: &Policy) -> bool {
    let (requests, retries, _) = totals(rec, now_ns, policy.window_ns);
    (retries as f64) < policy.allowance(requests)
}

/// Failed attempts over attempts (`requests + retries`) in the window, in `[0, 1]`; 0 when
/// there were none.
pub fn failure_ratio(rec: &Record, now_ns: u64, window_ns: u64) -> f64 {
    let (requests, retries, failures) = totals(rec, now_ns, window_ns);
    ratio(failures, requests.saturating_add(retries))
}

fn ratio(failures: u64, attempts: u64) -> f64 {
    if attempts == 0 {
        0.0
    } else {
        (failures as f64 / attempts as f64).clamp(0.0, 1.0)
    }
}

/// A worker's counts not yet flushed to shared data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub requests: u32,
    pub retries: u32,
    pub failures: u32,
}

impl Pending {
    /// An original request (first attempt) went upstream.
    pub fn request(&mut self) {
        self.requests = self.requests.saturating_add(1);
    }
    /// A retry (attempt 2 or later) went upstream.
    pub fn retry(&mut self) {
        self.retries = self.retries.saturating_add(1);
    }
    /// An attempt failed.
    pub fn failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What a worker caches between flushes: the window's totals as of its last flush.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
    pub requests: u64,
    pub retries: u64,
    pub failures: u64,
    /// [`allows_retry`] on the record, as of the flush.
    pub allows_retry: bool,
    /// [`failure_ratio`] of the record, as of the flush: the `adaptive` backoff's input.
    pub failure_ratio: f64,
}

impl Snapshot {
    pub fn of(rec: &Record, now_ns: u64, policy: &Policy) -> Self {
        let (requests, retries, failures) = totals(rec, now_ns, policy.window_ns);
        Self {
            requests,
            retries,
            failures,
            allows_retry: (retries as f64) < policy.allowance(requests),
            failure_ratio: ratio(failures, requests.saturating_add(retries)),
        }
    }

    /// Whether one more retry fits once this worker's unflushed counts are added to the
    /// snapshot: tighter than [`Snapshot::allows_retry`] between flushes, since a worker then
    /// stops at the headroom it saw instead of retrying for a whole tick on a stale `true`.
    pub fn allows_retry_with(&self, pending: &Pending, policy: &Policy) -> bool {
        let requests = self.requests.saturating_add(u64::from(pending.requests));
        let retries = self.retries.saturating_add(u64::from(pending.retries));
        (retries as f64) < policy.allowance(requests)
    }
}

/// The result of a landed [`flush`].
#[derive(Clone, Debug, PartialEq)]
pub struct Flushed {
    /// The record as it now stands (what was written, or what was read).
    pub record: Record,
    pub snapshot: Snapshot,
    /// The stored value did not decode and was treated as fresh (and overwritten, if there
    /// was anything to write).
    pub was_corrupt: bool,
}

/// Adds `pending` to the route's record at `key` with a bounded compare-and-swap loop, and
/// returns the record's [`Snapshot`] at `now_ns`. On success `pending` is emptied; on any error
/// it is left as it was, to be flushed on the next tick. With nothing pending it only reads
/// (the snapshot still moves with other workers' counts and the window), and never writes.
pub fn flush<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    pending: &mut Pending,
    now_ns: u64,
    policy: &Policy,
) -> Result<Flushed, UpdateError> {
    let counts = *pending;
    let (record, was_corrupt) = store::update_value(store, key, |current: &Record| {
        (!counts.is_empty()).then(|| {
            add(
                current,
                now_ns,
                policy.window_ns,
                counts.requests,
                counts.retries,
                counts.failures,
            )
        })
    })?;
    *pending = Pending::default();
    Ok(Flushed {
        snapshot: Snapshot::of(&record, now_ns, policy),
        record,
        was_corrupt,
    })
}

impl Codec for Record {
    fn encode(&self) -> Vec<u8> {
        Record::encode(self)
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Record::decode(bytes)
    }
}

/// The record at `key`: see [`store::load_value`].
pub fn load<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
) -> Result<(Record, u32, bool), UpdateError> {
    store::load_value(store, key)
}

/// Creates `key` with a fresh record unless it holds a readable one: see
/// [`store::ensure_value`].
pub fn ensure<S: SharedStore + ?Sized>(store: &S, key: &str) -> Result<bool, UpdateError> {
    store::ensure_value::<S, Record>(store, key)
}
