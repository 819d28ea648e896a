//! RequestAuthentication (Istio `jwtRules`) evaluated the way Envoy's
//! `envoy.filters.http.jwt_authn` does when istiod configures it.

mod payload;

pub use payload::{
    payload_from_msgpack, payload_to_msgpack, request_principal, FILTER_STATE_PAYLOAD,
    FILTER_STATE_PRINCIPAL,
};
