//! Policies replaced while traffic flows, as Istio replaces a WasmPlugin: the
//! filter configuration comes over ECDS from a file the test rewrites atomically
//! (`host_tests::ecds`), Envoy runs two workers, and a steady load records what
//! every request got. A valid update is followed by every request that starts
//! after Envoy reports it, and nothing fails meanwhile; a refused update leaves
//! every request answered as before; rate-limit buckets and fetched JWKS outlive
//! updates that keep their rule; old root contexts are freed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use host_tests::ecds::{self, Ecds, Epoch, Load, Swap, Update};
use host_tests::envoy::Envoy;
use host_tests::http::{Request, Response};
use host_tests::upstream::{Reply, Upstream};
use meshwasm_core::jwt::testing::{jwks_json, token, Key, DEFAULT_KEYS};
use serde_json::{json, Value};

/// The tests share two cores with whatever else runs: one at a time, so a
/// load's timing is its own.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const SWAP_LIMIT: Duration = Duration::from_secs(20);
/// Long enough after each swap for the load to show the new configuration.
const SETTLE: Duration = Duration::from_millis(400);
const DENIED: &str = "403 RBAC: access denied";

fn outcome(r: &Response) -> String {
    format!("{} {}", r.status, r.text())
}

fn authz_config(plugin: &Value) -> Value {
    ecds::wasm_config("meshwasm.authz", "authz", "authz", plugin)
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "foo"}, "spec": spec})
}

fn deny_paths(name: &str, paths: &[&str]) -> Value {
    policy(
        name,
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": paths}}]}]}),
    )
}

/// `/secret` is always denied; with `admin`, `/admin` too. `tag` makes each
/// configuration distinct, as each edit of a policy is.
fn authz_plugin(admin: bool, tag: &str) -> Value {
    let mut policies = vec![deny_paths("base", &["/secret"])];
    if admin {
        policies.push(deny_paths(&format!("deny-admin-{tag}"), &["/admin"]));
    }
    json!({"trustDomain": "cluster.local", "policies": policies})
}

fn authz_requests() -> Vec<Request> {
    ["/admin", "/public", "/secret"]
        .iter()
        .map(|p| Request::get(p))
        .collect()
}

fn authz_expect(admin: bool) -> Vec<String> {
    let ok = "200 ok".to_string();
    vec![
        if admin {
            DENIED.to_string()
        } else {
            ok.clone()
        },
        ok,
        DENIED.to_string(),
    ]
}

fn authz_listener(e: &Ecds) -> Value {
    ecds::listener(
        "authz",
        vec![e.http_filter()],
        json!([ecds::direct("/", 200, "ok")]),
    )
}

fn dest(subset: &str, weight: u32) -> Value {
    json!({"destination": {"host": "reviews", "subset": subset, "port": {"number": 9080}}, "weight": weight})
}

fn canary_plugin(v1: u32, v2: u32) -> Value {
    json!({"hosts": ["*"], "http": [{"name": "split", "route": [dest("v1", v1), dest("v2", v2)]}],
           "routing": {"subsetHeader": "x-canary-subset"}})
}

fn canary_config(plugin: &Value) -> Value {
    ecds::wasm_config("meshwasm.canary", "canary", "canary", plugin)
}

/// The subset header picks a direct answer naming the subset; no header, 404.
fn canary_listener(e: &Ecds) -> Value {
    let by = |subset: &str| {
        json!({"match": {"prefix": "/", "headers": [{"name": "x-canary-subset", "string_match": {"exact": subset}}]},
               "direct_response": {"status": 200, "body": {"inline_string": subset}}})
    };
    ecds::listener(
        "canary",
        vec![e.http_filter()],
        json!([by("v1"), by("v2"), ecds::direct("/", 404, "no subset")]),
    )
}

/// Panics on any request whose outcome no configuration in force could give, or
/// when a configuration served fewer than `min_each` requests on its own.
fn report(
    what: &str,
    samples: &[ecds::Sample],
    epochs: &[Epoch],
    requests: &[Request],
    min_each: usize,
) {
    let v = ecds::check(samples, epochs, requests);
    eprintln!(
        "{what}: {} requests, {} only one configuration could serve (per configuration {:?})",
        v.samples, v.strict, v.strict_per_epoch
    );
    assert!(
        v.wrong.is_empty(),
        "{what}: {} of {} requests got what no configuration in force gives, e.g.:\n{}",
        v.wrong.len(),
        v.samples,
        v.wrong[..v.wrong.len().min(20)].join("\n")
    );
    for (i, n) in v.strict_per_epoch.iter().enumerate() {
        assert!(
            *n >= min_each,
            "{what}: configuration {i} served only {n} requests on its own: the load did not cover it"
        );
    }
}

fn assert_refused(envoy: &Envoy, swap: &Swap, what: &str, field_path: &str) {
    assert_eq!(swap.outcome, Update::Rejected, "{what} was not refused");
    let log = envoy.log();
    assert!(
        log.contains(field_path),
        "{what}: the log does not name {field_path:?}"
    );
}

#[test]
fn valid_updates_apply_at_once_and_invalid_ones_change_nothing_under_load() {
    let _serial = serial();
    let authz = Ecds::new("authz", &authz_config(&authz_plugin(false, "0")));
    let canary = Ecds::new("canary", &canary_config(&canary_plugin(100, 0)));
    let envoy = Envoy::from_yaml(&ecds::bootstrap(
        vec![authz_listener(&authz), canary_listener(&canary)],
        vec![],
    ))
    .start();

    let requests = authz_requests();
    let authz_load = Load::start(
        envoy.port("authz"),
        requests.clone(),
        2,
        200_000,
        Duration::from_secs(60),
        outcome,
    );
    let canary_requests = vec![Request::get("/p"), Request::get("/q")];
    let canary_load = Load::start(
        envoy.port("canary"),
        canary_requests.clone(),
        1,
        100_000,
        Duration::from_secs(60),
        outcome,
    );
    std::thread::sleep(SETTLE);

    // (configuration, expected outcomes; None when it must be refused, with the
    // field path its log line names).
    let mut typo = authz_plugin(true, "typo");
    if let Some(spec) = typo["policies"][1]["spec"].as_object_mut() {
        let rules = spec.remove("rules").unwrap();
        spec.insert("rulez".to_string(), rules);
    }
    let mut action = authz_plugin(true, "action");
    action["policies"][1]["spec"]["action"] = json!("DENI");
    let authz_steps: Vec<(Value, bool, Option<&str>)> = vec![
        (authz_plugin(true, "1"), true, None),
        (typo, true, Some("policies[1].spec.rulez")),
        (action, true, Some("policies[1].spec.action")),
        (authz_plugin(false, "2"), false, None),
        (authz_plugin(true, "3"), true, None),
        (authz_plugin(false, "4"), false, None),
    ];
    let mut bad_regex = canary_plugin(0, 100);
    bad_regex["http"][0]["match"] = json!([{"uri": {"regex": "/items/[0-9"}}]);
    let canary_steps: Vec<(Value, &str, Option<&str>)> = vec![
        (canary_plugin(0, 100), "v2", None),
        (bad_regex, "v2", Some("http[0].match[0].uri.regex")),
        (canary_plugin(100, 0), "v1", None),
        (canary_plugin(0, 100), "v2", None),
    ];

    let (mut authz_swaps, mut authz_expects) = (Vec::new(), vec![authz_expect(false)]);
    let (mut canary_swaps, mut canary_expects) = (Vec::new(), vec![vec!["200 v1".to_string(); 2]]);
    for i in 0..authz_steps.len().max(canary_steps.len()) {
        if let Some((plugin, admin, refused)) = authz_steps.get(i) {
            let s = ecds::swap(&envoy, &authz, &authz_config(plugin), SWAP_LIMIT);
            match refused {
                Some(path) => assert_refused(&envoy, &s, "authz update", path),
                None => assert_eq!(s.outcome, Update::Applied, "authz update {i}"),
            }
            eprintln!("authz update {i}: {:?} after {:?}", s.outcome, s.took());
            authz_swaps.push(s);
            authz_expects.push(authz_expect(*admin));
        }
        if let Some((plugin, subset, refused)) = canary_steps.get(i) {
            let s = ecds::swap(&envoy, &canary, &canary_config(plugin), SWAP_LIMIT);
            match refused {
                Some(path) => assert_refused(&envoy, &s, "canary update", path),
                None => assert_eq!(s.outcome, Update::Applied, "canary update {i}"),
            }
            eprintln!("canary update {i}: {:?} after {:?}", s.outcome, s.took());
            canary_swaps.push(s);
            canary_expects.push(vec![format!("200 {subset}"); 2]);
        }
        std::thread::sleep(SETTLE);
    }
    let authz_samples = authz_load.stop();
    let canary_samples = canary_load.stop();
    report(
        "authz",
        &authz_samples,
        &ecds::epochs(&authz_swaps, &authz_expects),
        &requests,
        10,
    );
    report(
        "canary",
        &canary_samples,
        &ecds::epochs(&canary_swaps, &canary_expects),
        &canary_requests,
        10,
    );
    // A refused update is visible in Envoy's own log too.
    assert!(envoy
        .log()
        .contains("Filesystem config update rejected: Unable to create Wasm plugin"));
}

fn ratelimit_plugin(max_tokens: u32, fill_interval: &str) -> Value {
    json!({
        "stat_prefix": "update",
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": max_tokens, "fill_interval": fill_interval}
    })
}

/// The wasm filter with the LocalRateLimit as the given JSON text.
fn ratelimit_config(text: &str, failure_policy: &str) -> Value {
    let mut c = ecds::wasm_config(
        "meshwasm.local_ratelimit",
        "local_ratelimit",
        "local_ratelimit",
        &Value::Null,
    );
    c["config"]["configuration"]["value"] = json!(text);
    c["config"]["failure_policy"] = json!(failure_policy);
    c
}

const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

fn native_ratelimit(plugin: &Value) -> Value {
    let mut n = plugin.clone();
    n["@type"] = json!(LOCAL_RATELIMIT_TYPE);
    n
}

/// How many of `n` requests pass, and the tokens left after the last
/// (`x-ratelimit-remaining`).
fn admitted(envoy: &Envoy, listener: &str, n: usize) -> (usize, String) {
    let mut passed = 0;
    let mut left = String::new();
    for _ in 0..n {
        let r = envoy.send(listener, &Request::get("/"));
        assert!(
            r.status == 200 || r.status == 429,
            "{listener}: unexpected {}",
            outcome(&r)
        );
        passed += usize::from(r.status == 200);
        left = r.header("x-ratelimit-remaining").unwrap_or("").to_string();
    }
    (passed, left)
}

#[test]
fn rate_limit_buckets_keep_their_tokens_unless_the_limit_changes() {
    let _serial = serial();
    // No refill within the test: every token taken stays taken.
    let plugin = ratelimit_plugin(20, "3600s");
    let wasm = Ecds::new(
        "rl_wasm",
        &ratelimit_config(&plugin.to_string(), "FAIL_CLOSED"),
    );
    let native = Ecds::new("rl_native", &native_ratelimit(&plugin));
    let routes = json!([ecds::direct("/", 200, "ok")]);
    let envoy = Envoy::from_yaml(&ecds::bootstrap(
        vec![
            ecds::listener("wasm", vec![wasm.http_filter()], routes.clone()),
            ecds::listener(
                "native",
                vec![ecds::http_filter_for(&native, &[LOCAL_RATELIMIT_TYPE])],
                routes,
            ),
        ],
        vec![],
    ))
    .start();
    let swap = |e: &Ecds, c: &Value| ecds::swap(&envoy, e, c, SWAP_LIMIT);
    // The same requests to the meshwasm filter and to Envoy's own.
    let both = |n: usize, want: (usize, &str), what: &str| {
        let got = (admitted(&envoy, "wasm", n), admitted(&envoy, "native", n));
        let want = (want.0, want.1.to_string());
        assert_eq!(
            got,
            (want.clone(), want),
            "{what}: (admitted, left) of {n}, meshwasm and native"
        );
    };

    both(12, (12, "8"), "a fresh bucket of 20");
    // The same limit written differently: a new plugin configuration to the wasm
    // VM (a new root context), the same message to Envoy (no update of the native
    // filter at all).
    let pretty = serde_json::to_string_pretty(&plugin).unwrap();
    let s = swap(&wasm, &ratelimit_config(&pretty, "FAIL_CLOSED"));
    assert_eq!(s.outcome, Update::Applied, "reformatted");
    both(3, (3, "5"), "after the same limit, reformatted");
    // The same limit, another field of the filter changed.
    let s = swap(&wasm, &ratelimit_config(&pretty, "FAIL_RELOAD"));
    assert_eq!(s.outcome, Update::Applied, "failure_policy");
    both(1, (1, "4"), "after another failure_policy");
    // A refused update keeps the bucket as it is.
    let bad = ratelimit_plugin(20, "1 minute");
    let s = swap(&wasm, &ratelimit_config(&bad.to_string(), "FAIL_CLOSED"));
    assert_refused(&envoy, &s, "bad duration", "token_bucket.fill_interval");
    let s = swap(&native, &native_ratelimit(&bad));
    assert_eq!(s.outcome, Update::Rejected, "native: bad duration");
    both(6, (4, "0"), "after a refused update");

    // A changed limit is a new bucket, full, on both: the documented behaviour.
    let bigger = ratelimit_plugin(30, "3600s");
    let s = swap(&wasm, &ratelimit_config(&bigger.to_string(), "FAIL_CLOSED"));
    assert_eq!(s.outcome, Update::Applied, "wasm: 30");
    let s = swap(&native, &native_ratelimit(&bigger));
    assert_eq!(s.outcome, Update::Applied, "native: 30");
    both(32, (30, "0"), "a changed limit");
}

const ISS: &str = "https://issuer.example";
const OTHER_ISS: &str = "https://other.example";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn jwt_config(rules: Value) -> Value {
    ecds::wasm_config(
        "meshwasm.jwt_authn",
        "jwt_authn",
        "jwt_authn",
        &json!({"jwtRules": rules}),
    )
}

#[test]
fn fetched_jwks_survive_an_update_that_keeps_the_rule() {
    let _serial = serial();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let jwks = Upstream::start("jwks", move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Reply::new(200)
            .header("content-type", "application/json")
            .body(jwks_json(DEFAULT_KEYS))
    });
    let rule = |path: &str| json!({"issuer": ISS, "jwksUri": format!("http://keys.example{path}"), "jwksCluster": "jwks"});
    let jwt = Ecds::new("jwt", &jwt_config(json!([rule("/jwks.json")])));
    let envoy = Envoy::from_yaml(&ecds::bootstrap(
        vec![ecds::listener(
            "jwt",
            vec![jwt.http_filter()],
            json!([ecds::direct("/", 200, "ok")]),
        )],
        vec![ecds::cluster("jwks", jwks.port())],
    ))
    .start();
    let good = token(
        "RS256",
        &json!({"iss": ISS, "sub": "alice", "exp": now() + 3600}),
    );
    let send = |t: &str| {
        envoy
            .send(
                "jwt",
                &Request::get("/").header("authorization", &format!("Bearer {t}")),
            )
            .status
    };
    // Both workers verify (the first request of each waits for the keys or
    // takes those the other fetched).
    for _ in 0..20 {
        assert_eq!(send(&good), 200);
    }
    let fetched = fetches.load(Ordering::SeqCst);
    assert!(fetched >= 1);

    // The rule stays; another one, with its keys inline, joins it.
    let other = json!({"issuer": OTHER_ISS, "jwks": jwks_json(&[Key::Rsa2])});
    let s = ecds::swap(
        &envoy,
        &jwt,
        &jwt_config(json!([rule("/jwks.json"), other])),
        SWAP_LIMIT,
    );
    assert_eq!(s.outcome, Update::Applied);
    for _ in 0..20 {
        assert_eq!(send(&good), 200, "the kept rule verifies at once");
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        fetched,
        "the keys fetched before the update are used after it"
    );
    assert_eq!(send("garbage"), 401, "the new configuration still verifies");

    // A rule whose keys come from elsewhere fetches them.
    let s = ecds::swap(
        &envoy,
        &jwt,
        &jwt_config(json!([rule("/rotated/jwks.json")])),
        SWAP_LIMIT,
    );
    assert_eq!(s.outcome, Update::Applied);
    assert_eq!(send(&good), 200);
    assert!(
        fetches.load(Ordering::SeqCst) > fetched,
        "a new jwksUri is fetched"
    );
}

/// `plugin` with a policy of a few hundred paths no request takes, so that a
/// root context kept after its update would show in Envoy's memory.
fn bulky(mut plugin: Value, i: usize) -> Value {
    let paths: Vec<String> = (0..300).map(|j| format!("/bulk/{i}/{j}/*")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    if let Some(p) = plugin["policies"].as_array_mut() {
        p.push(deny_paths(&format!("bulk-{i}"), &paths));
    }
    plugin
}

/// The VM gauges: V8 VMs alive, and Envoy's count of wasm VMs.
fn vm_stats(envoy: &Envoy) -> (u64, u64) {
    let s = envoy.stats();
    let get = |k: &str| s.get(k).copied().unwrap_or(0);
    (
        get("wasm.envoy.wasm.runtime.v8.active"),
        get("wasm.wasm_vm_count"),
    )
}

#[test]
fn two_hundred_swaps_free_the_old_root_contexts() {
    let _serial = serial();
    let authz = Ecds::new("authz", &authz_config(&authz_plugin(false, "start")));
    let envoy = Envoy::from_yaml(&ecds::bootstrap(vec![authz_listener(&authz)], vec![])).start();
    let requests = authz_requests();
    let load = Load::start(
        envoy.port("authz"),
        requests.clone(),
        1,
        400_000,
        Duration::from_secs(150),
        outcome,
    );
    let mut swaps = Vec::new();
    let mut expects = vec![authz_expect(false)];
    let mut swap_to = |i: usize| {
        let admin = i.is_multiple_of(2);
        let s = ecds::swap(
            &envoy,
            &authz,
            &authz_config(&bulky(authz_plugin(admin, &i.to_string()), i)),
            SWAP_LIMIT,
        );
        assert_eq!(s.outcome, Update::Applied, "swap {i}");
        swaps.push(s);
        expects.push(authz_expect(admin));
    };
    // Warm-up: the allocators and V8 reach their working size.
    for i in 0..20 {
        swap_to(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss_before, vms_before) = (ecds::rss_kib(envoy.pid()), vm_stats(&envoy));
    let started = Instant::now();
    for i in 20..220 {
        swap_to(i);
    }
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (rss_after, vms_after) = (ecds::rss_kib(envoy.pid()), vm_stats(&envoy));
    let samples = load.stop();
    let mut took: Vec<Duration> = swaps[20..].iter().map(Swap::took).collect();
    took.sort();
    eprintln!(
        "200 swaps in {elapsed:?}: median {:?}, max {:?}; RSS {rss_before} KiB → {rss_after} KiB; \
         VMs (active, count) {vms_before:?} → {vms_after:?}",
        took[took.len() / 2],
        took[took.len() - 1],
    );
    report(
        "200 swaps",
        &samples,
        &ecds::epochs(&swaps, &expects),
        &requests,
        0,
    );
    assert_eq!(vms_after, vms_before, "the VM count grew");
    assert!(
        rss_after <= rss_before + 4 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over 200 swaps"
    );
}
