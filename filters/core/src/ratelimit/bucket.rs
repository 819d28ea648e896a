//! Token buckets as Envoy 1.40's `AtomicTokenBucketImpl` keeps them, stored in
//! proxy-wasm shared data so every worker of the process shares one bucket.
//!
//! Envoy's bucket is one number: the (monotonic, seconds, `f64`) time at which
//! the bucket was empty. Tokens are derived on access:
//! `tokens = min(max_tokens, (now - empty_at) * fill_rate)` with
//! `fill_rate = tokens_per_fill / fill_interval`, i.e. continuous refill, no timer.
//! Consuming one token moves `empty_at` to `now - (tokens - 1) / fill_rate`; a
//! bucket with fewer than one token is not written at all. We store exactly that
//! `f64`, so the arithmetic is Envoy's, and update it with compare-and-swap.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::host::{CasMismatch, SharedStore};

/// Envoy's `kMinFillRate`: one token a year.
const MIN_FILL_RATE: f64 = 1.0 / (365.0 * 24.0 * 60.0 * 60.0);

/// How many times one bucket update is retried when another worker wrote the
/// same key between our get and set. Each retry means another worker made
/// progress, so with W workers W-1 losses in a row are already unusual; on
/// exhaustion the request is **rejected** (fail closed: the guarantee "never
/// more than `max_tokens` per window" is kept) and `cas_exhausted` is counted.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// Dynamic descriptor buckets live in groups of at most this many entries, one
/// shared-data key per group; within a group the order is least-recently-used.
pub const GROUP_WAYS: u32 = 32;

/// Layout version, part of every key: a new layout never reads an old one.
pub const LAYOUT: &str = "mwrl1";

#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    /// `LocalRateLimitDescriptor.shadow_mode`: this bucket's denials are ignored.
    pub shadow_mode: bool,
    fill_rate: f64,
}

impl TokenBucket {
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> TokenBucket {
        let secs = fill_interval.as_secs_f64();
        let rate = if secs > 0.0 {
            f64::from(tokens_per_fill) / secs
        } else {
            0.0
        };
        TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval,
            shadow_mode: false,
            fill_rate: rate.abs().max(MIN_FILL_RATE),
        }
    }

    /// Tokens per second; matched descriptors are consumed in ascending order of it.
    pub fn fill_rate(&self) -> f64 {
        self.fill_rate
    }

    /// `empty_at` of a full bucket (Envoy creates buckets full).
    pub fn full_at(&self, now: f64) -> f64 {
        now - f64::from(self.max_tokens) / self.fill_rate
    }

    pub fn tokens(&self, empty_at: f64, now: f64) -> f64 {
        ((now - empty_at) * self.fill_rate).min(f64::from(self.max_tokens))
    }

    /// The new `empty_at` after taking one token, or None when under one token.
    pub fn try_consume(&self, empty_at: f64, now: f64) -> Option<f64> {
        // Same rounding allowance as `remaining` (Envoy's clock moves between
        // requests, which hides it there; tests replay equal instants).
        let total = self.tokens(empty_at, now) + 1e-9;
        if total < 1.0 {
            return None;
        }
        let total = total.min(f64::from(self.max_tokens));
        Some(now - (total - 1.0) / self.fill_rate)
    }

    /// `X-RateLimit-Remaining`: whole tokens left. The epsilon absorbs the
    /// rounding of `empty_at` (Envoy reads this microseconds after the update,
    /// which hides the same rounding).
    pub fn remaining(&self, empty_at: f64, now: f64) -> u64 {
        (self.tokens(empty_at, now) + 1e-9).max(0.0).floor() as u64
    }

    /// `X-RateLimit-Reset`: seconds until the next token, rounded up (0 while
    /// one is available). Observed on Envoy 1.40: 0.2 tokens/s, empty → 5; with
    /// 2 tokens/s, empty → 1 (a fraction of a second rounds up).
    pub fn reset_seconds(&self, empty_at: f64, now: f64) -> u64 {
        let t = self.tokens(empty_at, now) + 1e-9;
        if t >= 1.0 {
            return 0;
        }
        // Whole milliseconds first (Envoy's duration), then seconds rounded up.
        let ms = ((1.0 - t) / self.fill_rate * 1000.0).ceil();
        (ms / 1000.0).ceil() as u64
    }
}

/// Which bucket decided (for the `X-RateLimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketId {
    Default,
    Static(usize),
    /// A bucket of the wildcard descriptor `spec`, for the request descriptor
    /// whose hash is `tag`.
    Dynamic {
        spec: usize,
        tag: u64,
    },
}

/// Counters the shared-data updates produce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub cas_retries: u64,
    pub cas_exhausted: u64,
    pub dynamic_evictions: u64,
}

/// Stable 64-bit hash (SipHash-1-3 with fixed keys, identical in every VM of
/// one build): far harder to collide on purpose than FNV.
pub fn hash64<T: Hash + ?Sized>(v: &T) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6d65_7368_7761_736d, 0x6c6f_6361_6c72_6c00);
    v.hash(&mut h);
    h.finish()
}

fn read_f64(v: &[u8]) -> Option<f64> {
    let arr: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let f = f64::from_le_bytes(arr);
    f.is_finite().then_some(f)
}

/// One group of dynamic buckets: `(tag, empty_at)`, most recently used first.
fn read_group(v: Option<&[u8]>) -> Vec<(u64, f64)> {
    let Some(v) = v else { return Vec::new() };
    v.chunks_exact(16)
        .filter_map(|c| {
            let tag = u64::from_le_bytes(c[..8].try_into().ok()?);
            Some((tag, read_f64(&c[8..])?))
        })
        .collect()
}

/// What one request does to its group of dynamic buckets.
enum GroupUpdate {
    /// Already the most recent entry and no token: nothing to write.
    Unchanged,
    /// The group to write, whether a token was taken, how many entries fell out.
    Write(Vec<(u64, f64)>, bool, u64),
}

/// Finds (or creates) `tag`'s bucket, takes a token if there is one, moves it
/// to the front and evicts the least recently used beyond `cap`.
fn update_group(
    mut group: Vec<(u64, f64)>,
    tag: u64,
    bucket: &TokenBucket,
    now: f64,
    cap: usize,
) -> GroupUpdate {
    let pos = group.iter().position(|(t, _)| *t == tag);
    let empty_at = match pos {
        Some(i) => group.remove(i).1,
        None => bucket.full_at(now),
    };
    let consumed = bucket.try_consume(empty_at, now);
    if pos == Some(0) && consumed.is_none() {
        return GroupUpdate::Unchanged;
    }
    group.insert(0, (tag, consumed.unwrap_or(empty_at)));
    let evicted = group.len().saturating_sub(cap) as u64;
    group.truncate(cap);
    GroupUpdate::Write(group, consumed.is_some(), evicted)
}

fn write_group(g: &[(u64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(g.len() * 16);
    for (tag, t) in g {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}

/// The buckets of one configuration in a [`SharedStore`], under the key prefix
/// `ns` (a hash of the plugin and its configuration, so two configurations, or
/// other plugins sharing Istio's `vm_id ""`, never touch each other's keys).
///
/// Keys: `<ns>/b/0` the default bucket, `<ns>/b/<i+1>` static descriptor `i`
/// (8 bytes: `empty_at`); `<ns>/d/<j>/<g>` group `g` of wildcard descriptor `j`.
/// Shared data has no delete (ABI 0.2.1), so the key set is fixed at
/// configuration time: `max_dynamic_descriptors` entries in
/// `ceil(max/GROUP_WAYS)` groups per wildcard descriptor, whatever clients send.
pub struct SharedBuckets<'a> {
    pub ns: &'a str,
    pub max_dynamic: u32,
}

impl SharedBuckets<'_> {
    pub fn static_key(&self, id: BucketId) -> String {
        match id {
            BucketId::Default => format!("{}/b/0", self.ns),
            BucketId::Static(i) => format!("{}/b/{}", self.ns, i + 1),
            BucketId::Dynamic { spec, tag } => self.group_key(spec, tag),
        }
    }

    pub fn groups(&self) -> u32 {
        self.max_dynamic.div_ceil(GROUP_WAYS).max(1)
    }

    fn group_of(&self, tag: u64) -> u32 {
        ((tag >> 32) % u64::from(self.groups())) as u32
    }

    /// Entries a group may hold: `max_dynamic` spread over the groups.
    pub fn group_capacity(&self, group: u32) -> usize {
        let g = self.groups();
        let base = self.max_dynamic / g;
        let extra = u32::from(group < self.max_dynamic % g);
        (base + extra) as usize
    }

    fn group_key(&self, spec: usize, tag: u64) -> String {
        format!("{}/d/{}/{}", self.ns, spec, self.group_of(tag))
    }

    pub fn group_key_by_index(&self, spec: usize, group: u32) -> String {
        format!("{}/d/{}/{}", self.ns, spec, group)
    }

    /// Creates missing keys (full buckets, empty groups) so that request-time
    /// updates are always real compare-and-swaps: the host inserts an absent key
    /// unconditionally, which would let two first writers both succeed.
    pub fn init(
        &self,
        store: &dyn SharedStore,
        now: f64,
        statics: &[(BucketId, &TokenBucket)],
        dynamic_specs: usize,
    ) {
        for (id, b) in statics {
            let key = self.static_key(*id);
            if let (None, None) = store.get(&key) {
                let _ = store.set(&key, &b.full_at(now).to_le_bytes(), None);
            }
        }
        for spec in 0..dynamic_specs {
            for g in 0..self.groups() {
                let key = self.group_key_by_index(spec, g);
                if let (None, None) = store.get(&key) {
                    let _ = store.set(&key, &[], None);
                }
            }
        }
    }

    /// Takes one token from a default or static bucket. `Ok(false)`: no token.
    pub fn consume_static(
        &self,
        store: &dyn SharedStore,
        key: &str,
        bucket: &TokenBucket,
        now: f64,
        stats: &mut StoreStats,
    ) -> bool {
        if let Some((v, cas)) = store.remembered(key) {
            let empty_at = read_f64(&v).unwrap_or_else(|| bucket.full_at(now));
            // `empty_at` only moves forward (tokens only leave a bucket), so a
            // remembered value overstates the tokens: none there means none now.
            let Some(new) = bucket.try_consume(empty_at, now) else {
                return false;
            };
            // The CAS proves the memory current; a mismatch changes nothing and
            // is not a lost race: read and update as usual below.
            if store.set(key, &new.to_le_bytes(), Some(cas)).is_ok() {
                return true;
            }
        }
        for attempt in 0..MAX_CAS_ATTEMPTS {
            if attempt > 0 {
                stats.cas_retries += 1;
            }
            let (v, cas) = store.get(key);
            let empty_at = v
                .as_deref()
                .and_then(read_f64)
                .unwrap_or_else(|| bucket.full_at(now));
            let Some(new) = bucket.try_consume(empty_at, now) else {
                return false;
            };
            match store.set(key, &new.to_le_bytes(), cas) {
                Ok(()) => return true,
                Err(CasMismatch) => continue,
            }
        }
        stats.cas_exhausted += 1;
        false
    }

    /// Looks up (or creates, evicting the least recently used) the bucket of
    /// `tag` in its group, marks it most recently used, takes one token.
    pub fn consume_dynamic(
        &self,
        store: &dyn SharedStore,
        spec: usize,
        tag: u64,
        bucket: &TokenBucket,
        now: f64,
        stats: &mut StoreStats,
    ) -> bool {
        let cap = self.group_capacity(self.group_of(tag));
        if cap == 0 {
            // `max_dynamic_descriptors: 0`: Envoy evicts the new bucket at once, so
            // every request sees a fresh, full bucket.
            stats.dynamic_evictions += 1;
            return bucket.try_consume(bucket.full_at(now), now).is_some();
        }
        let key = self.group_key(spec, tag);
        if let Some((v, cas)) = store.remembered(&key) {
            // Only a write is taken from memory: another worker's eviction can
            // have refilled this bucket, so "no token" is decided on a fresh read.
            if let GroupUpdate::Write(group, consumed, evicted) =
                update_group(read_group(Some(&v)), tag, bucket, now, cap)
            {
                if store.set(&key, &write_group(&group), Some(cas)).is_ok() {
                    stats.dynamic_evictions += evicted;
                    return consumed;
                }
            }
        }
        for attempt in 0..MAX_CAS_ATTEMPTS {
            if attempt > 0 {
                stats.cas_retries += 1;
            }
            let (v, cas) = store.get(&key);
            let GroupUpdate::Write(group, consumed, evicted) =
                update_group(read_group(v.as_deref()), tag, bucket, now, cap)
            else {
                return false; // nothing changes: already most recent, no token
            };
            match store.set(&key, &write_group(&group), cas) {
                Ok(()) => {
                    stats.dynamic_evictions += evicted;
                    return consumed;
                }
                Err(CasMismatch) => continue,
            }
        }
        stats.cas_exhausted += 1;
        false
    }

    /// `empty_at` of a bucket now, for the response headers (None: never
    /// written or evicted, i.e. full).
    pub fn empty_at(&self, store: &dyn SharedStore, id: BucketId) -> Option<f64> {
        let (v, _) = store.get(&self.static_key(id));
        match id {
            BucketId::Dynamic { tag, .. } => read_group(v.as_deref())
                .into_iter()
                .find(|(t, _)| *t == tag)
                .map(|(_, e)| e),
            _ => v.as_deref().and_then(read_f64),
        }
    }
}

/// A [`SharedStore`] inside one VM, for `local_rate_limit_per_downstream_connection`
/// (a connection lives on one worker, so its buckets need no sharing) and tests.
#[derive(Debug, Default)]
pub struct LocalStore {
    map: std::cell::RefCell<HashMap<String, (Vec<u8>, u32)>>,
    cas: std::cell::Cell<u32>,
}

impl SharedStore for LocalStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.borrow().get(key) {
            Some((v, c)) => (if v.is_empty() { None } else { Some(v.clone()) }, Some(*c)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        let mut map = self.map.borrow_mut();
        if let (Some((_, stored)), Some(c)) = (map.get(key), cas) {
            if c != 0 && c != *stored {
                return Err(CasMismatch);
            }
        }
        let next = self.cas.get().wrapping_add(1).max(1);
        self.cas.set(next);
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

impl LocalStore {
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of keys and values (memory-bound tests).
    pub fn bytes(&self) -> usize {
        self.map
            .borrow()
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }
}
