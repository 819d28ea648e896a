//! Peer identities over mTLS: client certificates with SPIFFE URI SANs made
//! here (openssl), requests sent with curl, the same decisions from
//! dist/authz.wasm and from the RBAC istiod generates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod authz_common;

use std::path::PathBuf;

use authz_common::*;
use host_tests::envoy::Envoy;
use host_tests::upstream::Upstream;
use serde_json::json;

#[test]
fn peer_identity_over_mtls() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("meshwasm-authz-mtls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let clients = [
        ("alice", "spiffe://cluster.local/ns/foo/sa/alice"),
        ("bob", "spiffe://cluster.local/ns/bar/sa/bob"),
        ("carol", "spiffe://other.td/ns/foo/sa/carol"),
        ("evil", "spiffe://cluster.local/ns/bar/sa/evil"),
    ];
    make_certs(&dir, &clients);

    let spec = json!({"rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/alice"]}}], "to": [{"operation": {"paths": ["/alice"]}}]},
        {"from": [{"source": {"namespaces": ["foo"]}}], "to": [{"operation": {"paths": ["/ns-foo"]}}]},
        {"from": [{"source": {"serviceAccounts": ["bar/bob"]}}], "to": [{"operation": {"paths": ["/sa-bob"]}}]},
        {"from": [{"source": {"trustDomains": ["other.td"]}}], "to": [{"operation": {"paths": ["/td"]}}]},
        {"from": [{"source": {"notPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/anon"]}}]},
        {"from": [{"source": {"principals": ["*"]}}], "to": [{"operation": {"paths": ["/any"]}}]},
        {"to": [{"operation": {"paths": ["/sni"]}}], "when": [{"key": "connection.sni", "values": ["*.example"]}]},
        {"from": [{"source": {"principals": ["*/sa/bob"]}}], "to": [{"operation": {"paths": ["/suffix"]}}]},
        {"from": [{"source": {"notNamespaces": ["foo"]}}], "to": [{"operation": {"paths": ["/not-foo"]}}]},
        {"to": [{"operation": {"paths": ["/cond"]}}], "when": [{"key": "source.principal", "values": ["cluster.local/ns/foo/*"]}, {"key": "source.namespace", "notValues": ["bar"]}]}
    ]});
    let deny = json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bar/sa/evil"]}}]}]});
    let one = |p: &str| and_rules(vec![or_rules(vec![url_path(exact(p))])]);
    let by = |i: usize, p: &str, principal: serde_json::Value| {
        (
            id("mtls", i),
            rbac_policy(vec![one(p)], vec![and_ids(vec![principal])]),
        )
    };
    let native_allow = rbac(
        "ALLOW",
        vec![
            by(
                0,
                "/alice",
                or_ids(vec![authenticated(exact(
                    "spiffe://cluster.local/ns/foo/sa/alice",
                ))]),
            ),
            by(
                1,
                "/ns-foo",
                or_ids(vec![authenticated(regex(".*/ns/foo/.*"))]),
            ),
            by(
                2,
                "/sa-bob",
                or_ids(vec![authenticated(regex(
                    "spiffe://.+/ns/bar/(.+/|)sa/bob(/.+)?",
                ))]),
            ),
            by(
                3,
                "/td",
                or_ids(vec![authenticated(prefix("spiffe://other.td/"))]),
            ),
            by(4, "/anon", not_id(or_ids(vec![authenticated(regex(".+"))]))),
            by(5, "/any", or_ids(vec![authenticated(regex(".+"))])),
            (
                id("mtls", 6),
                rbac_policy(
                    vec![and_rules(vec![
                        or_rules(vec![url_path(exact("/sni"))]),
                        or_rules(vec![json!({"requestedServerName": suffix(".example")})]),
                    ])],
                    vec![any_principal()],
                ),
            ),
            by(
                7,
                "/suffix",
                or_ids(vec![authenticated(regex("spiffe://.*/sa/bob"))]),
            ),
            by(
                8,
                "/not-foo",
                not_id(or_ids(vec![authenticated(regex(".*/ns/foo/.*"))])),
            ),
            (
                id("mtls", 9),
                rbac_policy(
                    vec![one("/cond")],
                    vec![and_ids(vec![
                        or_ids(vec![authenticated(prefix(
                            "spiffe://cluster.local/ns/foo/",
                        ))]),
                        not_id(or_ids(vec![authenticated(regex(".*/ns/bar/.*"))])),
                    ])],
                ),
            ),
        ],
    );
    let native_deny = rbac(
        "DENY",
        vec![(
            id("mtls-deny", 0),
            rbac_policy(
                vec![any_permission()],
                vec![and_ids(vec![or_ids(vec![authenticated(exact(
                    "spiffe://cluster.local/ns/bar/sa/evil",
                ))])])],
            ),
        )],
    );
    let set = PolicySet {
        name: "mtls",
        plugin: plugin(vec![policy("mtls", spec), policy("mtls-deny", deny)]),
        native: vec![native_deny, native_allow],
        front: vec![],
        trusted_hops: 0,
        cases: vec![],
    };
    let tls = downstream_tls(&dir);
    let upstream = Upstream::echo("v1");
    let envoy = Envoy::from_yaml(&bootstrap(std::slice::from_ref(&set), vec![], Some(&tls)))
        .upstream("UPSTREAM_PORT", &upstream)
        .start();
    let (ours, native) = (envoy.port("meshwasm-mtls"), envoy.port("native-mtls"));

    let paths = [
        "/alice", "/ns-foo", "/sa-bob", "/td", "/anon", "/any", "/sni", "/suffix", "/not-foo",
        "/cond", "/none",
    ];
    let mut who: Vec<(&str, Option<PathBuf>)> = clients
        .iter()
        .map(|(n, _)| (*n, Some(dir.join(n))))
        .collect();
    who.push(("no client cert", None));
    // Istio semantics for a few, so the table cannot pass vacuously.
    let expected = [
        ("alice", "/alice", 200),
        ("bob", "/alice", 403),
        ("alice", "/ns-foo", 200),
        ("carol", "/ns-foo", 200),
        ("bob", "/sa-bob", 200),
        ("carol", "/td", 200),
        ("alice", "/td", 403),
        ("no client cert", "/anon", 200),
        ("alice", "/anon", 403),
        ("no client cert", "/any", 403),
        ("bob", "/suffix", 200),
        ("bob", "/not-foo", 200),
        ("alice", "/cond", 200),
        ("evil", "/any", 403),
    ];
    let mut report = Vec::new();
    let mut statuses = std::collections::BTreeSet::new();
    for (name, cert) in &who {
        for path in paths {
            let a = curl(ours, path, cert.as_deref(), None);
            let b = curl(native, path, cert.as_deref(), None);
            statuses.insert(b.0);
            if a != b {
                report.push(format!("{name} {path}: meshwasm {a:?}, native {b:?}"));
            }
            if let Some((_, _, want)) = expected.iter().find(|(w, p, _)| w == name && *p == path) {
                if b.0 != *want {
                    report.push(format!(
                        "{name} {path}: both {}, Istio semantics say {want}",
                        b.0
                    ));
                }
            }
        }
    }
    // SNI: a name matching `*.example`, and none.
    for (sni, want) in [(Some("api.example"), 200), (None, 403)] {
        let a = curl(ours, "/sni", Some(&dir.join("alice")), sni);
        let b = curl(native, "/sni", Some(&dir.join("alice")), sni);
        if a != b || b.0 != want {
            report.push(format!(
                "sni {sni:?}: meshwasm {a:?}, native {b:?}, want {want}"
            ));
        }
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&403),
        "{statuses:?}"
    );
    assert!(
        report.is_empty(),
        "{} mismatches:\n{}",
        report.len(),
        report.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
