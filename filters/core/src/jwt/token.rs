//! A JWT parsed the way jwt_verify_lib's `Jwt::parseFromString` does: same
//! checks, same order, same statuses.

use serde_json::{Map, Value};

use super::b64;
use super::status::Status;

pub const ALGORITHMS: &[&str] = &[
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

#[derive(Debug, Clone)]
pub struct Jwt {
    pub alg: String,
    /// Empty when absent (as in jwt_verify_lib).
    pub kid: String,
    pub iss: String,
    pub sub: String,
    pub nbf: u64,
    /// 0 when absent: no expiry (Istio sets no `require_expiration`).
    pub exp: u64,
    pub audiences: Vec<String>,
    pub payload: Map<String, Value>,
    /// The payload segment as it appeared in the token (forwarded verbatim by
    /// `outputPayloadToHeader`).
    pub payload_b64: String,
    /// `header.payload`, the bytes the signature covers.
    pub signed: String,
    pub signature: Vec<u8>,
}

enum Field<T> {
    Missing,
    WrongType,
    Ok(T),
}

fn get_string(obj: &Map<String, Value>, name: &str) -> Field<String> {
    match obj.get(name) {
        None => Field::Missing,
        Some(Value::String(s)) => Field::Ok(s.clone()),
        Some(_) => Field::WrongType,
    }
}

/// `StructUtils::GetUInt64`: a JSON number (a double in protobuf's Struct),
/// 0 <= v < 2^64, truncated.
fn get_u64(obj: &Map<String, Value>, name: &str) -> Result<u64, bool> {
    match obj.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if v.is_nan() || v < 0.0 || v >= u64::MAX as f64 {
                Err(true)
            } else {
                Ok(v as u64)
            }
        }
        Some(_) => Err(false),
    }
}

fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

impl Jwt {
    pub fn parse(token: &str) -> Result<Jwt, Status> {
        // absl::StrSplit(jwt, '.', SkipEmpty()): empty sections vanish.
        let parts: Vec<&str> = token.split('.').filter(|s| !s.is_empty()).collect();
        if parts.len() != 3 {
            return Err(Status::JwtBadFormat);
        }
        let header_bytes =
            b64::decode(parts[0].as_bytes()).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
        let header = parse_object(&header_bytes).ok_or(Status::JwtHeaderParseErrorBadJson)?;
        let alg = match get_string(&header, "alg") {
            Field::Ok(a) => a,
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err(Status::JwtHeaderNotImplementedAlg);
        }
        let kid = match get_string(&header, "kid") {
            Field::Ok(k) => k,
            Field::Missing => String::new(),
            Field::WrongType => return Err(Status::JwtHeaderBadKid),
        };

        let payload_bytes =
            b64::decode(parts[1].as_bytes()).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
        let payload = parse_object(&payload_bytes).ok_or(Status::JwtPayloadParseErrorBadJson)?;
        let iss = match get_string(&payload, "iss") {
            Field::Ok(s) => s,
            Field::Missing => String::new(),
            Field::WrongType => return Err(Status::JwtPayloadParseErrorIssNotString),
        };
        let sub = match get_string(&payload, "sub") {
            Field::Ok(s) => s,
            Field::Missing => String::new(),
            Field::WrongType => return Err(Status::JwtPayloadParseErrorSubNotString),
        };
        get_u64(&payload, "iat").map_err(|range| {
            if range {
                Status::JwtPayloadParseErrorIatOutOfRange
            } else {
                Status::JwtPayloadParseErrorIatNotInteger
            }
        })?;
        let nbf = get_u64(&payload, "nbf").map_err(|range| {
            if range {
                Status::JwtPayloadParseErrorNbfOutOfRange
            } else {
                Status::JwtPayloadParseErrorNbfNotInteger
            }
        })?;
        let exp = get_u64(&payload, "exp").map_err(|range| {
            if range {
                Status::JwtPayloadParseErrorExpOutOfRange
            } else {
                Status::JwtPayloadParseErrorExpNotInteger
            }
        })?;
        if let Field::WrongType = get_string(&payload, "jti") {
            return Err(Status::JwtPayloadParseErrorJtiNotString);
        }
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for v in list {
                    match v {
                        Value::String(s) => out.push(s.clone()),
                        _ => return Err(Status::JwtPayloadParseErrorAudNotString),
                    }
                }
                out
            }
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature =
            b64::decode(parts[2].as_bytes()).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
        Ok(Jwt {
            alg,
            kid,
            iss,
            sub,
            nbf,
            exp,
            audiences,
            payload,
            payload_b64: parts[1].to_string(),
            signed: format!("{}.{}", parts[0], parts[1]),
            signature,
        })
    }

    /// `Jwt::verifyTimeConstraint` with jwt_verify_lib's arithmetic.
    pub fn verify_time(&self, now: u64, clock_skew: u64) -> Status {
        if now.saturating_add(clock_skew) < self.nbf {
            return Status::JwtNotYetValid;
        }
        if self.exp != 0 && now > self.exp.saturating_add(clock_skew) {
            return Status::JwtExpired;
        }
        Status::Ok
    }
}
