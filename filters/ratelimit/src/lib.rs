//! meshwasm ratelimit: Envoy's global rate limit filter as a proxy-wasm filter.
//!
//! Glue only: request headers + downstream address → the `rate_limits`
//! descriptors (`meshwasm_core::ratelimit::actions`, shared with
//! local_ratelimit) → one `ShouldRateLimit` call to the configured RLS v3
//! service with `dispatch_grpc_call`, the stream paused until its answer or
//! the timeout → `meshwasm_core::ratelimit::global` reads the answer → 429 /
//! status on error / pass-through with the service's headers, counters.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use meshwasm_core::ratelimit::global::{Answer, GlobalRateLimit, METHOD, SERVICE};
use meshwasm_core::ratelimit::{HeaderReads, RequestView};
use meshwasm_glue as glue;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode};

const FILTER: &str = "ratelimit";

// Envoy enters the VM only for these: the descriptors and the call, the
// service's answer (its message or its close), the response headers an OK
// answer adds to, and `delete` (frees the stream). `make build` prunes the others.
meshwasm_glue::callbacks!("request_headers response_headers grpc_receive grpc_close delete");

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// The native filter's `ratelimit.*` counters.
#[derive(Clone, Copy, Default)]
struct Counters {
    ok: glue::Counter,
    error: glue::Counter,
    over_limit: glue::Counter,
    failure_mode_allowed: glue::Counter,
}

impl Counters {
    fn define() -> Counters {
        let c = |n| glue::Counter::define(FILTER, n);
        Counters {
            ok: c("ok"),
            error: c("error"),
            over_limit: c("over_limit"),
            failure_mode_allowed: c("failure_mode_allowed"),
        }
    }
}

struct Shared {
    cfg: GlobalRateLimit,
    header_reads: HeaderReads,
    reads_remote_address: bool,
    counters: Counters,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = glue::plugin_config().unwrap_or_default();
        match GlobalRateLimit::from_json(&bytes) {
            Ok(cfg) => {
                self.shared = Some(Rc::new(Shared {
                    header_reads: cfg.header_reads(),
                    reads_remote_address: cfg.reads_remote_address(),
                    cfg,
                    counters: Counters::define(),
                }));
                true
            }
            Err(e) => {
                glue::log_error(&format!("{FILTER}: {e}"));
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone()?,
            call: None,
            response_headers: Vec::new(),
        }))
    }
}

struct Http {
    shared: Rc<Shared>,
    /// The token of the call in flight.
    call: Option<u32>,
    /// Headers an OK answer adds to the response (X-RateLimit, the service's).
    response_headers: Vec<(String, String)>,
}

/// Envoy `Grpc::Common::isGrpcRequestHeaders`. Read only on a rejection.
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

impl Http {
    /// Applies an answer; returns whether the request goes on.
    fn apply(&mut self, answer: Answer) -> bool {
        let sh = self.shared.clone();
        let c = &sh.counters;
        match answer {
            Answer::Ok {
                request_headers,
                response_headers,
            } => {
                c.ok.inc();
                for (k, v) in &request_headers {
                    glue::set_request_header(k, Some(v.as_bytes()));
                }
                self.response_headers = response_headers;
                true
            }
            Answer::OverLimit { headers, body } => {
                c.over_limit.inc();
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                if sh.cfg.rate_limited_as_resource_exhausted && is_grpc() {
                    let body = String::from_utf8_lossy(&body);
                    let _ = hostcalls::send_grpc_response(
                        GrpcStatusCode::ResourceExhausted,
                        Some(&body),
                        headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
                    );
                } else {
                    glue::send_local_reply(sh.cfg.rate_limited_status, &headers, &body);
                }
                false
            }
            Answer::Error => {
                c.error.inc();
                match sh.cfg.error_status() {
                    Some(status) => {
                        glue::send_local_reply(status, &[], b"");
                        false
                    }
                    None => {
                        c.failure_mode_allowed.inc();
                        true
                    }
                }
            }
        }
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        // A stale or foreign answer is never taken as a verdict.
        if self.call.take_if(|t| *t == token).is_none() {
            return;
        }
        let message = glue::grpc_call_message(status_code, response_size);
        let answer = self.shared.cfg.answer(status_code, &message);
        if self.apply(answer) {
            glue::resume_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let sh = self.shared.clone();
        // The header map is the costliest host call: fetch only what the
        // actions read.
        let headers = match &sh.header_reads {
            HeaderReads::Nothing => Vec::new(),
            HeaderReads::Named(names) => names
                .iter()
                .filter_map(|n| glue::request_header(n).map(|v| (n.clone(), v)))
                .collect(),
            HeaderReads::All => glue::request_headers(),
        };
        let remote_ip = if sh.reads_remote_address {
            remote_ip()
        } else {
            None
        };
        let descriptors = sh.cfg.descriptors(&RequestView {
            headers: &headers,
            remote_ip,
        });
        if descriptors.is_empty() {
            return Action::Continue;
        }
        let message = sh.cfg.request(&descriptors);
        match hostcalls::dispatch_grpc_call(
            &sh.cfg.target,
            SERVICE,
            METHOD,
            vec![],
            Some(&message),
            Duration::from_millis(sh.cfg.timeout_ms),
        ) {
            Ok(token) => {
                self.call = Some(token);
                Action::Pause
            }
            Err(_) => {
                glue::log_error(&format!(
                    "{FILTER}: call to cluster {:?} failed",
                    sh.cfg.cluster
                ));
                if self.apply(Answer::Error) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (k, v) in &self.response_headers {
            glue::add_response_header(k, v.as_bytes());
        }
        Action::Continue
    }
}
