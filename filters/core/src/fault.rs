//! Istio `HTTPFaultInjection` (delay and abort) with Envoy fault-filter
//! runtime semantics (Envoy `fault_filter.cc`, `fault_config.cc`; istiod
//! `route.go` `TranslateFault`).
//!
//! Configuration: a VirtualService `spec` subset
//! `{"http": [{"name", "match": [HTTPMatchRequest..], "fault": {"delay", "abort"}}],
//!   "maxActiveFaults": N}`. The first `http` entry whose `match` holds decides
//! (an entry without `fault` stops the search with no fault). Envoy extras, as
//! extension fields: `maxActiveFaults` (top level), `delay.headerDelay: {}`
//! and `abort.headerAbort: {}` (the `header_delay`/`header_abort` providers:
//! client-controlled faults via `x-envoy-fault-*` headers, off unless set).
//!
//! Runtime, as Envoy: percentages are per-million numerators
//! (`uint32(value * 10000)`, truncated like istiod); a draw is
//! `random % 1_000_000 < numerator`; delay and abort are independent draws;
//! the abort is drawn again after the delay; a fault only starts if an
//! active-fault slot is free (`maxActiveFaults`, overflow counted); one slot
//! per request, released when the delay ends without an abort or when the
//! stream goes away.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{from_json, parse_duration, ConfigError, FieldPath};
use crate::host::{RandomSource, SharedStore};
use crate::http_match::{HttpMatchList, HttpMatchRequest, RequestView};

/// The local-reply body of an abort, as Envoy's fault filter sends it.
pub const ABORT_BODY: &str = "fault filter abort";

pub const HEADER_ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
pub const HEADER_ABORT_REQUEST_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
pub const HEADER_ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
pub const HEADER_DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
pub const HEADER_DELAY_REQUEST_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";

const MILLION: u64 = 1_000_000;

// ---------------------------------------------------------------- configuration

/// The plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultConfig {
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Envoy `max_active_faults`: concurrent faults allowed in the process
    /// (absent = unlimited).
    #[serde(default)]
    pub max_active_faults: Option<u64>,
}

/// An Istio `HTTPRoute`, restricted to what fault injection uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    #[serde(default)]
    pub abort: Option<AbortSpec>,
}

/// Istio `Percent`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// An empty message (`headerDelay: {}` / `headerAbort: {}`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Istio `HTTPFaultInjection.Delay` (+ Envoy `header_delay`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelaySpec {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub exponential_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percent, used only when `percentage` is absent.
    #[serde(default)]
    pub percent: Option<i64>,
    #[serde(default)]
    pub header_delay: Option<Empty>,
}

/// Istio `HTTPFaultInjection.Abort` (+ Envoy `header_abort`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbortSpec {
    #[serde(default)]
    pub http_status: Option<i64>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub http2_error: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    #[serde(default)]
    pub header_abort: Option<Empty>,
}

// ---------------------------------------------------------------- compiled policy

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelaySource {
    Fixed(Duration),
    /// `x-envoy-fault-delay-request` (milliseconds).
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayFault {
    pub source: DelaySource,
    /// Numerator over one million.
    pub per_million: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    Http(u32),
    Grpc(u32),
    /// `x-envoy-fault-abort-request` / `x-envoy-fault-abort-grpc-request`.
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortFault {
    pub kind: AbortKind,
    pub per_million: u32,
}

/// The fault of one route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<DelayFault>,
    pub abort: Option<AbortFault>,
}

/// The local reply of an abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReply {
    /// HTTP status, body `fault filter abort` (gRPC requests get it mapped to
    /// a grpc-status by Envoy's local-reply code).
    Http(u32),
    /// HTTP 200 with this `grpc-status` (message `fault filter abort`).
    Grpc(u32),
}

#[derive(Debug, Clone)]
struct Route {
    matches: HttpMatchList,
    fault: Option<Fault>,
}

/// The compiled configuration.
#[derive(Debug, Clone, Default)]
pub struct FaultPolicy {
    routes: Vec<Route>,
    pub max_active_faults: Option<u64>,
}

/// gRPC status names Istio accepts (`pkg/util/grpc/codes.go`).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio `validatePercentage` + istiod `translatePercentToFractionalPercent`.
fn per_million(p: &Percent, path: &FieldPath) -> Result<u32, ConfigError> {
    let v = p.value;
    if !v.is_finite() || !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(ConfigError::new(
            &path.field("value"),
            format!("percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"),
        ));
    }
    // Truncation, exactly as istiod's `uint32(p.Value * 10000)`.
    Ok((v * 10000.0) as u32)
}

impl DelaySpec {
    fn compile(&self, path: &FieldPath) -> Result<DelayFault, ConfigError> {
        if self.exponential_delay.is_some() {
            return Err(ConfigError::new(
                &path.field("exponentialDelay"),
                "exponentialDelay not supported yet",
            ));
        }
        let source = match (&self.fixed_delay, &self.header_delay) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    path,
                    "only one of fixedDelay, headerDelay may be set",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    path,
                    "delay needs fixedDelay (or the headerDelay extension)",
                ))
            }
            (None, Some(_)) => DelaySource::Header,
            (Some(d), None) => {
                let p = path.field("fixedDelay");
                let d = parse_duration(d).map_err(|e| ConfigError::new(&p, e))?;
                if d < Duration::from_millis(1) {
                    return Err(ConfigError::new(&p, "duration must be greater than 1ms"));
                }
                if d.as_nanos() % 1_000_000 != 0 {
                    return Err(ConfigError::new(
                        &p,
                        "only durations to ms precision are supported",
                    ));
                }
                DelaySource::Fixed(d)
            }
        };
        let per_million = match (&self.percentage, self.percent) {
            (Some(p), _) => per_million(p, &path.field("percentage"))?,
            (None, Some(pc)) => {
                // Deprecated int percent → FractionalPercent{pc, HUNDRED}.
                if !(0..=100).contains(&pc) {
                    return Err(ConfigError::new(
                        &path.field("percent"),
                        format!("percent {pc} is not in range [0, 100]"),
                    ));
                }
                pc as u32 * 10_000
            }
            // No percentage: Envoy's default numerator is 0, i.e. never.
            (None, None) => 0,
        };
        Ok(DelayFault {
            source,
            per_million,
        })
    }
}

impl AbortSpec {
    fn compile(&self, path: &FieldPath) -> Result<AbortFault, ConfigError> {
        if self.http2_error.is_some() {
            return Err(ConfigError::new(
                &path.field("http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            ));
        }
        let set = [
            self.http_status.is_some(),
            self.grpc_status.is_some(),
            self.header_abort.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            return Err(ConfigError::new(
                path,
                "only one of httpStatus, grpcStatus, headerAbort may be set",
            ));
        }
        let kind = if let Some(s) = self.http_status {
            // Istio accepts 600, which Envoy's proto validation (lt: 600) NACKs.
            if !(200..600).contains(&s) {
                return Err(ConfigError::new(
                    &path.field("httpStatus"),
                    format!("HTTP status {s} is not in range 200-599"),
                ));
            }
            AbortKind::Http(s as u32)
        } else if let Some(g) = &self.grpc_status {
            match GRPC_CODES.iter().position(|c| c == g) {
                Some(code) => AbortKind::Grpc(code as u32),
                None => {
                    return Err(ConfigError::new(
                        &path.field("grpcStatus"),
                        format!(
                            "gRPC status {g:?} is not supported; use a name such as \"NOT_FOUND\" or \"UNAVAILABLE\""
                        ),
                    ))
                }
            }
        } else if self.header_abort.is_some() {
            AbortKind::Header
        } else {
            // Istio only warns and then drops the abort; a no-op abort is
            // certainly a mistake, so it is refused here.
            return Err(ConfigError::new(
                path,
                "abort needs httpStatus or grpcStatus (or the headerAbort extension)",
            ));
        };
        let per_million = match &self.percentage {
            Some(p) => per_million(p, &path.field("percentage"))?,
            None => 0,
        };
        Ok(AbortFault { kind, per_million })
    }
}

impl HttpFaultInjection {
    fn compile(&self, path: &FieldPath) -> Result<Fault, ConfigError> {
        if self.delay.is_none() && self.abort.is_none() {
            return Err(ConfigError::new(
                path,
                "HTTP fault injection must have an abort and/or a delay",
            ));
        }
        Ok(Fault {
            delay: self
                .delay
                .as_ref()
                .map(|d| d.compile(&path.field("delay")))
                .transpose()?,
            abort: self
                .abort
                .as_ref()
                .map(|a| a.compile(&path.field("abort")))
                .transpose()?,
        })
    }
}

impl FaultPolicy {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let cfg: FaultConfig = from_json(bytes)?;
        Self::compile(&cfg)
    }

    pub fn compile(cfg: &FaultConfig) -> Result<Self, ConfigError> {
        let root = FieldPath::root();
        let mut routes = Vec::with_capacity(cfg.http.len());
        for (i, r) in cfg.http.iter().enumerate() {
            let p = root.field("http").index(i);
            routes.push(Route {
                matches: HttpMatchList::compile(&r.matches, &p.field("match"))?,
                fault: r
                    .fault
                    .as_ref()
                    .map(|f| f.compile(&p.field("fault")))
                    .transpose()?,
            });
        }
        Ok(FaultPolicy {
            routes,
            max_active_faults: cfg.max_active_faults,
        })
    }

    /// The first route whose match holds decides: its index and fault (None
    /// when no route matches or the matching route has no fault).
    pub fn select(&self, req: &RequestView<'_>) -> Option<(usize, &Fault)> {
        let (i, route) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches.matches(req))?;
        route.fault.as_ref().map(|f| (i, f))
    }

    /// The fault of route `i` (as returned by `select`).
    pub fn fault(&self, i: usize) -> Option<&Fault> {
        self.routes.get(i).and_then(|r| r.fault.as_ref())
    }

    /// True when the policy can never inject anything (no route has a fault).
    pub fn is_inert(&self) -> bool {
        self.routes.iter().all(|r| r.fault.is_none())
    }
}

// ---------------------------------------------------------------- runtime

/// The `x-envoy-fault-*` request headers, captured when the request headers
/// are seen (the map is gone once the request is resumed). Only the first
/// value of each counts, as in Envoy ("implicitly untrusted header").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultHeaders {
    pub abort_request: Option<Vec<u8>>,
    pub abort_request_percentage: Option<Vec<u8>>,
    pub abort_grpc_request: Option<Vec<u8>>,
    pub delay_request: Option<Vec<u8>>,
    pub delay_request_percentage: Option<Vec<u8>>,
}

impl FaultHeaders {
    pub fn from_request(req: &RequestView<'_>) -> Self {
        let first = |n: &str| req.header_first(n).map(<[u8]>::to_vec);
        FaultHeaders {
            abort_request: first(HEADER_ABORT_REQUEST),
            abort_request_percentage: first(HEADER_ABORT_REQUEST_PERCENTAGE),
            abort_grpc_request: first(HEADER_ABORT_GRPC_REQUEST),
            delay_request: first(HEADER_DELAY_REQUEST),
            delay_request_percentage: first(HEADER_DELAY_REQUEST_PERCENTAGE),
        }
    }
}

/// `absl::SimpleAtoi` for unsigned types: optional surrounding ASCII
/// whitespace, optional `+`, decimal digits, no overflow.
fn simple_atoi(v: Option<&[u8]>, max: u64) -> Option<u64> {
    let s = std::str::from_utf8(v?).ok()?.trim_ascii();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n <= max)
}

/// Envoy `HeaderPercentageProvider`: the header's numerator, capped by the
/// configured one; the configured one when the header is absent or invalid.
fn header_percentage(configured: u32, header: Option<&[u8]>) -> u32 {
    match simple_atoi(header, u32::MAX as u64) {
        Some(n) => (n as u32).min(configured),
        None => configured,
    }
}

/// One per-million draw (Envoy `featureEnabled` with a MILLION denominator).
pub fn draw(per_million: u32, rng: &mut dyn RandomSource) -> bool {
    rng.next_u64() % MILLION < per_million as u64
}

impl Fault {
    /// Whether this fault reads the `x-envoy-fault-*` headers (a `headerDelay` or
    /// `headerAbort`); otherwise they need not be captured.
    pub fn reads_headers(&self) -> bool {
        self.delay
            .as_ref()
            .is_some_and(|d| matches!(d.source, DelaySource::Header))
            || self
                .abort
                .as_ref()
                .is_some_and(|a| matches!(a.kind, AbortKind::Header))
    }

    /// Envoy `delayDuration`: the draw, then the duration (a header delay
    /// without a valid header, or of 0 ms, is no delay).
    pub fn draw_delay(&self, h: &FaultHeaders, rng: &mut dyn RandomSource) -> Option<Duration> {
        let d = self.delay.as_ref()?;
        let pct = match d.source {
            DelaySource::Fixed(_) => d.per_million,
            DelaySource::Header => {
                header_percentage(d.per_million, h.delay_request_percentage.as_deref())
            }
        };
        if !draw(pct, rng) {
            return None;
        }
        let dur = match d.source {
            DelaySource::Fixed(dur) => dur,
            DelaySource::Header => {
                Duration::from_millis(simple_atoi(h.delay_request.as_deref(), u64::MAX)?)
            }
        };
        (dur.as_millis() > 0).then_some(dur)
    }

    /// Envoy `abortStatus`: the draw, then the HTTP status (or, failing
    /// that, the gRPC status with HTTP 200).
    pub fn draw_abort(&self, h: &FaultHeaders, rng: &mut dyn RandomSource) -> Option<AbortReply> {
        let a = self.abort.as_ref()?;
        let pct = match a.kind {
            AbortKind::Header => {
                header_percentage(a.per_million, h.abort_request_percentage.as_deref())
            }
            _ => a.per_million,
        };
        if !draw(pct, rng) {
            return None;
        }
        match a.kind {
            AbortKind::Http(s) => Some(AbortReply::Http(s)),
            AbortKind::Grpc(g) => Some(AbortReply::Grpc(g)),
            AbortKind::Header => {
                if let Some(s) = simple_atoi(h.abort_request.as_deref(), u64::MAX)
                    .filter(|s| (200..600).contains(s))
                {
                    return Some(AbortReply::Http(s as u32));
                }
                simple_atoi(h.abort_grpc_request.as_deref(), u32::MAX as u64)
                    .map(|g| AbortReply::Grpc(g as u32))
            }
        }
    }
}

/// What to do with a request, decided when its headers arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    /// Pause for this long, then call [`after_delay`]. Holds a fault slot.
    Delay(Duration),
    /// Reply now. Holds a fault slot until the stream ends.
    Abort(AbortReply),
}

/// Envoy `decodeHeaders`: delay first; if no delay starts, maybe abort.
/// `try_acquire` takes an active-fault slot, returning false on overflow (the
/// caller counts `faults_overflow`); it is called at most once per fault tried.
pub fn decide(
    fault: &Fault,
    h: &FaultHeaders,
    rng: &mut dyn RandomSource,
    try_acquire: &mut dyn FnMut() -> bool,
) -> Decision {
    if let Some(d) = fault.draw_delay(h, rng) {
        if try_acquire() {
            return Decision::Delay(d);
        }
    }
    if let Some(a) = fault.draw_abort(h, rng) {
        if try_acquire() {
            return Decision::Abort(a);
        }
    }
    Decision::Continue
}

/// Envoy `postDelayInjection`: an independent abort draw once the delay is
/// over (the slot is already held). None = release the slot and resume.
pub fn after_delay(
    fault: &Fault,
    h: &FaultHeaders,
    rng: &mut dyn RandomSource,
) -> Option<AbortReply> {
    fault.draw_abort(h, rng)
}

// ---------------------------------------------------------------- active faults across workers

/// Outcome of taking a process-wide active-fault slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    Acquired,
    Overflow,
}

const CAS_TRIES: usize = 16;

fn decode_count(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| b.get(..8).and_then(|s| s.try_into().ok()))
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Takes a slot if fewer than `max` are held process-wide (a CAS loop over
/// shared data; exact, unlike Envoy's gauge check). When the store keeps
/// losing the race, the fault is skipped (counted as overflow): skipping a
/// fault is always safe.
pub fn shared_try_acquire(store: &dyn SharedStore, key: &str, max: u64) -> Acquire {
    for _ in 0..CAS_TRIES {
        let (v, cas) = store.get(key);
        let n = decode_count(v);
        if n >= max {
            return Acquire::Overflow;
        }
        if store.set(key, &(n + 1).to_le_bytes(), cas).is_ok() {
            return Acquire::Acquired;
        }
    }
    Acquire::Overflow
}

/// Returns a slot taken by [`shared_try_acquire`].
pub fn shared_release(store: &dyn SharedStore, key: &str) {
    for _ in 0..CAS_TRIES {
        let (v, cas) = store.get(key);
        let n = decode_count(v);
        if store
            .set(key, &n.saturating_sub(1).to_le_bytes(), cas)
            .is_ok()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------- delay queue (per worker)

/// The delayed requests of one worker and the period its single tick timer
/// should have: ticks run only while delays are pending, and the timer is armed
/// for the nearest deadline (whole milliseconds, the host's resolution).
#[derive(Debug, Default)]
pub struct DelayQueue {
    /// context id → (start, deadline) in host nanoseconds.
    entries: BTreeMap<u32, (u64, u64)>,
    /// The period the host timer currently has (0 = off).
    period_ms: u64,
    /// The deadline the armed timer is for (meaningless while off).
    armed_for: u64,
}

/// Deadlines this close after the tick's are due on it too: a burst of
/// requests delayed alike ends together, as Envoy's native timers (armed from
/// the same stale loop time) would end them, instead of waiting for another
/// tick at least a millisecond away, which epoll wakes up late by up to one
/// more (its millisecond timeout is rounded up). 2 ms is the smallest window
/// that keeps delays as close to their deadline as the native filter's (the
/// `delays_are_accurate` host test compares them).
const DUE_WITHIN_NS: u64 = 2_000_000;

impl DelayQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, context_id: u32) -> bool {
        self.entries.contains_key(&context_id)
    }

    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// Adds a delayed request. Returns the period to arm the host timer with
    /// when it must change: no timer yet, or the armed one is for a later
    /// deadline. A timer armed for a sooner one is left alone (re-arming it
    /// would postpone the request it is for).
    pub fn insert(&mut self, context_id: u32, now: u64, delay: Duration) -> Option<u64> {
        let deadline = now.saturating_add(delay.as_nanos().min(u64::MAX as u128) as u64);
        self.entries.insert(context_id, (now, deadline));
        if self.period_ms != 0 && deadline >= self.armed_for {
            return None;
        }
        Some(self.arm(deadline, now))
    }

    /// Forgets a request (its stream went away). Returns `Some(0)` when the
    /// timer can stop.
    pub fn remove(&mut self, context_id: u32) -> Option<u64> {
        self.entries.remove(&context_id)?;
        if self.entries.is_empty() && self.period_ms != 0 {
            self.period_ms = 0;
            return Some(0);
        }
        None
    }

    /// On a tick: removes and returns the requests whose delay is over, and the
    /// new timer period when it must change (the host re-arms the timer with
    /// its period after every tick, so the next tick is `period` from now
    /// either way).
    ///
    /// Due are deadlines up to [`DUE_WITHIN_NS`] after the later of now and
    /// the deadline this tick was armed for, and requests started "in the
    /// future" (the clock went back). The host's timer decides, as for Envoy's
    /// native fault timers: Envoy arms timers from the event loop's cached
    /// time, which can lag the clock by milliseconds on a busy worker, so a
    /// tick (like a native timer) may come that much early; then it is early
    /// for the deadlines next to the one it was armed for too.
    pub fn due(&mut self, now: u64) -> (Vec<u32>, Option<u64>) {
        let armed_for = if self.period_ms != 0 {
            self.armed_for
        } else {
            0
        };
        let soon = now.max(armed_for).saturating_add(DUE_WITHIN_NS);
        let due: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, (start, deadline))| *deadline <= soon || now < *start)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.entries.remove(id);
        }
        let old = self.period_ms;
        match self.entries.values().map(|(_, d)| *d).min() {
            Some(nearest) => {
                self.arm(nearest, now);
            }
            None => self.period_ms = 0,
        }
        let changed = (self.period_ms != old).then_some(self.period_ms);
        (due, changed)
    }

    /// Arms for `deadline` at `now`: the period in whole milliseconds, rounded
    /// to nearest (the tick is trusted for its deadline, and epoll already
    /// rounds its wake-up up), at least 1.
    fn arm(&mut self, deadline: u64, now: u64) -> u64 {
        self.period_ms = ((deadline.saturating_sub(now) + 500_000) / 1_000_000).max(1);
        self.armed_for = deadline;
        self.period_ms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
