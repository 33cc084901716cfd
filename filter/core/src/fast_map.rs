//! Hash maps for the request path, keyed by what Envoy and the operator name (stream context
//! ids, route and cluster names), never by anything a client sends.
//!
//! std's default SipHash is keyed against hash flooding by untrusted keys, and costs ~100
//! instructions per small key; every request looks its stream up once per callback and its
//! route once. These keys cannot be chosen by a client, so a multiply-rotate hash (the one
//! rustc uses, "FxHash") is enough.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// rustc's FxHasher: for each word, rotate, xor, multiply.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            if let Some(prefix) = word.get_mut(..rest.len()) {
                prefix.copy_from_slice(rest);
            }
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_by_string_and_by_id_find_what_they_hold() {
        let mut by_name: FastMap<String, u32> = FastMap::default();
        for (i, name) in [
            "",
            "a",
            "users",
            "outbound|8080||reviews.shop.svc.cluster.local",
        ]
        .iter()
        .enumerate()
        {
            by_name.insert((*name).to_string(), i as u32);
        }
        assert_eq!(by_name.get("users"), Some(&2));
        assert_eq!(by_name.get("user"), None);
        let ids: FastSet<u32> = (0..10_000).collect();
        assert!((0..10_000).all(|id| ids.contains(&id)));
        assert!(!ids.contains(&10_000));
    }
}
