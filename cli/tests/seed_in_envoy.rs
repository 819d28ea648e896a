//! The five seed WasmPlugins' pluginConfig, as `meshwasm wasmplugin` renders them,
//! are accepted by the real filters in Envoy (each `on_configure` says yes, or
//! Envoy would not start) and behave in Istio's phase order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{envoy_yaml, plugin_config_of, run_ok, wasm};
use host_tests::envoy::Envoy;
use host_tests::http::Request;
use host_tests::upstream::Upstream;

#[test]
fn seed_plugin_configs_load_together_in_phase_order() {
    // AUTHN, AUTHZ (authz, rate limit), UNSPECIFIED (fault, canary).
    let order = ["jwt_authn", "authz", "local_ratelimit", "fault", "canary"];
    let mut modules = Vec::new();
    for f in order {
        let yaml = run_ok(&[
            "wasmplugin",
            f,
            "-f",
            &format!("envoy-configs/istio/policies/{f}.yaml"),
            "--image",
            &format!("r.example/meshwasm/{f}:1"),
        ]);
        modules.push((wasm(f), f, plugin_config_of(&yaml)));
    }
    let chain: Vec<_> = modules
        .iter()
        .map(|(p, f, c)| (p.as_path(), *f, c))
        .collect();
    let up = Upstream::echo("backend");
    let envoy = Envoy::from_yaml(&envoy_yaml(&chain))
        .upstream("UPSTREAM", &up)
        .start();

    // jwt_authn runs first: a bad token is 401 whatever the path.
    let r = envoy.send(
        "meshwasm",
        &Request::get("/healthz").header("authorization", "Bearer not.a.jwt"),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // authz next: no principal, not /healthz → 403.
    let r = envoy.send("meshwasm", &Request::get("/reviews/1"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text(), "RBAC: access denied");
    // The authz filter counted that denial (the 401 never reached it).
    assert_eq!(
        envoy.stat("wasmcustom.meshwasm.authz.denied"),
        1,
        "{:?}",
        envoy.stats()
    );
}
