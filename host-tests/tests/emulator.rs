//! The emulator's own tests: the `probe` module (host-tests/probe) drives each host
//! feature through request headers, and the assertions check Envoy's semantics
//! (listed in the emulator's module docs). Build the probe first:
//! `cargo build --release --target wasm32-wasip1 -p probe` (`make test` does).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use host_tests::emulator::paths::probe_wasm;
use host_tests::emulator::world::START_UNIX_NANOS;
use host_tests::emulator::{Action, Flow, StreamId, Vm, VmConfig, World};

fn probe(world: &World, cfg: VmConfig) -> Vm {
    let path = probe_wasm();
    assert!(
        path.exists(),
        "{} missing: run `cargo build --release --target wasm32-wasip1 -p probe`",
        path.display()
    );
    let vm = world.load(&path, cfg).expect("probe loads");
    assert!(vm.configured(), "probe refused its configuration");
    vm
}

fn base<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", "GET"),
        (":path", "/p?q=1"),
        (":authority", "example.com"),
        (":scheme", "http"),
    ];
    h.extend_from_slice(extra);
    h
}

/// Sends request headers (end of stream) on a new stream.
fn request(vm: &mut Vm, extra: &[(&str, &str)]) -> (StreamId, Action) {
    let s = vm.new_stream();
    let a = vm
        .request_headers(s, &base(extra), true)
        .expect("request headers");
    (s, a)
}

/// The result the probe recorded for `op` in the request headers it forwarded.
fn result(vm: &Vm, s: StreamId, op: &str) -> String {
    let prefix = format!("{op}=");
    vm.request_header_values(s, "x-probe-result")
        .into_iter()
        .find_map(|r| r.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("no result for {op}: {:?}", vm.request_headers_now(s)))
}

fn response_result(vm: &Vm, s: StreamId, op: &str) -> String {
    let prefix = format!("{op}=");
    vm.response_header_values(s, "x-probe-result")
        .into_iter()
        .find_map(|r| r.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| {
            panic!(
                "no response result for {op}: {:?}",
                vm.response_headers_now(s)
            )
        })
}

#[test]
fn plugin_config_is_readable_only_in_on_configure() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::new("hello=1").vm_config("vm-cfg"));
    assert!(
        vm.log_text().contains("probe: configured with hello=1"),
        "{}",
        vm.log_text()
    );
    let (s, a) = request(
        &mut vm,
        &[("x-probe", "config,config-at-configure,vmconfig")],
    );
    assert_eq!(a, Action::Continue);
    assert_eq!(
        result(&vm, s, "config"),
        "none",
        "plugin config must be NotFound after on_configure"
    );
    assert_eq!(result(&vm, s, "config-at-configure"), "hello=1");
    // The VM configuration stays readable.
    assert_eq!(result(&vm, s, "vmconfig"), "vm-cfg|vm-cfg");
}

#[test]
fn envoy_call_order() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::new("a=1").cluster("backend"));
    let (s, _) = request(&mut vm, &[("x-probe", "callout:backend")]);
    let token = vm.pending_http_calls()[0].token;
    vm.respond_http_call(token, &[(":status", "200")], b"pong")
        .unwrap();
    vm.response_headers(s, &[(":status", "200")], true).unwrap();
    vm.finish(s).unwrap();
    let calls: Vec<(String, Vec<i64>)> = vm
        .calls()
        .iter()
        .map(|c| (c.name.clone(), c.args.clone()))
        .collect();
    let t = token as i64;
    let expected: Vec<(&str, Vec<i64>)> = vec![
        ("_initialize", vec![]),
        ("proxy_on_context_create", vec![1, 0]),
        ("proxy_on_vm_start", vec![1, 0]),
        ("proxy_on_configure", vec![1, 3]),
        ("proxy_on_context_create", vec![2, 1]),
        ("proxy_on_request_headers", vec![2, 5, 1]),
        // The callout's response goes to the root context, with the token.
        ("proxy_on_http_call_response", vec![1, t, 1, 4, 0]),
        ("proxy_on_response_headers", vec![2, 1, 1]),
        ("proxy_on_log", vec![2]),
        ("proxy_on_done", vec![2]),
        ("proxy_on_delete", vec![2]),
    ];
    let expected: Vec<(String, Vec<i64>)> = expected
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
    assert_eq!(calls, expected);
}

#[test]
fn header_map_operations() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    let (s, _) = request(
        &mut vm,
        &[
            ("x-dup", "1"),
            ("x-dup", "2"),
            ("x-gone", "g"),
            ("x-probe", "set-req:x-dup=3,del-req:x-gone,get-all"),
        ],
    );
    assert_eq!(
        vm.request_header_values(s, "x-dup"),
        ["3"],
        "replace keeps one value"
    );
    assert_eq!(vm.request_header(s, "x-gone"), None);
    assert_eq!(result(&vm, s, "get-all"), "Ok(6)");
    let (s, _) = request(&mut vm, &[("x-probe", "replace-all")]);
    let now = vm.request_headers_now(s);
    let names: Vec<&str> = now.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [":method", ":path", ":authority", "x-only", "x-probe-result"]
    );
    assert_eq!(vm.request_header(s, ":path").as_deref(), Some("/new"));
}

#[test]
fn refused_configuration_is_reported() {
    let world = World::new();
    let vm = world.load(&probe_wasm(), VmConfig::new("fail=1")).unwrap();
    assert!(!vm.configured());
}

#[test]
fn request_headers_are_bad_argument_after_continue() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    let (s, a) = request(
        &mut vm,
        &[
            ("x-probe", "req-header-status::path,add-req:x-added=1"),
            ("x-probe-response", "req-header-status::path"),
        ],
    );
    assert_eq!(a, Action::Continue);
    assert_eq!(vm.stream_state(s).request, Flow::Continued);
    assert_eq!(
        result(&vm, s, "req-header-status"),
        "0",
        "readable during on_http_request_headers"
    );
    assert_eq!(vm.request_header(s, "x-added").as_deref(), Some("1"));
    assert_eq!(
        vm.stream_state(s).route_cache_clears,
        3,
        "add-req plus two result headers"
    );
    vm.response_headers(s, &[(":status", "200")], true).unwrap();
    assert_eq!(
        response_result(&vm, s, "req-header-status"),
        "2",
        "BadArgument once continued"
    );
    // The access-log phase sees the final maps again.
    vm.finish(s).unwrap();
    assert!(
        vm.log_text()
            .contains("on_log ctx=2 path=/p?q=1 status=200"),
        "{}",
        vm.log_text()
    );
    assert!(vm.stream_state(s).finished);
}

#[test]
fn pause_then_tick_resumes_through_effective_context() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::new("tick_ms=100"));
    let (s, a) = request(&mut vm, &[("x-probe", "pause:250")]);
    assert_eq!(a, Action::Pause);
    assert_eq!(vm.stream_state(s).request, Flow::Paused);
    // Request headers stay readable while paused (the map is still live).
    // Body that arrives while paused is queued: no callback, nothing upstream.
    assert_eq!(vm.request_body(s, b"queued", true).unwrap(), Action::Pause);
    assert!(vm.request_body_now(s).is_empty());
    assert_eq!(
        world
            .advance_and_tick(&mut [&mut vm], Duration::from_millis(200))
            .unwrap(),
        2
    );
    assert_eq!(
        vm.stream_state(s).request,
        Flow::Paused,
        "deadline 250ms not reached at 200ms"
    );
    assert_eq!(
        world
            .advance_and_tick(&mut [&mut vm], Duration::from_millis(100))
            .unwrap(),
        1
    );
    assert_eq!(vm.stream_state(s).request, Flow::Continued);
    assert!(
        vm.log_text().contains(&format!("probe: resumed {}", s.0)),
        "{}",
        vm.log_text()
    );
    assert_eq!(
        vm.request_body_now(s),
        b"queued",
        "queued body delivered on resume"
    );
}

#[test]
fn effective_context_of_a_finished_stream_is_bad_argument() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::new("tick_ms=50"));
    let (s, a) = request(&mut vm, &[("x-probe", "pause:10")]);
    assert_eq!(a, Action::Pause);
    vm.finish(s).unwrap(); // client went away
    world
        .advance_and_tick(&mut [&mut vm], Duration::from_millis(50))
        .unwrap();
    assert!(
        vm.log_text()
            .contains(&format!("probe: set_effective_context({}) = 2", s.0)),
        "{}",
        vm.log_text()
    );
    let root = vm.root_context_id();
    let (s2, _) = request(
        &mut vm,
        &[(
            "x-probe",
            &format!("set-effective:9999,set-effective:{root}"),
        )],
    );
    let all = vm.request_header_values(s2, "x-probe-result");
    assert_eq!(all[0], "set-effective=2");
    assert_eq!(all[1], "set-effective=0");
}

#[test]
fn ticks_follow_the_period_and_period_zero_disables() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::new("tick_ms=100"));
    assert_eq!(vm.tick_period(), Some(Duration::from_millis(100)));
    assert!(
        !vm.tick_due().unwrap(),
        "nothing due before the clock moves"
    );
    world.advance(Duration::from_millis(99));
    assert!(!vm.tick_due().unwrap());
    world.advance(Duration::from_millis(1));
    assert!(vm.tick_due().unwrap());
    assert!(!vm.tick_due().unwrap(), "re-armed for a full period");
    let first = format!("probe: tick at {}", START_UNIX_NANOS + 100_000_000);
    assert!(vm.log_text().contains(&first), "{}", vm.log_text());
    assert_eq!(
        world
            .advance_and_tick(&mut [&mut vm], Duration::from_secs(1))
            .unwrap(),
        10
    );
    assert_eq!(world.metric("probe.ticks"), Some(11));
    // Period 0 disables the timer.
    request(&mut vm, &[("x-probe", "set-tick:0")]);
    assert_eq!(vm.tick_period(), None);
    assert_eq!(
        world
            .advance_and_tick(&mut [&mut vm], Duration::from_secs(5))
            .unwrap(),
        0
    );
    // A new period replaces the timer.
    request(&mut vm, &[("x-probe", "set-tick:250")]);
    assert_eq!(
        world
            .advance_and_tick(&mut [&mut vm], Duration::from_secs(1))
            .unwrap(),
        4
    );
    assert_eq!(world.metric("probe.ticks"), Some(15));
}

#[test]
fn local_reply_is_captured_and_forces_a_stop() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    // The probe returns Continue after send_http_response: Envoy stops anyway.
    let (s, a) = request(
        &mut vm,
        &[
            ("x-probe", "local-reply"),
            ("x-probe-response", "add-resp:x-enc=1"),
        ],
    );
    assert_eq!(a, Action::Pause);
    let reply = vm.local_reply(s).expect("local reply");
    assert_eq!(reply.status, 418);
    assert_eq!(reply.header("x-probe-reply"), Some("1"));
    assert_eq!(reply.body_text(), "probe says no");
    assert_eq!(reply.grpc_status, None);
    assert_eq!(vm.stream_state(s).request, Flow::Stopped);
    // Not forwarded upstream, and the reply went through the filter's encoder callbacks.
    assert_eq!(vm.response_header(s, ":status").as_deref(), Some("418"));
    assert_eq!(
        vm.response_header(s, "content-type").as_deref(),
        Some("text/probe")
    );
    assert_eq!(
        vm.response_header(s, "content-length").as_deref(),
        Some("13")
    );
    assert_eq!(vm.response_header(s, "x-enc").as_deref(), Some("1"));
    assert_eq!(vm.response_body_now(s), b"probe says no");
    // Later request data never reaches the filter.
    assert_eq!(vm.request_body(s, b"late", true).unwrap(), Action::Pause);
    assert!(vm.request_body_now(s).is_empty());
    assert!(vm.response_headers(s, &[(":status", "200")], true).is_err());

    // gRPC request: trailers-only 200 with the HTTP status mapped.
    let (g, _) = request(
        &mut vm,
        &[
            ("x-probe", "local-reply"),
            ("content-type", "application/grpc"),
        ],
    );
    assert_eq!(vm.response_header(g, ":status").as_deref(), Some("200"));
    assert_eq!(vm.response_header(g, "grpc-status").as_deref(), Some("2"));
    assert_eq!(
        vm.response_header(g, "grpc-message").as_deref(),
        Some("probe says no")
    );
}

#[test]
fn local_reply_from_the_response_phase_replaces_the_response() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    let (s, a) = request(&mut vm, &[("x-probe-response", "local-reply")]);
    assert_eq!(a, Action::Continue);
    let a = vm
        .response_headers(s, &[(":status", "200"), ("x-upstream", "1")], false)
        .unwrap();
    assert_eq!(a, Action::Pause);
    assert_eq!(vm.local_reply(s).unwrap().status, 418);
    assert!(!vm.stream_state(s).reset, "headers were not downstream yet");
    assert_eq!(vm.stream_state(s).response, Flow::Stopped);
    assert_eq!(vm.response_header(s, ":status").as_deref(), Some("418"));
    assert_eq!(vm.response_header(s, "x-upstream"), None);
    assert_eq!(vm.response_body_now(s), b"probe says no");
    // The upstream body never passes.
    assert_eq!(
        vm.response_body(s, b"upstream", true).unwrap(),
        Action::Pause
    );
    assert_eq!(vm.response_body_now(s), b"probe says no");
}

#[test]
fn shared_data_cas_between_two_vms() {
    let world = World::new();
    let mut a = probe(&world, VmConfig::default());
    let mut b = probe(&world, VmConfig::default());
    let c0 = world.shared_set("k", b"5", 0).unwrap();
    // A reads, B increments, A writes with the stale cas → CasMismatch.
    let (sa, _) = request(
        &mut a,
        &[
            ("x-probe", "cas-get"),
            ("x-probe-key", "k"),
            ("x-probe-value", "7"),
            ("x-probe-response", "cas-set-saved"),
        ],
    );
    assert_eq!(result(&a, sa, "cas-get"), format!("v=5,cas={c0}"));
    let (sb, _) = request(&mut b, &[("x-probe", "cas-incr"), ("x-probe-key", "k")]);
    assert_eq!(result(&b, sb, "cas-incr"), "ok:6");
    a.response_headers(sa, &[(":status", "200")], true).unwrap();
    assert_eq!(response_result(&a, sa, "cas-set-saved"), "CasMismatch");
    assert_eq!(world.shared_get("k").unwrap().0, b"6");

    // Another worker writes between this VM's get and set (same callback).
    world.interleave_after_get("k", |d| {
        d.set("k", b"100", 0).unwrap();
    });
    let (s1, _) = request(&mut a, &[("x-probe", "cas-incr"), ("x-probe-key", "k")]);
    assert_eq!(result(&a, s1, "cas-incr"), "CasMismatch");
    let (s2, _) = request(&mut a, &[("x-probe", "cas-incr"), ("x-probe-key", "k")]);
    assert_eq!(result(&a, s2, "cas-incr"), "ok:101");

    // cas 0 (None) is unconditional.
    let (s3, _) = request(
        &mut b,
        &[
            ("x-probe", "shared-set"),
            ("x-probe-key", "k"),
            ("x-probe-value", "x"),
        ],
    );
    assert_eq!(result(&b, s3, "shared-set"), "ok");
    // A stale non-zero cas on an existing key fails.
    let (s4, _) = request(
        &mut b,
        &[
            ("x-probe", "shared-set"),
            ("x-probe-key", "k"),
            ("x-probe-value", "y"),
            ("x-probe-cas", &c0.to_string()),
        ],
    );
    assert_eq!(result(&b, s4, "shared-set"), "CasMismatch");
    // An absent key is inserted even with a cas that never existed (no create-if-absent).
    let (s5, _) = request(
        &mut b,
        &[
            ("x-probe", "shared-set"),
            ("x-probe-key", "fresh"),
            ("x-probe-value", "f"),
            ("x-probe-cas", "4242"),
        ],
    );
    assert_eq!(result(&b, s5, "shared-set"), "ok");
    let (v, cas) = world.shared_get("fresh").unwrap();
    assert_eq!(v, b"f");
    assert_ne!(cas, 4242);
    // One global counter: the next write of any key gets cas + 1.
    assert_eq!(world.shared_set("other", b"o", 0).unwrap(), cas + 1);
    // "Remove" = empty value: the key stays and get returns (None, Some(cas)).
    let (s6, _) = request(
        &mut a,
        &[
            ("x-probe", "shared-set,shared-get"),
            ("x-probe-key", "fresh"),
            ("x-probe-cas", &cas.to_string()),
        ],
    );
    assert_eq!(result(&a, s6, "shared-set"), "ok");
    let (v, removed_cas) = world.shared_get("fresh").unwrap();
    assert!(v.is_empty());
    assert_eq!(
        result(&a, s6, "shared-get"),
        format!("v=none,cas={removed_cas}")
    );
    // A key never written: (None, None).
    let (s7, _) = request(
        &mut a,
        &[("x-probe", "shared-get"), ("x-probe-key", "never")],
    );
    assert_eq!(result(&a, s7, "shared-get"), "v=none,cas=none");
}

#[test]
fn vm_id_namespaces_shared_data() {
    let world = World::new();
    let mut a = probe(&world, VmConfig::default().vm_id("one"));
    let (s, _) = request(
        &mut a,
        &[
            ("x-probe", "shared-set"),
            ("x-probe-key", "k"),
            ("x-probe-value", "1"),
        ],
    );
    assert_eq!(result(&a, s, "shared-set"), "ok");
    assert_eq!(
        world.shared_get("k"),
        None,
        "the default \"\" namespace is separate"
    );
    assert_eq!(world.with_shared(|d| d.get_in("one", "k")).unwrap().0, b"1");
}

#[test]
fn http_callout_is_answered_to_the_right_stream() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default().cluster("backend"));
    let (s1, a1) = request(&mut vm, &[("x-probe", "callout:backend")]);
    let (s2, a2) = request(&mut vm, &[("x-probe", "callout:backend")]);
    assert_eq!((a1, a2), (Action::Pause, Action::Pause));
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 2);
    let c1 = calls.iter().find(|c| c.context_id == s1.0).unwrap().clone();
    let c2 = calls.iter().find(|c| c.context_id == s2.0).unwrap().clone();
    assert_eq!(c1.cluster, "backend");
    assert_eq!(c1.header(":path"), Some("/probe"));
    assert_eq!(c1.body, b"ping");
    assert_eq!(c1.timeout, Duration::from_millis(1500));
    assert_eq!(result(&vm, s1, "callout"), format!("token={}", c1.token));

    vm.respond_http_call(c2.token, &[(":status", "200")], b"pong2")
        .unwrap();
    assert_eq!(
        vm.request_header(s2, "x-probe-callout").unwrap(),
        format!("ctx={},token={},200:pong2", s2.0, c2.token)
    );
    assert_eq!(vm.stream_state(s2).request, Flow::Continued);
    assert_eq!(vm.stream_state(s1).request, Flow::Paused);
    assert_eq!(vm.request_header(s1, "x-probe-callout"), None);

    vm.fail_http_call(c1.token).unwrap();
    assert_eq!(
        vm.request_header(s1, "x-probe-callout").unwrap(),
        format!("ctx={},token={},failed:11:reset", s1.0, c1.token)
    );
    assert_eq!(vm.stream_state(s1).request, Flow::Continued);
    assert!(vm.pending_http_calls().is_empty());
    assert!(
        vm.respond_http_call(c1.token, &[(":status", "200")], b"")
            .is_err(),
        "token already answered"
    );

    // Unknown cluster, missing :path: BadArgument and nothing dispatched. The call
    // response map is unavailable outside on_http_call_response.
    let (s3, a3) = request(
        &mut vm,
        &[(
            "x-probe",
            "callout:nope,callout-no-path:backend,callout-late,callout-body-late",
        )],
    );
    assert_eq!(a3, Action::Continue);
    assert_eq!(result(&vm, s3, "callout"), "BadArgument");
    assert_eq!(result(&vm, s3, "callout-no-path"), "BadArgument");
    assert_eq!(result(&vm, s3, "callout-late"), "2");
    assert_eq!(result(&vm, s3, "callout-body-late"), "Ok(None)");
    assert!(vm.pending_http_calls().is_empty());
}

#[test]
fn metrics_aggregate_across_vms() {
    let world = World::new();
    let mut a = probe(&world, VmConfig::default());
    let mut b = probe(&world, VmConfig::default());
    for _ in 0..3 {
        request(&mut a, &[]);
    }
    for _ in 0..2 {
        request(&mut b, &[]);
    }
    assert_eq!(world.metric("probe.requests"), Some(5));
    assert_eq!(world.metric("wasmcustom.probe.requests"), Some(5));
    assert_eq!(a.metric_definitions(), 4);

    let (s, _) = request(
        &mut a,
        &[("x-probe", "counter:0,gauge:-3,record-histogram:42")],
    );
    assert_eq!(
        result(&a, s, "counter"),
        "Err(BadArgument)",
        "counter increments must be > 0"
    );
    assert_eq!(result(&a, s, "gauge"), "Ok(())");
    let (s, _) = request(
        &mut b,
        &[("x-probe", "gauge:5,record-counter:10,get-metrics")],
    );
    assert_eq!(world.metric("probe.inflight"), Some(2));
    assert_eq!(
        world.metric("probe.requests"),
        Some(17),
        "7 requests + record 10 (record adds to counters)"
    );
    assert_eq!(
        result(&b, s, "get-metrics"),
        "requests=Some(Ok(17)),inflight=Some(Ok(2)),sizes=Some(Err(BadArgument))"
    );
    let (_, _) = request(&mut b, &[("x-probe", "record-gauge:9")]);
    assert_eq!(
        world.metric("probe.inflight"),
        Some(9),
        "record sets a gauge"
    );
    assert_eq!(world.histogram("probe.sizes"), Some(vec![42]));
    assert_eq!(world.metric("probe.undefined"), None);
}

#[test]
fn properties_and_filter_state_round_trip() {
    let world = World::new();
    let mut vm = probe(
        &world,
        VmConfig::default().property(&["xds", "node", "id"], "node-1"),
    );
    let s = vm.new_stream();
    vm.set_properties(s, [("source.address", b"1.2.3.4:5678".to_vec())]);
    vm.set_property(
        s,
        &[
            "metadata",
            "filter_metadata",
            "envoy.filters.http.jwt_authn",
            "payload",
            "sub",
        ],
        "alice",
    );
    vm.set_filter_state(s, "meshwasm.jwt_payload", "from-jwt-filter");
    let ops = [
        "set-prop:meshwasm.test=hello",
        "get-prop:meshwasm.test",
        "get-prop:filter_state/wasm.meshwasm.test",
        "get-prop:source/address",
        "get-prop:metadata/filter_metadata/envoy.filters.http.jwt_authn/payload/sub",
        "get-prop:connection/uri_san_peer_certificate",
        "get-prop:meshwasm.jwt_payload",
        "get-prop:request/path",
        "get-prop:request/url_path",
        "get-prop:request/headers/x-probe-key",
        "get-prop:xds/node/id",
        "get-prop:plugin_name",
    ];
    let spec = ops.join(",");
    let headers = base(&[
        ("x-probe", &spec),
        ("x-probe-key", "kv"),
        (
            "x-probe-response",
            "get-prop:request/path,get-prop-hex:response/code",
        ),
    ]);
    vm.request_headers(s, &headers, true).unwrap();
    let all = vm.request_header_values(s, "x-probe-result");
    let got: Vec<&str> = all.iter().map(|r| r.split_once('=').unwrap().1).collect();
    assert_eq!(
        got,
        [
            "Ok(())",
            "hello",
            "hello",
            "1.2.3.4:5678",
            "alice",
            "none",
            "from-jwt-filter",
            "/p?q=1",
            "/p",
            "kv",
            "node-1",
            "meshwasm"
        ]
    );
    assert_eq!(vm.filter_state(s, "meshwasm.test").unwrap(), b"hello");
    assert_eq!(vm.filter_state(s, "wasm.meshwasm.test").unwrap(), b"hello");
    vm.response_headers(s, &[(":status", "503")], true).unwrap();
    let resp = vm.response_header_values(s, "x-probe-result");
    assert_eq!(
        resp[0], "get-prop=none",
        "request.path is gone once the request continued"
    );
    assert_eq!(
        resp[1],
        format!("get-prop-hex={}", "f701000000000000"),
        "response.code as 8-byte LE i64"
    );
}

#[test]
fn struct_properties_are_walked_like_envoy() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    let s = vm.new_stream();
    let payload =
        serde_json::json!({"iss": "https://issuer", "sub": "alice", "exp": 2.5, "aud": ["a", "b"]});
    vm.set_property(
        s,
        &[
            "metadata",
            "filter_metadata",
            "envoy.filters.http.jwt_authn",
            "payload",
        ],
        host_tests::emulator::abi::encode_struct(&payload),
    );
    let p = "get-prop:metadata/filter_metadata/envoy.filters.http.jwt_authn/payload";
    let spec = format!("{p}/sub,{p}/aud/1,{p}/nope,get-prop-hex:metadata/filter_metadata/envoy.filters.http.jwt_authn/payload/exp");
    vm.request_headers(s, &base(&[("x-probe", &spec)]), true)
        .unwrap();
    let all = vm.request_header_values(s, "x-probe-result");
    let hex: String = 2.5f64
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        all,
        [
            "get-prop=alice".to_string(),
            "get-prop=b".to_string(),
            "get-prop=none".to_string(),
            format!("get-prop-hex={hex}"),
        ]
    );
}

#[test]
fn body_buffering_and_rewrite() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    let s = vm.new_stream();
    let h = base(&[("x-probe", "body-upper")]);
    assert_eq!(vm.request_headers(s, &h, false).unwrap(), Action::Continue);
    assert_eq!(vm.request_body(s, b"abc", false).unwrap(), Action::Pause);
    assert_eq!(vm.stream_state(s).request, Flow::Buffering);
    assert_eq!(vm.request_body(s, b"def", true).unwrap(), Action::Continue);
    assert_eq!(vm.request_body_now(s), b"ABCDEF");
    assert_eq!(vm.filter_state(s, "probe.body").unwrap(), b"abcdef");
}

#[test]
fn randomness_is_seeded() {
    let world = World::new();
    let run = |seed| {
        let mut vm = probe(&world, VmConfig::default().seed(seed));
        let (s, _) = request(&mut vm, &[("x-probe", "random")]);
        result(&vm, s, "random")
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn a_trap_fails_the_vm() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    let s = vm.new_stream();
    let err = vm
        .request_headers(s, &base(&[("x-probe", "panic")]), true)
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("probe asked to panic"),
        "{err:#}"
    );
    assert!(vm.failed().is_some());
    let s2 = vm.try_new_stream();
    assert!(s2.is_err(), "every later call fails");
}

#[test]
fn close_stream_resets() {
    let world = World::new();
    let mut vm = probe(&world, VmConfig::default());
    let (s, a) = request(&mut vm, &[("x-probe", "reset")]);
    assert_eq!(a, Action::Pause);
    assert!(vm.stream_state(s).reset);
}

/// The five filters load, configure and handle one request without trapping.
#[test]
fn meshwasm_filters_load_and_handle_a_request() {
    let world = World::new();
    let cases: [(&str, serde_json::Value); 5] = [
        ("jwt_authn", serde_json::json!({"jwtRules": []})),
        (
            "authz",
            serde_json::json!({"trustDomain": "cluster.local", "trustDomainAliases": [], "policies": []}),
        ),
        (
            "local_ratelimit",
            serde_json::json!({
                "stat_prefix": "http_local_rate_limiter",
                "token_bucket": {"max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "1s"}
            }),
        ),
        ("fault", serde_json::json!({"http": []})),
        (
            "canary",
            serde_json::json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        ),
    ];
    for (name, cfg) in cases {
        let path = host_tests::paths::wasm(name);
        assert!(
            path.exists(),
            "{} missing: run `make build`",
            path.display()
        );
        let mut vm = world
            .load(&path, VmConfig::json(&cfg))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(vm.configured(), "{name} refused {cfg}: {}", vm.log_text());
        let s = vm.new_stream();
        let a = vm
            .request_headers(s, &base(&[]), true)
            .unwrap_or_else(|e| panic!("{name} trapped: {e:#}"));
        if a == Action::Continue {
            vm.response_headers(s, &[(":status", "200")], true)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        vm.finish(s).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(vm.failed().is_none());
    }
}
