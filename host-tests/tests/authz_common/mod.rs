//! Shared by the authz Envoy tests: a bootstrap with one listener pair per
//! policy set (`meshwasm-<set>` runs dist/authz.wasm with the AuthorizationPolicy
//! set, `native-<set>` runs the Envoy RBAC filters istiod generates for it), the
//! RBAC building blocks in istiod's output form, and HS256 tokens.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::openssl::run as openssl;
use host_tests::twin;
use serde_json::{json, Value};

pub const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// One policy set: the meshwasm plugin configuration and the native filters.
pub struct PolicySet {
    pub name: &'static str,
    pub plugin: Value,
    /// Native filters for the `native-<set>` listener (RBACs, ext_authz).
    pub native: Vec<Value>,
    /// Filters in front of both listeners (e.g. native jwt_authn).
    pub front: Vec<Value>,
    /// HCM `xff_num_trusted_hops` (use_remote_address is true, as on a gateway).
    pub trusted_hops: u32,
    pub cases: Vec<Expect>,
}

/// A request and the status Istio's semantics say it gets (None: whatever
/// Envoy does, e.g. a 400 from the codec — still compared between the twins).
pub struct Expect {
    pub case: twin::Case,
    pub status: Option<u16>,
}

pub fn expect(name: &str, req: Request, status: u16) -> Expect {
    Expect {
        case: twin::Case::new(name, req),
        status: Some(status),
    }
}

pub fn either(name: &str, req: Request) -> Expect {
    Expect {
        case: twin::Case::new(name, req),
        status: None,
    }
}

pub fn wasm_filter(name: &str, plugin: &Value) -> Value {
    json!({"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": format!("meshwasm.authz.{name}"),
            "root_id": "authz",
            "vm_config": {"vm_id": "", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": "{{DIST}}/authz.wasm"}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin.to_string()},
            "failure_policy": "FAIL_CLOSED"}}})
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

pub fn listener(name: &str, filters: Vec<Value>, hops: u32, tls: Option<&Value>) -> Value {
    let mut http_filters = filters;
    http_filters.push(router());
    let chain = json!({"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "use_remote_address": true,
        "xff_num_trusted_hops": hops,
        "normalize_path": true,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
        "http_filters": http_filters}}]});
    let mut l = json!({"name": name,
           "address": {"socket_address": {"address": "127.0.0.1", "port_value": format!("{{{{PORT:{name}}}}}")}},
           "filter_chains": [chain]});
    if let Some(tls) = tls {
        l["filter_chains"][0]["transport_socket"] = tls.clone();
        // The TLS inspector records the SNI (`connection.sni` / requestedServerName).
        l["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]);
    }
    l
}

pub fn cluster(name: &str, port_placeholder: &str) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
               {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port_placeholder}}}}]}]}})
}

/// The bootstrap for several policy sets (one listener pair each), an echo
/// upstream at `{{UPSTREAM_PORT}}` and extra clusters.
pub fn bootstrap(sets: &[PolicySet], extra_clusters: Vec<Value>, tls: Option<&Value>) -> String {
    let mut listeners = Vec::new();
    for s in sets {
        let mut ours = s.front.clone();
        ours.push(wasm_filter(s.name, &s.plugin));
        let mut native = s.front.clone();
        native.extend(s.native.iter().cloned());
        listeners.push(listener(
            &format!("meshwasm-{}", s.name),
            ours,
            s.trusted_hops,
            tls,
        ));
        listeners.push(listener(
            &format!("native-{}", s.name),
            native,
            s.trusted_hops,
            tls,
        ));
    }
    let mut clusters = vec![cluster("upstream", "{{UPSTREAM_PORT}}")];
    clusters.extend(extra_clusters);
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": "{{ADMIN_PORT}}"}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
    .to_string()
}

/// Sends every case of every set to both listeners; panics listing every case
/// whose outcomes differ, or whose native outcome is not the one Istio's
/// semantics give (which would mean the RBAC or the expectation is wrong).
pub fn check_sets(envoy: &Envoy, sets: &[PolicySet]) {
    let mut report = Vec::new();
    let mut total = 0;
    for s in sets {
        let (ours, native) = (format!("meshwasm-{}", s.name), format!("native-{}", s.name));
        let mut statuses = std::collections::BTreeSet::new();
        for e in &s.cases {
            total += 1;
            let a = twin::outcome(&envoy.send(&ours, &e.case.request));
            let b = twin::outcome(&envoy.send(&native, &e.case.request));
            statuses.insert(b.status);
            if a != b {
                report.push(format!(
                    "[{}] {}: {} {}\n      meshwasm: {a}\n      native:   {b}",
                    s.name, e.case.name, e.case.request.method, e.case.request.path
                ));
            } else if let Some(want) = e.status {
                if b.status != want {
                    report.push(format!(
                        "[{}] {}: both {}, Istio semantics say {want}",
                        s.name, e.case.name, b.status
                    ));
                }
            }
        }
        // A set whose requests all end the same way proves nothing.
        if statuses.len() < 2 && s.cases.len() > 1 {
            report.push(format!("[{}] every case got {statuses:?}", s.name));
        }
    }
    assert!(
        report.is_empty(),
        "{} of {total} cases wrong:\n{}",
        report.len(),
        report.join("\n")
    );
}

// ---------------------------------------------------------------- Istio AuthorizationPolicy

pub fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": "foo"}, "spec": spec})
}

pub fn dry_run_policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": "foo", "annotations": {"istio.io/dry-run": "true"}}, "spec": spec})
}

pub fn plugin(policies: Vec<Value>) -> Value {
    json!({"trustDomain": "cluster.local", "policies": policies})
}

// ---------------------------------------------------------------- RBAC as istiod writes it

pub fn rbac_filter(config: Value) -> Value {
    let mut c = config;
    c["@type"] = json!(RBAC_TYPE);
    json!({"name": "envoy.filters.http.rbac", "typed_config": c})
}

/// `rules: {action, policies}` (+ `shadowRulesStatPrefix` as istiod always sets it).
pub fn rbac(action: &str, policies: Vec<(String, Value)>) -> Value {
    let mut rules = json!({"policies": policies.into_iter().collect::<serde_json::Map<_, _>>()});
    if action != "ALLOW" {
        rules["action"] = json!(action);
    }
    let prefix = if action == "DENY" {
        "istio_dry_run_deny_"
    } else {
        "istio_dry_run_allow_"
    };
    rbac_filter(json!({"rules": rules, "shadowRulesStatPrefix": prefix}))
}

pub fn id(policy: &str, rule: usize) -> String {
    format!("ns[foo]-policy[{policy}]-rule[{rule}]")
}

pub fn rbac_policy(permissions: Vec<Value>, principals: Vec<Value>) -> Value {
    json!({"permissions": permissions, "principals": principals})
}

pub fn and_rules(rules: Vec<Value>) -> Value {
    if rules.is_empty() {
        return json!({"andRules": {"rules": [{"any": true}]}});
    }
    json!({"andRules": {"rules": rules}})
}
pub fn or_rules(rules: Vec<Value>) -> Value {
    json!({"orRules": {"rules": rules}})
}
pub fn not_rule(r: Value) -> Value {
    json!({"notRule": r})
}
pub fn and_ids(ids: Vec<Value>) -> Value {
    if ids.is_empty() {
        return json!({"andIds": {"ids": [{"any": true}]}});
    }
    json!({"andIds": {"ids": ids}})
}
pub fn or_ids(ids: Vec<Value>) -> Value {
    json!({"orIds": {"ids": ids}})
}
pub fn not_id(r: Value) -> Value {
    json!({"notId": r})
}
pub fn any_principal() -> Value {
    and_ids(vec![])
}
pub fn any_permission() -> Value {
    and_rules(vec![])
}

pub fn exact(v: &str) -> Value {
    json!({"exact": v})
}
pub fn prefix(v: &str) -> Value {
    json!({"prefix": v})
}
pub fn suffix(v: &str) -> Value {
    json!({"suffix": v})
}
pub fn regex(v: &str) -> Value {
    json!({"safeRegex": {"regex": v}})
}
pub fn url_path(m: Value) -> Value {
    json!({"urlPath": {"path": m}})
}
pub fn uri_template(t: &str) -> Value {
    json!({"uriTemplate": {"name": "uri-template", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
        "pathTemplate": t}}})
}
pub fn header(name: &str, m: Value) -> Value {
    json!({"header": {"name": name, "stringMatch": m}})
}
pub fn host(m: Value) -> Value {
    let mut m = m;
    m["ignoreCase"] = json!(true);
    json!({"header": {"name": ":authority", "stringMatch": m}})
}
pub fn header_present(name: &str) -> Value {
    json!({"header": {"name": name, "presentMatch": true}})
}
pub fn authenticated(m: Value) -> Value {
    json!({"authenticated": {"principalName": m}})
}
pub fn cidr(ip: &str, len: u32) -> Value {
    json!({"addressPrefix": ip, "prefixLen": len})
}
pub fn jwt_claim(path: &[&str], m: Value) -> Value {
    let mut p = vec![json!({"key": "payload"})];
    p.extend(path.iter().map(|k| json!({"key": k})));
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": p, "value": {"stringMatch": m}}})
}
/// istiod's claim matcher: `orMatch[listMatch{oneOf: OR(values)}, OR(values)]`.
pub fn jwt_claim_list(path: &[&str], values: Vec<Value>) -> Value {
    let mut p = vec![json!({"key": "payload"})];
    p.extend(path.iter().map(|k| json!({"key": k})));
    // matcher.StringOrMatcher: a single value is a plain string matcher
    // (Envoy's OrMatcher needs at least two).
    let mut ms: Vec<Value> = values
        .into_iter()
        .map(|m| json!({"stringMatch": m}))
        .collect();
    let or = if ms.len() == 1 {
        ms.remove(0)
    } else {
        json!({"orMatch": {"valueMatchers": ms}})
    };
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": p,
        "value": {"orMatch": {"valueMatchers": [{"listMatch": {"oneOf": or}}, or]}}}})
}
pub fn request_principal(iss: Value, sub: Value) -> Value {
    and_ids(vec![jwt_claim(&["iss"], iss), jwt_claim(&["sub"], sub)])
}

// ---------------------------------------------------------------- HS256 tokens

pub const HS256_KEY: &[u8] = b"meshwasm-authz-test-secret-key-0123456789";

pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex}"),
            "-binary",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.len() == 32,
        "openssl hmac failed"
    );
    out.stdout
}

/// An HS256 JWT over `claims`, signed with [`HS256_KEY`] (kid `k1`).
pub fn hs256(claims: &Value) -> String {
    let head = b64url(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    let body = b64url(claims.to_string().as_bytes());
    let input = format!("{head}.{body}");
    let sig = b64url(&hmac_sha256(HS256_KEY, input.as_bytes()));
    format!("{input}.{sig}")
}

pub fn hs256_jwks() -> String {
    json!({"keys": [{"kty": "oct", "alg": "HS256", "kid": "k1", "k": b64url(HS256_KEY)}]})
        .to_string()
}

pub const ISSUER_A: &str = "https://issuer.example";
pub const ISSUER_B: &str = "https://idp.example/realms/a";

/// Native jwt_authn as istiod configures it for two RequestAuthentication rules
/// (allow missing tokens, reject bad ones, payload in metadata `payload`).
pub fn native_jwt_authn() -> Value {
    let provider = |iss: &str| {
        json!({"issuer": iss, "local_jwks": {"inline_string": hs256_jwks()},
        "payload_in_metadata": "payload", "forward": true,
        "normalize_payload_in_metadata": {"space_delimited_claims": ["scope", "permission"]}})
    };
    json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"origins-0": provider(ISSUER_A), "origins-1": provider(ISSUER_B)},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "origins-0"}, {"provider_name": "origins-1"}, {"allow_missing": {}}]}}}]}})
}

pub fn far_future() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

// ---------------------------------------------------------------- mTLS

/// A CA, a server certificate and one client certificate per SPIFFE id.
pub fn make_certs(dir: &Path, clients: &[(&str, &str)]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=meshwasm test CA",
        ],
    );
    let issue = |name: &str, san: &str| {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName={san}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    };
    issue("server", "DNS:localhost,DNS:api.example,IP:127.0.0.1");
    for (name, spiffe) in clients {
        issue(name, &format!("URI:{spiffe}"));
    }
}

/// (status, body when not 200) from curl over TLS, optionally with a client
/// certificate and an SNI name.
pub fn curl(port: u16, path: &str, cert: Option<&Path>, sni: Option<&str>) -> (u16, String) {
    let host = sni.unwrap_or("127.0.0.1");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-k",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(s) = sni {
        cmd.args(["--resolve", &format!("{s}:{port}:127.0.0.1")]);
    }
    if let Some(c) = cert {
        cmd.arg("--cert")
            .arg(c.with_extension("pem"))
            .arg("--key")
            .arg(c.with_extension("key"));
    }
    cmd.arg(format!("https://{host}:{port}{path}"));
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let code: u16 = code.trim().parse().unwrap_or(0);
    (
        code,
        if code == 200 {
            String::new()
        } else {
            body.to_string()
        },
    )
}

/// The listeners' TLS with the server certificate of [`make_certs`]; a client
/// certificate is asked for and verified against its CA, not required.
pub fn downstream_tls(dir: &Path) -> Value {
    let file = |f: &str| dir.join(f).display().to_string();
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": false,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": file("server.pem")}, "private_key": {"filename": file("server.key")}}],
            "validation_context": {"trusted_ca": {"filename": file("ca.pem")}}}}})
}
