//! Configuration parsing shared by every filter: field paths in errors, proto
//! durations and percentages as Istio and Envoy write them.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// A path into a configuration document, printed the way users read it:
/// `policies[2].spec.rules[0].to[0].operation.paths[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root() -> Self {
        FieldPath(String::new())
    }

    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{}", self.0, name))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{}]", self.0, i))
    }

    /// A map key, e.g. `request.headers[x-user]` style keys in `when` conditions.
    pub fn key(&self, k: &str) -> Self {
        FieldPath(format!("{}[{}]", self.0, k))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<root>")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// An invalid configuration: where, and why. Printed as `path: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: FieldPath,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: &FieldPath, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.clone(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes a JSON document into `T`, reporting the field path of the
/// first structural error (unknown field, wrong type, missing field).
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        ConfigError {
            path: FieldPath(path),
            reason: strip_serde_position(&inner.to_string()),
        }
    })
}

/// serde_json appends " at line L column C"; the field path says more.
fn strip_serde_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Parses a protobuf JSON `Duration` (`"5s"`, `"0.250s"`, `"250ms"` as Istio accepts
/// via its YAML tooling, `"1m"`, `"1h"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let units: [(&str, f64); 6] = [
        ("ms", 1e-3),
        ("us", 1e-6),
        ("ns", 1e-9),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    for (suffix, scale) in units {
        if let Some(num) = s.strip_suffix(suffix) {
            // "5ms" also ends in "s": the longer suffixes come first.
            if suffix == "s" && (num.ends_with('m') || num.ends_with('u') || num.ends_with('n')) {
                continue;
            }
            let v: f64 = num.parse().map_err(|_| {
                format!("invalid duration {s:?}: expected e.g. \"5s\" or \"250ms\"")
            })?;
            if !v.is_finite() || v < 0.0 {
                return Err(format!(
                    "invalid duration {s:?}: must be a non-negative number"
                ));
            }
            let secs = v * scale;
            if secs > 315_576_000_000.0 {
                return Err(format!("invalid duration {s:?}: too large"));
            }
            return Ok(Duration::from_nanos((secs * 1e9).round() as u64));
        }
    }
    Err(format!(
        "invalid duration {s:?}: expected a number with a unit (s, ms, m, h), e.g. \"5s\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        name: String,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        items: Vec<Inner>,
    }

    #[test]
    fn field_path_in_structural_errors() {
        let err = from_json::<Outer>(br#"{"items":[{"name":"a"},{"nmae":"b"}]}"#).unwrap_err();
        assert_eq!(err.path.as_str(), "items[1].nmae");
        assert!(
            err.reason.contains("unknown field `nmae`"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains("line"), "{}", err.reason);
    }

    #[test]
    fn field_path_builder() {
        let p = FieldPath::root().field("policies").index(2).field("spec");
        assert_eq!(p.to_string(), "policies[2].spec");
        assert_eq!(FieldPath::root().to_string(), "<root>");
    }
}
