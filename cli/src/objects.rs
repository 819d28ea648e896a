//! Reading what users have (a plugin configuration, or the Istio objects
//! themselves in a multi-document YAML) and turning it into the configuration a
//! filter receives, remembering where each piece came from so that an error
//! found by the filter's parser points at the user's own file.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::filter::Filter;
use crate::CliError;

/// One YAML/JSON document of the input file.
#[derive(Debug, Clone)]
pub struct Doc {
    /// 1-based position in the file (the n-th document, or the n-th `List` item).
    pub index: usize,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> Option<&str> {
        self.value.get("kind").and_then(Value::as_str)
    }

    /// A Kubernetes object has both `apiVersion` and `kind`.
    pub fn is_object(&self) -> bool {
        self.value.get("apiVersion").is_some() && self.kind().is_some()
    }

    fn meta(&self, key: &str) -> Option<&str> {
        self.value
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
    }

    /// `document 2 (AuthorizationPolicy foo/allow-frontend)`.
    pub fn label(&self) -> String {
        match self.kind() {
            Some(kind) if self.is_object() => {
                let name = self.meta("name").unwrap_or("<unnamed>");
                match self.meta("namespace") {
                    Some(ns) => format!("document {} ({kind} {ns}/{name})", self.index),
                    None => format!("document {} ({kind} {name})", self.index),
                }
            }
            _ => format!("document {}", self.index),
        }
    }
}

/// Reads every document of a JSON or YAML file; a `kind: List` is unrolled.
pub fn read_docs(path: &Path) -> Result<Vec<Doc>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))?;
    parse_docs(&text, path.extension().is_some_and(|e| e == "json")).map_err(|reason| {
        CliError::Parse {
            file: path.display().to_string(),
            reason,
        }
    })
}

pub fn parse_docs(text: &str, json_file: bool) -> Result<Vec<Doc>, String> {
    let mut values = Vec::new();
    if json_file {
        values.push(serde_json::from_str::<Value>(text).map_err(|e| e.to_string())?);
    } else {
        for (n, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(de).map_err(|e| format!("document {}: {e}", n + 1))?;
            values.push(v);
        }
    }
    let mut docs = Vec::new();
    for v in values {
        if v.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let is_list = v.get("kind").and_then(Value::as_str) == Some("List");
        match v {
            Value::Object(ref m) if is_list => {
                for item in m
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    docs.push(Doc {
                        index: docs.len() + 1,
                        value: item.clone(),
                    });
                }
            }
            other => docs.push(Doc {
                index: docs.len() + 1,
                value: other,
            }),
        }
    }
    if docs.is_empty() {
        return Err("no document in the file".to_string());
    }
    Ok(docs)
}

/// One error, located in the user's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `document 2 (AuthorizationPolicy ns/name)`, or empty for a lone plugin config.
    pub location: String,
    /// The field path inside that document (`spec.rules[0].to[0].operation.paths[1]`).
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "<root>"
        } else {
            &self.path
        };
        if self.location.is_empty() {
            write!(f, "{path}: {}", self.reason)
        } else {
            write!(f, "{}: {path}: {}", self.location, self.reason)
        }
    }
}

/// A piece of the plugin configuration: from which document, at which path in
/// that document, and where it sits in the plugin configuration.
#[derive(Debug, Clone)]
struct Origin {
    location: String,
    /// Prefix in the plugin configuration (`policies[3]`, `jwtRules[2]`, or "").
    config_prefix: String,
    /// The same place in the user's document (`` for the object, `spec.jwtRules[0]`).
    doc_prefix: String,
}

/// A plugin configuration built from the input, with its origins.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub config: Value,
    origins: Vec<Origin>,
    /// Things worth telling that are not errors (ignored documents...).
    pub notes: Vec<String>,
}

impl Assembled {
    fn single(config: Value, location: String, doc_prefix: &str) -> Self {
        Assembled {
            config,
            origins: vec![Origin {
                location,
                config_prefix: String::new(),
                doc_prefix: doc_prefix.to_string(),
            }],
            notes: Vec::new(),
        }
    }

    /// Maps a path reported by the filter's parser back into the user's document.
    fn locate(&self, path: &str, reason: &str) -> Finding {
        // Longest matching prefix wins (`policies[1]` vs `policies[10]` are
        // told apart by requiring a `.`/`[` or the end after the prefix).
        let mut best: Option<&Origin> = None;
        for o in &self.origins {
            let p = &o.config_prefix;
            let matches = p.is_empty()
                || path == p
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['));
            if matches && best.is_none_or(|b| b.config_prefix.len() < p.len()) {
                best = Some(o);
            }
        }
        match best {
            Some(o) => {
                let rest = path[o.config_prefix.len()..].trim_start_matches('.');
                let path = join_path(&o.doc_prefix, rest);
                Finding {
                    location: o.location.clone(),
                    path,
                    reason: reason.to_string(),
                }
            }
            None => Finding {
                location: "plugin configuration".to_string(),
                path: path.to_string(),
                reason: reason.to_string(),
            },
        }
    }

    /// Runs the filter's own parser on the assembled configuration.
    pub fn validate(&self, filter: Filter) -> Result<(), Finding> {
        let bytes = self.config.to_string();
        filter
            .validate(bytes.as_bytes())
            .map_err(|e| self.locate(e.path.as_str(), &e.reason))
    }
}

fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// What `check` reports: every error found, and the configuration when valid.
pub struct CheckReport {
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
    /// One plugin configuration per WasmPlugin to render (VirtualServices and
    /// rate-limit EnvoyFilters give one each).
    pub configs: Vec<(String, Value)>,
}

/// Checks the documents of one file for `filter` and assembles its plugin
/// configuration(s). Each Istio object is first checked on its own (so every
/// object's error is reported), then the combination the filter receives.
pub fn check(filter: Filter, docs: &[Doc]) -> CheckReport {
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let mut configs = Vec::new();

    if !docs.iter().any(Doc::is_object) {
        // A plugin configuration as the filter receives it.
        if docs.len() > 1 {
            findings.push(Finding {
                location: String::new(),
                path: String::new(),
                reason: format!(
                    "{} documents without apiVersion/kind: expected one plugin configuration or Istio {} objects",
                    docs.len(),
                    filter.istio_kind()
                ),
            });
            return CheckReport {
                findings,
                notes,
                configs,
            };
        }
        let a = Assembled::single(docs[0].value.clone(), String::new(), "");
        match a.validate(filter) {
            Ok(()) => configs.push((String::new(), a.config)),
            Err(f) => findings.push(f),
        }
        return CheckReport {
            findings,
            notes,
            configs,
        };
    }

    let wanted = filter.istio_kind();
    let mut relevant = Vec::new();
    for d in docs {
        if d.kind() == Some(wanted) {
            relevant.push(d);
        } else {
            notes.push(format!(
                "{}: ignored (the {filter} filter takes {wanted} objects)",
                d.label()
            ));
        }
    }
    if relevant.is_empty() {
        findings.push(Finding {
            location: String::new(),
            path: String::new(),
            reason: format!("no {wanted} object in the file (the {filter} filter takes {wanted})"),
        });
        return CheckReport {
            findings,
            notes,
            configs,
        };
    }

    match filter {
        Filter::JwtAuthn | Filter::Authz => {
            // Every object on its own, then all of them as one configuration
            // (istiod merges every policy that applies to a workload).
            let mut parts = Vec::new();
            for d in &relevant {
                let part = if filter == Filter::JwtAuthn {
                    jwt_part(d)
                } else {
                    authz_part(d)
                };
                match part.validate(filter) {
                    Ok(()) => parts.push(part),
                    Err(f) => findings.push(f),
                }
            }
            if findings.is_empty() {
                let merged = if filter == Filter::JwtAuthn {
                    merge_jwt(&parts)
                } else {
                    merge_authz(&parts)
                };
                match merged.validate(filter) {
                    Ok(()) => configs.push((String::new(), merged.config)),
                    Err(f) => findings.push(f),
                }
            }
        }
        Filter::Fault | Filter::Canary => {
            for d in &relevant {
                let a = if filter == Filter::Fault {
                    fault_part(d)
                } else {
                    canary_part(d)
                };
                match a {
                    Ok(a) => match a.validate(filter) {
                        Ok(()) => {
                            notes.extend(a.notes.iter().cloned());
                            configs.push((name_of(d), a.config));
                        }
                        Err(f) => findings.push(f),
                    },
                    Err(f) => findings.push(f),
                }
            }
        }
        Filter::LocalRatelimit | Filter::Ratelimit => {
            let kind = if filter == Filter::Ratelimit {
                (RATELIMIT_FILTER, RATELIMIT_TYPE)
            } else {
                (LOCAL_RATELIMIT_FILTER, LOCAL_RATELIMIT_TYPE)
            };
            for d in &relevant {
                let parts = ratelimit_parts(d, kind);
                if parts.is_empty() {
                    notes.push(format!("{}: no {} patch", d.label(), kind.0));
                }
                for (n, a) in parts.into_iter().enumerate() {
                    match a.validate(filter) {
                        Ok(()) => {
                            let name = if n == 0 {
                                name_of(d)
                            } else {
                                format!("{}-{n}", name_of(d))
                            };
                            configs.push((name, a.config));
                        }
                        Err(f) => findings.push(f),
                    }
                }
            }
            if findings.is_empty() && configs.is_empty() {
                findings.push(Finding {
                    location: String::new(),
                    path: String::new(),
                    reason: format!("no EnvoyFilter patch adds {} with a configuration", kind.0),
                });
            }
        }
    }
    CheckReport {
        findings,
        notes,
        configs,
    }
}

fn name_of(d: &Doc) -> String {
    d.value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("unnamed")
        .to_string()
}

fn spec_of(d: &Doc) -> Value {
    d.value.get("spec").cloned().unwrap_or_else(|| json!({}))
}

/// RequestAuthentication → its `spec` (the filter's configuration shape).
fn jwt_part(d: &Doc) -> Assembled {
    Assembled::single(spec_of(d), d.label(), "spec")
}

fn merge_jwt(parts: &[Assembled]) -> Assembled {
    let mut rules = Vec::new();
    let mut origins = Vec::new();
    for p in parts {
        let loc = p
            .origins
            .first()
            .map(|o| o.location.clone())
            .unwrap_or_default();
        for (j, r) in p
            .config
            .get("jwtRules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            origins.push(Origin {
                location: loc.clone(),
                config_prefix: format!("jwtRules[{}]", rules.len()),
                doc_prefix: format!("spec.jwtRules[{j}]"),
            });
            rules.push(r.clone());
        }
    }
    Assembled {
        config: json!({ "jwtRules": rules }),
        origins,
        notes: Vec::new(),
    }
}

/// AuthorizationPolicy → itself, without what the API server adds (status,
/// managedFields...): the filter reads metadata name/namespace/annotations.
fn authz_policy(d: &Doc) -> Value {
    let mut p = Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = d.value.get(key) {
            p.insert(key.to_string(), v.clone());
        }
    }
    let mut meta = Map::new();
    if let Some(m) = d.value.get("metadata").and_then(Value::as_object) {
        for key in ["name", "namespace", "annotations"] {
            if let Some(v) = m.get(key) {
                meta.insert(key.to_string(), v.clone());
            }
        }
    }
    p.insert("metadata".to_string(), Value::Object(meta));
    if let Some(obj) = d.value.as_object() {
        for (k, v) in obj {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                p.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(p)
}

fn authz_part(d: &Doc) -> Assembled {
    Assembled {
        config: json!({ "policies": [authz_policy(d)] }),
        origins: vec![Origin {
            location: d.label(),
            config_prefix: "policies[0]".to_string(),
            doc_prefix: String::new(),
        }],
        notes: Vec::new(),
    }
}

fn merge_authz(parts: &[Assembled]) -> Assembled {
    let mut policies = Vec::new();
    let mut origins = Vec::new();
    for p in parts {
        let loc = p
            .origins
            .first()
            .map(|o| o.location.clone())
            .unwrap_or_default();
        for pol in p
            .config
            .get("policies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            origins.push(Origin {
                location: loc.clone(),
                config_prefix: format!("policies[{}]", policies.len()),
                doc_prefix: String::new(),
            });
            policies.push(pol.clone());
        }
    }
    Assembled {
        config: json!({ "policies": policies }),
        origins,
        notes: Vec::new(),
    }
}

fn http_routes(d: &Doc) -> Result<Vec<Value>, Finding> {
    match d.value.get("spec").and_then(|s| s.get("http")) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(_) => Err(Finding {
            location: d.label(),
            path: "spec.http".to_string(),
            reason: "expected a list of HTTPRoute".to_string(),
        }),
    }
}

/// VirtualService → the fault filter's subset: every `http` route, in order,
/// with its `name`, `match` and `fault` (a route without a fault still stops
/// the search, as Envoy picks the first matching route). Indexes are kept, so
/// paths are the VirtualService's own.
fn fault_part(d: &Doc) -> Result<Assembled, Finding> {
    let mut routes = Vec::new();
    let mut with_fault = 0;
    let mut unscoped = 0;
    for r in http_routes(d)? {
        let mut out = Map::new();
        if let Some(obj) = r.as_object() {
            for key in ["name", "match", "fault"] {
                if let Some(v) = obj.get(key) {
                    out.insert(key.to_string(), v.clone());
                }
            }
            with_fault += usize::from(obj.contains_key("fault"));
            let scoped = obj
                .get("match")
                .and_then(Value::as_array)
                .is_some_and(|m| !m.is_empty() && m.iter().all(|x| x.get("authority").is_some()));
            unscoped += usize::from(obj.contains_key("fault") && !scoped);
        } else {
            // Let the parser say what is wrong with it, at its index.
            routes.push(r);
            continue;
        }
        routes.push(Value::Object(out));
    }
    let mut a = Assembled::single(json!({ "http": routes }), d.label(), "spec");
    let hosts: Vec<&str> = d
        .value
        .get("spec")
        .and_then(|s| s.get("hosts"))
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .filter(|h| *h != "*")
                .collect()
        })
        .unwrap_or_default();
    if unscoped > 0 && !hosts.is_empty() {
        // The fault filter sees every request of the listener it is in; Istio
        // applies the fault only on this VirtualService's hosts' routes.
        a.notes.push(format!(
            "{}: hosts {hosts:?} do not scope the fault filter: it applies to every request through the workload; add a match on authority to restrict it",
            d.label()
        ));
    }
    if with_fault == 0 {
        a.notes.push(format!(
            "{}: no http route has a fault: the filter will do nothing",
            d.label()
        ));
    }
    Ok(a)
}

/// VirtualService → the canary filter's configuration: the spec as written,
/// minus each route's `fault` (the fault filter's business).
fn canary_part(d: &Doc) -> Result<Assembled, Finding> {
    let mut spec = spec_of(d);
    let routes: Vec<Value> = http_routes(d)?
        .into_iter()
        .map(|mut r| {
            if let Some(obj) = r.as_object_mut() {
                obj.remove("fault");
            }
            r
        })
        .collect();
    if let Some(obj) = spec.as_object_mut() {
        if obj.contains_key("http") {
            obj.insert("http".to_string(), Value::Array(routes));
        }
    }
    Ok(Assembled::single(spec, d.label(), "spec"))
}

const RATELIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
const RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const LOCAL_RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// EnvoyFilter → the LocalRateLimit of each patch that adds
/// `envoy.filters.http.local_ratelimit` (as Istio's rate-limit task writes it:
/// a TypedStruct whose `value` is the LocalRateLimit, or the typed config itself).
/// The rate limit filter patches of one EnvoyFilter: `(filter name, type URL)`
/// say which filter (local or global).
fn ratelimit_parts(d: &Doc, (filter_name, type_url): (&str, &str)) -> Vec<Assembled> {
    let mut out = Vec::new();
    let patches = d
        .value
        .get("spec")
        .and_then(|s| s.get("configPatches"))
        .and_then(Value::as_array);
    for (j, patch) in patches.into_iter().flatten().enumerate() {
        let Some(value) = patch.get("patch").and_then(|p| p.get("value")) else {
            continue;
        };
        let Some(tc) = value
            .get("typed_config")
            .or_else(|| value.get("typedConfig"))
        else {
            continue;
        };
        let named = value.get("name").and_then(Value::as_str) == Some(filter_name);
        let at_type = tc.get("@type").and_then(Value::as_str).unwrap_or("");
        let inner_type = tc
            .get("type_url")
            .or_else(|| tc.get("typeUrl"))
            .and_then(Value::as_str);
        let base = format!("spec.configPatches[{j}].patch.value.typed_config");
        let (config, doc_prefix) =
            if at_type.ends_with("TypedStruct") && inner_type == Some(type_url) {
                (
                    tc.get("value").cloned().unwrap_or_else(|| json!({})),
                    format!("{base}.value"),
                )
            } else if at_type == type_url || (named && !at_type.ends_with("TypedStruct")) {
                (tc.clone(), base)
            } else {
                continue;
            };
        out.push(Assembled::single(config, d.label(), &doc_prefix));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn docs(yaml: &str) -> Vec<Doc> {
        parse_docs(yaml, false).unwrap()
    }

    #[test]
    fn authz_errors_point_into_each_policy() {
        let report = check(
            Filter::Authz,
            &docs(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ok, namespace: a}\nspec: {action: ALLOW, rules: [{}]}\n---\n\
                 apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: a}\nspec: {action: ALLOW, rules: [{to: [{operation: {pathz: [/x]}}]}]}\n",
            ),
        );
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        let f = &report.findings[0];
        assert_eq!(f.location, "document 2 (AuthorizationPolicy a/bad)");
        assert_eq!(f.path, "spec.rules[0].to[0].operation.pathz");
    }

    #[test]
    fn merged_jwt_paths_map_back() {
        let a = merge_jwt(&[
            Assembled::single(json!({"jwtRules": [{"issuer": "a"}]}), "d1".into(), "spec"),
            Assembled::single(
                json!({"jwtRules": [{"issuer": "b"}, {"issuer": "c"}]}),
                "d2".into(),
                "spec",
            ),
        ]);
        let f = a.locate("jwtRules[2].jwks", "bad");
        assert_eq!(
            (f.location.as_str(), f.path.as_str()),
            ("d2", "spec.jwtRules[1].jwks")
        );
        let f = a.locate("jwtRules[0]", "bad");
        assert_eq!(
            (f.location.as_str(), f.path.as_str()),
            ("d1", "spec.jwtRules[0]")
        );
    }
}
