//! Shared by the CLI's integration tests: running the `meshwasm` binary, scratch
//! directories, a real registry (Debian's `docker-registry`) on a free loopback
//! port, and Envoy configurations for modules the tests pulled.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use host_tests::paths;

pub fn repo_root() -> PathBuf {
    paths::repo_root()
}

pub fn meshwasm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshwasm"));
    c.current_dir(repo_root());
    c.stdin(Stdio::null());
    c
}

/// Runs `meshwasm args...`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out: Output = meshwasm().args(args).output().expect("run meshwasm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs and asserts success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(
        code, 0,
        "meshwasm {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// A fresh directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let n = SCRATCH.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("meshwasm-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A built filter module; the tests need `make build` (or the filter's cargo build) first.
pub fn wasm(filter: &str) -> PathBuf {
    let p = paths::wasm(filter);
    assert!(
        p.exists(),
        "{} is missing: run `make build` (or set MESHWASM_DIST to where the filters are)",
        p.display()
    );
    p
}

/// Debian's `docker-registry` (distribution 2.8) on a free loopback port, with its
/// storage in a scratch directory; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: Scratch,
    pub log: PathBuf,
}

pub const USER: &str = "meshwasm";
pub const PASSWORD: &str = "s3cret-pass";

pub const TOKEN_SERVICE: &str = "meshwasm-registry";
pub const TOKEN_ISSUER: &str = "meshwasm-test-token-issuer";

/// How the registry authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// htpasswd basic auth (USER / PASSWORD).
    Basic,
    /// Bearer tokens from `realm`, JWTs whose x5c chains to `cert`.
    Token {
        realm: String,
        cert: PathBuf,
    },
}

/// A token issuer for distribution's `auth.token`: an RSA key and its
/// self-signed certificate (the registry's root bundle), signing with openssl.
pub struct TokenIssuer {
    dir: Scratch,
    pub cert: PathBuf,
    x5c: String,
}

pub fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (installed by `make setup`)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl TokenIssuer {
    pub fn new() -> TokenIssuer {
        let dir = Scratch::new("token-issuer");
        let (key, cert) = (dir.s("key.pem"), dir.s("cert.pem"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                "/CN=meshwasm-test-token-issuer",
            ],
            None,
        );
        let der = openssl(&["x509", "-in", &cert, "-outform", "DER"], None);
        let x5c = String::from_utf8(openssl(&["base64", "-A"], Some(&der))).unwrap();
        TokenIssuer {
            cert: dir.path("cert.pem"),
            dir,
            x5c,
        }
    }

    /// A registry token granting `actions` on `repository` (e.g. "meshwasm/x").
    pub fn token(&self, repository: &str, actions: &[&str]) -> String {
        let b64 = meshwasm_core::jwt::base64url_encode;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": USER, "aud": TOKEN_SERVICE,
            "exp": now + 600, "nbf": now - 60, "iat": now - 60, "jti": format!("jti-{now}-{}", SCRATCH.fetch_add(1, Ordering::SeqCst)),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = openssl(
            &["dgst", "-sha256", "-sign", &self.dir.s("key.pem")],
            Some(input.as_bytes()),
        );
        format!("{input}.{}", b64(&sig))
    }
}

pub fn registry_bin() -> PathBuf {
    std::env::var_os("DOCKER_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

impl Registry {
    /// `basic_auth`: protect it with htpasswd (bcrypt, as distribution requires).
    pub fn start(basic_auth: bool) -> Registry {
        Registry::start_with(if basic_auth { Auth::Basic } else { Auth::None })
    }

    pub fn start_with(auth: Auth) -> Registry {
        let basic_auth = auth == Auth::Basic;
        let bin = registry_bin();
        assert!(
            bin.exists(),
            "{} missing: `make setup` installs Debian's docker-registry",
            bin.display()
        );
        let mut last_err = String::new();
        // A few tries: the free port may be taken between probing and binding.
        for _attempt in 0..3 {
            let dir = Scratch::new(if basic_auth {
                "registry-auth"
            } else {
                "registry"
            });
            let port = paths::free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: meshwasm-test-secret\n",
                dir.s("data")
            );
            if basic_auth {
                let hash = bcrypt::hash(PASSWORD, 4).unwrap();
                std::fs::write(dir.path("htpasswd"), format!("{USER}:{hash}\n")).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: meshwasm-test\n    path: {}\n",
                    dir.s("htpasswd")
                ));
            }
            if let Auth::Token { realm, cert } = &auth {
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    cert.display()
                ));
            }
            std::fs::write(dir.path("config.yml"), config).unwrap();
            let log = dir.path("registry.log");
            let logf = std::fs::File::create(&log).unwrap();
            let child = Command::new(&bin)
                .arg("serve")
                .arg(dir.path("config.yml"))
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf)
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = Registry {
                child,
                port,
                dir,
                log,
            };
            match reg.wait_ready() {
                Ok(()) => return reg,
                Err(e) => last_err = format!("{e}\n{}", reg.log_text()),
            } // dropping `reg` kills it
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("docker-registry exited: {status}"));
            }
            let req = host_tests::http::Request::get("/v2/");
            if let Ok(resp) = host_tests::http::send(self.port, &req) {
                if resp.status == 200 || resp.status == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("docker-registry not ready after 20s".to_string());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The blob file in the registry's storage (distribution's filesystem driver layout).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path("data")
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- docker-registry log ---\n{}", self.log_text());
        }
    }
}

/// `skopeo args...` → (exit code, stdout, stderr).
pub fn skopeo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("skopeo (installed by `make setup`)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An Envoy config with the given wasm filters (module path, root id, plugin
/// configuration JSON) in order on listener `meshwasm`, in front of `{{UPSTREAM}}`.
pub fn envoy_yaml(filters: &[(&Path, &str, &serde_json::Value)]) -> String {
    let mut chain = String::new();
    for (path, root_id, config) in filters {
        let quoted = serde_json::Value::String(config.to_string()).to_string();
        chain.push_str(&format!(
            r#"          - name: meshwasm.{root_id}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: meshwasm.{root_id}
                root_id: {root_id}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {quoted}
                failure_policy: FAIL_CLOSED
"#,
            path.display()
        ));
    }
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{ADMIN_PORT}}}} }} }}
static_resources:
  listeners:
  - name: meshwasm
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{PORT:meshwasm}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: meshwasm
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
          http_filters:
{chain}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{UPSTREAM}}}} }} }} }}
"#
    )
}

/// The `spec.pluginConfig` of the first document of a rendered manifest.
pub fn plugin_config_of(yaml: &str) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_yaml_ng::from_str(yaml.split("\n---\n").next().unwrap()).unwrap();
    doc["spec"]["pluginConfig"].clone()
}
