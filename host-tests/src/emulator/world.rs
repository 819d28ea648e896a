//! [`World`]: what the VMs of one Envoy process share — the clock, shared data, queues,
//! metrics, the wasmtime engine and compiled modules.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Engine, Module};

use super::abi::Status;
use super::shared::{Metrics, Queues, SharedData};
use super::vm::{Vm, VmConfig};

/// Where the realtime clock starts: 2026-01-01T00:00:00Z.
pub const START_UNIX_NANOS: u64 = 1_767_225_600 * 1_000_000_000;
/// Where the monotonic clock starts (any fixed non-zero value).
pub const START_MONOTONIC_NANOS: u64 = 1_000_000_000_000;

type GetHook = Box<dyn FnOnce(&mut SharedData) + Send>;

pub(crate) struct WorldState {
    pub elapsed: Duration,
    pub shared: SharedData,
    pub queues: Queues,
    pub metrics: Metrics,
    /// `key → hooks` run right after a guest's next `get_shared_data(key)`.
    pub after_get: HashMap<String, Vec<GetHook>>,
}

/// One engine and compiled-module cache per process, backed by a disk cache in
/// `<target>/emulator-cache/`: compiling with a debug build of cranelift is the slow
/// part (seconds per module), and every test binary loads the same few modules.
/// Keyed by the module's bytes and the engine's compatibility hash.
fn compiled(wasm: &Path) -> anyhow::Result<(Engine, Module)> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    type Slot = Arc<Mutex<Option<Module>>>;
    static CACHE: OnceLock<(Engine, Mutex<HashMap<u64, Slot>>)> = OnceLock::new();
    let (engine, modules) = CACHE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        // Tests run short; compile time dominates, so skip cranelift's optimizations.
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        // Fuel counts the wasm operators a VM executes: the deterministic measure of
        // a filter's own compute (`Vm::fuel_used`).
        config.consume_fuel(true);
        // Profiling the guest (`perf record` on a test): optimized code and a perf
        // map naming each wasm function (build the module unstripped).
        if std::env::var_os("MESHWASM_EMULATOR_PERFMAP").is_some() {
            config.cranelift_opt_level(wasmtime::OptLevel::Speed);
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).unwrap_or_else(|_| Engine::default());
        (engine, Mutex::new(HashMap::new()))
    });
    let bytes = std::fs::read(wasm).with_context(|| {
        format!(
            "{} (run `make build` / build the probe first?)",
            wasm.display()
        )
    })?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    let key = h.finish();
    // One slot per module: loads of other modules don't wait for this compile.
    let slot = modules
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone();
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = slot.as_ref() {
        return Ok((engine.clone(), m.clone()));
    }
    let dir = crate::paths::target_dir().join("emulator-cache");
    let file = dir.join(format!("{key:016x}.cwasm"));
    // SAFETY: files in this directory are only ever written below, from
    // `Module::serialize` of this same engine configuration (the key includes the
    // engine's compatibility hash), and renamed into place whole.
    let cached = file
        .exists()
        .then(|| unsafe { Module::deserialize_file(engine, &file) })
        .and_then(Result::ok);
    let m = match cached {
        Some(m) => m,
        None => {
            let m = Module::new(engine, &bytes)
                .with_context(|| format!("compiling {}", wasm.display()))?;
            if let Ok(out) = m.serialize() {
                let tmp = dir.join(format!("{key:016x}.{}.tmp", std::process::id()));
                let _ = std::fs::create_dir_all(&dir)
                    .and_then(|_| std::fs::write(&tmp, out))
                    .and_then(|_| std::fs::rename(&tmp, &file));
                prune(&dir, 48);
            }
            m
        }
    };
    *slot = Some(m.clone());
    Ok((engine.clone(), m))
}

/// Keeps the newest `keep` compiled modules in the disk cache (each rebuilt `.wasm`
/// adds one).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
}

impl WorldState {
    pub fn realtime_nanos(&self) -> u64 {
        START_UNIX_NANOS + self.elapsed.as_nanos() as u64
    }

    pub fn monotonic_nanos(&self) -> u64 {
        START_MONOTONIC_NANOS + self.elapsed.as_nanos() as u64
    }
}

/// One emulated Envoy process. Cheap to clone (a handle); every [`Vm`] loaded from it
/// shares its clock, shared data, queues and metrics, like Envoy's workers.
#[derive(Clone)]
pub struct World {
    pub(crate) state: Arc<Mutex<WorldState>>,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// A world whose clock reads [`START_UNIX_NANOS`] (realtime) until advanced.
    pub fn new() -> World {
        World {
            state: Arc::new(Mutex::new(WorldState {
                elapsed: Duration::ZERO,
                shared: SharedData::default(),
                queues: Queues::default(),
                metrics: Metrics::default(),
                after_get: HashMap::new(),
            })),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, WorldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compiles (once per path) and instantiates a module, then runs Envoy's start
    /// sequence: `_initialize`, `on_context_create(root, 0)`, `on_vm_start`,
    /// `on_configure`. A refused configuration is not an error: see [`Vm::configured`].
    pub fn load(&self, wasm: &Path, config: VmConfig) -> anyhow::Result<Vm> {
        let (engine, module) = compiled(wasm)?;
        Vm::start(self.clone(), &engine, module, config)
    }

    /// Moves the clock (realtime and monotonic) forward. Fires no ticks: see
    /// [`World::advance_and_tick`] and [`Vm::tick_due`].
    pub fn advance(&self, d: Duration) {
        self.lock().elapsed += d;
    }

    /// Moves the clock forward by `d`, stopping at every tick deadline of `vms` on the
    /// way and firing it with the clock at that instant (a timer re-arms after its
    /// `on_tick`, so a 100 ms period over 1 s fires 10 times). Returns the ticks fired.
    pub fn advance_and_tick(&self, vms: &mut [&mut Vm], d: Duration) -> anyhow::Result<usize> {
        let target = self.lock().elapsed + d;
        let mut fired = 0;
        loop {
            let next = vms.iter().filter_map(|vm| vm.next_tick_at()).min();
            match next {
                Some(at) if at <= target => {
                    {
                        let mut st = self.lock();
                        if at > st.elapsed {
                            st.elapsed = at;
                        }
                    }
                    for vm in vms.iter_mut() {
                        if vm.tick_due()? {
                            fired += 1;
                        }
                    }
                }
                _ => break,
            }
        }
        self.lock().elapsed = target;
        Ok(fired)
    }

    /// Time since the world was created.
    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed
    }

    /// What `proxy_get_current_time_nanoseconds` / WASI realtime return now.
    pub fn realtime_nanos(&self) -> u64 {
        self.lock().realtime_nanos()
    }

    /// What WASI `clock_time_get(MONOTONIC)` returns now.
    pub fn monotonic_nanos(&self) -> u64 {
        self.lock().monotonic_nanos()
    }

    /// A counter or gauge by name (with or without the `wasmcustom.` prefix), summed
    /// over every VM that defined it; `None` if no VM defined it.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.lock().metrics.value(name)
    }

    /// A histogram's recorded samples.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.lock().metrics.histogram(name)
    }

    /// Every counter and gauge.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, i64> {
        self.lock().metrics.all()
    }

    /// Shared data in the `""` vm_id namespace: `(value, cas)`.
    pub fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().shared.get(key)
    }

    /// Writes shared data in the `""` namespace with the guest's rules; returns the new cas.
    pub fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<u32, Status> {
        self.lock().shared.set(key, value, cas)
    }

    /// Runs `f` on the store right after the next guest `get_shared_data(key)` (any VM)
    /// has read its value: the way to interleave another worker's write between a VM's
    /// get and its set, deterministically.
    pub fn interleave_after_get(
        &self,
        key: &str,
        f: impl FnOnce(&mut SharedData) + Send + 'static,
    ) {
        self.lock()
            .after_get
            .entry(key.to_string())
            .or_default()
            .push(Box::new(f));
    }

    /// Direct access to the shared-data store.
    pub fn with_shared<R>(&self, f: impl FnOnce(&mut SharedData) -> R) -> R {
        f(&mut self.lock().shared)
    }
}
