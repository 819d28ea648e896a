//! Table-driven tests of Istio's AuthorizationPolicy semantics, and of the
//! golden AuthorizationPolicy → RBAC pairs from Istio's own tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::guard::GuardIndex;
use super::*;
use crate::http_match::strip_query;

/// A request as the glue would present it.
#[derive(Debug, Clone, Default)]
struct Req {
    headers: BTreeMap<String, Vec<String>>,
    direct: Option<IpAddr>,
    remote: Option<IpAddr>,
    dest: Option<IpAddr>,
    port: Option<u16>,
    sni: String,
    peer: Option<Vec<String>>,
    jwt: Option<Value>,
    meta: BTreeMap<String, Value>,
}

impl RequestAttrs for Req {
    fn header_any(
        &mut self,
        _slot: usize,
        name: &str,
        pred: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<bool> {
        self.headers
            .get(name)
            .map(|values| values.iter().any(|v| pred(v.as_bytes())))
    }
    fn url_path(&mut self) -> Option<&[u8]> {
        self.headers
            .get(":path")
            .and_then(|v| v.first())
            .map(|p| strip_query(p.as_bytes()))
    }
    fn direct_ip(&mut self) -> Option<IpAddr> {
        self.direct
    }
    fn remote_ip(&mut self) -> Option<IpAddr> {
        self.remote
    }
    fn destination_ip(&mut self) -> Option<IpAddr> {
        self.dest
    }
    fn destination_port(&mut self) -> Option<u16> {
        self.port
    }
    fn requested_server_name(&mut self) -> &str {
        &self.sni
    }
    fn peer_names(&mut self) -> Option<&[String]> {
        self.peer.as_deref()
    }
    fn jwt_payload(&mut self) -> Option<&Value> {
        self.jwt.as_ref()
    }
    fn filter_metadata(&mut self, filter: &str) -> Option<&Value> {
        self.meta.get(filter)
    }
}

fn get(path: &str) -> Req {
    req("GET", path)
}

fn req(method: &str, path: &str) -> Req {
    let mut r = Req::default();
    r.headers.insert(":method".into(), vec![method.into()]);
    r.headers.insert(":path".into(), vec![path.into()]);
    r.headers
        .insert(":authority".into(), vec!["example.com".into()]);
    r.direct = Some("10.0.0.1".parse().unwrap());
    r.remote = Some("10.0.0.1".parse().unwrap());
    r.dest = Some("10.0.0.100".parse().unwrap());
    r.port = Some(8080);
    r
}

impl Req {
    /// Sets a header (replacing); `hh` adds a repeated value.
    fn h(mut self, k: &str, v: &str) -> Req {
        self.headers.insert(k.to_ascii_lowercase(), vec![v.into()]);
        self
    }
    fn hh(mut self, k: &str, v: &str) -> Req {
        self.headers
            .entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.into());
        self
    }
    fn peer(mut self, spiffe: &str) -> Req {
        self.peer = Some(vec![spiffe.to_string()]);
        self
    }
    fn jwt(mut self, v: Value) -> Req {
        self.jwt = Some(v);
        self
    }
    fn direct(mut self, ip: &str) -> Req {
        self.direct = Some(ip.parse().unwrap());
        self
    }
    fn remote(mut self, ip: &str) -> Req {
        self.remote = Some(ip.parse().unwrap());
        self
    }
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": "foo"}, "spec": spec})
}

fn authz(policies: Vec<Value>) -> Authz {
    authz_td("cluster.local", &[], policies)
}

fn authz_td(td: &str, aliases: &[&str], policies: Vec<Value>) -> Authz {
    let cfg = json!({"trustDomain": td, "trustDomainAliases": aliases, "policies": policies});
    Authz::from_json(cfg.to_string().as_bytes()).unwrap_or_else(|e| panic!("config rejected: {e}"))
}

fn config_error(cfg: Value) -> String {
    match Authz::from_json(cfg.to_string().as_bytes()) {
        Ok(_) => panic!("config accepted: {cfg}"),
        Err(e) => e.to_string(),
    }
}

fn allowed(a: &Authz, mut r: Req) -> bool {
    a.evaluate(&mut r).allowed
}

/// One ALLOW policy with one rule; checks every (request, expected) row.
fn table(rule: Value, rows: Vec<(&str, Req, bool)>) {
    let a = authz(vec![policy("p", json!({"rules": [rule]}))]);
    let mut failures = Vec::new();
    for (name, r, want) in rows {
        let got = allowed(&a, r);
        if got != want {
            failures.push(format!("{name}: want allowed={want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "rule {rule}:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------- actions (A.1, A.2)

#[test]
fn no_policies_allow_everything() {
    let a = authz(vec![]);
    let d = a.evaluate(&mut get("/"));
    assert!(d.allowed);
    assert_eq!(d.result(), "allowed");
    assert_eq!(d.policy_id, None);
}

#[test]
fn golden_allow_nil_rule_denies_all() {
    // http__allow-nil-rule: no rules → notRule any / notId any.
    let a = authz(vec![policy(
        "allow-none",
        json!({"selector": {"matchLabels": {"app": "httpbin"}}}),
    )]);
    assert!(!allowed(&a, get("/")));
    let a = authz(vec![policy("allow-none", json!({}))]);
    assert!(!allowed(&a, get("/")));
    let a = authz(vec![policy("allow-none", json!({"rules": []}))]);
    assert!(!allowed(&a, get("/")));
}

#[test]
fn golden_allow_empty_rule_allows_all() {
    let a = authz(vec![policy("p", json!({"rules": [{}]}))]);
    let d = a.evaluate(&mut get("/anything"));
    assert!(d.allowed);
    assert_eq!(d.policy_id, Some("ns[foo]-policy[p]-rule[0]"));
}

#[test]
fn golden_deny_empty_rule_denies_all() {
    let a = authz(vec![policy(
        "deny-all",
        json!({"action": "DENY", "rules": [{}]}),
    )]);
    let d = a.evaluate(&mut get("/"));
    assert!(!d.allowed);
    assert_eq!(d.policy_id, Some("ns[foo]-policy[deny-all]-rule[0]"));
    assert_eq!(d.result(), "denied");
}

#[test]
fn golden_deny_and_allow() {
    let a = authz(vec![
        policy(
            "httpbin-deny",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["deny"]}}]}]}),
        ),
        policy(
            "httpbin-allow",
            json!({"rules": [{"from": [{"source": {"principals": ["allow"]}}]}]}),
        ),
    ]);
    assert!(!allowed(&a, get("/").peer("spiffe://deny")));
    assert!(allowed(&a, get("/").peer("spiffe://allow")));
    assert!(!allowed(&a, get("/").peer("spiffe://other")));
    assert!(!allowed(&a, get("/")));
}

#[test]
fn deny_wins_over_allow_and_allow_is_union() {
    let a = authz(vec![
        policy(
            "a1",
            json!({"rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]}),
        ),
        policy(
            "a2",
            json!({"rules": [{"to": [{"operation": {"paths": ["/b"]}}]}]}),
        ),
        policy(
            "d",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/b"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]}]}),
        ),
    ]);
    assert!(allowed(&a, get("/a")));
    assert!(allowed(&a, get("/b")));
    assert!(!allowed(&a, get("/b").h("x", "1")));
    assert!(!allowed(&a, get("/c")));
    let d = a.evaluate(&mut get("/b"));
    assert_eq!(d.policy_id, Some("ns[foo]-policy[a2]-rule[0]"));
}

#[test]
fn audit_never_enforces() {
    let a = authz(vec![policy(
        "log",
        json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]}),
    )]);
    let d = a.evaluate(&mut get("/a"));
    assert!(d.allowed);
    assert_eq!(d.audit_policy, Some("ns[foo]-policy[log]-rule[0]"));
    assert_eq!(d.result(), "audit");
    let d = a.evaluate(&mut get("/b"));
    assert!(d.allowed);
    assert_eq!(d.audit_policy, None);
    // AUDIT without rules is accepted and never matches.
    let a = authz(vec![policy("log", json!({"action": "AUDIT"}))]);
    assert_eq!(a.evaluate(&mut get("/")).audit_policy, None);
}

// ---------------------------------------------------------------- dry-run (A.13, golden dry-run-mix)

fn dry(name: &str, v: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "foo", "annotations": {"istio.io/dry-run": v}}, "spec": spec})
}

#[test]
fn golden_dry_run_mix() {
    let a = authz(vec![
        dry(
            "httpbin-1",
            "true",
            json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/allow"]}}]}]}),
        ),
        dry(
            "httpbin-2",
            "false",
            json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/another"]}}]}]}),
        ),
    ]);
    let d = a.evaluate(&mut get("/allow"));
    assert!(!d.allowed, "only /another is enforced");
    assert_eq!(
        d.shadows,
        vec![Shadow {
            denied: false,
            policy_id: Some("ns[foo]-policy[httpbin-1]-rule[0]")
        }]
    );
    let d = a.evaluate(&mut get("/another"));
    assert!(d.allowed);
    assert_eq!(d.result(), "shadow_denied");
}

#[test]
fn all_dry_run_enforces_nothing() {
    let a = authz(vec![
        dry(
            "a",
            "True",
            json!({"rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}),
        ),
        dry("d", "1", json!({"action": "DENY", "rules": [{}]})),
    ]);
    let d = a.evaluate(&mut get("/y"));
    assert!(d.allowed);
    assert_eq!(d.shadows.len(), 2);
    assert!(d.shadows[0].denied, "dry-run DENY matched");
    assert!(d.shadows[1].denied, "dry-run ALLOW did not match");
    assert_eq!(d.result(), "shadow_denied");
}

#[test]
fn dry_run_validation() {
    let e = config_error(json!({"policies": [dry("a", "yes", json!({"rules": [{}]}))]}));
    assert!(
        e.starts_with("policies[0].metadata.annotations[istio.io/dry-run]: "),
        "{e}"
    );
    let e = config_error(
        json!({"policies": [dry("a", "true", json!({"action": "AUDIT", "rules": [{}]}))]}),
    );
    assert!(e.contains("dry-run"), "{e}");
}

// ---------------------------------------------------------------- validation (A.2, A.8)

#[test]
fn validation_errors_name_the_field() {
    let cases = vec![
        (json!({"action": "DENY"}), "policies[0].spec.rules: DENY action without `rules`"),
        (json!({"action": "DENY", "rules": []}), "policies[0].spec.rules: DENY action without `rules`"),
        (json!({"action": "CUSTOM", "provider": {"name": "x"}}), "policies[0].spec.rules: CUSTOM action without `rules`"),
        (json!({"action": "CUSTOM", "rules": [{}]}), "policies[0].spec.provider: CUSTOM action requires a provider name"),
        (json!({"provider": {"name": "x"}, "rules": [{}]}), "policies[0].spec.provider: provider must only be used with the CUSTOM action"),
        (json!({"rules": [null]}), "policies[0].spec.rules[0]: `rule` must not be nil"),
        (json!({"rules": [{"from": []}]}), "policies[0].spec.rules[0].from: `from` must not be empty"),
        (json!({"rules": [{"to": []}]}), "policies[0].spec.rules[0].to: `to` must not be empty"),
        (json!({"rules": [{"from": [{}]}]}), "policies[0].spec.rules[0].from[0].source: `from.source` must not be nil"),
        (json!({"rules": [{"from": [{"source": {}}]}]}), "policies[0].spec.rules[0].from[0].source: `from.source` must not be empty"),
        (json!({"rules": [{"to": [{"operation": {}}]}]}), "policies[0].spec.rules[0].to[0].operation: `to.operation` must not be empty"),
        (json!({"rules": [{"from": [{"source": {"ipBlocks": ["1.2.3.4", "300.1.1.1"]}}]}]}), "policies[0].spec.rules[0].from[0].source.ipBlocks[1]: invalid IP"),
        (json!({"rules": [{"from": [{"source": {"notRemoteIpBlocks": ["10.0.0.0/40"]}}]}]}), "policies[0].spec.rules[0].from[0].source.notRemoteIpBlocks[0]: invalid CIDR"),
        (json!({"rules": [{"to": [{"operation": {"paths": ["/a", ""]}}]}]}), "policies[0].spec.rules[0].to[0].operation.paths[1]: empty value not allowed"),
        (json!({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}), "policies[0].spec.rules[0].to[0].operation.ports[0]: invalid port"),
        (json!({"rules": [{"to": [{"operation": {"notPorts": ["70000"]}}]}]}), "policies[0].spec.rules[0].to[0].operation.notPorts[0]: invalid port"),
        (json!({"rules": [{"to": [{"operation": {"paths": ["/{**}/a/{**}"]}}]}]}), "policies[0].spec.rules[0].to[0].operation.paths[0]: path template"),
        (json!({"rules": [{"when": [{"key": "request.foo", "values": ["x"]}]}]}), "policies[0].spec.rules[0].when[0].key: unknown attribute: request.foo"),
        (json!({"rules": [{"when": [{"key": "destination.namespace", "values": ["x"]}]}]}), "policies[0].spec.rules[0].when[0].key: attribute destination.namespace"),
        (json!({"rules": [{"when": [{"key": "destination.labels[app]", "values": ["x"]}]}]}), "policies[0].spec.rules[0].when[0].key: attribute destination.labels"),
        (json!({"rules": [{"when": [{"key": "request.headers", "values": ["x"]}]}]}), "policies[0].spec.rules[0].when[0].key: invalid key"),
        (json!({"rules": [{"when": [{"key": "request.headers[]", "values": ["x"]}]}]}), "policies[0].spec.rules[0].when[0].key: invalid key"),
        (json!({"rules": [{"when": [{"key": "request.auth.claims", "values": ["x"]}]}]}), "policies[0].spec.rules[0].when[0].key: invalid key"),
        (json!({"rules": [{"when": [{"key": "source.ip"}]}]}), "policies[0].spec.rules[0].when[0]: at least one of `values` or `notValues`"),
        (json!({"rules": [{"when": [{"key": "source.ip", "values": ["bad"]}]}]}), "policies[0].spec.rules[0].when[0].values[0]: invalid IP"),
        (json!({"rules": [{"when": [{"key": "destination.port", "notValues": ["x"]}]}]}), "policies[0].spec.rules[0].when[0].notValues[0]: invalid port"),
        (json!({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]}]}), "policies[0].spec.rules[0].from[0].source.serviceAccounts[0]: service account must be"),
        (json!({"rules": [{"from": [{"source": {"serviceAccounts": ["sa-*"]}}]}]}), "policies[0].spec.rules[0].from[0].source.serviceAccounts[0]: wildcard"),
        (json!({"rules": [{"from": [{"source": {"serviceAccounts": ["a"], "namespaces": ["b"]}}]}]}), "policies[0].spec.rules[0].from[0].source.serviceAccounts: cannot set serviceAccounts"),
        (json!({"rules": [{"from": [{"source": {"trustDomains": ["a*b"]}}]}]}), "policies[0].spec.rules[0].from[0].source.trustDomains[0]: trust domain allows"),
        (json!({"rules": [{"from": [{"source": {"notTrustDomains": ["a/b"]}}]}]}), "policies[0].spec.rules[0].from[0].source.notTrustDomains[0]: trust domain must not contain"),
        (json!({"rules": [{"from": [{"source": {"principal": ["a"]}}]}]}), "policies[0].spec.rules[0].from[0].source.principal: unknown field `principal`"),
        (json!({"action": "LOG", "rules": [{}]}), "policies[0].spec.action: unknown variant `LOG`"),
        (json!({"selector": {}, "targetRefs": [], "rules": [{}]}), "policies[0].spec: only one of selector"),
    ];
    let mut failures = Vec::new();
    for (spec, want) in cases {
        let cfg = json!({"policies": [policy("p", spec.clone())]});
        match Authz::from_json(cfg.to_string().as_bytes()) {
            Ok(_) => failures.push(format!("accepted: {spec}")),
            Err(e) if !e.to_string().starts_with(want) => {
                failures.push(format!("{spec}:\n  want {want}\n  got  {e}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kubectl_output_is_accepted() {
    let p = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "foo", "uid": "123", "resourceVersion": "9", "generation": 1,
                     "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"a": "b"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "rules": [{}]},
        "status": {"conditions": []}
    });
    assert!(allowed(&authz(vec![p]), get("/")));
    // namespace defaults to "default"
    let a = authz(vec![
        json!({"metadata": {"name": "n"}, "spec": {"rules": [{}]}}),
    ]);
    assert_eq!(
        a.evaluate(&mut get("/")).policy_id,
        Some("ns[default]-policy[n]-rule[0]")
    );
}

#[test]
fn top_level_unknown_field_rejected() {
    let e = config_error(json!({"trustDomian": "x"}));
    assert!(e.starts_with("trustDomian: unknown field"), "{e}");
}

// ---------------------------------------------------------------- operations (A.5, A.7)

#[test]
fn golden_allow_path() {
    // http__allow-path: paths and notPaths with every matcher form.
    table(
        json!({"to": [{"operation": {
            "paths": ["/exact", "/prefix/*", "*/suffix", "*", "/path/template/{*}", "/{**}/path/template"],
            "notPaths": ["/not-exact", "/not-prefix/*", "*/not-suffix", "*", "/not-path/template/{*}", "/{**}/not-path/template"]}}]}),
        // notPaths contains "*" (non-empty), so every real path is excluded.
        vec![("exact", get("/exact"), false), ("any", get("/zzz"), false)],
    );
    table(
        json!({"to": [{"operation": {
            "paths": ["/exact", "/prefix/*", "*/suffix", "/path/template/{*}", "/{**}/path/template"],
            "notPaths": ["/not-exact", "/prefix/not/*", "*/not-suffix", "/not-path/template/{*}", "/{**}/not-path/template"]}}]}),
        vec![
            ("exact", get("/exact"), true),
            ("exact with query", get("/exact?a=b"), true),
            ("exact with fragment", get("/exact#f"), true),
            ("exact trailing slash", get("/exact/"), false),
            ("exact case", get("/EXACT"), false),
            ("prefix", get("/prefix/a/b"), true),
            ("prefix itself", get("/prefix/"), true),
            ("prefix without slash", get("/prefix"), false),
            ("not prefix", get("/prefix/not/x"), false),
            ("suffix", get("/a/b/suffix"), true),
            ("not suffix", get("/a/not-suffix"), false),
            ("template one segment", get("/path/template/x"), true),
            ("template two segments", get("/path/template/x/y"), false),
            ("template empty segment", get("/path/template/"), false),
            ("template query", get("/path/template/x?q=1"), true),
            ("double-star template", get("/a/b/c/path/template"), true),
            ("double-star empty", get("//path/template"), true),
            ("other", get("/other"), false),
        ],
    );
}

#[test]
fn path_star_needs_non_empty_path() {
    table(
        json!({"to": [{"operation": {"paths": ["*"]}}]}),
        vec![("slash", get("/"), true)],
    );
    let mut r = get("/");
    r.headers.remove(":path");
    table(
        json!({"to": [{"operation": {"paths": ["*"]}}]}),
        vec![("no path", r, false)],
    );
    table(
        json!({"to": [{"operation": {"notPaths": ["/a"]}}]}),
        vec![("query", get("/a?x"), false), ("b", get("/b"), true)],
    );
}

#[test]
fn hosts_case_insensitive_no_port_stripping() {
    table(
        json!({"to": [{"operation": {"hosts": ["example.com", "*.suffix.com", "prefix.*", "Mixed.Case.org"]}}]}),
        vec![
            ("exact", get("/").h(":authority", "example.com"), true),
            ("upper", get("/").h(":authority", "EXAMPLE.com"), true),
            (
                "with port",
                get("/").h(":authority", "example.com:80"),
                false,
            ),
            ("suffix", get("/").h(":authority", "a.SUFFIX.com"), true),
            ("suffix bare", get("/").h(":authority", "suffix.com"), false),
            (
                "prefix",
                get("/").h(":authority", "prefix.anything:8080"),
                true,
            ),
            (
                "mixed pattern",
                get("/").h(":authority", "mixed.case.ORG"),
                true,
            ),
            ("other", get("/").h(":authority", "other.com"), false),
        ],
    );
    table(
        json!({"to": [{"operation": {"hosts": ["example.com", "example.com:*"]}}]}),
        vec![(
            "port via best practice",
            get("/").h(":authority", "example.com:8080"),
            true,
        )],
    );
    table(
        json!({"to": [{"operation": {"notHosts": ["*"]}}]}),
        vec![("present", get("/"), false)],
    );
}

#[test]
fn methods_case_sensitive() {
    table(
        json!({"to": [{"operation": {"methods": ["GET", "P*", "*TE"]}}]}),
        vec![
            ("get", req("GET", "/"), true),
            ("lower", req("get", "/"), false),
            ("prefix", req("PUT", "/"), true),
            ("suffix", req("DELETE", "/"), true),
            ("other", req("HEAD", "/"), false),
        ],
    );
    table(
        json!({"to": [{"operation": {"notMethods": ["GET"]}}]}),
        vec![
            ("get", req("GET", "/"), false),
            ("post", req("POST", "/"), true),
        ],
    );
}

#[test]
fn ports() {
    let mut r80 = get("/");
    r80.port = Some(80);
    table(
        json!({"to": [{"operation": {"ports": ["80", "90"]}}]}),
        vec![("80", r80.clone(), true), ("8080", get("/"), false)],
    );
    table(
        json!({"to": [{"operation": {"notPorts": ["80"]}}]}),
        vec![("80", r80.clone(), false), ("8080", get("/"), true)],
    );
    table(
        json!({"when": [{"key": "destination.port", "values": ["8080"]}]}),
        vec![("80", r80, false), ("8080", get("/"), true)],
    );
}

#[test]
fn operation_fields_are_anded_and_operations_ored() {
    table(
        json!({"to": [{"operation": {"methods": ["GET"], "paths": ["/a"]}}, {"operation": {"methods": ["POST"]}}]}),
        vec![
            ("get /a", get("/a"), true),
            ("get /b", get("/b"), false),
            ("post /b", req("POST", "/b"), true),
        ],
    );
}

// ---------------------------------------------------------------- sources (A.6)

#[test]
fn principals_and_plaintext() {
    // A.15.1: `*` needs a certificate; notPrincipals matches plaintext.
    table(
        json!({"from": [{"source": {"principals": ["*"]}}]}),
        vec![
            ("plaintext", get("/"), false),
            (
                "mtls",
                get("/").peer("spiffe://cluster.local/ns/a/sa/b"),
                true,
            ),
        ],
    );
    table(
        json!({"from": [{"source": {"notPrincipals": ["cluster.local/ns/a/sa/b"]}}]}),
        vec![
            ("plaintext", get("/"), true),
            (
                "that peer",
                get("/").peer("spiffe://cluster.local/ns/a/sa/b"),
                false,
            ),
            (
                "other peer",
                get("/").peer("spiffe://cluster.local/ns/a/sa/c"),
                true,
            ),
        ],
    );
    table(
        json!({"from": [{"source": {"principals": ["cluster.local/ns/a/*", "*/sa/admin", "td/ns/x/sa/y"]}}]}),
        vec![
            (
                "prefix",
                get("/").peer("spiffe://cluster.local/ns/a/sa/b"),
                true,
            ),
            (
                "suffix",
                get("/").peer("spiffe://other/ns/z/sa/admin"),
                true,
            ),
            ("exact", get("/").peer("spiffe://td/ns/x/sa/y"), true),
            (
                "exact needs spiffe scheme",
                get("/").peer("td/ns/x/sa/y"),
                false,
            ),
            ("other", get("/").peer("spiffe://td/ns/x/sa/z"), false),
        ],
    );
    // Envoy tries every peer name (URI SANs, DNS SANs, subject).
    let mut r = get("/");
    r.peer = Some(vec![
        "spiffe://x/ns/a/sa/b".into(),
        "dns.example".into(),
        "CN=x".into(),
    ]);
    table(
        json!({"from": [{"source": {"principals": ["x/ns/a/sa/b"]}}]}),
        vec![("uri san", r, true)],
    );
}

#[test]
fn namespaces_regex() {
    table(
        json!({"from": [{"source": {"namespaces": ["ns-*", "exact"]}}]}),
        vec![
            ("wildcard", get("/").peer("spiffe://td/ns/ns-1/sa/x"), true),
            // `.*` may cross '/': Istio's regex, kept.
            (
                "wildcard crosses slash",
                get("/").peer("spiffe://td/ns/ns-1/x/sa/y"),
                true,
            ),
            ("exact", get("/").peer("spiffe://td/ns/exact/sa/y"), true),
            (
                "not a prefix",
                get("/").peer("spiffe://td/ns/exactly/sa/y"),
                false,
            ),
            ("plaintext", get("/"), false),
        ],
    );
    table(
        json!({"from": [{"source": {"notNamespaces": ["a.b"]}}]}),
        vec![
            (
                "dot is literal",
                get("/").peer("spiffe://td/ns/aXb/sa/y"),
                true,
            ),
            ("match", get("/").peer("spiffe://td/ns/a.b/sa/y"), false),
            ("plaintext", get("/"), true),
        ],
    );
}

#[test]
fn service_accounts() {
    table(
        json!({"from": [{"source": {"serviceAccounts": ["my-ns/my-sa", "sa-only"]}}]}),
        vec![
            (
                "ns/sa",
                get("/").peer("spiffe://td/ns/my-ns/sa/my-sa"),
                true,
            ),
            (
                "extra segments",
                get("/").peer("spiffe://td/ns/my-ns/k/v/sa/my-sa/x/y"),
                true,
            ),
            (
                "sa prefix is not sa",
                get("/").peer("spiffe://td/ns/my-ns/sa/my-sa-junk"),
                false,
            ),
            (
                "policy namespace default",
                get("/").peer("spiffe://td/ns/foo/sa/sa-only"),
                true,
            ),
            (
                "other namespace",
                get("/").peer("spiffe://td/ns/bar/sa/sa-only"),
                false,
            ),
        ],
    );
    table(
        json!({"when": [{"key": "source.serviceAccount", "notValues": ["my-ns/my-sa"]}]}),
        vec![
            ("plaintext", get("/"), true),
            (
                "that sa",
                get("/").peer("spiffe://td/ns/my-ns/sa/my-sa"),
                false,
            ),
        ],
    );
}

#[test]
fn golden_trust_domains() {
    table(
        json!({"from": [{"source": {"trustDomains": ["cluster.local", "another.local"]}}, {"source": {"notTrustDomains": ["bad*", "untrusted"]}}]}),
        vec![
            (
                "cluster.local",
                get("/").peer("spiffe://cluster.local/ns/a/sa/b"),
                true,
            ),
            (
                "another",
                get("/").peer("spiffe://another.local/ns/a/sa/b"),
                true,
            ),
            ("plaintext matches notTrustDomains", get("/"), true),
            ("bad", get("/").peer("spiffe://bad-td/ns/a/sa/b"), false),
            (
                "untrusted",
                get("/").peer("spiffe://untrusted/ns/a/sa/b"),
                false,
            ),
            ("good other", get("/").peer("spiffe://good/ns/a/sa/b"), true),
        ],
    );
    table(
        json!({"from": [{"source": {"trustDomains": ["*.local", "*"]}}]}),
        vec![
            ("any td", get("/").peer("spiffe://x/ns/a/sa/b"), true),
            ("dns", get("/").peer("x.local"), false),
        ],
    );
    table(
        json!({"from": [{"source": {"trustDomains": ["*.local"]}}]}),
        vec![
            ("suffix", get("/").peer("spiffe://a.local/ns/a/sa/b"), true),
            (
                "suffix not in path",
                get("/").peer("spiffe://a/x.local/ns"),
                false,
            ),
        ],
    );
}

#[test]
fn trust_domain_aliases() {
    // A.15.13: TD td1 alias cluster.local.
    let a = authz_td(
        "td1",
        &["cluster.local"],
        vec![policy(
            "p",
            json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}]}),
        )],
    );
    assert!(allowed(&a, get("/").peer("spiffe://td1/ns/a/sa/b")));
    assert!(allowed(
        &a,
        get("/").peer("spiffe://cluster.local/ns/a/sa/b")
    ));
    assert!(!allowed(&a, get("/").peer("spiffe://td2/ns/a/sa/b")));
    // "cluster.local" always means the local trust domain, even without an alias.
    let a = authz_td(
        "td1",
        &[],
        vec![policy(
            "p",
            json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}]}),
        )],
    );
    assert!(allowed(&a, get("/").peer("spiffe://td1/ns/a/sa/b")));
    assert!(!allowed(
        &a,
        get("/").peer("spiffe://cluster.local/ns/a/sa/b")
    ));
    // An unrelated TD is kept as written.
    let a = authz_td(
        "td1",
        &[],
        vec![policy(
            "p",
            json!({"rules": [{"from": [{"source": {"principals": ["other/ns/a/sa/b"]}}]}]}),
        )],
    );
    assert!(allowed(&a, get("/").peer("spiffe://other/ns/a/sa/b")));
    // trustDomains expand to the bundle.
    let a = authz_td(
        "td1",
        &["old"],
        vec![policy(
            "p",
            json!({"rules": [{"from": [{"source": {"trustDomains": ["old"]}}]}]}),
        )],
    );
    assert!(allowed(&a, get("/").peer("spiffe://td1/ns/a/sa/b")));
    assert!(allowed(&a, get("/").peer("spiffe://old/ns/a/sa/b")));
    assert!(!allowed(&a, get("/").peer("spiffe://new/ns/a/sa/b")));
}

#[test]
fn golden_td_aliases_source_principal() {
    use super::compile::internal::migrate_principals;
    let bundle = [
        "new-td".to_string(),
        "old-td".into(),
        "some-trustdomain".into(),
    ];
    let v = [
        "*".to_string(),
        "*/ns/foo/sa/all-td".into(),
        "*-td/ns/foo/sa/prefix-td".into(),
    ];
    assert_eq!(
        migrate_principals(&v, &bundle),
        vec![
            "*",
            "*/ns/foo/sa/all-td",
            "*-td/ns/foo/sa/prefix-td",
            "some-trustdomain/ns/foo/sa/prefix-td"
        ]
    );
    let a = authz_td(
        "new-td",
        &["old-td", "some-trustdomain"],
        vec![policy(
            "httpbin",
            json!({"rules": [{"from": [{"source": {"namespaces": ["istio-system"]}}],
            "when": [{"key": "source.principal", "values": ["*/ns/foo/sa/all-td", "*-td/ns/foo/sa/prefix-td"]}]}]}),
        )],
    );
    // namespace istio-system AND principal: the golden's AND of the two orIds.
    assert!(!allowed(&a, get("/").peer("spiffe://x/ns/foo/sa/all-td")));
    assert!(allowed(
        &a,
        get("/").peer("spiffe://x/ns/istio-system/y-td/ns/foo/sa/prefix-td")
    ));
    let a = authz_td(
        "new-td",
        &["old-td", "some-trustdomain"],
        vec![policy(
            "httpbin",
            json!({"rules": [{"when": [{"key": "source.principal", "values": ["*-td/ns/foo/sa/prefix-td"]}]}]}),
        )],
    );
    assert!(allowed(
        &a,
        get("/").peer("spiffe://old-td/ns/foo/sa/prefix-td")
    ));
    assert!(allowed(
        &a,
        get("/").peer("spiffe://any-td/ns/foo/sa/prefix-td")
    ));
    assert!(allowed(
        &a,
        get("/").peer("spiffe://some-trustdomain/ns/foo/sa/prefix-td")
    ));
    assert!(!allowed(
        &a,
        get("/").peer("spiffe://other/ns/foo/sa/prefix-td")
    ));
}

#[test]
fn td_wildcard_principal_migration() {
    // simple-policy-principal-with-wildcard (td1 + foobar): `*bar/...` keeps the
    // regex and adds the exact td1 principal.
    use super::compile::internal::migrate_principals;
    let bundle = ["td1".to_string(), "foobar".into()];
    assert_eq!(
        migrate_principals(
            &[
                "*bar/ns/foo/sa/y".to_string(),
                "*/ns/foo/sa/x".into(),
                "a/b".into()
            ],
            &bundle
        ),
        vec![
            "td1/ns/foo/sa/y",
            "*bar/ns/foo/sa/y",
            "*/ns/foo/sa/x",
            "a/b"
        ]
    );
}

#[test]
fn ip_blocks_direct_and_remote() {
    // A.15.14: ipBlocks → direct peer; remoteIpBlocks → XFF-derived client.
    table(
        json!({"from": [{"source": {"ipBlocks": ["10.0.0.0/24"]}}]}),
        vec![
            (
                "direct in",
                get("/").direct("10.0.0.7").remote("1.1.1.1"),
                true,
            ),
            (
                "direct out",
                get("/").direct("10.0.1.7").remote("10.0.0.7"),
                false,
            ),
        ],
    );
    table(
        json!({"from": [{"source": {"remoteIpBlocks": ["1.1.1.1", "2001:db8::/32"], "notRemoteIpBlocks": ["2001:db8::1"]}}]}),
        vec![
            ("remote in", get("/").remote("1.1.1.1"), true),
            ("remote v6", get("/").remote("2001:db8::2"), true),
            ("remote v6 excluded", get("/").remote("2001:db8::1"), false),
            (
                "direct does not count",
                get("/").direct("1.1.1.1").remote("3.3.3.3"),
                false,
            ),
        ],
    );
    table(
        json!({"when": [{"key": "source.ip", "notValues": ["10.0.0.1"]}, {"key": "remote.ip", "values": ["10.0.0.0/8"]}]}),
        vec![
            ("direct excluded", get("/"), false),
            ("ok", get("/").direct("10.0.0.2"), true),
        ],
    );
    let mut r = get("/");
    r.dest = Some("192.168.1.1".parse().unwrap());
    table(
        json!({"when": [{"key": "destination.ip", "values": ["192.168.0.0/16"]}]}),
        vec![("in", r, true), ("out", get("/"), false)],
    );
}

/// When Envoy took the client address from `x-forwarded-for`, the wasm host
/// cannot tell the direct peer. A policy whose outcome hangs on it fails
/// closed: DENY and CUSTOM count it as a match, ALLOW as no match, whether the
/// address is in `ipBlocks` or `notIpBlocks`; a policy decided by other fields
/// is decided as usual (three-valued logic).
#[test]
fn an_unknown_direct_peer_never_lets_a_request_through() {
    let unknown = |path: &str| {
        let mut r = get(path);
        r.direct = None;
        r
    };
    let deny = |rule: Value| {
        authz(vec![policy(
            "d",
            json!({"action": "DENY", "rules": [rule]}),
        )])
    };
    let allow = |rule: Value| authz(vec![policy("a", json!({"rules": [rule]}))]);
    let from = |field: &str| json!({"from": [{"source": {field: ["10.0.0.0/24"]}}]});
    let when = |field: &str| json!({"when": [{"key": "source.ip", field: ["10.0.0.0/24"]}]});
    for rule in [
        from("ipBlocks"),
        from("notIpBlocks"),
        when("values"),
        when("notValues"),
    ] {
        assert!(!allowed(&deny(rule.clone()), unknown("/")), "DENY {rule}");
        assert!(!allowed(&allow(rule.clone()), unknown("/")), "ALLOW {rule}");
    }
    // Decided without the peer: an AND with a false term, an OR with a true one.
    let admin_from = json!({"from": [{"source": {"notIpBlocks": ["10.0.0.0/24"]}}], "to": [{"operation": {"paths": ["/admin"]}}]});
    assert!(allowed(&deny(admin_from.clone()), unknown("/public")));
    assert!(!allowed(&deny(admin_from), unknown("/admin")));
    let either = json!({"from": [{"source": {"ipBlocks": ["10.0.0.0/24"]}}, {"source": {"remoteIpBlocks": ["10.0.0.1"]}}]});
    assert!(
        allowed(&allow(either.clone()), unknown("/")),
        "the remote address decides"
    );
    let mut other_remote = unknown("/");
    other_remote.remote = Some("10.9.9.9".parse().unwrap());
    assert!(!allowed(&allow(either), other_remote));
    // `ipBlocks: [A], notIpBlocks: [B]` stays unknown (a peer in A but not in B
    // matches), where substituting one value for every unknown leaf would not.
    let a_not_b =
        json!({"from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.1.0.0/16"]}}]});
    assert!(!allowed(&deny(a_not_b), unknown("/")));
    // CUSTOM: the check is made.
    let cfg = json!({"trustDomain": "cluster.local",
        "extensionProviders": [{"name": "ext", "envoyExtAuthzHttp": {"service": "authz.foo.svc.cluster.local", "port": 8000}}],
        "policies": [policy("c", json!({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [from("ipBlocks")]}))]});
    let a = Authz::from_json(cfg.to_string().as_bytes()).unwrap();
    assert!(a.check_custom(&mut unknown("/")).is_some());
    assert!(a.check_custom(&mut get("/").direct("10.9.9.9")).is_none());
    // A known peer is matched as before.
    assert!(allowed(
        &deny(from("ipBlocks")),
        get("/").direct("10.9.9.9")
    ));
    assert!(!allowed(
        &deny(from("ipBlocks")),
        get("/").direct("10.0.0.9")
    ));
}

// ---------------------------------------------------------------- JWT (A.9, A.10)

#[test]
fn request_principals_split_at_last_slash() {
    let tok = |iss: &str, sub: &str| get("/").jwt(json!({"iss": iss, "sub": sub}));
    table(
        json!({"from": [{"source": {"requestPrincipals": ["*"]}}]}),
        vec![
            ("any", tok("i", "s"), true),
            ("no token", get("/"), false),
            ("no sub", get("/").jwt(json!({"iss": "i"})), false),
            ("empty sub", tok("i", ""), false),
        ],
    );
    table(
        json!({"from": [{"source": {"requestPrincipals": ["https://example.com/*"]}}]}),
        vec![
            ("iss exact sub any", tok("https://example.com", "x"), true),
            ("other iss", tok("https://example.org", "x"), false),
        ],
    );
    table(
        json!({"from": [{"source": {"requestPrincipals": ["a/b*"]}}]}),
        // A.9: iss must equal "a": a plain string prefix would match "a/b" + "/c".
        vec![
            ("iss a/b sub c", tok("a/b", "c"), false),
            ("iss a sub bc", tok("a", "bc"), true),
        ],
    );
    table(
        json!({"from": [{"source": {"requestPrincipals": ["issuer"]}}]}),
        vec![
            ("no slash needs empty sub", tok("issuer", "x"), false),
            ("empty sub", tok("issuer", ""), true),
        ],
    );
    table(
        json!({"from": [{"source": {"requestPrincipals": ["*/*"]}}]}),
        vec![
            ("sub literal star", tok("i", "*"), true),
            ("sub other", tok("i", "x"), false),
        ],
    );
    table(
        json!({"from": [{"source": {"requestPrincipals": ["*suffix"]}}]}),
        vec![
            ("sub suffix", tok("i", "a-suffix"), true),
            ("iss suffix no", tok("a-suffix", "x"), false),
        ],
    );
    table(
        json!({"from": [{"source": {"requestPrincipals": ["*.com/sub"]}}]}),
        vec![
            ("iss suffix", tok("https://a.com", "sub"), true),
            ("sub differs", tok("https://a.com", "sub2"), false),
        ],
    );
    table(
        json!({"from": [{"source": {"requestPrincipals": ["iss-pre*"]}}]}),
        vec![
            ("iss prefix", tok("iss-prefix", "x"), true),
            ("no", tok("other", "x"), false),
        ],
    );
    table(
        json!({"from": [{"source": {"notRequestPrincipals": ["bad/user"]}}]}),
        vec![
            ("no token", get("/"), true),
            ("bad", tok("bad", "user"), false),
            ("good", tok("good", "user"), true),
        ],
    );
    table(
        json!({"when": [{"key": "request.auth.principal", "values": ["i/s"]}]}),
        vec![
            ("ok", tok("i", "s"), true),
            (
                "iss not a string",
                get("/").jwt(json!({"iss": 1, "sub": "s"})),
                false,
            ),
        ],
    );
}

#[test]
fn claims() {
    let t = |p: Value| get("/").jwt(p);
    table(
        json!({"when": [{"key": "request.auth.claims[groups]", "values": ["admin", "dev*"]}]}),
        vec![
            ("string", t(json!({"groups": "admin"})), true),
            (
                "list element",
                t(json!({"groups": ["x", "developers"]})),
                true,
            ),
            ("list none", t(json!({"groups": ["x", "y"]})), false),
            ("number never", t(json!({"groups": 5})), false),
            (
                "nested list not flattened",
                t(json!({"groups": [["admin"]]})),
                false,
            ),
            ("missing", t(json!({})), false),
            ("no token", get("/"), false),
        ],
    );
    table(
        json!({"when": [{"key": "request.auth.claims[nested1][nested2]", "values": ["v"]}, {"key": "request.auth.claims[a.b]", "values": ["*"]}]}),
        vec![
            (
                "nested and dotted key",
                t(json!({"nested1": {"nested2": "v"}, "a.b": "x"})),
                true,
            ),
            (
                "dotted is one key",
                t(json!({"nested1": {"nested2": "v"}, "a": {"b": "x"}})),
                false,
            ),
            (
                "star needs non-empty",
                t(json!({"nested1": {"nested2": "v"}, "a.b": ""})),
                false,
            ),
        ],
    );
    // A.15.6: notValues with no token matches (anonymous passes an ALLOW).
    table(
        json!({"when": [{"key": "request.auth.claims[role]", "notValues": ["guest"]}]}),
        vec![
            ("no token", get("/"), true),
            ("guest", t(json!({"role": "guest"})), false),
            ("admin", t(json!({"role": "admin"})), true),
        ],
    );
    table(
        json!({"when": [{"key": "request.auth.audiences", "values": ["aud1"]}, {"key": "request.auth.presenter", "values": ["cli*"]}]}),
        vec![
            (
                "aud list + azp",
                t(json!({"aud": ["x", "aud1"], "azp": "client"})),
                true,
            ),
            (
                "aud string",
                t(json!({"aud": "aud1", "azp": "client"})),
                true,
            ),
            (
                "azp wrong",
                t(json!({"aud": "aud1", "azp": "other"})),
                false,
            ),
        ],
    );
}

// ---------------------------------------------------------------- headers, sni, metadata

#[test]
fn request_headers() {
    table(
        json!({"when": [{"key": "request.headers[X-Header]", "values": ["exact", "pre*", "*suf"]}]}),
        vec![
            ("exact", get("/").h("x-header", "exact"), true),
            (
                "value case-sensitive",
                get("/").h("x-header", "EXACT"),
                false,
            ),
            ("prefix", get("/").h("x-header", "prefix"), true),
            ("suffix", get("/").h("x-header", "a-suf"), true),
            (
                "single value with a comma",
                get("/").h("x-header", "exact,other"),
                false,
            ),
            // Repeated headers: Envoy 1.40 matches value by value (twin-tested).
            (
                "repeated: one matches",
                get("/").hh("x-header", "exact").hh("x-header", "other"),
                true,
            ),
            (
                "repeated: none matches",
                get("/").hh("x-header", "a").hh("x-header", "b"),
                false,
            ),
            ("absent", get("/"), false),
        ],
    );
    // A.15.5: `*` is presence, even with an empty value.
    table(
        json!({"when": [{"key": "request.headers[x]", "values": ["*"]}]}),
        vec![
            ("empty value", get("/").h("x", ""), true),
            ("absent", get("/"), false),
        ],
    );
    table(
        json!({"when": [{"key": "request.headers[x]", "notValues": ["bad"]}]}),
        vec![
            ("absent", get("/"), true),
            ("bad", get("/").h("x", "bad"), false),
        ],
    );
}

#[test]
fn sni_and_experimental_metadata() {
    let mut r = get("/");
    r.sni = "api.example.com".into();
    table(
        json!({"when": [{"key": "connection.sni", "values": ["*.example.com"]}]}),
        vec![("sni", r.clone(), true), ("no sni", get("/"), false)],
    );
    table(
        json!({"when": [{"key": "connection.sni", "values": ["*"]}]}),
        vec![("no sni", get("/"), false), ("sni", r, true)],
    );
    let mut m = get("/");
    m.meta.insert(
        "envoy.filters.a.b".into(),
        json!({"c": "v", "l": ["x", "y"]}),
    );
    table(
        json!({"when": [{"key": "experimental.envoy.filters.a.b[c]", "values": ["v"]}, {"key": "experimental.envoy.filters.a.b[l]", "values": ["[y]"]}]}),
        vec![("metadata", m.clone(), true), ("absent", get("/"), false)],
    );
    table(
        json!({"when": [{"key": "experimental.envoy.filters.a.b[l]", "values": ["y"]}]}),
        vec![("string matcher on a list", m, false)],
    );
}

#[test]
fn when_goes_to_every_principal_and_permission() {
    // golden single-policy shape: 2 from × 2 to, when repeated in each.
    table(
        json!({
            "from": [{"source": {"principals": ["a"]}}, {"source": {"requestPrincipals": ["i/s"]}}],
            "to": [{"operation": {"methods": ["GET"]}}, {"operation": {"paths": ["/p"]}}],
            "when": [{"key": "request.headers[x]", "values": ["1"]}, {"key": "destination.port", "values": ["8080"]}]
        }),
        vec![
            ("peer a GET", get("/z").peer("spiffe://a").h("x", "1"), true),
            (
                "jwt POST /p",
                req("POST", "/p")
                    .jwt(json!({"iss": "i", "sub": "s"}))
                    .h("x", "1"),
                true,
            ),
            ("header missing", get("/z").peer("spiffe://a"), false),
            ("neither source", get("/z").h("x", "1"), false),
            (
                "neither op",
                req("POST", "/z").peer("spiffe://a").h("x", "1"),
                false,
            ),
        ],
    );
}

#[test]
fn needs_only_what_policies_read() {
    let a = authz(vec![policy(
        "p",
        json!({"rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]}),
    )]);
    assert_eq!(
        a.needs,
        Needs {
            headers: true,
            ..Needs::default()
        }
    );
    let a = authz(vec![policy(
        "p",
        json!({"rules": [{"from": [{"source": {"namespaces": ["a"], "remoteIpBlocks": ["1.1.1.1"]}}], "when": [{"key": "request.auth.claims[x]", "values": ["y"]}]}]}),
    )]);
    assert_eq!(
        a.needs,
        Needs {
            peer: true,
            remote_ip: true,
            jwt: true,
            ..Needs::default()
        }
    );
}

// ---------------------------------------------------------------- CUSTOM

fn custom_cfg(policies: Vec<Value>) -> Value {
    json!({"policies": policies, "extensionProviders": [{"name": "ext", "envoyExtAuthzHttp": {
        "service": "authz.foo.svc.cluster.local", "port": 8000, "timeout": "250ms", "pathPrefix": "/check",
        "failOpen": false, "statusOnError": "503", "includeRequestHeadersInCheck": ["x-user", "x-pre-*"],
        "headersToUpstreamOnAllow": ["x-authz-*"], "headersToDownstreamOnDeny": ["x-reason"]}}]})
}

#[test]
fn custom_matches_only_its_rules() {
    let cfg = custom_cfg(vec![policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
    )]);
    let a = Authz::from_json(cfg.to_string().as_bytes()).unwrap();
    assert!(a.has_custom());
    let (s, id) = a.check_custom(&mut get("/admin/x")).unwrap();
    assert_eq!(id, "istio-ext-authz-ext-ns[foo]-policy[ext]-rule[0]");
    assert_eq!(s.cluster, "outbound|8000||authz.foo.svc.cluster.local");
    assert_eq!(s.timeout_ms, 250);
    assert_eq!(s.status_on_error, 503);
    let ExtAuthzService::Http(h) = &s.service else {
        panic!("an HTTP provider")
    };
    assert!(h.include_request_header("X-User"));
    assert!(h.include_request_header("x-pre-anything"));
    assert!(!h.include_request_header("x-other"));
    assert!(h.to_upstream_on_allow("x-authz-id"));
    assert!(h.to_downstream_on_deny("X-Reason"));
    assert!(a.check_custom(&mut get("/public")).is_none());
    // CUSTOM alone does not make ALLOW enforce anything.
    assert!(a.evaluate(&mut get("/public")).allowed);
}

fn grpc_cfg(provider: Value) -> Value {
    json!({"extensionProviders": [{"name": "ext", "envoyExtAuthzGrpc": provider}],
        "policies": [{"metadata": {"name": "c", "namespace": "foo"},
            "spec": {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}}]})
}

#[test]
fn custom_grpc_provider() {
    let cfg = grpc_cfg(json!({"service": "opa.foo.svc.cluster.local", "port": 9191,
        "timeout": "0.5s", "failOpen": true, "clearRouteCache": true}));
    let a = Authz::from_json(cfg.to_string().as_bytes()).unwrap();
    let (s, _) = a.check_custom(&mut get("/x")).unwrap();
    assert_eq!(s.cluster, "outbound|9191||opa.foo.svc.cluster.local");
    assert_eq!(s.authority, "opa.foo.svc.cluster.local");
    assert_eq!(
        (s.timeout_ms, s.fail_open, s.status_on_error),
        (500, true, 403)
    );
    let ExtAuthzService::Grpc(g) = &s.service else {
        panic!("a gRPC provider")
    };
    // The target is a GrpcService{envoy_grpc{cluster_name, authority}}.
    use crate::proto::core::{EnvoyGrpc, GrpcService as GrpcServiceProto};
    use prost::Message;
    let decoded = GrpcServiceProto::decode(g.target.as_bytes()).unwrap();
    assert_eq!(
        decoded.envoy_grpc,
        Some(EnvoyGrpc {
            cluster_name: "outbound|9191||opa.foo.svc.cluster.local".into(),
            authority: "opa.foo.svc.cluster.local".into()
        })
    );
    let cfg = grpc_cfg(json!({"service": "opa", "port": 9191, "cluster": "ext-authz-grpc"}));
    let a = Authz::from_json(cfg.to_string().as_bytes()).unwrap();
    assert_eq!(a.custom_settings().unwrap().cluster, "ext-authz-grpc");
}

#[test]
fn custom_grpc_provider_errors_name_the_field() {
    let cases = [
        (json!({"port": 9000, "service": ""}), "extensionProviders[0].envoyExtAuthzGrpc.service: must not be empty"),
        (json!({"service": "s", "port": 0}), "extensionProviders[0].envoyExtAuthzGrpc.port: invalid port 0"),
        (json!({"service": "s", "port": 1, "timeout": "1x"}), "extensionProviders[0].envoyExtAuthzGrpc.timeout: invalid duration"),
        (json!({"service": "s", "port": 1, "statusOnError": "forbidden"}), "extensionProviders[0].envoyExtAuthzGrpc.statusOnError: invalid HTTP status"),
        (json!({"service": "s", "port": 1, "includeRequestBodyInCheck": {"maxRequestBytes": 10}}),
            "extensionProviders[0].envoyExtAuthzGrpc.includeRequestBodyInCheck: not supported"),
        (json!({"service": "s", "port": 1, "pathPrefix": "/x"}), "extensionProviders[0].envoyExtAuthzGrpc.pathPrefix: unknown field"),
        (json!({"service": "s".repeat(70), "port": 1, "cluster": "c".repeat(70)}),
            "extensionProviders[0].envoyExtAuthzGrpc.cluster: cluster name and service together must stay under 120 bytes"),
    ];
    for (provider, want) in cases {
        let e = config_error(grpc_cfg(provider.clone()));
        assert!(e.starts_with(want), "{provider}: {e}");
    }
    let both = json!({"extensionProviders": [{"name": "ext",
        "envoyExtAuthzGrpc": {"service": "s", "port": 1},
        "envoyExtAuthzHttp": {"service": "s", "port": 1}}]});
    assert!(config_error(both).starts_with(
        "extensionProviders[0]: envoyExtAuthzHttp and envoyExtAuthzGrpc are mutually exclusive"
    ));
}

#[test]
fn custom_provider_must_exist() {
    let e = config_error(custom_cfg(vec![policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "nope"}, "rules": [{}]}),
    )]));
    assert!(
        e.starts_with("policies[0].spec.provider.name: extension provider \"nope\" not found"),
        "{e}"
    );
    let mut cfg = custom_cfg(vec![]);
    cfg["extensionProviders"][0]["envoyExtAuthzHttp"]["timeout"] = json!("soon");
    let e = config_error(cfg);
    assert!(
        e.starts_with("extensionProviders[0].envoyExtAuthzHttp.timeout: invalid duration"),
        "{e}"
    );
}

// ---------------------------------------------------------------- path guard

/// The compiled path guard (a policy whose every permission list needs the
/// path to start with a literal is passed over when it does not) decides
/// nothing itself: the same policies without guards give the same decision,
/// policy ids included, on every request; unknown direct peers too (DENY
/// fails closed only when the path could match).
#[test]
fn path_guard_never_changes_a_decision() {
    let policies = vec![
        policy(
            "exact-prefix",
            json!({"rules": [{"to": [{"operation": {"paths": ["/a", "/b*"]}}]}]}),
        ),
        policy(
            "template",
            json!({"rules": [{"to": [{"operation": {"paths": ["/api/{*}/items", "/files/{**}"], "methods": ["GET"]}}]}]}),
        ),
        policy(
            "suffix",
            json!({"rules": [{"to": [{"operation": {"paths": ["*.js"]}}]}]}),
        ),
        policy(
            "two-ops",
            json!({"rules": [{"to": [{"operation": {"paths": ["/x*"]}}, {"operation": {"methods": ["POST"]}}]}]}),
        ),
        policy(
            "not-paths",
            json!({"rules": [{"to": [{"operation": {"notPaths": ["/private*"]}}], "when": [{"key": "request.headers[x-k]", "values": ["1"]}]}]}),
        ),
        policy(
            "two-rules",
            json!({"rules": [
            {"to": [{"operation": {"paths": ["/r1*"]}}], "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]},
            {"to": [{"operation": {"paths": ["/r2"], "hosts": ["example.com"]}}]}]}),
        ),
        policy(
            "deny-ip",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/d*"]}}], "from": [{"source": {"ipBlocks": ["10.9.0.0/16"]}}]}]}),
        ),
        policy(
            "deny-root",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/"]}}], "from": [{"source": {"notIpBlocks": ["10.0.0.0/8"]}}]}]}),
        ),
        policy(
            "audit",
            json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]}),
        ),
        dry(
            "dry-deny",
            "true",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/b1*"]}}]}]}),
        ),
    ];
    // As compiled (the ALLOW engine has enough guards for a trie, DENY not).
    let guarded = authz(policies.clone());
    assert!(guarded
        .allow
        .as_ref()
        .is_some_and(|e| e.guard_index.is_some()));
    assert!(guarded.deny.guard_index.is_none());
    // Every guard tested one by one.
    let mut unindexed = authz(policies.clone());
    for e in unindexed.engines_mut() {
        e.guard_index = None;
    }
    // Every engine with a guard walks a trie.
    let mut indexed = authz(policies.clone());
    for e in indexed.engines_mut() {
        e.guard_index = GuardIndex::build_with_min(&e.policies, 1);
    }
    assert!(indexed.deny.guard_index.is_some());
    let mut plain = authz(policies);
    let with_guard = plain
        .engines_mut()
        .flat_map(|e| e.policies.iter())
        .filter(|p| p.path_guard.is_some())
        .count();
    assert!(with_guard >= 8, "{with_guard} policies have a guard");
    for e in plain.engines_mut() {
        e.guard_index = None;
        for p in &mut e.policies {
            p.path_guard = None;
        }
    }
    let paths = [
        "/",
        "/a",
        "/a/",
        "/ab",
        "/b",
        "/b1",
        "/b1/x",
        "/api/v1/items",
        "/api/v1/x",
        "/files/",
        "/files/a/b",
        "/x.js",
        "/x",
        "/xy",
        "/private/x",
        "/r1",
        "/r1/z",
        "/r2",
        "/r2x",
        "/d",
        "/dz",
        "",
        "a",
        "/A",
    ];
    let mut n = 0;
    for path in paths {
        for method in ["GET", "POST"] {
            for direct in [Some("10.9.1.1"), Some("192.168.0.1"), None] {
                for k in [None, Some("1")] {
                    let mut r = req(method, path);
                    r.direct = direct.map(|d| d.parse().unwrap());
                    if let Some(k) = k {
                        r = r.h("x-k", k);
                    }
                    let r = r.peer("spiffe://cluster.local/ns/a/sa/b");
                    let mut no_path = r.clone();
                    no_path.headers.remove(":path");
                    for r in [r, no_path] {
                        let want = plain.evaluate(&mut r.clone());
                        for (name, a) in [
                            ("compiled", &guarded),
                            ("unindexed", &unindexed),
                            ("indexed", &indexed),
                        ] {
                            assert_eq!(
                                a.evaluate(&mut r.clone()),
                                want,
                                "{name}: {method} {path:?} {direct:?} {k:?}"
                            );
                        }
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, 24 * 2 * 3 * 2 * 2);
}

/// The guard trie keeps policy order across many policies (candidate sets
/// of several words, on the stack up to 256 policies and on the heap past
/// them): the first match is the one the policies without guards give.
#[test]
fn guard_trie_keeps_policy_order_across_words() {
    for count in [70usize, 300] {
        let mut policies = Vec::new();
        for i in 0..count {
            // `/p<i>/` belongs to one policy; `/q/<n>` to every seventh, and
            // `/r1*` admits `/r10` too: overlapping guards keep their order.
            let paths = json!([
                format!("/p{i}/*"),
                format!("/q/{}", i % 7),
                format!("/r{i}*")
            ]);
            let mut rule = json!({"to": [{"operation": {"paths": paths}}]});
            if i % 5 == 0 {
                rule["when"] = json!([{"key": "request.headers[x-k]", "values": ["1"]}]);
            }
            policies.push(policy(&format!("p{i}"), json!({"rules": [rule]})));
        }
        // One without a guard, at the end: a candidate for every path.
        policies.push(policy(
            "any-post",
            json!({"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}),
        ));
        let indexed = authz(policies.clone());
        assert!(indexed
            .allow
            .as_ref()
            .is_some_and(|e| e.guard_index.is_some()));
        let mut plain = authz(policies);
        for e in plain.engines_mut() {
            e.guard_index = None;
            for p in &mut e.policies {
                p.path_guard = None;
            }
        }
        for path in [
            "/p0/", "/p1/x", "/p10/x", "/p63/x", "/p64/x", "/p65/", "/p199/x", "/p255/x",
            "/p256/x", "/p299/z", "/p299", "/q/3", "/q/9", "/r10", "/r299", "/z", "/",
        ] {
            for method in ["GET", "POST"] {
                for k in [false, true] {
                    let mut r = req(method, path);
                    if k {
                        r = r.h("x-k", "1");
                    }
                    assert_eq!(
                        indexed.evaluate(&mut r.clone()),
                        plain.evaluate(&mut r),
                        "{count} policies: {method} {path} x-k {k}"
                    );
                }
            }
        }
    }
}
