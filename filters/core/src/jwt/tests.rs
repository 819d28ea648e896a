//! Table-driven tests of the claim, location and time rules, against the
//! behaviour of Envoy's jwt_authn + jwt_verify_lib (statuses and bodies).

use serde_json::{json, Value};

use super::testing::{
    jwks_json, sign, sign_pss_with_salt, token, x509_jwks_json, x509_pem, Key, DEFAULT_KEYS,
};
use super::*;

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_800_000_000;

fn authn(extra: Value) -> JwtAuthn {
    let mut rule = json!({"issuer": ISS, "jwks": jwks_json(DEFAULT_KEYS)});
    if let (Value::Object(r), Value::Object(e)) = (&mut rule, extra) {
        r.extend(e);
    }
    JwtAuthn::from_json(json!({"jwtRules": [rule]}).to_string().as_bytes()).unwrap()
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "svc", "exp": NOW + 3600, "scope": "read write"})
}

fn req(auth: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        (":method".to_string(), "GET".to_string()),
        (":scheme".to_string(), "http".to_string()),
        (":authority".to_string(), "example.com".to_string()),
        (":path".to_string(), "/api?x=1".to_string()),
    ];
    if let Some(a) = auth {
        h.push(("authorization".to_string(), a.to_string()));
    }
    h
}

/// `JwtAuthn::evaluate` with the headers as the host passes them.
fn evaluate(
    a: &JwtAuthn,
    headers: Vec<(String, String)>,
    now: u64,
    keys: &dyn RemoteKeys,
    cache: &mut TokenCache,
) -> Evaluation {
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    a.evaluate(&pairs, now, keys, cache)
}

fn run(a: &JwtAuthn, headers: Vec<(String, String)>) -> Decision {
    evaluate(a, headers, NOW, &NoRemoteKeys, &mut TokenCache::new(16)).decision
}

fn bearer(t: &str) -> Vec<(String, String)> {
    req(Some(&format!("Bearer {t}")))
}

fn denied(d: &Decision) -> Option<(u32, &'static str)> {
    match d {
        Decision::Deny(d) => Some((d.http_status, d.body)),
        _ => None,
    }
}

#[test]
fn every_algorithm_verifies() {
    let a = authn(json!({}));
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
        "HS384", "HS512", "EdDSA",
    ] {
        match run(&a, bearer(&token(alg, &claims()))) {
            Decision::Allow(allow) => {
                assert_eq!(
                    allow.principal.as_deref(),
                    Some("https://issuer.example/alice"),
                    "{alg}"
                );
                let p = allow.payload.unwrap();
                assert_eq!(
                    p["scope"],
                    json!(["read", "write"]),
                    "{alg}: scope split into a list"
                );
                assert_eq!(
                    allow.ops,
                    vec![HeaderOp::Remove("authorization".into())],
                    "{alg}"
                );
            }
            other => panic!("{alg}: {other:?}"),
        }
    }
}

type Case = (&'static str, String, Option<(u32, &'static str)>);

#[test]
fn failures_have_envoys_status_and_body() {
    let a = authn(json!({"audiences": ["svc", "https://other.example/"]}));
    let with = |patch: Value| {
        let mut c = claims();
        if let (Value::Object(c), Value::Object(p)) = (&mut c, patch) {
            c.extend(p);
        }
        c
    };
    let rs = |c: &Value| token("RS256", c);
    let hdr = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid});
    let rsa_public_n = super::testing::jwk(Key::Rsa1)["n"]
        .as_str()
        .unwrap()
        .to_string();
    let good = rs(&claims());
    let cases: Vec<Case> = vec![
        ("good", good.clone(), None),
        ("exp within skew", rs(&with(json!({"exp": NOW - 59}))), None),
        (
            "expired",
            rs(&with(json!({"exp": NOW - 61}))),
            Some((401, "Jwt is expired")),
        ),
        ("nbf within skew", rs(&with(json!({"nbf": NOW + 59}))), None),
        (
            "nbf future",
            rs(&with(json!({"nbf": NOW + 61}))),
            Some((401, "Jwt not yet valid")),
        ),
        (
            "no exp at all",
            rs(&json!({"iss": ISS, "sub": "a", "aud": "svc"})),
            None,
        ),
        (
            "wrong iss",
            rs(&with(json!({"iss": "https://evil"}))),
            Some((401, "Jwt issuer is not configured")),
        ),
        (
            "no iss",
            rs(&json!({"sub": "a", "aud": "svc"})),
            Some((401, "Jwt issuer is not configured")),
        ),
        (
            "wrong aud",
            rs(&with(json!({"aud": "nope"}))),
            Some((403, "Audiences in Jwt are not allowed")),
        ),
        (
            "aud list one ok",
            rs(&with(json!({"aud": ["x", "svc"]}))),
            None,
        ),
        (
            "aud sanitized",
            rs(&with(json!({"aud": "http://other.example"}))),
            None,
        ),
        (
            "aud not string",
            rs(&with(json!({"aud": 5}))),
            Some((
                401,
                "Jwt payload [aud] field is not a string or string list",
            )),
        ),
        (
            "exp not integer",
            rs(&with(json!({"exp": "soon"}))),
            Some((401, "Jwt payload [exp] field is not an integer")),
        ),
        (
            "exp negative",
            rs(&with(json!({"exp": -1}))),
            Some((
                401,
                "Jwt payload [exp] field is not a positive 64 bit integer",
            )),
        ),
        (
            "iat not integer",
            rs(&with(json!({"iat": true}))),
            Some((401, "Jwt payload [iat] field is not an integer")),
        ),
        (
            "sub not string",
            rs(&with(json!({"sub": 1}))),
            Some((401, "Jwt payload [sub] field is not a string")),
        ),
        (
            "jti not string",
            rs(&with(json!({"jti": 1}))),
            Some((401, "Jwt payload [jti] field is not a string")),
        ),
        (
            "bad signature (stranger key, same kid)",
            sign(Key::Rsa2, &hdr("RS256", "rsa-1"), &claims()),
            Some((401, "Jwt verification fails")),
        ),
        (
            "unknown kid",
            sign(Key::Rsa2, &hdr("RS256", "rsa-2"), &claims()),
            Some((401, "Jwks doesn't have key to match kid or alg from Jwt")),
        ),
        // Unsigned: the empty third section vanishes, so it is not even 3 sections.
        (
            "alg none",
            sign(Key::Rsa1, &json!({"alg": "none"}), &claims()),
            Some((
                401,
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            )),
        ),
        (
            "alg none with a signature",
            format!("{}AA", sign(Key::Rsa1, &json!({"alg": "none"}), &claims())),
            Some((401, "Jwt header [alg] is not supported")),
        ),
        (
            "alg missing",
            format!("{}AA", sign(Key::Rsa1, &json!({"typ": "JWT"}), &claims())),
            Some((
                401,
                "Jwt header [alg] field is required and must be a string",
            )),
        ),
        (
            "kid not string",
            sign(Key::Rsa1, &json!({"alg": "RS256", "kid": 3}), &claims()),
            Some((401, "Jwt header [kid] field is not a string")),
        ),
        (
            "ES256 header, RSA key kid",
            sign(Key::P256, &hdr("ES256", "rsa-1"), &claims()),
            Some((401, "Jwt verification fails")),
        ),
        (
            "Ed25519 short signature",
            format!(
                "{}.AAAA",
                good.rsplit_once('.').unwrap().0.replace(
                    &good.split('.').next().unwrap().to_string(),
                    &base64url_encode(br#"{"alg":"EdDSA","kid":"ed-1"}"#)
                )
            ),
            Some((401, "Jwt ED25519 signature is wrong length")),
        ),
        (
            "truncated signature",
            good[..good.len() - 10].to_string(),
            Some((401, "Jwt verification fails")),
        ),
        (
            "truncated to two parts",
            good.rsplit_once('.').unwrap().0.to_string(),
            Some((
                401,
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            )),
        ),
        (
            "garbage",
            "not-a-jwt".to_string(),
            Some((
                401,
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            )),
        ),
        (
            "garbage 3 parts",
            "a.b.c".to_string(),
            Some((401, "Jwt header is an invalid Base64url encoded")),
        ),
        (
            "header not json",
            format!("{}.e30.AA", base64url_encode(b"nope")),
            Some((401, "Jwt header is an invalid JSON")),
        ),
        (
            "payload not base64",
            format!("{}.!.AA", base64url_encode(br#"{"alg":"RS256"}"#)),
            Some((401, "Jwt payload is an invalid Base64url encoded")),
        ),
        (
            "payload not json",
            format!(
                "{}.{}.AA",
                base64url_encode(br#"{"alg":"RS256"}"#),
                base64url_encode(b"[1]")
            ),
            Some((401, "Jwt payload is an invalid JSON")),
        ),
        (
            "signature bad base64",
            format!("{}.A", good.rsplit_once('.').unwrap().0),
            Some((401, "Jwt signature is an invalid Base64url encoded")),
        ),
        ("empty sections vanish", good.replacen('.', "..", 1), None),
    ];
    let _ = rsa_public_n;
    for (name, t, want) in cases {
        let d = run(&a, bearer(&t));
        assert_eq!(denied(&d), want, "{name}: {d:?}");
        if let Decision::Deny(deny) = &d {
            assert_eq!(
                deny.www_authenticate,
                r#"Bearer realm="http://example.com/api?x=1", error="invalid_token""#
            );
        }
    }
}

#[test]
fn key_confusion_hmac_with_rsa_public_key_is_rejected() {
    // An attacker signs HS256 with the RSA public key as the secret.
    let a = JwtAuthn::from_json(
        json!({"jwtRules": [{"issuer": ISS, "jwks": jwks_json(&[Key::Rsa1])}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let n = super::testing::jwk(Key::Rsa1)["n"]
        .as_str()
        .unwrap()
        .to_string();
    let input = format!(
        "{}.{}",
        base64url_encode(br#"{"alg":"HS256","kid":"rsa-1"}"#),
        base64url_encode(claims().to_string().as_bytes())
    );
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(n.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let t = format!("{input}.{}", base64url_encode(&mac.finalize().into_bytes()));
    assert_eq!(
        denied(&run(&a, bearer(&t))),
        Some((401, "Jwt verification fails"))
    );
}

#[test]
fn locations_and_missing_tokens() {
    let a = authn(json!({}));
    let t = token("RS256", &claims());
    // No token, or a header without the prefix: missing, so allowed with no identity.
    for h in [
        req(None),
        req(Some(&format!("Basic {t}"))),
        req(Some(&format!("bearer {t}"))),
    ] {
        match run(&a, h) {
            Decision::Allow(allow) => assert_eq!(allow.payload, None),
            d => panic!("{d:?}"),
        }
    }
    // Prefix anywhere in the value; junk after it skipped.
    assert!(matches!(
        run(&a, req(Some(&format!("xBearer  ,{t}")))),
        Decision::Allow(Allow {
            payload: Some(_),
            ..
        })
    ));
    // Bearer with only junk after: the whole value is the token.
    assert_eq!(
        denied(&run(&a, req(Some("Bearer !!!")))).map(|d| d.0),
        Some(401)
    );
    // Default query parameter, removed after success (rest rebuilt, sorted).
    let mut h = req(None);
    h[3].1 = format!("/api?z=2&access_token={t}&a=%41");
    match run(&a, h) {
        Decision::Allow(allow) => {
            assert_eq!(allow.ops, vec![HeaderOp::SetPath("/api?a=A&z=2".into())])
        }
        d => panic!("{d:?}"),
    }
    // Empty access_token counts as a (bad) token.
    let mut h = req(None);
    h[3].1 = "/api?access_token=".into();
    assert_eq!(
        denied(&run(&a, h)),
        Some((
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        ))
    );
    // Header token and a bad query token: the query token is checked first and fails.
    let mut h = bearer(&t);
    h[3].1 = "/api?access_token=a.b.c".into();
    assert_eq!(
        denied(&run(&a, h)).map(|d| d.1),
        Some("Jwt header is an invalid Base64url encoded")
    );
}

#[test]
fn custom_locations_cookies_and_outputs() {
    let a = authn(json!({
        "fromHeaders": [{"name": "X-Jwt", "prefix": ""}],
        "fromCookies": ["session"],
        "outputPayloadToHeader": "x-payload",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-grp", "claim": "org.team"},
                                 {"header": "x-n", "claim": "n"}, {"header": "x-f", "claim": "f"},
                                 {"header": "x-obj", "claim": "org"}, {"header": "x-none", "claim": "missing"}],
        "forwardOriginalToken": true
    }));
    let mut c = claims();
    c["org"] = json!({"team": "blue"});
    c["n"] = json!(42);
    c["f"] = json!(1.5);
    let t = token("ES256", &c);
    // Authorization is not a location any more: that token is ignored.
    let mut h = req(Some("Bearer garbage"));
    h.push(("cookie".into(), format!("a=1; session=\"{t}\"")));
    h.push(("x-sub".into(), "spoofed".into()));
    match run(&a, h) {
        Decision::Allow(allow) => {
            let payload_b64 = t.split('.').nth(1).unwrap().to_string();
            assert_eq!(
                allow.ops,
                vec![
                    HeaderOp::Remove("x-payload".into()),
                    HeaderOp::Remove("x-sub".into()),
                    HeaderOp::Remove("x-grp".into()),
                    HeaderOp::Remove("x-n".into()),
                    HeaderOp::Remove("x-f".into()),
                    HeaderOp::Remove("x-obj".into()),
                    HeaderOp::Remove("x-none".into()),
                    HeaderOp::Add("x-payload".into(), payload_b64),
                    HeaderOp::Add("x-sub".into(), "alice".into()),
                    HeaderOp::Add("x-grp".into(), "blue".into()),
                    HeaderOp::Add("x-n".into(), "42".into()),
                    HeaderOp::Add("x-f".into(), "1.500000".into()),
                    HeaderOp::Add("x-obj".into(), "eyJ0ZWFtIjoiYmx1ZSJ9".into()),
                ]
            );
        }
        d => panic!("{d:?}"),
    }
    // No token: spoofed output headers are still removed.
    match run(&a, vec![("x-sub".into(), "spoofed".into())]) {
        Decision::Allow(allow) => assert!(allow.ops.contains(&HeaderOp::Remove("x-sub".into()))),
        d => panic!("{d:?}"),
    }
    // Custom header without prefix: the whole value is the token.
    assert!(matches!(
        run(&a, vec![("x-jwt".into(), t.clone())]),
        Decision::Allow(Allow {
            payload: Some(_),
            ..
        })
    ));
}

#[test]
fn cors_preflight_bypasses_verification() {
    let a = authn(json!({}));
    let mut h = bearer("garbage");
    h[0].1 = "OPTIONS".into();
    h.push(("origin".into(), "https://x".into()));
    h.push(("access-control-request-method".into(), "GET".into()));
    assert!(matches!(
        run(&a, h.clone()),
        Decision::Allow(Allow {
            cors_preflight: true,
            ..
        })
    ));
    h.pop();
    assert!(matches!(run(&a, h), Decision::Deny(_)));
}

#[test]
fn several_rules_as_istiod_orders_them() {
    let other = "https://other.example";
    let cfg = json!({"jwtRules": [
        {"issuer": other, "jwks": jwks_json(&[Key::Rsa2]), "fromHeaders": [{"name": "x-other"}]},
        {"issuer": ISS, "jwks": jwks_json(DEFAULT_KEYS)}
    ]});
    let a = JwtAuthn::from_json(cfg.to_string().as_bytes()).unwrap();
    // Sorted by issuer: origins-0 is "https://issuer.example".
    assert_eq!(a.providers[0].issuer, ISS);
    assert_eq!(a.providers[1].name, "origins-1");
    let t1 = token("RS256", &claims());
    let mut c2 = claims();
    c2["iss"] = json!(other);
    let t2 = sign(Key::Rsa2, &json!({"alg": "RS256", "kid": "rsa-2"}), &c2);
    assert!(matches!(
        run(&a, bearer(&t1)),
        Decision::Allow(Allow {
            payload: Some(_),
            ..
        })
    ));
    assert!(matches!(
        run(&a, vec![("x-other".into(), t2.clone())]),
        Decision::Allow(Allow {
            payload: Some(_),
            ..
        })
    ));
    assert!(matches!(
        run(&a, req(None)),
        Decision::Allow(Allow { payload: None, .. })
    ));
    // A token of the other issuer in Authorization: unknown for origins-0.
    assert_eq!(
        denied(&run(&a, bearer(&t2))),
        Some((401, "Jwt issuer is not configured"))
    );
    let mut expired = claims();
    expired["exp"] = json!(NOW - 100);
    assert_eq!(
        denied(&run(&a, bearer(&token("RS256", &expired)))),
        Some((401, "Jwt is expired"))
    );
}

#[test]
fn cache_skips_the_signature_but_not_time() {
    let a = authn(json!({}));
    let mut cache = TokenCache::new(4);
    let mut c = claims();
    c["exp"] = json!(NOW + 10);
    let t = token("RS256", &c);
    let e1 = evaluate(&a, bearer(&t), NOW, &NoRemoteKeys, &mut cache);
    assert_eq!((e1.cache_hits, e1.cache_misses), (0, 1));
    let e2 = evaluate(&a, bearer(&t), NOW, &NoRemoteKeys, &mut cache);
    assert_eq!((e2.cache_hits, e2.cache_misses), (1, 0));
    assert_eq!(e1.decision, e2.decision);
    let e3 = evaluate(&a, bearer(&t), NOW + 100, &NoRemoteKeys, &mut cache);
    assert_eq!(denied(&e3.decision), Some((401, "Jwt is expired")));
    // Bounded.
    for i in 0..10 {
        let mut c = claims();
        c["i"] = json!(i);
        evaluate(
            &a,
            bearer(&token("HS256", &c)),
            NOW,
            &NoRemoteKeys,
            &mut cache,
        );
    }
    assert!(cache.len() <= 4);
}

struct Keys<'a>(KeyState<'a>);
impl RemoteKeys for Keys<'_> {
    fn keys(&self, _p: usize) -> KeyState<'_> {
        match &self.0 {
            KeyState::Ready { jwks, can_refetch } => KeyState::Ready {
                jwks,
                can_refetch: *can_refetch,
            },
            KeyState::Pending => KeyState::Pending,
            KeyState::Failed => KeyState::Failed,
        }
    }
}

#[test]
fn remote_keys_states() {
    let cfg = json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://keys.example/jwks.json"}]});
    let a = JwtAuthn::from_json(cfg.to_string().as_bytes()).unwrap();
    let r = a.remote(0).unwrap();
    assert_eq!(r.cluster, "outbound|443||keys.example");
    assert_eq!(
        (r.authority.as_str(), r.path.as_str()),
        ("keys.example", "/jwks.json")
    );
    let t = token("RS256", &claims());
    let mut cache = TokenCache::new(4);
    let ev =
        |k: &Keys, cache: &mut TokenCache, t: &str| evaluate(&a, bearer(t), NOW, k, cache).decision;
    assert_eq!(
        ev(&Keys(KeyState::Pending), &mut cache, &t),
        Decision::FetchJwks {
            provider: 0,
            refetch: false
        }
    );
    assert_eq!(
        denied(&ev(&Keys(KeyState::Failed), &mut cache, &t)),
        Some((401, "Jwks remote fetch is failed"))
    );
    let jwks = Jwks::parse(&jwks_json(&[Key::P256])).unwrap();
    // Unknown kid with refetch allowed: ask for a refetch; when not allowed: fail.
    assert_eq!(
        ev(
            &Keys(KeyState::Ready {
                jwks: &jwks,
                can_refetch: true
            }),
            &mut cache,
            &t
        ),
        Decision::FetchJwks {
            provider: 0,
            refetch: true
        }
    );
    assert_eq!(
        denied(&ev(
            &Keys(KeyState::Ready {
                jwks: &jwks,
                can_refetch: false
            }),
            &mut cache,
            &t
        ))
        .map(|d| d.1),
        Some("Jwks doesn't have key to match kid or alg from Jwt")
    );
    let jwks = Jwks::parse(&jwks_json(DEFAULT_KEYS)).unwrap();
    assert!(matches!(
        ev(
            &Keys(KeyState::Ready {
                jwks: &jwks,
                can_refetch: true
            }),
            &mut cache,
            &t
        ),
        Decision::Allow(_)
    ));
    // No token at all never needs keys.
    assert!(matches!(
        evaluate(&a, req(None), NOW, &Keys(KeyState::Pending), &mut cache).decision,
        Decision::Allow(_)
    ));
}

#[test]
fn config_errors_name_the_field() {
    let cases = [
        (
            json!({"jwtRules": [{"issuer": ISS, "jwks": "{}", "bogus": 1}]}),
            "jwtRules[0].bogus",
        ),
        (
            json!({"jwtRules": [{"jwks": jwks_json(DEFAULT_KEYS)}]}),
            "jwtRules[0].issuer",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS}]}),
            "jwtRules[0].jwksUri",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS, "jwks": "{\"keys\":[]}"}]}),
            "jwtRules[0].jwks",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS, "jwksUri": "ftp://x/y"}]}),
            "jwtRules[0].jwksUri",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://x/y", "timeout": "fast"}]}),
            "jwtRules[0].timeout",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://x/y", "outputClaimToHeaders": [{"header": "bad header", "claim": "sub"}]}]}),
            "jwtRules[0].outputClaimToHeaders[0].header",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://x/y", "fromHeaders": [{"prefix": "Bearer "}]}]}),
            "jwtRules[0].fromHeaders[0].name",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://x/y", "fromParams": [""]}]}),
            "jwtRules[0].fromParams[0]",
        ),
        (
            json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://x/y", "audiences": ["a", ""]}]}),
            "jwtRules[0].audiences[1]",
        ),
        (json!({"jwtRules": {}}), "jwtRules"),
    ];
    for (cfg, path) in cases {
        let err = JwtAuthn::from_json(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.path.as_str(), path, "{cfg}: {err}");
    }
    // A spec pasted whole (selector included) and an empty config are fine.
    assert!(
        JwtAuthn::from_json(br#"{"selector": {"matchLabels": {"app": "x"}}, "jwtRules": []}"#)
            .is_ok()
    );
    assert!(JwtAuthn::from_json(b"").is_ok());
}

#[test]
fn jwks_parsing_keeps_valid_keys_only() {
    let cases: &[(&str, Result<usize, Status>)] = &[
        ("nope", Err(Status::JwksParseError)),
        ("{}", Err(Status::JwksNoKeys)),
        (r#"{"keys": 1}"#, Err(Status::JwksBadKeys)),
        (r#"{"keys": []}"#, Err(Status::JwksNoValidKeys)),
        (
            r#"{"keys": [{"kty": "RSA", "n": "AQAB"}, {"kty": "RSA", "n": "AQAB", "e": "Ag"}, {"kty": "XX"}, 5]}"#,
            Err(Status::JwksNoValidKeys),
        ),
        (
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "oct"}]}"#,
            Ok(1),
        ),
        (
            r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}"#,
            Err(Status::JwksNoValidKeys),
        ),
    ];
    for (json, want) in cases {
        assert_eq!(Jwks::parse(json).map(|j| j.keys.len()), *want, "{json}");
    }
    assert_eq!(
        Jwks::parse(&jwks_json(DEFAULT_KEYS)).map(|j| j.keys.len()),
        Ok(6)
    );
}

/// jwt_verify_lib leaves BoringSSL's EVP default for PSS in place: the salt
/// must be as long as the hash (RSA_PSS_SALTLEN_DIGEST), not any length the
/// encoding holds. The native-twin test shows Envoy refusing the others too.
#[test]
fn pss_salt_must_be_the_hash_length() {
    let a = authn(json!({}));
    // 2048-bit key: the encoding holds 256 - hash - 2 bytes of salt at most.
    for (alg, h_len) in [("PS256", 32), ("PS384", 48), ("PS512", 64)] {
        for salt in [0, 1, 20, h_len, 256 - h_len - 2] {
            let t = sign_pss_with_salt(Key::Rsa1, alg, &claims(), salt);
            let want = (salt != h_len).then_some((401, "Jwt verification fails"));
            assert_eq!(denied(&run(&a, bearer(&t))), want, "{alg} salt {salt}");
        }
    }
}

#[test]
fn x509_map_jwks_gives_one_rsa_key_per_kid() {
    let a = authn(json!({"jwks": x509_jwks_json(&[Key::Rsa1])}));
    let signed = |key, header: Value| run(&a, bearer(&sign(key, &header, &claims())));
    let verification = Some((401, "Jwt verification fails"));
    let no_key = Some((401, "Jwks doesn't have key to match kid or alg from Jwt"));
    let cases = [
        (
            "RS256 by its kid",
            signed(Key::Rsa1, json!({"alg": "RS256", "kid": "rsa-1"})),
            None,
        ),
        (
            "PS384: the key has no alg",
            signed(Key::Rsa1, json!({"alg": "PS384", "kid": "rsa-1"})),
            None,
        ),
        (
            "no kid: every key tried",
            signed(Key::Rsa1, json!({"alg": "RS512"})),
            None,
        ),
        (
            "another key's signature",
            signed(Key::Rsa2, json!({"alg": "RS256", "kid": "rsa-1"})),
            verification,
        ),
        (
            "kid not in the map",
            signed(Key::Rsa1, json!({"alg": "RS256", "kid": "rsa-2"})),
            no_key,
        ),
        (
            "ES256 against the RSA key",
            signed(Key::P256, json!({"alg": "ES256", "kid": "rsa-1"})),
            verification,
        ),
        (
            "HS256 keyed with the certificate",
            signed(Key::Hmac, json!({"alg": "HS256", "kid": "rsa-1"})),
            verification,
        ),
    ];
    for (name, decision, want) in cases {
        assert_eq!(denied(&decision), want, "{name}");
    }
    let two = Jwks::parse(&x509_jwks_json(&[Key::Rsa1, Key::Rsa2])).unwrap();
    let kids: Vec<&str> = two.keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, ["rsa-1", "rsa-2"]);
    assert!(two
        .keys
        .iter()
        .all(|k| k.alg.is_empty() && matches!(k.key, super::jwks::KeyMaterial::Rsa(_, Some(_)))));

    // One certificate that is not RSA, or does not decode, fails the whole set
    // (jwt_verify_lib's createFromX509 stops at the first failure).
    let pem = x509_pem(Key::Rsa1);
    let lines: Vec<&str> = pem.lines().collect();
    let corrupt = format!(
        "{}\n{}\n{}\n",
        lines[0],
        lines[1].replacen('M', "!", 1),
        lines[2..].join("\n")
    );
    let truncated = format!("{}\n{}\n", lines[0], lines[lines.len() - 1]);
    let with = |bad: &str| json!({"rsa-1": pem, "bad": bad}).to_string();
    assert_eq!(
        Jwks::parse(&x509_jwks_json(&[Key::Rsa1, Key::P256])).map(|j| j.keys.len()),
        Err(Status::JwksX509GetPubkeyError)
    );
    assert_eq!(
        Jwks::parse(&with(&corrupt)).map(|j| j.keys.len()),
        Err(Status::JwksX509ParseError)
    );
    assert_eq!(
        Jwks::parse(&with(&truncated)).map(|j| j.keys.len()),
        Err(Status::JwksX509ParseError)
    );
    // Not every member a PEM certificate: not the X.509 form at all.
    let not_pem = json!({"rsa-1": pem, "x": "-----BEGIN CERTIFICATE-----"}).to_string();
    assert_eq!(
        Jwks::parse(&not_pem).map(|j| j.keys.len()),
        Err(Status::JwksNoKeys)
    );
    // Any truncation or flipped byte of the certificate is an error or a key,
    // never a panic (the parser runs on fetched, untrusted bytes).
    use base64ct::{Base64, Encoding};
    let body: String = lines[1..lines.len() - 1].concat();
    let der = Base64::decode_vec(&body).unwrap();
    let as_map = |d: &[u8]| {
        let b64 = Base64::encode_string(d);
        json!({"k": format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")})
            .to_string()
    };
    for cut in 0..der.len() {
        assert!(Jwks::parse(&as_map(&der[..cut])).is_err(), "cut at {cut}");
    }
    for i in 0..der.len() {
        let mut d = der.clone();
        d[i] ^= 0x5a;
        let _ = Jwks::parse(&as_map(&d));
    }
    // A value holding a chain: the first certificate's key, as OpenSSL reads it.
    let chain = format!("{}{}", x509_pem(Key::Rsa1), x509_pem(Key::Rsa2));
    let one = Jwks::parse(&json!({"rsa-1": chain}).to_string()).unwrap();
    let t = sign(
        Key::Rsa1,
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &claims(),
    );
    assert_eq!(
        one.verify(&super::token::Jwt::parse(&t).unwrap()),
        Status::Ok
    );
    // Line breaks are not significant inside the body, as for OpenSSL's reader.
    let one_line = format!(
        "{}\n{}\n{}\n",
        lines[0],
        lines[1..lines.len() - 1].concat(),
        lines[lines.len() - 1]
    );
    assert_eq!(Jwks::parse(&with(&one_line)).map(|j| j.keys.len()), Ok(2));
}

#[test]
fn sixteen_kib_token_is_just_a_bad_token() {
    let a = authn(json!({}));
    let mut c = claims();
    c["pad"] = json!("x".repeat(16 * 1024));
    let t = token("HS256", &c);
    assert!(matches!(run(&a, bearer(&t)), Decision::Allow(_)));
    let garbage = "A".repeat(16 * 1024);
    assert_eq!(denied(&run(&a, bearer(&garbage))).map(|d| d.0), Some(401));
}

#[test]
fn fast_rsa_agrees_with_the_rsa_crate() {
    use rsa::traits::PublicKeyParts;
    let jwks = Jwks::parse(&jwks_json(&[Key::Rsa1])).unwrap();
    let super::jwks::KeyMaterial::Rsa(key, Some(fast)) = &jwks.keys[0].key else {
        panic!("fast path missing")
    };
    for i in 0..20u8 {
        let sig: Vec<u8> = (0..256)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
            .collect();
        let ours = fast.public_op(&sig);
        let s = rsa::BigUint::from_bytes_be(&sig);
        let theirs = (s < *key.n()).then(|| {
            let m = s.modpow(key.e(), key.n()).to_bytes_be();
            let mut out = vec![0u8; 256 - m.len()];
            out.extend(m);
            out
        });
        assert_eq!(ours, theirs, "{i}");
    }
}

#[test]
fn a_cache_hit_writes_what_the_verification_wrote() {
    let a = authn(json!({
        "outputPayloadToHeader": "x-payload",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-none", "claim": "nope"}],
        "forwardOriginalToken": true
    }));
    let mut cache = TokenCache::new(4);
    let t = token("ES256", &claims());
    let e1 = evaluate(&a, bearer(&t), NOW, &NoRemoteKeys, &mut cache);
    let e2 = evaluate(&a, bearer(&t), NOW, &NoRemoteKeys, &mut cache);
    assert_eq!((e1.cache_misses, e2.cache_hits), (1, 1));
    assert_eq!(e1.decision, e2.decision);
    let Decision::Allow(allow) = e2.decision else {
        panic!("{:?}", e2.decision)
    };
    let payload_b64 = t.split('.').nth(1).unwrap().to_string();
    assert_eq!(
        allow.ops,
        vec![
            HeaderOp::Remove("x-payload".into()),
            HeaderOp::Remove("x-sub".into()),
            HeaderOp::Remove("x-none".into()),
            HeaderOp::Add("x-payload".into(), payload_b64),
            HeaderOp::Add("x-sub".into(), "alice".into()),
        ]
    );
    let p = allow.payload.unwrap();
    assert_eq!(p.msgpack(), payload_to_msgpack(p.value()).as_slice());
    assert_eq!(payload_from_msgpack(p.msgpack()).as_ref(), Some(p.value()));
    assert_eq!(p["scope"], json!(["read", "write"]));
    // A token that differs in one signature byte is not the cached one.
    let mut forged = t.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let e3 = evaluate(&a, bearer(&forged), NOW, &NoRemoteKeys, &mut cache);
    assert_eq!((e3.cache_hits, e3.cache_misses), (0, 1));
    assert_eq!(denied(&e3.decision), Some((401, "Jwt verification fails")));
}

#[test]
fn the_cache_is_per_provider() {
    let other = "https://other.example";
    let cfg = json!({"jwtRules": [
        {"issuer": ISS, "jwks": jwks_json(DEFAULT_KEYS)},
        {"issuer": other, "jwks": jwks_json(DEFAULT_KEYS)},
    ]});
    let a = JwtAuthn::from_json(cfg.to_string().as_bytes()).unwrap();
    let mut cache = TokenCache::new(8);
    let mut c = claims();
    c["iss"] = json!(other);
    let t = token("RS256", &c);
    // origins-0 (ISS) misses and rejects the issuer, origins-1 verifies.
    let e1 = evaluate(&a, bearer(&t), NOW, &NoRemoteKeys, &mut cache);
    assert!(matches!(e1.decision, Decision::Allow(_)), "{e1:?}");
    let e2 = evaluate(&a, bearer(&t), NOW, &NoRemoteKeys, &mut cache);
    assert!(matches!(e2.decision, Decision::Allow(_)), "{e2:?}");
    assert_eq!(cache.len(), 1);
    // The provider whose issuer does not match never hits the other's entry.
    assert_eq!((e2.cache_hits, e2.cache_misses), (1, 1), "{e1:?}");
    assert_eq!(e1.cache_misses, 2);
}

#[test]
fn host_headers_are_read_as_bytes_where_needed() {
    let a = authn(json!({}));
    let t = token("RS256", &claims());
    let auth = format!("Bearer {t}");
    let eval = |pairs: &[(&str, &[u8])]| {
        a.evaluate(pairs, NOW, &NoRemoteKeys, &mut TokenCache::new(4))
            .decision
    };
    // Values nobody reads may be anything; names are lower-cased.
    let pairs: [(&str, &[u8]); 4] = [
        (":method", b"GET"),
        (":path", b"/api"),
        ("x-bin", b"\xff\xfe"),
        ("Authorization", auth.as_bytes()),
    ];
    match eval(&pairs) {
        Decision::Allow(allow) => {
            assert!(allow.payload.is_some());
            assert_eq!(allow.ops, vec![HeaderOp::Remove("authorization".into())]);
        }
        d => panic!("{d:?}"),
    }
    // A token with invalid UTF-8 is read with it replaced: malformed.
    let mut bad = auth.clone().into_bytes();
    bad.push(0xff);
    let pairs: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/api\xff"),
        ("authorization", &bad),
    ];
    match eval(&pairs) {
        Decision::Deny(d) => {
            assert_eq!(d.http_status, 401);
            assert_eq!(
                d.www_authenticate,
                "Bearer realm=\"http:///api\u{fffd}\", error=\"invalid_token\""
            );
        }
        d => panic!("{d:?}"),
    }
    // CORS preflight compares bytes.
    let pairs: [(&str, &[u8]); 4] = [
        (":method", b"OPTIONS"),
        ("origin", b"\xff"),
        ("access-control-request-method", b"GET"),
        ("authorization", b"Bearer junk"),
    ];
    assert!(matches!(
        eval(&pairs),
        Decision::Allow(Allow {
            cors_preflight: true,
            ..
        })
    ));
}
