//! A bounded cache of verified tokens: a repeated token costs a hash and a
//! comparison instead of a signature check. Keyed by a fast 64-bit hash of
//! (provider, token); a hit also compares the whole token, so a forged token
//! whose hash collides with a verified one is simply a miss (and then fails its
//! signature check). Only verified tokens are ever inserted. Time and audience
//! checks still run on every hit (as Envoy's `jwt_cache_config` does), so `exp`
//! is honoured. An entry keeps everything the token's success writes (payload
//! MessagePack, principal, claim headers), computed once.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use super::Verified;

/// The keys are already hashes: the map uses them as they are.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// 64-bit word-at-a-time hash (FxHash rounds, murmur3 finalizer). Not
/// collision resistant, which is fine: a hit is confirmed by comparing tokens.
fn hash(provider: usize, token: &[u8]) -> u64 {
    let mut h = (provider as u64 ^ token.len() as u64).wrapping_mul(K);
    let mut words = token.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    let mut last = [0u8; 8];
    let rest = words.remainder();
    last[..rest.len()].copy_from_slice(rest);
    h = (h.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `a == b`, a word at a time (wasi-libc's `memcmp` goes byte by byte).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    for (p, q) in (&mut x).zip(&mut y) {
        if p != q {
            return false;
        }
    }
    x.remainder() == y.remainder()
}

#[derive(Debug)]
struct Entry {
    provider: usize,
    token: Box<str>,
    verified: Rc<Verified>,
}

#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    order: VecDeque<u64>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            entries: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// The verified entry of exactly this token for this provider.
    pub(crate) fn lookup(&self, provider: usize, token: &str) -> Option<Rc<Verified>> {
        let e = self.entries.get(&hash(provider, token.as_bytes()))?;
        (e.provider == provider && same(e.token.as_bytes(), token.as_bytes()))
            .then(|| e.verified.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry (e.g. when the keys of a provider change).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Keeps a token verified for `provider`. Another token with the same hash
    /// is replaced (in its place in the eviction order).
    pub(crate) fn insert(&mut self, provider: usize, token: &str, verified: Rc<Verified>) {
        if self.capacity == 0 {
            return;
        }
        let key = hash(provider, token.as_bytes());
        let entry = Entry {
            provider,
            token: token.into(),
            verified,
        };
        if let Some(e) = self.entries.get_mut(&key) {
            *e = entry;
            return;
        }
        // Full: drop the oldest entries (FIFO, O(1) each). Expired tokens need no
        // sweep: a hit re-checks `exp` and they age out like any other entry.
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        self.entries.insert(key, entry);
        self.order.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_provider_and_every_byte() {
        let t = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let h = hash(0, t);
        assert_ne!(h, hash(1, t));
        for i in 0..t.len() {
            let mut u = t.to_vec();
            u[i] ^= 1;
            assert_ne!(h, hash(0, &u), "byte {i}");
        }
        assert_ne!(hash(0, b"abc"), hash(0, b"abc\0"));
    }

    #[test]
    fn same_compares_every_byte() {
        let a = b"0123456789abcdefXYZ";
        assert!(same(a, a));
        for i in 0..a.len() {
            let mut b = a.to_vec();
            b[i] ^= 1;
            assert!(!same(a, &b), "byte {i}");
        }
        assert!(!same(a, &a[..18]));
        assert!(same(b"", b""));
    }
}
