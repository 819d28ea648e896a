//! Thin, non-panicking helpers over the proxy-wasm SDK, shared by every meshwasm
//! filter crate.
//!
//! The SDK's trait methods `unwrap` host answers (a property missing in the root
//! context, a header read after `Continue`, ...), which traps the VM. Everything
//! here goes through `hostcalls::*` and turns odd host answers into `None`/no-ops.

use std::ops::Range;

use meshwasm_core::header_ops::{AppendAction, HeaderEdit, HeaderToAdd};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};

mod header_index;
pub use header_index::{HeaderIndex, HeaderSlots};

/// The plugin configuration bytes. Envoy only hands them out during `on_configure`.
pub fn plugin_config() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

pub fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

pub fn log_error(msg: &str) {
    log(LogLevel::Error, msg);
}

pub fn log_info(msg: &str) {
    log(LogLevel::Info, msg);
}

pub fn log_debug(msg: &str) {
    log(LogLevel::Debug, msg);
}

/// A counter `meshwasm.<filter>.<name>`, defined once per VM in `on_configure`.
/// Envoy exposes it as `wasmcustom.meshwasm.<filter>.<name>` in `/stats` and as
/// `meshwasm_<filter>_<name>` in Prometheus.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(filter: &str, name: &str) -> Counter {
        Counter(
            hostcalls::define_metric(MetricType::Counter, &format!("meshwasm.{filter}.{name}"))
                .ok(),
        )
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        if let (Some(id), true) = (self.0, n > 0) {
            let _ = hostcalls::increment_metric(id, n.min(i64::MAX as u64) as i64);
        }
    }
}

/// A gauge `meshwasm.<filter>.<name>` (process-wide: every worker adds to the same stat).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn define(filter: &str, name: &str) -> Gauge {
        Gauge(
            hostcalls::define_metric(MetricType::Gauge, &format!("meshwasm.{filter}.{name}")).ok(),
        )
    }

    pub fn add(&self, delta: i64) {
        if let (Some(id), true) = (self.0, delta != 0) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
}

/// All request headers, as bytes (values need not be UTF-8). Empty when the map
/// is no longer available (after `Continue`).
pub fn request_headers() -> Vec<(String, Vec<u8>)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// The request header map as the host serialized it, parsed in place by
/// [`HeaderMapBytes::pairs`]: one buffer instead of two allocations per header
/// (what the SDK's `get_map_bytes` makes), which is most of the wasm work a
/// simple match costs.
pub struct HeaderMapBytes(Vec<u8>);

impl HeaderMapBytes {
    /// `(name, value)` pairs in the host's order. The format is proxy-wasm's:
    /// `count: u32`, then `count` × (`name_len: u32`, `value_len: u32`), then each
    /// name and value followed by a NUL. A malformed buffer yields the pairs read
    /// so far; a name that is not UTF-8 (Envoy never sends one) is skipped.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        self.byte_pairs()
            .into_iter()
            .filter_map(|(n, v)| Some((std::str::from_utf8(n).ok()?, v)))
            .collect()
    }

    /// `(name, value)` pairs as bytes, in the host's order, in one pass and
    /// one allocation: what a matcher comparing names byte for byte needs
    /// (no UTF-8 validation of the names, which cost more than the parse).
    /// A malformed buffer yields the pairs read so far.
    pub fn byte_pairs(&self) -> Vec<(&[u8], &[u8])> {
        let b = self.0.as_slice();
        let walk = self.walk();
        let mut out = Vec::with_capacity(walk.len_hint());
        out.extend(walk.map_while(|(n, v)| Some((b.get(n)?, b.get(v)?))));
        out
    }

    /// Where each pair's name and value are in [`HeaderMapBytes::bytes`], in the
    /// host's order (see [`HeaderMapBytes::pairs`] for the format), walked
    /// without allocating.
    pub(crate) fn walk(&self) -> PairRanges<'_> {
        let mut walk = PairRanges {
            b: &self.0,
            i: 0,
            count: 0,
            data: 0,
        };
        if let Some(count) = walk.word(0) {
            walk.count = count;
            walk.data = count.saturating_mul(8).saturating_add(4);
        }
        walk
    }

    /// The serialized map.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The serialized map's pairs as ranges into it, checked to lie inside it;
/// stops at the first pair that does not.
struct PairRanges<'a> {
    b: &'a [u8],
    i: usize,
    count: usize,
    /// Where the next pair's name starts.
    data: usize,
}

impl PairRanges<'_> {
    fn word(&self, at: usize) -> Option<usize> {
        let w: [u8; 4] = self.b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(w) as usize)
    }

    /// How many pairs the map says it has, capped: a capacity, not a promise.
    fn len_hint(&self) -> usize {
        self.count.min(128)
    }
}

impl Iterator for PairRanges<'_> {
    type Item = (Range<usize>, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.count {
            return None;
        }
        let at = self.i.checked_mul(8)?.checked_add(4)?;
        let (nl, vl) = (self.word(at)?, self.word(at.checked_add(4)?)?);
        let name_end = self.data.saturating_add(nl);
        let value_start = name_end.saturating_add(1);
        let value_end = value_start.saturating_add(vl);
        if value_end > self.b.len() {
            self.i = self.count;
            return None;
        }
        let pair = (self.data..name_end, value_start..value_end);
        self.data = value_end.saturating_add(1);
        self.i += 1;
        Some(pair)
    }
}

/// All request headers, zero-copy (see [`HeaderMapBytes`]). Empty when the map
/// is no longer available (after `Continue`).
pub fn request_header_map() -> HeaderMapBytes {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // MapType::HttpRequestHeaders = 0.
    let status = unsafe { proxy_get_header_map_pairs(0, &mut ptr, &mut size) };
    if status != 0 || ptr.is_null() || size == 0 {
        return HeaderMapBytes(Vec::new());
    }
    // The host allocated `size` bytes through the SDK's `proxy_on_memory_allocate`
    // (a `Vec<u8>` with that capacity, forgotten): ours to own and free.
    HeaderMapBytes(unsafe { Vec::from_raw_parts(ptr, size, size) })
}

/// One request header, as bytes.
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

pub fn set_request_header(name: &str, value: Option<&[u8]>) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value);
}

pub fn add_request_header(name: &str, value: &[u8]) {
    let _ = hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value);
}

pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

pub fn set_response_header(name: &str, value: Option<&[u8]>) {
    let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, value);
}

pub fn add_response_header(name: &str, value: &[u8]) {
    let _ = hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value);
}

pub fn remove_response_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
}

/// Applies Envoy `HeaderValueOption`s to a header map, reading a header's
/// presence only when its action depends on it.
pub fn apply_header_options(map: MapType, options: &[HeaderToAdd]) {
    for h in options {
        let exists = matches!(
            h.action,
            AppendAction::AddIfAbsent | AppendAction::OverwriteIfExists
        ) && hostcalls::get_map_value_bytes(map, &h.name)
            .ok()
            .flatten()
            .is_some();
        let value = Some(h.value.as_bytes());
        let _ = match h.edit(exists) {
            HeaderEdit::Add => hostcalls::add_map_value_bytes(map, &h.name, h.value.as_bytes()),
            HeaderEdit::Set => hostcalls::set_map_value_bytes(map, &h.name, value),
            HeaderEdit::None => Ok(()),
        };
    }
}

/// The message of a gRPC call's answer (`on_grpc_call_response`), or nothing
/// when the call failed (`status_code` not OK: there is no message to read).
pub fn grpc_call_message(status_code: u32, size: usize) -> Vec<u8> {
    if status_code != 0 {
        return Vec::new();
    }
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A property as raw bytes; None when absent, empty or not addressable here.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A string property (e.g. `source.address`).
pub fn property_string(path: &[&str]) -> Option<String> {
    property(path).and_then(|b| String::from_utf8(b).ok())
}

/// An int/uint property (8 bytes little-endian, e.g. `destination.port`).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let b = property(path)?;
    let arr: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// Writes filter state `wasm.<key>` for later filters and access logs. Only valid
/// in a stream context; a failure is ignored rather than trapping.
pub fn set_filter_state(key: &str, value: &[u8]) -> bool {
    // The SDK's `hostcalls::set_property` panics on any non-Ok status (NotFound
    // outside a stream, BadArgument on a read-only value): call the import directly.
    // A single path segment is sent as is (the SDK joins segments with NUL).
    let status =
        unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    status == 0
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// Sends a local reply. The host defers it until the callback returns.
pub fn send_local_reply(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    let body = if body.is_empty() { None } else { Some(body) };
    let _ = hostcalls::send_http_response(status, headers.to_vec(), body);
}

/// Resumes a paused request (in the effective context).
pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

/// Makes `context_id` the effective context for the rest of this callback.
/// Fails when that stream is gone (client reset).
pub fn set_effective_context(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

pub fn set_tick_period_ms(ms: u64) {
    let _ = hostcalls::set_tick_period(std::time::Duration::from_millis(ms));
}

/// Current wall-clock time in Unix nanoseconds, as Envoy's time source gives it.
pub fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The host's monotonic clock in nanoseconds (Envoy: the steady clock, the same
/// in every worker), through WASI `clock_time_get`, which proxy-wasm does not
/// wrap. For durations and deadlines: wall-clock time can jump.
pub fn monotonic_nanos() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "wasi_snapshot_preview1")]
        extern "C" {
            fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u16;
        }
        let mut t: u64 = 0;
        // SAFETY: the host writes one u64 at a valid pointer into our memory.
        if unsafe { clock_time_get(1, 1, &mut t) } == 0 {
            return t;
        }
    }
    now_nanos()
}

/// proxy-wasm shared data (one store per Envoy process and vm_id, compare-and-swap)
/// as the core's `SharedStore`.
pub struct HostStore;

impl meshwasm_core::host::SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), meshwasm_core::host::CasMismatch> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            // Any other answer counts as a lost race: the caller's bounded retry
            // decides, and nothing is taken as written that was not.
            Err(_) => Err(meshwasm_core::host::CasMismatch),
        }
    }
}

/// Declares the proxy-wasm callbacks a filter implements (names without the
/// `proxy_on_` prefix, space-separated), in the module's `meshwasm.callbacks`
/// custom section. `make build` (`meshwasm prune-callbacks`) then removes every
/// other `proxy_on_*` callback from the exports the SDK gives every module, and
/// Envoy skips what is not exported: a GET no longer enters the VM for response
/// headers, response body, `on_done` and `on_log` it would ignore.
/// `delete` must stay listed: it is where the SDK frees the stream's context.
#[macro_export]
macro_rules! callbacks {
    ($list:literal) => {
        #[link_section = "meshwasm.callbacks"]
        #[used]
        static MESHWASM_CALLBACKS: [u8; $list.len()] = {
            let bytes = $list.as_bytes();
            let mut out = [0u8; $list.len()];
            let mut i = 0;
            while i < bytes.len() {
                out[i] = bytes[i];
                i += 1;
            }
            out
        };
    };
}

#[cfg(test)]
mod tests {
    use super::HeaderMapBytes;

    pub(crate) fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            b.extend((k.len() as u32).to_le_bytes());
            b.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            b.extend(k.as_bytes());
            b.push(0);
            b.extend(*v);
            b.push(0);
        }
        b
    }

    #[test]
    fn pairs_round_trip_in_order() {
        let pairs: [(&str, &[u8]); 4] = [
            (":path", b"/a?b"),
            ("x-empty", b""),
            ("x-bin", b"\xff\x00z"),
            ("x-dup", b"1"),
        ];
        let map = HeaderMapBytes(serialize(&pairs));
        assert_eq!(map.pairs(), pairs.to_vec());
        let bytes: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        assert_eq!(map.byte_pairs(), bytes);
        assert!(HeaderMapBytes(Vec::new()).pairs().is_empty());
        assert!(HeaderMapBytes(Vec::new()).byte_pairs().is_empty());
    }

    #[test]
    fn malformed_maps_never_panic() {
        let good = serialize(&[("a", b"1"), ("b", b"2")]);
        for cut in 0..good.len() {
            let map = HeaderMapBytes(good[..cut].to_vec());
            // What a cut map yields is a prefix of the whole map's pairs.
            let (pairs, whole) = (map.byte_pairs(), [(&b"a"[..], &b"1"[..]), (b"b", b"2")]);
            assert_eq!(pairs[..], whole[..pairs.len()], "cut at {cut}");
            let _ = map.pairs();
        }
        // Lengths far beyond the buffer, and a huge count.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMapBytes(bad).pairs().is_empty());
        let mut bad = good;
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMapBytes(bad).pairs().is_empty());
    }
}
