//! CUSTOM action against an ext_authz HTTP server written here. The native
//! twin is what istiod generates for an `envoyExtAuthzHttp` provider: an RBAC
//! with the CUSTOM rules as DENY shadow rules, then `ext_authz` enabled by the
//! shadow match, then the ALLOW RBAC. Allow, deny, timeout and server error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod authz_common;

use std::time::Duration;

use authz_common::*;
use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::upstream::{Reply, Upstream};
use serde_json::{json, Value};

const SERVICE: &str = "ext-authz.foo.svc.cluster.local";

fn provider(fail_open: bool) -> Value {
    json!({"name": "ext", "envoyExtAuthzHttp": {
        "service": SERVICE, "port": 8000, "cluster": "ext-authz", "timeout": "0.3s",
        "pathPrefix": "/check", "failOpen": fail_open, "statusOnError": "503",
        "includeRequestHeadersInCheck": ["x-user"],
        "headersToUpstreamOnAllow": ["x-authz-*"],
        "headersToDownstreamOnDeny": ["x-reason"]}})
}

/// The ext_authz filter istiod writes for the provider above.
fn native_ext_authz(fail_open: bool) -> Value {
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "http_service": {
            "server_uri": {"uri": format!("http://{SERVICE}:8000"), "cluster": "ext-authz", "timeout": "0.3s"},
            "path_prefix": "/check",
            "authorization_request": {"allowed_headers": {"patterns": [{"exact": "x-user", "ignore_case": true}]}},
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": [{"prefix": "x-authz-", "ignore_case": true}]},
                "allowed_client_headers": {"patterns": [{"exact": "x-reason", "ignore_case": true}]}}},
        "failure_mode_allow": fail_open,
        "status_on_error": {"code": 503},
        "filter_enabled_metadata": {"filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": "istio-ext-authz"}}}}})
}

fn set(name: &'static str, fail_open: bool) -> PolicySet {
    let custom = policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [
            {"to": [{"operation": {"paths": ["/allow*", "/deny*", "/slow*", "/error*", "/user*"]}}]}]}),
    );
    let allow = policy(
        "allow",
        json!({"rules": [{"to": [{"operation": {"paths": ["/allow*", "/user*", "/slow*", "/error*", "/public*"]}}]}]}),
    );
    let mut plugin = plugin(vec![custom, allow]);
    plugin["extensionProviders"] = json!([provider(fail_open)]);
    let prefixes = |ps: &[&str]| {
        and_rules(vec![or_rules(
            ps.iter().map(|p| url_path(prefix(p))).collect(),
        )])
    };
    let shadow = rbac_filter(json!({
        "shadowRules": {"action": "DENY", "policies": {
            "istio-ext-authz-ns[foo]-policy[ext]-rule[0]": rbac_policy(
                vec![prefixes(&["/allow", "/deny", "/slow", "/error", "/user"])], vec![any_principal()])}},
        "shadowRulesStatPrefix": "istio_ext_authz_"}));
    let native_allow = rbac(
        "ALLOW",
        vec![(
            id("allow", 0),
            rbac_policy(
                vec![prefixes(&["/allow", "/user", "/slow", "/error", "/public"])],
                vec![any_principal()],
            ),
        )],
    );
    let g = Request::get;
    let mut cases = vec![
        expect("allowed by ext_authz", g("/allow/x?q=1"), 200),
        expect("denied by ext_authz", g("/deny"), 401),
        expect(
            "ext_authz allows, ALLOW policy does not",
            g("/deny-allowed"),
            401,
        ),
        expect("not a CUSTOM path: no call, ALLOW", g("/public"), 200),
        expect("not a CUSTOM path, no ALLOW", g("/other"), 403),
        expect(
            "x-user forwarded: alice",
            g("/user").header("x-user", "alice"),
            200,
        ),
        expect(
            "x-user forwarded: bob",
            g("/user").header("x-user", "bob"),
            403,
        ),
        expect("x-user missing", g("/user"), 403),
    ];
    if fail_open {
        cases.push(expect("timeout, fail open", g("/slow"), 200));
        cases.push(expect("server error, fail open", g("/error"), 200));
    } else {
        cases.push(expect("timeout: statusOnError", g("/slow"), 503));
        cases.push(expect("server error: statusOnError", g("/error"), 503));
    }
    PolicySet {
        name,
        plugin,
        native: vec![shadow, native_ext_authz(fail_open), native_allow],
        front: vec![],
        trusted_hops: 0,
        cases,
    }
}

fn ext_authz_server() -> Upstream {
    Upstream::start("ext-authz", |seen| {
        let path = seen.path.as_str();
        if path.starts_with("/check/allow") {
            Reply::new(200)
                .header("x-authz-id", "7")
                .header("x-other", "no")
        } else if path.starts_with("/check/deny") {
            Reply::new(401)
                .header("x-reason", "r")
                .header("x-other", "no")
                .body("nope")
        } else if path.starts_with("/check/slow") {
            Reply::new(200).delay(Duration::from_millis(1500))
        } else if path.starts_with("/check/error") {
            Reply::new(500).body("boom")
        } else if path.starts_with("/check/user") {
            match seen.header("x-user") {
                Some("alice") => Reply::new(200),
                _ => Reply::new(403).body("who?"),
            }
        } else {
            Reply::new(418).body("unexpected check")
        }
    })
}

#[test]
fn custom_ext_authz_like_istio() {
    let upstream = Upstream::echo("v1");
    let authz = ext_authz_server();
    let sets = vec![set("custom", false), set("custom-open", true)];
    let envoy = Envoy::from_yaml(&bootstrap(
        &sets,
        vec![cluster("ext-authz", "{{AUTHZ_PORT}}")],
        None,
    ))
    .upstream("UPSTREAM_PORT", &upstream)
    .upstream("AUTHZ_PORT", &authz)
    .start();
    check_sets(&envoy, &sets);

    // What reached the upstream and the client, beyond the status.
    let ours = envoy.send("meshwasm-custom", &Request::get("/allow/x"));
    let native = envoy.send("native-custom", &Request::get("/allow/x"));
    assert_eq!(
        ours.upstream_header("x-authz-id"),
        native.upstream_header("x-authz-id")
    );
    assert_eq!(ours.upstream_header("x-authz-id").as_deref(), Some("7"));
    assert_eq!(ours.upstream_header("x-other"), None);
    let ours = envoy.send("meshwasm-custom", &Request::get("/deny"));
    let native = envoy.send("native-custom", &Request::get("/deny"));
    assert_eq!((ours.status, ours.text()), (native.status, native.text()));
    assert_eq!(ours.header("x-reason"), native.header("x-reason"));
    assert_eq!(ours.header("x-reason"), Some("r"));

    // The check request: method, prefixed path with query, allowed headers only.
    authz.clear_seen();
    envoy.send(
        "meshwasm-custom",
        &Request::get("/allow/q?a=1")
            .header("x-user", "u")
            .header("cookie", "c"),
    );
    let seen = authz.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/check/allow/q?a=1");
    assert_eq!(seen[0].header("x-user"), Some("u"));
    assert_eq!(seen[0].header("cookie"), None);
    // Only CUSTOM paths call the server.
    authz.clear_seen();
    envoy.send("meshwasm-custom", &Request::get("/public"));
    assert!(authz.seen().is_empty());

    assert!(envoy.stat("wasmcustom.meshwasm.authz.ext_authz_error") >= 4);
    assert!(envoy.stat("wasmcustom.meshwasm.authz.ext_authz_denied") >= 1);
    assert!(envoy.stat("wasmcustom.meshwasm.authz.ext_authz_allowed") >= 1);
}
