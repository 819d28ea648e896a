//! `meshwasm check`: the filters' own parsers, run natively on what users write.
//! Every broken input must name the right field path and exit 1; the seed
//! policies in envoy-configs/istio/policies/ must pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{run, run_ok, Scratch};

const FILTERS: [&str; 5] = ["jwt_authn", "authz", "local_ratelimit", "fault", "canary"];

#[test]
fn seed_policies_pass_and_print_the_plugin_config() {
    for f in FILTERS {
        let file = format!("envoy-configs/istio/policies/{f}.yaml");
        let (code, out, err) = run(&["check", f, &file, "--print"]);
        assert_eq!(code, 0, "{f}: {err}");
        assert!(err.contains("ok"), "{f}: {err}");
        let config: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{f}: {e}: {out}"));
        assert!(config.is_object(), "{f}: {out}");
    }
}

#[test]
fn istio_objects_become_the_filter_configuration_shape() {
    let cfg = |f: &str| -> serde_json::Value {
        serde_json::from_str(&run_ok(&[
            "check",
            f,
            &format!("envoy-configs/istio/policies/{f}.yaml"),
            "--print",
        ]))
        .unwrap()
    };
    // RequestAuthentication → its spec's rules.
    let jwt = cfg("jwt_authn");
    assert_eq!(jwt["jwtRules"][0]["issuer"], "https://demo.meshwasm.dev");
    assert!(jwt.get("selector").is_none());
    // AuthorizationPolicy documents → {"policies": [objects]}.
    let authz = cfg("authz");
    let names: Vec<&str> = authz["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["frontend-only", "allow-healthz"]);
    // EnvoyFilter (TypedStruct) → the LocalRateLimit inside.
    let rl = cfg("local_ratelimit");
    assert_eq!(rl["token_bucket"]["max_tokens"], 100);
    assert_eq!(rl["token_bucket"]["fill_interval"], "60s");
    // VirtualService → fault keeps name/match/fault of every route; canary drops faults.
    let fault = cfg("fault");
    assert_eq!(fault["http"][0]["fault"]["abort"]["httpStatus"], 503);
    assert!(fault["http"][0].get("route").is_none());
    let canary = cfg("canary");
    assert_eq!(canary["http"][1]["route"][0]["weight"], 90);
    assert_eq!(canary["hosts"][0], "reviews.example.com");
}

/// (filter, file name, content, expected `location: path` prefix of the error line)
const BROKEN: &[(&str, &str, &str, &str)] = &[
    // Plugin configurations as the filters receive them.
    ("authz", "a.json", r#"{"policies": [{"metadata": {"name": "p"}, "spec": {"rules": [{"to": [{"operation": {"paths": ["/a", 7]}}]}]}}]}"#,
     "policies[0].spec.rules[0].to[0].operation.paths[1]: "),
    ("authz", "typo.yaml", "policies:\n- metadata: {name: p}\n  spec:\n    action: DENY\n    rules:\n    - to:\n      - operation:\n          pathz: [/admin]\n",
     "policies[0].spec.rules[0].to[0].operation.pathz: "),
    ("jwt_authn", "j.json", r#"{"jwtRules": [{"issuer": "a", "jwksUri": "https://a.example.com/jwks"}, {"issuer": "b", "jwksUri": "ftp://keys"}]}"#,
     "jwtRules[1].jwksUri: "),
    ("local_ratelimit", "r.yaml", "stat_prefix: x\ntoken_bucket:\n  max_tokens: 10\n  fill_interval: soon\n",
     "token_bucket.fill_interval: "),
    ("fault", "f.json", r#"{"http": [{"fault": {"abort": {"httpStatus": 99, "percentage": {"value": 5}}}}]}"#,
     "http[0].fault.abort.httpStatus: "),
    ("canary", "c.yaml", "hosts: [a.example.com]\nhttp:\n- route:\n  - destination: {host: a, subset: v1}\n    weight: 90\n  - destinaton: {host: a, subset: v2}\n    weight: 10\n",
     "http[0].route[1].destinaton: "),
    // Istio objects: the path is in the user's object, the location names it.
    ("authz", "objs.yaml",
     "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: ns}\nspec: {action: ALLOW, rules: [{}]}\n---\n\
      apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: ns}\nspec:\n  action: ALLOW\n  rules:\n  - when:\n    - key: request.headers\n      values: [x]\n",
     "document 2 (AuthorizationPolicy ns/bad): spec.rules[0].when[0].key: "),
    ("jwt_authn", "ra.yaml",
     "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: ra, namespace: ns}\nspec:\n  jwtRules:\n  - issuer: a\n    fromHeaders:\n    - {name: x-token, prefx: 'Bearer '}\n",
     "document 1 (RequestAuthentication ns/ra): spec.jwtRules[0].fromHeaders[0].prefx: "),
    ("fault", "vs.yaml",
     "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n  - fault:\n      delay: {fixedDelay: 5 seconds, percentage: {value: 10}}\n    route: [{destination: {host: a}}]\n",
     "document 1 (VirtualService vs): spec.http[1].fault.delay.fixedDelay: "),
    ("canary", "vs.yaml",
     "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: ns}\nspec:\n  hosts: [a]\n  http:\n  - match:\n    - headers: {x-canary: {exactt: always}}\n    route: [{destination: {host: a, subset: v2}}]\n",
     "document 1 (VirtualService ns/vs): spec.http[0].match[0].headers.x-canary.exactt: "),
    ("local_ratelimit", "ef.yaml",
     "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: rl, namespace: ns}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.http.local_ratelimit\n        typed_config:\n          '@type': type.googleapis.com/udpa.type.v1.TypedStruct\n          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n          value:\n            stat_prefix: rl\n            token_bucket: {max_tokens: 0, tokens_per_fill: 1, fill_interval: 1s}\n            statuss: {code: 429}\n",
     "document 1 (EnvoyFilter ns/rl): spec.configPatches[0].patch.value.typed_config.value.statuss: "),
    // Not the right kind of object at all.
    ("jwt_authn", "wrongkind.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {}\n",
     "<root>: no RequestAuthentication object in the file"),
];

#[test]
fn broken_inputs_name_the_field_path_and_exit_1() {
    let dir = Scratch::new("check");
    let mut failures = Vec::new();
    for (filter, name, content, expected) in BROKEN {
        let path = dir.path(name);
        std::fs::write(&path, content).unwrap();
        let (code, out, err) = run(&["check", filter, path.to_str().unwrap()]);
        let wanted = format!("{}: {expected}", path.display());
        if code != 1 || !err.lines().any(|l| l.starts_with(&wanted)) {
            failures.push(format!("{filter} {name}: exit {code}, expected a line starting with\n  {wanted}\ngot:\n{err}{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_broken_object_is_reported_not_just_the_first() {
    let dir = Scratch::new("check-many");
    let file = dir.path("many.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: one, namespace: ns}\nspec: {action: ALOW}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: two, namespace: ns}\nspec: {action: ALLOW, rules: [{from: [{source: {principals: ['']}}]}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: three, namespace: ns}\nspec: {action: ALLOW, rules: [{}]}\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", "authz", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("document 1 (AuthorizationPolicy ns/one): spec.action: "),
        "{err}"
    );
    assert!(
        err.contains(
            "document 2 (AuthorizationPolicy ns/two): spec.rules[0].from[0].source.principals"
        ),
        "{err}"
    );
    assert!(!err.contains("ns/three"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");
}

#[test]
fn unreadable_and_unparsable_files_exit_1() {
    let (code, _, err) = run(&["check", "authz", "/nonexistent/policy.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/policy.yaml"), "{err}");
    let dir = Scratch::new("check-yaml");
    let file = dir.path("bad.yaml");
    std::fs::write(&file, "policies: [unclosed\n").unwrap();
    let (code, _, err) = run(&["check", "authz", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml"), "{err}");
}

#[test]
fn fault_on_a_virtualservice_host_warns_when_the_route_is_not_scoped() {
    let dir = Scratch::new("check-hosts");
    let file = dir.path("vs.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: ns}\nspec:\n  hosts: [a.example.com]\n  http:\n  - fault: {abort: {httpStatus: 503, percentage: {value: 5}}}\n    route: [{destination: {host: a}}]\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", "fault", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("do not scope the fault filter"), "{err}");
    // The seed scopes its route with an authority match: no warning.
    let (code, _, err) = run(&["check", "fault", "envoy-configs/istio/policies/fault.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("do not scope"), "{err}");
}
