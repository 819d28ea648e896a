//! meshwasm local_ratelimit: Envoy's `LocalRateLimit` as a proxy-wasm filter.
//!
//! Glue only: request headers + downstream address → `meshwasm_core::ratelimit`
//! decides over buckets in shared data (one per Envoy process, like the native
//! filter) → local reply / pass-through, `X-RateLimit-*` on the response, counters.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use meshwasm_core::host::{RandomSource, SplitMix64};
use meshwasm_core::ratelimit::{
    namespace, AppendAction, BucketId, HeaderReads, LocalRateLimit, LocalStore, RememberingStore,
    RequestView, StoreStats, Verdict, WriteMemory,
};
use meshwasm_glue as glue;
use meshwasm_glue::HostStore;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

const FILTER: &str = "local_ratelimit";
const BODY: &str = "local_rate_limited";
/// Per-connection buckets kept per worker; the least recently used connection's
/// buckets are dropped beyond this (Envoy drops them when the connection closes,
/// which an HTTP filter is not told).
const MAX_CONNECTIONS: usize = 4096;

// Envoy enters the VM only for these: the decision, the `x-ratelimit-*` response
// headers, and `delete` (frees the stream). `make build` prunes the others.
meshwasm_glue::callbacks!("request_headers response_headers delete");

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Seconds on the host's monotonic clock, as Envoy's token bucket reads it.
fn now_secs() -> f64 {
    glue::monotonic_nanos() as f64 / 1e9
}

#[derive(Clone, Copy, Default)]
struct Counters {
    enabled: glue::Counter,
    ok: glue::Counter,
    rate_limited: glue::Counter,
    enforced: glue::Counter,
    shadow_mode: glue::Counter,
    cas_retries: glue::Counter,
    cas_exhausted: glue::Counter,
    dynamic_evictions: glue::Counter,
}

impl Counters {
    fn define() -> Counters {
        let c = |n| glue::Counter::define(FILTER, n);
        Counters {
            enabled: c("enabled"),
            ok: c("ok"),
            rate_limited: c("rate_limited"),
            enforced: c("enforced"),
            shadow_mode: c("shadow_mode"),
            cas_retries: c("cas_retries"),
            cas_exhausted: c("cas_exhausted"),
            dynamic_evictions: c("dynamic_evictions"),
        }
    }

    fn add(&self, s: &StoreStats) {
        self.cas_retries.add(s.cas_retries);
        self.cas_exhausted.add(s.cas_exhausted);
        self.dynamic_evictions.add(s.dynamic_evictions);
    }
}

/// Buckets of `local_rate_limit_per_downstream_connection`, per worker VM.
#[derive(Default)]
struct Connections {
    seq: u64,
    map: HashMap<u64, (u64, Rc<LocalStore>)>,
}

impl Connections {
    fn get(&mut self, id: u64) -> Rc<LocalStore> {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.map.get_mut(&id) {
            e.0 = seq;
            return e.1.clone();
        }
        if self.map.len() >= MAX_CONNECTIONS {
            if let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (s, _))| *s)
                .map(|(k, _)| *k)
            {
                self.map.remove(&old);
            }
        }
        let store = Rc::new(LocalStore::default());
        self.map.insert(id, (seq, store.clone()));
        store
    }
}

struct Shared {
    cfg: LocalRateLimit,
    /// What a decision reads of the request (from `cfg`, once).
    header_reads: HeaderReads,
    reads_remote_address: bool,
    ns: String,
    counters: Counters,
    rng: RefCell<SplitMix64>,
    connections: RefCell<Connections>,
    /// What this worker last wrote to its buckets, so an update can usually
    /// skip the shared-data read (`ratelimit::remember`).
    memory: RefCell<WriteMemory>,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = glue::plugin_config().unwrap_or_default();
        let cfg = match LocalRateLimit::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                glue::log_error(&format!("{FILTER}: {e}"));
                return false;
            }
        };
        let name = glue::property_string(&["plugin_name"]).unwrap_or_default();
        let root_id = glue::property_string(&["plugin_root_id"]).unwrap_or_default();
        let ns = namespace(&name, &root_id, &bytes);
        if !cfg.per_connection {
            cfg.init_store(&HostStore, &ns, now_secs());
        }
        glue::log_debug(&format!("{FILTER}: shared data keys under {ns}/"));
        let seed = glue::now_nanos() ^ ((self as *const Root as usize as u64) << 32);
        self.shared = Some(Rc::new(Shared {
            header_reads: cfg.header_reads(),
            reads_remote_address: cfg.needs_remote_address(),
            cfg,
            ns,
            counters: Counters::define(),
            rng: RefCell::new(SplitMix64::new(seed)),
            connections: RefCell::new(Connections::default()),
            memory: RefCell::new(WriteMemory::default()),
        }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone(),
            bucket: None,
            store: None,
        }))
    }
}

struct Http {
    shared: Option<Rc<Shared>>,
    /// The bucket the `X-RateLimit-*` headers describe.
    bucket: Option<BucketId>,
    /// Per-connection store, when configured.
    store: Option<Rc<LocalStore>>,
}

impl Context for Http {}

/// Envoy `Grpc::Common::isGrpcRequestHeaders`: content-type `application/grpc`,
/// or `application/grpc+...` / `application/grpc;...`. Read only on a rejection.
fn is_grpc() -> bool {
    glue::request_header("content-type").is_some_and(|v| {
        v.as_slice() == b"application/grpc"
            || v.starts_with(b"application/grpc+")
            || v.starts_with(b"application/grpc;")
    })
}

fn remote_ip() -> Option<IpAddr> {
    let s = glue::property_string(&["source", "address"])?;
    s.parse::<SocketAddr>()
        .map(|a| a.ip())
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok())
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(sh) = self.shared.clone() else {
            return Action::Continue;
        };
        let cfg = &sh.cfg;
        let rolls = {
            let mut r = sh.rng.borrow_mut();
            (r.next_u64(), r.next_u64())
        };
        if !cfg.enabled(rolls.0) {
            return Action::Continue;
        }
        sh.counters.enabled.inc();
        // The header map is the costliest host call: fetch only what the
        // descriptor actions read.
        let headers = match &sh.header_reads {
            HeaderReads::Nothing => Vec::new(),
            HeaderReads::Named(names) => names
                .iter()
                .filter_map(|n| glue::request_header(n).map(|v| (n.clone(), v)))
                .collect(),
            HeaderReads::All => glue::request_headers(),
        };
        let ip = if sh.reads_remote_address {
            remote_ip()
        } else {
            None
        };
        let req = RequestView {
            headers: &headers,
            remote_ip: ip,
        };
        if cfg.per_connection {
            let id = glue::property_u64(&["connection_id"]).unwrap_or(0);
            self.store = Some(sh.connections.borrow_mut().get(id));
        }
        let mut stats = StoreStats::default();
        let (verdict, bucket) = match &self.store {
            Some(s) => cfg.decide(s.as_ref(), &sh.ns, now_secs(), &req, rolls, &mut stats),
            None => {
                let store = RememberingStore::new(&HostStore, &sh.memory);
                cfg.decide(&store, &sh.ns, now_secs(), &req, rolls, &mut stats)
            }
        };
        sh.counters.add(&stats);
        self.bucket = bucket;
        match verdict {
            Verdict::Disabled => Action::Continue,
            Verdict::Allowed => {
                sh.counters.ok.inc();
                Action::Continue
            }
            Verdict::ShadowLimited => {
                sh.counters.rate_limited.inc();
                sh.counters.shadow_mode.inc();
                Action::Continue
            }
            Verdict::LimitedNotEnforced => {
                sh.counters.rate_limited.inc();
                glue::apply_header_options(
                    MapType::HttpRequestHeaders,
                    &cfg.request_headers_to_add_when_not_enforced,
                );
                Action::Continue
            }
            Verdict::Limited => {
                sh.counters.rate_limited.inc();
                sh.counters.enforced.inc();
                // The reply headers are new, so every action but "overwrite if
                // exists" adds the header.
                let extra: Vec<(&str, &str)> = cfg
                    .response_headers_to_add
                    .iter()
                    .filter(|h| h.action != AppendAction::OverwriteIfExists)
                    .filter(|h| !h.value.is_empty() || h.keep_empty_value)
                    .map(|h| (h.name.as_str(), h.value.as_str()))
                    .collect();
                if cfg.rate_limited_as_resource_exhausted && is_grpc() {
                    // RESOURCE_EXHAUSTED (8) instead of the UNAVAILABLE Envoy maps 429 to.
                    let _ = hostcalls::send_grpc_response(
                        proxy_wasm::types::GrpcStatusCode::ResourceExhausted,
                        Some(BODY),
                        extra.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
                    );
                } else {
                    glue::send_local_reply(cfg.status, &extra, BODY.as_bytes());
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(sh), Some(bucket)) = (self.shared.clone(), self.bucket) else {
            return Action::Continue;
        };
        if !sh.cfg.x_ratelimit_headers {
            return Action::Continue;
        }
        let now = now_secs();
        let values = match &self.store {
            Some(s) => sh.cfg.x_ratelimit(s.as_ref(), &sh.ns, now, bucket),
            None => sh.cfg.x_ratelimit(&HostStore, &sh.ns, now, bucket),
        };
        if let Some((limit, remaining, reset)) = values {
            glue::add_response_header("x-ratelimit-limit", limit.to_string().as_bytes());
            glue::add_response_header("x-ratelimit-remaining", remaining.to_string().as_bytes());
            glue::add_response_header("x-ratelimit-reset", reset.to_string().as_bytes());
        }
        Action::Continue
    }
}
