//! The request header map indexed by a fixed list of names (a filter's
//! compiled header slots): read once, walked once, each name's first value
//! found without comparing names again, values handed out in place.

use std::ops::Range;

use meshwasm_core::authz::strip_query;
use meshwasm_core::http_match::eq_bytes;

use crate::HeaderMapBytes;

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
    /// The first `:path` value, and where its query or fragment starts.
    path: Option<(Range<usize>, usize)>,
}

impl HeaderIndex {
    /// The request headers, read from the host (one host call).
    pub fn read(names: &[String]) -> HeaderIndex {
        HeaderIndex::new(crate::request_header_map(), names)
    }

    /// Indexes `map` by `names` (lower-case, as Envoy sends header names).
    pub fn new(map: HeaderMapBytes, names: &[String]) -> HeaderIndex {
        let mut slots = vec![ABSENT; names.len()];
        let mut path = None;
        // The names' lengths (63 and longer share a bit): most pairs are
        // passed over without comparing their name with any.
        let lengths = names.iter().fold(0u64, |m, s| m | 1 << s.len().min(63));
        let b = map.bytes();
        for (n, v) in map.walk() {
            let Some(name) = b.get(n) else {
                continue;
            };
            if path.is_none() && eq_bytes(name, b":path") {
                let url_end = b
                    .get(v.clone())
                    .map_or(0, |p| strip_query(p).len())
                    .saturating_add(v.start);
                path = Some((v.clone(), url_end));
            }
            if lengths >> name.len().min(63) & 1 == 0 {
                continue;
            }
            let Some(slot) = names
                .iter()
                .position(|s| eq_bytes(s.as_bytes(), name))
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
        HeaderIndex { map, slots, path }
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

    /// The first `:path` value, as the host sent it.
    pub fn path(&self) -> Option<&[u8]> {
        self.path
            .as_ref()
            .and_then(|(v, _)| self.map.bytes().get(v.clone()))
    }

    /// The first `:path` without query and fragment (Envoy
    /// `PathUtil::removeQueryAndFragment`), found once when indexing.
    pub fn url_path(&self) -> Option<&[u8]> {
        self.path
            .as_ref()
            .and_then(|(v, end)| self.map.bytes().get(v.start..*end))
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderIndex;
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
        let ix = HeaderIndex::new(map, &names);
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
        assert_eq!(ix.path(), Some(&b"/a?b"[..]));
        assert_eq!(ix.url_path(), Some(&b"/a"[..]));
    }

    #[test]
    fn an_empty_or_malformed_map_has_nothing() {
        let names = vec!["x".to_string()];
        let ix = HeaderIndex::new(HeaderMapBytes(Vec::new()), &names);
        assert_eq!(ix.any(0, "x", &mut |_| true), None);
        assert_eq!(ix.path(), None);
        assert_eq!(ix.url_path(), None);
        let mut bad = serialize(&[("x", b"1")]);
        bad.truncate(bad.len() - 2);
        let ix = HeaderIndex::new(HeaderMapBytes(bad), &names);
        assert_eq!(ix.any(0, "x", &mut |_| true), None);
    }
}
