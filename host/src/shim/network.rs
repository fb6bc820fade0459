//! The shim's side of the sandbox's network: it shapes the link (addresses, MTU, DNS
//! upstreams) for both the agent's Init and the stack, starts the stack (`netstack`) over the
//! link's fd, puts the sandbox's network-policy plugins behind the stack's `FlowPolicy`, and
//! records the stack's denials as the sandbox's events in the store.
//!
//! Threads: the stack's own loop (`netstack`), one event writer that owns its store connection,
//! and one counters writer (`network.json`, every 2 s); none shares a lock with the rest of the
//! shim. The rest of the shim reaches the stack only through its `Handle` (a channel and a
//! waker), under the `network` mutex of `server::Shared`, which is never held with another. A policy plugin runs on the
//! stack's thread: its deadline (the Plugin's `timeoutMs`) bounds how long one new flow can
//! hold the others up.

use crate::net_counters::NetworkCounters;
use super::ShimConfig;
use crate::plugin::{FlowAction, LoadedPlugin, Protocol as PluginProtocol, Registry, SandboxInfo};
use crate::plugin::policy::{decide_dns, decide_flow, DecisionCache};
use guest_agent::protocol::{LinkAddress, NetworkInit};
use netstack::{FlowPolicy, NetEvent, PluginVerdict, Protocol, StackConfig};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};

/// The sandbox's interface name.
pub const INTERFACE: &str = "eth0";

/// The link of a sandbox that has one (`network.policy` other than `none`).
pub fn link(cfg: &ShimConfig) -> Result<Option<(StackConfig, NetworkInit)>, String> {
    if !cfg.spec.network.has_link() {
        return Ok(None);
    }
    let stack = StackConfig {
        max_connections: cfg.spec.network.max_connections.map(|n| n as usize).unwrap_or(netstack::DEFAULT_MAX_CONNECTIONS),
        dns_upstreams: cfg.dns_upstreams.clone(),
        mtu: cfg.spec.network.mtu.map(|m| m as usize).unwrap_or(netstack::DEFAULT_MTU),
        ..StackConfig::default()
    };
    let init = NetworkInit {
        interface: INTERFACE.into(),
        mtu: stack.mtu as u32,
        ipv4: Some(LinkAddress { address: stack.guest_v4, prefix: stack.prefix_v4, gateway: stack.gateway_v4 }),
        ipv6: Some(LinkAddress { address: stack.guest_v6, prefix: stack.prefix_v6, gateway: stack.gateway_v6 }),
        nameservers: vec![IpAddr::V4(stack.gateway_v4), IpAddr::V6(stack.gateway_v6)],
    };
    Ok(Some((stack, init)))
}

/// The network-policy plugins, as the stack asks them.
struct Plugins {
    plugins: Vec<Arc<LoadedPlugin>>,
    cache: DecisionCache,
    info: SandboxInfo,
    asked: u64,
    cached: u64,
}

impl FlowPolicy for Plugins {
    fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    fn decide_flow(&mut self, protocol: Protocol, ip: IpAddr, port: u16, domain: Option<&str>) -> PluginVerdict {
        let protocol = match protocol {
            Protocol::Tcp => PluginProtocol::Tcp,
            Protocol::Udp => PluginProtocol::Udp,
            // The interface knows no ICMP; the stack never asks (see netstack::policy).
            Protocol::Icmp => return PluginVerdict::Allow,
        };
        let d = decide_flow(&self.plugins, &self.cache, &self.info, protocol, ip, port, domain);
        self.asked += 1;
        self.cached += u64::from(d.cached);
        match d.action {
            FlowAction::Allow => PluginVerdict::Allow,
            FlowAction::InterceptTls => PluginVerdict::InterceptTls,
            FlowAction::Deny(reason) => PluginVerdict::Deny { plugin: d.decided_by.unwrap_or_else(|| "?".into()), reason },
        }
    }

    fn decide_dns(&mut self, name: &str, record_type: &str) -> Result<(), (String, String)> {
        self.asked += 1;
        decide_dns(&self.plugins, &self.cache, &self.info, name, record_type)
    }

    fn counts(&self) -> (u64, u64) {
        (self.asked, self.cached)
    }
}

/// Loads the sandbox's network-policy plugins. A plugin that cannot be loaded fails the start:
/// a sandbox must not run without the policy it names.
fn plugins(cfg: &ShimConfig) -> Result<Box<dyn FlowPolicy>, String> {
    let registry = Registry::new(cfg.plugin_cache.clone());
    let mut loaded = Vec::new();
    for name in &cfg.spec.network.plugins {
        let spec = cfg.network_plugins.iter().find(|(n, _)| n == name).map(|(_, s)| s).ok_or_else(|| format!("spec.network.plugins: plugin {name} was not resolved for this sandbox"))?;
        loaded.push(registry.get(name, spec).map_err(|e| format!("spec.network.plugins: {e}"))?);
    }
    let info = SandboxInfo { name: cfg.name.clone(), labels: cfg.labels.clone(), image: cfg.spec.image.clone(), isolation: cfg.backend.isolation().as_str().to_string() };
    Ok(Box::new(Plugins { plugins: loaded, cache: DecisionCache::default(), info, asked: 0, cached: 0 }))
}

/// A changed `network` section, as the host sends it (`ShimRequest::UpdateNetwork`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetworkUpdate {
    pub network: crate::spec::NetworkSpec,
    pub plugins: Vec<(String, crate::spec::PluginSpec)>,
}

/// The running network of one sandbox.
pub struct Network {
    handle: netstack::Handle,
}

impl Network {
    pub fn stats(&self) -> netstack::Snapshot {
        self.handle.stats()
    }

    /// Applies a changed `network` section to the running sandbox: new flows see it at once,
    /// open flows it denies are closed. Nothing changes when the new plugins cannot be loaded.
    pub fn update(&self, cfg: &ShimConfig, update: NetworkUpdate) -> Result<(), String> {
        if update.network.has_link() != cfg.spec.network.has_link() {
            return Err("adding or removing the link (policy none) needs a restart".into());
        }
        let mut next = cfg.clone();
        next.spec.network = update.network;
        next.network_plugins = update.plugins;
        let policy = next.spec.network.to_policy()?;
        let plugins = plugins(&next)?;
        self.handle.set_policy(policy, Some(plugins));
        Ok(())
    }

    pub fn stop(self) {
        self.handle.stop();
    }
}

/// Binds the host sockets of `spec.ports`, before anything of the sandbox exists: a port in
/// use refuses the sandbox with the field that named it.
pub fn bind_published(cfg: &ShimConfig) -> Result<Vec<netstack::Published>, String> {
    let mut out = Vec::new();
    for (i, p) in cfg.spec.ports.iter().enumerate() {
        let addr = p.host_addr();
        let listener = match p.protocol {
            crate::spec::PortProtocol::Tcp => std::net::TcpListener::bind(addr).map(netstack::Listener::Tcp),
            crate::spec::PortProtocol::Udp => std::net::UdpSocket::bind(addr).map(netstack::Listener::Udp),
        }
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse { "; another process (or sandbox) has it: choose another host port" } else { "" };
            format!("spec.ports[{i}]: cannot listen on {addr}: {e}{hint}")
        })?;
        out.push(netstack::Published { listener, guest_port: p.guest });
    }
    Ok(out)
}

/// Starts the stack over `link` (the sandbox's end: a TUN fd).
/// `name` is the sandbox's name as it is now (a pooled sandbox can take another).
/// `interception`: the sandbox's TLS interception and how it stops the sandbox, when it has one.
pub fn start(
    cfg: &ShimConfig,
    name: std::sync::Arc<std::sync::Mutex<String>>,
    stack: StackConfig,
    link: OwnedFd,
    published: Vec<netstack::Published>,
    interception: Option<(Arc<super::tls::Interception>, super::tls::StopSandbox)>,
) -> Result<Network, String> {
    raise_fd_limit(stack.max_connections);
    let policy = cfg.spec.network.to_policy()?;
    let plugins = plugins(cfg)?;
    let (tx, rx) = mpsc::channel();
    let interceptor = interception.map(|(i, stop)| i.interceptor(tx.clone(), stop));
    // Every placeholder, whatever its hosts: none may leave in traffic nobody inspects.
    let guard = netstack::SecretGuard::new(super::secrets().iter().map(|s| (s.placeholder.clone(), s.env.clone())));
    let wiring = netstack::Wiring { policy, plugins, events: tx, published, interceptor, guard };
    let handle = netstack::spawn(stack, link, wiring).map_err(|e| format!("starting the network: {e}"))?;
    let stats = handle.stats_source();
    let dir = crate::paths::InstanceDir(cfg.dir.clone());
    std::thread::Builder::new()
        .name("net-stats".into())
        .spawn(move || write_stats(stats, dir))
        .map_err(|e| format!("starting a thread: {e}"))?;
    let object = name;
    let db = cfg.data_dir.as_ref().map(|d| d.join("state.db"));
    std::thread::Builder::new()
        .name("net-events".into())
        .spawn(move || record_events(rx, db, object))
        .map_err(|e| format!("starting a thread: {e}"))?;
    Ok(Network { handle })
}

/// How often the counters file is rewritten (when something changed).
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

fn write_stats(stats: std::sync::Weak<netstack::stats::Stats>, dir: crate::paths::InstanceDir) {
    let mut last = None;
    loop {
        let Some(s) = stats.upgrade() else { return };
        let snap = s.snapshot();
        drop(s);
        if last != Some(snap) {
            if let Err(e) = NetworkCounters::from(snap).write(&dir) {
                tracing::debug!("writing the network counters: {e}");
            }
            last = Some(snap);
        }
        std::thread::sleep(STATS_INTERVAL);
    }
}

/// One line per event, the way `describe` and `events` show them.
pub fn describe(event: &NetEvent) -> (&'static str, String) {
    match event {
        NetEvent::Denied { protocol, destination, names, reason, decided_by } => {
            let to = match names.first() {
                Some(n) => format!("{n} ({destination})"),
                None => destination.to_string(),
            };
            ("NetworkDenied", format!("{} to {to} denied by {decided_by}: {reason}", protocol.as_str()))
        }
        NetEvent::DnsRefused { name, reason, decided_by } => ("DnsRefused", format!("{name} refused by {decided_by}: {reason}")),
        NetEvent::Suppressed { count } => ("NetworkDenied", format!("{count} more denials in the last 10 s (not shown one by one)")),
        NetEvent::SecretBlocked { secret, destination, names, via } => {
            let to = match (names.first(), destination) {
                (Some(n), Some(d)) => format!(" to {n} ({d})"),
                (None, Some(d)) => format!(" to {d}"),
                (Some(n), None) => format!(" to {n}"),
                (None, None) => String::new(),
            };
            ("SecretBlocked", format!("secret {secret}: its placeholder was on its way{to} in {via}; blocked"))
        }
        NetEvent::UpstreamTlsFailed { destination, server_name, reason } => ("TlsUpstreamFailed", format!("{server_name} ({destination}) failed TLS verification: {reason}; the sandbox's requests got a 502")),
    }
}

fn record_events(rx: mpsc::Receiver<NetEvent>, db: Option<std::path::PathBuf>, name: std::sync::Arc<std::sync::Mutex<String>>) {
    let mut store = None;
    for event in rx {
        let object = format!("Sandbox/{}", name.lock().unwrap_or_else(|e| e.into_inner()));
        let (reason, message) = describe(&event);
        tracing::info!("{message}");
        let Some(path) = &db else { continue };
        if store.is_none() {
            store = crate::store::Store::open(path).map_err(|e| tracing::warn!("opening the store for network events: {e}")).ok();
        }
        if let Some(s) = &store {
            if let Err(e) = s.event(&object, reason, &message) {
                tracing::warn!("recording a network event: {e}");
                store = None;
            }
        }
    }
}

/// Each flow holds a host fd: let the shim have them (the soft limit is often 1024).
fn raise_fd_limit(flows: usize) {
    // An intercepted flow holds three: its host socket and both ends of the proxy's pair.
    let want = (flows as u64 * 3 + 256).min(1 << 20);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
