//! local_ratelimit in the proxy-wasm emulator: several VMs (workers) over one
//! shared-data store, a controlled clock, and forced compare-and-swap races — the
//! parts real Envoy cannot make deterministic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use host_tests::emulator::{Vm, VmConfig, World};
use serde_json::{json, Value};

fn load(world: &World, config: &Value) -> Vm {
    let vm = world
        .load(
            &host_tests::paths::wasm("local_ratelimit"),
            VmConfig::json(config),
        )
        .expect("load local_ratelimit.wasm");
    assert!(vm.configured(), "configuration refused: {}", vm.log_text());
    vm
}

/// The shared-data key prefix the filter logged at configuration.
fn namespace(vm: &Vm) -> String {
    let text = vm.log_text();
    let start = text
        .find("shared data keys under ")
        .expect("namespace log line")
        + "shared data keys under ".len();
    text[start..].split('/').next().unwrap().to_string()
}

struct Reply {
    status: u32,
    grpc_status: Option<i32>,
    headers: Vec<(String, String)>,
    /// The request headers as they went upstream (None when rejected).
    upstream_headers: Option<Vec<(String, String)>>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn send(vm: &mut Vm, headers: &[(&str, &str)], client: &str, connection: u64) -> Reply {
    let s = vm.new_stream();
    vm.set_property(
        s,
        &["source", "address"],
        format!("{client}:40000").into_bytes(),
    );
    vm.set_property(s, &["connection_id"], connection.to_le_bytes().to_vec());
    let mut all = vec![(":method", "GET"), (":path", "/"), (":authority", "svc")];
    all.extend_from_slice(headers);
    vm.request_headers(s, &all, true).unwrap();
    let reply = match vm.local_reply(s) {
        Some(lr) => Reply {
            status: lr.status,
            grpc_status: lr.grpc_status,
            headers: vm.response_headers_now(s),
            upstream_headers: None,
        },
        None => {
            let upstream = vm.request_headers_now(s);
            vm.response_headers(s, &[(":status", "200")], true).unwrap();
            Reply {
                status: 200,
                grpc_status: None,
                headers: vm.response_headers_now(s),
                upstream_headers: Some(upstream),
            }
        }
    };
    vm.finish(s).unwrap();
    reply
}

fn get(vm: &mut Vm) -> u32 {
    send(vm, &[], "10.0.0.1", 1).status
}

fn enabled(extra: Value) -> Value {
    let mut v = json!({
        "stat_prefix": "emu",
        "filter_enabled": {"runtime_key": "e", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

fn metric(world: &World, name: &str) -> i64 {
    world
        .metric(&format!("meshwasm.local_ratelimit.{name}"))
        .unwrap_or(0)
}

#[test]
fn four_workers_share_one_bucket_and_refill_with_the_clock() {
    let world = World::new();
    // 10 tokens, one every 6 s.
    let config = enabled(
        json!({"token_bucket": {"max_tokens": 10, "tokens_per_fill": 1, "fill_interval": "6s"}}),
    );
    let mut vms: Vec<Vm> = (0..4).map(|_| load(&world, &config)).collect();
    let burst =
        |n: usize, vms: &mut Vec<Vm>| (0..n).filter(|i| get(&mut vms[i % 4]) == 200).count();
    assert_eq!(
        burst(40, &mut vms),
        10,
        "one process-wide bucket, not one per worker"
    );
    world.advance(Duration::from_millis(5999));
    assert_eq!(
        burst(8, &mut vms),
        0,
        "continuous refill: not a whole token yet"
    );
    world.advance(Duration::from_millis(1));
    assert_eq!(burst(8, &mut vms), 1);
    world.advance(Duration::from_secs(600));
    assert_eq!(burst(40, &mut vms), 10, "refill is capped at max_tokens");
    assert_eq!(metric(&world, "ok"), 21);
    assert_eq!(metric(&world, "rate_limited"), 75);
    assert_eq!(metric(&world, "enforced"), 75);
    assert_eq!(metric(&world, "enabled"), 96);
}

/// Another worker takes one token between this VM's get and set.
fn steal_token(
    key: String,
    rate: f64,
) -> impl FnOnce(&mut host_tests::emulator::SharedData) + Send + 'static {
    move |shared| {
        let (v, _) = shared.get(&key).expect("bucket key exists");
        let empty_at = f64::from_le_bytes(v[..8].try_into().unwrap());
        shared
            .set(&key, &(empty_at + 1.0 / rate).to_le_bytes(), 0)
            .unwrap();
    }
}

#[test]
fn forced_cas_mismatches_are_retried_and_never_overadmit() {
    let world = World::new();
    let config = enabled(
        json!({"token_bucket": {"max_tokens": 6, "tokens_per_fill": 1, "fill_interval": "60s"}}),
    );
    let mut a = load(&world, &config);
    let mut b = load(&world, &config);
    let key = format!("{}/b/0", namespace(&a));
    assert!(
        world.shared_get(&key).is_some(),
        "bucket created at configuration"
    );
    // Before each of the first 3 requests, another worker takes a token between
    // the VM's get and its set (the emulator runs a hook once, after the next get).
    let mut ours = 0;
    for i in 0..10 {
        if i < 3 {
            world.interleave_after_get(&key, steal_token(key.clone(), 1.0 / 60.0));
        }
        ours += usize::from(get(if i % 2 == 0 { &mut a } else { &mut b }) == 200);
    }
    assert_eq!(ours + 3, 6, "the 3 stolen tokens plus ours = max_tokens");
    assert_eq!(metric(&world, "cas_retries"), 3);
    assert_eq!(metric(&world, "cas_exhausted"), 0);
}

/// Reading shared data is the costliest call a bucket update makes: a worker
/// that was the last to write its bucket updates it with a predicted CAS and
/// no read (`ratelimit::remember`); another worker's write makes it read again.
#[test]
fn a_worker_that_wrote_last_updates_without_reading() {
    let world = World::new();
    let config = enabled(
        json!({"token_bucket": {"max_tokens": 50, "tokens_per_fill": 1, "fill_interval": "60s"}}),
    );
    let mut a = load(&world, &config);
    let mut b = load(&world, &config);
    let reads = |vm: &Vm| {
        vm.hostcalls()
            .get("proxy_get_shared_data")
            .copied()
            .unwrap_or(0)
    };
    // The first update reads; its write teaches the worker the CAS counter.
    assert_eq!(get(&mut a), 200);
    a.reset_hostcalls();
    for _ in 0..10 {
        assert_eq!(get(&mut a), 200);
    }
    assert_eq!(reads(&a), 0, "{:?}", a.hostcalls());
    assert_eq!(a.hostcalls()["proxy_set_shared_data"], 10);
    // Another worker takes a token: a's predicted write fails, a reads.
    assert_eq!(get(&mut b), 200);
    a.reset_hostcalls();
    assert_eq!(get(&mut a), 200);
    assert_eq!(reads(&a), 1);
    assert_eq!(a.hostcalls()["proxy_set_shared_data"], 2);
    // Alternating workers: never one token more than max_tokens in all.
    let rest = (0..80)
        .filter(|i| get(if i % 2 == 0 { &mut a } else { &mut b }) == 200)
        .count();
    assert_eq!(13 + rest, 50);
    assert_eq!(
        metric(&world, "cas_retries"),
        0,
        "a wrong guess is not a lost race"
    );
    assert_eq!(metric(&world, "ok"), 50);
}

// CAS exhaustion (16 lost races in one request) needs 16 interleavings inside one
// callback, which the emulator's one-hook-per-get cannot script; the core test
// `ratelimit::tests::cas_exhaustion_rejects_and_is_counted` covers it.

fn per_user(max_dynamic: u32) -> Value {
    enabled(json!({
        "max_dynamic_descriptors": max_dynamic,
        "descriptors": [{"entries": [{"key": "user", "value": ""}], "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "60s"}}],
        "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]
    }))
}

#[test]
fn dynamic_descriptors_are_shared_and_evicted_least_recently_used() {
    let world = World::new();
    let mut a = load(&world, &per_user(2));
    let mut b = load(&world, &per_user(2));
    let user = |vm: &mut Vm, u: &str| send(vm, &[("x-user", u)], "10.0.0.1", 1).status;
    assert_eq!(user(&mut a, "alice"), 200);
    assert_eq!(user(&mut b, "bob"), 200);
    assert_eq!(
        user(&mut b, "alice"),
        429,
        "alice's bucket is shared by the workers"
    );
    assert_eq!(
        user(&mut a, "carol"),
        200,
        "carol evicts bob, the least recently used"
    );
    assert_eq!(metric(&world, "dynamic_evictions"), 1);
    assert_eq!(user(&mut a, "alice"), 429, "alice was kept");
    assert_eq!(
        user(&mut b, "bob"),
        200,
        "bob starts over with a full bucket"
    );
    assert_eq!(metric(&world, "dynamic_evictions"), 2);
}

#[test]
fn distinct_client_values_do_not_grow_shared_data() {
    let world = World::new();
    let mut vm = load(&world, &per_user(50));
    let ns = namespace(&vm);
    for i in 0..3000 {
        send(&mut vm, &[("x-user", &format!("user-{i}"))], "10.0.0.1", 1);
    }
    // 50 entries in ceil(50 / 32) = 2 groups of 25, full after 3000 users.
    let len = |g: u32| {
        world
            .shared_get(&format!("{ns}/d/0/{g}"))
            .expect("group key")
            .0
            .len()
    };
    assert_eq!(
        (len(0), len(1)),
        (25 * 16, 25 * 16),
        "exactly max_dynamic_descriptors entries"
    );
    assert!(
        world.shared_get(&format!("{ns}/d/0/2")).is_none(),
        "no key beyond the fixed set"
    );
    assert_eq!(metric(&world, "dynamic_evictions"), 3000 - 50);
}

#[test]
fn shadow_mode_counts_and_marks_but_does_not_reject() {
    let world = World::new();
    let mut config = enabled(json!({
        "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "60s"},
        "request_headers_to_add_when_not_enforced": [{"header": {"key": "x-rl-shadow", "value": "1"}}]
    }));
    config["filter_enforced"]["default_value"]["numerator"] = json!(0);
    let mut vm = load(&world, &config);
    let replies: Vec<Reply> = (0..3).map(|_| send(&mut vm, &[], "10.0.0.1", 1)).collect();
    assert!(replies.iter().all(|r| r.status == 200));
    let marked: Vec<bool> = replies
        .iter()
        .map(|r| {
            r.upstream_headers
                .as_ref()
                .unwrap()
                .iter()
                .any(|(k, v)| k == "x-rl-shadow" && v == "1")
        })
        .collect();
    assert_eq!(marked, [false, true, true]);
    assert_eq!(
        (
            metric(&world, "ok"),
            metric(&world, "rate_limited"),
            metric(&world, "enforced")
        ),
        (1, 2, 0)
    );
}

#[test]
fn filter_enabled_absent_means_inactive() {
    let world = World::new();
    let mut vm = load(
        &world,
        &json!({"stat_prefix": "x", "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}}),
    );
    assert!((0..3).all(|_| get(&mut vm) == 200));
    assert_eq!(metric(&world, "enabled"), 0);
}

#[test]
fn rejection_reply_and_headers() {
    let world = World::new();
    let config = enabled(json!({
        "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "10s"},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "response_headers_to_add": [{"header": {"key": "x-local-rate-limit", "value": "true"}}],
        "status": {"code": 503},
        "rate_limited_as_resource_exhausted": true
    }));
    let mut vm = load(&world, &config);
    let ok = send(&mut vm, &[], "10.0.0.1", 1);
    assert_eq!(ok.status, 200);
    assert_eq!(
        (
            ok.header("x-ratelimit-limit"),
            ok.header("x-ratelimit-remaining")
        ),
        (Some("1"), Some("0"))
    );
    let r = send(&mut vm, &[], "10.0.0.1", 1);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-local-rate-limit"), Some("true"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("10"));
    // gRPC: RESOURCE_EXHAUSTED instead of the UNAVAILABLE an HTTP code maps to.
    let g = send(
        &mut vm,
        &[("content-type", "application/grpc")],
        "10.0.0.1",
        1,
    );
    assert_eq!(g.grpc_status, Some(8));
    assert_eq!(g.header("grpc-status"), Some("8"));
    assert_eq!(g.header("grpc-message"), Some("local_rate_limited"));
}

#[test]
fn per_connection_buckets() {
    let world = World::new();
    let config = enabled(json!({
        "local_rate_limit_per_downstream_connection": true,
        "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "60s"}
    }));
    let mut vm = load(&world, &config);
    let on = |vm: &mut Vm, c: u64| {
        (0..3)
            .filter(|_| send(vm, &[], "10.0.0.1", c).status == 200)
            .count()
    };
    assert_eq!(on(&mut vm, 1), 2);
    assert_eq!(on(&mut vm, 2), 2, "another connection, its own bucket");
    assert_eq!(on(&mut vm, 1), 0);
}

#[test]
fn per_client_address_buckets() {
    let world = World::new();
    let config = enabled(json!({
        "descriptors": [{"entries": [{"key": "masked_remote_address", "value": ""}], "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}}],
        "rate_limits": [{"actions": [{"masked_remote_address": {"v4_prefix_mask_len": 24}}]}]
    }));
    let mut vm = load(&world, &config);
    assert_eq!(send(&mut vm, &[], "10.0.1.1", 1).status, 200);
    assert_eq!(send(&mut vm, &[], "10.0.1.2", 1).status, 429, "same /24");
    assert_eq!(send(&mut vm, &[], "10.0.2.1", 1).status, 200, "another /24");
}
