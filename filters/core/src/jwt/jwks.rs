//! JWKS parsing and signature checks, following jwt_verify_lib's `jwks.cc` and
//! `verify.cc`: which keys are accepted, which are skipped, and which key a
//! token is tried against. The crypto itself is RustCrypto (pure Rust, builds
//! for wasm32-wasip1).

use hmac::{Hmac, Mac};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::b64;
use super::rsa_fast::FastRsa;
use super::status::Status;
use super::token::Jwt;

#[derive(Clone)]
pub enum EcKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(Box<p521::ecdsa::VerifyingKey>),
}

impl std::fmt::Debug for EcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EcKey::P256(_) => "P-256",
            EcKey::P384(_) => "P-384",
            EcKey::P521(_) => "P-521",
        })
    }
}

#[derive(Debug, Clone)]
pub enum KeyMaterial {
    Rsa(RsaPublicKey, Option<FastRsa>),
    Ec(EcKey),
    Oct(Vec<u8>),
    /// Raw 32 bytes; None when they are not a valid point (then every
    /// signature fails, as BoringSSL's ED25519_verify would).
    Ed25519(Option<ed25519_dalek::VerifyingKey>),
}

#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: String,
    pub alg: String,
    pub key: KeyMaterial,
}

/// A parsed key set: only the keys jwt_verify_lib would keep.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

enum Field<'a> {
    Missing,
    WrongType,
    Ok(&'a str),
}

fn string<'a>(obj: &'a Map<String, Value>, name: &str) -> Field<'a> {
    match obj.get(name) {
        None => Field::Missing,
        Some(Value::String(s)) => Field::Ok(s),
        Some(_) => Field::WrongType,
    }
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    missing: Status,
    wrong: Status,
) -> Result<&'a str, Status> {
    match string(obj, name) {
        Field::Ok(s) => Ok(s),
        Field::Missing => Err(missing),
        Field::WrongType => Err(wrong),
    }
}

/// Big-endian integer bytes left-padded (or stripped of leading zeros) to `len`.
fn fixed_width(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let digits = &bytes[first..];
    if digits.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - digits.len()];
    out.extend_from_slice(digits);
    Some(out)
}

fn ec_point(x: &[u8], y: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut sec1 = vec![4u8];
    sec1.extend(fixed_width(x, len)?);
    sec1.extend(fixed_width(y, len)?);
    Some(sec1)
}

fn parse_rsa(jwk: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
        return Err(Status::JwksRSAKeyBadAlg);
    }
    let n = required(jwk, "n", Status::JwksRSAKeyMissingN, Status::JwksRSAKeyBadN)?;
    let e = required(jwk, "e", Status::JwksRSAKeyMissingE, Status::JwksRSAKeyBadE)?;
    let n = b64::decode(n.as_bytes()).ok_or(Status::JwksRsaParseError)?;
    let e = b64::decode(e.as_bytes()).ok_or(Status::JwksRsaParseError)?;
    let (n, e) = (BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e));
    // jwt_verify_lib rejects non-standard exponents early.
    if e != BigUint::from(3u32) && e != BigUint::from(65537u32) {
        return Err(Status::JwksRsaParseError);
    }
    let fast = FastRsa::new(&n, if e == BigUint::from(3u32) { 3 } else { 65537 });
    RsaPublicKey::new_with_max_size(n, e, 16384)
        .map(|k| KeyMaterial::Rsa(k, fast))
        .map_err(|_| Status::JwksRsaParseError)
}

/// The RSA key of a PEM certificate (`PEM_read_bio_X509`, then
/// `X509_get_pubkey` and `EVP_PKEY_get1_RSA`): the first certificate of the
/// value, as that reader takes it, its body decoded leniently about line
/// breaks, as that reader does.
fn x509_rsa_key(pem: &str) -> Result<KeyMaterial, Status> {
    use base64ct::{Base64, Encoding};

    let body = pem
        .strip_prefix("-----BEGIN CERTIFICATE-----")
        .and_then(|b| b.split("-----END CERTIFICATE-----").next())
        .ok_or(Status::JwksX509ParseError)?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = Base64::decode_vec(&b64).map_err(|_| Status::JwksX509ParseError)?;
    let spki = certificate_spki(&der).ok_or(Status::JwksX509ParseError)?;
    let no_rsa = Status::JwksX509GetPubkeyError;
    if spki.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
        return Err(no_rsa);
    }
    let bits = spki.subject_public_key.as_bytes().ok_or(no_rsa)?;
    let pk = <rsa::pkcs1::RsaPublicKey as der::Decode>::from_der(bits).map_err(|_| no_rsa)?;
    let n = BigUint::from_bytes_be(pk.modulus.as_bytes());
    let e = BigUint::from_bytes_be(pk.public_exponent.as_bytes());
    let fast = if e == BigUint::from(3u32) {
        FastRsa::new(&n, 3)
    } else if e == BigUint::from(65537u32) {
        FastRsa::new(&n, 65537)
    } else {
        None
    };
    // BoringSSL's limit, as for a JWK.
    RsaPublicKey::new_with_max_size(n, e, 16384)
        .map(|k| KeyMaterial::Rsa(k, fast))
        .map_err(|_| no_rsa)
}

/// The SubjectPublicKeyInfo of a DER certificate (RFC 5280 §4.1):
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }`,
/// `TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
/// issuer, validity, subject, subjectPublicKeyInfo, ... }`. The fields before
/// the key are checked for their types only; nothing is validated (jwt_verify_lib
/// does not validate the certificate either). Walked with `der` rather than
/// decoded whole with `x509-cert`: +20 KB of jwt_authn.wasm instead of +55 KB.
fn certificate_spki(bytes: &[u8]) -> Option<spki::SubjectPublicKeyInfoRef<'_>> {
    use der::asn1::AnyRef;
    use der::{Decode, Reader, SliceReader, Tag, TagNumber, Tagged};

    fn any<'a>(r: &mut SliceReader<'a>, tag: Tag) -> Option<AnyRef<'a>> {
        r.decode::<AnyRef<'a>>().ok().filter(|a| a.tag() == tag)
    }
    let cert = AnyRef::from_der(bytes)
        .ok()
        .filter(|a| a.tag() == Tag::Sequence)?;
    let mut parts = SliceReader::new(cert.value()).ok()?;
    let tbs = any(&mut parts, Tag::Sequence)?;
    any(&mut parts, Tag::Sequence)?; // signatureAlgorithm
    any(&mut parts, Tag::BitString)?; // signature
    if !parts.is_finished() {
        return None;
    }
    let mut fields = SliceReader::new(tbs.value()).ok()?;
    let version = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::N0,
    };
    if fields.peek_tag().ok()? == version {
        any(&mut fields, version)?;
    }
    any(&mut fields, Tag::Integer)?; // serialNumber
    for _ in 0..4 {
        any(&mut fields, Tag::Sequence)?; // signature, issuer, validity, subject
    }
    fields.decode::<spki::SubjectPublicKeyInfoRef<'_>>().ok()
}

fn parse_ec(jwk: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !alg.is_empty() && !alg.starts_with("ES") {
        return Err(Status::JwksECKeyBadAlg);
    }
    let mut crv = match string(jwk, "crv") {
        Field::Ok(c) => c.to_string(),
        Field::Missing => String::new(),
        Field::WrongType => return Err(Status::JwksECKeyBadCrv),
    };
    if !alg.is_empty()
        && !crv.is_empty()
        && !matches!(
            (alg, crv.as_str()),
            ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
        )
    {
        return Err(Status::JwksECKeyAlgNotCompatibleWithCrv);
    }
    if alg.is_empty() && crv.is_empty() {
        crv = "P-256".into();
    }
    let curve = if alg == "ES256" || crv == "P-256" {
        256
    } else if alg == "ES384" || crv == "P-384" {
        384
    } else if alg == "ES512" || crv == "P-521" {
        521
    } else {
        return Err(Status::JwksECKeyAlgOrCrvUnsupported);
    };
    let x = required(jwk, "x", Status::JwksECKeyMissingX, Status::JwksECKeyBadX)?;
    let y = required(jwk, "y", Status::JwksECKeyMissingY, Status::JwksECKeyBadY)?;
    let (x, y) = match (b64::decode(x.as_bytes()), b64::decode(y.as_bytes())) {
        (Some(x), Some(y)) => (x, y),
        _ => return Err(Status::JwksEcXorYBadBase64),
    };
    let bad = Status::JwksEcParseError;
    let key = match curve {
        256 => EcKey::P256(
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&ec_point(&x, &y, 32).ok_or(bad)?)
                .map_err(|_| bad)?,
        ),
        384 => EcKey::P384(
            p384::ecdsa::VerifyingKey::from_sec1_bytes(&ec_point(&x, &y, 48).ok_or(bad)?)
                .map_err(|_| bad)?,
        ),
        _ => EcKey::P521(Box::new(
            p521::ecdsa::VerifyingKey::from_sec1_bytes(&ec_point(&x, &y, 66).ok_or(bad)?)
                .map_err(|_| bad)?,
        )),
    };
    Ok(KeyMaterial::Ec(key))
}

fn parse_oct(jwk: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !alg.is_empty() && !matches!(alg, "HS256" | "HS384" | "HS512") {
        return Err(Status::JwksHMACKeyBadAlg);
    }
    let k = required(
        jwk,
        "k",
        Status::JwksHMACKeyMissingK,
        Status::JwksHMACKeyBadK,
    )?;
    match b64::decode(k.as_bytes()) {
        Some(key) if !key.is_empty() => Ok(KeyMaterial::Oct(key)),
        _ => Err(Status::JwksOctBadBase64),
    }
}

fn parse_okp(jwk: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !alg.is_empty() && alg != "EdDSA" {
        return Err(Status::JwksOKPKeyBadAlg);
    }
    let crv = required(
        jwk,
        "crv",
        Status::JwksOKPKeyMissingCrv,
        Status::JwksOKPKeyBadCrv,
    )?;
    if crv != "Ed25519" {
        return Err(Status::JwksOKPKeyCrvUnsupported);
    }
    let x = required(jwk, "x", Status::JwksOKPKeyMissingX, Status::JwksOKPKeyBadX)?;
    let raw = b64::decode(x.as_bytes()).ok_or(Status::JwksOKPXBadBase64)?;
    let raw: [u8; 32] = raw.try_into().map_err(|_| Status::JwksOKPXWrongLength)?;
    Ok(KeyMaterial::Ed25519(
        ed25519_dalek::VerifyingKey::from_bytes(&raw).ok(),
    ))
}

fn parse_jwk(jwk: &Map<String, Value>) -> Result<Jwk, Status> {
    let kty = required(jwk, "kty", Status::JwksMissingKty, Status::JwksBadKty)?;
    let kid = match string(jwk, "kid") {
        Field::Ok(s) => s.to_string(),
        _ => String::new(),
    };
    let alg = match string(jwk, "alg") {
        Field::Ok(s) => s.to_string(),
        _ => String::new(),
    };
    let key = match kty {
        "EC" => parse_ec(jwk, &alg)?,
        "RSA" => parse_rsa(jwk, &alg)?,
        "oct" => parse_oct(jwk, &alg)?,
        "OKP" => parse_okp(jwk, &alg)?,
        _ => return Err(Status::JwksNotImplementedKty),
    };
    Ok(Jwk { kid, alg, key })
}

impl Jwks {
    /// `Jwks::createFrom(json, JWKS)`: keys that fail to parse are skipped; the
    /// set is an error only when no key survives. A document without `keys`
    /// whose every member is a PEM certificate is the X.509 map form
    /// ([`Jwks::from_x509_map`]).
    pub fn parse(json: &str) -> Result<Jwks, Status> {
        let doc = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(m)) => m,
            _ => return Err(Status::JwksParseError),
        };
        let keys = match doc.get("keys") {
            None => {
                let x509_like = !doc.is_empty()
                    && doc.iter().all(|(k, v)| {
                        !k.is_empty()
                            && v.as_str().is_some_and(|c| {
                                c.starts_with("-----BEGIN CERTIFICATE-----\n")
                                    && c.ends_with("\n-----END CERTIFICATE-----\n")
                            })
                    });
                return if x509_like {
                    Jwks::from_x509_map(&doc)
                } else {
                    Err(Status::JwksNoKeys)
                };
            }
            Some(Value::Array(list)) => list,
            Some(_) => return Err(Status::JwksBadKeys),
        };
        let mut out = Jwks::default();
        for key in keys {
            if let Value::Object(obj) = key {
                if let Ok(jwk) = parse_jwk(obj) {
                    out.keys.push(jwk);
                }
            }
        }
        if out.keys.is_empty() {
            return Err(Status::JwksNoValidKeys);
        }
        Ok(out)
    }

    /// jwt_verify_lib's `createFromX509`: `{"<kid>": "<PEM certificate>", ...}`
    /// (Google's `.../metadata/x509/...` endpoints, Firebase). Each certificate
    /// gives one RSA key with that kid and no alg; the certificate itself is
    /// not checked (no chain, no validity), only decoded. One certificate that
    /// does not decode, or whose key is not RSA, fails the whole set.
    fn from_x509_map(doc: &Map<String, Value>) -> Result<Jwks, Status> {
        let mut out = Jwks::default();
        for (kid, pem) in doc {
            let key = x509_rsa_key(pem.as_str().unwrap_or_default())?;
            out.keys.push(Jwk {
                kid: kid.clone(),
                alg: String::new(),
                key,
            });
        }
        Ok(out)
    }

    /// Whether any key could be tried for this token (kid and alg filters only).
    pub fn has_candidate(&self, jwt: &Jwt) -> bool {
        self.keys.iter().any(|k| candidate(k, jwt))
    }

    /// `verifyJwtWithoutTimeChecking`.
    pub fn verify(&self, jwt: &Jwt) -> Status {
        let mut kid_alg_matched = false;
        let signed = jwt.signed.as_bytes();
        let sig = jwt.signature.as_slice();
        for jwk in &self.keys {
            if !candidate(jwk, jwt) {
                continue;
            }
            kid_alg_matched = true;
            let alg = jwt.alg.as_str();
            let ok = match &jwk.key {
                KeyMaterial::Ec(key) => verify_ec(key, alg, signed, sig),
                KeyMaterial::Rsa(key, fast) => verify_rsa(key, fast.as_ref(), alg, signed, sig),
                KeyMaterial::Oct(key) => verify_hmac(key, alg, signed, sig),
                KeyMaterial::Ed25519(key) => {
                    if sig.len() != 64 {
                        return Status::JwtEd25519SignatureWrongLength;
                    }
                    verify_ed25519(key.as_ref(), signed, sig)
                }
            };
            if ok {
                return Status::Ok;
            }
        }
        if kid_alg_matched {
            Status::JwtVerificationFail
        } else {
            Status::JwksKidAlgMismatch
        }
    }
}

fn candidate(jwk: &Jwk, jwt: &Jwt) -> bool {
    if !jwt.kid.is_empty() && !jwk.kid.is_empty() && jwk.kid != jwt.kid {
        return false;
    }
    jwk.alg.is_empty() || jwk.alg == jwt.alg
}

fn digest(alg: &str, data: &[u8]) -> Vec<u8> {
    // jwt_verify_lib picks the hash from the token's alg, defaulting to SHA-256.
    if alg.ends_with("384") {
        Sha384::digest(data).to_vec()
    } else if alg.ends_with("512") {
        Sha512::digest(data).to_vec()
    } else {
        Sha256::digest(data).to_vec()
    }
}

// generic-array 0.14's from_slice is what the 0.13 elliptic-curve crates take.
#[allow(deprecated)]
fn verify_ec(key: &EcKey, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
    // BN_bin2bn on each half, whatever the length (an odd last byte is ignored).
    let half = sig.len() / 2;
    let (r, s) = (&sig[..half], &sig[half..half * 2]);
    let hash = digest(alg, signed);
    match key {
        EcKey::P256(k) => {
            let (Some(r), Some(s)) = (fixed_width(r, 32), fixed_width(s, 32)) else {
                return false;
            };
            let Ok(sig) = p256::ecdsa::Signature::from_scalars(
                *p256::FieldBytes::from_slice(&r),
                *p256::FieldBytes::from_slice(&s),
            ) else {
                return false;
            };
            k.verify_prehash(&hash, &sig).is_ok()
        }
        EcKey::P384(k) => {
            let (Some(r), Some(s)) = (fixed_width(r, 48), fixed_width(s, 48)) else {
                return false;
            };
            let Ok(sig) = p384::ecdsa::Signature::from_scalars(
                *p384::FieldBytes::from_slice(&r),
                *p384::FieldBytes::from_slice(&s),
            ) else {
                return false;
            };
            k.verify_prehash(&hash, &sig).is_ok()
        }
        EcKey::P521(k) => {
            let (Some(r), Some(s)) = (fixed_width(r, 66), fixed_width(s, 66)) else {
                return false;
            };
            let Ok(sig) = p521::ecdsa::Signature::from_scalars(
                *p521::FieldBytes::from_slice(&r),
                *p521::FieldBytes::from_slice(&s),
            ) else {
                return false;
            };
            k.verify_prehash(&hash, &sig).is_ok()
        }
    }
}

fn verify_rsa(
    key: &RsaPublicKey,
    fast: Option<&FastRsa>,
    alg: &str,
    signed: &[u8],
    sig: &[u8],
) -> bool {
    let hash = digest(alg, signed);
    if let (Some(fast), true) = (fast, alg.starts_with("RS")) {
        return fast.verify_pkcs1v15(&hash, sig);
    }
    let is384 = alg.ends_with("384");
    let is512 = alg.ends_with("512");
    if alg.starts_with("RS") {
        let scheme = if is384 {
            Pkcs1v15Sign::new::<Sha384>()
        } else if is512 {
            Pkcs1v15Sign::new::<Sha512>()
        } else {
            Pkcs1v15Sign::new::<Sha256>()
        };
        key.verify(scheme, &hash, sig).is_ok()
    } else if alg.starts_with("PS") {
        let scheme = if is384 {
            Pss::new::<Sha384>()
        } else if is512 {
            Pss::new::<Sha512>()
        } else {
            Pss::new::<Sha256>()
        };
        key.verify(scheme, &hash, sig).is_ok()
    } else {
        // e.g. an HS256 token against an RSA key: never valid (no key confusion).
        false
    }
}

fn verify_hmac(key: &[u8], alg: &str, signed: &[u8], sig: &[u8]) -> bool {
    macro_rules! check {
        ($d:ty) => {
            match Hmac::<$d>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(signed);
                    mac.verify_slice(sig).is_ok()
                }
                Err(_) => false,
            }
        };
    }
    if alg == "HS384" {
        check!(Sha384)
    } else if alg == "HS512" {
        check!(Sha512)
    } else {
        check!(Sha256)
    }
}

fn verify_ed25519(key: Option<&ed25519_dalek::VerifyingKey>, signed: &[u8], sig: &[u8]) -> bool {
    let (Some(key), Ok(bytes)) = (key, <[u8; 64]>::try_from(sig)) else {
        return false;
    };
    // BoringSSL's ED25519_verify is the RFC 8032 cofactorless check, like `verify`.
    ed25519_dalek::Verifier::verify(key, signed, &ed25519_dalek::Signature::from_bytes(&bytes))
        .is_ok()
}
