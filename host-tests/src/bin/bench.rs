//! `make bench`: the added cost of each filter, side by side in one Envoy.
//!
//! One Envoy (`--concurrency 1`) with listeners side by side: `none` (no filter,
//! the baseline), `noop` (a wasm filter that does nothing: the floor), and each
//! filter's listeners. Load comes from `wrk` (a second process) on loopback, every
//! case for a few seconds, in several rounds whose order rotates, so slow drift of
//! this shared machine hits every listener alike. Per case the median over rounds
//! of the per-request time (1 / requests per second) is taken; the added µs per
//! request is that minus the `none` baseline. Ratios are computed within one run
//! only. The table goes to stdout and to BENCHMARKS.md.
//!
//! Filter fragments, in `envoy-configs/bench/`:
//! - `<filter>.yaml`: listener entries (YAML list items indented by two spaces, as
//!   under `static_resources.listeners`), each on `{{PORT:<listener name>}}`,
//!   routing to cluster `upstream` (the echo server). Any placeholders of the
//!   harness work (`{{DIST}}`, `{{PORT:x}}`, ...).
//! - `<filter>.clusters.yaml` (optional): extra cluster entries.
//! - `<filter>.json`: the cases:
//!   `{"cases": [{"name": "authz 1 policy", "listener": "authz_1", "twin": "rbac_1",
//!     "path": "/x", "headers": {"k": "v"},
//!     "cycle": {"header": "x-user", "prefix": "user-", "count": 10000}}]}`
//!   `twin` names the case's native-twin listener (also benchmarked, same requests).
//!   `cycle` varies one header per request: `count` generated values
//!   `<prefix><n>`, or `values_file` (relative to envoy-configs/, one value a line,
//!   each prefixed with `prefix`).
//!
//! Options: `--seconds N` per case and round (default 3), `--rounds N` (default 5),
//! `--connections N` (default 16: enough to keep Envoy's one worker busy,
//! so 1 / throughput is the worker's time per request; one connection measures
//! latency instead, which on these VMs is dominated by thread wake-ups, ~550 µs), `--only <substring>` (cases whose name contains it),
//! `--out <file>` (default BENCHMARKS.md; `-` for none).

// A developer tool: failing loudly with the reason is the right answer here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use host_tests::envoy::Envoy;
use host_tests::paths;
use host_tests::upstream::{Reply, Upstream};
use serde::Deserialize;

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct Cycle {
    header: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    values_file: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    listener: String,
    #[serde(default)]
    twin: Option<String>,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    cycle: Option<Cycle>,
}

fn default_path() -> String {
    "/bench".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fragment {
    cases: Vec<CaseSpec>,
}

/// One measured row: a listener driven with one request shape.
#[derive(Clone)]
struct Row {
    label: String,
    group: String,
    listener: String,
    spec: CaseSpec,
    /// Native twin row label, for meshwasm rows.
    twin_label: Option<String>,
}

struct Opts {
    seconds: u32,
    rounds: u32,
    connections: u32,
    only: Option<String>,
    out: String,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        seconds: 3,
        rounds: 5,
        connections: 16,
        only: None,
        out: paths::repo_root()
            .join("BENCHMARKS.md")
            .display()
            .to_string(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => o.seconds = val.parse().unwrap_or(3),
            "--rounds" => o.rounds = val.parse().unwrap_or(5),
            "--connections" => o.connections = val.parse().unwrap_or(16),
            "--only" => o.only = Some(val),
            "--out" => o.out = val,
            other => {
                eprintln!("bench: unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

fn lua_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A wrk script sending `spec`'s request shape.
fn wrk_script(spec: &CaseSpec, dir: &Path) -> String {
    let mut s = String::new();
    s.push_str(&format!("wrk.path = \"{}\"\n", lua_escape(&spec.path)));
    for (k, v) in &spec.headers {
        s.push_str(&format!(
            "wrk.headers[\"{}\"] = \"{}\"\n",
            lua_escape(k),
            lua_escape(v)
        ));
    }
    if let Some(c) = &spec.cycle {
        let h = lua_escape(&c.header);
        let p = lua_escape(&c.prefix);
        if let Some(file) = &c.values_file {
            let src = paths::config_dir().join(file);
            let values =
                fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            let list = dir.join(format!("{}.values", spec.listener));
            fs::write(&list, values).unwrap();
            s.push_str(&format!(
                "local vals = {{}}\nfor line in io.lines(\"{}\") do if #line > 0 then vals[#vals+1] = line end end\n",
                lua_escape(&list.display().to_string())
            ));
            s.push_str(&format!(
                "local i = 0\nrequest = function()\n  i = i % #vals + 1\n  wrk.headers[\"{h}\"] = \"{p}\" .. vals[i]\n  return wrk.format(nil, wrk.path)\nend\n"
            ));
        } else {
            let n = c.count.unwrap_or(1000).max(1);
            s.push_str(&format!(
                "local i = 0\nrequest = function()\n  i = i % {n} + 1\n  wrk.headers[\"{h}\"] = \"{p}\" .. i\n  return wrk.format(nil, wrk.path)\nend\n"
            ));
        }
    }
    s
}

/// Requests per second for one wrk run (and non-2xx count).
fn run_wrk(port: u16, script: &Path, o: &Opts) -> (f64, u64) {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", o.connections),
            &format!("-d{}s", o.seconds),
        ])
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk ({e}); `make setup` installs it"));
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    (rps, non2xx)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let o = parse_opts();
    let bench_dir = paths::config_dir().join("bench");
    let mut listeners = String::new();
    let mut clusters = String::new();
    let base = |name: &str, listener: &str| CaseSpec {
        name: name.to_string(),
        listener: listener.to_string(),
        twin: None,
        path: default_path(),
        headers: BTreeMap::new(),
        cycle: None,
    };
    let mut rows = vec![
        Row {
            label: "no filter".into(),
            group: "baseline".into(),
            listener: "none".into(),
            spec: base("no filter", "none"),
            twin_label: None,
        },
        Row {
            label: "no-op wasm".into(),
            group: "baseline".into(),
            listener: "noop".into(),
            spec: base("no-op wasm", "noop"),
            twin_label: None,
        },
    ];
    let mut names: Vec<_> = fs::read_dir(&bench_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for path in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let group = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let yaml = bench_dir.join(format!("{group}.yaml"));
        let frag: Fragment = serde_json::from_str(&fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        listeners.push_str(
            &fs::read_to_string(&yaml).unwrap_or_else(|e| panic!("{}: {e}", yaml.display())),
        );
        listeners.push('\n');
        if let Ok(c) = fs::read_to_string(bench_dir.join(format!("{group}.clusters.yaml"))) {
            clusters.push_str(&c);
            clusters.push('\n');
        }
        for c in frag.cases {
            if o.only
                .as_ref()
                .is_some_and(|f| !c.name.contains(f.as_str()))
            {
                continue;
            }
            let twin_label = c.twin.as_ref().map(|_| format!("{} (native twin)", c.name));
            if let Some(t) = &c.twin {
                rows.push(Row {
                    label: format!("{} (native twin)", c.name),
                    group: group.clone(),
                    listener: t.clone(),
                    spec: CaseSpec {
                        listener: t.clone(),
                        ..c.clone()
                    },
                    twin_label: None,
                });
            }
            rows.push(Row {
                label: c.name.clone(),
                group: group.clone(),
                listener: c.listener.clone(),
                spec: c,
                twin_label,
            });
        }
    }

    // A minimal answer: the upstream's own cost is the same for every row.
    let upstream = Upstream::start("bench", |_| {
        Reply::new(200).header("x-upstream", "bench").body("ok")
    });
    let envoy = Envoy::from_file("bench.yaml")
        .var("FILTER_LISTENERS", &listeners)
        .var("FILTER_CLUSTERS", &clusters)
        .upstream("UPSTREAM_PORT", &upstream)
        .concurrency(1)
        .log_level("warning")
        .start();
    let dir = std::env::temp_dir().join(format!("meshwasm-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let scripts: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = dir.join(format!("case{i}.lua"));
            fs::write(&p, wrk_script(&r.spec, &dir)).unwrap();
            p
        })
        .collect();

    eprintln!(
        "bench: {} rows × {} rounds × {} s, wrk -t1 -c{}, Envoy --concurrency 1",
        rows.len(),
        o.rounds,
        o.seconds,
        o.connections
    );
    // Warm-up: every listener once, briefly (VM start, connection pools).
    let warm = Opts {
        seconds: 1,
        rounds: 1,
        connections: o.connections,
        only: None,
        out: String::new(),
    };
    for (r, s) in rows.iter().zip(&scripts) {
        run_wrk(envoy.port(&r.listener), s, &warm);
    }
    let mut per_req: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut non2xx = vec![0u64; rows.len()];
    for round in 0..o.rounds as usize {
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            let (rps, bad) = run_wrk(envoy.port(&rows[i].listener), &scripts[i], &o);
            if rps > 0.0 {
                per_req[i].push(1e6 / rps);
            }
            non2xx[i] += bad;
            eprintln!(
                "  round {} {:<40} {:>9.0} req/s",
                round + 1,
                rows[i].label,
                rps
            );
        }
    }
    let us: Vec<f64> = per_req.iter_mut().map(|v| median(v)).collect();
    let base_us = us[0];
    let added = |i: usize| us[i] - base_us;
    let noop_added = added(1);
    let index: BTreeMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.label.as_str(), i))
        .collect();

    let mut table = String::new();
    table.push_str("| group | listener | µs/request | added µs | × no-op wasm's added | × native twin's added | non-2xx |\n");
    table.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for (i, r) in rows.iter().enumerate() {
        let vs_noop = if i >= 1 && noop_added > 0.0 {
            format!("{:.2}", added(i) / noop_added)
        } else {
            "".into()
        };
        let vs_twin = r
            .twin_label
            .as_ref()
            .and_then(|t| index.get(t.as_str()))
            .map(|&t| {
                if added(t) > 0.0 {
                    format!("{:.2}", added(i) / added(t))
                } else {
                    "n/a".into()
                }
            })
            .unwrap_or_default();
        table.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} |\n",
            r.group,
            r.label,
            us[i],
            added(i),
            vs_noop,
            vs_twin,
            non2xx[i]
        ));
    }
    println!("{table}");
    if o.out != "-" {
        let envoy_version = Command::new(paths::envoy_bin())
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let doc = format!(
            "# Benchmarks\n\nWritten by `make bench` (host-tests/src/bin/bench.rs). One Envoy \
             (`--concurrency 1`), listeners side by side, load from `wrk -t1 -c{}` on loopback, \
             {} rounds × {} s per row with rotating order; per row the median time per request \
             (1 / throughput, with the single worker kept busy). *Added µs* = row − `no filter`. Ratios are within this one run: absolute \
             numbers move with the (shared, noisy) machine, ratios much less.\n\n\
             - Envoy: `{}`\n- Machine: {} cores\n\n{}",
            o.connections,
            o.rounds,
            o.seconds,
            envoy_version,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            table
        );
        fs::write(&o.out, doc).unwrap_or_else(|e| panic!("{}: {e}", o.out));
        eprintln!("bench: wrote {}", o.out);
    }
    drop(envoy);
    let _ = fs::remove_dir_all(&dir);
}
