//! Network-policy decisions for a sandbox: its policy plugins are asked in order, the first
//! deny wins, and an allow needs every plugin's allow (an intercept-tls from any of them makes
//! the flow intercepted). A plugin that fails (trap, deadline, wrong kind) denies: policy
//! fails closed. Decisions are cached per plugin version for the time the plugin allowed.
//!
//! This is the API the network stack calls per new flow and DNS query; `orchestrator plugin
//! eval` reaches it from the command line today.

use super::kinds::{DnsVerdict, FlowAction, FlowVerdict, Protocol, SandboxInfo};
use super::loaded::LoadedPlugin;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries kept before the cache is cleared of expired ones (and, if still full, emptied).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: FlowAction,
    /// The plugin whose answer decided (the denying one, or the last one asked).
    pub decided_by: Option<String>,
    /// True when every answer came from the cache.
    pub cached: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Flow { plugin: String, digest: String, sandbox: SandboxInfo, protocol: Protocol, ip: IpAddr, port: u16, domain: Option<String> },
    Dns { plugin: String, digest: String, sandbox: SandboxInfo, name: String, record_type: String },
}

#[derive(Debug, Clone)]
enum Cached {
    Flow(FlowVerdict),
    Dns(DnsVerdict),
}

#[derive(Default)]
pub struct DecisionCache {
    entries: Mutex<HashMap<Key, (Cached, Instant)>>,
}

impl DecisionCache {
    fn get(&self, key: &Key) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, until)| *until > Instant::now()).map(|(v, _)| v.clone())
    }

    fn put(&self, key: Key, value: Cached, seconds: u32) {
        if seconds == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (value, Instant::now() + Duration::from_secs(u64::from(seconds))));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decides a new flow of `sandbox` against `plugins` (in order).
pub fn decide_flow(
    plugins: &[Arc<LoadedPlugin>],
    cache: &DecisionCache,
    sandbox: &SandboxInfo,
    protocol: Protocol,
    ip: IpAddr,
    port: u16,
    domain: Option<&str>,
) -> Decision {
    let mut intercept = false;
    let mut all_cached = true;
    let mut last = None;
    for plugin in plugins {
        let key = Key::Flow {
            plugin: plugin.name.clone(),
            digest: plugin.digest.clone(),
            sandbox: sandbox.clone(),
            protocol,
            ip,
            port,
            domain: domain.map(str::to_string),
        };
        let verdict = match cache.get(&key) {
            Some(Cached::Flow(v)) => v,
            _ => {
                all_cached = false;
                match plugin.decide_flow(sandbox, protocol, ip, port, domain) {
                    Ok(v) => {
                        cache.put(key, Cached::Flow(v.clone()), v.cache_seconds);
                        v
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %sandbox.name, "{e}; denying the flow");
                        FlowVerdict { action: FlowAction::Deny(format!("policy plugin failed: {e}")), cache_seconds: 0 }
                    }
                }
            }
        };
        last = Some(plugin.name.clone());
        match verdict.action {
            FlowAction::Deny(reason) => return Decision { action: FlowAction::Deny(reason), decided_by: last, cached: all_cached },
            FlowAction::InterceptTls => intercept = true,
            FlowAction::Allow => {}
        }
    }
    let action = if intercept { FlowAction::InterceptTls } else { FlowAction::Allow };
    Decision { action, decided_by: last, cached: all_cached && !plugins.is_empty() }
}

/// Decides a DNS query of `sandbox`: `Err(reason)` when any plugin denies (or fails).
pub fn decide_dns(plugins: &[Arc<LoadedPlugin>], cache: &DecisionCache, sandbox: &SandboxInfo, name: &str, record_type: &str) -> Result<(), (String, String)> {
    for plugin in plugins {
        let key = Key::Dns {
            plugin: plugin.name.clone(),
            digest: plugin.digest.clone(),
            sandbox: sandbox.clone(),
            name: name.to_string(),
            record_type: record_type.to_string(),
        };
        let verdict = match cache.get(&key) {
            Some(Cached::Dns(v)) => v,
            _ => match plugin.decide_dns(sandbox, name, record_type) {
                Ok(v) => {
                    cache.put(key, Cached::Dns(v.clone()), v.cache_seconds);
                    v
                }
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox.name, "{e}; refusing the DNS query");
                    DnsVerdict { denied: Some(format!("policy plugin failed: {e}")), cache_seconds: 0 }
                }
            },
        };
        if let Some(reason) = verdict.denied {
            return Err((plugin.name.clone(), reason));
        }
    }
    Ok(())
}
