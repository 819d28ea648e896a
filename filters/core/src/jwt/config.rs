//! The plugin configuration: an Istio RequestAuthentication `spec`, as a user
//! pastes it, plus a few meshwasm extension fields (documented in
//! docs/filters/jwt_authn.md). Validated like istiod's `ValidateRequestAuthentication`.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{from_json, parse_duration, ConfigError, FieldPath};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// Workload selection belongs to the WasmPlugin; accepted so a spec can be
    /// pasted whole, and ignored.
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Option<serde_json::Value>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    /// JWKS fetch timeout (default 5s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// meshwasm extension: the Envoy cluster `jwksUri` is fetched through
    /// (default `outbound|<port>||<host>`, Istio's name for that service).
    #[serde(default)]
    pub jwks_cluster: Option<String>,
    /// meshwasm extension: how long fetched keys are used before a refresh
    /// (default 300s, as istiod sets `cache_duration`).
    #[serde(default)]
    pub jwks_cache_duration: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

/// A `jwksUri` split into what `dispatch_http_call` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub uri: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub cache_duration: Duration,
}

pub fn parse_spec(bytes: &[u8]) -> Result<RequestAuthenticationSpec, ConfigError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(RequestAuthenticationSpec::default());
    }
    from_json(bytes)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `security.ParseJwksURI`: http or https, a host, an optional port.
pub fn parse_jwks_uri(
    uri: &str,
    cluster: Option<&str>,
    timeout: Duration,
    cache_duration: Duration,
) -> Result<RemoteJwks, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("invalid jwksUri {uri:?}: not an absolute URL"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => {
            return Err(format!(
                "invalid jwksUri {uri:?}: scheme must be http or https"
            ))
        }
    };
    if uri.len() > 2048 {
        return Err("jwksUri longer than 2048 characters".into());
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.split('#').next().unwrap_or("/").to_string()
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("invalid jwksUri {uri:?}: bad port"))?;
            (h, port)
        }
        _ => (authority, default_port),
    };
    if host.is_empty() || authority.contains('@') {
        return Err(format!("invalid jwksUri {uri:?}: missing host"));
    }
    let cluster = match cluster {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => format!("outbound|{port}||{host}"),
    };
    Ok(RemoteJwks {
        uri: uri.to_string(),
        cluster,
        authority: authority.to_string(),
        path,
        timeout,
        cache_duration,
    })
}

pub fn duration_field(
    value: &Option<String>,
    path: &FieldPath,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration(s).map_err(|e| ConfigError::new(path, e))?;
            if d.is_zero() {
                return Err(ConfigError::new(path, "must be greater than 0"));
            }
            Ok(d)
        }
    }
}

/// Field checks istiod applies before it ever builds Envoy config.
pub fn validate_rule(rule: &JwtRule, path: &FieldPath) -> Result<(), ConfigError> {
    if rule.issuer.is_empty() && rule.jwks_uri.as_deref().unwrap_or("").is_empty() {
        return Err(ConfigError::new(
            &path.field("issuer"),
            "issuer must be set (or jwksUri)",
        ));
    }
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            return Err(ConfigError::new(
                &path.field("audiences").index(i),
                "audience must be non-empty string",
            ));
        }
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            return Err(ConfigError::new(
                &path.field("fromHeaders").index(i).field("name"),
                "location header name must be non-empty string",
            ));
        }
    }
    for (i, p) in rule.from_params.iter().enumerate() {
        if p.is_empty() {
            return Err(ConfigError::new(
                &path.field("fromParams").index(i),
                "location query must be non-empty string",
            ));
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            return Err(ConfigError::new(
                &path.field("fromCookies").index(i),
                "cookie name must be non-empty string",
            ));
        }
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let p = path.field("outputClaimToHeaders").index(i);
        if c.claim.is_empty() {
            return Err(ConfigError::new(
                &p.field("claim"),
                "must be non-empty string",
            ));
        }
        if !is_header_name(&c.header) {
            return Err(ConfigError::new(
                &p.field("header"),
                format!(
                    "invalid header name {:?}: must match ^[-_A-Za-z0-9]+$",
                    c.header
                ),
            ));
        }
    }
    if let Some(h) = &rule.output_payload_to_header {
        if !h.is_empty() && !is_header_name(h) {
            return Err(ConfigError::new(
                &path.field("outputPayloadToHeader"),
                format!("invalid header name {h:?}"),
            ));
        }
    }
    if rule.space_delimited_claims.len() > 64 {
        return Err(ConfigError::new(
            &path.field("spaceDelimitedClaims"),
            "at most 64 claims",
        ));
    }
    for (i, c) in rule.space_delimited_claims.iter().enumerate() {
        if c.is_empty() {
            return Err(ConfigError::new(
                &path.field("spaceDelimitedClaims").index(i),
                "must be non-empty string",
            ));
        }
    }
    Ok(())
}
