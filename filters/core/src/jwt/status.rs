//! jwt_verify_lib's `Status`: each failure is a 401 (403 for audiences) whose
//! body is the exact string Envoy sends (google/jwt_verify_lib src/status.cc).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtEd25519SignatureWrongLength,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorSubNotString,
    JwtPayloadParseErrorIatNotInteger,
    JwtPayloadParseErrorIatOutOfRange,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorJtiNotString,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksParseError,
    JwksNoKeys,
    JwksBadKeys,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
    JwksRsaParseError,
    JwksEcParseError,
    JwksEcXorYBadBase64,
    JwksOctBadBase64,
    JwksOKPXBadBase64,
    JwksOKPXWrongLength,
    JwksFetchFail,
    JwksMissingKty,
    JwksBadKty,
    JwksNotImplementedKty,
    JwksRSAKeyBadAlg,
    JwksRSAKeyMissingN,
    JwksRSAKeyBadN,
    JwksRSAKeyMissingE,
    JwksRSAKeyBadE,
    JwksECKeyBadAlg,
    JwksECKeyBadCrv,
    JwksECKeyAlgOrCrvUnsupported,
    JwksECKeyAlgNotCompatibleWithCrv,
    JwksECKeyMissingX,
    JwksECKeyBadX,
    JwksECKeyMissingY,
    JwksECKeyBadY,
    JwksHMACKeyBadAlg,
    JwksHMACKeyMissingK,
    JwksHMACKeyBadK,
    JwksOKPKeyBadAlg,
    JwksOKPKeyMissingCrv,
    JwksOKPKeyBadCrv,
    JwksOKPKeyCrvUnsupported,
    JwksOKPKeyMissingX,
    JwksOKPKeyBadX,
    JwksX509ParseError,
    JwksX509GetPubkeyError,
}

impl Status {
    /// The message Envoy puts in the local reply body.
    pub fn message(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "OK",
            JwtMissed => "Jwt is missing",
            JwtNotYetValid => "Jwt not yet valid",
            JwtExpired => "Jwt is expired",
            JwtBadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
            JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
            JwtPayloadParseErrorIatOutOfRange => {
                "Jwt payload [iat] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            JwtPayloadParseErrorNbfOutOfRange => {
                "Jwt payload [nbf] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
            JwtPayloadParseErrorExpOutOfRange => {
                "Jwt payload [exp] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
            JwtPayloadParseErrorAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtUnknownIssuer => "Jwt issuer is not configured",
            JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtVerificationFail => "Jwt verification fails",
            JwksParseError => "Jwks is an invalid JSON",
            JwksNoKeys => "Jwks does not have [keys] field",
            JwksBadKeys => "[keys] in Jwks is not an array",
            JwksNoValidKeys => "Jwks doesn't have any valid public key",
            JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwksRsaParseError => "Jwks RSA [n] or [e] field is missing or has a parse error",
            JwksEcParseError => "Jwks EC [x] and [y] fields have a parse error.",
            JwksEcXorYBadBase64 => "Jwks EC [x] or [y] field is an invalid Base64.",
            JwksOctBadBase64 => "Jwks Oct key is an invalid Base64",
            JwksOKPXBadBase64 => "Jwks OKP [x] field is an invalid Base64.",
            JwksOKPXWrongLength => "Jwks OKP [x] field is wrong length.",
            JwksFetchFail => "Jwks remote fetch is failed",
            JwksMissingKty => "[kty] is missing in [keys]",
            JwksBadKty => "[kty] is bad in [keys]",
            JwksNotImplementedKty => "[kty] is not supported in [keys]",
            JwksRSAKeyBadAlg => "[alg] is not started with [RS] or [PS] for an RSA key",
            JwksRSAKeyMissingN => "[n] field is missing for a RSA key",
            JwksRSAKeyBadN => "[n] field is not string for a RSA key",
            JwksRSAKeyMissingE => "[e] field is missing for a RSA key",
            JwksRSAKeyBadE => "[e] field is not string for a RSA key",
            JwksECKeyBadAlg => "[alg] is not started with [ES] for an EC key",
            JwksECKeyBadCrv => "[crv] field is not string for an EC key",
            JwksECKeyAlgOrCrvUnsupported => "[crv] or [alg] field is not supported for an EC key",
            JwksECKeyAlgNotCompatibleWithCrv => {
                "[crv] field specified is not compatible with [alg] for an EC key"
            }
            JwksECKeyMissingX => "[x] field is missing for an EC key",
            JwksECKeyBadX => "[x] field is not string for an EC key",
            JwksECKeyMissingY => "[y] field is missing for an EC key",
            JwksECKeyBadY => "[y] field is not string for an EC key",
            JwksHMACKeyBadAlg => "[alg] does not start with [HS] for an HMAC key",
            JwksHMACKeyMissingK => "[k] field is missing for an HMAC key",
            JwksHMACKeyBadK => "[k] field is not string for an HMAC key",
            JwksOKPKeyBadAlg => "[alg] is not [EdDSA] for an OKP key",
            JwksOKPKeyMissingCrv => "[crv] field is missing for an OKP key",
            JwksOKPKeyBadCrv => "[crv] field is not string for an OKP key",
            JwksOKPKeyCrvUnsupported => "[crv] field is not supported for an OKP key",
            JwksOKPKeyMissingX => "[x] field is missing for an OKP key",
            JwksOKPKeyBadX => "[x] field is not string for an OKP key",
            JwksX509ParseError => "X509 parse pubkey fails",
            JwksX509GetPubkeyError => "X509 parse pubkey internal fails: get pubkey",
        }
    }

    /// Envoy answers 403 only for audiences; every other failure is 401.
    pub fn http_status(self) -> u32 {
        if self == Status::JwtAudienceNotAllowed {
            403
        } else {
            401
        }
    }

    /// A short metric-friendly reason name (`denied_<reason>` counters).
    pub fn metric_reason(self) -> &'static str {
        use Status::*;
        match self {
            JwtExpired => "expired",
            JwtNotYetValid => "not_yet_valid",
            JwtUnknownIssuer => "unknown_issuer",
            JwtAudienceNotAllowed => "audience",
            JwtVerificationFail | JwtEd25519SignatureWrongLength => "signature",
            JwksKidAlgMismatch | JwksNoValidKeys => "no_key",
            JwksFetchFail => "jwks_fetch",
            _ => "malformed",
        }
    }
}

/// Metric reasons, so the filter can define one counter per reason up front.
pub const METRIC_REASONS: &[&str] = &[
    "expired",
    "not_yet_valid",
    "unknown_issuer",
    "audience",
    "signature",
    "no_key",
    "jwks_fetch",
    "malformed",
];
