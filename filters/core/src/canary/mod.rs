//! The canary router: a VirtualService `spec` (hosts, `http[]` with `match`, weighted
//! `route[]` destinations and `headers`) decided in the filter, so stock Envoy
//! routes the request by a header the filter sets.
//!
//! Semantics (Istio's, as istiod's route.go translates them for Envoy):
//! - `http[]` in order, first match wins; a route without `match` takes everything.
//!   Matching is [`crate::http_match`].
//! - One destination ⇒ that destination (its weight is ignored). More ⇒ Envoy
//!   `weighted_clusters`: weight-0 entries are dropped, each other one gets
//!   `weight / sum` of the traffic. Validation as Istio's: weights ≥ 0, and a
//!   non-zero sum when there is more than one destination.
//! - Header operations: see [`headers`]. One destination: istiod appends its
//!   operations to the route's in one parser (so its `set` wins). Several: the
//!   chosen destination's parser runs first, then the route's (so the route's `set`
//!   wins) — Envoy `WeightedClusterEntry::finalizeRequestHeaders`. An authority
//!   rewrite at route level wins over the destination's.
//!
//! How Envoy learns the choice (`routing`): the chosen subset's name in
//! `subsetHeader` (for routes matching on that header, as at an Istio gateway),
//! and/or the cluster name in `clusterHeader` (for `cluster_header` routes), built
//! from the `clusterName` template (default Istio's `outbound|{port}|{subset}|{host}`).
//! `stickyBy` (a header or a cookie) hashes that key into the weight ranges, so a
//! user keeps their destination while the weights stay. The filter removes client
//! copies of the headers it sets before deciding, so a client cannot pick its subset.

pub mod choice;
pub mod headers;

use std::borrow::Cow;

use serde::Deserialize;

use crate::config::{ConfigError, FieldPath};
use crate::host::RandomSource;
use crate::http_match::{HttpMatchList, HttpMatchRequest, RequestView};

pub use choice::{pick, sticky_hash, Draw};
pub use headers::{CompiledHeaders, HeaderOperations, HeaderParser, Headers};

/// Istio's outbound cluster name: `outbound|<port>|<subset>|<host>`.
pub const DEFAULT_CLUSTER_NAME: &str = "outbound|{port}|{subset}|{host}";
/// The subset header when `routing` names neither header.
pub const DEFAULT_SUBSET_HEADER: &str = "x-canary-subset";

// ---------------------------------------------------------------------------------
// Configuration as users write it.

/// The plugin configuration: a VirtualService `spec` plus `routing`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanarySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Config-time selector in Istio (which proxies get the routes); accepted and
    /// not used: the WasmPlugin's own selector decides where the filter runs.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Config-time visibility in Istio; accepted and not used.
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub routing: Option<RoutingSpec>,
}

/// `HTTPRoute`, the fields a canary uses. Others (`rewrite`, `fault`, `retries`,
/// `mirror`, ...) are refused as unknown fields rather than silently ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `HTTPRouteDestination`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: i64,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `Destination`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// `PortSelector`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

/// How Envoy learns the choice, and how users stick to one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingSpec {
    #[serde(default)]
    pub subset_header: Option<String>,
    #[serde(default)]
    pub cluster_header: Option<String>,
    #[serde(default)]
    pub cluster_name: Option<String>,
    #[serde(default)]
    pub sticky_by: Option<StickyBy>,
    #[serde(default)]
    pub response_header: Option<String>,
}

/// Exactly one of `header` or `cookie`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyBy {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

// ---------------------------------------------------------------------------------
// Compiled configuration.

/// A `hosts` entry: Istio's wildcard domains, compared with the request authority
/// (port removed, ASCII case-insensitive) the way Envoy matches virtual-host domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// `*.example.com` → `.example.com`: at least one character before it.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            HostPattern::Exact(e) => host.eq_ignore_ascii_case(e),
        }
    }
}

/// One piece of the cluster-name template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Port,
    Subset,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTemplate(Vec<Piece>);

impl ClusterTemplate {
    pub fn parse(t: &str, path: &FieldPath) -> Result<Self, ConfigError> {
        let mut pieces = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(ConfigError::new(
                    path,
                    format!("unclosed '{{' in template {t:?}"),
                ));
            };
            pieces.push(match &after[..close] {
                "port" => Piece::Port,
                "subset" => Piece::Subset,
                "host" => Piece::Host,
                other => {
                    return Err(ConfigError::new(
                        path,
                        format!(
                            "unknown placeholder {{{other}}}: use {{port}}, {{subset}} or {{host}}"
                        ),
                    ))
                }
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(ConfigError::new(
                path,
                format!("unmatched '}}' in template {t:?}"),
            ));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        if t.is_empty() {
            return Err(ConfigError::new(path, "must not be empty"));
        }
        if !header_value_ok(t) {
            return Err(ConfigError::new(
                path,
                "must be printable ASCII (it is sent as a header value)",
            ));
        }
        Ok(ClusterTemplate(pieces))
    }

    fn uses_port(&self) -> bool {
        self.0.contains(&Piece::Port)
    }

    fn render(&self, port: Option<u32>, subset: &str, host: &str) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Port => out.push_str(&port.map(|p| p.to_string()).unwrap_or_default()),
                Piece::Subset => out.push_str(subset),
                Piece::Host => out.push_str(host),
            }
        }
        out
    }
}

fn header_value_ok(v: &str) -> bool {
    v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A destination ready to be chosen.
#[derive(Debug, Clone)]
pub struct CompiledDestination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u32>,
    pub weight: u32,
    /// What the subset header and the response header carry: the subset, or the
    /// host when the destination names no subset.
    pub label: String,
    /// Index into [`Canary::labels`] (one metric per distinct label).
    pub label_index: usize,
    /// The cluster name, when it does not depend on the request (no `{port}`, or
    /// the destination names its port).
    pub cluster: Option<String>,
    pub headers: CompiledHeaders,
    /// The request header parsers to run when this destination is chosen, in the
    /// order Envoy evaluates them (precomputed: no copies per request).
    pub request_ops: Vec<HeaderParser>,
    /// Likewise for the response.
    pub response_ops: Vec<HeaderParser>,
}

#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub name: Option<String>,
    pub matches: HttpMatchList,
    /// All destinations in configuration order (a weighted route's weight-0 ones
    /// included, never picked).
    pub destinations: Vec<CompiledDestination>,
    /// Weights used for the pick: `[1]` for a single destination.
    weights: Vec<u32>,
    pub headers: CompiledHeaders,
    /// Istio translates a single destination to a plain cluster route.
    pub single: bool,
}

#[derive(Debug, Clone)]
pub enum Sticky {
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct Routing {
    pub subset_header: Option<String>,
    pub cluster_header: Option<String>,
    pub cluster_name: ClusterTemplate,
    pub sticky: Option<Sticky>,
    pub response_header: Option<String>,
}

/// The compiled configuration.
#[derive(Debug, Clone)]
pub struct Canary {
    pub hosts: Vec<HostPattern>,
    pub routes: Vec<CompiledRoute>,
    pub routing: Routing,
    /// Distinct destination labels, for the per-subset metrics.
    pub labels: Vec<String>,
}

// ---------------------------------------------------------------------------------
// Decisions.

/// What the filter does for one request.
#[derive(Debug)]
pub enum Decision<'a> {
    /// The authority is not one of `hosts`: not this VirtualService's traffic.
    OtherHost,
    /// No `http[]` route matched (Envoy would answer 404 for this VirtualService).
    NoMatch,
    Routed(Routed<'a>),
}

/// The chosen destination and everything to apply for it.
#[derive(Debug)]
pub struct Routed<'a> {
    pub route_index: usize,
    pub destination_index: usize,
    pub destination: &'a CompiledDestination,
    /// The subset header value (= the response header value).
    pub label: &'a str,
    pub label_index: usize,
    /// The cluster name for `clusterHeader`: the compiled one when it does
    /// not depend on the listener port (nothing built per request).
    pub cluster: Cow<'a, str>,
    /// True when the sticky key decided (not the random source).
    pub sticky: bool,
    /// Request header parsers, in the order Envoy evaluates them.
    pub request: &'a [HeaderParser],
    /// Response header parsers, in order.
    pub response: &'a [HeaderParser],
    /// The authority rewrite (`host_rewrite_literal`), if any.
    pub authority: Option<&'a str>,
}

// ---------------------------------------------------------------------------------

impl Canary {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Canary, ConfigError> {
        let spec: CanarySpec = crate::config::from_json(bytes)?;
        Canary::compile(&spec)
    }

    pub fn compile(spec: &CanarySpec) -> Result<Canary, ConfigError> {
        let root = FieldPath::root();
        let routing = compile_routing(spec.routing.as_ref(), &root.field("routing"))?;

        if spec.hosts.is_empty() {
            return Err(ConfigError::new(
                &root.field("hosts"),
                "virtual service must have at least one host",
            ));
        }
        let mut hosts = Vec::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            hosts.push(compile_host(h, &root.field("hosts").index(i))?);
        }
        if spec.http.is_empty() {
            return Err(ConfigError::new(
                &root.field("http"),
                "at least one http route is required (tcp and tls routes are not handled by the canary filter)",
            ));
        }

        let mut labels: Vec<String> = Vec::new();
        let mut routes = Vec::new();
        for (ri, r) in spec.http.iter().enumerate() {
            let rp = root.field("http").index(ri);
            let matches = HttpMatchList::compile(&r.matches, &rp.field("match"))?;
            let headers = CompiledHeaders::compile(r.headers.as_ref(), &rp.field("headers"))?;
            if r.route.is_empty() {
                return Err(ConfigError::new(
                    &rp.field("route"),
                    "HTTP route, redirect or direct_response is required (the canary filter handles route)",
                ));
            }
            let mut destinations = Vec::new();
            let mut total: u64 = 0;
            for (di, d) in r.route.iter().enumerate() {
                let dp = rp.field("route").index(di);
                let dst = compile_destination(d, &dp, &routing.cluster_name, &mut labels)?;
                total += u64::from(dst.weight);
                destinations.push(dst);
            }
            if destinations.len() > 1 && total == 0 {
                return Err(ConfigError::new(
                    &rp.field("route"),
                    "total destination weight = 0",
                ));
            }
            if total > u64::from(u32::MAX) {
                return Err(ConfigError::new(
                    &rp.field("route"),
                    format!("the sum of weights exceeds {}", u32::MAX),
                ));
            }
            let single = destinations.len() == 1;
            for d in &mut destinations {
                let (request, response) = if single {
                    (
                        vec![headers.request.merged(&d.headers.request)],
                        vec![headers.response.merged(&d.headers.response)],
                    )
                } else {
                    (
                        vec![d.headers.request.clone(), headers.request.clone()],
                        vec![d.headers.response.clone(), headers.response.clone()],
                    )
                };
                d.request_ops = request.into_iter().filter(|p| !p.is_empty()).collect();
                d.response_ops = response.into_iter().filter(|p| !p.is_empty()).collect();
            }
            let weights = if single {
                vec![1]
            } else {
                destinations.iter().map(|d| d.weight).collect()
            };
            routes.push(CompiledRoute {
                name: r.name.clone(),
                matches,
                destinations,
                weights,
                headers,
                single,
            });
        }
        Ok(Canary {
            hosts,
            routes,
            routing,
            labels,
        })
    }

    /// Is `authority` (the request's `:authority`, port included or not) one of `hosts`?
    pub fn host_matches(&self, authority: &[u8]) -> bool {
        let Ok(a) = std::str::from_utf8(authority) else {
            return false;
        };
        let host = strip_port(a);
        self.hosts.iter().any(|p| p.matches(host))
    }

    /// The first route whose `match` holds.
    pub fn select_route(&self, req: &RequestView<'_>) -> Option<usize> {
        self.routes.iter().position(|r| r.matches.matches(req))
    }

    /// The sticky key of this request, if `stickyBy` is set and the request has it.
    pub fn sticky_key(&self, req: &RequestView<'_>) -> Option<Vec<u8>> {
        match self.routing.sticky.as_ref()? {
            Sticky::Header(name) => req
                .header(name)
                .map(|v| v.into_owned())
                .filter(|v| !v.is_empty()),
            Sticky::Cookie(name) => cookie_value(req, name),
        }
    }

    /// The whole decision for one request. `headers` are the request headers as
    /// the host gives them (lower-case names, pseudo-headers included), already
    /// without client copies of the routing headers. `listener_port` stands in
    /// for a destination without `port` in a `{port}` template, as istiod uses the
    /// port the service is reached on.
    pub fn decide<'a>(
        &'a self,
        req: &RequestView<'_>,
        listener_port: Option<u32>,
        rng: &mut dyn RandomSource,
    ) -> Decision<'a> {
        // `hosts: ["*"]` (the bench's, and a gateway's usual) needs no authority.
        let any_host = self.hosts.iter().any(|p| matches!(p, HostPattern::Any));
        if !any_host && !self.host_matches(&req.header(":authority").unwrap_or_default()) {
            return Decision::OtherHost;
        }
        let Some(ri) = self.select_route(req) else {
            return Decision::NoMatch;
        };
        let route = &self.routes[ri];
        let key = if route.single {
            None
        } else {
            self.sticky_key(req)
        };
        let draw = match &key {
            Some(k) => Draw::Sticky(k),
            None => Draw::Random(rng),
        };
        // Validation guarantees a non-zero total; fall back to "no match" rather
        // than trap if that ever fails.
        let Some(di) = pick(&route.weights, draw) else {
            return Decision::NoMatch;
        };
        let d = &route.destinations[di];
        let cluster = match &d.cluster {
            Some(c) => Cow::Borrowed(c.as_str()),
            None => Cow::Owned(self.routing.cluster_name.render(
                d.port.or(listener_port),
                d.subset.as_deref().unwrap_or(""),
                &d.host,
            )),
        };
        Decision::Routed(Routed {
            route_index: ri,
            destination_index: di,
            destination: d,
            label: &d.label,
            label_index: d.label_index,
            cluster,
            sticky: key.is_some(),
            request: &d.request_ops,
            response: &d.response_ops,
            authority: route
                .headers
                .authority
                .as_deref()
                .or(d.headers.authority.as_deref()),
        })
    }

    /// Whether some destination's cluster name depends on the listener port.
    pub fn needs_listener_port(&self) -> bool {
        self.routing.cluster_header.is_some()
            && self
                .routes
                .iter()
                .any(|r| r.destinations.iter().any(|d| d.cluster.is_none()))
    }

    /// The headers the filter sets on requests; client copies are removed first.
    pub fn routing_request_headers(&self) -> impl Iterator<Item = &str> {
        self.routing
            .subset_header
            .iter()
            .chain(self.routing.cluster_header.iter())
            .map(String::as_str)
    }
}

/// `host:port`, `[v6]:port`, `[v6]`, `host` → the host part.
fn strip_port(a: &str) -> &str {
    if let Some(rest) = a.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &a[..end + 2],
            None => a,
        };
    }
    match a.rfind(':') {
        Some(i) if a[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &a[..i],
        _ => a,
    }
}

/// The value of cookie `name` in the `cookie` header(s), as Envoy's
/// `Http::Utility::parseCookieValue` reads it (first occurrence; `;`-separated;
/// surrounding double quotes removed).
fn cookie_value(req: &RequestView<'_>, name: &str) -> Option<Vec<u8>> {
    let all = req.header("cookie")?;
    // Several cookie headers are joined with ',' by the view; Envoy joins them with
    // "; " for HTTP/2. Treat both as separators between pairs.
    for pair in all.split(|b| *b == b';' || *b == b',') {
        let pair = trim(pair);
        let Some(eq) = pair.iter().position(|b| *b == b'=') else {
            continue;
        };
        if trim(&pair[..eq]) == name.as_bytes() {
            let mut v = trim(&pair[eq + 1..]);
            if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                v = &v[1..v.len() - 1];
            }
            if v.is_empty() {
                return None;
            }
            return Some(v.to_vec());
        }
    }
    None
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn compile_routing(spec: Option<&RoutingSpec>, path: &FieldPath) -> Result<Routing, ConfigError> {
    let default = RoutingSpec::default();
    let spec = spec.unwrap_or(&default);
    let header = |v: &Option<String>, field: &str| -> Result<Option<String>, ConfigError> {
        match v {
            None => Ok(None),
            Some(name) => {
                let p = path.field(field);
                if !headers::is_token(name) {
                    return Err(ConfigError::new(
                        &p,
                        format!("{name:?} is not a valid HTTP header name"),
                    ));
                }
                if name.eq_ignore_ascii_case("host") {
                    return Err(ConfigError::new(&p, "cannot be the Host header"));
                }
                Ok(Some(name.to_ascii_lowercase()))
            }
        }
    };
    let mut subset_header = header(&spec.subset_header, "subsetHeader")?;
    let cluster_header = header(&spec.cluster_header, "clusterHeader")?;
    let response_header = header(&spec.response_header, "responseHeader")?;
    if subset_header.is_none() && cluster_header.is_none() {
        subset_header = Some(DEFAULT_SUBSET_HEADER.to_string());
    }
    if subset_header.is_some() && subset_header == cluster_header {
        return Err(ConfigError::new(
            &path.field("clusterHeader"),
            "must differ from subsetHeader",
        ));
    }
    if spec.cluster_name.is_some() && cluster_header.is_none() {
        return Err(ConfigError::new(
            &path.field("clusterName"),
            "is only used with clusterHeader, which is not set",
        ));
    }
    let cluster_name = ClusterTemplate::parse(
        spec.cluster_name.as_deref().unwrap_or(DEFAULT_CLUSTER_NAME),
        &path.field("clusterName"),
    )?;
    let sticky = match &spec.sticky_by {
        None => None,
        Some(s) => {
            let p = path.field("stickyBy");
            match (&s.header, &s.cookie) {
                (Some(h), None) => {
                    if !headers::is_token(h) {
                        return Err(ConfigError::new(
                            &p.field("header"),
                            format!("{h:?} is not a valid HTTP header name"),
                        ));
                    }
                    Some(Sticky::Header(h.to_ascii_lowercase()))
                }
                (None, Some(c)) => {
                    if !headers::is_token(c) {
                        return Err(ConfigError::new(
                            &p.field("cookie"),
                            format!("{c:?} is not a valid cookie name"),
                        ));
                    }
                    Some(Sticky::Cookie(c.clone()))
                }
                _ => return Err(ConfigError::new(&p, "set exactly one of header or cookie")),
            }
        }
    };
    Ok(Routing {
        subset_header,
        cluster_header,
        cluster_name,
        sticky,
        response_header,
    })
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Istio `ValidateWildcardDomain`: `*`, `*.domain`, or a domain whose labels are
/// DNS-1123 labels (a trailing dot allowed); at most 255 characters.
fn validate_wildcard_domain(h: &str, path: &FieldPath) -> Result<(), ConfigError> {
    if h.is_empty() {
        return Err(ConfigError::new(path, "empty domain name not allowed"));
    }
    if h.len() > 255 {
        return Err(ConfigError::new(
            path,
            format!("domain name {h:?} too long (max 255)"),
        ));
    }
    let rest = if h == "*" {
        return Ok(());
    } else if let Some(r) = h.strip_prefix("*.") {
        r
    } else {
        h
    };
    let parts: Vec<&str> = rest.split('.').collect();
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() && i > 0 {
            break;
        }
        if !is_dns1123_label(label) {
            return Err(ConfigError::new(
                path,
                format!("domain name {h:?} invalid (label {label:?} invalid)"),
            ));
        }
    }
    Ok(())
}

fn compile_host(h: &str, path: &FieldPath) -> Result<HostPattern, ConfigError> {
    let lower = h.to_ascii_lowercase();
    if validate_wildcard_domain(&lower, path).is_err() && lower.parse::<std::net::IpAddr>().is_err()
    {
        validate_wildcard_domain(&lower, path)?;
    }
    let trimmed = lower
        .strip_suffix('.')
        .filter(|t| !t.is_empty())
        .unwrap_or(&lower);
    Ok(if trimmed == "*" {
        HostPattern::Any
    } else if let Some(s) = trimmed.strip_prefix('*') {
        HostPattern::Suffix(s.to_string())
    } else if trimmed.contains(':') {
        // An IPv6 literal: Envoy's authority carries it in brackets.
        HostPattern::Exact(format!("[{trimmed}]"))
    } else {
        HostPattern::Exact(trimmed.to_string())
    })
}

fn compile_destination(
    d: &HttpRouteDestination,
    path: &FieldPath,
    template: &ClusterTemplate,
    labels: &mut Vec<String>,
) -> Result<CompiledDestination, ConfigError> {
    let dp = path.field("destination");
    let host = &d.destination.host;
    if host == "*" {
        return Err(ConfigError::new(
            &dp.field("host"),
            format!("invalid destination host {host}"),
        ));
    }
    validate_wildcard_domain(host, &dp.field("host"))?;
    if let Some(s) = &d.destination.subset {
        if s.is_empty() {
            return Err(ConfigError::new(
                &dp.field("subset"),
                "subset name cannot be empty",
            ));
        }
        if !is_dns1123_label(s) {
            return Err(ConfigError::new(
                &dp.field("subset"),
                format!("subset name is invalid: {s}"),
            ));
        }
    }
    let port = match &d.destination.port {
        None => None,
        Some(p) if (1..=65535).contains(&p.number) => Some(p.number),
        Some(p) => {
            return Err(ConfigError::new(
                &dp.field("port").field("number"),
                format!("port number {} must be in the range 1..65535", p.number),
            ))
        }
    };
    if d.weight < 0 {
        return Err(ConfigError::new(
            &path.field("weight"),
            format!("weight {} < 0", d.weight),
        ));
    }
    if d.weight > i64::from(i32::MAX) {
        return Err(ConfigError::new(
            &path.field("weight"),
            format!("weight {} exceeds int32", d.weight),
        ));
    }
    let headers = CompiledHeaders::compile(d.headers.as_ref(), &path.field("headers"))?;
    let subset = d.destination.subset.clone();
    let label = subset.clone().unwrap_or_else(|| host.clone());
    let label_index = match labels.iter().position(|l| *l == label) {
        Some(i) => i,
        None => {
            labels.push(label.clone());
            labels.len() - 1
        }
    };
    let cluster = if port.is_some() || !template.uses_port() {
        Some(template.render(port, subset.as_deref().unwrap_or(""), host))
    } else {
        None
    };
    Ok(CompiledDestination {
        host: host.clone(),
        subset,
        port,
        weight: d.weight as u32,
        label,
        label_index,
        cluster,
        headers,
        request_ops: Vec::new(),
        response_ops: Vec::new(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
