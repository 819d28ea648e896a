//! Upstream servers for tests: an echo server that returns the request it saw
//! as JSON (so tests assert what reached the backend), or any handler a test
//! writes (a JWKS endpoint, an ext_authz server, ...).

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::http::{header_line, read_text_line};

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
///
/// One thread per connection with HTTP/1.1 keep-alive: Envoy opens bursts of
/// upstream connections (hundreds of requests resumed at once) and keeps them
/// open, so a bounded worker pool could leave requests unread.
pub struct Upstream {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    acceptor: Option<JoinHandle<()>>,
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

    /// An upstream on a given address.
    pub fn start_on(
        addr: &str,
        name: &str,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => panic!("upstream {name}: cannot listen on {addr}: {e}"),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let acceptor = {
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let seen = Arc::clone(&seen);
                    let handler = Arc::clone(&handler);
                    let stop = Arc::clone(&stop);
                    std::thread::spawn(move || serve_connection(conn, &seen, &*handler, &stop));
                }
            })
        };
        Upstream {
            name: name.to_string(),
            port,
            stop,
            seen,
            acceptor: Some(acceptor),
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

/// Reads one request; None at a clean end of the connection.
fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Seen>> {
    let Some(line) = read_text_line(r)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let Some(h) = read_text_line(r)? else {
            return Ok(None);
        };
        if h.is_empty() {
            break;
        }
        headers.extend(header_line(&h));
    }
    let mut seen = Seen {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if seen
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        seen.body = crate::http::read_chunked(r)?;
    } else if let Some(len) = seen
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        seen.body = body;
    }
    Ok(Some(seen))
}

fn serve_connection(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    handler: &Handler,
    stop: &AtomicBool,
) {
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut w = write_half;
    let mut r = BufReader::new(conn);
    while !stop.load(Ordering::SeqCst) {
        let req = match read_request(&mut r) {
            Ok(Some(req)) => req,
            _ => return,
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if let Ok(mut v) = seen.lock() {
            // Bounded: benchmarks send millions of requests.
            if v.len() < 100_000 {
                v.push(req.clone());
            }
        }
        let reply = handler(&req);
        if let Some(d) = reply.delay {
            std::thread::sleep(d);
        }
        let mut out =
            format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status)).into_bytes();
        for (k, v) in &reply.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\r\n", reply.body.len()).as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&reply.body);
        if w.write_all(&out).is_err() || close {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}
