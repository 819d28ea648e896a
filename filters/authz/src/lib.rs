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
use meshwasm_core::authz::{
    Authz, CheckAttributes, CheckOk, ExtAuthzOutcome, ExtAuthzService, ExtAuthzSettings,
    RequestAttrs,
};
use meshwasm_core::header_ops::HeaderToAdd;
use meshwasm_core::http_match::edit_query;
use meshwasm_core::jwt::FILTER_STATE_PAYLOAD;
use meshwasm_glue as glue;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use serde_json::Value;

const FILTER: &str = "authz";
const JWT_AUTHN_METADATA: &str = "envoy.filters.http.jwt_authn";

// Envoy enters the VM only for these: the decision, the CUSTOM provider's answer
// (HTTP, or gRPC: its message or its close), the response headers an allowing answer may add to, and
// `delete` (frees the stream). `make build` prunes every other callback.
meshwasm_glue::callbacks!(
    "request_headers response_headers http_call_response grpc_receive grpc_close delete"
);

const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";

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
            response_headers: Vec::new(),
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

    /// Drops the headers read so far (the request was edited since).
    fn forget_headers(&mut self) {
        self.headers = None;
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

    /// The request's address, principal and protocol fields of a gRPC
    /// CheckRequest, read from the host.
    fn check_attributes(&self) -> CheckAttributeValues {
        // Certificates exist only on TLS connections: one read tells.
        let tls = glue::property(&["connection", "tls_version"]).is_some();
        // Envoy's order: the URI SAN, else the DNS SAN, else the subject.
        let first = |attrs: [&str; 3]| {
            attrs
                .iter()
                .take(if tls { 3 } else { 0 })
                .find_map(|a| glue::property_string(&["connection", a]))
                .unwrap_or_default()
        };
        CheckAttributeValues {
            source_address: glue::property_string(&["source", "address"]).unwrap_or_default(),
            destination_address: glue::property_string(&["destination", "address"])
                .unwrap_or_default(),
            source_principal: first([
                "uri_san_peer_certificate",
                "dns_san_peer_certificate",
                "subject_peer_certificate",
            ]),
            destination_principal: first([
                "uri_san_local_certificate",
                "dns_san_local_certificate",
                "subject_local_certificate",
            ]),
            protocol: glue::property_string(&["request", "protocol"]).unwrap_or_default(),
            // The clock now rather than `request.time`: microseconds apart, and
            // no property to evaluate and copy into the VM.
            time_nanos: glue::now_nanos(),
        }
    }

    fn metadata_bytes(&mut self) -> Option<&[u8]> {
        self.metadata
            .get_or_insert_with(|| glue::property(&["metadata"]))
            .as_deref()
    }
}

/// Owned values behind [`CheckAttributes`].
struct CheckAttributeValues {
    source_address: String,
    destination_address: String,
    source_principal: String,
    destination_principal: String,
    protocol: String,
    time_nanos: u64,
}

impl CheckAttributeValues {
    fn borrow(&self) -> CheckAttributes<'_> {
        CheckAttributes {
            source_address: &self.source_address,
            destination_address: &self.destination_address,
            source_principal: &self.source_principal,
            destination_principal: &self.destination_principal,
            protocol: &self.protocol,
            time_nanos: self.time_nanos,
        }
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
    /// The CUSTOM check in flight: its callout token and the matching policy id.
    custom: Option<(u32, String)>,
    /// Headers an allowing ext_authz answer adds to the response.
    response_headers: Vec<HeaderToAdd>,
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
        let timeout = Duration::from_millis(settings.timeout_ms);
        let token = match &settings.service {
            ExtAuthzService::Http(http) => {
                let request = self.view.header_pairs();
                let headers = http.check_headers(&settings.authority, &request);
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                hostcalls::dispatch_http_call(&settings.cluster, headers, None, vec![], timeout)
            }
            ExtAuthzService::Grpc(grpc) => {
                let attrs = self.view.check_attributes();
                let message = grpc.check_request(&self.view.headers().pairs(), &attrs.borrow());
                hostcalls::dispatch_grpc_call(
                    &grpc.target,
                    AUTHORIZATION_SERVICE,
                    "Check",
                    vec![],
                    Some(&message),
                    timeout,
                )
            }
        };
        match token {
            Ok(token) => {
                self.custom = Some((token, id));
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

    /// The policy id of the check in flight, when `token` is its answer; a
    /// stale or foreign answer is never taken as a verdict.
    fn take_custom(&mut self, token: u32) -> Option<String> {
        self.custom.take_if(|(t, _)| *t == token).map(|(_, id)| id)
    }

    /// Applies an allowing answer's edits to the request (and keeps its
    /// response headers for later).
    fn apply_allow(&mut self, ok: CheckOk) {
        let edits_request = !ok.request_headers.is_empty()
            || !ok.request_headers_to_remove.is_empty()
            || ok.edits_query();
        glue::apply_header_options(MapType::HttpRequestHeaders, &ok.request_headers);
        for name in &ok.request_headers_to_remove {
            glue::remove_request_header(name);
        }
        if ok.edits_query() {
            if let Some(path) = glue::request_header(":path") {
                let path = String::from_utf8_lossy(&path);
                let edited = edit_query(
                    &path,
                    &ok.query_parameters_to_set,
                    &ok.query_parameters_to_remove
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                );
                glue::set_request_header(":path", Some(edited.as_bytes()));
            }
        }
        if edits_request {
            // The later RBAC filters see the edited request, as in Envoy.
            self.view.forget_headers();
        }
        self.response_headers = ok.response_headers;
    }

    /// Applies the ext_authz outcome; on allow, goes on with the other actions.
    fn after_custom(&mut self, outcome: ExtAuthzOutcome, error: bool, id: &str) -> Action {
        if error {
            self.metrics.ext_authz_error.inc();
        }
        match outcome {
            ExtAuthzOutcome::Allow(ok) => {
                if !error {
                    self.metrics.ext_authz_allowed.inc();
                }
                self.apply_allow(ok);
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

    fn resume_after(&mut self, outcome: ExtAuthzOutcome, error: bool, id: &str) {
        if let Action::Continue = self.after_custom(outcome, error, id) {
            glue::resume_request();
        }
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(id) = self.take_custom(token) else {
            return;
        };
        let authz = self.authz.clone();
        let Some(settings) = authz.custom_settings() else {
            return;
        };
        let ExtAuthzService::Http(http) = &settings.service else {
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
        match http.outcome(status, &headers, body) {
            Some(o) => self.resume_after(o, false, &id),
            None => self.resume_after(settings.on_error(), true, &id),
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let Some(id) = self.take_custom(token) else {
            return;
        };
        let authz = self.authz.clone();
        let Some(settings) = authz.custom_settings() else {
            return;
        };
        let ExtAuthzService::Grpc(grpc) = &settings.service else {
            return;
        };
        let message = glue::grpc_call_message(status_code, response_size);
        match grpc.outcome(status_code, &message) {
            Some(o) => self.resume_after(o, false, &id),
            None => self.resume_after(settings.on_error(), true, &id),
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.response_headers.is_empty() {
            glue::apply_header_options(MapType::HttpResponseHeaders, &self.response_headers);
        }
        Action::Continue
    }
}
