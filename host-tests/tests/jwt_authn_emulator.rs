//! jwt_authn remote keys (`jwksUri`) in the proxy-wasm emulator: what real Envoy
//! cannot make deterministic — requests paused until the first keys arrive and
//! then resumed, failures, refresh on the clock, stale keys on a failed refresh,
//! keys shared across workers, and the unknown-`kid` refetch.

use std::time::Duration;

use host_tests::emulator::{Action, Flow, StreamId, Vm, VmConfig, World};
use meshwasm_core::jwt::testing::{jwks_json, sign, token, Key, DEFAULT_KEYS};
use meshwasm_core::jwt::{payload_from_msgpack, FILTER_STATE_PRINCIPAL};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.example";

fn now() -> u64 {
    host_tests::emulator::world::START_UNIX_NANOS / 1_000_000_000
}

fn config() -> Value {
    json!({"jwtRules": [{
        "issuer": ISS,
        "jwksUri": "https://keys.example/jwks.json",
        "jwksCluster": "jwks",
        "jwksCacheDuration": "60s",
        "timeout": "2s"
    }]})
}

fn load(world: &World) -> Vm {
    let vm = world
        .load(
            &host_tests::paths::wasm("jwt_authn"),
            VmConfig::json(&config()).cluster("jwks"),
        )
        .expect("load jwt_authn.wasm");
    assert!(vm.configured(), "configuration refused: {}", vm.log_text());
    vm
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "exp": now() + 36_000})
}

fn request(vm: &mut Vm, tok: &str) -> (StreamId, Action) {
    let s = vm.new_stream();
    let auth = format!("Bearer {tok}");
    let a = vm
        .request_headers(
            s,
            &[
                (":method", "GET"),
                (":path", "/api"),
                (":authority", "svc"),
                (":scheme", "http"),
                ("authorization", &auth),
            ],
            true,
        )
        .unwrap();
    (s, a)
}

fn reply_body(vm: &Vm, s: StreamId) -> Option<(u32, String)> {
    vm.local_reply(s)
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

fn metric(world: &World, name: &str) -> i64 {
    world
        .metric(&format!("meshwasm.jwt_authn.{name}"))
        .unwrap_or(0)
}

fn respond_keys(vm: &mut Vm, keys: &[Key]) {
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "one callout expected: {calls:?}");
    vm.respond_http_call(
        calls[0].token,
        &[(":status", "200")],
        jwks_json(keys).as_bytes(),
    )
    .unwrap();
}

#[test]
fn first_requests_wait_for_the_keys_then_resume_or_fail() {
    let world = World::new();
    let mut vm = load(&world);
    let (s1, a1) = request(&mut vm, &token("RS256", &claims()));
    assert_eq!(a1, Action::Pause);
    let bad = sign(
        Key::Rsa2,
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &claims(),
    );
    let (s2, a2) = request(&mut vm, &bad);
    assert_eq!(a2, Action::Pause);
    // One callout for both, through the configured cluster, as Envoy's http_uri would.
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "jwks");
    let h = |n: &str| {
        calls[0]
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h(":path").as_deref(), Some("/jwks.json"));
    assert_eq!(h(":authority").as_deref(), Some("keys.example"));
    assert_eq!(calls[0].timeout, Duration::from_secs(2));

    respond_keys(&mut vm, DEFAULT_KEYS);
    assert_eq!(vm.stream_state(s1).request, Flow::Continued);
    assert_eq!(vm.local_reply(s1), None);
    assert_eq!(
        vm.request_header(s1, "authorization"),
        None,
        "token removed before forwarding"
    );
    let payload =
        payload_from_msgpack(&vm.filter_state(s1, "wasm.meshwasm.jwt_payload").unwrap()).unwrap();
    assert_eq!(payload["sub"], "alice");
    assert_eq!(
        vm.filter_state(s1, &format!("wasm.{FILTER_STATE_PRINCIPAL}"))
            .as_deref(),
        Some(&b"https://issuer.example/alice"[..])
    );
    assert_eq!(
        reply_body(&vm, s2),
        Some((401, "Jwt verification fails".into()))
    );
    assert_eq!(metric(&world, "jwks_fetch_success"), 1);

    // Later requests use the keys at once.
    let (s3, a3) = request(&mut vm, &token("ES256", &claims()));
    assert_eq!(a3, Action::Continue);
    assert_eq!(vm.local_reply(s3), None);
    assert!(vm.pending_http_calls().is_empty());
}

#[test]
fn a_failed_first_fetch_is_a_401_and_is_retried_later() {
    let world = World::new();
    let mut vm = load(&world);
    let good = token("RS256", &claims());
    let (s1, _) = request(&mut vm, &good);
    let call = vm.pending_http_calls()[0].token;
    vm.respond_http_call(call, &[(":status", "503")], b"upstream connect error")
        .unwrap();
    assert_eq!(
        reply_body(&vm, s1),
        Some((401, "Jwks remote fetch is failed".into()))
    );
    assert_eq!(metric(&world, "jwks_fetch_failed"), 1);
    // Within a second: fail fast, no new callout.
    let (s2, a2) = request(&mut vm, &good);
    assert_eq!(a2, Action::Pause);
    assert_eq!(reply_body(&vm, s2).map(|r| r.0), Some(401));
    assert!(vm.pending_http_calls().is_empty());
    // Later: a new fetch (a reset this time), then one that works.
    world.advance(Duration::from_secs(2));
    let (s3, a3) = request(&mut vm, &good);
    assert_eq!(a3, Action::Pause);
    let call = vm.pending_http_calls()[0].token;
    vm.fail_http_call(call).unwrap();
    assert_eq!(
        reply_body(&vm, s3),
        Some((401, "Jwks remote fetch is failed".into()))
    );
    world.advance(Duration::from_secs(2));
    let (s4, _) = request(&mut vm, &good);
    respond_keys(&mut vm, DEFAULT_KEYS);
    assert_eq!(vm.local_reply(s4), None);
    assert_eq!(vm.stream_state(s4).request, Flow::Continued);
}

#[test]
fn a_callout_that_never_answers_ends_at_the_deadline() {
    let world = World::new();
    let mut vm = load(&world);
    let (s1, _) = request(&mut vm, &token("RS256", &claims()));
    assert_eq!(vm.pending_http_calls().len(), 1);
    // timeout 2s + 1s grace: the tick fails the waiting request.
    world
        .advance_and_tick(&mut [&mut vm], Duration::from_secs(4))
        .unwrap();
    assert_eq!(
        reply_body(&vm, s1),
        Some((401, "Jwks remote fetch is failed".into()))
    );
}

#[test]
fn keys_are_shared_across_workers() {
    let world = World::new();
    let mut w1 = load(&world);
    let mut w2 = load(&world);
    let (s1, _) = request(&mut w1, &token("RS256", &claims()));
    respond_keys(&mut w1, DEFAULT_KEYS);
    assert_eq!(w1.local_reply(s1), None);
    // The second worker finds the keys in shared data: no callout, no wait.
    let (s2, a2) = request(&mut w2, &token("EdDSA", &claims()));
    assert_eq!(a2, Action::Continue);
    assert_eq!(w2.local_reply(s2), None);
    assert!(w2.pending_http_calls().is_empty());
    assert_eq!(metric(&world, "jwks_fetch_success"), 1);
}

#[test]
fn refresh_on_the_clock_keeps_stale_keys_when_it_fails() {
    let world = World::new();
    let mut vm = load(&world);
    let (s0, _) = request(&mut vm, &token("RS256", &claims()));
    respond_keys(&mut vm, &[Key::Rsa1]);
    assert_eq!(vm.local_reply(s0), None);
    // Before the cache duration: no refresh.
    world
        .advance_and_tick(&mut [&mut vm], Duration::from_secs(30))
        .unwrap();
    assert!(vm.pending_http_calls().is_empty());
    // After it: a background refresh; it fails; the old keys keep serving.
    world
        .advance_and_tick(&mut [&mut vm], Duration::from_secs(31))
        .unwrap();
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "refresh after jwksCacheDuration");
    vm.respond_http_call(calls[0].token, &[(":status", "500")], b"")
        .unwrap();
    assert_eq!(metric(&world, "jwks_fetch_failed"), 1);
    let (s1, a1) = request(&mut vm, &token("RS256", &claims()));
    assert_eq!(
        (a1, vm.local_reply(s1)),
        (Action::Continue, None),
        "stale keys still verify"
    );
    // The next refresh brings a rotated key set: the new key works, the old one is gone.
    world
        .advance_and_tick(&mut [&mut vm], Duration::from_secs(2))
        .unwrap();
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "refresh retried");
    vm.respond_http_call(
        calls[0].token,
        &[(":status", "200")],
        jwks_json(&[Key::P256]).as_bytes(),
    )
    .unwrap();
    let (s2, _) = request(&mut vm, &token("ES256", &claims()));
    assert_eq!(vm.local_reply(s2), None);
    let (s3, _) = request(&mut vm, &token("RS256", &with_fresh_sub("bob")));
    // rsa-1 is unknown now; the early refetch for it finds the same rotated set.
    if !vm.pending_http_calls().is_empty() {
        respond_keys(&mut vm, &[Key::P256]);
    }
    assert_eq!(
        reply_body(&vm, s3),
        Some((
            401,
            "Jwks doesn't have key to match kid or alg from Jwt".into()
        ))
    );
}

fn with_fresh_sub(sub: &str) -> Value {
    let mut c = claims();
    c["sub"] = json!(sub);
    c
}

#[test]
fn an_unknown_kid_triggers_one_rate_limited_refetch() {
    let world = World::new();
    let mut vm = load(&world);
    let (s0, _) = request(&mut vm, &token("RS256", &claims()));
    respond_keys(&mut vm, &[Key::Rsa1]);
    assert_eq!(vm.local_reply(s0), None);
    // The issuer rotated in an EC key: the token waits for a refetch, which has it.
    let (s1, a1) = request(&mut vm, &token("ES256", &claims()));
    assert_eq!(a1, Action::Pause);
    respond_keys(&mut vm, &[Key::Rsa1, Key::P256]);
    assert_eq!(vm.local_reply(s1), None);
    assert_eq!(vm.stream_state(s1).request, Flow::Continued);
    // Another unknown kid right after: no second refetch, Envoy's 401.
    let (s2, a2) = request(&mut vm, &token("EdDSA", &claims()));
    assert_eq!(a2, Action::Pause);
    assert!(vm.pending_http_calls().is_empty());
    assert_eq!(
        reply_body(&vm, s2),
        Some((
            401,
            "Jwks doesn't have key to match kid or alg from Jwt".into()
        ))
    );
    // 30 s later a refetch is allowed again.
    world.advance(Duration::from_secs(31));
    let (_s3, a3) = request(&mut vm, &token("EdDSA", &claims()));
    assert_eq!(a3, Action::Pause);
    assert_eq!(vm.pending_http_calls().len(), 1);
}
