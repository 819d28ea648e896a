//! meshwasm-rls: an Envoy rate limit service (`envoy.service.ratelimit.v3`
//! `RateLimitService/ShouldRateLimit`) for users who run none.
//!
//! A thin adapter: the descriptor tree comes from envoyproxy/ratelimit's
//! configuration format ([`config`]); every limit becomes a Limitador limit,
//! and Limitador counts, expires and updates atomically, in Redis when a URL
//! is given (so replicas of this service share counters) or in memory.

pub mod config;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as ProtoLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use limitador::limit::{Context, Expression, Limit as LLimit, Predicate};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, CheckResult, RateLimiter};
use tonic::{Request, Response, Status};

pub use config::Config;

/// The counter engine: Limitador over Redis, or in this process's memory.
enum Engine {
    Memory(RateLimiter),
    Redis(AsyncRateLimiter),
}

/// One node's Limitador limit is picked by this id; the counter is then one
/// per distinct request descriptor (its entries, joined).
const NODE: &str = "node";
const KEY: &str = "key";

pub struct Service {
    config: Config,
    engine: Engine,
}

impl Service {
    /// In-memory counters (this process only).
    pub fn in_memory(config: Config) -> anyhow::Result<Service> {
        let engine = Engine::Memory(RateLimiter::new(100_000));
        Service::with(config, engine)
    }

    /// Counters in Redis at `url` (e.g. `redis://127.0.0.1:6379`).
    pub async fn redis(config: Config, url: &str) -> anyhow::Result<Service> {
        let storage = AsyncRedisStorage::new(url).await?;
        let engine = Engine::Redis(AsyncRateLimiter::new_with_storage(Box::new(storage)));
        Service::with(config, engine)
    }

    fn with(config: Config, engine: Engine) -> anyhow::Result<Service> {
        for (domain, l) in config.limits() {
            if l.unlimited {
                continue;
            }
            let condition = Predicate::parse(format!("{NODE} == {:?}", node_id(&l.id)))
                .map_err(|e| anyhow::anyhow!("limit {}: {e:?}", l.id))?;
            let variable =
                Expression::parse(KEY).map_err(|e| anyhow::anyhow!("limit {}: {e:?}", l.id))?;
            let limit = LLimit::new(
                domain,
                u64::from(l.requests_per_unit),
                l.unit.seconds,
                [condition],
                [variable],
            );
            match &engine {
                Engine::Memory(r) => r.add_limit(limit),
                Engine::Redis(r) => r.add_limit(limit),
            };
        }
        Ok(Service { config, engine })
    }

    async fn check(
        &self,
        domain: &str,
        node: &str,
        key: String,
        hits: u64,
    ) -> Result<CheckResult, limitador::errors::LimitadorError> {
        let ctx = Context::from(HashMap::from([
            (NODE.to_string(), node.to_string()),
            (KEY.to_string(), key),
        ]));
        let ns = domain.into();
        match &self.engine {
            Engine::Memory(r) => r.check_rate_limited_and_update(&ns, &ctx, hits),
            Engine::Redis(r) => r.check_rate_limited_and_update(&ns, &ctx, hits).await,
        }
    }

    /// Answers one request: a status per descriptor, OVER_LIMIT overall when
    /// any enforced limit is over.
    pub async fn should_rate_limit(
        &self,
        req: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        if req.domain.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit domain must not be empty",
            ));
        }
        if req.descriptors.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit descriptor list must not be empty",
            ));
        }
        let hits = u64::from(req.hits_addend.max(1));
        let mut statuses = Vec::with_capacity(req.descriptors.len());
        let mut over = false;
        for d in &req.descriptors {
            let entries: Vec<(String, String)> = d
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let Some(limit) = self.config.lookup(&req.domain, &entries) else {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            let current_limit = Some(ProtoLimit {
                name: limit.name.clone(),
                requests_per_unit: limit.requests_per_unit,
                unit: limit.unit.proto,
            });
            if limit.unlimited {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            }
            let key = entries
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\u{1f}");
            let result = self
                .check(&req.domain, &node_id(&limit.id), key, hits)
                .await
                .map_err(|e| Status::unavailable(format!("counter storage: {e}")))?;
            let counter = result.counters.first();
            let remaining = counter
                .and_then(|c| c.remaining())
                .unwrap_or(0)
                .min(u64::from(u32::MAX)) as u32;
            let reset = counter
                .and_then(|c| c.expires_in())
                .map_or(limit.unit.seconds as i64, |d| d.as_secs() as i64);
            let limited = result.limited && !limit.shadow_mode;
            over |= limited;
            statuses.push(DescriptorStatus {
                code: if limited { Code::OverLimit } else { Code::Ok } as i32,
                current_limit,
                limit_remaining: if result.limited { 0 } else { remaining },
                duration_until_reset: Some(ProtoDuration {
                    seconds: reset,
                    nanos: 0,
                }),
                quota: None,
            });
        }
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        })
    }
}

/// A CEL-safe, stable name for a node id.
fn node_id(id: &str) -> String {
    // FNV-1a: the same on every run and build, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("n{h:016x}")
}

struct Grpc(Arc<Service>);

#[tonic::async_trait]
impl RateLimitService for Grpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.0
            .should_rate_limit(request.get_ref())
            .await
            .map(Response::new)
    }
}

/// Serves `service` on `listener` (h2c, as Envoy's gRPC client speaks to a
/// cluster with HTTP/2 options) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Grpc(Arc::new(service))))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
