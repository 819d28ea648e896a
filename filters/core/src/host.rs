//! What the logic needs from its host, as small traits: filter crates implement
//! them over proxy-wasm hostcalls; tests implement them with fakes.

use std::time::SystemTime;

/// Time as the host sees it.
pub trait Clock {
    /// Nanoseconds since the Unix epoch (proxy-wasm `get_current_time`).
    fn now_nanos(&self) -> u64;
}

/// A source of uniform random numbers.
pub trait RandomSource {
    fn next_u64(&mut self) -> u64;
}

/// Shared key/value data with compare-and-swap, as proxy-wasm shared data.
pub trait SharedStore {
    /// Returns the value (None when absent or emptied) and its CAS token.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value`; `cas` of Some(n) (n != 0) fails with `Err(CasMismatch)` when
    /// another writer got there first.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
    /// The value this store remembers for `key` and the CAS the entry most likely
    /// has now, if it keeps such a memory (`ratelimit::remember`): an update may
    /// try it before reading. Only a CAS-checked write may trust it.
    fn remembered(&self, _key: &str) -> Option<(Vec<u8>, u32)> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// The system clock, for native tools (the CLI) only.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

/// A small deterministic generator (SplitMix64), seeded by the host.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
