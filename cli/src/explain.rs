//! `meshwasm explain`: one request, given on the command line, through every
//! stage the Istio objects configure, in the mesh order (jwt_authn → authz →
//! fault → canary; local_ratelimit is not explained yet), decided by the same meshwasm-core code
//! the modules run. Only the request view is built here (what the glue reads
//! from the host); the stages' decisions are core's own.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use meshwasm_core::authz::{Authz, RequestAttrs};
use meshwasm_core::canary::choice::{scale, sticky_hash};
use meshwasm_core::canary::{Canary, Decision as CanaryDecision};
use meshwasm_core::fault::{AbortKind, DelaySource, FaultPolicy};
use meshwasm_core::host::SplitMix64;
use meshwasm_core::http_match::{strip_query, RequestView};
use meshwasm_core::jwt::{
    Decision, HeaderOp, Jwks, JwtAuthn, KeySource, KeyState, RemoteKeys, TokenCache,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::filter::Filter;
use crate::objects::{self, Doc};
use crate::CliError;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Istio objects (a multi-document YAML/JSON file, or a folder of them):
    /// RequestAuthentication, AuthorizationPolicy, VirtualService, EnvoyFilter.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// The request as JSON (`method`, `path`, `headers`, `sourceIp`, ...); flags override it.
    #[arg(long)]
    pub request: Option<PathBuf>,
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// `:path`, query included.
    #[arg(long)]
    pub path: Option<String>,
    /// `:authority` (also taken from a `host` header).
    #[arg(long)]
    pub host: Option<String>,
    /// A request header `name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The direct peer's address (also the remote address unless --remote-ip).
    #[arg(long)]
    pub source_ip: Option<IpAddr>,
    /// The client address Envoy trusts from `x-forwarded-for`; the module
    /// then cannot tell the direct peer, as behind a trusted hop.
    #[arg(long)]
    pub remote_ip: Option<IpAddr>,
    #[arg(long)]
    pub destination_ip: Option<IpAddr>,
    #[arg(long)]
    pub destination_port: Option<u16>,
    /// The peer certificate's identity (`cluster.local/ns/a/sa/b`, or a
    /// `spiffe://` URI): the connection is mTLS. Without it, plaintext.
    #[arg(long)]
    pub principal: Option<String>,
    /// TLS SNI.
    #[arg(long)]
    pub sni: Option<String>,
    /// The time tokens are checked at (RFC 3339, e.g. 2026-01-02T03:04:05Z); default now.
    #[arg(long)]
    pub time: Option<String>,
    /// JWKS for the rules that fetch theirs from `jwksUri` (never fetched here):
    /// `FILE` for every such rule, or `ISSUER=FILE` for one (repeatable).
    #[arg(long = "jwks", value_name = "[ISSUER=]FILE")]
    pub jwks: Vec<String>,
    #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

/// Exit 0: the request passes; 1: denied; 2: bad input.
pub fn main(args: ExplainArgs) -> ExitCode {
    match explain(&args) {
        Ok(report) => {
            if args.output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json()).unwrap_or_default()
                );
            } else {
                print!("{}", report.text());
            }
            if report.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("meshwasm explain: {e}");
            ExitCode::from(2)
        }
    }
}

/// The request, as the modules see it from the host.
#[derive(Debug, Clone, Default)]
pub struct Req {
    /// Lower-case names, pseudo-headers first, in order.
    pub headers: Vec<(String, String)>,
    pub source_ip: Option<IpAddr>,
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    pub peer: Option<Vec<String>>,
    pub sni: String,
    /// Unix seconds.
    pub now: u64,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn byte_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect()
    }

    fn pairs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect()
    }
}

/// `--request file.json`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestFile {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    /// `{"name": "value"}` or `[["name", "value"], ...]` (repeated names).
    #[serde(default)]
    headers: Option<Value>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    destination_ip: Option<IpAddr>,
    destination_port: Option<u16>,
    principal: Option<String>,
    sni: Option<String>,
    time: Option<String>,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Builds the request from `--request` and the flags.
pub fn request(args: &ExplainArgs) -> Result<Req, CliError> {
    let file: RequestFile = match &args.request {
        None => RequestFile::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| CliError::io(p, e))?;
            serde_json::from_str(&text).map_err(|e| CliError::Parse {
                file: p.display().to_string(),
                reason: e.to_string(),
            })?
        }
    };
    let mut extra: Vec<(String, String)> = Vec::new();
    match &file.headers {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| usage(format!("--request: header {k:?}: expected a string")))?;
                extra.push((k.to_ascii_lowercase(), v.to_string()));
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                match item.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), Value::String(v)]) => {
                        extra.push((k.to_ascii_lowercase(), v.clone()))
                    }
                    _ => {
                        return Err(usage(
                            "--request: headers: expected [name, value] pairs of strings",
                        ))
                    }
                }
            }
        }
        Some(_) => return Err(usage("--request: headers: expected an object or a list")),
    }
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| usage(format!("--header {h:?}: expected NAME: VALUE")))?;
        extra.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let method = args
        .method
        .clone()
        .or(file.method)
        .unwrap_or_else(|| "GET".to_string());
    let path = args
        .path
        .clone()
        .or(file.path)
        .unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') {
        return Err(usage(format!("--path {path:?}: must start with /")));
    }
    // HTTP/1.1 `host` is Envoy's `:authority`.
    let host_header = extra
        .iter()
        .position(|(k, _)| k == "host" || k == ":authority")
        .map(|i| extra.remove(i).1);
    let authority = args
        .host
        .clone()
        .or(host_header)
        .or(file.host)
        .unwrap_or_else(|| "localhost".to_string());
    let mut headers = vec![
        (":authority".to_string(), authority),
        (":path".to_string(), normalize_path(&path)),
        (":method".to_string(), method),
        (":scheme".to_string(), "http".to_string()),
    ];
    headers.extend(extra);
    let time = args.time.clone().or(file.time);
    let now = match time {
        Some(t) => parse_rfc3339(&t).ok_or_else(|| {
            usage(format!(
                "--time {t:?}: expected RFC 3339 (2026-01-02T03:04:05Z)"
            ))
        })?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let principal = args.principal.clone().or(file.principal);
    Ok(Req {
        headers,
        source_ip: args.source_ip.or(file.source_ip),
        remote_ip: args.remote_ip.or(file.remote_ip),
        destination_ip: args.destination_ip.or(file.destination_ip),
        destination_port: args.destination_port.or(file.destination_port),
        peer: principal.map(|p| {
            if p.contains("://") {
                vec![p]
            } else {
                vec![format!("spiffe://{p}")]
            }
        }),
        sni: args.sni.clone().or(file.sni).unwrap_or_default(),
        now,
    })
}

/// Envoy's `normalize_path` (on in Istio): RFC 3986 dot segments removed;
/// the query is left alone.
pub fn normalize_path(path: &str) -> String {
    let (p, rest) = match path.find(['?', '#']) {
        Some(i) => path.split_at(i),
        None => (path, ""),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = p.split('/').skip(1).collect();
    let n = segments.len();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == n;
        match *s {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}{rest}", out.join("/"))
}

/// RFC 3339 to Unix seconds (`Z` or a numeric offset; fractions dropped).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = frac.get(digits..)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let t = rest.get(1..)?;
            let (oh, om) = t.split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se - offset).ok()
}

/// Every document of the files and folders given (a folder: its `.yaml`,
/// `.yml` and `.json` files, by name).
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Doc>, CliError> {
    let mut docs = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| CliError::io(p, e))?;
        let files = if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CliError::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            files.sort();
            files
        } else {
            vec![p.clone()]
        };
        for f in files {
            for d in objects::read_docs(&f)? {
                if !d.is_object() {
                    return Err(CliError::Parse {
                        file: f.display().to_string(),
                        reason: format!(
                            "{}: not an Istio object (no apiVersion/kind); explain reads the objects themselves",
                            d.label()
                        ),
                    });
                }
                docs.push(d);
            }
        }
    }
    Ok(docs)
}

/// The plugin configurations of one filter the documents configure, checked
/// by the filter's own parser (`meshwasm check`'s code); none when no object
/// is for it.
fn configs(filter: Filter, docs: &[Doc], origin: &str) -> Result<Vec<(String, Value)>, CliError> {
    let kind = filter.istio_kind();
    let mine: Vec<Doc> = docs
        .iter()
        .filter(|d| d.kind() == Some(kind))
        .cloned()
        .collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let report = objects::check(filter, &mine);
    if report.configs.is_empty()
        && report
            .findings
            .iter()
            .all(|f| f.reason.starts_with("no EnvoyFilter patch adds"))
    {
        return Ok(Vec::new());
    }
    if let Some(f) = report.findings.first() {
        return Err(CliError::Parse {
            file: origin.to_string(),
            reason: format!("{f} ({filter})"),
        });
    }
    Ok(report.configs)
}

/// One stage's outcome and why.
#[derive(Debug, Clone)]
pub struct Stage {
    pub stage: &'static str,
    /// `allow`, `deny`, or for stages that do not decide, what they do.
    pub outcome: String,
    /// The local reply status, when the stage answers the request itself.
    pub status: Option<u16>,
    pub reason: String,
    /// Stage specifics (policy id, bucket, route...), also printed in text.
    pub details: Map<String, Value>,
}

impl Stage {
    fn new(stage: &'static str, outcome: &str, reason: String) -> Stage {
        Stage {
            stage,
            outcome: outcome.to_string(),
            status: None,
            reason,
            details: Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Stage {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

pub struct Report {
    pub allowed: bool,
    /// The status the client gets from the stages (200 when passed upstream).
    pub status: u16,
    pub stages: Vec<Stage>,
}

impl Report {
    pub fn json(&self) -> Value {
        let stages: Vec<Value> = self
            .stages
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("stage".into(), json!(s.stage));
                m.insert("outcome".into(), json!(s.outcome));
                if let Some(st) = s.status {
                    m.insert("status".into(), json!(st));
                }
                m.insert("reason".into(), json!(s.reason));
                m.extend(s.details.clone());
                Value::Object(m)
            })
            .collect();
        json!({"allowed": self.allowed, "status": self.status, "stages": stages})
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.stages {
            let status = s.status.map(|c| format!(" {c}")).unwrap_or_default();
            out.push_str(&format!(
                "{}: {}{status}: {}\n",
                s.stage, s.outcome, s.reason
            ));
            for (k, v) in &s.details {
                let v = match v {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                out.push_str(&format!("  {k}: {v}\n"));
            }
        }
        if self.stages.is_empty() {
            out.push_str("no stage configured (no RequestAuthentication, AuthorizationPolicy, VirtualService or rate limit EnvoyFilter)\n");
        }
        out.push_str(&if self.allowed {
            format!("result: allowed ({})\n", self.status)
        } else {
            format!("result: denied ({})\n", self.status)
        });
        out
    }
}

/// Keys for `jwksUri` rules, from `--jwks`; Pending when none were given.
struct GivenKeys(Vec<Option<Jwks>>);

impl RemoteKeys for GivenKeys {
    fn keys(&self, provider: usize) -> KeyState<'_> {
        match self.0.get(provider).and_then(Option::as_ref) {
            Some(jwks) => KeyState::Ready {
                jwks,
                can_refetch: false,
            },
            None => KeyState::Pending,
        }
    }
}

/// `--jwks [ISSUER=]FILE`: a spec naming an existing file is a file for every
/// rule; otherwise the part before the last `=` is the issuer.
fn read_jwks(specs: &[String]) -> Result<Vec<(Option<String>, Jwks)>, CliError> {
    let mut out = Vec::new();
    for spec in specs {
        let (issuer, file) = match spec.rsplit_once('=') {
            Some((i, f)) if !Path::new(spec).exists() => (Some(i.to_string()), f),
            _ => (None, spec.as_str()),
        };
        let path = Path::new(file);
        let text = std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))?;
        let jwks = Jwks::parse(&text).map_err(|s| CliError::Parse {
            file: file.to_string(),
            reason: format!("invalid JWKS: {}", s.message()),
        })?;
        out.push((issuer, jwks));
    }
    Ok(out)
}

fn given_keys(authn: &JwtAuthn, given: &[(Option<String>, Jwks)]) -> Result<GivenKeys, CliError> {
    for (issuer, _) in given {
        if let Some(i) = issuer {
            if !authn.providers.iter().any(|p| &p.issuer == i) {
                return Err(usage(format!(
                    "--jwks {i}=...: no jwtRule has issuer {i:?}"
                )));
            }
        }
    }
    let all = given.iter().find(|(i, _)| i.is_none()).map(|(_, k)| k);
    let keys = authn
        .providers
        .iter()
        .map(|p| match &p.keys {
            KeySource::Inline(_) => None,
            KeySource::Remote(_) => given
                .iter()
                .find(|(i, _)| i.as_deref() == Some(p.issuer.as_str()))
                .map(|(_, k)| k)
                .or(all)
                .cloned(),
        })
        .collect();
    Ok(GivenKeys(keys))
}

/// The request after jwt_authn: its header edits, and the verified payload
/// authz reads from filter state.
struct AfterJwt {
    payload: Option<Value>,
}

fn jwt_stage(
    authn: &JwtAuthn,
    keys: &GivenKeys,
    req: &mut Req,
) -> Result<(Stage, AfterJwt), CliError> {
    let mut cache = TokenCache::new(1);
    let decision = {
        let pairs = req.pairs();
        authn.evaluate(&pairs, req.now, keys, &mut cache).decision
    };
    match decision {
        Decision::FetchJwks { provider, .. } => {
            let uri = authn
                .remote(provider)
                .map(|r| r.uri.clone())
                .unwrap_or_default();
            let issuer = authn
                .providers
                .get(provider)
                .map(|p| p.issuer.clone())
                .unwrap_or_default();
            Err(usage(format!(
                "jwt_authn: the rule for issuer {issuer:?} takes its keys from jwksUri {uri}, which explain does not fetch: pass them with --jwks FILE (or --jwks ISSUER=FILE)"
            )))
        }
        Decision::Deny(d) => {
            let mut s = Stage::new("jwt_authn", "deny", d.body.to_string())
                .with("check", format!("{:?}", d.status))
                .with("www-authenticate", d.www_authenticate.clone());
            s.status = u16::try_from(d.http_status).ok();
            Ok((s, AfterJwt { payload: None }))
        }
        Decision::Allow(a) => {
            for op in &a.ops {
                apply_op(req, op);
            }
            let payload = a.payload.as_ref().map(|p| p.value().clone());
            let s = if a.cors_preflight {
                Stage::new("jwt_authn", "allow", "CORS preflight: not checked".into())
            } else if let Some(p) = &payload {
                let iss = p.get("iss").and_then(Value::as_str).unwrap_or("");
                let rule = authn
                    .providers
                    .iter()
                    .find(|pr| pr.issuer == iss)
                    .map(|pr| format!("{} (jwtRules issuer {iss})", pr.name))
                    .unwrap_or_default();
                let mut s =
                    Stage::new("jwt_authn", "allow", "token verified".into()).with("rule", rule);
                if let Some(pr) = &a.principal {
                    s = s.with("requestPrincipal", pr.to_string());
                }
                s
            } else if authn.providers.is_empty() {
                Stage::new("jwt_authn", "allow", "no jwtRules".into())
            } else {
                Stage::new(
                    "jwt_authn",
                    "allow",
                    "no token: allowed without a request principal (an AuthorizationPolicy may still require one)".into(),
                )
            };
            Ok((s, AfterJwt { payload }))
        }
    }
}

fn apply_op(req: &mut Req, op: &HeaderOp) {
    match op {
        HeaderOp::Remove(name) => req.headers.retain(|(k, _)| k.as_str() != &**name),
        HeaderOp::Add(name, value) => req.headers.push((name.to_string(), value.clone())),
        HeaderOp::SetPath(p) => {
            if let Some((_, v)) = req.headers.iter_mut().find(|(k, _)| k == ":path") {
                *v = p.clone();
            }
        }
    }
}

/// The authz glue's request view over the explained request.
struct AuthzView<'a> {
    req: &'a Req,
    url_path: Vec<u8>,
    jwt: Option<Value>,
}

impl RequestAttrs for AuthzView<'_> {
    fn header_any(
        &mut self,
        _slot: usize,
        name: &str,
        pred: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<bool> {
        let mut found = None;
        for (k, v) in &self.req.headers {
            if k == name {
                if pred(v.as_bytes()) {
                    return Some(true);
                }
                found = Some(false);
            }
        }
        found
    }

    fn url_path(&mut self) -> Option<&[u8]> {
        Some(&self.url_path)
    }

    fn direct_ip(&mut self) -> Option<IpAddr> {
        // As in the module: behind a trusted hop the direct peer is unknown.
        match self.req.remote_ip {
            Some(r) if Some(r) != self.req.source_ip => None,
            _ => self.req.source_ip,
        }
    }

    fn remote_ip(&mut self) -> Option<IpAddr> {
        self.req.remote_ip.or(self.req.source_ip)
    }

    fn destination_ip(&mut self) -> Option<IpAddr> {
        self.req.destination_ip
    }

    fn destination_port(&mut self) -> Option<u16> {
        self.req.destination_port
    }

    fn requested_server_name(&mut self) -> &str {
        &self.req.sni
    }

    fn peer_names(&mut self) -> Option<&[String]> {
        self.req.peer.as_deref()
    }

    fn jwt_payload(&mut self) -> Option<&Value> {
        self.jwt.as_ref()
    }

    fn filter_metadata(&mut self, _filter: &str) -> Option<&Value> {
        None
    }
}

fn authz_stage(authz: &Authz, req: &Req, jwt: Option<Value>) -> Stage {
    let url_path = req
        .header(":path")
        .map(|p| strip_query(p.as_bytes()).to_vec())
        .unwrap_or_default();
    let mut view = AuthzView { req, url_path, jwt };
    let mut custom = None;
    if let Some((settings, id)) = authz.check_custom(&mut view) {
        custom = Some((settings.cluster.clone(), id));
    }
    let d = authz.evaluate(&mut view);
    let mut s = if let Some((cluster, id)) = &custom {
        // The CUSTOM provider's answer is not known offline; the rest of the
        // policies are explained as if it allowed.
        Stage::new(
            "authz",
            if d.allowed { "allow" } else { "deny" },
            format!("CUSTOM policy {id} matched: the ext_authz provider (cluster {cluster}) is asked first and is not called here; if it allows:"),
        )
        .with("custom", id.clone())
    } else {
        Stage::new(
            "authz",
            if d.allowed { "allow" } else { "deny" },
            String::new(),
        )
    };
    let why = match (d.allowed, d.policy_id) {
        (false, Some(id)) => {
            s = s.with("policy", id.to_string());
            format!("DENY policy {id} matched")
        }
        (true, Some(id)) => {
            s = s.with("policy", id.to_string());
            format!("ALLOW policy {id} matched")
        }
        (true, None) => "no ALLOW policy applies: allowed unless denied".to_string(),
        (false, None) => {
            if let Some(n) = authz.nearest_allow(&mut view) {
                s = s.with("nearest", n.policy_id.to_string()).with(
                    "satisfied",
                    format!("{} of {} conditions", n.satisfied, n.total),
                );
                if let Some(f) = &n.failed {
                    s = s.with("failed", f.clone());
                }
            }
            "ALLOW policies exist and none matched".to_string()
        }
    };
    s.reason = if s.reason.is_empty() {
        why
    } else {
        format!("{} {why}", s.reason)
    };
    if let Some(a) = d.audit_policy {
        s = s.with("audit", a.to_string());
    }
    for sh in &d.shadows {
        if let Some(id) = sh.policy_id {
            s = s.with(
                "dryRun",
                format!(
                    "{id} ({})",
                    if sh.denied {
                        "would deny"
                    } else {
                        "would allow"
                    }
                ),
            );
        } else if sh.denied {
            s = s.with("dryRun", "no dry-run ALLOW policy matched (would deny)");
        }
    }
    // What the module writes to filter state for an access log, chosen as it does.
    let written = d
        .policy_id
        .or_else(|| d.shadows.iter().find_map(|s| s.policy_id))
        .or(d.audit_policy);
    let mut state = Map::new();
    state.insert("meshwasm.authz_result".into(), json!(d.result()));
    if let Some(id) = written {
        state.insert("meshwasm.authz_policy".into(), json!(id));
    }
    s = s.with("filterState", Value::Object(state));
    if !d.allowed {
        s.status = Some(403);
    }
    s
}

fn percent(per_million: u32) -> String {
    format!("{}%", f64::from(per_million) / 10_000.0)
}

/// The fault filter of one VirtualService: the first matching route's fault,
/// with the chance of each part (the draw itself is random in Envoy).
fn fault_stage(name: &str, policy: &FaultPolicy, view: &RequestView<'_>) -> Stage {
    let Some((i, f)) = policy.select(view) else {
        return Stage::new("fault", "none", "no http route with a fault matches".into())
            .with("virtualService", name);
    };
    let mut s =
        Stage::new("fault", "inject", format!("http[{i}] matches")).with("virtualService", name);
    if let Some(d) = &f.delay {
        let what = match d.source {
            DelaySource::Fixed(t) => format!("{} ms", t.as_millis()),
            DelaySource::Header => "the x-envoy-fault-delay-request header's".into(),
        };
        s = s.with(
            "delay",
            format!("{what} delay, {} of requests", percent(d.per_million)),
        );
    }
    if let Some(a) = &f.abort {
        let what = match a.kind {
            AbortKind::Http(c) => format!("HTTP {c}"),
            AbortKind::Grpc(c) => format!("grpc-status {c}"),
            AbortKind::Header => "the x-envoy-fault-abort-request header's status".into(),
        };
        s = s.with(
            "abort",
            format!("{what}, {} of requests", percent(a.per_million)),
        );
        // Only a certain abort decides the request's status.
        if let (AbortKind::Http(c), 1_000_000) = (a.kind, a.per_million) {
            s.outcome = "abort".into();
            s.status = u16::try_from(c).ok();
            s.reason = format!("{}: every request aborted (fault filter abort)", s.reason);
        }
    }
    s
}

/// The canary filter of one VirtualService: the route and destination; with
/// a sticky key the pick is certain and its percentile shown, without one it
/// is random by weight.
fn canary_stage(name: &str, c: &Canary, view: &RequestView<'_>) -> Stage {
    let key = c.sticky_key(view);
    let mut rng = SplitMix64::new(0);
    match c.decide(view, None, &mut rng) {
        CanaryDecision::OtherHost => Stage::new(
            "canary",
            "other host",
            "the authority is not one of the VirtualService's hosts".into(),
        )
        .with("virtualService", name),
        CanaryDecision::NoMatch => Stage::new("canary", "no route", "no http route matches".into())
            .with("virtualService", name),
        CanaryDecision::Routed(r) => {
            let route = c.routes.get(r.route_index);
            let route_name = route
                .and_then(|rt| rt.name.clone())
                .map(|n| format!("http[{}] ({n})", r.route_index))
                .unwrap_or_else(|| format!("http[{}]", r.route_index));
            let dest = |d: &meshwasm_core::canary::CompiledDestination| match &d.subset {
                Some(sub) => format!("{} subset {sub}", d.host),
                None => d.host.clone(),
            };
            let mut s = Stage::new("canary", "route", format!("{route_name} matches"))
                .with("virtualService", name)
                .with("route", route_name);
            let single = route.is_some_and(|rt| rt.single);
            if r.sticky || single {
                s = s
                    .with("destination", dest(r.destination))
                    .with("cluster", r.cluster.to_string());
            } else if let Some(rt) = route {
                let total: u32 = rt.destinations.iter().map(|d| d.weight).sum();
                let list: Vec<String> = rt
                    .destinations
                    .iter()
                    .map(|d| {
                        format!(
                            "{} ({}%)",
                            dest(d),
                            f64::from(d.weight) * 100.0 / f64::from(total.max(1))
                        )
                    })
                    .collect();
                s = s.with(
                    "destination",
                    format!("random by weight: {}", list.join(", ")),
                );
            }
            if let (Some(k), true) = (&key, r.sticky) {
                let pct = scale(sticky_hash(k), 10_000) as f64 / 100.0;
                s = s.with("stickyPercentile", pct);
            }
            s
        }
    }
}

pub fn explain(args: &ExplainArgs) -> Result<Report, CliError> {
    let docs = read_inputs(&args.files)?;
    let origin = args
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut req = request(args)?;
    let jwks = read_jwks(&args.jwks)?;
    let jwt = configs(Filter::JwtAuthn, &docs, &origin)?;
    let authz = configs(Filter::Authz, &docs, &origin)?;
    let parse = |filter: Filter, c: &Value| -> Result<Vec<u8>, CliError> {
        serde_json::to_vec(c).map_err(|e| CliError::Internal(format!("{filter}: {e}")))
    };
    let mut stages = Vec::new();
    let mut payload = None;
    if let Some((_, c)) = jwt.first() {
        let authn =
            JwtAuthn::from_json(&parse(Filter::JwtAuthn, c)?).map_err(|e| CliError::Parse {
                file: origin.clone(),
                reason: e.to_string(),
            })?;
        let keys = given_keys(&authn, &jwks)?;
        let (s, after) = jwt_stage(&authn, &keys, &mut req)?;
        payload = after.payload;
        let denied = s.status.is_some();
        stages.push(s);
        if denied {
            return Ok(finish(stages));
        }
    }
    if let Some((_, c)) = authz.first() {
        let a = Authz::from_json(&parse(Filter::Authz, c)?).map_err(|e| CliError::Parse {
            file: origin.clone(),
            reason: e.to_string(),
        })?;
        let s = authz_stage(&a, &req, payload.clone());
        let denied = s.status.is_some();
        stages.push(s);
        if denied {
            return Ok(finish(stages));
        }
    }
    let faults = configs(Filter::Fault, &docs, &origin)?;
    let canaries = configs(Filter::Canary, &docs, &origin)?;
    let byte_headers = req.byte_headers();
    let view = RequestView::new(&byte_headers);
    for (name, c) in &faults {
        let f = FaultPolicy::from_json(&parse(Filter::Fault, c)?).map_err(|e| CliError::Parse {
            file: origin.clone(),
            reason: e.to_string(),
        })?;
        let s = fault_stage(name, &f, &view);
        let denied = s.status.is_some();
        stages.push(s);
        if denied {
            return Ok(finish(stages));
        }
    }
    for (name, c) in &canaries {
        let can = Canary::from_json(&parse(Filter::Canary, c)?).map_err(|e| CliError::Parse {
            file: origin.clone(),
            reason: e.to_string(),
        })?;
        stages.push(canary_stage(name, &can, &view));
    }
    Ok(finish(stages))
}

fn finish(stages: Vec<Stage>) -> Report {
    let denied = stages.iter().find_map(|s| s.status);
    Report {
        allowed: denied.is_none(),
        status: denied.unwrap_or(200),
        stages,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05Z"), Some(1_767_323_045));
        assert_eq!(
            parse_rfc3339("2026-01-02T04:04:05.5+01:00"),
            Some(1_767_323_045)
        );
        assert_eq!(parse_rfc3339("2026-01-02"), None);
        assert_eq!(parse_rfc3339("2026-13-02T03:04:05Z"), None);
    }

    #[test]
    fn dot_segments() {
        assert_eq!(normalize_path("/a/../exact"), "/exact");
        assert_eq!(normalize_path("/a/./b/"), "/a/b/");
        assert_eq!(normalize_path("/a/b/..?x=/../"), "/a/?x=/../");
        assert_eq!(normalize_path("//exact"), "//exact");
        assert_eq!(normalize_path("/.."), "/");
    }
}
