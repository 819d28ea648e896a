//! `probe`: a test-only proxy-wasm module that exercises the emulator's host features.
//!
//! Its behaviour is driven by request headers so one module covers every test:
//! - `x-probe: op1,op2:arg,...` ops run in `on_http_request_headers`, in order;
//! - `x-probe-response: ...` ops run in `on_http_response_headers` (copied during the
//!   request headers, because the request map is gone after `Continue`);
//! - `x-probe-key`, `x-probe-value`, `x-probe-cas` are the shared-data operands.
//!
//! Each request op appends a request header `x-probe-result: <op>=<result>` (what the
//! host forwards upstream); each response op appends a response header `x-probe-result`.
//! Plugin configuration: `key=value` lines; `fail=1` refuses it, `tick_ms=N` starts the
//! root's timer. Every request increments counter `probe.requests`; every tick
//! increments `probe.ticks`.
//!
//! Raw imports are used where the SDK wrapper would panic on the status under test
//! (BadArgument from a map that is gone, from `proxy_set_effective_context`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
}

/// The raw status of `proxy_get_header_map_value(map, key)`, freeing any returned value.
fn raw_map_value_status(map: u32, key: &str) -> u32 {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let status =
        unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut data, &mut size) };
    if !data.is_null() {
        drop(unsafe { Vec::from_raw_parts(data, size, size) });
    }
    status
}

fn log(msg: &str) {
    let _ = hostcalls::log(LogLevel::Info, msg);
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn text(bytes: &Option<Vec<u8>>) -> String {
    match bytes {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => "none".to_string(),
    }
}

fn status_name(s: Status) -> String {
    format!("{s:?}")
}

#[derive(Default)]
struct Shared {
    config_at_configure: Option<Vec<u8>>,
    vm_config_at_start: Option<Vec<u8>>,
    /// Paused streams: (context id, resume at, unix ns).
    paused: Vec<(u32, u64)>,
    requests: Option<u32>,
    inflight: Option<u32>,
    ticks: Option<u32>,
    sizes: Option<u32>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { shared: Rc::new(RefCell::new(Shared::default())) })
    });
}}

struct ProbeRoot {
    shared: Rc<RefCell<Shared>>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm = hostcalls::get_buffer(BufferType::VmConfiguration, 0, usize::MAX)
            .ok()
            .flatten();
        self.shared.borrow_mut().vm_config_at_start = vm;
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten();
        log(&format!("probe: configured with {}", text(&cfg)));
        let cfg_text = text(&cfg);
        let mut sh = self.shared.borrow_mut();
        sh.config_at_configure = cfg;
        sh.requests = hostcalls::define_metric(MetricType::Counter, "probe.requests").ok();
        sh.inflight = hostcalls::define_metric(MetricType::Gauge, "probe.inflight").ok();
        sh.ticks = hostcalls::define_metric(MetricType::Counter, "probe.ticks").ok();
        sh.sizes = hostcalls::define_metric(MetricType::Histogram, "probe.sizes").ok();
        for line in cfg_text.lines() {
            match line.split_once('=') {
                Some(("fail", _)) => return false,
                Some(("tick_ms", ms)) => {
                    let ms = ms.trim().parse().unwrap_or(0);
                    let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
                }
                _ => {}
            }
        }
        true
    }

    fn on_tick(&mut self) {
        let now = now_ns();
        let mut sh = self.shared.borrow_mut();
        if let Some(id) = sh.ticks {
            let _ = hostcalls::increment_metric(id, 1);
        }
        log(&format!("probe: tick at {now}"));
        let (due, keep): (Vec<_>, Vec<_>) = sh.paused.iter().partition(|(_, at)| *at <= now);
        sh.paused = keep;
        drop(sh);
        for (id, _) in due {
            let status = unsafe { proxy_set_effective_context(id) };
            if status == 0 {
                let _ = hostcalls::resume_http_request();
                log(&format!("probe: resumed {id}"));
            } else {
                log(&format!("probe: set_effective_context({id}) = {status}"));
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp {
            id: context_id,
            shared: self.shared.clone(),
            response_ops: String::new(),
            key: String::new(),
            value: None,
            cas: None,
            saved: None,
            body_upper: false,
        }))
    }
}

struct ProbeHttp {
    id: u32,
    shared: Rc<RefCell<Shared>>,
    response_ops: String,
    key: String,
    value: Option<Vec<u8>>,
    cas: Option<u32>,
    /// (value, cas) saved by `cas-get` for `cas-set-saved`.
    saved: Option<(Option<Vec<u8>>, Option<u32>)>,
    body_upper: bool,
}

impl ProbeHttp {
    fn metric(&self, pick: fn(&Shared) -> Option<u32>) -> Option<u32> {
        pick(&self.shared.borrow())
    }

    /// Runs one op; returns its result text and whether it asks to pause.
    fn run(&mut self, op: &str, arg: &str) -> (String, bool) {
        match op {
            "pause" => {
                let ms: u64 = arg.parse().unwrap_or(0);
                self.shared
                    .borrow_mut()
                    .paused
                    .push((self.id, now_ns() + ms * 1_000_000));
                (format!("paused:{}", self.id), true)
            }
            "local-reply" => {
                let r = hostcalls::send_http_response(
                    418,
                    vec![("x-probe-reply", "1"), ("content-type", "text/probe")],
                    Some(b"probe says no"),
                );
                (format!("{r:?}"), false)
            }
            "config" => {
                let cfg = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                    .ok()
                    .flatten();
                (text(&cfg), false)
            }
            "config-at-configure" => (text(&self.shared.borrow().config_at_configure), false),
            "vmconfig" => {
                let now = hostcalls::get_buffer(BufferType::VmConfiguration, 0, usize::MAX)
                    .ok()
                    .flatten();
                (
                    format!(
                        "{}|{}",
                        text(&self.shared.borrow().vm_config_at_start),
                        text(&now)
                    ),
                    false,
                )
            }
            "cas-incr" => {
                let (v, cas) = hostcalls::get_shared_data(&self.key).unwrap_or((None, None));
                let n: u64 = v
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let next = (n + 1).to_string();
                match hostcalls::set_shared_data(&self.key, Some(next.as_bytes()), cas) {
                    Ok(()) => (format!("ok:{next}"), false),
                    Err(s) => (status_name(s), false),
                }
            }
            "cas-get" | "shared-get" => {
                let (v, cas) = hostcalls::get_shared_data(&self.key).unwrap_or((None, None));
                let out = format!(
                    "v={},cas={}",
                    text(&v),
                    cas.map_or("none".to_string(), |c| c.to_string())
                );
                self.saved = Some((v, cas));
                (out, false)
            }
            "shared-set" => {
                match hostcalls::set_shared_data(&self.key, self.value.as_deref(), self.cas) {
                    Ok(()) => ("ok".to_string(), false),
                    Err(s) => (status_name(s), false),
                }
            }
            "cas-set-saved" => {
                let cas = self.saved.as_ref().and_then(|(_, c)| *c);
                match hostcalls::set_shared_data(&self.key, self.value.as_deref(), cas) {
                    Ok(()) => ("ok".to_string(), false),
                    Err(s) => (status_name(s), false),
                }
            }
            "counter" => {
                let n: i64 = arg.parse().unwrap_or(1);
                match self.metric(|s| s.requests) {
                    Some(id) => (format!("{:?}", hostcalls::increment_metric(id, n)), false),
                    None => ("undefined".to_string(), false),
                }
            }
            "gauge" => {
                let n: i64 = arg.parse().unwrap_or(1);
                match self.metric(|s| s.inflight) {
                    Some(id) => (format!("{:?}", hostcalls::increment_metric(id, n)), false),
                    None => ("undefined".to_string(), false),
                }
            }
            "record-gauge" | "record-counter" | "record-histogram" => {
                let v: u64 = arg.parse().unwrap_or(0);
                let id = match op {
                    "record-gauge" => self.metric(|s| s.inflight),
                    "record-counter" => self.metric(|s| s.requests),
                    _ => self.metric(|s| s.sizes),
                };
                match id {
                    Some(id) => (format!("{:?}", hostcalls::record_metric(id, v)), false),
                    None => ("undefined".to_string(), false),
                }
            }
            "get-metrics" => {
                let get = |id: Option<u32>| id.map(hostcalls::get_metric);
                let (r, g, h) = {
                    let sh = self.shared.borrow();
                    (sh.requests, sh.inflight, sh.sizes)
                };
                (
                    format!(
                        "requests={:?},inflight={:?},sizes={:?}",
                        get(r),
                        get(g),
                        get(h)
                    ),
                    false,
                )
            }
            "set-prop" => {
                let (k, v) = arg.split_once('=').unwrap_or((arg, ""));
                let r = hostcalls::set_property(vec![k], Some(v.as_bytes()));
                (format!("{r:?}"), false)
            }
            "get-prop" | "get-prop-hex" => {
                let path: Vec<&str> = arg.split('/').collect();
                match hostcalls::get_property(path) {
                    Ok(Some(v)) if op == "get-prop-hex" => (
                        v.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                        false,
                    ),
                    Ok(v) => (text(&v), false),
                    Err(s) => (status_name(s), false),
                }
            }
            "callout" | "callout-nowait" => {
                let r = hostcalls::dispatch_http_call(
                    arg,
                    vec![
                        (":method", "GET"),
                        (":path", "/probe"),
                        (":authority", "probe"),
                    ],
                    Some(b"ping"),
                    vec![],
                    Duration::from_millis(1500),
                );
                match r {
                    Ok(token) => (format!("token={token}"), op == "callout"),
                    Err(s) => (status_name(s), false),
                }
            }
            "callout-no-path" => {
                let r = hostcalls::dispatch_http_call(
                    arg,
                    vec![(":method", "GET"), (":authority", "probe")],
                    None,
                    vec![],
                    Duration::from_millis(1500),
                );
                match r {
                    Ok(token) => (format!("token={token}"), false),
                    Err(s) => (status_name(s), false),
                }
            }
            "callout-late" => {
                // Call-response headers (map 6) outside on_http_call_response.
                (raw_map_value_status(6, ":status").to_string(), false)
            }
            "callout-body-late" => {
                // Call-response body (buffer 4) outside on_http_call_response: NotFound → None.
                let b = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, usize::MAX);
                (format!("{b:?}"), false)
            }
            "set-tick" => {
                let ms: u64 = arg.parse().unwrap_or(0);
                (
                    format!(
                        "{:?}",
                        hostcalls::set_tick_period(Duration::from_millis(ms))
                    ),
                    false,
                )
            }
            "set-effective" => {
                let id: u32 = arg.parse().unwrap_or(0);
                let status = unsafe { proxy_set_effective_context(id) };
                // Back to this stream, or the rest of the callback would act on `id`.
                unsafe { proxy_set_effective_context(self.id) };
                (status.to_string(), false)
            }
            "req-header-status" => (raw_map_value_status(0, arg).to_string(), false),
            "add-req" => {
                let (k, v) = arg.split_once('=').unwrap_or((arg, ""));
                let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, k, v);
                ("ok".to_string(), false)
            }
            "set-req" => {
                let (k, v) = arg.split_once('=').unwrap_or((arg, ""));
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, k, Some(v));
                ("ok".to_string(), false)
            }
            "replace-all" => {
                let map = vec![
                    (":method", "POST"),
                    (":path", "/new"),
                    (":authority", "z"),
                    ("x-only", "1"),
                ];
                (
                    format!("{:?}", hostcalls::set_map(MapType::HttpRequestHeaders, map)),
                    false,
                )
            }
            "get-all" => {
                let n = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).map(|m| m.len());
                (format!("{n:?}"), false)
            }
            "del-req" => {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, arg);
                ("ok".to_string(), false)
            }
            "add-resp" => {
                let (k, v) = arg.split_once('=').unwrap_or((arg, ""));
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, k, v);
                ("ok".to_string(), false)
            }
            "body-upper" => {
                self.body_upper = true;
                ("ok".to_string(), false)
            }
            "random" => {
                // std's HashMap seeds from WASI random_get.
                let mut m = std::collections::HashMap::new();
                m.insert(1u8, 1u8);
                let s = std::hash::BuildHasher::hash_one(m.hasher(), 7u8);
                (format!("{s:x}"), false)
            }
            "panic" => {
                #[allow(clippy::panic)]
                {
                    panic!("probe asked to panic")
                }
            }
            "reset" => (format!("{:?}", hostcalls::reset_http_request()), false),
            "" => ("noop".to_string(), false),
            _ => ("unknown-op".to_string(), false),
        }
    }
}

impl Context for ProbeHttp {
    fn on_http_call_response(
        &mut self,
        token: u32,
        nheaders: usize,
        body_size: usize,
        _ntrailers: usize,
    ) {
        let result = if nheaders == 0 {
            let st =
                hostcalls::get_grpc_status().map(|(c, m)| format!("{c}:{}", m.unwrap_or_default()));
            format!("failed:{}", st.unwrap_or_else(status_name))
        } else {
            let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .unwrap_or_default();
            let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten();
            format!("{status}:{}", text(&body))
        };
        let _ = hostcalls::add_map_value(
            MapType::HttpRequestHeaders,
            "x-probe-callout",
            &format!("ctx={},token={token},{result}", self.id),
        );
        let _ = hostcalls::resume_http_request();
    }
}

fn ops(spec: &str) -> Vec<(String, String)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once(':') {
            Some((o, a)) => (o.to_string(), a.to_string()),
            None => (s.to_string(), String::new()),
        })
        .collect()
}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if let Some(id) = self.metric(|s| s.requests) {
            let _ = hostcalls::increment_metric(id, 1);
        }
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
        };
        let spec = header("x-probe")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.response_ops = header("x-probe-response")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.key = header("x-probe-key")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.value = header("x-probe-value");
        self.cas = header("x-probe-cas")
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .filter(|c| *c != 0);
        let mut pause = false;
        let mut results = Vec::new();
        for (op, arg) in ops(&spec) {
            let (result, p) = self.run(&op, &arg);
            pause |= p;
            results.push(format!("{op}={result}"));
        }
        for r in &results {
            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-probe-result", r);
        }
        if pause {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, eos: bool) -> Action {
        if !self.body_upper {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let upper = body.to_ascii_uppercase();
        let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &upper);
        let _ = hostcalls::set_property(vec!["probe.body"], Some(&body));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let spec = std::mem::take(&mut self.response_ops);
        for (op, arg) in ops(&spec) {
            let result = match op.as_str() {
                "req-header-status" => raw_map_value_status(0, &arg).to_string(),
                other => self.run(other, &arg).0,
            };
            let _ = hostcalls::add_map_value(
                MapType::HttpResponseHeaders,
                "x-probe-result",
                &format!("{op}={result}"),
            );
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let path = hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path")
            .ok()
            .flatten();
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten();
        log(&format!(
            "probe: on_log ctx={} path={} status={}",
            self.id,
            path.unwrap_or_else(|| "none".into()),
            status.unwrap_or_else(|| "none".into())
        ));
    }
}
