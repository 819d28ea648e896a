//! A proxy-wasm host on wasmtime that drives a built `.wasm` the way Envoy 1.40 does
//! (its host semantics, listed below), for what real Envoy can't make deterministic:
//! time, randomness, worker races, callouts.
//!
//! ```no_run
//! use std::time::Duration;
//! use host_tests::emulator::{Action, VmConfig, World};
//! let world = World::new(); // clock at 2026-01-01T00:00:00Z, empty shared data/metrics
//! let mut vm = world
//!     .load(&host_tests::paths::wasm("local_ratelimit"), VmConfig::json(&serde_json::json!({})).cluster("jwks"))
//!     .unwrap(); // _initialize, on_context_create(root,0), on_vm_start, on_configure
//! assert!(vm.configured());
//! let s = vm.new_stream(); // on_context_create(ctx, root)
//! vm.set_properties(s, [("source.address", b"10.0.0.1:5678".to_vec())]);
//! let a = vm.request_headers(s, &[(":method", "GET"), (":path", "/"), (":authority", "x")], true).unwrap();
//! if a == Action::Pause { /* vm.local_reply(s), vm.pending_http_calls(), ... */ }
//! vm.response_headers(s, &[(":status", "200")], true).unwrap();
//! vm.finish(s).unwrap(); // on_log, on_done, on_delete
//! world.advance(Duration::from_secs(1));
//! let _ = world.metric("meshwasm.local_ratelimit.rate_limited");
//! ```
//!
//! What it emulates (each point is Envoy's behaviour, tested in `tests/emulator.rs`):
//! - **Call order**: `_initialize`; `on_context_create(root, 0)`; `on_vm_start`;
//!   `on_configure` (plugin configuration, buffer 7, readable *only* inside it; the VM
//!   configuration, buffer 6, any time); per stream `on_context_create(ctx, root)`,
//!   request headers/body/trailers, response headers/body/trailers, then `finish`:
//!   `on_log` (the final request/response header maps readable; a missing one is
//!   NotFound), `on_done`, `on_delete`.
//! - **Memory protocol**: returned buffers are allocated in the guest with
//!   `proxy_on_memory_allocate` (or `malloc`); empty results are `(0, 0)`; maps use the
//!   pairs encoding; property paths are `\0`-joined; out-of-bounds guest pointers give
//!   InvalidMemoryAccess.
//! - **(a)/(b) flow control**: `Pause` on headers stops the direction (body/trailers
//!   that arrive are queued, no callback) until `proxy_continue_stream`; a body
//!   callback's `Pause` buffers (the callback runs again with the accumulated size).
//!   Continue, resume, close and local replies are after-callback actions: they take
//!   effect once the callback returns. A local reply forces a stop whatever the
//!   callback returned, and (when the response had not started) runs through this
//!   filter's own `on_http_response_headers`/`_body` like Envoy's encoder chain;
//!   [`LocalReply`] keeps what the filter passed, [`Vm::response_headers_now`] shows
//!   the reply as sent (`:status`, the filter's headers appended, `content-type:
//!   text/plain` if none and a body, `content-length`; gRPC requests get a
//!   trailers-only 200 with `grpc-status`/`grpc-message`).
//! - **(c) header maps**: request (response) headers are readable/writable during the
//!   headers callback and while that direction is paused; after it continues (by
//!   return value or resume) every access is BadArgument, as are trailers after their
//!   callback. Each request-header mutation counts as a route-cache clear (ABI 0.2.1).
//! - **(d) effective context**: set to the callee at every host→VM entry and reset
//!   after; `proxy_set_effective_context(id)` to a finished/unknown context →
//!   BadArgument. Hostcalls on headers, bodies, properties, local replies and
//!   continue/close follow the effective context; `clear_route_cache` the real one.
//! - **(e) shared data**: exactly §4.1 ([`SharedData`]): one global u32 cas counter
//!   (skips 0), CasMismatch only for an existing key with a different non-zero cas,
//!   absent keys inserted whatever the cas, empty value = "removed" (the key stays,
//!   get → `(None, Some(cas))`), namespaced by `vm_id`. [`World::interleave_after_get`]
//!   injects another worker's write between a VM's get and its set.
//! - **(f) callouts**: `dispatch_http_call` needs a declared cluster
//!   ([`VmConfig::cluster`]) and `:method`, `:path`, `:authority` (or `host`), else
//!   BadArgument; tokens belong to the root: [`Vm::respond_http_call`] delivers
//!   `on_http_call_response(root_context_id, token, nheaders, body_size, ntrailers)`
//!   (the SDK routes it to the dispatching context); the response (map 6/7, buffer 4)
//!   is readable only during that call. [`Vm::fail_http_call`] = reset:
//!   `(token, 0, 0, 0)` and `get_status` → (11, "reset").
//! - **(g)** plugin configuration only in `on_configure` (elsewhere NotFound → `None`).
//! - **(h) properties**: `set_property(path)` writes filter state `wasm.<path>`
//!   (NotFound in a root context); `get_property` resolves, in order: `plugin_name`,
//!   `plugin_root_id`, `plugin_vm_id`; VM-wide properties ([`VmConfig::property`]);
//!   in a stream context only: per-stream properties set by the test (exact path,
//!   raw bytes: [`Vm::set_property`], [`Vm::set_properties`]); `request.*` derived from
//!   the live request headers (`path`, `url_path`, `query`, `host`, `method`, `scheme`,
//!   `id`, `useragent`, `referer`, `headers.<name>` comma-joined), `response.code`
//!   (8-byte LE), `response.headers.<name>`, `filter_state.<key>`; other names under a
//!   CEL token (`request`, `source`, `connection`, `metadata`, ...) are NotFound
//!   (a bare token is SerializationFailure); anything else falls back to filter state
//!   `wasm.<path>`. The root context sees only the plugin/VM-wide properties.
//! - **Metrics** (§5): process-wide by name across the world's VMs
//!   ([`World::metric`]); counter increments ≤ 0 are BadArgument, gauges add/subtract,
//!   `record` adds to counters and sets gauges, histograms record samples; every
//!   `define_metric` allocates a new id ([`Vm::metric_definitions`]).
//! - **Ticks** (§4.4): one timer per root; period 0 disables; the test moves time with
//!   [`World::advance`] and fires due ticks with [`Vm::tick_due`] or
//!   [`World::advance_and_tick`] (stops at each deadline).
//! - **Clock and randomness**: `proxy_get_current_time_nanoseconds` and WASI realtime
//!   read the world clock (starting at [`world::START_UNIX_NANOS`]); WASI monotonic is
//!   the same clock from another origin; `random_get` is SplitMix64 seeded by
//!   [`VmConfig::seed`].
//! - **Struct values**: [`abi::encode_struct`] encodes JSON the way Envoy serializes
//!   a `Struct` (e.g. jwt_authn's `payload_in_metadata`); a filter reading deeper than a
//!   path the test set walks into it (map keys, list indices), as Envoy does.
//! - **Call trace**: [`Vm::calls`] lists every host→VM entry with its arguments.
//! - **Logs**: `proxy_log` and WASI stdout/stderr lines are captured ([`Vm::logs`])
//!   and echoed to stderr (captured by libtest; `MESHWASM_EMU_QUIET=1` silences them).
//! - **WASI**: `environ_*`/`args_*` (empty), `fd_write` (to logs), `proc_exit` (trap),
//!   `random_get`, `clock_time_get`, `clock_res_get`, `sched_yield`.
//! - **Where a filter's wasm operators go**: [`Vm::fuel_used`] counts them;
//!   `MESHWASM_EMULATOR_FUEL_TRACE=1` prints `fuel <used> at <host call>` at every
//!   host call, so differences attribute the work between crossings (a
//!   `glue::log_debug` marker splits a stretch further); for functions,
//!   `MESHWASM_EMULATOR_PERFMAP=1` and `perf record` with an unstripped build.
//!
//! Compiling a module with a debug build of cranelift takes seconds, so compiled
//! modules are cached per process and on disk in `<target>/emulator-cache/` (keyed by
//! the module's bytes; the newest 48 kept): only the first load of a new build pays.
//!
//! Not emulated (documented limits): gRPC streams (`proxy_grpc_stream` returns
//! InternalFailure, which the SDK hands back as `Err`, rather than Unimplemented, which
//! would make the SDK panic; send/cancel/close return NotFound); shared queues store and
//! return data but `on_queue_ready` is only delivered when the test calls
//! [`Vm::queue_ready`]; `proxy_close_stream` is applied after the callback like the
//! other stream actions (Envoy resets at once; nothing observable differs); no CPU
//! limit; any other import traps
//! with a message naming it when called. A trap fails the VM: that call and every later
//! one return `Err` (Envoy would answer 503 with FAIL_CLOSED).

pub mod abi;
mod hostcalls;
pub mod shared;
mod state;
pub mod vm;
pub mod world;

pub use abi::Status;
pub use shared::{MetricKind, SharedData};
pub use state::{Flow, GrpcCall, HttpCall, LocalReply, LogEntry, VmCall};
pub use vm::{Action, StreamId, StreamState, Vm, VmConfig};
pub use world::World;

/// Paths of emulator-specific artifacts.
pub mod paths {
    use std::path::PathBuf;

    /// The test-only `probe` module: `<target>/wasm32-wasip1/release/probe.wasm`
    /// (`cargo build --release --target wasm32-wasip1 -p probe`; `make test` does it).
    pub fn probe_wasm() -> PathBuf {
        crate::paths::target_dir()
            .join("wasm32-wasip1")
            .join("release")
            .join("probe.wasm")
    }
}
