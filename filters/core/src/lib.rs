//! meshwasm-core: the policy logic of every meshwasm filter.
//!
//! Nothing here knows about proxy-wasm. Filter crates build a request view from
//! host callbacks, ask this crate for a decision and apply it. Clock, randomness
//! and shared state reach the logic through small traits, so everything here is
//! tested natively and deterministically.

pub mod config;
pub mod host;

pub use config::{ConfigError, FieldPath};

pub mod authz;
pub mod canary;
pub mod fault;
pub mod header_ops;
pub mod http_match;
pub mod jwt;
pub mod proto;
pub mod ratelimit;
