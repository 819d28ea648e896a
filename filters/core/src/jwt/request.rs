//! The request as jwt_authn sees and changes it: headers (lower-case names,
//! pseudo-headers included), token extraction from the configured locations,
//! and the header edits applied after a decision.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::rc::Rc;

/// An edit to the request, replayed in order by the filter glue. Names are the
/// configuration's (shared, not copied per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Remove(Rc<str>),
    Add(Rc<str>, String),
    /// Replace `:path` (a query-parameter token was removed).
    SetPath(String),
}

/// A header value as text: borrowed when it is UTF-8, else with invalid
/// sequences replaced (checked only for the values actually read).
fn text(v: &[u8]) -> Cow<'_, str> {
    // `from_utf8` checks ASCII a word at a time; `from_utf8_lossy` goes byte
    // by byte, which a long token pays for.
    match std::str::from_utf8(v) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v),
    }
}

/// The request headers, borrowed from the host's map (`'r`: that map and the
/// configuration), with the edits made so far applied.
#[derive(Debug, Clone, Default)]
pub struct Request<'r> {
    headers: Vec<(Cow<'r, str>, Cow<'r, [u8]>)>,
    ops: Vec<HeaderOp>,
}

impl<'r> Request<'r> {
    /// Header names are lower-cased here (HTTP/2 and Envoy already do, so
    /// nothing is copied then).
    pub fn new(headers: &[(&'r str, &'r [u8])]) -> Request<'r> {
        let headers = headers
            .iter()
            .map(|&(k, v)| {
                let k = if k.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(k.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(k)
                };
                (k, Cow::Borrowed(v))
            })
            .collect();
        Request {
            headers,
            ops: Vec::new(),
        }
    }

    /// The first value of `name`, as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &**v)
    }

    /// The first value of `name`, as text.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.header_bytes(name).map(text)
    }

    /// Every value of `name` in order, as text that outlives this borrow of
    /// the request: host values are borrowed, values added here are copied.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Cow<'r, str>> + 's {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| match *v {
                Cow::Borrowed(b) => text(b),
                Cow::Owned(ref b) => Cow::Owned(text(b).into_owned()),
            })
    }

    pub fn path(&self) -> Cow<'_, str> {
        self.header(":path").unwrap_or(Cow::Borrowed(""))
    }

    pub fn remove(&mut self, name: &Rc<str>) {
        self.headers.retain(|(k, _)| **k != **name);
        self.ops.push(HeaderOp::Remove(name.clone()));
    }

    /// Adds a header named by the configuration (`'r`).
    pub fn add(&mut self, name: &'r Rc<str>, value: String) {
        self.headers.push((
            Cow::Borrowed(&**name),
            Cow::Owned(value.clone().into_bytes()),
        ));
        self.ops.push(HeaderOp::Add(name.clone(), value));
    }

    pub fn set_path(&mut self, path: String) {
        let value = Cow::Owned(path.clone().into_bytes());
        match self.headers.iter_mut().find(|(k, _)| k == ":path") {
            Some(h) => h.1 = value,
            None => self.headers.push((Cow::Borrowed(":path"), value)),
        }
        self.ops.push(HeaderOp::SetPath(path));
    }

    pub fn take_ops(&mut self) -> Vec<HeaderOp> {
        std::mem::take(&mut self.ops)
    }

    /// `realm` of `www-authenticate`: scheme://host + the first 256 bytes of
    /// the path (query included), as Envoy's jwt_authn writes it.
    pub fn realm(&self) -> String {
        let scheme = self.header(":scheme").unwrap_or(Cow::Borrowed("http"));
        let host = self
            .header(":authority")
            .or_else(|| self.header("host"))
            .unwrap_or(Cow::Borrowed(""));
        let path = self.path();
        let mut cut = path.len().min(256);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{scheme}://{host}{}", &path[..cut])
    }
}

/// Where a token was found, so it can be removed after success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location<'r> {
    Header(&'r Rc<str>),
    Param(&'r str),
    Cookie,
}

/// A token, borrowed from the request when it was there as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted<'r> {
    pub token: Cow<'r, str>,
    pub location: Location<'r>,
}

/// One provider's token locations (Envoy `ExtractorImpl` for a single provider).
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// (header name lower-case, value prefix), iterated in Envoy's map order
    /// (sorted by name + prefix).
    pub headers: BTreeMap<String, (Rc<str>, String)>,
    pub params: Vec<String>,
    pub cookies: Vec<String>,
}

impl Locations {
    pub fn new(headers: &[(String, String)], params: &[String], cookies: &[String]) -> Locations {
        let mut l = Locations::default();
        if headers.is_empty() && params.is_empty() && cookies.is_empty() {
            // Envoy's defaults when no location is configured.
            l.add_header("authorization", "Bearer ");
            l.params.push("access_token".into());
        } else {
            for (name, prefix) in headers {
                l.add_header(&name.to_ascii_lowercase(), prefix);
            }
            l.params = params.to_vec();
            l.cookies = cookies.to_vec();
        }
        l.params.sort();
        l.params.dedup();
        l.cookies.sort();
        l.cookies.dedup();
        l
    }

    fn add_header(&mut self, name: &str, prefix: &str) {
        self.headers
            .insert(format!("{name}{prefix}"), (name.into(), prefix.to_string()));
    }

    /// Tokens in Envoy's order: headers, then query parameters, then cookies.
    pub fn extract<'r>(&'r self, req: &Request<'r>) -> Vec<Extracted<'r>> {
        let mut out = Vec::new();
        for (name, prefix) in self.headers.values() {
            for value in req.header_values(name) {
                let token = if prefix.is_empty() {
                    value
                } else {
                    // The prefix may appear anywhere; absent means "no token here".
                    // (It is nearly always at the start: skip the substring search.)
                    let pos = if value.starts_with(prefix.as_str()) {
                        0
                    } else if let Some(pos) = value.find(prefix.as_str()) {
                        pos
                    } else {
                        continue;
                    };
                    match value {
                        Cow::Borrowed(v) => Cow::Borrowed(after_prefix(v, pos + prefix.len())),
                        Cow::Owned(v) => {
                            Cow::Owned(after_prefix(&v, pos + prefix.len()).to_string())
                        }
                    }
                };
                out.push(Extracted {
                    token,
                    location: Location::Header(name),
                });
            }
        }
        if !self.params.is_empty() {
            let params = parse_query(&req.path());
            for name in &self.params {
                if let Some((_, v)) = params.iter().find(|(k, _)| k == name) {
                    out.push(Extracted {
                        token: Cow::Owned(v.clone()),
                        location: Location::Param(name),
                    });
                }
            }
        }
        if !self.cookies.is_empty() {
            let cookies = parse_cookies(req, &self.cookies);
            for name in &self.cookies {
                if let Some((_, v)) = cookies.iter().find(|(k, _)| k == name) {
                    out.push(Extracted {
                        token: Cow::Owned(v.clone()),
                        location: Location::Cookie,
                    });
                }
            }
        }
        out
    }
}

fn is_jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// Envoy `extractJWT`: skip to the first base64url/dot character after the
/// prefix and take the rest; if there is none, the whole value.
fn after_prefix(value: &str, after: usize) -> &str {
    match value.get(after..).and_then(|rest| rest.find(is_jwt_char)) {
        Some(i) => &value[after + i..],
        None => value,
    }
}

pub use crate::http_match::parse_query_decoded as parse_query;

/// `QueryParamsMulti::remove` + `replaceQueryString` (see
/// [`crate::http_match::edit_query`]).
pub fn remove_param(path: &str, name: &str) -> String {
    crate::http_match::edit_query(path, &[], &[name])
}

/// `Http::Utility::parseCookies` restricted to `names`: first occurrence wins,
/// surrounding double quotes stripped.
fn parse_cookies(req: &Request, names: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for header in req.header_values("cookie") {
        let header: &str = &header;
        for part in header.split(';') {
            let Some(eq) = part.find('=') else { continue };
            let key = part[..eq].trim_start_matches(' ');
            if !names.iter().any(|n| n == key) || out.iter().any(|(k, _)| k == key) {
                continue;
            }
            let mut v = &part[eq + 1..];
            if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                v = &v[1..v.len() - 1];
            }
            out.push((key.to_string(), v.to_string()));
        }
    }
    out
}
