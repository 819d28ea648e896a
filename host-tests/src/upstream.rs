//! Upstream servers for tests: an echo server that returns the request it saw
//! as JSON (so tests assert what reached the backend), or any handler a test
//! writes (a JWKS endpoint, an ext_authz server, ...).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// A request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (timeouts, slow backends).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
        }
    }

    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::new(status)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A running upstream on 127.0.0.1; stopped on drop.
pub struct Upstream {
    name: String,
    port: u16,
    server: Arc<tiny_http::Server>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Vec<JoinHandle<()>>,
}

/// The echo answer: `{"upstream", "method", "path", "headers": {name: value}, "body"}`.
/// Repeated headers are joined with `,` as a proxy would fold them.
pub fn echo_reply(name: &str, seen: &Seen) -> Reply {
    let mut headers = Map::new();
    for (k, v) in &seen.headers {
        let joined = match headers.get(k).and_then(|p| p.as_str()) {
            Some(prev) => format!("{prev},{v}"),
            None => v.clone(),
        };
        headers.insert(k.clone(), Value::String(joined));
    }
    Reply::json(
        200,
        &json!({
            "upstream": name,
            "method": seen.method,
            "path": seen.path,
            "headers": headers,
            "body": String::from_utf8_lossy(&seen.body),
        }),
    )
    .header("x-upstream", name)
}

impl Upstream {
    /// An echo server named `name` (the name comes back in `upstream` and `x-upstream`).
    pub fn echo(name: &str) -> Upstream {
        let n = name.to_string();
        Upstream::start(name, move |seen| echo_reply(&n, seen))
    }

    /// An upstream answering with `handler`.
    pub fn start(name: &str, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        Upstream::start_on("127.0.0.1:0", name, handler)
    }

    /// An upstream on a given address (the demo's fixed port).
    pub fn start_on(
        addr: &str,
        name: &str,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let server = match tiny_http::Server::http(addr) {
            Ok(s) => Arc::new(s),
            Err(e) => panic!("upstream {name}: cannot listen on {addr}: {e}"),
        };
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(0);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let threads = (0..8)
            .map(|_| {
                let server = Arc::clone(&server);
                let seen = Arc::clone(&seen);
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || serve(&server, &seen, &*handler))
            })
            .collect();
        Upstream {
            name: name.to_string(),
            port,
            server,
            seen,
            threads,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn clear_seen(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }
}

fn serve(server: &tiny_http::Server, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    while let Ok(mut req) = server.recv() {
        let mut body = Vec::new();
        let _ = std::io::Read::read_to_end(req.as_reader(), &mut body);
        let s = Seen {
            method: req.method().to_string(),
            path: req.url().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.field.as_str().as_str().to_ascii_lowercase(),
                        h.value.as_str().to_string(),
                    )
                })
                .collect(),
            body,
        };
        if let Ok(mut v) = seen.lock() {
            // Bounded: benchmarks send millions of requests.
            if v.len() < 100_000 {
                v.push(s.clone());
            }
        }
        let reply = handler(&s);
        if let Some(d) = reply.delay {
            std::thread::sleep(d);
        }
        let mut resp = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
        for (k, v) in &reply.headers {
            if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                resp.add_header(h);
            }
        }
        let _ = req.respond(resp);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
