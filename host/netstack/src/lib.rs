//! One sandbox's network, in user space: the guest's IP packets (from a TUN device in a
//! namespace sandbox, from virtio-net in a microVM) go into a smoltcp stack that terminates
//! them; each new flow is decided by the sandbox's policy and, if allowed, re-opened as a host
//! socket and spliced both ways. DNS to the gateway is answered here. There is no host
//! interface, no NAT and no iptables: the guest can reach only what a host socket of the shim
//! opened for it.
//!
//! Map of the crate:
//! - `addr`: address groups (public, private, host, metadata, ...), IPv4-in-IPv6 spellings.
//! - `policy`: presets, rules, domain blocks, and the `FlowPolicy` trait the plugins sit behind.
//! - `dns`, `pins`: the gateway's resolver and the names it learnt; `sni`: TLS server names.
//! - `icmp`: ping through the host's ICMP sockets.
//! - `intercept`: the `FlowInterceptor` seam, where a TLS flow can be handed to the shim.
//! - `guard`: the secrets' tripwire, placeholders found in traffic nobody intercepts.
//! - `packet`: parsing guest packets, building the few the stack writes itself.
//! - `device`, `tun`: the guest's link; `stack`: the event loop that owns everything above.
//! - `stats`: counters the shim reports.
//!
//! This crate knows nothing of wasmtime, the store or the CLI: the shim gives it a policy, a
//! `FlowPolicy` for the plugins, and receives `NetEvent`s.

pub mod addr;
pub mod device;
pub mod dns;
pub mod guard;
pub mod icmp;
pub mod intercept;
pub mod packet;
pub mod pins;
pub mod policy;
pub mod sni;
mod stack;
pub mod stats;
pub mod tun;

pub use guard::SecretGuard;
pub use intercept::{FlowInterceptor, OfferedFlow};
pub use policy::{FlowPolicy, NetworkPolicy, PluginVerdict, Preset, Protocol};
pub use stack::Control;
pub use stats::Snapshot;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::Arc;

/// What the guest's link carries: IP packets (a TUN device) or Ethernet frames (virtio-net).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Medium {
    #[default]
    Ip,
    Ethernet,
}

pub const ETHERNET_HEADER: usize = 14;
/// The gateway's MAC on an Ethernet link (locally administered).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x6f, 0x72, 0x02];
/// The guest's MAC on an Ethernet link.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x6f, 0x72, 0x15];

/// The link's shape: the guest's and the gateway's addresses, the MTU, the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    pub medium: Medium,
    /// The IP MTU (the Ethernet header comes on top).
    pub mtu: usize,
    pub guest_v4: Ipv4Addr,
    pub gateway_v4: Ipv4Addr,
    pub prefix_v4: u8,
    pub guest_v6: Ipv6Addr,
    pub gateway_v6: Ipv6Addr,
    pub prefix_v6: u8,
    /// Flows (TCP, UDP, DNS over TCP) open at once; more are refused.
    pub max_connections: usize,
    /// Bytes of buffer per direction per TCP flow.
    pub tcp_buffer: usize,
    pub dns_upstreams: Vec<SocketAddr>,
}

pub const DEFAULT_MTU: usize = 65520;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            medium: Medium::Ip,
            mtu: DEFAULT_MTU,
            guest_v4: Ipv4Addr::new(10, 0, 2, 15),
            gateway_v4: Ipv4Addr::new(10, 0, 2, 2),
            prefix_v4: 24,
            guest_v6: Ipv6Addr::new(0xfd00, 0x6f72, 0x6368, 0, 0, 0, 0, 0x15),
            gateway_v6: Ipv6Addr::new(0xfd00, 0x6f72, 0x6368, 0, 0, 0, 0, 0x2),
            prefix_v6: 64,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tcp_buffer: 256 * 1024,
            dns_upstreams: Vec::new(),
        }
    }
}

/// What the stack reports to its owner (denials are rate-limited: at most 20 per 10 s, the
/// rest summed up in one `Suppressed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    Denied { protocol: Protocol, destination: SocketAddr, names: Vec<String>, reason: String, decided_by: String },
    DnsRefused { name: String, reason: String, decided_by: String },
    Suppressed { count: u64 },
    /// A secret's placeholder was on its way somewhere it may not go; the flow was ended (or
    /// the request refused). `via` says how it was travelling.
    SecretBlocked { secret: String, destination: Option<SocketAddr>, names: Vec<String>, via: String },
    /// An intercepted flow's real server failed verification (or could not be reached over
    /// TLS); the guest's requests got an error, nothing was sent on.
    UpstreamTlsFailed { destination: SocketAddr, server_name: String, reason: String },
}

/// A published port's host socket, bound by the caller (so a port in use fails the caller's
/// start, before anything runs).
pub enum Listener {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    #[doc(hidden)]
    MioTcp(mio::net::TcpListener),
    #[doc(hidden)]
    MioUdp(mio::net::UdpSocket),
}

/// Connections and datagrams to `listener` go to the guest's `guest_port`, from the gateway.
pub struct Published {
    pub listener: Listener,
    pub guest_port: u16,
}

/// The running stack, from outside its thread.
pub struct Handle {
    control: mpsc::Sender<Control>,
    waker: Arc<mio::Waker>,
    stats: Arc<stats::Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// Replaces the policy (and the plugins, when given): new flows use it at once, and open
    /// flows it denies are closed.
    pub fn set_policy(&self, policy: NetworkPolicy, plugins: Option<Box<dyn FlowPolicy>>) {
        let _ = self.control.send(Control::Policy(policy, plugins));
        let _ = self.waker.wake();
    }

    pub fn stats(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// The live counters, for a reader that must not keep the stack's state alive.
    pub fn stats_source(&self) -> std::sync::Weak<stats::Stats> {
        Arc::downgrade(&self.stats)
    }

    /// Stops the loop and waits for it (every host socket is closed when it returns).
    pub fn stop(mut self) {
        let _ = self.control.send(Control::Stop);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a stack is wired to besides its link: who decides flows, who hears about them, which
/// host ports lead in, and who may take flows over.
pub struct Wiring {
    pub policy: NetworkPolicy,
    pub plugins: Box<dyn FlowPolicy>,
    pub events: mpsc::Sender<NetEvent>,
    pub published: Vec<Published>,
    pub interceptor: Option<Box<dyn FlowInterceptor>>,
    /// Placeholders to stop in traffic no interceptor inspects.
    pub guard: SecretGuard,
}

impl Wiring {
    /// A policy with no plugins, no published ports and no interceptor.
    pub fn new(policy: NetworkPolicy, events: mpsc::Sender<NetEvent>) -> Wiring {
        Wiring { policy, plugins: Box::new(policy::NoPlugins), events, published: Vec::new(), interceptor: None, guard: SecretGuard::default() }
    }
}

/// Starts the stack on its own thread over `link` (a TUN fd, or one end of a packet socket
/// pair: one read, one frame).
pub fn spawn(cfg: StackConfig, link: OwnedFd, wiring: Wiring) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(stats::Stats::default());
    let (stack, waker) = stack::Stack::new(cfg, link, wiring, rx, stats.clone())?;
    let thread = std::thread::Builder::new().name("netstack".into()).spawn(move || stack.run())?;
    Ok(Handle { control: tx, waker, stats, thread: Some(thread) })
}
