//! jwt_authn in real Envoy 1.40, with Envoy's own `envoy.filters.http.jwt_authn`
//! (configured as istiod configures it for the same RequestAuthentication) on a
//! second listener of the same Envoy as the oracle: every case goes to both and
//! must get the same status, the same body and `www-authenticate` for local
//! replies, and for proxied requests the same request at the backend (path,
//! token removal, output headers).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use host_tests::envoy::Envoy;
use host_tests::http::{Request, Response};
use host_tests::twin::{self, Case};
use host_tests::upstream::{Reply, Upstream};
use meshwasm_core::jwt::base64url_encode;
use meshwasm_core::jwt::testing::{
    hmac_sha256, jwk, jwks_json, rsa_private_key_der, sign, sign_pss_with_salt, token,
    x509_jwks_json, x509_pem, Key, DEFAULT_KEYS,
};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.example";
const OTHER_ISS: &str = "https://other.example";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The JwtAuthentication istiod generates for `rules` (policy_applier.go):
/// providers `origins-<i>` in issuer order, `requires_any[.., allow_missing]`.
fn native_config(rules: &[Value]) -> Value {
    let mut rules: Vec<Value> = rules.to_vec();
    rules.sort_by(|a, b| a["issuer"].as_str().cmp(&b["issuer"].as_str()));
    let mut providers = serde_json::Map::new();
    for (i, r) in rules.iter().enumerate() {
        let mut p = json!({
            "issuer": r["issuer"],
            "payload_in_metadata": "payload",
            "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "scope"]},
            "forward": r.get("forwardOriginalToken").cloned().unwrap_or(json!(false)),
        });
        if let Some(a) = r.get("audiences") {
            p["audiences"] = a.clone();
        }
        if let Some(j) = r.get("jwks") {
            p["local_jwks"] = json!({"inline_string": j});
        }
        if let Some(u) = r.get("jwksUri") {
            p["remote_jwks"] = json!({
                "http_uri": {"uri": u, "cluster": "jwks", "timeout": "5s"},
                "cache_duration": "300s"
            });
        }
        if let Some(h) = r.get("fromHeaders") {
            p["from_headers"] = Value::Array(
                h.as_array()
                    .unwrap()
                    .iter()
                    .map(|h| json!({"name": h["name"], "value_prefix": h.get("prefix").cloned().unwrap_or(json!(""))}))
                    .collect(),
            );
        }
        for (ours, theirs) in [
            ("fromParams", "from_params"),
            ("fromCookies", "from_cookies"),
        ] {
            if let Some(v) = r.get(ours) {
                p[theirs] = v.clone();
            }
        }
        if let Some(h) = r.get("outputPayloadToHeader") {
            p["forward_payload_header"] = h.clone();
        }
        if let Some(c) = r.get("outputClaimToHeaders") {
            p["claim_to_headers"] = Value::Array(
                c.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| json!({"header_name": c["header"], "claim_name": c["claim"]}))
                    .collect(),
            );
        }
        providers.insert(format!("origins-{i}"), p);
    }
    let n = rules.len();
    let requires = if n == 1 {
        json!({"requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}})
    } else {
        let mut reqs: Vec<Value> = (0..n)
            .map(|i| json!({"provider_name": format!("origins-{i}")}))
            .collect();
        reqs.push(json!({"requires_all": {"requirements": (0..n).map(|i| json!({
            "requires_any": {"requirements": [{"provider_name": format!("origins-{i}")}, {"allow_missing": {}}]}
        })).collect::<Vec<_>>()}}));
        json!({"requires_any": {"requirements": reqs}})
    };
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypass_cors_preflight": true
    })
}

fn start(rules: &[Value], upstream: &Upstream, jwks: &Upstream) -> Envoy {
    Envoy::from_file("jwt_authn.yaml")
        .plugin_config("PLUGIN_CONFIG", &json!({"jwtRules": rules}))
        .var("NATIVE_CONFIG", &native_config(rules).to_string())
        .upstream("UPSTREAM_PORT", upstream)
        .upstream("JWKS_PORT", jwks)
        .concurrency(2)
        .start()
}

/// Status; for local replies the body and `www-authenticate`; for proxied
/// requests what the backend received that jwt_authn may change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JwtOutcome {
    status: u16,
    body: Option<String>,
    www_authenticate: Option<String>,
    backend: Option<String>,
}

impl fmt::Display for JwtOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {:?} {:?}",
            self.status, self.body, self.www_authenticate, self.backend
        )
    }
}

const OUTPUT_HEADERS: &[&str] = &[
    "authorization",
    "x-jwt",
    "x-payload",
    "x-sub",
    "x-team",
    "x-n",
    "cookie",
];

fn jwt_outcome(resp: &Response) -> JwtOutcome {
    let www = resp.header("www-authenticate").map(String::from);
    if resp.header("x-upstream").is_none() {
        return JwtOutcome {
            status: resp.status,
            body: Some(resp.text()),
            www_authenticate: www,
            backend: None,
        };
    }
    let seen = resp.json();
    let mut backend = format!("path={}", seen["path"].as_str().unwrap_or(""));
    for h in OUTPUT_HEADERS {
        if let Some(v) = seen["headers"].get(*h) {
            backend.push_str(&format!(" {h}={}", v.as_str().unwrap_or("?")));
        }
    }
    JwtOutcome {
        status: resp.status,
        body: None,
        www_authenticate: www,
        backend: Some(backend),
    }
}

/// `meshwasm explain` (built by `make build`) on the same RequestAuthentication
/// gives each case the status native Envoy gave it.
fn explain_agrees(rules: &[Value], envoy: &Envoy, cases: &[Case]) {
    let bin = host_tests::paths::target_dir().join("debug/meshwasm");
    assert!(bin.exists(), "{} missing: run `make build`", bin.display());
    let file =
        std::env::temp_dir().join(format!("meshwasm-jwt-explain-{}.yaml", std::process::id()));
    let ra = json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                    "metadata": {"name": "ra", "namespace": "foo"}, "spec": {"jwtRules": rules}});
    std::fs::write(&file, ra.to_string()).unwrap();
    let mut diffs = Vec::new();
    for c in cases.iter().filter(|c| c.request.raw_headers.is_empty()) {
        let r = &c.request;
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("explain").arg("-f").arg(&file);
        cmd.args(["-o", "json", "--method", &r.method, "--path", &r.path]);
        for (k, v) in &r.headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        let out = cmd.output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let native = envoy.send("native", r).status;
        if v["status"].as_u64() != Some(u64::from(native)) {
            diffs.push(format!(
                "{}: native {native}, explain {v} {}",
                c.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let _ = std::fs::remove_file(&file);
    assert!(diffs.is_empty(), "explain differs:\n{}", diffs.join("\n"));
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": ["svc"], "exp": now() + 3600, "iat": now(),
           "scope": "read write", "team": {"name": "blue"}, "n": 7})
}

fn with(patch: Value) -> Value {
    let mut c = claims();
    if let (Value::Object(c), Value::Object(p)) = (&mut c, patch) {
        c.extend(p);
    }
    c
}

fn bearer(name: &str, t: &str) -> Case {
    Case::new(
        name,
        Request::get("/api/items?x=1").header("authorization", &format!("Bearer {t}")),
    )
}

#[test]
fn twin_inline_jwks_every_algorithm_and_every_failure() {
    let upstream = Upstream::echo("backend");
    let jwks = Upstream::start("jwks", |_| Reply::new(404));
    let rule = json!({
        "issuer": ISS,
        "audiences": ["svc", "https://svc.example/"],
        "jwks": jwks_json(DEFAULT_KEYS),
        "outputPayloadToHeader": "x-payload",
        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-team", "claim": "team.name"},
                                 {"header": "x-n", "claim": "n"}]
    });
    let envoy = start(std::slice::from_ref(&rule), &upstream, &jwks);

    let mut cases = Vec::new();
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
        "HS384", "HS512", "EdDSA",
    ] {
        cases.push(bearer(&format!("valid {alg}"), &token(alg, &claims())));
    }
    // PSS salts other than the hash length: refused by both (BoringSSL's
    // default salt length is the hash's; it does not recover another).
    for (alg, salt) in [("PS256", 0), ("PS384", 20), ("PS512", 190)] {
        cases.push(bearer(
            &format!("{alg} with a {salt}-byte salt"),
            &sign_pss_with_salt(Key::Rsa1, alg, &claims(), salt),
        ));
    }
    let good = token("RS256", &claims());
    let (signing_input, _) = good.rsplit_once('.').unwrap();
    let hdr = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid});
    // HS256 signed with the RSA public key (its JWK "n") as the secret.
    let rsa_n = jwk(Key::Rsa1)["n"].as_str().unwrap().to_string();
    let confusion = {
        let input = format!(
            "{}.{}",
            base64url_encode(br#"{"alg":"HS256","kid":"rsa-1"}"#),
            base64url_encode(claims().to_string().as_bytes())
        );
        let mac = hmac_sha256(rsa_n.as_bytes(), input.as_bytes());
        format!("{input}.{}", base64url_encode(&mac))
    };
    let mut big = claims();
    big["pad"] = json!("x".repeat(16 * 1024));
    let more = [
        (
            "expired",
            token("RS256", &with(json!({"exp": now() - 300}))),
        ),
        (
            "expired within skew",
            token("ES256", &with(json!({"exp": now() - 20}))),
        ),
        (
            "nbf in the future",
            token("RS256", &with(json!({"nbf": now() + 300}))),
        ),
        (
            "nbf within skew",
            token("RS256", &with(json!({"nbf": now() + 20}))),
        ),
        (
            "no exp",
            token("RS256", &json!({"iss": ISS, "sub": "bob", "aud": "svc"})),
        ),
        (
            "wrong issuer",
            token("RS256", &with(json!({"iss": "https://evil.example"}))),
        ),
        (
            "wrong audience",
            token("RS256", &with(json!({"aud": "other"}))),
        ),
        (
            "audience with scheme and slash",
            token("RS256", &with(json!({"aud": "http://svc.example"}))),
        ),
        (
            "bad signature",
            sign(Key::Rsa2, &hdr("RS256", "rsa-1"), &claims()),
        ),
        (
            "alg none unsigned",
            sign(Key::Rsa1, &json!({"alg": "none"}), &claims()),
        ),
        (
            "alg none with signature",
            format!(
                "{}AAAA",
                sign(Key::Rsa1, &json!({"alg": "none"}), &claims())
            ),
        ),
        ("key confusion HS256 with RSA public key", confusion),
        (
            "ES256 token naming the RSA kid",
            sign(Key::P256, &hdr("ES256", "rsa-1"), &claims()),
        ),
        (
            "unknown kid",
            sign(Key::Rsa2, &hdr("RS256", "rsa-2"), &claims()),
        ),
        (
            "no kid, stranger key",
            sign(Key::Rsa2, &json!({"alg": "RS256"}), &claims()),
        ),
        ("truncated by 10", good[..good.len() - 10].to_string()),
        ("truncated by 1", good[..good.len() - 1].to_string()),
        ("truncated to 2 parts", signing_input.to_string()),
        (
            "truncated payload",
            format!("{}.{}", &signing_input[..signing_input.len() - 7], "AAAA"),
        ),
        ("garbage", "garbage".to_string()),
        ("garbage dots", "a.b.c".to_string()),
        (
            "header not json",
            format!("{}.e30.AAAA", base64url_encode(b"hello")),
        ),
        (
            "kid not string",
            sign(Key::Rsa1, &json!({"alg": "RS256", "kid": 1}), &claims()),
        ),
        (
            "exp not a number",
            token("RS256", &with(json!({"exp": "tomorrow"}))),
        ),
        ("aud not a string", token("RS256", &with(json!({"aud": 1})))),
        ("16 KiB valid token", token("HS256", &big)),
        ("16 KiB garbage", "A".repeat(16 * 1024)),
        ("empty sections", good.replacen('.', "..", 1)),
    ];
    for (name, t) in more {
        cases.push(bearer(name, &t));
    }
    let q = |name: &str, path: &str| Case::new(name, Request::get(path));
    cases.extend([
        q("no token", "/api"),
        q("query token", &format!("/api?b=2&access_token={good}&a=1")),
        q("empty query token", "/api?access_token="),
        q("bad query token", "/api?access_token=a.b.c"),
        Case::new(
            "basic auth is not a bearer token",
            Request::get("/api").header("authorization", &format!("Basic {good}")),
        ),
        Case::new(
            "lower-case bearer",
            Request::get("/api").header("authorization", &format!("bearer {good}")),
        ),
        Case::new(
            "prefix inside the value",
            Request::get("/api").header("authorization", &format!("xBearer   {good}")),
        ),
        Case::new(
            "bearer and nothing usable",
            Request::get("/api").header("authorization", "Bearer !!!"),
        ),
        Case::new(
            "header token and bad query token",
            Request::get("/api?access_token=x.y.z")
                .header("authorization", &format!("Bearer {good}")),
        ),
        Case::new(
            "spoofed output headers",
            Request::get("/api")
                .header("x-sub", "mallory")
                .header("x-payload", "e30"),
        ),
        Case::new(
            "spoofed output headers with a good token",
            Request::get("/api")
                .header("x-sub", "mallory")
                .header("authorization", &format!("Bearer {good}")),
        ),
        Case::new(
            "CORS preflight with a bad token",
            Request::new("OPTIONS", "/api")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "GET")
                .header("authorization", "Bearer garbage"),
        ),
        Case::new(
            "OPTIONS without CORS headers",
            Request::new("OPTIONS", "/api").header("authorization", "Bearer garbage"),
        ),
        Case::new(
            "long path in realm",
            Request::get(&format!("/{}?q=1", "p".repeat(300)))
                .header("authorization", "Bearer a.b.c"),
        ),
        Case::new(
            "host with port",
            Request::get("/x")
                .header("host", "Example.COM:8080")
                .header("authorization", "Bearer a.b.c"),
        ),
    ]);
    twin::assert_same_by(&envoy, "meshwasm", "native", &cases, jwt_outcome);
    // Agreeing is not enough for the valid ones: both must let them through
    // (sent to both, so the counters below stay comparable).
    for c in cases.iter().filter(|c| c.name.starts_with("valid ")) {
        for listener in ["meshwasm", "native"] {
            let status = envoy.send(listener, &c.request).status;
            assert_eq!(status, 200, "{listener}: {}", c.name);
        }
    }

    // The meshwasm counters moved as the native filter's did.
    let stats = envoy.stats();
    let ours = |n: &str| {
        stats
            .get(&format!("wasmcustom.meshwasm.jwt_authn.{n}"))
            .copied()
            .unwrap_or(0)
    };
    let native_allowed = stats
        .get("http.native.jwt_authn.allowed")
        .copied()
        .unwrap_or(0);
    let native_denied = stats
        .get("http.native.jwt_authn.denied")
        .copied()
        .unwrap_or(0);
    assert_eq!(ours("denied"), native_denied, "denied counter");
    assert_eq!(
        ours("allowed"),
        native_allowed,
        "allowed counter (CORS bypasses included, as Envoy)"
    );
    assert_eq!(
        ours("cors_preflight"),
        stats
            .get("http.native.jwt_authn.cors_preflight_bypassed")
            .copied()
            .unwrap_or(0)
    );
    assert!(
        ours("denied_expired") >= 1 && ours("denied_signature") >= 1 && ours("cors_preflight") == 1
    );

    // A repeated token is served from the cache.
    let hits = ours("cache_hit");
    for _ in 0..4 {
        let r = envoy.send(
            "meshwasm",
            &Request::get("/again").header("authorization", &format!("Bearer {good}")),
        );
        assert_eq!(r.status, 200);
    }
    assert!(envoy.stat("wasmcustom.meshwasm.jwt_authn.cache_hit") >= hits + 3);
    // Last: it sends every case to the native listener once more.
    explain_agrees(&[rule], &envoy, &cases);
}

#[test]
fn twin_several_rules_custom_locations_and_forwarding() {
    let upstream = Upstream::echo("backend");
    let jwks = Upstream::start("jwks", |_| Reply::new(404));
    let rules = [
        json!({"issuer": OTHER_ISS, "jwks": jwks_json(&[Key::Rsa2]),
               "fromHeaders": [{"name": "x-jwt"}], "fromCookies": ["session"], "fromParams": ["tok"],
               "forwardOriginalToken": true}),
        json!({"issuer": ISS, "jwks": jwks_json(DEFAULT_KEYS), "audiences": ["svc"]}),
    ];
    let envoy = start(&rules, &upstream, &jwks);
    let t1 = token("ES384", &claims());
    let t2 = sign(
        Key::Rsa2,
        &json!({"alg": "RS256", "kid": "rsa-2"}),
        &with(json!({"iss": OTHER_ISS})),
    );
    let expired2 = sign(
        Key::Rsa2,
        &json!({"alg": "RS256", "kid": "rsa-2"}),
        &with(json!({"iss": OTHER_ISS, "exp": now() - 600})),
    );
    let g = |name: &str, path: &str| Case::new(name, Request::get(path));
    let cases = vec![
        g("no token", "/"),
        bearer("first issuer in Authorization", &t1),
        bearer("second issuer in Authorization", &t2),
        Case::new(
            "second issuer in its header",
            Request::get("/").header("x-jwt", &t2),
        ),
        Case::new(
            "second issuer in its cookie",
            Request::get("/").header("cookie", &format!("a=b; session={t2}")),
        ),
        Case::new(
            "quoted cookie",
            Request::get("/").header("cookie", &format!("session=\"{t2}\"")),
        ),
        g("second issuer in its param", &format!("/p?tok={t2}&z=1")),
        Case::new(
            "first issuer in the second's header",
            Request::get("/").header("x-jwt", &t1),
        ),
        Case::new(
            "expired in the second's header",
            Request::get("/").header("x-jwt", &expired2),
        ),
        Case::new(
            "both tokens in their own places",
            Request::get("/")
                .header("x-jwt", &t2)
                .header("authorization", &format!("Bearer {t1}")),
        ),
        Case::new(
            "good first, expired second",
            Request::get("/")
                .header("x-jwt", &expired2)
                .header("authorization", &format!("Bearer {t1}")),
        ),
        bearer("garbage", "garbage"),
        g("garbage param of the second", "/?tok=garbage"),
    ];
    twin::assert_same_by(&envoy, "meshwasm", "native", &cases, jwt_outcome);
}

#[test]
fn twin_remote_jwks_and_invalid_config() {
    let upstream = Upstream::echo("backend");
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let jwks = Upstream::start("jwks", move |seen| {
        counter.fetch_add(1, Ordering::SeqCst);
        if seen.path == "/.well-known/jwks.json" {
            Reply::new(200)
                .header("content-type", "application/json")
                .body(jwks_json(DEFAULT_KEYS))
        } else {
            Reply::new(404)
        }
    });
    let rules = [
        json!({"issuer": ISS, "jwksUri": "http://keys.example/.well-known/jwks.json", "jwksCluster": "jwks"}),
        json!({"issuer": OTHER_ISS, "jwksUri": "http://keys.example/missing.json", "jwksCluster": "jwks"}),
    ];
    let mut native_rules = rules.to_vec();
    for r in native_rules.iter_mut() {
        r.as_object_mut().unwrap().remove("jwksCluster");
    }
    let envoy = Envoy::from_file("jwt_authn.yaml")
        .plugin_config("PLUGIN_CONFIG", &json!({"jwtRules": rules}))
        .var("NATIVE_CONFIG", &native_config(&native_rules).to_string())
        .upstream("UPSTREAM_PORT", &upstream)
        .upstream("JWKS_PORT", &jwks)
        .concurrency(2)
        .start();
    let t2 = sign(
        Key::Rsa2,
        &json!({"alg": "RS256", "kid": "rsa-2"}),
        &with(json!({"iss": OTHER_ISS})),
    );
    let cases = vec![
        bearer(
            "valid RS256 (first request waits for the keys)",
            &token("RS256", &claims()),
        ),
        bearer("valid EdDSA", &token("EdDSA", &claims())),
        bearer(
            "expired",
            &token("ES256", &with(json!({"exp": now() - 600}))),
        ),
        bearer(
            "unknown kid",
            &sign(
                Key::Rsa2,
                &json!({"alg": "RS256", "kid": "rsa-2"}),
                &claims(),
            ),
        ),
        bearer(
            "bad signature",
            &sign(
                Key::Rsa2,
                &json!({"alg": "RS256", "kid": "rsa-1"}),
                &claims(),
            ),
        ),
        bearer("keys cannot be fetched", &t2),
        Case::new("no token", Request::get("/")),
    ];
    twin::assert_same_by(&envoy, "meshwasm", "native", &cases, jwt_outcome);
    assert!(envoy.stat("wasmcustom.meshwasm.jwt_authn.jwks_fetch_success") >= 1);
    assert!(envoy.stat("wasmcustom.meshwasm.jwt_authn.jwks_fetch_failed") >= 1);
    drop(envoy);

    // An invalid spec is refused with the field path, and Envoy does not start.
    let bad = json!({"jwtRules": [{"issuer": ISS, "jwks": jwks_json(DEFAULT_KEYS), "forwardOriginalTokn": true}]});
    let err = Envoy::from_file("jwt_authn.yaml")
        .plugin_config("PLUGIN_CONFIG", &bad)
        .var(
            "NATIVE_CONFIG",
            &native_config(&[json!({"issuer": ISS, "jwks": jwks_json(DEFAULT_KEYS)})]).to_string(),
        )
        .upstream("UPSTREAM_PORT", &upstream)
        .upstream("JWKS_PORT", &jwks)
        .try_start();
    match err {
        Ok(e) => panic!("Envoy started with an invalid spec:\n{}", e.log()),
        Err(log) => assert!(
            log.contains("jwt_authn: jwtRules[0].forwardOriginalTokn: unknown field"),
            "{log}"
        ),
    }
}

/// A certificate for `key` made by `openssl req` (real extensions, a real
/// self-signature), as PEM.
fn openssl_certificate(key: Key) -> String {
    let dir = std::env::temp_dir().join(format!("meshwasm-x509-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.der"), rsa_private_key_der(key)).unwrap();
    host_tests::openssl::run(
        &dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "key.der",
            "-keyform",
            "DER",
            "-subj",
            "/CN=meshwasm-jwks",
            "-days",
            "2",
            "-out",
            "cert.pem",
        ],
    );
    let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    pem
}

/// The X.509 map form of a JWKS (`{"<kid>": "<PEM certificate>"}`, as Google's
/// and Firebase's x509 endpoints serve it), inline and fetched: the same
/// decisions as jwt_verify_lib's `createFromX509` in the native filter. One
/// map holds a certificate made by openssl, one a P-256 key (which fails the
/// whole set on both), and a bad inline map is refused by both.
#[test]
fn twin_x509_map_jwks() {
    const EC_ISS: &str = "https://ec.example";
    let upstream = Upstream::echo("backend");
    // "chain": two certificates in one value; OpenSSL's reader takes the first.
    let real = json!({"rsa-1": openssl_certificate(Key::Rsa1), "rsa-2": x509_pem(Key::Rsa2),
                      "chain": format!("{}{}", x509_pem(Key::Rsa2), x509_pem(Key::Rsa1))})
    .to_string();
    let jwks = Upstream::start("jwks", move |seen| match seen.path.as_str() {
        "/x509/other" => Reply::new(200)
            .header("content-type", "application/json")
            .body(real.clone()),
        "/x509/ec" => Reply::new(200)
            .header("content-type", "application/json")
            .body(x509_jwks_json(&[Key::Rsa1, Key::P256])),
        _ => Reply::new(404),
    });
    let upstream_rules = |cluster: bool| {
        let mut rules = vec![
            json!({"issuer": ISS, "jwks": x509_jwks_json(&[Key::Rsa1])}),
            json!({"issuer": OTHER_ISS, "jwksUri": "http://keys.example/x509/other"}),
            json!({"issuer": EC_ISS, "jwksUri": "http://keys.example/x509/ec"}),
        ];
        if cluster {
            for r in &mut rules[1..] {
                r["jwksCluster"] = json!("jwks");
            }
        }
        rules
    };
    let envoy = Envoy::from_file("jwt_authn.yaml")
        .plugin_config("PLUGIN_CONFIG", &json!({"jwtRules": upstream_rules(true)}))
        .var(
            "NATIVE_CONFIG",
            &native_config(&upstream_rules(false)).to_string(),
        )
        .upstream("UPSTREAM_PORT", &upstream)
        .upstream("JWKS_PORT", &jwks)
        .concurrency(2)
        .start();
    let signed = |key, header: Value, iss: &str| sign(key, &header, &with(json!({"iss": iss})));
    let cases = vec![
        bearer(
            "inline: RS256 by kid",
            &signed(Key::Rsa1, json!({"alg": "RS256", "kid": "rsa-1"}), ISS),
        ),
        bearer(
            "inline: PS256, no kid",
            &signed(Key::Rsa1, json!({"alg": "PS256"}), ISS),
        ),
        bearer(
            "inline: another key's signature",
            &signed(Key::Rsa2, json!({"alg": "RS256", "kid": "rsa-1"}), ISS),
        ),
        bearer(
            "inline: kid not in the map",
            &signed(Key::Rsa1, json!({"alg": "RS256", "kid": "rsa-9"}), ISS),
        ),
        bearer(
            "inline: ES256 against the RSA key",
            &signed(Key::P256, json!({"alg": "ES256", "kid": "rsa-1"}), ISS),
        ),
        bearer(
            "inline: HS256 keyed with the certificate",
            &signed(Key::Hmac, json!({"alg": "HS256", "kid": "rsa-1"}), ISS),
        ),
        bearer(
            "fetched: openssl's certificate",
            &signed(
                Key::Rsa1,
                json!({"alg": "RS384", "kid": "rsa-1"}),
                OTHER_ISS,
            ),
        ),
        bearer(
            "fetched: second certificate",
            &signed(
                Key::Rsa2,
                json!({"alg": "RS256", "kid": "rsa-2"}),
                OTHER_ISS,
            ),
        ),
        bearer(
            "fetched: swapped kids",
            &signed(
                Key::Rsa2,
                json!({"alg": "RS256", "kid": "rsa-1"}),
                OTHER_ISS,
            ),
        ),
        bearer(
            "fetched: a chain's first certificate",
            &signed(
                Key::Rsa2,
                json!({"alg": "RS256", "kid": "chain"}),
                OTHER_ISS,
            ),
        ),
        bearer(
            "fetched: a chain's second certificate",
            &signed(
                Key::Rsa1,
                json!({"alg": "RS256", "kid": "chain"}),
                OTHER_ISS,
            ),
        ),
        bearer(
            "fetched: a map with an EC certificate",
            &signed(Key::Rsa1, json!({"alg": "RS256", "kid": "rsa-1"}), EC_ISS),
        ),
    ];
    twin::assert_same_by(&envoy, "meshwasm", "native", &cases, jwt_outcome);
    // Agreeing is not enough: the certificates must really give keys.
    let want = [200, 200, 401, 401, 401, 401, 200, 200, 401, 200, 401, 401];
    for (case, want) in cases.iter().zip(want) {
        let got = jwt_outcome(&envoy.send("meshwasm", &case.request));
        assert_eq!(got.status, want, "{}: {got}", case.name);
    }
    drop(envoy);

    // An inline map with a P-256 certificate: both filters refuse the listener.
    let bad = json!({"issuer": ISS, "jwks": x509_jwks_json(&[Key::Rsa1, Key::P256])});
    let good = json!({"issuer": ISS, "jwks": x509_jwks_json(&[Key::Rsa1])});
    for (plugin, native, expect) in [
        (
            &bad,
            &good,
            "jwtRules[0].jwks: invalid jwks: X509 parse pubkey internal fails: get pubkey",
        ),
        (&good, &bad, "invalid local jwks"),
    ] {
        let err = Envoy::from_file("jwt_authn.yaml")
            .plugin_config("PLUGIN_CONFIG", &json!({"jwtRules": [plugin]}))
            .var(
                "NATIVE_CONFIG",
                &native_config(std::slice::from_ref(native)).to_string(),
            )
            .upstream("UPSTREAM_PORT", &upstream)
            .upstream("JWKS_PORT", &jwks)
            .try_start();
        match err {
            Ok(e) => panic!(
                "Envoy started with a P-256 certificate in an inline map:\n{}",
                e.log()
            ),
            Err(log) => assert!(log.contains(expect), "{expect}\n{log}"),
        }
    }
}
