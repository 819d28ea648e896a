//! authz CUSTOM over gRPC in the proxy-wasm emulator: what real Envoy cannot
//! script exactly — two checks in flight answered out of order, an answer
//! for a token the filter did not dispatch, a stream gone before its answer,
//! and the call's failure statuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use host_tests::emulator::{Action, Flow, StreamId, Vm, VmConfig, World};
use host_tests::grpc_authz::{check_response, CheckRequest, CheckResponse, OkHttpResponse};
use prost::Message;
use serde_json::json;

fn load(world: &World, fail_open: bool) -> Vm {
    let config = json!({
        "extensionProviders": [{"name": "ext", "envoyExtAuthzGrpc": {
            "service": "opa.foo.svc.cluster.local", "port": 9191, "cluster": "ext-authz",
            "timeout": "0.25s", "failOpen": fail_open, "statusOnError": "503"}}],
        "policies": [{"metadata": {"name": "ext", "namespace": "foo"},
            "spec": {"action": "CUSTOM", "provider": {"name": "ext"},
                "rules": [{"to": [{"operation": {"paths": ["/api*"]}}]}]}}]});
    let vm = world
        .load(
            &host_tests::paths::wasm("authz"),
            VmConfig::json(&config).cluster("ext-authz"),
        )
        .expect("load authz.wasm");
    assert!(vm.configured(), "configuration refused: {}", vm.log_text());
    vm
}

fn request(vm: &mut Vm, path: &str) -> (StreamId, Action) {
    let s = vm.new_stream();
    vm.set_property(s, &["source", "address"], b"10.0.0.7:41000".to_vec());
    let a = vm
        .request_headers(
            s,
            &[
                (":method", "GET"),
                (":path", path),
                (":authority", "example.com"),
                (":scheme", "http"),
            ],
            true,
        )
        .unwrap();
    (s, a)
}

fn answer(code: i32) -> Vec<u8> {
    CheckResponse {
        status: Some(envoy_types::pb::google::rpc::Status {
            code,
            ..Default::default()
        }),
        http_response: (code == 0)
            .then(|| check_response::HttpResponse::OkResponse(OkHttpResponse::default())),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn checks_are_answered_to_their_own_stream_by_token() {
    let world = World::new();
    let mut vm = load(&world, false);
    let (s1, a1) = request(&mut vm, "/api/one");
    let (s2, a2) = request(&mut vm, "/api/two");
    assert_eq!((a1, a2), (Action::Pause, Action::Pause));
    let calls = vm.pending_grpc_calls();
    assert_eq!(calls.len(), 2);
    let c1 = calls.iter().find(|c| c.context_id == s1.0).unwrap().clone();
    let c2 = calls.iter().find(|c| c.context_id == s2.0).unwrap().clone();
    assert_eq!(
        (c1.service.as_str(), c1.method.as_str()),
        ("envoy.service.auth.v3.Authorization", "Check")
    );
    assert_eq!(c1.timeout.as_millis(), 250);
    let sent = CheckRequest::decode(c1.message.as_slice()).unwrap();
    let http = sent.attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(http.path, "/api/one");

    // A token nobody dispatched, then the second stream's own denial.
    vm.deliver_grpc_message(c2.token + 100, &answer(0)).unwrap();
    assert_eq!(vm.stream_state(s1).request, Flow::Paused);
    assert_eq!(vm.stream_state(s2).request, Flow::Paused);
    vm.respond_grpc_call(c2.token, &answer(7)).unwrap();
    assert_eq!(vm.local_reply(s2).map(|r| r.status), Some(403));
    assert_eq!(vm.stream_state(s1).request, Flow::Paused);
    // The same token again: already answered, never a verdict for stream 1.
    vm.deliver_grpc_message(c2.token, &answer(0)).unwrap();
    assert_eq!(vm.stream_state(s1).request, Flow::Paused);

    vm.respond_grpc_call(c1.token, &answer(0)).unwrap();
    assert_eq!(vm.stream_state(s1).request, Flow::Continued);
    assert!(vm.local_reply(s1).is_none());
}

#[test]
fn failed_calls_take_status_on_error_or_fail_open() {
    let world = World::new();
    let mut closed = load(&world, false);
    let mut open = load(&world, true);
    // DEADLINE_EXCEEDED (the call's timeout), UNAVAILABLE (no server), garbage.
    for (vm, want) in [(&mut closed, Some(503)), (&mut open, None)] {
        for status in [4, 14] {
            let (s, _) = request(vm, "/api/x");
            let token = vm.pending_grpc_calls()[0].token;
            vm.close_grpc_call(token, status).unwrap();
            assert_eq!(vm.local_reply(s).map(|r| r.status), want, "status {status}");
        }
        let (s, _) = request(vm, "/api/x");
        let token = vm.pending_grpc_calls()[0].token;
        vm.respond_grpc_call(token, &[0xff, 0xff, 0x0f]).unwrap();
        assert_eq!(vm.local_reply(s).map(|r| r.status), want, "garbage");
        assert!(vm.pending_grpc_calls().is_empty());
    }
}

#[test]
fn a_stream_gone_before_its_answer_is_left_alone() {
    let world = World::new();
    let mut vm = load(&world, false);
    let (s, a) = request(&mut vm, "/api/x");
    assert_eq!(a, Action::Pause);
    let token = vm.pending_grpc_calls()[0].token;
    vm.finish(s).unwrap();
    // A trap would fail this call and every later one.
    vm.respond_grpc_call(token, &answer(0)).unwrap();
    // The VM still serves the next request.
    let (s2, _) = request(&mut vm, "/api/y");
    let token = vm.pending_grpc_calls()[0].token;
    vm.respond_grpc_call(token, &answer(0)).unwrap();
    assert_eq!(vm.stream_state(s2).request, Flow::Continued);
    // A path no CUSTOM rule names makes no call.
    let (_, a) = request(&mut vm, "/public");
    assert_eq!(a, Action::Continue);
    assert!(vm.pending_grpc_calls().is_empty());
}
