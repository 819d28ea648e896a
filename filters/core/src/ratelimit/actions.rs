//! The `rate_limits[].actions` that turn a request into descriptors, as Envoy's
//! `Router::*Action::populateDescriptor` and `RateLimitPolicy::populateDescriptors`.

use std::net::IpAddr;

use regex_lite::Regex;

use super::config::{HeaderReads, RequestView};

/// Envoy `StringMatcher` (`bool` = `ignore_case`, ASCII as Envoy).
#[derive(Debug, Clone)]
pub enum StringMatcher {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    /// RE2 syntax, full match.
    Regex(Regex),
}

impl StringMatcher {
    pub fn regex(re: &str, _ignore_case: bool) -> Result<StringMatcher, String> {
        Regex::new(&format!("^(?:{re})$"))
            .map(StringMatcher::Regex)
            .map_err(|e| format!("invalid regex: {e}"))
    }

    pub fn matches(&self, v: &str) -> bool {
        fn lower(s: &str, ic: bool) -> std::borrow::Cow<'_, str> {
            if ic {
                std::borrow::Cow::Owned(s.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(s)
            }
        }
        match self {
            StringMatcher::Exact(p, ic) => lower(v, *ic) == lower(p, *ic),
            StringMatcher::Prefix(p, ic) => lower(v, *ic).starts_with(&*lower(p, *ic)),
            StringMatcher::Suffix(p, ic) => lower(v, *ic).ends_with(&*lower(p, *ic)),
            StringMatcher::Contains(p, ic) => lower(v, *ic).contains(&*lower(p, *ic)),
            StringMatcher::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug, Clone)]
pub enum HeaderMatch {
    /// `exact_match`; an empty value matches any present header.
    Exact(String),
    String(StringMatcher),
    /// `[start, end)` on the value parsed as an integer.
    Range(i64, i64),
    Present(bool),
}

/// Envoy `config.route.v3.HeaderMatcher`, evaluated as `HeaderUtility::matchHeaders`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: String,
    pub kind: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = req.header_joined(&self.name);
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_as_empty => String::new(),
            None => {
                // An absent header only satisfies a presence matcher that wants
                // absence (`present_match: false`, or `true` inverted).
                let present = match self.kind {
                    HeaderMatch::Present(p) => Some(p),
                    _ => None,
                };
                return match present {
                    Some(p) => p == self.invert,
                    None => false,
                };
            }
        };
        let m = match &self.kind {
            HeaderMatch::Exact(e) => e.is_empty() || value == *e,
            HeaderMatch::String(s) => s.matches(&value),
            HeaderMatch::Range(start, end) => {
                value.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
            }
            HeaderMatch::Present(p) => *p,
        };
        m != self.invert
    }
}

#[derive(Debug, Clone)]
pub enum QueryParameterMatcher {
    Present,
    String(StringMatcher),
}

#[derive(Debug, Clone)]
pub enum Action {
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    GenericKey {
        descriptor_key: String,
        descriptor_value: String,
    },
    HeaderValueMatch {
        descriptor_key: String,
        descriptor_value: String,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
    QueryParameters {
        name: String,
        descriptor_key: String,
        skip_if_absent: bool,
    },
    MaskedRemoteAddress {
        v4_prefix_len: u8,
        v6_prefix_len: u8,
    },
    QueryParameterValueMatch {
        descriptor_key: String,
        descriptor_value: String,
        expect_match: bool,
        matchers: Vec<(String, QueryParameterMatcher)>,
    },
}

/// What one action yields: an entry, nothing (skipped, e.g. `skip_if_absent`),
/// or "no descriptor from this rate limit at all".
enum Produced {
    Entry(String, String),
    Skip,
    Abort,
}

impl Action {
    fn produce(&self, req: &RequestView<'_>) -> Produced {
        match self {
            Action::RequestHeaders {
                header_name,
                descriptor_key,
                skip_if_absent,
            } => match req.header(header_name) {
                Some(v) => Produced::Entry(
                    descriptor_key.clone(),
                    String::from_utf8_lossy(v).into_owned(),
                ),
                None if *skip_if_absent => Produced::Skip,
                None => Produced::Abort,
            },
            Action::RemoteAddress => match req.remote_ip {
                Some(ip) => Produced::Entry("remote_address".into(), ip.to_string()),
                None => Produced::Abort,
            },
            Action::GenericKey {
                descriptor_key,
                descriptor_value,
            } => Produced::Entry(descriptor_key.clone(), descriptor_value.clone()),
            Action::HeaderValueMatch {
                descriptor_key,
                descriptor_value,
                expect_match,
                headers,
            } => {
                if *expect_match == headers.iter().all(|h| h.matches(req)) {
                    Produced::Entry(descriptor_key.clone(), descriptor_value.clone())
                } else {
                    Produced::Abort
                }
            }
            Action::QueryParameters {
                name,
                descriptor_key,
                skip_if_absent,
            } => match query_param(req.path(), name) {
                Some(v) => Produced::Entry(descriptor_key.clone(), v),
                None if *skip_if_absent => Produced::Skip,
                None => Produced::Abort,
            },
            Action::MaskedRemoteAddress {
                v4_prefix_len,
                v6_prefix_len,
            } => match req.remote_ip {
                Some(ip) => Produced::Entry(
                    "masked_remote_address".into(),
                    masked(ip, *v4_prefix_len, *v6_prefix_len),
                ),
                None => Produced::Abort,
            },
            Action::QueryParameterValueMatch {
                descriptor_key,
                descriptor_value,
                expect_match,
                matchers,
            } => {
                let all =
                    matchers
                        .iter()
                        .all(|(name, m)| match (query_param(req.path(), name), m) {
                            (Some(_), QueryParameterMatcher::Present) => true,
                            (Some(v), QueryParameterMatcher::String(s)) => s.matches(&v),
                            (None, _) => false,
                        });
                if *expect_match == all {
                    Produced::Entry(descriptor_key.clone(), descriptor_value.clone())
                } else {
                    Produced::Abort
                }
            }
        }
    }
}

/// One `rate_limits` entry: its actions make at most one descriptor.
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    pub actions: Vec<Action>,
}

impl RateLimitPolicy {
    pub fn descriptor(&self, req: &RequestView<'_>) -> Option<Vec<(String, String)>> {
        let mut entries = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            match a.produce(req) {
                Produced::Entry(k, v) => entries.push((k, v)),
                Produced::Skip => {}
                Produced::Abort => return None,
            }
        }
        Some(entries)
    }
}

/// The request descriptors of a `rate_limits` list, as Envoy's
/// `RateLimitConfig::populateDescriptors`: one per entry, none for an entry
/// whose action could not produce its part.
pub fn descriptors(
    policies: &[RateLimitPolicy],
    req: &RequestView<'_>,
) -> Vec<Vec<(String, String)>> {
    policies.iter().filter_map(|p| p.descriptor(req)).collect()
}

/// What [`descriptors`] reads of the request headers (fetching the header
/// map is the costliest host call a request makes).
pub fn header_reads(policies: &[RateLimitPolicy]) -> HeaderReads {
    let mut names = Vec::new();
    for a in policies.iter().flat_map(|p| &p.actions) {
        match a {
            Action::RequestHeaders { header_name, .. } => names.push(header_name.clone()),
            Action::HeaderValueMatch { .. }
            | Action::QueryParameters { .. }
            | Action::QueryParameterValueMatch { .. } => return HeaderReads::All,
            Action::RemoteAddress
            | Action::GenericKey { .. }
            | Action::MaskedRemoteAddress { .. } => {}
        }
    }
    if names.is_empty() {
        HeaderReads::Nothing
    } else {
        HeaderReads::Named(names)
    }
}

/// Whether [`descriptors`] reads the client address (`source.address`).
pub fn reads_remote_address(policies: &[RateLimitPolicy]) -> bool {
    policies.iter().flat_map(|p| &p.actions).any(|a| {
        matches!(
            a,
            Action::RemoteAddress | Action::MaskedRemoteAddress { .. }
        )
    })
}

/// `a.b.c.d/len` with host bits cleared (Envoy `CidrRange::asString`).
pub fn masked(ip: IpAddr, v4_len: u8, v6_len: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if v4_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(v4_len))
            };
            format!("{}/{}", std::net::Ipv4Addr::from(bits & mask), v4_len)
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if v6_len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6_len))
            };
            format!("{}/{}", std::net::Ipv6Addr::from(bits & mask), v6_len)
        }
    }
}

/// The first value of `name` in the query string, percent-decoded (Envoy
/// `QueryParamsMulti::parseAndDecodeQueryString` + `getFirstValue`).
pub fn query_param(path: &[u8], name: &str) -> Option<String> {
    let q = path
        .iter()
        .position(|b| *b == b'?')
        .map(|i| &path[i + 1..])?;
    let q = match q.iter().position(|b| *b == b'#') {
        Some(i) => &q[..i],
        None => q,
    };
    for pair in q.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        if percent_decode(k) == name.as_bytes() {
            return Some(String::from_utf8_lossy(&percent_decode(v)).into_owned());
        }
    }
    None
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}
