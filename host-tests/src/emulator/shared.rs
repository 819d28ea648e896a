//! Process-wide state that Envoy shares between workers' VMs: the shared-data KV
//! (reference §4.1), shared queues (§4.3) and metrics (§5).

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::abi::Status;

/// Envoy's shared data: `(vm_id, key) → (value, cas)` with one global `u32` cas counter.
#[derive(Debug, Default)]
pub struct SharedData {
    entries: HashMap<(String, String), (Vec<u8>, u32)>,
    cas: u32,
}

impl SharedData {
    fn next_cas(&mut self) -> u32 {
        // Increments on every successful set of any key, skips 0, wraps at 2^32.
        self.cas = self.cas.wrapping_add(1);
        if self.cas == 0 {
            self.cas = 1;
        }
        self.cas
    }

    /// `get` in namespace `vm_id`: `(value, cas)`; an emptied key returns `(b"", cas)`.
    pub fn get_in(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.entries
            .get(&(vm_id.to_string(), key.to_string()))
            .cloned()
    }

    /// `set` with Envoy's rules: CasMismatch only when the key exists, `cas != 0` and
    /// `cas != stored`; an absent key is inserted whatever `cas` is; `cas == 0` is an
    /// unconditional write; an empty value is stored (the key stays: "removed").
    pub fn set_in(
        &mut self,
        vm_id: &str,
        key: &str,
        value: &[u8],
        cas: u32,
    ) -> Result<u32, Status> {
        let k = (vm_id.to_string(), key.to_string());
        if let Some((_, stored)) = self.entries.get(&k) {
            if cas != 0 && cas != *stored {
                return Err(Status::CasMismatch);
            }
        }
        let new = self.next_cas();
        self.entries.insert(k, (value.to_vec(), new));
        Ok(new)
    }

    /// `get` in the `""` namespace (Istio sets no vm_id).
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.get_in("", key)
    }

    /// `set` in the `""` namespace.
    pub fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<u32, Status> {
        self.set_in("", key, value, cas)
    }

    /// The current value of the global cas counter (the last cas handed out).
    pub fn last_cas(&self) -> u32 {
        self.cas
    }

    /// Forces the global cas counter (to test wrap-around).
    pub fn set_last_cas(&mut self, cas: u32) {
        self.cas = cas;
    }
}

/// Shared queues keyed `(vm_id, name)`; ids are process-global. No `on_queue_ready` is
/// delivered automatically: a test calls `Vm::queue_ready(id)` if it needs one.
#[derive(Debug, Default)]
pub struct Queues {
    ids: HashMap<(String, String), u32>,
    queues: HashMap<u32, VecDeque<Vec<u8>>>,
    next: u32,
}

impl Queues {
    pub fn register(&mut self, vm_id: &str, name: &str) -> u32 {
        let next = &mut self.next;
        let id = *self
            .ids
            .entry((vm_id.to_string(), name.to_string()))
            .or_insert_with(|| {
                *next += 1;
                *next
            });
        self.queues.entry(id).or_default();
        id
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.ids
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    pub fn enqueue(&mut self, id: u32, value: Vec<u8>) -> Status {
        match self.queues.get_mut(&id) {
            Some(q) => {
                q.push_back(value);
                Status::Ok
            }
            None => Status::NotFound,
        }
    }

    pub fn dequeue(&mut self, id: u32) -> Result<Vec<u8>, Status> {
        match self.queues.get_mut(&id) {
            Some(q) => q.pop_front().ok_or(Status::Empty),
            None => Err(Status::NotFound),
        }
    }
}

/// `proxy_metric_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

impl MetricKind {
    pub fn from_raw(v: u32) -> Option<MetricKind> {
        match v {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }
}

/// The process-wide stats store: stats are found by name, so every VM that defines
/// `x` updates the same stat (values aggregate across workers).
#[derive(Debug, Default)]
pub struct Metrics {
    values: BTreeMap<(String, MetricKind), i64>,
    samples: BTreeMap<String, Vec<u64>>,
}

impl Metrics {
    pub fn define(&mut self, name: &str, kind: MetricKind) {
        match kind {
            MetricKind::Histogram => {
                self.samples.entry(name.to_string()).or_default();
            }
            _ => {
                self.values.entry((name.to_string(), kind)).or_insert(0);
            }
        }
    }

    /// Envoy's `incrementMetric`: counter `d > 0` adds, `d <= 0` is BadArgument; gauge
    /// adds or subtracts; histogram is BadArgument.
    pub fn increment(&mut self, name: &str, kind: MetricKind, delta: i64) -> Status {
        match kind {
            MetricKind::Counter if delta > 0 => {
                *self.values.entry((name.to_string(), kind)).or_insert(0) += delta;
                Status::Ok
            }
            MetricKind::Gauge => {
                *self.values.entry((name.to_string(), kind)).or_insert(0) += delta;
                Status::Ok
            }
            _ => Status::BadArgument,
        }
    }

    /// Envoy's `recordMetric`: counter adds, gauge sets, histogram records a sample.
    pub fn record(&mut self, name: &str, kind: MetricKind, value: u64) -> Status {
        match kind {
            MetricKind::Counter => {
                *self.values.entry((name.to_string(), kind)).or_insert(0) += value as i64;
            }
            MetricKind::Gauge => {
                self.values.insert((name.to_string(), kind), value as i64);
            }
            MetricKind::Histogram => self
                .samples
                .entry(name.to_string())
                .or_default()
                .push(value),
        }
        Status::Ok
    }

    /// Envoy's `getMetric`: counter/gauge value; histogram is BadArgument.
    pub fn get(&self, name: &str, kind: MetricKind) -> Result<i64, Status> {
        match kind {
            MetricKind::Histogram => Err(Status::BadArgument),
            _ => Ok(self
                .values
                .get(&(name.to_string(), kind))
                .copied()
                .unwrap_or(0)),
        }
    }

    /// A counter or gauge by name (`wasmcustom.` prefix accepted), as `/stats` shows it.
    pub fn value(&self, name: &str) -> Option<i64> {
        let name = name.strip_prefix("wasmcustom.").unwrap_or(name);
        [MetricKind::Counter, MetricKind::Gauge]
            .into_iter()
            .find_map(|k| self.values.get(&(name.to_string(), k)).copied())
    }

    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        let name = name.strip_prefix("wasmcustom.").unwrap_or(name);
        self.samples.get(name).cloned()
    }

    /// Every counter and gauge, `name → value`.
    pub fn all(&self) -> BTreeMap<String, i64> {
        self.values
            .iter()
            .map(|((n, _), v)| (n.clone(), *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules() {
        let mut d = SharedData::default();
        // Absent key: inserted even with a cas that never existed.
        let c1 = d.set("k", b"1", 12345).unwrap();
        assert_eq!(d.get("k"), Some((b"1".to_vec(), c1)));
        assert_eq!(d.set("k", b"2", c1 + 7), Err(Status::CasMismatch));
        let c2 = d.set("k", b"2", c1).unwrap();
        assert!(c2 > c1);
        // cas 0: unconditional.
        let c3 = d.set("k", b"3", 0).unwrap();
        // Empty value: the key stays with a fresh cas.
        let c4 = d.set("k", b"", c3).unwrap();
        assert_eq!(d.get("k"), Some((Vec::new(), c4)));
        // Namespaces are separate; the counter is global.
        let c5 = d.set_in("other", "k", b"x", 0).unwrap();
        assert_eq!(c5, c4 + 1);
        assert_eq!(d.get("k").unwrap().0, Vec::<u8>::new());
    }

    #[test]
    fn cas_counter_skips_zero() {
        let mut d = SharedData::default();
        d.set_last_cas(u32::MAX);
        assert_eq!(d.set("k", b"v", 0), Ok(1));
    }

    #[test]
    fn metric_semantics() {
        let mut m = Metrics::default();
        m.define("c", MetricKind::Counter);
        m.define("g", MetricKind::Gauge);
        assert_eq!(
            m.increment("c", MetricKind::Counter, 0),
            Status::BadArgument
        );
        assert_eq!(
            m.increment("c", MetricKind::Counter, -1),
            Status::BadArgument
        );
        assert_eq!(m.increment("c", MetricKind::Counter, 2), Status::Ok);
        assert_eq!(m.record("c", MetricKind::Counter, 3), Status::Ok);
        assert_eq!(m.value("wasmcustom.c"), Some(5));
        assert_eq!(m.increment("g", MetricKind::Gauge, -4), Status::Ok);
        assert_eq!(m.value("g"), Some(-4));
        assert_eq!(m.record("g", MetricKind::Gauge, 9), Status::Ok);
        assert_eq!(m.value("g"), Some(9));
        assert_eq!(
            m.increment("h", MetricKind::Histogram, 1),
            Status::BadArgument
        );
        assert_eq!(m.get("h", MetricKind::Histogram), Err(Status::BadArgument));
    }
}
