//! The metrics-sink loop of `serve`: every sink's `interval` (10 s unless its Plugin resource
//! says otherwise) it samples the running sandboxes that name the sink in `hooks.metricsSinks`
//! (CPU time, memory, tasks and disk I/O from their shims; network counters from the files the
//! shims write) and hands the batch to the plugin.
//!
//! Sinks fail open: an error is logged, the batch is kept (up to `MAX_PENDING` samples, oldest
//! dropped first) and offered again after a back-off that doubles up to `MAX_BACKOFF`; nothing
//! a sink does affects a sandbox.

use super::kinds::Sample;
use super::registry::Registry;
use crate::cgroup::Cgroup;
use crate::net_counters::NetworkCounters;
use crate::paths::{DataDir, InstanceDir};
use crate::spec::{Kind, PluginSpec, ResourceSpec};
use crate::store::{Status, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const MAX_PENDING: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(500);

/// One sandbox to sample for a sink.
#[derive(Debug, Clone)]
pub struct Target {
    pub sandbox: String,
    pub instance: String,
    pub dir: InstanceDir,
    pub isolation: String,
    pub labels: BTreeMap<String, String>,
    pub memory_limit: Option<u64>,
}

struct SinkState {
    /// The Plugin resource as last seen: a changed one is retried at once, without back-off.
    spec: PluginSpec,
    next_due: Instant,
    backoff: Option<Duration>,
    pending: Vec<Sample>,
}

/// How long a sample may take to come from a shim before the cgroup files are read instead.
const SHIM_SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Samples one sandbox now: its shim reads its figures (cgroup, and disk I/O it counts: a
/// microVM's virtio-blk, a namespace sandbox's io.stat or loop device); a shim that does not
/// answer (an older one, one busy ending) leaves its cgroup files, read here, without disk I/O
/// on cgroup v1.
pub fn sample(target: &Target) -> Option<Sample> {
    let from_shim = crate::client::ShimClient::sample_at(&target.dir.socket(), SHIM_SAMPLE_TIMEOUT).ok();
    let s = match from_shim {
        Some(s) => s,
        None => {
            let cg = Cgroup::of(&target.instance);
            if !cg.exists() {
                return None;
            }
            guest_agent::protocol::ResourceSample { cpu_usage_us: cg.cpu_usage_us().unwrap_or(0), memory_bytes: cg.memory_usage().unwrap_or(0), memory_peak_bytes: cg.memory_peak(), pids: cg.pids_current().unwrap_or(0), disk: cg.io_counters() }
        }
    };
    Some(Sample {
        sandbox: target.sandbox.clone(),
        labels: target.labels.clone(),
        isolation: target.isolation.clone(),
        timestamp_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        cpu_usage_us: s.cpu_usage_us,
        memory_bytes: s.memory_bytes,
        memory_limit_bytes: target.memory_limit,
        memory_peak_bytes: s.memory_peak_bytes,
        pids: s.pids.min(u64::from(u32::MAX)) as u32,
        disk: s.disk,
        network: NetworkCounters::read(&target.dir),
    })
}

/// [`sample`] of each target, a few at once (each is a round trip to its shim).
pub fn sample_all(targets: &[Target]) -> Vec<Sample> {
    const AT_ONCE: usize = 8;
    let chunk = targets.len().div_ceil(AT_ONCE).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = targets.chunks(chunk).map(|part| s.spawn(move || part.iter().filter_map(sample).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// Every running sandbox, to sample (`/metrics`, `top`).
pub fn running_targets(store: &Store, data: &DataDir) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for row in store.sandboxes().map_err(|e| e.to_string())?.into_iter().filter(|r| r.status == Status::Running) {
        let Ok(resource) = serde_json::from_str::<crate::spec::Resource>(&row.spec) else { continue };
        let ResourceSpec::Sandbox(spec) = &resource.spec else { continue };
        out.push(Target { sandbox: row.name.clone(), instance: row.instance.clone(), dir: data.instance(&row.instance), isolation: row.isolation.clone(), labels: resource.labels.clone(), memory_limit: spec.memory });
    }
    Ok(out)
}

/// Sinks and the sandboxes that name them, from the store.
fn targets(store: &Store, data: &DataDir) -> Result<HashMap<String, (PluginSpec, Vec<Target>)>, String> {
    let mut out: HashMap<String, (PluginSpec, Vec<Target>)> = HashMap::new();
    let rows = store.sandboxes().map_err(|e| e.to_string())?;
    for row in rows.into_iter().filter(|r| r.status == Status::Running) {
        let Ok(resource) = serde_json::from_str::<crate::spec::Resource>(&row.spec) else { continue };
        let ResourceSpec::Sandbox(spec) = &resource.spec else { continue };
        for sink in &spec.hooks.metrics_sinks {
            if !out.contains_key(sink) {
                match store.resource(Kind::Plugin, sink) {
                    Ok(Some(stored)) => {
                        if let ResourceSpec::Plugin(p) = stored.resource.spec {
                            out.insert(sink.clone(), (p, Vec::new()));
                        }
                    }
                    _ => {
                        tracing::warn!(sandbox = %row.name, "hooks.metricsSinks names plugin {sink:?}, which is not declared");
                        continue;
                    }
                }
            }
            if let Some((_, list)) = out.get_mut(sink) {
                list.push(Target {
                    sandbox: row.name.clone(),
                    instance: row.instance.clone(),
                    dir: data.instance(&row.instance),
                    isolation: row.isolation.clone(),
                    labels: resource.labels.clone(),
                    memory_limit: spec.memory,
                });
            }
        }
    }
    Ok(out)
}

/// Runs the loop until `stop` is set. Opens its own store connection.
pub fn run(data: DataDir, registry: Arc<Registry>, stop: Arc<AtomicBool>) {
    let store = match Store::open(&data.db()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("metrics sinks disabled: opening the store: {e}");
            return;
        }
    };
    let mut sinks: HashMap<String, SinkState> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = Instant::now();
        let all = match targets(&store, &data) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("metrics: reading the store: {e}");
                continue;
            }
        };
        sinks.retain(|name, _| all.contains_key(name));
        for (name, (spec, targets)) in all {
            let interval = spec.interval_secs.map(Duration::from_secs).unwrap_or(DEFAULT_INTERVAL);
            let state = sinks.entry(name.clone()).or_insert_with(|| SinkState { spec: spec.clone(), next_due: now + interval, backoff: None, pending: Vec::new() });
            if state.spec != spec {
                state.spec = spec.clone();
                state.backoff = None;
                state.next_due = now;
            }
            if now < state.next_due {
                continue;
            }
            state.pending.extend(targets.iter().filter_map(sample));
            if state.pending.len() > MAX_PENDING {
                let excess = state.pending.len() - MAX_PENDING;
                state.pending.drain(..excess);
            }
            let result = registry.get(&name, &spec).and_then(|plugin| plugin.receive(&state.pending));
            match result {
                Ok(()) => {
                    state.pending.clear();
                    state.backoff = None;
                    state.next_due = now + interval;
                }
                Err(e) => {
                    let backoff = state.backoff.map(|b| (b * 2).min(MAX_BACKOFF)).unwrap_or(interval);
                    tracing::warn!(plugin = %name, "metrics sink failed: {e}; {} samples kept, retrying in {}s", state.pending.len(), backoff.as_secs());
                    state.backoff = Some(backoff);
                    state.next_due = now + backoff;
                }
            }
        }
    }
}
