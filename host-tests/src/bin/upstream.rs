//! The tests' echo upstream as a program, for the compose test's local upstream
//! image (no image can be pulled on the build machines). It answers every request
//! with the JSON echo of `host_tests::upstream` and an `x-upstream` header, and takes
//! the flags of `hashicorp/http-echo`, so docker-compose.yml runs either image with
//! the same command:
//!
//!   upstream -listen=127.0.0.1:5678 -text=v1     (`-listen=:5678`: every interface)
//!
//! It runs until it is killed.

// A developer tool: failing loudly with the reason is the right answer here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use host_tests::upstream::{echo_reply, Upstream};

fn main() {
    let mut listen = ":5678".to_string();
    let mut text = "upstream".to_string();
    for arg in std::env::args().skip(1) {
        let arg = arg.trim_start_matches('-');
        if let Some(v) = arg.strip_prefix("listen=") {
            listen = v.to_string();
        } else if let Some(v) = arg.strip_prefix("text=") {
            text = v.to_string();
        } else {
            eprintln!("upstream: unknown argument -{arg} (takes -listen=ADDR:PORT -text=NAME)");
            std::process::exit(2);
        }
    }
    let addr = if listen.starts_with(':') {
        format!("0.0.0.0{listen}")
    } else {
        listen
    };
    let name = text.clone();
    let up = Upstream::start_on(&addr, &text, move |seen| echo_reply(&name, seen));
    println!("upstream {text}: listening on {addr}");
    loop {
        std::thread::park();
        let _ = up.port();
    }
}
