//! CUSTOM action: Envoy's ext_authz as istiod configures it for a provider.
//! `envoyExtAuthzHttp`: the check request and how its answer is read
//! (ext_authz_http_impl.cc: 200 allows, 5xx and transport failures are errors,
//! anything else denies with the server's status and body).
//! `envoyExtAuthzGrpc`: `envoy.service.auth.v3.Authorization/Check`, with the
//! CheckRequest Envoy builds (check_request_utils.cc) and the CheckResponse
//! read as ext_authz_grpc_impl.cc reads it.

use prost::Message;

use super::compile::{ExtAuthzSettings, GrpcService, HttpService};
use crate::header_ops::{AppendAction, HeaderToAdd};
use crate::proto::auth::{
    AttributeContext, CheckRequest, CheckResponse, HttpRequest, OkHttpResponse, Peer, Request,
};
use crate::proto::core::{Address, HeaderValueOption, SocketAddress};
use crate::proto::{MapEntry, Timestamp};

/// What to do with the request after the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzOutcome {
    /// Continue, with these edits.
    Allow(CheckOk),
    /// Reply locally with this status, body and headers.
    Deny {
        status: u32,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
}

/// The edits an allowing answer asks for (`OkHttpResponse`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOk {
    /// Edits to the request headers sent upstream.
    pub request_headers: Vec<HeaderToAdd>,
    pub request_headers_to_remove: Vec<String>,
    /// Added to the response on its way to the client.
    pub response_headers: Vec<HeaderToAdd>,
    pub query_parameters_to_set: Vec<(String, String)>,
    pub query_parameters_to_remove: Vec<String>,
}

impl CheckOk {
    /// Whether the upstream `:path` changes.
    pub fn edits_query(&self) -> bool {
        !self.query_parameters_to_set.is_empty() || !self.query_parameters_to_remove.is_empty()
    }
}

/// Hop-by-hop and framing headers never copied from the authorization response.
const NEVER_COPIED: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "date",
    "server",
    "x-envoy-upstream-service-time",
];

fn get<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

impl ExtAuthzSettings {
    /// A failed check: `failOpen` allows, else `statusOnError` with no body.
    pub fn on_error(&self) -> ExtAuthzOutcome {
        if self.fail_open {
            ExtAuthzOutcome::Allow(CheckOk::default())
        } else {
            ExtAuthzOutcome::Deny {
                status: self.status_on_error,
                body: Vec::new(),
                headers: Vec::new(),
            }
        }
    }
}

impl HttpService {
    /// Headers of the check request: method, prefixed path (with query),
    /// the provider's authority, the client headers the provider asks for and
    /// its additional headers.
    pub fn check_headers(
        &self,
        authority: &str,
        request: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut out = vec![
            (":method".to_string(), get(request, ":method").to_string()),
            (
                ":path".to_string(),
                format!("{}{}", self.path_prefix, get(request, ":path")),
            ),
            (":authority".to_string(), authority.to_string()),
        ];
        for (k, v) in request {
            if !k.starts_with(':') && self.include_request_header(k) {
                out.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in &self.include_additional_headers {
            out.push((k.clone(), v.clone()));
        }
        out
    }

    /// Reads the provider's answer. `status` is None when the call failed
    /// (reset, no answer). None: the check failed (see `on_error`).
    pub fn outcome(
        &self,
        status: Option<u32>,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Option<ExtAuthzOutcome> {
        let status = match status {
            Some(s) if !(500..600).contains(&s) => s,
            _ => return None,
        };
        let copy = |pick: &dyn Fn(&str) -> bool| -> Vec<(String, String)> {
            headers
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with(':') && !NEVER_COPIED.contains(&k.as_str()) && pick(k)
                })
                .cloned()
                .collect()
        };
        if status == 200 {
            let request_headers = copy(&|k| self.to_upstream_on_allow(k))
                .into_iter()
                .map(|(name, value)| HeaderToAdd {
                    name,
                    value,
                    action: AppendAction::OverwriteIfExistsOrAdd,
                    keep_empty_value: true,
                })
                .collect();
            return Some(ExtAuthzOutcome::Allow(CheckOk {
                request_headers,
                ..CheckOk::default()
            }));
        }
        // Envoy's allowed_client_headers: all headers when the list is empty.
        let deny_all = self.headers_to_downstream_on_deny.is_empty();
        Some(ExtAuthzOutcome::Deny {
            status: if (200..600).contains(&status) {
                status
            } else {
                403
            },
            body,
            headers: copy(&|k| deny_all || self.to_downstream_on_deny(k)),
        })
    }
}

/// What a gRPC CheckRequest carries besides the headers, as the host gives it.
#[derive(Debug, Clone, Default)]
pub struct CheckAttributes<'a> {
    /// `source.address` / `destination.address`: `ip:port`.
    pub source_address: &'a str,
    pub destination_address: &'a str,
    /// The peer's and the local certificate's URI SAN, else DNS SAN, else
    /// subject; empty without TLS.
    pub source_principal: &'a str,
    pub destination_principal: &'a str,
    /// `request.protocol` (`HTTP/1.1`, `HTTP/2`, ...).
    pub protocol: &'a str,
    /// Unix nanoseconds when the request started.
    pub time_nanos: u64,
}

/// `ip:port` (IPv6 in brackets) → a SocketAddress; None for anything else.
fn socket_address(s: &str) -> Option<Address> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Some(Address {
        socket_address: Some(SocketAddress {
            address: ip.to_string(),
            port_value: port.parse().ok()?,
        }),
    })
}

fn header_option(h: HeaderValueOption) -> Option<HeaderToAdd> {
    let header = h.header?;
    // Envoy 1.40's ext_authz reads only the deprecated `append`: true appends,
    // anything else (false, unset, whatever `append_action` says) overwrites.
    let action = match h.append {
        Some(a) if a.value => AppendAction::AppendIfExistsOrAdd,
        _ => AppendAction::OverwriteIfExistsOrAdd,
    };
    Some(HeaderToAdd {
        name: header.key.to_ascii_lowercase(),
        value: header.value,
        action,
        keep_empty_value: true,
    })
}

fn check_ok(ok: OkHttpResponse) -> CheckOk {
    CheckOk {
        request_headers: ok.headers.into_iter().filter_map(header_option).collect(),
        request_headers_to_remove: ok
            .headers_to_remove
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        response_headers: ok
            .response_headers_to_add
            .into_iter()
            .filter_map(header_option)
            .collect(),
        query_parameters_to_set: ok
            .query_parameters_to_set
            .into_iter()
            .map(|q| (q.key, q.value))
            .collect(),
        query_parameters_to_remove: ok.query_parameters_to_remove,
    }
}

/// The request headers as a CheckRequest's map entries: a name seen again is
/// joined to its first value with `,` (Envoy's `headers` map), values not
/// UTF-8 are read lossily.
fn header_entries(pairs: &[(&str, &[u8])]) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        // `from_utf8` checks a word at a time; the lossy form goes byte by byte.
        let v = match std::str::from_utf8(v) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(v),
        };
        match out.iter_mut().find(|e| e.key == *k) {
            Some(e) => {
                e.value.push(',');
                e.value.push_str(&v);
            }
            None => out.push(MapEntry {
                key: (*k).to_string(),
                value: v.into_owned(),
            }),
        }
    }
    out
}

impl GrpcService {
    /// The serialized `CheckRequest` for a request with these headers (the
    /// host's pairs, pseudo-headers included, as Envoy sends them).
    pub fn check_request(&self, pairs: &[(&str, &[u8])], a: &CheckAttributes) -> Vec<u8> {
        let peer = |address: &str, principal: &str| Peer {
            address: socket_address(address),
            service: String::new(),
            principal: principal.to_string(),
        };
        let headers = header_entries(pairs);
        let get = |name: &str| {
            headers
                .iter()
                .find(|e| e.key == name)
                .map(|e| e.value.clone())
                .unwrap_or_default()
        };
        let http = HttpRequest {
            id: get("x-request-id"),
            method: get(":method"),
            path: get(":path"),
            host: get(":authority"),
            scheme: get(":scheme"),
            // Envoy sends the body bytes received so far: none at request headers.
            size: 0,
            protocol: a.protocol.to_string(),
            headers,
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer(a.source_address, a.source_principal)),
                destination: Some(peer(a.destination_address, a.destination_principal)),
                request: Some(Request {
                    time: Some(Timestamp {
                        seconds: (a.time_nanos / 1_000_000_000) as i64,
                        nanos: (a.time_nanos % 1_000_000_000) as i32,
                    }),
                    http: Some(http),
                }),
            }),
        };
        request.encode_to_vec()
    }

    /// Reads the server's answer: the call's gRPC status and the message.
    /// None: the check failed (a gRPC error, an undecodable message); see
    /// `on_error`.
    pub fn outcome(&self, grpc_status: u32, message: &[u8]) -> Option<ExtAuthzOutcome> {
        if grpc_status != 0 {
            return None;
        }
        let r = CheckResponse::decode(message).ok()?;
        if r.status.as_ref().map_or(0, |s| s.code) == 0 {
            return Some(ExtAuthzOutcome::Allow(
                r.ok_response.map(check_ok).unwrap_or_default(),
            ));
        }
        let denied = r.denied_response.unwrap_or_default();
        let status = denied
            .status
            .map(|s| s.code)
            .filter(|c| *c > 0)
            .map_or(403, |c| c as u32);
        Some(ExtAuthzOutcome::Deny {
            status,
            body: denied.body.into_bytes(),
            headers: denied
                .headers
                .into_iter()
                .filter_map(|h| h.header)
                .map(|h| (h.key.to_ascii_lowercase(), h.value))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Authz, ExtAuthzService};
    use serde_json::json;

    fn settings(extra: serde_json::Value) -> ExtAuthzSettings {
        let mut p = json!({"service": "authz.svc", "port": 8000, "pathPrefix": "/check",
            "includeRequestHeadersInCheck": ["x-user"], "headersToUpstreamOnAllow": ["x-authz-*"],
            "headersToDownstreamOnDeny": ["x-reason"], "includeAdditionalHeadersInCheck": {"X-Extra": "1"}});
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                p[k] = v;
            }
        }
        let cfg = json!({"extensionProviders": [{"name": "e", "envoyExtAuthzHttp": p}],
            "policies": [{"metadata": {"name": "c"}, "spec": {"action": "CUSTOM", "provider": {"name": "e"}, "rules": [{}]}}]});
        let a = Authz::from_json(cfg.to_string().as_bytes()).unwrap();
        a.custom.unwrap().1
    }

    fn http(s: &ExtAuthzSettings) -> &HttpService {
        match &s.service {
            ExtAuthzService::Http(h) => h,
            ExtAuthzService::Grpc(_) => panic!("not an HTTP provider"),
        }
    }

    fn h(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn check_request() {
        let s = settings(json!({}));
        let req = h(&[
            (":method", "POST"),
            (":path", "/a?b=1"),
            (":authority", "x"),
            ("x-user", "u"),
            ("cookie", "c"),
        ]);
        assert_eq!(
            http(&s).check_headers(&s.authority, &req),
            h(&[
                (":method", "POST"),
                (":path", "/check/a?b=1"),
                (":authority", "authz.svc"),
                ("x-user", "u"),
                ("x-extra", "1")
            ])
        );
    }

    #[test]
    fn answers() {
        let s = settings(json!({}));
        let resp = h(&[
            (":status", "200"),
            ("x-authz-id", "7"),
            ("x-other", "no"),
            ("content-length", "0"),
        ]);
        assert_eq!(
            http(&s).outcome(Some(200), &resp, vec![]),
            Some(ExtAuthzOutcome::Allow(CheckOk {
                request_headers: vec![HeaderToAdd {
                    name: "x-authz-id".into(),
                    value: "7".into(),
                    action: AppendAction::OverwriteIfExistsOrAdd,
                    keep_empty_value: true,
                }],
                ..CheckOk::default()
            }))
        );
        let resp = h(&[(":status", "401"), ("x-reason", "r"), ("x-other", "no")]);
        assert_eq!(
            http(&s).outcome(Some(401), &resp, b"nope".to_vec()),
            Some(ExtAuthzOutcome::Deny {
                status: 401,
                body: b"nope".to_vec(),
                headers: h(&[("x-reason", "r")])
            })
        );
        assert_eq!(http(&s).outcome(Some(503), &[], vec![]), None);
        assert_eq!(http(&s).outcome(Some(504), &[], vec![]), None);
        assert_eq!(http(&s).outcome(None, &[], vec![]), None);
        assert_eq!(
            s.on_error(),
            ExtAuthzOutcome::Deny {
                status: 403,
                body: vec![],
                headers: vec![]
            }
        );
        let s = settings(json!({"failOpen": true, "statusOnError": "500"}));
        assert_eq!(s.on_error(), ExtAuthzOutcome::Allow(CheckOk::default()));
    }

    fn grpc() -> GrpcService {
        let cfg = json!({"extensionProviders": [{"name": "e", "envoyExtAuthzGrpc": {"service": "opa", "port": 9191}}],
            "policies": [{"metadata": {"name": "c"}, "spec": {"action": "CUSTOM", "provider": {"name": "e"}, "rules": [{}]}}]});
        let a = Authz::from_json(cfg.to_string().as_bytes()).unwrap();
        match a.custom.unwrap().1.service {
            ExtAuthzService::Grpc(g) => g,
            ExtAuthzService::Http(_) => panic!("not a gRPC provider"),
        }
    }

    #[test]
    fn grpc_check_request() {
        let req = h(&[
            (":method", "POST"),
            (":path", "/a?b=1"),
            (":authority", "example.com"),
            (":scheme", "https"),
            ("x-request-id", "rid"),
            ("content-length", "12"),
            ("x-user", "a,b"),
        ]);
        let attrs = CheckAttributes {
            source_address: "10.1.2.3:5555",
            destination_address: "[::1]:8443",
            source_principal: "spiffe://cluster.local/ns/a/sa/b",
            destination_principal: "",
            protocol: "HTTP/1.1",
            time_nanos: 1_700_000_000_123_456_789,
        };
        let pairs: Vec<(&str, &[u8])> = req
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain([("x-user", &b"c"[..])])
            .collect();
        let bytes = grpc().check_request(&pairs, &attrs);
        let r = CheckRequest::decode(bytes.as_slice()).unwrap();
        let a = r.attributes.unwrap();
        let src = a.source.unwrap();
        assert_eq!(
            src.address.unwrap().socket_address.unwrap(),
            SocketAddress {
                address: "10.1.2.3".into(),
                port_value: 5555
            }
        );
        assert_eq!(src.principal, "spiffe://cluster.local/ns/a/sa/b");
        let dst = a.destination.unwrap();
        assert_eq!(dst.address.unwrap().socket_address.unwrap().address, "::1");
        let request = a.request.unwrap();
        assert_eq!(
            request.time,
            Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789
            })
        );
        let http = request.http.unwrap();
        assert_eq!(
            (
                http.method.as_str(),
                http.path.as_str(),
                http.host.as_str(),
                http.scheme.as_str(),
                http.id.as_str(),
                http.size,
                http.protocol.as_str()
            ),
            (
                "POST",
                "/a?b=1",
                "example.com",
                "https",
                "rid",
                0,
                "HTTP/1.1"
            )
        );
        let header = |k: &str| {
            http.headers
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        assert_eq!(http.headers.len(), 7);
        // A repeated name: its values joined, in order.
        assert_eq!(header("x-user"), Some("a,b,c"));
        assert_eq!(header(":path"), Some("/a?b=1"));
        // Addresses the host could not give are left out.
        let bytes = grpc().check_request(&pairs[..4], &CheckAttributes::default());
        let r = CheckRequest::decode(bytes.as_slice()).unwrap();
        let a = r.attributes.unwrap();
        assert_eq!(a.source.unwrap().address, None);
    }

    fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(crate::proto::core::HeaderValue {
                key: key.into(),
                value: value.into(),
                raw_value: vec![],
            }),
            append: append.map(|value| crate::proto::BoolValue { value }),
            append_action: action,
            keep_empty_value: false,
        }
    }

    #[test]
    fn grpc_answers() {
        use crate::proto::auth::{DeniedHttpResponse, HttpStatus};
        use crate::proto::core::QueryParameter;
        use crate::proto::RpcStatus;
        let g = grpc();
        let status = |code| {
            Some(RpcStatus {
                code,
                message: String::new(),
            })
        };
        let ok = CheckResponse {
            status: status(0),
            ok_response: Some(OkHttpResponse {
                headers: vec![
                    option("X-A", "1", None, 0),
                    option("x-b", "2", Some(true), 2),
                    option("x-c", "3", Some(false), 0),
                    option("x-d", "4", None, 3),
                    option("x-e", "5", None, 9),
                ],
                headers_to_remove: vec!["X-Gone".into()],
                response_headers_to_add: vec![option("x-resp", "r", None, 1)],
                query_parameters_to_set: vec![QueryParameter {
                    key: "k".into(),
                    value: "v".into(),
                }],
                query_parameters_to_remove: vec!["drop".into()],
            }),
            ..CheckResponse::default()
        };
        let Some(ExtAuthzOutcome::Allow(edits)) = g.outcome(0, &ok.encode_to_vec()) else {
            panic!("allowed")
        };
        let actions: Vec<(&str, AppendAction)> = edits
            .request_headers
            .iter()
            .map(|h| (h.name.as_str(), h.action))
            .collect();
        use AppendAction::*;
        assert_eq!(
            actions,
            vec![
                ("x-a", OverwriteIfExistsOrAdd),
                ("x-b", AppendIfExistsOrAdd),
                ("x-c", OverwriteIfExistsOrAdd),
                ("x-d", OverwriteIfExistsOrAdd),
                ("x-e", OverwriteIfExistsOrAdd),
            ]
        );
        assert_eq!(edits.request_headers_to_remove, vec!["x-gone".to_string()]);
        assert_eq!(edits.response_headers[0].action, OverwriteIfExistsOrAdd);
        assert_eq!(
            edits.query_parameters_to_set,
            vec![("k".into(), "v".into())]
        );
        assert_eq!(edits.query_parameters_to_remove, vec!["drop".to_string()]);
        assert!(edits.edits_query());

        // No status at all is OK (code 0), with nothing to edit.
        assert_eq!(
            g.outcome(0, &[]),
            Some(ExtAuthzOutcome::Allow(CheckOk::default()))
        );
        let denied = CheckResponse {
            status: status(7),
            denied_response: Some(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![option("X-Reason", "r", None, 0)],
                body: "nope".into(),
            }),
            ..CheckResponse::default()
        };
        assert_eq!(
            g.outcome(0, &denied.encode_to_vec()),
            Some(ExtAuthzOutcome::Deny {
                status: 401,
                body: b"nope".to_vec(),
                headers: h(&[("x-reason", "r")])
            })
        );
        // Denied without a denied_response: 403, no body.
        let bare = CheckResponse {
            status: status(16),
            ..CheckResponse::default()
        };
        assert_eq!(
            g.outcome(0, &bare.encode_to_vec()),
            Some(ExtAuthzOutcome::Deny {
                status: 403,
                body: vec![],
                headers: vec![]
            })
        );
        // Errors: a failed call, garbage.
        assert_eq!(g.outcome(4, &ok.encode_to_vec()), None);
        assert_eq!(g.outcome(0, b"\xff\xff\xff"), None);
    }
}
