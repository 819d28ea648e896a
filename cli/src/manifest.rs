//! WasmPlugin, TrafficExtension and EnvoyFilter manifests for a filter and its plugin
//! configuration.

use serde_json::{json, Map, Value};

use crate::filter::{FailStrategy, Filter, Phase};
use crate::CliError;

/// What a rendering needs besides the plugin configuration.
#[derive(Debug, Clone)]
pub struct Placement {
    pub filter: Filter,
    /// Object name (default `meshwasm-<filter>`).
    pub name: String,
    pub namespace: String,
    /// Workload labels (default `istio=ingressgateway`).
    pub selector: Vec<(String, String)>,
    /// `oci://host/repo:tag`, `https://...`, `file://...`.
    pub url: String,
    /// Manifest digest (oci) or module sha256 (http), 64 hex digits.
    pub sha256: Option<String>,
    pub phase: Phase,
    pub priority: Option<i32>,
    pub fail_strategy: FailStrategy,
    pub pull_policy: Option<String>,
    pub pull_secret: Option<String>,
}

/// An image reference as WasmPlugin wants it: `oci://` added when no scheme,
/// and the `@sha256:` digest (if any) also returned for the `sha256` field
/// (Istio requires the two to agree).
pub fn normalize_url(image: &str) -> (String, Option<String>) {
    let url = if image.contains("://") {
        image.to_string()
    } else {
        format!("oci://{image}")
    };
    let digest = url.rsplit_once("@sha256:").map(|(_, d)| d.to_string());
    (url, digest)
}

pub fn check_sha256(s: &str) -> Result<String, CliError> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(hex.to_string())
    } else {
        Err(CliError::Usage(format!(
            "--sha256 {s:?}: expected 64 lowercase hex digits (optionally after sha256:)"
        )))
    }
}

fn metadata(p: &Placement) -> Value {
    json!({
        "name": p.name,
        "namespace": p.namespace,
        "labels": { "app.kubernetes.io/part-of": "meshwasm", "meshwasm.dev/filter": p.filter.name() },
    })
}

fn labels(p: &Placement) -> Value {
    let mut m = Map::new();
    for (k, v) in &p.selector {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    Value::Object(m)
}

/// `extensions.istio.io/v1alpha1` WasmPlugin carrying `config` as pluginConfig.
pub fn wasmplugin(p: &Placement, config: &Value) -> Value {
    let mut spec = Map::new();
    if !p.selector.is_empty() {
        spec.insert("selector".into(), json!({ "matchLabels": labels(p) }));
    }
    spec.insert("url".into(), Value::String(p.url.clone()));
    if let Some(sha) = &p.sha256 {
        spec.insert("sha256".into(), Value::String(sha.clone()));
    }
    if let Some(policy) = &p.pull_policy {
        spec.insert("imagePullPolicy".into(), Value::String(policy.clone()));
    }
    if let Some(secret) = &p.pull_secret {
        spec.insert("imagePullSecret".into(), Value::String(secret.clone()));
    }
    spec.insert("phase".into(), Value::String(p.phase.as_str().into()));
    if let Some(prio) = p.priority {
        spec.insert("priority".into(), Value::from(prio));
    }
    spec.insert(
        "failStrategy".into(),
        Value::String(p.fail_strategy.as_str().into()),
    );
    spec.insert("pluginName".into(), Value::String(p.filter.name().into()));
    spec.insert("type".into(), Value::String("HTTP".into()));
    spec.insert("pluginConfig".into(), config.clone());
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata(p),
        "spec": spec,
    })
}

/// `extensions.istio.io/v1alpha1` TrafficExtension, the API that supersedes
/// WasmPlugin: placement (`selector`, `phase`, `priority`) on the spec, the module
/// and its `pluginConfig` under `wasm`. The fields carry the values `wasmplugin`
/// writes, except the phase's name: TrafficExtension's unspecified phase is
/// `UNSPECIFIED` (WasmPlugin's is `UNSPECIFIED_PHASE`).
pub fn trafficextension(p: &Placement, config: &Value) -> Value {
    let mut wasm = Map::new();
    wasm.insert("url".into(), Value::String(p.url.clone()));
    if let Some(sha) = &p.sha256 {
        wasm.insert("sha256".into(), Value::String(sha.clone()));
    }
    if let Some(policy) = &p.pull_policy {
        wasm.insert("imagePullPolicy".into(), Value::String(policy.clone()));
    }
    if let Some(secret) = &p.pull_secret {
        wasm.insert("imagePullSecret".into(), Value::String(secret.clone()));
    }
    wasm.insert(
        "failStrategy".into(),
        Value::String(p.fail_strategy.as_str().into()),
    );
    wasm.insert("pluginName".into(), Value::String(p.filter.name().into()));
    wasm.insert("type".into(), Value::String("HTTP".into()));
    wasm.insert("pluginConfig".into(), config.clone());
    let mut spec = Map::new();
    if !p.selector.is_empty() {
        spec.insert("selector".into(), json!({ "matchLabels": labels(p) }));
    }
    spec.insert(
        "phase".into(),
        Value::String(p.phase.execution_phase().into()),
    );
    if let Some(prio) = p.priority {
        spec.insert("priority".into(), Value::from(prio));
    }
    spec.insert("wasm".into(), Value::Object(wasm));
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": metadata(p),
        "spec": spec,
    })
}

/// Where the filter goes in the HTTP filter chain when an EnvoyFilter places
/// it. WasmPlugin phases are relative to Istio's own filters (jwt_authn, rbac),
/// which exist only when such policies apply; the router always exists, so:
/// AUTHN first in the chain, every other phase right before the router, and the
/// EnvoyFilter `priority` orders the patches (lower applies first, so AUTHZ
/// filters end up before UNSPECIFIED ones).
fn envoyfilter_position(phase: Phase) -> (Value, i32) {
    let router = json!({
        "filterChain": { "filter": {
            "name": "envoy.filters.network.http_connection_manager",
            "subFilter": { "name": "envoy.filters.http.router" },
        }},
    });
    let hcm = json!({
        "filterChain": { "filter": { "name": "envoy.filters.network.http_connection_manager" } },
    });
    match phase {
        Phase::Authn => (json!({ "operation": "INSERT_FIRST", "listener": hcm }), 0),
        Phase::Authz => (
            json!({ "operation": "INSERT_BEFORE", "listener": router }),
            10,
        ),
        Phase::Stats => (
            json!({ "operation": "INSERT_BEFORE", "listener": router }),
            20,
        ),
        Phase::Unspecified => (
            json!({ "operation": "INSERT_BEFORE", "listener": router }),
            30,
        ),
    }
}

/// `networking.istio.io/v1alpha3` EnvoyFilter: an EXTENSION_CONFIG patch with the
/// Wasm filter (its module fetched by istio-agent, as for a WasmPlugin: the
/// agent rewrites remote code in ECDS), and an HTTP_FILTER patch that puts a
/// filter reading that config through ECDS into the chain.
pub fn envoyfilter(p: &Placement, config: &Value, context: &str) -> Value {
    let filter_name = format!("{}.{}", p.namespace, p.name);
    let code = if let Some(path) = p.url.strip_prefix("file://") {
        json!({ "local": { "filename": path } })
    } else {
        let mut remote = Map::new();
        remote.insert(
            "http_uri".into(),
            json!({ "uri": p.url, "cluster": "meshwasm-unused", "timeout": "30s" }),
        );
        if let Some(sha) = &p.sha256 {
            remote.insert("sha256".into(), Value::String(sha.clone()));
        }
        json!({ "remote": remote })
    };
    let wasm = json!({
        "name": filter_name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": filter_name,
                "root_id": p.filter.name(),
                "vm_config": {
                    "vm_id": filter_name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": code,
                },
                "failure_policy": p.fail_strategy.envoy_failure_policy(),
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string(),
                },
            },
        },
    });
    let (position, priority) = envoyfilter_position(p.phase);
    let mut match_ = Map::new();
    match_.insert("context".into(), Value::String(context.to_string()));
    if let Some(l) = position.get("listener") {
        match_.insert("listener".into(), l.clone());
    }
    let operation = position.get("operation").cloned().unwrap_or(Value::Null);
    let mut spec = Map::new();
    if !p.selector.is_empty() {
        spec.insert("workloadSelector".into(), json!({ "labels": labels(p) }));
    }
    spec.insert(
        "priority".into(),
        Value::from(p.priority.unwrap_or(priority)),
    );
    spec.insert(
        "configPatches".into(),
        json!([
            {
                "applyTo": "EXTENSION_CONFIG",
                "patch": { "operation": "ADD", "value": wasm },
            },
            {
                "applyTo": "HTTP_FILTER",
                "match": match_,
                "patch": {
                    "operation": operation,
                    "value": {
                        "name": filter_name,
                        "config_discovery": {
                            "config_source": { "ads": {}, "initial_fetch_timeout": "0s" },
                            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
                        },
                    },
                },
            },
        ]),
    );
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata(p),
        "spec": spec,
    })
}

/// Several objects as one multi-document YAML.
pub fn to_yaml(objects: &[Value]) -> Result<String, CliError> {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_yaml_ng::to_string(o).map_err(|e| CliError::Internal(format!("yaml: {e}")))?,
        );
    }
    Ok(out)
}
