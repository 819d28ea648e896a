//! The request header map indexed by a fixed list of names (a filter's
//! compiled header slots): read once, walked once, each name's first value
//! found without comparing names again, values handed out in place.

use meshwasm_core::http_match::{eq_bytes, strip_query};

use crate::HeaderMapBytes;

/// A header name as a length and its first eight bytes (zero-padded) in one
/// word: two integer compares tell most names apart, and decide names of up
/// to eight bytes outright.
#[derive(Clone, Copy, PartialEq, Eq)]
struct NameKey {
    len: usize,
    head: u64,
}

impl NameKey {
    fn of(name: &[u8]) -> NameKey {
        let mut w = [0u8; 8];
        let k = name.len().min(8);
        if let (Some(dst), Some(src)) = (w.get_mut(..k), name.get(..k)) {
            dst.copy_from_slice(src);
        }
        NameKey {
            len: name.len(),
            head: u64::from_le_bytes(w),
        }
    }

    /// The key of the name at `at` (`len` bytes) in `b`: one load of eight
    /// bytes when the buffer has them (a name is followed by its value, so
    /// nearly always), masked to the name.
    fn at(b: &[u8], at: usize, len: usize) -> NameKey {
        let word = at
            .checked_add(8)
            .and_then(|end| b.get(at..end))
            .and_then(|w| <[u8; 8]>::try_from(w).ok());
        match word {
            Some(w) => {
                let mask = if len >= 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * len)) - 1
                };
                NameKey {
                    len,
                    head: u64::from_le_bytes(w) & mask,
                }
            }
            None => NameKey::of(b.get(at..at.saturating_add(len)).unwrap_or_default()),
        }
    }
}

/// The header names a filter reads, compiled once (at configuration) for
/// [`HeaderIndex`]: the slots are indices into these names.
pub struct HeaderSlots {
    names: Vec<String>,
    keys: Vec<NameKey>,
}

impl HeaderSlots {
    /// `names` lower-case, as Envoy sends header names.
    pub fn new(names: &[String]) -> HeaderSlots {
        HeaderSlots {
            keys: names.iter().map(|n| NameKey::of(n.as_bytes())).collect(),
            names: names.to_vec(),
        }
    }

    /// The slot of `name`, whose key is `key`.
    fn find(&self, key: NameKey, name: &[u8]) -> Option<usize> {
        let slot = self.keys.iter().position(|k| *k == key)?;
        if key.len <= 8 {
            return Some(slot);
        }
        // Longer names: the rest decides (and another slot may share the head).
        self.keys
            .iter()
            .zip(&self.names)
            .skip(slot)
            .position(|(k, n)| {
                *k == key
                    && eq_bytes(
                        n.as_bytes().get(8..).unwrap_or_default(),
                        name.get(8..).unwrap_or_default(),
                    )
            })
            .map(|i| i + slot)
    }
}

/// Where one slot's name first appears in the map.
#[derive(Clone, Copy)]
struct Slot {
    /// The first value's range in the map; `start == u32::MAX` when absent.
    start: u32,
    end: u32,
    /// The name appears again later (the rare case: then `any` walks the map).
    repeated: bool,
}

const ABSENT: Slot = Slot {
    start: u32::MAX,
    end: 0,
    repeated: false,
};

pub struct HeaderIndex {
    map: HeaderMapBytes,
    /// Per slot (index into the names it was built with).
    slots: Vec<Slot>,
    /// Where the first `:path` value lies in the map, without its query or
    /// fragment.
    url_path: Option<(usize, usize)>,
}

impl HeaderIndex {
    /// The request headers, read from the host (one host call).
    pub fn read(names: &HeaderSlots) -> HeaderIndex {
        HeaderIndex::new(crate::request_header_map(), names)
    }

    /// Indexes `map` by `names`.
    pub fn new(map: HeaderMapBytes, names: &HeaderSlots) -> HeaderIndex {
        let path_key = NameKey::of(b":path");
        let mut slots = vec![ABSENT; names.keys.len()];
        let mut url_path = None;
        let b = map.bytes();
        for (n, v) in map.walk() {
            let key = NameKey::at(b, n.start, n.len());
            if key == path_key && url_path.is_none() {
                let len = b.get(v.clone()).map_or(0, |p| strip_query(p).len());
                url_path = Some((v.start, v.start.saturating_add(len)));
            }
            let Some(slot) = names
                .find(key, b.get(n).unwrap_or_default())
                .and_then(|i| slots.get_mut(i))
            else {
                continue;
            };
            if slot.start != u32::MAX {
                slot.repeated = true;
            } else if let (Ok(start), Ok(end)) = (u32::try_from(v.start), u32::try_from(v.end)) {
                *slot = Slot {
                    start,
                    end,
                    repeated: false,
                };
            }
        }
        HeaderIndex {
            map,
            slots,
            url_path,
        }
    }

    /// Whether any value of the header in `slot` satisfies `pred`, in order,
    /// stopping at the first that does; `None` when absent. A slot the index
    /// was not built with is looked up by `name`. Values as the host sent them.
    pub fn any(
        &self,
        slot: usize,
        name: &str,
        pred: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<bool> {
        let Some(s) = self.slots.get(slot) else {
            return self.any_by_name(name, 0, pred);
        };
        if s.start == u32::MAX {
            return None;
        }
        let first = self.map.bytes().get(s.start as usize..s.end as usize);
        if first.is_some_and(&mut *pred) {
            return Some(true);
        }
        if !s.repeated {
            return Some(false);
        }
        // The later values: every value of `name` but the first.
        Some(self.any_by_name(name, 1, pred).unwrap_or(false))
    }

    /// `any` by comparing names, skipping the first `skip` values.
    fn any_by_name(
        &self,
        name: &str,
        skip: usize,
        pred: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<bool> {
        let b = self.map.bytes();
        let mut found = None;
        let mut seen = 0usize;
        for (n, v) in self.map.walk() {
            if !b.get(n).is_some_and(|n| eq_bytes(n, name.as_bytes())) {
                continue;
            }
            seen += 1;
            if seen <= skip {
                continue;
            }
            if b.get(v).is_some_and(&mut *pred) {
                return Some(true);
            }
            found = Some(false);
        }
        found
    }

    /// Every `(name, value)` pair, in the host's order (see
    /// [`HeaderMapBytes::pairs`]): the same map, not read again.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        self.map.pairs()
    }

    /// The first `:path` without query and fragment (Envoy
    /// `PathUtil::removeQueryAndFragment`), found once when indexing.
    pub fn url_path(&self) -> Option<&[u8]> {
        let (start, end) = self.url_path?;
        self.map.bytes().get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::{HeaderIndex, HeaderSlots};
    use crate::tests::serialize;
    use crate::HeaderMapBytes;

    fn values(ix: &HeaderIndex, slot: usize, name: &str) -> Option<Vec<Vec<u8>>> {
        let mut seen = Vec::new();
        let any = ix.any(slot, name, &mut |v| {
            seen.push(v.to_vec());
            false
        });
        any.map(|_| seen)
    }

    #[test]
    fn values_by_slot_in_order_absent_and_raw() {
        let map = HeaderMapBytes(serialize(&[
            (":path", b"/a?b"),
            ("x-dup", b"1"),
            ("x-other", b"o"),
            ("x-dup", b"2"),
            ("x-empty", b""),
            ("x-bin", b"\xffz"),
            (":path", b"/second"),
        ]));
        let names: Vec<String> = ["x-dup", "x-absent", "x-empty", "x-bin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ix = HeaderIndex::new(map, &HeaderSlots::new(&names));
        assert_eq!(
            values(&ix, 0, "x-dup"),
            Some(vec![b"1".to_vec(), b"2".to_vec()])
        );
        assert_eq!(values(&ix, 1, "x-absent"), None);
        assert_eq!(values(&ix, 2, "x-empty"), Some(vec![Vec::new()]));
        // Not UTF-8: handed out as it is (Envoy's RBAC compares bytes).
        assert_eq!(values(&ix, 3, "x-bin"), Some(vec![b"\xffz".to_vec()]));
        // Not a slot it was built with: found by name.
        assert_eq!(values(&ix, 9, "x-other"), Some(vec![b"o".to_vec()]));
        assert_eq!(values(&ix, 9, "x-none"), None);
        // Stops at the first value that satisfies the predicate.
        let mut calls = 0;
        assert_eq!(
            ix.any(0, "x-dup", &mut |v| {
                calls += 1;
                v == b"1"
            }),
            Some(true)
        );
        assert_eq!(calls, 1);
        assert_eq!(ix.url_path(), Some(&b"/a"[..]));
    }

    /// Names are told apart by length and first eight bytes, then the rest:
    /// long names sharing a head, names of exactly eight bytes, `:path` as a
    /// slot of its own, and the last name of a map whose value is too short
    /// for an eight-byte load past the name.
    #[test]
    fn names_sharing_a_head_or_at_the_end_of_the_map() {
        let map = HeaderMapBytes(serialize(&[
            ("x-forwarded-host", b"h"),
            ("x-forwarded-for", b"f"),
            (":path", b"/p?q"),
            ("x-abcdef", b"8"),
            ("x-abcdefg", b"9"),
            ("x-forwarded-forx", b"fx"),
            ("ab", b""),
        ]));
        let names: Vec<String> = [
            "x-forwarded-for",
            "x-forwarded-forx",
            "x-forwarded-host",
            "x-abcdef",
            "x-abcdefg",
            ":path",
            "ab",
            "x-forwarded-fo",
            "a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ix = HeaderIndex::new(map, &HeaderSlots::new(&names));
        let want: [Option<&[u8]>; 9] = [
            Some(b"f"),
            Some(b"fx"),
            Some(b"h"),
            Some(b"8"),
            Some(b"9"),
            Some(b"/p?q"),
            Some(b""),
            None,
            None,
        ];
        for (slot, (name, want)) in names.iter().zip(want).enumerate() {
            let got = values(&ix, slot, name);
            assert_eq!(got, want.map(|w| vec![w.to_vec()]), "{name}");
        }
        assert_eq!(ix.url_path(), Some(&b"/p"[..]));
    }

    #[test]
    fn an_empty_or_malformed_map_has_nothing() {
        let names = vec!["x".to_string()];
        let ix = HeaderIndex::new(HeaderMapBytes(Vec::new()), &HeaderSlots::new(&names));
        assert_eq!(ix.any(0, "x", &mut |_| true), None);
        assert_eq!(ix.url_path(), None);
        let mut bad = serialize(&[("x", b"1")]);
        bad.truncate(bad.len() - 2);
        let ix = HeaderIndex::new(HeaderMapBytes(bad), &HeaderSlots::new(&names));
        assert_eq!(ix.any(0, "x", &mut |_| true), None);
    }
}
