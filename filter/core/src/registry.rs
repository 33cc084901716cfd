//! The shared list of every bucket any worker has created, so the health endpoint of any
//! worker can report buckets another worker first saw. Updated through the same bounded
//! compare-and-swap loop as every other shared value ([`store::update_value`]).

use crate::keys;
use crate::store::{self, Codec, SharedStore, UpdateError};

/// Layout version (in the key: the value is plain newline-separated names).
pub const RECORD_VERSION: u8 = 1;

/// Most buckets listed; names come from the operator's route and cluster tables.
pub const MAX_REGISTERED: usize = 1024;

/// Bucket names, in registration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    pub names: Vec<String>,
}

impl Codec for Registry {
    fn encode(&self) -> Vec<u8> {
        self.names.join("\n").into_bytes()
    }

    /// Total: any bytes are a list (lossy UTF-8, empty lines skipped, at most
    /// [`MAX_REGISTERED`] names).
    fn decode(bytes: &[u8]) -> Option<Self> {
        let names = String::from_utf8_lossy(bytes)
            .split('\n')
            .filter(|n| !n.is_empty())
            .take(MAX_REGISTERED)
            .map(str::to_string)
            .collect();
        Some(Self { names })
    }
}

/// Adds `bucket` to the instance's shared list unless it holds `max` names already
/// (idempotent). `Ok(true)` when the bucket is listed (now or before): it may exist; `Ok(false)`
/// when the list is full without it. A name with a line break could not be read back as one
/// name, so it is never listed.
pub fn register<S: SharedStore + ?Sized>(
    shared: &S,
    prefix: &str,
    bucket: &str,
    max: usize,
) -> Result<bool, UpdateError> {
    if bucket.is_empty() || bucket.contains(['\n', '\r']) {
        return Ok(false);
    }
    let max = max.min(MAX_REGISTERED);
    let (registry, _) =
        store::update_value(shared, &keys::registry(prefix), |current: &Registry| {
            let listed = current.names.iter().any(|n| n == bucket);
            (!listed && current.names.len() < max).then(|| {
                let mut next = current.clone();
                next.names.push(bucket.to_string());
                next
            })
        })?;
    Ok(registry.names.iter().any(|n| n == bucket))
}

/// Every bucket in the instance's shared list.
pub fn registered<S: SharedStore + ?Sized>(shared: &S, prefix: &str) -> Vec<String> {
    store::load_value::<S, Registry>(shared, &keys::registry(prefix))
        .map(|(registry, _, _)| registry.names)
        .unwrap_or_default()
}
