//! Test keys and a signer, shared by the core tests and the host tests
//! (feature `jwt-testing`). The keys are published test material: never use
//! them for anything real.

use rsa::rand_core::{CryptoRng, RngCore};
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::b64::encode_url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// RSA 2048, kid `rsa-1`, in the JWKS.
    Rsa1,
    /// RSA 2048, kid `rsa-2`, NOT in the default JWKS (a stranger's key).
    Rsa2,
    P256,
    P384,
    P521,
    Ed25519,
    /// 32-byte secret, kid `hs-1`.
    Hmac,
}

impl Key {
    pub fn kid(self) -> &'static str {
        match self {
            Key::Rsa1 => "rsa-1",
            Key::Rsa2 => "rsa-2",
            Key::P256 => "ec-256",
            Key::P384 => "ec-384",
            Key::P521 => "ec-521",
            Key::Ed25519 => "ed-1",
            Key::Hmac => "hs-1",
        }
    }

    /// The key a token with this `alg` is normally signed with.
    pub fn for_alg(alg: &str) -> Key {
        match alg {
            "ES256" => Key::P256,
            "ES384" => Key::P384,
            "ES512" => Key::P521,
            "EdDSA" => Key::Ed25519,
            a if a.starts_with("HS") => Key::Hmac,
            _ => Key::Rsa1,
        }
    }
}

const HMAC_SECRET: &[u8] = b"meshwasm-test-hmac-secret-32byte";
const P256_D: [u8; 32] = [7u8; 32];
const P384_D: [u8; 48] = [9u8; 48];
const ED_SEED: [u8; 32] = [3u8; 32];

fn p521_d() -> [u8; 66] {
    let mut d = [5u8; 66];
    d[0] = 0;
    d[1] = 1;
    d
}

fn hex(s: &str) -> BigUint {
    BigUint::parse_bytes(s.as_bytes(), 16).unwrap_or_default()
}

fn rsa_key(key: Key) -> Option<RsaPrivateKey> {
    let (n, d, p, q) = match key {
        Key::Rsa2 => (RSA2_N, RSA2_D, RSA2_P, RSA2_Q),
        _ => (RSA1_N, RSA1_D, RSA1_P, RSA1_Q),
    };
    RsaPrivateKey::from_components(
        hex(n),
        BigUint::from(65537u32),
        hex(d),
        vec![hex(p), hex(q)],
    )
    .ok()
}

/// A deterministic generator for PSS salts (tests only).
struct TestRng(u64);
impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest.iter_mut() {
            *b = self.next_u64() as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for TestRng {}

fn hash(alg: &str, data: &[u8]) -> Vec<u8> {
    if alg.ends_with("384") {
        Sha384::digest(data).to_vec()
    } else if alg.ends_with("512") {
        Sha512::digest(data).to_vec()
    } else {
        Sha256::digest(data).to_vec()
    }
}

/// Signs `signing_input` as `alg` with `key` (a mismatched pair gives a
/// signature the verifier must reject). Empty for `none`.
pub fn sign_raw(key: Key, alg: &str, signing_input: &[u8]) -> Vec<u8> {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let h = hash(alg, signing_input);
    match key {
        Key::Rsa1 | Key::Rsa2 => {
            let Some(k) = rsa_key(key) else {
                return Vec::new();
            };
            let r = if alg.starts_with("PS") {
                let mut rng = TestRng(42);
                match alg {
                    "PS384" => k.sign_with_rng(&mut rng, Pss::new::<Sha384>(), &h),
                    "PS512" => k.sign_with_rng(&mut rng, Pss::new::<Sha512>(), &h),
                    _ => k.sign_with_rng(&mut rng, Pss::new::<Sha256>(), &h),
                }
            } else {
                match alg {
                    "RS384" => k.sign(Pkcs1v15Sign::new::<Sha384>(), &h),
                    "RS512" => k.sign(Pkcs1v15Sign::new::<Sha512>(), &h),
                    _ => k.sign(Pkcs1v15Sign::new::<Sha256>(), &h),
                }
            };
            r.unwrap_or_default()
        }
        Key::P256 => p256::ecdsa::SigningKey::from_slice(&P256_D)
            .ok()
            .and_then(|k| PrehashSigner::<p256::ecdsa::Signature>::sign_prehash(&k, &h).ok())
            .map(|s| s.to_bytes().to_vec())
            .unwrap_or_default(),
        Key::P384 => p384::ecdsa::SigningKey::from_slice(&P384_D)
            .ok()
            .and_then(|k| PrehashSigner::<p384::ecdsa::Signature>::sign_prehash(&k, &h).ok())
            .map(|s| s.to_bytes().to_vec())
            .unwrap_or_default(),
        // p521 has no RFC 6979 signer: a randomized one with the test RNG.
        Key::P521 => p521::ecdsa::SigningKey::from_slice(&p521_d())
            .ok()
            .and_then(|k| {
                use p521::ecdsa::signature::hazmat::RandomizedPrehashSigner;
                let r: Result<p521::ecdsa::Signature, _> =
                    k.sign_prehash_with_rng(&mut TestRng(7), &h);
                r.ok()
            })
            .map(|s| s.to_bytes().to_vec())
            .unwrap_or_default(),
        Key::Ed25519 => {
            use ed25519_dalek::Signer;
            ed25519_dalek::SigningKey::from_bytes(&ED_SEED)
                .sign(signing_input)
                .to_bytes()
                .to_vec()
        }
        Key::Hmac => {
            use hmac::{Hmac, Mac};
            macro_rules! mac {
                ($d:ty) => {
                    Hmac::<$d>::new_from_slice(HMAC_SECRET)
                        .map(|mut m| {
                            m.update(signing_input);
                            m.finalize().into_bytes().to_vec()
                        })
                        .unwrap_or_default()
                };
            }
            match alg {
                "HS384" => mac!(Sha384),
                "HS512" => mac!(Sha512),
                _ => mac!(Sha256),
            }
        }
    }
}

/// HMAC-SHA256, for tests that forge tokens with a chosen secret (key confusion).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    Hmac::<Sha256>::new_from_slice(key)
        .map(|mut m| {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default()
}

/// A compact JWT with exactly this header and payload, signed by `key`.
pub fn sign(key: Key, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        encode_url(header.to_string().as_bytes()),
        encode_url(claims.to_string().as_bytes())
    );
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("none");
    let sig = if alg == "none" {
        Vec::new()
    } else {
        sign_raw(key, alg, input.as_bytes())
    };
    format!("{input}.{}", encode_url(&sig))
}

/// A PS256/384/512 token signed by an RSA key with a PSS salt of `salt_len`
/// bytes (signers differ: the hash length, 0, or as long as the key allows).
pub fn sign_pss_with_salt(key: Key, alg: &str, claims: &Value, salt_len: usize) -> String {
    let header = json!({"alg": alg, "typ": "JWT", "kid": key.kid()});
    let input = format!(
        "{}.{}",
        encode_url(header.to_string().as_bytes()),
        encode_url(claims.to_string().as_bytes())
    );
    let h = hash(alg, input.as_bytes());
    let mut rng = TestRng(salt_len as u64 + 1);
    let sig = rsa_key(key)
        .and_then(|k| {
            match alg {
                "PS384" => k.sign_with_rng(&mut rng, Pss::new_with_salt::<Sha384>(salt_len), &h),
                "PS512" => k.sign_with_rng(&mut rng, Pss::new_with_salt::<Sha512>(salt_len), &h),
                _ => k.sign_with_rng(&mut rng, Pss::new_with_salt::<Sha256>(salt_len), &h),
            }
            .ok()
        })
        .unwrap_or_default();
    format!("{input}.{}", encode_url(&sig))
}

/// A token for `alg`, with the usual key and its kid.
pub fn token(alg: &str, claims: &Value) -> String {
    let key = Key::for_alg(alg);
    sign(
        key,
        &json!({"alg": alg, "typ": "JWT", "kid": key.kid()}),
        claims,
    )
}

/// The modulus of an RSA test key (`Rsa1` for non-RSA keys), big-endian.
fn rsa_modulus(key: Key) -> Vec<u8> {
    hex(match key {
        Key::Rsa2 => RSA2_N,
        _ => RSA1_N,
    })
    .to_bytes_be()
}

/// The public JWK of a key (no `alg`, so RSA keys serve RS* and PS*).
pub fn jwk(key: Key) -> Value {
    match key {
        Key::Rsa1 | Key::Rsa2 => {
            json!({"kty": "RSA", "kid": key.kid(), "e": "AQAB",
                   "n": encode_url(&rsa_modulus(key))})
        }
        Key::P256 => ec_jwk(key, "P-256", &p256_point(), 32),
        Key::P384 => {
            let pk = p384::ecdsa::SigningKey::from_slice(&P384_D)
                .map(|k| {
                    k.verifying_key()
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec()
                })
                .unwrap_or_default();
            ec_jwk(key, "P-384", &pk, 48)
        }
        Key::P521 => {
            let pk = p521::ecdsa::SigningKey::from_slice(&p521_d())
                .map(|k| {
                    p521::ecdsa::VerifyingKey::from(&k)
                        .to_encoded_point(false)
                        .as_bytes()
                        .to_vec()
                })
                .unwrap_or_default();
            ec_jwk(key, "P-521", &pk, 66)
        }
        Key::Ed25519 => {
            let pk = ed25519_dalek::SigningKey::from_bytes(&ED_SEED).verifying_key();
            json!({"kty": "OKP", "crv": "Ed25519", "kid": key.kid(),
                   "x": encode_url(pk.as_bytes())})
        }
        Key::Hmac => json!({"kty": "oct", "kid": key.kid(), "k": encode_url(HMAC_SECRET)}),
    }
}

/// The P-256 test key's public point, uncompressed SEC1.
fn p256_point() -> Vec<u8> {
    p256::ecdsa::SigningKey::from_slice(&P256_D)
        .map(|k| {
            k.verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec()
        })
        .unwrap_or_default()
}

fn ec_jwk(key: Key, crv: &str, sec1: &[u8], len: usize) -> Value {
    let (x, y) = if sec1.len() == 1 + 2 * len {
        (&sec1[1..1 + len], &sec1[1 + len..])
    } else {
        (&[][..], &[][..])
    };
    json!({"kty": "EC", "crv": crv, "kid": key.kid(), "x": encode_url(x), "y": encode_url(y)})
}

/// A JWKS document with these keys.
pub fn jwks_json(keys: &[Key]) -> String {
    json!({"keys": keys.iter().map(|k| jwk(*k)).collect::<Vec<_>>()}).to_string()
}

/// A DER TLV with a short or long-form length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER from unsigned big-endian bytes.
fn der_uint(be: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    tlv(0x02, &v)
}

const OID_RSA_ENCRYPTION: &[u8] = &[0x06, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1];
const OID_SHA256_RSA: &[u8] = &[0x06, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 11];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 7, 0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1];
const OID_P256: &[u8] = &[0x06, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7];
const OID_COMMON_NAME: &[u8] = &[0x06, 3, 0x55, 0x04, 0x03];

/// The SubjectPublicKeyInfo of an RSA or P-256 test key (others: P-256's).
fn spki_der(key: Key) -> Vec<u8> {
    let (alg, point) = match key {
        Key::Rsa1 | Key::Rsa2 => {
            let rsa_key = tlv(
                0x30,
                &[der_uint(&rsa_modulus(key)), der_uint(&[1, 0, 1])].concat(),
            );
            ([OID_RSA_ENCRYPTION, &[0x05, 0x00]].concat(), rsa_key)
        }
        _ => ([OID_EC_PUBLIC_KEY, OID_P256].concat(), p256_point()),
    };
    let bits = [&[0u8][..], &point].concat();
    tlv(0x30, &[tlv(0x30, &alg), tlv(0x03, &bits)].concat())
}

/// A v3 certificate for `key` (RSA or P-256), as PEM in the layout Google's
/// `.../metadata/x509/...` endpoints serve (64 columns, final newline). The
/// signature is filler: neither jwt_verify_lib nor meshwasm checks it.
pub fn x509_pem(key: Key) -> String {
    use base64ct::{Base64, Encoding};
    let sig_alg = tlv(0x30, &[OID_SHA256_RSA, &[0x05, 0x00]].concat());
    let cn = tlv(
        0x30,
        &[OID_COMMON_NAME, &tlv(0x0c, b"meshwasm test")].concat(),
    );
    let name = tlv(0x30, &tlv(0x31, &cn));
    let validity = tlv(
        0x30,
        &[tlv(0x17, b"250101000000Z"), tlv(0x17, b"491231235959Z")].concat(),
    );
    let tbs = tlv(
        0x30,
        &[
            tlv(0xa0, &der_uint(&[2])),
            der_uint(&[0x4d, 0x57]),
            sig_alg.clone(),
            name.clone(),
            validity,
            name,
            spki_der(key),
        ]
        .concat(),
    );
    let signature = tlv(0x03, &[0u8; 257]);
    let der = tlv(0x30, &[tbs, sig_alg, signature].concat());
    let b64 = Base64::encode_string(&der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// The PKCS#1 DER of an RSA test key's private half (`Rsa1` for non-RSA keys),
/// for tools such as `openssl req` that make a real certificate for it.
pub fn rsa_private_key_der(key: Key) -> Vec<u8> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    rsa_key(key)
        .and_then(|k| k.to_pkcs1_der().ok())
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default()
}

/// A JWKS in the X.509 map form: `{"<kid>": "<PEM certificate>", ...}`.
pub fn x509_jwks_json(keys: &[Key]) -> String {
    let map: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| (k.kid().to_string(), Value::String(x509_pem(*k))))
        .collect();
    Value::Object(map).to_string()
}

/// Every key except the stranger `Rsa2`.
pub const DEFAULT_KEYS: &[Key] = &[
    Key::Rsa1,
    Key::P256,
    Key::P384,
    Key::P521,
    Key::Ed25519,
    Key::Hmac,
];

const RSA1_N: &str = "acf731ab4a91c79fca2595765b2aa9b8cb1fd1b0384704385c76edd51bb3a891b8a3c24224ce1566e68f65f4fe346dd3b42eba5c5b633595464b9d2d3e4f0d32e3d6b90a6771bf2855645f75ccaa88ef28c184d54536e32152ef626390c2f1a4aafc43c1c5ecd62d4d3e2d31512a5516258be8d986707495fa18f0d3e7869e5b0028a59c8792c8174e71ca56bff9c4239548eba489f68c269e6efae2196aea3d81fe895efaec2c8884a3107d106eb5e6203fe2ab909ed3aca8a730197c7c80f9d506800e615e442394bcb2085d90f4cd6340cc9e4b197cc859543ec4005fa2e7ce1ebbb7791ff32f47635f5dce0b502b4fd403f91c648205d4bec46e92719d29";
const RSA1_D: &str = "301a7d6f50895395de7fee5de0c3f038cb1119dda301292ccd966bd59963314df9a65d87ccb99ddd24e11baf73a53c282513dbd384bd0631723fe44229728dcea9ebd5418dfc65f7ff2baf9ad0e55ab8fcc23941a102bf4f4cc3f3be920b8d6dc8f9e894330a0794c8c732856537db3b120d23a09f9195f301ffbeb6884cf9ac0ae8f5d32350346667ab3d96f86d83c5061250f019cde2f1cbcb047b64a6e8e600a61f051dfab9b14e6aabc84b652f97f3159823907208253eda54dee7a4e870da93c2aa58b00821d33f91e67397dea0a3676b43113b8ced189fcd641bf289b7a28551e0fd51d545554f56e74e560d345ee6a116ee672274fe9c6638c6c2fed3";
const RSA1_P: &str = "e3cacb42a8f2799b4e1e165e2801bc49e1b918f823caac623c4b3d0fb6d56a96eb46be7035999b7299d0bf178429937bd4d3206b35b0783ee10797f650dba0ad1e18cf7eb33cb17ded7f2a806d126218a2afd858c102ca8f76d4c653c39ad918fab81a6697c5e450d890c983d909b0afbeb894fb35015c1576dee26b90a59727";
const RSA1_Q: &str = "c26259e92716cc5d9051b80e2ad089fcfffc4bcbbb2e8da3ff8765b907f71d317114d2124c8167f05d79a39594bb9484d12885cfbaf56d822c81073677fd4423681355cfd78f5ca4eae61f4e635e3027e3be09b0f1fed83f900b9beb26d3dd239ba5e2a8800fac03b1c665dcead34b1b0445ea0ceb28577b8910de6bb0305b2f";
const RSA2_N: &str = "a02e74506284a78aa8ff175893da9b667590a700c6f1fa69e6aff6f34dd6491592abc1f19c62062f29c985322c0531c26233147c7a2bc12b65577ada0845d816896dd6a97ea6a6fd9aeae7e732ac631428857dcec7a10d374ded0bd15cd75531be569bb3179011a0debbaa4fd43b4e8d8af786e8f7004f134fd34346773ad6bb478ca2b8654d8042a85c01c3330d56e06e2c3c557fd275cbd8ac3d6ddfc7bbab8e5bb1dc74299d51f54b576f44bd2d78fe85ff4a18924661bd3e502c3fc6b3b24b31c2b9b3f887d60c3a22ba4c0ae87fddcb82757464d02f4115c175528b95719a77a5413fd3f5d48910ee2ab6f7a62e2d143f481f0d65f47455819cb2473675";
const RSA2_D: &str = "eac1a460ee4b4ba241aa14070691fb2eb4a4ad1114fb2d672c42d0617bd6cefc920527cafe7ec39db0e99b64a380e0fea05a9de893cf741b259c100301bb5b1b635ae027ea2d2f9c4ddd04c5deaf106df4ac29f2a6e96e5086fceeaa55ecdf5cef8bff0686cb2490f5ad9aa4a166ab7cada848dfe85d8b86ce461aa843cc7e0afbc7a00432d49a7eec112c16ceae6b4a41fe5cc5762da346448cdee72d89ab93a91aa343a93a6f3e49a8ca8007abb550848b26677de4c49d74797d4508aa4d686c698e0c34de22ae571964d4103555455f4abe9e933c404582aa40bc74aa05319ddf2e02634243d3cc03b57362511271b7b5acfdb8c3c0dcc42701db105065";
const RSA2_P: &str = "e1761d262201dc92e805c0ff303b35d0a0f8baf04d99b179c951d2f8753b20a6a7e0dd88a36efe979c6adf5b3655408fdb4b363b2a3cc6198b0542e2f289318935dfc5438098181fd82e8a82c82446ae992af031b7050996f1b586671c9240c635d73991b40e000bae90deb2ec787c61a8e85351c65ac95e27a7b0d6d045b14f";
const RSA2_Q: &str = "b5e0c16dfe29237aeb43922e1c0742b5ba747ccfdb0c935f37ecb1fce7a2060860ee2a57402185290a3fbec4b4521329c5756e820008943df8bfd4f54fd1aadad605085b7e3ace2e0833acee4ae2c99e0902e02cae1ad14bd3559ae4340b337ec5257b652d01fb3782757b05a675c1250958afbb7e4311beeaacbc43ef0442fb";
