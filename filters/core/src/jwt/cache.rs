//! A bounded cache of verified tokens: a repeated token costs a hash instead
//! of a signature check. Keyed by SHA-256 of (provider, token), so a forged
//! token can never collide with a verified one. Time and audience checks still
//! run on every hit (as Envoy's `jwt_cache_config` does), so `exp` is honoured.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::token::Jwt;

pub type CacheKey = [u8; 32];

#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<CacheKey, Rc<Jwt>>,
    order: VecDeque<CacheKey>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn key(provider: usize, token: &str) -> CacheKey {
        let mut h = Sha256::new();
        h.update((provider as u64).to_le_bytes());
        h.update(token.as_bytes());
        h.finalize().into()
    }

    pub fn lookup(&self, key: &CacheKey) -> Option<Rc<Jwt>> {
        self.entries.get(key).cloned()
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

    pub fn insert(&mut self, key: CacheKey, jwt: Rc<Jwt>, _now: u64) {
        if self.capacity == 0 || self.entries.contains_key(&key) {
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
        self.entries.insert(key, jwt);
        self.order.push_back(key);
    }
}
