//! `make demo`: the gateway on localhost:10000 with all five filters, in the
//! foreground, and curl lines that show each filter working. Ctrl-C stops it all.

// A developer tool: failing loudly with the reason is the right answer here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::mpsc;

use host_tests::demo;

fn main() {
    let port: u16 = std::env::var("DEMO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(10000);
    let gw = match demo::start_gateway(port) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("demo: Envoy did not start: {e}");
            std::process::exit(1);
        }
    };
    println!("meshwasm demo: Envoy 1.40 on http://localhost:{port} with jwt_authn → authz → local_ratelimit → fault → canary");
    println!(
        "  upstreams: v1 on :{}, v2 on :{}; Envoy admin on http://localhost:{}",
        gw.v1.port(),
        gw.v2.port(),
        gw.envoy.admin_port()
    );
    println!("  Envoy log: {}\n", gw.envoy.log_path().display());
    for s in demo::steps() {
        println!("# {}: {}", s.filter, s.what);
        println!("{}", s.curl(port));
        match s.run(port) {
            Ok(r) => {
                let verdict = match s.check(&r) {
                    None => "as expected".to_string(),
                    Some(why) => format!("UNEXPECTED: {why}"),
                };
                let served = r
                    .header("x-upstream")
                    .map(|u| format!(", served by {u}"))
                    .unwrap_or_default();
                println!("  → {}{served} ({verdict})\n", r.status);
            }
            Err(e) => println!("  → request failed: {e}\n"),
        }
    }
    println!(
        "metrics: curl -s http://localhost:{}/stats | grep meshwasm",
        gw.envoy.admin_port()
    );
    println!("Ctrl-C stops Envoy and the upstreams.");
    let (tx, rx) = mpsc::channel();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.send(());
    }) {
        eprintln!("demo: cannot handle Ctrl-C ({e}); stop with kill");
    }
    let _ = rx.recv();
    println!("\nstopping");
    drop(gw);
}
