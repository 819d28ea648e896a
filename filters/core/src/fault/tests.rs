use super::*;
use crate::host::{CasMismatch, SplitMix64};
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;

/// Returns the scripted values in order (then panics: a test that draws more
/// often than it expects is wrong).
struct Script(Vec<u64>);

impl RandomSource for Script {
    fn next_u64(&mut self) -> u64 {
        assert!(!self.0.is_empty(), "unexpected extra draw");
        self.0.remove(0)
    }
}

fn policy(v: serde_json::Value) -> FaultPolicy {
    FaultPolicy::from_json(v.to_string().as_bytes()).unwrap()
}

fn err(v: serde_json::Value) -> String {
    FaultPolicy::from_json(v.to_string().as_bytes())
        .unwrap_err()
        .to_string()
}

fn req(path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":method".to_string(), b"GET".to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        (":authority".to_string(), b"svc".to_vec()),
    ];
    for (k, v) in extra {
        h.push((k.to_string(), v.as_bytes().to_vec()));
    }
    h
}

fn headers(extra: &[(&str, &str)]) -> FaultHeaders {
    let h = req("/", extra);
    FaultHeaders::from_request(&RequestView::new(&h))
}

#[test]
fn percentages_truncate_like_istiod() {
    for (value, want) in [
        (10.0, 100_000u32),
        (100.0, 1_000_000),
        (0.0001, 1),
        (0.1, 1000),
        (0.0, 0),
        (12.5, 125_000),
    ] {
        let p = policy(
            json!({"http": [{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": value}}}}]}),
        );
        assert_eq!(
            p.fault(0).unwrap().abort.unwrap().per_million,
            want,
            "{value}"
        );
    }
    // Go's uint32(0.57 * 10000) truncates 5699.999999999999: so do we.
    let p = policy(
        json!({"http": [{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 0.57}}}}]}),
    );
    assert_eq!(p.fault(0).unwrap().abort.unwrap().per_million, 5_699);
    // No percentage means never; the deprecated int percent is used for delays.
    let p = policy(
        json!({"http": [{"fault": {"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 500}}}]}),
    );
    assert_eq!(p.fault(0).unwrap().delay.unwrap().per_million, 0);
    assert_eq!(p.fault(0).unwrap().abort.unwrap().per_million, 0);
    let p = policy(json!({"http": [{"fault": {"delay": {"fixedDelay": "1s", "percent": 7}}}]}));
    assert_eq!(p.fault(0).unwrap().delay.unwrap().per_million, 70_000);
}

#[test]
fn config_validation_as_istio() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"http": [{"fault": {"delay": {"fixedDelay": "0.5ms", "percentage": {"value": 1}}}}]}),
            "http[0].fault.delay.fixedDelay: duration must be greater than 1ms",
        ),
        (
            json!({"http": [{"fault": {"delay": {"fixedDelay": "1500us"}}}]}),
            "http[0].fault.delay.fixedDelay: only durations to ms precision are supported",
        ),
        (
            json!({"http": [{"fault": {"delay": {"exponentialDelay": "1s"}}}]}),
            "http[0].fault.delay.exponentialDelay: exponentialDelay not supported yet",
        ),
        (
            json!({"http": [{}, {"fault": {"abort": {"httpStatus": 600, "percentage": {"value": 1}}}}]}),
            "http[1].fault.abort.httpStatus: HTTP status 600 is not in range 200-599",
        ),
        (
            json!({"http": [{"fault": {"abort": {"httpStatus": 199}}}]}),
            "http[0].fault.abort.httpStatus: HTTP status 199 is not in range 200-599",
        ),
        (
            json!({"http": [{"fault": {"abort": {"http2Error": "REFUSED_STREAM"}}}]}),
            "http[0].fault.abort.http2Error: HTTP/2 abort fault injection not supported yet",
        ),
        (
            json!({"http": [{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 100.5}}}}]}),
            "http[0].fault.abort.percentage.value: percentage 100.5 is neither 0.0, nor in range [0.0001, 100.0]",
        ),
        (
            json!({"http": [{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": -1}}}}]}),
            "http[0].fault.abort.percentage.value: percentage -1 is neither 0.0, nor in range [0.0001, 100.0]",
        ),
        (
            json!({"http": [{"fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 0.00001}}}}]}),
            "http[0].fault.delay.percentage.value: percentage 0.00001 is neither 0.0, nor in range [0.0001, 100.0]",
        ),
        (
            json!({"http": [{"fault": {}}]}),
            "http[0].fault: HTTP fault injection must have an abort and/or a delay",
        ),
        (
            json!({"http": [{"fault": {"abort": {"httpStatus": 503, "grpcStatus": "UNAVAILABLE"}}}]}),
            "http[0].fault.abort: only one of httpStatus, grpcStatus, headerAbort may be set",
        ),
        (
            json!({"http": [{"fault": {"abort": {"percentage": {"value": 5}}}}]}),
            "http[0].fault.abort: abort needs httpStatus or grpcStatus (or the headerAbort extension)",
        ),
        (
            json!({"http": [{"fault": {"delay": {"percentage": {"value": 5}}}}]}),
            "http[0].fault.delay: delay needs fixedDelay (or the headerDelay extension)",
        ),
        (
            json!({"http": [{"fault": {"delay": {"fixedDelay": "5"}}}]}),
            "http[0].fault.delay.fixedDelay: invalid duration \"5\": expected a number with a unit (s, ms, m, h), e.g. \"5s\"",
        ),
        (
            json!({"http": [{"match": [{"headers": {"x": {"regex": "("}}}], "fault": {"delay": {"fixedDelay": "1s"}}}]}),
            "http[0].match[0].headers[x].regex: invalid regex \"(\"",
        ),
    ];
    for (cfg, want) in cases {
        let got = err(cfg.clone());
        assert!(got.starts_with(want), "{cfg}\n got: {got}\nwant: {want}");
    }
    assert!(
        err(json!({"http": [{"fault": {"abort": {"grpcStatus": "NOPE"}}}]}))
            .starts_with("http[0].fault.abort.grpcStatus: gRPC status \"NOPE\" is not supported")
    );
    // Unknown fields anywhere are errors, with their path.
    assert!(
        err(json!({"http": [{"fault": {"delay": {"fixedDelay": "1s", "percentag": {}}}}]}))
            .starts_with("http[0].fault.delay.percentag: unknown field")
    );
    assert!(err(json!({"http": [{"route": []}]})).starts_with("http[0].route: unknown field"));
    assert!(err(json!({"htp": []})).starts_with("htp: unknown field"));
    // Accepted: both faults, a gRPC status by name, the extensions.
    let p = policy(json!({
        "maxActiveFaults": 3,
        "http": [{"name": "r", "fault": {
            "delay": {"fixedDelay": "50ms", "percentage": {"value": 100}},
            "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}},
          {"fault": {"delay": {"headerDelay": {}, "percentage": {"value": 100}},
                     "abort": {"headerAbort": {}, "percentage": {"value": 100}}}}]
    }));
    assert_eq!(p.max_active_faults, Some(3));
    let f = p.fault(0).unwrap();
    assert_eq!(
        f.delay.unwrap().source,
        DelaySource::Fixed(Duration::from_millis(50))
    );
    assert_eq!(f.abort.unwrap().kind, AbortKind::Grpc(14));
    let f = p.fault(1).unwrap();
    assert_eq!(f.delay.unwrap().source, DelaySource::Header);
    assert_eq!(f.abort.unwrap().kind, AbortKind::Header);
}

#[test]
fn first_matching_route_decides() {
    let p = policy(json!({"http": [
        {"match": [{"uri": {"prefix": "/healthz"}}]},
        {"match": [{"headers": {"x-chaos": {"exact": "1"}}}, {"uri": {"prefix": "/api"}}],
         "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 100}}}},
        {"fault": {"abort": {"httpStatus": 500, "percentage": {"value": 100}}}}
    ]}));
    let kind = |path: &str, extra: &[(&str, &str)]| {
        let h = req(path, extra);
        p.select(&RequestView::new(&h))
            .map(|(i, f)| (i, f.abort.unwrap().kind))
    };
    // /healthz matches an entry without fault: no fault, search stops.
    assert_eq!(kind("/healthz", &[("x-chaos", "1")]), None);
    assert_eq!(kind("/api/x", &[]), Some((1, AbortKind::Http(503))));
    assert_eq!(
        kind("/other", &[("x-chaos", "1")]),
        Some((1, AbortKind::Http(503)))
    );
    assert_eq!(kind("/other", &[]), Some((2, AbortKind::Http(500))));
    let p = policy(
        json!({"http": [{"match": [{"uri": {"exact": "/a"}}], "fault": {"delay": {"fixedDelay": "1s"}}}]}),
    );
    let h = req("/b", &[]);
    assert!(p.select(&RequestView::new(&h)).is_none());
    assert!(policy(json!({"http": [{}]})).is_inert());
}

#[test]
fn per_million_draw_boundaries() {
    // draw: random % 1e6 < numerator
    for (random, numerator, want) in [
        (99_999u64, 100_000u32, true),
        (100_000, 100_000, false),
        (1_000_000 + 5, 6, true),
        (0, 0, false),
        (999_999, 1_000_000, true),
        (u64::MAX, 1_000_000, true),
        (0, 1, true),
        (1, 1, false),
    ] {
        assert_eq!(
            draw(numerator, &mut Script(vec![random])),
            want,
            "{random} {numerator}"
        );
    }
}

#[test]
fn seeded_ten_percent_lands_in_the_binomial_interval() {
    // 10% over 100k seeded draws: mean 10k, sd ~95; 99.9% ≈ ±3.29 sd.
    let mut rng = SplitMix64::new(42);
    let n = (0..100_000).filter(|_| draw(100_000, &mut rng)).count() as f64;
    assert!((n - 10_000.0).abs() < 3.29 * 94.87, "{n}");
    // Deterministic for a seed.
    let a: Vec<bool> = (0..64)
        .map(|_| draw(500_000, &mut SplitMix64::new(7)))
        .collect();
    let b: Vec<bool> = (0..64)
        .map(|_| draw(500_000, &mut SplitMix64::new(7)))
        .collect();
    assert_eq!(a, b);
}

fn fault(v: serde_json::Value) -> Fault {
    policy(json!({"http": [{"fault": v}]}))
        .fault(0)
        .unwrap()
        .clone()
}

const YES: u64 = 0; // draws below any non-zero numerator
const NO: u64 = 999_999; // draws above any numerator below 100%

#[test]
fn decide_table() {
    let both = fault(json!({
        "delay": {"fixedDelay": "50ms", "percentage": {"value": 50}},
        "abort": {"httpStatus": 503, "percentage": {"value": 50}}}));
    let d50 = Duration::from_millis(50);
    let h = FaultHeaders::default();
    let free = &mut || true;
    // (draws, expected decision): delay is drawn first, then abort.
    let table: Vec<(Vec<u64>, Decision)> = vec![
        (vec![YES], Decision::Delay(d50)),
        (vec![NO, YES], Decision::Abort(AbortReply::Http(503))),
        (vec![NO, NO], Decision::Continue),
    ];
    for (draws, want) in table {
        assert_eq!(
            decide(&both, &h, &mut Script(draws.clone()), free),
            want,
            "{draws:?}"
        );
    }
    // After the delay the abort is an independent draw.
    assert_eq!(
        after_delay(&both, &h, &mut Script(vec![YES])),
        Some(AbortReply::Http(503))
    );
    assert_eq!(after_delay(&both, &h, &mut Script(vec![NO])), None);

    // Overflow: the delay can't start, so the abort is tried (and overflows too).
    let mut tries = 0;
    let d = decide(&both, &h, &mut Script(vec![YES, YES]), &mut || {
        tries += 1;
        false
    });
    assert_eq!((d, tries), (Decision::Continue, 2));
    // Overflow on the delay only: the abort takes the slot.
    let mut slots = vec![false, true];
    let d = decide(&both, &h, &mut Script(vec![YES, YES]), &mut || {
        slots.remove(0)
    });
    assert_eq!(d, Decision::Abort(AbortReply::Http(503)));

    // gRPC abort: HTTP 200 + grpc-status.
    let g = fault(json!({"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}));
    assert_eq!(
        decide(&g, &h, &mut Script(vec![NO]), free),
        Decision::Abort(AbortReply::Grpc(14))
    );
    // 0% never draws true, 100% always.
    let never = fault(json!({"abort": {"httpStatus": 500, "percentage": {"value": 0}}}));
    assert_eq!(
        decide(&never, &h, &mut Script(vec![YES]), free),
        Decision::Continue
    );
    let always = fault(json!({"delay": {"fixedDelay": "2s", "percentage": {"value": 100}}}));
    assert_eq!(
        decide(&always, &h, &mut Script(vec![NO]), free),
        Decision::Delay(Duration::from_secs(2))
    );
}

#[test]
fn client_headers_do_nothing_unless_enabled() {
    let fixed = fault(json!({
        "delay": {"fixedDelay": "10ms", "percentage": {"value": 100}},
        "abort": {"httpStatus": 503, "percentage": {"value": 0}}}));
    let h = headers(&[
        ("x-envoy-fault-abort-request", "500"),
        ("x-envoy-fault-abort-request-percentage", "1000000"),
        ("x-envoy-fault-delay-request", "5000"),
        ("x-envoy-fault-delay-request-percentage", "0"),
    ]);
    assert_eq!(
        decide(&fixed, &h, &mut Script(vec![NO]), &mut || true),
        Decision::Delay(Duration::from_millis(10))
    );
    assert_eq!(after_delay(&fixed, &h, &mut Script(vec![YES])), None);
}

#[test]
fn header_controlled_faults() {
    let hf = fault(json!({
        "delay": {"headerDelay": {}, "percentage": {"value": 50}},
        "abort": {"headerAbort": {}, "percentage": {"value": 50}}}));
    let at = |extra: &[(&str, &str)], draws: Vec<u64>| {
        decide(&hf, &headers(extra), &mut Script(draws), &mut || true)
    };
    let ms = Duration::from_millis;
    // Delay from the header; the configured percentage caps the header's.
    assert_eq!(
        at(&[("x-envoy-fault-delay-request", "200")], vec![YES]),
        Decision::Delay(ms(200))
    );
    assert_eq!(
        at(&[("x-envoy-fault-delay-request", " +200 ")], vec![YES]),
        Decision::Delay(ms(200))
    );
    // Header percentage 600000 is capped to the configured 500000.
    assert_eq!(
        at(
            &[
                ("x-envoy-fault-delay-request", "200"),
                ("x-envoy-fault-delay-request-percentage", "600000")
            ],
            vec![499_999]
        ),
        Decision::Delay(ms(200))
    );
    assert_eq!(
        at(
            &[
                ("x-envoy-fault-delay-request", "200"),
                ("x-envoy-fault-delay-request-percentage", "600000")
            ],
            vec![500_000, NO]
        ),
        Decision::Continue
    );
    assert_eq!(
        at(
            &[
                ("x-envoy-fault-delay-request", "200"),
                ("x-envoy-fault-delay-request-percentage", "10")
            ],
            vec![10, NO]
        ),
        Decision::Continue
    );
    // Invalid percentage header: the configured one.
    assert_eq!(
        at(
            &[
                ("x-envoy-fault-delay-request", "1"),
                ("x-envoy-fault-delay-request-percentage", "x")
            ],
            vec![499_999]
        ),
        Decision::Delay(ms(1))
    );
    // Missing, zero, negative or junk delay header: no delay (the draw still happens).
    for v in ["0", "-5", "abc", ""] {
        assert_eq!(
            at(&[("x-envoy-fault-delay-request", v)], vec![YES, NO]),
            Decision::Continue,
            "{v:?}"
        );
    }
    assert_eq!(at(&[], vec![YES, NO]), Decision::Continue);
    // Abort from the header, 200..599 only; else the gRPC header (HTTP 200).
    assert_eq!(
        at(&[("x-envoy-fault-abort-request", "429")], vec![NO, YES]),
        Decision::Abort(AbortReply::Http(429))
    );
    for bad in ["600", "199", "5xx", "-503"] {
        assert_eq!(
            at(&[("x-envoy-fault-abort-request", bad)], vec![NO, YES]),
            Decision::Continue,
            "{bad}"
        );
        assert_eq!(
            at(
                &[
                    ("x-envoy-fault-abort-request", bad),
                    ("x-envoy-fault-abort-grpc-request", "14")
                ],
                vec![NO, YES]
            ),
            Decision::Abort(AbortReply::Grpc(14)),
            "{bad}"
        );
    }
    assert_eq!(
        at(
            &[
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-fault-abort-grpc-request", "14")
            ],
            vec![NO, YES]
        ),
        Decision::Abort(AbortReply::Http(503))
    );
    // Only the first value of a repeated header counts.
    assert_eq!(
        at(
            &[
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-fault-abort-request", "404")
            ],
            vec![NO, YES]
        ),
        Decision::Abort(AbortReply::Http(503))
    );
}

/// A shared store with CAS, as proxy-wasm shared data; `races` makes the next
/// N conditional writes fail as if another worker wrote first.
#[derive(Default)]
struct Store {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    cas: RefCell<u32>,
    races: RefCell<u32>,
}

impl SharedStore for Store {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if *self.races.borrow() > 0 {
            *self.races.borrow_mut() -= 1;
            return Err(CasMismatch);
        }
        let mut map = self.map.borrow_mut();
        if let (Some((_, stored)), Some(c)) = (map.get(key), cas) {
            if c != 0 && c != *stored {
                return Err(CasMismatch);
            }
        }
        *self.cas.borrow_mut() += 1;
        map.insert(key.to_string(), (value.to_vec(), *self.cas.borrow()));
        Ok(())
    }
}

#[test]
fn shared_active_fault_slots() {
    let s = Store::default();
    let k = "meshwasm.fault.active";
    assert_eq!(shared_try_acquire(&s, k, 2), Acquire::Acquired);
    assert_eq!(shared_try_acquire(&s, k, 2), Acquire::Acquired);
    assert_eq!(shared_try_acquire(&s, k, 2), Acquire::Overflow);
    shared_release(&s, k);
    *s.races.borrow_mut() = 3; // lose three races, then win
    assert_eq!(shared_try_acquire(&s, k, 2), Acquire::Acquired);
    assert_eq!(shared_try_acquire(&s, k, 2), Acquire::Overflow);
    // max 0: every fault overflows.
    assert_eq!(shared_try_acquire(&s, "other", 0), Acquire::Overflow);
    // Releases never go below zero.
    for _ in 0..5 {
        shared_release(&s, k);
    }
    assert_eq!(decode_count(s.get(k).0), 0);
    // A store that always loses the race: the fault is skipped.
    *s.races.borrow_mut() = 1000;
    assert_eq!(shared_try_acquire(&s, k, 5), Acquire::Overflow);
}

#[test]
fn delay_queue_tick_follows_the_nearest_deadline() {
    let ms = |n: u64| n * 1_000_000;
    let mut q = DelayQueue::new();
    assert_eq!(q.period_ms(), 0);
    // First delay arms the timer for exactly its length.
    assert_eq!(q.insert(1, ms(0), Duration::from_millis(500)), Some(500));
    // A later deadline does not touch the timer; a sooner one re-arms it.
    assert_eq!(q.insert(2, ms(10), Duration::from_millis(600)), None);
    assert_eq!(q.insert(3, ms(20), Duration::from_millis(50)), Some(50));
    // Tick at 70ms: #3 is due; next nearest is #1 at 500 → 430ms.
    assert_eq!(q.due(ms(70)), (vec![3], Some(430)));
    // The tick armed for #1 resumes it even when it comes a little early (Envoy
    // arms timers from the loop's cached time; its native fault timer is as
    // early). #2 at 610: 112 ms.
    assert_eq!(q.due(ms(498) + 1), (vec![1], Some(112)));
    // A deadline within 2 ms of a tick is due on it; one further is not.
    assert_eq!(q.insert(4, ms(500), Duration::from_micros(110_500)), None);
    assert_eq!(q.due(ms(610)), (vec![2, 4], Some(0)));
    assert!(q.is_empty());
    assert_eq!(q.insert(5, ms(1000), Duration::from_millis(10)), Some(10));
    assert_eq!(q.insert(6, ms(1000), Duration::from_micros(12_500)), None);
    assert_eq!(q.due(ms(1010)), (vec![5], Some(3)));
    assert_eq!(q.due(ms(1012) + 500_000), (vec![6], Some(0)));
    // A tick that comes early comes early for its neighbours too: those within
    // 2 ms of the deadline it was armed for are due with it (Envoy's
    // native timers, armed from the same stale loop time, would fire as early).
    assert_eq!(
        q.insert(30, ms(3000), Duration::from_millis(100)),
        Some(100)
    );
    assert_eq!(
        q.insert(31, ms(3000) + 500_000, Duration::from_millis(100)),
        None
    );
    assert_eq!(
        q.insert(32, ms(3002) + 500_000, Duration::from_millis(100)),
        None
    );
    assert_eq!(q.due(ms(3097)), (vec![30, 31], Some(6)));
    assert_eq!(q.due(ms(3102) + 500_000), (vec![32], Some(0)));
    // Only a deadline before the armed one re-arms the timer: re-arming for a
    // later one would postpone the request the timer is armed for.
    assert_eq!(q.insert(7, ms(2000), Duration::from_millis(500)), Some(500));
    assert_eq!(q.insert(8, ms(2480), Duration::from_millis(30)), None);
    assert_eq!(q.insert(9, ms(2495), Duration::from_millis(2)), Some(2));
    assert_eq!(q.due(ms(2497)), (vec![9], Some(3)));
    assert_eq!(q.due(ms(2500)), (vec![7], Some(10)));
    assert_eq!(q.due(ms(2510)), (vec![8], Some(0)));
    // Periods round to the nearest millisecond (at least 1).
    assert_eq!(q.insert(10, ms(0), Duration::from_micros(50_400)), Some(50));
    assert_eq!(q.remove(10), Some(0));
    assert_eq!(q.insert(11, ms(0), Duration::from_micros(50_600)), Some(51));
    assert_eq!(q.remove(11), Some(0));
    assert_eq!(q.insert(12, ms(0), Duration::from_micros(200)), Some(1));
    assert_eq!(q.remove(12), Some(0));
    // A request that goes away: gone from the queue, timer off when empty.
    assert_eq!(
        q.insert(14, ms(1000), Duration::from_millis(100)),
        Some(100)
    );
    assert_eq!(q.insert(15, ms(1000), Duration::from_millis(200)), None);
    assert_eq!(q.remove(14), None);
    assert!(!q.contains(14));
    assert_eq!(q.remove(14), None);
    assert_eq!(q.remove(15), Some(0));
    assert_eq!(q.period_ms(), 0);
    // The clock going back does not strand a request.
    q.insert(16, ms(5000), Duration::from_secs(3600));
    assert_eq!(q.due(ms(4000)), (vec![16], Some(0)));
    // Same instant, many requests: all due together.
    for id in 20..30 {
        q.insert(id, ms(0), Duration::from_millis(5));
    }
    let (due, p) = q.due(ms(5));
    assert_eq!((due.len(), p), (10, Some(0)));
}

#[test]
fn only_header_controlled_faults_read_the_fault_headers() {
    let p = policy(json!({"http": [
        {"fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 1}}}},
        {"fault": {"delay": {"headerDelay": {}, "percentage": {"value": 1}}}},
        {"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 1}}}},
        {"fault": {"abort": {"headerAbort": {}, "percentage": {"value": 1}}}}
    ]}));
    let reads: Vec<bool> = (0..4)
        .map(|i| p.fault(i).unwrap().reads_headers())
        .collect();
    assert_eq!(reads, [false, true, false, true]);
}
