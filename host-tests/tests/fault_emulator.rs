//! fault.wasm under the emulator: what real Envoy can't make deterministic —
//! delays resumed at the right tick as the clock advances, the tick timer's
//! life (off while idle, period following the nearest deadline), a client that
//! goes away mid-delay, `maxActiveFaults` across workers sharing data.
// Test code: a failure here is a test failure (the no-panic rule is for code in Envoy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use host_tests::emulator::{Action, Flow, Vm, VmConfig, World};
use serde_json::{json, Value};

const ABORT_BODY: &[u8] = b"fault filter abort";

fn load(world: &World, cfg: Value) -> Vm {
    let vm = world
        .load(
            &host_tests::paths::wasm("fault"),
            VmConfig::json(&cfg).seed(7),
        )
        .expect("fault.wasm loads (run `make build` or build it into $MESHWASM_DIST)");
    assert!(vm.configured(), "config refused: {}", vm.log_text());
    vm
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "svc"),
        (":scheme", "http"),
    ]
}

fn metric(world: &World, name: &str) -> i64 {
    world.metric(&format!("meshwasm.fault.{name}")).unwrap_or(0)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Delay every request under /slow by 100 ms; header-controlled delays on /hdr.
fn delay_cfg() -> Value {
    json!({"http": [
        {"match": [{"uri": {"prefix": "/slow"}}],
         "fault": {"delay": {"fixedDelay": "100ms", "percentage": {"value": 100}}}},
        {"match": [{"uri": {"prefix": "/hdr"}}],
         "fault": {"delay": {"headerDelay": {}, "percentage": {"value": 100}}}}
    ]})
}

#[test]
fn delay_is_resumed_at_its_deadline_tick() {
    let world = World::new();
    let mut vm = load(&world, delay_cfg());
    // Idle: no timer at all.
    let fast = vm.new_stream();
    assert_eq!(
        vm.request_headers(fast, &get("/fast"), true).unwrap(),
        Action::Continue
    );
    assert_eq!(vm.tick_period(), None, "an idle filter must not tick");

    let s = vm.new_stream();
    assert_eq!(
        vm.request_headers(s, &get("/slow"), true).unwrap(),
        Action::Pause
    );
    assert_eq!(vm.stream_state(s).request, Flow::Paused);
    assert_eq!(
        vm.tick_period(),
        Some(ms(100)),
        "tick armed for the deadline"
    );
    assert_eq!(metric(&world, "delays_injected"), 1);
    assert_eq!(metric(&world, "active_faults"), 1);

    // 99 ms: nothing due, nothing fired.
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(99)).unwrap(), 0);
    assert_eq!(vm.stream_state(s).request, Flow::Paused);
    // 100 ms: exactly one tick, the request continues, the timer stops.
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(1)).unwrap(), 1);
    assert_eq!(vm.stream_state(s).request, Flow::Continued);
    assert!(vm.local_reply(s).is_none());
    assert!(
        matches!(vm.tick_period(), None | Some(Duration::ZERO)),
        "{:?}",
        vm.tick_period()
    );
    assert_eq!(
        metric(&world, "active_faults"),
        0,
        "slot released when the delay ends"
    );
    assert_eq!(
        world
            .advance_and_tick(&mut [&mut vm], Duration::from_secs(10))
            .unwrap(),
        0
    );
    vm.response_headers(s, &[(":status", "200")], true).unwrap();
    vm.finish(s).unwrap();
    vm.finish(fast).unwrap();
    assert_eq!(metric(&world, "active_faults"), 0);
}

#[test]
fn tick_period_follows_the_nearest_deadline() {
    let world = World::new();
    let mut vm = load(&world, delay_cfg());
    let a = vm.new_stream();
    assert_eq!(
        vm.request_headers(a, &get("/slow"), true).unwrap(),
        Action::Pause
    ); // due at 100
    world.advance(ms(10));
    let b = vm.new_stream();
    let mut h = get("/hdr");
    h.push(("x-envoy-fault-delay-request", "20"));
    assert_eq!(vm.request_headers(b, &h, true).unwrap(), Action::Pause); // due at 30
    assert_eq!(
        vm.tick_period(),
        Some(ms(20)),
        "re-armed for the sooner deadline"
    );
    let c = vm.new_stream();
    let mut h = get("/hdr");
    h.push(("x-envoy-fault-delay-request", "500"));
    assert_eq!(vm.request_headers(c, &h, true).unwrap(), Action::Pause); // due at 510
    assert_eq!(
        vm.tick_period(),
        Some(ms(20)),
        "a later deadline leaves the timer alone"
    );

    // Ticks fire only at the deadlines: 30, 100, 510.
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(19)).unwrap(), 0);
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(1)).unwrap(), 1);
    assert_eq!(vm.stream_state(b).request, Flow::Continued);
    assert_eq!(vm.stream_state(a).request, Flow::Paused);
    assert_eq!(vm.tick_period(), Some(ms(70)));
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(70)).unwrap(), 1);
    assert_eq!(vm.stream_state(a).request, Flow::Continued);
    assert_eq!(vm.stream_state(c).request, Flow::Paused);
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(409)).unwrap(), 0);
    assert_eq!(vm.stream_state(c).request, Flow::Paused);
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(1)).unwrap(), 1);
    assert_eq!(vm.stream_state(c).request, Flow::Continued);
    assert!(matches!(vm.tick_period(), None | Some(Duration::ZERO)));
    assert_eq!(metric(&world, "delays_injected"), 3);
    assert_eq!(metric(&world, "active_faults"), 0);
}

#[test]
fn many_concurrent_delays_resume_together_with_one_timer() {
    let world = World::new();
    let mut vm = load(&world, delay_cfg());
    let streams: Vec<_> = (0..200)
        .map(|_| {
            let s = vm.new_stream();
            assert_eq!(
                vm.request_headers(s, &get("/slow"), true).unwrap(),
                Action::Pause
            );
            s
        })
        .collect();
    assert_eq!(metric(&world, "active_faults"), 200);
    // Undelayed requests on the same worker flow while those wait.
    let f = vm.new_stream();
    assert_eq!(
        vm.request_headers(f, &get("/other"), true).unwrap(),
        Action::Continue
    );
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(100)).unwrap(), 1);
    for s in &streams {
        assert_eq!(vm.stream_state(*s).request, Flow::Continued);
    }
    assert_eq!(metric(&world, "active_faults"), 0);
}

#[test]
fn client_gone_during_delay_leaves_nothing_behind() {
    let world = World::new();
    let mut vm = load(&world, delay_cfg());
    let s = vm.new_stream();
    assert_eq!(
        vm.request_headers(s, &get("/slow"), true).unwrap(),
        Action::Pause
    );
    let other = vm.new_stream();
    let mut h = get("/hdr");
    h.push(("x-envoy-fault-delay-request", "300"));
    assert_eq!(vm.request_headers(other, &h, true).unwrap(), Action::Pause);
    assert_eq!(metric(&world, "active_faults"), 2);

    // The first client resets at 40 ms: Envoy destroys the stream (on_log,
    // on_done, on_delete). Its slot comes back at once; the timer keeps running
    // for the other delay only.
    world.advance(ms(40));
    vm.finish(s).unwrap();
    assert_eq!(metric(&world, "active_faults"), 1);
    assert_eq!(
        world.advance_and_tick(&mut [&mut vm], ms(60)).unwrap(),
        1,
        "one tick at 100 ms"
    );
    assert!(vm.failed().is_none(), "{:?}", vm.failed());
    // The second goes away too: the timer stops, no tick ever fires again.
    vm.finish(other).unwrap();
    assert!(
        matches!(vm.tick_period(), None | Some(Duration::ZERO)),
        "{:?}",
        vm.tick_period()
    );
    assert_eq!(
        world
            .advance_and_tick(&mut [&mut vm], Duration::from_secs(5))
            .unwrap(),
        0
    );
    assert_eq!(metric(&world, "active_faults"), 0);
    assert!(vm.failed().is_none());
    // The worker still serves.
    let n = vm.new_stream();
    assert_eq!(
        vm.request_headers(n, &get("/slow"), true).unwrap(),
        Action::Pause
    );
    world.advance_and_tick(&mut [&mut vm], ms(100)).unwrap();
    assert_eq!(vm.stream_state(n).request, Flow::Continued);
}

#[test]
fn abort_after_delay_and_grpc_abort() {
    let world = World::new();
    let mut vm = load(
        &world,
        json!({"http": [
            {"match": [{"uri": {"prefix": "/grpc"}}],
             "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}},
            {"fault": {"delay": {"fixedDelay": "50ms", "percentage": {"value": 100}},
                       "abort": {"httpStatus": 503, "percentage": {"value": 100}}}}
        ]}),
    );
    let s = vm.new_stream();
    assert_eq!(
        vm.request_headers(s, &get("/x"), true).unwrap(),
        Action::Pause
    );
    assert!(
        vm.local_reply(s).is_none(),
        "no abort before the delay is over"
    );
    assert_eq!(world.advance_and_tick(&mut [&mut vm], ms(50)).unwrap(), 1);
    let r = vm.local_reply(s).expect("aborted after the delay");
    assert_eq!((r.status, r.body.as_slice()), (503, ABORT_BODY));
    assert_eq!(r.grpc_status, None);
    assert_eq!(metric(&world, "delays_injected"), 1);
    assert_eq!(metric(&world, "aborts_injected"), 1);
    assert_eq!(
        metric(&world, "active_faults"),
        1,
        "held until the stream ends"
    );
    vm.finish(s).unwrap();
    assert_eq!(metric(&world, "active_faults"), 0);

    let g = vm.new_stream();
    let mut h = get("/grpc.Svc/M");
    h.push(("content-type", "application/grpc"));
    assert_eq!(vm.request_headers(g, &h, true).unwrap(), Action::Pause);
    let r = vm.local_reply(g).expect("gRPC abort");
    assert_eq!((r.status, r.grpc_status), (200, Some(14)));
    assert_eq!(r.body.as_slice(), ABORT_BODY);
    assert_eq!(vm.response_header(g, "grpc-status").as_deref(), Some("14"));
    vm.finish(g).unwrap();
}

#[test]
fn max_active_faults_spans_workers() {
    // Two VMs over one shared-data store stand for two workers of one Envoy.
    let world = World::new();
    let cfg = json!({"maxActiveFaults": 1, "http": [
        {"fault": {"delay": {"fixedDelay": "100ms", "percentage": {"value": 100}}}}]});
    let mut w1 = load(&world, cfg.clone());
    let mut w2 = load(&world, cfg);
    let a = w1.new_stream();
    assert_eq!(
        w1.request_headers(a, &get("/"), true).unwrap(),
        Action::Pause
    );
    let b = w2.new_stream();
    assert_eq!(
        w2.request_headers(b, &get("/"), true).unwrap(),
        Action::Continue,
        "overflow: not delayed"
    );
    assert_eq!(metric(&world, "faults_overflow"), 1);
    assert_eq!(w2.tick_period(), None);
    world
        .advance_and_tick(&mut [&mut w1, &mut w2], ms(100))
        .unwrap();
    assert_eq!(w1.stream_state(a).request, Flow::Continued);
    // The slot is free again, for the other worker too.
    let c = w2.new_stream();
    assert_eq!(
        w2.request_headers(c, &get("/"), true).unwrap(),
        Action::Pause
    );
    assert_eq!(metric(&world, "faults_overflow"), 1);
    assert_eq!(metric(&world, "active_faults"), 1);
    // The delayed client leaves: the slot comes back.
    w2.finish(c).unwrap();
    let d = w1.new_stream();
    assert_eq!(
        w1.request_headers(d, &get("/"), true).unwrap(),
        Action::Pause
    );
}

#[test]
fn bad_config_is_refused_with_one_line() {
    let world = World::new();
    for (cfg, want) in [
        (
            json!({"http": [{"fault": {"delay": {"fixedDelay": "0s", "percentage": {"value": 1}}}}]}),
            "fault: http[0].fault.delay.fixedDelay: duration must be greater than 1ms",
        ),
        (
            json!({"http": [{"fault": {"abort": {"http2Error": "X"}}}]}),
            "fault: http[0].fault.abort.http2Error: HTTP/2 abort fault injection not supported yet",
        ),
        (
            json!({"http": [{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 101}}}}]}),
            "fault: http[0].fault.abort.percentage.value: percentage 101 is neither 0.0, nor in range [0.0001, 100.0]",
        ),
    ] {
        let vm = world.load(&host_tests::paths::wasm("fault"), VmConfig::json(&cfg)).unwrap();
        assert!(!vm.configured(), "{cfg}");
        let lines: Vec<_> = vm.logs().iter().filter(|l| l.message.starts_with("fault:")).collect();
        assert_eq!(lines.len(), 1, "{:?}", vm.logs());
        assert_eq!(lines[0].message, want);
    }
}
