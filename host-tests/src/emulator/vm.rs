//! [`Vm`]: one module instance (one Envoy worker's VM with one plugin root context),
//! driven through Envoy's call order, with the after-callback semantics of §8.2.

use anyhow::{bail, Context as _};
use wasmtime::{Func, Instance, Module, Store, Val};

use super::abi::{stream_type, Guest, HeaderMap, Status};
use super::hostcalls;
use super::state::{
    CallResponse, Deferred, Flow, GrpcCall, Host, HttpCall, LocalReply, LogEntry, Stream, VmCall,
};
use super::world::World;

/// How a VM is configured, as Envoy's `PluginConfig` + `VmConfig` would.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// `PluginConfig.configuration` bytes (a `StringValue`'s text, e.g. JSON); readable
    /// only inside `on_configure`. Empty = none.
    pub plugin_config: Vec<u8>,
    /// `VmConfig.configuration`, readable any time.
    pub vm_config: Option<Vec<u8>>,
    /// Seeds WASI `random_get`.
    pub seed: u64,
    /// Clusters that exist for `dispatch_http_call` (others → BadArgument).
    pub clusters: Vec<String>,
    /// `VmConfig.vm_id`: the shared-data / queue namespace (Istio leaves it `""`).
    pub vm_id: String,
    /// `plugin_name` / `plugin_root_id` properties.
    pub plugin_name: String,
    pub root_id: String,
    /// What `proxy_get_log_level` answers (2 = info, Envoy's default). Every log is
    /// captured whatever the level.
    pub log_level: u32,
    /// VM-wide properties (readable from root and stream contexts), e.g.
    /// `["xds","node","id"]`.
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            plugin_config: Vec::new(),
            vm_config: None,
            seed: 1,
            clusters: Vec::new(),
            vm_id: String::new(),
            plugin_name: "meshwasm".to_string(),
            root_id: String::new(),
            log_level: 2,
            properties: Vec::new(),
        }
    }
}

impl VmConfig {
    /// A config whose plugin configuration is `plugin_config`.
    pub fn new(plugin_config: impl Into<Vec<u8>>) -> VmConfig {
        VmConfig {
            plugin_config: plugin_config.into(),
            ..VmConfig::default()
        }
    }

    /// A config whose plugin configuration is this JSON, as Istio delivers it.
    pub fn json(plugin_config: &serde_json::Value) -> VmConfig {
        VmConfig::new(plugin_config.to_string())
    }

    pub fn seed(mut self, seed: u64) -> VmConfig {
        self.seed = seed;
        self
    }

    /// Declares a cluster that `dispatch_http_call` may target.
    pub fn cluster(mut self, name: &str) -> VmConfig {
        self.clusters.push(name.to_string());
        self
    }

    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> VmConfig {
        self.vm_config = Some(bytes.into());
        self
    }

    pub fn vm_id(mut self, vm_id: &str) -> VmConfig {
        self.vm_id = vm_id.to_string();
        self
    }

    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> VmConfig {
        self.properties
            .push((path.iter().map(|s| s.to_string()).collect(), value.into()));
        self
    }
}

/// Fuel a VM starts with (and gets back at `reset_hostcalls`): never runs out.
pub(crate) const FUEL: u64 = u64::MAX / 4;

/// A stream (HTTP context) of a [`Vm`]; its value is the context id Envoy gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// What the host does after a callback (Envoy's view, not just the raw return value):
/// a local reply forces `Pause` whatever the filter returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// A stream as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    pub request: Flow,
    pub response: Flow,
    pub local_reply: Option<LocalReply>,
    /// `proxy_close_stream` was called (Envoy resets the stream).
    pub reset: bool,
    /// `finish` ran (on_log, on_done, on_delete): the context is gone.
    pub finished: bool,
    /// Route-cache clears: every request-header mutation (ABI 0.2.1) and every
    /// `clear_route_cache` foreign call.
    pub route_cache_clears: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Req,
    Resp,
}

/// One loaded module: an Envoy worker's VM with its plugin's root context.
pub struct Vm {
    store: Store<Host>,
    instance: Instance,
    world: World,
    configured: bool,
    failed: Option<String>,
}

fn to_map(headers: &[(&str, &str)]) -> HeaderMap {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

fn text_map(m: &HeaderMap) -> Vec<(String, String)> {
    m.iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn values(m: &HeaderMap, name: &str) -> Vec<String> {
    let name = name.to_ascii_lowercase();
    m.iter()
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc(status: u32) -> i32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The response Envoy's `sendLocalReply` builds (`prepareLocalReply`): `:status`, the
/// filter's headers appended, `content-type: text/plain` if none and a body,
/// `content-length`; no body → no content-type/length. gRPC requests get a
/// trailers-only 200 with `grpc-status` (given, else mapped from the HTTP status) and
/// the body percent-encoded in `grpc-message`.
fn reply_message(reply: &LocalReply, grpc: bool) -> (HeaderMap, Vec<u8>) {
    let mut headers: HeaderMap = Vec::new();
    let mut body = reply.body.clone();
    let extra = reply
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()));
    if grpc {
        let code = reply
            .grpc_status
            .filter(|c| (0..=16).contains(c))
            .unwrap_or_else(|| http_to_grpc(reply.status));
        headers.push((":status".into(), b"200".to_vec()));
        headers.push(("content-type".into(), b"application/grpc".to_vec()));
        headers.push(("grpc-status".into(), code.to_string().into_bytes()));
        if !body.is_empty() {
            headers.push(("grpc-message".into(), percent_encode(&body).into_bytes()));
        }
        headers.extend(extra);
        body.clear();
    } else {
        headers.push((":status".into(), reply.status.to_string().into_bytes()));
        headers.extend(extra);
        if body.is_empty() {
            headers.retain(|(k, _)| k != "content-length" && k != "content-type");
        } else {
            if !headers.iter().any(|(k, _)| k == "content-type") {
                headers.push(("content-type".into(), b"text/plain".to_vec()));
            }
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
    }
    (headers, body)
}

fn percent_encode(body: &[u8]) -> String {
    let mut out = String::new();
    for b in body {
        if (b' '..=b'~').contains(b) && *b != b'%' {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Vm {
    pub(crate) fn start(
        world: World,
        engine: &wasmtime::Engine,
        module: Module,
        cfg: VmConfig,
    ) -> anyhow::Result<Vm> {
        let mut store = Store::new(engine, Host::new(world.clone(), cfg));
        store.set_fuel(FUEL)?;
        let linker = hostcalls::linker(&mut store, &module)?;
        let instance = linker
            .instantiate(&mut store, &module)
            .context("instantiating the module")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .context("the module exports no `memory`")?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .context("the module exports neither proxy_on_memory_allocate nor malloc")?;
        if instance
            .get_func(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
            && instance
                .get_func(&mut store, "proxy_abi_version_0_2_0")
                .is_none()
        {
            bail!("the module exports no proxy_abi_version_0_2_x (not a proxy-wasm module?)");
        }
        store.data_mut().guest = Some(Guest { memory, alloc });
        let mut vm = Vm {
            store,
            instance,
            world,
            configured: false,
            failed: None,
        };
        let root = vm.store.data().root_id as i32;
        vm.call(0, "_initialize", &[])?;
        vm.call(0, "proxy_on_context_create", &[Val::I32(root), Val::I32(0)])?;
        let vm_len = vm.store.data().cfg.vm_config.as_ref().map_or(0, Vec::len) as i32;
        let started = vm.call(
            root as u32,
            "proxy_on_vm_start",
            &[Val::I32(root), Val::I32(vm_len)],
        )?;
        let plugin_len = vm.store.data().cfg.plugin_config.len() as i32;
        vm.store.data_mut().in_configure = true;
        let configured = vm.call(
            root as u32,
            "proxy_on_configure",
            &[Val::I32(root), Val::I32(plugin_len)],
        );
        vm.store.data_mut().in_configure = false;
        vm.configured = started.is_none_or(|r| r != 0) && configured?.is_none_or(|r| r != 0);
        vm.store.data_mut().deferred.clear();
        Ok(vm)
    }

    /// One host→VM entry: the current and effective context are `ctx` for its whole
    /// duration and reset afterwards. A missing export is a no-op (`None`).
    fn call(&mut self, ctx: u32, name: &str, args: &[Val]) -> anyhow::Result<Option<i64>> {
        if let Some(f) = &self.failed {
            bail!("the VM failed earlier: {f}");
        }
        let Some(func): Option<Func> = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let n = func.ty(&self.store).results().len();
        let mut results = vec![Val::I32(0); n];
        {
            let h = self.store.data_mut();
            h.calls.push(VmCall {
                name: name.to_string(),
                args: args
                    .iter()
                    .map(|a| a.i32().map_or(0, |x| x as u32 as i64))
                    .collect(),
            });
            h.current = ctx;
            h.effective = ctx;
        }
        let r = func.call(&mut self.store, args, &mut results);
        {
            let h = self.store.data_mut();
            h.current = 0;
            h.effective = 0;
        }
        match r {
            Ok(()) => Ok(results.first().map(|v| match v {
                Val::I32(x) => *x as u32 as i64,
                Val::I64(x) => *x,
                _ => 0,
            })),
            Err(e) => {
                let last: Vec<&str> = self
                    .store
                    .data()
                    .logs
                    .iter()
                    .rev()
                    .take(3)
                    .map(|l| l.message.as_str())
                    .collect();
                let msg = format!("{name}(ctx {ctx}) trapped: {e:#}; last logs: {last:?}");
                self.failed = Some(msg.clone());
                bail!(msg)
            }
        }
    }

    /// Whether `on_vm_start` and `on_configure` both returned true (false = Envoy
    /// would refuse the configuration).
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// The trap that failed this VM, if any (every later call then fails too).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_id
    }

    fn host(&self) -> &Host {
        self.store.data()
    }

    fn stream(&self, s: StreamId) -> &Stream {
        match self.host().streams.get(&s.0) {
            Some(st) => st,
            None => panic!("no stream {s:?} in this VM"),
        }
    }

    fn stream_mut(&mut self, s: StreamId) -> &mut Stream {
        match self.store.data_mut().streams.get_mut(&s.0) {
            Some(st) => st,
            None => panic!("no stream {s:?} in this VM"),
        }
    }

    fn dir_mut(&mut self, s: StreamId, dir: Dir) -> &mut super::state::Direction {
        let st = self.stream_mut(s);
        match dir {
            Dir::Req => &mut st.req,
            Dir::Resp => &mut st.resp,
        }
    }

    fn dir(&self, s: StreamId, dir: Dir) -> &super::state::Direction {
        let st = self.stream(s);
        match dir {
            Dir::Req => &st.req,
            Dir::Resp => &st.resp,
        }
    }

    /// A new HTTP stream: `on_context_create(ctx, root)`. Panics if the module traps
    /// (see [`Vm::try_new_stream`]).
    pub fn new_stream(&mut self) -> StreamId {
        match self.try_new_stream() {
            Ok(s) => s,
            Err(e) => panic!("on_context_create: {e:#}"),
        }
    }

    /// [`Vm::new_stream`] returning the trap as an error.
    pub fn try_new_stream(&mut self) -> anyhow::Result<StreamId> {
        let h = self.store.data_mut();
        let id = h.next_context_id;
        h.next_context_id += 1;
        h.streams.insert(
            id,
            Stream {
                alive: true,
                ..Stream::default()
            },
        );
        let root = h.root_id as i32;
        self.call(
            id,
            "proxy_on_context_create",
            &[Val::I32(id as i32), Val::I32(root)],
        )?;
        Ok(StreamId(id))
    }

    /// Sets a per-stream property by its exact path segments, e.g.
    /// `&["metadata","filter_metadata","envoy.filters.http.jwt_authn","payload"]`.
    /// Values are raw bytes in Envoy's encoding (reference §1.2): strings as is, ints
    /// as 8-byte LE, maps in the pairs encoding.
    pub fn set_property(&mut self, s: StreamId, path: &[&str], value: impl Into<Vec<u8>>) {
        let path = path.iter().map(|p| p.to_string()).collect();
        self.stream_mut(s).props.insert(path, value.into());
    }

    /// Sets several properties by dotted path (`"source.address"`,
    /// `"connection.uri_san_peer_certificate"`); segments that contain dots need
    /// [`Vm::set_property`].
    pub fn set_properties<'a>(
        &mut self,
        s: StreamId,
        items: impl IntoIterator<Item = (&'a str, Vec<u8>)>,
    ) {
        for (path, value) in items {
            let segs: Vec<&str> = path.split('.').collect();
            self.set_property(s, &segs, value);
        }
    }

    /// Filter state written by `set_property(vec![key], ..)` (stored as `wasm.<key>`);
    /// `key` may be given with or without the `wasm.` prefix.
    pub fn filter_state(&self, s: StreamId, key: &str) -> Option<Vec<u8>> {
        let fs = &self.stream(s).filter_state;
        fs.get(&format!("wasm.{key}"))
            .or_else(|| fs.get(key))
            .cloned()
    }

    /// Writes filter state as an earlier wasm filter's `set_property(vec![key], value)`
    /// would (key `wasm.<key>`).
    pub fn set_filter_state(&mut self, s: StreamId, key: &str, value: impl Into<Vec<u8>>) {
        self.stream_mut(s)
            .filter_state
            .insert(format!("wasm.{key}"), value.into());
    }

    /// Every filter-state entry of the stream, by full key.
    pub fn filter_states(&self, s: StreamId) -> std::collections::BTreeMap<String, Vec<u8>> {
        self.stream(s).filter_state.clone()
    }

    fn has_pending_local_reply(&self, id: u32) -> bool {
        self.host()
            .deferred
            .iter()
            .any(|d| matches!(d, Deferred::LocalReply(i, _) if *i == id))
    }

    fn action(&self, s: StreamId, dir: Dir) -> Action {
        match self.dir(s, dir).flow {
            Flow::Continued => Action::Continue,
            _ => Action::Pause,
        }
    }

    fn check_stream(&self, s: StreamId) -> anyhow::Result<()> {
        let st = self.stream(s);
        if !st.alive {
            bail!("stream {s:?} is finished");
        }
        Ok(())
    }

    /// `on_http_request_headers`. Returns what Envoy does next: `Continue`, or `Pause`
    /// (the filter paused, or answered with a local reply: see [`Vm::local_reply`]).
    pub fn request_headers(
        &mut self,
        s: StreamId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        self.headers(s, Dir::Req, to_map(headers), end_of_stream)
    }

    /// [`Vm::request_headers`] with byte values.
    pub fn request_headers_bytes(
        &mut self,
        s: StreamId,
        headers: HeaderMap,
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        self.headers(s, Dir::Req, headers, end_of_stream)
    }

    /// `on_http_response_headers` (the upstream's response).
    pub fn response_headers(
        &mut self,
        s: StreamId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        self.headers(s, Dir::Resp, to_map(headers), end_of_stream)
    }

    fn headers(
        &mut self,
        s: StreamId,
        dir: Dir,
        map: HeaderMap,
        eos: bool,
    ) -> anyhow::Result<Action> {
        self.check_stream(s)?;
        if self.stream(s).local_reply.is_some() {
            bail!("stream {s:?} was answered by a local reply");
        }
        if self.dir(s, dir).flow != Flow::NotStarted {
            bail!("headers delivered twice on stream {s:?}");
        }
        let n = map.len() as i32;
        {
            let d = self.dir_mut(s, dir);
            d.headers = map;
            d.headers_received = true;
            d.headers_live = true;
            // Started: a local reply sent from this callback must see that.
            d.flow = Flow::Paused;
        }
        let name = if dir == Dir::Req {
            "proxy_on_request_headers"
        } else {
            "proxy_on_response_headers"
        };
        let ret = self.call(
            s.0,
            name,
            &[Val::I32(s.0 as i32), Val::I32(n), Val::I32(eos as i32)],
        )?;
        if !self.has_pending_local_reply(s.0) {
            let d = self.dir_mut(s, dir);
            if ret.unwrap_or(0) == 0 {
                d.flow = Flow::Continued;
                d.headers_live = false;
            } else {
                d.flow = Flow::Paused;
            }
        }
        self.run_deferred()?;
        Ok(self.action(s, dir))
    }

    /// A request body chunk. While the headers are paused it is queued (no callback,
    /// like StopAllIteration) and delivered on resume; otherwise `on_http_request_body`
    /// runs with the accumulated buffered size.
    pub fn request_body(
        &mut self,
        s: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        self.body(s, Dir::Req, chunk, end_of_stream)
    }

    pub fn response_body(
        &mut self,
        s: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> anyhow::Result<Action> {
        self.body(s, Dir::Resp, chunk, end_of_stream)
    }

    fn body(&mut self, s: StreamId, dir: Dir, chunk: &[u8], eos: bool) -> anyhow::Result<Action> {
        self.check_stream(s)?;
        match self.dir(s, dir).flow {
            Flow::NotStarted => bail!("body before headers on stream {s:?}"),
            Flow::Paused => {
                let d = self.dir_mut(s, dir);
                let q = d.queued_body.get_or_insert_with(|| (Vec::new(), false));
                q.0.extend_from_slice(chunk);
                q.1 = eos;
                Ok(Action::Pause)
            }
            Flow::Stopped => Ok(Action::Pause),
            Flow::Continued | Flow::Buffering => self.deliver_body(s, dir, chunk, eos),
        }
    }

    fn deliver_body(
        &mut self,
        s: StreamId,
        dir: Dir,
        chunk: &[u8],
        eos: bool,
    ) -> anyhow::Result<Action> {
        let n = {
            let d = self.dir_mut(s, dir);
            d.body_buf.extend_from_slice(chunk);
            d.body_visible = true;
            d.body_buf.len() as i32
        };
        let name = if dir == Dir::Req {
            "proxy_on_request_body"
        } else {
            "proxy_on_response_body"
        };
        let ret = self.call(
            s.0,
            name,
            &[Val::I32(s.0 as i32), Val::I32(n), Val::I32(eos as i32)],
        )?;
        if !self.has_pending_local_reply(s.0) {
            let d = self.dir_mut(s, dir);
            if ret.unwrap_or(0) == 0 {
                let buf = std::mem::take(&mut d.body_buf);
                d.forwarded_body.extend_from_slice(&buf);
                d.body_visible = false;
                d.flow = Flow::Continued;
            } else {
                d.flow = Flow::Buffering;
            }
        }
        self.run_deferred()?;
        Ok(self.action(s, dir))
    }

    /// Request trailers (queued while the headers are paused).
    pub fn request_trailers(
        &mut self,
        s: StreamId,
        trailers: &[(&str, &str)],
    ) -> anyhow::Result<Action> {
        self.trailers(s, Dir::Req, to_map(trailers))
    }

    pub fn response_trailers(
        &mut self,
        s: StreamId,
        trailers: &[(&str, &str)],
    ) -> anyhow::Result<Action> {
        self.trailers(s, Dir::Resp, to_map(trailers))
    }

    fn trailers(&mut self, s: StreamId, dir: Dir, map: HeaderMap) -> anyhow::Result<Action> {
        self.check_stream(s)?;
        match self.dir(s, dir).flow {
            Flow::NotStarted => bail!("trailers before headers on stream {s:?}"),
            Flow::Paused => {
                self.dir_mut(s, dir).queued_trailers = Some(map);
                Ok(Action::Pause)
            }
            Flow::Stopped => Ok(Action::Pause),
            Flow::Continued | Flow::Buffering => self.deliver_trailers(s, dir, map),
        }
    }

    fn deliver_trailers(
        &mut self,
        s: StreamId,
        dir: Dir,
        map: HeaderMap,
    ) -> anyhow::Result<Action> {
        let n = map.len() as i32;
        {
            let d = self.dir_mut(s, dir);
            d.trailers = Some(map);
            d.trailers_live = true;
        }
        let name = if dir == Dir::Req {
            "proxy_on_request_trailers"
        } else {
            "proxy_on_response_trailers"
        };
        let ret = self.call(s.0, name, &[Val::I32(s.0 as i32), Val::I32(n)])?;
        if !self.has_pending_local_reply(s.0) {
            let d = self.dir_mut(s, dir);
            if ret.unwrap_or(0) == 0 {
                d.trailers_live = false;
                let buf = std::mem::take(&mut d.body_buf);
                d.forwarded_body.extend_from_slice(&buf);
                d.body_visible = false;
                d.flow = Flow::Continued;
            } else {
                d.flow = Flow::Paused;
            }
        }
        self.run_deferred()?;
        Ok(self.action(s, dir))
    }

    /// Applies after-VM-call actions until none are left (they can cause callbacks).
    fn run_deferred(&mut self) -> anyhow::Result<()> {
        loop {
            let actions = std::mem::take(&mut self.store.data_mut().deferred);
            if actions.is_empty() {
                return Ok(());
            }
            for a in actions {
                match a {
                    Deferred::Continue(id, t) => {
                        let dir = if t == stream_type::HTTP_REQUEST {
                            Dir::Req
                        } else {
                            Dir::Resp
                        };
                        self.resume(StreamId(id), dir)?;
                    }
                    Deferred::Close(id) => {
                        if let Some(st) = self.store.data_mut().streams.get_mut(&id) {
                            st.reset = true;
                            for d in [&mut st.req, &mut st.resp] {
                                d.flow = Flow::Stopped;
                                d.headers_live = false;
                                d.trailers_live = false;
                            }
                        }
                    }
                    Deferred::LocalReply(id, reply) => {
                        self.apply_local_reply(StreamId(id), reply)?
                    }
                }
            }
        }
    }

    /// `continueDecoding()`/`continueEncoding()`: a paused direction flows again (its
    /// headers map is gone from then on) and what was queued meanwhile is delivered.
    fn resume(&mut self, s: StreamId, dir: Dir) -> anyhow::Result<()> {
        if !self.stream(s).alive {
            return Ok(());
        }
        match self.dir(s, dir).flow {
            Flow::Paused => {
                let (body, trailers) = {
                    let d = self.dir_mut(s, dir);
                    d.flow = Flow::Continued;
                    d.headers_live = false;
                    d.trailers_live = false;
                    (d.queued_body.take(), d.queued_trailers.take())
                };
                if let Some((body, eos)) = body {
                    self.deliver_body(s, dir, &body, eos)?;
                }
                if let Some(t) = trailers {
                    match self.dir(s, dir).flow {
                        Flow::Continued | Flow::Buffering => {
                            self.deliver_trailers(s, dir, t)?;
                        }
                        _ => self.dir_mut(s, dir).queued_trailers = Some(t),
                    }
                }
            }
            Flow::Buffering => {
                let d = self.dir_mut(s, dir);
                let buf = std::mem::take(&mut d.body_buf);
                d.forwarded_body.extend_from_slice(&buf);
                d.body_visible = false;
                d.flow = Flow::Continued;
            }
            _ => {}
        }
        Ok(())
    }

    /// Envoy's `sendLocalReply`: the request stops; if the response has not started,
    /// the reply goes through this filter's encoder callbacks like any response
    /// (`on_http_response_headers`/`_body` run for it, reference §6.1).
    fn apply_local_reply(&mut self, s: StreamId, reply: LocalReply) -> anyhow::Result<()> {
        if !self.stream(s).alive || self.stream(s).local_reply.is_some() {
            // Envoy sends one local reply per stream; a second request is ignored.
            return Ok(());
        }
        let grpc = values(&self.stream(s).req.headers, "content-type")
            .first()
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        let response_started = self.stream(s).resp.flow != Flow::NotStarted;
        {
            let st = self.stream_mut(s);
            st.local_reply = Some(reply.clone());
            st.req.flow = Flow::Stopped;
            st.req.headers_live = false;
            st.req.trailers_live = false;
            st.req.queued_body = None;
            st.req.queued_trailers = None;
        }
        let (headers, body) = reply_message(&reply, grpc);
        if response_started {
            let st = self.stream_mut(s);
            if st.resp.flow == Flow::Continued {
                // The response headers are already downstream: Envoy resets the stream.
                st.reset = true;
            } else {
                // From a response callback before the headers went downstream: Envoy
                // sends the reply directly, without running the encoder filters again.
                st.resp.headers = headers;
                st.resp.headers_live = false;
                st.resp.body_buf.clear();
                st.resp.body_visible = false;
                st.resp.forwarded_body = body;
            }
            st.resp.flow = Flow::Stopped;
            return Ok(());
        }
        let eos = body.is_empty();
        self.headers_for_local_reply(s, headers, eos)?;
        if !body.is_empty() && self.stream(s).resp.flow == Flow::Continued {
            self.deliver_body(s, Dir::Resp, &body, true)?;
        }
        let st = self.stream_mut(s);
        if st.resp.flow != Flow::Continued {
            // The filter paused its own local reply; Envoy would wait, we just record it.
            st.resp.flow = Flow::Stopped;
        }
        if !st.resp.body_buf.is_empty() {
            let buf = std::mem::take(&mut st.resp.body_buf);
            st.resp.forwarded_body.extend_from_slice(&buf);
        }
        Ok(())
    }

    fn headers_for_local_reply(
        &mut self,
        s: StreamId,
        map: HeaderMap,
        eos: bool,
    ) -> anyhow::Result<()> {
        let n = map.len() as i32;
        {
            let d = self.dir_mut(s, Dir::Resp);
            d.headers = map;
            d.headers_received = true;
            d.headers_live = true;
        }
        let ret = self.call(
            s.0,
            "proxy_on_response_headers",
            &[Val::I32(s.0 as i32), Val::I32(n), Val::I32(eos as i32)],
        )?;
        let d = self.dir_mut(s, Dir::Resp);
        if ret.unwrap_or(0) == 0 {
            d.flow = Flow::Continued;
            d.headers_live = false;
        } else {
            d.flow = Flow::Paused;
        }
        // A second local reply from inside the encoder pass is ignored, like Envoy's
        // guard against recursive local replies.
        self.store
            .data_mut()
            .deferred
            .retain(|a| !matches!(a, Deferred::LocalReply(i, _) if *i == s.0));
        Ok(())
    }

    /// End of stream: `on_log` (with the final request/response maps readable), then
    /// `on_done` and `on_delete`. The context is gone afterwards
    /// (`set_effective_context` to it → BadArgument), but its state stays inspectable.
    pub fn finish(&mut self, s: StreamId) -> anyhow::Result<()> {
        self.check_stream(s)?;
        let id = Val::I32(s.0 as i32);
        self.store.data_mut().in_log = true;
        let r = self.call(s.0, "proxy_on_log", &[id]);
        self.store.data_mut().in_log = false;
        r?;
        self.call(s.0, "proxy_on_done", &[id])?;
        self.call(s.0, "proxy_on_delete", &[id])?;
        self.stream_mut(s).alive = false;
        self.store.data_mut().deferred.clear();
        Ok(())
    }

    /// The host's view of a stream.
    pub fn stream_state(&self, s: StreamId) -> StreamState {
        let st = self.stream(s);
        StreamState {
            request: st.req.flow,
            response: st.resp.flow,
            local_reply: st.local_reply.clone(),
            reset: st.reset,
            finished: !st.alive,
            route_cache_clears: st.route_cache_clears,
        }
    }

    /// The local reply the filter sent on this stream, if any.
    pub fn local_reply(&self, s: StreamId) -> Option<LocalReply> {
        self.stream(s).local_reply.clone()
    }

    /// The request headers after the filter's changes (what would go upstream).
    pub fn request_headers_now(&self, s: StreamId) -> Vec<(String, String)> {
        text_map(&self.stream(s).req.headers)
    }

    /// The first value of a request header now (after the filter's changes).
    pub fn request_header(&self, s: StreamId, name: &str) -> Option<String> {
        values(&self.stream(s).req.headers, name).into_iter().next()
    }

    /// Every value of a request header now, in order.
    pub fn request_header_values(&self, s: StreamId, name: &str) -> Vec<String> {
        values(&self.stream(s).req.headers, name)
    }

    /// The response headers after the filter's changes (what goes downstream); for a
    /// local reply, the reply's headers as Envoy builds them.
    pub fn response_headers_now(&self, s: StreamId) -> Vec<(String, String)> {
        text_map(&self.stream(s).resp.headers)
    }

    pub fn response_header(&self, s: StreamId, name: &str) -> Option<String> {
        values(&self.stream(s).resp.headers, name)
            .into_iter()
            .next()
    }

    pub fn response_header_values(&self, s: StreamId, name: &str) -> Vec<String> {
        values(&self.stream(s).resp.headers, name)
    }

    /// The request body that passed the filter (went upstream).
    pub fn request_body_now(&self, s: StreamId) -> Vec<u8> {
        self.stream(s).req.forwarded_body.clone()
    }

    /// The response body that passed the filter (went downstream).
    pub fn response_body_now(&self, s: StreamId) -> Vec<u8> {
        self.stream(s).resp.forwarded_body.clone()
    }

    /// Request trailers after the filter's changes.
    pub fn request_trailers_now(&self, s: StreamId) -> Option<Vec<(String, String)>> {
        self.stream(s).req.trailers.as_ref().map(text_map)
    }

    // ---- timers ----

    /// The root's tick period (`None` = no timer).
    pub fn tick_period(&self) -> Option<std::time::Duration> {
        self.host().tick_period
    }

    /// When (world-elapsed) the next tick is due.
    pub fn next_tick_at(&self) -> Option<std::time::Duration> {
        self.host().next_tick_at
    }

    /// Fires `on_tick` once if the timer is due at the current world time (re-armed
    /// for now + period first, as the handler's own time is 0 here). Returns whether
    /// it fired.
    pub fn tick_due(&mut self) -> anyhow::Result<bool> {
        let now = self.world.elapsed();
        let h = self.store.data_mut();
        match (h.next_tick_at, h.tick_period) {
            (Some(at), Some(period)) if at <= now => {
                h.next_tick_at = Some(now + period);
                let root = h.root_id;
                self.call(root, "proxy_on_tick", &[Val::I32(root as i32)])?;
                self.run_deferred()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    // ---- HTTP callouts ----

    /// Callouts dispatched and not answered yet, by token.
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.host().http_calls.values().cloned().collect()
    }

    /// Answers a callout: `on_http_call_response(root_context_id, token, …)` with the
    /// response readable (map 6/7, buffer 4) only during that call.
    pub fn respond_http_call(
        &mut self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        self.respond_http_call_full(token, to_map(headers), body.to_vec(), Vec::new())
    }

    pub fn respond_http_call_full(
        &mut self,
        token: u32,
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: HeaderMap,
    ) -> anyhow::Result<()> {
        if self.store.data_mut().http_calls.remove(&token).is_none() {
            bail!("no pending http call with token {token}");
        }
        let args = [
            headers.len() as i32,
            body.len() as i32,
            trailers.len() as i32,
        ];
        let h = self.store.data_mut();
        h.status = (0, Vec::new());
        h.call_response = Some(CallResponse {
            headers,
            body,
            trailers,
        });
        self.deliver_call_response(token, args)
    }

    /// A callout that failed (reset / buffer limit): `on_http_call_response(root,
    /// token, 0, 0, 0)` with `get_status` → (BrokenConnection, "reset"). Timeouts and
    /// connect failures are ordinary 504/503 responses in Envoy: answer those with
    /// [`Vm::respond_http_call`].
    pub fn fail_http_call(&mut self, token: u32) -> anyhow::Result<()> {
        if self.store.data_mut().http_calls.remove(&token).is_none() {
            bail!("no pending http call with token {token}");
        }
        let h = self.store.data_mut();
        h.status = (Status::BrokenConnection as u32, b"reset".to_vec());
        h.call_response = None;
        self.deliver_call_response(token, [0, 0, 0])
    }

    fn deliver_call_response(&mut self, token: u32, args: [i32; 3]) -> anyhow::Result<()> {
        let root = self.store.data().root_id;
        let r = self.call(
            root,
            "proxy_on_http_call_response",
            &[
                Val::I32(root as i32),
                Val::I32(token as i32),
                Val::I32(args[0]),
                Val::I32(args[1]),
                Val::I32(args[2]),
            ],
        );
        self.store.data_mut().call_response = None;
        r?;
        self.run_deferred()
    }

    // ---- gRPC calls (unary) ----

    /// gRPC calls dispatched and not answered yet, by token.
    pub fn pending_grpc_calls(&self) -> Vec<GrpcCall> {
        self.host().grpc_calls.values().cloned().collect()
    }

    /// Answers a gRPC call with a message: `on_grpc_receive(root, token, size)`,
    /// the message readable (buffer 5) only during that call.
    pub fn respond_grpc_call(&mut self, token: u32, message: &[u8]) -> anyhow::Result<()> {
        if self.store.data_mut().grpc_calls.remove(&token).is_none() {
            bail!("no pending gRPC call with token {token}");
        }
        self.deliver_grpc(token, Some(message.to_vec()), message.len() as i32)
    }

    /// Ends a gRPC call with a status and no message: `on_grpc_close(root,
    /// token, status)` (a failure, a timeout: DEADLINE_EXCEEDED is 4).
    pub fn close_grpc_call(&mut self, token: u32, status: u32) -> anyhow::Result<()> {
        if self.store.data_mut().grpc_calls.remove(&token).is_none() {
            bail!("no pending gRPC call with token {token}");
        }
        self.deliver_grpc(token, None, status as i32)
    }

    /// Delivers an answer for `token` whether or not the module dispatched it
    /// (a stale or foreign token, as a host that mixes them up would).
    pub fn deliver_grpc_message(&mut self, token: u32, message: &[u8]) -> anyhow::Result<()> {
        self.deliver_grpc(token, Some(message.to_vec()), message.len() as i32)
    }

    fn deliver_grpc(
        &mut self,
        token: u32,
        message: Option<Vec<u8>>,
        arg: i32,
    ) -> anyhow::Result<()> {
        let root = self.store.data().root_id;
        let callback = if message.is_some() {
            "proxy_on_grpc_receive"
        } else {
            "proxy_on_grpc_close"
        };
        self.store.data_mut().grpc_message = message;
        let r = self.call(
            root,
            callback,
            &[Val::I32(root as i32), Val::I32(token as i32), Val::I32(arg)],
        );
        self.store.data_mut().grpc_message = None;
        r?;
        self.run_deferred()
    }

    /// Delivers `on_queue_ready(root, queue_id)` (never sent automatically).
    pub fn queue_ready(&mut self, queue_id: u32) -> anyhow::Result<()> {
        let root = self.store.data().root_id;
        self.call(
            root,
            "proxy_on_queue_ready",
            &[Val::I32(root as i32), Val::I32(queue_id as i32)],
        )?;
        self.run_deferred()
    }

    // ---- logs and metrics ----

    /// Every log line so far (`proxy_log` and WASI stdout/stderr lines).
    pub fn logs(&self) -> &[LogEntry] {
        &self.host().logs
    }

    /// All log messages joined by newlines.
    pub fn log_text(&self) -> String {
        self.host()
            .logs
            .iter()
            .map(|l| l.message.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn clear_logs(&mut self) {
        self.store.data_mut().logs.clear();
    }

    /// Every host→VM entry so far (export name and arguments), in order: Envoy's call
    /// order made visible.
    pub fn calls(&self) -> &[VmCall] {
        &self.host().calls
    }

    /// Calls per import name (and `proxy_on_memory_allocate`) since the last
    /// `reset_hostcalls`.
    pub fn hostcalls(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.host().hostcalls
    }

    pub fn reset_hostcalls(&mut self) {
        self.store.data_mut().hostcalls.clear();
        let _ = self.store.set_fuel(FUEL);
    }

    /// Wasm operators executed since the VM started or `reset_hostcalls` (wasmtime
    /// fuel): the filter's own compute, deterministic where time is not.
    pub fn fuel_used(&self) -> u64 {
        FUEL.saturating_sub(self.store.get_fuel().unwrap_or(FUEL))
    }

    /// How many `define_metric` calls this VM made (Envoy allocates per call: a
    /// filter should define once).
    pub fn metric_definitions(&self) -> usize {
        self.host().metric_ids.len()
    }
}
