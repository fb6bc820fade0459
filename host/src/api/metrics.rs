//! `GET /metrics`: the sandboxes' resource figures in the OpenMetrics text format (which
//! Prometheus scrapes), through the `prometheus-client` crate.
//!
//! Per running sandbox, labelled `sandbox`, `isolation` and its own labels (`label_KEY`, the
//! key made a valid label name): CPU seconds, memory (current, limit, peak), tasks, block I/O
//! (bytes and operations each way, from the cgroup's io/blkio counters), and the network counters of its stack (bytes and packets each way, flows denied). Plus how many
//! sandboxes are in each status. Each scrape reads the store once, asks each running sandbox's
//! shim for its figures (eight at a time; the cgroup files when a shim does not answer) and
//! reads its network counters file.

use super::problem::ApiResult;
use super::ApiState;
use crate::paths::DataDir;
use crate::plugin::metrics::{running_targets, sample_all};
use crate::store::{Status, Store};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

type St = State<Arc<ApiState>>;
type Labels = Vec<(String, String)>;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(metrics))
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The sandboxes' CPU, memory, tasks and network figures, for Prometheus.
#[utoipa::path(get, path = "/metrics", tag = "observe", responses((status = 200, description = "OpenMetrics text: per running sandbox (labels sandbox, isolation, label_KEY) CPU seconds, memory current/limit/peak, tasks, disk bytes/operations, network bytes/packets/denied flows; sandboxes per status", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(state): St) -> ApiResult<Response> {
    let config = state.config.clone();
    let text = super::blocking(move || render(&config.data_dir)).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// A label name from a sandbox label's key: `label_` and the key with every character that a
/// label name may not hold made `_` (as kube-state-metrics does).
fn label_name(key: &str) -> String {
    let mut out = String::from("label_");
    out.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    out
}

#[derive(Default)]
struct Families {
    cpu: Family<Labels, Counter<f64, AtomicU64>>,
    memory: Family<Labels, Gauge>,
    memory_limit: Family<Labels, Gauge>,
    memory_peak: Family<Labels, Gauge>,
    pids: Family<Labels, Gauge>,
    rx_bytes: Family<Labels, Counter>,
    tx_bytes: Family<Labels, Counter>,
    rx_packets: Family<Labels, Counter>,
    tx_packets: Family<Labels, Counter>,
    denied: Family<Labels, Counter>,
    disk_read_bytes: Family<Labels, Counter>,
    disk_write_bytes: Family<Labels, Counter>,
    disk_read_ops: Family<Labels, Counter>,
    disk_write_ops: Family<Labels, Counter>,
    sandboxes: Family<Labels, Gauge>,
}

impl Families {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("orchestrator");
        r.register_with_unit("sandbox_cpu", "CPU time the sandbox's processes used", Unit::Seconds, self.cpu.clone());
        r.register_with_unit("sandbox_memory", "Memory the sandbox uses now (its cgroup)", Unit::Bytes, self.memory.clone());
        r.register_with_unit("sandbox_memory_limit", "The sandbox's memory limit", Unit::Bytes, self.memory_limit.clone());
        r.register_with_unit("sandbox_memory_peak", "The most memory the sandbox has used", Unit::Bytes, self.memory_peak.clone());
        r.register("sandbox_tasks", "Processes and threads in the sandbox", self.pids.clone());
        r.register_with_unit("sandbox_network_receive", "Bytes the sandbox received", Unit::Bytes, self.rx_bytes.clone());
        r.register_with_unit("sandbox_network_transmit", "Bytes the sandbox sent", Unit::Bytes, self.tx_bytes.clone());
        r.register("sandbox_network_receive_packets", "Packets the sandbox received", self.rx_packets.clone());
        r.register("sandbox_network_transmit_packets", "Packets the sandbox sent", self.tx_packets.clone());
        r.register("sandbox_network_denied_flows", "Flows the sandbox's policy refused", self.denied.clone());
        r.register_with_unit("sandbox_disk_read", "Bytes the sandbox read from block devices", Unit::Bytes, self.disk_read_bytes.clone());
        r.register_with_unit("sandbox_disk_write", "Bytes the sandbox wrote to block devices", Unit::Bytes, self.disk_write_bytes.clone());
        r.register("sandbox_disk_read_ops", "Block read operations of the sandbox", self.disk_read_ops.clone());
        r.register("sandbox_disk_write_ops", "Block write operations of the sandbox", self.disk_write_ops.clone());
        r.register("sandboxes", "Sandboxes by status", self.sandboxes.clone());
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The whole exposition, from the store and the running sandboxes' cgroups.
pub fn render(data_dir: &std::path::Path) -> crate::Result<String> {
    let data = DataDir::open(data_dir).map_err(|e| crate::Error::io(format!("opening the data directory {}", data_dir.display()), e))?;
    let store = Store::open(&data.db())?;
    let families = Families::default();
    let mut by_status = std::collections::HashMap::new();
    for row in store.sandboxes()? {
        *by_status.entry(row.status).or_insert(0i64) += 1;
    }
    let targets = running_targets(&store, &data).map_err(crate::Error::Protocol)?;
    for s in sample_all(&targets) {
        let Some(target) = targets.iter().find(|t| t.sandbox == s.sandbox) else { continue };
        let mut labels: Labels = vec![("sandbox".into(), target.sandbox.clone()), ("isolation".into(), target.isolation.clone())];
        labels.extend(target.labels.iter().map(|(k, v)| (label_name(k), v.clone())));
        families.cpu.get_or_create(&labels).inc_by(s.cpu_usage_us as f64 / 1e6);
        families.memory.get_or_create(&labels).set(gauge(s.memory_bytes));
        if let Some(limit) = s.memory_limit_bytes {
            families.memory_limit.get_or_create(&labels).set(gauge(limit));
        }
        if let Some(peak) = s.memory_peak_bytes {
            families.memory_peak.get_or_create(&labels).set(gauge(peak));
        }
        families.pids.get_or_create(&labels).set(i64::from(s.pids));
        if let Some(d) = s.disk {
            families.disk_read_bytes.get_or_create(&labels).inc_by(d.read_bytes);
            families.disk_write_bytes.get_or_create(&labels).inc_by(d.write_bytes);
            families.disk_read_ops.get_or_create(&labels).inc_by(d.read_ops);
            families.disk_write_ops.get_or_create(&labels).inc_by(d.write_ops);
        }
        if let Some(n) = s.network {
            families.rx_bytes.get_or_create(&labels).inc_by(n.rx_bytes);
            families.tx_bytes.get_or_create(&labels).inc_by(n.tx_bytes);
            families.rx_packets.get_or_create(&labels).inc_by(n.rx_packets);
            families.tx_packets.get_or_create(&labels).inc_by(n.tx_packets);
            families.denied.get_or_create(&labels).inc_by(n.flows_denied);
        }
    }
    for status in [Status::Pending, Status::Running, Status::Exited, Status::Stopped, Status::Failed] {
        let n = by_status.get(&status).copied().unwrap_or(0);
        families.sandboxes.get_or_create(&vec![("status".to_string(), status.as_str().to_ascii_lowercase())]).set(n);
    }
    let mut registry = Registry::default();
    families.register(&mut registry);
    crate::telemetry::get().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| crate::Error::Protocol(format!("encoding the metrics: {e}")))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_data_dir_exposes_the_status_counts_and_labels_are_valid_names() {
        let dir = tempfile::tempdir().unwrap();
        let text = render(dir.path()).unwrap();
        assert!(text.contains("# TYPE orchestrator_sandboxes gauge"), "{text}");
        assert!(text.contains("orchestrator_sandboxes{status=\"running\"} 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(label_name("app.kubernetes.io/name"), "label_app_kubernetes_io_name");
    }
}
