//! `meshwasm explain` against the authz twin test's cases: every policy set
//! (with the native jwt_authn in front, as a RequestAuthentication) and every
//! request whose status the twin test pins is explained offline, and explain
//! must give the status Envoy gave, and the policy id the module wrote to
//! filter state. Then bad input: exit 2 with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../host-tests/tests/authz_common/mod.rs"]
mod authz_common;
#[path = "../../host-tests/tests/authz_sets/mod.rs"]
mod authz_sets;

use std::path::{Path, PathBuf};
use std::process::Command;

use authz_common::PolicySet;
use serde_json::{json, Value};

/// The listener port the sets' `{{PORT:meshwasm-ports}}` stands for.
const PORT: u16 = 15001;

fn meshwasm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshwasm"))
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshwasm-explain-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The set's Istio objects: its AuthorizationPolicies, and a
/// RequestAuthentication for the native jwt_authn in front of it.
fn objects(set: &PolicySet) -> String {
    let mut docs: Vec<Value> = Vec::new();
    for f in &set.front {
        assert_eq!(f["name"], "envoy.filters.http.jwt_authn", "{}", set.name);
        let providers = f["typed_config"]["providers"].as_object().unwrap();
        let rules: Vec<Value> = providers
            .values()
            .map(|p| {
                json!({"issuer": p["issuer"], "jwks": p["local_jwks"]["inline_string"],
                       "forwardOriginalToken": p["forward"]})
            })
            .collect();
        docs.push(json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                         "metadata": {"name": "jwt", "namespace": "foo"}, "spec": {"jwtRules": rules}}));
    }
    assert_eq!(set.plugin["trustDomain"], "cluster.local");
    docs.extend(set.plugin["policies"].as_array().unwrap().iter().cloned());
    docs.iter()
        .map(|d| {
            d.to_string()
                .replace("{{PORT:meshwasm-ports}}", &PORT.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The explain flags for a request as the set's listener sees it: the peer
/// is 127.0.0.1 on a loopback listener; behind trusted hops the client
/// address is the one `x-forwarded-for` names that many hops from the right.
/// None when the request cannot be given on a command line.
fn flags(set: &PolicySet, r: &host_tests::http::Request) -> Option<Vec<String>> {
    if !r.raw_headers.is_empty() {
        return None;
    }
    let mut f: Vec<String> = vec![
        "--method".into(),
        r.method.clone(),
        "--path".into(),
        r.path.clone(),
        "--source-ip".into(),
        "127.0.0.1".into(),
        "--destination-ip".into(),
        "127.0.0.1".into(),
        "--destination-port".into(),
        PORT.to_string(),
        "--output".into(),
        "json".into(),
    ];
    let mut host = false;
    for (k, v) in &r.headers {
        host |= k.eq_ignore_ascii_case("host");
        if k.eq_ignore_ascii_case("x-forwarded-for") && set.trusted_hops > 0 {
            let hops: Vec<&str> = v.split(',').map(str::trim).collect();
            let n = set.trusted_hops as usize;
            let ip = hops.len().checked_sub(n).and_then(|i| hops.get(i))?;
            ip.parse::<std::net::IpAddr>().ok()?;
            f.extend(["--remote-ip".into(), ip.to_string()]);
        }
        f.extend(["--header".into(), format!("{k}: {v}")]);
    }
    if !host {
        // The test client's default `host`.
        f.extend(["--host".into(), "localhost".into()]);
    }
    Some(f)
}

fn explain(file: &Path, flags: &[String]) -> (i32, Value) {
    let out = meshwasm()
        .arg("explain")
        .arg("-f")
        .arg(file)
        .args(flags)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {flags:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn explain_agrees_with_every_authz_twin_case() {
    let dir = temp_dir("sets");
    let mut report = Vec::new();
    let mut checked = 0;
    for set in authz_sets::all_sets() {
        let file = dir.join(format!("{}.yaml", set.name));
        std::fs::write(&file, objects(&set)).unwrap();
        for e in &set.cases {
            let Some(want) = e.status else { continue };
            let Some(f) = flags(&set, &e.case.request) else {
                continue;
            };
            let (code, v) = explain(&file, &f);
            checked += 1;
            let status = v["status"].as_u64().unwrap_or(0) as u16;
            let want_code = if want == 200 { 0 } else { 1 };
            if status != want || code != want_code {
                report.push(format!(
                    "{}: {}: Envoy {want}, explain {status} (exit {code}): {}",
                    set.name,
                    e.case.name,
                    serde_json::to_string(&v["stages"]).unwrap()
                ));
            }
        }
    }
    assert!(checked > 120, "{checked}");
    assert!(
        report.is_empty(),
        "{} of {checked} cases differ:\n{}",
        report.len(),
        report.join("\n")
    );
}

#[test]
fn explain_names_the_policy_the_module_writes_to_filter_state() {
    let dir = temp_dir("state");
    let sets = authz_sets::all_sets();
    for (name, path, status, result, policy) in authz_sets::filter_state_cases() {
        let set = sets.iter().find(|s| s.name == name).unwrap();
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, objects(set)).unwrap();
        let f = flags(set, &authz_sets::get(path)).unwrap();
        let (_, v) = explain(&file, &f);
        assert_eq!(v["status"], status, "{name} {path}: {v}");
        let authz = &v["stages"][0];
        let state = &authz["filterState"];
        assert_eq!(state["meshwasm.authz_result"], result, "{name} {path}: {v}");
        let written = state["meshwasm.authz_policy"].as_str().unwrap_or("-");
        assert_eq!(written, policy, "{name} {path}: {v}");
    }
}

#[test]
fn a_deny_by_no_match_names_the_nearest_allow_rule() {
    let dir = temp_dir("nearest");
    let file = dir.join("p.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: api, namespace: foo}\nspec:\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n  - to: [{operation: {methods: [GET], paths: [/api/*]}}]\n    from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]\n",
    )
    .unwrap();
    let out = meshwasm()
        .args(["explain", "-f"])
        .arg(&file)
        .args(["--path", "/api/x"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("nearest: ns[foo]-policy[api]-rule[1]"),
        "{text}"
    );
    assert!(
        text.contains("failed: peer principal = \"spiffe://cluster.local/ns/a/sa/b\""),
        "{text}"
    );
    let out = meshwasm()
        .args(["explain", "-f"])
        .arg(&dir)
        .args(["--path", "/api/x", "--principal", "cluster.local/ns/a/sa/b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_input_exits_2_with_the_reason() {
    let dir = temp_dir("bad");
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec: {rules: [{}]}\n",
    )
    .unwrap();
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "kind: [unclosed\n").unwrap();
    let invalid = dir.join("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec: {rules: [{to: [{operation: {pathz: [/x]}}]}]}\n",
    )
    .unwrap();
    let remote = dir.join("remote.yaml");
    std::fs::write(
        &remote,
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: foo}\nspec: {jwtRules: [{issuer: https://iss.example, jwksUri: https://iss.example/jwks}]}\n",
    )
    .unwrap();
    let g = good.to_str().unwrap();
    let token = authz_common::hs256(
        &json!({"iss": "https://iss.example", "sub": "s", "exp": authz_common::far_future()}),
    );
    let bearer = format!("authorization: Bearer {token}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-f", g, "--bogus"], "unexpected argument '--bogus'"),
        (vec!["-f", "/nonexistent/p.yaml"], "/nonexistent/p.yaml"),
        (vec!["-f", broken.to_str().unwrap()], "broken.yaml"),
        (
            vec!["-f", invalid.to_str().unwrap()],
            "spec.rules[0].to[0].operation.pathz",
        ),
        (vec!["-f", g, "-H", "no-colon"], "expected NAME: VALUE"),
        (vec!["-f", g, "--time", "yesterday"], "RFC 3339"),
        (vec!["-f", g, "--source-ip", "10.1.2"], "invalid value"),
        (
            vec!["-f", remote.to_str().unwrap(), "-H", &bearer],
            "--jwks",
        ),
        (
            vec!["-f", g, "--jwks", broken.to_str().unwrap()],
            "broken.yaml",
        ),
        (
            vec!["-f", g, "--request", broken.to_str().unwrap()],
            "broken.yaml",
        ),
    ];
    for (args, want) in cases {
        let out = meshwasm().arg("explain").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn time_decides_token_expiry_and_jwks_come_from_a_file() {
    let dir = temp_dir("jwt");
    let iss = authz_common::ISSUER_A;
    // 2030-01-01T00:00:00Z.
    let token = authz_common::hs256(&json!({"iss": iss, "sub": "alice", "exp": 1_893_456_000u64}));
    let file = dir.join("ra.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra, namespace: foo}}\nspec: {{jwtRules: [{{issuer: {iss:?}, jwksUri: \"https://issuer.example/jwks\"}}]}}\n"),
    )
    .unwrap();
    let jwks = dir.join("keys.json");
    std::fs::write(&jwks, authz_common::hs256_jwks()).unwrap();
    let run = |time: &str| {
        meshwasm()
            .args(["explain", "-o", "json", "-f"])
            .arg(&file)
            .arg("--jwks")
            .arg(&jwks)
            .args([
                "--time",
                time,
                "-H",
                &format!("authorization: Bearer {token}"),
            ])
            .output()
            .unwrap()
    };
    let out = run("2029-12-31T23:00:00Z");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(
        v["stages"][0]["requestPrincipal"],
        format!("{iss}/alice"),
        "{v}"
    );
    let out = run("2030-01-01T00:01:01Z");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["status"], 401, "{v}");
    assert_eq!(v["stages"][0]["reason"], "Jwt is expired", "{v}");
}

#[test]
fn fault_percentage_and_canary_weights() {
    let dir = temp_dir("vs");
    let vs = |pct: f64| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: foo}}\nspec:\n  hosts: [\"*\"]\n  http:\n  - name: canary\n    match: [{{uri: {{prefix: /api}}}}]\n    fault: {{abort: {{httpStatus: 503, percentage: {{value: {pct}}}}}}}\n    route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: 10}}\n")
    };
    let file = dir.join("vs.yaml");
    std::fs::write(&file, vs(12.5)).unwrap();
    let (code, v) = explain(
        &file,
        &["--path".into(), "/api/x".into(), "-o".into(), "json".into()],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["stages"][0]["abort"], "HTTP 503, 12.5% of requests",
        "{v}"
    );
    assert_eq!(
        v["stages"][1]["destination"],
        "random by weight: reviews subset v1 (90%), reviews subset v2 (10%)",
        "{v}"
    );
    std::fs::write(&file, vs(100.0)).unwrap();
    let (code, v) = explain(
        &file,
        &["--path".into(), "/api/x".into(), "-o".into(), "json".into()],
    );
    assert_eq!((code, v["status"].as_u64()), (1, Some(503)), "{v}");
}
