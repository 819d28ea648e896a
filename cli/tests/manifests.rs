//! Every manifest in envoy-configs/istio/ and every one `meshwasm wasmplugin` /
//! `meshwasm trafficextension` / `meshwasm envoyfilter` renders validates against
//! Istio's CRD schema, checked the way `kubectl apply --validate=strict` does: the
//! openAPIV3Schema, plus no field the schema does not know (structural schemas prune
//! those silently), plus the CEL rules that matter here (url scheme; one of
//! selector/targetRef(s); for TrafficExtension, exactly one of wasm/lua).
//!
//! The CRDs (WasmPlugin and EnvoyFilter, and VirtualService, AuthorizationPolicy and
//! RequestAuthentication for the seed policies in policies/) are copied verbatim from
//! istio/api into tests/data, so every check runs from a bare clone. TrafficExtension's
//! schema (tests/data/trafficextension-crd.yaml) is not a copy: it is our own
//! transcription of the fields istio/api documents for it (see that file's header).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::{repo_root, run, run_ok, Scratch};
use serde_json::{json, Value};

const FILTERS: [&str; 5] = ["jwt_authn", "authz", "local_ratelimit", "fault", "canary"];

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn crd_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/istio-crds.yaml")
}

/// kind → (apiVersion group/version list, openAPIV3Schema per version)
fn schemas(file: &Path) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for crd in yaml_docs(&std::fs::read_to_string(file).unwrap()) {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        let group = crd["spec"]["group"].as_str().unwrap().to_string();
        for v in crd["spec"]["versions"].as_array().unwrap() {
            let api = format!("{group}/{}", v["name"].as_str().unwrap());
            out.push((kind.clone(), api, v["schema"]["openAPIV3Schema"].clone()));
        }
    }
    out
}

/// Kubernetes' strict field validation: an object schema with `properties`
/// knows all its fields unless it preserves unknown ones.
fn strict(schema: &mut Value) {
    if let Some(obj) = schema.as_object_mut() {
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if obj.contains_key("properties") && !preserve && !obj.contains_key("additionalProperties")
        {
            obj.insert("additionalProperties".into(), Value::Bool(false));
        }
        for (_, v) in obj.iter_mut() {
            strict(v);
        }
    } else if let Some(arr) = schema.as_array_mut() {
        arr.iter_mut().for_each(strict);
    }
}

/// Validates one object against its CRD; returns every error.
fn validate(object: &Value, crds: &[(String, String, Value)]) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or("");
    let api = object["apiVersion"].as_str().unwrap_or("");
    let Some((_, _, schema)) = crds.iter().find(|(k, a, _)| k == kind && a == api) else {
        return vec![format!("no CRD schema for {api} {kind}")];
    };
    let mut schema = schema.clone();
    // The API server adds these to every CRD's schema.
    schema["properties"]["apiVersion"] = json!({"type": "string"});
    schema["properties"]["kind"] = json!({"type": "string"});
    schema["properties"]["metadata"] = json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", "maxLength": 253},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    });
    strict(&mut schema);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    let spec = &object["spec"];
    let url_rule = |url_path: &str, url: &Value, errors: &mut Vec<String>| {
        let url = url.as_str().unwrap_or("");
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !["", "http", "https", "oci", "file"].contains(&scheme) {
            errors.push(format!(
                "{url_path}: url must have schema one of [http, https, file, oci]: {url}"
            ));
        }
    };
    let one_target = |fields: &[&str], errors: &mut Vec<String>| {
        let set = fields.iter().filter(|k| spec.get(**k).is_some()).count();
        if set > 1 {
            errors.push("/spec: only one of targetRefs or selector can be set".into());
        }
    };
    if kind == "WasmPlugin" {
        url_rule("/spec/url", &spec["url"], &mut errors);
        one_target(&["selector", "targetRef", "targetRefs"], &mut errors);
    }
    if kind == "TrafficExtension" {
        if spec.get("wasm").is_some() {
            url_rule("/spec/wasm/url", &spec["wasm"]["url"], &mut errors);
        }
        one_target(&["selector", "targetRefs"], &mut errors);
        if spec.get("wasm").is_some() == spec.get("lua").is_some() {
            errors.push("/spec: exactly one of wasm or lua must be set".into());
        }
    }
    errors
}

fn crds() -> Vec<(String, String, Value)> {
    schemas(&crd_file())
}

/// The TrafficExtension schema: our own transcription of istio/api's
/// traffic_extension.proto (see the header of tests/data/trafficextension-crd.yaml).
fn trafficextension_crd() -> Vec<(String, String, Value)> {
    schemas(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/trafficextension-crd.yaml"))
}

#[test]
fn the_crd_copy_has_every_kind_checked() {
    let kinds: std::collections::BTreeSet<String> =
        crds().into_iter().map(|(kind, _, _)| kind).collect();
    for kind in [
        "WasmPlugin",
        "EnvoyFilter",
        "VirtualService",
        "AuthorizationPolicy",
        "RequestAuthentication",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {:?}", crd_file());
    }
}

#[test]
fn the_validator_catches_broken_manifests() {
    let crds = crds();
    let good = json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "x", "namespace": "istio-system"},
        "spec": {"url": "oci://r/x:1", "phase": "AUTHN", "pluginConfig": {"any": ["thing"]}},
    });
    assert_eq!(validate(&good, &crds), Vec::<String>::new());
    let cases = [
        ("/spec/phase", json!({"phase": "AUTHENTICATION"})),
        ("/spec", json!({"urll": "oci://r/x:1"})),
        ("/spec/sha256", json!({"sha256": "sha256:abc"})),
        ("/spec/url", json!({"url": "ftp://r/x"})),
        ("/spec/failStrategy", json!({"failStrategy": "FAIL_CLOSED"})),
        (
            "/spec",
            json!({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Gateway", "name": "g"}]}),
        ),
    ];
    for (path, patch) in cases {
        let mut bad = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            bad["spec"][k] = v.clone();
        }
        let errors = validate(&bad, &crds);
        assert!(
            errors.iter().any(|e| e.starts_with(path)),
            "{patch}: expected an error at {path}, got {errors:?}"
        );
    }
    let mut bad_meta = good.clone();
    bad_meta["metadata"]["name"] = json!("meshwasm_jwt");
    assert!(!validate(&bad_meta, &crds).is_empty());
}

#[test]
fn committed_manifests_validate() {
    let mut crds = crds();
    crds.extend(trafficextension_crd());
    let dir = repo_root().join("envoy-configs/istio");
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in [dir.clone(), dir.join("policies")] {
        for e in std::fs::read_dir(&sub).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut seen_kinds = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for f in &files {
        for doc in yaml_docs(&std::fs::read_to_string(f).unwrap()) {
            *seen_kinds
                .entry(doc["kind"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
            for e in validate(&doc, &crds) {
                failures.push(format!(
                    "{}: {} {}: {e}",
                    f.display(),
                    doc["kind"],
                    doc["metadata"]["name"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(seen_kinds.get("WasmPlugin"), Some(&5), "{seen_kinds:?}");
    assert_eq!(
        seen_kinds.get("TrafficExtension"),
        Some(&5),
        "{seen_kinds:?}"
    );
    assert!(
        seen_kinds.get("EnvoyFilter").copied().unwrap_or(0) >= 5,
        "{seen_kinds:?}"
    );
    for kind in [
        "VirtualService",
        "AuthorizationPolicy",
        "RequestAuthentication",
    ] {
        assert!(seen_kinds.contains_key(kind), "{kind}: {seen_kinds:?}");
    }
}

fn render(kind: &str, filter: &str, extra: &[&str]) -> String {
    let file = format!("envoy-configs/istio/policies/{filter}.yaml");
    let image = format!("registry.example.com/meshwasm/{filter}:0.1.0");
    let mut args = vec![kind, filter, "-f", &file, "--image", &image];
    args.extend_from_slice(extra);
    run_ok(&args)
}

#[test]
fn rendered_manifests_validate_and_carry_the_defaults() {
    let crds = crds();
    for f in FILTERS {
        let variants: [&[&str]; 3] = [
            &[],
            &[
                "--selector",
                "app=web",
                "--selector",
                "version=v1",
                "--priority",
                "10",
                "-n",
                "web",
            ],
            &[
                "--sha256",
                "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "--no-selector",
                "--image-pull-policy",
                "Always",
            ],
        ];
        for extra in variants {
            for kind in ["wasmplugin", "envoyfilter"] {
                let yaml = render(kind, f, extra);
                let docs = yaml_docs(&yaml);
                assert_eq!(docs.len(), 1, "{kind} {f}: {yaml}");
                let errors = validate(&docs[0], &crds);
                assert!(
                    errors.is_empty(),
                    "{kind} {f} {extra:?}: {errors:?}\n{yaml}"
                );
            }
        }
        let wp = &yaml_docs(&render("wasmplugin", f, &[]))[0];
        let spec = &wp["spec"];
        let (phase, fail) = match f {
            "jwt_authn" => ("AUTHN", "FAIL_CLOSE"),
            "authz" => ("AUTHZ", "FAIL_CLOSE"),
            "local_ratelimit" => ("AUTHZ", "FAIL_OPEN"),
            _ => ("UNSPECIFIED_PHASE", "FAIL_OPEN"),
        };
        assert_eq!(spec["phase"], phase, "{f}");
        assert_eq!(spec["failStrategy"], fail, "{f}");
        assert_eq!(
            spec["url"],
            format!("oci://registry.example.com/meshwasm/{f}:0.1.0")
        );
        assert_eq!(spec["selector"]["matchLabels"]["istio"], "ingressgateway");
        assert_eq!(spec["pluginName"], f);
        // pluginConfig is what `check --print` says the filter receives.
        let printed: Value = serde_json::from_str(&run_ok(&[
            "check",
            f,
            &format!("envoy-configs/istio/policies/{f}.yaml"),
            "--print",
        ]))
        .unwrap();
        assert_eq!(spec["pluginConfig"], printed, "{f}");
        // The EnvoyFilter carries the same configuration as the StringValue JSON.
        let ef = &yaml_docs(&render("envoyfilter", f, &[]))[0];
        let wasm = &ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"];
        let value: Value =
            serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(value, printed, "{f}");
        assert_eq!(wasm["root_id"], f);
    }
}

#[test]
fn digest_in_the_image_reference_becomes_sha256() {
    let digest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let image = format!("registry.example.com/meshwasm/authz@sha256:{digest}");
    let yaml = run_ok(&[
        "wasmplugin",
        "authz",
        "-f",
        "envoy-configs/istio/policies/authz.yaml",
        "--image",
        &image,
    ]);
    let wp = &yaml_docs(&yaml)[0];
    assert_eq!(wp["spec"]["sha256"], digest);
    assert_eq!(wp["spec"]["url"], format!("oci://{image}"));
    // A --sha256 that disagrees with the reference is refused (Istio would too).
    let (code, _, err) = run(&[
        "wasmplugin",
        "authz",
        "-f",
        "envoy-configs/istio/policies/authz.yaml",
        "--image",
        &image,
        "--sha256",
        &"f".repeat(64),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("differs"), "{err}");
}

#[test]
fn invalid_policies_are_not_rendered() {
    let dir = Scratch::new("render-bad");
    let file = dir.path("bad.yaml");
    std::fs::write(&file, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: y}\nspec: {action: NOPE}\n").unwrap();
    let (code, out, err) = run(&[
        "wasmplugin",
        "authz",
        "-f",
        file.to_str().unwrap(),
        "--image",
        "r/x:1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("spec.action"), "{err}");
}

/// The committed manifests are what the CLI renders from the committed policies
/// (regenerate them with the command in each file's header).
#[test]
fn committed_manifests_are_up_to_date() {
    let dir = repo_root().join("envoy-configs/istio");
    for f in FILTERS {
        for kind in ["wasmplugin", "trafficextension", "envoyfilter"] {
            let path = dir.join(format!("{kind}-{f}.yaml"));
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let body: String = committed
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            let rendered = render(kind, f, &[]);
            assert_eq!(
                body,
                rendered,
                "{} is stale: re-render it (see its header)",
                path.display()
            );
        }
    }
}

#[test]
fn the_validator_catches_broken_trafficextensions() {
    let crds = trafficextension_crd();
    assert_eq!(crds.len(), 1, "TrafficExtension v1alpha1");
    let good = json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
        "metadata": {"name": "x", "namespace": "istio-system"},
        "spec": {"phase": "AUTHN", "priority": 3,
                 "wasm": {"url": "oci://r/x:1", "failStrategy": "FAIL_CLOSE", "pluginConfig": {"any": ["thing"]}}},
    });
    assert_eq!(validate(&good, &crds), Vec::<String>::new());
    let lua = json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
        "metadata": {"name": "x"},
        "spec": {"lua": {"inlineCode": "function envoy_on_request(h) end"}},
    });
    assert_eq!(validate(&lua, &crds), Vec::<String>::new());
    let cases = [
        // WasmPlugin's name for the unspecified phase is not TrafficExtension's.
        ("/spec/phase", json!({"phase": "UNSPECIFIED_PHASE"})),
        // The module's fields live under wasm, not on the spec.
        ("/spec", json!({"url": "oci://r/x:1"})),
        (
            "/spec/wasm/sha256",
            json!({"wasm": {"url": "oci://r/x:1", "sha256": "sha256:abc"}}),
        ),
        ("/spec/wasm/url", json!({"wasm": {"url": "ftp://r/x"}})),
        ("/spec/wasm", json!({"wasm": {"pluginName": "x"}})),
        (
            "/spec/wasm/failStrategy",
            json!({"wasm": {"url": "r/x", "failStrategy": "FAIL_CLOSED"}}),
        ),
        ("/spec/wasm", json!({"wasm": {"url": "r/x", "rootId": "x"}})),
        ("/spec", json!({"lua": {"inlineCode": "x"}})),
        (
            "/spec",
            json!({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Gateway", "name": "g"}]}),
        ),
    ];
    for (path, patch) in cases {
        let mut bad = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            bad["spec"][k] = v.clone();
        }
        let errors = validate(&bad, &crds);
        assert!(
            errors.iter().any(|e| e.starts_with(path)),
            "{patch}: expected an error at {path}, got {errors:?}"
        );
    }
    let mut neither = good.clone();
    neither["spec"].as_object_mut().unwrap().remove("wasm");
    assert!(
        validate(&neither, &crds)
            .iter()
            .any(|e| e.contains("exactly one of wasm or lua")),
        "{:?}",
        validate(&neither, &crds)
    );
}

/// `meshwasm trafficextension` takes `wasmplugin`'s options: every rendering
/// validates, and carries the WasmPlugin's plugin configuration and settings.
#[test]
fn rendered_trafficextensions_validate_and_match_the_wasmplugin() {
    let crds = trafficextension_crd();
    let variants: [&[&str]; 4] = [
        &[],
        &[
            "--selector",
            "app=web",
            "--selector",
            "version=v1",
            "--priority",
            "10",
            "-n",
            "web",
            "--name",
            "web-policy",
        ],
        &[
            "--sha256",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "--no-selector",
            "--image-pull-policy",
            "Always",
            "--image-pull-secret",
            "pull-secret",
        ],
        &[
            "--phase",
            "STATS",
            "--fail-strategy",
            "FAIL_RELOAD",
            "--priority=-5",
        ],
    ];
    for f in FILTERS {
        for extra in variants {
            let te_yaml = render("trafficextension", f, extra);
            let te = yaml_docs(&te_yaml);
            assert_eq!(te.len(), 1, "{f} {extra:?}: {te_yaml}");
            let te = &te[0];
            let errors = validate(te, &crds);
            assert!(errors.is_empty(), "{f} {extra:?}: {errors:?}\n{te_yaml}");
            let wp = &yaml_docs(&render("wasmplugin", f, extra))[0];
            let (ts, ws) = (&te["spec"], &wp["spec"]);
            let w = &ts["wasm"];
            assert_eq!(te["metadata"], wp["metadata"], "{f} {extra:?}");
            assert_eq!(w["pluginConfig"], ws["pluginConfig"], "{f} {extra:?}");
            for k in [
                "url",
                "sha256",
                "imagePullPolicy",
                "imagePullSecret",
                "failStrategy",
                "pluginName",
                "type",
            ] {
                assert_eq!(w.get(k), ws.get(k), "{f} {extra:?}: wasm.{k}");
            }
            for k in ["selector", "priority"] {
                assert_eq!(ts.get(k), ws.get(k), "{f} {extra:?}: {k}");
            }
            let phase = match ws["phase"].as_str().unwrap() {
                "UNSPECIFIED_PHASE" => "UNSPECIFIED",
                p => p,
            };
            assert_eq!(ts["phase"], phase, "{f} {extra:?}");
            let keys: Vec<&String> = ts.as_object().unwrap().keys().collect();
            assert!(
                keys.iter()
                    .all(|k| ["selector", "phase", "priority", "wasm"].contains(&k.as_str())),
                "{f} {extra:?}: {keys:?}"
            );
        }
        // The default phase and failure strategy are the WasmPlugin's.
        let te = &yaml_docs(&render("trafficextension", f, &[]))[0];
        let (phase, fail) = match f {
            "jwt_authn" => ("AUTHN", "FAIL_CLOSE"),
            "authz" => ("AUTHZ", "FAIL_CLOSE"),
            "local_ratelimit" => ("AUTHZ", "FAIL_OPEN"),
            _ => ("UNSPECIFIED", "FAIL_OPEN"),
        };
        assert_eq!(te["spec"]["phase"], phase, "{f}");
        assert_eq!(te["spec"]["wasm"]["failStrategy"], fail, "{f}");
    }
}

/// Several Istio objects in one file make one TrafficExtension each, named as the
/// WasmPlugins are; an invalid policy renders nothing.
#[test]
fn trafficextension_per_object_and_refusals() {
    let dir = Scratch::new("te-many");
    let file = dir.path("two.yaml");
    let vs = |name: &str, header: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: web}}\n\
             spec:\n  hosts: [web.example.com]\n  http:\n  - match: [{{headers: {{{header}: {{exact: \"1\"}}}}}}]\n    \
             fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}\n    route: [{{destination: {{host: web}}}}]\n"
        )
    };
    std::fs::write(
        &file,
        format!("{}---\n{}", vs("one", "x-one"), vs("two", "x-two")),
    )
    .unwrap();
    let args = |kind: &'static str| {
        vec![
            kind.to_string(),
            "fault".into(),
            "-f".into(),
            dir.s("two.yaml"),
            "--image".into(),
            "r/x:1".into(),
        ]
    };
    let te_args = args("trafficextension");
    let te_args: Vec<&str> = te_args.iter().map(String::as_str).collect();
    let wp_args = args("wasmplugin");
    let wp_args: Vec<&str> = wp_args.iter().map(String::as_str).collect();
    let te = yaml_docs(&run_ok(&te_args));
    let wp = yaml_docs(&run_ok(&wp_args));
    assert_eq!(te.len(), 2);
    let crds = trafficextension_crd();
    for (t, w) in te.iter().zip(&wp) {
        assert_eq!(validate(t, &crds), Vec::<String>::new());
        assert_eq!(t["metadata"]["name"], w["metadata"]["name"]);
        assert_eq!(t["spec"]["wasm"]["pluginConfig"], w["spec"]["pluginConfig"]);
    }
    std::fs::write(dir.path("bad.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: y}\nspec: {action: NOPE}\n").unwrap();
    let (code, out, err) = run(&[
        "trafficextension",
        "authz",
        "-f",
        &dir.s("bad.yaml"),
        "--image",
        "r/x:1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("spec.action"), "{err}");
}
