//! Envoy's local rate limit (`envoy.filters.http.local_ratelimit`, 1.40), with its
//! `LocalRateLimit` configuration in proto JSON, as the EnvoyFilter of Istio's
//! rate-limit task carries it.
//!
//! Semantics kept from Envoy 1.40 (`LocalRateLimiterImpl::requestAllowed`, checked
//! against the native filter in the host tests):
//! - Buckets refill continuously (`AtomicTokenBucketImpl`), start full, one
//!   token per request. `max_tokens: 0` always denies; no `token_bucket` means no
//!   default limit.
//! - The embedded `rate_limits` make request descriptors (one per entry, none if
//!   an action fails). A request descriptor matches a configured descriptor with
//!   the same entries; if none, the first wildcard descriptor (empty values match
//!   any value) whose keys line up, which gives one bucket per distinct value,
//!   at most `max_dynamic_descriptors` of them, least recently used evicted.
//! - Matched buckets are consumed in ascending fill rate (a stable sort, as
//!   `std::sort` on Envoy's small vectors), stopping at the first without a token.
//!   The default bucket is then consumed if nothing matched or
//!   `always_consume_default_token_bucket` (default true).
//! - Headers report the bucket that denied, else the first matched, else the
//!   default; remaining tokens are read again when the response headers go out.
//!
//! Across workers: every bucket lives in proxy-wasm shared data and is updated
//! with compare-and-swap ([`bucket::SharedBuckets`]), so the whole Envoy process
//! shares one bucket as the native filter does.

pub mod actions;
pub mod bucket;
pub mod config;
pub mod global;
pub mod remember;

pub use bucket::{BucketId, LocalStore, SharedBuckets, StoreStats, TokenBucket, MAX_CAS_ATTEMPTS};
pub use config::{
    AppendAction, DefaultBucket, Fraction, HeaderReads, HeaderToAdd, LocalRateLimit, RequestView,
};
pub use remember::{RememberingStore, WriteMemory};

use crate::host::SharedStore;

/// The result of [`LocalRateLimit::request_allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub allowed: bool,
    /// A `shadow_mode` descriptor had no token (its denial was ignored).
    pub shadow_limited: bool,
    /// The bucket whose state the `X-RateLimit-*` headers report.
    pub bucket: Option<BucketId>,
}

/// What the filter does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `filter_enabled` rolled false: nothing counted, nothing consumed.
    Disabled,
    Allowed,
    /// A `shadow_mode` descriptor was out of tokens but every other bucket
    /// admitted: counted as rate limited (and `shadow_mode`), passed on untouched.
    ShadowLimited,
    /// Over the limit but not enforced (`filter_enforced`): counted, passed on
    /// with `request_headers_to_add_when_not_enforced`.
    LimitedNotEnforced,
    /// Rejected with the configured status.
    Limited,
}

/// Hash of whatever identifies one plugin configuration, as the key prefix.
///
/// The configuration is hashed as JSON with its keys sorted and no whitespace,
/// so an update that writes the same limits differently (a control plane
/// re-rendering them, another field order) keeps the buckets and their tokens
/// instead of starting full ones. Bytes that are not JSON are hashed as they are.
pub fn namespace(plugin_name: &str, root_id: &str, configuration: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(configuration).map(|v| {
        let mut out = String::new();
        canonical_json(&v, &mut out);
        out
    });
    let configuration = canonical.as_ref().map_or(configuration, |c| c.as_bytes());
    let h = bucket::hash64(&(plugin_name, root_id, configuration));
    format!("{}.{:016x}", bucket::LAYOUT, h)
}

/// Compact JSON with object keys sorted, whatever order serde_json's maps keep.
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    canonical_json(x, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

impl LocalRateLimit {
    pub fn shared<'a>(&self, ns: &'a str) -> SharedBuckets<'a> {
        SharedBuckets {
            ns,
            max_dynamic: self.max_dynamic_descriptors,
        }
    }

    fn bucket(&self, id: BucketId) -> Option<&TokenBucket> {
        match id {
            BucketId::Default => match &self.default_bucket {
                DefaultBucket::Bucket(b) => Some(b),
                _ => None,
            },
            BucketId::Static(i) => self.static_descriptors.get(i).map(|d| &d.bucket),
            BucketId::Dynamic { spec, .. } => self.dynamic_descriptors.get(spec).map(|d| &d.bucket),
        }
    }

    /// Creates this configuration's keys in `store` (call from `on_configure`).
    pub fn init_store(&self, store: &dyn SharedStore, ns: &str, now: f64) {
        let mut statics: Vec<(BucketId, &TokenBucket)> = Vec::new();
        if let DefaultBucket::Bucket(b) = &self.default_bucket {
            statics.push((BucketId::Default, b));
        }
        for (i, d) in self.static_descriptors.iter().enumerate() {
            statics.push((BucketId::Static(i), &d.bucket));
        }
        self.shared(ns)
            .init(store, now, &statics, self.dynamic_descriptors.len());
    }

    /// The configured descriptor a request descriptor selects, if any.
    pub fn match_descriptor(&self, d: &[(String, String)]) -> Option<BucketId> {
        if let Some(i) = self.static_index.get(d) {
            return Some(BucketId::Static(*i));
        }
        for (j, spec) in self.dynamic_descriptors.iter().enumerate() {
            let fits = spec.entries.len() == d.len()
                && spec
                    .entries
                    .iter()
                    .zip(d)
                    .all(|((ck, cv), (rk, rv))| ck == rk && (cv.is_empty() || cv == rv));
            if fits {
                return Some(BucketId::Dynamic {
                    spec: j,
                    tag: bucket::hash64(d),
                });
            }
        }
        None
    }

    /// Envoy `LocalRateLimiterImpl::requestAllowed` over shared buckets.
    pub fn request_allowed(
        &self,
        store: &dyn SharedStore,
        ns: &str,
        now: f64,
        descriptors: &[Vec<(String, String)>],
        stats: &mut StoreStats,
    ) -> Admission {
        let shared = self.shared(ns);
        let mut matched: Vec<(BucketId, &TokenBucket)> = Vec::new();
        for d in descriptors {
            if let Some(id) = self.match_descriptor(d) {
                if let Some(b) = self.bucket(id) {
                    matched.push((id, b));
                }
            }
        }
        matched.sort_by(|a, b| a.1.fill_rate().total_cmp(&b.1.fill_rate()));

        let mut shadow_limited = false;
        for (id, b) in &matched {
            let ok = match id {
                BucketId::Dynamic { spec, tag } => {
                    shared.consume_dynamic(store, *spec, *tag, b, now, stats)
                }
                _ => shared.consume_static(store, &shared.static_key(*id), b, now, stats),
            };
            // A `shadow_mode` descriptor's denial is ignored: the request goes on
            // to the next bucket, as Envoy 1.40 does (checked against the native
            // filter in the host tests).
            if !ok && b.shadow_mode {
                shadow_limited = true;
            }
            if !ok && !b.shadow_mode {
                return Admission {
                    shadow_limited,
                    allowed: false,
                    bucket: Some(*id),
                };
            }
        }
        let first = matched.first().map(|(id, _)| *id);
        if matched.is_empty() || self.always_consume_default_token_bucket {
            match &self.default_bucket {
                DefaultBucket::None => {
                    return Admission {
                        shadow_limited,
                        allowed: true,
                        bucket: first,
                    }
                }
                DefaultBucket::AlwaysDeny => {
                    return Admission {
                        shadow_limited,
                        allowed: false,
                        bucket: None,
                    }
                }
                DefaultBucket::Bucket(b) => {
                    let key = shared.static_key(BucketId::Default);
                    if !shared.consume_static(store, &key, b, now, stats) {
                        return Admission {
                            shadow_limited,
                            allowed: false,
                            bucket: Some(BucketId::Default),
                        };
                    }
                    return Admission {
                        shadow_limited,
                        allowed: true,
                        bucket: Some(first.unwrap_or(BucketId::Default)),
                    };
                }
            }
        }
        Admission {
            shadow_limited,
            allowed: true,
            bucket: first,
        }
    }

    /// The whole per-request decision: `filter_enabled`, the buckets, then
    /// `filter_enforced`. `rolls` are two random
    /// numbers for the enabled/enforced fractions.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        store: &dyn SharedStore,
        ns: &str,
        now: f64,
        req: &RequestView<'_>,
        rolls: (u64, u64),
        stats: &mut StoreStats,
    ) -> (Verdict, Option<BucketId>) {
        if !self.enabled(rolls.0) {
            return (Verdict::Disabled, None);
        }
        let descriptors = self.request_descriptors(req);
        let a = self.request_allowed(store, ns, now, &descriptors, stats);
        if a.allowed && a.shadow_limited {
            return (Verdict::ShadowLimited, a.bucket);
        }
        if a.allowed {
            return (Verdict::Allowed, a.bucket);
        }
        if !self.enforced(rolls.1) {
            return (Verdict::LimitedNotEnforced, a.bucket);
        }
        (Verdict::Limited, a.bucket)
    }

    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` for a bucket at `now`.
    pub fn x_ratelimit(
        &self,
        store: &dyn SharedStore,
        ns: &str,
        now: f64,
        id: BucketId,
    ) -> Option<(u64, u64, u64)> {
        let b = self.bucket(id)?;
        let empty_at = self
            .shared(ns)
            .empty_at(store, id)
            .unwrap_or_else(|| b.full_at(now));
        Some((
            u64::from(b.max_tokens),
            b.remaining(empty_at, now),
            b.reset_seconds(empty_at, now),
        ))
    }
}

#[cfg(test)]
mod tests;
