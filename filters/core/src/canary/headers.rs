//! VirtualService header manipulation (`Headers{request|response: {set, add, remove}}`),
//! applied the way istiod's translation plus Envoy's `HeaderParser` apply it.
//!
//! istiod (route.go `TranslateHeadersOperations`): `set` → OVERWRITE_IF_EXISTS_OR_ADD,
//! `add` → APPEND_IF_EXISTS_OR_ADD, each sorted by key, `set` entries before `add`
//! entries; `remove` → headers_to_remove; keys starting with `:` or equal to `host`
//! are dropped, except that `:authority`/`host` in a request `set`/`add` becomes the
//! route's `host_rewrite_literal` (`set` wins over `add`).
//!
//! Envoy (`HeaderParser::evaluateHeaders`): first every remove, then every overwrite
//! in list order, then every append; an entry whose value is empty is skipped.
//! Header values are Envoy format strings: `%%` is a literal `%`. Command operators
//! (`%REQ(x)%`, `%DOWNSTREAM_REMOTE_ADDRESS%`, ...) are refused here rather than sent
//! verbatim.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{ConfigError, FieldPath};

/// `Headers` as Istio writes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One Envoy header parser: removes, then overwrites, then appends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderParser {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
}

impl HeaderParser {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Istio's single-destination translation appends the destination's operations
    /// to the route's, in one parser.
    pub fn merged(&self, later: &HeaderParser) -> HeaderParser {
        let mut out = self.clone();
        out.remove.extend(later.remove.iter().cloned());
        out.set.extend(later.set.iter().cloned());
        out.add.extend(later.add.iter().cloned());
        out
    }

    /// Applies the parser to an in-memory header list (lower-case names), as Envoy
    /// does. The filter applies the same steps through hostcalls; this is the
    /// reference the unit tests check and the emulator can compare with.
    pub fn apply(&self, headers: &mut Vec<(String, String)>) {
        for name in &self.remove {
            headers.retain(|(n, _)| n != name);
        }
        for (name, value) in &self.set {
            // setReferenceKey: drop every existing value, then one entry.
            match headers.iter().position(|(n, _)| n == name) {
                Some(first) => {
                    headers[first].1 = value.clone();
                    let mut i = 0;
                    headers.retain(|(n, _)| {
                        i += 1;
                        i - 1 == first || n != name
                    });
                }
                None => headers.push((name.clone(), value.clone())),
            }
        }
        for (name, value) in &self.add {
            headers.push((name.clone(), value.clone()));
        }
    }
}

/// A `Headers` block compiled: request and response parsers plus the authority
/// rewrite istiod lifts out of the request operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledHeaders {
    pub request: HeaderParser,
    pub response: HeaderParser,
    pub authority: Option<String>,
}

impl CompiledHeaders {
    pub fn compile(headers: Option<&Headers>, path: &FieldPath) -> Result<Self, ConfigError> {
        let Some(h) = headers else {
            return Ok(CompiledHeaders::default());
        };
        let mut out = CompiledHeaders::default();
        if let Some(req) = &h.request {
            let p = path.field("request");
            let (set, set_auth) = compile_adds(&req.set, &p.field("set"), true)?;
            let (add, add_auth) = compile_adds(&req.add, &p.field("add"), true)?;
            out.request = HeaderParser {
                remove: compile_removes(&req.remove, &p.field("remove"))?,
                set,
                add,
            };
            // Istio's validateAuthorityRewrite: the authority is rewritten in one place only.
            if let (Some(a), Some(b)) = (&set_auth, &add_auth) {
                return Err(ConfigError::new(
                    &p,
                    format!("authority header cannot be set multiple times: have {a:?}, attempting to set {b:?}"),
                ));
            }
            out.authority = set_auth.or(add_auth);
        }
        if let Some(resp) = &h.response {
            let p = path.field("response");
            let (set, _) = compile_adds(&resp.set, &p.field("set"), false)?;
            let (add, _) = compile_adds(&resp.add, &p.field("add"), false)?;
            out.response = HeaderParser {
                remove: compile_removes(&resp.remove, &p.field("remove"))?,
                set,
                add,
            };
        }
        Ok(out)
    }
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

/// RFC 9110 token characters: what Envoy accepts as a header name.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_name(name: &str, path: &FieldPath) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(path, "header name cannot be empty"));
    }
    if !is_token(name) {
        return Err(ConfigError::new(
            path,
            format!("header name {name:?} is not a valid HTTP header name"),
        ));
    }
    Ok(())
}

/// A header a route may set, add or remove: not Host, not a `:` pseudo-header,
/// and a valid name (Istio's validation order and messages).
fn check_operable_name(name: &str, path: &FieldPath) -> Result<(), ConfigError> {
    if name.eq_ignore_ascii_case("host") {
        return Err(ConfigError::new(
            path,
            format!("invalid header {name:?}: cannot set Host header"),
        ));
    }
    if is_internal(name) {
        return Err(ConfigError::new(
            path,
            format!("invalid header {name:?}: header cannot have \":\" prefix"),
        ));
    }
    check_name(name, path)
}

type HeaderList = Vec<(String, String)>;

/// `set`/`add` entries, sorted by key as istiod sorts them (the BTreeMap already is).
/// Returns the entries to apply and the authority rewrite, if any.
fn compile_adds(
    map: &BTreeMap<String, String>,
    path: &FieldPath,
    request: bool,
) -> Result<(HeaderList, Option<String>), ConfigError> {
    let mut out = Vec::new();
    let mut authority = None;
    for (name, value) in map {
        let p = path.key(name);
        let value = decode_value(value).map_err(|r| ConfigError::new(&p, r))?;
        if name.is_empty() {
            return Err(ConfigError::new(&p, "header name cannot be empty"));
        }
        if request && is_authority(name) {
            if let Some(prev) = &authority {
                return Err(ConfigError::new(
                    &p,
                    format!("authority header cannot be set multiple times: have {prev:?}, attempting to set {value:?}"),
                ));
            }
            authority = Some(value);
            continue;
        }
        check_operable_name(name, &p)?;
        // Envoy skips entries whose value is empty (keep_empty_value is false).
        if !value.is_empty() {
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    Ok((out, authority))
}

fn compile_removes(names: &[String], path: &FieldPath) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = path.index(i);
        check_operable_name(name, &p)?;
        out.push(name.to_ascii_lowercase());
    }
    Ok(out)
}

/// An Envoy header-value format string without command operators: `%%` → `%`.
/// Control characters other than tab are refused, as Istio's validation does.
pub fn decode_value(raw: &str) -> Result<String, String> {
    if raw
        .chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}')
    {
        return Err(format!("header value configuration {raw:?} is invalid"));
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            if chars.peek() == Some(&'%') {
                chars.next();
                out.push('%');
            } else {
                return Err(format!(
                    "header value {raw:?}: Envoy command operators (%...%) are not supported \
                     by the canary filter; write a literal % as %%"
                ));
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(json: &str) -> Headers {
        serde_json::from_str(json).unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn istio_translation_order_and_authority() {
        let c = CompiledHeaders::compile(
            Some(&headers(
                r#"{"request":{"set":{"x-b":"1","X-A":"2","host":"h2"},
                    "add":{"x-c":"3"},"remove":["X-Gone"]},
                   "response":{"set":{"x-r":"100%%"},"add":{"x-e":""}}}"#,
            )),
            &FieldPath::root(),
        )
        .unwrap();
        assert_eq!(c.request.set, h(&[("x-a", "2"), ("x-b", "1")]));
        assert_eq!(c.request.add, h(&[("x-c", "3")]));
        assert_eq!(c.request.remove, vec!["x-gone".to_string()]);
        assert_eq!(c.authority.as_deref(), Some("h2"));
        assert_eq!(c.response.set, h(&[("x-r", "100%")]));
        assert!(
            c.response.add.is_empty(),
            "empty values are skipped, as Envoy does"
        );
    }

    #[test]
    fn refused_names_and_values() {
        let cases = [
            (
                r#"{"request":{"set":{":path":"/x"}}}"#,
                "request.set[:path]",
            ),
            (r#"{"request":{"remove":["host"]}}"#, "request.remove[0]"),
            (r#"{"response":{"set":{"host":"x"}}}"#, "response.set[host]"),
            (r#"{"request":{"add":{"x":"50%"}}}"#, "request.add[x]"),
            (r#"{"request":{"add":{"x":"%REQ(y)%"}}}"#, "request.add[x]"),
            (
                r#"{"request":{"set":{"bad name":"v"}}}"#,
                "request.set[bad name]",
            ),
            (r#"{"request":{"set":{"x":"a\nb"}}}"#, "request.set[x]"),
            (
                r#"{"request":{"set":{":authority":"a","host":"b"}}}"#,
                "request.set[host]",
            ),
            (
                r#"{"request":{"set":{"host":"a"},"add":{"host":"b"}}}"#,
                "request",
            ),
        ];
        for (json, path) in cases {
            let err =
                CompiledHeaders::compile(Some(&headers(json)), &FieldPath::root()).unwrap_err();
            assert_eq!(err.path.as_str(), path, "{json}: {err}");
        }
        assert!(serde_json::from_str::<Headers>(r#"{"requst":{}}"#).is_err());
    }

    #[test]
    fn envoy_parser_semantics() {
        let p = HeaderParser {
            remove: vec!["x-drop".into(), "x-a".into()],
            set: h(&[("x-a", "new"), ("x-s", "s")]),
            add: h(&[("x-a", "more"), ("x-add", "1")]),
        };
        let mut headers = h(&[
            ("x-drop", "1"),
            ("x-s", "old1"),
            ("x-keep", "k"),
            ("x-s", "old2"),
            ("x-add", "0"),
        ]);
        p.apply(&mut headers);
        assert_eq!(
            headers,
            h(&[
                ("x-s", "s"),
                ("x-keep", "k"),
                ("x-add", "0"),
                ("x-a", "new"),
                ("x-a", "more"),
                ("x-add", "1")
            ])
        );
    }
}
