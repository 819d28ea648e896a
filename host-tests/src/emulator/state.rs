//! The per-VM host state (the wasmtime store's data): contexts, streams, the effective
//! context, pending callouts, timers, metric ids, logs, and Envoy's rules for which
//! header map, buffer or property a hostcall can see at a given moment.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::abi::{map_type, HeaderMap, Status};
use super::shared::MetricKind;
use super::vm::VmConfig;
use super::world::World;

/// Where one direction (request or response) of a stream stands, from the host's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Headers not delivered yet.
    NotStarted,
    /// Headers (or trailers) returned `Pause` (StopAllIterationAndWatermark): nothing
    /// moves until the filter resumes; body/trailers that arrive meanwhile are queued.
    Paused,
    /// A body callback returned `Pause` (StopIterationAndBuffer): Envoy keeps buffering
    /// and calls the filter again with the accumulated body.
    Buffering,
    /// Flowing.
    Continued,
    /// Stopped for good: answered by a local reply or reset.
    Stopped,
}

/// A local reply captured from `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Headers exactly as the filter passed them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `None` when the filter passed -1 (what `send_http_response` does).
    pub grpc_status: Option<i32>,
    pub details: String,
}

impl LocalReply {
    /// The first value of a header the filter set on the reply.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A unary gRPC call dispatched by the module and not answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    pub token: u32,
    /// What the module passed as the upstream: a cluster name or a serialized
    /// `GrpcService`.
    pub upstream: Vec<u8>,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout: Duration,
    pub context_id: u32,
}

/// A callout dispatched by the module and not answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// 0 = no per-request timeout (Envoy's reading of `timeout_ms == 0`).
    pub timeout: Duration,
    /// The (effective) context that dispatched it; the response still goes to the root.
    pub context_id: u32,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One host→VM entry: the export called and its arguments (as unsigned i32s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmCall {
    pub name: String,
    pub args: Vec<i64>,
}

/// One `proxy_log` (or WASI stdout/stderr) line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// proxy-wasm level: 0 trace … 5 critical.
    pub level: u32,
    /// The effective context when it was logged (0 outside any callback).
    pub context_id: u32,
    pub message: String,
}

#[derive(Debug)]
pub(crate) struct Direction {
    pub headers: HeaderMap,
    pub headers_received: bool,
    /// Envoy nulls its pointer to the headers once the filter continues them.
    pub headers_live: bool,
    pub trailers: Option<HeaderMap>,
    pub trailers_live: bool,
    /// The body the filter sees in its current body callback (accumulated while buffering).
    pub body_buf: Vec<u8>,
    pub body_visible: bool,
    /// What passed the filter (upstream for the request, downstream for the response).
    pub forwarded_body: Vec<u8>,
    pub flow: Flow,
    pub queued_body: Option<(Vec<u8>, bool)>,
    pub queued_trailers: Option<HeaderMap>,
}

impl Default for Direction {
    fn default() -> Self {
        Direction {
            headers: Vec::new(),
            headers_received: false,
            headers_live: false,
            trailers: None,
            trailers_live: false,
            body_buf: Vec::new(),
            body_visible: false,
            forwarded_body: Vec::new(),
            flow: Flow::NotStarted,
            queued_body: None,
            queued_trailers: None,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub alive: bool,
    pub props: HashMap<Vec<String>, Vec<u8>>,
    pub filter_state: BTreeMap<String, Vec<u8>>,
    pub req: Direction,
    pub resp: Direction,
    pub local_reply: Option<LocalReply>,
    pub reset: bool,
    pub route_cache_clears: u32,
}

/// After-VM-call actions: Envoy applies these once the callback has returned.
#[derive(Debug)]
pub(crate) enum Deferred {
    Continue(u32, u32),
    /// `proxy_close_stream` (either direction): Envoy resets the stream.
    Close(u32),
    LocalReply(u32, LocalReply),
}

pub(crate) struct CallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

pub(crate) struct Host {
    pub world: World,
    pub cfg: VmConfig,
    pub guest: Option<super::abi::Guest>,
    pub root_id: u32,
    pub next_context_id: u32,
    pub streams: BTreeMap<u32, Stream>,
    /// The context the current host→VM entry is for, and the effective one
    /// (`proxy_set_effective_context`); both reset at every entry.
    pub current: u32,
    pub effective: u32,
    pub in_configure: bool,
    pub in_log: bool,
    pub call_response: Option<CallResponse>,
    /// What `proxy_get_status` returns.
    pub status: (u32, Vec<u8>),
    pub tick_period: Option<Duration>,
    /// World-elapsed instant of the next tick.
    pub next_tick_at: Option<Duration>,
    pub http_calls: BTreeMap<u32, HttpCall>,
    pub grpc_calls: BTreeMap<u32, GrpcCall>,
    /// The message of the gRPC answer being delivered (buffer 5).
    pub grpc_message: Option<Vec<u8>>,
    pub next_token: u32,
    pub metric_ids: HashMap<u32, (String, MetricKind)>,
    pub next_metric: u32,
    pub logs: Vec<LogEntry>,
    pub rng: u64,
    pub deferred: Vec<Deferred>,
    pub fd_lines: [Vec<u8>; 3],
    pub calls: Vec<VmCall>,
    /// How many times each import was called (plus `proxy_on_memory_allocate`, the
    /// host's call back into the guest for every buffer it returns): in Envoy each
    /// crossing costs microseconds, so filters are held to a budget of them.
    pub hostcalls: BTreeMap<String, u64>,
}

impl Host {
    /// A new callout's token, and the context it belongs to (the effective
    /// one, else the root).
    pub(crate) fn new_callout(&mut self) -> (u32, u32) {
        let token = self.next_token;
        self.next_token += 1;
        let context_id = if self.effective != 0 {
            self.effective
        } else {
            self.root_id
        };
        (token, context_id)
    }

    pub fn new(world: World, cfg: VmConfig) -> Host {
        let rng = cfg.seed ^ 0x6d65_7368_7761_736d;
        Host {
            world,
            cfg,
            guest: None,
            root_id: 1,
            next_context_id: 2,
            streams: BTreeMap::new(),
            current: 0,
            effective: 0,
            in_configure: false,
            in_log: false,
            call_response: None,
            status: (0, Vec::new()),
            tick_period: None,
            next_tick_at: None,
            http_calls: BTreeMap::new(),
            grpc_calls: BTreeMap::new(),
            grpc_message: None,
            next_token: 1,
            metric_ids: HashMap::new(),
            next_metric: 1,
            logs: Vec::new(),
            rng,
            deferred: Vec::new(),
            fd_lines: [Vec::new(), Vec::new(), Vec::new()],
            calls: Vec::new(),
            hostcalls: BTreeMap::new(),
        }
    }

    /// SplitMix64: the seeded randomness behind WASI `random_get`.
    pub fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn log(&mut self, level: u32, message: String) {
        if std::env::var_os("MESHWASM_EMU_QUIET").is_none() {
            eprintln!(
                "[wasm {} ctx={}] {}",
                level_name(level),
                self.effective,
                message
            );
        }
        self.logs.push(LogEntry {
            level,
            context_id: self.effective,
            message,
        });
    }

    /// The live stream the effective context names, if it is a stream.
    pub fn stream(&self) -> Option<&Stream> {
        self.streams.get(&self.effective).filter(|s| s.alive)
    }

    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        let id = self.effective;
        self.streams.get_mut(&id).filter(|s| s.alive)
    }

    /// The header map `t` as a hostcall sees it now (Envoy's `getConstMap`).
    pub fn map(&self, t: u32) -> Result<&HeaderMap, Status> {
        if t == map_type::HTTP_CALL_RESPONSE_HEADERS || t == map_type::HTTP_CALL_RESPONSE_TRAILERS {
            let r = self.call_response.as_ref().ok_or(Status::BadArgument)?;
            return Ok(if t == map_type::HTTP_CALL_RESPONSE_HEADERS {
                &r.headers
            } else {
                &r.trailers
            });
        }
        let s = self.stream().ok_or(Status::BadArgument)?;
        if self.in_log {
            // Access-log phase: Envoy hands the final maps; a missing one is NotFound (ABI 0.2.x).
            return match t {
                map_type::REQUEST_HEADERS if s.req.headers_received => Ok(&s.req.headers),
                map_type::RESPONSE_HEADERS if s.resp.headers_received => Ok(&s.resp.headers),
                map_type::RESPONSE_TRAILERS => s.resp.trailers.as_ref().ok_or(Status::NotFound),
                _ => Err(Status::NotFound),
            };
        }
        let (d, trailers) = match t {
            map_type::REQUEST_HEADERS => (&s.req, false),
            map_type::REQUEST_TRAILERS => (&s.req, true),
            map_type::RESPONSE_HEADERS => (&s.resp, false),
            map_type::RESPONSE_TRAILERS => (&s.resp, true),
            _ => return Err(Status::BadArgument),
        };
        if trailers {
            match (&d.trailers, d.trailers_live) {
                (Some(m), true) => Ok(m),
                _ => Err(Status::BadArgument),
            }
        } else if d.headers_live {
            Ok(&d.headers)
        } else {
            Err(Status::BadArgument)
        }
    }

    /// The header map `t` for a mutation (Envoy's `getMap`); counts route-cache clears
    /// for request-header mutations (automatic for ABI 0.2.1, reference §3.2).
    pub fn map_mut(&mut self, t: u32) -> Result<&mut HeaderMap, Status> {
        if self.in_log {
            return Err(Status::BadArgument);
        }
        self.map(t)?;
        let s = self.stream_mut().ok_or(Status::BadArgument)?;
        Ok(match t {
            map_type::REQUEST_HEADERS => {
                s.route_cache_clears += 1;
                &mut s.req.headers
            }
            map_type::RESPONSE_HEADERS => &mut s.resp.headers,
            map_type::REQUEST_TRAILERS => s.req.trailers.get_or_insert_with(Vec::new),
            map_type::RESPONSE_TRAILERS => s.resp.trailers.get_or_insert_with(Vec::new),
            _ => return Err(Status::BadArgument),
        })
    }

    /// `proxy_get_property` resolution (reference §1.1, §2.1).
    pub fn property(&self, path: &[String]) -> Result<Vec<u8>, Status> {
        let first = path.first().map(String::as_str).unwrap_or("");
        match first {
            "plugin_name" => return Ok(self.cfg.plugin_name.clone().into_bytes()),
            "plugin_root_id" => return Ok(self.cfg.root_id.clone().into_bytes()),
            "plugin_vm_id" => return Ok(self.cfg.vm_id.clone().into_bytes()),
            _ => {}
        }
        if let Some((_, v)) = self
            .cfg
            .properties
            .iter()
            .find(|(p, _)| p.as_slice() == path)
        {
            return Ok(v.clone());
        }
        // Root context: no stream info, so nothing else resolves.
        let s = self.stream().ok_or(Status::NotFound)?;
        if let Some(v) = s.props.get(path) {
            return Ok(v.clone());
        }
        // A deeper path under a map/list value the test set: walk into it.
        for cut in (1..path.len()).rev() {
            if let Some(v) = s.props.get(&path[..cut]) {
                return super::abi::descend(v, &path[cut..]).ok_or(Status::NotFound);
            }
        }
        const TOKENS: [&str; 10] = [
            "request",
            "response",
            "connection",
            "upstream",
            "source",
            "destination",
            "metadata",
            "filter_state",
            "upstream_filter_state",
            "xds",
        ];
        if TOKENS.contains(&first) {
            if let Some(v) = self.derived_property(s, path) {
                return v;
            }
            if path.len() == 1 && first != "metadata" {
                return Err(Status::SerializationFailure);
            }
            return Err(Status::NotFound);
        }
        let key = format!("wasm.{}", path.join("\0"));
        s.filter_state.get(&key).cloned().ok_or(Status::NotFound)
    }

    fn derived_property(&self, s: &Stream, path: &[String]) -> Option<Result<Vec<u8>, Status>> {
        let seg: Vec<&str> = path.iter().map(String::as_str).collect();
        let req = if s.req.headers_live || (self.in_log && s.req.headers_received) {
            Some(&s.req.headers)
        } else {
            None
        };
        let get = |m: &HeaderMap, name: &str| -> Option<Vec<u8>> {
            let vals: Vec<&[u8]> = m
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
                .collect();
            if vals.is_empty() {
                None
            } else {
                Some(vals.join(&b","[..]))
            }
        };
        let found = |v: Option<Vec<u8>>| Some(v.ok_or(Status::NotFound));
        match seg.as_slice() {
            ["filter_state", key] => found(s.filter_state.get(*key).cloned()),
            ["request", field] => {
                let m = req?;
                let path = get(m, ":path").unwrap_or_default();
                let before_fragment = path.split(|b| *b == b'#').next().unwrap_or(&[]).to_vec();
                match *field {
                    "path" => found(get(m, ":path")),
                    "url_path" => found(Some(
                        path.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec(),
                    )),
                    "query" => {
                        let q = before_fragment.iter().position(|b| *b == b'?');
                        found(Some(
                            q.map(|i| before_fragment[i + 1..].to_vec())
                                .unwrap_or_default(),
                        ))
                    }
                    "host" => found(get(m, ":authority").or_else(|| get(m, "host"))),
                    "method" => found(get(m, ":method")),
                    "scheme" => found(get(m, ":scheme")),
                    "id" => found(get(m, "x-request-id")),
                    "useragent" => found(get(m, "user-agent")),
                    "referer" => found(get(m, "referer")),
                    "headers" => Some(Ok(super::abi::encode_pairs(m))),
                    _ => None,
                }
            }
            ["request", "headers", name] => found(get(req?, &name.to_ascii_lowercase())),
            ["response", "code"] if s.resp.headers_received => {
                let code = get(&s.resp.headers, ":status")
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<i64>().ok())?;
                Some(Ok(code.to_le_bytes().to_vec()))
            }
            ["response", "headers", name]
                if s.resp.headers_live || (self.in_log && s.resp.headers_received) =>
            {
                found(get(&s.resp.headers, &name.to_ascii_lowercase()))
            }
            _ => None,
        }
    }
}

pub(crate) fn level_name(level: u32) -> &'static str {
    match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        4 => "error",
        5 => "critical",
        _ => "stdio",
    }
}
