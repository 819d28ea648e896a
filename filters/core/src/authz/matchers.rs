//! The leaf matchers of Envoy RBAC as istiod generates them, compiled once:
//! string matchers (exact/prefix/suffix/RE2 full match), CIDR ranges and
//! `uriTemplate` path templates.

use std::net::IpAddr;

use regex_lite::Regex;

use crate::http_match::{
    ends_with_bytes, ends_with_lower, eq_bytes, eq_lower, starts_with_bytes, starts_with_lower,
};

/// Envoy `StringMatcher` (the forms istiod emits). `ignore_case` lowers both
/// sides (ASCII only, like absl::EqualsIgnoreCase).
#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `safeRegex` with RE2 full-match semantics (anchored at compile time).
    Regex(Regex),
    /// `safeRegex: .+` — any non-empty value without a newline; kept apart
    /// from `Regex` because it is by far the most common.
    NonEmpty,
    /// An Envoy `uriTemplate`, matched without a regex engine (same language
    /// as the RE2 pattern Envoy builds; see `uri_template`).
    Template(Vec<Tok>),
}

/// A piece of a compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Lit(String),
    /// `*`: one or more pchars (no '/').
    One,
    /// `**`: zero or more pchars or '/'.
    Many,
}

fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

fn template_match(toks: &[Tok], s: &[u8]) -> bool {
    let Some((first, rest)) = toks.split_first() else {
        return s.is_empty();
    };
    match first {
        Tok::Lit(l) => s
            .strip_prefix(l.as_bytes())
            .is_some_and(|r| template_match(rest, r)),
        Tok::One | Tok::Many => {
            let many = *first == Tok::Many;
            let run = s
                .iter()
                .take_while(|b| is_pchar(**b) || (many && **b == b'/'))
                .count();
            let min = usize::from(!many);
            (min..=run).rev().any(|k| template_match(rest, &s[k..]))
        }
    }
}

impl StrMatch {
    pub fn regex(pattern: &str) -> Result<StrMatch, String> {
        if pattern == ".+" {
            return Ok(StrMatch::NonEmpty);
        }
        // RE2 FullMatch: the whole value must match.
        Regex::new(&format!("^(?:{pattern})$"))
            .map(StrMatch::Regex)
            .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Regex(r) => r.is_match(v),
            _ => self.matches_bytes(v.as_bytes()),
        }
    }

    /// A value as bytes (a header value as Envoy holds it). Only a regex
    /// needs text: a value that is not UTF-8 is matched lossily there.
    pub fn matches_bytes(&self, v: &[u8]) -> bool {
        match self {
            // Word-at-a-time compares: `==` on slices is a byte loop in wasm.
            StrMatch::Exact(s) => eq_bytes(v, s.as_bytes()),
            StrMatch::Prefix(s) => starts_with_bytes(v, s.as_bytes()),
            StrMatch::Suffix(s) => ends_with_bytes(v, s.as_bytes()),
            StrMatch::Regex(r) => match std::str::from_utf8(v) {
                Ok(s) => r.is_match(s),
                Err(_) => r.is_match(&String::from_utf8_lossy(v)),
            },
            // RE2 `.` does not match `\n`.
            StrMatch::NonEmpty => !v.is_empty() && !v.contains(&b'\n'),
            StrMatch::Template(t) => template_match(t, v),
        }
    }

    /// Case-insensitive form of [`StrMatch::matches_bytes`]: the pattern was
    /// lower-cased at compile time.
    pub fn matches_bytes_ignore_case(&self, v: &[u8]) -> bool {
        match self {
            // Compared lower-cased in place, eight bytes at a time.
            StrMatch::Exact(s) => eq_lower(v, s.as_bytes()),
            StrMatch::Prefix(s) => starts_with_lower(v, s.as_bytes()),
            StrMatch::Suffix(s) => ends_with_lower(v, s.as_bytes()),
            _ if v.iter().any(u8::is_ascii_uppercase) => {
                self.matches_bytes(&v.to_ascii_lowercase())
            }
            _ => self.matches_bytes(v),
        }
    }

    pub fn lowercased(self) -> StrMatch {
        match self {
            StrMatch::Exact(s) => StrMatch::Exact(s.to_ascii_lowercase()),
            StrMatch::Prefix(s) => StrMatch::Prefix(s.to_ascii_lowercase()),
            StrMatch::Suffix(s) => StrMatch::Suffix(s.to_ascii_lowercase()),
            other => other,
        }
    }
}

/// Istio's generic string rule (matcher/string.go `StringMatcherWithPrefix`):
/// `*` → `.+` (or present for headers, handled by the caller), `*x` → suffix,
/// `x*` → prefix, anything else exact (a `*` in the middle is literal).
pub fn istio_string(v: &str, prefix: &str) -> StrMatch {
    if v == "*" {
        StrMatch::NonEmpty
    } else if let Some(s) = v.strip_prefix('*') {
        StrMatch::Suffix(s.to_string())
    } else if let Some(p) = v.strip_suffix('*') {
        StrMatch::Prefix(format!("{prefix}{p}"))
    } else {
        StrMatch::Exact(format!("{prefix}{v}"))
    }
}

/// An IP range (Envoy `CidrRange`): a bare IP is /32 or /128; host bits are
/// masked off as Envoy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => {
                let len: u8 = len
                    .parse()
                    .map_err(|_| format!("invalid CIDR {s:?}: bad prefix length"))?;
                (ip, Some(len))
            }
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address or CIDR {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(format!("invalid CIDR {s:?}: prefix length above {max}"));
        }
        Ok(Cidr { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len)
                };
                (u32::from(a) & mask) == (u32::from(b) & mask)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len)
                };
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            _ => false,
        }
    }
}

/// Envoy `uriTemplate` path matcher (uri_template_internal.cc): `/`-separated
/// segments, `*` = one or more pchars, `**` = zero or more pchars or '/'
/// (nothing after it may glob), literal segments pchars only; full match
/// against the path without query.
pub fn uri_template(template: &str) -> Result<StrMatch, String> {
    let body = template
        .strip_prefix('/')
        .ok_or_else(|| format!("path template {template:?} must start with '/'"))?;
    let segments: Vec<&str> = body.split('/').collect();
    let mut toks: Vec<Tok> = Vec::new();
    let mut lit = String::from("/");
    let mut seen_text_glob = false;
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            lit.push('/');
        }
        match *seg {
            "*" | "**" => {
                if seen_text_glob {
                    return Err(format!("path template {template:?}: glob after `{{**}}`"));
                }
                seen_text_glob = *seg == "**";
                if !lit.is_empty() {
                    toks.push(Tok::Lit(std::mem::take(&mut lit)));
                }
                toks.push(if seen_text_glob { Tok::Many } else { Tok::One });
            }
            l => {
                // An empty segment is allowed only as the trailing '/'.
                let valid = !l.is_empty() && l.bytes().all(is_pchar);
                let trailing_slash = l.is_empty() && i == segments.len() - 1;
                if !(valid || trailing_slash) {
                    return Err(format!("path template {template:?}: invalid literal {l:?}"));
                }
                lit.push_str(l);
            }
        }
    }
    if !lit.is_empty() {
        toks.push(Tok::Lit(lit));
    }
    Ok(StrMatch::Template(toks))
}

/// Parses `ip:port` / `[v6]:port` as Envoy prints addresses (`source.address`).
pub fn parse_socket_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok();
    }
    let (ip, _) = s.rsplit_once(':')?;
    ip.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact, prefix and suffix say what `==`, `starts_with` and `ends_with`
    /// say, for values shorter, equal and longer than the pattern, and for
    /// multi-byte text.
    #[test]
    fn string_matchers_agree_with_str() {
        let values = [
            "",
            "a",
            "ab",
            "abc",
            "xabc",
            "abcx",
            "abcdefghij",
            "é",
            "aé",
            "éa",
            "abcdefgh",
        ];
        for p in ["", "a", "abc", "abcdefgh", "é"] {
            for v in values {
                let (e, pre, suf) = (
                    StrMatch::Exact(p.into()),
                    StrMatch::Prefix(p.into()),
                    StrMatch::Suffix(p.into()),
                );
                assert_eq!(e.matches(v), v == p, "{v:?} exact {p:?}");
                assert_eq!(pre.matches(v), v.starts_with(p), "{v:?} prefix {p:?}");
                assert_eq!(suf.matches(v), v.ends_with(p), "{v:?} suffix {p:?}");
                for m in [&e, &pre, &suf] {
                    assert_eq!(m.matches_bytes(v.as_bytes()), m.matches(v), "{v:?} {m:?}");
                }
            }
        }
        // Values that are not UTF-8 are compared as bytes; a regex sees them
        // lossily (U+FFFD), as `.` in RE2 takes an invalid byte as one character.
        let raw = b"ab\xff";
        assert!(StrMatch::Prefix("ab".into()).matches_bytes(raw));
        assert!(!StrMatch::Exact("ab".into()).matches_bytes(raw));
        assert!(StrMatch::NonEmpty.matches_bytes(b"\xff"));
        assert!(StrMatch::regex("ab.").unwrap().matches_bytes(raw));
        assert!(!StrMatch::regex("ab").unwrap().matches_bytes(raw));
        assert!(StrMatch::Prefix("ab".into()).matches_bytes_ignore_case(b"AB\xff"));
    }

    /// Case-insensitive exact, prefix and suffix (patterns lower-cased at
    /// compile time, values compared in place) say what lower-casing the
    /// value and comparing says, for values around the word size, mixed case
    /// and bytes that are not ASCII.
    #[test]
    fn ignore_case_compares_agree_with_lowercasing_first() {
        let values: [&[u8]; 12] = [
            b"",
            b"A",
            b"Example.COM",
            b"example.com:8080",
            b"WWW.EXAMPLE.COM",
            b"127.0.0.1:10000",
            b"LOCALHOST",
            b"localhost",
            b"\xc3\x89X.example.COM",
            b"Exa\xffmple.com",
            b"[",
            b"@Z`z{",
        ];
        let patterns = [
            "",
            "a",
            "example.com",
            ".example.com",
            "localhost",
            "127.0.0.1:",
            "www.",
            "@z`z{",
            "\u{c9}x",
        ];
        for p in patterns {
            for m in [
                StrMatch::Exact(p.into()),
                StrMatch::Prefix(p.into()),
                StrMatch::Suffix(p.into()),
            ] {
                let m = m.lowercased();
                for v in values {
                    assert_eq!(
                        m.matches_bytes_ignore_case(v),
                        m.matches_bytes(&v.to_ascii_lowercase()),
                        "{m:?} on {v:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c = Cidr::parse("10.1.2.3").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.1.2.4".parse().unwrap()));
        // Host bits set: masked, as Envoy does.
        assert!(Cidr::parse("10.1.2.3/8")
            .unwrap()
            .contains("10.9.9.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("bad").is_err());
    }

    #[test]
    fn templates() {
        let t = uri_template("/path/template/*").unwrap();
        assert!(t.matches("/path/template/a"));
        assert!(!t.matches("/path/template/"));
        assert!(!t.matches("/path/template/a/b"));
        let t = uri_template("/**/path/template").unwrap();
        assert!(t.matches("/a/b/path/template"));
        assert!(t.matches("//path/template"));
        assert!(!t.matches("/path/template"));
        let t = uri_template("/foo/**").unwrap();
        assert!(t.matches("/foo/"));
        assert!(t.matches("/foo/a/b.txt"));
        assert!(!t.matches("/foo"));
        let t = uri_template("/foo/**/").unwrap();
        assert!(t.matches("/foo/bar/"));
        assert!(!t.matches("/foo/bar"));
        // `*` never matches characters outside pchar.
        assert!(!uri_template("/a/*").unwrap().matches("/a/x*y"));
        assert!(uri_template("/a/**/*").is_err());
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket_ip("127.0.0.1:80"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_socket_ip("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_socket_ip("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_socket_ip("x"), None);
    }

    #[test]
    fn regex_full_match() {
        let r = StrMatch::regex(".*/ns/foo/.*").unwrap();
        assert!(r.matches("spiffe://td/ns/foo/sa/x"));
        assert!(!r.matches("spiffe://td/ns/foo"));
        assert!(StrMatch::NonEmpty.matches("a"));
        assert!(!StrMatch::NonEmpty.matches(""));
    }
}
