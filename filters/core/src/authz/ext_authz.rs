//! CUSTOM action: Envoy's HTTP ext_authz as istiod configures it for an
//! `envoyExtAuthzHttp` provider — the check request and how its answer is read
//! (ext_authz_http_impl.cc: 200 allows, 5xx and transport failures are errors,
//! anything else denies with the server's status and body).

use super::compile::ExtAuthzSettings;

/// What to do with the request after the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzOutcome {
    /// Continue; set these headers on the upstream request.
    Allow {
        upstream_headers: Vec<(String, String)>,
    },
    /// Reply locally with this status, body and headers.
    Deny {
        status: u32,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
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

impl ExtAuthzSettings {
    /// Headers of the check request: method, prefixed path (with query),
    /// the provider's authority, the client headers the provider asks for and
    /// its additional headers.
    pub fn check_headers(&self, request: &[(String, String)]) -> Vec<(String, String)> {
        let get = |n: &str| {
            request
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut out = vec![
            (":method".to_string(), get(":method")),
            (
                ":path".to_string(),
                format!("{}{}", self.path_prefix, get(":path")),
            ),
            (":authority".to_string(), self.authority.clone()),
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
            return Some(ExtAuthzOutcome::Allow {
                upstream_headers: copy(&|k| self.to_upstream_on_allow(k)),
            });
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

    /// A failed check: `failOpen` allows, else `statusOnError` with no body.
    pub fn on_error(&self) -> ExtAuthzOutcome {
        if self.fail_open {
            ExtAuthzOutcome::Allow {
                upstream_headers: Vec::new(),
            }
        } else {
            ExtAuthzOutcome::Deny {
                status: self.status_on_error,
                body: Vec::new(),
                headers: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Authz;
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
            s.check_headers(&req),
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
            s.outcome(Some(200), &resp, vec![]),
            Some(ExtAuthzOutcome::Allow {
                upstream_headers: h(&[("x-authz-id", "7")])
            })
        );
        let resp = h(&[(":status", "401"), ("x-reason", "r"), ("x-other", "no")]);
        assert_eq!(
            s.outcome(Some(401), &resp, b"nope".to_vec()),
            Some(ExtAuthzOutcome::Deny {
                status: 401,
                body: b"nope".to_vec(),
                headers: h(&[("x-reason", "r")])
            })
        );
        assert_eq!(s.outcome(Some(503), &[], vec![]), None);
        assert_eq!(s.outcome(Some(504), &[], vec![]), None);
        assert_eq!(s.outcome(None, &[], vec![]), None);
        assert_eq!(
            s.on_error(),
            ExtAuthzOutcome::Deny {
                status: 403,
                body: vec![],
                headers: vec![]
            }
        );
        let s = settings(json!({"failOpen": true, "statusOnError": "500"}));
        assert_eq!(
            s.on_error(),
            ExtAuthzOutcome::Allow {
                upstream_headers: vec![]
            }
        );
    }
}
