//! authz behind meshwasm's own jwt_authn: identities come from its filter state
//! (`meshwasm.jwt_payload`), never from request headers. Twin: Envoy's native
//! jwt_authn + the RBAC istiod generates, on the same requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod authz_common;

use authz_common::*;
use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::twin::{assert_same, Case};
use host_tests::upstream::Upstream;
use serde_json::json;

fn jwt_wasm() -> serde_json::Value {
    let spec = json!({"jwtRules": [
        {"issuer": ISSUER_A, "jwks": hs256_jwks()},
        {"issuer": ISSUER_B, "jwks": hs256_jwks()}]});
    json!({"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "meshwasm.jwt_authn", "root_id": "jwt_authn",
            "vm_config": {"vm_id": "", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": "{{DIST}}/jwt_authn.wasm"}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": spec.to_string()},
            "failure_policy": "FAIL_CLOSED"}}})
}

#[test]
fn identities_from_meshwasm_jwt_authn_filter_state() {
    let policy_json = policy(
        "jwt",
        json!({"rules": [
            {"from": [{"source": {"requestPrincipals": [format!("{ISSUER_A}/alice")]}}], "to": [{"operation": {"paths": ["/"]}}]},
            {"to": [{"operation": {"paths": ["/admin"]}}], "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]},
            {"to": [{"operation": {"paths": ["/scope"]}}], "when": [{"key": "request.auth.claims[scope]", "values": ["write"]}]},
            {"from": [{"source": {"notRequestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/anon"]}}]}
        ]}),
    );
    let one = |p: &str| and_rules(vec![or_rules(vec![url_path(exact(p))])]);
    let native = rbac(
        "ALLOW",
        vec![
            (
                id("jwt", 0),
                rbac_policy(
                    vec![one("/")],
                    vec![and_ids(vec![or_ids(vec![request_principal(
                        exact(ISSUER_A),
                        exact("alice"),
                    )])])],
                ),
            ),
            (
                id("jwt", 1),
                rbac_policy(
                    vec![one("/admin")],
                    vec![and_ids(vec![jwt_claim_list(
                        &["groups"],
                        vec![exact("admin")],
                    )])],
                ),
            ),
            (
                id("jwt", 2),
                rbac_policy(
                    vec![one("/scope")],
                    vec![and_ids(vec![jwt_claim_list(
                        &["scope"],
                        vec![exact("write")],
                    )])],
                ),
            ),
            (
                id("jwt", 3),
                rbac_policy(
                    vec![one("/anon")],
                    vec![and_ids(vec![not_id(request_principal(
                        regex(".+"),
                        regex(".+"),
                    ))])],
                ),
            ),
        ],
    );
    let listeners = vec![
        listener(
            "meshwasm",
            vec![jwt_wasm(), wasm_filter("jwt", &plugin(vec![policy_json]))],
            0,
            None,
        ),
        listener("native", vec![native_jwt_authn(), native], 0, None),
    ];
    let yaml = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": "{{ADMIN_PORT}}"}}},
        "static_resources": {"listeners": listeners, "clusters": [cluster("upstream", "{{UPSTREAM_PORT}}")]}
    })
    .to_string();
    let upstream = Upstream::echo("v1");
    let envoy = Envoy::from_yaml(&yaml)
        .upstream("UPSTREAM_PORT", &upstream)
        .start();

    let exp = far_future();
    let alice = hs256(
        &json!({"iss": ISSUER_A, "sub": "alice", "exp": exp, "groups": ["admin"], "scope": "read write"}),
    );
    let bob = hs256(&json!({"iss": ISSUER_B, "sub": "bob", "exp": exp, "groups": "user"}));
    let bearer = |p: &str, t: &str| Request::get(p).header("authorization", &format!("Bearer {t}"));
    // A client trying to pose as a verified identity through headers.
    let forged = |p: &str| {
        Request::get(p)
            .header(
                "x-jwt-payload",
                &b64url(br#"{"iss":"https://issuer.example","sub":"alice","groups":["admin"]}"#),
            )
            .header("meshwasm.jwt_payload", "alice")
            .header(
                "x-forwarded-client-cert",
                "By=spiffe://x;URI=spiffe://cluster.local/ns/a/sa/b",
            )
    };
    let cases = vec![
        Case::new("alice", bearer("/", &alice)),
        Case::new("bob not listed", bearer("/", &bob)),
        Case::new("no token", Request::get("/")),
        Case::new("groups claim", bearer("/admin", &alice)),
        Case::new("groups claim other", bearer("/admin", &bob)),
        Case::new("space-delimited scope", bearer("/scope", &alice)),
        Case::new("anonymous", Request::get("/anon")),
        Case::new("authenticated on anonymous path", bearer("/anon", &alice)),
        Case::new("forged headers /", forged("/")),
        Case::new("forged headers /admin", forged("/admin")),
        Case::new(
            "expired",
            bearer(
                "/",
                &hs256(&json!({"iss": ISSUER_A, "sub": "alice", "exp": 1000})),
            ),
        ),
    ];
    assert_same(&envoy, "meshwasm", "native", &cases);
    // And the outcomes are the ones Istio gives.
    assert_eq!(envoy.send("meshwasm", &bearer("/", &alice)).status, 200);
    assert_eq!(
        envoy.send("meshwasm", &bearer("/admin", &alice)).status,
        200
    );
    assert_eq!(
        envoy.send("meshwasm", &bearer("/scope", &alice)).status,
        200
    );
    assert_eq!(envoy.send("meshwasm", &forged("/")).status, 403);
    assert_eq!(envoy.send("meshwasm", &forged("/admin")).status, 403);
    assert_eq!(envoy.send("meshwasm", &Request::get("/anon")).status, 200);
}
