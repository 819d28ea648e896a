//! Why a request got its decision, for `meshwasm explain`: the ALLOW rule a
//! denied request came closest to, and the first of its conditions that
//! failed, each condition described in Istio's terms. Only the explaining
//! tool calls this; the filters run [`Authz::evaluate`] alone.

use std::fmt;

use super::matchers::{StrMatch, Tok};
use super::{all, Authz, Cond, Leaf, Policy, RequestAttrs};

/// The enforced ALLOW rule nearest to matching a request no ALLOW rule matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearestAllow<'a> {
    /// `ns[<ns>]-policy[<name>]-rule[<index>]`.
    pub policy_id: &'a str,
    /// Conditions the request satisfied, of `total`, in the rule's closest
    /// permission and principal alternatives.
    pub satisfied: usize,
    pub total: usize,
    /// The first failed condition (a permission before a principal), or None
    /// when the rule's outcome hung on a direct peer the host cannot tell.
    pub failed: Option<String>,
}

impl Authz {
    /// The enforced ALLOW rule with the most satisfied conditions (the first
    /// such rule on a tie); None without enforced ALLOW policies.
    pub fn nearest_allow<R: RequestAttrs + ?Sized>(&self, req: &mut R) -> Option<NearestAllow<'_>> {
        let engine = self.allow.as_ref()?;
        let mut best: Option<NearestAllow<'_>> = None;
        for p in &engine.policies {
            let n = nearest_in(p, req);
            // Closest by the share of conditions met; ties keep the earlier rule.
            let better = best
                .as_ref()
                .is_none_or(|b| n.satisfied * b.total.max(1) > b.satisfied * n.total.max(1));
            if better {
                best = Some(n);
            }
        }
        best
    }
}

/// The closest alternative of one OR of AND-lists: (satisfied, total, first failed).
fn closest<R: RequestAttrs + ?Sized>(
    lists: &[Vec<Cond>],
    req: &mut R,
) -> (usize, usize, Option<String>) {
    let mut best: Option<(usize, usize, Option<String>)> = None;
    for and in lists {
        let mut satisfied = 0;
        let mut failed = None;
        for c in and {
            if all(std::slice::from_ref(c), req) == Some(true) {
                satisfied += 1;
            } else if failed.is_none() {
                failed = Some(c.to_string());
            }
        }
        let total = and.len();
        let better = best
            .as_ref()
            .is_none_or(|(s, t, _)| satisfied * (*t).max(1) > *s * total.max(1));
        if better {
            best = Some((satisfied, total, failed));
        }
    }
    best.unwrap_or((0, 0, None))
}

fn nearest_in<'a, R: RequestAttrs + ?Sized>(p: &'a Policy, req: &mut R) -> NearestAllow<'a> {
    let (ps, pt, pf) = closest(&p.permissions, req);
    let (qs, qt, qf) = closest(&p.principals, req);
    NearestAllow {
        policy_id: &p.id,
        satisfied: ps + qs,
        total: pt + qt,
        failed: pf.or(qf),
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negate {
            f.write_str("not ")?;
        }
        let many = self.any_of.len() > 1;
        if many {
            f.write_str("(")?;
        }
        for (i, l) in self.any_of.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{l}")?;
        }
        if many {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leaf::Any => f.write_str("any request"),
            Leaf::Header {
                name,
                m: None,
                ignore_case: _,
                slot: _,
            } => write!(f, "header {name} present"),
            Leaf::Header {
                name,
                m: Some(m),
                ignore_case,
                slot: _,
            } => {
                let case = if *ignore_case { " (any case)" } else { "" };
                // Istio's `hosts` become a match on `:authority`.
                let name = if name == ":authority" { "host" } else { name };
                write!(f, "{name} {m}{case}")
            }
            Leaf::Path(m) => write!(f, "path {m}"),
            Leaf::DestPort(p) => write!(f, "destination port {p}"),
            Leaf::DirectIp(c) => write!(f, "source ip (direct peer) in {c}"),
            Leaf::RemoteIp(c) => write!(f, "remote ip in {c}"),
            Leaf::DestIp(c) => write!(f, "destination ip in {c}"),
            Leaf::Sni(m) => write!(f, "sni {m}"),
            Leaf::Authenticated(m) => write!(f, "peer principal {m}"),
            Leaf::RequestPrincipal { iss, sub } => {
                write!(f, "request principal: iss {iss} and sub {sub}")
            }
            Leaf::Claim { path, any_of } => {
                write!(f, "jwt claim {} ", path.join("."))?;
                list(f, any_of.iter())
            }
            Leaf::Metadata {
                filter,
                key,
                any_of,
            } => {
                write!(f, "metadata {filter}.{key} ")?;
                list(f, any_of.iter().map(|(_, m)| m))
            }
        }
    }
}

fn list<'a>(f: &mut fmt::Formatter<'_>, ms: impl Iterator<Item = &'a StrMatch>) -> fmt::Result {
    for (i, m) in ms.enumerate() {
        if i > 0 {
            f.write_str(" or ")?;
        }
        write!(f, "{m}")?;
    }
    Ok(())
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrMatch::Exact(s) => write!(f, "= {s:?}"),
            StrMatch::Prefix(s) => write!(f, "starts with {s:?}"),
            StrMatch::Suffix(s) => write!(f, "ends with {s:?}"),
            StrMatch::Regex(re) => {
                // Compiled as `^(?:<pattern>)$`: show the user's pattern.
                let p = re.as_str();
                let p = p
                    .strip_prefix("^(?:")
                    .and_then(|p| p.strip_suffix(")$"))
                    .unwrap_or(p);
                write!(f, "matches regex {p:?}")
            }
            StrMatch::NonEmpty => f.write_str("non-empty"),
            StrMatch::Template(toks) => {
                let t: String = toks
                    .iter()
                    .map(|t| match t {
                        Tok::Lit(s) => s.as_str(),
                        Tok::One => "*",
                        Tok::Many => "**",
                    })
                    .collect();
                write!(f, "matches template {t:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::net::IpAddr;

    use serde_json::{json, Value};

    use super::*;

    #[derive(Default)]
    struct Req {
        headers: Vec<(String, String)>,
        path: Vec<u8>,
        peer: Option<Vec<String>>,
    }

    impl RequestAttrs for Req {
        fn header_any(
            &mut self,
            _slot: usize,
            name: &str,
            pred: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Option<bool> {
            let mut found = None;
            for (k, v) in &self.headers {
                if k == name {
                    if pred(v.as_bytes()) {
                        return Some(true);
                    }
                    found = Some(false);
                }
            }
            found
        }
        fn url_path(&mut self) -> Option<&[u8]> {
            Some(&self.path)
        }
        fn direct_ip(&mut self) -> Option<IpAddr> {
            None
        }
        fn remote_ip(&mut self) -> Option<IpAddr> {
            None
        }
        fn destination_ip(&mut self) -> Option<IpAddr> {
            None
        }
        fn destination_port(&mut self) -> Option<u16> {
            None
        }
        fn requested_server_name(&mut self) -> &str {
            ""
        }
        fn peer_names(&mut self) -> Option<&[String]> {
            self.peer.as_deref()
        }
        fn jwt_payload(&mut self) -> Option<&Value> {
            None
        }
        fn filter_metadata(&mut self, _filter: &str) -> Option<&Value> {
            None
        }
    }

    fn authz(policies: Value) -> Authz {
        Authz::from_json(json!({ "policies": policies }).to_string().as_bytes()).unwrap()
    }

    fn policy(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "foo"}, "spec": spec})
    }

    fn get(path: &str) -> Req {
        Req {
            headers: vec![
                (":method".into(), "GET".into()),
                (":path".into(), path.into()),
            ],
            path: path.as_bytes().to_vec(),
            peer: None,
        }
    }

    #[test]
    fn nearest_allow_names_the_closest_rule_and_its_first_failed_condition() {
        let a = authz(json!([policy(
            "api",
            json!({"rules": [
                {"to": [{"operation": {"paths": ["/admin"]}}]},
                {"to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}],
                 "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}
            ]})
        )]));
        let mut req = get("/api/x");
        assert!(!a.evaluate(&mut req).allowed);
        let n = a.nearest_allow(&mut req).unwrap();
        assert_eq!(n.policy_id, "ns[foo]-policy[api]-rule[1]");
        assert_eq!((n.satisfied, n.total), (2, 3));
        assert_eq!(
            n.failed.as_deref(),
            Some("peer principal = \"spiffe://cluster.local/ns/a/sa/b\"")
        );
        // The path is the first failed condition of the path-only rule.
        let mut req = get("/other");
        let n = a.nearest_allow(&mut req).unwrap();
        assert_eq!(n.policy_id, "ns[foo]-policy[api]-rule[1]");
        assert_eq!(n.failed.as_deref(), Some("path starts with \"/api/\""));
    }

    #[test]
    fn conditions_read_in_istio_terms() {
        let a = authz(json!([policy(
            "p",
            json!({"rules": [{"to": [{"operation": {
                "hosts": ["example.com"], "notPaths": ["/a*"], "paths": ["/x/{*}"]}}],
                "when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]}]})
        )]));
        let mut req = get("/x/1");
        let n = a.nearest_allow(&mut req).unwrap();
        assert_eq!(
            n.failed.as_deref(),
            Some("host = \"example.com\" (any case)")
        );
        let text: Vec<String> = a.allow.as_ref().unwrap().policies[0].permissions[0]
            .iter()
            .map(|c| c.to_string())
            .chain(
                a.allow.as_ref().unwrap().policies[0].principals[0]
                    .iter()
                    .map(|c| c.to_string()),
            )
            .collect();
        assert!(
            text.contains(&"not path starts with \"/a\"".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"path matches template \"/x/*\"".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"source ip (direct peer) in 10.0.0.0/8".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn no_allow_policy_no_nearest() {
        let a = authz(json!([policy(
            "d",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]})
        )]));
        assert!(a.nearest_allow(&mut get("/x")).is_none());
    }
}
