#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::net::IpAddr;

use serde_json::json;

use super::*;
use crate::host::{CasMismatch, RandomSource, SharedStore};

fn cfg(v: serde_json::Value) -> LocalRateLimit {
    LocalRateLimit::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(v: serde_json::Value) -> String {
    LocalRateLimit::from_json(v.to_string().as_bytes())
        .expect_err("config should be refused")
        .to_string()
}

fn hdrs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn d(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const NS: &str = "t";

/// Admits `n` requests with the same descriptors at `now`; returns how many passed.
fn burst(
    c: &LocalRateLimit,
    s: &LocalStore,
    now: f64,
    descs: &[Vec<(String, String)>],
    n: usize,
) -> usize {
    let mut st = StoreStats::default();
    (0..n)
        .filter(|_| c.request_allowed(s, NS, now, descs, &mut st).allowed)
        .count()
}

// ------------------------------------------------------------------ config

#[test]
fn istio_task_config_parses() {
    let c = cfg(json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "http_local_rate_limiter",
        "token_bucket": {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval": "60s"},
        "filter_enabled": {"runtime_key": "local_rate_limit_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"runtime_key": "local_rate_limit_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": "x-local-rate-limit", "value": "true"}}]
    }));
    assert_eq!(c.status, 429);
    assert!(c.enabled(12345) && c.enforced(999));
    assert!(
        matches!(&c.default_bucket, DefaultBucket::Bucket(b) if b.max_tokens == 4 && b.tokens_per_fill == 4)
    );
    assert_eq!(
        c.response_headers_to_add[0].action,
        AppendAction::OverwriteIfExistsOrAdd
    );
    assert!(c.always_consume_default_token_bucket);
    assert_eq!(c.max_dynamic_descriptors, 20);
}

#[test]
fn config_errors_name_the_field() {
    let base =
        || json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}});
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"stat_prefix": "a", "token_bukket": {}}), "token_bukket"),
        (json!({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}), "stat_prefix"),
        (json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}}), "token_bucket.fill_interval: local rate limit token bucket fill timer must be >= 50ms"),
        (json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 1, "tokens_per_fill": 0, "fill_interval": "1s"}}), "token_bucket.tokens_per_fill: must be greater than 0"),
        (json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 1}}), "token_bucket.fill_interval: is required"),
        (json!({"stat_prefix": "a", "rate_limits": [{"stage": 1, "actions": [{"remote_address": {}}]}]}), "rate_limits[0]: 'stage' field and 'disable_key' field are not supported"),
        (json!({"stat_prefix": "a", "rate_limits": [{"actions": [{"remote_address": {}, "generic_key": {"descriptor_value": "x"}}]}]}), "rate_limits[0].actions[0]: exactly one"),
        (json!({"stat_prefix": "a", "rate_limits": [{"actions": [{"request_headers": {"header_name": "x", "descriptor_key": ""}}]}]}), "rate_limits[0].actions[0].request_headers.descriptor_key"),
        (json!({"stat_prefix": "a", "rate_limits": [{"actions": [{"source_cluster": {}}]}]}), "rate_limits[0].actions[0].source_cluster: not supported"),
        (json!({"stat_prefix": "a", "rate_limits": [{"actions": [{"header_value_match": {"descriptor_value": "v", "headers": [{"name": "x", "safe_regex_match": {"regex": "("}}]}}]}]}), "rate_limits[0].actions[0].header_value_match.headers[0].safe_regex_match.regex: invalid regex"),
        (json!({"stat_prefix": "a", "descriptors": [{"entries": [{"key": "k", "value": "v"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}, {"entries": [{"key": "k", "value": "v"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]}), "descriptors[1]: duplicate descriptor in the local rate descriptor: k=v"),
        (json!({"stat_prefix": "a", "descriptors": [{"entries": [{"key": "k", "value": "v"}]}]}), "descriptors[0].token_bucket: is required"),
        (json!({"stat_prefix": "a", "filter_enabled": {"runtime_key": "k", "default_value": {"numerator": 1, "denominator": "THOUSAND"}}}), "filter_enabled.default_value.denominator"),
        (json!({"stat_prefix": "a", "enable_x_ratelimit_headers": "DRAFT_VERSION_04"}), "enable_x_ratelimit_headers"),
        (json!({"stat_prefix": "a", "response_headers_to_add": [{"header": {"key": "x", "value": "%REQ(x)%"}}]}), "response_headers_to_add[0].header.value"),
        (json!({"stat_prefix": "a", "local_cluster_rate_limit": {}}), "local_cluster_rate_limit: not supported"),
        (json!({"stat_prefix": "a", "max_dynamic_descriptors": 2_000_000}), "max_dynamic_descriptors"),
        (json!({"stat_prefix": "a", "status": {"code": "Teapot"}}), "status.code"),
    ];
    for (v, want) in cases {
        let got = err(v.clone());
        assert!(got.contains(want), "{v}: got {got:?}, want {want:?}");
    }
    cfg(base());
}

#[test]
fn status_below_400_becomes_429_and_names_are_accepted() {
    let s =
        |code: serde_json::Value| cfg(json!({"stat_prefix": "a", "status": {"code": code}})).status;
    assert_eq!(s(json!(200)), 429);
    assert_eq!(s(json!(503)), 503);
    assert_eq!(s(json!("ServiceUnavailable")), 503);
    assert_eq!(s(json!("TooManyRequests")), 429);
}

#[test]
fn fractions_roll_like_envoy_runtime() {
    let f = Fraction {
        numerator: 25,
        denominator: 100,
    };
    let hits = (0..10_000u64).filter(|r| f.roll(*r)).count();
    assert_eq!(hits, 2500);
    assert!(!Fraction {
        numerator: 0,
        denominator: 100
    }
    .roll(0));
    assert!(Fraction {
        numerator: 200,
        denominator: 100
    }
    .roll(99));
    // absent filter_enabled = 0 %: the filter does nothing.
    let c =
        cfg(json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}));
    assert!(!c.enabled(0));
    let s = LocalStore::default();
    let req = RequestView {
        headers: &[],
        remote_ip: None,
    };
    let mut st = StoreStats::default();
    assert_eq!(
        c.decide(&s, NS, 10.0, &req, (0, 0), &mut st).0,
        Verdict::Disabled
    );
    assert!(s.is_empty(), "a disabled filter touches no bucket");
}

// ------------------------------------------------------------------ bucket arithmetic

#[test]
fn bucket_arithmetic_table() {
    // (max, per_fill, interval_s, [(time, expect_allowed)])
    type Case = (u32, u32, f64, Vec<(f64, bool)>);
    let cases: Vec<Case> = vec![
        // starts full, then empty; continuous refill: 1 token per second.
        (
            3,
            1,
            1.0,
            vec![
                (0.0, true),
                (0.0, true),
                (0.0, true),
                (0.0, false),
                (0.5, false),
                (1.0, true),
                (1.0, false),
            ],
        ),
        // tokens_per_fill 2 per 10 s = 0.2/s: a token every 5 s, not 2 tokens at 10 s.
        (
            2,
            2,
            10.0,
            vec![
                (0.0, true),
                (0.0, true),
                (0.0, false),
                (4.9, false),
                (5.0, true),
                (9.9, false),
                (10.0, true),
            ],
        ),
        // the bucket never holds more than max_tokens however long it idles.
        (
            2,
            1,
            1.0,
            vec![(0.0, true), (100.0, true), (100.0, true), (100.0, false)],
        ),
    ];
    for (max, per, secs, steps) in cases {
        let b = TokenBucket::new(max, per, std::time::Duration::from_secs_f64(secs));
        let t0 = 1000.0;
        let mut empty_at = b.full_at(t0);
        for (i, (t, want)) in steps.iter().enumerate() {
            let got = b.try_consume(empty_at, t0 + t);
            assert_eq!(
                got.is_some(),
                *want,
                "max={max} per={per} step {i} at +{t}s"
            );
            if let Some(e) = got {
                empty_at = e;
            }
        }
    }
}

#[test]
fn x_ratelimit_values_match_native() {
    // Observed on Envoy 1.40: max 3, 2 per 10 s; after 3 requests remaining 0,
    // reset 5; 3 s later reset 2.
    let b = TokenBucket::new(3, 2, std::time::Duration::from_secs(10));
    let t0 = 50.0;
    let mut e = b.full_at(t0);
    assert_eq!((b.remaining(e, t0), b.reset_seconds(e, t0)), (3, 0));
    for _ in 0..3 {
        e = b.try_consume(e, t0).unwrap();
    }
    assert_eq!((b.remaining(e, t0), b.reset_seconds(e, t0)), (0, 5));
    assert_eq!(b.reset_seconds(e, t0 + 3.0), 2);
    assert_eq!(b.remaining(e, t0 + 5.0), 1);
    // 2 tokens/s, empty: under a second to the next token rounds up to 1.
    let b = TokenBucket::new(3, 2, std::time::Duration::from_secs(1));
    let mut e = b.full_at(t0);
    for _ in 0..3 {
        e = b.try_consume(e, t0).unwrap();
    }
    assert_eq!(b.reset_seconds(e, t0), 1);
    assert_eq!(b.reset_seconds(e, t0 + 0.4), 1);
    assert_eq!(b.reset_seconds(e, t0 + 0.5), 0);
}

// ------------------------------------------------------------------ descriptors

fn actions_cfg(actions: serde_json::Value) -> LocalRateLimit {
    cfg(json!({
        "stat_prefix": "a",
        "descriptors": [{"entries": [{"key": "unused", "value": "x"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}],
        "rate_limits": [{"actions": actions}]
    }))
}

#[test]
fn actions_make_descriptors_like_envoy() {
    let v4: IpAddr = "10.1.2.3".parse().unwrap();
    let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
    type Case = (
        serde_json::Value,
        Vec<(&'static str, &'static str)>,
        Option<IpAddr>,
        Option<Vec<(&'static str, &'static str)>>,
    );
    let cases: Vec<Case> = vec![
        (
            json!([{"request_headers": {"header_name": "X-User", "descriptor_key": "user"}}]),
            vec![("x-user", "alice"), ("x-user", "bob")],
            None,
            Some(vec![("user", "alice")]),
        ),
        (
            json!([{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]),
            vec![],
            None,
            None,
        ),
        (
            json!([{"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": true}}, {"generic_key": {"descriptor_value": "g"}}]),
            vec![],
            None,
            Some(vec![("generic_key", "g")]),
        ),
        (
            json!([{"remote_address": {}}]),
            vec![],
            Some(v4),
            Some(vec![("remote_address", "10.1.2.3")]),
        ),
        (json!([{"remote_address": {}}]), vec![], None, None),
        (
            json!([{"masked_remote_address": {"v4_prefix_mask_len": 24}}]),
            vec![],
            Some(v4),
            Some(vec![("masked_remote_address", "10.1.2.0/24")]),
        ),
        (
            json!([{"masked_remote_address": {}}]),
            vec![],
            Some(v4),
            Some(vec![("masked_remote_address", "10.1.2.3/32")]),
        ),
        (
            json!([{"masked_remote_address": {"v6_prefix_mask_len": 64}}]),
            vec![],
            Some(v6),
            Some(vec![("masked_remote_address", "2001:db8:1:2::/64")]),
        ),
        (
            json!([{"generic_key": {"descriptor_key": "k", "descriptor_value": "v"}}]),
            vec![],
            None,
            Some(vec![("k", "v")]),
        ),
        (
            json!([{"header_value_match": {"descriptor_value": "get", "headers": [{"name": ":method", "exact_match": "GET"}]}}]),
            vec![(":method", "GET")],
            None,
            Some(vec![("header_match", "get")]),
        ),
        (
            json!([{"header_value_match": {"descriptor_value": "get", "headers": [{"name": ":method", "exact_match": "GET"}]}}]),
            vec![(":method", "POST")],
            None,
            None,
        ),
        (
            json!([{"header_value_match": {"descriptor_value": "nget", "expect_match": false, "headers": [{"name": ":method", "exact_match": "GET"}]}}]),
            vec![(":method", "POST")],
            None,
            Some(vec![("header_match", "nget")]),
        ),
        (
            json!([{"header_value_match": {"descriptor_value": "p", "headers": [{"name": "x-a", "string_match": {"prefix": "AB", "ignore_case": true}}, {"name": "x-b", "present_match": false}]}}]),
            vec![("x-a", "abc")],
            None,
            Some(vec![("header_match", "p")]),
        ),
        (
            json!([{"header_value_match": {"descriptor_value": "r", "headers": [{"name": "x-a", "safe_regex_match": {"regex": "a+b"}}]}}]),
            vec![("x-a", "aab")],
            None,
            Some(vec![("header_match", "r")]),
        ),
        (
            json!([{"header_value_match": {"descriptor_value": "r", "headers": [{"name": "x-a", "safe_regex_match": {"regex": "a+b"}}]}}]),
            vec![("x-a", "aabc")],
            None,
            None,
        ),
        (
            json!([{"query_parameters": {"query_parameter_name": "user", "descriptor_key": "u"}}]),
            vec![(":path", "/p?a=1&user=al%20ice&user=bob")],
            None,
            Some(vec![("u", "al ice")]),
        ),
        (
            json!([{"query_parameters": {"query_parameter_name": "user", "descriptor_key": "u"}}]),
            vec![(":path", "/p?a=1")],
            None,
            None,
        ),
        (
            json!([{"query_parameter_value_match": {"descriptor_value": "dbg", "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}]}}]),
            vec![(":path", "/p?debug=1")],
            None,
            Some(vec![("query_match", "dbg")]),
        ),
        // several actions: one descriptor with their entries in order.
        (
            json!([{"generic_key": {"descriptor_value": "api"}}, {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]),
            vec![("x-user", "u1")],
            None,
            Some(vec![("generic_key", "api"), ("user", "u1")]),
        ),
    ];
    for (i, (actions, headers, ip, want)) in cases.into_iter().enumerate() {
        let c = actions_cfg(actions.clone());
        let h = hdrs(&headers);
        let req = RequestView {
            headers: &h,
            remote_ip: ip,
        };
        let got = c.request_descriptors(&req);
        let want: Vec<Vec<(String, String)>> = want.into_iter().map(|w| d(&w)).collect();
        assert_eq!(got, want, "case {i}: {actions}");
    }
}

#[test]
fn no_descriptors_configured_means_no_descriptors_produced() {
    let c = cfg(
        json!({"stat_prefix": "a", "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "v"}}]}]}),
    );
    let req = RequestView {
        headers: &[],
        remote_ip: None,
    };
    assert!(c.request_descriptors(&req).is_empty());
}

// ------------------------------------------------------------------ matching and order

fn two_level() -> serde_json::Value {
    json!({
        "stat_prefix": "a",
        "token_bucket": {"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "1s"},
        "descriptors": [
            // 5/s and 1/s: the 1/s bucket is consumed first.
            {"entries": [{"key": "path", "value": "/a"}], "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "1s"}},
            {"entries": [{"key": "user", "value": "u1"}], "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "1s"}},
            {"entries": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}], "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}
        ]
    })
}

#[test]
fn descriptor_match_is_whole_and_verbatim() {
    let c = cfg(two_level());
    assert_eq!(
        c.match_descriptor(&d(&[("path", "/a")])),
        Some(BucketId::Static(0))
    );
    assert_eq!(
        c.match_descriptor(&d(&[("a", "1"), ("b", "2")])),
        Some(BucketId::Static(2))
    );
    // no partial, no reordering, no prefix
    assert_eq!(c.match_descriptor(&d(&[("a", "1")])), None);
    assert_eq!(c.match_descriptor(&d(&[("b", "2"), ("a", "1")])), None);
    assert_eq!(c.match_descriptor(&d(&[("path", "/ab")])), None);
    assert_eq!(
        c.match_descriptor(&d(&[("path", "/a"), ("user", "u1")])),
        None
    );
}

#[test]
fn matched_buckets_consumed_in_ascending_fill_rate_and_stop_at_first_empty() {
    let c = cfg(two_level());
    let s = LocalStore::default();
    let descs = vec![d(&[("path", "/a")]), d(&[("user", "u1")])];
    let t = 100.0;
    let mut st = StoreStats::default();
    // user bucket (1/s, max 2) goes first: 2 pass, the 3rd is denied by it.
    for _ in 0..2 {
        let a = c.request_allowed(&s, NS, t, &descs, &mut st);
        assert_eq!(
            a,
            Admission {
                shadow_limited: false,
                allowed: true,
                bucket: Some(BucketId::Static(1))
            }
        );
    }
    let a = c.request_allowed(&s, NS, t, &descs, &mut st);
    assert_eq!(
        a,
        Admission {
            shadow_limited: false,
            allowed: false,
            bucket: Some(BucketId::Static(1))
        }
    );
    // ... and the denial did not consume the path bucket nor the default one.
    let (_, path_left, _) = c.x_ratelimit(&s, NS, t, BucketId::Static(0)).unwrap();
    let (_, default_left, _) = c.x_ratelimit(&s, NS, t, BucketId::Default).unwrap();
    assert_eq!((path_left, default_left), (3, 8));
}

#[test]
fn default_bucket_consumption_rules() {
    let t = 100.0;
    // always_consume_default_token_bucket (default true): a matched request also takes a default token.
    let c = cfg(two_level());
    let s = LocalStore::default();
    assert_eq!(burst(&c, &s, t, &[d(&[("path", "/a")])], 5), 5);
    assert_eq!(c.x_ratelimit(&s, NS, t, BucketId::Default).unwrap().1, 5);
    // false: matched requests leave the default bucket alone.
    let mut v = two_level();
    v["always_consume_default_token_bucket"] = json!(false);
    let c = cfg(v);
    let s = LocalStore::default();
    assert_eq!(burst(&c, &s, t, &[d(&[("path", "/a")])], 7), 5);
    assert_eq!(c.x_ratelimit(&s, NS, t, BucketId::Default).unwrap().1, 10);
    // unmatched requests always use the default bucket.
    assert_eq!(burst(&c, &s, t, &[d(&[("path", "/zzz")])], 12), 10);
}

#[test]
fn no_default_bucket_and_always_deny() {
    let t = 1.0;
    let c = cfg(json!({"stat_prefix": "a"}));
    let s = LocalStore::default();
    assert_eq!(burst(&c, &s, t, &[], 100), 100);
    let c =
        cfg(json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}));
    assert_eq!(burst(&c, &s, t, &[], 3), 0);
}

#[test]
fn headers_report_denying_then_first_matched_then_default() {
    let c = cfg(two_level());
    let s = LocalStore::default();
    let mut st = StoreStats::default();
    let a = c.request_allowed(&s, NS, 5.0, &[], &mut st);
    assert_eq!(a.bucket, Some(BucketId::Default));
    assert_eq!(
        c.x_ratelimit(&s, NS, 5.0, BucketId::Default),
        Some((10, 9, 0))
    );
    let a = c.request_allowed(
        &s,
        NS,
        5.0,
        &[d(&[("path", "/a")]), d(&[("user", "u1")])],
        &mut st,
    );
    assert_eq!(a.bucket, Some(BucketId::Static(1)));
}

// ------------------------------------------------------------------ dynamic descriptors

fn per_user(max_dynamic: u32) -> LocalRateLimit {
    cfg(json!({
        "stat_prefix": "a",
        "max_dynamic_descriptors": max_dynamic,
        "always_consume_default_token_bucket": false,
        "token_bucket": {"max_tokens": 1000000, "fill_interval": "1s"},
        "descriptors": [{"entries": [{"key": "user", "value": ""}], "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "60s"}}],
        "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]
    }))
}

#[test]
fn wildcard_descriptor_gives_one_bucket_per_value() {
    let c = per_user(20);
    let s = LocalStore::default();
    let t = 10.0;
    for u in ["a", "b", "c"] {
        assert_eq!(burst(&c, &s, t, &[d(&[("user", u)])], 5), 2, "user {u}");
    }
    assert!(matches!(
        c.match_descriptor(&d(&[("user", "a")])),
        Some(BucketId::Dynamic { spec: 0, .. })
    ));
    assert_eq!(c.match_descriptor(&d(&[("usr", "a")])), None);
}

#[test]
fn dynamic_buckets_evict_least_recently_used() {
    let c = per_user(2);
    let s = LocalStore::default();
    let mut st = StoreStats::default();
    let t = 10.0;
    let hit = |u: &str, st: &mut StoreStats| {
        c.request_allowed(&s, NS, t, &[d(&[("user", u)])], st)
            .allowed
    };
    assert!(hit("a", &mut st) && hit("a", &mut st) && !hit("a", &mut st)); // a empty
    assert!(hit("b", &mut st)); // b: 1 left
    assert!(!hit("a", &mut st)); // a used again: b is now least recent
    assert!(hit("c", &mut st)); // c evicts b
    assert_eq!(st.dynamic_evictions, 1);
    assert!(!hit("a", &mut st), "a was kept");
    // b comes back with a fresh (full) bucket, evicting c.
    assert!(hit("b", &mut st) && hit("b", &mut st) && !hit("b", &mut st));
    assert_eq!(st.dynamic_evictions, 2);
}

#[test]
fn a_million_distinct_keys_stay_in_bounded_memory() {
    let c = per_user(100);
    let s = LocalStore::default();
    c.init_store(&s, NS, 0.0);
    let keys_before = s.len();
    let mut st = StoreStats::default();
    for i in 0..200_000u32 {
        c.request_allowed(&s, NS, 1.0, &[d(&[("user", &i.to_string())])], &mut st);
    }
    assert_eq!(s.len(), keys_before, "no key is created per client value");
    // 100 entries of 16 bytes, plus keys.
    assert!(s.bytes() < 100 * 16 + 64 * s.len(), "{} bytes", s.bytes());
    assert_eq!(st.dynamic_evictions, 200_000 - 100);
}

#[test]
fn max_dynamic_descriptors_zero_gives_fresh_buckets() {
    let c = per_user(0);
    let s = LocalStore::default();
    assert_eq!(burst(&c, &s, 1.0, &[d(&[("user", "a")])], 5), 5);
}

// ------------------------------------------------------------------ sharing and CAS

/// A store that lets another "worker" take a token between our get and set for
/// the first `interleave` sets, forcing CAS mismatches.
struct Racing<'a> {
    inner: &'a LocalStore,
    interleave: Cell<u32>,
    other: Box<dyn Fn(&LocalStore) + 'a>,
}

impl SharedStore for Racing<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if self.interleave.get() > 0 {
            self.interleave.set(self.interleave.get() - 1);
            (self.other)(self.inner);
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn cas_mismatch_retries_and_never_overadmits() {
    let c =
        cfg(json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 5, "fill_interval": "60s"}}));
    let s = LocalStore::default();
    c.init_store(&s, NS, 0.0);
    let other_c = c.clone();
    let other_admitted = Cell::new(0);
    let racing = Racing {
        inner: &s,
        interleave: Cell::new(3),
        other: Box::new(|st: &LocalStore| {
            let mut x = StoreStats::default();
            if other_c.request_allowed(st, NS, 1.0, &[], &mut x).allowed {
                other_admitted.set(other_admitted.get() + 1);
            }
        }),
    };
    let mut st = StoreStats::default();
    let ours = (0..10)
        .filter(|_| c.request_allowed(&racing, NS, 1.0, &[], &mut st).allowed)
        .count();
    assert_eq!(st.cas_retries, 3);
    assert_eq!(
        ours + other_admitted.get(),
        5,
        "exactly max_tokens across both workers"
    );
}

#[test]
fn cas_exhaustion_rejects_and_is_counted() {
    let c = cfg(
        json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 100, "fill_interval": "60s"}}),
    );
    let s = LocalStore::default();
    c.init_store(&s, NS, 0.0);
    // The other worker wins every race (it writes the same key each time).
    let racing = Racing {
        inner: &s,
        interleave: Cell::new(u32::MAX),
        other: Box::new(|st: &LocalStore| {
            let (v, _) = st.get(&format!("{NS}/b/0"));
            st.set(&format!("{NS}/b/0"), &v.unwrap(), None).unwrap();
        }),
    };
    let mut st = StoreStats::default();
    let a = c.request_allowed(&racing, NS, 1.0, &[], &mut st);
    assert!(!a.allowed, "fail closed");
    assert_eq!(st.cas_exhausted, 1);
    assert_eq!(st.cas_retries, u64::from(MAX_CAS_ATTEMPTS - 1));
}

#[test]
fn two_configurations_never_share_keys() {
    let a = namespace("p", "", br#"{"stat_prefix":"a"}"#);
    let b = namespace("p", "", br#"{"stat_prefix":"b"}"#);
    let c = namespace("q", "", br#"{"stat_prefix":"a"}"#);
    assert!(a != b && a != c && b != c);
    assert_eq!(a, namespace("p", "", br#"{"stat_prefix":"a"}"#));
    // The same configuration written differently is the same namespace.
    let two = br#"{"stat_prefix":"a","token_bucket":{"max_tokens":1,"fill_interval":"60s"}}"#;
    let reordered =
        b"{\n  \"token_bucket\": {\"fill_interval\": \"60s\", \"max_tokens\": 1},\n  \"stat_prefix\": \"a\"\n}";
    assert_eq!(namespace("p", "", two), namespace("p", "", reordered));
    assert_ne!(
        namespace("p", "", two),
        namespace(
            "p",
            "",
            br#"{"stat_prefix":"a","token_bucket":{"max_tokens":2,"fill_interval":"60s"}}"#
        )
    );
    let cfg_a =
        cfg(json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}}));
    let s = LocalStore::default();
    let mut st = StoreStats::default();
    assert!(cfg_a.request_allowed(&s, &a, 1.0, &[], &mut st).allowed);
    assert!(!cfg_a.request_allowed(&s, &a, 1.0, &[], &mut st).allowed);
    assert!(
        cfg_a.request_allowed(&s, &b, 1.0, &[], &mut st).allowed,
        "other namespace has its own bucket"
    );
}

#[test]
fn shadow_mode_descriptor_and_not_enforced() {
    let c = cfg(json!({
        "stat_prefix": "a",
        "filter_enabled": {"runtime_key": "e", "default_value": {"numerator": 100}},
        "filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 100}},
        "token_bucket": {"max_tokens": 100, "fill_interval": "60s"},
        "descriptors": [{"entries": [{"key": "generic_key", "value": "s"}], "shadow_mode": true, "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}}],
        "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "s"}}]}]
    }));
    let s = LocalStore::default();
    let req = RequestView {
        headers: &[],
        remote_ip: None,
    };
    let mut st = StoreStats::default();
    // The shadow descriptor (1 token) denies from the 2nd request on; Envoy 1.40
    // ignores that denial and goes on to the default bucket (100 tokens).
    // Native 1.40 counts those as rate limited (and `shadow_mode`), not ok.
    for i in 0..5 {
        let (v, b) = c.decide(&s, NS, 1.0, &req, (0, 0), &mut st);
        let want = if i == 0 {
            Verdict::Allowed
        } else {
            Verdict::ShadowLimited
        };
        assert_eq!((v, b), (want, Some(BucketId::Static(0))));
    }
    assert_eq!(c.x_ratelimit(&s, NS, 1.0, BucketId::Default).unwrap().1, 95);
    // filter_enforced 0 %: counted, not rejected.
    let c = cfg(json!({
        "stat_prefix": "a",
        "filter_enabled": {"runtime_key": "e", "default_value": {"numerator": 100}},
        "filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 0}},
        "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}
    }));
    let s = LocalStore::default();
    assert_eq!(
        c.decide(&s, NS, 1.0, &req, (0, 0), &mut st).0,
        Verdict::Allowed
    );
    assert_eq!(
        c.decide(&s, NS, 1.0, &req, (0, 0), &mut st).0,
        Verdict::LimitedNotEnforced
    );
}

#[test]
fn what_a_decision_reads_follows_the_actions() {
    // No descriptors: the native filter builds none, so nothing is read.
    let plain = cfg(
        json!({"stat_prefix": "p", "token_bucket": {"max_tokens": 1, "fill_interval": "1s"},
        "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]}),
    );
    assert_eq!(plain.header_reads(), HeaderReads::Nothing);
    assert!(!plain.needs_remote_address());

    let by_header = actions_cfg(json!([
        {"request_headers": {"header_name": "X-User", "descriptor_key": "user"}},
        {"generic_key": {"descriptor_value": "g"}}
    ]));
    assert_eq!(
        by_header.header_reads(),
        HeaderReads::Named(vec!["x-user".to_string()])
    );
    assert!(!by_header.needs_remote_address());

    let by_match = actions_cfg(json!([
        {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}},
        {"header_value_match": {"descriptor_value": "m", "headers": [{"name": "x-a", "present_match": true}]}}
    ]));
    assert_eq!(by_match.header_reads(), HeaderReads::All);

    let by_query = actions_cfg(json!([
        {"query_parameters": {"query_parameter_name": "q", "descriptor_key": "q"}}
    ]));
    assert_eq!(by_query.header_reads(), HeaderReads::All);

    let by_address = actions_cfg(json!([{"remote_address": {}}]));
    assert_eq!(by_address.header_reads(), HeaderReads::Nothing);
    assert!(by_address.needs_remote_address());
    let masked = actions_cfg(json!([{"masked_remote_address": {}}]));
    assert!(masked.needs_remote_address());
}

// ------------------------------------------------------------------ remembered writes

/// Counts the host calls that reach the store.
#[derive(Default)]
struct Counting {
    inner: LocalStore,
    gets: Cell<u32>,
    sets: Cell<u32>,
}

impl SharedStore for Counting {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.gets.set(self.gets.get() + 1);
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        self.sets.set(self.sets.get() + 1);
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_lone_worker_updates_its_bucket_without_reading_it() {
    let c =
        cfg(json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 5, "fill_interval": "60s"}}));
    let s = Counting::default();
    c.init_store(&s.inner, NS, 0.0);
    let memory = RefCell::new(WriteMemory::default());
    let worker = RememberingStore::new(&s, &memory);
    let mut st = StoreStats::default();
    let admitted = (0..10)
        .filter(|_| c.request_allowed(&worker, NS, 1.0, &[], &mut st).allowed)
        .count();
    assert_eq!(admitted, 5);
    // One read for the first request; then each admission is one predicted
    // write, and each rejection is decided from the remembered value alone.
    assert_eq!((s.gets.get(), s.sets.get()), (1, 5));
    assert_eq!(st, StoreStats::default(), "no lost race counted");
    // A refill is computed from the remembered value too.
    assert!(c.request_allowed(&worker, NS, 62.0, &[], &mut st).allowed);
    assert_eq!((s.gets.get(), s.sets.get()), (1, 6));
}

#[test]
fn a_wrong_prediction_changes_nothing_and_contention_cools_down() {
    let c = cfg(
        json!({"stat_prefix": "a", "token_bucket": {"max_tokens": 100, "fill_interval": "60s"}}),
    );
    let s = Counting::default();
    c.init_store(&s.inner, NS, 0.0);
    let (ma, mb) = (
        RefCell::new(WriteMemory::default()),
        RefCell::new(WriteMemory::default()),
    );
    let (a, b) = (
        RememberingStore::new(&s, &ma),
        RememberingStore::new(&s, &mb),
    );
    let mut st = StoreStats::default();
    let mut taken = 0;
    // (gets, sets) of one request of a.
    let mut a_request = |st: &mut StoreStats| {
        let (g, w) = (s.gets.get(), s.sets.get());
        assert!(c.request_allowed(&a, NS, 1.0, &[], st).allowed);
        taken += 1;
        (s.gets.get() - g, s.sets.get() - w)
    };
    let b_request = |st: &mut StoreStats| {
        assert!(c.request_allowed(&b, NS, 1.0, &[], st).allowed);
    };
    assert_eq!(a_request(&mut st), (1, 1), "nothing remembered yet");
    assert_eq!(a_request(&mut st), (0, 1), "a wrote last: no read");
    b_request(&mut st);
    // a's memory is stale: its predicted write fails, it reads and writes.
    assert_eq!(a_request(&mut st), (1, 2));
    assert_eq!(st.cas_retries, 0, "a stale memory is not a lost race");
    // One collision does not stop the guessing.
    assert_eq!(a_request(&mut st), (0, 1));
    // Two in a row: the next COOL_DOWN updates of a read first.
    b_request(&mut st);
    assert_eq!(a_request(&mut st), (1, 2));
    b_request(&mut st);
    assert_eq!(a_request(&mut st), (1, 2));
    for _ in 0..remember::COOL_DOWN {
        assert_eq!(a_request(&mut st), (1, 1));
    }
    // Then a guesses again, and nobody wrote in between: one set.
    assert_eq!(a_request(&mut st), (0, 1));
    let (_, left, _) = c.x_ratelimit(&s.inner, NS, 1.0, BucketId::Default).unwrap();
    assert_eq!(left, 100 - taken - 3);
}

/// Workers with memories, a worker without one, and unrelated writers, in a
/// random order and over advancing time, decide every request exactly as one
/// store without any memory decides the same sequence.
#[test]
fn remembered_writes_decide_exactly_as_fresh_reads() {
    let configs = [
        cfg(two_level()),
        per_user(6),
        cfg(
            json!({"stat_prefix": "g", "token_bucket": {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "2s"}}),
        ),
    ];
    for (ci, c) in configs.iter().enumerate() {
        let shared = LocalStore::default();
        let reference = LocalStore::default();
        c.init_store(&shared, NS, 0.0);
        c.init_store(&reference, NS, 0.0);
        let memories: Vec<RefCell<WriteMemory>> = (0..3)
            .map(|_| RefCell::new(WriteMemory::default()))
            .collect();
        let mut rng = crate::host::SplitMix64::new(7 + ci as u64);
        let (mut st, mut st_ref) = (StoreStats::default(), StoreStats::default());
        let mut now = 1.0;
        let mut admitted = 0;
        for i in 0..4000 {
            let r = rng.next_u64();
            now += (r % 7) as f64 * 0.05;
            let user = format!("u{}", (r >> 8) % 9);
            let descs = match ci {
                0 => vec![d(&[("path", "/a")]), d(&[("user", "u1")])],
                1 => vec![d(&[("user", &user)])],
                _ => vec![],
            };
            if (r >> 16).is_multiple_of(5) {
                // Another plugin writes its own key: the CAS counter moves on.
                let _ = shared.set("other/key", b"x", None);
            }
            let worker = ((r >> 24) % 4) as usize;
            let got = match memories.get(worker) {
                Some(m) => {
                    let store = RememberingStore::new(&shared, m);
                    c.request_allowed(&store, NS, now, &descs, &mut st)
                }
                None => c.request_allowed(&shared, NS, now, &descs, &mut st),
            };
            let want = c.request_allowed(&reference, NS, now, &descs, &mut st_ref);
            assert_eq!(got, want, "config {ci}, request {i}");
            admitted += usize::from(got.allowed);
        }
        assert!(admitted > 100 && admitted < 4000, "config {ci}: {admitted}");
        assert_eq!(st.cas_exhausted, 0);
        assert_eq!(st.dynamic_evictions, st_ref.dynamic_evictions);
    }
}
