//! Shared state across Envoy workers: the host's key-value store with compare-and-swap, and
//! the bounded read-modify-write loop every change goes through.
//!
//! Envoy's store (proxy-wasm-cpp-host `shared_data.cc`) has sharp edges this module respects:
//! - a `set` with token 0 is unconditional, and a `set` on a missing key creates it whatever the
//!   token. So this module never writes with token 0: a key it read as missing is written with
//!   [`ABSENT_CAS`], which creates the key if it is still missing and fails as a mismatch if
//!   another worker created it meanwhile. Creation still is not atomic when two workers both
//!   create at once (the last write stands, with one count lost), which is why the filter
//!   creates its keys at configure time, before traffic;
//! - keys cannot be deleted, so they are fixed per bucket (their names: [`crate::keys`]);
//! - values survive a plugin reload on the same `vm_id`, so they carry a layout version and any
//!   value that does not decode is treated as fresh and overwritten.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote the key since we read it.
    CasMismatch,
    /// The host answered with an unexpected status (its numeric value).
    Host(u32),
}

/// The host's shared data, as the decision logic sees it.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes if the key's token is still `cas` (0: unconditionally; a missing key is created).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// The token written with when the key was read as missing. Any non-zero value works (Envoy
/// creates a missing key whatever the token); one an existing key is unlikely to hold means a
/// key created by another worker since our read makes the write fail, not overwrite it.
pub const ABSENT_CAS: u32 = u32::MAX;

/// Attempts before a read-modify-write gives up. Under Envoy's one global lock two workers
/// rarely collide twice in a row; a loop that keeps losing means a storm, and waiting longer
/// only deepens it.
pub const MAX_CAS_ATTEMPTS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// Lost the race `MAX_CAS_ATTEMPTS` times: the caller lets the request through and counts it.
    Exhausted,
    Host(u32),
}

/// A value kept in shared data: a versioned layout whose decoder is total (any bytes decode
/// or give `None`), and a fresh value for a key that is missing or unreadable.
pub trait Codec: Clone + Default {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// The bounded read-decide-CAS loop for any [`Codec`] value: `decide` returns the value to
/// write, or `None` to leave the stored one. Returns the value as it now stands and whether the
/// stored bytes were unreadable. Never writes with token 0.
pub fn update_value<S: SharedStore + ?Sized, R: Codec>(
    store: &S,
    key: &str,
    mut decide: impl FnMut(&R) -> Option<R>,
) -> Result<(R, bool), UpdateError> {
    update_with(store, key, &mut decide)
}

/// [`update_value`]'s loop, once per store and value type rather than once per closure (every
/// caller's closure would otherwise get its own copy of it in the module).
#[inline(never)]
fn update_with<S: SharedStore + ?Sized, R: Codec>(
    store: &S,
    key: &str,
    decide: &mut dyn FnMut(&R) -> Option<R>,
) -> Result<(R, bool), UpdateError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas, was_corrupt) = load_value::<S, R>(store, key)?;
        let Some(next) = decide(&current) else {
            return Ok((current, was_corrupt));
        };
        match store.set(key, &next.encode(), cas) {
            Ok(()) => return Ok((next, was_corrupt)),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host(status)) => return Err(UpdateError::Host(status)),
        }
    }
    Err(UpdateError::Exhausted)
}

/// The value at `key` with the CAS token to write it back with ([`ABSENT_CAS`] when the key
/// is missing), and whether the stored bytes were unreadable (then a fresh value).
pub fn load_value<S: SharedStore + ?Sized, R: Codec>(
    store: &S,
    key: &str,
) -> Result<(R, u32, bool), UpdateError> {
    match store.get(key) {
        Ok(Some((bytes, cas))) => match R::decode(&bytes) {
            Some(value) => Ok((value, cas, false)),
            None => Ok((R::default(), cas, true)),
        },
        Ok(None) => Ok((R::default(), ABSENT_CAS, false)),
        Err(StoreError::CasMismatch) => Err(UpdateError::Host(0)),
        Err(StoreError::Host(status)) => Err(UpdateError::Host(status)),
    }
}

/// Creates `key` with a fresh value unless it already holds a readable one: run at configure
/// time on every VM. Idempotent: an existing readable value (state kept across a plugin reload)
/// is left alone. `true` when this call wrote.
pub fn ensure_value<S: SharedStore + ?Sized, R: Codec>(
    store: &S,
    key: &str,
) -> Result<bool, UpdateError> {
    let (_, cas, was_corrupt) = load_value::<S, R>(store, key)?;
    if cas != ABSENT_CAS && !was_corrupt {
        return Ok(false);
    }
    match store.set(key, &R::default().encode(), cas) {
        Ok(()) => Ok(true),
        // Someone else created or fixed it between our read and write: theirs stands.
        Err(StoreError::CasMismatch) => Ok(false),
        Err(StoreError::Host(status)) => Err(UpdateError::Host(status)),
    }
}

/// An in-memory store with Envoy's exact semantics, for tests and simulations: one global CAS
/// counter that skips 0, `cas == 0` writes unconditionally, a missing key is created whatever
/// the token.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    next_cas: u32,
    values: HashMap<String, (Vec<u8>, u32)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores raw bytes under `key`, bypassing CAS (to plant corrupt or old values in tests).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        let mut inner = self.lock();
        let cas = inner.bump();
        inner.values.insert(key.to_string(), (value.to_vec(), cas));
    }

    pub fn keys(&self) -> Vec<String> {
        self.lock().values.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemoryInner {
    fn bump(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        self.next_cas
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.lock().values.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some((_, current)) = inner.values.get(key) {
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = inner.bump();
        inner.values.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}
