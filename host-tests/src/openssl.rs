//! The `openssl` command (installed by `make setup`), for tests that need real
//! certificates: mTLS peers, X.509 JWKS.

use std::path::Path;
use std::process::Command;

/// Runs `openssl <args>` in `dir`; panics with its stderr when it fails.
pub fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (run `make setup`)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
