//! `crossings`: a benchmark-only module that makes one kind of Envoy↔VM crossing
//! a configured number of times per request, so `make bench` can price each
//! kind in Envoy's own wasm host (docs/performance.md, "What a crossing costs").
//!
//! Plugin configuration: `<op> <repeat>`, e.g. `header_map 10`. In
//! `on_http_request_headers` the op runs `repeat` times; everything else is
//! the same for every op, so (row − the `none` row) / repeat is one crossing's
//! price. Several pairs (`header_map 1 filter_state 2 metric 1`) make a filter's
//! required crossings and nothing else: the floor that filter's bench row is
//! compared with (envoy-configs/bench/authz.yaml, canary.yaml). Its callbacks
//! are pruned like a filter's (context create, request headers, delete), so the
//! `none` row is the floor a meshwasm filter starts from; (the SDK's no-op −
//! `none`) / 4 prices a VM entry.
//!
//! Returned buffers are freed without being parsed: the row measures the
//! crossing, not what a filter does with the data.
//!
//! `grpc_call` is the one op that waits: an empty `Authorization/Check` to the
//! cluster `ext_authz_grpc` (named with an `:authority` in a serialized
//! GrpcService, as authz names it), the request paused until the answer, whose
//! message is read before the request resumes: what a CUSTOM check over gRPC
//! must cross besides its own reads.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};

meshwasm_glue::callbacks!("request_headers grpc_receive grpc_close delete");

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(CrossingsRoot { ops: Rc::from([]), metric: None })
    });
}}

/// The shared-data key `shared_get` reads (written in `on_configure`).
const SHARED_KEY: &str = "meshwasm.crossings.bench";

/// One kind of crossing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    None,
    /// `proxy_get_header_map_pairs` on the request headers (host allocates the copy).
    HeaderMap,
    /// `proxy_get_header_map_value(":path")`: a present header (host allocates).
    Header,
    /// `proxy_get_header_map_value` of an absent header: NotFound, nothing allocated.
    HeaderAbsent,
    /// `proxy_replace_header_map_value("x-crossings", "1")`.
    ReplaceHeader,
    /// `proxy_remove_header_map_value` of an absent header.
    RemoveHeader,
    /// `proxy_set_property`: a filter state value (as `meshwasm.authz_result`).
    FilterState,
    /// `proxy_get_property(["source", "address"])` (host allocates).
    Property,
    /// `proxy_increment_metric` on a counter.
    Metric,
    /// `proxy_get_current_time_nanoseconds`.
    Time,
    /// WASI `clock_time_get` (what `std::time::SystemTime::now` calls).
    WasiClock,
    /// `proxy_get_shared_data` of a present 64-byte value (host allocates).
    SharedGet,
    /// `proxy_grpc_call`, then the answer's VM entry, its message and the resume.
    GrpcCall,
    /// `proxy_set_shared_data` (no CAS).
    SharedSet,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "none" => Op::None,
            "header_map" => Op::HeaderMap,
            "header" => Op::Header,
            "header_absent" => Op::HeaderAbsent,
            "replace_header" => Op::ReplaceHeader,
            "remove_header" => Op::RemoveHeader,
            "filter_state" => Op::FilterState,
            "property" => Op::Property,
            "metric" => Op::Metric,
            "time" => Op::Time,
            "wasi_clock" => Op::WasiClock,
            "shared_get" => Op::SharedGet,
            "shared_set" => Op::SharedSet,
            "grpc_call" => Op::GrpcCall,
            _ => return None,
        })
    }
}

struct CrossingsRoot {
    /// Each op and how many times it runs per request, in order.
    ops: Rc<[(Op, u32)]>,
    metric: Option<u32>,
}

/// `<op> <repeat>` pairs; None unless the whole text is such pairs.
fn parse_ops(text: &str) -> Option<Vec<(Op, u32)>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return None;
    }
    words
        .chunks_exact(2)
        .map(|w| match w {
            [op, repeat] => Some((Op::parse(op)?, repeat.parse().ok()?)),
            _ => None,
        })
        .collect()
}

impl Context for CrossingsRoot {}

impl RootContext for CrossingsRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = meshwasm_glue::plugin_config().unwrap_or_default();
        let text = String::from_utf8_lossy(&cfg);
        let Some(ops) = parse_ops(&text) else {
            meshwasm_glue::log_error(&format!(
                "crossings: configuration {text:?} is not `<op> <repeat>` pairs"
            ));
            return false;
        };
        self.metric =
            hostcalls::define_metric(MetricType::Counter, "meshwasm.crossings.bench").ok();
        if ops.iter().any(|(op, _)| *op == Op::SharedGet) {
            let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&[7u8; 64]), None);
        }
        self.ops = ops.into();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CrossingsHttp {
            ops: self.ops.clone(),
            metric: self.metric,
            calls: 0,
        }))
    }
}

struct CrossingsHttp {
    ops: Rc<[(Op, u32)]>,
    metric: Option<u32>,
    /// gRPC calls not answered yet.
    calls: u32,
}

impl Context for CrossingsHttp {
    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, size: usize) {
        drop(meshwasm_glue::grpc_call_message(status_code, size));
        self.calls = self.calls.saturating_sub(1);
        if self.calls == 0 {
            meshwasm_glue::resume_request();
        }
    }
}

impl HttpContext for CrossingsHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ops = self.ops.clone();
        for &(op, repeat) in ops.iter() {
            for _ in 0..repeat {
                self.cross(op);
            }
        }
        if self.calls > 0 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// The serialized GrpcService the `grpc_call` op names its cluster with.
fn grpc_target() -> String {
    use prost::Message;
    let service = meshwasm_core::proto::core::GrpcService {
        envoy_grpc: Some(meshwasm_core::proto::core::EnvoyGrpc {
            cluster_name: "ext_authz_grpc".into(),
            authority: "ext-authz-grpc.bench.svc.cluster.local".into(),
        }),
    };
    String::from_utf8(service.encode_to_vec()).unwrap_or_default()
}

impl CrossingsHttp {
    fn cross(&mut self, op: Op) {
        let req = MapType::HttpRequestHeaders;
        match op {
            Op::None => {}
            // The raw buffer, freed unparsed (`request_header_map` does no more).
            Op::HeaderMap => drop(meshwasm_glue::request_header_map()),
            Op::Header => drop(hostcalls::get_map_value_bytes(req, ":path")),
            Op::HeaderAbsent => drop(hostcalls::get_map_value_bytes(req, "x-absent")),
            Op::ReplaceHeader => drop(hostcalls::set_map_value_bytes(
                req,
                "x-crossings",
                Some(b"1"),
            )),
            Op::RemoveHeader => drop(hostcalls::remove_map_value(req, "x-absent")),
            Op::FilterState => {
                meshwasm_glue::set_filter_state("meshwasm.crossings", b"allowed");
            }
            Op::Property => drop(hostcalls::get_property(vec!["source", "address"])),
            Op::Metric => {
                if let Some(id) = self.metric {
                    let _ = hostcalls::increment_metric(id, 1);
                }
            }
            Op::Time => drop(hostcalls::get_current_time()),
            Op::WasiClock => drop(std::hint::black_box(std::time::SystemTime::now())),
            Op::SharedGet => drop(hostcalls::get_shared_data(SHARED_KEY)),
            Op::SharedSet => drop(hostcalls::set_shared_data(
                "meshwasm.crossings.set",
                Some(&[7u8; 64]),
                None,
            )),
            Op::GrpcCall => {
                let sent = hostcalls::dispatch_grpc_call(
                    &grpc_target(),
                    "envoy.service.auth.v3.Authorization",
                    "Check",
                    vec![],
                    None,
                    std::time::Duration::from_secs(1),
                );
                if sent.is_ok() {
                    self.calls += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_ops, Op};

    #[test]
    fn configuration_is_op_repeat_pairs() {
        assert_eq!(parse_ops("header_map 10"), Some(vec![(Op::HeaderMap, 10)]));
        assert_eq!(
            parse_ops(" header_map 1  filter_state 2\nmetric 1 "),
            Some(vec![
                (Op::HeaderMap, 1),
                (Op::FilterState, 2),
                (Op::Metric, 1)
            ])
        );
        for bad in [
            "",
            "header_map",
            "header_map 1 metric",
            "nope 1",
            "metric x",
            "metric -1",
        ] {
            assert_eq!(parse_ops(bad), None, "{bad:?}");
        }
    }
}
