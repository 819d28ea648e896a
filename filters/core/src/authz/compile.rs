//! Validation (Istio's `ValidateAuthorizationPolicy` + `model.New`) and
//! compilation into the RBAC form istiod generates (builder.go, model.go,
//! generator.go, matcher/*.go, trustdomain/bundle.go).

use std::collections::BTreeMap;

use super::config::{
    Action, AuthorizationPolicy, AuthzConfig, Condition, ExtAuthzGrpc, ExtAuthzHttp, Operation,
    Rule, Source,
};
use super::matchers::{istio_string, uri_template, Cidr, StrMatch, Tok};
use super::{Authz, Cond, Engine, Leaf, Needs, Policy};
use crate::config::{parse_duration, ConfigError, FieldPath};

/// A CUSTOM provider resolved from `extensionProviders[]`: what both kinds
/// share, and how the server is called.
#[derive(Debug, Clone)]
pub struct ExtAuthzSettings {
    pub provider: String,
    pub cluster: String,
    /// The `:authority` of the check (the provider's `service`).
    pub authority: String,
    pub timeout_ms: u64,
    pub fail_open: bool,
    pub status_on_error: u32,
    pub service: ExtAuthzService,
}

/// `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
#[derive(Debug, Clone)]
pub enum ExtAuthzService {
    Http(HttpService),
    Grpc(GrpcService),
}

/// An `envoyExtAuthzHttp` provider's check-request and answer settings.
#[derive(Debug, Clone)]
pub struct HttpService {
    pub path_prefix: String,
    pub(crate) include_request_headers: Vec<StrMatch>,
    pub include_additional_headers: Vec<(String, String)>,
    pub(crate) headers_to_upstream_on_allow: Vec<StrMatch>,
    pub(crate) headers_to_downstream_on_allow: Vec<StrMatch>,
    pub(crate) headers_to_downstream_on_deny: Vec<StrMatch>,
}

/// An `envoyExtAuthzGrpc` provider.
#[derive(Debug, Clone)]
pub struct GrpcService {
    /// The serialized `envoy.config.core.v3.GrpcService` (cluster and
    /// authority) that Envoy's wasm host takes in place of a cluster name;
    /// valid UTF-8, as the SDK passes it as a string.
    pub target: String,
}

fn any_header(list: &[StrMatch], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    list.iter().any(|m| m.matches(&name))
}

impl HttpService {
    /// Whether a client request header goes into the check request
    /// (`includeRequestHeadersInCheck`).
    pub fn include_request_header(&self, name: &str) -> bool {
        any_header(&self.include_request_headers, name)
    }
    pub fn to_upstream_on_allow(&self, name: &str) -> bool {
        any_header(&self.headers_to_upstream_on_allow, name)
    }
    pub fn to_downstream_on_allow(&self, name: &str) -> bool {
        any_header(&self.headers_to_downstream_on_allow, name)
    }
    pub fn to_downstream_on_deny(&self, name: &str) -> bool {
        any_header(&self.headers_to_downstream_on_deny, name)
    }
}

const DRY_RUN: &str = "istio.io/dry-run";

fn err(path: &FieldPath, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(path, reason)
}

/// Go `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go `regexp.QuoteMeta` (what istiod uses inside its regexes).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) fn compile(cfg: &AuthzConfig) -> Result<Authz, ConfigError> {
    let root = FieldPath::root();
    if cfg.trust_domain.is_empty() {
        return Err(err(&root.field("trustDomain"), "must not be empty"));
    }
    let mut bundle = vec![cfg.trust_domain.clone()];
    bundle.extend(cfg.trust_domain_aliases.iter().cloned());

    let providers = resolve_providers(cfg)?;

    let mut custom = Engine::default();
    let mut custom_provider: Option<(String, FieldPath)> = None;
    let mut audit = Engine::default();
    let mut deny = Engine::default();
    let mut deny_shadow: Option<Engine> = None;
    let mut allow: Option<Engine> = None;
    let mut allow_shadow: Option<Engine> = None;

    for (i, policy) in cfg.policies.iter().enumerate() {
        let p = root.field("policies").index(i);
        let compiled = compile_policy(policy, &p, &bundle)?;
        let dry_run = dry_run(policy, &p)?;
        match policy.spec.action {
            Action::Custom => {
                let name = policy
                    .spec
                    .provider
                    .as_ref()
                    .map(|pr| pr.name.clone())
                    .unwrap_or_default();
                let ppath = p.field("spec").field("provider").field("name");
                if !providers.contains_key(&name) {
                    return Err(err(
                        &ppath,
                        format!("extension provider {name:?} not found in extensionProviders (or not an ext_authz provider)"),
                    ));
                }
                if let Some((other, _)) = &custom_provider {
                    if *other != name {
                        // Istio allows one CUSTOM provider per workload by default
                        // (PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS is off).
                        return Err(err(
                            &ppath,
                            format!("only one CUSTOM provider per workload is supported, found {other:?} and {name:?}"),
                        ));
                    }
                }
                custom_provider = Some((name.clone(), ppath));
                custom.policies.extend(compiled.into_iter().map(|mut pol| {
                    pol.id = format!("istio-ext-authz-{name}-{}", pol.id);
                    pol
                }));
            }
            Action::Audit => audit.policies.extend(compiled),
            Action::Deny if dry_run => deny_shadow
                .get_or_insert_with(Engine::default)
                .policies
                .extend(compiled),
            Action::Deny => deny.policies.extend(compiled),
            Action::Allow if dry_run => allow_shadow
                .get_or_insert_with(Engine::default)
                .policies
                .extend(compiled),
            Action::Allow => allow
                .get_or_insert_with(Engine::default)
                .policies
                .extend(compiled),
        }
    }

    // Fail closed when the direct peer is unknown (see `Engine`).
    deny.unknown_peer_matches = true;
    if let Some(e) = deny_shadow.as_mut() {
        e.unknown_peer_matches = true;
    }
    let mut custom = match custom_provider {
        Some((name, _)) => providers.get(&name).cloned().map(|s| (custom, s)),
        None => None,
    };
    if let Some((e, _)) = custom.as_mut() {
        e.unknown_peer_matches = true;
    }

    let mut authz = Authz {
        custom,
        audit,
        deny,
        deny_shadow,
        allow,
        allow_shadow,
        needs: Needs::default(),
        jwt_payload_in_metadata: cfg.jwt_payload_in_metadata.clone(),
        header_names: Vec::new(),
    };
    // One pass over every policy: order each AND, intern header names so hosts
    // can find a header by slot, note what the host must fetch, set path guards.
    let mut header_names: Vec<String> = Vec::new();
    let mut needs = Needs::default();
    for pol in authz.engines_mut().flat_map(|e| e.policies.iter_mut()) {
        for and in pol.permissions.iter_mut().chain(pol.principals.iter_mut()) {
            // An AND stops at its first false condition, and its value does not
            // depend on the order: the path (most selective in practice) first,
            // then headers, then what costs host calls; a condition that always
            // holds last.
            and.sort_by_key(cond_cost);
            for c in and {
                for l in &mut c.any_of {
                    note_needs(l, &mut needs);
                    if let Leaf::Header { name, slot, .. } = l {
                        *slot = match header_names.iter().position(|n| n == name) {
                            Some(i) => i,
                            None => {
                                header_names.push(name.clone());
                                header_names.len() - 1
                            }
                        };
                    }
                }
            }
        }
        pol.path_guard = path_guard(&pol.permissions);
    }
    for engine in authz.engines_mut() {
        engine.index_guards();
    }
    authz.header_names = header_names;
    authz.needs = needs;
    Ok(authz)
}

fn note_needs(l: &Leaf, n: &mut Needs) {
    match l {
        Leaf::Any => {}
        Leaf::Header { .. } | Leaf::Path(_) => n.headers = true,
        Leaf::DestPort(_) => n.destination_port = true,
        Leaf::DirectIp(_) => n.direct_ip = true,
        Leaf::RemoteIp(_) => n.remote_ip = true,
        Leaf::DestIp(_) => n.destination_ip = true,
        Leaf::Sni(_) => n.sni = true,
        Leaf::Authenticated(_) => n.peer = true,
        Leaf::RequestPrincipal { .. } | Leaf::Claim { .. } => n.jwt = true,
        Leaf::Metadata { .. } => n.metadata = true,
    }
}

fn dry_run(policy: &AuthorizationPolicy, p: &FieldPath) -> Result<bool, ConfigError> {
    let Some(v) = policy.metadata.annotations.get(DRY_RUN) else {
        return Ok(false);
    };
    let path = p.field("metadata").field("annotations").key(DRY_RUN);
    let b = parse_bool(v).ok_or_else(|| {
        err(
            &path,
            format!("invalid dry-run value {v:?}: must be true or false"),
        )
    })?;
    match policy.spec.action {
        Action::Allow | Action::Deny => Ok(b),
        other => Err(err(
            &path,
            format!("dry-run is only supported for ALLOW and DENY actions, not {other:?}"),
        )),
    }
}

fn resolve_providers(cfg: &AuthzConfig) -> Result<BTreeMap<String, ExtAuthzSettings>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, p) in cfg.extension_providers.iter().enumerate() {
        let path = FieldPath::root().field("extensionProviders").index(i);
        let settings = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
            (Some(_), Some(_)) => {
                return Err(err(
                    &path,
                    "envoyExtAuthzHttp and envoyExtAuthzGrpc are mutually exclusive",
                ))
            }
            (Some(h), None) => ext_authz_http(&p.name, h, &path.field("envoyExtAuthzHttp"))?,
            (None, Some(g)) => ext_authz_grpc(&p.name, g, &path.field("envoyExtAuthzGrpc"))?,
            (None, None) => continue,
        };
        out.insert(p.name.clone(), settings);
    }
    Ok(out)
}

fn header_patterns(list: &[String], path: &FieldPath) -> Result<Vec<StrMatch>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            if h.is_empty() {
                Err(err(&path.index(i), "empty header name"))
            } else {
                Ok(istio_string(&h.to_ascii_lowercase(), ""))
            }
        })
        .collect()
}

/// The fields both provider kinds share, validated as Istio does.
struct Common {
    cluster: String,
    timeout_ms: u64,
    status_on_error: u32,
}

fn common(
    service: &str,
    port: u32,
    cluster: &Option<String>,
    timeout: &Option<String>,
    status_on_error: &Option<String>,
    p: &FieldPath,
) -> Result<Common, ConfigError> {
    if service.is_empty() {
        return Err(err(&p.field("service"), "must not be empty"));
    }
    if port == 0 || port > 65535 {
        return Err(err(&p.field("port"), format!("invalid port {port}")));
    }
    let timeout_ms = match timeout {
        Some(t) => parse_duration(t)
            .map_err(|e| err(&p.field("timeout"), e))?
            .as_millis() as u64,
        None => 600_000,
    };
    let status_on_error = match status_on_error {
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| {
                err(
                    &p.field("statusOnError"),
                    format!("invalid HTTP status {s:?}"),
                )
            })?,
        None => 403,
    };
    Ok(Common {
        cluster: cluster
            .clone()
            .unwrap_or_else(|| format!("outbound|{port}||{service}")),
        timeout_ms,
        status_on_error,
    })
}

fn ext_authz_http(
    name: &str,
    h: &ExtAuthzHttp,
    p: &FieldPath,
) -> Result<ExtAuthzSettings, ConfigError> {
    let c = common(
        &h.service,
        h.port,
        &h.cluster,
        &h.timeout,
        &h.status_on_error,
        p,
    )?;
    if h.include_request_body_in_check.is_some() {
        return Err(err(
            &p.field("includeRequestBodyInCheck"),
            "not supported by the meshwasm authz filter (the check is made at request headers)",
        ));
    }
    let path_prefix = h.path_prefix.clone();
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        return Err(err(&p.field("pathPrefix"), "must start with '/'"));
    }
    Ok(ExtAuthzSettings {
        provider: name.to_string(),
        cluster: c.cluster,
        authority: h.service.clone(),
        timeout_ms: c.timeout_ms,
        fail_open: h.fail_open,
        status_on_error: c.status_on_error,
        service: ExtAuthzService::Http(HttpService {
            path_prefix,
            include_request_headers: header_patterns(
                &h.include_request_headers_in_check,
                &p.field("includeRequestHeadersInCheck"),
            )?,
            include_additional_headers: h
                .include_additional_headers_in_check
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            headers_to_upstream_on_allow: header_patterns(
                &h.headers_to_upstream_on_allow,
                &p.field("headersToUpstreamOnAllow"),
            )?,
            headers_to_downstream_on_allow: header_patterns(
                &h.headers_to_downstream_on_allow,
                &p.field("headersToDownstreamOnAllow"),
            )?,
            headers_to_downstream_on_deny: header_patterns(
                &h.headers_to_downstream_on_deny,
                &p.field("headersToDownstreamOnDeny"),
            )?,
        }),
    })
}

fn ext_authz_grpc(
    name: &str,
    g: &ExtAuthzGrpc,
    p: &FieldPath,
) -> Result<ExtAuthzSettings, ConfigError> {
    let c = common(
        &g.service,
        g.port,
        &g.cluster,
        &g.timeout,
        &g.status_on_error,
        p,
    )?;
    if g.include_request_body_in_check.is_some() {
        // Holding the headers for the check stops Envoy's wasm host from passing
        // the body to the filter (StopAllIteration); taking the body first would
        // let the headers reach the upstream before the verdict.
        return Err(err(
            &p.field("includeRequestBodyInCheck"),
            "not supported by the meshwasm authz filter: the check is made at request headers, \
             before Envoy hands a wasm filter the body",
        ));
    }
    let target = GrpcServiceTarget::new(&c.cluster, &g.service)
        .map_err(|reason| err(&p.field("cluster"), reason))?;
    Ok(ExtAuthzSettings {
        provider: name.to_string(),
        cluster: c.cluster,
        authority: g.service.clone(),
        timeout_ms: c.timeout_ms,
        fail_open: g.fail_open,
        status_on_error: c.status_on_error,
        service: ExtAuthzService::Grpc(GrpcService { target: target.0 }),
    })
}

/// A serialized `GrpcService` naming a cluster and the `:authority` to send:
/// without it Envoy sends the cluster name as authority, which servers refuse
/// when it holds istiod's `|`.
pub(crate) struct GrpcServiceTarget(pub(crate) String);

impl GrpcServiceTarget {
    pub(crate) fn new(cluster: &str, authority: &str) -> Result<GrpcServiceTarget, String> {
        use prost::Message;
        let service = crate::proto::core::GrpcService {
            envoy_grpc: Some(crate::proto::core::EnvoyGrpc {
                cluster_name: cluster.to_string(),
                authority: authority.to_string(),
            }),
        };
        // Lengths from 128 on take a varint byte above 0x7f, which is not UTF-8.
        String::from_utf8(service.encode_to_vec())
            .map(GrpcServiceTarget)
            .map_err(|_| {
                format!(
                    "cluster name and service together must stay under 120 bytes for \
                     Envoy's wasm gRPC call (have {} and {})",
                    cluster.len(),
                    authority.len()
                )
            })
    }
}

/// One policy → its RBAC policies (one per rule).
fn compile_policy(
    policy: &AuthorizationPolicy,
    p: &FieldPath,
    bundle: &[String],
) -> Result<Vec<Policy>, ConfigError> {
    let meta = &policy.metadata;
    if meta.name.is_empty() {
        return Err(err(&p.field("metadata").field("name"), "must not be empty"));
    }
    let spec = &policy.spec;
    let sp = p.field("spec");
    if let Some(t) = &spec.target_refs {
        if t.len() > 16 {
            return Err(err(
                &sp.field("targetRefs"),
                "at most 16 targetRefs are allowed",
            ));
        }
    }
    let selectors = [
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        spec.target_refs.is_some(),
    ];
    if selectors.iter().filter(|b| **b).count() > 1 {
        return Err(err(
            &sp,
            "only one of selector, targetRef or targetRefs can be set",
        ));
    }
    match spec.action {
        Action::Custom => {
            if spec.provider.as_ref().is_none_or(|pr| pr.name.is_empty()) {
                return Err(err(
                    &sp.field("provider"),
                    "CUSTOM action requires a provider name",
                ));
            }
            if spec.rules.is_empty() {
                return Err(err(
                    &sp.field("rules"),
                    "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
                ));
            }
        }
        Action::Deny if spec.rules.is_empty() => {
            return Err(err(
                &sp.field("rules"),
                "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
            ));
        }
        _ => {
            if spec.provider.is_some() {
                return Err(err(
                    &sp.field("provider"),
                    "provider must only be used with the CUSTOM action",
                ));
            }
        }
    }
    let id = |j: usize| format!("ns[{}]-policy[{}]-rule[{}]", meta.namespace, meta.name, j);
    if spec.rules.is_empty() {
        // ALLOW/AUDIT without rules: istiod's match-never policy (allow-nothing).
        let never = vec![Cond {
            negate: true,
            any_of: vec![Leaf::Any],
        }];
        return Ok(vec![Policy {
            id: id(0),
            permissions: vec![never.clone()],
            principals: vec![never],
            path_guard: None,
        }]);
    }
    let mut out = Vec::new();
    for (j, rule) in spec.rules.iter().enumerate() {
        let rp = sp.field("rules").index(j);
        let Some(rule) = rule else {
            return Err(err(&rp, "`rule` must not be nil"));
        };
        let (permissions, principals) = compile_rule(rule, &rp, &meta.namespace, bundle)?;
        out.push(Policy {
            id: id(j),
            permissions,
            principals,
            path_guard: None,
        });
    }
    Ok(out)
}

type AndLists = Vec<Vec<Cond>>;
type LeafFn<'a> = dyn FnMut(&str, &FieldPath) -> Result<Vec<Leaf>, ConfigError> + 'a;

fn compile_rule(
    rule: &Rule,
    rp: &FieldPath,
    ns: &str,
    bundle: &[String],
) -> Result<(AndLists, AndLists), ConfigError> {
    // `when` conditions go to every principal or every permission (model.go).
    let mut when_principal = Vec::new();
    let mut when_permission = Vec::new();
    for (k, cond) in rule.when.iter().flatten().enumerate() {
        let cp = rp.field("when").index(k);
        let Some(cond) = cond else {
            return Err(err(&cp, "condition must not be nil"));
        };
        let (to_permission, conds) = compile_condition(cond, &cp, ns, bundle)?;
        if to_permission {
            when_permission.extend(conds);
        } else {
            when_principal.extend(conds);
        }
    }

    let mut principals = Vec::new();
    match &rule.from {
        Some(from) if from.is_empty() => {
            return Err(err(&rp.field("from"), "`from` must not be empty"))
        }
        Some(from) => {
            for (k, f) in from.iter().enumerate() {
                let fp = rp.field("from").index(k);
                let Some(f) = f else {
                    return Err(err(&fp, "`from` must not be nil"));
                };
                let Some(src) = &f.source else {
                    return Err(err(&fp.field("source"), "`from.source` must not be nil"));
                };
                let mut conds = compile_source(src, &fp.field("source"), ns, bundle)?;
                conds.extend(when_principal.iter().cloned());
                principals.push(conds);
            }
        }
        None => principals.push(when_principal),
    }

    let mut permissions = Vec::new();
    match &rule.to {
        Some(to) if to.is_empty() => return Err(err(&rp.field("to"), "`to` must not be empty")),
        Some(to) => {
            for (k, t) in to.iter().enumerate() {
                let tp = rp.field("to").index(k);
                let Some(t) = t else {
                    return Err(err(&tp, "`to` must not be nil"));
                };
                let Some(op) = &t.operation else {
                    return Err(err(
                        &tp.field("operation"),
                        "`to.operation` must not be nil",
                    ));
                };
                let mut conds = compile_operation(op, &tp.field("operation"))?;
                conds.extend(when_permission.iter().cloned());
                permissions.push(conds);
            }
        }
        None => permissions.push(when_permission),
    }
    Ok((permissions, principals))
}

/// `values` → one OR term; `notValues` → one negated OR term.
fn field<F>(
    out: &mut Vec<Cond>,
    values: &[String],
    not_values: &[String],
    base: &FieldPath,
    (name, not_name): (&str, &str),
    check_empty: bool,
    mut leaf: F,
) -> Result<(), ConfigError>
where
    F: FnMut(&str, &FieldPath) -> Result<Vec<Leaf>, ConfigError>,
{
    for (negate, list, fname) in [(false, values, name), (true, not_values, not_name)] {
        if list.is_empty() {
            continue;
        }
        let mut any_of = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let vp = base.field(fname).index(i);
            if check_empty && v.is_empty() {
                return Err(err(&vp, "empty value not allowed"));
            }
            any_of.extend(leaf(v, &vp)?);
        }
        out.push(Cond { negate, any_of });
    }
    Ok(())
}

fn principal_leaf(v: &str) -> Result<Leaf, String> {
    // matcher.StringMatcherWithPrefix(v, "spiffe://").
    let m = if v == "*" {
        StrMatch::NonEmpty
    } else if let Some(s) = v.strip_prefix('*') {
        StrMatch::regex(&format!("spiffe://.*{}", go_quote(s)))?
    } else if let Some(pre) = v.strip_suffix('*') {
        StrMatch::Prefix(format!("spiffe://{pre}"))
    } else {
        StrMatch::Exact(format!("spiffe://{v}"))
    };
    Ok(Leaf::Authenticated(m))
}

fn namespace_leaf(v: &str) -> Result<Leaf, String> {
    let ns: Vec<String> = v.split('*').map(go_quote).collect();
    Ok(Leaf::Authenticated(StrMatch::regex(&format!(
        ".*/ns/{}/.*",
        ns.join(".*")
    ))?))
}

fn validate_service_account(v: &str) -> Result<(), String> {
    if v.contains('*') {
        return Err(format!(
            "wildcard is not supported in serviceAccounts: {v:?}"
        ));
    }
    if v.len() > 320 {
        return Err("service account is longer than 320 characters".into());
    }
    let parts: Vec<&str> = v.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "service account must be `<name>` or `<namespace>/<name>`, got {v:?}"
        ));
    }
    Ok(())
}

fn service_account_leaf(v: &str, ns: &str) -> Result<Leaf, String> {
    validate_service_account(v)?;
    let (ns, sa) = v.split_once('/').unwrap_or((ns, v));
    Ok(Leaf::Authenticated(StrMatch::regex(&format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        go_quote(ns),
        go_quote(sa)
    ))?))
}

fn validate_trust_domain(v: &str) -> Result<(), String> {
    if v.contains('/') {
        return Err(format!("trust domain must not contain '/': {v:?}"));
    }
    let stars = v.matches('*').count();
    if stars > 1 || (stars == 1 && !v.starts_with('*') && !v.ends_with('*')) {
        return Err(format!(
            "trust domain allows a single '*' at the start or end only: {v:?}"
        ));
    }
    Ok(())
}

fn trust_domain_leaf(v: &str) -> Result<Leaf, String> {
    validate_trust_domain(v)?;
    let m = if v == "*" {
        StrMatch::Prefix("spiffe://".into())
    } else if let Some(s) = v.strip_prefix('*') {
        StrMatch::regex(&format!("spiffe://[^/]*{}/.*", go_quote(s)))?
    } else if let Some(pre) = v.strip_suffix('*') {
        StrMatch::regex(&format!("spiffe://{}[^/]*/.*", go_quote(pre)))?
    } else {
        StrMatch::Prefix(format!("spiffe://{v}/"))
    };
    Ok(Leaf::Authenticated(m))
}

/// generator.go `requestPrincipalGenerator`: split at the last '/'.
fn request_principal_leaf(v: &str) -> Leaf {
    let (iss, sub, found) = match v.rfind('/') {
        Some(i) => (&v[..i], &v[i + 1..], true),
        None => (v, "", false),
    };
    let (iss_m, sub_m) = if v == "*" {
        (StrMatch::NonEmpty, StrMatch::NonEmpty)
    } else if let Some(rest) = v.strip_prefix('*') {
        if found {
            let iss_m = if iss == "*" {
                StrMatch::NonEmpty
            } else {
                StrMatch::Suffix(iss.trim_start_matches('*').to_string())
            };
            (iss_m, StrMatch::Exact(sub.to_string()))
        } else {
            (StrMatch::NonEmpty, StrMatch::Suffix(rest.to_string()))
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        if found {
            let sub_m = if sub == "*" {
                StrMatch::NonEmpty
            } else {
                StrMatch::Prefix(sub.trim_end_matches('*').to_string())
            };
            (StrMatch::Exact(iss.to_string()), sub_m)
        } else {
            (StrMatch::Prefix(rest.to_string()), StrMatch::NonEmpty)
        }
    } else {
        (
            StrMatch::Exact(iss.to_string()),
            StrMatch::Exact(sub.to_string()),
        )
    };
    Leaf::RequestPrincipal {
        iss: iss_m,
        sub: sub_m,
    }
}

fn ip_leaf(v: &str, f: fn(Cidr) -> Leaf) -> Result<Leaf, String> {
    Cidr::parse(v).map(f)
}

fn port(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .map_err(|_| format!("invalid port {v:?}: must be a number 0-65535"))
}

/// `*` is "present" for headers/hosts/methods (matcher.HeaderMatcher).
fn header_leaf(name: &str, v: &str, ignore_case: bool) -> Leaf {
    let m = if v == "*" {
        None
    } else if ignore_case {
        Some(istio_string(v, "").lowercased())
    } else {
        Some(istio_string(v, ""))
    };
    Leaf::Header {
        name: name.to_ascii_lowercase(),
        slot: 0,
        m,
        ignore_case,
    }
}

fn path_leaf(v: &str) -> Result<Leaf, String> {
    if v.contains("{*}") || v.contains("{**}") {
        let t = v.replace("{**}", "**").replace("{*}", "*");
        if t.contains('{') || t.contains('}') {
            return Err(format!("invalid path template {v:?}"));
        }
        return uri_template(&t).map(Leaf::Path);
    }
    Ok(Leaf::Path(istio_string(v, "")))
}

/// The prefixes a request path must start with for some permission AND-list
/// to hold (see `Policy::path_guard`): each list must have a condition that
/// is an OR of path leaves with a literal start (exact, prefix, a template
/// beginning with a literal); otherwise there is no guard.
fn path_guard(permissions: &[Vec<Cond>]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for and in permissions {
        let prefixes = and.iter().find_map(|c| {
            if c.negate || c.any_of.is_empty() {
                return None;
            }
            c.any_of
                .iter()
                .map(|l| match l {
                    Leaf::Path(StrMatch::Exact(s) | StrMatch::Prefix(s)) => Some(s.clone()),
                    Leaf::Path(StrMatch::Template(toks)) => match toks.first() {
                        Some(Tok::Lit(l)) => Some(l.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<Option<Vec<String>>>()
        })?;
        out.extend(prefixes);
    }
    // An empty prefix admits every path: no guard worth checking.
    if out.iter().any(String::is_empty) {
        return None;
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// Evaluation order of the conditions of one AND (see `compile`): lower first.
fn cond_cost(c: &Cond) -> u8 {
    c.any_of
        .iter()
        .map(|l| match l {
            Leaf::Path(_) => 0,
            Leaf::Header { .. } => 1,
            Leaf::Any => 3,
            _ => 2,
        })
        .max()
        .unwrap_or(0)
}

/// trustdomain.Bundle.ReplaceTrustDomainAliases.
pub(crate) fn migrate_principals(values: &[String], bundle: &[String]) -> Vec<String> {
    let prefix_match = |a: &str, pat: &str| pat.strip_suffix('*').is_some_and(|p| a.starts_with(p));
    let suffix_match = |a: &str, pat: &str| pat.strip_prefix('*').is_some_and(|p| a.ends_with(p));
    let string_match = |a: &str| {
        bundle.iter().any(|s| {
            a == s
                || s == "*"
                || prefix_match(a, s)
                || prefix_match(s, a)
                || suffix_match(a, s)
                || suffix_match(s, a)
        })
    };
    let mut out = Vec::new();
    for v in values {
        let parts: Vec<&str> = v.split('/').collect();
        if parts.len() != 5 || parts[0] == "*" {
            out.push(v.clone());
            continue;
        }
        let td = parts[0];
        if string_match(td) || td == "cluster.local" {
            let mut replaced: Vec<String> = Vec::new();
            for b in bundle {
                let n = if suffix_match(b, td) {
                    v.clone()
                } else {
                    format!("{b}/{}", parts[1..].join("/"))
                };
                if !replaced.contains(&n) {
                    replaced.push(n);
                }
            }
            out.extend(replaced);
        } else {
            out.push(v.clone());
        }
    }
    out
}

/// trustdomain.Bundle.ExpandTrustDomainAliases.
pub(crate) fn expand_trust_domains(values: &[String], bundle: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let add: Vec<String> = if bundle.contains(v) {
            bundle.to_vec()
        } else {
            vec![v.clone()]
        };
        for a in add {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

fn lift<T>(r: Result<T, String>, p: &FieldPath) -> Result<T, ConfigError> {
    r.map_err(|e| err(p, e))
}

fn compile_source(
    s: &Source,
    sp: &FieldPath,
    ns: &str,
    bundle: &[String],
) -> Result<Vec<Cond>, ConfigError> {
    let all_empty = s.principals.is_empty()
        && s.not_principals.is_empty()
        && s.request_principals.is_empty()
        && s.not_request_principals.is_empty()
        && s.namespaces.is_empty()
        && s.not_namespaces.is_empty()
        && s.service_accounts.is_empty()
        && s.not_service_accounts.is_empty()
        && s.trust_domains.is_empty()
        && s.not_trust_domains.is_empty()
        && s.ip_blocks.is_empty()
        && s.not_ip_blocks.is_empty()
        && s.remote_ip_blocks.is_empty()
        && s.not_remote_ip_blocks.is_empty();
    if all_empty {
        return Err(err(sp, "`from.source` must not be empty"));
    }
    let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_other = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if has_sa && has_other {
        return Err(err(
            &sp.field("serviceAccounts"),
            "cannot set serviceAccounts with namespaces or principals",
        ));
    }
    if s.service_accounts.len() > 16 || s.not_service_accounts.len() > 16 {
        return Err(err(
            &sp.field("serviceAccounts"),
            "at most 16 service accounts are allowed",
        ));
    }
    // Empty values are checked on the values as written, before alias migration.
    for (name, list) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        if let Some(i) = list.iter().position(String::is_empty) {
            return Err(err(&sp.field(name).index(i), "empty value not allowed"));
        }
    }
    let mut out = Vec::new();
    // Field order of model.go (insertFront reversed); AND is order-free anyway.
    let pr = migrate_principals(&s.principals, bundle);
    let npr = migrate_principals(&s.not_principals, bundle);
    // Paths of migrated values no longer line up with the input; point at the field.
    field(
        &mut out,
        &pr,
        &npr,
        sp,
        ("principals", "notPrincipals"),
        true,
        |v, _| lift(principal_leaf(v), &sp.field("principals")).map(|l| vec![l]),
    )?;
    field(
        &mut out,
        &s.request_principals,
        &s.not_request_principals,
        sp,
        ("requestPrincipals", "notRequestPrincipals"),
        true,
        |v, _| Ok(vec![request_principal_leaf(v)]),
    )?;
    field(
        &mut out,
        &s.service_accounts,
        &s.not_service_accounts,
        sp,
        ("serviceAccounts", "notServiceAccounts"),
        true,
        |v, p| lift(service_account_leaf(v, ns), p).map(|l| vec![l]),
    )?;
    for (i, v) in s
        .trust_domains
        .iter()
        .chain(s.not_trust_domains.iter())
        .enumerate()
    {
        let name = if i < s.trust_domains.len() {
            "trustDomains"
        } else {
            "notTrustDomains"
        };
        let idx = if i < s.trust_domains.len() {
            i
        } else {
            i - s.trust_domains.len()
        };
        lift(validate_trust_domain(v), &sp.field(name).index(idx))?;
    }
    let td = expand_trust_domains(&s.trust_domains, bundle);
    let ntd = expand_trust_domains(&s.not_trust_domains, bundle);
    field(
        &mut out,
        &td,
        &ntd,
        sp,
        ("trustDomains", "notTrustDomains"),
        true,
        |v, _| lift(trust_domain_leaf(v), &sp.field("trustDomains")).map(|l| vec![l]),
    )?;
    field(
        &mut out,
        &s.namespaces,
        &s.not_namespaces,
        sp,
        ("namespaces", "notNamespaces"),
        true,
        |v, p| lift(namespace_leaf(v), p).map(|l| vec![l]),
    )?;
    field(
        &mut out,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        sp,
        ("remoteIpBlocks", "notRemoteIpBlocks"),
        true,
        |v, p| lift(ip_leaf(v, Leaf::RemoteIp), p).map(|l| vec![l]),
    )?;
    field(
        &mut out,
        &s.ip_blocks,
        &s.not_ip_blocks,
        sp,
        ("ipBlocks", "notIpBlocks"),
        true,
        |v, p| lift(ip_leaf(v, Leaf::DirectIp), p).map(|l| vec![l]),
    )?;
    Ok(out)
}

fn compile_operation(o: &Operation, op: &FieldPath) -> Result<Vec<Cond>, ConfigError> {
    let all_empty = o.hosts.is_empty()
        && o.not_hosts.is_empty()
        && o.ports.is_empty()
        && o.not_ports.is_empty()
        && o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty();
    if all_empty {
        return Err(err(op, "`to.operation` must not be empty"));
    }
    let mut out = Vec::new();
    field(
        &mut out,
        &o.hosts,
        &o.not_hosts,
        op,
        ("hosts", "notHosts"),
        true,
        |v, _| Ok(vec![header_leaf(":authority", v, true)]),
    )?;
    field(
        &mut out,
        &o.methods,
        &o.not_methods,
        op,
        ("methods", "notMethods"),
        true,
        |v, _| Ok(vec![header_leaf(":method", v, false)]),
    )?;
    field(
        &mut out,
        &o.paths,
        &o.not_paths,
        op,
        ("paths", "notPaths"),
        true,
        |v, p| lift(path_leaf(v), p).map(|l| vec![l]),
    )?;
    field(
        &mut out,
        &o.ports,
        &o.not_ports,
        op,
        ("ports", "notPorts"),
        true,
        |v, p| lift(port(v), p).map(|n| vec![Leaf::DestPort(n)]),
    )?;
    Ok(out)
}

/// `[a][b.c]` → ["a", "b.c"] (model.go `extractNameInNestedBrackets`).
fn nested_brackets(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() {
            return None;
        }
        out.push(name.to_string());
        rest = &inner[end + 1..];
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// Returns (goes to permission?, conditions).
fn compile_condition(
    c: &Condition,
    cp: &FieldPath,
    ns: &str,
    bundle: &[String],
) -> Result<(bool, Vec<Cond>), ConfigError> {
    let key = c.key.as_str();
    let kp = cp.field("key");
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(err(
            cp,
            format!("at least one of `values` or `notValues` must be set for key {key}"),
        ));
    }
    let mut out = Vec::new();
    let f = |out: &mut Vec<Cond>, values: &[String], not_values: &[String], leaf: &mut LeafFn| {
        field(
            out,
            values,
            not_values,
            cp,
            ("values", "notValues"),
            false,
            leaf,
        )
    };
    let to_permission = match key {
        "source.ip" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, p| {
                lift(ip_leaf(v, Leaf::DirectIp), p).map(|l| vec![l])
            })?;
            false
        }
        "remote.ip" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, p| {
                lift(ip_leaf(v, Leaf::RemoteIp), p).map(|l| vec![l])
            })?;
            false
        }
        "source.namespace" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, p| {
                lift(namespace_leaf(v), p).map(|l| vec![l])
            })?;
            false
        }
        "source.serviceAccount" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, p| {
                lift(service_account_leaf(v, ns), p).map(|l| vec![l])
            })?;
            false
        }
        "source.trustDomain" => {
            for (i, v) in c.values.iter().enumerate() {
                lift(validate_trust_domain(v), &cp.field("values").index(i))?;
            }
            for (i, v) in c.not_values.iter().enumerate() {
                lift(validate_trust_domain(v), &cp.field("notValues").index(i))?;
            }
            let (v, nv) = (
                expand_trust_domains(&c.values, bundle),
                expand_trust_domains(&c.not_values, bundle),
            );
            f(&mut out, &v, &nv, &mut |v, _| {
                lift(trust_domain_leaf(v), cp).map(|l| vec![l])
            })?;
            false
        }
        "source.principal" => {
            let (v, nv) = (
                migrate_principals(&c.values, bundle),
                migrate_principals(&c.not_values, bundle),
            );
            f(&mut out, &v, &nv, &mut |v, _| {
                lift(principal_leaf(v), cp).map(|l| vec![l])
            })?;
            false
        }
        "request.auth.principal" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, _| {
                Ok(vec![request_principal_leaf(v)])
            })?;
            false
        }
        "request.auth.audiences" | "request.auth.presenter" => {
            let claim = if key == "request.auth.audiences" {
                "aud"
            } else {
                "azp"
            };
            claim_conds(&mut out, &[claim.to_string()], c);
            false
        }
        "destination.ip" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, p| {
                lift(ip_leaf(v, Leaf::DestIp), p).map(|l| vec![l])
            })?;
            true
        }
        "destination.port" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, p| {
                lift(port(v), p).map(|n| vec![Leaf::DestPort(n)])
            })?;
            true
        }
        "connection.sni" => {
            f(&mut out, &c.values, &c.not_values, &mut |v, _| {
                Ok(vec![Leaf::Sni(istio_string(v, ""))])
            })?;
            true
        }
        "destination.namespace" => {
            return Err(err(
                &kp,
                "attribute destination.namespace is replaced by the metadata.namespace",
            ))
        }
        "destination.name" | "destination.user" => {
            return Err(err(&kp, format!("attribute {key} is not supported")))
        }
        _ if key.starts_with("destination.labels") => {
            return Err(err(
                &kp,
                "attribute destination.labels is replaced by the workload selector",
            ))
        }
        _ if key.starts_with("request.headers") => {
            let name = key
                .strip_prefix("request.headers[")
                .and_then(|r| r.strip_suffix(']'))
                .filter(|n| !n.is_empty() && !n.contains(['[', ']']))
                .ok_or_else(|| {
                    err(
                        &kp,
                        format!("invalid key {key:?}: expected request.headers[<name>]"),
                    )
                })?
                .to_string();
            f(&mut out, &c.values, &c.not_values, &mut |v, _| {
                Ok(vec![header_leaf(&name, v, false)])
            })?;
            false
        }
        _ if key.starts_with("request.auth.claims") => {
            let claims = nested_brackets(&key["request.auth.claims".len()..]).ok_or_else(|| {
                err(
                    &kp,
                    format!("invalid key {key:?}: expected request.auth.claims[<name>]..."),
                )
            })?;
            claim_conds(&mut out, &claims, c);
            false
        }
        _ if key.starts_with("experimental.envoy.filters.") => {
            let body = key
                .trim_start_matches("experimental.")
                .trim_end_matches(']');
            let (filter, k) = body
                .split_once('[')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| err(&kp, format!("invalid key {key:?}: expected experimental.envoy.filters.<filter>[<key>]")))?;
            for (negate, list) in [(false, &c.values), (true, &c.not_values)] {
                if list.is_empty() {
                    continue;
                }
                let any_of = list
                    .iter()
                    .map(
                        |v| match v.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                            Some(inner) => (true, istio_string(inner, "")),
                            None => (false, istio_string(v, "")),
                        },
                    )
                    .collect();
                out.push(Cond {
                    negate,
                    any_of: vec![Leaf::Metadata {
                        filter: filter.to_string(),
                        key: k.to_string(),
                        any_of,
                    }],
                });
            }
            true
        }
        _ => return Err(err(&kp, format!("unknown attribute: {key}"))),
    };
    Ok((to_permission, out))
}

fn claim_conds(out: &mut Vec<Cond>, path: &[String], c: &Condition) {
    for (negate, list) in [(false, &c.values), (true, &c.not_values)] {
        if list.is_empty() {
            continue;
        }
        out.push(Cond {
            negate,
            any_of: vec![Leaf::Claim {
                path: path.to_vec(),
                any_of: list.iter().map(|v| istio_string(v, "")).collect(),
            }],
        });
    }
}

#[cfg(test)]
pub(crate) mod internal {
    pub(crate) use super::migrate_principals;
}
