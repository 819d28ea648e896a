//! meshwasm jwt_authn: Istio RequestAuthentication as a proxy-wasm filter.
//!
//! Thin glue: request headers → `meshwasm_core::jwt::JwtAuthn::evaluate` →
//! header edits, filter state, local reply, metrics. `jwksUri` keys are fetched
//! with `dispatch_http_call`, kept per worker and shared across workers through
//! shared data; requests that arrive before any keys wait (paused) for them.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use meshwasm_core::jwt::{
    Decision, HeaderOp, Jwks, JwtAuthn, KeyState, RemoteKeys, TokenCache, FILTER_STATE_PAYLOAD,
    FILTER_STATE_PRINCIPAL, METRIC_REASONS,
};
use meshwasm_glue::{self as glue, Counter};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

const FILTER: &str = "jwt_authn";
/// Verified tokens kept per worker.
const TOKEN_CACHE_SIZE: usize = 256;
/// A failed fetch is retried by the next request after this long.
const RETRY_AFTER_FAILURE_NS: u64 = 1_000_000_000;
/// An unknown `kid` may force an early refetch at most this often.
const KID_REFETCH_INTERVAL_NS: u64 = 30_000_000_000;
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

/// Keys of one `jwksUri` provider on this worker.
#[derive(Default)]
struct RemoteState {
    jwks: Option<Rc<Jwks>>,
    /// When the keys were fetched (by any worker), ns since the epoch.
    fetched_at: u64,
    /// The last fetch failed at this time and there are no keys.
    failed_at: Option<u64>,
    /// A callout of this worker is under way (started at).
    inflight: Option<(u32, u64)>,
    last_kid_refetch: u64,
}

struct Waiter {
    context_id: u32,
    deadline: u64,
}

struct State {
    authn: Rc<JwtAuthn>,
    cache: TokenCache,
    remote: Vec<RemoteState>,
    waiters: Vec<Waiter>,
    metrics: Metrics,
    now: u64,
}

/// The remote keys of this worker at `now` (borrowed apart from the cache).
struct Keys<'a> {
    remote: &'a [RemoteState],
    now: u64,
}

impl RemoteKeys for Keys<'_> {
    fn keys(&self, provider: usize) -> KeyState<'_> {
        let Some(r) = self.remote.get(provider) else {
            return KeyState::Failed;
        };
        match (&r.jwks, r.failed_at) {
            // Stale keys are still used while a refresh runs or after it failed.
            (Some(jwks), _) => KeyState::Ready {
                jwks,
                can_refetch: self.now.saturating_sub(r.last_kid_refetch) >= KID_REFETCH_INTERVAL_NS,
            },
            (None, Some(at)) if self.now.saturating_sub(at) < RETRY_AFTER_FAILURE_NS => {
                KeyState::Failed
            }
            _ => KeyState::Pending,
        }
    }
}

type Shared = Rc<RefCell<Option<State>>>;

fn shared_key(authn: &JwtAuthn, provider: usize) -> String {
    match authn.remote(provider) {
        Some(r) => format!("meshwasm.jwt_authn.jwks|{}|{}", r.cluster, r.uri),
        None => String::new(),
    }
}

/// Shared data value: 8 bytes fetch time (ns, LE) then the JWKS JSON.
fn read_shared(key: &str) -> Option<(u64, Vec<u8>)> {
    let (value, _) = hostcalls::get_shared_data(key).ok()?;
    let value = value?;
    let at: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(at), value[8..].to_vec()))
}

/// Adopts keys another worker fetched if they are newer than ours.
fn adopt_shared(st: &mut State, provider: usize) -> bool {
    let key = shared_key(&st.authn, provider);
    let Some((at, body)) = read_shared(&key) else {
        return false;
    };
    let Some(r) = st.remote.get_mut(provider) else {
        return false;
    };
    if at <= r.fetched_at {
        return false;
    }
    match std::str::from_utf8(&body)
        .ok()
        .and_then(|s| Jwks::parse(s).ok())
    {
        Some(jwks) => {
            r.jwks = Some(Rc::new(jwks));
            r.fetched_at = at;
            r.failed_at = None;
            // Tokens verified with keys that may be gone are checked again.
            st.cache.clear();
            true
        }
        None => false,
    }
}

/// Starts a callout for `provider` unless one of this worker is under way.
fn start_fetch(st: &mut State, provider: usize) {
    let Some(remote) = st.authn.remote(provider).cloned() else {
        return;
    };
    let now = st.now;
    let Some(r) = st.remote.get_mut(provider) else {
        return;
    };
    if let Some((_, started)) = r.inflight {
        // A callout that never answered (its context went away) is forgotten.
        if now.saturating_sub(started) < remote.timeout.as_nanos() as u64 + 2_000_000_000 {
            return;
        }
    }
    let headers = vec![
        (":method", "GET"),
        (":path", remote.path.as_str()),
        (":authority", remote.authority.as_str()),
        ("accept", "application/json"),
    ];
    match hostcalls::dispatch_http_call(&remote.cluster, headers, None, vec![], remote.timeout) {
        Ok(token) => r.inflight = Some((token, now)),
        Err(e) => {
            glue::log_error(&format!(
                "{FILTER}: jwks fetch of {} through cluster {:?} failed to start: {e:?}",
                remote.uri, remote.cluster
            ));
            st.metrics.jwks_fetch_failed.inc();
            r.failed_at = Some(now);
        }
    }
}

/// Handles a callout response (in whichever context received it).
fn on_fetch_response(shared: &Shared, token: u32, num_headers: usize, body_size: usize) {
    let mut resume = Vec::new();
    {
        let mut guard = shared.borrow_mut();
        let Some(st) = guard.as_mut() else { return };
        st.now = glue::now_nanos();
        let Some(provider) = st
            .remote
            .iter()
            .position(|r| r.inflight.map(|(t, _)| t) == Some(token))
        else {
            return;
        };
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
        let jwks = (status.as_deref() == Some("200"))
            .then(|| {
                std::str::from_utf8(&body)
                    .ok()
                    .and_then(|s| Jwks::parse(s).ok())
            })
            .flatten();
        let now = st.now;
        let key = shared_key(&st.authn, provider);
        let Some(r) = st.remote.get_mut(provider) else {
            return;
        };
        r.inflight = None;
        match jwks {
            Some(jwks) => {
                st.metrics.jwks_fetch_success.inc();
                r.jwks = Some(Rc::new(jwks));
                r.fetched_at = now;
                r.failed_at = None;
                st.cache.clear();
                let mut value = now.to_le_bytes().to_vec();
                value.extend_from_slice(&body);
                let _ = hostcalls::set_shared_data(&key, Some(&value), None);
            }
            None => {
                st.metrics.jwks_fetch_failed.inc();
                glue::log_info(&format!(
                    "{FILTER}: jwks fetch failed (status {:?}); {} keys kept",
                    status,
                    if r.jwks.is_some() { "stale" } else { "no" }
                ));
                r.failed_at = Some(now);
                // Keys that were never fetched: the waiters learn it now.
                // Stale keys stay in use (stale-on-failure).
            }
        }
        resume.append(&mut st.waiters);
    }
    for w in resume {
        if glue::set_effective_context(w.context_id) {
            process(shared, w.context_id, true);
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
    st.now = glue::now_nanos();
    let authn = st.authn.clone();
    let mut decision = None;
    // At most a few rounds: keys adopted from shared data, then a fetch.
    for _ in 0..4 {
        // A second round (keys were needed first, rare) reads them again.
        let map = map.take().unwrap_or_else(glue::request_header_map);
        let headers = map.pairs();
        let keys = Keys {
            remote: &st.remote,
            now: st.now,
        };
        let ev = authn.evaluate(&headers, st.now / 1_000_000_000, &keys, &mut st.cache);
        st.metrics.cache_hit.add(u64::from(ev.cache_hits));
        st.metrics.cache_miss.add(u64::from(ev.cache_misses));
        match ev.decision {
            Decision::FetchJwks { provider, refetch } => {
                if !refetch && adopt_shared(st, provider) {
                    continue;
                }
                if refetch {
                    if let Some(r) = st.remote.get_mut(provider) {
                        r.last_kid_refetch = st.now;
                    }
                }
                start_fetch(st, provider);
                if st
                    .remote
                    .get(provider)
                    .is_some_and(|r| r.inflight.is_some())
                {
                    let timeout = authn
                        .remote(provider)
                        .map_or(Duration::from_secs(5), |r| r.timeout);
                    st.waiters.push(Waiter {
                        context_id,
                        deadline: st.now + timeout.as_nanos() as u64 + 1_000_000_000,
                    });
                    return Action::Pause;
                }
                // The fetch could not start: evaluate again (now Failed).
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
        let remote = (0..authn.providers.len())
            .map(|_| RemoteState::default())
            .collect();
        if authn.has_remote() {
            glue::set_tick_period_ms(TICK_MS);
        }
        *self.shared.borrow_mut() = Some(State {
            authn: Rc::new(authn),
            cache: TokenCache::new(TOKEN_CACHE_SIZE),
            remote,
            waiters: Vec::new(),
            metrics: Metrics::define(),
            now: glue::now_nanos(),
        });
        true
    }

    /// Background refresh of keys past their cache duration (stale keys keep
    /// serving meanwhile), adoption of keys other workers fetched, and the
    /// deadline of requests waiting for keys.
    fn on_tick(&mut self) {
        let mut expired = Vec::new();
        {
            let mut guard = self.shared.borrow_mut();
            let Some(st) = guard.as_mut() else { return };
            st.now = glue::now_nanos();
            for p in 0..st.remote.len() {
                let Some(remote) = st.authn.remote(p).cloned() else {
                    continue;
                };
                let r = &st.remote[p];
                let stale = r.jwks.is_some()
                    && st.now.saturating_sub(r.fetched_at)
                        >= remote.cache_duration.as_nanos() as u64;
                if stale && !adopt_shared(st, p) {
                    let retry_ok = st.remote[p]
                        .failed_at
                        .is_none_or(|at| st.now.saturating_sub(at) >= RETRY_AFTER_FAILURE_NS);
                    if retry_ok {
                        start_fetch(st, p);
                    }
                }
            }
            let now = st.now;
            st.waiters.retain(|w| {
                if w.deadline <= now {
                    expired.push(w.context_id);
                    false
                } else {
                    true
                }
            });
            if !expired.is_empty() {
                // Their fetch never answered: count it as failed.
                for r in st.remote.iter_mut() {
                    if r.inflight.is_some() && r.jwks.is_none() {
                        r.inflight = None;
                        r.failed_at = Some(now);
                    }
                }
            }
        }
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
