//! The shared list of every bucket any worker of a plugin instance has created, with when a
//! worker last saw it used, so the health endpoint of any worker can report buckets another
//! worker first saw, and buckets nobody uses any more can be forgotten. Updated through the
//! same bounded compare-and-swap loop as every other shared value ([`store::update_value`]).

use crate::keys;
use crate::store::{self, Codec, SharedStore, UpdateError};

/// Layout version (in the key).
pub const RECORD_VERSION: u8 = 1;

/// Most buckets listed; names come from the operator's route and cluster tables.
pub const MAX_REGISTERED: usize = 1024;

/// One listed bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// The monotonic time a worker last stamped it as used (0: never).
    pub seen_ns: u64,
}

/// Bucket names, in registration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    pub entries: Vec<Entry>,
}

impl Registry {
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

impl Codec for Registry {
    /// One line per bucket, `<name>\t<seen_ns>`.
    fn encode(&self) -> Vec<u8> {
        let lines: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}\t{}", e.name, e.seen_ns))
            .collect();
        lines.join("\n").into_bytes()
    }

    /// Total: any bytes are a list (lossy UTF-8, empty lines skipped, an unreadable stamp is
    /// 0, at most [`MAX_REGISTERED`] names).
    fn decode(bytes: &[u8]) -> Option<Self> {
        let entries = String::from_utf8_lossy(bytes)
            .split('\n')
            .filter(|line| !line.is_empty())
            .take(MAX_REGISTERED)
            .map(|line| {
                let (name, seen) = line.rsplit_once('\t').unwrap_or((line, ""));
                Entry {
                    name: name.to_string(),
                    seen_ns: seen.parse().unwrap_or(0),
                }
            })
            .collect();
        Some(Self { entries })
    }
}

/// Adds `bucket`, stamped `now_ns`, to the instance's shared list unless it holds `max` names
/// already (idempotent). `Ok(true)` when the bucket is listed (now or before); `Ok(false)` when
/// the list is full without it. A name with a line break or a tab could not be read back as one
/// name, so it is never listed.
pub fn register<S: SharedStore + ?Sized>(
    shared: &S,
    prefix: &str,
    bucket: &str,
    max: usize,
    now_ns: u64,
) -> Result<bool, UpdateError> {
    if bucket.is_empty() || bucket.contains(['\n', '\r', '\t']) {
        return Ok(false);
    }
    let max = max.min(MAX_REGISTERED);
    let (registry, _) =
        store::update_value(shared, &keys::registry(prefix), |current: &Registry| {
            let listed = current.find(bucket).is_some();
            (!listed && current.entries.len() < max).then(|| {
                let mut next = current.clone();
                next.entries.push(Entry {
                    name: bucket.to_string(),
                    seen_ns: now_ns,
                });
                next
            })
        })?;
    Ok(registry.find(bucket).is_some())
}

/// Stamps the listed `buckets` as used at `now_ns` (one write for all of them).
pub fn stamp<S: SharedStore + ?Sized>(
    shared: &S,
    prefix: &str,
    buckets: &[String],
    now_ns: u64,
) -> Result<(), UpdateError> {
    store::update_value(shared, &keys::registry(prefix), |current: &Registry| {
        let mut next = current.clone();
        let mut changed = false;
        for entry in next.entries.iter_mut() {
            if buckets.contains(&entry.name) && entry.seen_ns < now_ns {
                entry.seen_ns = now_ns;
                changed = true;
            }
        }
        changed.then_some(next)
    })
    .map(|_| ())
}

/// Removes the buckets not stamped within `idle_ns` of `now_ns` and not in `keep`, and returns
/// their names (the caller resets their records).
pub fn expire<S: SharedStore + ?Sized>(
    shared: &S,
    prefix: &str,
    keep: &[String],
    idle_ns: u64,
    now_ns: u64,
) -> Result<Vec<String>, UpdateError> {
    let mut expired = Vec::new();
    store::update_value(shared, &keys::registry(prefix), |current: &Registry| {
        expired.clear();
        let (stale, fresh): (Vec<Entry>, Vec<Entry>) =
            current.entries.iter().cloned().partition(|e| {
                !keep.contains(&e.name) && now_ns.saturating_sub(e.seen_ns) >= idle_ns
            });
        expired = stale.into_iter().map(|e| e.name).collect();
        (!expired.is_empty()).then_some(Registry { entries: fresh })
    })?;
    Ok(expired)
}

/// Every bucket in the instance's shared list, with its stamp.
pub fn registered<S: SharedStore + ?Sized>(shared: &S, prefix: &str) -> Vec<Entry> {
    store::load_value::<S, Registry>(shared, &keys::registry(prefix))
        .map(|(registry, _, _)| registry.entries)
        .unwrap_or_default()
}
