//! Which policies of an engine a request path can match, found in one walk
//! along the path instead of one prefix test per policy.
//!
//! Most policies name paths, so most of a large set fails on the path (see
//! `Policy::path_guard`). Testing each policy's guard costs work per policy;
//! walking the path through a trie of every guard prefix costs about as much
//! as one such test, once for the whole engine.

use super::Policy;

/// Engines with fewer guarded policies than this test each guard directly:
/// for them the walk and the candidate set cost more than they save.
pub(crate) const MIN_GUARDED: usize = 4;

/// Sets policy `i`'s bit in a one-bit-per-policy set.
#[inline]
fn set_bit(bits: &mut [u64], i: u32) {
    if let Some(word) = bits.get_mut((i / 64) as usize) {
        *word |= 1 << (i % 64);
    }
}

/// A trie of every guard prefix of an engine's policies.
#[derive(Debug, Clone)]
pub(crate) struct GuardIndex {
    /// Node 0 is the root (the empty prefix).
    nodes: Vec<Node>,
    /// One bit per policy: the policies without a guard, candidates for any path.
    unguarded: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// (next byte, child node).
    edges: Vec<(u8, u32)>,
    /// Policies with a guard prefix ending at this node.
    ends: Vec<u32>,
}

/// Candidate policies of one request: one bit per policy, in policy order.
/// On the stack up to 256 policies.
pub(crate) struct Candidates {
    inline: [u64; 4],
    heap: Vec<u64>,
    words: usize,
}

impl Candidates {
    fn new(template: &[u64]) -> Candidates {
        let words = template.len();
        let mut c = Candidates {
            inline: [0; 4],
            heap: Vec::new(),
            words,
        };
        if words <= c.inline.len() {
            if let Some(dst) = c.inline.get_mut(..words) {
                dst.copy_from_slice(template);
            }
        } else {
            c.heap = template.to_vec();
        }
        c
    }

    fn bits_mut(&mut self) -> &mut [u64] {
        if self.heap.is_empty() {
            self.inline.get_mut(..self.words).unwrap_or_default()
        } else {
            &mut self.heap
        }
    }

    fn bits(&self) -> &[u64] {
        if self.heap.is_empty() {
            self.inline.get(..self.words).unwrap_or_default()
        } else {
            &self.heap
        }
    }

    fn set(&mut self, i: u32) {
        set_bit(self.bits_mut(), i);
    }

    /// The candidate policies' indices, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits().iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(w * 64 + b)
            })
        })
    }
}

impl GuardIndex {
    /// The index of `policies`' guards; `None` when too few have one to pay
    /// for it (see [`MIN_GUARDED`]).
    pub(crate) fn build(policies: &[Policy]) -> Option<GuardIndex> {
        GuardIndex::build_with_min(policies, MIN_GUARDED)
    }

    /// [`GuardIndex::build`] with another threshold (tests index every engine).
    pub(crate) fn build_with_min(policies: &[Policy], min_guarded: usize) -> Option<GuardIndex> {
        let guarded = policies.iter().filter(|p| p.path_guard.is_some()).count();
        if guarded < min_guarded.max(1) {
            return None;
        }
        let words = policies.len().div_ceil(64);
        let mut ix = GuardIndex {
            nodes: vec![Node::default()],
            unguarded: vec![0; words],
        };
        for (i, p) in policies.iter().enumerate() {
            let i = u32::try_from(i).ok()?;
            match &p.path_guard {
                None => set_bit(&mut ix.unguarded, i),
                Some(prefixes) => {
                    for prefix in prefixes {
                        let node = ix.insert(prefix.as_bytes())?;
                        if let Some(n) = ix.nodes.get_mut(node) {
                            n.ends.push(i);
                        }
                    }
                }
            }
        }
        Some(ix)
    }

    /// The node for `prefix`, created with its parents as needed.
    fn insert(&mut self, prefix: &[u8]) -> Option<usize> {
        let mut node = 0usize;
        for &b in prefix {
            let found = self
                .nodes
                .get(node)?
                .edges
                .iter()
                .find(|(e, _)| *e == b)
                .map(|(_, c)| *c as usize);
            node = match found {
                Some(c) => c,
                None => {
                    let c = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes
                        .get_mut(node)?
                        .edges
                        .push((b, u32::try_from(c).ok()?));
                    c
                }
            };
        }
        Some(node)
    }

    /// The policies whose guard admits `path` (one of its prefixes starts
    /// the path), and every policy without a guard. Without a path, only the
    /// latter: a guarded policy needs a path condition to hold.
    pub(crate) fn candidates(&self, path: Option<&[u8]>) -> Candidates {
        let mut c = Candidates::new(&self.unguarded);
        let Some(path) = path else {
            return c;
        };
        let mut node = 0usize;
        for &b in path {
            let Some(next) = self
                .nodes
                .get(node)
                .and_then(|n| n.edges.iter().find(|(e, _)| *e == b))
            else {
                break;
            };
            node = next.1 as usize;
            if let Some(n) = self.nodes.get(node) {
                for &p in &n.ends {
                    c.set(p);
                }
            }
        }
        c
    }
}
