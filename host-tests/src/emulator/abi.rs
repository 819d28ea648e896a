//! The proxy-wasm ABI 0.2.1 as Envoy speaks it: status codes, enum values, the pairs
//! encoding of maps, `\0`-joined property paths, and guest-memory access (buffers
//! returned to the guest are allocated in it with `proxy_on_memory_allocate`).

use wasmtime::{AsContext, AsContextMut, Memory, TypedFunc};

/// `proxy_status_t` (reference §8.2). The SDK's `Status` lacks 6, 11 and 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as u32 as i32
    }
}

/// `proxy_map_type_t`.
pub mod map_type {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const REQUEST_TRAILERS: u32 = 1;
    pub const RESPONSE_HEADERS: u32 = 2;
    pub const RESPONSE_TRAILERS: u32 = 3;
    pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: u32 = 7;
}

/// `proxy_buffer_type_t`.
pub mod buffer_type {
    pub const REQUEST_BODY: u32 = 0;
    pub const RESPONSE_BODY: u32 = 1;
    pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const GRPC_RECEIVE_BUFFER: u32 = 5;
    pub const VM_CONFIGURATION: u32 = 6;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

/// `proxy_stream_type_t`.
pub mod stream_type {
    pub const HTTP_REQUEST: u32 = 0;
    pub const HTTP_RESPONSE: u32 = 1;
}

/// A header map: lower-case names, values as bytes, in order, duplicates allowed.
pub type HeaderMap = Vec<(String, Vec<u8>)>;

/// Pairs encoding: `u32 count`, `count × (u32 klen, u32 vlen)`, then `k\0v\0…`.
pub fn encode_pairs(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decodes the pairs encoding; `None` if it is malformed.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = bytes.get(at..at + kl)?;
        at += kl + 1;
        let v = bytes.get(at..at + vl)?;
        at += vl + 1;
        out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
    }
    Some(out)
}

/// A JSON value in Envoy's property encoding of a `google.protobuf.Struct` value
/// (reference §1.2): strings raw, numbers 8-byte LE f64, bools 1 byte, objects in the
/// pairs encoding (nested values serialized into the value slot), lists as pairs with
/// the elements in the key slots and empty values; null gives empty bytes. Use it to
/// set e.g. `metadata.filter_metadata.envoy.filters.http.jwt_authn.<payload>`.
pub fn encode_struct(v: &serde_json::Value) -> Vec<u8> {
    use serde_json::Value;
    match v {
        Value::Null => Vec::new(),
        Value::Bool(b) => vec![*b as u8],
        Value::Number(n) => n.as_f64().unwrap_or(0.0).to_le_bytes().to_vec(),
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Array(items) => encode_pairs(
            &items
                .iter()
                .map(|i| {
                    (
                        String::from_utf8_lossy(&encode_struct(i)).into_owned(),
                        Vec::new(),
                    )
                })
                .collect::<Vec<_>>(),
        ),
        Value::Object(m) => encode_pairs(
            &m.iter()
                .map(|(k, v)| (k.clone(), encode_struct(v)))
                .collect::<Vec<_>>(),
        ),
    }
}

/// Walks `rest` into a pairs-encoded value (a map by key, a list by decimal index),
/// as Envoy walks deeper path segments; `None` when a step does not resolve.
pub fn descend(value: &[u8], rest: &[String]) -> Option<Vec<u8>> {
    let mut cur = value.to_vec();
    for seg in rest {
        let pairs = decode_pairs(&cur)?;
        let by_key = pairs.iter().find(|(k, _)| k == seg).map(|(_, v)| v.clone());
        cur = match by_key {
            Some(v) => v,
            None => {
                let i: usize = seg.parse().ok()?;
                let (k, v) = pairs.get(i)?;
                if !v.is_empty() {
                    return None;
                }
                k.clone().into_bytes()
            }
        };
    }
    Some(cur)
}

/// Splits a `\0`-joined property path (the SDK drops the trailing NUL; accept both).
pub fn split_path(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Guest memory plus the guest's allocator, cached after instantiation.
#[derive(Clone)]
pub struct Guest {
    pub memory: Memory,
    pub alloc: TypedFunc<i32, i32>,
}

impl Guest {
    /// Reads `len` bytes at `ptr`; `Err(InvalidMemoryAccess)` when out of bounds.
    pub fn read(&self, store: impl AsContext, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
        let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.memory
            .data(&store)
            .get(ptr..ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
            .map(<[u8]>::to_vec)
            .ok_or(Status::InvalidMemoryAccess)
    }

    pub fn read_string(&self, store: impl AsContext, ptr: i32, len: i32) -> Result<String, Status> {
        self.read(store, ptr, len)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn write(
        &self,
        mut store: impl AsContextMut,
        ptr: i32,
        bytes: &[u8],
    ) -> Result<(), Status> {
        self.memory
            .write(&mut store, ptr as u32 as usize, bytes)
            .map_err(|_| Status::InvalidMemoryAccess)
    }

    pub fn write_u32(&self, store: impl AsContextMut, ptr: i32, v: u32) -> Result<(), Status> {
        self.write(store, ptr, &v.to_le_bytes())
    }

    pub fn write_u64(&self, store: impl AsContextMut, ptr: i32, v: u64) -> Result<(), Status> {
        self.write(store, ptr, &v.to_le_bytes())
    }

    /// Copies `bytes` into a fresh guest buffer and writes its pointer and size into the
    /// out-params, as Envoy does; an empty result is written as `(0, 0)` (the SDK reads
    /// that as `None`). A trap inside the guest allocator is a trap of the call.
    pub(crate) fn return_bytes(
        &self,
        mut store: impl AsContextMut<Data = super::state::Host>,
        bytes: &[u8],
        ptr_out: i32,
        len_out: i32,
    ) -> anyhow::Result<Status> {
        let ptr = if bytes.is_empty() {
            0
        } else {
            *store
                .as_context_mut()
                .data_mut()
                .hostcalls
                .entry("proxy_on_memory_allocate".to_string())
                .or_default() += 1;
            let p = self.alloc.call(&mut store, bytes.len() as i32)?;
            if p == 0 {
                return Ok(Status::InvalidMemoryAccess);
            }
            if let Err(s) = self.write(&mut store, p, bytes) {
                return Ok(s);
            }
            p
        };
        if let Err(s) = self.write_u32(&mut store, ptr_out, ptr as u32) {
            return Ok(s);
        }
        if let Err(s) = self.write_u32(&mut store, len_out, bytes.len() as u32) {
            return Ok(s);
        }
        Ok(Status::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let m = vec![
            (":path".to_string(), b"/a".to_vec()),
            ("x".to_string(), Vec::new()),
        ];
        assert_eq!(decode_pairs(&encode_pairs(&m)).unwrap(), m);
        assert_eq!(decode_pairs(&[]).unwrap(), Vec::new());
        assert!(decode_pairs(&[1, 0, 0, 0]).is_none());
    }

    #[test]
    fn struct_encoding_and_descent() {
        let v = serde_json::json!({"sub": "alice", "exp": 2.0, "ok": true, "aud": ["a", "b"], "n": {"x": "y"}});
        let enc = encode_struct(&v);
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(descend(&enc, &p(&["sub"])).unwrap(), b"alice");
        assert_eq!(descend(&enc, &p(&["exp"])).unwrap(), 2.0f64.to_le_bytes());
        assert_eq!(descend(&enc, &p(&["ok"])).unwrap(), [1]);
        assert_eq!(descend(&enc, &p(&["aud", "1"])).unwrap(), b"b");
        assert_eq!(descend(&enc, &p(&["n", "x"])).unwrap(), b"y");
        assert_eq!(descend(&enc, &p(&["missing"])), None);
    }

    #[test]
    fn paths_split_on_nul() {
        assert_eq!(split_path(b"source\0address"), vec!["source", "address"]);
        assert_eq!(split_path(b"a\0b\0"), vec!["a", "b"]);
        assert!(split_path(b"").is_empty());
    }
}
