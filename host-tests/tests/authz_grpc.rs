//! CUSTOM action against a gRPC ext_authz server (`envoyExtAuthzGrpc`, tonic).
//! The native twin is what istiod generates for such a provider: an RBAC with
//! the CUSTOM rules as DENY shadow rules, then `ext_authz` over gRPC enabled by
//! the shadow match, then the ALLOW RBAC. The same server answers both
//! listeners; allow (with every kind of edit), deny, error, timeout, garbage,
//! a server that is down and one that closes mid-call.
// `append` is deprecated in Envoy but still honoured; the test sends it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, deprecated)]

mod authz_common;

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use authz_common::*;
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption, QueryParameter,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use host_tests::envoy::Envoy;
use host_tests::grpc_authz::{
    check_response, denied, ok, Answer, CheckRequest, CheckResponse, DeniedHttpResponse, GrpcAuthz,
    OkHttpResponse,
};
use host_tests::http::Request;
use serde_json::{json, Value};

const SERVICE: &str = "ext-authz-grpc.foo.svc.cluster.local";
const CUSTOM_PATHS: [&str; 9] = [
    "/allow*",
    "/deny*",
    "/bare*",
    "/slow*",
    "/error*",
    "/garbage*",
    "/user*",
    "/edit*",
    "/errresp*",
];
const ALLOW_PATHS: [&str; 9] = [
    "/allow*",
    "/user*",
    "/slow*",
    "/error*",
    "/garbage*",
    "/public*",
    "/edit*",
    "/errresp*",
    "/bare*",
];

fn provider(cluster: &str, fail_open: bool) -> Value {
    json!({"name": "ext", "envoyExtAuthzGrpc": {
        "service": SERVICE, "port": 9000, "cluster": cluster, "timeout": "0.3s",
        "failOpen": fail_open, "statusOnError": "503"}})
}

/// The ext_authz filter istiod writes for the provider above.
fn native_ext_authz(cluster: &str, fail_open: bool) -> Value {
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster, "authority": SERVICE}, "timeout": "0.3s"},
        "transport_api_version": "V3",
        "failure_mode_allow": fail_open,
        "status_on_error": {"code": 503},
        "filter_enabled_metadata": {"filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": "istio-ext-authz"}}}}})
}

fn prefixes(ps: &[&str]) -> Value {
    and_rules(vec![or_rules(
        ps.iter()
            .map(|p| url_path(prefix(p.trim_end_matches('*'))))
            .collect(),
    )])
}

fn set(name: &'static str, cluster: &str, fail_open: bool, cases: Vec<Expect>) -> PolicySet {
    let custom = policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "ext"},
            "rules": [{"to": [{"operation": {"paths": CUSTOM_PATHS}}]}]}),
    );
    let allow = policy(
        "allow",
        json!({"rules": [{"to": [{"operation": {"paths": ALLOW_PATHS}}]}]}),
    );
    let mut plugin = plugin(vec![custom, allow]);
    plugin["extensionProviders"] = json!([provider(cluster, fail_open)]);
    let shadow = rbac_filter(json!({
        "shadowRules": {"action": "DENY", "policies": {
            "istio-ext-authz-ns[foo]-policy[ext]-rule[0]": rbac_policy(
                vec![prefixes(&CUSTOM_PATHS)], vec![any_principal()])}},
        "shadowRulesStatPrefix": "istio_ext_authz_"}));
    let native_allow = rbac(
        "ALLOW",
        vec![(
            id("allow", 0),
            rbac_policy(vec![prefixes(&ALLOW_PATHS)], vec![any_principal()]),
        )],
    );
    PolicySet {
        name,
        plugin,
        native: vec![shadow, native_ext_authz(cluster, fail_open), native_allow],
        front: vec![],
        trusted_hops: 0,
        cases,
    }
}

fn live_cases(fail_open: bool) -> Vec<Expect> {
    let g = Request::get;
    let failed = if fail_open { 200 } else { 503 };
    vec![
        expect("allowed by ext_authz", g("/allow/x?q=1"), 200),
        expect("denied with status, body, headers", g("/deny"), 401),
        expect("denied without a denied_response", g("/bare-deny"), 403),
        expect(
            "ext_authz allows, ALLOW policy does not",
            g("/deny-allowed"),
            401,
        ),
        expect("not a CUSTOM path: no call, ALLOW", g("/public"), 200),
        expect("not a CUSTOM path, no ALLOW", g("/other"), 403),
        expect("x-user: alice", g("/user").header("x-user", "alice"), 200),
        expect("x-user: bob", g("/user").header("x-user", "bob"), 403),
        expect("x-user missing", g("/user"), 403),
        expect("slower than the timeout", g("/slow"), failed),
        expect("gRPC error status", g("/error"), failed),
        expect("garbage message", g("/garbage"), failed),
        // Envoy 1.40 predates `error_response`: it goes by `status` (none: OK).
        expect("error_response without a status", g("/errresp"), 200),
        expect("allowed with edits", edit_request(), 200),
    ]
}

fn edit_request() -> Request {
    Request::get("/edit/p?drop=1&keep=2&set=old")
        .header("x-set", "client")
        .header("x-append", "client")
        .header("x-if-exists", "client")
        .header("x-if-absent", "client")
        .header("x-remove-me", "1")
}

fn option(
    key: &str,
    value: &str,
    append: Option<bool>,
    action: HeaderAppendAction,
) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| envoy_types::pb::google::protobuf::BoolValue { value }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// The script both listeners' checks are answered by, keyed on the path.
fn answer(req: &CheckRequest) -> Answer {
    use HeaderAppendAction::*;
    let http = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let path = http.map(|h| h.path.as_str()).unwrap_or_default();
    let user = http
        .and_then(|h| h.headers.get("x-user"))
        .map(String::as_str);
    let deny = |code: StatusCode, body: &str, headers| {
        Some(DeniedHttpResponse {
            status: Some(HttpStatus { code: code as i32 }),
            headers,
            body: body.into(),
        })
    };
    if path.starts_with("/allow") {
        ok(OkHttpResponse {
            headers: vec![option("x-authz-id", "7", None, AppendIfExistsOrAdd)],
            ..Default::default()
        })
    } else if path.starts_with("/deny") {
        denied(
            7,
            deny(
                StatusCode::Unauthorized,
                "nope",
                vec![option("x-reason", "r", None, AppendIfExistsOrAdd)],
            ),
        )
    } else if path.starts_with("/bare") {
        denied(16, None)
    } else if path.starts_with("/slow") {
        Answer::Late(
            Duration::from_millis(1500),
            Box::new(ok(OkHttpResponse::default())),
        )
    } else if path.starts_with("/error") {
        Answer::Error(tonic::Code::Unavailable, "down".into())
    } else if path.starts_with("/garbage") {
        Answer::Raw(vec![0xff, 0xff, 0xff, 0x0f])
    } else if path.starts_with("/errresp") {
        Answer::Response(Box::new(CheckResponse {
            status: None,
            http_response: Some(check_response::HttpResponse::ErrorResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: StatusCode::BadGateway as i32,
                    }),
                    headers: vec![],
                    body: "server trouble".into(),
                },
            )),
            ..Default::default()
        }))
    } else if path.starts_with("/user") {
        match user {
            Some("alice") => ok(OkHttpResponse::default()),
            _ => denied(7, deny(StatusCode::Forbidden, "who?", vec![])),
        }
    } else if path.starts_with("/edit") {
        ok(OkHttpResponse {
            headers: vec![
                option("x-set", "authz", Some(false), AppendIfExistsOrAdd),
                option("x-append", "authz", Some(true), AppendIfExistsOrAdd),
                option("x-new", "authz", None, AppendIfExistsOrAdd),
                option("x-if-exists", "authz", None, OverwriteIfExists),
                option("x-if-exists-absent", "authz", None, OverwriteIfExists),
                option("x-if-absent", "authz", None, AddIfAbsent),
                option("x-if-absent-new", "authz", None, AddIfAbsent),
            ],
            headers_to_remove: vec!["x-remove-me".into()],
            response_headers_to_add: vec![
                option("x-resp", "authz", None, AppendIfExistsOrAdd),
                option("x-upstream", "authz", None, OverwriteIfExistsOrAdd),
            ],
            query_parameters_to_set: vec![
                QueryParameter {
                    key: "set".into(),
                    value: "new".into(),
                },
                QueryParameter {
                    key: "added".into(),
                    value: "1".into(),
                },
            ],
            query_parameters_to_remove: vec!["drop".into()],
            ..Default::default()
        })
    } else {
        denied(
            3,
            deny(StatusCode::PreconditionFailed, "unexpected check", vec![]),
        )
    }
}

/// Accepts connections and closes each once the request starts arriving.
fn closing_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            c.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
        }
    });
    port
}

fn grpc_cluster(name: &str, port_placeholder: &str) -> Value {
    let mut c = cluster(name, port_placeholder);
    c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}});
    c
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The request attributes both filters must send alike, with the listener's
/// own port and the stream id (a random number in Envoy) left out.
fn comparable(r: &CheckRequest) -> Value {
    let a = r.attributes.clone().unwrap_or_default();
    let http = a
        .request
        .clone()
        .unwrap_or_default()
        .http
        .unwrap_or_default();
    let addr = |p: &Option<envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer>| {
        use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
        let p = p.clone().unwrap_or_default();
        let sa = match p.address.and_then(|a| a.address) {
            Some(address::Address::SocketAddress(s)) => s,
            _ => Default::default(),
        };
        let port = match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(v)) => v,
            _ => 0,
        };
        json!({"ip": sa.address, "has_port": port != 0, "principal": p.principal, "service": p.service})
    };
    let mut headers: Vec<(String, String)> = http
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-request-id"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.sort();
    json!({
        "source": addr(&a.source), "destination": addr(&a.destination),
        "method": http.method, "path": http.path, "host": http.host, "scheme": http.scheme,
        "protocol": http.protocol, "size": http.size, "headers": headers,
        "query": http.query, "fragment": http.fragment, "body": http.body,
        "context_extensions": a.context_extensions,
        "has_time": a.request.as_ref().is_some_and(|r| r.time.is_some()),
    })
}

#[test]
fn custom_ext_authz_grpc_like_istio() {
    let upstream = host_tests::upstream::Upstream::echo("v1");
    let authz = GrpcAuthz::start(answer);
    let g = Request::get;
    let sets = vec![
        set("grpc", "ext-authz-grpc", false, live_cases(false)),
        set("grpc-open", "ext-authz-grpc", true, live_cases(true)),
        set(
            "grpc-down",
            "ext-authz-down",
            false,
            vec![
                expect("server down", g("/allow"), 503),
                expect("no call", g("/public"), 200),
            ],
        ),
        set(
            "grpc-down-open",
            "ext-authz-down",
            true,
            vec![
                expect("server down, fail open", g("/allow"), 200),
                expect("no call", g("/other"), 403),
            ],
        ),
        set(
            "grpc-reset",
            "ext-authz-reset",
            false,
            vec![
                expect("closed mid-call", g("/allow"), 503),
                expect("no call", g("/public"), 200),
            ],
        ),
    ];
    let envoy = Envoy::from_yaml(&bootstrap(
        &sets,
        vec![
            grpc_cluster("ext-authz-grpc", "{{AUTHZ_PORT}}"),
            grpc_cluster("ext-authz-down", "{{DOWN_PORT}}"),
            grpc_cluster("ext-authz-reset", "{{RESET_PORT}}"),
        ],
        None,
    ))
    .upstream("UPSTREAM_PORT", &upstream)
    .var("AUTHZ_PORT", &authz.port().to_string())
    .var("DOWN_PORT", &closed_port().to_string())
    .var("RESET_PORT", &closing_server().to_string())
    .start();
    check_sets(&envoy, &sets);

    // What reached the upstream and the client after an allowing answer with
    // edits. Envoy 1.40 reads only the deprecated `append` (true appends,
    // anything else overwrites), whatever `append_action` says.
    let ours = envoy.send("meshwasm-grpc", &edit_request());
    let native = envoy.send("native-grpc", &edit_request());
    let view = |r: &host_tests::http::Response| {
        let names = [
            "x-set",
            "x-append",
            "x-new",
            "x-if-exists",
            "x-if-exists-absent",
            "x-if-absent",
            "x-if-absent-new",
            "x-remove-me",
            "x-authz-id",
            "x-envoy-auth-failure-mode-allowed",
        ];
        let upstream: Vec<(&str, Option<String>)> =
            names.iter().map(|n| (*n, r.upstream_header(n))).collect();
        json!({"status": r.status, "path": r.json()["path"], "upstream": upstream,
            "x-resp": r.header_all("x-resp"), "x-upstream": r.header_all("x-upstream")})
    };
    assert_eq!(view(&ours), view(&native), "edits applied differently");
    assert_eq!(ours.upstream_header("x-set").as_deref(), Some("authz"));
    assert_eq!(
        ours.upstream_header("x-append").as_deref(),
        Some("client,authz")
    );
    assert_eq!(
        ours.upstream_header("x-if-absent").as_deref(),
        Some("authz")
    );
    assert_eq!(ours.json()["path"], "/edit/p?added=1&keep=2&set=new");
    assert_eq!(ours.upstream_header("x-remove-me"), None);
    assert_eq!(ours.header("x-resp"), Some("authz"));

    // Denied: status, body and the server's headers at the client.
    let ours = envoy.send("meshwasm-grpc", &g("/deny"));
    let native = envoy.send("native-grpc", &g("/deny"));
    assert_eq!((ours.status, ours.text()), (native.status, native.text()));
    assert_eq!(ours.header("x-reason"), native.header("x-reason"));
    assert_eq!(ours.header("x-reason"), Some("r"));

    // Fail open: what the upstream sees is the same (Envoy may mark it).
    for path in ["/slow", "/error"] {
        let ours = envoy.send("meshwasm-grpc-open", &g(path));
        let native = envoy.send("native-grpc-open", &g(path));
        assert_eq!(
            view(&ours)["upstream"],
            view(&native)["upstream"],
            "fail-open upstream view for {path}"
        );
    }

    // The CheckRequest the server saw from each listener.
    let req = g("/user/q?a=1")
        .header("x-user", "alice")
        .header("cookie", "c=1");
    authz.clear_seen();
    assert_eq!(envoy.send("meshwasm-grpc", &req).status, 200);
    let ours = authz.seen();
    authz.clear_seen();
    assert_eq!(envoy.send("native-grpc", &req).status, 200);
    let native = authz.seen();
    assert_eq!((ours.len(), native.len()), (1, 1), "one check each");
    assert_eq!(
        comparable(&ours[0]),
        comparable(&native[0]),
        "CheckRequest differs"
    );
    let seen = comparable(&ours[0]);
    assert_eq!(seen["path"], "/user/q?a=1");
    assert_eq!(seen["source"]["ip"], "127.0.0.1");
    // Only CUSTOM paths call the server.
    authz.clear_seen();
    envoy.send("meshwasm-grpc", &g("/public"));
    assert!(authz.seen().is_empty());

    assert!(envoy.stat("wasmcustom.meshwasm.authz.ext_authz_error") >= 8);
    assert!(envoy.stat("wasmcustom.meshwasm.authz.ext_authz_denied") >= 3);
    assert!(envoy.stat("wasmcustom.meshwasm.authz.ext_authz_allowed") >= 3);
}

/// Over mTLS the CheckRequest carries the client certificate's URI SAN as the
/// source principal and the server certificate's first DNS SAN (it has no URI
/// SAN) as the destination's, from both filters alike.
#[test]
fn check_request_principals_over_mtls() {
    let dir = std::env::temp_dir().join(format!("meshwasm-authz-grpc-mtls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let alice = "spiffe://cluster.local/ns/foo/sa/alice";
    make_certs(&dir, &[("alice", alice)]);
    let upstream = host_tests::upstream::Upstream::echo("v1");
    let authz = GrpcAuthz::start(answer);
    let sets = vec![set("grpc-tls", "ext-authz-grpc", false, vec![])];
    let envoy = Envoy::from_yaml(&bootstrap(
        &sets,
        vec![grpc_cluster("ext-authz-grpc", "{{AUTHZ_PORT}}")],
        Some(&downstream_tls(&dir)),
    ))
    .upstream("UPSTREAM_PORT", &upstream)
    .var("AUTHZ_PORT", &authz.port().to_string())
    .start();
    let mut seen = Vec::new();
    for listener in ["meshwasm-grpc-tls", "native-grpc-tls"] {
        authz.clear_seen();
        let (status, body) = curl(
            envoy.port(listener),
            "/allow/tls",
            Some(&dir.join("alice")),
            None,
        );
        assert_eq!(status, 200, "{listener}: {body}");
        let got = authz.seen();
        assert_eq!(got.len(), 1, "{listener}: one check");
        // The listeners' own ports differ (in `:authority` and `host`).
        let port = envoy.port(listener).to_string();
        seen.push(comparable(&got[0]).to_string().replace(&port, "PORT"));
    }
    assert_eq!(seen[0], seen[1], "CheckRequest over mTLS differs");
    let seen: Value = serde_json::from_str(&seen[0]).unwrap();
    assert_eq!(seen["source"]["principal"], alice);
    // The server certificate has no URI SAN: its first DNS SAN.
    assert_eq!(seen["destination"]["principal"], "localhost");
    assert_eq!(seen["scheme"], "https");
    let _ = std::fs::remove_dir_all(&dir);
}
