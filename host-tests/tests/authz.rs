//! authz against its native twin: every policy set runs as dist/authz.wasm on
//! `meshwasm-<set>` and as the Envoy RBAC istiod generates on `native-<set>`,
//! all pairs in ONE Envoy; every request must end the same way on both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod authz_common;
mod authz_sets;

use authz_common::*;
use authz_sets::*;
use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::upstream::Upstream;
use serde_json::{json, Value};

#[test]
fn policy_sets_decide_like_istio_rbac() {
    let upstream = Upstream::echo("v1");
    let sets = all_sets();
    let envoy = Envoy::from_yaml(&bootstrap(&sets, vec![], None))
        .upstream("UPSTREAM_PORT", &upstream)
        .start();
    check_sets(&envoy, &sets);
    // Metrics: audit counted on every request of the AUDIT set, denies counted.
    assert!(
        envoy.stat("wasmcustom.meshwasm.authz.audit") >= 3,
        "{:?}",
        envoy.stats()
    );
    assert!(envoy.stat("wasmcustom.meshwasm.authz.denied") > 0);
    assert!(envoy.stat("wasmcustom.meshwasm.authz.allowed") > 0);
    // Dry-run: meshwasm counts shadow decisions as the native shadow engines do.
    let stats = envoy.stats();
    let shadow: Vec<_> = stats.iter().filter(|(k, _)| k.contains("shadow")).collect();
    let native_denied: u64 = stats
        .iter()
        .filter(|(k, _)| k.contains("native-dryrun") && k.ends_with("shadow_denied"))
        .map(|(_, v)| *v)
        .sum();
    assert!(native_denied > 0, "{shadow:?}");
    assert_eq!(
        envoy.stat("wasmcustom.meshwasm.authz.shadow_denied"),
        native_denied,
        "{shadow:?}"
    );
}

#[test]
fn invalid_policy_is_refused_naming_the_field() {
    let bad = plugin(vec![policy(
        "p",
        json!({"rules": [{"to": [{"operation": {"paths": ["/a", ""]}}]}]}),
    )]);
    let set = PolicySet {
        name: "bad",
        plugin: bad,
        native: vec![],
        front: vec![],
        trusted_hops: 0,
        cases: vec![],
    };
    let upstream = Upstream::echo("v1");
    let err = Envoy::from_yaml(&bootstrap(&[set], vec![], None))
        .upstream("UPSTREAM_PORT", &upstream)
        .try_start();
    let log = match err {
        Ok(e) => e.log(),
        Err(e) => e,
    };
    assert!(
        log.contains(
            "authz: policies[0].spec.rules[0].to[0].operation.paths[1]: empty value not allowed"
        ),
        "{log}"
    );
}

/// The benchmark listeners (envoy-configs/bench/authz.yaml): the bench request is
/// allowed by both, and the 50-policy set decides like its RBAC twin.
#[test]
fn bench_listeners_agree() {
    let upstream = Upstream::echo("v1");
    let envoy = Envoy::bench_fragment("authz")
        .upstream("UPSTREAM_PORT", &upstream)
        .start();
    let bench = || get("/bench/items?page=2").header("x-user", "user-42");
    let cases = vec![
        twin_case("bench request", bench()),
        twin_case("no x-user", get("/bench/items")),
        twin_case("denied admin", get("/admin-3/x").header("x-user", "user-1")),
        twin_case("blocked header", bench().header("x-block", "b2")),
        twin_case(
            "tenant path",
            Request::new("POST", "/svc-7/a")
                .header("x-tenant", "tenant-7")
                .body("b"),
        ),
        twin_case(
            "tenant template",
            get("/api/v9/items/5").header("x-tenant", "tenant-9"),
        ),
        twin_case(
            "tenant mismatch",
            get("/api/v9/items/5").header("x-tenant", "tenant-8"),
        ),
        twin_case("other host", bench().header("host", "evil.com")),
    ];
    for (ours, native) in [("authz_1", "rbac_1"), ("authz_50", "rbac_50")] {
        host_tests::twin::assert_same(&envoy, ours, native, &cases);
        assert_eq!(envoy.send(ours, &bench()).status, 200);
    }
    assert_eq!(
        envoy
            .send(
                "authz_50",
                &get("/api/v9/items/5").header("x-tenant", "tenant-9")
            )
            .status,
        200
    );
    assert_eq!(
        envoy
            .send("authz_50", &bench().header("x-block", "b2"))
            .status,
        403
    );
    // authz's floor row: the `crossings` module making authz's crossings passes
    // the request (it decides nothing).
    assert_eq!(envoy.send("authz_required", &bench()).status, 200);
}

fn twin_case(name: &str, r: Request) -> host_tests::twin::Case {
    host_tests::twin::Case::new(name, r)
}

/// envoy-configs/authz.yaml with golden http/deny-and-allow (DENY principal
/// `deny`, ALLOW principal `allow`): plaintext requests have no principal.
#[test]
fn per_filter_config_golden_deny_and_allow() {
    let deny = policy(
        "httpbin-deny",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["deny"]}}]}]}),
    );
    let allow = policy(
        "httpbin-allow",
        json!({"rules": [{"from": [{"source": {"principals": ["allow"]}}]}, {"to": [{"operation": {"paths": ["/open"]}}]}]}),
    );
    let by_principal = |p: &str| {
        and_ids(vec![or_ids(vec![authenticated(exact(&format!(
            "spiffe://{p}"
        )))])])
    };
    let native = json!([
        rbac("DENY", vec![(id("httpbin-deny", 0), rbac_policy(vec![any_permission()], vec![by_principal("deny")]))]),
        rbac("ALLOW", vec![
            (id("httpbin-allow", 0), rbac_policy(vec![any_permission()], vec![by_principal("allow")])),
            (id("httpbin-allow", 1), rbac_policy(vec![and_rules(vec![or_rules(vec![url_path(exact("/open"))])])], vec![any_principal()])),
        ]),
        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    ]);
    let upstream = Upstream::echo("v1");
    let envoy = Envoy::from_file("authz.yaml")
        .plugin_config("PLUGIN_CONFIG", &plugin(vec![deny, allow]))
        .var("NATIVE_FILTERS", &native.to_string())
        .upstream("UPSTREAM_PORT", &upstream)
        .start();
    let cases = vec![
        twin_case("no principal", get("/")),
        twin_case("open", get("/open?x")),
        twin_case("other", get("/x")),
    ];
    host_tests::twin::assert_same(&envoy, "meshwasm", "native", &cases);
    assert_eq!(envoy.send("meshwasm", &get("/")).status, 403);
    assert_eq!(envoy.send("meshwasm", &get("/open")).status, 200);
}

/// The decision in filter state, as an access log reads it
/// (`%FILTER_STATE(wasm.meshwasm.authz_result:PLAIN)%` and `authz_policy`):
/// allowed, denied, allowed under an AUDIT policy, and allowed while a dry-run
/// policy would have denied (`shadow_denied`: the dry-run ALLOW on `/allow`
/// does not match `/another`), each with the deciding policy. Native RBAC has
/// no per-request equivalent (only shadow metadata), so this has no twin.
#[test]
fn decision_reaches_the_access_log_through_filter_state() {
    let sets = [set_paths(), set_allow_nothing(), set_dry_run()];
    let log_path =
        std::env::temp_dir().join(format!("meshwasm-authz-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let mut boot: Value = serde_json::from_str(&bootstrap(&sets, vec![], None)).unwrap();
    let access_log = json!([{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log_path.to_string_lossy(),
        "log_format": {"text_format_source": {"inline_string":
            "%REQ(:PATH)% %RESPONSE_CODE% %FILTER_STATE(wasm.meshwasm.authz_result:PLAIN)% %FILTER_STATE(wasm.meshwasm.authz_policy:PLAIN)%\n"}}}}]);
    for l in boot["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        let hcm = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
        if hcm["stat_prefix"]
            .as_str()
            .unwrap()
            .starts_with("meshwasm-")
        {
            hcm["access_log"] = access_log.clone();
        }
    }
    let upstream = Upstream::echo("v1");
    let envoy = Envoy::from_yaml(&boot.to_string())
        .upstream("UPSTREAM_PORT", &upstream)
        .start();
    let requests = filter_state_cases();
    let mut want = Vec::new();
    for (set, path, status, result, policy) in &requests {
        let r = envoy.send(&format!("meshwasm-{set}"), &get(path));
        assert_eq!(r.status, *status, "{set} {path}");
        want.push(format!("{path} {status} {result} {policy}"));
    }
    // Test Envoys flush access logs every 0.1 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.lines().count() >= want.len() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        want,
        "access log:\n{text}\nenvoy log:\n{}",
        envoy.log()
    );
    let _ = std::fs::remove_file(&log_path);
}
