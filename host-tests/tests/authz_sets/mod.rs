//! The authz twin test's policy sets: each an AuthorizationPolicy set, the
//! RBAC istiod generates for it, and request cases with the status Istio's
//! semantics give. Shared by the Envoy twin test (host-tests/tests/authz.rs)
//! and the explain test (cli/tests/explain.rs), which must answer the same.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::authz_common::*;
use host_tests::http::Request;
use serde_json::{json, Value};

pub fn get(path: &str) -> Request {
    Request::get(path)
}

pub fn with_host(path: &str, host: &str) -> Request {
    Request::get(path).header("host", host)
}

/// golden http/allow-path, with notPaths that leave room for allowed requests.
pub fn set_paths() -> PolicySet {
    let spec = json!({"rules": [{"to": [{"operation": {
        "paths": ["/exact", "/prefix/*", "*/suffix", "/path/template/{*}", "/{**}/path/template"],
        "notPaths": ["/prefix/deny/*", "*/not-suffix"]}}]}]});
    let native = rbac(
        "ALLOW",
        vec![(
            id("httpbin-1", 0),
            rbac_policy(
                vec![and_rules(vec![
                    or_rules(vec![
                        url_path(exact("/exact")),
                        url_path(prefix("/prefix/")),
                        url_path(suffix("/suffix")),
                        uri_template("/path/template/*"),
                        uri_template("/**/path/template"),
                    ]),
                    not_rule(or_rules(vec![
                        url_path(prefix("/prefix/deny/")),
                        url_path(suffix("/not-suffix")),
                    ])),
                ])],
                vec![any_principal()],
            ),
        )],
    );
    PolicySet {
        name: "paths",
        plugin: plugin(vec![policy("httpbin-1", spec)]),
        native: vec![native],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("exact", get("/exact"), 200),
            expect("exact with query", get("/exact?a=b&c"), 200),
            expect("exact with trailing slash", get("/exact/"), 403),
            expect("exact upper case", get("/EXACT"), 403),
            expect("dot segments normalized", get("/a/../exact"), 200),
            expect("double slash kept", get("//exact"), 403),
            expect(
                "encoded question mark is not a query",
                get("/exact%3Fa"),
                403,
            ),
            either("encoded unreserved", get("/%65xact")),
            either("encoded slash", get("/prefix%2Fa")),
            expect("prefix", get("/prefix/a/b"), 200),
            expect("prefix root", get("/prefix/"), 200),
            expect("prefix without slash", get("/prefix"), 403),
            expect("notPaths prefix", get("/prefix/deny/x"), 403),
            expect("suffix", get("/a/b/suffix"), 200),
            expect("suffix with query", get("/a/b/suffix?x=/not-suffix"), 200),
            expect("notPaths suffix", get("/a/not-suffix"), 403),
            expect("template one segment", get("/path/template/x"), 200),
            expect("template two segments", get("/path/template/x/y"), 403),
            expect("template query", get("/path/template/x?y=1"), 200),
            expect("template pchar", get("/path/template/a:b@c=d"), 200),
            expect("double-star template", get("/a/b/c/path/template"), 200),
            expect("double-star needs a slash", get("/path/template"), 403),
            expect("other", get("/other"), 403),
            expect("post exact", Request::new("POST", "/exact").body("x"), 200),
        ],
    }
}

/// hosts (case-insensitive, no port stripping) and methods; DENY before ALLOW.
pub fn set_hosts_methods() -> PolicySet {
    let deny = policy(
        "deny-methods",
        json!({"action": "DENY", "rules": [{"to": [
            {"operation": {"methods": ["DELETE"]}},
            {"operation": {"paths": ["/admin*"], "notMethods": ["GET"]}}]}]}),
    );
    let allow = policy(
        "allow-hosts",
        json!({"rules": [{"to": [{"operation": {
            "hosts": ["example.com", "*.example.org", "API.Example.NET", "exact:8080", "port.test:*"],
            "methods": ["GET", "POST", "P*", "*ETE"]}}]}]}),
    );
    let native_deny = rbac(
        "DENY",
        vec![(
            id("deny-methods", 0),
            rbac_policy(
                vec![
                    and_rules(vec![or_rules(vec![header(":method", exact("DELETE"))])]),
                    and_rules(vec![
                        or_rules(vec![url_path(prefix("/admin"))]),
                        not_rule(or_rules(vec![header(":method", exact("GET"))])),
                    ]),
                ],
                vec![any_principal()],
            ),
        )],
    );
    let native_allow = rbac(
        "ALLOW",
        vec![(
            id("allow-hosts", 0),
            rbac_policy(
                vec![and_rules(vec![
                    or_rules(vec![
                        host(exact("example.com")),
                        host(suffix(".example.org")),
                        host(exact("API.Example.NET")),
                        host(exact("exact:8080")),
                        host(prefix("port.test:")),
                    ]),
                    or_rules(vec![
                        header(":method", exact("GET")),
                        header(":method", exact("POST")),
                        header(":method", prefix("P")),
                        header(":method", suffix("ETE")),
                    ]),
                ])],
                vec![any_principal()],
            ),
        )],
    );
    let m = |method: &str, path: &str, host: &str| Request::new(method, path).header("host", host);
    PolicySet {
        name: "hosts",
        plugin: plugin(vec![deny, allow]),
        native: vec![native_deny, native_allow],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("host exact", with_host("/", "example.com"), 200),
            expect("host upper case", with_host("/", "EXAMPLE.COM"), 200),
            expect("host with port", with_host("/", "example.com:80"), 403),
            expect("host suffix", with_host("/", "a.b.example.org"), 200),
            expect("host suffix bare", with_host("/", "example.org"), 403),
            expect("host pattern case", with_host("/", "api.example.net"), 200),
            expect("host with port exact", with_host("/", "exact:8080"), 200),
            expect("host other port", with_host("/", "exact:8081"), 403),
            expect("host any port", with_host("/", "port.test:9999"), 200),
            expect("host without port", with_host("/", "port.test"), 403),
            expect("other host", with_host("/", "other.com"), 403),
            expect("DELETE denied", m("DELETE", "/", "example.com"), 403),
            expect("PUT prefix", m("PUT", "/", "example.com"), 200),
            expect("PATCH prefix", m("PATCH", "/", "example.com"), 200),
            expect("HEAD", m("HEAD", "/", "example.com"), 403),
            expect("OPTIONS", m("OPTIONS", "/", "example.com"), 403),
            either("lower-case method", m("get", "/", "example.com")),
            expect("admin GET", m("GET", "/admin/x", "example.com"), 200),
            expect(
                "admin POST denied",
                m("POST", "/admin/x", "example.com"),
                403,
            ),
            expect(
                "admin POST other host",
                m("POST", "/admin", "other.com"),
                403,
            ),
        ],
    }
}

/// golden http/allow-nil-rule (allow-nothing) with an AUDIT policy in front.
pub fn set_allow_nothing() -> PolicySet {
    let never = json!({"permissions": [{"notRule": {"any": true}}], "principals": [{"notId": {"any": true}}]});
    let log = rbac_filter(
        json!({"rules": {"action": "LOG", "policies": {id("audit-all", 0): {
        "permissions": [any_permission()], "principals": [any_principal()]}}},
        "shadowRulesStatPrefix": "istio_dry_run_allow_"}),
    );
    PolicySet {
        name: "nothing",
        plugin: plugin(vec![
            policy("audit-all", json!({"action": "AUDIT", "rules": [{}]})),
            policy(
                "allow-none",
                json!({"selector": {"matchLabels": {"app": "httpbin"}}}),
            ),
            // An ALLOW with rules that can never match a plaintext request.
            policy(
                "allow-mtls",
                json!({"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}),
            ),
            // allow-nothing is a baseline: another ALLOW widens it.
            policy(
                "allow-open",
                json!({"rules": [{"to": [{"operation": {"paths": ["/open"]}}]}]}),
            ),
        ]),
        native: vec![
            log,
            rbac(
                "ALLOW",
                vec![
                    (id("allow-none", 0), never),
                    (
                        id("allow-mtls", 0),
                        rbac_policy(
                            vec![any_permission()],
                            vec![and_ids(vec![or_ids(vec![authenticated(regex(".+"))])])],
                        ),
                    ),
                    (
                        id("allow-open", 0),
                        rbac_policy(
                            vec![and_rules(vec![or_rules(vec![url_path(exact("/open"))])])],
                            vec![any_principal()],
                        ),
                    ),
                ],
            ),
        ],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("get", get("/"), 403),
            expect("post", Request::new("POST", "/x").body("b"), 403),
            expect(
                "with headers",
                get("/a?b").header("authorization", "Bearer x"),
                403,
            ),
            expect("open", get("/open?x=1"), 200),
        ],
    }
}

/// `when` request.headers: exact/prefix/suffix/presence, notValues, duplicates.
pub fn set_headers() -> PolicySet {
    let spec = json!({"rules": [
        {"when": [{"key": "request.headers[X-Token]", "values": ["exact", "pre*", "*suf", "a,b", "x\u{fffd}"]}]},
        {"when": [{"key": "request.headers[x-present]", "values": ["*"]}]},
        {"to": [{"operation": {"paths": ["/not"]}}], "when": [{"key": "request.headers[x-user]", "notValues": ["bad", "worse*"]}]}
    ]});
    let native = rbac(
        "ALLOW",
        vec![
            (
                id("headers", 0),
                rbac_policy(
                    vec![any_permission()],
                    vec![and_ids(vec![or_ids(vec![
                        header("X-Token", exact("exact")),
                        header("X-Token", prefix("pre")),
                        header("X-Token", suffix("suf")),
                        header("X-Token", exact("a,b")),
                        header("X-Token", exact("x\u{fffd}")),
                    ])])],
                ),
            ),
            (
                id("headers", 1),
                rbac_policy(
                    vec![any_permission()],
                    vec![and_ids(vec![or_ids(vec![header_present("x-present")])])],
                ),
            ),
            (
                id("headers", 2),
                rbac_policy(
                    vec![and_rules(vec![or_rules(vec![url_path(exact("/not"))])])],
                    vec![and_ids(vec![not_id(or_ids(vec![
                        header("x-user", exact("bad")),
                        header("x-user", prefix("worse")),
                    ]))])],
                ),
            ),
        ],
    );
    PolicySet {
        name: "headers",
        plugin: plugin(vec![policy("headers", spec)]),
        native: vec![native],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("exact", get("/").header("x-token", "exact"), 200),
            expect(
                "name case-insensitive",
                get("/").header("X-TOKEN", "exact"),
                200,
            ),
            expect(
                "value case-sensitive",
                get("/").header("x-token", "EXACT"),
                403,
            ),
            expect("prefix", get("/").header("x-token", "prefix"), 200),
            expect("suffix", get("/").header("x-token", "my-suf"), 200),
            expect("absent", get("/"), 403),
            expect(
                "repeated: exact + other",
                get("/")
                    .header("x-token", "exact")
                    .header("x-token", "other"),
                200,
            ),
            expect(
                "duplicates joined: pre,x",
                get("/").header("x-token", "pre").header("x-token", "x"),
                200,
            ),
            expect(
                "duplicates joined: x,suf",
                get("/").header("x-token", "x").header("x-token", "suf"),
                200,
            ),
            expect(
                "repeated a + b is not the joined a,b",
                get("/").header("x-token", "a").header("x-token", "b"),
                403,
            ),
            expect("single value a,b", get("/").header("x-token", "a,b"), 200),
            // Values that are not UTF-8 (obs-text): RBAC compares bytes.
            expect(
                "prefix, then a byte that is not UTF-8",
                get("/").raw_header("x-token", b"pre\xff"),
                200,
            ),
            expect(
                "suffix after a byte that is not UTF-8",
                get("/").raw_header("x-token", b"\xe9suf"),
                200,
            ),
            expect(
                "exact, then a byte that is not UTF-8",
                get("/").raw_header("x-token", b"exact\xff"),
                403,
            ),
            // Bytes, not text made from them: U+FFFD in the policy is not
            // the byte it would stand for.
            expect(
                "exact U+FFFD, sent as U+FFFD",
                get("/").header("x-token", "x\u{fffd}"),
                200,
            ),
            expect(
                "exact U+FFFD, sent as a byte that is not UTF-8",
                get("/").raw_header("x-token", b"x\xff"),
                403,
            ),
            expect(
                "present, not UTF-8",
                get("/").raw_header("x-present", b"\xc3("),
                200,
            ),
            expect(
                "notValues prefix, not UTF-8",
                get("/not").raw_header("x-user", b"worse\x80"),
                403,
            ),
            expect(
                "notValues other, not UTF-8",
                get("/not").raw_header("x-user", b"b\xe4d"),
                200,
            ),
            expect(
                "present with empty value",
                get("/").header("x-present", ""),
                200,
            ),
            expect("present", get("/").header("x-present", "v"), 200),
            expect("notValues absent", get("/not"), 200),
            expect("notValues hit", get("/not").header("x-user", "bad"), 403),
            expect(
                "notValues prefix hit",
                get("/not").header("x-user", "worse-still"),
                403,
            ),
            expect("notValues other", get("/not").header("x-user", "good"), 200),
            expect(
                "notValues repeated",
                get("/not").header("x-user", "bad").header("x-user", "good"),
                403,
            ),
        ],
    }
}

/// golden http/dry-run-mix plus a dry-run DENY.
pub fn set_dry_run() -> PolicySet {
    let allow_dry = dry_run_policy(
        "httpbin-1",
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/allow"]}}]}]}),
    );
    let allow = policy(
        "httpbin-2",
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/another", "/deny-dry"]}}]}]}),
    );
    let deny_dry = dry_run_policy(
        "deny-dry",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/deny-dry"]}}]}]}),
    );
    let path_rule = |p: &str| {
        rbac_policy(
            vec![and_rules(vec![or_rules(vec![url_path(exact(p))])])],
            vec![any_principal()],
        )
    };
    let native_deny = rbac_filter(json!({
        "shadowRules": {"action": "DENY", "policies": {id("deny-dry", 0): path_rule("/deny-dry")}},
        "shadowRulesStatPrefix": "istio_dry_run_deny_"}));
    let native_allow = rbac_filter(json!({
        "rules": {"policies": {id("httpbin-2", 0): rbac_policy(
            vec![and_rules(vec![or_rules(vec![url_path(exact("/another")), url_path(exact("/deny-dry"))])])],
            vec![any_principal()])}},
        "shadowRules": {"policies": {id("httpbin-1", 0): path_rule("/allow")}},
        "shadowRulesStatPrefix": "istio_dry_run_allow_"}));
    PolicySet {
        name: "dryrun",
        plugin: plugin(vec![allow_dry, allow, deny_dry]),
        native: vec![native_deny, native_allow],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("dry-run allow is not enforced", get("/allow"), 403),
            expect("enforced allow", get("/another"), 200),
            expect("dry-run deny is not enforced", get("/deny-dry"), 200),
            expect("nothing", get("/x"), 403),
        ],
    }
}

/// ports, notPorts, destination.port, destination.ip.
pub fn set_ports() -> PolicySet {
    let spec = |port: &str| {
        json!({"rules": [
            {"to": [{"operation": {"ports": [port], "paths": ["/port"]}}]},
            {"to": [{"operation": {"paths": ["/dest"]}}], "when": [
                {"key": "destination.port", "values": [port, "1"]},
                {"key": "destination.ip", "values": ["127.0.0.0/8"]}]},
            {"to": [{"operation": {"paths": ["/notport"], "notPorts": [port]}}]},
            {"to": [{"operation": {"paths": ["/notip"]}}], "when": [{"key": "destination.ip", "notValues": ["127.0.0.1"]}]},
            {"to": [{"operation": {"paths": ["/otherport"], "ports": ["1"]}}]}
        ]})
    };
    let native_port = "{{PORT:native-ports}}";
    let dport = |p: &str| json!({"destinationPort": p});
    let native = rbac(
        "ALLOW",
        vec![
            (
                id("ports", 0),
                rbac_policy(
                    vec![and_rules(vec![
                        or_rules(vec![url_path(exact("/port"))]),
                        or_rules(vec![dport(native_port)]),
                    ])],
                    vec![any_principal()],
                ),
            ),
            (
                id("ports", 1),
                rbac_policy(
                    vec![and_rules(vec![
                        or_rules(vec![url_path(exact("/dest"))]),
                        or_rules(vec![dport(native_port), dport("1")]),
                        or_rules(vec![json!({"destinationIp": cidr("127.0.0.0", 8)})]),
                    ])],
                    vec![any_principal()],
                ),
            ),
            (
                id("ports", 2),
                rbac_policy(
                    vec![and_rules(vec![
                        or_rules(vec![url_path(exact("/notport"))]),
                        not_rule(or_rules(vec![dport(native_port)])),
                    ])],
                    vec![any_principal()],
                ),
            ),
            (
                id("ports", 3),
                rbac_policy(
                    vec![and_rules(vec![
                        or_rules(vec![url_path(exact("/notip"))]),
                        not_rule(or_rules(vec![
                            json!({"destinationIp": cidr("127.0.0.1", 32)}),
                        ])),
                    ])],
                    vec![any_principal()],
                ),
            ),
            (
                id("ports", 4),
                rbac_policy(
                    vec![and_rules(vec![
                        or_rules(vec![url_path(exact("/otherport"))]),
                        or_rules(vec![dport("1")]),
                    ])],
                    vec![any_principal()],
                ),
            ),
        ],
    );
    PolicySet {
        name: "ports",
        plugin: plugin(vec![policy("ports", spec("{{PORT:meshwasm-ports}}"))]),
        native: vec![native],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("ports", get("/port"), 200),
            expect("destination port and ip", get("/dest"), 200),
            expect("notPorts", get("/notport"), 403),
            expect("destination.ip notValues", get("/notip"), 403),
            expect("other port", get("/otherport"), 403),
            expect("no rule", get("/"), 403),
        ],
    }
}

/// ipBlocks (direct peer) and remoteIpBlocks with use_remote_address and no
/// trusted hop: a client-sent x-forwarded-for never changes either.
pub fn set_ips() -> PolicySet {
    let allow = policy(
        "ips",
        json!({"rules": [
            {"from": [{"source": {"ipBlocks": ["127.0.0.1"]}}], "to": [{"operation": {"paths": ["/direct"]}}]},
            {"from": [{"source": {"remoteIpBlocks": ["127.0.0.0/8"], "notIpBlocks": ["10.0.0.0/8"]}}], "to": [{"operation": {"paths": ["/remote"]}}]},
            {"from": [{"source": {"ipBlocks": ["1.2.3.0/24"]}}], "to": [{"operation": {"paths": ["/spoof"]}}]},
            {"to": [{"operation": {"paths": ["/cond"]}}], "when": [{"key": "source.ip", "values": ["127.0.0.0/8"]}, {"key": "remote.ip", "notValues": ["1.2.3.4"]}]}
        ]}),
    );
    let deny = policy(
        "deny-ips",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"notIpBlocks": ["127.0.0.0/8"]}}]}]}),
    );
    let remote = |ip, len| json!({"remoteIp": cidr(ip, len)});
    let direct = |ip, len| json!({"directRemoteIp": cidr(ip, len)});
    let one = |p: &str| and_rules(vec![or_rules(vec![url_path(exact(p))])]);
    let native_deny = rbac(
        "DENY",
        vec![(
            id("deny-ips", 0),
            rbac_policy(
                vec![any_permission()],
                vec![and_ids(vec![not_id(or_ids(vec![direct("127.0.0.0", 8)]))])],
            ),
        )],
    );
    let native_allow = rbac(
        "ALLOW",
        vec![
            (
                id("ips", 0),
                rbac_policy(
                    vec![one("/direct")],
                    vec![and_ids(vec![or_ids(vec![direct("127.0.0.1", 32)])])],
                ),
            ),
            (
                id("ips", 1),
                rbac_policy(
                    vec![one("/remote")],
                    vec![and_ids(vec![
                        or_ids(vec![remote("127.0.0.0", 8)]),
                        not_id(or_ids(vec![direct("10.0.0.0", 8)])),
                    ])],
                ),
            ),
            (
                id("ips", 2),
                rbac_policy(
                    vec![one("/spoof")],
                    vec![and_ids(vec![or_ids(vec![direct("1.2.3.0", 24)])])],
                ),
            ),
            (
                id("ips", 3),
                rbac_policy(
                    vec![one("/cond")],
                    vec![and_ids(vec![
                        or_ids(vec![direct("127.0.0.0", 8)]),
                        not_id(or_ids(vec![remote("1.2.3.4", 32)])),
                    ])],
                ),
            ),
        ],
    );
    let xff = |path: &str, v: &str| get(path).header("x-forwarded-for", v);
    PolicySet {
        name: "ips",
        plugin: plugin(vec![allow, deny]),
        native: vec![native_deny, native_allow],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("ipBlocks: direct peer", get("/direct"), 200),
            expect("ipBlocks ignore xff", xff("/direct", "8.8.8.8"), 200),
            expect(
                "remoteIpBlocks: untrusted xff ignored",
                xff("/remote", "8.8.8.8"),
                200,
            ),
            expect("xff cannot claim an ipBlock", xff("/spoof", "1.2.3.5"), 403),
            expect("source.ip and remote.ip", xff("/cond", "1.2.3.4"), 200),
            expect("no rule", get("/"), 403),
        ],
    }
}

/// remoteIpBlocks / remote.ip with one trusted hop: the client address comes
/// from x-forwarded-for as Envoy computes it.
pub fn set_remote() -> PolicySet {
    let allow = policy(
        "remote",
        json!({"rules": [
            {"from": [{"source": {"remoteIpBlocks": ["1.2.3.0/24", "2001:db8::/32"], "notRemoteIpBlocks": ["1.2.3.4"]}}]},
            {"when": [{"key": "remote.ip", "values": ["5.6.7.8"]}]}
        ]}),
    );
    // Behind a trusted hop the wasm host cannot tell the direct peer: an
    // ipBlocks DENY must still deny (fail closed), as native RBAC, which knows
    // the peer (127.0.0.1), does.
    let deny = policy(
        "deny-remote",
        json!({"action": "DENY", "rules": [
            {"from": [{"source": {"remoteIpBlocks": ["9.9.9.9"]}}]},
            {"from": [{"source": {"ipBlocks": ["127.0.0.1"]}}], "to": [{"operation": {"paths": ["/internal"]}}]}
        ]}),
    );
    let remote = |ip, len| json!({"remoteIp": cidr(ip, len)});
    let native_deny = rbac(
        "DENY",
        vec![
            (
                id("deny-remote", 0),
                rbac_policy(
                    vec![any_permission()],
                    vec![and_ids(vec![or_ids(vec![remote("9.9.9.9", 32)])])],
                ),
            ),
            (
                id("deny-remote", 1),
                rbac_policy(
                    vec![and_rules(vec![or_rules(vec![url_path(exact(
                        "/internal",
                    ))])])],
                    vec![and_ids(vec![or_ids(vec![
                        json!({"directRemoteIp": cidr("127.0.0.1", 32)}),
                    ])])],
                ),
            ),
        ],
    );
    let native_allow = rbac(
        "ALLOW",
        vec![
            (
                id("remote", 0),
                rbac_policy(
                    vec![any_permission()],
                    vec![and_ids(vec![
                        or_ids(vec![remote("1.2.3.0", 24), remote("2001:db8::", 32)]),
                        not_id(or_ids(vec![remote("1.2.3.4", 32)])),
                    ])],
                ),
            ),
            (
                id("remote", 1),
                rbac_policy(
                    vec![any_permission()],
                    vec![and_ids(vec![or_ids(vec![remote("5.6.7.8", 32)])])],
                ),
            ),
        ],
    );
    let xff = |path: &str, v: &str| get(path).header("x-forwarded-for", v);
    PolicySet {
        name: "remote",
        plugin: plugin(vec![allow, deny]),
        native: vec![native_deny, native_allow],
        front: vec![],
        trusted_hops: 1,
        cases: vec![
            expect("remote in block", xff("/", "1.2.3.5"), 200),
            expect("remote excluded", xff("/", "1.2.3.4"), 403),
            expect("remote v6", xff("/", "2001:db8::7"), 200),
            expect("remote outside", xff("/", "8.8.8.8"), 403),
            expect("remote denied", xff("/", "9.9.9.9"), 403),
            expect("no xff: remote is the peer", get("/"), 403),
            expect("remote.ip condition", xff("/", "5.6.7.8"), 200),
            expect(
                "trusted hop: rightmost counts",
                xff("/", "8.8.8.8, 5.6.7.8"),
                200,
            ),
            expect(
                "untrusted leftmost ignored",
                xff("/", "1.2.3.5, 8.8.8.8"),
                403,
            ),
            either("garbage xff", xff("/", "not-an-ip")),
            expect(
                "ipBlocks DENY with the client address from xff",
                xff("/internal", "1.2.3.5"),
                403,
            ),
            expect("ipBlocks DENY, other path", xff("/public", "1.2.3.5"), 200),
        ],
    }
}

/// JWT identities through Envoy's native jwt_authn (payload in metadata).
pub fn set_jwt() -> PolicySet {
    let allow = policy(
        "jwt",
        json!({"rules": [
            {"from": [{"source": {"requestPrincipals": [format!("{ISSUER_A}/alice"), format!("{ISSUER_B}/*")]}}], "to": [{"operation": {"paths": ["/"]}}]},
            {"to": [{"operation": {"paths": ["/admin"]}}], "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]},
            {"to": [{"operation": {"paths": ["/aud"]}}], "when": [{"key": "request.auth.audiences", "values": ["aud-1"]}, {"key": "request.auth.presenter", "values": ["cli*"]}]},
            {"to": [{"operation": {"paths": ["/nested"]}}], "when": [{"key": "request.auth.claims[nested][role]", "values": ["*"]}]},
            {"from": [{"source": {"notRequestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/anon"]}}]},
            {"to": [{"operation": {"paths": ["/scope"]}}], "when": [{"key": "request.auth.claims[scope]", "values": ["write"]}]},
            {"to": [{"operation": {"paths": ["/num"]}}], "when": [{"key": "request.auth.claims[level]", "values": ["3"]}]},
            {"to": [{"operation": {"paths": ["/not-claim"]}}], "when": [{"key": "request.auth.claims[groups]", "notValues": ["admin"]}]}
        ]}),
    );
    let deny = policy(
        "jwt-deny",
        json!({"action": "DENY", "rules": [{"when": [{"key": "request.auth.principal", "values": ["*/mallory"]}]}]}),
    );
    let one = |p: &str| and_rules(vec![or_rules(vec![url_path(exact(p))])]);
    let native_deny = rbac(
        "DENY",
        vec![(
            id("jwt-deny", 0),
            rbac_policy(
                vec![any_permission()],
                vec![and_ids(vec![request_principal(
                    regex(".+"),
                    exact("mallory"),
                )])],
            ),
        )],
    );
    let native_allow = rbac(
        "ALLOW",
        vec![
            (
                id("jwt", 0),
                rbac_policy(
                    vec![one("/")],
                    vec![and_ids(vec![or_ids(vec![
                        request_principal(exact(ISSUER_A), exact("alice")),
                        request_principal(exact(ISSUER_B), regex(".+")),
                    ])])],
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
                    vec![one("/aud")],
                    vec![and_ids(vec![
                        jwt_claim_list(&["aud"], vec![exact("aud-1")]),
                        jwt_claim_list(&["azp"], vec![prefix("cli")]),
                    ])],
                ),
            ),
            (
                id("jwt", 3),
                rbac_policy(
                    vec![one("/nested")],
                    vec![and_ids(vec![jwt_claim_list(
                        &["nested", "role"],
                        vec![regex(".+")],
                    )])],
                ),
            ),
            (
                id("jwt", 4),
                rbac_policy(
                    vec![one("/anon")],
                    vec![and_ids(vec![not_id(request_principal(
                        regex(".+"),
                        regex(".+"),
                    ))])],
                ),
            ),
            (
                id("jwt", 5),
                rbac_policy(
                    vec![one("/scope")],
                    vec![and_ids(vec![jwt_claim_list(
                        &["scope"],
                        vec![exact("write")],
                    )])],
                ),
            ),
            (
                id("jwt", 6),
                rbac_policy(
                    vec![one("/num")],
                    vec![and_ids(vec![jwt_claim_list(&["level"], vec![exact("3")])])],
                ),
            ),
            (
                id("jwt", 7),
                rbac_policy(
                    vec![one("/not-claim")],
                    vec![and_ids(vec![not_id(jwt_claim_list(
                        &["groups"],
                        vec![exact("admin")],
                    ))])],
                ),
            ),
        ],
    );
    let exp = far_future();
    let tok = |claims: Value| hs256(&claims);
    let alice = tok(
        json!({"iss": ISSUER_A, "sub": "alice", "exp": exp, "groups": ["admin", "dev"], "aud": ["aud-1", "x"],
                           "azp": "client-x", "nested": {"role": "r"}, "scope": "read write", "level": 3}),
    );
    let bob = tok(
        json!({"iss": ISSUER_B, "sub": "bob", "exp": exp, "groups": "user", "aud": "aud-1", "azp": "other"}),
    );
    let carol = tok(
        json!({"iss": ISSUER_A, "sub": "carol", "exp": exp, "aud": "aud-2", "groups": "admin", "nested": {"role": ""}}),
    );
    let mallory = tok(json!({"iss": ISSUER_B, "sub": "mallory", "exp": exp}));
    let nosub = tok(json!({"iss": ISSUER_B, "exp": exp}));
    let expired = tok(json!({"iss": ISSUER_A, "sub": "alice", "exp": 1000}));
    let bearer = |path: &str, t: &str| get(path).header("authorization", &format!("Bearer {t}"));
    PolicySet {
        name: "jwt",
        plugin: plugin(vec![allow, deny]),
        native: vec![native_deny, native_allow],
        front: vec![native_jwt_authn()],
        trusted_hops: 0,
        cases: vec![
            expect("no token", get("/"), 403),
            expect("no token anonymous path", get("/anon"), 200),
            expect("alice principal", bearer("/", &alice), 200),
            expect("issuer with slashes, any sub", bearer("/", &bob), 200),
            expect("carol not listed", bearer("/", &carol), 403),
            expect("token without sub", bearer("/", &nosub), 403),
            expect("mallory denied", bearer("/", &mallory), 403),
            expect("alice groups list", bearer("/admin", &alice), 200),
            expect("carol groups string", bearer("/admin", &carol), 200),
            expect("bob groups other", bearer("/admin", &bob), 403),
            expect("audience list + presenter", bearer("/aud", &alice), 200),
            expect("presenter mismatch", bearer("/aud", &bob), 403),
            expect("audience mismatch", bearer("/aud", &carol), 403),
            expect("nested claim", bearer("/nested", &alice), 200),
            expect("nested claim empty", bearer("/nested", &carol), 403),
            expect("nested claim absent", bearer("/nested", &bob), 403),
            expect(
                "authenticated on anonymous path",
                bearer("/anon", &alice),
                403,
            ),
            expect("space-delimited scope", bearer("/scope", &alice), 200),
            expect(
                "number claim never matches a string",
                bearer("/num", &alice),
                403,
            ),
            expect("notValues: no token", get("/not-claim"), 200),
            expect("notValues: admin", bearer("/not-claim", &alice), 403),
            expect("notValues: user", bearer("/not-claim", &bob), 200),
            expect("expired token", bearer("/", &expired), 401),
            expect("garbage token", bearer("/", "a.b.c"), 401),
            expect(
                "payload header cannot stand in",
                get("/admin").header("x-jwt-payload", "eyJncm91cHMiOiJhZG1pbiJ9"),
                403,
            ),
        ],
    }
}

/// Peer-identity fields over plaintext: no principal, so positive matchers
/// fail and negated ones match (A.15.1). mTLS clients: authz_mtls.rs.
pub fn set_plaintext_identity() -> PolicySet {
    let spec = json!({"rules": [
        {"from": [{"source": {"principals": ["*"]}}], "to": [{"operation": {"paths": ["/p"]}}]},
        {"from": [{"source": {"notPrincipals": ["cluster.local/ns/a/sa/b"]}}], "to": [{"operation": {"paths": ["/np"]}}]},
        {"from": [{"source": {"namespaces": ["foo"]}}], "to": [{"operation": {"paths": ["/ns"]}}]},
        {"from": [{"source": {"notNamespaces": ["foo"]}}], "to": [{"operation": {"paths": ["/nns"]}}]},
        {"from": [{"source": {"serviceAccounts": ["foo/sa"]}}], "to": [{"operation": {"paths": ["/sa"]}}]},
        {"from": [{"source": {"notTrustDomains": ["cluster.local"]}}], "to": [{"operation": {"paths": ["/ntd"]}}]},
        {"to": [{"operation": {"paths": ["/nsp"]}}], "when": [{"key": "source.principal", "notValues": ["*"]}]},
        {"to": [{"operation": {"paths": ["/sni"]}}], "when": [{"key": "connection.sni", "values": ["*"]}]},
        {"to": [{"operation": {"paths": ["/nosni"]}}], "when": [{"key": "connection.sni", "notValues": ["*"]}]},
        {"to": [{"operation": {"paths": ["/meta"]}}], "when": [{"key": "experimental.envoy.filters.http.lua[k]", "values": ["v"]}]},
        {"to": [{"operation": {"paths": ["/nometa"]}}], "when": [{"key": "experimental.envoy.filters.http.lua[k]", "notValues": ["v"]}]}
    ]});
    let one = |p: &str| and_rules(vec![or_rules(vec![url_path(exact(p))])]);
    let by_principal = |i: usize, p: &str, principal: Value| {
        (
            id("peer", i),
            rbac_policy(vec![one(p)], vec![and_ids(vec![principal])]),
        )
    };
    let by_permission = |i: usize, p: &str, extra: Value| {
        (
            id("peer", i),
            rbac_policy(
                vec![and_rules(vec![or_rules(vec![url_path(exact(p))]), extra])],
                vec![any_principal()],
            ),
        )
    };
    let lua = |m: Value| {
        json!({"metadata": {"filter": "envoy.filters.http.lua", "path": [{"key": "k"}],
        "value": {"stringMatch": m}}})
    };
    let native = rbac(
        "ALLOW",
        vec![
            by_principal(0, "/p", or_ids(vec![authenticated(regex(".+"))])),
            by_principal(
                1,
                "/np",
                not_id(or_ids(vec![authenticated(exact(
                    "spiffe://cluster.local/ns/a/sa/b",
                ))])),
            ),
            by_principal(2, "/ns", or_ids(vec![authenticated(regex(".*/ns/foo/.*"))])),
            by_principal(
                3,
                "/nns",
                not_id(or_ids(vec![authenticated(regex(".*/ns/foo/.*"))])),
            ),
            by_principal(
                4,
                "/sa",
                or_ids(vec![authenticated(regex(
                    "spiffe://.+/ns/foo/(.+/|)sa/sa(/.+)?",
                ))]),
            ),
            by_principal(
                5,
                "/ntd",
                not_id(or_ids(vec![authenticated(prefix(
                    "spiffe://cluster.local/",
                ))])),
            ),
            by_principal(6, "/nsp", not_id(or_ids(vec![authenticated(regex(".+"))]))),
            by_permission(
                7,
                "/sni",
                or_rules(vec![json!({"requestedServerName": regex(".+")})]),
            ),
            by_permission(
                8,
                "/nosni",
                not_rule(or_rules(vec![json!({"requestedServerName": regex(".+")})])),
            ),
            by_permission(9, "/meta", json!({"metadata": lua(exact("v"))["metadata"]})),
            by_permission(
                10,
                "/nometa",
                not_rule(json!({"metadata": lua(exact("v"))["metadata"]})),
            ),
        ],
    );
    PolicySet {
        name: "peer",
        plugin: plugin(vec![policy("peer", spec)]),
        native: vec![native],
        front: vec![],
        trusted_hops: 0,
        cases: vec![
            expect("principals * needs a certificate", get("/p"), 403),
            expect("notPrincipals on plaintext", get("/np"), 200),
            expect("namespaces", get("/ns"), 403),
            expect("notNamespaces", get("/nns"), 200),
            expect("serviceAccounts", get("/sa"), 403),
            expect("notTrustDomains", get("/ntd"), 200),
            expect("source.principal notValues", get("/nsp"), 200),
            expect("sni on plaintext", get("/sni"), 403),
            expect("no sni", get("/nosni"), 200),
            expect("absent metadata", get("/meta"), 403),
            expect("absent metadata negated", get("/nometa"), 200),
            expect(
                "spoofed identity header",
                get("/p").header(
                    "x-forwarded-client-cert",
                    "URI=spiffe://cluster.local/ns/foo/sa/x",
                ),
                403,
            ),
        ],
    }
}

/// Several policies: ALLOW union, DENY override, rules with several from/to
/// and `when` repeated into every principal/permission (golden single-policy).
pub fn set_multi() -> PolicySet {
    let p1 = policy(
        "multi",
        json!({"rules": [{
            "from": [{"source": {"remoteIpBlocks": ["1.2.3.0/24"]}}, {"source": {"principals": ["cluster.local/ns/x/sa/y"]}}],
            "to": [{"operation": {"methods": ["GET"]}}, {"operation": {"paths": ["/p"]}}],
            "when": [{"key": "request.headers[x]", "values": ["1"]}, {"key": "destination.ip", "values": ["127.0.0.1"]}]
        }]}),
    );
    let p2 = policy(
        "public",
        json!({"rules": [{"to": [{"operation": {"paths": ["/public*"]}}]}]}),
    );
    let p3 = policy(
        "deny",
        json!({"action": "DENY", "rules": [
            {"to": [{"operation": {"paths": ["/public/secret"]}}]},
            {"when": [{"key": "request.headers[x-deny]", "values": ["*"]}]}
        ]}),
    );
    let dip = json!({"destinationIp": cidr("127.0.0.1", 32)});
    let hx = header("x", exact("1"));
    let native_deny = rbac(
        "DENY",
        vec![
            (
                id("deny", 0),
                rbac_policy(
                    vec![and_rules(vec![or_rules(vec![url_path(exact(
                        "/public/secret",
                    ))])])],
                    vec![any_principal()],
                ),
            ),
            (
                id("deny", 1),
                rbac_policy(
                    vec![any_permission()],
                    vec![and_ids(vec![or_ids(vec![header_present("x-deny")])])],
                ),
            ),
        ],
    );
    let native_allow = rbac(
        "ALLOW",
        vec![
            (
                id("multi", 0),
                rbac_policy(
                    vec![
                        and_rules(vec![
                            or_rules(vec![header(":method", exact("GET"))]),
                            or_rules(vec![dip.clone()]),
                        ]),
                        and_rules(vec![
                            or_rules(vec![url_path(exact("/p"))]),
                            or_rules(vec![dip]),
                        ]),
                    ],
                    vec![
                        and_ids(vec![
                            or_ids(vec![json!({"remoteIp": cidr("1.2.3.0", 24)})]),
                            or_ids(vec![hx.clone()]),
                        ]),
                        and_ids(vec![
                            or_ids(vec![authenticated(exact(
                                "spiffe://cluster.local/ns/x/sa/y",
                            ))]),
                            or_ids(vec![hx]),
                        ]),
                    ],
                ),
            ),
            (
                id("public", 0),
                rbac_policy(
                    vec![and_rules(vec![or_rules(vec![url_path(prefix("/public"))])])],
                    vec![any_principal()],
                ),
            ),
        ],
    );
    let c =
        |method: &str, path: &str| Request::new(method, path).header("x-forwarded-for", "1.2.3.9");
    PolicySet {
        name: "multi",
        plugin: plugin(vec![p1, p2, p3]),
        native: vec![native_deny, native_allow],
        front: vec![],
        trusted_hops: 1,
        cases: vec![
            expect(
                "GET with header from block",
                c("GET", "/x").header("x", "1"),
                200,
            ),
            expect(
                "POST /p with header",
                c("POST", "/p").header("x", "1").body("b"),
                200,
            ),
            expect(
                "POST elsewhere",
                c("POST", "/q").header("x", "1").body("b"),
                403,
            ),
            expect("missing when header", c("GET", "/x"), 403),
            expect(
                "outside block",
                get("/x")
                    .header("x", "1")
                    .header("x-forwarded-for", "4.4.4.4"),
                403,
            ),
            expect("public union", get("/public/a"), 200),
            expect("public secret denied", get("/public/secret"), 403),
            expect(
                "deny header present",
                get("/public/a").header("x-deny", ""),
                403,
            ),
            expect(
                "deny header beats allow",
                c("GET", "/x").header("x", "1").header("x-deny", "y"),
                403,
            ),
        ],
    }
}

pub fn all_sets() -> Vec<PolicySet> {
    vec![
        set_paths(),
        set_hosts_methods(),
        set_allow_nothing(),
        set_headers(),
        set_dry_run(),
        set_ports(),
        set_ips(),
        set_remote(),
        set_jwt(),
        set_plaintext_identity(),
        set_multi(),
    ]
}

/// Requests of three sets with the filter state authz writes for them
/// (`meshwasm.authz_result`, `meshwasm.authz_policy`; `-` when none):
/// (set, path, status, result, policy).
pub fn filter_state_cases() -> Vec<(&'static str, &'static str, u16, &'static str, String)> {
    vec![
        ("paths", "/exact", 200, "allowed", id("httpbin-1", 0)),
        ("paths", "/prefix/deny/x", 403, "denied", "-".to_string()),
        ("nothing", "/open", 200, "audit", id("allow-open", 0)),
        (
            "dryrun",
            "/another",
            200,
            "shadow_denied",
            id("httpbin-2", 0),
        ),
        ("dryrun", "/x", 403, "denied", "-".to_string()),
    ]
}
