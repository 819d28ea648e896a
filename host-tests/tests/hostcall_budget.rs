//! Host calls per request, for every `make bench` case: in Envoy (V8) crossings
//! between the VM and the host are most of a filter's cost, so their count is the
//! deterministic part of a filter's speed. Each case runs its bench listener's plugin configuration
//! in the emulator with the bench request, and its crossings (host calls, the
//! host's allocations in the VM for returned data, and Envoy's entries into the
//! VM) and wasm operators (wasmtime fuel) must stay within the `hostcall_budget`
//! and `wasm_operator_budget` the case declares in
//! `envoy-configs/bench/<filter>.json`. A budget sits just above what the case
//! makes, so a change that adds a crossing or much work has to raise it, in sight.
//! What each crossing costs in Envoy is in docs/performance.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;

use host_tests::emulator::{VmConfig, World};
use host_tests::paths;
use serde_json::Value;

/// Every (listener name → (wasm file stem, plugin configuration)) in a bench fragment.
fn wasm_listeners(yaml_text: &str) -> BTreeMap<String, (String, String)> {
    // Placeholders are not YAML: any scalar stands in for them.
    let mut text = String::new();
    let mut rest = yaml_text;
    while let Some(i) = rest.find("{{") {
        text.push_str(&rest[..i]);
        let end = rest[i..].find("}}").map(|e| i + e + 2).unwrap();
        text.push_str(if rest[..i].ends_with('"') || rest[..i].ends_with('/') {
            "X"
        } else {
            "0"
        });
        rest = &rest[end..];
    }
    text.push_str(rest);
    let listeners: Vec<serde_yaml_ng::Value> = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = BTreeMap::new();
    for l in listeners {
        let l: Value = serde_json::to_value(l).unwrap();
        let name = l["name"].as_str().unwrap().to_string();
        let filters = &l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
        for f in filters.as_array().unwrap() {
            if f["name"] != "envoy.filters.http.wasm" {
                continue;
            }
            let cfg = &f["typed_config"]["config"];
            let file = cfg["vm_config"]["code"]["local"]["filename"]
                .as_str()
                .unwrap();
            let stem = file
                .rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".wasm")
                .to_string();
            let value = cfg["configuration"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            out.insert(name.clone(), (stem, value));
        }
    }
    out
}

#[test]
fn bench_cases_stay_within_their_hostcall_budget() {
    let dir = paths::config_dir().join("bench");
    let mut report = String::new();
    let mut over = Vec::new();
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    for json in names {
        let cases: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
        let listeners = wasm_listeners(&fs::read_to_string(json.with_extension("yaml")).unwrap());
        // The fragment's own clusters exist for the module's callouts.
        let clusters: Vec<String> = fs::read_to_string(json.with_extension("clusters.yaml"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- name:"))
            .map(|n| n.trim().to_string())
            .collect();
        for case in cases["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let listener = case["listener"].as_str().unwrap();
            let Some((stem, config)) = listeners.get(listener) else {
                panic!("{name}: listener {listener} has no wasm filter");
            };
            let world = World::new();
            let mut vm_config = VmConfig::new(config.as_bytes());
            for cluster in &clusters {
                vm_config = vm_config.cluster(cluster);
            }
            let mut vm = world.load(&paths::wasm(stem), vm_config).unwrap();
            assert!(vm.configured(), "{name}: {}", vm.log_text());
            let path = case["path"].as_str().unwrap_or("/bench").to_string();
            let mut headers: Vec<(String, String)> = vec![
                (":method".into(), "GET".into()),
                (":path".into(), path),
                (":authority".into(), "127.0.0.1:10000".into()),
                (":scheme".into(), "http".into()),
                ("user-agent".into(), "wrk".into()),
            ];
            if let Some(h) = case["headers"].as_object() {
                for (k, v) in h {
                    headers.push((k.clone(), v.as_str().unwrap().to_string()));
                }
            }
            let cycle: Vec<String> = match &case["cycle"] {
                Value::Object(c) => {
                    let prefix = c["prefix"].as_str().unwrap_or_default();
                    let values: Vec<String> = match c.get("values_file") {
                        Some(f) => {
                            fs::read_to_string(paths::config_dir().join(f.as_str().unwrap()))
                                .unwrap()
                                .lines()
                                .take(8)
                                .map(|l| format!("{prefix}{l}"))
                                .collect()
                        }
                        None => (0..8).map(|n| format!("{prefix}{n}")).collect(),
                    };
                    let h = c["header"].as_str().unwrap().to_string();
                    values.into_iter().map(|v| format!("{h}\n{v}")).collect()
                }
                _ => vec![],
            };
            let mut counts = BTreeMap::new();
            let mut fuel = 0;
            let mut entries: Vec<String> = Vec::new();
            for i in 0..4 {
                let mut hs = headers.clone();
                if let Some(c) = cycle.get(i) {
                    let (h, v) = c.split_once('\n').unwrap();
                    hs.push((h.to_string(), v.to_string()));
                }
                let refs: Vec<(&str, &str)> =
                    hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                vm.reset_hostcalls();
                let calls_before = vm.calls().len();
                let s = vm.new_stream();
                vm.set_property(s, &["source", "address"], b"127.0.0.1:40000".to_vec());
                vm.request_headers(s, &refs, true).unwrap();
                // A filter that calls a gRPC service (ext_authz, rate limit) gets
                // the empty message: OK for both, as their bench servers answer.
                for call in vm.pending_grpc_calls() {
                    vm.respond_grpc_call(call.token, &[]).unwrap();
                }
                assert!(vm.local_reply(s).is_none(), "{name}: answered locally");
                vm.response_headers(s, &[(":status", "200"), ("content-length", "2")], false)
                    .unwrap();
                vm.finish(s).unwrap();
                counts = vm.hostcalls().clone();
                fuel = vm.fuel_used();
                entries = vm.calls()[calls_before..]
                    .iter()
                    .map(|c| c.name.trim_start_matches("proxy_on_").to_string())
                    .collect();
            }
            // Crossings: the host calls and Envoy's entries into the VM.
            let total: u64 = counts.values().sum::<u64>() + entries.len() as u64;
            let budget = case["hostcall_budget"].as_u64();
            let fuel_budget = case["wasm_operator_budget"].as_u64();
            report.push_str(&format!(
                "{name}: {total} crossings per request (budget {budget:?}), {fuel} wasm operators; VM entries {entries:?}, host calls {counts:?}\n"
            ));
            if budget.is_some_and(|b| total > b) {
                over.push(format!("{name}: {total} crossings > {budget:?}"));
            }
            // The crossings module prices one crossing by making it `repeat`
            // times: its budget is exactly what it claims to make.
            if cases.get("per_crossing").is_some() && budget != Some(total) {
                over.push(format!("{name}: {total} crossings, not exactly {budget:?}"));
            }
            if fuel_budget.is_some_and(|b| fuel > b) {
                over.push(format!("{name}: {fuel} wasm operators > {fuel_budget:?}"));
            }
            assert!(
                budget.is_some() && fuel_budget.is_some(),
                "{name}: set hostcall_budget and wasm_operator_budget in its bench JSON"
            );
        }
    }
    eprintln!("{report}");
    assert!(over.is_empty(), "over budget: {over:?}\n{report}");
}
