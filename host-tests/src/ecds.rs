//! Filter configurations delivered as Istio delivers a WasmPlugin change: through
//! ECDS (`extension_config_discovery`), here from a file Envoy watches, rewritten
//! atomically (a temporary file in the watched directory renamed over it), while
//! [`Load`] keeps requests flowing and records what each one got.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::envoy::Envoy;
use crate::http::{self, Request, Response};

pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

static DIRS: AtomicU32 = AtomicU32::new(0);

/// One ECDS resource: the HTTP filter named `name`, read from `<dir>/<name>.json`.
/// Each resource has a directory of its own, since Envoy rereads a subscription's
/// file on any rename into its watched directory.
pub struct Ecds {
    name: String,
    dir: PathBuf,
    writes: AtomicU32,
}

impl Ecds {
    /// A resource whose first configuration is `typed_config` (written now, so
    /// Envoy starts with it).
    pub fn new(name: &str, typed_config: &Value) -> Ecds {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("meshwasm-ecds-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let ecds = Ecds {
            name: name.to_string(),
            dir,
            writes: AtomicU32::new(0),
        };
        ecds.write(typed_config);
        ecds
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }

    /// The `http_filters` entry that takes this resource over ECDS.
    pub fn http_filter(&self) -> Value {
        json!({"name": self.name, "config_discovery": {
            "config_source": {
                "path_config_source": {
                    "path": self.path().display().to_string(),
                    "watched_directory": {"path": self.dir.display().to_string()}},
                "resource_api_version": "V3"},
            "type_urls": [WASM_TYPE]}})
    }

    /// Replaces the configuration: a whole new file renamed over the old one, so
    /// Envoy never reads half of it.
    pub fn write(&self, typed_config: &Value) {
        let resource = json!({"resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": self.name,
            "typed_config": typed_config}]});
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        let tmp = self.dir.join(format!(".{}.{n}.tmp", self.name));
        fs::write(&tmp, resource.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, self.path())
            .unwrap_or_else(|e| panic!("rename onto {}: {e}", self.path().display()));
    }
}

impl Drop for Ecds {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// An `http_filters` entry served by ECDS that accepts any of `type_urls`
/// (a native filter next to a wasm one, say).
pub fn http_filter_for(ecds: &Ecds, type_urls: &[&str]) -> Value {
    let mut f = ecds.http_filter();
    f["config_discovery"]["type_urls"] = json!(type_urls);
    f
}

/// The wasm filter's typed config as Istio renders a WasmPlugin: `vm_id` unset,
/// the plugin configuration a JSON string. `vm_config` is the same for every
/// configuration of one module, so an update reuses the VM and creates a new root
/// context, which is the path users take.
pub fn wasm_config(plugin_name: &str, root_id: &str, module: &str, plugin: &Value) -> Value {
    json!({"@type": WASM_TYPE, "config": {
        "name": plugin_name,
        "root_id": root_id,
        "vm_config": {"vm_id": "", "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": crate::paths::wasm(module).display().to_string()}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": plugin.to_string()},
        "failure_policy": "FAIL_CLOSED"}})
}

/// A listener on `{{PORT:<name>}}` whose chain is `filters` then the router, with
/// `routes` as its only virtual host's routes.
pub fn listener(name: &str, filters: Vec<Value>, routes: Value) -> Value {
    let mut http_filters = filters;
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    json!({"name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": format!("{{{{PORT:{name}}}}}")}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": http_filters}}]}]})
}

/// A route answered by Envoy itself (no upstream in the way of the load).
pub fn direct(prefix: &str, status: u16, body: &str) -> Value {
    json!({"match": {"prefix": prefix},
           "direct_response": {"status": status, "body": {"inline_string": body}}})
}

/// A bootstrap with `listeners` and `clusters`. ECDS needs a node id and cluster.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> String {
    json!({
        "node": {"id": "meshwasm-test", "cluster": "meshwasm-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": "{{ADMIN_PORT}}"}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
    .to_string()
}

/// A static cluster on 127.0.0.1:`port`.
pub fn cluster(name: &str, port: u16) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
               {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
}

/// Envoy's counters for one ECDS resource
/// (`extension_config_discovery.http_filter.<name>.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EcdsStats {
    /// Every worker runs the new configuration (Envoy 1.40 counts an update its
    /// wasm factory refused here too, so it is read with the others).
    pub config_reload: u64,
    pub config_fail: u64,
    pub update_success: u64,
    pub update_rejected: u64,
}

pub fn ecds_stats(envoy: &Envoy, name: &str) -> EcdsStats {
    let prefix = format!("extension_config_discovery.http_filter.{name}.");
    let text = envoy
        .admin(&format!("/stats?filter=^{}", prefix.replace('.', "\\.")))
        .text();
    let mut s = EcdsStats::default();
    for line in text.lines() {
        let Some((k, v)) = line.rsplit_once(": ") else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k.strip_prefix(&prefix) {
            Some("config_reload") => s.config_reload = v,
            Some("config_fail") => s.config_fail = v,
            Some("update_success") => s.update_success = v,
            Some("update_rejected") => s.update_rejected = v,
            _ => {}
        }
    }
    s
}

/// What Envoy made of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Accepted and running on every worker.
    Applied,
    /// Refused; the previous configuration stays.
    Rejected,
}

/// One configuration change as seen from outside Envoy.
#[derive(Debug, Clone, Copy)]
pub struct Swap {
    /// Just before the new file was renamed into place.
    pub written: Instant,
    /// When the stats first showed the outcome.
    pub seen: Instant,
    pub outcome: Update,
}

impl Swap {
    pub fn took(&self) -> Duration {
        self.seen - self.written
    }
}

/// Writes `typed_config` and polls the resource's stats until Envoy has applied
/// or refused it. Panics after `limit`, or when a new stat does not fit either.
pub fn swap(envoy: &Envoy, ecds: &Ecds, typed_config: &Value, limit: Duration) -> Swap {
    let before = ecds_stats(envoy, ecds.name());
    let written = Instant::now();
    ecds.write(typed_config);
    loop {
        let now = ecds_stats(envoy, ecds.name());
        // A refusal always counts `config_fail`; one the filter's factory makes
        // (a plugin's on_configure said no) also counts `update_rejected` and
        // `config_reload`, but never `update_success`.
        let rejected = now.config_fail > before.config_fail;
        let applied = !rejected
            && now.update_success > before.update_success
            && now.config_reload > before.config_reload;
        if applied || rejected {
            assert!(
                !(rejected && now.update_success > before.update_success),
                "{}: one write, both applied and rejected: {before:?} → {now:?}",
                ecds.name()
            );
            let seen = Instant::now();
            if rejected && now.update_rejected > before.update_rejected {
                // Its `config_reload` may come after `config_fail`: wait a little
                // for it, so that the next swap does not take it for its own.
                let until = Instant::now() + Duration::from_secs(2);
                while ecds_stats(envoy, ecds.name()).config_reload == before.config_reload
                    && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            return Swap {
                written,
                seen,
                outcome: if applied {
                    Update::Applied
                } else {
                    Update::Rejected
                },
            };
        }
        assert!(
            written.elapsed() < limit,
            "{}: no outcome of the update after {limit:?}: {before:?} → {now:?}",
            ecds.name()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One request of a [`Load`] and what came back.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Index into the load's requests.
    pub request: usize,
    pub started: Instant,
    pub done: Instant,
    /// The classifier's word for the response, or `error: ...` (reset, refused,
    /// timeout).
    pub outcome: String,
}

type Classify = dyn Fn(&Response) -> String + Send + Sync;

/// Requests sent in a loop by a few threads, each on its own connection, until
/// stopped, `max_requests` in all or `max_time`, whichever comes first.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(
        port: u16,
        requests: Vec<Request>,
        threads: usize,
        max_requests: usize,
        max_time: Duration,
        classify: impl Fn(&Response) -> String + Send + Sync + 'static,
    ) -> Load {
        assert!(!requests.is_empty() && threads > 0);
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(requests);
        let classify: Arc<Classify> = Arc::new(classify);
        let deadline = Instant::now() + max_time;
        let per_thread = max_requests.div_ceil(threads);
        let threads = (0..threads)
            .map(|t| {
                let (stop, requests, classify) = (stop.clone(), requests.clone(), classify.clone());
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed)
                        && samples.len() < per_thread
                        && Instant::now() < deadline
                    {
                        let request = i % requests.len();
                        i += 1;
                        let started = Instant::now();
                        let r = http::send_with_timeout(
                            port,
                            &requests[request],
                            Duration::from_secs(10),
                        );
                        let outcome = match r {
                            Ok(r) => classify(&r),
                            Err(e) => format!("error: {e}"),
                        };
                        samples.push(Sample {
                            request,
                            started,
                            done: Instant::now(),
                            outcome,
                        });
                    }
                    samples
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the threads and returns every sample, in start order.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        all.sort_by_key(|s| s.started);
        all
    }
}

/// A configuration in force: from when it was written (`None` for the one Envoy
/// started with) to when the next one was seen applied, and what each of the
/// load's requests gets under it.
pub struct Epoch {
    pub from: Option<Instant>,
    pub until: Option<Instant>,
    pub expect: Vec<String>,
}

/// The epochs of a sequence of swaps: `expects[0]` is the starting
/// configuration's, `expects[k]` the one `swaps[k-1]` wrote. Refused swaps
/// change nothing: their expectations must be those still in force.
pub fn epochs(swaps: &[Swap], expects: &[Vec<String>]) -> Vec<Epoch> {
    assert_eq!(swaps.len() + 1, expects.len());
    let mut out = vec![Epoch {
        from: None,
        until: None,
        expect: expects[0].clone(),
    }];
    for (s, e) in swaps.iter().zip(&expects[1..]) {
        match s.outcome {
            Update::Applied => {
                if let Some(last) = out.last_mut() {
                    last.until = Some(s.seen);
                }
                out.push(Epoch {
                    from: Some(s.written),
                    until: None,
                    expect: e.clone(),
                });
            }
            Update::Rejected => {
                let current = out.last().map(|l| &l.expect);
                assert_eq!(
                    current,
                    Some(e),
                    "a refused update must expect what is in force"
                );
            }
        }
    }
    out
}

/// How the samples fared against the epochs.
#[derive(Debug, Default)]
pub struct Verdict {
    pub samples: usize,
    /// Samples that only one configuration could have served.
    pub strict: usize,
    /// Per epoch, its strict samples.
    pub strict_per_epoch: Vec<usize>,
    pub wrong: Vec<String>,
}

/// Each sample must have the outcome of a configuration that was in force at
/// some moment between its start and its end.
pub fn check(samples: &[Sample], epochs: &[Epoch], requests: &[Request]) -> Verdict {
    let mut v = Verdict {
        samples: samples.len(),
        strict_per_epoch: vec![0; epochs.len()],
        ..Verdict::default()
    };
    for s in samples {
        let live: Vec<usize> = epochs
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.from.is_none_or(|f| f <= s.done) && e.until.is_none_or(|u| u >= s.started)
            })
            .map(|(i, _)| i)
            .collect();
        if live.len() == 1 {
            v.strict += 1;
            v.strict_per_epoch[live[0]] += 1;
        }
        if !live
            .iter()
            .any(|&i| epochs[i].expect[s.request] == s.outcome)
        {
            let wanted: Vec<&str> = live
                .iter()
                .map(|&i| epochs[i].expect[s.request].as_str())
                .collect();
            v.wrong.push(format!(
                "{} {}: got {:?}, configurations {live:?} give {wanted:?}",
                requests[s.request].method, requests[s.request].path, s.outcome
            ));
        }
    }
    v
}

/// Resident memory of a process, in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
