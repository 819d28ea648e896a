//! The demo gateway (`make demo`): all five filter modules in one Envoy, each
//! demo step gives the answer the README promises.

use host_tests::demo;

#[test]
fn every_demo_step_behaves_as_documented() {
    let gw = demo::start_gateway(0).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for s in demo::steps() {
        match s.run(gw.port) {
            Ok(r) => {
                if let Some(why) = s.check(&r) {
                    failures.push(format!("{} — {}: {why}", s.filter, s.what));
                }
            }
            Err(e) => failures.push(format!("{} — {}: {e}", s.filter, s.what)),
        }
    }
    // The canary split is random; over 200 plain requests both versions answer.
    let mut v2 = 0;
    for _ in 0..200 {
        let r = host_tests::http::send(gw.port, &host_tests::http::Request::get("/split")).unwrap();
        if r.header("x-upstream") == Some("v2") {
            v2 += 1;
        }
    }
    if !(2..=50).contains(&v2) {
        failures.push(format!("canary 90/10 split: {v2}/200 to v2"));
    }
    assert!(
        failures.is_empty(),
        "demo steps failed:\n{}",
        failures.join("\n")
    );
}
