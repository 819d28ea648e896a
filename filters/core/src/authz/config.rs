//! The plugin configuration as users write it: Istio AuthorizationPolicy
//! objects (`kubectl get -o json` form) plus mesh settings.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `{"trustDomain", "trustDomainAliases", "policies", ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzConfig {
    /// meshConfig.trustDomain.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// meshConfig.trustDomainAliases.
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    #[serde(default)]
    pub policies: Vec<AuthorizationPolicy>,
    /// meshConfig.extensionProviders of the ext_authz kinds
    /// (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`).
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Key under `envoy.filters.http.jwt_authn` dynamic metadata where a native
    /// jwt_authn put the payload (`payload_in_metadata`); istiod uses `payload`.
    #[serde(default = "default_payload_key")]
    pub jwt_payload_in_metadata: String,
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}
fn default_payload_key() -> String {
    "payload".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    /// Written by the API server; ignored.
    #[serde(default)]
    pub status: Option<Value>,
}

/// Kubernetes object metadata: only name, namespace and annotations matter;
/// the rest of what `kubectl get -o json` prints is accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Accepted and ignored: the WasmPlugin's own selector picks the workload.
    #[serde(default)]
    pub selector: Option<Value>,
    #[serde(default)]
    pub target_ref: Option<Value>,
    #[serde(default)]
    pub target_refs: Option<Vec<Value>>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub provider: Option<Provider>,
    /// `None` and `[]` mean the same (allow-nothing for ALLOW). Elements may be
    /// `null` in the JSON, which validation rejects as Istio does.
    #[serde(default)]
    pub rules: Vec<Option<Rule>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Action {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
    #[serde(rename = "CUSTOM")]
    Custom,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Option<Vec<Option<From>>>,
    #[serde(default)]
    pub to: Option<Vec<Option<To>>>,
    #[serde(default)]
    pub when: Option<Vec<Option<Condition>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// meshConfig `extensionProviders[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default)]
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    #[serde(default)]
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
}

/// Istio `EnvoyExternalAuthorizationGrpcProvider`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtAuthzGrpc {
    /// e.g. `ext-authz.foo.svc.cluster.local`; also the call's `:authority`.
    pub service: String,
    pub port: u32,
    /// Envoy cluster to call; defaults to istiod's name `outbound|<port>||<service>`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Default 600s, as Istio.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    /// Default "403".
    #[serde(default)]
    pub status_on_error: Option<String>,
    /// Accepted; a wasm filter's header edits always clear the route cache.
    #[serde(default)]
    pub clear_route_cache: bool,
    /// Refused when set: see `compile::ext_authz_grpc`.
    #[serde(default)]
    pub include_request_body_in_check: Option<Value>,
}

/// Istio `EnvoyExternalAuthorizationHttpProvider`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtAuthzHttp {
    /// e.g. `ext-authz.foo.svc.cluster.local`.
    pub service: String,
    pub port: u32,
    /// Envoy cluster to call; defaults to istiod's name `outbound|<port>||<service>`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Default 600s, as Istio.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub fail_open: bool,
    /// Default "403".
    #[serde(default)]
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    /// Body forwarding is not supported by this filter (the check happens at
    /// request headers); refused when set.
    #[serde(default)]
    pub include_request_body_in_check: Option<Value>,
}
