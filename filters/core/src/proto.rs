//! The protobuf messages meshwasm sends to and reads from Envoy's gRPC
//! services, declared with prost's derive under their Envoy names and field
//! numbers.
//!
//! Why declared here rather than taken from `envoy-types`: that crate builds
//! tonic's transport (tokio's network layer), which does not compile for
//! `wasm32-wasip1`. Only the fields Envoy's own clients fill are declared;
//! prost skips the rest when decoding. The gRPC ext_authz test has Envoy carry
//! these messages between the filter and a server built on `envoy-types`, so a
//! wrong field number fails there.

#![allow(clippy::derive_partial_eq_without_eq)]

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `google.protobuf.BoolValue`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BoolValue {
    #[prost(bool, tag = "1")]
    pub value: bool,
}

/// One entry of a protobuf `map<string, string>` (field 1 the key, 2 the value).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct MapEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.rpc.Status` (details are not read).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.config.core.v3`.
pub mod core {
    /// `SocketAddress` (TCP; `port_value` only).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SocketAddress {
        #[prost(string, tag = "2")]
        pub address: String,
        #[prost(uint32, tag = "3")]
        pub port_value: u32,
    }

    /// `Address` holding a `socket_address`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Address {
        #[prost(message, optional, tag = "1")]
        pub socket_address: Option<SocketAddress>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HeaderValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
        #[prost(bytes = "vec", tag = "3")]
        pub raw_value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HeaderValueOption {
        #[prost(message, optional, tag = "1")]
        pub header: Option<HeaderValue>,
        /// Deprecated in Envoy, still honoured: true appends, false overwrites.
        #[prost(message, optional, tag = "2")]
        pub append: Option<super::BoolValue>,
        #[prost(int32, tag = "3")]
        pub append_action: i32,
        #[prost(bool, tag = "4")]
        pub keep_empty_value: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct QueryParameter {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `GrpcService.EnvoyGrpc`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct EnvoyGrpc {
        #[prost(string, tag = "1")]
        pub cluster_name: String,
        #[prost(string, tag = "2")]
        pub authority: String,
    }

    /// `GrpcService` with `envoy_grpc`: what Envoy's wasm host takes, serialized,
    /// in place of a cluster name for a gRPC call.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct GrpcService {
        #[prost(message, optional, tag = "1")]
        pub envoy_grpc: Option<EnvoyGrpc>,
    }
}

/// `envoy.service.auth.v3`.
pub mod auth {
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        pub attributes: Option<AttributeContext>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct AttributeContext {
        #[prost(message, optional, tag = "1")]
        pub source: Option<Peer>,
        #[prost(message, optional, tag = "2")]
        pub destination: Option<Peer>,
        #[prost(message, optional, tag = "4")]
        pub request: Option<Request>,
    }

    /// `AttributeContext.Peer`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Peer {
        #[prost(message, optional, tag = "1")]
        pub address: Option<super::core::Address>,
        #[prost(string, tag = "2")]
        pub service: String,
        #[prost(string, tag = "4")]
        pub principal: String,
    }

    /// `AttributeContext.Request`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Request {
        #[prost(message, optional, tag = "1")]
        pub time: Option<super::Timestamp>,
        #[prost(message, optional, tag = "2")]
        pub http: Option<HttpRequest>,
    }

    /// `AttributeContext.HttpRequest`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HttpRequest {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub method: String,
        /// A `map<string, string>` on the wire: each pair is an entry message.
        /// Kept as the list of entries so a request builds no map.
        #[prost(message, repeated, tag = "3")]
        pub headers: Vec<super::MapEntry>,
        #[prost(string, tag = "4")]
        pub path: String,
        #[prost(string, tag = "5")]
        pub host: String,
        #[prost(string, tag = "6")]
        pub scheme: String,
        #[prost(int64, tag = "9")]
        pub size: i64,
        #[prost(string, tag = "10")]
        pub protocol: String,
    }

    /// `error_response` (field 5, newer than Envoy 1.40) is left out: Envoy
    /// 1.40 does not know it and goes by `status` alone.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct CheckResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<super::RpcStatus>,
        #[prost(message, optional, tag = "2")]
        pub denied_response: Option<DeniedHttpResponse>,
        #[prost(message, optional, tag = "3")]
        pub ok_response: Option<OkHttpResponse>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DeniedHttpResponse {
        /// `envoy.type.v3.HttpStatus`.
        #[prost(message, optional, tag = "1")]
        pub status: Option<HttpStatus>,
        #[prost(message, repeated, tag = "2")]
        pub headers: Vec<super::core::HeaderValueOption>,
        #[prost(string, tag = "3")]
        pub body: String,
    }

    /// `envoy.type.v3.HttpStatus`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HttpStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct OkHttpResponse {
        #[prost(message, repeated, tag = "2")]
        pub headers: Vec<super::core::HeaderValueOption>,
        #[prost(string, repeated, tag = "5")]
        pub headers_to_remove: Vec<String>,
        #[prost(message, repeated, tag = "6")]
        pub response_headers_to_add: Vec<super::core::HeaderValueOption>,
        #[prost(message, repeated, tag = "7")]
        pub query_parameters_to_set: Vec<super::core::QueryParameter>,
        #[prost(string, repeated, tag = "8")]
        pub query_parameters_to_remove: Vec<String>,
    }
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `envoy.service.ratelimit.v3` (with the descriptor of
/// `envoy.extensions.common.ratelimit.v3`): what Envoy's global rate limit
/// filter sends to a rate limit service and reads back.
pub mod ratelimit {
    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor` (no
    /// per-descriptor override or addend: the actions never make them).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
    }

    /// `RateLimitDescriptor.Entry`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    /// `RateLimitResponse.Code`.
    pub const CODE_UNKNOWN: i32 = 0;
    pub const CODE_OK: i32 = 1;
    pub const CODE_OVER_LIMIT: i32 = 2;

    /// Dynamic metadata and quota are not read: Envoy's filter only stores
    /// the former, and the latter is for its quota-based clients.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RateLimitResponse {
        #[prost(int32, tag = "1")]
        pub overall_code: i32,
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
        #[prost(message, repeated, tag = "3")]
        pub response_headers_to_add: Vec<super::core::HeaderValue>,
        #[prost(message, repeated, tag = "4")]
        pub request_headers_to_add: Vec<super::core::HeaderValue>,
        #[prost(bytes = "vec", tag = "5")]
        pub raw_body: Vec<u8>,
    }

    /// `RateLimitResponse.RateLimit`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RateLimit {
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        /// `RateLimit.Unit`: UNKNOWN 0, SECOND 1, MINUTE 2, HOUR 3, DAY 4,
        /// MONTH 5, YEAR 6, WEEK 7.
        #[prost(int32, tag = "2")]
        pub unit: i32,
    }

    /// `RateLimitResponse.DescriptorStatus`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DescriptorStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<super::Duration>,
    }
}
