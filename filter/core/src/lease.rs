//! Slots held by a VM that is gone: the leases that give them back.
//!
//! `active_requests`, `active_faults` and `counters_unflushed` are Envoy gauges moved +1/-1 by
//! every worker. A VM that traps never makes its -1s, and the gauges outlive it (under
//! `FAIL_RELOAD` the fresh VM finds them as they were), so each trap would lower the caps for
//! good. So each configured plugin on each VM that holds slots keeps a *lease* in one
//! shared-data record per instance: its id, a heartbeat and what it holds per gauge. The
//! request path only counts its holdings in its own memory (no host call); the housekeeping
//! tick publishes them ([`renew`]). A lease whose heartbeat is older than [`STALE_NS`] belongs
//! to a VM that no longer ticks: the first live VM to see it claims it (one CAS) and subtracts
//! its holdings from the gauges. The claimed entry stays as a tombstone for
//! [`TOMBSTONE_NS`], so a VM that was only slow finds it, adds back what was subtracted for it
//! and takes a fresh lease instead of its slots being given back twice.

use crate::le::Reader;
use crate::store::{self, Codec, SharedStore, UpdateError};
use crate::NANOS_PER_SEC;

/// Layout version (in the key and the first byte).
pub const RECORD_VERSION: u8 = 1;

/// A lease not renewed for this long belongs to a VM that no longer ticks (the tick is 250 ms,
/// the heartbeat at most [`HEARTBEAT_NS`] apart): it is claimed.
pub const STALE_NS: u64 = 3 * NANOS_PER_SEC;

/// A live lease is rewritten at least this often, even when its holdings did not change.
pub const HEARTBEAT_NS: u64 = NANOS_PER_SEC;

/// How long a claimed lease is remembered, for its VM to learn it was claimed if it wakes up.
pub const TOMBSTONE_NS: u64 = 300 * NANOS_PER_SEC;

/// Most leases in the record: one per VM and configuration holding slots. Past it a VM holds
/// slots without a lease (as before leases existed) until one is free.
pub const MAX_LEASES: usize = 256;

/// Most buckets in one lease (a VM holds slots only in buckets it knows, bounded by the
/// shared bucket registry).
const MAX_BUCKETS: usize = crate::registry::MAX_REGISTERED + 1;

/// Slots one VM holds in one bucket's gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketSlots {
    /// The bucket's stat name (its gauges are `<prefix>.route.<stat_name>.active_*`).
    pub stat_name: String,
    pub requests: u32,
    pub faults: u32,
}

/// What one VM holds: its +1s on the gauges not yet matched by a -1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Its +1 on `counters_unflushed` (0 or 1).
    pub unflushed: u32,
    /// Only buckets with a slot held.
    pub buckets: Vec<BucketSlots>,
}

impl Holdings {
    pub fn is_empty(&self) -> bool {
        self.unflushed == 0 && self.buckets.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: u32,
    /// Monotonic time of its last renewal; for a tombstone, when it was claimed.
    pub heartbeat_ns: u64,
    /// Claimed: its holdings were given back (and are then empty).
    pub claimed: bool,
    pub holdings: Holdings,
}

/// The record: every lease of one plugin instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leases {
    /// The id the next new lease gets.
    pub next_id: u32,
    pub leases: Vec<Lease>,
}

impl Codec for Leases {
    /// `version u8 | next_id u32 | count u16 | count × (id u32 | heartbeat_ns u64 | claimed u8
    /// | unflushed u32 | buckets u16 | buckets × (name_len u16 | name | requests u32 | faults
    /// u32))`.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend_from_slice(&self.next_id.to_le_bytes());
        put_u16(&mut out, self.leases.len());
        for lease in &self.leases {
            out.extend_from_slice(&lease.id.to_le_bytes());
            out.extend_from_slice(&lease.heartbeat_ns.to_le_bytes());
            out.push(u8::from(lease.claimed));
            out.extend_from_slice(&lease.holdings.unflushed.to_le_bytes());
            put_u16(&mut out, lease.holdings.buckets.len());
            for slots in &lease.holdings.buckets {
                put_u16(&mut out, slots.stat_name.len());
                out.extend_from_slice(slots.stat_name.as_bytes());
                out.extend_from_slice(&slots.requests.to_le_bytes());
                out.extend_from_slice(&slots.faults.to_le_bytes());
            }
        }
        out
    }

    /// Total: bytes that are not exactly this layout (or exceed its bounds) are `None`.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.u8()? != RECORD_VERSION {
            return None;
        }
        let next_id = r.u32()?;
        let count = usize::from(r.u16()?);
        if count > MAX_LEASES {
            return None;
        }
        let mut leases = Vec::new();
        for _ in 0..count {
            let id = r.u32()?;
            let heartbeat_ns = r.u64()?;
            let claimed = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            let unflushed = r.u32()?;
            let n = usize::from(r.u16()?);
            if n > MAX_BUCKETS {
                return None;
            }
            let mut buckets = Vec::new();
            for _ in 0..n {
                let len = usize::from(r.u16()?);
                let stat_name = String::from_utf8(r.bytes(len)?.to_vec()).ok()?;
                buckets.push(BucketSlots {
                    stat_name,
                    requests: r.u32()?,
                    faults: r.u32()?,
                });
            }
            leases.push(Lease {
                id,
                heartbeat_ns,
                claimed,
                holdings: Holdings { unflushed, buckets },
            });
        }
        r.is_done().then_some(Self { next_id, leases })
    }
}

/// Lengths are bounded by the decoder's limits long before `u16::MAX`; a longer one is cut
/// to it rather than panicking (and then does not decode: the record is reset).
fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes());
}

/// What a renewal found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// This VM's lease now (`None`: it holds nothing, or the record is full).
    pub id: Option<u32>,
    /// This VM's previous lease had been claimed: what it last published was subtracted from
    /// the gauges, and must be added back.
    pub was_claimed: bool,
    /// Holdings of stale leases this renewal claimed: to subtract from the gauges.
    pub reclaimed: Vec<Holdings>,
    /// The stored record was unreadable (it was replaced).
    pub was_corrupt: bool,
}

/// One tick's renewal, one bounded CAS loop: publishes `holdings` under this VM's lease `own`
/// (a new lease when it has none and holds something; the lease is dropped when it holds
/// nothing), claims every other lease older than [`STALE_NS`], and forgets tombstones older
/// than [`TOMBSTONE_NS`]. Writes only when something changed or `heartbeat_due`.
pub fn renew<S: SharedStore + ?Sized>(
    shared: &S,
    key: &str,
    own: Option<u32>,
    holdings: &Holdings,
    heartbeat_due: bool,
    now_ns: u64,
) -> Result<Renewal, UpdateError> {
    let mut renewal = Renewal::default();
    let (_, was_corrupt) = store::update_value(shared, key, |current: &Leases| {
        renewal = Renewal::default();
        let mut next = current.clone();
        let mut changed = false;
        // Tombstones past their time, and stale leases of others.
        next.leases.retain(|l| {
            let keep = !(l.claimed && now_ns.saturating_sub(l.heartbeat_ns) >= TOMBSTONE_NS);
            changed |= !keep;
            keep
        });
        for lease in next.leases.iter_mut() {
            if Some(lease.id) == own || lease.claimed {
                continue;
            }
            if now_ns.saturating_sub(lease.heartbeat_ns) >= STALE_NS {
                renewal.reclaimed.push(std::mem::take(&mut lease.holdings));
                lease.claimed = true;
                lease.heartbeat_ns = now_ns;
                changed = true;
            }
        }
        // This VM's own lease.
        let mine = own.and_then(|id| next.leases.iter().position(|l| l.id == id));
        let mut id = match mine.and_then(|i| next.leases.get(i)) {
            Some(lease) if lease.claimed => {
                renewal.was_claimed = true;
                None
            }
            Some(_) => own,
            None => None,
        };
        if let (Some(i), Some(_)) = (mine, id) {
            if holdings.is_empty() {
                next.leases.remove(i);
                id = None;
                changed = true;
            } else if let Some(lease) = next.leases.get_mut(i) {
                if lease.holdings != *holdings || heartbeat_due {
                    lease.holdings = holdings.clone();
                    lease.heartbeat_ns = now_ns;
                    changed = true;
                }
            }
        } else if !holdings.is_empty() {
            id = take_lease(&mut next, holdings, now_ns);
            changed |= id.is_some();
        }
        renewal.id = id;
        changed.then_some(next)
    })?;
    renewal.was_corrupt = was_corrupt;
    Ok(renewal)
}

/// Adds a new lease for `holdings`, making room by dropping the first tombstone if the record
/// is full; `None` when the record is full of live leases. (A VM whose tombstone is gone
/// cannot learn it was claimed: if it was only asleep, the gauges read low by what it held.)
fn take_lease(record: &mut Leases, holdings: &Holdings, now_ns: u64) -> Option<u32> {
    if record.leases.len() >= MAX_LEASES {
        let tombstone = record.leases.iter().position(|l| l.claimed)?;
        record.leases.remove(tombstone);
    }
    let mut id = record.next_id;
    while record.leases.iter().any(|l| l.id == id) {
        id = id.wrapping_add(1);
    }
    record.next_id = id.wrapping_add(1);
    record.leases.push(Lease {
        id,
        heartbeat_ns: now_ns,
        claimed: false,
        holdings: holdings.clone(),
    });
    Some(id)
}
