//! A worker's memory of the bucket entries it last read or wrote, so that an
//! update can usually skip the shared-data read.
//!
//! Reading shared data is the costliest thing a bucket update does in Envoy
//! (Envoy calls back into the VM to allocate the copy); writing is several
//! times cheaper. Envoy gives every write the next value of one
//! process-wide CAS counter (`SharedData::nextCas`: 1, 2, 3, ..., skipping 0),
//! so a worker that remembers the value it wrote can also predict the CAS that
//! write got: the counter's next value, if nobody else in the process wrote in
//! between. The next update then starts from the remembered value and writes
//! with the predicted CAS:
//!
//! - when the prediction holds, the host's compare-and-swap proves the entry is
//!   exactly what we remember, so the update is the one a fresh read would have
//!   made, and one host call is saved;
//! - when it does not (another worker or key wrote in between), the set fails
//!   with a mismatch and changes nothing; the caller reads and retries as before.
//!   A CAS value is handed out once (until the `u32` counter wraps), so a wrong
//!   prediction can never match an entry some other write produced.
//!
//! Nothing is decided on memory alone except what an older value proves: a
//! static bucket's `empty_at` only moves forward (tokens only leave it), so a
//! remembered value with no token means no token now. Dynamic groups can be
//! refilled by another worker's eviction, so their callers re-read instead.
//!
//! A failed prediction is followed by a read. When it shows our own value, only
//! the counter model was behind (other keys were written): the model is set
//! right and prediction goes on. When it shows another worker's value
//! [`CONTENDED`] times in a row, the key is read first for the next
//! [`COOL_DOWN`] updates: under steady contention predictions mostly fail and
//! would otherwise add a wasted set to most requests, while a lone collision
//! costs only one.

use std::cell::RefCell;

use rustc_hash::FxHashMap;

use crate::host::{CasMismatch, SharedStore};

/// Updates of a key that read first after failed predictions showed another
/// worker writing it [`CONTENDED`] times in a row.
pub const COOL_DOWN: u8 = 8;
/// Failed predictions in a row, each showing another worker's write, that
/// start a [`COOL_DOWN`].
pub const CONTENDED: u8 = 2;

/// Bytes of remembered keys and values per worker; beyond it the memory starts
/// again (it is only an optimisation, never needed for correctness). Enough
/// for about 10 000 per-user buckets.
pub const MAX_REMEMBERED_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Entry {
    value: Vec<u8>,
    /// The CAS the entry most likely has now.
    cas: u32,
    /// `value`/`cas` may be tried.
    known: bool,
    /// `Some(n)`: `value` is our own write, number `n` of this worker's writes.
    own_write: Option<u64>,
    /// A predicted write failed; the next read tells whether anybody else wrote.
    suspect: bool,
    /// Other workers' writes seen in a row by failed predictions.
    contended: u8,
    cool: u8,
}

/// One worker's memory (lives in the VM, one per plugin configuration).
#[derive(Debug, Default)]
pub struct WriteMemory {
    entries: FxHashMap<String, Entry>,
    bytes: usize,
    /// What this worker believes the host's next CAS is (a lower bound).
    next_cas: Option<u32>,
    /// Writes this worker made.
    writes: u64,
}

/// `cas` advanced `n` steps on Envoy's counter, which never hands out 0.
fn advance(cas: u32, n: u64) -> u32 {
    const PERIOD: u64 = u32::MAX as u64; // the values 1..=u32::MAX
    let pos = (u64::from(cas.max(1)) - 1 + n % PERIOD) % PERIOD;
    (pos + 1) as u32
}

/// `a` comes after `b` on the wrapping counter.
fn later(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl WriteMemory {
    fn remember(&mut self, key: &str, value: &[u8], cas: u32, seq: Option<u64>) {
        let fill = |e: &mut Entry| {
            e.value.clear();
            e.value.extend_from_slice(value);
            e.cas = cas;
            e.known = true;
            e.own_write = seq;
        };
        if let Some(e) = self.entries.get_mut(key) {
            let bytes = self.bytes - e.value.len() + value.len();
            if bytes <= MAX_REMEMBERED_BYTES {
                self.bytes = bytes;
                fill(e);
                return;
            }
        }
        let added = key.len() + value.len();
        if self.entries.contains_key(key) || self.bytes + added > MAX_REMEMBERED_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += added;
        let mut e = Entry::default();
        fill(&mut e);
        self.entries.insert(key.to_string(), e);
    }

    fn raise_next(&mut self, floor: u32) {
        if self.next_cas.is_none_or(|n| later(floor, n)) {
            self.next_cas = Some(floor);
        }
    }

    /// A read saw `value` with `cas`.
    fn observed(&mut self, key: &str, value: &[u8], cas: u32) {
        let mut floor = advance(cas, 1);
        if let Some(e) = self.entries.get_mut(key) {
            if std::mem::take(&mut e.suspect) {
                if let (Some(seq), true) = (e.own_write, e.value == value) {
                    // Our write is still there and got `cas`; every write we made
                    // since came after it: only our counter model was behind.
                    floor = advance(cas, self.writes - seq);
                } else {
                    // Another worker wrote the key. Twice in a row: read first for
                    // a while (a lone collision costs one wasted write; steady
                    // contention would waste one on most requests).
                    e.contended = e.contended.saturating_add(1);
                    if e.contended >= CONTENDED {
                        e.contended = 0;
                        e.cool = COOL_DOWN;
                    }
                }
            }
        }
        self.raise_next(floor);
        self.remember(key, value, cas, None);
    }

    /// Our write of `value` with `cas` succeeded: it most likely got the
    /// counter's next value.
    fn wrote(&mut self, key: &str, value: &[u8], cas: Option<u32>) {
        if let Some(e) = self.entries.get_mut(key) {
            if e.known && e.own_write.is_some() && cas == Some(e.cas) {
                e.contended = 0; // a prediction held
            }
        }
        let seq = self.writes;
        self.writes += 1;
        match self.next_cas {
            Some(predicted) => {
                self.next_cas = Some(advance(predicted, 1));
                self.remember(key, value, predicted, Some(seq));
            }
            None => {
                if let Some(e) = self.entries.get_mut(key) {
                    e.known = false;
                }
            }
        }
    }

    /// A write with `cas` lost; if the CAS was our prediction, the next read
    /// decides whether it was a wrong guess or another worker.
    fn lost(&mut self, key: &str, cas: Option<u32>) {
        if let Some(e) = self.entries.get_mut(key) {
            e.suspect = e.known && cas == Some(e.cas);
            e.known = false;
        }
    }

    fn recall(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        let e = self.entries.get_mut(key)?;
        if e.cool > 0 {
            e.cool -= 1;
            return None;
        }
        e.known.then(|| (e.value.clone(), e.cas))
    }
}

/// A [`SharedStore`] that keeps a [`WriteMemory`] of what passes through it.
pub struct RememberingStore<'a> {
    inner: &'a dyn SharedStore,
    memory: &'a RefCell<WriteMemory>,
}

impl<'a> RememberingStore<'a> {
    pub fn new(inner: &'a dyn SharedStore, memory: &'a RefCell<WriteMemory>) -> Self {
        RememberingStore { inner, memory }
    }
}

impl SharedStore for RememberingStore<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let (value, cas) = self.inner.get(key);
        if let Some(cas) = cas {
            self.memory
                .borrow_mut()
                .observed(key, value.as_deref().unwrap_or_default(), cas);
        }
        (value, cas)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        let result = self.inner.set(key, value, cas);
        let mut memory = self.memory.borrow_mut();
        match result {
            Ok(()) => memory.wrote(key, value, cas),
            Err(CasMismatch) => memory.lost(key, cas),
        }
        result
    }

    fn remembered(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.memory.borrow_mut().recall(key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ratelimit::LocalStore;

    #[test]
    fn the_counter_model_wraps_like_envoys() {
        assert_eq!(advance(1, 1), 2);
        assert_eq!(advance(u32::MAX, 1), 1, "0 is skipped");
        assert_eq!(advance(u32::MAX - 1, 3), 2);
        assert_eq!(advance(7, u64::from(u32::MAX)), 7, "a full period");
        assert!(later(1, u32::MAX) && later(5, 4) && !later(4, 5));
    }

    #[test]
    fn memory_is_bounded() {
        let store = LocalStore::default();
        let memory = RefCell::new(WriteMemory::default());
        let s = RememberingStore::new(&store, &memory);
        let value = [7u8; 512];
        for i in 0..10_000 {
            s.set(&format!("ns/d/0/{i}"), &value, None).unwrap();
            let _ = s.get(&format!("ns/d/0/{i}"));
        }
        let m = memory.borrow();
        assert!(m.bytes <= MAX_REMEMBERED_BYTES, "{}", m.bytes);
        let real: usize = m.entries.iter().map(|(k, e)| k.len() + e.value.len()).sum();
        assert_eq!(m.bytes, real, "the byte count is exact");
    }

    #[test]
    fn a_model_behind_the_counter_is_set_right_by_our_own_value() {
        let store = LocalStore::default();
        let memory = RefCell::new(WriteMemory::default());
        let s = RememberingStore::new(&store, &memory);
        store.set("a", b"0", None).unwrap();
        store.set("b", b"0", None).unwrap();
        // We read the older key only: the model is one write behind.
        let (_, cas) = s.get("a");
        s.set("a", b"1", cas).unwrap();
        s.set("b", b"1", None).unwrap();
        let (v, cas) = s.remembered("a").unwrap();
        assert_eq!(v, b"1");
        assert!(s.set("a", b"2", Some(cas)).is_err(), "the guess was behind");
        // The read shows our own value: no cool-down, the model is corrected.
        let (_, cas) = s.get("a");
        s.set("a", b"2", cas).unwrap();
        let (_, cas) = s.remembered("a").unwrap();
        s.set("a", b"3", Some(cas)).unwrap();
        assert_eq!(store.get("a").0.unwrap(), b"3");
    }
}
