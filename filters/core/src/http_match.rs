//! Istio VirtualService `HTTPMatchRequest`, evaluated the way Envoy evaluates the
//! `RouteMatch` istiod generates for it (pilot `route.go` `TranslateRouteMatch`).
//!
//! Semantics:
//! - A list of `match` entries is OR; the fields inside one entry are AND. An
//!   empty list (no `match`) matches every request; so does an entry `{}`.
//! - `uri`: `exact` and `regex` test `:path` without its query string and
//!   fragment; `prefix` tests the raw `:path` (query included), as Envoy's
//!   `path`/`safe_regex`/`prefix`. `ignoreUriCase` makes exact/prefix
//!   ASCII-case-insensitive and does not apply to regex (Envoy `case_sensitive`).
//! - `scheme`, `method`, `authority` are header matchers on `:scheme`,
//!   `:method`, `:authority` (case-sensitive; the authority includes the port).
//! - `headers`: names are lower-cased as Envoy's `LowerCaseString` does; several
//!   values of one header are joined with `,` before matching; `{}` means
//!   "present" (`regex: "*"` too, in `withoutHeaders` only: elsewhere Istio's
//!   validation refuses it as an invalid regex); `exact: ""` matches an empty value.
//! - `withoutHeaders`: the same matcher inverted, with a missing header treated
//!   as `""` (so `{exact: foo}` holds when the header is absent) except for the
//!   presence form, which holds when the header is absent.
//! - `queryParams`: the first value of the key in the raw (not percent-decoded)
//!   query string; `?key` has the value `""`; `{}` means present.
//! - Every regex is RE2 syntax, matched against the whole value (anchored).
//!   The engine is `regex-lite`: RE2's ASCII `\d \w \s \b`, codepoint-wise `.`;
//!   Unicode classes (`\p{..}`) and Unicode case folding are refused/ASCII-only.
//!
//! Refused with a clear error (not silently ignored, since ignoring them would
//! widen a route to traffic its author excluded): `sourceLabels`, `gateways`,
//! `sourceNamespace` and `port` — istiod uses them to choose which proxies get
//! the route, not to match requests; select workloads with the WasmPlugin
//! `selector`/`targetRefs` instead. Header names `@request.auth.claims...`
//! (JWT-claim routing via jwt_authn metadata) are refused too.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;

use regex_lite::Regex;
use serde::Deserialize;

use crate::config::{ConfigError, FieldPath};

/// Istio `StringMatch`: a oneof of `exact`, `prefix`, `regex`, or none (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// Istio `HTTPMatchRequest` (networking/v1alpha3/virtual_service.proto).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Informational (Istio appends it to the route name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Informational (Envoy route stat prefix).
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// A compiled string matcher (Envoy `StringMatcher`, plus `present_match`).
#[derive(Debug, Clone)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    /// Anchored: `^(?:re)$`, so `is_match` is RE2 `FullMatch`.
    Regex(FullMatchRegex),
    Present,
}

/// An RE2 full-match regex with the literal text every match starts with, so
/// most non-matching values are refused without running the regex engine
/// (`/items/[0-9]+` against `/bench` is one byte compare).
#[derive(Debug, Clone)]
pub struct FullMatchRegex {
    re: Regex,
    prefix: Vec<u8>,
}

impl FullMatchRegex {
    pub fn new(re: Regex, pattern: &str) -> FullMatchRegex {
        FullMatchRegex {
            re,
            prefix: literal_prefix(pattern).into_bytes(),
        }
    }

    pub fn is_match(&self, value: &[u8]) -> bool {
        // The prefix is ASCII: a value whose bytes do not start with it cannot
        // start with it after lossy UTF-8 conversion either.
        starts_with_bytes(value, &self.prefix) && self.re.is_match(&String::from_utf8_lossy(value))
    }
}

/// The literal text every full match of `pattern` starts with; conservative:
/// empty when the pattern has any alternation, and it stops at the first
/// character that is not plain ASCII text or is followed by a quantifier.
pub fn literal_prefix(pattern: &str) -> String {
    if pattern.contains('|') {
        return String::new();
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-_=:,;@!%&~<>'\"# ".contains(c);
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !plain(c) {
            break;
        }
        if chars
            .get(i + 1)
            .is_some_and(|n| matches!(n, '*' | '?' | '+' | '{'))
        {
            break;
        }
        out.push(c);
    }
    out
}

impl StringMatcher {
    /// Matches a present value (Present is decided by the caller).
    fn matches_value(&self, value: &[u8]) -> bool {
        match self {
            StringMatcher::Exact(e) => eq_bytes(value, e.as_bytes()),
            StringMatcher::Prefix(p) => value.starts_with(p.as_bytes()),
            StringMatcher::Regex(re) => re.is_match(value),
            StringMatcher::Present => true,
        }
    }
}

/// Where a `StringMatch` appears decides what Istio accepts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// `uri`: empty prefix allowed, `{}` means prefix `/`, no presence form.
    Uri,
    /// headers, method, authority, scheme, queryParams.
    Header,
    /// withoutHeaders: the only place Istio's validation lets `regex: "*"`
    /// through (elsewhere Go's regexp refuses it); it means "present".
    WithoutHeader,
}

/// Compiles an RE2 pattern for a full match. Istio refuses empty regexes and
/// patterns longer than 1024 bytes.
pub fn compile_full_match_regex(re: &str, path: &FieldPath) -> Result<Regex, ConfigError> {
    if re.is_empty() {
        return Err(ConfigError::new(
            path,
            "regex string match should not be empty",
        ));
    }
    if re.len() > 1024 {
        return Err(ConfigError::new(
            path,
            "regex is too large, max length allowed is 1024",
        ));
    }
    Regex::new(&format!("^(?:{re})$")).map_err(|e| {
        let first = e.to_string();
        let first = first.lines().last().unwrap_or("").trim().to_string();
        ConfigError::new(path, format!("invalid regex {re:?}: {first} (RE2 syntax)"))
    })
}

impl StringMatch {
    fn compile(&self, site: Site, path: &FieldPath) -> Result<StringMatcher, ConfigError> {
        let set = [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|o| o.is_some())
            .count();
        if set > 1 {
            return Err(ConfigError::new(
                path,
                "only one of exact, prefix, regex may be set",
            ));
        }
        if let Some(e) = &self.exact {
            return Ok(StringMatcher::Exact(e.clone()));
        }
        if let Some(p) = &self.prefix {
            if p.is_empty() && site != Site::Uri {
                return Err(ConfigError::new(
                    &path.field("prefix"),
                    "prefix string match should not be empty",
                ));
            }
            return Ok(StringMatcher::Prefix(p.clone()));
        }
        if let Some(r) = &self.regex {
            if r == "*" && site == Site::WithoutHeader {
                // Istio: `*` is not RE2; it is translated to present_match.
                return Ok(StringMatcher::Present);
            }
            return Ok(StringMatcher::Regex(FullMatchRegex::new(
                compile_full_match_regex(r, &path.field("regex"))?,
                r,
            )));
        }
        Ok(match site {
            Site::Header | Site::WithoutHeader => StringMatcher::Present,
            // TranslateRouteMatch keeps its default `prefix: "/"`.
            Site::Uri => StringMatcher::Prefix("/".to_string()),
        })
    }
}

/// Envoy `HeaderMatcher` as istiod builds it.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Lower-cased.
    pub name: String,
    pub matcher: StringMatcher,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    /// Envoy `HeaderUtility::matchHeaders` for one matcher.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = req.header(&self.name);
        let matched = match (&value, &self.matcher) {
            (None, StringMatcher::Present) => false,
            (None, m) if self.treat_missing_as_empty => m.matches_value(b""),
            (None, _) => false,
            (Some(v), m) => m.matches_value(v),
        };
        matched != self.invert
    }
}

/// Envoy `QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryParamMatcher {
    pub name: String,
    pub matcher: StringMatcher,
}

impl QueryParamMatcher {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        match req.query_param(&self.name) {
            None => false,
            Some(v) => self.matcher.matches_value(v),
        }
    }
}

/// Envoy `RouteMatch` path specifier.
#[derive(Debug, Clone)]
pub struct UriMatcher {
    pub matcher: StringMatcher,
    pub ignore_case: bool,
}

impl UriMatcher {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let raw = req.path();
        match &self.matcher {
            StringMatcher::Prefix(p) => {
                let p = p.as_bytes();
                if self.ignore_case {
                    starts_with_lower(raw, p)
                } else {
                    starts_with_bytes(raw, p)
                }
            }
            StringMatcher::Exact(e) => {
                let path = req.path_without_query();
                if self.ignore_case {
                    eq_lower(path, e.as_bytes())
                } else {
                    eq_bytes(path, e.as_bytes())
                }
            }
            // `case_sensitive` is ignored for safe_regex.
            StringMatcher::Regex(re) => re.is_match(req.path_without_query()),
            StringMatcher::Present => true,
        }
    }
}

/// One compiled `HTTPMatchRequest`: every condition must hold.
#[derive(Debug, Clone)]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<UriMatcher>,
    /// Including `:method`, `:authority`, `:scheme` and the inverted
    /// `withoutHeaders` matchers.
    pub headers: Vec<HeaderMatcher>,
    pub query_params: Vec<QueryParamMatcher>,
}

impl HttpMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.uri.as_ref().is_none_or(|u| u.matches(req))
            && self.headers.iter().all(|h| h.matches(req))
            && self.query_params.iter().all(|q| q.matches(req))
    }
}

const PSEUDO_HEADERS: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];

/// Istio `ValidateHTTPHeaderNameOrJwtClaimRoute`, minus the JWT-claim form
/// which meshwasm does not evaluate.
fn validate_header_name(name: &str, path: &FieldPath) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(path, "header name cannot be empty"));
    }
    if name.starts_with("@request.auth.claims") {
        return Err(ConfigError::new(
            path,
            "JWT claim matching (@request.auth.claims) is not supported by meshwasm",
        ));
    }
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !PSEUDO_HEADERS.contains(&name) && !name.chars().all(tchar) {
        return Err(ConfigError::new(
            path,
            format!("header name {name} is not a valid header name"),
        ));
    }
    // Envoy's HeaderMatcher name is a LowerCaseString.
    Ok(name.to_ascii_lowercase())
}

impl HttpMatchRequest {
    /// Validates as Istio does and compiles once; errors name the field path
    /// under `path` (e.g. `http[0].match[1].headers[x-user].regex`).
    pub fn compile(&self, path: &FieldPath) -> Result<HttpMatch, ConfigError> {
        self.refuse_selectors(path)?;

        let mut headers = Vec::new();
        for (name, sm) in &self.headers {
            let p = path.field("headers").key(name);
            let name = validate_header_name(name, &p)?;
            let matcher = sm.compile(Site::Header, &p)?;
            headers.push(HeaderMatcher {
                name,
                matcher,
                invert: false,
                treat_missing_as_empty: false,
            });
        }
        for (name, sm) in &self.without_headers {
            let p = path.field("withoutHeaders").key(name);
            let name = validate_header_name(name, &p)?;
            let matcher = sm.compile(Site::WithoutHeader, &p)?;
            // treat_missing_header_as_empty conflicts with present_match.
            let treat_missing_as_empty = !matches!(matcher, StringMatcher::Present);
            headers.push(HeaderMatcher {
                name,
                matcher,
                invert: true,
                treat_missing_as_empty,
            });
        }
        for (field, pseudo, sm) in [
            ("method", ":method", &self.method),
            ("authority", ":authority", &self.authority),
            ("scheme", ":scheme", &self.scheme),
        ] {
            if let Some(sm) = sm {
                headers.push(HeaderMatcher {
                    name: pseudo.to_string(),
                    matcher: sm.compile(Site::Header, &path.field(field))?,
                    invert: false,
                    treat_missing_as_empty: false,
                });
            }
        }

        let uri = match &self.uri {
            None => None,
            Some(sm) => {
                let mut matcher = sm.compile(Site::Uri, &path.field("uri"))?;
                // Lowered once here, so a request's path is lowered byte by
                // byte against it (`eq_lower`), not both sides per request.
                if self.ignore_uri_case {
                    if let StringMatcher::Prefix(p) | StringMatcher::Exact(p) = &mut matcher {
                        p.make_ascii_lowercase();
                    }
                }
                Some(UriMatcher {
                    matcher,
                    ignore_case: self.ignore_uri_case,
                })
            }
        };

        let mut query_params = Vec::new();
        for (name, sm) in &self.query_params {
            let p = path.field("queryParams").key(name);
            query_params.push(QueryParamMatcher {
                name: name.clone(),
                matcher: sm.compile(Site::Header, &p)?,
            });
        }

        Ok(HttpMatch {
            name: self.name.clone(),
            uri,
            headers,
            query_params,
        })
    }

    fn refuse_selectors(&self, path: &FieldPath) -> Result<(), ConfigError> {
        const WHY: &str = "is a config-time selector of which proxies get the route in Istio, \
                           not a request match; meshwasm refuses it rather than ignore it \
                           (select the workload with the WasmPlugin selector instead)";
        if !self.source_labels.is_empty() {
            return Err(ConfigError::new(
                &path.field("sourceLabels"),
                format!("sourceLabels {WHY}"),
            ));
        }
        if !self.gateways.is_empty() {
            return Err(ConfigError::new(
                &path.field("gateways"),
                format!("gateways {WHY}"),
            ));
        }
        if self
            .source_namespace
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ConfigError::new(
                &path.field("sourceNamespace"),
                format!("sourceNamespace {WHY}"),
            ));
        }
        if self.port.is_some_and(|p| p != 0) {
            return Err(ConfigError::new(&path.field("port"), format!("port {WHY}")));
        }
        Ok(())
    }
}

/// A route's `match` list, compiled. Empty = matches every request.
#[derive(Debug, Clone, Default)]
pub struct HttpMatchList(pub Vec<HttpMatch>);

impl HttpMatchList {
    /// Compiles `list`, whose field path is `path` (e.g. `http[0].match`).
    pub fn compile(list: &[HttpMatchRequest], path: &FieldPath) -> Result<Self, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, m)| m.compile(&path.index(i)))
            .collect::<Result<Vec<_>, _>>()
            .map(HttpMatchList)
    }

    /// OR over the entries; an empty list matches.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.0.is_empty() || self.0.iter().any(|m| m.matches(req))
    }

    /// The index of the first entry that holds (None when the list is empty).
    pub fn first_match(&self, req: &RequestView<'_>) -> Option<usize> {
        self.0.iter().position(|m| m.matches(req))
    }
}

/// The request as the matchers see it: the request headers as the host hands
/// them over (lower-case names, pseudo-headers `:path`, `:method`,
/// `:authority`, `:scheme` included; names and values as bytes).
pub struct RequestView<'a> {
    headers: Vec<(&'a [u8], &'a [u8])>,
    path: &'a [u8],
    query: OnceCell<Vec<(&'a [u8], &'a [u8])>>,
}

impl<'a> RequestView<'a> {
    pub fn new(headers: &'a [(String, Vec<u8>)]) -> Self {
        Self::from_byte_pairs(
            headers
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice()))
                .collect(),
        )
    }

    /// A view over borrowed byte pairs (a header map parsed in place). Names
    /// are compared byte for byte: Envoy's header map keys are lower-case
    /// (`LowerCaseString`; its HTTP/1 codec lower-cases what the client sent),
    /// and so are the compiled matchers' names.
    pub fn from_byte_pairs(headers: Vec<(&'a [u8], &'a [u8])>) -> Self {
        let path = headers
            .iter()
            .find(|(k, _)| eq_bytes(k, b":path"))
            .map(|(_, v)| *v)
            .unwrap_or(b"");
        RequestView {
            headers,
            path,
            query: OnceCell::new(),
        }
    }

    /// The raw `:path`, query included.
    pub fn path(&self) -> &'a [u8] {
        self.path
    }

    /// `:path` up to the first `?` or `#` (Envoy `removeQueryAndFragment`).
    pub fn path_without_query(&self) -> &'a [u8] {
        strip_query(self.path)
    }

    /// A header's value; several values are joined with `,` as Envoy's
    /// `getAllOfHeaderAsString` does. `name` must be lower-case.
    pub fn header(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        let name = name.as_bytes();
        let mut found: Option<Cow<'a, [u8]>> = None;
        // A plain loop (an iterator chain cost more per pair in wasm);
        // `eq_bytes` compares the lengths first.
        for &(k, v) in &self.headers {
            if !eq_bytes(k, name) {
                continue;
            }
            found = Some(match found {
                // Nearly always: one value, handed out in place.
                None => Cow::Borrowed(v),
                Some(prev) => {
                    let mut joined = prev.into_owned();
                    joined.push(b',');
                    joined.extend_from_slice(v);
                    Cow::Owned(joined)
                }
            });
        }
        found
    }

    /// The first value of a header (for headers Envoy reads as "implicitly
    /// untrusted": only the first value counts). `name` must be lower-case.
    pub fn header_first(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(k, _)| eq_bytes(k, name.as_bytes()))
            .map(|&(_, v)| v)
    }

    /// The first value of a query parameter, raw (not percent-decoded), as
    /// Envoy's `QueryParamsMulti::parseQueryString` + `getFirstValue`.
    pub fn query_param(&self, name: &str) -> Option<&'a [u8]> {
        self.query
            .get_or_init(|| parse_query(self.path))
            .iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| *v)
    }
}

/// `a == b`, eight bytes at a time: the wasm target's `memcmp` (which `==` on
/// slices calls) goes byte by byte, and comparing names and values is most of
/// what matching a request costs.
#[inline]
pub fn eq_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut a8).zip(&mut b8) {
        let (Ok(x), Ok(y)) = (<[u8; 8]>::try_from(x), <[u8; 8]>::try_from(y)) else {
            return false;
        };
        if u64::from_le_bytes(x) != u64::from_le_bytes(y) {
            return false;
        }
    }
    a8.remainder()
        .iter()
        .zip(b8.remainder())
        .all(|(x, y)| x == y)
}

/// Envoy `PathUtil::removeQueryAndFragment`: the path up to the first `?` or `#`.
pub fn strip_query(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

/// `v.starts_with(prefix)`, compared with [`eq_bytes`].
#[inline]
pub fn starts_with_bytes(v: &[u8], prefix: &[u8]) -> bool {
    v.get(..prefix.len()).is_some_and(|h| eq_bytes(h, prefix))
}

/// `v.ends_with(suffix)`, compared with [`eq_bytes`].
#[inline]
pub fn ends_with_bytes(v: &[u8], suffix: &[u8]) -> bool {
    v.len()
        .checked_sub(suffix.len())
        .and_then(|at| v.get(at..))
        .is_some_and(|t| eq_bytes(t, suffix))
}

/// `raw`, ASCII-lower-cased, equals `lower` (already lower-case): eight bytes
/// at a time, like [`eq_bytes`]. The two loops stay apart: a generic loop for
/// both (word and byte mapped by closures) compiles to more wasm per request.
pub fn eq_lower(raw: &[u8], lower: &[u8]) -> bool {
    if raw.len() != lower.len() {
        return false;
    }
    let (mut r8, mut l8) = (raw.chunks_exact(8), lower.chunks_exact(8));
    for (x, y) in (&mut r8).zip(&mut l8) {
        let (Ok(x), Ok(y)) = (<[u8; 8]>::try_from(x), <[u8; 8]>::try_from(y)) else {
            return false;
        };
        if lower8(u64::from_le_bytes(x)) != u64::from_le_bytes(y) {
            return false;
        }
    }
    r8.remainder()
        .iter()
        .zip(l8.remainder())
        .all(|(r, l)| r.to_ascii_lowercase() == *l)
}

/// `v`, ASCII-lower-cased, starts with `prefix` (already lower-case).
#[inline]
pub fn starts_with_lower(v: &[u8], prefix: &[u8]) -> bool {
    v.get(..prefix.len()).is_some_and(|h| eq_lower(h, prefix))
}

/// `v`, ASCII-lower-cased, ends with `suffix` (already lower-case).
#[inline]
pub fn ends_with_lower(v: &[u8], suffix: &[u8]) -> bool {
    v.len()
        .checked_sub(suffix.len())
        .and_then(|at| v.get(at..))
        .is_some_and(|t| eq_lower(t, suffix))
}

/// Eight bytes with their ASCII capitals lower-cased (bytes from 0x80 kept).
#[inline]
fn lower8(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = x & !HIGH;
    // Each byte's high bit set where its low seven bits are >= 'A', and > 'Z'
    // (no carry crosses a byte: at most 127 + 63).
    let ge_a = low7 + ONES * (0x80 - b'A' as u64);
    let gt_z = low7 + ONES * (0x80 - b'Z' as u64 - 1);
    let upper = ge_a & !gt_z & !x & HIGH;
    x | (upper >> 2)
}

fn parse_query(path: &[u8]) -> Vec<(&[u8], &[u8])> {
    let Some(q) = path.iter().position(|&b| b == b'?') else {
        return Vec::new();
    };
    path[q + 1..]
        .split(|&b| b == b'&')
        .map(|param| match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, &b""[..]),
        })
        .collect()
}

// ------------------------------------------------------------ query strings

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `%XX` decoding as Envoy's `PercentEncoding::decode` (invalid escapes kept).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `QueryParamsMulti::parseAndDecodeQueryString`, in order of appearance.
pub fn parse_query_decoded(path: &str) -> Vec<(String, String)> {
    let Some(q) = path.find('?').map(|i| &path[i + 1..]) else {
        return Vec::new();
    };
    let q = q.split('#').next().unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// `QueryParamsMulti::overwrite` for each of `set`, then `remove` for each of
/// `remove`, then `replaceQueryString`: the parameters are written back
/// decoded, sorted by name (Envoy keeps them in a btree map), a name's values
/// in their order; no `?` when none is left.
pub fn edit_query(path: &str, set: &[(String, String)], remove: &[&str]) -> String {
    let base = path.split('?').next().unwrap_or("");
    let mut params = parse_query_decoded(path);
    for (k, v) in set {
        params.retain(|(name, _)| name != k);
        params.push((k.clone(), v.clone()));
    }
    params.retain(|(k, _)| !remove.contains(&k.as_str()));
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = base.to_string();
    for (i, (k, v)) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::from_json;
    use serde_json::json;

    fn hdrs(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            (":authority".to_string(), b"svc.local:8080".to_vec()),
            (":scheme".to_string(), b"http".to_vec()),
        ];
        for (k, v) in extra {
            h.push((k.to_string(), v.as_bytes().to_vec()));
        }
        h
    }

    fn compile(v: serde_json::Value) -> Result<HttpMatchList, ConfigError> {
        let list: Vec<HttpMatchRequest> = from_json(v.to_string().as_bytes())?;
        HttpMatchList::compile(&list, &FieldPath::root().field("match"))
    }

    /// (method, path, extra headers, expected)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], bool);

    fn check(m: serde_json::Value, cases: &[Case<'_>]) {
        let list = compile(m.clone()).unwrap();
        for (method, path, extra, want) in cases {
            let h = hdrs(method, path, extra);
            assert_eq!(
                list.matches(&RequestView::new(&h)),
                *want,
                "match {m} on {method} {path} {extra:?}"
            );
        }
    }

    #[test]
    fn uri_exact_ignores_query_and_fragment() {
        check(
            json!([{"uri": {"exact": "/a"}}]),
            &[
                ("GET", "/a", &[], true),
                ("GET", "/a?x=1", &[], true),
                ("GET", "/a#frag", &[], true),
                ("GET", "/ab", &[], false),
                ("GET", "/A", &[], false),
                ("GET", "/a/", &[], false),
            ],
        );
    }

    #[test]
    fn uri_prefix_is_raw_and_plain() {
        check(
            json!([{"uri": {"prefix": "/foo"}}]),
            &[
                ("GET", "/foo", &[], true),
                ("GET", "/foobar", &[], true),
                ("GET", "/foo/x?y", &[], true),
                ("GET", "/fo", &[], false),
                ("GET", "/FOO", &[], false),
            ],
        );
        // The prefix sees the query: Envoy matches the raw :path.
        check(
            json!([{"uri": {"prefix": "/a?x"}}]),
            &[("GET", "/a?x=1", &[], true), ("GET", "/a", &[], false)],
        );
        // Empty prefix is allowed for uri and matches everything.
        check(json!([{"uri": {"prefix": ""}}]), &[("GET", "/", &[], true)]);
    }

    #[test]
    fn uri_regex_full_match_without_query() {
        check(
            json!([{"uri": {"regex": "/api/v[0-9]+"}}]),
            &[
                ("GET", "/api/v1", &[], true),
                ("GET", "/api/v12?x=/y", &[], true),
                ("GET", "/api/v1/x", &[], false),
                ("GET", "/x/api/v1", &[], false),
            ],
        );
        // Alternation must not escape the anchors.
        check(
            json!([{"uri": {"regex": "/a|/b"}}]),
            &[
                ("GET", "/a", &[], true),
                ("GET", "/b", &[], true),
                ("GET", "/ab", &[], false),
                ("GET", "/xb", &[], false),
            ],
        );
        // RE2's \d is ASCII only.
        check(
            json!([{"uri": {"regex": "/\\d+"}}]),
            &[("GET", "/12", &[], true), ("GET", "/١٢", &[], false)],
        );
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix_not_regex() {
        check(
            json!([{"uri": {"exact": "/Ab"}, "ignoreUriCase": true}]),
            &[
                ("GET", "/ab", &[], true),
                ("GET", "/AB?Q", &[], true),
                ("GET", "/abc", &[], false),
            ],
        );
        check(
            json!([{"uri": {"prefix": "/Ab"}, "ignoreUriCase": true}]),
            &[("GET", "/aBc", &[], true), ("GET", "/a", &[], false)],
        );
        check(
            json!([{"uri": {"regex": "/ab"}, "ignoreUriCase": true}]),
            &[("GET", "/ab", &[], true), ("GET", "/AB", &[], false)],
        );
        check(
            json!([{"uri": {"regex": "(?i)/ab"}}]),
            &[("GET", "/AB", &[], true)],
        );
    }

    #[test]
    fn method_authority_scheme() {
        check(
            json!([{"method": {"exact": "POST"}}]),
            &[
                ("POST", "/", &[], true),
                ("GET", "/", &[], false),
                ("post", "/", &[], false),
            ],
        );
        check(
            json!([{"authority": {"exact": "svc.local:8080"}}]),
            &[("GET", "/", &[], true)],
        );
        check(
            json!([{"authority": {"exact": "svc.local"}}]),
            &[("GET", "/", &[], false)],
        );
        check(
            json!([{"authority": {"prefix": "svc."}}]),
            &[("GET", "/", &[], true)],
        );
        check(
            json!([{"scheme": {"exact": "https"}}]),
            &[("GET", "/", &[], false)],
        );
        check(
            json!([{"method": {"regex": "GET|HEAD"}}]),
            &[("HEAD", "/", &[], true), ("GETX", "/", &[], false)],
        );
    }

    #[test]
    fn headers_exact_prefix_regex_present() {
        let m = json!([{"headers": {"x-user": {"exact": "alice"}}}]);
        check(
            m,
            &[
                ("GET", "/", &[("x-user", "alice")], true),
                ("GET", "/", &[("x-user", "Alice")], false),
                ("GET", "/", &[], false),
            ],
        );
        check(
            json!([{"headers": {"x-v": {"prefix": "v1"}}}]),
            &[
                ("GET", "/", &[("x-v", "v1.2")], true),
                ("GET", "/", &[("x-v", "v2")], false),
            ],
        );
        check(
            json!([{"headers": {"x-v": {"regex": "v[12]"}}}]),
            &[
                ("GET", "/", &[("x-v", "v1")], true),
                ("GET", "/", &[("x-v", "v12")], false),
            ],
        );
        assert!(err(json!([{"headers": {"x-v": {"regex": "*"}}}]))
            .starts_with("match[0].headers[x-v].regex: invalid regex"));
        // `{}` means "present", even with an empty value.
        check(
            json!([{"headers": {"x-v": {}}}]),
            &[("GET", "/", &[("x-v", "")], true), ("GET", "/", &[], false)],
        );
        // exact "" matches an empty value only.
        check(
            json!([{"headers": {"x-v": {"exact": ""}}}]),
            &[
                ("GET", "/", &[("x-v", "")], true),
                ("GET", "/", &[("x-v", "a")], false),
                ("GET", "/", &[], false),
            ],
        );
    }

    #[test]
    fn header_names_are_lowercased_and_values_joined() {
        check(
            json!([{"headers": {"X-User": {"exact": "a"}}}]),
            &[("GET", "/", &[("x-user", "a")], true)],
        );
        check(
            json!([{"headers": {"x-user": {"exact": "a,b"}}}]),
            &[
                ("GET", "/", &[("x-user", "a"), ("x-user", "b")], true),
                ("GET", "/", &[("x-user", "a")], false),
            ],
        );
    }

    #[test]
    fn without_headers() {
        check(
            json!([{"withoutHeaders": {"x": {"exact": "foo"}}}]),
            &[
                ("GET", "/", &[], true),
                ("GET", "/", &[("x", "bar")], true),
                ("GET", "/", &[("x", "foo")], false),
            ],
        );
        // Missing is "" and ".*" matches "" → inverted: never matches.
        check(
            json!([{"withoutHeaders": {"x": {"regex": ".*"}}}]),
            &[("GET", "/", &[], false), ("GET", "/", &[("x", "a")], false)],
        );
        for present in [json!({}), json!({"regex": "*"})] {
            check(
                json!([{"withoutHeaders": {"x": present}}]),
                &[("GET", "/", &[], true), ("GET", "/", &[("x", "")], false)],
            );
        }
    }

    #[test]
    fn query_params() {
        check(
            json!([{"queryParams": {"v": {"exact": "1"}}}]),
            &[
                ("GET", "/?v=1", &[], true),
                ("GET", "/p?a=2&v=1", &[], true),
                ("GET", "/p?v=2&v=1", &[], false), // first value only
                ("GET", "/p?v=1%20", &[], false),
                ("GET", "/p", &[], false),
            ],
        );
        check(
            json!([{"queryParams": {"v": {"exact": ""}}}]),
            &[
                ("GET", "/?v", &[], true),
                ("GET", "/?v=", &[], true),
                ("GET", "/?w", &[], false),
            ],
        );
        check(
            json!([{"queryParams": {"v": {"regex": "[0-9]+"}}}]),
            &[("GET", "/?v=12", &[], true), ("GET", "/?v=1a", &[], false)],
        );
        check(
            json!([{"queryParams": {"v": {}}}]),
            &[("GET", "/?v", &[], true), ("GET", "/?x=v", &[], false)],
        );
        // Raw, not decoded.
        check(
            json!([{"queryParams": {"v": {"exact": "a%20b"}}}]),
            &[
                ("GET", "/?v=a%20b", &[], true),
                ("GET", "/?v=a b", &[], false),
            ],
        );
        check(
            json!([{"queryParams": {"v": {"prefix": "ab"}}}]),
            &[("GET", "/?v=abc", &[], true), ("GET", "/?v=a", &[], false)],
        );
    }

    #[test]
    fn and_within_or_across() {
        let m = json!([
            {"uri": {"prefix": "/a"}, "method": {"exact": "GET"}},
            {"headers": {"x-canary": {"exact": "1"}}}
        ]);
        check(
            m,
            &[
                ("GET", "/a", &[], true),
                ("POST", "/a", &[], false),
                ("POST", "/b", &[("x-canary", "1")], true),
                ("GET", "/b", &[], false),
            ],
        );
        // No match entries, or an empty entry: everything matches.
        check(json!([]), &[("GET", "/x", &[], true)]);
        check(json!([{}]), &[("DELETE", "/x", &[], true)]);
        let list = compile(json!([{"uri": {"prefix": "/b"}}, {"uri": {"prefix": "/"}}])).unwrap();
        let h = hdrs("GET", "/b", &[]);
        assert_eq!(list.first_match(&RequestView::new(&h)), Some(0));
        let h = hdrs("GET", "/c", &[]);
        assert_eq!(list.first_match(&RequestView::new(&h)), Some(1));
    }

    #[test]
    fn non_utf8_header_values_do_not_trap() {
        let mut h = hdrs("GET", "/", &[]);
        h.push(("x".to_string(), vec![0xff, b'a']));
        let list = compile(json!([{"headers": {"x": {"regex": ".a"}}}])).unwrap();
        assert!(list.matches(&RequestView::new(&h)));
        let list = compile(json!([{"headers": {"x": {"exact": "a"}}}])).unwrap();
        assert!(!list.matches(&RequestView::new(&h)));
    }

    fn err(v: serde_json::Value) -> String {
        compile(v).unwrap_err().to_string()
    }

    #[test]
    fn config_errors_name_the_field() {
        assert_eq!(
            err(json!([{}, {"uri": {"exact": "/a", "prefix": "/b"}}])),
            "match[1].uri: only one of exact, prefix, regex may be set"
        );
        assert!(err(json!([{"headers": {"x": {"regex": "a("}}}]))
            .starts_with("match[0].headers[x].regex: invalid regex"));
        assert_eq!(
            err(json!([{"headers": {"x": {"prefix": ""}}}])),
            "match[0].headers[x].prefix: prefix string match should not be empty"
        );
        assert_eq!(
            err(json!([{"queryParams": {"q": {"regex": ""}}}])),
            "match[0].queryParams[q].regex: regex string match should not be empty"
        );
        assert!(err(json!([{"uri": {"regex": "\\p{Greek}"}}]))
            .starts_with("match[0].uri.regex: invalid regex"));
        assert!(err(json!([{"uri": {"regex": "a".repeat(1025)}}])).contains("too large"));
        assert_eq!(
            err(json!([{"headers": {"bad header": {}}}])),
            "match[0].headers[bad header]: header name bad header is not a valid header name"
        );
        assert!(
            err(json!([{"headers": {"@request.auth.claims.group": {"exact": "a"}}}]))
                .starts_with("match[0].headers[@request.auth.claims.group]: JWT claim")
        );
        assert!(err(json!([{"sourceLabels": {"app": "x"}}]))
            .starts_with("match[0].sourceLabels: sourceLabels is a config-time selector"));
        assert!(err(json!([{"gateways": ["gw"]}])).starts_with("match[0].gateways:"));
        assert!(err(json!([{"sourceNamespace": "ns"}])).starts_with("match[0].sourceNamespace:"));
        assert!(err(json!([{"port": 80}])).starts_with("match[0].port:"));
        // Empty selectors are no-ops and accepted, as are name/statPrefix.
        compile(json!([{"sourceLabels": {}, "gateways": [], "port": 0, "sourceNamespace": "", "name": "n", "statPrefix": "s"}])).unwrap();
        // Unknown fields: structural errors from from_json, with the path.
        assert_eq!(
            err(json!([{"uri": {"exact": "/"}, "ignoreUriCas": true}]))
                .split(':')
                .next()
                .unwrap(),
            "[0].ignoreUriCas"
        );
        assert!(err(json!([{"uri": {"suffix": "/"}}])).contains("unknown field `suffix`"));
        // The pseudo-headers are valid header names.
        compile(json!([{"headers": {":path": {"prefix": "/"}}}])).unwrap();
    }

    #[test]
    fn regex_literal_prefix_is_conservative() {
        for (pattern, prefix) in [
            ("/items/[0-9]+", "/items/"),
            ("/api/v1", "/api/v1"),
            ("/ab?c", "/a"),
            ("/ab*", "/a"),
            ("/ab+", "/a"),
            ("/a{2}", "/"),
            ("/a|/b", ""),
            ("(/a)/b", ""),
            ("(?i)/admin", ""),
            ("^/x", ""),
            (".*canary=always.*", ""),
            ("\\d+", ""),
            ("/a.b", "/a"),
            ("/é", "/"),
        ] {
            assert_eq!(literal_prefix(pattern), prefix, "{pattern}");
        }
    }

    #[test]
    fn regex_with_prefix_matches_as_the_plain_regex() {
        let patterns = [
            "/items/[0-9]+",
            "/ab?c",
            "/a|/b",
            "/a.b",
            "/x/.*",
            "v[0-9]+\\.[0-9]+",
        ];
        let values: [&[u8]; 12] = [
            b"/items/12",
            b"/items/",
            b"/items/x",
            b"/ac",
            b"/abc",
            b"/a",
            b"/b",
            b"/aXb",
            b"/x/\xff",
            b"v1.2",
            b"v1.",
            b"\xff/items/1",
        ];
        for p in patterns {
            let re = compile_full_match_regex(p, &FieldPath::root()).unwrap();
            let fast = FullMatchRegex::new(re.clone(), p);
            for v in values {
                assert_eq!(
                    fast.is_match(v),
                    re.is_match(&String::from_utf8_lossy(v)),
                    "{p} on {v:?}"
                );
            }
        }
    }

    /// `eq_bytes` (eight bytes at a time), `eq_lower`, `starts_with_bytes`,
    /// `ends_with_bytes` and their lower-casing forms say what `==`,
    /// `eq_ignore_ascii_case`, `starts_with` and `ends_with` say, for every
    /// length around the word size and a difference at every position.
    #[test]
    fn fast_compares_agree_with_the_plain_ones() {
        for len in 0..20usize {
            let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(eq_bytes(&a, &a.clone()));
            assert!(eq_lower(&a.to_ascii_uppercase(), &a));
            assert!(!eq_bytes(&a, &[a.as_slice(), b"x"].concat()));
            assert!(!eq_lower(&a, &[a.as_slice(), b"x"].concat()));
            for at in 0..len {
                let mut b = a.clone();
                b[at] = b'-';
                assert!(!eq_bytes(&a, &b), "{len} {at}");
                assert!(!eq_lower(&b, &a), "{len} {at}");
            }
            for cut in 0..=len + 1 {
                let p = &a[..cut.min(len)];
                let x = if cut > len { &b"-"[..] } else { p };
                assert_eq!(starts_with_bytes(&a, x), a.starts_with(x), "{len} {cut}");
                assert!(ends_with_bytes(&a, &a[len - p.len()..]), "{len} {cut}");
                assert_eq!(ends_with_bytes(&a, x), a.ends_with(x), "{len} {cut}");
                let upper = a.to_ascii_uppercase();
                assert_eq!(
                    starts_with_lower(&upper, x),
                    a.starts_with(x),
                    "{len} {cut}"
                );
                assert_eq!(ends_with_lower(&upper, x), a.ends_with(x), "{len} {cut}");
            }
        }
    }

    /// The word-at-a-time lower-casing agrees with `to_ascii_lowercase` for
    /// every byte value at every position of a word, next to every other
    /// value (a carry crossing bytes would show there), and so `eq_lower`
    /// agrees with lower-casing then comparing.
    #[test]
    fn lower8_is_to_ascii_lowercase_for_every_byte() {
        for at in 0..8 {
            for b in 0..=255u8 {
                for fill in [0u8, b'@', b'A', b'Z', b'[', b'z', 0x7f, 0x80, 0xc1, 0xff] {
                    let mut w = [fill; 8];
                    w[at] = b;
                    let want = u64::from_le_bytes(w.to_ascii_lowercase().try_into().unwrap());
                    assert_eq!(lower8(u64::from_le_bytes(w)), want, "{w:?}");
                    let raw: Vec<u8> = [&w[..], &w[..at]].concat();
                    assert!(eq_lower(&raw, &raw.to_ascii_lowercase()), "{raw:?}");
                    let other = if b == b'q' { b'r' } else { b'q' };
                    let mut lower = raw.to_ascii_lowercase();
                    lower[at] = other;
                    assert_eq!(
                        eq_lower(&raw, &lower),
                        raw.eq_ignore_ascii_case(&lower),
                        "{raw:?} {lower:?}"
                    );
                }
            }
        }
    }

    /// Repeated headers are joined with `,` in the host's order; one value is
    /// handed out as it is.
    #[test]
    fn repeated_headers_are_joined_in_order() {
        let h = hdrs(
            "GET",
            "/",
            &[("x-a", "1"), ("x-b", "2"), ("x-a", "3"), ("x-a", "")],
        );
        let view = RequestView::new(&h);
        assert_eq!(view.header("x-a").as_deref(), Some(&b"1,3,"[..]));
        assert_eq!(view.header("x-b").as_deref(), Some(&b"2"[..]));
        assert_eq!(view.header_first("x-a"), Some(&b"1"[..]));
        assert_eq!(view.header("x-c"), None);
        assert_eq!(view.path(), b"/");
    }

    #[test]
    fn edit_query_as_envoy() {
        let set = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(edit_query("/p?b=2&a=1&b=3", &[], &["a"]), "/p?b=2&b=3");
        assert_eq!(
            edit_query("/p?b=2&a=1&b=3", &[set("b", "9")], &[]),
            "/p?a=1&b=9"
        );
        assert_eq!(edit_query("/p", &[set("k", "v")], &[]), "/p?k=v");
        assert_eq!(edit_query("/p?k=v", &[], &["k"]), "/p");
        // Set, then remove: a name in both is gone.
        assert_eq!(edit_query("/p?x=1", &[set("k", "v")], &["k"]), "/p?x=1");
        assert_eq!(edit_query("/p?a%20b=c%2Fd", &[], &[]), "/p?a b=c/d");
    }
}
