//! The stack's thread: one event loop (mio) over the guest's fd, the host sockets of its flows,
//! the DNS upstream sockets and a control channel. Nothing else touches its state, so there is
//! no lock; the outside talks to it through `Handle`.
//!
//! Invariants:
//! - A guest packet is looked at before smoltcp sees it: only packets from the guest's own
//!   addresses pass; a TCP SYN that opens a flow is decided first; a denied one reaches
//!   smoltcp with no socket to take it, so the guest gets a RST at once.
//! - An allowed SYN gets its own listening socket, created just before the SYN is handed over
//!   and polled at once, with its SYN-ACK held (`pause_synack`) until the host connection is
//!   up: the guest's connect succeeds only when the destination's does, and fails with a RST
//!   when the destination refuses.
//! - At most `max_connections` flows (TCP, UDP, DNS over TCP) exist; each holds one host fd and
//!   buffers of a fixed size, so a guest cannot make the shim use more fds or memory than that.
//! - A flow the policy no longer allows (`Control::Policy`) is closed at once.
//! - A TCP flow's far end is the host connection or, once an interceptor took the flow (see
//!   `intercept`), the interceptor's stream; the splice is the same code for both.
//! - Every guest byte bound for a host socket without an interceptor in between passes the
//!   secrets' guard first (`guard`): a placeholder ends the flow before it is written.

use crate::device::{write_frame, FrameDevice};
use crate::dns::{Asker, QueryOutcome, Resolver};
use crate::packet::{self, Parsed};
use crate::pins::Pins;
use crate::policy::{self, Decision, FlowPolicy, FlowQuery, NetworkPolicy, Protocol};
use crate::stats::Stats;
use crate::{NetEvent, StackConfig};

mod datagrams;
mod dns_io;
mod published;
mod tcp_flows;
use mio::net::{TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TUN: Token = Token(0);
const WAKER: Token = Token(1);
const DNS_V4: Token = Token(2);
const DNS_V6: Token = Token(3);
/// Published ports' listeners, then flows.
const PUBLISHED_BASE: usize = 16;
const FLOW_BASE: usize = PUBLISHED_BASE + 65_536;
/// Gateway-side ports of connections into the guest from published ports.
const INBOUND_PORTS: std::ops::RangeInclusive<u16> = 49_152..=65_535;

/// Frames read from the guest per loop turn before the flows get a turn.
const BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A guest that never completes its handshake loses the flow after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
const UDP_IDLE: Duration = Duration::from_secs(60);
const ICMP_IDLE: Duration = Duration::from_secs(30);
/// Unacknowledged guest data older than this aborts the flow (smoltcp's own timeout).
const TCP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the first guest bytes of a flow may take to show a whole TLS ClientHello.
const SNI_WAIT: Duration = Duration::from_secs(5);
/// Denial events per window; the rest are counted and reported as one.
const EVENTS_PER_WINDOW: u32 = 20;
const EVENT_WINDOW: Duration = Duration::from_secs(10);
/// A DNS-over-TCP message, with its length prefix.
const DNS_TCP_MAX: usize = 2 + 65535;

pub enum Control {
    Policy(NetworkPolicy, Option<Box<dyn FlowPolicy>>),
    Stop,
}

#[derive(Debug, PartialEq, Eq)]
enum TcpPhase {
    /// The host connect is in flight; the guest's SYN waits in SynReceived.
    Connecting { since: Instant },
    /// Spliced both ways.
    Open { since: Instant },
}

/// The far end of a TCP flow.
enum HostEnd {
    Direct(TcpStream),
    Intercepted(mio::net::UnixStream),
}

impl HostEnd {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            HostEnd::Direct(t) => t,
            HostEnd::Intercepted(u) => u,
        }
    }

    fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            HostEnd::Direct(t) => t.shutdown(how),
            HostEnd::Intercepted(u) => u.shutdown(how),
        }
    }
}

impl Read for HostEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HostEnd::Direct(t) => t.read(buf),
            HostEnd::Intercepted(u) => u.read(buf),
        }
    }
}

impl Write for HostEnd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            HostEnd::Direct(t) => t.write(buf),
            HostEnd::Intercepted(u) => u.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct TcpFlow {
    key: (SocketAddr, SocketAddr),
    handle: SocketHandle,
    host: HostEnd,
    phase: TcpPhase,
    readable: bool,
    writable: bool,
    host_eof: bool,
    guest_eof: bool,
    /// The first guest bytes were looked at for a TLS server name.
    sni_done: bool,
    /// A connection into the guest from a published port (the policy is for egress).
    inbound: bool,
    /// A policy plugin answered `intercept-tls` for the flow.
    intercept_requested: bool,
    names: Vec<String>,
    /// The names the DNS resolved to the destination (before any server name was added).
    resolved: Vec<String>,
    /// The last guest bytes passed on, for the secrets' guard (see `guard`).
    guard_tail: Vec<u8>,
}

struct UdpFlow {
    key: (SocketAddr, SocketAddr),
    host: UdpSocket,
    last: Instant,
}

struct IcmpFlow {
    /// (guest, destination, the guest's echo identifier)
    key: (IpAddr, IpAddr, u16),
    sock: crate::icmp::IcmpSocket,
    last: Instant,
}

struct DnsTcp {
    handle: SocketHandle,
    serial: u64,
    inbuf: Vec<u8>,
    since: Instant,
}

enum Flow {
    Tcp(TcpFlow),
    Udp(UdpFlow),
    Dns(DnsTcp),
    Icmp(IcmpFlow),
}

/// A datagram peer of a published UDP port, as the guest sees it (the gateway and a port).
struct InboundUdp {
    listener: usize,
    client: SocketAddr,
    last: Instant,
}

struct Listener {
    socket: crate::Listener,
    guest_port: u16,
}

struct Limiter {
    window_start: Instant,
    sent: u32,
    suppressed: u64,
}

pub struct Stack {
    cfg: StackConfig,
    poll: Poll,
    tun: Arc<OwnedFd>,
    iface: Interface,
    device: FrameDevice,
    sockets: SocketSet<'static>,
    flows: Vec<Option<Flow>>,
    free: Vec<usize>,
    count: usize,
    tcp_keys: HashMap<(SocketAddr, SocketAddr), usize>,
    udp_keys: HashMap<(SocketAddr, SocketAddr), usize>,
    icmp_keys: HashMap<(IpAddr, IpAddr, u16), usize>,
    policy: NetworkPolicy,
    plugins: Box<dyn FlowPolicy>,
    interceptor: Option<Box<dyn crate::FlowInterceptor>>,
    guard: crate::SecretGuard,
    pins: Pins,
    resolver: Resolver,
    dns_v4: Option<UdpSocket>,
    dns_v6: Option<UdpSocket>,
    /// The gateways and the host's own addresses: the `host` group.
    host_addrs: Vec<IpAddr>,
    control: Receiver<Control>,
    events: Sender<NetEvent>,
    stats: Arc<Stats>,
    limiter: Limiter,
    tun_readable: bool,
    started: Instant,
    rxbuf: Vec<u8>,
    /// One datagram from a host socket (UDP, ICMP, DNS), reused on every read.
    scratch: Vec<u8>,
    /// Ethernet links: the guest's MAC, learnt from its frames (where our own packets go).
    guest_mac: [u8; 6],
    listeners: Vec<Listener>,
    inbound_udp: HashMap<u16, InboundUdp>,
    inbound_udp_by_client: HashMap<(usize, SocketAddr), u16>,
    next_inbound_port: u16,
    /// Serials of DNS-over-TCP connections (see `dns::Asker`).
    next_dns_serial: u64,
}

fn io_other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Stack {
    pub fn new(cfg: StackConfig, tun: OwnedFd, wiring: crate::Wiring, control: Receiver<Control>, stats: Arc<Stats>) -> io::Result<(Stack, Arc<Waker>)> {
        let crate::Wiring { policy, plugins, events, published, interceptor, guard } = wiring;
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        for (i, p) in published.into_iter().enumerate() {
            let token = Token(PUBLISHED_BASE + i);
            let socket = match p.listener {
                crate::Listener::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    let mut l = mio::net::TcpListener::from_std(l);
                    poll.registry().register(&mut l, token, Interest::READABLE)?;
                    crate::Listener::MioTcp(l)
                }
                crate::Listener::Udp(u) => {
                    u.set_nonblocking(true)?;
                    let mut u = UdpSocket::from_std(u);
                    poll.registry().register(&mut u, token, Interest::READABLE)?;
                    crate::Listener::MioUdp(u)
                }
                other => other,
            };
            listeners.push(Listener { socket, guest_port: p.guest_port });
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        poll.registry().register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)?;
        let tun = Arc::new(tun);
        let mut device = FrameDevice::new(tun.clone(), cfg.mtu, cfg.medium, stats.clone());
        let mut config = match cfg.medium {
            crate::Medium::Ip => Config::new(HardwareAddress::Ip),
            crate::Medium::Ethernet => Config::new(HardwareAddress::Ethernet(smoltcp::wire::EthernetAddress(crate::GATEWAY_MAC))),
        };
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most 8 bytes into `seed`.
        unsafe { libc::getrandom(seed.as_mut_ptr().cast(), 8, 0) };
        config.random_seed = u64::from_ne_bytes(seed);
        let started = Instant::now();
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.gateway_v4), cfg.prefix_v4));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(cfg.gateway_v6), cfg.prefix_v6));
        });
        iface.routes_mut().add_default_ipv4_route(cfg.gateway_v4).map_err(io_other)?;
        iface.routes_mut().add_default_ipv6_route(cfg.gateway_v6).map_err(io_other)?;
        iface.set_any_ip(true);
        let mut dns_v4 = None;
        let mut dns_v6 = None;
        for up in &cfg.dns_upstreams {
            let slot = if up.is_ipv4() { &mut dns_v4 } else { &mut dns_v6 };
            if slot.is_none() {
                let mut s = UdpSocket::bind(packet::unspecified(up.ip()))?;
                poll.registry().register(&mut s, if up.is_ipv4() { DNS_V4 } else { DNS_V6 }, Interest::READABLE)?;
                *slot = Some(s);
            }
        }
        let mut host_addrs = crate::addr::host_addresses();
        host_addrs.extend([IpAddr::V4(cfg.gateway_v4), IpAddr::V6(cfg.gateway_v6)]);
        let resolver = Resolver::new(cfg.dns_upstreams.clone());
        let rxbuf = vec![0; cfg.mtu.max(1500) + 64 + crate::ETHERNET_HEADER];
        Ok((
            Stack {
                poll,
                tun,
                iface,
                device,
                sockets: SocketSet::new(Vec::new()),
                flows: Vec::new(),
                free: Vec::new(),
                count: 0,
                tcp_keys: HashMap::new(),
                udp_keys: HashMap::new(),
                icmp_keys: HashMap::new(),
                policy,
                plugins,
                interceptor,
                guard,
                pins: Pins::default(),
                resolver,
                dns_v4,
                dns_v6,
                host_addrs,
                control,
                events,
                stats,
                limiter: Limiter { window_start: started, sent: 0, suppressed: 0 },
                tun_readable: true,
                started,
                rxbuf,
                scratch: vec![0; 65536],
                guest_mac: [0xff; 6],
                cfg,
                listeners,
                inbound_udp: HashMap::new(),
                inbound_udp_by_client: HashMap::new(),
                next_inbound_port: *INBOUND_PORTS.start(),
                next_dns_serial: 0,
            },
            waker,
        ))
    }

    /// Runs `f` with the datagram buffer (taken out of `self` for the call, put back after).
    fn with_scratch<R>(&mut self, f: impl FnOnce(&mut Self, &mut [u8]) -> R) -> R {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = f(self, &mut buf);
        self.scratch = buf;
        r
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    /// Runs until `Control::Stop`, the control channel closes, or the guest's fd fails.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("network loop: {e}");
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    TUN => self.tun_readable = true,
                    WAKER => {}
                    DNS_V4 | DNS_V6 => self.dns_upstream_readable(ev.token()),
                    Token(t) if t >= FLOW_BASE => self.flow_event(t - FLOW_BASE, ev.is_readable() || ev.is_read_closed() || ev.is_error(), ev.is_writable() || ev.is_error()),
                    Token(t) if t >= PUBLISHED_BASE => self.published_readable(t - PUBLISHED_BASE),
                    _ => {}
                }
            }
            if !self.handle_control() {
                return;
            }
            if let Err(e) = self.drive() {
                tracing::error!("network loop: the guest's link failed: {e}");
                return;
            }
            self.timers();
        }
    }

    fn timeout(&mut self) -> Duration {
        if self.tun_readable || !self.device.rx.is_empty() {
            return Duration::ZERO;
        }
        let now = self.now();
        let mut t = self.iface.poll_delay(now, &self.sockets).map(|d| Duration::from_micros(d.total_micros())).unwrap_or(Duration::from_secs(1));
        if let Some(d) = self.resolver.next_deadline() {
            t = t.min(d.saturating_duration_since(Instant::now()));
        }
        t.min(Duration::from_secs(1))
    }

    fn handle_control(&mut self) -> bool {
        loop {
            match self.control.try_recv() {
                Ok(Control::Policy(p, plugins)) => {
                    self.policy = p;
                    if let Some(pl) = plugins {
                        self.plugins = pl;
                    }
                    self.recheck_flows();
                }
                Ok(Control::Stop) => return false,
                Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// One turn: guest frames in, smoltcp, the flows' data both ways, until nothing moves.
    fn drive(&mut self) -> io::Result<()> {
        for _ in 0..16 {
            let mut moved = false;
            if self.tun_readable {
                moved |= self.read_guest()?;
            }
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            moved |= self.pump_flows();
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.sweep();
            if !moved && !self.tun_readable {
                break;
            }
        }
        Ok(())
    }

    fn read_guest(&mut self) -> io::Result<bool> {
        let mut any = false;
        for _ in 0..BATCH {
            let mut buf = std::mem::take(&mut self.rxbuf);
            let got = crate::tun::read_frame(&self.tun, &mut buf);
            let n = match got {
                Ok(Some(n)) => n,
                Ok(None) => {
                    self.rxbuf = buf;
                    self.tun_readable = false;
                    return Ok(any);
                }
                Err(e) => {
                    self.rxbuf = buf;
                    return Err(e);
                }
            };
            any = true;
            self.stats.add(&self.stats.tx_packets, 1);
            self.stats.add(&self.stats.tx_bytes, n as u64);
            self.rxbuf = buf;
            let frame = self.rxbuf[..n].to_vec();
            self.ingest(frame);
        }
        Ok(any)
    }

    fn is_guest(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.cfg.guest_v4) || ip == IpAddr::V6(self.cfg.guest_v6)
    }

    fn is_gateway(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.cfg.gateway_v4) || ip == IpAddr::V6(self.cfg.gateway_v6)
    }

    /// Writes an IP packet of ours to the guest, framed for the link.
    fn to_guest(&self, ip: &[u8]) {
        match self.cfg.medium {
            crate::Medium::Ip => {
                write_frame(&self.tun, ip, &self.stats);
            }
            crate::Medium::Ethernet => {
                let mut f = Vec::with_capacity(crate::ETHERNET_HEADER + ip.len());
                f.extend_from_slice(&self.guest_mac);
                f.extend_from_slice(&crate::GATEWAY_MAC);
                f.extend_from_slice(if ip.first().map(|b| b >> 4) == Some(6) { &[0x86, 0xdd] } else { &[0x08, 0x00] });
                f.extend_from_slice(ip);
                write_frame(&self.tun, &f, &self.stats);
            }
        }
    }

    fn ingest(&mut self, frame: Vec<u8>) {
        let ip_start = match self.cfg.medium {
            crate::Medium::Ip => 0,
            crate::Medium::Ethernet => {
                if frame.len() < crate::ETHERNET_HEADER {
                    return;
                }
                let src_mac: [u8; 6] = frame[6..12].try_into().unwrap_or([0; 6]);
                // A unicast source only: a guest cannot make us answer a broadcast address.
                if src_mac[0] & 1 == 0 {
                    self.guest_mac = src_mac;
                }
                match u16::from_be_bytes([frame[12], frame[13]]) {
                    0x0800 | 0x86dd => crate::ETHERNET_HEADER,
                    // ARP is smoltcp's to answer.
                    0x0806 => {
                        self.device.rx.push_back(frame);
                        return;
                    }
                    _ => return,
                }
            }
        };
        let ip = &frame[ip_start..];
        match packet::parse(ip) {
            Parsed::Tcp { src, dst, syn } => {
                if !self.is_guest(src.ip()) {
                    return;
                }
                if syn && !self.tcp_keys.contains_key(&(src, dst)) {
                    self.new_tcp(src, dst, frame);
                } else {
                    self.device.rx.push_back(frame);
                }
            }
            Parsed::Udp { src, dst, payload } => {
                if !self.is_guest(src.ip()) {
                    return;
                }
                let payload = payload.to_vec();
                if self.is_gateway(dst.ip()) && dst.port() == 53 {
                    self.dns_query(&payload, Asker::Udp { guest: src, gateway: dst });
                } else if self.is_gateway(dst.ip()) && self.inbound_udp.contains_key(&dst.port()) {
                    self.inbound_udp_reply(dst.port(), &payload);
                } else {
                    let ip = ip.to_vec();
                    self.udp_datagram(src, dst, &payload, &ip);
                }
            }
            Parsed::Echo { src, dst, ident, seq, data } => {
                if !self.is_guest(src) {
                    return;
                }
                if self.is_gateway(dst) {
                    let reply = packet::echo_reply(dst, src, ident, seq, data);
                    self.to_guest(&reply);
                } else {
                    let (data, ip) = (data.to_vec(), ip.to_vec());
                    self.echo(src, dst, ident, seq, &data, &ip);
                }
            }
            // On an Ethernet link, neighbour discovery is smoltcp's; nothing else is anyone's.
            Parsed::Other => {
                if self.cfg.medium == crate::Medium::Ethernet {
                    self.device.rx.push_back(frame);
                }
            }
        }
    }

    fn gateway_for(&self, ip: IpAddr) -> IpAddr {
        if ip.is_ipv4() {
            IpAddr::V4(self.cfg.gateway_v4)
        } else {
            IpAddr::V6(self.cfg.gateway_v6)
        }
    }

    fn decide(&mut self, protocol: Protocol, ip: IpAddr, port: u16, names: &[String]) -> Decision {
        let d = policy::decide(&self.policy, &FlowQuery { protocol, ip, port, names }, &self.host_addrs, self.plugins.as_mut());
        self.count_plugins();
        d
    }

    fn count_plugins(&self) {
        let (asked, cached) = self.plugins.counts();
        self.stats.set(&self.stats.plugin_decisions, asked);
        self.stats.set(&self.stats.plugin_cache_hits, cached);
    }

    /// Where a host socket for a flow to `dst` really connects: the gateway is the host's
    /// loopback (reached only when a rule allows the `host` group); IPv6 spellings of IPv4
    /// addresses become those addresses.
    fn host_target(&self, dst: SocketAddr) -> SocketAddr {
        if dst.ip() == IpAddr::V4(self.cfg.gateway_v4) {
            return SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), dst.port());
        }
        if dst.ip() == IpAddr::V6(self.cfg.gateway_v6) {
            return SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), dst.port());
        }
        SocketAddr::new(crate::addr::canonical(dst.ip()), dst.port())
    }

    fn emit(&mut self, event: NetEvent) {
        let now = Instant::now();
        if now.duration_since(self.limiter.window_start) >= EVENT_WINDOW {
            if self.limiter.suppressed > 0 {
                let _ = self.events.send(NetEvent::Suppressed { count: self.limiter.suppressed });
            }
            self.limiter = Limiter { window_start: now, sent: 0, suppressed: 0 };
        }
        if self.limiter.sent < EVENTS_PER_WINDOW {
            self.limiter.sent += 1;
            let _ = self.events.send(event);
        } else {
            self.limiter.suppressed += 1;
        }
    }

    /// A placeholder was caught leaving (see `guard`): counted and reported, never rate-limited
    /// away silently (the limiter still bounds the events).
    fn secret_blocked(&mut self, secret: String, destination: Option<SocketAddr>, names: Vec<String>, via: &str) {
        self.stats.add(&self.stats.flows_denied, 1);
        tracing::warn!("secret {secret}: its placeholder was leaving through {via} to {destination:?} {names:?}; blocked");
        self.emit(NetEvent::SecretBlocked { secret, destination, names, via: via.to_string() });
    }

    fn denied(&mut self, protocol: Protocol, dst: SocketAddr, names: &[String], d: &Decision) {
        self.stats.add(&self.stats.flows_denied, 1);
        let reason = match &d.verdict {
            policy::Verdict::Deny { reason } => reason.clone(),
            _ => String::new(),
        };
        self.emit(NetEvent::Denied { protocol, destination: dst, names: names.to_vec(), reason, decided_by: d.decided_by.clone() });
    }

    fn insert_flow(&mut self, flow: Flow) -> usize {
        self.count += 1;
        self.stats.set(&self.stats.open_flows, self.count as u64);
        if let Some(i) = self.free.pop() {
            self.flows[i] = Some(flow);
            i
        } else {
            self.flows.push(Some(flow));
            self.flows.len() - 1
        }
    }

    fn full(&self) -> bool {
        self.count >= self.cfg.max_connections
    }

    fn refuse_full(&mut self, protocol: Protocol, dst: SocketAddr) {
        let d = Decision {
            verdict: policy::Verdict::Deny { reason: format!("the sandbox has {} open flows", self.count) },
            decided_by: "network.maxConnections".into(),
        };
        self.denied(protocol, dst, &[], &d);
    }

    /// Drops flows whose work is done.
    fn sweep(&mut self) {
        for id in 0..self.flows.len() {
            let done = match &self.flows[id] {
                Some(Flow::Tcp(f)) => {
                    let s = self.sockets.get::<tcp::Socket>(f.handle);
                    matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                }
                Some(Flow::Dns(d)) => {
                    let s = self.sockets.get::<tcp::Socket>(d.handle);
                    matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                }
                _ => false,
            };
            if done {
                self.remove_flow(id);
            }
        }
    }

    fn remove_flow(&mut self, id: usize) {
        let Some(flow) = self.flows.get_mut(id).and_then(Option::take) else { return };
        match flow {
            Flow::Tcp(mut f) => {
                let _ = self.poll.registry().deregister(f.host.source());
                self.sockets.remove(f.handle);
                self.tcp_keys.remove(&f.key);
            }
            Flow::Udp(mut u) => {
                let _ = self.poll.registry().deregister(&mut u.host);
                self.udp_keys.remove(&u.key);
            }
            Flow::Dns(d) => {
                self.sockets.remove(d.handle);
                self.tcp_keys.retain(|_, v| *v != id);
            }
            Flow::Icmp(i) => {
                let _ = self.poll.registry().deregister(&mut SourceFd(&i.sock.fd.as_raw_fd()));
                self.icmp_keys.remove(&i.key);
            }
        }
        self.free.push(id);
        self.count -= 1;
        self.stats.set(&self.stats.open_flows, self.count as u64);
    }

    /// Deadlines: connects and handshakes that take too long, idle UDP flows, DNS retries.
    fn timers(&mut self) {
        let now = Instant::now();
        for id in 0..self.flows.len() {
            match &mut self.flows[id] {
                Some(Flow::Tcp(f)) => {
                    let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
                    let stuck = match f.phase {
                        TcpPhase::Connecting { since } => now.duration_since(since) > CONNECT_TIMEOUT,
                        TcpPhase::Open { since } => s.state() == tcp::State::SynReceived && now.duration_since(since) > HANDSHAKE_TIMEOUT,
                    };
                    if stuck {
                        s.abort();
                    }
                }
                Some(Flow::Udp(u)) if now.duration_since(u.last) > UDP_IDLE => self.remove_flow(id),
                Some(Flow::Icmp(i)) if now.duration_since(i.last) > ICMP_IDLE => self.remove_flow(id),
                Some(Flow::Dns(d)) if now.duration_since(d.since) > Duration::from_secs(60) => {
                    self.sockets.get_mut::<tcp::Socket>(d.handle).abort();
                }
                _ => {}
            }
        }
        let idle: Vec<u16> = self.inbound_udp.iter().filter(|(_, u)| now.duration_since(u.last) > UDP_IDLE).map(|(p, _)| *p).collect();
        for port in idle {
            if let Some(u) = self.inbound_udp.remove(&port) {
                self.inbound_udp_by_client.remove(&(u.listener, u.client));
            }
        }
        let (resend, failed) = self.resolver.expire(now);
        for (up, bytes) in resend {
            self.send_upstream(up, &bytes);
        }
        for (asker, bytes) in failed {
            self.dns_reply(asker, &bytes);
        }
    }

    /// The policy changed: every flow it now denies is closed.
    fn recheck_flows(&mut self) {
        for id in 0..self.flows.len() {
            let (protocol, dst, names) = match &self.flows[id] {
                Some(Flow::Tcp(f)) if !f.inbound => (Protocol::Tcp, f.key.1, f.names.clone()),
                Some(Flow::Udp(u)) => (Protocol::Udp, u.key.1, self.pins.names(u.key.1.ip(), Instant::now())),
                Some(Flow::Icmp(i)) => (Protocol::Icmp, SocketAddr::new(i.key.1, 0), Vec::new()),
                _ => continue,
            };
            let d = self.decide(protocol, dst.ip(), dst.port(), &names);
            if d.allowed() {
                continue;
            }
            self.denied(protocol, dst, &names, &d);
            match &mut self.flows[id] {
                Some(Flow::Tcp(f)) => {
                    f.reset(self.sockets.get_mut::<tcp::Socket>(f.handle));
                }
                Some(Flow::Udp(_)) | Some(Flow::Icmp(_)) => self.remove_flow(id),
                _ => {}
            }
        }
    }

}
