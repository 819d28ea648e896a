//! The demo gateway (`envoy-configs/gateway.yaml`): all five filters in one Envoy in
//! front of two upstream versions, and the requests that show each filter working.
//! `make demo` runs it on localhost:10000; `tests/gateway.rs` runs the same steps.

use crate::envoy::Envoy;
use crate::http::{Request, Response};
use crate::paths;
use crate::upstream::Upstream;

pub struct Gateway {
    pub envoy: Envoy,
    pub port: u16,
    pub v1: Upstream,
    pub v2: Upstream,
}

/// Starts both upstreams and the gateway listening on `port` (0: a free port).
pub fn start_gateway(port: u16) -> Result<Gateway, String> {
    let port = if port == 0 { paths::free_port() } else { port };
    let v1 = Upstream::echo("v1");
    let v2 = Upstream::echo("v2");
    let envoy = Envoy::from_file("gateway.yaml")
        .var("GATEWAY_PORT", &port.to_string())
        .var("BIND_ADDRESS", "127.0.0.1")
        .var("V1_HOST", "127.0.0.1")
        .var("V2_HOST", "127.0.0.1")
        .upstream("V1_PORT", &v1)
        .upstream("V2_PORT", &v2)
        .concurrency(2)
        .try_start()?;
    Ok(Gateway {
        envoy,
        port,
        v1,
        v2,
    })
}

fn demo_file(name: &str) -> String {
    let path = paths::config_dir().join("demo").join(name);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The demo user's token (RS256, signed by `envoy-configs/demo/demo-key.pem`).
pub fn alice_token() -> String {
    demo_file("alice.jwt")
}

pub fn expired_token() -> String {
    demo_file("expired.jwt")
}

/// What a demo step expects of the last response.
pub struct Expect {
    pub status: u16,
    pub body_contains: Option<&'static str>,
    pub upstream: Option<&'static str>,
}

pub struct Step {
    pub filter: &'static str,
    pub what: &'static str,
    pub request: Request,
    /// Send the request this many times (rate limiting); the last answer is checked.
    pub times: usize,
    pub expect: Expect,
}

fn step(filter: &'static str, what: &'static str, request: Request, status: u16) -> Step {
    Step {
        filter,
        what,
        request,
        times: 1,
        expect: Expect {
            status,
            body_contains: None,
            upstream: None,
        },
    }
}

impl Step {
    fn body(mut self, s: &'static str) -> Step {
        self.expect.body_contains = Some(s);
        self
    }
    fn upstream(mut self, u: &'static str) -> Step {
        self.expect.upstream = Some(u);
        self
    }
    fn times(mut self, n: usize) -> Step {
        self.times = n;
        self
    }

    /// Sends the step's request(s) to the gateway; the last response.
    pub fn run(&self, port: u16) -> std::io::Result<Response> {
        let mut last = None;
        for _ in 0..self.times {
            last = Some(crate::http::send(port, &self.request)?);
        }
        last.ok_or_else(|| std::io::Error::other("no request sent"))
    }

    /// None when the response is what the step expects, else what differs.
    pub fn check(&self, r: &Response) -> Option<String> {
        let e = &self.expect;
        if r.status != e.status {
            return Some(format!(
                "status {} (expected {}), body {:?}",
                r.status,
                e.status,
                r.text()
            ));
        }
        if let Some(b) = e.body_contains {
            if !r.text().contains(b) {
                return Some(format!("body {:?} does not contain {b:?}", r.text()));
            }
        }
        if let Some(u) = e.upstream {
            if r.header("x-upstream") != Some(u) {
                return Some(format!(
                    "served by {:?}, expected {u}",
                    r.header("x-upstream")
                ));
            }
        }
        None
    }

    /// The same request as a curl command line.
    pub fn curl(&self, port: u16) -> String {
        let mut s = String::from("curl -s -i");
        if self.request.method != "GET" {
            s.push_str(&format!(" -X {}", self.request.method));
        }
        for (k, v) in &self.request.headers {
            let v = if v.len() > 60 && k.eq_ignore_ascii_case("authorization") {
                if v.contains(&alice_token()) {
                    "Bearer $(cat envoy-configs/demo/alice.jwt)".to_string()
                } else {
                    "Bearer $(cat envoy-configs/demo/expired.jwt)".to_string()
                }
            } else {
                v.clone()
            };
            s.push_str(&format!(" -H \"{k}: {v}\""));
        }
        s.push_str(&format!(" http://localhost:{port}{}", self.request.path));
        if self.times > 1 {
            s = format!("for i in $(seq {}); do {s}; done", self.times);
        }
        s
    }
}

/// The demo, one filter at a time.
pub fn steps() -> Vec<Step> {
    let bearer = |t: String| format!("Bearer {t}");
    vec![
        step(
            "jwt_authn",
            "a valid RS256 token is verified; its `sub` claim reaches the upstream as x-jwt-sub",
            Request::get("/hello").header("authorization", &bearer(alice_token())),
            200,
        )
        // Any subset may serve it (the canary splits 90/10 at random without a
        // sticky key): the claim header is what this step shows.
        .body("\"x-jwt-sub\":\"alice\""),
        step(
            "jwt_authn",
            "an expired token is refused like Envoy's jwt_authn does",
            Request::get("/hello").header("authorization", &bearer(expired_token())),
            401,
        )
        .body("Jwt is expired"),
        step(
            "authz",
            "DENY /admin* for requests without a verified identity",
            Request::get("/admin/settings"),
            403,
        )
        .body("RBAC: access denied"),
        step(
            "authz",
            "... and allow it with alice's token",
            Request::get("/admin/settings").header("authorization", &bearer(alice_token())),
            200,
        ),
        step(
            "local_ratelimit",
            "3 requests a minute per x-user: the 4th is refused",
            Request::get("/items").header("x-user", "carol"),
            429,
        )
        .times(4)
        .body("local_rate_limited"),
        step(
            "fault",
            "x-demo-fault: abort → Istio's HTTP abort",
            Request::get("/hello").header("x-demo-fault", "abort"),
            503,
        )
        .body("fault filter abort"),
        step(
            "fault",
            "x-demo-fault: delay → a 2 s delay, without blocking the worker",
            Request::get("/hello").header("x-demo-fault", "delay"),
            200,
        ),
        step(
            "canary",
            "beta testers (x-canary: true) always reach v2",
            Request::get("/hello").header("x-canary", "true"),
            200,
        )
        .upstream("v2"),
        step(
            "canary",
            "everyone else: 90% v1, 10% v2 (see the x-served-by response header)",
            Request::get("/hello"),
            200,
        ),
    ]
}
