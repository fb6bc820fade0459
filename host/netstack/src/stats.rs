//! Counters of one sandbox's network, from the sandbox's side: `rx` is what it received,
//! `tx` what it sent. Written by the stack's thread, read by anyone.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct Stats {
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub open_flows: AtomicU64,
    pub flows_allowed: AtomicU64,
    pub flows_denied: AtomicU64,
    pub dns_queries: AtomicU64,
    pub dns_nxdomain: AtomicU64,
    /// Flows and queries the plugins were asked about, and how many answers came from cache.
    pub plugin_decisions: AtomicU64,
    pub plugin_cache_hits: AtomicU64,
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub open_flows: u64,
    pub flows_allowed: u64,
    pub flows_denied: u64,
    pub dns_queries: u64,
    pub dns_nxdomain: u64,
    pub plugin_decisions: u64,
    pub plugin_cache_hits: u64,
}

impl Stats {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            rx_bytes: r(&self.rx_bytes),
            rx_packets: r(&self.rx_packets),
            tx_bytes: r(&self.tx_bytes),
            tx_packets: r(&self.tx_packets),
            open_flows: r(&self.open_flows),
            flows_allowed: r(&self.flows_allowed),
            flows_denied: r(&self.flows_denied),
            dns_queries: r(&self.dns_queries),
            dns_nxdomain: r(&self.dns_nxdomain),
            plugin_decisions: r(&self.plugin_decisions),
            plugin_cache_hits: r(&self.plugin_cache_hits),
        }
    }
}
