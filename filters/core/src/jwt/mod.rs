//! RequestAuthentication (Istio `jwtRules`) evaluated the way Envoy's
//! `envoy.filters.http.jwt_authn` does when istiod configures it: one provider
//! `origins-<i>` per rule (rules sorted by issuer), requirement
//! `requires_any[origins-0, allow_missing]` for one rule and
//! `requires_any[p0..pN-1, requires_all[requires_any[pi, allow_missing]...]]`
//! for several, CORS preflight bypassed, 60 s clock skew.

mod b64;
mod cache;
mod config;
mod jwks;
mod payload;
mod remote;
mod request;
mod rsa_fast;
mod status;
mod token;

#[cfg(any(test, feature = "jwt-testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::time::Duration;

use serde_json::{Map, Value};

pub use b64::{decode as base64url_decode, encode_url as base64url_encode};
pub use cache::TokenCache;
pub use config::{parse_jwks_uri, JwtRule, RemoteJwks, RequestAuthenticationSpec};
pub use jwks::Jwks;
pub use payload::{
    payload_from_msgpack, payload_to_msgpack, request_principal, VerifiedPayload,
    FILTER_STATE_PAYLOAD, FILTER_STATE_PRINCIPAL,
};
pub use remote::{shared_key, KeyEvent, KeyHost, KeyStore, KeysAt};
pub use request::{HeaderOp, Request};
pub use status::{Status, METRIC_REASONS};
pub use token::Jwt;

use crate::config::{ConfigError, FieldPath};
use request::{Location, Locations};

/// jwt_verify_lib `kClockSkewInSecond`; Istio leaves `clock_skew_seconds` unset.
pub const CLOCK_SKEW_SECONDS: u64 = 60;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub enum KeySource {
    Inline(Rc<Jwks>),
    Remote(RemoteJwks),
}

/// One JwtRule as an Envoy `JwtProvider`.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    /// Sanitized like jwt_verify_lib's `CheckAudience` (scheme and trailing `/` dropped).
    audiences: Vec<String>,
    pub keys: KeySource,
    forward: bool,
    forward_payload_header: Option<Rc<str>>,
    claim_to_headers: Vec<(Rc<str>, String)>,
    space_delimited_claims: Vec<String>,
    locations: Locations,
}

#[derive(Debug, Clone)]
enum Requirement {
    Provider(usize),
    Any {
        children: Vec<Requirement>,
        allow_missing: bool,
    },
    All(Vec<Requirement>),
}

/// The compiled configuration.
#[derive(Debug, Clone)]
pub struct JwtAuthn {
    pub providers: Vec<Provider>,
    requirement: Option<Requirement>,
}

/// The current keys of a `jwksUri` provider, as the filter's fetcher knows them.
pub enum KeyState<'a> {
    /// Keys are usable. `can_refetch` says whether an unknown `kid` may trigger
    /// an early refetch now (rate-limited by the filter).
    Ready { jwks: &'a Jwks, can_refetch: bool },
    /// Never fetched yet (or a fetch is under way): the request must wait.
    Pending,
    /// The fetch failed and there are no earlier keys to fall back on.
    Failed,
}

pub trait RemoteKeys {
    fn keys(&self, provider: usize) -> KeyState<'_>;
}

/// No remote providers: every lookup is Pending (never used with inline keys).
pub struct NoRemoteKeys;

impl RemoteKeys for NoRemoteKeys {
    fn keys(&self, _provider: usize) -> KeyState<'_> {
        KeyState::Pending
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Allow {
    /// Header edits to apply, in order.
    pub ops: Vec<HeaderOp>,
    /// The verified payload (space-delimited claims split into lists, as in
    /// Envoy's dynamic metadata) and its MessagePack; None when no token was
    /// verified. Shared with the token cache.
    pub payload: Option<Rc<VerifiedPayload>>,
    pub principal: Option<Rc<str>>,
    pub cors_preflight: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub status: Status,
    pub http_status: u32,
    pub body: &'static str,
    pub www_authenticate: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
    /// Keys of `provider` are needed first: fetch (or refetch) them, then
    /// evaluate again.
    FetchJwks {
        provider: usize,
        refetch: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub decision: Decision,
    pub cache_hits: u32,
    pub cache_misses: u32,
}

struct Ctx<'a, 'r> {
    req: Request<'r>,
    now: u64,
    keys: &'a dyn RemoteKeys,
    cache: &'a mut TokenCache,
    payload: Option<Rc<VerifiedPayload>>,
    principal: Option<Rc<str>>,
    hits: u32,
    misses: u32,
}

/// A token verified for one provider, with everything its success writes,
/// computed once and kept in the token cache.
#[derive(Debug)]
pub(crate) struct Verified {
    jwt: Jwt,
    payload: Rc<VerifiedPayload>,
    principal: Option<Rc<str>>,
    /// The value of each of the provider's `claim_to_headers`, in order.
    claim_headers: Vec<Option<String>>,
}

impl Verified {
    fn new(provider: &Provider, jwt: Jwt) -> Verified {
        let payload = Rc::new(VerifiedPayload::new(normalize_payload(
            &jwt.payload,
            &provider.space_delimited_claims,
        )));
        let principal = (!jwt.iss.is_empty()
            && jwt.payload.get("sub").is_some_and(Value::is_string))
        .then(|| Rc::from(format!("{}/{}", jwt.iss, jwt.sub)));
        let claim_headers = provider
            .claim_to_headers
            .iter()
            .map(|(_, claim)| claim_header_value(&jwt.payload, claim))
            .collect();
        Verified {
            jwt,
            payload,
            principal,
            claim_headers,
        }
    }
}

/// Evaluation stops early when keys must be fetched.
struct NeedKeys {
    provider: usize,
    refetch: bool,
}

impl JwtAuthn {
    /// Parses and validates a RequestAuthentication spec (JSON bytes).
    pub fn from_json(bytes: &[u8]) -> Result<JwtAuthn, ConfigError> {
        let spec = config::parse_spec(bytes)?;
        Self::from_spec(&spec)
    }

    pub fn from_spec(spec: &RequestAuthenticationSpec) -> Result<JwtAuthn, ConfigError> {
        let root = FieldPath::root().field("jwtRules");
        let mut indexed: Vec<(usize, &JwtRule)> = spec.jwt_rules.iter().enumerate().collect();
        // istiod concatenates the rules and sorts them by issuer (stable).
        indexed.sort_by(|a, b| a.1.issuer.cmp(&b.1.issuer));
        let mut providers = Vec::new();
        for (n, (i, rule)) in indexed.into_iter().enumerate() {
            let path = root.index(i);
            config::validate_rule(rule, &path)?;
            providers.push(Self::provider(n, rule, &path)?);
        }
        let requirement = match providers.len() {
            0 => None,
            1 => Some(Requirement::Any {
                children: vec![Requirement::Provider(0)],
                allow_missing: true,
            }),
            n => {
                let mut children: Vec<Requirement> = (0..n).map(Requirement::Provider).collect();
                children.push(Requirement::All(
                    (0..n)
                        .map(|i| Requirement::Any {
                            children: vec![Requirement::Provider(i)],
                            allow_missing: true,
                        })
                        .collect(),
                ));
                Some(Requirement::Any {
                    children,
                    allow_missing: false,
                })
            }
        };
        Ok(JwtAuthn {
            providers,
            requirement,
        })
    }

    fn provider(n: usize, rule: &JwtRule, path: &FieldPath) -> Result<Provider, ConfigError> {
        let timeout =
            config::duration_field(&rule.timeout, &path.field("timeout"), DEFAULT_TIMEOUT)?;
        let cache_duration = config::duration_field(
            &rule.jwks_cache_duration,
            &path.field("jwksCacheDuration"),
            DEFAULT_CACHE_DURATION,
        )?;
        let inline = rule.jwks.as_deref().filter(|s| !s.is_empty());
        let uri = rule.jwks_uri.as_deref().filter(|s| !s.is_empty());
        let keys = match (inline, uri) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    &path.field("jwks"),
                    "set either jwks or jwksUri, not both",
                ))
            }
            (Some(json), None) => KeySource::Inline(Rc::new(Jwks::parse(json).map_err(|s| {
                // Envoy refuses the listener: "... has invalid local jwks: <status>".
                ConfigError::new(
                    &path.field("jwks"),
                    format!("invalid jwks: {}", s.message()),
                )
            })?)),
            (None, Some(uri)) => KeySource::Remote(
                parse_jwks_uri(uri, rule.jwks_cluster.as_deref(), timeout, cache_duration)
                    .map_err(|e| ConfigError::new(&path.field("jwksUri"), e))?,
            ),
            (None, None) => return Err(ConfigError::new(
                &path.field("jwksUri"),
                "jwks or jwksUri is required (OpenID discovery from the issuer is not supported)",
            )),
        };
        if rule.jwks_cluster.is_some() && uri.is_none() {
            return Err(ConfigError::new(
                &path.field("jwksCluster"),
                "only meaningful with jwksUri",
            ));
        }
        let mut space_delimited: Vec<String> = vec!["permission".into(), "scope".into()];
        space_delimited.extend(rule.space_delimited_claims.iter().cloned());
        space_delimited.sort();
        space_delimited.dedup();
        let headers: Vec<(String, String)> = rule
            .from_headers
            .iter()
            .map(|h| (h.name.clone(), h.prefix.clone()))
            .collect();
        Ok(Provider {
            name: format!("origins-{n}"),
            issuer: rule.issuer.clone(),
            audiences: rule
                .audiences
                .iter()
                .map(|a| sanitize_audience(a).to_string())
                .collect(),
            keys,
            forward: rule.forward_original_token,
            forward_payload_header: rule
                .output_payload_to_header
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase().into()),
            claim_to_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|c| (c.header.to_ascii_lowercase().into(), c.claim.clone()))
                .collect(),
            space_delimited_claims: space_delimited,
            locations: Locations::new(&headers, &rule.from_params, &rule.from_cookies),
        })
    }

    /// Decides one request (`headers` as the host has them; values are read
    /// as UTF-8 text, invalid sequences replaced). `now` is Unix seconds.
    pub fn evaluate(
        &self,
        headers: &[(&str, &[u8])],
        now: u64,
        keys: &dyn RemoteKeys,
        cache: &mut TokenCache,
    ) -> Evaluation {
        let req = Request::new(headers);
        let mut ctx = Ctx {
            req,
            now,
            keys,
            cache,
            payload: None,
            principal: None,
            hits: 0,
            misses: 0,
        };
        let decision = self.decide(&mut ctx);
        Evaluation {
            decision,
            cache_hits: ctx.hits,
            cache_misses: ctx.misses,
        }
    }

    fn decide<'r>(&'r self, ctx: &mut Ctx<'_, 'r>) -> Decision {
        let Some(requirement) = &self.requirement else {
            return Decision::Allow(Allow {
                ops: Vec::new(),
                payload: None,
                principal: None,
                cors_preflight: false,
            });
        };
        if is_cors_preflight(&ctx.req) {
            return Decision::Allow(Allow {
                ops: Vec::new(),
                payload: None,
                principal: None,
                cors_preflight: true,
            });
        }
        match self.eval(requirement, ctx) {
            Err(need) => Decision::FetchJwks {
                provider: need.provider,
                refetch: need.refetch,
            },
            Ok(Status::Ok) => Decision::Allow(Allow {
                ops: ctx.req.take_ops(),
                payload: ctx.payload.take(),
                principal: ctx.principal.take(),
                cors_preflight: false,
            }),
            Ok(status) => {
                let realm = ctx.req.realm();
                let www_authenticate = if status == Status::JwtMissed {
                    format!("Bearer realm=\"{realm}\"")
                } else {
                    format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
                };
                Decision::Deny(Deny {
                    status,
                    http_status: status.http_status(),
                    body: status.message(),
                    www_authenticate,
                })
            }
        }
    }

    fn eval<'r>(&'r self, req: &Requirement, ctx: &mut Ctx<'_, 'r>) -> Result<Status, NeedKeys> {
        match req {
            Requirement::Provider(p) => self.verify_provider(*p, ctx),
            Requirement::All(children) => {
                for child in children {
                    let s = self.eval(child, ctx)?;
                    if s != Status::Ok {
                        return Ok(s);
                    }
                }
                Ok(Status::Ok)
            }
            Requirement::Any {
                children,
                allow_missing,
            } => {
                // Envoy's AnyVerifier: prefer a "real" error (the last one),
                // then JwtUnknownIssuer, then JwtMissed.
                let mut fin = Status::JwtMissed;
                for child in children {
                    let s = self.eval(child, ctx)?;
                    if s == Status::Ok {
                        return Ok(s);
                    }
                    if (s != Status::JwtMissed && s != Status::JwtUnknownIssuer)
                        || fin == Status::JwtMissed
                    {
                        fin = s;
                    }
                }
                if *allow_missing && fin == Status::JwtMissed {
                    fin = Status::Ok;
                }
                Ok(fin)
            }
        }
    }

    /// Envoy `ProviderVerifierImpl` + `AuthenticatorImpl` (no allow_failed /
    /// allow_missing at this level): every token found must verify.
    fn verify_provider<'r>(&'r self, p: usize, ctx: &mut Ctx<'_, 'r>) -> Result<Status, NeedKeys> {
        let provider = &self.providers[p];
        // Headers this provider writes are never taken from the client.
        if let Some(h) = &provider.forward_payload_header {
            ctx.req.remove(h);
        }
        for (h, _) in &provider.claim_to_headers {
            ctx.req.remove(h);
        }
        let mut tokens = provider.locations.extract(&ctx.req);
        if tokens.is_empty() {
            return Ok(Status::JwtMissed);
        }
        while let Some(token) = tokens.pop() {
            let s = self.verify_token(p, &token.token, &token.location, ctx)?;
            if s != Status::Ok {
                return Ok(s);
            }
        }
        Ok(Status::Ok)
    }

    fn verify_token<'r>(
        &'r self,
        p: usize,
        token: &str,
        location: &Location<'r>,
        ctx: &mut Ctx<'_, 'r>,
    ) -> Result<Status, NeedKeys> {
        let provider = &self.providers[p];
        if let Some(verified) = ctx.cache.lookup(p, token) {
            ctx.hits += 1;
            let s = provider.check_claims(&verified.jwt, ctx.now);
            if s != Status::Ok {
                return Ok(s);
            }
            self.handle_good(provider, &verified, location, ctx);
            return Ok(Status::Ok);
        }
        ctx.misses += 1;
        let jwt = match Jwt::parse(token) {
            Ok(j) => j,
            Err(s) => return Ok(s),
        };
        let s = provider.check_claims(&jwt, ctx.now);
        if s != Status::Ok {
            return Ok(s);
        }
        let s = match &provider.keys {
            KeySource::Inline(jwks) => jwks.verify(&jwt),
            KeySource::Remote(_) => match ctx.keys.keys(p) {
                KeyState::Pending => {
                    return Err(NeedKeys {
                        provider: p,
                        refetch: false,
                    })
                }
                KeyState::Failed => Status::JwksFetchFail,
                KeyState::Ready { jwks, can_refetch } => {
                    // A kid the current keys do not know: the issuer may
                    // have rotated; refetch once (rate-limited) before failing.
                    if can_refetch && !jwt.kid.is_empty() && !jwks.has_candidate(&jwt) {
                        return Err(NeedKeys {
                            provider: p,
                            refetch: true,
                        });
                    }
                    jwks.verify(&jwt)
                }
            },
        };
        if s != Status::Ok {
            return Ok(s);
        }
        let verified = Rc::new(Verified::new(provider, jwt));
        ctx.cache.insert(p, token, verified.clone());
        self.handle_good(provider, &verified, location, ctx);
        Ok(Status::Ok)
    }

    fn handle_good<'r>(
        &self,
        provider: &'r Provider,
        v: &Verified,
        location: &Location<'r>,
        ctx: &mut Ctx<'_, 'r>,
    ) {
        if let Some(h) = &provider.forward_payload_header {
            ctx.req.add(h, v.jwt.payload_b64.clone());
        }
        for ((header, _), value) in provider.claim_to_headers.iter().zip(&v.claim_headers) {
            if let Some(value) = value {
                ctx.req.add(header, value.clone());
            }
        }
        if !provider.forward {
            match location {
                Location::Header(name) => ctx.req.remove(name),
                Location::Param(name) => {
                    let path = request::remove_param(&ctx.req.path(), name);
                    ctx.req.set_path(path);
                }
                // Envoy leaves cookies in place (TODO upstream).
                Location::Cookie => {}
            }
        }
        ctx.payload = Some(v.payload.clone());
        ctx.principal = v.principal.clone();
    }

    /// Whether any provider fetches its keys remotely.
    pub fn has_remote(&self) -> bool {
        self.providers
            .iter()
            .any(|p| matches!(p.keys, KeySource::Remote(_)))
    }

    pub fn remote(&self, provider: usize) -> Option<&RemoteJwks> {
        match &self.providers.get(provider)?.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Inline(_) => None,
        }
    }
}

impl Provider {
    /// Issuer, time and audiences, checked before the signature (and again on
    /// every cache hit: `exp` moves on).
    fn check_claims(&self, jwt: &Jwt, now: u64) -> Status {
        if !self.issuer.is_empty() && jwt.iss != self.issuer {
            return Status::JwtUnknownIssuer;
        }
        let s = jwt.verify_time(now, CLOCK_SKEW_SECONDS);
        if s != Status::Ok {
            return s;
        }
        if !audiences_allowed(&self.audiences, &jwt.audiences) {
            return Status::JwtAudienceNotAllowed;
        }
        Status::Ok
    }
}

/// `OPTIONS` with non-empty `origin` and `access-control-request-method`.
fn is_cors_preflight(req: &Request) -> bool {
    req.header_bytes(":method") == Some(b"OPTIONS")
        && req.header_bytes("origin").is_some_and(|v| !v.is_empty())
        && req
            .header_bytes("access-control-request-method")
            .is_some_and(|v| !v.is_empty())
}

fn sanitize_audience(aud: &str) -> &str {
    let s = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    s.strip_suffix('/').unwrap_or(s)
}

fn audiences_allowed(config: &[String], token: &[String]) -> bool {
    config.is_empty()
        || token
            .iter()
            .any(|a| config.iter().any(|c| c == sanitize_audience(a)))
}

/// `StructUtils::GetValue` with a dotted path.
fn claim_at<'a>(payload: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = payload.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}

/// `addJWTClaimToHeader`: strings as is, numbers as integers when they are
/// whole and fit u64 (else C++ `std::to_string(double)`), bools as
/// true/false, objects and lists as base64 of their JSON.
fn claim_header_value(payload: &Map<String, Value>, claim: &str) -> Option<String> {
    let v = match claim_at(payload, claim)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            let d = n.as_f64().unwrap_or(0.0);
            if d < 0.0 || d >= u64::MAX as f64 || d.fract() != 0.0 {
                format!("{d:.6}")
            } else {
                (d as u64).to_string()
            }
        }
        Value::Bool(b) => b.to_string(),
        v @ (Value::Object(_) | Value::Array(_)) => b64::encode_std(v.to_string().as_bytes()),
        Value::Null => return None,
    };
    (!v.is_empty()).then_some(v)
}

/// Envoy `normalize_payload_in_metadata`: listed claims that are strings
/// become lists of their space-separated words.
fn normalize_payload(payload: &Map<String, Value>, claims: &[String]) -> Value {
    let mut out = payload.clone();
    for claim in claims {
        if let Some(Value::String(s)) = payload.get(claim) {
            let words: Vec<Value> = s
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(|w| Value::String(w.to_string()))
                .collect();
            if !words.is_empty() {
                out.insert(claim.clone(), Value::Array(words));
            }
        }
    }
    Value::Object(out)
}
