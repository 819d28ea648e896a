//! `meshwasm`: check plugin configurations with the filters' own parsers, render
//! WasmPlugin/TrafficExtension/EnvoyFilter manifests, build/push/pull the OCI images Istio pulls.

mod explain;
mod filter;
mod image;
mod manifest;
mod objects;
mod prune;
mod registry;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use filter::{FailStrategy, Filter, Phase};

/// Every way a command fails; printed as `meshwasm: <message>`, exit code 1
/// (2 for usage errors, as clap does).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{count} error(s) in {file}")]
    Invalid { file: String, count: usize },
    #[error("{0}")]
    Usage(String),
    #[error("not a wasm module: {what}: {detail}")]
    NotWasm { what: String, detail: String },
    #[error("not a usable image: {0}")]
    BadImage(String),
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("registry {registry} unreachable: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error(
        "registry {registry}: 401 unauthorized (check --username/--password or --token): {detail}"
    )]
    Unauthorized { registry: String, detail: String },
    #[error("{reference}: no such image (missing tag or repository)")]
    NotFound { reference: String },
    #[error("registry error: {0}")]
    Registry(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{path}: {source}")]
    Prune {
        path: String,
        source: prune::PruneError,
    },
}

impl CliError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "meshwasm",
    version,
    about = "Istio's mesh policies as proxy-wasm filters: check, render, package"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a plugin configuration (JSON/YAML) or Istio objects with the filter's own parser.
    Check {
        filter: Filter,
        /// A plugin configuration, or a multi-document YAML of Istio objects
        /// (RequestAuthentication, AuthorizationPolicy, VirtualService, rate-limit EnvoyFilter).
        file: PathBuf,
        /// Print the plugin configuration the filter would receive.
        #[arg(long)]
        print: bool,
    },
    /// Render a WasmPlugin manifest carrying the configuration.
    Wasmplugin(RenderArgs),
    /// Render an Istio TrafficExtension (extensions.istio.io/v1alpha1, the API that
    /// supersedes WasmPlugin): the same options, the module under `spec.wasm`.
    Trafficextension(RenderArgs),
    /// Render the EnvoyFilter equivalent (clusters without WasmPlugin).
    Envoyfilter {
        #[command(flatten)]
        render: RenderArgs,
        /// EnvoyFilter patch context.
        #[arg(long, default_value = "GATEWAY", value_parser = ["GATEWAY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "ANY"])]
        context: String,
    },
    /// Explain one request offline: every configured stage (jwt_authn, authz,
    /// fault, canary) decides it with the modules' own code.
    /// Exit 0 if it passes, 1 if denied, 2 on bad input.
    Explain(explain::ExplainArgs),
    /// OCI images in the Wasm compat format Istio pulls.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Build step (`make build`): drop from each module's exports the proxy-wasm
    /// callbacks it does not declare in its `meshwasm.callbacks` section, so Envoy
    /// never enters the VM for them. Rewrites the files in place.
    PruneCallbacks {
        #[arg(required = true)]
        modules: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct RenderArgs {
    filter: Filter,
    /// Istio objects or a plugin configuration (as for `check`).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Image reference (`host/repo:tag`, `oci://...`, `https://...`, `file://...`).
    #[arg(long)]
    image: String,
    /// Manifest digest printed by `meshwasm image push` (sha256 of the module for http URLs).
    #[arg(long)]
    sha256: Option<String>,
    #[arg(long)]
    phase: Option<Phase>,
    #[arg(long)]
    priority: Option<i32>,
    #[arg(long)]
    fail_strategy: Option<FailStrategy>,
    /// Workload selector label (repeatable); default istio=ingressgateway.
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    selector: Vec<String>,
    /// No workload selector (every workload of the namespace).
    #[arg(long, conflicts_with = "selector")]
    no_selector: bool,
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    /// Object name (default meshwasm-<filter>, suffixed per VirtualService/EnvoyFilter).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_parser = ["IfNotPresent", "Always"])]
    image_pull_policy: Option<String>,
    #[arg(long)]
    image_pull_secret: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct RegistryArgs {
    /// Plain HTTP (a registry without TLS).
    #[arg(long)]
    insecure: bool,
    /// Basic auth user (or $MESHWASM_REGISTRY_USERNAME).
    #[arg(long, short = 'u')]
    username: Option<String>,
    /// Basic auth password (or $MESHWASM_REGISTRY_PASSWORD; see --password-stdin).
    #[arg(long, short = 'p')]
    password: Option<String>,
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    /// Bearer token (or $MESHWASM_REGISTRY_TOKEN).
    #[arg(long)]
    token: Option<String>,
}

impl RegistryArgs {
    fn access(&self) -> Result<registry::Access, CliError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut password = self
            .password
            .clone()
            .or_else(|| env("MESHWASM_REGISTRY_PASSWORD"));
        if self.password_stdin {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::Usage(format!("reading the password from stdin: {e}")))?;
            password = Some(s.trim_end_matches(['\n', '\r']).to_string());
        }
        let username = self
            .username
            .clone()
            .or_else(|| env("MESHWASM_REGISTRY_USERNAME"));
        if username.is_some() != password.is_some() {
            return Err(CliError::Usage(
                "basic auth needs both a username and a password".into(),
            ));
        }
        Ok(registry::Access {
            insecure: self.insecure,
            username,
            password,
            token: self
                .token
                .clone()
                .or_else(|| env("MESHWASM_REGISTRY_TOKEN")),
        })
    }
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Write an OCI image layout (oci-layout, index.json, blobs/) holding plugin.wasm.
    Build {
        filter: Filter,
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// The module (default $MESHWASM_DIST/<filter>.wasm, else dist/<filter>.wasm).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// org.opencontainers.image.version (default the CLI's version).
        #[arg(long)]
        version: Option<String>,
        /// org.opencontainers.image.source.
        #[arg(long, default_value = "https://github.com/meshwasm/meshwasm")]
        source: String,
        /// org.opencontainers.image.revision (default `git rev-parse HEAD`).
        #[arg(long)]
        revision: Option<String>,
        /// org.opencontainers.image.created, RFC 3339 (default: SOURCE_DATE_EPOCH, else the commit time).
        #[arg(long)]
        created: Option<String>,
    },
    /// Push an image layout to a registry; prints the manifest digest.
    Push {
        layout: PathBuf,
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull an image's plugin.wasm (digest-verified).
    Pull {
        reference: String,
        #[arg(short = 'o', long)]
        output: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Explain(args) = cli.command {
        return explain::main(args);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("meshwasm: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("meshwasm: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Check {
            filter,
            file,
            print,
        } => check(filter, &file, print),
        // `main` runs explain itself: it has its own exit codes.
        Command::Explain(_) => Err(CliError::Internal("explain runs from main".into())),
        Command::PruneCallbacks { modules } => {
            for path in modules {
                let wasm = std::fs::read(&path).map_err(|e| CliError::io(&path, e))?;
                let pruned = prune::prune_callbacks(&wasm).map_err(|source| CliError::Prune {
                    path: path.display().to_string(),
                    source,
                })?;
                if pruned.removed.is_empty() {
                    println!("{}: unchanged", path.display());
                    continue;
                }
                std::fs::write(&path, &pruned.module).map_err(|e| CliError::io(&path, e))?;
                println!("{}: removed {}", path.display(), pruned.removed.join(" "));
            }
            Ok(())
        }
        Command::Wasmplugin(args) => render(&args, Kind::WasmPlugin),
        Command::Trafficextension(args) => render(&args, Kind::TrafficExtension),
        Command::Envoyfilter {
            render: args,
            context,
        } => render(&args, Kind::EnvoyFilter(&context)),
        Command::Image(ImageCommand::Build {
            filter,
            output,
            wasm,
            version,
            source,
            revision,
            created,
        }) => {
            let wasm_path = wasm.unwrap_or_else(|| default_wasm(filter));
            let bytes = std::fs::read(&wasm_path).map_err(|e| CliError::io(&wasm_path, e))?;
            let repo = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            let version = version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
            let meta = image::Metadata {
                title: format!("meshwasm-{}", filter.name()),
                description: format!(
                    "meshwasm {} proxy-wasm filter (Istio {} semantics)",
                    filter.name(),
                    filter.istio_kind()
                ),
                version,
                revision: revision.or_else(|| image::git_revision(&repo)),
                source,
                created: created.unwrap_or_else(|| image::created_time(&repo)),
                licenses: "Apache-2.0".to_string(),
            };
            std::fs::create_dir_all(&output).map_err(|e| CliError::io(&output, e))?;
            let built = image::build_layout(&output, &bytes, &meta)?;
            eprintln!(
                "{}: OCI image layout of {} ({} bytes of wasm), manifest {} bytes",
                output.display(),
                wasm_path.display(),
                bytes.len(),
                built.manifest_size
            );
            println!("{}", built.manifest_digest);
            Ok(())
        }
        Command::Image(ImageCommand::Push {
            layout,
            reference,
            registry: r,
        }) => {
            let access = r.access()?;
            let l = image::open_layout(&layout)?;
            image::wasm_from_layout(&l)?;
            let digest = registry::push(&l, &reference, &access)?;
            eprintln!("pushed {reference}@{digest}");
            println!("{digest}");
            Ok(())
        }
        Command::Image(ImageCommand::Pull {
            reference,
            output,
            registry: r,
        }) => {
            let access = r.access()?;
            let pulled = registry::pull(&reference, &access)?;
            write_file(&output, &pulled.wasm)?;
            eprintln!(
                "{}: {} bytes from {reference}",
                output.display(),
                pulled.wasm.len()
            );
            println!("{}", pulled.digest);
            Ok(())
        }
    }
}

fn default_wasm(filter: Filter) -> PathBuf {
    let dist = std::env::var_os("MESHWASM_DIST")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("dist"));
    dist.join(format!("{}.wasm", filter.name()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    if path == Path::new("-") {
        return std::io::stdout()
            .write_all(bytes)
            .map_err(|e| CliError::io(path, e));
    }
    std::fs::write(path, bytes).map_err(|e| CliError::io(path, e))
}

/// Runs the check and prints every finding; the configurations when valid.
fn checked(filter: Filter, file: &Path) -> Result<objects::CheckReport, CliError> {
    let docs = objects::read_docs(file)?;
    let report = objects::check(filter, &docs);
    for note in &report.notes {
        eprintln!("note: {}: {note}", file.display());
    }
    for f in &report.findings {
        eprintln!("{}: {f}", file.display());
    }
    if !report.findings.is_empty() {
        return Err(CliError::Invalid {
            file: file.display().to_string(),
            count: report.findings.len(),
        });
    }
    Ok(report)
}

fn check(filter: Filter, file: &Path, print: bool) -> Result<(), CliError> {
    let report = checked(filter, file)?;
    if print {
        for (_, c) in &report.configs {
            println!("{}", serde_json::to_string_pretty(c).unwrap_or_default());
        }
    }
    eprintln!("{}: ok ({filter})", file.display());
    Ok(())
}

/// What `render` writes.
enum Kind<'a> {
    WasmPlugin,
    TrafficExtension,
    /// With its patch context.
    EnvoyFilter(&'a str),
}

fn render(args: &RenderArgs, kind: Kind<'_>) -> Result<(), CliError> {
    let report = checked(args.filter, &args.file)?;
    let (url, url_digest) = manifest::normalize_url(&args.image);
    let sha256 = match (&args.sha256, url_digest) {
        (Some(s), Some(d)) => {
            let s = manifest::check_sha256(s)?;
            if s != d {
                return Err(CliError::Usage(format!(
                    "--sha256 {s} differs from the digest in --image ({d})"
                )));
            }
            Some(s)
        }
        (Some(s), None) => Some(manifest::check_sha256(s)?),
        (None, Some(d)) => Some(manifest::check_sha256(&d)?),
        (None, None) => None,
    };
    let selector = if args.no_selector {
        Vec::new()
    } else if args.selector.is_empty() {
        vec![("istio".to_string(), "ingressgateway".to_string())]
    } else {
        let mut v = Vec::new();
        for s in &args.selector {
            let (k, val) = s
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--selector {s:?}: expected KEY=VALUE")))?;
            v.push((k.to_string(), val.to_string()));
        }
        v
    };
    let base = args.name.clone().unwrap_or_else(|| args.filter.k8s_name());
    let many = report.configs.len() > 1;
    let mut out = Vec::new();
    for (source_name, config) in &report.configs {
        let name = if many && !source_name.is_empty() {
            format!("{base}-{source_name}")
        } else {
            base.clone()
        };
        let p = manifest::Placement {
            filter: args.filter,
            name,
            namespace: args.namespace.clone(),
            selector: selector.clone(),
            url: url.clone(),
            sha256: sha256.clone(),
            phase: args.phase.unwrap_or(args.filter.default_phase()),
            priority: args.priority,
            fail_strategy: args
                .fail_strategy
                .unwrap_or(args.filter.default_fail_strategy()),
            pull_policy: args.image_pull_policy.clone(),
            pull_secret: args.image_pull_secret.clone(),
        };
        out.push(match kind {
            Kind::WasmPlugin => manifest::wasmplugin(&p, config),
            Kind::TrafficExtension => manifest::trafficextension(&p, config),
            Kind::EnvoyFilter(ctx) => manifest::envoyfilter(&p, config, ctx),
        });
    }
    let yaml = manifest::to_yaml(&out)?;
    match &args.output {
        Some(path) => write_file(path, yaml.as_bytes()),
        None => std::io::stdout()
            .write_all(yaml.as_bytes())
            .map_err(|e| CliError::io(Path::new("-"), e)),
    }
}
