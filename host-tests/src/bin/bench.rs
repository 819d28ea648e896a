//! `make bench`: the added cost of each filter, side by side in one Envoy.
//!
//! One Envoy (`--concurrency 1`) with listeners side by side: `none` (no filter,
//! the baseline), `noop` (a wasm filter that does nothing: the floor), and each
//! filter's listeners. Load comes from `wrk` (a second process) on loopback, every
//! case for a few seconds, in several rounds whose order rotates, so slow drift of
//! this shared machine hits every listener alike. The measure is Envoy's own CPU
//! time per request (all its threads, from `/proc/<pid>/task/*/schedstat`, over the
//! requests wrk completed), so wrk and the upstream competing for the 2 cores do not
//! count. Per case the median over rounds is taken; the added µs per request is
//! that minus the `none` baseline. Ratios are computed within one run only. The
//! table goes to stdout and, as this run's section (date, commit, Envoy version,
//! cores), to BENCHMARKS.md; other runs' sections stay.
//!
//! `--callgrind` runs Envoy under valgrind's callgrind instead and reports
//! thousands of instructions per request (same columns): deterministic where CPU
//! time on a shared machine is not. Slow, so use it with `--filters` and
//! `--rounds 1`. Only a few wasm VMs fit valgrind's address space (each reserves
//! guard regions on every thread; listeners with the same `vm_id` and code share
//! one); a VM that fails to start stops the run. Dumps are kept in
//! `target/callgrind/<listener>.0.out`.
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
//!   each prefixed with `prefix`). `hostcall_budget` (crossings between Envoy and
//!   the VM per request) and `wasm_operator_budget` are checked by the emulator
//!   test `hostcall_budget.rs`, not used here. A fragment with
//!   `"per_crossing": {"floor": "<case>", "repeat": N}` (crossings.json) shares
//!   the plain request's baseline rows and adds a table pricing one crossing per
//!   case: (row − floor row) / N.
//!
//! Options: `--seconds N` per case and round (default 3), `--rounds N` (default 5),
//! `--connections N` (default 16: enough to keep Envoy's one worker busy),
//! `--only <substring>` (cases whose name contains it), `--filters a,b` (only these
//! fragments), `--callgrind`, `--out <file>` (default BENCHMARKS.md; with
//! `--callgrind`, no file unless `--out` comes after it; `-` for none),
//! `--perf <dir>` (record round 1 of each row with `perf record` into
//! `<dir>/<listener>.data`; `perf report -i <file> --sort dso` splits Envoy's C++
//! from the JIT'd wasm; Envoy's binary is stripped, so no C++ names).

// A developer tool: failing loudly with the reason is the right answer here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use host_tests::envoy::Envoy;
use host_tests::grpc_authz::{self, GrpcAuthz};
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
    /// Crossings (host calls + VM entries) per request allowed, and wasm
    /// operators per request allowed: checked by the emulator test
    /// `hostcall_budget.rs` only.
    #[serde(default)]
    #[allow(dead_code)]
    hostcall_budget: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    wasm_operator_budget: Option<u64>,
}

fn default_path() -> String {
    "/bench".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fragment {
    cases: Vec<CaseSpec>,
    /// A fragment whose cases each make one kind of crossing `repeat` times
    /// (`crossings.json`): they share the plain request's baseline rows, and
    /// a second table prices one crossing as (case − `floor` case) / `repeat`.
    #[serde(default)]
    per_crossing: Option<PerCrossing>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PerCrossing {
    /// The case that makes no crossing of its own.
    floor: String,
    repeat: u32,
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
    /// Rows of `no filter` and `no-op wasm` sent this row's request: a case's
    /// request (a 700-byte token, extra headers) costs Envoy's codec more than the
    /// plain one, and that is no filter's doing.
    base: (usize, usize),
}

struct Opts {
    seconds: u32,
    rounds: u32,
    connections: u32,
    only: Option<String>,
    out: String,
    /// Record round 1 of every row with `perf record` into this directory.
    perf: Option<String>,
    /// Only these fragments (`envoy-configs/bench/<name>.json`); all when empty.
    filters: Vec<String>,
    /// Run Envoy under callgrind and count instructions per request instead.
    callgrind: bool,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        seconds: 3,
        rounds: 5,
        connections: 16,
        only: None,
        perf: None,
        filters: Vec::new(),
        callgrind: false,
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
            "--perf" => o.perf = Some(val),
            "--filters" => o.filters = val.split(',').map(str::to_string).collect(),
            "--callgrind" => {
                o.callgrind = true;
                // A one-off callgrind run only prints its table; `--out`
                // after this flag (as `make bench-callgrind` passes) writes it.
                o.out = "-".into();
                i += 1;
                continue;
            }
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

/// CPU time Envoy's threads have used so far, in ns (`/proc/<pid>/task/*/schedstat`).
fn envoy_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One wrk run: Envoy's CPU µs per request (the measure), requests per second, and
/// the non-2xx count.
fn run_wrk(pid: u32, port: u16, script: &Path, o: &Opts) -> (f64, f64, u64, u64) {
    let cpu_before = envoy_cpu_ns(pid);
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
    let cpu = envoy_cpu_ns(pid).saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let cpu_us = if requests > 0 {
        cpu as f64 / 1e3 / requests as f64
    } else {
        0.0
    };
    (cpu_us, rps, non2xx, requests)
}

fn callgrind_control(pid: u32, arg: &str) {
    let ok = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "callgrind_control {arg} {pid} failed");
}

/// One wrk run with Envoy's instructions counted: thousands of instructions per
/// request (in the µs column's place), requests per second, non-2xx.
fn callgrind_run(
    pid: u32,
    port: u16,
    script: &Path,
    o: &Opts,
    dir: &Path,
    listener: &str,
) -> (f64, f64, u64) {
    let dumps = |d: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains("cg.out"))
            .collect();
        v.sort();
        v
    };
    callgrind_control(pid, "--zero");
    let before = dumps(dir);
    // wrk counts completed requests; the few in flight at its end are the noise.
    let (_, rps, bad, requests) = run_wrk(pid, port, script, o);
    let requests = requests.max(1) as f64;
    callgrind_control(pid, "--dump");
    let new: Vec<_> = dumps(dir)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let ir: u64 = new
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum();
    // Kept for `callgrind_annotate` (JIT'd wasm shows as addresses in `???`).
    let keep = paths::repo_root().join("target").join("callgrind");
    let _ = fs::create_dir_all(&keep);
    for (n, p) in new.iter().enumerate() {
        let _ = fs::rename(p, keep.join(format!("{listener}.{n}.out")));
    }
    (ir as f64 / requests / 1e3, rps, bad)
}

/// One crossing's price per kind: (row − the floor row) / repeat; and a VM
/// entry's: the SDK's no-op enters the VM 7 times for the bench GET (context
/// create, request headers, response headers, response body, log, done,
/// delete), the pruned floor 3 times (context create, request headers, delete).
fn crossing_table(group: &str, pc: &PerCrossing, rows: &[Row], us: &[f64], unit: &str) -> String {
    let Some(floor) = rows
        .iter()
        .position(|r| r.group == group && r.label == pc.floor)
    else {
        return String::new();
    };
    let repeat = f64::from(pc.repeat.max(1));
    let mut t = format!(
        "\n| {group}: one crossing | {unit} |\n|---|---:|\n| VM entry: (no-op wasm − `{}`) / 4 | {:.2} |\n",
        pc.floor,
        (us[1] - us[floor]) / 4.0
    );
    for (i, r) in rows.iter().enumerate() {
        if r.group == group && i != floor {
            t.push_str(&format!(
                "| {} | {:.2} |\n",
                r.label,
                (us[i] - us[floor]) / repeat
            ));
        }
    }
    t
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// The file's first lines, above every run's section.
const PREAMBLE: &str = "# Benchmarks\n\nWritten by `make bench` and `make bench-callgrind` \
(host-tests/src/bin/bench.rs); a run replaces its own section. *added* = row − `no filter` sent \
the same request; ratios are within one run. How to read them: [docs/performance.md](docs/performance.md).\n";

/// One run's part of BENCHMARKS.md: what was measured, when, where, and the table.
struct Section {
    heading: String,
    method: String,
}

impl Section {
    fn render(&self, table: &str) -> String {
        format!(
            "## {}\n\n- Date: {}\n- Commit: {}\n- Envoy: {}\n- Machine: {} cores\n- Method: {}\n\n{}",
            self.heading,
            utc_date(),
            git_commit(),
            envoy_version(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            self.method,
            table.trim_end()
        )
    }
}

/// The bench fragments this run measured, in order: names its section.
fn group_names(rows: &[Row]) -> String {
    let mut groups: Vec<&str> = Vec::new();
    for r in rows {
        if r.group != "baseline" && !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    if groups.is_empty() {
        "baseline".to_string()
    } else {
        groups.join(", ")
    }
}

/// `old` with the section under `## heading` replaced by `section` (appended when
/// absent), under the fixed preamble. Other runs' sections are kept as they are.
fn merge_section(old: &str, heading: &str, section: &str) -> String {
    let mut sections: Vec<String> = Vec::new();
    for line in old.lines() {
        if line.starts_with("## ") {
            sections.push(String::new());
        }
        if let Some(cur) = sections.last_mut() {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    let title = format!("## {heading}");
    let mut replaced = false;
    for cur in sections.iter_mut() {
        if cur.lines().next() == Some(title.as_str()) {
            *cur = section.to_string();
            replaced = true;
        }
    }
    if !replaced {
        sections.push(section.to_string());
    }
    let mut doc = PREAMBLE.to_string();
    for cur in &sections {
        doc.push('\n');
        doc.push_str(cur.trim_end());
        doc.push('\n');
    }
    doc
}

/// Today in UTC, `YYYY-MM-DD`.
fn utc_date() -> String {
    civil_date(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// The UTC date of a Unix time (civil-from-days, proleptic Gregorian): no date
/// crate for one line of the report.
fn civil_date(secs: u64) -> String {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The commit measured: `git rev-parse --short HEAD`, marked when the tree differs.
fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(paths::repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_string();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{head} (with uncommitted changes)"),
        _ => head,
    }
}

/// Envoy's version string without the binary's path (`envoy --version` starts with it).
fn envoy_version() -> String {
    let out = Command::new(paths::envoy_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match out.split_once("version:") {
        Some((_, v)) => v.trim().to_string(),
        None => "unknown".to_string(),
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
        hostcall_budget: None,
        wasm_operator_budget: None,
    };
    let mut rows = vec![
        Row {
            label: "no filter".into(),
            group: "baseline".into(),
            listener: "none".into(),
            spec: base("no filter", "none"),
            twin_label: None,
            base: (0, 1),
        },
        Row {
            label: "no-op wasm".into(),
            group: "baseline".into(),
            listener: "noop".into(),
            spec: base("no-op wasm", "noop"),
            twin_label: None,
            base: (0, 1),
        },
    ];
    let mut names: Vec<_> = fs::read_dir(&bench_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    let mut per_crossing: Vec<(String, PerCrossing)> = Vec::new();
    for path in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let group = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !o.filters.is_empty() && !o.filters.contains(&group) {
            continue;
        }
        let frag: Fragment = serde_json::from_str(&fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (l, c) = Envoy::bench_fragment_yaml(&group);
        listeners.push_str(&l);
        listeners.push('\n');
        if !c.is_empty() {
            clusters.push_str(&c);
            clusters.push('\n');
        }
        if let Some(pc) = &frag.per_crossing {
            per_crossing.push((group.clone(), pc.clone()));
        }
        for c in frag.cases {
            if o.only
                .as_ref()
                .is_some_and(|f| !c.name.contains(f.as_str()))
            {
                continue;
            }
            let twin_label = c.twin.as_ref().map(|_| format!("{} (native twin)", c.name));
            let b = if frag.per_crossing.is_some() {
                // The plain request: the baseline rows are the shared ones.
                (0, 1)
            } else {
                // This case's request through no filter and through the no-op.
                let b = (rows.len(), rows.len() + 1);
                for (what, listener) in [("no filter", "none"), ("no-op wasm", "noop")] {
                    rows.push(Row {
                        label: format!("{what}, {} request", c.name),
                        group: group.clone(),
                        listener: listener.to_string(),
                        spec: CaseSpec {
                            listener: listener.to_string(),
                            ..c.clone()
                        },
                        twin_label: None,
                        base: b,
                    });
                }
                b
            };
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
                    base: b,
                });
            }
            rows.push(Row {
                label: c.name.clone(),
                group: group.clone(),
                listener: c.listener.clone(),
                spec: c,
                twin_label,
                base: b,
            });
        }
    }

    // A minimal answer: the upstream's own cost is the same for every row.
    let upstream = Upstream::start("bench", |_| {
        Reply::new(200).header("x-upstream", "bench").body("ok")
    });
    // The ext_authz server of the CUSTOM rows: allows every check, at once.
    let grpc_authz = GrpcAuthz::start(|_| grpc_authz::ok(Default::default()));
    // The rate limit service of the global rate limit rows: OK at once.
    let rls_port = start_ok_rls();
    let dir = std::env::temp_dir().join(format!("meshwasm-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let mut builder = Envoy::from_file("bench.yaml")
        .var("FILTER_LISTENERS", &listeners)
        .var("FILTER_CLUSTERS", &clusters)
        .upstream("UPSTREAM_PORT", &upstream)
        .var("GRPC_AUTHZ_PORT", &grpc_authz.port().to_string())
        .var("RLS_PORT", &rls_port.to_string())
        .concurrency(1)
        .log_level("warning");
    if o.callgrind {
        // Uninstrumented until a row is measured: starting Envoy (V8 compiling every
        // module) under full instrumentation would take many minutes.
        builder = builder
            .wrapper(&[
                "valgrind".to_string(),
                "--tool=callgrind".to_string(),
                "--instr-atstart=no".to_string(),
                "--smc-check=all-non-file".to_string(),
                format!("--callgrind-out-file={}/cg.out", dir.display()),
                format!("--log-file={}/valgrind.log", dir.display()),
            ])
            .ready_timeout(std::time::Duration::from_secs(1200));
    }
    let envoy = builder.start();
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
    if o.callgrind {
        // Instrumented from here on (the warm-up included), so every row runs on
        // code valgrind has already translated.
        callgrind_control(envoy.pid(), "--instr=on");
    }
    // Warm-up: every listener once, briefly (VM start, connection pools).
    let warm = Opts {
        seconds: 1,
        rounds: 1,
        connections: o.connections,
        only: None,
        out: String::new(),
        perf: None,
        filters: Vec::new(),
        callgrind: false,
    };
    for (r, s) in rows.iter().zip(&scripts) {
        run_wrk(envoy.pid(), envoy.port(&r.listener), s, &warm);
    }
    // A worker that could not instantiate a module (under valgrind: its address
    // space, when too many VMs run at once) answers without the filter, which
    // would read as a cheap filter. Refuse to measure that.
    let log = envoy.log();
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("Failed to create new Wasm instance"))
    {
        // Exit rather than panic: the tools profile aborts on panic, which
        // would leave Envoy running.
        drop(envoy);
        eprintln!(
            "bench: Envoy could not start every wasm VM ({line}); measure fewer filters \
             at once (`--filters`: only a few VMs fit valgrind)"
        );
        std::process::exit(1);
    }
    // What the per-request measure counts.
    let unit = if o.callgrind { "k instructions" } else { "µs" };
    let mut per_req: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut non2xx = vec![0u64; rows.len()];
    for round in 0..o.rounds as usize {
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            let perf = o.perf.as_ref().filter(|_| round == 0).map(|d| {
                fs::create_dir_all(d).unwrap();
                Command::new("perf")
                    .args(["record", "-q", "-F", "2999", "-p"])
                    .arg(envoy.pid().to_string())
                    .arg("-o")
                    .arg(Path::new(d).join(format!("{}.data", rows[i].listener)))
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run perf ({e})"))
            });
            let (cpu_us, rps, bad) = if o.callgrind {
                callgrind_run(
                    envoy.pid(),
                    envoy.port(&rows[i].listener),
                    &scripts[i],
                    &o,
                    &dir,
                    &rows[i].listener,
                )
            } else {
                let (cpu, rps, bad, _) =
                    run_wrk(envoy.pid(), envoy.port(&rows[i].listener), &scripts[i], &o);
                (cpu, rps, bad)
            };
            if let Some(mut p) = perf {
                // SIGINT makes perf write its file and exit.
                let _ = Command::new("kill")
                    .args(["-INT", &p.id().to_string()])
                    .status();
                let _ = p.wait();
            }
            if cpu_us > 0.0 {
                per_req[i].push(cpu_us);
            }
            non2xx[i] += bad;
            eprintln!(
                "  round {} {:<40} {:>9.0} req/s {:>7.1} {unit}/req",
                round + 1,
                rows[i].label,
                rps,
                cpu_us,
            );
        }
    }
    let us: Vec<f64> = per_req.iter_mut().map(|v| median(v)).collect();
    let added = |i: usize| us[i] - us[rows[i].base.0];
    let noop_added = |i: usize| us[rows[i].base.1] - us[rows[i].base.0];
    let index: BTreeMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.label.as_str(), i))
        .collect();

    let mut table = String::new();
    table.push_str(&format!("| group | listener | {unit}/request | added {unit} | × no-op wasm's added | × native twin's added | non-2xx |\n"));
    table.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for (i, r) in rows.iter().enumerate() {
        let vs_noop = if i != rows[i].base.0 && noop_added(i) > 0.0 {
            format!("{:.2}", added(i) / noop_added(i))
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
    for (group, pc) in &per_crossing {
        table.push_str(&crossing_table(group, pc, &rows, &us, unit));
    }
    println!("{table}");
    if o.out != "-" {
        let section = if o.callgrind {
            Section {
                heading: format!("Instructions per request: {}", group_names(&rows)),
                method: format!(
                    "one Envoy (`--concurrency 1`) under valgrind's callgrind, listeners side by \
                     side, load from `wrk -t1 -c{}`, {} round(s) × {} s per row; thousands of \
                     instructions Envoy executes per request",
                    o.connections, o.rounds, o.seconds
                ),
            }
        } else {
            Section {
                heading: format!("Envoy CPU time per request: {}", group_names(&rows)),
                method: format!(
                    "one Envoy (`--concurrency 1`), listeners side by side, load from `wrk -t1 \
                     -c{}` on loopback, {} rounds × {} s per row in rotating order; per row the \
                     median of Envoy's CPU time per request (its threads' /proc schedstat)",
                    o.connections, o.rounds, o.seconds
                ),
            }
        };
        let old = fs::read_to_string(&o.out).unwrap_or_default();
        let doc = merge_section(&old, &section.heading, &section.render(&table));
        fs::write(&o.out, doc).unwrap_or_else(|e| panic!("{}: {e}", o.out));
        eprintln!("bench: wrote {}", o.out);
    }
    drop(envoy);
    let _ = fs::remove_dir_all(&dir);
}

/// An RLS v3 server answering every `ShouldRateLimit` with OK, on a free
/// loopback port, for the life of the bench.
fn start_ok_rls() -> u16 {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
        RateLimitService, RateLimitServiceServer,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::{
        rate_limit_response::Code, RateLimitRequest, RateLimitResponse,
    };
    struct AllowAll;
    #[tonic::async_trait]
    impl RateLimitService for AllowAll {
        async fn should_rate_limit(
            &self,
            _: tonic::Request<RateLimitRequest>,
        ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
            Ok(tonic::Response::new(RateLimitResponse {
                overall_code: Code::Ok as i32,
                ..Default::default()
            }))
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(RateLimitServiceServer::new(AllowAll))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
        assert_eq!(civil_date(1_700_000_000), "2023-11-14");
    }

    #[test]
    fn a_run_replaces_its_own_section_only() {
        let old = "# Benchmarks\n\nold preamble\n\n## A\n\n- Date: 1\n\n| a |\n\n## B\n\n| b |\n";
        let doc = merge_section(old, "A", "## A\n\n- Date: 2\n\n| a2 |");
        assert!(doc.starts_with(PREAMBLE), "{doc}");
        assert!(
            !doc.contains("old preamble") && !doc.contains("| a |"),
            "{doc}"
        );
        assert!(
            doc.contains("## A\n\n- Date: 2\n\n| a2 |\n\n## B\n\n| b |\n"),
            "{doc}"
        );
        let doc = merge_section(&doc, "C", "## C\n\n| c |\n");
        assert!(doc.ends_with("## B\n\n| b |\n\n## C\n\n| c |\n"), "{doc}");
        assert_eq!(
            merge_section("", "A", "## A\n"),
            format!("{PREAMBLE}\n## A\n")
        );
    }

    /// The committed file is what the writer produces: its preamble, and sections
    /// that each say when, at which commit, on which Envoy and machine they ran.
    #[test]
    fn benchmarks_md_is_in_the_writers_format() {
        let doc = fs::read_to_string(paths::repo_root().join("BENCHMARKS.md")).unwrap();
        assert!(
            doc.starts_with(PREAMBLE),
            "BENCHMARKS.md does not start with the preamble"
        );
        let sections: Vec<&str> = doc.split("\n## ").skip(1).collect();
        assert!(!sections.is_empty());
        for body in sections {
            let heading = body.lines().next().unwrap_or_default();
            let section = format!("## {}", body.trim_end());
            assert_eq!(merge_section(&doc, heading, &section), doc, "{heading}");
            for field in [
                "- Date: ",
                "- Commit: ",
                "- Envoy: ",
                "- Machine: ",
                "- Method: ",
            ] {
                assert!(section.contains(field), "{heading}: no {field:?}");
            }
            assert!(
                section.contains("\n| group | listener |"),
                "{heading}: no table"
            );
        }
        let root = paths::repo_root().display().to_string();
        for line in doc.lines() {
            assert!(
                !line.contains(&root) && !line.contains("envoy-bin"),
                "a machine path: {line}"
            );
        }
    }
}
