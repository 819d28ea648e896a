//! fault.wasm in stock Envoy beside its native twin: the same VirtualService
//! `http` entries as meshwasm's plugin configuration on listener `meshwasm`, and as
//! istiod would render them for `envoy.filters.http.fault` (one route per match,
//! the fault as per-route config) on listener `native`.
//!
//! Timing on this shared 2-core machine is noisy: delay accuracy is measured and
//! printed (p50/p99 error), and asserted with tolerances that a broken delay
//! (none, early, blocking, or off by a tick period) cannot pass but scheduling
//! noise cannot fail — see `delays_are_accurate`.
// Test code: a failure here is a test failure (the no-panic rule is for code in Envoy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::twin::{self, Case};
use serde_json::{json, Value};

const ABORT_BODY: &str = "fault filter abort";

// ---------------------------------------------------------------- istiod, in small

/// A proto-JSON Duration from the Istio string ("50ms", "1s").
fn proto_duration(s: &str) -> String {
    let ms: f64 = if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap()
    } else {
        s.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1000.0
    };
    format!("{:.3}s", ms / 1000.0)
}

fn fractional(p: Option<&Value>) -> Value {
    let v = p.and_then(|p| p["value"].as_f64()).unwrap_or(0.0);
    json!({"numerator": (v * 10000.0) as u32, "denominator": "MILLION"})
}

const GRPC: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// istiod `TranslateFault` (+ the Envoy extensions meshwasm accepts).
fn envoy_fault(f: &Value, max_active: Option<&Value>) -> Value {
    let mut out =
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
    if let Some(d) = f.get("delay") {
        let mut delay = json!({"percentage": fractional(d.get("percentage"))});
        if let Some(fd) = d.get("fixedDelay") {
            delay["fixed_delay"] = json!(proto_duration(fd.as_str().unwrap()));
        } else {
            delay["header_delay"] = json!({});
        }
        out["delay"] = delay;
    }
    if let Some(a) = f.get("abort") {
        let mut abort = json!({"percentage": fractional(a.get("percentage"))});
        if let Some(s) = a.get("httpStatus") {
            abort["http_status"] = s.clone();
        } else if let Some(g) = a.get("grpcStatus") {
            abort["grpc_status"] =
                json!(GRPC.iter().position(|c| *c == g.as_str().unwrap()).unwrap());
        } else {
            abort["header_abort"] = json!({});
        }
        out["abort"] = abort;
    }
    if let Some(m) = max_active {
        out["max_active_faults"] = m.clone();
    }
    out
}

/// Envoy StringMatcher / present_match for an Istio StringMatch in a header or
/// query-parameter position (`route.go` `translateHeaderMatch`).
fn header_spec(sm: &Value, out: &mut Value) {
    if let Some(e) = sm.get("exact") {
        out["string_match"] = json!({"exact": e});
    } else if let Some(p) = sm.get("prefix") {
        out["string_match"] = json!({"prefix": p});
    } else if sm.get("regex").is_some_and(|r| r != "*") {
        out["string_match"] = json!({"safe_regex": {"regex": sm["regex"]}});
    } else {
        out["present_match"] = json!(true);
    }
}

/// istiod `TranslateRouteMatch`.
fn envoy_match(m: &Value) -> Value {
    let mut out = json!({"prefix": "/"});
    if let Some(uri) = m.get("uri") {
        out = if let Some(e) = uri.get("exact") {
            json!({"path": e})
        } else if let Some(p) = uri.get("prefix") {
            json!({"prefix": p})
        } else if let Some(r) = uri.get("regex") {
            json!({"safe_regex": {"regex": r}})
        } else {
            json!({"prefix": "/"})
        };
    }
    out["case_sensitive"] = json!(!m["ignoreUriCase"].as_bool().unwrap_or(false));
    let mut headers = Vec::new();
    for (field, invert) in [("headers", false), ("withoutHeaders", true)] {
        if let Some(hs) = m.get(field).and_then(Value::as_object) {
            for (name, sm) in hs {
                let mut h = json!({"name": name});
                header_spec(sm, &mut h);
                if invert {
                    h["invert_match"] = json!(true);
                    if h.get("present_match").is_none() {
                        h["treat_missing_header_as_empty"] = json!(true);
                    }
                }
                headers.push(h);
            }
        }
    }
    for (field, pseudo) in [
        ("method", ":method"),
        ("authority", ":authority"),
        ("scheme", ":scheme"),
    ] {
        if let Some(sm) = m.get(field) {
            let mut h = json!({"name": pseudo});
            header_spec(sm, &mut h);
            headers.push(h);
        }
    }
    if !headers.is_empty() {
        out["headers"] = json!(headers);
    }
    if let Some(qs) = m.get("queryParams").and_then(Value::as_object) {
        let qp: Vec<Value> = qs
            .iter()
            .map(|(name, sm)| {
                let mut q = json!({"name": name});
                header_spec(sm, &mut q);
                q
            })
            .collect();
        out["query_parameters"] = json!(qp);
    }
    out
}

/// The native listener's routes for a meshwasm fault configuration.
fn native_routes(cfg: &Value) -> Value {
    let mut routes = Vec::new();
    for h in cfg["http"].as_array().unwrap() {
        let fault = h
            .get("fault")
            .map(|f| envoy_fault(f, cfg.get("maxActiveFaults")));
        let matches = match h.get("match").and_then(Value::as_array) {
            Some(ms) if !ms.is_empty() => ms.clone(),
            _ => vec![json!({})],
        };
        for m in matches {
            let mut r = json!({"match": envoy_match(&m), "route": {"cluster": "upstream"}});
            if let Some(f) = &fault {
                r["typed_per_filter_config"] = json!({"envoy.filters.http.fault": f});
            }
            routes.push(r);
        }
    }
    routes.push(json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}));
    Value::Array(routes)
}

/// A minimal upstream: one thread per connection, `200 ok` with `x-upstream: v1`,
/// then close. (The shared tiny_http upstream hands each connection to a small
/// task pool whose wake-ups can be lost under a burst of new connections: when
/// one tick resumes many delayed requests at once, a few requests sat unread
/// until Envoy's 15 s route timeout. Thread-per-connection has no such queue.)
struct Echo {
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (st, sn) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let sn = sn.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    sn.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nx-upstream: v1\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Echo { port, stop, seen }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn upstream() -> Echo {
    Echo::start()
}

fn start(cfg: &Value, upstream: &Echo) -> Envoy {
    Envoy::from_file("fault.yaml")
        .plugin_config("PLUGIN_CONFIG", cfg)
        .var("NATIVE_ROUTES", &native_routes(cfg).to_string())
        .var("UPSTREAM_PORT", &upstream.port.to_string())
        .start()
}

fn abort_all(status: u32) -> Value {
    json!({"abort": {"httpStatus": status, "percentage": {"value": 100}}})
}

// ---------------------------------------------------------------- tests

/// Route selection (HTTPMatchRequest) and client-controlled faults, case by case
/// against the native twin. Each matching route aborts with its own status, so
/// the outcome says which route was chosen.
#[test]
fn twin_route_selection_and_header_faults() {
    // Its load would disturb the timing tests.
    let _serial = timing_lock();
    let up = upstream();
    let cfg = json!({"http": [
        {"match": [{"uri": {"exact": "/exact"}}], "fault": abort_all(501)},
        {"match": [{"uri": {"prefix": "/pre"}, "method": {"exact": "POST"}}], "fault": abort_all(502)},
        {"match": [{"uri": {"regex": "/re/[0-9]+"}}], "fault": abort_all(503)},
        {"match": [{"uri": {"prefix": "/h"}, "headers": {"x-user": {"exact": "alice"}, "x-tier": {"prefix": "gold"}}}],
         "fault": abort_all(504)},
        {"match": [{"uri": {"prefix": "/h"}, "headers": {"x-v": {"regex": "v[12]"}}}], "fault": abort_all(505)},
        {"match": [{"uri": {"prefix": "/w"}, "withoutHeaders": {"x-ok": {"exact": "1"}}}], "fault": abort_all(506)},
        {"match": [{"uri": {"prefix": "/q"}, "queryParams": {"v": {"exact": "1"}}},
                   {"uri": {"prefix": "/q"}, "queryParams": {"r": {"regex": "[a-c]+"}}}], "fault": abort_all(507)},
        {"match": [{"uri": {"prefix": "/CaSe"}, "ignoreUriCase": true}], "fault": abort_all(508)},
        {"match": [{"uri": {"prefix": "/auth"}, "authority": {"exact": "api.example.com"}}], "fault": abort_all(509)},
        {"match": [{"uri": {"prefix": "/p"}, "headers": {"x-p": {}}}], "fault": abort_all(510)},
        {"match": [{"uri": {"prefix": "/healthz"}}]},
        {"match": [{"uri": {"prefix": "/hdr"}}], "fault": {
            "delay": {"headerDelay": {}, "percentage": {"value": 100}},
            "abort": {"headerAbort": {}, "percentage": {"value": 100}}}},
        {"match": [{"uri": {"prefix": "/istio"}}], "fault": {
            "delay": {"fixedDelay": "1ms", "percentage": {"value": 0}},
            "abort": {"httpStatus": 500, "percentage": {"value": 0}}}}
    ]});
    let envoy = start(&cfg, &up);
    let get = Request::get;
    let cases = vec![
        Case::new("exact", get("/exact")),
        Case::new("exact with query", get("/exact?a=1")),
        Case::new("exact is not prefix", get("/exact/x")),
        Case::new("exact is case-sensitive", get("/EXACT")),
        Case::new("prefix+POST", Request::new("POST", "/prefix").body("x")),
        Case::new("prefix+GET", get("/prefix")),
        Case::new("regex", get("/re/42")),
        Case::new("regex with query", get("/re/42?x=/y")),
        Case::new("regex is anchored", get("/re/42x")),
        Case::new(
            "headers AND",
            get("/h")
                .header("x-user", "alice")
                .header("x-tier", "gold-plus"),
        ),
        Case::new(
            "headers AND, one missing",
            get("/h").header("x-user", "alice"),
        ),
        Case::new(
            "header exact is case-sensitive",
            get("/h").header("x-user", "Alice").header("x-tier", "gold"),
        ),
        Case::new("header regex", get("/h").header("x-v", "v2")),
        Case::new("header regex full match", get("/h").header("x-v", "v22")),
        Case::new("without header, absent", get("/w")),
        Case::new("without header, other value", get("/w").header("x-ok", "0")),
        Case::new("without header, present", get("/w").header("x-ok", "1")),
        Case::new("query exact", get("/q?v=1")),
        Case::new("query first value only", get("/q?v=2&v=1")),
        Case::new("query regex (second match entry)", get("/q?r=abc")),
        Case::new("query regex full", get("/q?r=abcd")),
        Case::new("query none", get("/q")),
        Case::new("ignoreUriCase", get("/case/x")),
        Case::new("authority", get("/auth").header("host", "api.example.com")),
        Case::new(
            "authority with port",
            get("/auth").header("host", "api.example.com:80"),
        ),
        Case::new("present", get("/p").header("x-p", "")),
        Case::new("not present", get("/p")),
        Case::new(
            "route without fault stops the search",
            get("/healthz").header("x-envoy-fault-abort-request", "500"),
        ),
        Case::new("no route matches", get("/nothing")),
        // Header-controlled faults (enabled on /hdr only).
        Case::new(
            "header abort 429",
            get("/hdr").header("x-envoy-fault-abort-request", "429"),
        ),
        Case::new(
            "header abort 599",
            get("/hdr").header("x-envoy-fault-abort-request", "599"),
        ),
        Case::new(
            "header abort 600 ignored",
            get("/hdr").header("x-envoy-fault-abort-request", "600"),
        ),
        Case::new(
            "header abort junk ignored",
            get("/hdr").header("x-envoy-fault-abort-request", "5x"),
        ),
        Case::new(
            "header abort percentage 0",
            get("/hdr")
                .header("x-envoy-fault-abort-request", "503")
                .header("x-envoy-fault-abort-request-percentage", "0"),
        ),
        Case::new(
            "header abort percentage above config is capped",
            get("/hdr")
                .header("x-envoy-fault-abort-request", "503")
                .header("x-envoy-fault-abort-request-percentage", "5000000"),
        ),
        Case::new(
            "header gRPC abort",
            get("/hdr")
                .header("content-type", "application/grpc")
                .header("x-envoy-fault-abort-grpc-request", "14"),
        ),
        Case::new(
            "header gRPC abort, plain HTTP request",
            get("/hdr").header("x-envoy-fault-abort-grpc-request", "7"),
        ),
        Case::new(
            "header delay",
            get("/hdr").header("x-envoy-fault-delay-request", "30"),
        ),
        Case::new(
            "header delay 0",
            get("/hdr").header("x-envoy-fault-delay-request", "0"),
        ),
        Case::new(
            "header delay then abort",
            get("/hdr")
                .header("x-envoy-fault-delay-request", "20")
                .header("x-envoy-fault-abort-request", "418"),
        ),
        Case::new(
            "Istio faults ignore the headers",
            get("/istio")
                .header("x-envoy-fault-abort-request", "500")
                .header("x-envoy-fault-delay-request", "3000"),
        ),
    ];
    twin::assert_same(&envoy, "meshwasm", "native", &cases);

    // Abort replies, header for header: HTTP and gRPC aborts, to gRPC and plain
    // requests (a gRPC request gets a trailers-only 200 with grpc-status).
    let reply = |r: &host_tests::http::Response| {
        let h = |n: &str| r.header(n).map(String::from);
        (
            r.status,
            h("content-type"),
            h("grpc-status"),
            h("grpc-message"),
            h("x-upstream"),
            r.text(),
        )
    };
    for (path, ct, grpc_header) in [
        ("/exact", "application/grpc", None),
        ("/exact", "text/plain", None),
        ("/hdr", "application/grpc", Some("14")),
        ("/hdr", "application/grpc+proto", Some("4")),
        ("/hdr", "text/plain", Some("14")),
    ] {
        let mut req = get(path).header("content-type", ct);
        if let Some(g) = grpc_header {
            req = req.header("x-envoy-fault-abort-grpc-request", g);
        }
        let ours = reply(&envoy.send("meshwasm", &req));
        let native = reply(&envoy.send("native", &req));
        assert_eq!(ours, native, "{path} {ct}");
    }
    let r = envoy.send("meshwasm", &get("/exact"));
    assert_eq!((r.status, r.text().as_str()), (501, ABORT_BODY));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = envoy.send(
        "meshwasm",
        &get("/exact").header("content-type", "application/grpc"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-message"), Some(ABORT_BODY));
    // The header delay really delays, on both (an undelayed request takes ~1 ms).
    // Either may end it early by a loop iteration's length, as in
    // `delays_are_accurate` (CI saw native at 198.7 ms and meshwasm at 198.5 ms
    // for 200 ms), so both get the same 30 ms of slack.
    for (listener, at_least) in [("meshwasm", 170), ("native", 170)] {
        let t = Instant::now();
        let r = envoy.send(
            listener,
            &get("/hdr").header("x-envoy-fault-delay-request", "200"),
        );
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(at_least),
            "{listener}: {:?}",
            t.elapsed()
        );
    }
}

/// Abort at 10% over 4000 requests per listener: each count inside the binomial
/// 99.9% interval, and the metrics count what happened.
#[test]
fn abort_ten_percent_within_binomial_interval_for_both() {
    let _serial = timing_lock();
    let up = upstream();
    let cfg =
        json!({"http": [{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 10}}}}]});
    let envoy = start(&cfg, &up);
    const N: usize = 4000;
    // mean 400, sd = sqrt(4000 * 0.1 * 0.9) = 18.97; z(99.9%, two-sided) = 3.29.
    let (lo, hi) = (400.0 - 3.29 * 18.974, 400.0 + 3.29 * 18.974);
    let mut counts = Vec::new();
    for listener in ["meshwasm", "native"] {
        let port = envoy.port(listener);
        let aborted: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(move || {
                        (0..N / 4)
                            .filter(|_| {
                                let r = host_tests::http::send(port, &Request::get("/")).unwrap();
                                match r.status {
                                    503 => {
                                        assert_eq!(r.text(), ABORT_BODY);
                                        true
                                    }
                                    200 => false,
                                    other => panic!("{listener}: unexpected {other}"),
                                }
                            })
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        eprintln!("{listener}: {aborted} of {N} aborted (99.9% interval [{lo:.0}, {hi:.0}])");
        assert!(
            (lo..=hi).contains(&(aborted as f64)),
            "{listener}: {aborted} outside [{lo:.0}, {hi:.0}]"
        );
        counts.push(aborted as u64);
    }
    // Aborted requests never reached the upstream; the others all did.
    assert_eq!(up.seen() as u64, 2 * N as u64 - counts[0] - counts[1]);
    assert_eq!(
        envoy.stat("wasmcustom.meshwasm.fault.aborts_injected"),
        counts[0]
    );
    assert_eq!(envoy.stat("http.native.fault.aborts_injected"), counts[1]);
    assert_eq!(envoy.stat("wasmcustom.meshwasm.fault.delays_injected"), 0);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `each` run `per_thread` times on each of `threads` threads at once; what
/// it returned (ms), sorted.
fn timed_in_parallel(threads: usize, per_thread: usize, each: impl Fn() -> f64 + Sync) -> Vec<f64> {
    let each = &each;
    let mut all: Vec<f64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || (0..per_thread).map(|_| each()).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all
}

/// `n` requests to `path`, `parallel` at a time; latencies in ms, sorted.
fn latencies(port: u16, path: &str, n: usize, parallel: usize) -> Vec<f64> {
    timed_in_parallel(parallel, n / parallel, || {
        let t = Instant::now();
        let r = host_tests::http::send(port, &Request::get(path)).unwrap();
        let took = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(
            r.status,
            200,
            "{path} after {took:.1} ms: {:?} {}",
            r.headers,
            r.text()
        );
        took
    })
}

/// Serializes the tests that measure time or load the machine, so they do not
/// disturb each other (`--test-threads 2` would otherwise overlap them).
static TIMING: Mutex<()> = Mutex::new(());

fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per (path, listener): (p50 error, p99 error, fastest − delay) as the client
/// saw them, in ms.
type ClientDelays = Vec<(f64, f64, f64)>;
/// Per (path, listener): (p50 error, p99 error) of the time Envoy held the
/// requests, in ms.
type HeldDelays = Vec<(f64, f64)>;

/// One measurement of both delays on both listeners, as the client saw it and
/// as Envoy held the requests, with a printable report.
fn measure_delays(envoy: &Envoy) -> (String, ClientDelays, HeldDelays) {
    let listeners = ["meshwasm", "native"];
    let log_start = envoy.log().len();
    let base: Vec<f64> = listeners
        .iter()
        .map(|l| percentile(&latencies(envoy.port(l), "/none", 20, 1), 0.5))
        .collect();
    let mut report = String::new();
    let mut out = Vec::new();
    // 200 and 100 requests per listener: p99 is the 2nd-worst.
    for (path, delay, rounds, parallel) in
        [("/fifty", 50.0, 40, 5), ("/fivehundred", 500.0, 10, 10)]
    {
        let mut lat = [Vec::new(), Vec::new()];
        // Batches alternate between the listeners so noise hits both alike.
        for _ in 0..rounds {
            for (i, l) in listeners.iter().enumerate() {
                lat[i].extend(latencies(envoy.port(l), path, parallel, parallel));
            }
        }
        for (i, listener) in listeners.iter().enumerate() {
            let lat = &mut lat[i];
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let err: Vec<f64> = lat.iter().map(|l| l - delay - base[i]).collect();
            let (e50, e99) = (percentile(&err, 0.5), percentile(&err, 0.99));
            report.push_str(&format!(
                "  {listener} {path} ({} requests): base p50 {:.2} ms, delay error p50 {e50:.2} ms p99 {e99:.2} ms, min latency {:.2} ms\n",
                lat.len(),
                base[i],
                lat[0]
            ));
            out.push((e50, e99, lat[0] - delay));
        }
    }
    // What Envoy itself measured: how long it held each request (access log).
    std::thread::sleep(Duration::from_millis(300));
    let held = held_ms(&envoy.log()[log_start..]);
    let mut proxy = Vec::new();
    for (path, delay) in [("/fifty", 50.0), ("/fivehundred", 500.0)] {
        for listener in listeners {
            let base = percentile(&held[&(listener.to_string(), "/none".to_string())], 0.5);
            let err: Vec<f64> = held[&(listener.to_string(), path.to_string())]
                .iter()
                .map(|h| h - delay - base)
                .collect();
            let (e50, e99) = (percentile(&err, 0.5), percentile(&err, 0.99));
            report.push_str(&format!(
                "  {listener} {path} held by Envoy ({} requests): base p50 {base:.3} ms, delay error p50 {e50:.2} ms p99 {e99:.2} ms\n",
                err.len()
            ));
            proxy.push((e50, e99));
        }
    }
    let (s50, s99) = sleep_overshoot_ms();
    report.push_str(&format!(
        "  this machine's own timers: a bare 50 ms sleep overshoots p50 {s50:.2} ms p99 {s99:.2} ms (200 sleeps, 5 at a time)\n"
    ));
    (report, out, proxy)
}

/// How late this machine's own timers fire, with no Envoy in the way: 200
/// sleeps of 50 ms, 5 threads at a time as the `/fifty` requests run; the
/// (p50, p99) of how much each overshot, in ms. Any delay, native or ours, is at
/// best this accurate: it is the floor the 5 ms bound is read against.
fn sleep_overshoot_ms() -> (f64, f64) {
    let all = timed_in_parallel(5, 40, || {
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        t.elapsed().as_secs_f64() * 1000.0 - 50.0
    });
    (percentile(&all, 0.5), percentile(&all, 0.99))
}

/// The `HELD <listener> <path> <µs>` access-log lines: per (listener, path),
/// how long Envoy held each request before sending it upstream, in ms, sorted.
fn held_ms(log: &str) -> BTreeMap<(String, String), Vec<f64>> {
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if let ["HELD", listener, path, us] = f[..] {
            if let Ok(us) = us.parse::<f64>() {
                out.entry((listener.into(), path.into()))
                    .or_default()
                    .push(us / 1000.0);
            }
        }
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    out
}

/// Delays of 50 ms and 500 ms, measured on both listeners, twice: by the
/// client (latency − delay − the listener's median undelayed latency), and by
/// Envoy itself (its access log's time from the first request byte to the first
/// upstream byte, − delay − the same for undelayed requests), which leaves out
/// the client's and the upstream's scheduling. p50 and p99 of both are printed
/// for every attempt.
///
/// Timing on this shared 2-core machine is noisy (the native filter itself has
/// shown a 67 ms p50 error here while other builds ran, and a 53 ms p99 held by
/// Envoy on a quiet one), so the asserts are in two tiers. In every attempt,
/// bounds noise cannot break but a broken delay does, on both listeners: the
/// fastest request no more than 30 ms early (a missing delay; Envoy's timers can
/// end a delay early by a loop iteration's length: native ended one 50 ms delay
/// after 31.1 ms here), the client's p50 error within −4 ms (a truncated delay)
/// and 150 ms, its p99 ≤ 500 ms (a stuck or 1 s-grained timer).
/// And in at least one of three attempts the tight bounds, on what Envoy
/// measured: meshwasm's p50 error ≤ 5 ms (or within 2 ms of the native filter's
/// in the same attempt) and p99 ≤ native's + 10 ms (at least 10 ms). A coarse
/// tick (a period rounded up, a stale re-arm, or a burst waiting a tick per
/// request costs milliseconds) fails, while a noisy moment rarely lasts three
/// attempts. The issue's 5 ms p99 holds on quiet attempts for both filters
/// (e.g. meshwasm 4.88 / 4.19 ms, native 4.99 / 3.88 ms) but not on noisy ones
/// for either, so it is printed, not asserted. Each attempt also prints how late
/// this machine's own timers are (`sleep_overshoot_ms`): on an idle machine a
/// bare 50 ms sleep has overshot by 5.2–16.8 ms at p99, so no delay here, native
/// or ours, can be held to 5 ms at p99.
/// Tick-exact timing is pinned deterministically by `fault_emulator.rs`.
#[test]
fn delays_are_accurate() {
    let _serial = timing_lock();
    let up = upstream();
    let cfg = json!({"http": [
        {"match": [{"uri": {"prefix": "/fifty"}}], "fault": {"delay": {"fixedDelay": "50ms", "percentage": {"value": 100}}}},
        {"match": [{"uri": {"prefix": "/fivehundred"}}], "fault": {"delay": {"fixedDelay": "500ms", "percentage": {"value": 100}}}}
    ]});
    let envoy = start(&cfg, &up);
    let mut all = String::new();
    let mut tight_ok = false;
    let mut attempts = 0;
    while attempts < 3 && !tight_ok {
        attempts += 1;
        let (report, client, held) = measure_delays(&envoy);
        all.push_str(&format!("attempt {attempts}:\n{report}"));
        // [fifty meshwasm, fifty native, 500 meshwasm, 500 native]
        for (e50, e99, early) in &client {
            assert!(*early >= -30.0, "a delay ended early\n{all}");
            assert!(
                (-4.0..=150.0).contains(e50) && *e99 <= 500.0,
                "delay far off\n{all}"
            );
        }
        tight_ok = [(0, 1), (2, 3)].iter().all(|&(ours, native)| {
            let ((e50, e99), (n50, n99)) = (held[ours], held[native]);
            e50 <= 5.0f64.max(n50 + 2.0) && e99 <= 10.0f64.max(n99 + 10.0)
        });
    }
    eprint!("{all}");
    assert!(tight_ok, "meshwasm's delay error as Envoy measured it above 5 ms p50 (and 2 ms over native's) or above native's p99 + 10 ms (and 10 ms), in 3 attempts\n{all}");
    let n = 300 * attempts as u64;
    assert_eq!(envoy.stat("wasmcustom.meshwasm.fault.delays_injected"), n);
    assert_eq!(envoy.stat("http.native.fault.delays_injected"), n);
    assert_eq!(envoy.stat("wasmcustom.meshwasm.fault.active_faults"), 0);
}

/// Sends `req` on its own thread; the handle yields (status, latency).
fn spawn_send(port: u16, path: &'static str) -> std::thread::JoinHandle<(u16, Duration)> {
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = host_tests::http::send(port, &Request::get(path)).unwrap();
        (r.status, t.elapsed())
    })
}

/// 500 delayed requests in flight on the workers while undelayed requests on the
/// same workers keep their normal latency: nothing blocks a worker. Then
/// `maxActiveFaults` bounds concurrent faults, overflow counted.
#[test]
fn concurrent_delays_do_not_block_the_workers() {
    let _serial = timing_lock();
    let up = upstream();
    let delay = Duration::from_millis(1500);
    let cfg = json!({"http": [
        {"match": [{"uri": {"prefix": "/slow"}}], "fault": {"delay": {"fixedDelay": "1500ms", "percentage": {"value": 100}}}}
    ]});
    let envoy = start(&cfg, &up);
    let port = envoy.port("meshwasm");
    let base = latencies(port, "/fast", 40, 1);
    let t0 = Instant::now();
    let slow: Vec<_> = (0..500).map(|_| spawn_send(port, "/slow")).collect();
    // Wait until all 500 are paused in the filter.
    while envoy.stat("wasmcustom.meshwasm.fault.active_faults") < 500 {
        assert!(
            t0.elapsed() < delay,
            "only {} delayed in time",
            envoy.stat("wasmcustom.meshwasm.fault.active_faults")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = latencies(port, "/fast", 40, 1);
    let window = t0.elapsed();
    assert!(
        window < delay,
        "undelayed requests ran after the delays ended ({window:?}): not a valid test"
    );
    let (b50, d50, d99) = (
        percentile(&base, 0.5),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
    );
    eprintln!(
        "undelayed latency: before p50 {b50:.2} ms; with 500 delayed in flight p50 {d50:.2} ms p99 {d99:.2} ms; \
         500 paused after {:?}",
        window
    );
    // A worker blocked by a delay would hold these for ~1.5 s.
    assert!(
        during.last().copied().unwrap() < 500.0,
        "undelayed request blocked: {during:?}"
    );
    assert!(
        d50 <= b50 + 50.0,
        "undelayed p50 {d50:.2} ms vs {b50:.2} ms before"
    );
    // A delay may end a few milliseconds early, for both filters: Envoy arms
    // timers from the event loop's cached time, which lags the clock while a
    // worker takes in 500 connections at once, and deadlines within
    // `DUE_WITHIN_NS` (2 ms) of a tick end on it (see `DelayQueue::due`).
    // CI once saw 1498.99 ms here; 30 ms of slack as in `delays_are_accurate`.
    // An undelayed request takes ~1 ms.
    let early = Duration::from_millis(30);
    for s in slow {
        let (status, took) = s.join().unwrap();
        assert_eq!(status, 200);
        assert!(took >= delay - early, "{took:?}");
    }
    assert_eq!(envoy.stat("wasmcustom.meshwasm.fault.delays_injected"), 500);
    assert_eq!(envoy.stat("wasmcustom.meshwasm.fault.active_faults"), 0);
}

/// `maxActiveFaults` across both workers: 3 concurrent delayed requests with a
/// limit of 1 → one delayed, two overflow (not delayed), as the native filter.
#[test]
fn max_active_faults_overflow_counted_like_native() {
    let _serial = timing_lock();
    let up = upstream();
    let cfg = json!({"maxActiveFaults": 1, "http": [
        {"fault": {"delay": {"fixedDelay": "1000ms", "percentage": {"value": 100}}}}
    ]});
    let envoy = start(&cfg, &up);
    for (listener, prefix) in [
        ("meshwasm", "wasmcustom.meshwasm.fault"),
        ("native", "http.native.fault"),
    ] {
        let port = envoy.port(listener);
        let first = spawn_send(port, "/a");
        let t0 = Instant::now();
        while envoy.stat(&format!("{prefix}.active_faults")) < 1 {
            assert!(
                t0.elapsed() < Duration::from_millis(900),
                "{listener}: first request not delayed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // While it waits, two more go straight through.
        for _ in 0..2 {
            let t = Instant::now();
            let r = envoy.send(listener, &Request::get("/b"));
            assert_eq!(r.status, 200);
            assert!(
                t.elapsed() < Duration::from_millis(900),
                "{listener}: overflow request was delayed"
            );
        }
        let (status, took) = first.join().unwrap();
        assert_eq!(status, 200);
        // Early by up to a loop's cached-time lag, as above.
        assert!(took >= Duration::from_millis(970), "{listener}: {took:?}");
        assert_eq!(
            envoy.stat(&format!("{prefix}.faults_overflow")),
            2,
            "{listener}"
        );
        assert_eq!(
            envoy.stat(&format!("{prefix}.delays_injected")),
            1,
            "{listener}"
        );
    }
}

/// An invalid configuration keeps Envoy from starting, with one log line naming
/// the field.
#[test]
fn invalid_config_is_refused() {
    // Its load would disturb the timing tests.
    let _serial = timing_lock();
    let up = upstream();
    let cfg = json!({"http": [{"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 10}},
                                         "delay": {"exponentialDelay": "1s"}}}]});
    let err = Envoy::from_file("fault.yaml")
        .plugin_config("PLUGIN_CONFIG", &cfg)
        .var(
            "NATIVE_ROUTES",
            &native_routes(&json!({"http": []})).to_string(),
        )
        .var("UPSTREAM_PORT", &up.port.to_string())
        .try_start()
        .err()
        .expect("Envoy must refuse the configuration");
    assert!(
        err.contains(
            "fault: http[0].fault.delay.exponentialDelay: exponentialDelay not supported yet"
        ),
        "{err}"
    );
}

/// A client that goes away during its delay leaves nothing behind, in Envoy too:
/// the slot (gauge) comes back before the delay would end, and the request never
/// reaches the upstream, not even after its deadline.
#[test]
fn client_gone_during_delay_leaves_nothing_behind() {
    let _serial = timing_lock();
    let up = upstream();
    let cfg = json!({"http": [
        {"fault": {"delay": {"fixedDelay": "2000ms", "percentage": {"value": 100}}}}
    ]});
    let envoy = start(&cfg, &up);
    for (listener, prefix) in [
        ("meshwasm", "wasmcustom.meshwasm.fault"),
        ("native", "http.native.fault"),
    ] {
        let gauge = format!("{prefix}.active_faults");
        let mut conns: Vec<_> = (0..20)
            .map(|_| {
                let mut s =
                    std::net::TcpStream::connect(("127.0.0.1", envoy.port(listener))).unwrap();
                s.write_all(b"GET /gone HTTP/1.1\r\nhost: localhost\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        let t0 = Instant::now();
        while envoy.stat(&gauge) < 20 {
            assert!(
                t0.elapsed() < Duration::from_millis(1500),
                "{listener}: not all delayed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        conns.clear(); // the clients go away
        while envoy.stat(&gauge) > 0 {
            assert!(
                t0.elapsed() < Duration::from_millis(1900),
                "{listener}: slots not released on reset"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Past the delay: had a slot been freed by its deadline rather than
        // by the reset, its request would now reach the upstream.
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            up.seen(),
            0,
            "{listener}: a request of a gone client reached the upstream"
        );
        assert_eq!(
            envoy.stat(&format!("{prefix}.delays_injected")),
            20,
            "{listener}"
        );
    }
    // The worker still serves (and delays) afterwards.
    let t = Instant::now();
    assert_eq!(envoy.send("meshwasm", &Request::get("/after")).status, 200);
    // (early by at most a loop iteration, as in `delays_are_accurate`)
    assert!(t.elapsed() >= Duration::from_millis(1970));
}
