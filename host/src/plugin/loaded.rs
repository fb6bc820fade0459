//! A compiled, pre-instantiated plugin and the one way to call into it.
//!
//! Invariants:
//! - Each call runs in a store of its own for the duration of the call: a store is taken
//!   from the pool (or made fresh), given a new deadline, used by one thread, and put back only
//!   when the call returned normally. A store that trapped (deadline, memory, a guest trap or
//!   a host error) is dropped, never reused.
//! - The pool holds at most `POOL_SIZE` idle stores; reuse is what makes a policy decision
//!   cost microseconds instead of an instantiation.
//! - Every error says which plugin, which call and what happened, in words an operator can act
//!   on, with the tail of what the plugin printed.

use super::state::{StoreState, OUTPUT_CAPACITY};
use super::PluginError;
use crate::spec::PluginSpec;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Instance, InstancePre};
use wasmtime::{Store, Trap};

use super::bindings::exports::orchestrator::plugin::{metrics_sink, metrics_sink_v2, network_policy, rootfs_patch, secret_provider};

/// Epoch granularity: deadlines are enforced to within this.
pub(super) const TICK: Duration = Duration::from_millis(2);

/// How a component was obtained.
#[derive(Debug, Clone, Copy)]
pub struct LoadInfo {
    /// True when compiled code came from the cache.
    pub cached: bool,
    /// Reading, hashing and compiling or deserialising, plus pre-instantiation.
    pub elapsed: Duration,
}

const POOL_SIZE: usize = 8;
/// Default deadline of one call when the Plugin resource sets none.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Instantiating an interpreter component (tens of MiB of pre-initialised memory) can take
/// longer than a policy's call deadline; it gets at least this long, and is bounded too.
const INSTANTIATE_MIN_MS: u64 = 5000;

/// The hook kinds a component can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    NetworkPolicy,
    RootfsPatch,
    SecretProvider,
    MetricsSink,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::NetworkPolicy, Kind::RootfsPatch, Kind::SecretProvider, Kind::MetricsSink];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "network-policy",
            Kind::RootfsPatch => "rootfs-patch",
            Kind::SecretProvider => "secret-provider",
            Kind::MetricsSink => "metrics-sink",
        }
    }

    /// The interfaces a component of this kind exports (at least one): later 0.1.x versions
    /// add richer ones beside the first.
    pub fn interfaces(self) -> &'static [&'static str] {
        match self {
            Kind::NetworkPolicy => &["network-policy"],
            Kind::RootfsPatch => &["rootfs-patch"],
            Kind::SecretProvider => &["secret-provider"],
            Kind::MetricsSink => &["metrics-sink", "metrics-sink-v2"],
        }
    }

    /// The export a component of this kind has.
    pub fn export_name(self) -> String {
        let (package, version) = super::ABI_PACKAGE.split_once('@').unwrap_or((super::ABI_PACKAGE, ""));
        format!("{package}/{}@{version}", self.as_str())
    }
}

pub(super) struct Exports {
    pub network_policy: Option<network_policy::GuestIndices>,
    pub rootfs_patch: Option<rootfs_patch::GuestIndices>,
    pub secret_provider: Option<secret_provider::GuestIndices>,
    pub metrics_sink: Option<metrics_sink::GuestIndices>,
    /// Since 0.1.1; preferred over `metrics_sink` when both are exported.
    pub metrics_sink_v2: Option<metrics_sink_v2::GuestIndices>,
}

struct Pooled {
    store: Store<StoreState>,
    instance: Instance,
}

pub struct LoadedPlugin {
    pub name: String,
    pub spec: PluginSpec,
    /// SHA-256 of the component file.
    pub digest: String,
    pub load: LoadInfo,
    pub(super) exports: Exports,
    name_arc: Arc<str>,
    config: Arc<Vec<(String, String)>>,
    pre: InstancePre<StoreState>,
    pool: Mutex<Vec<Pooled>>,
    /// Off only to measure what pooling saves (`disable_pooling`).
    pooling: std::sync::atomic::AtomicBool,
}

impl LoadedPlugin {
    pub(super) fn new(name: &str, spec: &PluginSpec, digest: String, pre: InstancePre<StoreState>, load: LoadInfo) -> Result<LoadedPlugin, PluginError> {
        let exports = Exports {
            network_policy: network_policy::GuestIndices::new(&pre).ok(),
            rootfs_patch: rootfs_patch::GuestIndices::new(&pre).ok(),
            secret_provider: secret_provider::GuestIndices::new(&pre).ok(),
            metrics_sink: metrics_sink::GuestIndices::new(&pre).ok(),
            metrics_sink_v2: metrics_sink_v2::GuestIndices::new(&pre).ok(),
        };
        let plugin = LoadedPlugin {
            name: name.to_string(),
            spec: spec.clone(),
            digest,
            load,
            exports,
            name_arc: Arc::from(name),
            config: Arc::new(spec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            pre,
            pool: Mutex::new(Vec::new()),
            pooling: std::sync::atomic::AtomicBool::new(true),
        };
        if plugin.kinds().is_empty() {
            return Err(PluginError::Link {
                plugin: name.into(),
                message: format!(
                    "{} exports none of the orchestrator's interfaces ({}); build it for one of the worlds in wit/plugin.wit",
                    spec.component,
                    Kind::ALL.map(|k| k.export_name()).join(", ")
                ),
            });
        }
        Ok(plugin)
    }

    pub fn kinds(&self) -> Vec<Kind> {
        let e = &self.exports;
        let present = [e.network_policy.is_some(), e.rootfs_patch.is_some(), e.secret_provider.is_some(), e.metrics_sink.is_some() || e.metrics_sink_v2.is_some()];
        Kind::ALL.into_iter().zip(present).filter(|(_, p)| *p).map(|(k, _)| k).collect()
    }

    pub fn implements(&self, kind: Kind) -> bool {
        self.kinds().contains(&kind)
    }

    /// The export slot of `kind`, or why this plugin cannot serve it.
    pub(super) fn export<'a, T>(&self, slot: &'a Option<T>, kind: Kind) -> Result<&'a T, PluginError> {
        slot.as_ref().ok_or_else(|| PluginError::WrongKind {
            plugin: self.name.clone(),
            kind: kind.as_str(),
            implemented: self.kinds().iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    pub fn timeout_ms(&self) -> u64 {
        self.spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    /// Idle instances kept for reuse (for tests and `plugin` diagnostics).
    pub fn pooled(&self) -> usize {
        self.pool.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Makes every call instantiate afresh (for benchmarks comparing the two).
    pub fn disable_pooling(&self) {
        self.pooling.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut pool) = self.pool.lock() {
            pool.clear();
        }
    }

    /// Runs `f` against an instance of this plugin under its deadline and limits.
    pub(super) fn call<R>(&self, call: &'static str, f: impl FnOnce(&mut Store<StoreState>, &Instance) -> wasmtime::Result<R>) -> Result<R, PluginError> {
        let started = std::time::Instant::now();
        let result = self.call_untimed(call, f);
        let failure = result.as_ref().err().map(|e| match e {
            PluginError::Timeout { .. } => "timeout",
            PluginError::Memory { .. } => "memory",
            PluginError::Trap { .. } => "trap",
            _ => "other",
        });
        crate::telemetry::get().plugin_call(&self.name, call, started.elapsed(), failure);
        result
    }

    fn call_untimed<R>(&self, call: &'static str, f: impl FnOnce(&mut Store<StoreState>, &Instance) -> wasmtime::Result<R>) -> Result<R, PluginError> {
        let taken = self.pool.lock().ok().and_then(|mut p| p.pop());
        let mut pooled = match taken {
            Some(p) => p,
            None => self.instantiate(call).map_err(|e| match e {
                PluginError::Timeout { plugin, call, .. } => PluginError::Trap { plugin, call, message: format!("instantiation did not finish within {INSTANTIATE_MIN_MS} ms") },
                other => other,
            })?,
        };
        Self::arm(&mut pooled.store, self.timeout_ms());
        match f(&mut pooled.store, &pooled.instance) {
            Ok(value) => {
                if self.pooling.load(std::sync::atomic::Ordering::Relaxed) && pooled.store.data().output_len() < OUTPUT_CAPACITY / 2 {
                    if let Ok(mut pool) = self.pool.lock() {
                        if pool.len() < POOL_SIZE {
                            pool.push(pooled);
                        }
                    }
                }
                Ok(value)
            }
            Err(e) => Err(self.explain(call, &pooled.store, e)),
        }
    }

    fn arm(store: &mut Store<StoreState>, timeout_ms: u64) {
        let ticks = timeout_ms.div_ceil(TICK.as_millis() as u64).max(1);
        store.set_epoch_deadline(ticks);
        store.data_mut().begin_call();
    }

    fn instantiate(&self, call: &'static str) -> Result<Pooled, PluginError> {
        let state = StoreState::new(self.name_arc.clone(), &self.spec, self.config.clone())?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        Self::arm(&mut store, self.timeout_ms().max(INSTANTIATE_MIN_MS));
        match self.pre.instantiate(&mut store) {
            Ok(instance) => Ok(Pooled { store, instance }),
            Err(e) => Err(self.explain(call, &store, e)),
        }
    }

    /// Turns a failed call into an error an operator can act on.
    fn explain(&self, call: &'static str, store: &Store<StoreState>, e: wasmtime::Error) -> PluginError {
        let plugin = self.name.clone();
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return PluginError::Timeout { plugin, call, timeout_ms: self.timeout_ms() };
        }
        let state = store.data();
        if state.limiter.memory_refused {
            return PluginError::Memory { plugin, call, limit: state.limiter.memory_limit };
        }
        let mut message = format!("{e:#}");
        if let Some(trap) = e.downcast_ref::<Trap>() {
            message = format!("{trap} ({message})");
        }
        let printed = state.output_tail(1024);
        if !printed.is_empty() {
            message.push_str(&format!("; the plugin printed: {printed}"));
        }
        PluginError::Trap { plugin, call, message: super::bounded(&message, 4096) }
    }
}
