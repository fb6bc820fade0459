//! A sandbox's network counters as its shim writes them (`network.json` in the instance
//! directory, rewritten every 2 s while they change) and as `get -o json`, `describe` and the
//! metrics sinks read them: one type, one file format.

use crate::paths::InstanceDir;
use serde::{Deserialize, Serialize};

/// From the sandbox's side: `rx` is what it received, `tx` what it sent; since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub open_flows: u64,
    pub flows_allowed: u64,
    pub flows_denied: u64,
    pub dns_queries: u64,
    pub dns_nxdomain: u64,
    /// Flows and queries the plugins were asked about, and how many answers came from cache.
    pub plugin_decisions: u64,
    pub plugin_cache_hits: u64,
}

impl From<netstack::Snapshot> for NetworkCounters {
    fn from(s: netstack::Snapshot) -> Self {
        NetworkCounters {
            rx_bytes: s.rx_bytes,
            rx_packets: s.rx_packets,
            tx_bytes: s.tx_bytes,
            tx_packets: s.tx_packets,
            open_flows: s.open_flows,
            flows_allowed: s.flows_allowed,
            flows_denied: s.flows_denied,
            dns_queries: s.dns_queries,
            dns_nxdomain: s.dns_nxdomain,
            plugin_decisions: s.plugin_decisions,
            plugin_cache_hits: s.plugin_cache_hits,
        }
    }
}

impl NetworkCounters {
    /// What the instance's shim last wrote; `None` when it has no network or wrote nothing yet
    /// (or the file is unreadable: the counters are for display, never a reason to fail).
    pub fn read(dir: &InstanceDir) -> Option<NetworkCounters> {
        serde_json::from_slice(&std::fs::read(dir.network_stats()).ok()?).ok()
    }

    pub fn write(&self, dir: &InstanceDir) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::paths::write_atomic(&dir.network_stats(), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_with_the_names_users_see() {
        let dir = tempfile::tempdir().unwrap();
        let inst = InstanceDir(dir.path().to_path_buf());
        assert_eq!(NetworkCounters::read(&inst), None);
        let c = NetworkCounters { rx_bytes: 10, dns_nxdomain: 2, ..Default::default() };
        c.write(&inst).unwrap();
        assert_eq!(NetworkCounters::read(&inst), Some(c));
        let text = std::fs::read_to_string(inst.network_stats()).unwrap();
        assert!(text.contains("\"rxBytes\":10") && text.contains("\"dnsNxdomain\":2"), "{text}");
        std::fs::write(inst.network_stats(), b"{ torn").unwrap();
        assert_eq!(NetworkCounters::read(&inst), None);
    }
}
