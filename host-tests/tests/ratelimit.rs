//! Global rate limiting across gateway replicas: one Redis, one meshwasm-rls
//! service counting in it, two Envoy processes (two replicas, two workers
//! each). Every Envoy has meshwasm's ratelimit filter and Envoy's native
//! `envoy.filters.http.ratelimit` on listeners side by side, calling the same
//! service under two domains with the same descriptors, so their counters are
//! apart and each request sequence must come out the same on both.
//!
//! Faults: the service stopped, a service that never answers (slower than
//! `timeout`), Redis stopped; with `failure_mode_deny` true and false. The
//! service restarted with Redis kept continues its counters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use host_tests::envoy::Envoy;
use host_tests::http::{Request, Response};
use host_tests::upstream::Upstream;
use serde_json::{json, Value};

const RLS_CONFIG: &str = r#"
descriptors:
  - key: PATH
    value: /limited
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: PATH
    value: /continue
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: PATH
    rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: team
    descriptors:
      - key: member
        value: bob
        rate_limit: {unit: hour, requests_per_unit: 2, name: bob-hourly}
  - key: by_ip
    value: "yes"
    descriptors:
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 4}
  - key: shadow
    rate_limit: {unit: minute, requests_per_unit: 1}
    shadow_mode: true
"#;

fn rate_limits() -> Value {
    json!([
        {"actions": [{"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}}]},
        {"actions": [{"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]},
        {"actions": [{"request_headers": {"header_name": "x-team", "descriptor_key": "team"}},
                     {"request_headers": {"header_name": "x-member", "descriptor_key": "member"}}]},
        {"actions": [{"header_value_match": {"descriptor_key": "by_ip", "descriptor_value": "yes",
                        "headers": [{"name": "x-by-ip", "present_match": true}]}},
                     {"remote_address": {}}]},
        {"actions": [{"request_headers": {"header_name": "x-shadow", "descriptor_key": "shadow"}}]}
    ])
}

/// The RateLimit filter configuration both filters take (the plugin
/// configuration is the native typed_config itself).
fn filter_config(domain: &str, cluster: &str, timeout: &str, deny: bool) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": domain,
        "timeout": timeout,
        "failure_mode_deny": deny,
        "status_on_error": {"code": 503},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "response_headers_to_add": [{"header": {"key": "x-limited-by", "value": "gateway"}}],
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                               "transport_api_version": "V3"},
        "rate_limits": rate_limits()
    })
}

fn listener(name: &str, filter: Value) -> Value {
    json!({"name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": format!("{{{{PORT:{name}}}}}")}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "use_remote_address": true,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
            "http_filters": [filter, {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})
}

fn cluster(name: &str, port: &str, h2: bool) -> Value {
    let mut c = json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}});
    if h2 {
        c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    c
}

/// The listener sets: (name, cluster, timeout, failure_mode_deny).
const SETS: [(&str, &str, &str, bool); 4] = [
    ("main", "rls", "1s", false),
    ("deny", "rls", "1s", true),
    ("slow", "rls-silent", "0.2s", false),
    ("slow-deny", "rls-silent", "0.2s", true),
];

fn bootstrap() -> String {
    let mut listeners = Vec::new();
    for (set, cluster, timeout, deny) in SETS {
        let ours = json!({"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("meshwasm.ratelimit.{set}"),
                "root_id": "ratelimit",
                "vm_config": {"vm_id": "", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": "{{DIST}}/ratelimit.wasm"}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": filter_config("meshwasm", cluster, timeout, deny).to_string()},
                "failure_policy": "FAIL_CLOSED"}}});
        let native = json!({"name": "envoy.filters.http.ratelimit",
            "typed_config": filter_config("native", cluster, timeout, deny)});
        listeners.push(listener(&format!("meshwasm-{set}"), ours));
        listeners.push(listener(&format!("native-{set}"), native));
    }
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": "{{ADMIN_PORT}}"}}},
        "static_resources": {"listeners": listeners, "clusters": [
            cluster("upstream", "{{UPSTREAM_PORT}}", false),
            cluster("rls", "{{RLS_PORT}}", true),
            cluster("rls-silent", "{{SILENT_PORT}}", true),
        ]}
    })
    .to_string()
}

/// `redis-server` on a free port with its own directory; stopped on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = host_tests::paths::free_port();
        let dir =
            std::env::temp_dir().join(format!("meshwasm-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            child: None,
            port,
            dir,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server (make setup installs it)");
        self.child = Some(child);
        wait_port(self.port, "redis-server");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
            eprintln!("--- redis log ---\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} not listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `meshwasm-rls` binary (`make build` builds it) on a fixed port,
/// counting in Redis; stopped on drop, its log printed if the test fails.
struct Rls {
    child: Child,
    dir: PathBuf,
}

impl Rls {
    fn start(port: u16, redis_url: &str) -> Rls {
        let bin = host_tests::paths::target_dir().join("debug/meshwasm-rls");
        assert!(
            bin.exists(),
            "{} missing: run `make build` (or cargo build -p meshwasm-rls)",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("meshwasm-rls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(&bin);
        for d in ["meshwasm", "native"] {
            let p = dir.join(format!("{d}.yaml"));
            std::fs::write(&p, format!("domain: {d}\n{RLS_CONFIG}")).unwrap();
            cmd.arg("--config").arg(p);
        }
        let log = std::fs::File::create(dir.join("rls.log")).unwrap();
        let child = cmd
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis-url",
                redis_url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_port(port, "meshwasm-rls");
        Rls { child, dir }
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("rls.log")).unwrap_or_default();
            eprintln!("--- meshwasm-rls log ---\n{log}");
        }
    }
}

/// Accepts connections and never answers: a service slower than any timeout.
fn silent_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    port
}

/// What both filters must answer alike.
fn view(r: &Response) -> Value {
    let h = |n: &str| r.header(n).map(str::to_string);
    json!({"status": r.status,
        "x-envoy-ratelimited": h("x-envoy-ratelimited"),
        "x-ratelimit-limit": h("x-ratelimit-limit"),
        "x-ratelimit-remaining": h("x-ratelimit-remaining"),
        "x-limited-by": h("x-limited-by"),
        "body": if r.status == 200 { String::new() } else { r.text() }})
}

struct Replicas {
    envoys: [Envoy; 2],
}

impl Replicas {
    /// Sends `req` to listener `<filter>-<set>` of replica `i % 2`.
    fn send(&self, i: usize, filter: &str, set: &str, req: &Request) -> Response {
        let start = Instant::now();
        let r = self.envoys[i % 2].send(&format!("{filter}-{set}"), req);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} {} on {filter}-{set} hung for {:?}",
            req.method,
            req.path,
            start.elapsed()
        );
        r
    }

    /// The same requests through both filters, alternating replicas; the
    /// outcomes of each, which must be equal.
    fn twin(&self, set: &str, reqs: &[Request]) -> Vec<Value> {
        let ours: Vec<Value> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| view(&self.send(i, "meshwasm", set, r)))
            .collect();
        let native: Vec<Value> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| view(&self.send(i, "native", set, r)))
            .collect();
        assert_eq!(ours, native, "meshwasm and native differ on {set}");
        ours
    }

    fn stat(&self, name: &str) -> u64 {
        self.envoys.iter().map(|e| e.stat(name)).sum()
    }
}

fn statuses(v: &[Value]) -> Vec<u64> {
    v.iter().map(|o| o["status"].as_u64().unwrap()).collect()
}

fn count(v: &[Value], status: u64) -> usize {
    v.iter().filter(|o| o["status"] == status).count()
}

#[test]
fn global_rate_limit_across_replicas_like_native() {
    let upstream = Upstream::echo("v1");
    let mut redis = Redis::start();
    let rls_port = host_tests::paths::free_port();
    let mut rls = Some(Rls::start(rls_port, &redis.url()));
    let silent = silent_server();
    let start = || {
        Envoy::from_yaml(&bootstrap())
            .upstream("UPSTREAM_PORT", &upstream)
            .var("RLS_PORT", &rls_port.to_string())
            .var("SILENT_PORT", &silent.to_string())
            .concurrency(2)
            .start()
    };
    let replicas = Replicas {
        envoys: [start(), start()],
    };
    let g = Request::get;

    // A burst split across both replicas admits exactly the limit in total.
    let burst: Vec<Request> = (0..12).map(|_| g("/limited")).collect();
    let out = replicas.twin("main", &burst);
    assert_eq!(count(&out, 200), 5, "{out:?}");
    assert_eq!(count(&out, 429), 7);
    let denied = out.iter().find(|o| o["status"] == 429).unwrap();
    assert_eq!(denied["x-envoy-ratelimited"], "true");
    assert_eq!(denied["x-limited-by"], "gateway");
    assert_eq!(denied["x-ratelimit-remaining"], "0");
    assert_eq!(out[0]["x-ratelimit-limit"], "5, 5;w=60");
    assert_eq!(
        out[0]["x-limited-by"],
        Value::Null,
        "only on rate limited replies"
    );

    // A header's own counter per value; other paths pass.
    let users: Vec<Request> = (0..8)
        .map(|i| g("/u").header("x-user", if i % 2 == 0 { "ann" } else { "ben" }))
        .collect();
    let out = replicas.twin("main", &users);
    assert_eq!(statuses(&out), [200, 200, 200, 200, 200, 200, 429, 429]);

    // Nested descriptors: team (any) → member bob, 2 an hour, by name.
    let team: Vec<Request> = (0..4)
        .map(|_| g("/t").header("x-team", "a").header("x-member", "bob"))
        .chain([g("/t").header("x-team", "a").header("x-member", "eve")])
        .collect();
    let out = replicas.twin("main", &team);
    assert_eq!(statuses(&out), [200, 200, 429, 429, 200]);
    assert_eq!(
        out[0]["x-ratelimit-limit"],
        "2, 1000;w=60, 2;w=3600;name=\"bob-hourly\""
    );

    // remote_address under a header_value_match entry.
    let by_ip: Vec<Request> = (0..6).map(|_| g("/ip").header("x-by-ip", "1")).collect();
    let out = replicas.twin("main", &by_ip);
    assert_eq!(statuses(&out), [200, 200, 200, 200, 429, 429]);

    // Shadow mode: over its limit, never enforced.
    let shadow: Vec<Request> = (0..3).map(|_| g("/s").header("x-shadow", "on")).collect();
    assert_eq!(statuses(&replicas.twin("main", &shadow)), [200, 200, 200]);

    // The service restarted with Redis kept: counters continue.
    let first: Vec<Request> = (0..3).map(|_| g("/continue")).collect();
    assert_eq!(count(&replicas.twin("main", &first), 200), 3);
    drop(rls.take());
    rls = Some(Rls::start(rls_port, &redis.url()));
    let then: Vec<Request> = (0..4).map(|_| g("/continue")).collect();
    let out = replicas.twin("main", &then);
    assert_eq!(
        statuses(&out),
        [200, 200, 429, 429],
        "counters lost: {out:?}"
    );

    // Faults: each answered as native answers it, within the timeout.
    let fault = |what: &str, open: u64| {
        let out = replicas.twin("main", &[g("/f1"), g("/f2")]);
        assert_eq!(
            statuses(&out),
            [open, open],
            "{what}, failure_mode_deny false"
        );
        let out = replicas.twin("deny", &[g("/f1"), g("/f2")]);
        assert_eq!(statuses(&out), [503, 503], "{what}, failure_mode_deny true");
    };
    let slow = replicas.twin("slow", &[g("/a"), g("/b")]);
    assert_eq!(statuses(&slow), [200, 200], "slower than timeout, open");
    let slow = replicas.twin("slow-deny", &[g("/a"), g("/b")]);
    assert_eq!(statuses(&slow), [503, 503], "slower than timeout, deny");

    drop(rls.take());
    fault("service stopped", 200);
    rls = Some(Rls::start(rls_port, &redis.url()));
    assert_eq!(statuses(&replicas.twin("main", &[g("/back")])), [200]);

    redis.stop();
    fault("Redis stopped", 200);
    drop(rls.take());

    // Counted as the native filter counts.
    for name in ["ok", "over_limit", "error", "failure_mode_allowed"] {
        let ours = replicas.stat(&format!("wasmcustom.meshwasm.ratelimit.{name}"));
        let native = replicas.stat(&format!("cluster.upstream.ratelimit.{name}"));
        assert_eq!(ours, native, "ratelimit.{name}");
        assert!(ours > 0, "ratelimit.{name} never counted");
    }
}
