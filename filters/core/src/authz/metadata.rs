//! Reading identities other filters left behind.
//!
//! - Envoy's native jwt_authn puts the payload in dynamic metadata. The wasm
//!   host returns `["metadata"]` as a serialized `envoy.config.core.v3.Metadata`
//!   proto, which keeps the `Struct` value types exactly (the pairs encoding of
//!   deeper paths cannot tell a string from a number); decoded here.
//! - meshwasm's jwt_authn writes MessagePack (see `crate::jwt`); its payload
//!   gets the space-delimited claim normalization istiod configures natively.

use serde_json::{Map, Number, Value};

/// Claims istiod lists in jwt_authn `normalize_payload_in_metadata.space_delimited_claims`.
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// The meshwasm jwt_authn payload from filter state, normalized like native
/// jwt_authn's metadata (space-delimited `scope`/`permission` → lists).
pub fn payload_from_filter_state(bytes: &[u8]) -> Option<Value> {
    let mut v = crate::jwt::payload_from_msgpack(bytes)?;
    if let Value::Object(m) = &mut v {
        for claim in SPACE_DELIMITED_CLAIMS {
            if let Some(Value::String(s)) = m.get(claim) {
                let list = s
                    .split(' ')
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_string()))
                    .collect();
                m.insert(claim.to_string(), Value::Array(list));
            }
        }
    }
    Some(v)
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn next(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.buf.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let (b, rest) = self.buf.split_at_checked(8)?;
                self.buf = rest;
                Field::Fixed64(u64::from_le_bytes(b.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let (b, rest) = self.buf.split_at_checked(len)?;
                self.buf = rest;
                Field::Bytes(b)
            }
            5 => {
                let (_, rest) = self.buf.split_at_checked(4)?;
                self.buf = rest;
                Field::Fixed32
            }
            _ => return None,
        };
        Some(Some((key >> 3, f)))
    }
}

/// A map<string, M> entry: key = 1, value = 2.
fn map_entry(b: &[u8]) -> Option<(String, &[u8])> {
    let mut r = Reader { buf: b };
    let (mut k, mut v) = (String::new(), &b[..0]);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(s)) => k = String::from_utf8(s.to_vec()).ok()?,
            (2, Field::Bytes(s)) => v = s,
            _ => {}
        }
    }
    Some((k, v))
}

/// google.protobuf.Struct → JSON object.
fn decode_struct(b: &[u8]) -> Option<Value> {
    let mut r = Reader { buf: b };
    let mut m = Map::new();
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Bytes(e)) = (n, f) {
            let (k, v) = map_entry(e)?;
            m.insert(k, decode_value(v)?);
        }
    }
    Some(Value::Object(m))
}

/// google.protobuf.Value → JSON.
fn decode_value(b: &[u8]) -> Option<Value> {
    let mut r = Reader { buf: b };
    let mut out = Value::Null;
    while let Some((n, f)) = r.next()? {
        out = match (n, f) {
            (1, _) => Value::Null,
            (2, Field::Fixed64(bits)) => {
                Number::from_f64(f64::from_bits(bits)).map_or(Value::Null, Value::Number)
            }
            (3, Field::Bytes(s)) => Value::String(String::from_utf8_lossy(s).into_owned()),
            (4, Field::Varint(v)) => Value::Bool(v != 0),
            (5, Field::Bytes(s)) => decode_struct(s)?,
            (6, Field::Bytes(s)) => {
                let mut lr = Reader { buf: s };
                let mut items = Vec::new();
                while let Some((ln, lf)) = lr.next()? {
                    if let (1, Field::Bytes(item)) = (ln, lf) {
                        items.push(decode_value(item)?);
                    }
                }
                Value::Array(items)
            }
            _ => out,
        };
    }
    Some(out)
}

/// One namespace of `filter_metadata` from a serialized
/// `envoy.config.core.v3.Metadata` (field 1: map<string, Struct>).
pub fn filter_metadata_from_proto(bytes: &[u8], namespace: &str) -> Option<Value> {
    let mut r = Reader { buf: bytes };
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Bytes(e)) = (n, f) {
            let (k, v) = map_entry(e)?;
            if k == namespace {
                return decode_struct(v);
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod encode {
    //! A tiny proto encoder for tests (mirrors what Envoy serializes).
    use serde_json::Value;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint((n << 3) | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        e
    }
    pub fn value(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        match v {
            Value::Null => {
                varint(1 << 3, &mut out);
                varint(0, &mut out);
            }
            Value::Number(n) => {
                varint((2 << 3) | 1, &mut out);
                out.extend_from_slice(&n.as_f64().unwrap().to_bits().to_le_bytes());
            }
            Value::String(s) => bytes_field(3, s.as_bytes(), &mut out),
            Value::Bool(b) => {
                varint(4 << 3, &mut out);
                varint(u64::from(*b), &mut out);
            }
            Value::Object(_) => bytes_field(5, &structure(v), &mut out),
            Value::Array(items) => {
                let mut l = Vec::new();
                for i in items {
                    bytes_field(1, &value(i), &mut l);
                }
                bytes_field(6, &l, &mut out);
            }
        }
        out
    }
    pub fn structure(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        if let Value::Object(m) = v {
            for (k, v) in m {
                bytes_field(1, &entry(k, &value(v)), &mut out);
            }
        }
        out
    }
    pub fn metadata(namespaces: &[(&str, Value)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ns, v) in namespaces {
            bytes_field(1, &entry(ns, &structure(v)), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_proto_roundtrip() {
        let payload = json!({"payload": {"iss": "i", "sub": "s", "exp": 1.0, "aud": ["a", "b"], "nested": {"k": true}}});
        let bytes = encode::metadata(&[
            ("other", json!({"x": "y"})),
            ("envoy.filters.http.jwt_authn", payload.clone()),
        ]);
        assert_eq!(
            filter_metadata_from_proto(&bytes, "envoy.filters.http.jwt_authn"),
            Some(payload)
        );
        assert_eq!(filter_metadata_from_proto(&bytes, "missing"), None);
        // Garbage never panics.
        assert_eq!(filter_metadata_from_proto(&[0xff, 0xff, 0x01], "x"), None);
        assert_eq!(
            filter_metadata_from_proto(&bytes[..bytes.len() - 3], "envoy.filters.http.jwt_authn"),
            None
        );
    }

    #[test]
    fn space_delimited_claims_from_filter_state() {
        let bytes = crate::jwt::payload_to_msgpack(
            &json!({"iss": "i", "scope": "read  write", "permission": ["x"]}),
        );
        let v = payload_from_filter_state(&bytes).unwrap();
        assert_eq!(v["scope"], json!(["read", "write"]));
        assert_eq!(v["permission"], json!(["x"]));
        assert_eq!(payload_from_filter_state(b"not msgpack"), None);
    }
}
