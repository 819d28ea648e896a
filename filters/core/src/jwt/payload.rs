//! The verified JWT payload as it travels between filters: MessagePack in
//! filter state `wasm.meshwasm.jwt_payload`, written by jwt_authn and read by
//! authz. Both sides call these two functions, so the encoding lives in one place.

use std::ops::Deref;

use serde_json::Value;

/// Filter-state key (without Envoy's `wasm.` prefix) of the verified payload.
pub const FILTER_STATE_PAYLOAD: &str = "meshwasm.jwt_payload";
/// Filter-state key of the request principal `<iss>/<sub>`.
pub const FILTER_STATE_PRINCIPAL: &str = "meshwasm.request_principal";

/// Encodes a verified payload (a JSON object) as a MessagePack map.
pub fn payload_to_msgpack(payload: &Value) -> Vec<u8> {
    // Serializing a serde_json::Value into a Vec cannot fail (no I/O, string keys).
    rmp_serde::to_vec(payload).unwrap_or_default()
}

/// A verified payload (after claim normalization) with its MessagePack
/// encoding, made once per verified token and shared by every request that
/// repeats the token. Derefs to the JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedPayload {
    value: Value,
    msgpack: Vec<u8>,
}

impl VerifiedPayload {
    pub fn new(value: Value) -> VerifiedPayload {
        let msgpack = payload_to_msgpack(&value);
        VerifiedPayload { value, msgpack }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// `payload_to_msgpack(self.value())`, the bytes for filter state.
    pub fn msgpack(&self) -> &[u8] {
        &self.msgpack
    }
}

impl Deref for VerifiedPayload {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.value
    }
}

/// Decodes what `payload_to_msgpack` wrote. None when the bytes are not a
/// MessagePack map (absent or foreign filter state).
pub fn payload_from_msgpack(bytes: &[u8]) -> Option<Value> {
    match rmp_serde::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// The request principal Istio derives from a verified token: `<iss>/<sub>`.
/// None when either claim is missing or not a string (no principal then, as in
/// Istio, whose matchers need both).
pub fn request_principal(payload: &Value) -> Option<String> {
    let iss = payload.get("iss")?.as_str()?;
    let sub = payload.get("sub")?.as_str()?;
    Some(format!("{iss}/{sub}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn msgpack_round_trip_keeps_every_claim_type() {
        let p = json!({
            "iss": "https://issuer.example", "sub": "alice",
            "aud": ["a", "b"], "exp": 1_700_000_000u64, "ratio": 0.5, "neg": -3,
            "admin": true, "nested": {"group": {"name": "dev"}}, "nothing": null,
            "scope": "read write"
        });
        let bytes = payload_to_msgpack(&p);
        assert_eq!(bytes[0] & 0xf0, 0x80, "a MessagePack fixmap");
        assert_eq!(payload_from_msgpack(&bytes), Some(p));
    }

    #[test]
    fn foreign_bytes_decode_to_none() {
        assert_eq!(payload_from_msgpack(b""), None);
        assert_eq!(payload_from_msgpack(b"\xc3"), None); // msgpack `true`
        assert_eq!(payload_from_msgpack(b"not msgpack"), None);
    }

    #[test]
    fn principal_is_iss_slash_sub() {
        assert_eq!(
            request_principal(&json!({"iss": "https://a/b", "sub": "c"})).as_deref(),
            Some("https://a/b/c")
        );
        assert_eq!(request_principal(&json!({"iss": "i"})), None);
        assert_eq!(request_principal(&json!({"iss": "i", "sub": 5})), None);
    }
}
