//! The typed calls of the four hook kinds: our types in, WIT types across, our types out, and
//! everything a plugin returns checked before anyone uses it (reason lengths, cache times,
//! patch paths and sizes, secret sizes).

use super::bindings::exports::orchestrator::plugin::{metrics_sink, metrics_sink_v2, network_policy as np, rootfs_patch as rp};
use super::bindings::orchestrator::plugin::types;
use super::loaded::{Kind, LoadedPlugin};
use super::PluginError;
use guest_agent::protocol::{check_patches, PatchOp};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Longest deny reason kept; longer ones are cut.
const MAX_REASON: usize = 1024;
/// Longest time a decision may be cached.
pub const MAX_CACHE_SECONDS: u32 = 3600;
/// Largest secret value accepted.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// Who a call is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub isolation: String,
}

impl SandboxInfo {
    fn wit(&self) -> types::SandboxInfo {
        types::SandboxInfo {
            name: self.name.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            image: self.image.clone(),
            isolation: self.isolation.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowAction {
    Allow,
    Deny(String),
    InterceptTls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowVerdict {
    pub action: FlowAction,
    pub cache_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsVerdict {
    /// `None` allows; `Some(reason)` denies.
    pub denied: Option<String>,
    pub cache_seconds: u32,
}

/// The image as a rootfs-patch plugin sees it.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// One resource sample for metrics sinks. A 0.1.0 sink (`metrics-sink`) sees the first
/// fields; a 0.1.1 one (`metrics-sink-v2`) sees them all.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub sandbox: String,
    pub labels: BTreeMap<String, String>,
    pub isolation: String,
    pub timestamp_ms: u64,
    pub cpu_usage_us: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub pids: u32,
    pub disk: Option<DiskCounters>,
    pub network: Option<crate::net_counters::NetworkCounters>,
}

/// Disk I/O as the shims report it (one type from the shim's answer to the sink's record).
pub type DiskCounters = guest_agent::protocol::DiskSample;

impl Sample {
    fn wit_v1(&self) -> metrics_sink::Sample {
        metrics_sink::Sample {
            sandbox: self.sandbox.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            timestamp_ms: self.timestamp_ms,
            cpu_usage_us: self.cpu_usage_us,
            memory_bytes: self.memory_bytes,
            memory_limit_bytes: self.memory_limit_bytes,
            pids: self.pids,
        }
    }

    fn wit_v2(&self) -> metrics_sink_v2::Sample {
        metrics_sink_v2::Sample {
            sandbox: self.sandbox.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            isolation: self.isolation.clone(),
            timestamp_ms: self.timestamp_ms,
            cpu_usage_us: self.cpu_usage_us,
            memory_bytes: self.memory_bytes,
            memory_limit_bytes: self.memory_limit_bytes,
            memory_peak_bytes: self.memory_peak_bytes,
            pids: self.pids,
            disk: self.disk.map(|d| metrics_sink_v2::DiskCounters { read_bytes: d.read_bytes, write_bytes: d.write_bytes, read_ops: d.read_ops, write_ops: d.write_ops }),
            network: self.network.map(|n| metrics_sink_v2::NetworkCounters {
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                open_flows: n.open_flows.min(u64::from(u32::MAX)) as u32,
                flows_allowed: n.flows_allowed,
                flows_denied: n.flows_denied,
                dns_queries: n.dns_queries,
                dns_nxdomain: n.dns_nxdomain,
            }),
        }
    }
}

fn ip_wit(ip: IpAddr) -> types::IpAddress {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            types::IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            types::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

fn reason(text: String) -> String {
    super::bounded(&text, MAX_REASON)
}

/// A plugin's deny reason or error text as the host keeps it: at most `MAX_REASON` bytes (and
/// a note of what was cut), valid UTF-8.
pub fn lower_reason(text: String) -> String {
    reason(text)
}

/// A decision's `cache-seconds` as the host honours it.
pub fn lower_cache_seconds(seconds: u32) -> u32 {
    seconds.min(MAX_CACHE_SECONDS)
}

/// A secret-provider's answer as the host accepts it: a value of 1 byte to `MAX_SECRET_LEN`,
/// or an error that names the plugin and never contains the value.
pub fn lower_secret(plugin: &str, key: &str, answer: Result<String, String>) -> Result<String, PluginError> {
    let value = answer.map_err(|m| PluginError::Refused { plugin: plugin.to_string(), call: "resolve", message: reason(m) })?;
    if value.len() > MAX_SECRET_LEN {
        return Err(PluginError::Invalid { plugin: plugin.to_string(), call: "resolve", message: format!("a {}-byte value; at most {MAX_SECRET_LEN} bytes", value.len()) });
    }
    if value.is_empty() {
        let key = super::bounded(key, 256);
        return Err(PluginError::Invalid { plugin: plugin.to_string(), call: "resolve", message: format!("an empty value for key {key:?}") });
    }
    Ok(value)
}

impl LoadedPlugin {
    pub fn decide_flow(&self, sandbox: &SandboxInfo, protocol: Protocol, ip: IpAddr, port: u16, domain: Option<&str>) -> Result<FlowVerdict, PluginError> {
        let indices = self.export(&self.exports.network_policy, Kind::NetworkPolicy)?;
        let flow = np::Flow {
            sandbox: sandbox.wit(),
            protocol: match protocol {
                Protocol::Tcp => np::Protocol::Tcp,
                Protocol::Udp => np::Protocol::Udp,
            },
            destination: ip_wit(ip),
            port,
            domain: domain.map(str::to_string),
        };
        let decision = self.call("decide-flow", |store, instance| indices.load(&mut *store, instance)?.call_decide_flow(&mut *store, &flow))?;
        Ok(FlowVerdict {
            action: match decision.action {
                np::Action::Allow => FlowAction::Allow,
                np::Action::Deny(r) => FlowAction::Deny(reason(r)),
                np::Action::InterceptTls => FlowAction::InterceptTls,
            },
            cache_seconds: lower_cache_seconds(decision.cache_seconds),
        })
    }

    pub fn decide_dns(&self, sandbox: &SandboxInfo, name: &str, record_type: &str) -> Result<DnsVerdict, PluginError> {
        let indices = self.export(&self.exports.network_policy, Kind::NetworkPolicy)?;
        let query = np::DnsQuery {
            sandbox: sandbox.wit(),
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            record_type: record_type.to_string(),
        };
        let decision = self.call("decide-dns", |store, instance| indices.load(&mut *store, instance)?.call_decide_dns(&mut *store, &query))?;
        Ok(DnsVerdict {
            denied: match decision.action {
                np::DnsAction::Allow => None,
                np::DnsAction::Deny(r) => Some(reason(r)),
            },
            cache_seconds: lower_cache_seconds(decision.cache_seconds),
        })
    }

    /// The patch operations for a sandbox, validated (no path leaves the root, sizes bounded).
    pub fn patch(&self, sandbox: &SandboxInfo, image: &ImageInfo) -> Result<Vec<PatchOp>, PluginError> {
        let indices = self.export(&self.exports.rootfs_patch, Kind::RootfsPatch)?;
        let info = rp::ImageInfo {
            reference: image.reference.clone(),
            digest: image.digest.clone(),
            env: image.env.clone(),
            entrypoint: image.entrypoint.clone(),
            cmd: image.cmd.clone(),
            working_dir: image.working_dir.clone(),
            user: image.user.clone(),
        };
        let wit = sandbox.wit();
        let result = self.call("patch", |store, instance| indices.load(&mut *store, instance)?.call_patch(&mut *store, &wit, &info))?;
        let ops = result.map_err(|m| PluginError::Refused { plugin: self.name.clone(), call: "patch", message: reason(m) })?;
        let ops: Vec<PatchOp> = ops
            .into_iter()
            .map(|op| match op {
                rp::Operation::Write(w) => PatchOp::Write { path: w.path, contents: w.contents, mode: w.mode },
                rp::Operation::Append(a) => PatchOp::Append { path: a.path, contents: a.contents },
                rp::Operation::Mkdir(m) => PatchOp::Mkdir { path: m.path, mode: m.mode },
                rp::Operation::Symlink(s) => PatchOp::Symlink { path: s.path, target: s.target },
                rp::Operation::Chmod(c) => PatchOp::Chmod { path: c.path, mode: c.mode },
                rp::Operation::Remove(path) => PatchOp::Remove { path },
            })
            .collect();
        check_patches(&ops).map_err(|message| PluginError::Invalid { plugin: self.name.clone(), call: "patch", message })?;
        Ok(ops)
    }

    pub fn resolve_secret(&self, sandbox: &SandboxInfo, key: &str) -> Result<String, PluginError> {
        let indices = self.export(&self.exports.secret_provider, Kind::SecretProvider)?;
        let wit = sandbox.wit();
        let result = self.call("resolve", |store, instance| indices.load(&mut *store, instance)?.call_resolve(&mut *store, &wit, key))?;
        lower_secret(&self.name, key, result)
    }

    /// Hands a batch to the sink through the newest interface it exports (see
    /// `metrics-sink-v2` in wit/plugin.wit).
    pub fn receive(&self, samples: &[Sample]) -> Result<(), PluginError> {
        let result = match &self.exports.metrics_sink_v2 {
            Some(indices) => {
                let batch: Vec<metrics_sink_v2::Sample> = samples.iter().map(Sample::wit_v2).collect();
                self.call("receive", |store, instance| indices.load(&mut *store, instance)?.call_receive(&mut *store, &batch))?
            }
            None => {
                let indices = self.export(&self.exports.metrics_sink, Kind::MetricsSink)?;
                let batch: Vec<metrics_sink::Sample> = samples.iter().map(Sample::wit_v1).collect();
                self.call("receive", |store, instance| indices.load(&mut *store, instance)?.call_receive(&mut *store, &batch))?
            }
        };
        result.map_err(|m| PluginError::Refused { plugin: self.name.clone(), call: "receive", message: reason(m) })
    }
}
