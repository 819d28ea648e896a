//! A raw HTTP/1.1 client: the request line carries the path bytes exactly as the
//! test wrote them (dot segments, percent-encodings, odd hosts), one connection
//! per request, so what Envoy parses is what the test meant.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Headers whose values are bytes that need not be UTF-8 (RFC 9110
    /// obs-text), written after `headers`.
    pub raw_headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            raw_headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    /// Adds a header (repeat the call for repeated headers). A `host` header
    /// replaces the default `host: localhost`.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a header whose value is raw bytes (after the text headers).
    pub fn raw_header(mut self, name: &str, value: &[u8]) -> Request {
        self.raw_headers.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        if !self.has_header("host") {
            out.extend_from_slice(b"host: localhost\r\n");
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        for (k, v) in &self.raw_headers {
            out.extend_from_slice(format!("{k}: ").as_bytes());
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() && !self.has_header("content-length") {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The name of the echo upstream that answered (`Upstream::echo(name)`), if any.
    pub fn upstream(&self) -> Option<String> {
        self.json()
            .get("upstream")
            .and_then(|v| v.as_str())
            .map(String::from)
    }

    /// A request header as the echo upstream saw it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()
            .get("headers")
            .and_then(|h| h.get(name.to_ascii_lowercase()))
            .and_then(|v| v.as_str())
            .map(String::from)
    }
}

/// Sends `req` to 127.0.0.1:`port` and reads the whole response.
pub fn send(port: u16, req: &Request) -> io::Result<Response> {
    send_with_timeout(port, req, Duration::from_secs(30))
}

pub fn send_with_timeout(port: u16, req: &Request, timeout: Duration) -> io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(&req.to_bytes())?;
    read_response(&mut BufReader::new(stream), &req.method)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    read_text_line(r)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))
}

/// One line without its end; None at the end of the stream. Bytes that are
/// not UTF-8 (obs-text in a header value) are read lossily, as U+FFFD.
pub(crate) fn read_text_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&line);
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// A header line as (lower-case name, trimmed value); None without a `:`.
pub(crate) fn header_line(line: &str) -> Option<(String, String)> {
    let (k, v) = line.split_once(':')?;
    Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

pub(crate) fn read_response(r: &mut impl BufRead, method: &str) -> io::Result<Response> {
    let status_line = read_line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        headers.extend(header_line(&line));
    }
    let resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let no_body = method.eq_ignore_ascii_case("HEAD")
        || status == 204
        || status == 304
        || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(r)?
    } else if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        body
    } else {
        let mut body = Vec::new();
        r.read_to_end(&mut body)?;
        body
    };
    Ok(Response { body, ..resp })
}

pub(crate) fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line(r)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked() {
        let raw = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\nContent-Type: text/plain\r\n\r\nRBAC: access denied";
        let r = read_response(&mut &raw[..], "GET").unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.text(), "RBAC: access denied");
        assert_eq!(r.header("content-type"), Some("text/plain"));

        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = read_response(&mut &raw[..], "GET").unwrap();
        assert_eq!(r.text(), "abcde");
    }

    #[test]
    fn request_keeps_raw_path_and_default_host() {
        let bytes = Request::get("/a/../b%2F?x=1").header("x-a", "1").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("GET /a/../b%2F?x=1 HTTP/1.1\r\nhost: localhost\r\nx-a: 1\r\n"));
        let text =
            String::from_utf8(Request::get("/").header("Host", "example.com").to_bytes()).unwrap();
        assert!(!text.contains("localhost"));
    }
}
