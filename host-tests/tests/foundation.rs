//! Foundation: every filter module loads in stock Envoy 1.40 (`--concurrency 2`)
//! and passes a request through; the native-twin helper agrees on a trivial pair
//! (a module that lets everything through vs no filter) and catches a difference.

use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::twin::{self, Case};
use host_tests::upstream::Upstream;
use serde_json::json;

/// A configuration under which each filter lets a plain GET through.
fn pass_config(filter: &str) -> serde_json::Value {
    match filter {
        // A request without a token passes (allow_missing, as istiod configures it).
        "jwt_authn" => json!({"jwtRules": [{
            "issuer": "https://demo.meshwasm.dev",
            "jwks": std::fs::read_to_string(host_tests::paths::config_dir().join("demo/jwks.json")).unwrap()
        }]}),
        "authz" => json!({"trustDomain": "cluster.local", "policies": []}),
        "local_ratelimit" => json!({
            "stat_prefix": "http_local_rate_limiter",
            "token_bucket": {"max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "1s"}
        }),
        "fault" => json!({"http": []}),
        "canary" => json!({
            "hosts": ["*"],
            "http": [{"route": [{"destination": {"host": "upstream", "subset": "v1"}}]}],
            "routing": {"subsetHeader": "x-canary-subset"}
        }),
        _ => json!({}),
    }
}

fn start(filter: &str, upstream: &Upstream) -> Envoy {
    Envoy::from_file("foundation.yaml")
        .var("FILTER", filter)
        .plugin_config("PLUGIN_CONFIG", &pass_config(filter))
        .upstream("UPSTREAM_PORT", upstream)
        .concurrency(2)
        .start()
}

fn passes_through(filter: &str) {
    let up = Upstream::echo("echo");
    let envoy = start(filter, &up);
    for i in 0..10 {
        let r = envoy.send(
            "meshwasm",
            &Request::get(&format!("/hello?i={i}")).header("x-test", filter),
        );
        assert_eq!(r.status, 200, "{filter}: {}", r.text());
        assert_eq!(r.upstream().as_deref(), Some("echo"));
        assert_eq!(r.json()["path"], format!("/hello?i={i}"));
        assert_eq!(r.upstream_header("x-test").as_deref(), Some(filter));
    }
    // The module was really instantiated: Envoy's wasm runtime reports live VMs.
    let stats = envoy.stats();
    let active = stats
        .iter()
        .filter(|(k, _)| k.starts_with("wasm.envoy.wasm.runtime.v8.active"))
        .map(|(_, v)| *v)
        .sum::<u64>();
    assert!(active >= 2, "expected a VM per worker, stats: {stats:?}");
    assert_eq!(up.seen().len(), 10);
}

#[test]
fn noop_loads_and_passes_through() {
    passes_through("noop");
}

#[test]
fn jwt_authn_loads_and_passes_through() {
    passes_through("jwt_authn");
}

#[test]
fn authz_loads_and_passes_through() {
    passes_through("authz");
}

#[test]
fn local_ratelimit_loads_and_passes_through() {
    passes_through("local_ratelimit");
}

#[test]
fn fault_loads_and_passes_through() {
    passes_through("fault");
}

#[test]
fn canary_loads_and_passes_through() {
    passes_through("canary");
}

#[test]
fn twin_helper_agrees_on_trivial_pair_and_reports_differences() {
    let up = Upstream::echo("echo");
    let envoy = start("noop", &up);
    let cases = vec![
        Case::new("root", Request::get("/")),
        Case::new("query", Request::get("/a?b=c")),
        Case::new("post", Request::new("POST", "/submit").body("x=1")),
        Case::new("dot segments", Request::get("/a/../b")),
        Case::new(
            "odd host",
            Request::get("/").header("host", "Example.COM:8080"),
        ),
    ];
    twin::assert_same(&envoy, "meshwasm", "native", &cases);

    // The helper must report a difference when there is one. An outcome function
    // that answers differently on every call (the responses themselves are alike)
    // makes every case differ.
    let calls = std::cell::Cell::new(0u32);
    let diffs = twin::compare(&envoy, "meshwasm", "native", &cases[..2], |_| {
        calls.set(calls.get() + 1);
        calls.get()
    });
    assert_eq!(diffs.len(), 2, "every differing case is reported");
}

/// The benchmark's `crossings` module (filters/crossings, listeners in
/// envoy-configs/bench/crossings.yaml) really makes its crossings in Envoy: every
/// listener passes the request, the `replace_header` one forwards the header it
/// sets, and the `metric` one adds `repeat` to its counter per request. (How many
/// crossings each makes is counted by the emulator in hostcall_budget.rs.)
#[test]
fn crossings_module_makes_its_crossings_in_envoy() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(host_tests::paths::config_dir().join("bench/crossings.json"))
            .unwrap(),
    )
    .unwrap();
    let repeat = cases["per_crossing"]["repeat"].as_u64().unwrap();
    let up = Upstream::echo("echo");
    let envoy = Envoy::bench_fragment("crossings")
        .upstream("UPSTREAM_PORT", &up)
        .start();
    let listeners: Vec<&str> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["listener"].as_str().unwrap())
        .collect();
    assert!(listeners.len() >= 10, "{listeners:?}");
    for l in &listeners {
        for _ in 0..2 {
            let r = envoy.send(l, &Request::get("/bench"));
            assert_eq!(r.status, 200, "{l}: {}", r.text());
            let forwarded = r.upstream_header("x-crossings");
            let expect = (*l == "crossings_replace_header").then(|| "1".to_string());
            assert_eq!(forwarded, expect, "{l}");
        }
    }
    assert_eq!(
        envoy.stat("wasmcustom.meshwasm.crossings.bench"),
        2 * repeat,
        "the metric listener adds {repeat} per request, the others nothing"
    );
}
