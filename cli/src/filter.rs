//! The filters: names, WasmPlugin defaults, and the very parser each filter
//! runs in `on_configure` (meshwasm-core, compiled natively here).

use std::fmt;

use meshwasm_core::authz::Authz;
use meshwasm_core::canary::Canary;
use meshwasm_core::fault::FaultPolicy;
use meshwasm_core::jwt::JwtAuthn;
use meshwasm_core::ratelimit::config::LocalRateLimit;
use meshwasm_core::ratelimit::global::GlobalRateLimit;
use meshwasm_core::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Filter {
    #[value(name = "jwt_authn")]
    JwtAuthn,
    #[value(name = "authz")]
    Authz,
    #[value(name = "local_ratelimit")]
    LocalRatelimit,
    #[value(name = "ratelimit")]
    Ratelimit,
    #[value(name = "fault")]
    Fault,
    #[value(name = "canary")]
    Canary,
}

impl Filter {
    /// The crate / `.wasm` / root_id name.
    pub fn name(self) -> &'static str {
        match self {
            Filter::JwtAuthn => "jwt_authn",
            Filter::Authz => "authz",
            Filter::LocalRatelimit => "local_ratelimit",
            Filter::Ratelimit => "ratelimit",
            Filter::Fault => "fault",
            Filter::Canary => "canary",
        }
    }

    /// A Kubernetes object name (DNS-1123: no underscores).
    pub fn k8s_name(self) -> String {
        format!("meshwasm-{}", self.name().replace('_', "-"))
    }

    /// WasmPlugin phase, in Istio's filter order: authentication first, then
    /// authorization and rate limits; fault and routing where Istio puts them.
    pub fn default_phase(self) -> Phase {
        match self {
            Filter::JwtAuthn => Phase::Authn,
            Filter::Authz | Filter::LocalRatelimit | Filter::Ratelimit => Phase::Authz,
            Filter::Fault | Filter::Canary => Phase::Unspecified,
        }
    }

    /// Authentication and authorization must not fail open: a broken module
    /// would otherwise let every request through.
    pub fn default_fail_strategy(self) -> FailStrategy {
        match self {
            Filter::JwtAuthn | Filter::Authz => FailStrategy::Close,
            _ => FailStrategy::Open,
        }
    }

    /// What a user of this filter writes in Istio (for messages).
    pub fn istio_kind(self) -> &'static str {
        match self {
            Filter::JwtAuthn => "RequestAuthentication",
            Filter::Authz => "AuthorizationPolicy",
            Filter::LocalRatelimit | Filter::Ratelimit => "EnvoyFilter",
            Filter::Fault | Filter::Canary => "VirtualService",
        }
    }

    /// Parses and validates a plugin configuration exactly as the filter's
    /// `on_configure` does.
    pub fn validate(self, config: &[u8]) -> Result<(), ConfigError> {
        match self {
            Filter::JwtAuthn => JwtAuthn::from_json(config).map(drop),
            Filter::Authz => Authz::from_json(config).map(drop),
            Filter::LocalRatelimit => LocalRateLimit::from_json(config).map(drop),
            Filter::Ratelimit => GlobalRateLimit::from_json(config).map(drop),
            Filter::Fault => FaultPolicy::from_json(config).map(drop),
            Filter::Canary => Canary::from_json(config).map(drop),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    #[value(name = "AUTHN")]
    Authn,
    #[value(name = "AUTHZ")]
    Authz,
    #[value(name = "STATS")]
    Stats,
    #[value(name = "UNSPECIFIED_PHASE")]
    Unspecified,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Authn => "AUTHN",
            Phase::Authz => "AUTHZ",
            Phase::Stats => "STATS",
            Phase::Unspecified => "UNSPECIFIED_PHASE",
        }
    }

    /// The same phase in TrafficExtension's `ExecutionPhase` enum.
    pub fn execution_phase(self) -> &'static str {
        match self {
            Phase::Unspecified => "UNSPECIFIED",
            other => other.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailStrategy {
    #[value(name = "FAIL_CLOSE")]
    Close,
    #[value(name = "FAIL_OPEN")]
    Open,
    #[value(name = "FAIL_RELOAD")]
    Reload,
}

impl FailStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailStrategy::Close => "FAIL_CLOSE",
            FailStrategy::Open => "FAIL_OPEN",
            FailStrategy::Reload => "FAIL_RELOAD",
        }
    }

    /// Envoy's `failure_policy` for the same intent (EnvoyFilter rendering).
    pub fn envoy_failure_policy(self) -> &'static str {
        match self {
            FailStrategy::Close => "FAIL_CLOSED",
            FailStrategy::Open => "FAIL_OPEN",
            FailStrategy::Reload => "FAIL_RELOAD",
        }
    }
}
