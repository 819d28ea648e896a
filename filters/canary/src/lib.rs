//! meshwasm canary filter: VirtualService header matching and weighted subsets,
//! decided here and routed by stock Envoy through a header (see
//! `meshwasm_core::canary`). Thin glue: request headers → core decision → header
//! changes (which, for an SDK 0.2.x module, make Envoy pick the route again).

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

use meshwasm_core::canary::{Canary, Decision, HeaderParser};
use meshwasm_core::host::{RandomSource, SplitMix64};
use meshwasm_core::http_match::RequestView;
use meshwasm_glue as glue;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

const FILTER: &str = "canary";

// Envoy enters the VM only for these: the decision, the response header
// operations, and `delete` (frees the stream). `make build` prunes the others.
meshwasm_glue::callbacks!("request_headers response_headers delete");

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counters, defined once per VM in `on_configure`.
#[derive(Default, Clone)]
struct Metrics {
    no_match: glue::Counter,
    other_host: glue::Counter,
    sticky: glue::Counter,
    /// One per distinct destination label (`Canary::labels`).
    subset: Vec<glue::Counter>,
}

struct Shared {
    canary: Canary,
    metrics: Metrics,
    rng: RefCell<SplitMix64>,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

/// A per-VM seed: WASI `random_get` (through std's hasher keys) mixed with the time.
fn seed() -> u64 {
    RandomState::new().hash_one(glue::now_nanos())
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = glue::plugin_config().unwrap_or_default();
        let canary = match Canary::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                glue::log_error(&format!("{FILTER}: {e}"));
                return false;
            }
        };
        let metrics = Metrics {
            no_match: glue::Counter::define(FILTER, "no_match"),
            other_host: glue::Counter::define(FILTER, "other_host"),
            sticky: glue::Counter::define(FILTER, "sticky"),
            subset: canary
                .labels
                .iter()
                .map(|l| glue::Counter::define(FILTER, &format!("subset.{l}")))
                .collect(),
        };
        self.shared = Some(Rc::new(Shared {
            canary,
            metrics,
            rng: RefCell::new(SplitMix64::new(seed())),
        }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone(),
            chosen: None,
        }))
    }
}

struct Http {
    shared: Option<Rc<Shared>>,
    /// The chosen (route, destination), for the response operations.
    chosen: Option<(usize, usize)>,
}

impl Context for Http {}

fn apply_request(p: &HeaderParser) {
    for name in &p.remove {
        glue::remove_request_header(name);
    }
    for (name, value) in &p.set {
        glue::set_request_header(name, Some(value.as_bytes()));
    }
    for (name, value) in &p.add {
        glue::add_request_header(name, value.as_bytes());
    }
}

fn apply_response(p: &HeaderParser) {
    for name in &p.remove {
        glue::remove_response_header(name);
    }
    for (name, value) in &p.set {
        glue::set_response_header(name, Some(value.as_bytes()));
    }
    for (name, value) in &p.add {
        glue::add_response_header(name, value.as_bytes());
    }
}

struct RngRef<'a>(&'a RefCell<SplitMix64>);

impl RandomSource for RngRef<'_> {
    fn next_u64(&mut self) -> u64 {
        self.0.borrow_mut().next_u64()
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let canary = &shared.canary;
        // Each request is counted once, by its outcome (a subset, no_match or
        // other_host): a separate total would cost another host call per request.
        let m = &shared.metrics;

        // A client never chooses its own subset or cluster: drop its copies (from
        // Envoy and from the view the decision sees).
        let map = glue::request_header_map();
        let mut headers = map.byte_pairs();
        for name in canary.routing_request_headers() {
            if headers.iter().any(|(k, _)| *k == name.as_bytes()) {
                glue::remove_request_header(name);
                headers.retain(|(k, _)| *k != name.as_bytes());
            }
        }
        let view = RequestView::from_byte_pairs(headers);
        // Only a `{port}` template with a port-less destination needs the listener port.
        let listener_port = if canary.needs_listener_port() {
            glue::property_u64(&["destination", "port"]).and_then(|p| u32::try_from(p).ok())
        } else {
            None
        };
        let mut rng = RngRef(&shared.rng);
        let routed = match canary.decide(&view, listener_port, &mut rng) {
            Decision::OtherHost => {
                m.other_host.inc();
                return Action::Continue;
            }
            Decision::NoMatch => {
                m.no_match.inc();
                return Action::Continue;
            }
            Decision::Routed(r) => r,
        };
        if routed.sticky {
            m.sticky.inc();
        }
        if let Some(c) = m.subset.get(routed.label_index) {
            c.inc();
        }

        for p in routed.request {
            apply_request(p);
        }
        if let Some(authority) = routed.authority {
            glue::set_request_header(":authority", Some(authority.as_bytes()));
        }
        // Each request-header change clears Envoy's route cache (ABI 0.2.1), so the
        // router picks the route again with these headers.
        if let Some(h) = &canary.routing.subset_header {
            glue::set_request_header(h, Some(routed.label.as_bytes()));
        }
        if let Some(h) = &canary.routing.cluster_header {
            glue::set_request_header(h, Some(routed.cluster.as_bytes()));
        }
        self.chosen = Some((routed.route_index, routed.destination_index));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(shared), Some((ri, di))) = (&self.shared, self.chosen) else {
            return Action::Continue;
        };
        let canary = &shared.canary;
        let Some(d) = canary.routes.get(ri).and_then(|r| r.destinations.get(di)) else {
            return Action::Continue;
        };
        for p in &d.response_ops {
            apply_response(p);
        }
        if let Some(h) = &canary.routing.response_header {
            glue::set_response_header(h, Some(d.label.as_bytes()));
        }
        Action::Continue
    }
}
