//! `meshwasm-rls`: serves Envoy's RLS v3 from envoyproxy/ratelimit
//! configuration files, counting with Limitador (in Redis with --redis-url).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use meshwasm_rls::{serve, Config, Service};

#[derive(Parser)]
#[command(
    name = "meshwasm-rls",
    about = "An Envoy rate limit service (RLS v3) on Limitador"
)]
struct Args {
    /// An envoyproxy/ratelimit configuration file (a domain and its
    /// descriptors); repeat for more domains.
    #[arg(long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// Address to serve gRPC on (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// Count in this Redis (redis://host:port); in memory when absent.
    #[arg(long)]
    redis_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut docs = Vec::new();
    for p in &args.configs {
        let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
        docs.push((p.display().to_string(), text));
    }
    let config = Config::parse(&docs)?;
    let service = match &args.redis_url {
        Some(url) => Service::redis(config, url)
            .await
            .with_context(|| format!("connect to {url}"))?,
        None => Service::in_memory(config)?,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    println!("meshwasm-rls listening on {}", listener.local_addr()?);
    serve(listener, service, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
