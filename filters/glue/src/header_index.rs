//! The request header map indexed by a fixed list of names (a filter's
//! compiled header slots): read once, each name's values linked in the
//! host's order, handed out in place without copying.

use std::borrow::Cow;
use std::ops::Range;

use meshwasm_core::http_match::eq_bytes;

use crate::HeaderMapBytes;

/// "No pair" in the links.
const NONE: u32 = u32::MAX;

pub struct HeaderIndex {
    map: HeaderMapBytes,
    ranges: Vec<(Range<usize>, Range<usize>)>,
    /// One allocation for two lists: per slot (index into the names it was
    /// built with) its first pair, then per pair the next pair of its slot.
    links: Vec<u32>,
    /// How many slots `links` starts with.
    slots: usize,
    /// The first `:path` pair.
    path: Option<usize>,
}

impl HeaderIndex {
    /// The request headers, read from the host (one host call).
    pub fn read(names: &[String]) -> HeaderIndex {
        HeaderIndex::new(crate::request_header_map(), names)
    }

    /// Indexes `map` by `names` (lower-case, as Envoy sends header names).
    pub fn new(map: HeaderMapBytes, names: &[String]) -> HeaderIndex {
        let ranges = map.ranges();
        let slots = names.len();
        let mut links = vec![NONE; slots.saturating_add(ranges.len())];
        let mut path = None;
        let b = map.bytes();
        // Backwards, so each slot's list ends up in the host's order.
        for (i, (n, _)) in ranges.iter().enumerate().rev() {
            let Some(name) = b.get(n.clone()) else {
                continue;
            };
            if eq_bytes(name, b":path") {
                path = Some(i);
            }
            if let Some(slot) = names.iter().position(|s| eq_bytes(s.as_bytes(), name)) {
                let head = links.get(slot).copied().unwrap_or(NONE);
                if let Some(x) = links.get_mut(slots.saturating_add(i)) {
                    *x = head;
                }
                if let Some(f) = links.get_mut(slot) {
                    *f = i as u32;
                }
            }
        }
        HeaderIndex {
            map,
            ranges,
            links,
            slots,
            path,
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
        let head = (slot < self.slots).then(|| self.links.get(slot).copied());
        let Some(Some(head)) = head else {
            let b = self.map.bytes();
            let mut found = None;
            for (j, (n, _)) in self.ranges.iter().enumerate() {
                if b.get(n.clone())
                    .is_some_and(|n| eq_bytes(n, name.as_bytes()))
                {
                    if self.value(j).is_some_and(&mut *pred) {
                        return Some(true);
                    }
                    found = Some(false);
                }
            }
            return found;
        };
        if head == NONE {
            return None;
        }
        let mut i = head;
        while i != NONE {
            let at = i as usize;
            if self.value(at).is_some_and(&mut *pred) {
                return Some(true);
            }
            i = self
                .links
                .get(self.slots.saturating_add(at))
                .copied()
                .unwrap_or(NONE);
        }
        Some(false)
    }

    /// Every `(name, value)` pair, in the host's order (see
    /// [`HeaderMapBytes::pairs`]): the same map, not read again.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        self.map.pairs()
    }

    /// The first `:path` value.
    pub fn path(&self) -> Option<Cow<'_, str>> {
        self.path.and_then(|i| self.value(i)).map(text)
    }

    fn value(&self, i: usize) -> Option<&[u8]> {
        self.map.bytes().get(self.ranges.get(i)?.1.clone())
    }
}

/// A header value as text: in place when UTF-8 (nearly always), else lossy.
fn text(v: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(v) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v),
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
        assert_eq!(ix.path().as_deref(), Some("/a?b"));
    }

    #[test]
    fn an_empty_or_malformed_map_has_nothing() {
        let names = vec!["x".to_string()];
        let ix = HeaderIndex::new(HeaderMapBytes(Vec::new()), &names);
        assert_eq!(ix.any(0, "x", &mut |_| true), None);
        assert_eq!(ix.path(), None);
        let mut bad = serialize(&[("x", b"1")]);
        bad.truncate(bad.len() - 2);
        let ix = HeaderIndex::new(HeaderMapBytes(bad), &names);
        assert_eq!(ix.any(0, "x", &mut |_| true), None);
    }
}
