//! Envoy's global rate limit filter (`envoy.filters.http.ratelimit`, 1.40):
//! its `RateLimit` configuration in proto JSON, the `RateLimitRequest` it
//! sends to a rate limit service (RLS v3, `ShouldRateLimit`) and how it reads
//! the `RateLimitResponse`.
//!
//! The descriptors come from the same `rate_limits` actions as the local rate
//! limit's (`super::actions`). Read as Envoy's filter reads the answer
//! (ratelimit.cc, grpc_client_impl.cc): OVER_LIMIT replies with
//! `rate_limited_status`, the service's headers and `x-envoy-ratelimited`;
//! anything else that decodes is OK (UNKNOWN included, as in a release
//! build); a gRPC error, a timeout or a message that does not decode is an
//! error, which passes unless `failure_mode_deny`.

use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use super::actions::{self, RateLimitPolicy};
use super::config::{
    check_type_url, compile_rate_limits, enum_value, headers_to_add, status_code, HeaderReads,
    HeaderValueOptionJson, HttpStatusJson, RateLimitJson, RequestView,
};
use crate::authz::compile::GrpcServiceTarget;
use crate::config::{from_json, parse_duration, ConfigError, FieldPath};
use crate::header_ops::{HeaderEdit, HeaderToAdd};
use crate::proto::ratelimit::{
    DescriptorStatus, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse,
    CODE_OVER_LIMIT,
};

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";

/// The service and method of every call.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalJson {
    #[serde(rename = "@type", default)]
    type_url: Option<String>,
    domain: String,
    #[serde(default)]
    stage: u32,
    #[serde(default)]
    request_type: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    failure_mode_deny: bool,
    #[serde(default)]
    rate_limited_as_resource_exhausted: bool,
    rate_limit_service: Option<RateLimitServiceJson>,
    #[serde(default)]
    enable_x_ratelimit_headers: Option<Value>,
    #[serde(default)]
    disable_x_envoy_ratelimited_header: bool,
    #[serde(default)]
    rate_limited_status: Option<HttpStatusJson>,
    #[serde(default)]
    response_headers_to_add: Vec<HeaderValueOptionJson>,
    #[serde(default)]
    status_on_error: Option<HttpStatusJson>,
    #[serde(default)]
    stat_prefix: String,
    #[serde(default)]
    rate_limits: Vec<RateLimitJson>,
    // Known to Envoy, refused here with a reason (see `compile`).
    #[serde(default)]
    filter_enabled: Option<Value>,
    #[serde(default)]
    filter_enforced: Option<Value>,
    #[serde(default)]
    failure_mode_deny_percent: Option<Value>,
    #[serde(default)]
    metadata_namespace: Option<Value>,
    #[serde(default)]
    enable_retry_after_header: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitServiceJson {
    grpc_service: GrpcServiceJson,
    #[serde(default)]
    transport_api_version: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcServiceJson {
    #[serde(default)]
    envoy_grpc: Option<EnvoyGrpcJson>,
    #[serde(default)]
    google_grpc: Option<Value>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvoyGrpcJson {
    cluster_name: String,
    #[serde(default)]
    authority: String,
}

/// `request_type`: which requests the filter applies to, by `x-envoy-internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    Both,
    Internal,
    External,
}

/// A validated `RateLimit` filter configuration.
#[derive(Debug, Clone)]
pub struct GlobalRateLimit {
    pub domain: String,
    /// Accepted for the pasted configuration; the counters are
    /// `meshwasm.ratelimit.*` whatever it says.
    pub stat_prefix: String,
    pub request_type: RequestType,
    pub timeout_ms: u64,
    pub failure_mode_deny: bool,
    pub rate_limited_as_resource_exhausted: bool,
    pub cluster: String,
    /// The serialized `envoy.config.core.v3.GrpcService` (cluster and
    /// authority) Envoy's wasm host takes as the call's upstream.
    pub target: String,
    pub x_ratelimit_headers: bool,
    pub disable_x_envoy_ratelimited_header: bool,
    pub rate_limited_status: u32,
    pub response_headers_to_add: Vec<HeaderToAdd>,
    pub status_on_error: u32,
    pub rate_limits: Vec<RateLimitPolicy>,
}

/// What to do with a request once the service answered (or did not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Go on: these request headers set, these response headers added.
    Ok {
        request_headers: Vec<(String, String)>,
        response_headers: Vec<(String, String)>,
    },
    /// Reply with `rate_limited_status`, these headers and this body.
    OverLimit {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// No usable answer: see [`GlobalRateLimit::error_status`].
    Error,
}

impl GlobalRateLimit {
    pub fn from_json(bytes: &[u8]) -> Result<GlobalRateLimit, ConfigError> {
        let json: GlobalJson = from_json(bytes)?;
        compile(json)
    }

    /// What building the descriptors reads of the request headers
    /// (`x-envoy-internal` too, unless `request_type` is both).
    pub fn header_reads(&self) -> HeaderReads {
        let reads = actions::header_reads(&self.rate_limits);
        match (reads, self.request_type) {
            (reads, RequestType::Both) => reads,
            (HeaderReads::All, _) => HeaderReads::All,
            (HeaderReads::Nothing, _) => HeaderReads::Named(vec![INTERNAL.into()]),
            (HeaderReads::Named(mut names), _) => {
                names.push(INTERNAL.into());
                HeaderReads::Named(names)
            }
        }
    }

    pub fn reads_remote_address(&self) -> bool {
        actions::reads_remote_address(&self.rate_limits)
    }

    /// The request's descriptors; none (no call) when `request_type` leaves
    /// the request out or no `rate_limits` entry produced one.
    pub fn descriptors(&self, req: &RequestView<'_>) -> Vec<Vec<(String, String)>> {
        let internal = req.header(INTERNAL) == Some(b"true");
        let applies = match self.request_type {
            RequestType::Both => true,
            RequestType::Internal => internal,
            RequestType::External => !internal,
        };
        if !applies {
            return Vec::new();
        }
        actions::descriptors(&self.rate_limits, req)
    }

    /// The serialized `RateLimitRequest` for these descriptors.
    pub fn request(&self, descriptors: &[Vec<(String, String)>]) -> Vec<u8> {
        RateLimitRequest {
            domain: self.domain.clone(),
            descriptors: descriptors
                .iter()
                .map(|d| RateLimitDescriptor {
                    entries: d
                        .iter()
                        .map(|(key, value)| Entry {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                })
                .collect(),
            hits_addend: 0,
        }
        .encode_to_vec()
    }

    /// Reads the call's gRPC status and message.
    pub fn answer(&self, grpc_status: u32, message: &[u8]) -> Answer {
        if grpc_status != 0 {
            return Answer::Error;
        }
        let Ok(r) = RateLimitResponse::decode(message) else {
            return Answer::Error;
        };
        let mut headers: Vec<(String, String)> = r
            .response_headers_to_add
            .into_iter()
            .map(|h| (h.key.to_ascii_lowercase(), h.value))
            .collect();
        let over = r.overall_code == CODE_OVER_LIMIT;
        if over && !self.disable_x_envoy_ratelimited_header {
            headers.push(("x-envoy-ratelimited".into(), "true".into()));
        }
        if self.x_ratelimit_headers {
            headers.extend(x_ratelimit_headers(&r.statuses));
        }
        if over {
            apply_options(&mut headers, &self.response_headers_to_add);
            return Answer::OverLimit {
                headers,
                body: r.raw_body,
            };
        }
        Answer::Ok {
            request_headers: r
                .request_headers_to_add
                .into_iter()
                .map(|h| (h.key.to_ascii_lowercase(), h.value))
                .collect(),
            response_headers: headers,
        }
    }

    /// An error's reply status: `status_on_error` with `failure_mode_deny`,
    /// else None (the request goes on).
    pub fn error_status(&self) -> Option<u32> {
        self.failure_mode_deny.then_some(self.status_on_error)
    }
}

const INTERNAL: &str = "x-envoy-internal";

/// Envoy `XRateLimitHeaderUtils::create` (draft 03): the status with the
/// fewest remaining requests gives Remaining and Reset; Limit is its limit
/// followed by every status's quota policy (`, <n>;w=<secs>[;name="..."]`).
pub fn x_ratelimit_headers(statuses: &[DescriptorStatus]) -> Vec<(String, String)> {
    let mut min: Option<&DescriptorStatus> = None;
    let mut policy = String::new();
    for s in statuses {
        let Some(limit) = &s.current_limit else {
            continue;
        };
        if min.is_none_or(|m| s.limit_remaining < m.limit_remaining) {
            min = Some(s);
        }
        let window = unit_seconds(limit.unit);
        if window > 0 {
            policy.push_str(&format!(", {};w={window}", limit.requests_per_unit));
            if !limit.name.is_empty() {
                policy.push_str(&format!(";name=\"{}\"", limit.name));
            }
        }
    }
    let Some(m) = min else {
        return Vec::new();
    };
    let rpu = m.current_limit.as_ref().map_or(0, |l| l.requests_per_unit);
    let reset = m.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
    vec![
        ("x-ratelimit-limit".into(), format!("{rpu}{policy}")),
        (
            "x-ratelimit-remaining".into(),
            m.limit_remaining.to_string(),
        ),
        ("x-ratelimit-reset".into(), reset.to_string()),
    ]
}

/// `RateLimit.Unit` in seconds (Envoy `convertRateLimitUnit`; 0: unknown).
fn unit_seconds(unit: i32) -> u64 {
    match unit {
        1 => 1,
        2 => 60,
        3 => 3600,
        4 => 86400,
        5 => 2_592_000,
        6 => 31_536_000,
        7 => 604_800,
        _ => 0,
    }
}

/// `HeaderValueOption`s applied to a reply's header list, as Envoy's header
/// parser applies them to the local reply's map.
fn apply_options(headers: &mut Vec<(String, String)>, options: &[HeaderToAdd]) {
    for o in options {
        let exists = headers.iter().any(|(k, _)| *k == o.name);
        match o.edit(exists) {
            HeaderEdit::None => {}
            HeaderEdit::Add => headers.push((o.name.clone(), o.value.clone())),
            HeaderEdit::Set => {
                headers.retain(|(k, _)| *k != o.name);
                headers.push((o.name.clone(), o.value.clone()));
            }
        }
    }
}

fn compile(json: GlobalJson) -> Result<GlobalRateLimit, ConfigError> {
    let root = FieldPath::root();
    check_type_url(json.type_url.as_deref(), TYPE_URL)?;
    if json.domain.is_empty() {
        return Err(ConfigError::new(&root.field("domain"), "must not be empty"));
    }
    if json.stage > 10 {
        return Err(ConfigError::new(
            &root.field("stage"),
            "must be between 0 and 10",
        ));
    }
    let unsupported = [
        ("filter_enabled", json.filter_enabled.is_some()),
        ("filter_enforced", json.filter_enforced.is_some()),
        (
            "failure_mode_deny_percent",
            json.failure_mode_deny_percent.is_some(),
        ),
        ("metadata_namespace", json.metadata_namespace.is_some()),
        (
            "enable_retry_after_header",
            json.enable_retry_after_header.is_some(),
        ),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(ConfigError::new(
            &root.field(name),
            "not supported by meshwasm",
        ));
    }
    let request_type = match json.request_type.as_deref() {
        None | Some("") | Some("both") => RequestType::Both,
        Some("internal") => RequestType::Internal,
        Some("external") => RequestType::External,
        Some(_) => {
            return Err(ConfigError::new(
                &root.field("request_type"),
                "expected internal, external or both",
            ))
        }
    };
    let timeout_ms = match &json.timeout {
        None => 20,
        Some(t) => parse_duration(t)
            .map_err(|e| ConfigError::new(&root.field("timeout"), e))?
            .as_millis() as u64,
    };
    let sp = root.field("rate_limit_service");
    let Some(service) = &json.rate_limit_service else {
        return Err(ConfigError::new(&sp, "is required"));
    };
    if let Some(v) = &service.transport_api_version {
        // AUTO (0) and V2 (1) are gone from Envoy 1.40: only V3 (2) is accepted.
        if enum_value(v, &["AUTO", "V2", "V3"], &sp.field("transport_api_version"))? != 2 {
            return Err(ConfigError::new(
                &sp.field("transport_api_version"),
                "only V3 is supported",
            ));
        }
    }
    let gp = sp.field("grpc_service");
    let g = &service.grpc_service;
    if g.google_grpc.is_some() {
        return Err(ConfigError::new(
            &gp.field("google_grpc"),
            "not supported by meshwasm (a wasm filter calls through an Envoy cluster: use envoy_grpc)",
        ));
    }
    if g.timeout.is_some() {
        return Err(ConfigError::new(
            &gp.field("timeout"),
            "not supported by meshwasm: the filter's own timeout applies",
        ));
    }
    let Some(eg) = &g.envoy_grpc else {
        return Err(ConfigError::new(&gp.field("envoy_grpc"), "is required"));
    };
    if eg.cluster_name.is_empty() {
        return Err(ConfigError::new(
            &gp.field("envoy_grpc").field("cluster_name"),
            "must not be empty",
        ));
    }
    let target = GrpcServiceTarget::new(&eg.cluster_name, &eg.authority)
        .map_err(|e| ConfigError::new(&gp.field("envoy_grpc"), e))?
        .0;
    let x_ratelimit_headers = match &json.enable_x_ratelimit_headers {
        None => false,
        Some(v) => {
            enum_value(
                v,
                &["OFF", "DRAFT_VERSION_03"],
                &root.field("enable_x_ratelimit_headers"),
            )? == 1
        }
    };
    let rate_limited_status = match &json.rate_limited_status {
        None => 429,
        // Envoy `toErrorCode`: anything below 400 is replaced by 429.
        Some(s) => match status_code(&s.code, &root.field("rate_limited_status").field("code"))? {
            c if c < 400 => 429,
            c => c,
        },
    };
    let status_on_error = match &json.status_on_error {
        None => 500,
        Some(s) => status_code(&s.code, &root.field("status_on_error").field("code"))?,
    };
    Ok(GlobalRateLimit {
        domain: json.domain,
        stat_prefix: json.stat_prefix,
        request_type,
        timeout_ms,
        failure_mode_deny: json.failure_mode_deny,
        rate_limited_as_resource_exhausted: json.rate_limited_as_resource_exhausted,
        cluster: eg.cluster_name.clone(),
        target,
        x_ratelimit_headers,
        disable_x_envoy_ratelimited_header: json.disable_x_envoy_ratelimited_header,
        rate_limited_status,
        response_headers_to_add: headers_to_add(
            &json.response_headers_to_add,
            &root.field("response_headers_to_add"),
        )?,
        status_on_error,
        rate_limits: compile_rate_limits(
            &json.rate_limits,
            &root.field("rate_limits"),
            "not supported by meshwasm",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::core::HeaderValue;
    use crate::proto::ratelimit::{RateLimit, CODE_OK};
    use crate::proto::Duration;
    use serde_json::json;

    fn config(extra: Value) -> Result<GlobalRateLimit, ConfigError> {
        let mut c = json!({"domain": "edge", "rate_limit_service": {
            "grpc_service": {"envoy_grpc": {"cluster_name": "rls", "authority": "rls.svc"}},
            "transport_api_version": "V3"},
            "rate_limits": [
                {"actions": [{"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}}]},
                {"actions": [{"remote_address": {}}]},
                {"actions": [{"generic_key": {"descriptor_value": "g"}},
                             {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                c[k] = v;
            }
        }
        GlobalRateLimit::from_json(c.to_string().as_bytes())
    }

    fn err(extra: Value) -> String {
        config(extra).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_target() {
        let g = config(json!({})).unwrap();
        assert_eq!(g.timeout_ms, 20);
        assert_eq!((g.rate_limited_status, g.status_on_error), (429, 500));
        assert!(!g.failure_mode_deny && g.error_status().is_none());
        let t = crate::proto::core::GrpcService::decode(g.target.as_bytes()).unwrap();
        let eg = t.envoy_grpc.unwrap();
        assert_eq!(
            (eg.cluster_name.as_str(), eg.authority.as_str()),
            ("rls", "rls.svc")
        );
        let g = config(json!({"timeout": "1s", "failure_mode_deny": true,
            "status_on_error": {"code": 503}, "rate_limited_status": {"code": 200}}))
        .unwrap();
        assert_eq!(g.timeout_ms, 1000);
        assert_eq!(g.error_status(), Some(503));
        assert_eq!(g.rate_limited_status, 429, "below 400 becomes 429");
    }

    #[test]
    fn bad_configs_name_the_field() {
        assert!(err(json!({"domain": ""})).starts_with("domain:"));
        assert!(err(json!({"rate_limit_service": null})).starts_with("rate_limit_service:"));
        assert!(err(json!({"timeout": "soon"})).starts_with("timeout:"));
        assert!(err(json!({"stage": 11})).starts_with("stage:"));
        assert!(err(json!({"request_type": "all"})).starts_with("request_type:"));
        assert!(err(json!({"filter_enabled": {}})).starts_with("filter_enabled:"));
        assert!(err(json!({"domian": "x"})).contains("unknown field"));
        assert!(
            err(json!({"rate_limit_service": {"grpc_service": {"google_grpc": {}}}}))
                .starts_with("rate_limit_service.grpc_service.google_grpc:")
        );
        assert!(err(
            json!({"rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": ""}}}})
        )
        .starts_with("rate_limit_service.grpc_service.envoy_grpc.cluster_name:"));
        assert!(err(
            json!({"rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "a"}},
            "transport_api_version": "V2"}})
        )
        .starts_with("rate_limit_service.transport_api_version:"));
        assert!(err(
            json!({"rate_limits": [{"actions": [{"remote_address": {}}]},
            {"actions": [{"request_headers": {"header_name": "x"}}]}]})
        )
        .starts_with("rate_limits[1].actions[0].request_headers"));
        assert!(
            err(json!({"rate_limits": [{"actions": []}]})).starts_with("rate_limits[0].actions:")
        );
        assert!(
            err(json!({"response_headers_to_add": [{"header": {"key": ":x", "value": "1"}}]}))
                .starts_with("response_headers_to_add[0].header.key:")
        );
        assert!(err(json!({"status_on_error": {"code": 999}})).starts_with("status_on_error.code:"));
    }

    #[test]
    fn descriptors_and_request() {
        let g = config(json!({})).unwrap();
        let headers = vec![(":path".to_string(), b"/a".to_vec())];
        let req = RequestView {
            headers: &headers,
            remote_ip: "10.0.0.1".parse().ok(),
        };
        let d = g.descriptors(&req);
        assert_eq!(
            d,
            vec![
                vec![("PATH".to_string(), "/a".to_string())],
                vec![("remote_address".to_string(), "10.0.0.1".to_string())],
            ],
            "the third entry needs x-user"
        );
        let r = RateLimitRequest::decode(g.request(&d).as_slice()).unwrap();
        assert_eq!(r.domain, "edge");
        assert_eq!(r.descriptors.len(), 2);
        assert_eq!(r.descriptors[1].entries[0].key, "remote_address");
        assert_eq!(
            g.header_reads(),
            HeaderReads::Named(vec![":path".into(), "x-user".into()])
        );

        let internal = config(json!({"request_type": "internal"})).unwrap();
        assert!(internal.descriptors(&req).is_empty());
        let h2 = vec![
            (":path".to_string(), b"/a".to_vec()),
            (INTERNAL.to_string(), b"true".to_vec()),
        ];
        let req2 = RequestView {
            headers: &h2,
            remote_ip: None,
        };
        assert_eq!(internal.descriptors(&req2).len(), 1);
        assert!(config(json!({"request_type": "external"}))
            .unwrap()
            .descriptors(&req2)
            .is_empty());
    }

    fn status(
        code: i32,
        rpu: u32,
        unit: i32,
        remaining: u32,
        reset: i64,
        name: &str,
    ) -> DescriptorStatus {
        DescriptorStatus {
            code,
            current_limit: Some(RateLimit {
                name: name.into(),
                requests_per_unit: rpu,
                unit,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration {
                seconds: reset,
                nanos: 0,
            }),
        }
    }

    fn header(k: &str, v: &str) -> HeaderValue {
        HeaderValue {
            key: k.into(),
            value: v.into(),
            raw_value: vec![],
        }
    }

    #[test]
    fn answers() {
        let g = config(json!({"enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "response_headers_to_add": [{"header": {"key": "x-limited", "value": "yes"}}]}))
        .unwrap();
        let over = RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![
                status(CODE_OVER_LIMIT, 5, 2, 0, 30, ""),
                status(CODE_OK, 100, 3, 50, 3000, "hourly"),
                DescriptorStatus {
                    code: CODE_OK,
                    ..Default::default()
                },
            ],
            response_headers_to_add: vec![header("X-From-Service", "1")],
            request_headers_to_add: vec![],
            raw_body: b"slow down".to_vec(),
        };
        let a = g.answer(0, &over.encode_to_vec());
        let h = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            a,
            Answer::OverLimit {
                headers: h(&[
                    ("x-from-service", "1"),
                    ("x-envoy-ratelimited", "true"),
                    ("x-ratelimit-limit", "5, 5;w=60, 100;w=3600;name=\"hourly\""),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "30"),
                    ("x-limited", "yes"),
                ]),
                body: b"slow down".to_vec(),
            }
        );
        let ok = RateLimitResponse {
            overall_code: CODE_OK,
            statuses: vec![status(CODE_OK, 5, 1, 4, 1, "")],
            request_headers_to_add: vec![header("x-rl", "seen")],
            ..Default::default()
        };
        assert_eq!(
            g.answer(0, &ok.encode_to_vec()),
            Answer::Ok {
                request_headers: h(&[("x-rl", "seen")]),
                response_headers: h(&[
                    ("x-ratelimit-limit", "5, 5;w=1"),
                    ("x-ratelimit-remaining", "4"),
                    ("x-ratelimit-reset", "1"),
                ]),
            }
        );
        // UNKNOWN is OK, as in a release build of Envoy.
        assert!(matches!(g.answer(0, &[]), Answer::Ok { .. }));
        assert_eq!(g.answer(14, &[]), Answer::Error);
        assert_eq!(
            g.answer(0, &[0xff, 0xff, 0xff, 0x0f]),
            Answer::Error,
            "garbage is an error"
        );

        let quiet = config(json!({"disable_x_envoy_ratelimited_header": true})).unwrap();
        assert_eq!(
            quiet.answer(
                0,
                &RateLimitResponse {
                    overall_code: CODE_OVER_LIMIT,
                    ..Default::default()
                }
                .encode_to_vec()
            ),
            Answer::OverLimit {
                headers: vec![],
                body: vec![]
            }
        );
    }
}
