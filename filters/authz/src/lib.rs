//! meshwasm authz: Istio AuthorizationPolicy as a proxy-wasm filter.
//!
//! Glue only: the request view is filled lazily from hostcalls (only what the
//! compiled policies read), `meshwasm_core::authz` decides, and the decision
//! becomes a 403 `RBAC: access denied`, filter state and metrics.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use meshwasm_core::authz::matchers::parse_socket_ip;
use meshwasm_core::authz::metadata::{filter_metadata_from_proto, payload_from_filter_state};
use meshwasm_core::authz::{Authz, ExtAuthzOutcome, ExtAuthzSettings, RequestAttrs};
use meshwasm_core::jwt::FILTER_STATE_PAYLOAD;
use meshwasm_glue as glue;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use serde_json::Value;

const FILTER: &str = "authz";
const JWT_AUTHN_METADATA: &str = "envoy.filters.http.jwt_authn";

// Envoy enters the VM only for these: the decision, the CUSTOM provider's answer,
// and `delete` (frees the stream). `make build` prunes every other callback.
meshwasm_glue::callbacks!("request_headers http_call_response delete");

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default, Clone, Copy)]
struct Metrics {
    allowed: glue::Counter,
    denied: glue::Counter,
    shadow_allowed: glue::Counter,
    shadow_denied: glue::Counter,
    audit: glue::Counter,
    ext_authz_allowed: glue::Counter,
    ext_authz_denied: glue::Counter,
    ext_authz_error: glue::Counter,
}

impl Metrics {
    fn define() -> Metrics {
        let c = |n| glue::Counter::define(FILTER, n);
        Metrics {
            allowed: c("allowed"),
            denied: c("denied"),
            shadow_allowed: c("shadow_allowed"),
            shadow_denied: c("shadow_denied"),
            audit: c("audit"),
            ext_authz_allowed: c("ext_authz_allowed"),
            ext_authz_denied: c("ext_authz_denied"),
            ext_authz_error: c("ext_authz_error"),
        }
    }
}

#[derive(Default)]
struct Root {
    authz: Option<Rc<Authz>>,
    /// The header names the policies read, compiled for `glue::HeaderIndex`.
    slots: Option<Rc<glue::HeaderSlots>>,
    metrics: Metrics,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = glue::plugin_config().unwrap_or_default();
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        match Authz::from_json(bytes) {
            Ok(a) => {
                self.metrics = Metrics::define();
                self.slots = Some(Rc::new(glue::HeaderSlots::new(a.header_names())));
                self.authz = Some(Rc::new(a));
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
        let authz = self.authz.clone()?;
        let slots = self.slots.clone()?;
        Some(Box::new(Http {
            view: View::new(authz.clone(), slots),
            authz,
            metrics: self.metrics,
            custom: None,
        }))
    }
}

/// The request as policies see it; each field fetched at most once.
struct View {
    authz: Rc<Authz>,
    slots: Rc<glue::HeaderSlots>,
    /// The request headers: the whole map, read once on first use, because
    /// single-header reads cannot tell an empty value from an absent header
    /// (and each costs a host allocation in the VM).
    headers: Option<glue::HeaderIndex>,
    remote: Option<Option<IpAddr>>,
    direct: Option<Option<IpAddr>>,
    dest_ip: Option<Option<IpAddr>>,
    dest_port: Option<Option<u16>>,
    sni: Option<String>,
    peer: Option<Option<Vec<String>>>,
    metadata: Option<Option<Vec<u8>>>,
    filter_meta: Vec<(String, Option<Value>)>,
    jwt: Option<Option<Value>>,
}

impl View {
    fn new(authz: Rc<Authz>, slots: Rc<glue::HeaderSlots>) -> View {
        View {
            authz,
            slots,
            headers: None,
            remote: None,
            direct: None,
            dest_ip: None,
            dest_port: None,
            sni: None,
            peer: None,
            metadata: None,
            filter_meta: Vec::new(),
            jwt: None,
        }
    }

    fn headers(&mut self) -> &glue::HeaderIndex {
        let slots = &self.slots;
        self.headers
            .get_or_insert_with(|| glue::HeaderIndex::read(slots))
    }

    /// Headers as (name, value) pairs for the ext_authz check request (repeated
    /// names joined with `,`, in first-seen order), from the map the policies
    /// read: a CUSTOM check does not fetch it a second time.
    fn header_pairs(&mut self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in self.headers().pairs() {
            let v = String::from_utf8_lossy(v);
            match out.iter_mut().find(|(n, _)| n == k) {
                Some((_, joined)) => {
                    joined.push(',');
                    joined.push_str(&v);
                }
                None => out.push((k.to_string(), v.into_owned())),
            }
        }
        out
    }

    fn metadata_bytes(&mut self) -> Option<&[u8]> {
        self.metadata
            .get_or_insert_with(|| glue::property(&["metadata"]))
            .as_deref()
    }
}

fn socket_ip(path: &[&str]) -> Option<IpAddr> {
    glue::property_string(path).and_then(|s| parse_socket_ip(&s))
}

impl RequestAttrs for View {
    fn header_any(
        &mut self,
        slot: usize,
        name: &str,
        pred: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<bool> {
        self.headers().any(slot, name, pred)
    }

    fn url_path(&mut self) -> Option<&[u8]> {
        self.headers().url_path()
    }

    fn direct_ip(&mut self) -> Option<IpAddr> {
        // The wasm host only exposes Envoy's (possibly XFF-derived) remote
        // address. An address Envoy took from `x-forwarded-for` has port 0; a
        // socket peer never does. Only the latter is the direct peer.
        *self.direct.get_or_insert_with(|| {
            let src = glue::property_string(&["source", "address"])?;
            if src.ends_with(":0") {
                return None;
            }
            parse_socket_ip(&src)
        })
    }

    fn remote_ip(&mut self) -> Option<IpAddr> {
        *self
            .remote
            .get_or_insert_with(|| socket_ip(&["source", "address"]))
    }

    fn destination_ip(&mut self) -> Option<IpAddr> {
        *self
            .dest_ip
            .get_or_insert_with(|| socket_ip(&["destination", "address"]))
    }

    fn destination_port(&mut self) -> Option<u16> {
        *self.dest_port.get_or_insert_with(|| {
            glue::property_u64(&["destination", "port"]).and_then(|p| u16::try_from(p).ok())
        })
    }

    fn requested_server_name(&mut self) -> &str {
        self.sni.get_or_insert_with(|| {
            glue::property_string(&["connection", "requested_server_name"]).unwrap_or_default()
        })
    }

    fn peer_names(&mut self) -> Option<&[String]> {
        self.peer
            .get_or_insert_with(|| {
                if glue::property(&["connection", "mtls"]).as_deref() != Some(&[1]) {
                    return None;
                }
                let names = [
                    "uri_san_peer_certificate",
                    "dns_san_peer_certificate",
                    "subject_peer_certificate",
                ]
                .iter()
                .filter_map(|a| glue::property_string(&["connection", a]))
                .collect();
                Some(names)
            })
            .as_deref()
    }

    fn jwt_payload(&mut self) -> Option<&Value> {
        if self.jwt.is_none() {
            // meshwasm jwt_authn's filter state first, then native jwt_authn's
            // dynamic metadata. Never a request header.
            let v = glue::property(&[FILTER_STATE_PAYLOAD])
                .and_then(|b| payload_from_filter_state(&b))
                .or_else(|| {
                    let key = self.authz.jwt_payload_in_metadata.clone();
                    self.filter_metadata(JWT_AUTHN_METADATA)
                        .and_then(|m| m.get(&key))
                        .cloned()
                });
            self.jwt = Some(v);
        }
        self.jwt.as_ref().and_then(Option::as_ref)
    }

    fn filter_metadata(&mut self, filter: &str) -> Option<&Value> {
        let idx = match self.filter_meta.iter().position(|(f, _)| f == filter) {
            Some(i) => i,
            None => {
                let v = self
                    .metadata_bytes()
                    .and_then(|b| filter_metadata_from_proto(b, filter));
                self.filter_meta.push((filter.to_string(), v));
                self.filter_meta.len() - 1
            }
        };
        self.filter_meta.get(idx).and_then(|(_, v)| v.as_ref())
    }
}

struct Http {
    authz: Rc<Authz>,
    view: View,
    metrics: Metrics,
    /// The CUSTOM check in flight: matching policy id.
    custom: Option<String>,
}

impl Http {
    /// AUDIT, DENY and ALLOW; returns what the headers callback should return.
    fn enforce(&mut self) -> Action {
        let d = self.authz.evaluate(&mut self.view);
        for s in &d.shadows {
            if s.denied {
                self.metrics.shadow_denied.inc();
            } else {
                self.metrics.shadow_allowed.inc();
            }
        }
        if d.audit_policy.is_some() {
            self.metrics.audit.inc();
        }
        glue::set_filter_state("meshwasm.authz_result", d.result().as_bytes());
        if let Some(id) = d
            .policy_id
            .or_else(|| d.shadows.iter().find_map(|s| s.policy_id))
            .or(d.audit_policy)
        {
            glue::set_filter_state("meshwasm.authz_policy", id.as_bytes());
        }
        if d.allowed {
            self.metrics.allowed.inc();
            Action::Continue
        } else {
            self.metrics.denied.inc();
            glue::send_local_reply(403, &[], b"RBAC: access denied");
            Action::Pause
        }
    }

    fn dispatch_custom(&mut self, settings: &ExtAuthzSettings, id: String) -> Action {
        let request = self.view.header_pairs();
        let headers = settings.check_headers(&request);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let timeout = Duration::from_millis(settings.timeout_ms);
        match hostcalls::dispatch_http_call(&settings.cluster, headers, None, vec![], timeout) {
            Ok(_) => {
                self.custom = Some(id);
                Action::Pause
            }
            Err(_) => {
                glue::log_error(&format!(
                    "{FILTER}: ext_authz call to cluster {:?} failed",
                    settings.cluster
                ));
                self.after_custom(settings.on_error(), true, &id)
            }
        }
    }

    /// Applies the ext_authz outcome; on allow, goes on with the other actions.
    fn after_custom(&mut self, outcome: ExtAuthzOutcome, error: bool, id: &str) -> Action {
        if error {
            self.metrics.ext_authz_error.inc();
        }
        match outcome {
            ExtAuthzOutcome::Allow { upstream_headers } => {
                if !error {
                    self.metrics.ext_authz_allowed.inc();
                }
                for (k, v) in &upstream_headers {
                    glue::set_request_header(k, Some(v.as_bytes()));
                }
                self.enforce()
            }
            ExtAuthzOutcome::Deny {
                status,
                body,
                headers,
            } => {
                if !error {
                    self.metrics.ext_authz_denied.inc();
                }
                self.metrics.denied.inc();
                let result: &[u8] = if error {
                    b"ext_authz_error"
                } else {
                    b"custom_denied"
                };
                glue::set_filter_state("meshwasm.authz_result", result);
                glue::set_filter_state("meshwasm.authz_policy", id.as_bytes());
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                glue::send_local_reply(status, &headers, &body);
                Action::Pause
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(id) = self.custom.take() else { return };
        let authz = self.authz.clone();
        let Some(settings) = authz.custom_settings() else {
            return;
        };
        // A failed call arrives with no headers; reading them then would trap.
        let (status, headers, body) = if num_headers == 0 {
            (None, Vec::new(), Vec::new())
        } else {
            let headers: Vec<(String, String)> =
                hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
            let status = headers
                .iter()
                .find(|(k, _)| k == ":status")
                .and_then(|(_, v)| v.parse().ok());
            let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            (status, headers, body)
        };
        let (outcome, error) = match settings.outcome(status, &headers, body) {
            Some(o) => (o, false),
            None => (settings.on_error(), true),
        };
        if let Action::Continue = self.after_custom(outcome, error, &id) {
            glue::resume_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let authz = self.authz.clone();
        if authz.has_custom() {
            if let Some((settings, id)) = authz.check_custom(&mut self.view) {
                return self.dispatch_custom(settings, id);
            }
        }
        self.enforce()
    }
}
