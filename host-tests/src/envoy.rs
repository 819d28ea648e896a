//! Stock Envoy 1.40 under test: templated config, free loopback ports, readiness
//! via admin `/ready`, stats, and the log printed when a test fails.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::http::{self, Request, Response};
use crate::paths;
use crate::upstream::Upstream;

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// An Envoy configuration being prepared: a template and its variables.
pub struct EnvoyBuilder {
    template: String,
    origin: String,
    vars: HashMap<String, String>,
    concurrency: u32,
    log_level: String,
    wrapper: Vec<String>,
    ready_timeout: Duration,
}

impl EnvoyBuilder {
    /// Replaces `{{name}}` with `value` verbatim.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// Replaces `{{name}}` with `config` as a quoted JSON string, ready to sit as
    /// the `value` of a `google.protobuf.StringValue` plugin configuration (a JSON
    /// string literal is a valid YAML double-quoted scalar).
    pub fn plugin_config(self, name: &str, config: &serde_json::Value) -> Self {
        let quoted = serde_json::Value::String(config.to_string()).to_string();
        self.var(name, &quoted)
    }

    /// Replaces `{{name}}` with the upstream's port.
    pub fn upstream(self, name: &str, upstream: &Upstream) -> Self {
        let port = upstream.port().to_string();
        self.var(name, &port)
    }

    /// Worker threads (default 2).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Envoy's log level (default `info`; `debug` shows wasm `log_debug` lines).
    /// Runs Envoy under this command prefix (e.g. `valgrind --tool=callgrind`).
    pub fn wrapper(mut self, prefix: &[String]) -> Self {
        self.wrapper = prefix.to_vec();
        self
    }

    /// How long to wait for `/ready` (default 90 s).
    pub fn ready_timeout(mut self, limit: Duration) -> Self {
        self.ready_timeout = limit;
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Starts Envoy and waits until it is ready; panics with the log otherwise.
    pub fn start(self) -> Envoy {
        match self.try_start() {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts Envoy; an error carries Envoy's log (e.g. a refused plugin config).
    ///
    /// Free ports are found by binding port 0 and letting go, so another process
    /// (or a client's ephemeral port) can take one before Envoy binds it. A start
    /// that fails on that is tried again on fresh ports; any other failure is final.
    pub fn try_start(self) -> Result<Envoy, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match self.start_once() {
                Ok(envoy) => return Ok(envoy),
                // A port taken by another process meanwhile: fresh ports.
                Err(e)
                    if e.contains("Address already in use") || e.contains("duplicate address") =>
                {
                    last = e
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn start_once(&self) -> Result<Envoy, String> {
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("meshwasm-envoy-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut ports = BTreeMap::new();
        let admin_port = paths::free_port();
        let config = render(&self.template, &self.vars, admin_port, &mut ports)
            .map_err(|e| format!("{}: {e}", self.origin))?;
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, &config).map_err(|e| e.to_string())?;
        let log_path = dir.join("envoy.log");
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let bin = paths::envoy_bin();
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--log-level", &self.log_level])
            .arg("--disable-hot-restart")
            // Access logs reach their files within 0.1 s (default 10 s), so
            // tests can read them.
            .args(["--file-flush-interval-msec", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run Envoy at {} ({e}); run `make setup` or set ENVOY_BIN",
                    bin.display()
                )
            })?;
        let mut envoy = Envoy {
            child,
            dir,
            log_path,
            admin_port,
            ports,
        };
        envoy.wait_ready(self.ready_timeout)?;
        Ok(envoy)
    }
}

/// Substitutes `{{NAME}}` placeholders. Unknown names are errors, so a typo in a
/// config never reaches Envoy as literal braces.
fn render(
    template: &str,
    vars: &HashMap<String, String>,
    admin_port: u16,
    ports: &mut BTreeMap<String, u16>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unterminated {{ placeholder".to_string())?;
        let name = after[..end].trim();
        let value = if let Some(v) = vars.get(name) {
            // A value may hold placeholders of its own (a bench fragment's
            // `{{PORT:x}}`, `{{DIST}}`); a value naming itself would never end.
            if v.contains(&format!("{{{{{name}}}}}")) {
                return Err(format!("placeholder {{{{{name}}}}} refers to itself"));
            }
            render(v, vars, admin_port, ports)?
        } else if name == "ADMIN_PORT" {
            admin_port.to_string()
        } else if let Some(listener) = name.strip_prefix("PORT:") {
            let listener = listener.trim().to_string();
            if !ports.contains_key(&listener) {
                // The OS may hand the same free port out twice in a row: every
                // listener (and the admin) gets a distinct one.
                let taken = |p: u16| p == admin_port || ports.values().any(|&q| q == p);
                let mut port = paths::free_port();
                for _ in 0..100 {
                    if !taken(port) {
                        break;
                    }
                    port = paths::free_port();
                }
                ports.insert(listener.clone(), port);
            }
            ports[&listener].to_string()
        } else if name == "DIST" {
            paths::dist_dir().display().to_string()
        } else if name == "CONFIG_DIR" {
            paths::config_dir().display().to_string()
        } else if name == "REPO" {
            paths::repo_root().display().to_string()
        } else {
            return Err(format!("no value for placeholder {{{{{name}}}}}"));
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A running Envoy; killed on drop (its log printed if the test is failing).
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    log_path: PathBuf,
    admin_port: u16,
    ports: BTreeMap<String, u16>,
}

impl Envoy {
    /// A config from `envoy-configs/<name>`.
    pub fn from_file(name: &str) -> EnvoyBuilder {
        let path = paths::config_dir().join(name);
        let template =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Self::builder(template, path.display().to_string())
    }

    /// The benchmark's Envoy (`envoy-configs/bench.yaml`: the `none` and `noop`
    /// listeners, cluster `upstream` at `{{UPSTREAM_PORT}}`) with one filter's
    /// bench fragment (`bench/<filter>.yaml`, and `bench/<filter>.clusters.yaml`
    /// when there is one), as `make bench` runs it.
    pub fn bench_fragment(filter: &str) -> EnvoyBuilder {
        let (listeners, clusters) = Self::bench_fragment_yaml(filter);
        Self::from_file("bench.yaml")
            .var("FILTER_LISTENERS", &listeners)
            .var("FILTER_CLUSTERS", &clusters)
    }

    /// One filter's bench fragment as text: its listeners (`bench/<filter>.yaml`)
    /// and its extra clusters (`bench/<filter>.clusters.yaml`, empty when absent).
    pub fn bench_fragment_yaml(filter: &str) -> (String, String) {
        let dir = paths::config_dir().join("bench");
        let path = dir.join(format!("{filter}.yaml"));
        let listeners =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let clusters =
            fs::read_to_string(dir.join(format!("{filter}.clusters.yaml"))).unwrap_or_default();
        (listeners, clusters)
    }

    /// A config given as text (same placeholders).
    pub fn from_yaml(template: &str) -> EnvoyBuilder {
        Self::builder(template.to_string(), "inline config".to_string())
    }

    fn builder(template: String, origin: String) -> EnvoyBuilder {
        EnvoyBuilder {
            template,
            origin,
            vars: HashMap::new(),
            concurrency: 2,
            log_level: "info".to_string(),
            wrapper: Vec::new(),
            ready_timeout: Duration::from_secs(90),
        }
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The log goes with the error (tests of refused configs expect
                // this), so the working directory is not kept for it.
                return Err(format!(
                    "Envoy exited ({status}) before becoming ready; log:\n{}",
                    self.log()
                ));
            }
            if let Ok(r) = http::send_with_timeout(
                self.admin_port,
                &Request::get("/ready"),
                Duration::from_secs(2),
            ) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready after {limit:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port allocated for `{{PORT:<name>}}`.
    pub fn port(&self, name: &str) -> u16 {
        match self.ports.get(name) {
            Some(p) => *p,
            None => panic!(
                "no listener port named {name:?} (have {:?})",
                self.ports.keys()
            ),
        }
    }

    /// The Envoy process id (for profilers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Sends a request to the listener `{{PORT:<listener>}}`.
    pub fn send(&self, listener: &str, req: &Request) -> Response {
        let port = self.port(listener);
        match http::send(port, req) {
            Ok(r) => r,
            Err(e) => panic!(
                "{} {} to listener {listener} failed: {e}",
                req.method, req.path
            ),
        }
    }

    /// Sends a request, returning the I/O error instead of panicking (resets, ...).
    pub fn try_send(&self, listener: &str, req: &Request) -> std::io::Result<Response> {
        http::send(self.port(listener), req)
    }

    /// GET on the admin interface.
    pub fn admin(&self, path: &str) -> Response {
        match http::send(self.admin_port, &Request::get(path)) {
            Ok(r) => r,
            Err(e) => panic!("admin {path}: {e}"),
        }
    }

    /// Every counter and gauge in `/stats`.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        parse_stats(&self.admin("/stats").text())
    }

    /// One counter or gauge; 0 when Envoy has not created it.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- Envoy log ({}) -----\n{}\n----- end of Envoy log -----",
                self.log_path.display(),
                self.log()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_placeholders() {
        let mut vars = HashMap::new();
        vars.insert("X".to_string(), "1".to_string());
        let mut ports = BTreeMap::new();
        let out = render(
            "a {{X}} {{ ADMIN_PORT }} {{PORT:m}} {{PORT:m}}",
            &vars,
            9,
            &mut ports,
        )
        .unwrap();
        let p = ports["m"];
        assert_eq!(out, format!("a 1 9 {p} {p}"));
        assert!(render("{{NOPE}}", &vars, 9, &mut ports)
            .unwrap_err()
            .contains("NOPE"));
        assert!(render("{{X", &vars, 9, &mut ports).is_err());
        // Values are expanded too (bench fragments carry their own placeholders).
        vars.insert("FRAG".to_string(), "port {{PORT:m}} x={{X}}".to_string());
        assert_eq!(
            render("{{FRAG}}", &vars, 9, &mut ports).unwrap(),
            format!("port {p} x=1")
        );
        vars.insert("SELF".to_string(), "{{SELF}}".to_string());
        assert!(render("{{SELF}}", &vars, 9, &mut ports).is_err());
    }

    #[test]
    fn stats_parse_skips_histograms() {
        let s = parse_stats("a.b: 3\nh: P0(nan,1) P25(nan,2)\nwasmcustom.meshwasm.x: 10\n");
        assert_eq!(s.get("a.b"), Some(&3));
        assert_eq!(s.get("wasmcustom.meshwasm.x"), Some(&10));
        assert!(!s.contains_key("h"));
    }
}
