//! meshwasm jwt_authn: Istio RequestAuthentication as a proxy-wasm filter.
//!
//! Thin glue: request headers → `meshwasm_core::jwt::JwtAuthn::evaluate` →
//! header edits, filter state, local reply, metrics. `jwksUri` keys are fetched
//! with `dispatch_http_call`, kept per worker and shared across workers through
//! shared data; requests that arrive before any keys wait (paused) for them.

use std::cell::RefCell;
use std::rc::Rc;

use meshwasm_core::jwt::{
    Decision, HeaderOp, JwtAuthn, KeyEvent, KeyHost, KeyStore, RemoteJwks, TokenCache,
    FILTER_STATE_PAYLOAD, FILTER_STATE_PRINCIPAL, METRIC_REASONS,
};
use meshwasm_glue::{self as glue, Counter};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

const FILTER: &str = "jwt_authn";
/// Verified tokens kept per worker.
const TOKEN_CACHE_SIZE: usize = 256;
const TICK_MS: u64 = 1000;

// Envoy enters the VM only for these: verification, JWKS fetch answers and the
// refresh tick, and `delete` (frees the stream). `make build` prunes the others.
meshwasm_glue::callbacks!("request_headers http_call_response tick delete");

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default, Clone, Copy)]
struct Metrics {
    allowed: Counter,
    denied: Counter,
    denied_reason: [Counter; 8],
    missing: Counter,
    cors_preflight: Counter,
    jwks_fetch_success: Counter,
    jwks_fetch_failed: Counter,
    cache_hit: Counter,
    cache_miss: Counter,
}

impl Metrics {
    fn define() -> Metrics {
        let mut m = Metrics {
            allowed: Counter::define(FILTER, "allowed"),
            denied: Counter::define(FILTER, "denied"),
            missing: Counter::define(FILTER, "missing"),
            cors_preflight: Counter::define(FILTER, "cors_preflight"),
            jwks_fetch_success: Counter::define(FILTER, "jwks_fetch_success"),
            jwks_fetch_failed: Counter::define(FILTER, "jwks_fetch_failed"),
            cache_hit: Counter::define(FILTER, "cache_hit"),
            cache_miss: Counter::define(FILTER, "cache_miss"),
            ..Metrics::default()
        };
        for (i, r) in METRIC_REASONS.iter().enumerate() {
            if let Some(c) = m.denied_reason.get_mut(i) {
                *c = Counter::define(FILTER, &format!("denied_{r}"));
            }
        }
        m
    }
}

struct State {
    authn: Rc<JwtAuthn>,
    cache: TokenCache,
    keys: KeyStore,
    metrics: Metrics,
}

impl State {
    /// Counts and logs what the key store did; new keys empty the token cache
    /// (tokens verified with keys that may be gone are checked again).
    fn apply(&mut self, events: Vec<KeyEvent>) {
        for e in events {
            if e.keys_changed() {
                self.cache.clear();
            }
            match e {
                KeyEvent::Fetched { .. } => self.metrics.jwks_fetch_success.inc(),
                KeyEvent::Adopted { .. } => {}
                KeyEvent::FetchFailed {
                    provider,
                    status,
                    stale_kept,
                } => {
                    self.metrics.jwks_fetch_failed.inc();
                    glue::log_info(&format!(
                        "{FILTER}: jwks fetch of {} failed (status {status:?}); {} keys kept",
                        self.authn.remote(provider).map_or("?", |r| r.uri.as_str()),
                        if stale_kept { "stale" } else { "no" }
                    ));
                }
                KeyEvent::NotStarted { provider, error } => {
                    self.metrics.jwks_fetch_failed.inc();
                    let remote = self.authn.remote(provider);
                    glue::log_error(&format!(
                        "{FILTER}: jwks fetch of {} through cluster {:?} failed to start: {error}",
                        remote.map_or("?", |r| r.uri.as_str()),
                        remote.map_or("?", |r| r.cluster.as_str()),
                    ));
                }
            }
        }
    }
}

type Shared = Rc<RefCell<Option<State>>>;

/// Envoy's shared data and `dispatch_http_call`, for the key store.
struct Host;

impl KeyHost for Host {
    fn shared(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key).ok()?.0
    }

    fn set_shared(&mut self, key: &str, value: &[u8]) {
        let _ = hostcalls::set_shared_data(key, Some(value), None);
    }

    fn fetch(&mut self, remote: &RemoteJwks) -> Result<u32, String> {
        let headers = vec![
            (":method", "GET"),
            (":path", remote.path.as_str()),
            (":authority", remote.authority.as_str()),
            ("accept", "application/json"),
        ];
        hostcalls::dispatch_http_call(&remote.cluster, headers, None, vec![], remote.timeout)
            .map_err(|e| format!("{e:?}"))
    }
}

/// Handles a callout response (in whichever context received it).
fn on_fetch_response(shared: &Shared, token: u32, num_headers: usize, body_size: usize) {
    let resume = {
        let mut guard = shared.borrow_mut();
        let Some(st) = guard.as_mut() else { return };
        if !st.keys.is_ours(token) {
            return;
        }
        // A reset callout comes with no headers, and then the SDK's map getters
        // would panic on the host's answer: read nothing.
        let (status, body) = if num_headers == 0 {
            (None, Vec::new())
        } else {
            let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten();
            let body = if body_size == 0 {
                Vec::new()
            } else {
                hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            };
            (status, body)
        };
        let mut events = Vec::new();
        let authn = st.authn.clone();
        let resume = st.keys.on_response(
            &authn,
            token,
            status.as_deref(),
            &body,
            glue::now_nanos(),
            &mut Host,
            &mut events,
        );
        st.apply(events);
        resume.unwrap_or_default()
    };
    for id in resume {
        if glue::set_effective_context(id) {
            process(shared, id, true);
        }
    }
}

/// Decides the request of the effective context and applies the decision.
/// `paused`: the request waits in Pause and must be resumed on success.
fn process(shared: &Shared, context_id: u32, paused: bool) -> Action {
    // The host's header map, parsed in place (the core reads values as text
    // only where it needs them).
    let mut map = Some(glue::request_header_map());
    let mut guard = shared.borrow_mut();
    let Some(st) = guard.as_mut() else {
        return Action::Continue;
    };
    let now = glue::now_nanos();
    let authn = st.authn.clone();
    let mut decision = None;
    // At most a few rounds: keys adopted from shared data, then a fetch.
    for _ in 0..4 {
        // A second round (keys were needed first, rare) reads them again.
        let map = map.take().unwrap_or_else(glue::request_header_map);
        let headers = map.pairs();
        let ev = authn.evaluate(
            &headers,
            now / 1_000_000_000,
            &st.keys.at(now),
            &mut st.cache,
        );
        st.metrics.cache_hit.add(u64::from(ev.cache_hits));
        st.metrics.cache_miss.add(u64::from(ev.cache_misses));
        match ev.decision {
            Decision::FetchJwks { provider, refetch } => {
                let mut events = Vec::new();
                let wait = st.keys.need(
                    &authn,
                    provider,
                    refetch,
                    context_id,
                    now,
                    &mut Host,
                    &mut events,
                );
                st.apply(events);
                if wait {
                    return Action::Pause;
                }
                // Keys adopted, or the fetch could not start: evaluate again.
            }
            d => {
                decision = Some(d);
                break;
            }
        }
    }
    let metrics = st.metrics;
    drop(guard);
    match decision {
        Some(Decision::Allow(allow)) => {
            for op in &allow.ops {
                match op {
                    HeaderOp::Remove(name) => glue::remove_request_header(name),
                    HeaderOp::Add(name, value) => glue::add_request_header(name, value.as_bytes()),
                    HeaderOp::SetPath(path) => {
                        glue::set_request_header(":path", Some(path.as_bytes()))
                    }
                }
            }
            if let Some(payload) = &allow.payload {
                glue::set_filter_state(FILTER_STATE_PAYLOAD, payload.msgpack());
            }
            if let Some(principal) = &allow.principal {
                glue::set_filter_state(FILTER_STATE_PRINCIPAL, principal.as_bytes());
            }
            metrics.allowed.inc();
            if allow.cors_preflight {
                metrics.cors_preflight.inc();
            } else if allow.payload.is_none() {
                metrics.missing.inc();
            }
            if paused {
                glue::resume_request();
            }
            Action::Continue
        }
        Some(Decision::Deny(deny)) => {
            metrics.denied.inc();
            let reason = deny.status.metric_reason();
            if let Some(i) = METRIC_REASONS.iter().position(|r| *r == reason) {
                metrics.denied_reason[i].inc();
            }
            glue::send_local_reply(
                deny.http_status,
                &[("www-authenticate", deny.www_authenticate.as_str())],
                deny.body.as_bytes(),
            );
            Action::Pause
        }
        // Keys never became available (should not happen): fail closed.
        _ => {
            metrics.denied.inc();
            glue::send_local_reply(500, &[], b"jwt_authn: no decision");
            Action::Pause
        }
    }
}

#[derive(Default)]
struct Root {
    shared: Shared,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _t: usize) {
        on_fetch_response(&self.shared, token, headers, body_size);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = glue::plugin_config().unwrap_or_default();
        let authn = match JwtAuthn::from_json(&config) {
            Ok(a) => a,
            Err(e) => {
                glue::log_error(&format!("{FILTER}: {e}"));
                return false;
            }
        };
        if authn.has_remote() {
            glue::set_tick_period_ms(TICK_MS);
        }
        *self.shared.borrow_mut() = Some(State {
            keys: KeyStore::new(&authn),
            authn: Rc::new(authn),
            cache: TokenCache::new(TOKEN_CACHE_SIZE),
            metrics: Metrics::define(),
        });
        true
    }

    /// Background refresh of keys past their cache duration (stale keys keep
    /// serving meanwhile), adoption of keys other workers fetched, and the
    /// deadline of requests waiting for keys.
    fn on_tick(&mut self) {
        let expired = {
            let mut guard = self.shared.borrow_mut();
            let Some(st) = guard.as_mut() else { return };
            let mut events = Vec::new();
            let authn = st.authn.clone();
            let expired = st
                .keys
                .on_tick(&authn, glue::now_nanos(), &mut Host, &mut events);
            st.apply(events);
            expired
        };
        for id in expired {
            if glue::set_effective_context(id) {
                process(&self.shared, id, true);
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone(),
            context_id,
        }))
    }
}

struct Http {
    shared: Shared,
    context_id: u32,
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _t: usize) {
        on_fetch_response(&self.shared, token, headers, body_size);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        process(&self.shared, self.context_id, false)
    }
}
