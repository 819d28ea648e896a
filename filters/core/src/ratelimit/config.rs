//! Envoy `LocalRateLimit` (envoy.extensions.filters.http.local_ratelimit.v3) in
//! proto JSON, parsed and validated the way Envoy 1.40 validates it, then compiled
//! into [`LocalRateLimit`].

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::actions::{
    Action, HeaderMatcher, QueryParameterMatcher, RateLimitPolicy, StringMatcher,
};
use super::bucket::TokenBucket;
use crate::config::{from_json, parse_duration, ConfigError, FieldPath};

const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Shared data holds `max_dynamic_descriptors` entries of 16 bytes per wildcard
/// descriptor; this keeps a typo from reserving gigabytes.
pub const MAX_DYNAMIC_DESCRIPTORS_LIMIT: u32 = 1_000_000;

// ---------------------------------------------------------------- proto JSON

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalRateLimitJson {
    #[serde(rename = "@type", default)]
    type_url: Option<String>,
    stat_prefix: String,
    #[serde(default)]
    status: Option<HttpStatusJson>,
    #[serde(default)]
    token_bucket: Option<TokenBucketJson>,
    #[serde(default)]
    filter_enabled: Option<RuntimeFractionalPercentJson>,
    #[serde(default)]
    filter_enforced: Option<RuntimeFractionalPercentJson>,
    #[serde(default)]
    request_headers_to_add_when_not_enforced: Vec<HeaderValueOptionJson>,
    #[serde(default)]
    response_headers_to_add: Vec<HeaderValueOptionJson>,
    #[serde(default)]
    descriptors: Vec<LocalRateLimitDescriptorJson>,
    #[serde(default)]
    stage: u32,
    #[serde(default)]
    local_rate_limit_per_downstream_connection: bool,
    #[serde(default)]
    local_cluster_rate_limit: Option<Value>,
    #[serde(default)]
    enable_x_ratelimit_headers: Option<Value>,
    #[serde(default)]
    vh_rate_limits: Option<Value>,
    #[serde(default)]
    always_consume_default_token_bucket: Option<bool>,
    #[serde(default)]
    rate_limited_as_resource_exhausted: bool,
    #[serde(default)]
    rate_limits: Vec<RateLimitJson>,
    #[serde(default)]
    max_dynamic_descriptors: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpStatusJson {
    pub(crate) code: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBucketJson {
    #[serde(default)]
    max_tokens: u32,
    #[serde(default)]
    tokens_per_fill: Option<u32>,
    #[serde(default)]
    fill_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeFractionalPercentJson {
    default_value: FractionalPercentJson,
    #[serde(default)]
    runtime_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FractionalPercentJson {
    #[serde(default)]
    numerator: u32,
    #[serde(default)]
    denominator: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderValueOptionJson {
    header: HeaderValueJson,
    #[serde(default)]
    append: Option<bool>,
    #[serde(default)]
    append_action: Option<Value>,
    #[serde(default)]
    keep_empty_value: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderValueJson {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalRateLimitDescriptorJson {
    entries: Vec<EntryJson>,
    token_bucket: Option<TokenBucketJson>,
    #[serde(default)]
    shadow_mode: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitJson {
    actions: Vec<ActionJson>,
    #[serde(default)]
    stage: Option<u32>,
    #[serde(default)]
    disable_key: Option<String>,
    #[serde(default)]
    limit: Option<Value>,
    #[serde(default)]
    hits_addend: Option<Value>,
    #[serde(default)]
    apply_on_stream_done: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionJson {
    #[serde(default)]
    request_headers: Option<RequestHeadersJson>,
    #[serde(default)]
    remote_address: Option<EmptyJson>,
    #[serde(default)]
    generic_key: Option<GenericKeyJson>,
    #[serde(default)]
    header_value_match: Option<HeaderValueMatchJson>,
    #[serde(default)]
    query_parameters: Option<QueryParametersJson>,
    #[serde(default)]
    masked_remote_address: Option<MaskedRemoteAddressJson>,
    #[serde(default)]
    query_parameter_value_match: Option<QueryParameterValueMatchJson>,
    // Known to Envoy, refused here with a reason (see `compile_action`).
    #[serde(default)]
    source_cluster: Option<Value>,
    #[serde(default)]
    destination_cluster: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    dynamic_metadata: Option<Value>,
    #[serde(default)]
    extension: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyJson {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestHeadersJson {
    header_name: String,
    descriptor_key: String,
    #[serde(default)]
    skip_if_absent: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericKeyJson {
    descriptor_value: String,
    #[serde(default)]
    descriptor_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderValueMatchJson {
    #[serde(default)]
    descriptor_key: String,
    descriptor_value: String,
    #[serde(default)]
    expect_match: Option<bool>,
    headers: Vec<HeaderMatcherJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryParametersJson {
    query_parameter_name: String,
    descriptor_key: String,
    #[serde(default)]
    skip_if_absent: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskedRemoteAddressJson {
    #[serde(default)]
    v4_prefix_mask_len: Option<u32>,
    #[serde(default)]
    v6_prefix_mask_len: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryParameterValueMatchJson {
    #[serde(default)]
    descriptor_key: String,
    descriptor_value: String,
    #[serde(default)]
    expect_match: Option<bool>,
    query_parameters: Vec<QueryParameterMatcherJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatcherJson {
    name: String,
    #[serde(default)]
    exact_match: Option<String>,
    #[serde(default)]
    safe_regex_match: Option<RegexMatcherJson>,
    #[serde(default)]
    range_match: Option<RangeJson>,
    #[serde(default)]
    present_match: Option<bool>,
    #[serde(default)]
    prefix_match: Option<String>,
    #[serde(default)]
    suffix_match: Option<String>,
    #[serde(default)]
    contains_match: Option<String>,
    #[serde(default)]
    string_match: Option<StringMatcherJson>,
    #[serde(default)]
    invert_match: bool,
    #[serde(default)]
    treat_missing_header_as_empty: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeJson {
    start: i64,
    end: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexMatcherJson {
    regex: String,
    /// Deprecated RE2 options; accepted and ignored, as Envoy does.
    #[serde(default, rename = "google_re2")]
    _google_re2: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatcherJson {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    safe_regex: Option<RegexMatcherJson>,
    #[serde(default)]
    ignore_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryParameterMatcherJson {
    name: String,
    #[serde(default)]
    string_match: Option<StringMatcherJson>,
    #[serde(default)]
    present_match: Option<bool>,
}

// ---------------------------------------------------------------- compiled

/// `filter_enabled` / `filter_enforced`: the `default_value` fraction. Envoy
/// reads `runtime_key` from its runtime first; a proxy-wasm filter cannot see
/// Envoy's runtime, so the default is what applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: u32,
}

impl Fraction {
    /// Envoy `Runtime::SnapshotImpl::featureEnabled`: `random % denominator < numerator`.
    pub fn roll(&self, random: u64) -> bool {
        if self.numerator == 0 {
            return false;
        }
        if self.numerator >= self.denominator {
            return true;
        }
        random % u64::from(self.denominator) < u64::from(self.numerator)
    }
}

pub use crate::header_ops::{AppendAction, HeaderToAdd};

/// A configured descriptor: its entries (an empty value is a wildcard) and bucket.
#[derive(Debug, Clone)]
pub struct DescriptorSpec {
    pub entries: Vec<(String, String)>,
    pub bucket: TokenBucket,
}

/// The default bucket: none configured (no limit), `max_tokens: 0` (always deny),
/// or a token bucket.
#[derive(Debug, Clone)]
pub enum DefaultBucket {
    None,
    AlwaysDeny,
    Bucket(TokenBucket),
}

/// A validated `LocalRateLimit`.
#[derive(Debug, Clone)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    /// The reply status (Envoy: a code below 400 becomes 429).
    pub status: u32,
    pub default_bucket: DefaultBucket,
    /// Descriptors with every value set, in configuration order.
    pub static_descriptors: Vec<DescriptorSpec>,
    pub(crate) static_index: HashMap<Vec<(String, String)>, usize>,
    /// Descriptors with at least one empty value: one bucket per distinct request
    /// descriptor, bounded by `max_dynamic_descriptors`.
    pub dynamic_descriptors: Vec<DescriptorSpec>,
    pub rate_limits: Vec<RateLimitPolicy>,
    pub filter_enabled: Option<Fraction>,
    pub filter_enforced: Option<Fraction>,
    pub request_headers_to_add_when_not_enforced: Vec<HeaderToAdd>,
    pub response_headers_to_add: Vec<HeaderToAdd>,
    pub per_connection: bool,
    pub x_ratelimit_headers: bool,
    pub always_consume_default_token_bucket: bool,
    pub rate_limited_as_resource_exhausted: bool,
    pub max_dynamic_descriptors: u32,
}

/// What a decision reads of the request headers ([`LocalRateLimit::header_reads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderReads {
    /// Nothing.
    Nothing,
    /// The first value of these headers (every header-reading action is a
    /// `request_headers` one), so fetching them one by one is enough.
    Named(Vec<String>),
    /// The whole map (header matches, query parameters on `:path`).
    All,
}

impl LocalRateLimit {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<LocalRateLimit, ConfigError> {
        let json: LocalRateLimitJson = from_json(bytes)?;
        compile(json)
    }

    pub fn has_descriptors(&self) -> bool {
        !self.static_descriptors.is_empty() || !self.dynamic_descriptors.is_empty()
    }

    /// What deciding reads of the request headers (fetching the header map is the
    /// costliest host call a request makes). Only descriptor actions read them,
    /// and only when descriptors are configured (as the native filter).
    pub fn header_reads(&self) -> HeaderReads {
        if !self.has_descriptors() {
            return HeaderReads::Nothing;
        }
        super::actions::header_reads(&self.rate_limits)
    }

    /// Whether deciding reads the client address (`source.address`).
    pub fn needs_remote_address(&self) -> bool {
        self.has_descriptors() && super::actions::reads_remote_address(&self.rate_limits)
    }

    /// Filter enabled for this request (absent `filter_enabled` = 0 %: inactive).
    pub fn enabled(&self, random: u64) -> bool {
        self.filter_enabled.is_some_and(|f| f.roll(random))
    }

    /// Enforced for this request (absent `filter_enforced` = 0 %: count only).
    pub fn enforced(&self, random: u64) -> bool {
        self.filter_enforced.is_some_and(|f| f.roll(random))
    }

    /// The request descriptors the embedded `rate_limits` produce, as Envoy's
    /// `RateLimitConfig::populateDescriptors` (only when descriptors are configured,
    /// as the native filter skips the work otherwise).
    pub fn request_descriptors(&self, req: &RequestView<'_>) -> Vec<Vec<(String, String)>> {
        if !self.has_descriptors() {
            return Vec::new();
        }
        super::actions::descriptors(&self.rate_limits, req)
    }
}

/// What the descriptor actions read from a request. `headers` are lower-case
/// names as Envoy gives them (pseudo-headers included: `:path`).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub headers: &'a [(String, Vec<u8>)],
    /// Envoy's downstream remote address (after `x-forwarded-for` processing).
    pub remote_ip: Option<IpAddr>,
}

impl RequestView<'_> {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of a header joined with `,` (Envoy `getAllOfHeaderAsString`).
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for (n, v) in self.headers {
            if n == name {
                let v = String::from_utf8_lossy(v);
                match &mut out {
                    Some(s) => {
                        s.push(',');
                        s.push_str(&v);
                    }
                    None => out = Some(v.into_owned()),
                }
            }
        }
        out
    }

    pub fn path(&self) -> &[u8] {
        self.header(":path").unwrap_or(b"")
    }
}

/// A pasted `@type`, when given, must be the filter's own: `@type` names the
/// proto the JSON is, so another one means another filter's configuration.
pub(crate) fn check_type_url(type_url: Option<&str>, expected: &str) -> Result<(), ConfigError> {
    match type_url {
        Some(t) if t != expected => Err(ConfigError::new(
            &FieldPath::root().field("@type"),
            format!("expected {expected:?}"),
        )),
        _ => Ok(()),
    }
}

fn compile(json: LocalRateLimitJson) -> Result<LocalRateLimit, ConfigError> {
    let root = FieldPath::root();
    check_type_url(json.type_url.as_deref(), TYPE_URL)?;
    if json.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            &root.field("stat_prefix"),
            "must not be empty",
        ));
    }
    if json.local_cluster_rate_limit.is_some() {
        return Err(ConfigError::new(
            &root.field("local_cluster_rate_limit"),
            "not supported by meshwasm (a proxy-wasm filter cannot see the local cluster's membership)",
        ));
    }
    if json.stage > 10 {
        return Err(ConfigError::new(
            &root.field("stage"),
            "must be between 0 and 10",
        ));
    }
    if let Some(v) = &json.vh_rate_limits {
        enum_value(
            v,
            &["OVERRIDE", "INCLUDE", "IGNORE"],
            &root.field("vh_rate_limits"),
        )?;
    }
    let status = match &json.status {
        None => 429,
        Some(s) => {
            let code = status_code(&s.code, &root.field("status").field("code"))?;
            // Envoy `toErrorCode`: anything below 400 is replaced by 429.
            if code < 400 {
                429
            } else {
                code
            }
        }
    };
    let x_ratelimit_headers = match &json.enable_x_ratelimit_headers {
        None => false,
        Some(v) => {
            enum_value(
                v,
                &["OFF", "DRAFT_VERSION_03"],
                &root.field("enable_x_ratelimit_headers"),
            )? == 1
        }
    };

    let default_bucket = match &json.token_bucket {
        None => DefaultBucket::None,
        Some(tb) => {
            let p = root.field("token_bucket");
            let bucket = token_bucket(tb, &p, false)?;
            if tb.max_tokens == 0 {
                DefaultBucket::AlwaysDeny
            } else {
                DefaultBucket::Bucket(bucket)
            }
        }
    };

    let mut static_descriptors = Vec::new();
    let mut static_index = HashMap::new();
    let mut dynamic_descriptors: Vec<DescriptorSpec> = Vec::new();
    for (i, d) in json.descriptors.iter().enumerate() {
        let p = root.field("descriptors").index(i);
        if d.entries.is_empty() {
            return Err(ConfigError::new(
                &p.field("entries"),
                "must have at least one entry",
            ));
        }
        let mut entries = Vec::new();
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return Err(ConfigError::new(
                    &p.field("entries").index(j).field("key"),
                    "must not be empty",
                ));
            }
            entries.push((e.key.clone(), e.value.clone()));
        }
        let Some(tb) = &d.token_bucket else {
            return Err(ConfigError::new(&p.field("token_bucket"), "is required"));
        };
        let mut bucket = token_bucket(tb, &p.field("token_bucket"), true)?;
        bucket.shadow_mode = d.shadow_mode;
        let spec = DescriptorSpec {
            entries: entries.clone(),
            bucket,
        };
        let duplicate = || {
            let text: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            ConfigError::new(
                &p,
                format!(
                    "duplicate descriptor in the local rate descriptor: {}",
                    text.join(", ")
                ),
            )
        };
        if entries.iter().any(|(_, v)| v.is_empty()) {
            if dynamic_descriptors.iter().any(|s| s.entries == entries) {
                return Err(duplicate());
            }
            dynamic_descriptors.push(spec);
        } else {
            if static_index.contains_key(&entries) {
                return Err(duplicate());
            }
            static_index.insert(entries, static_descriptors.len());
            static_descriptors.push(spec);
        }
    }

    let rate_limits = compile_rate_limits(
        &json.rate_limits,
        &root.field("rate_limits"),
        "not supported by the local rate limit filter",
    )?;

    let max_dynamic_descriptors = json.max_dynamic_descriptors.unwrap_or(20);
    if max_dynamic_descriptors > MAX_DYNAMIC_DESCRIPTORS_LIMIT {
        return Err(ConfigError::new(
            &root.field("max_dynamic_descriptors"),
            format!("at most {MAX_DYNAMIC_DESCRIPTORS_LIMIT} in meshwasm (each one reserves shared memory)"),
        ));
    }

    Ok(LocalRateLimit {
        stat_prefix: json.stat_prefix.clone(),
        status,
        default_bucket,
        static_descriptors,
        static_index,
        dynamic_descriptors,
        rate_limits,
        filter_enabled: fraction(&json.filter_enabled, &root.field("filter_enabled"))?,
        filter_enforced: fraction(&json.filter_enforced, &root.field("filter_enforced"))?,
        request_headers_to_add_when_not_enforced: headers_to_add(
            &json.request_headers_to_add_when_not_enforced,
            &root.field("request_headers_to_add_when_not_enforced"),
        )?,
        response_headers_to_add: headers_to_add(
            &json.response_headers_to_add,
            &root.field("response_headers_to_add"),
        )?,
        per_connection: json.local_rate_limit_per_downstream_connection,
        x_ratelimit_headers,
        always_consume_default_token_bucket: json
            .always_consume_default_token_bucket
            .unwrap_or(true),
        rate_limited_as_resource_exhausted: json.rate_limited_as_resource_exhausted,
        max_dynamic_descriptors,
    })
}

fn token_bucket(
    tb: &TokenBucketJson,
    p: &FieldPath,
    descriptor: bool,
) -> Result<TokenBucket, ConfigError> {
    let Some(fi) = &tb.fill_interval else {
        return Err(ConfigError::new(&p.field("fill_interval"), "is required"));
    };
    let fill_interval =
        parse_duration(fi).map_err(|e| ConfigError::new(&p.field("fill_interval"), e))?;
    if fill_interval.is_zero() {
        return Err(ConfigError::new(
            &p.field("fill_interval"),
            "must be greater than 0",
        ));
    }
    let tokens_per_fill = tb.tokens_per_fill.unwrap_or(1);
    if tokens_per_fill == 0 {
        return Err(ConfigError::new(
            &p.field("tokens_per_fill"),
            "must be greater than 0",
        ));
    }
    // Envoy refuses sub-50 ms intervals unless the bucket always denies.
    if tb.max_tokens != 0 && fill_interval.as_millis() < 50 {
        let what = if descriptor {
            "descriptor token bucket"
        } else {
            "token bucket"
        };
        return Err(ConfigError::new(
            &p.field("fill_interval"),
            format!("local rate limit {what} fill timer must be >= 50ms"),
        ));
    }
    Ok(TokenBucket::new(
        tb.max_tokens,
        tokens_per_fill,
        fill_interval,
    ))
}

fn fraction(
    v: &Option<RuntimeFractionalPercentJson>,
    p: &FieldPath,
) -> Result<Option<Fraction>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    if v.runtime_key.as_deref().is_some_and(str::is_empty) {
        return Err(ConfigError::new(
            &p.field("runtime_key"),
            "must not be empty",
        ));
    }
    let p = p.field("default_value");
    let denominator = match &v.default_value.denominator {
        None => 100,
        Some(d) => [100, 10_000, 1_000_000][enum_value(
            d,
            &["HUNDRED", "TEN_THOUSAND", "MILLION"],
            &p.field("denominator"),
        )?],
    };
    Ok(Some(Fraction {
        numerator: v.default_value.numerator,
        denominator,
    }))
}

pub(crate) fn headers_to_add(
    v: &[HeaderValueOptionJson],
    p: &FieldPath,
) -> Result<Vec<HeaderToAdd>, ConfigError> {
    if v.len() > 10 {
        return Err(ConfigError::new(p, "at most 10 headers"));
    }
    let mut out = Vec::new();
    for (i, h) in v.iter().enumerate() {
        let p = p.index(i);
        let name = h.header.key.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(ConfigError::new(
                &p.field("header").field("key"),
                "must be a valid header name",
            ));
        }
        if name.starts_with(':') || name == "host" {
            return Err(ConfigError::new(
                &p.field("header").field("key"),
                "pseudo-headers and host cannot be set",
            ));
        }
        if h.header.value.contains('%') {
            // Envoy evaluates `%COMMAND%` substitutions here; meshwasm does not.
            return Err(ConfigError::new(
                &p.field("header").field("value"),
                "substitution formatters (%...%) are not supported by meshwasm",
            ));
        }
        let action = match (&h.append_action, h.append) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    &p,
                    "append and append_action are mutually exclusive",
                ));
            }
            (Some(a), None) => [
                AppendAction::AppendIfExistsOrAdd,
                AppendAction::AddIfAbsent,
                AppendAction::OverwriteIfExistsOrAdd,
                AppendAction::OverwriteIfExists,
            ][enum_value(
                a,
                &[
                    "APPEND_IF_EXISTS_OR_ADD",
                    "ADD_IF_ABSENT",
                    "OVERWRITE_IF_EXISTS_OR_ADD",
                    "OVERWRITE_IF_EXISTS",
                ],
                &p.field("append_action"),
            )?],
            (None, Some(false)) => AppendAction::OverwriteIfExistsOrAdd,
            (None, _) => AppendAction::AppendIfExistsOrAdd,
        };
        out.push(HeaderToAdd {
            name,
            value: h.header.value.clone(),
            action,
            keep_empty_value: h.keep_empty_value,
        });
    }
    Ok(out)
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `rate_limits` entries, as both rate limit filters take them.
/// `on_stream_done`: why `apply_on_stream_done` is refused.
pub(crate) fn compile_rate_limits(
    v: &[RateLimitJson],
    p: &FieldPath,
    on_stream_done: &str,
) -> Result<Vec<RateLimitPolicy>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(i, rl)| compile_rate_limit(rl, &p.index(i), on_stream_done))
        .collect()
}

fn compile_rate_limit(
    rl: &RateLimitJson,
    p: &FieldPath,
    on_stream_done: &str,
) -> Result<RateLimitPolicy, ConfigError> {
    if rl.stage.is_some() || rl.disable_key.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(ConfigError::new(
            p,
            "'stage' field and 'disable_key' field are not supported",
        ));
    }
    if rl.limit.is_some() {
        return Err(ConfigError::new(
            &p.field("limit"),
            "'limit' field is not supported",
        ));
    }
    if rl.hits_addend.is_some() {
        return Err(ConfigError::new(
            &p.field("hits_addend"),
            "not supported by meshwasm",
        ));
    }
    if rl.apply_on_stream_done {
        return Err(ConfigError::new(
            &p.field("apply_on_stream_done"),
            on_stream_done,
        ));
    }
    if rl.actions.is_empty() {
        return Err(ConfigError::new(
            &p.field("actions"),
            "must have at least one action",
        ));
    }
    let mut actions = Vec::new();
    for (i, a) in rl.actions.iter().enumerate() {
        actions.push(compile_action(a, &p.field("actions").index(i))?);
    }
    Ok(RateLimitPolicy { actions })
}

fn compile_action(a: &ActionJson, p: &FieldPath) -> Result<Action, ConfigError> {
    let set = [
        a.request_headers.is_some(),
        a.remote_address.is_some(),
        a.generic_key.is_some(),
        a.header_value_match.is_some(),
        a.query_parameters.is_some(),
        a.masked_remote_address.is_some(),
        a.query_parameter_value_match.is_some(),
        a.source_cluster.is_some(),
        a.destination_cluster.is_some(),
        a.metadata.is_some(),
        a.dynamic_metadata.is_some(),
        a.extension.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(ConfigError::new(
            p,
            "exactly one action specifier must be set",
        ));
    }
    let unsupported = |name: &str, why: &str| {
        Err(ConfigError::new(
            &p.field(name),
            format!("not supported by meshwasm: {why}"),
        ))
    };
    if a.source_cluster.is_some() {
        return unsupported(
            "source_cluster",
            "the local service cluster is not visible to a proxy-wasm filter",
        );
    }
    if a.destination_cluster.is_some() {
        return unsupported(
            "destination_cluster",
            "the route is chosen after this filter runs",
        );
    }
    if a.metadata.is_some() || a.dynamic_metadata.is_some() {
        let name = if a.metadata.is_some() {
            "metadata"
        } else {
            "dynamic_metadata"
        };
        return unsupported(name, "metadata actions are not implemented");
    }
    if a.extension.is_some() {
        return unsupported("extension", "descriptor extensions are not implemented");
    }
    if let Some(h) = &a.request_headers {
        let p = p.field("request_headers");
        if h.header_name.is_empty() {
            return Err(ConfigError::new(
                &p.field("header_name"),
                "must not be empty",
            ));
        }
        if h.descriptor_key.is_empty() {
            return Err(ConfigError::new(
                &p.field("descriptor_key"),
                "must not be empty",
            ));
        }
        return Ok(Action::RequestHeaders {
            header_name: h.header_name.to_ascii_lowercase(),
            descriptor_key: h.descriptor_key.clone(),
            skip_if_absent: h.skip_if_absent,
        });
    }
    if a.remote_address.is_some() {
        return Ok(Action::RemoteAddress);
    }
    if let Some(g) = &a.generic_key {
        if g.descriptor_value.is_empty() {
            return Err(ConfigError::new(
                &p.field("generic_key").field("descriptor_value"),
                "must not be empty",
            ));
        }
        let key = if g.descriptor_key.is_empty() {
            "generic_key".to_string()
        } else {
            g.descriptor_key.clone()
        };
        return Ok(Action::GenericKey {
            descriptor_key: key,
            descriptor_value: g.descriptor_value.clone(),
        });
    }
    if let Some(h) = &a.header_value_match {
        let p = p.field("header_value_match");
        if h.descriptor_value.is_empty() {
            return Err(ConfigError::new(
                &p.field("descriptor_value"),
                "must not be empty",
            ));
        }
        if h.headers.is_empty() {
            return Err(ConfigError::new(
                &p.field("headers"),
                "must have at least one header matcher",
            ));
        }
        let mut headers = Vec::new();
        for (i, m) in h.headers.iter().enumerate() {
            headers.push(header_matcher(m, &p.field("headers").index(i))?);
        }
        let key = if h.descriptor_key.is_empty() {
            "header_match".to_string()
        } else {
            h.descriptor_key.clone()
        };
        return Ok(Action::HeaderValueMatch {
            descriptor_key: key,
            descriptor_value: h.descriptor_value.clone(),
            expect_match: h.expect_match.unwrap_or(true),
            headers,
        });
    }
    if let Some(q) = &a.query_parameters {
        let p = p.field("query_parameters");
        if q.query_parameter_name.is_empty() {
            return Err(ConfigError::new(
                &p.field("query_parameter_name"),
                "must not be empty",
            ));
        }
        if q.descriptor_key.is_empty() {
            return Err(ConfigError::new(
                &p.field("descriptor_key"),
                "must not be empty",
            ));
        }
        return Ok(Action::QueryParameters {
            name: q.query_parameter_name.clone(),
            descriptor_key: q.descriptor_key.clone(),
            skip_if_absent: q.skip_if_absent,
        });
    }
    if let Some(m) = &a.masked_remote_address {
        let p = p.field("masked_remote_address");
        let v4 = m.v4_prefix_mask_len.unwrap_or(32);
        let v6 = m.v6_prefix_mask_len.unwrap_or(128);
        if v4 > 32 {
            return Err(ConfigError::new(
                &p.field("v4_prefix_mask_len"),
                "must be at most 32",
            ));
        }
        if v6 > 128 {
            return Err(ConfigError::new(
                &p.field("v6_prefix_mask_len"),
                "must be at most 128",
            ));
        }
        return Ok(Action::MaskedRemoteAddress {
            v4_prefix_len: v4 as u8,
            v6_prefix_len: v6 as u8,
        });
    }
    if let Some(q) = &a.query_parameter_value_match {
        let p = p.field("query_parameter_value_match");
        if q.descriptor_value.is_empty() {
            return Err(ConfigError::new(
                &p.field("descriptor_value"),
                "must not be empty",
            ));
        }
        if q.query_parameters.is_empty() {
            return Err(ConfigError::new(
                &p.field("query_parameters"),
                "must have at least one matcher",
            ));
        }
        let mut matchers = Vec::new();
        for (i, m) in q.query_parameters.iter().enumerate() {
            let p = p.field("query_parameters").index(i);
            if m.name.is_empty() {
                return Err(ConfigError::new(&p.field("name"), "must not be empty"));
            }
            let matcher = match (&m.string_match, m.present_match) {
                (Some(s), None) => {
                    QueryParameterMatcher::String(string_matcher(s, &p.field("string_match"))?)
                }
                (None, Some(true)) => QueryParameterMatcher::Present,
                (None, Some(false)) => {
                    return Err(ConfigError::new(
                        &p.field("present_match"),
                        "must be true when set",
                    ));
                }
                (None, None) => QueryParameterMatcher::Present,
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        &p,
                        "string_match and present_match are mutually exclusive",
                    ));
                }
            };
            matchers.push((m.name.clone(), matcher));
        }
        let key = if q.descriptor_key.is_empty() {
            "query_match".to_string()
        } else {
            q.descriptor_key.clone()
        };
        return Ok(Action::QueryParameterValueMatch {
            descriptor_key: key,
            descriptor_value: q.descriptor_value.clone(),
            expect_match: q.expect_match.unwrap_or(true),
            matchers,
        });
    }
    Err(ConfigError::new(
        p,
        "exactly one action specifier must be set",
    ))
}

fn header_matcher(m: &HeaderMatcherJson, p: &FieldPath) -> Result<HeaderMatcher, ConfigError> {
    use super::actions::HeaderMatch;
    if m.name.is_empty() {
        return Err(ConfigError::new(&p.field("name"), "must not be empty"));
    }
    let set = [
        m.exact_match.is_some(),
        m.safe_regex_match.is_some(),
        m.range_match.is_some(),
        m.present_match.is_some(),
        m.prefix_match.is_some(),
        m.suffix_match.is_some(),
        m.contains_match.is_some(),
        m.string_match.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        return Err(ConfigError::new(
            p,
            "at most one header match specifier may be set",
        ));
    }
    let kind = if let Some(v) = &m.exact_match {
        HeaderMatch::Exact(v.clone())
    } else if let Some(r) = &m.safe_regex_match {
        HeaderMatch::String(
            StringMatcher::regex(&r.regex, false)
                .map_err(|e| ConfigError::new(&p.field("safe_regex_match").field("regex"), e))?,
        )
    } else if let Some(r) = &m.range_match {
        HeaderMatch::Range(r.start, r.end)
    } else if let Some(b) = m.present_match {
        HeaderMatch::Present(b)
    } else if let Some(v) = &m.prefix_match {
        HeaderMatch::String(StringMatcher::Prefix(v.clone(), false))
    } else if let Some(v) = &m.suffix_match {
        HeaderMatch::String(StringMatcher::Suffix(v.clone(), false))
    } else if let Some(v) = &m.contains_match {
        HeaderMatch::String(StringMatcher::Contains(v.clone(), false))
    } else if let Some(s) = &m.string_match {
        HeaderMatch::String(string_matcher(s, &p.field("string_match"))?)
    } else {
        // No specifier: Envoy matches on presence (an empty exact value).
        HeaderMatch::Exact(String::new())
    };
    Ok(HeaderMatcher {
        name: m.name.to_ascii_lowercase(),
        kind,
        invert: m.invert_match,
        treat_missing_as_empty: m.treat_missing_header_as_empty,
    })
}

fn string_matcher(s: &StringMatcherJson, p: &FieldPath) -> Result<StringMatcher, ConfigError> {
    let set = [
        s.exact.is_some(),
        s.prefix.is_some(),
        s.suffix.is_some(),
        s.contains.is_some(),
        s.safe_regex.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(ConfigError::new(
            p,
            "exactly one of exact, prefix, suffix, contains, safe_regex must be set",
        ));
    }
    let ic = s.ignore_case;
    Ok(if let Some(v) = &s.exact {
        StringMatcher::Exact(v.clone(), ic)
    } else if let Some(v) = &s.prefix {
        StringMatcher::Prefix(v.clone(), ic)
    } else if let Some(v) = &s.suffix {
        StringMatcher::Suffix(v.clone(), ic)
    } else if let Some(v) = &s.contains {
        StringMatcher::Contains(v.clone(), ic)
    } else if let Some(r) = &s.safe_regex {
        if ic {
            return Err(ConfigError::new(
                &p.field("ignore_case"),
                "has no effect on safe_regex",
            ));
        }
        StringMatcher::regex(&r.regex, false)
            .map_err(|e| ConfigError::new(&p.field("safe_regex").field("regex"), e))?
    } else {
        return Err(ConfigError::new(p, "exactly one matcher must be set"));
    })
}

/// A proto enum in JSON: its name, or its number.
pub(crate) fn enum_value(v: &Value, names: &[&str], p: &FieldPath) -> Result<usize, ConfigError> {
    let found = match v {
        Value::String(s) => names.iter().position(|n| n == s),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n < names.len()),
        _ => None,
    };
    found.ok_or_else(|| ConfigError::new(p, format!("expected one of {}", names.join(", "))))
}

/// `envoy.type.v3.StatusCode`: a number, or the enum name Envoy's JSON uses.
pub(crate) fn status_code(v: &Value, p: &FieldPath) -> Result<u32, ConfigError> {
    const NAMES: &[(&str, u32)] = &[
        ("Continue", 100),
        ("OK", 200),
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("PaymentRequired", 402),
        ("Forbidden", 403),
        ("NotFound", 404),
        ("MethodNotAllowed", 405),
        ("NotAcceptable", 406),
        ("RequestTimeout", 408),
        ("Conflict", 409),
        ("Gone", 410),
        ("PreconditionFailed", 412),
        ("PayloadTooLarge", 413),
        ("UnsupportedMediaType", 415),
        ("Locked", 423),
        ("FailedDependency", 424),
        ("TooEarly", 425),
        ("PreconditionRequired", 428),
        ("TooManyRequests", 429),
        ("InternalServerError", 500),
        ("NotImplemented", 501),
        ("BadGateway", 502),
        ("ServiceUnavailable", 503),
        ("GatewayTimeout", 504),
        ("InsufficientStorage", 507),
    ];
    let code = match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => NAMES.iter().find(|(n, _)| n == s).map(|(_, c)| *c),
        _ => None,
    };
    match code {
        Some(c) if (100..600).contains(&c) => Ok(c),
        _ => Err(ConfigError::new(
            p,
            "expected an HTTP status code (e.g. 429 or \"TooManyRequests\")",
        )),
    }
}
