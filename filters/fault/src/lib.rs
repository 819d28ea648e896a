//! meshwasm fault filter: Istio `HTTPFaultInjection` (delay and abort) as
//! Envoy's `envoy.filters.http.fault` does it, without ever blocking a worker.
//!
//! Thin glue over `meshwasm_core::fault`: a delayed request is paused
//! (`Action::Pause`) and resumed from the root context's tick. Each worker VM
//! has one root context, so one timer; it runs only while delays are pending
//! and its period follows the nearest deadline (`DelayQueue`). A stream that
//! goes away during its delay is forgotten when its context is dropped.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::rc::Rc;

use meshwasm_core::fault::{
    after_delay, decide, shared_release, shared_try_acquire, AbortReply, Acquire, Decision,
    DelayQueue, FaultHeaders, FaultPolicy, ABORT_BODY,
};
use meshwasm_core::host::{SharedStore, SplitMix64};
use meshwasm_core::http_match::RequestView;
use meshwasm_glue as glue;
use meshwasm_glue::HostStore;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode};

const FILTER: &str = "fault";
/// Process-wide count of active faults (for `maxActiveFaults`), in shared
/// data. Istio leaves `vm_id` empty, so the key is prefixed.
const ACTIVE_KEY: &str = "meshwasm.fault.active_faults";

// Envoy enters the VM only for these: the decision, the tick that resumes
// delayed requests, and `delete` (frees the stream and its fault slot). `make
// build` prunes every other callback.
meshwasm_glue::callbacks!("request_headers tick delete");

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    delays_injected: glue::Counter,
    aborts_injected: glue::Counter,
    faults_overflow: glue::Counter,
    active_faults: glue::Gauge,
}

/// What a delayed request needs when its delay is over.
struct Waiting {
    route: usize,
    headers: FaultHeaders,
}

/// The state of one worker VM's plugin, shared by its root and HTTP contexts
/// (same thread, so `Rc<RefCell>`; no host call re-enters the VM).
struct Worker {
    policy: FaultPolicy,
    rng: SplitMix64,
    queue: DelayQueue,
    waiting: HashMap<u32, Waiting>,
    /// Contexts holding an active-fault slot.
    active: HashSet<u32>,
    metrics: Metrics,
}

impl Worker {
    /// Envoy `tryIncActiveFaults` (the caller marks the context active).
    fn try_acquire(max: Option<u64>, metrics: Metrics) -> bool {
        let ok = match max {
            None => true,
            Some(max) => shared_try_acquire(&HostStore, ACTIVE_KEY, max) == Acquire::Acquired,
        };
        if ok {
            metrics.active_faults.add(1);
        } else {
            metrics.faults_overflow.inc();
        }
        ok
    }

    fn release(&mut self, context_id: u32) {
        if self.active.remove(&context_id) {
            if self.policy.max_active_faults.is_some() {
                shared_release(&HostStore, ACTIVE_KEY);
            }
            self.metrics.active_faults.add(-1);
        }
    }
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let policy = match glue::plugin_config() {
            None => {
                glue::log_error(&format!(
                    "{FILTER}: <root>: plugin configuration is empty; expected {{\"http\": [...]}}"
                ));
                return false;
            }
            Some(bytes) => match FaultPolicy::from_json(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    glue::log_error(&format!("{FILTER}: {e}"));
                    return false;
                }
            },
        };
        if policy.max_active_faults.is_some() {
            // Create the counter once so that later writes are all CAS-guarded.
            if let (None, None) = HostStore.get(ACTIVE_KEY) {
                let _ = HostStore.set(ACTIVE_KEY, &0u64.to_le_bytes(), None);
            }
        }
        let metrics = Metrics {
            delays_injected: glue::Counter::define(FILTER, "delays_injected"),
            aborts_injected: glue::Counter::define(FILTER, "aborts_injected"),
            faults_overflow: glue::Counter::define(FILTER, "faults_overflow"),
            active_faults: glue::Gauge::define(FILTER, "active_faults"),
        };
        // WASI random (Envoy's generator) through std's RandomState, mixed with
        // the time and a process-wide counter in shared data, so that no two
        // workers can ever draw the same sequence (correlated workers would
        // widen the spread of the injected fraction).
        let seed = std::collections::hash_map::RandomState::new()
            .hash_one((glue::now_nanos(), next_seed_index()));
        self.worker = Some(Rc::new(RefCell::new(Worker {
            policy,
            rng: SplitMix64::new(seed),
            queue: DelayQueue::new(),
            waiting: HashMap::new(),
            active: HashSet::new(),
            metrics,
        })));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            worker: self.worker.clone(),
        }))
    }

    fn on_tick(&mut self) {
        let Some(worker) = &self.worker else {
            glue::set_tick_period_ms(0);
            return;
        };
        let mut w = worker.borrow_mut();
        let (due, period) = w.queue.due(glue::monotonic_nanos());
        if let Some(p) = period {
            glue::set_tick_period_ms(p);
        }
        for id in due {
            let Some(waiting) = w.waiting.remove(&id) else {
                continue;
            };
            if !glue::set_effective_context(id) {
                // The stream is gone (its drop normally got here first).
                w.release(id);
                continue;
            }
            let w = &mut *w;
            let abort = w
                .policy
                .fault(waiting.route)
                .and_then(|f| after_delay(f, &waiting.headers, &mut w.rng));
            match abort {
                // The slot stays held until the stream ends, as in Envoy.
                Some(a) => {
                    w.metrics.aborts_injected.inc();
                    send_abort(a);
                }
                None => {
                    w.release(id);
                    glue::resume_request();
                }
            }
        }
    }
}

struct Http {
    id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        let mut w = worker.borrow_mut();
        if w.policy.is_inert() {
            return Action::Continue;
        }
        let map = glue::request_header_map();
        let view = RequestView::from_byte_pairs(map.byte_pairs());
        let w = &mut *w;
        let Some((route, fault)) = w.policy.select(&view) else {
            return Action::Continue;
        };
        let fh = if fault.reads_headers() {
            FaultHeaders::from_request(&view)
        } else {
            FaultHeaders::default()
        };
        let (max, metrics) = (w.policy.max_active_faults, w.metrics);
        let mut acquired = false;
        let decision = decide(fault, &fh, &mut w.rng, &mut || {
            acquired = Worker::try_acquire(max, metrics);
            acquired
        });
        if acquired {
            w.active.insert(self.id);
        }
        match decision {
            Decision::Continue => Action::Continue,
            Decision::Delay(d) => {
                metrics.delays_injected.inc();
                w.waiting.insert(self.id, Waiting { route, headers: fh });
                if let Some(p) = w.queue.insert(self.id, glue::monotonic_nanos(), d) {
                    glue::set_tick_period_ms(p);
                }
                Action::Pause
            }
            Decision::Abort(a) => {
                metrics.aborts_injected.inc();
                send_abort(a);
                Action::Pause
            }
        }
    }
}

impl Drop for Http {
    /// The stream ended (normally, or the client went away mid-delay): forget
    /// it and give back its fault slot.
    fn drop(&mut self) {
        let Some(worker) = &self.worker else {
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        w.waiting.remove(&self.id);
        if let Some(0) = w.queue.remove(self.id) {
            glue::set_tick_period_ms(0);
        }
        w.release(self.id);
    }
}

/// Envoy `abortWithStatus`: `sendLocalReply(status, "fault filter abort", grpc_status)`.
fn send_abort(a: AbortReply) {
    match a {
        AbortReply::Http(status) => glue::send_local_reply(status, &[], ABORT_BODY.as_bytes()),
        AbortReply::Grpc(code) => {
            let _ = hostcalls::send_grpc_response(grpc_code(code), Some(ABORT_BODY), vec![]);
        }
    }
}

/// gRPC codes the host can carry; a header-supplied code above 16 becomes
/// UNKNOWN (Envoy's native filter would echo the raw number).
fn grpc_code(code: u32) -> GrpcStatusCode {
    use GrpcStatusCode::*;
    const CODES: [GrpcStatusCode; 17] = [
        Ok,
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    ];
    CODES.get(code as usize).copied().unwrap_or(Unknown)
}

/// A process-wide counter (one increment per configured worker).
fn next_seed_index() -> u64 {
    const KEY: &str = "meshwasm.fault.seed_index";
    for _ in 0..16 {
        let (v, cas) = HostStore.get(KEY);
        let n = v
            .and_then(|b| b.get(..8).and_then(|s| s.try_into().ok()))
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        if HostStore.set(KEY, &(n + 1).to_le_bytes(), cas).is_ok() {
            return n;
        }
    }
    0
}
