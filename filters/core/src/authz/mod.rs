//! Istio AuthorizationPolicy, decided exactly as the Envoy RBAC filters istiod
//! generates for it would decide.
//!
//! Policies are validated like Istio's admission validation, then compiled
//! once into the RBAC shape istiod emits (one policy per rule; a rule matches
//! iff any permission and any principal match; every field an AND of
//! OR-lists, `not*` negated). Evaluation walks that compiled form against a
//! lazily-filled request view, in istiod's filter order: CUSTOM, AUDIT, DENY,
//! ALLOW, each with its dry-run (shadow) rules.

pub(crate) mod compile;
pub mod config;
mod explain;
pub mod ext_authz;
mod guard;
pub mod matchers;
pub mod metadata;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde_json::Value;

use crate::config::{from_json, ConfigError};
use crate::http_match::starts_with_bytes;
pub use compile::{ExtAuthzService, ExtAuthzSettings, GrpcService, HttpService};
pub use config::{Action, AuthzConfig};
pub use explain::NearestAllow;
pub use ext_authz::{CheckAttributes, CheckOk, ExtAuthzOutcome};
use matchers::{Cidr, StrMatch};

/// Everything a policy may look at, fetched lazily by the host glue (each
/// accessor may cost a hostcall, so only what compiled policies need is asked).
pub trait RequestAttrs {
    /// Whether any value of a request header (lower-case name, pseudo-headers
    /// included; `""` for an empty value) satisfies `pred`, trying them in
    /// order and stopping at the first that does; `None` when the header is
    /// absent. `slot` is the name's index in [`Authz::header_names`] (hosts may
    /// use it to find the header without comparing names). A predicate rather
    /// than a slice so a host can hand out values in place, without copying;
    /// values as bytes, as Envoy's RBAC compares them (no UTF-8 check).
    fn header_any(
        &mut self,
        slot: usize,
        name: &str,
        pred: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<bool>;
    /// `:path` without query and fragment (Envoy `PathUtil::removeQueryAndFragment`),
    /// as bytes like header values; hosts compute it once per request (see
    /// [`crate::http_match::strip_query`]).
    fn url_path(&mut self) -> Option<&[u8]>;
    /// The direct peer (Envoy `direct_remote_ip`); None when the host cannot
    /// tell (see docs: the remote address came from `x-forwarded-for`).
    fn direct_ip(&mut self) -> Option<IpAddr>;
    /// The trusted client address (Envoy `remote_ip`, XFF/PROXY-adjusted).
    fn remote_ip(&mut self) -> Option<IpAddr>;
    fn destination_ip(&mut self) -> Option<IpAddr>;
    fn destination_port(&mut self) -> Option<u16>;
    /// TLS SNI; empty when none.
    fn requested_server_name(&mut self) -> &str;
    /// The peer certificate's names in the order Envoy's `authenticated`
    /// matcher tries them (URI SANs, DNS SANs, subject). None without a peer
    /// certificate (plaintext): then no `authenticated` matcher matches.
    fn peer_names(&mut self) -> Option<&[String]>;
    /// The verified JWT payload (jwt_authn `payload_in_metadata`).
    fn jwt_payload(&mut self) -> Option<&Value>;
    /// Dynamic metadata of one filter namespace, as JSON.
    fn filter_metadata(&mut self, filter: &str) -> Option<&Value>;
}

/// Which request attributes the compiled policies read, so the glue fetches
/// nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub headers: bool,
    pub direct_ip: bool,
    pub remote_ip: bool,
    pub destination_ip: bool,
    pub destination_port: bool,
    pub sni: bool,
    pub peer: bool,
    pub jwt: bool,
    pub metadata: bool,
}

/// A leaf matcher of Envoy RBAC.
#[derive(Debug, Clone)]
pub(crate) enum Leaf {
    Any,
    /// Header matcher: `None` = `present_match`.
    Header {
        name: String,
        /// Index of `name` in `Authz::header_names`, set after compilation.
        slot: usize,
        m: Option<StrMatch>,
        ignore_case: bool,
    },
    /// `urlPath` / `uriTemplate`: matched against `:path` without query/fragment.
    Path(StrMatch),
    DestPort(u16),
    DirectIp(Cidr),
    RemoteIp(Cidr),
    DestIp(Cidr),
    Sni(StrMatch),
    Authenticated(StrMatch),
    /// `payload.iss` AND `payload.sub` string matchers.
    RequestPrincipal {
        iss: StrMatch,
        sub: StrMatch,
    },
    /// Claim at `payload.<path>`: string matching any, or list with any
    /// string element matching any (istiod's `orMatch[listMatch oneOf, ...]`).
    Claim {
        path: Vec<String>,
        any_of: Vec<StrMatch>,
    },
    /// `experimental.envoy.filters.*`: metadata `filter`/`key`; each value a
    /// string matcher or (`[v]`) a list-oneOf matcher.
    Metadata {
        filter: String,
        key: String,
        any_of: Vec<(bool, StrMatch)>,
    },
}

/// One AND-ed term: OR of leaves, optionally negated (`notId`/`notRule`).
#[derive(Debug, Clone)]
pub(crate) struct Cond {
    pub negate: bool,
    pub any_of: Vec<Leaf>,
}

/// One RBAC policy (= one Istio rule).
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub id: String,
    /// OR of AND-lists.
    pub permissions: Vec<Vec<Cond>>,
    pub principals: Vec<Vec<Cond>>,
    /// Literal prefixes one of which the request path must start with for
    /// the policy to match (each permission AND-list holds a path condition),
    /// set at compile time; `None` when no such guard exists. Most policies
    /// name paths, so most of a large set is passed over with a `starts_with`.
    pub path_guard: Option<Vec<String>>,
}

/// The policies of one RBAC filter section (`rules` or `shadowRules`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Engine {
    pub policies: Vec<Policy>,
    /// What a policy whose outcome hangs on an unknown direct peer counts as:
    /// a match in DENY and CUSTOM engines (the request is denied or checked),
    /// no match in ALLOW and AUDIT ones, so an unknown address never opens a
    /// door a known one would keep shut.
    pub unknown_peer_matches: bool,
    /// The policies' path guards as one trie, when enough have one
    /// (`guard::MIN_GUARDED`); set at compile time.
    pub guard_index: Option<guard::GuardIndex>,
}

impl Engine {
    /// The first matching policy's id (Envoy reports the first match too).
    fn first_match<R: RequestAttrs + ?Sized>(&self, req: &mut R) -> Option<&str> {
        let Some(index) = &self.guard_index else {
            return self
                .policies
                .iter()
                .find(|p| p.path_may_match(req) && self.matches(p, req))
                .map(|p| p.id.as_str());
        };
        // Only the policies whose guard admits the path (and those without one).
        let candidates = index.candidates(req.url_path());
        let found = candidates
            .iter()
            .filter_map(|i| self.policies.get(i))
            .find(|p| self.matches(p, req));
        found.map(|p| p.id.as_str())
    }

    fn matches<R: RequestAttrs + ?Sized>(&self, p: &Policy, req: &mut R) -> bool {
        p.matches(req).unwrap_or(self.unknown_peer_matches)
    }

    /// Builds the guard trie when it pays (see `guard::MIN_GUARDED`).
    pub(crate) fn index_guards(&mut self) {
        self.guard_index = guard::GuardIndex::build(&self.policies);
    }
}

impl Policy {
    /// False only when the path guard proves the policy cannot match: then
    /// every permission AND-list has a path condition that is false, so each
    /// is false whatever else is unknown, and so is the policy (it never
    /// reaches the unknown-peer default).
    fn path_may_match<R: RequestAttrs + ?Sized>(&self, req: &mut R) -> bool {
        match &self.path_guard {
            None => true,
            Some(prefixes) => req
                .url_path()
                .is_some_and(|p| prefixes.iter().any(|x| starts_with_bytes(p, x.as_bytes()))),
        }
    }

    /// Whether the policy matches, in three-valued (Kleene) logic: `None` when
    /// the outcome depends on a direct peer the host cannot tell (see
    /// [`Leaf::eval`]). With every leaf known this is RBAC's two-valued match,
    /// short-circuited the same way.
    fn matches<R: RequestAttrs + ?Sized>(&self, req: &mut R) -> Option<bool> {
        let permissions = any_of_all(&self.permissions, req);
        if permissions == Some(false) {
            return Some(false);
        }
        match (permissions, any_of_all(&self.principals, req)) {
            (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    }
}

/// Kleene OR of AND-lists.
fn any_of_all<R: RequestAttrs + ?Sized>(lists: &[Vec<Cond>], req: &mut R) -> Option<bool> {
    let mut unknown = false;
    for and in lists {
        match all(and, req) {
            Some(true) => return Some(true),
            None => unknown = true,
            Some(false) => {}
        }
    }
    (!unknown).then_some(false)
}

/// Kleene AND of conditions, each a (possibly negated) OR of leaves.
fn all<R: RequestAttrs + ?Sized>(conds: &[Cond], req: &mut R) -> Option<bool> {
    let mut unknown = false;
    for c in conds {
        let mut any = Some(false);
        for l in &c.any_of {
            match l.eval(req) {
                Some(true) => {
                    any = Some(true);
                    break;
                }
                None => any = None,
                Some(false) => {}
            }
        }
        match any.map(|a| a != c.negate) {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    (!unknown).then_some(true)
}

impl Leaf {
    /// The leaf's value; `None` only for a direct-peer leaf when the host cannot
    /// tell the peer (the client address came from `x-forwarded-for`).
    fn eval<R: RequestAttrs + ?Sized>(&self, req: &mut R) -> Option<bool> {
        match self {
            Leaf::DirectIp(c) => req.direct_ip().map(|ip| c.contains(ip)),
            _ => Some(self.matches(req)),
        }
    }

    fn matches<R: RequestAttrs + ?Sized>(&self, req: &mut R) -> bool {
        match self {
            Leaf::Any => true,
            Leaf::Header {
                name,
                slot,
                m,
                ignore_case,
            } => match m {
                // Present, whatever its value.
                None => req.header_any(*slot, name, &mut |_| true).is_some(),
                // Envoy 1.40 matches a repeated header value by value (a twin
                // test shows `x: a` + `x: b` does not match exact `a,b`).
                Some(m) => req
                    .header_any(*slot, name, &mut |v| {
                        if *ignore_case {
                            m.matches_bytes_ignore_case(v)
                        } else {
                            m.matches_bytes(v)
                        }
                    })
                    .unwrap_or(false),
            },
            Leaf::Path(m) => req.url_path().is_some_and(|p| m.matches_bytes(p)),
            Leaf::DestPort(p) => req.destination_port() == Some(*p),
            Leaf::DirectIp(c) => req.direct_ip().is_some_and(|ip| c.contains(ip)),
            Leaf::RemoteIp(c) => req.remote_ip().is_some_and(|ip| c.contains(ip)),
            Leaf::DestIp(c) => req.destination_ip().is_some_and(|ip| c.contains(ip)),
            Leaf::Sni(m) => m.matches(req.requested_server_name()),
            Leaf::Authenticated(m) => req
                .peer_names()
                .is_some_and(|names| names.iter().any(|n| m.matches(n))),
            Leaf::RequestPrincipal { iss, sub } => match req.jwt_payload() {
                Some(p) => {
                    let s = |k: &str| p.get(k).and_then(Value::as_str);
                    s("iss").is_some_and(|v| iss.matches(v))
                        && s("sub").is_some_and(|v| sub.matches(v))
                }
                None => false,
            },
            Leaf::Claim { path, any_of } => {
                let Some(mut v) = req.jwt_payload() else {
                    return false;
                };
                for k in path {
                    match v.get(k.as_str()) {
                        Some(next) => v = next,
                        None => return false,
                    }
                }
                match v {
                    Value::String(s) => any_of.iter().any(|m| m.matches(s)),
                    Value::Array(items) => items.iter().any(|i| {
                        i.as_str()
                            .is_some_and(|s| any_of.iter().any(|m| m.matches(s)))
                    }),
                    _ => false,
                }
            }
            Leaf::Metadata {
                filter,
                key,
                any_of,
            } => {
                let Some(v) = req
                    .filter_metadata(filter)
                    .and_then(|m| m.get(key.as_str()))
                else {
                    return false;
                };
                any_of.iter().any(|(list, m)| match (list, v) {
                    (false, Value::String(s)) => m.matches(s),
                    (true, Value::Array(items)) => items
                        .iter()
                        .any(|i| i.as_str().is_some_and(|s| m.matches(s))),
                    _ => false,
                })
            }
        }
    }
}

/// Compiled policies for one plugin configuration.
#[derive(Debug, Clone)]
pub struct Authz {
    /// CUSTOM rules (RBAC shadow rules istiod puts before ext_authz) and the
    /// provider they call.
    pub(crate) custom: Option<(Engine, ExtAuthzSettings)>,
    pub(crate) audit: Engine,
    pub(crate) deny: Engine,
    pub(crate) deny_shadow: Option<Engine>,
    /// None when no enforced ALLOW policy exists (then ALLOW enforces nothing).
    pub(crate) allow: Option<Engine>,
    pub(crate) allow_shadow: Option<Engine>,
    pub needs: Needs,
    pub jwt_payload_in_metadata: String,
    /// Every request header name a policy reads, by slot.
    pub(crate) header_names: Vec<String>,
}

/// The result of one dry-run (shadow) engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow<'a> {
    pub denied: bool,
    /// The matched dry-run policy, if any.
    pub policy_id: Option<&'a str>,
}

/// The enforced result of AUDIT, DENY and ALLOW for one request. Policy ids
/// are borrowed from the compiled policies: a request allocates nothing for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    /// The policy that decided: the matching DENY policy, or the matching
    /// ALLOW policy. None when allowed without ALLOW policies or denied
    /// because none matched.
    pub policy_id: Option<&'a str>,
    /// The matching AUDIT policy (access-log hint), if any.
    pub audit_policy: Option<&'a str>,
    /// Dry-run results, in evaluation order (DENY's, then ALLOW's when reached).
    pub shadows: Vec<Shadow<'a>>,
}

impl Decision<'_> {
    /// The value written to filter state `meshwasm.authz_result`.
    pub fn result(&self) -> &'static str {
        if !self.allowed {
            "denied"
        } else if self.shadows.iter().any(|s| s.denied) {
            "shadow_denied"
        } else if self.audit_policy.is_some() {
            "audit"
        } else {
            "allowed"
        }
    }
}

impl Authz {
    /// Parses, validates and compiles a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Authz, ConfigError> {
        let cfg: AuthzConfig = from_json(bytes)?;
        compile::compile(&cfg)
    }

    pub fn from_config(cfg: &AuthzConfig) -> Result<Authz, ConfigError> {
        compile::compile(cfg)
    }

    /// The ext_authz provider to call when a CUSTOM rule matches, with the
    /// matching policy id (`istio-ext-authz-<provider>-ns[..]-policy[..]-rule[..]`).
    pub fn check_custom<R: RequestAttrs + ?Sized>(
        &self,
        req: &mut R,
    ) -> Option<(&ExtAuthzSettings, String)> {
        let (engine, settings) = self.custom.as_ref()?;
        engine.first_match(req).map(|id| (settings, id.to_string()))
    }

    /// Header names policies read; `RequestAttrs::header`'s slot indexes this.
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// The CUSTOM provider, when any CUSTOM policy exists.
    pub fn custom_settings(&self) -> Option<&ExtAuthzSettings> {
        self.custom.as_ref().map(|(_, s)| s)
    }

    pub fn has_custom(&self) -> bool {
        self.custom.is_some()
    }

    /// Every engine (CUSTOM, AUDIT, DENY and ALLOW, enforced and dry-run),
    /// for passes over all compiled policies.
    pub(crate) fn engines_mut(&mut self) -> impl Iterator<Item = &mut Engine> {
        [
            self.custom.as_mut().map(|(e, _)| e),
            Some(&mut self.audit),
            Some(&mut self.deny),
            self.deny_shadow.as_mut(),
            self.allow.as_mut(),
            self.allow_shadow.as_mut(),
        ]
        .into_iter()
        .flatten()
    }

    /// AUDIT, then DENY (shadow, rules), then ALLOW (shadow, rules), as the
    /// three RBAC filters istiod emits run in that order.
    pub fn evaluate<R: RequestAttrs + ?Sized>(&self, req: &mut R) -> Decision<'_> {
        let audit_policy = self.audit.first_match(req);
        let mut shadows = Vec::new();
        if let Some(shadow) = &self.deny_shadow {
            let id = shadow.first_match(req);
            shadows.push(Shadow {
                denied: id.is_some(),
                policy_id: id,
            });
        }
        if let Some(id) = self.deny.first_match(req) {
            return Decision {
                allowed: false,
                policy_id: Some(id),
                audit_policy,
                shadows,
            };
        }
        if let Some(shadow) = &self.allow_shadow {
            let id = shadow.first_match(req);
            shadows.push(Shadow {
                denied: id.is_none(),
                policy_id: id,
            });
        }
        let (allowed, policy_id) = match &self.allow {
            None => (true, None),
            Some(engine) => match engine.first_match(req) {
                Some(id) => (true, Some(id)),
                None => (false, None),
            },
        };
        Decision {
            allowed,
            policy_id,
            audit_policy,
            shadows,
        }
    }
}
