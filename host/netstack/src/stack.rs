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

use crate::device::{write_frame, FrameDevice};
use crate::dns::{Asker, QueryOutcome, Resolver};
use crate::packet::{self, Parsed};
use crate::pins::Pins;
use crate::policy::{self, Decision, FlowPolicy, FlowQuery, NetworkPolicy, Protocol};
use crate::stats::Stats;
use crate::{NetEvent, StackConfig};
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

struct TcpFlow {
    key: (SocketAddr, SocketAddr),
    handle: SocketHandle,
    host: TcpStream,
    phase: TcpPhase,
    readable: bool,
    writable: bool,
    host_eof: bool,
    guest_eof: bool,
    /// The first guest bytes were looked at for a TLS server name.
    sni_done: bool,
    /// A connection into the guest from a published port (the policy is for egress).
    inbound: bool,
    names: Vec<String>,
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
    /// Ethernet links: the guest's MAC, learnt from its frames (where our own packets go).
    guest_mac: [u8; 6],
    listeners: Vec<Listener>,
    inbound_udp: HashMap<u16, InboundUdp>,
    inbound_udp_by_client: HashMap<(usize, SocketAddr), u16>,
    next_inbound_port: u16,
}

fn io_other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Stack {
    pub fn new(
        cfg: StackConfig,
        tun: OwnedFd,
        policy: NetworkPolicy,
        plugins: Box<dyn FlowPolicy>,
        control: Receiver<Control>,
        events: Sender<NetEvent>,
        stats: Arc<Stats>,
        published: Vec<crate::Published>,
    ) -> io::Result<(Stack, Arc<Waker>)> {
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
                guest_mac: [0xff; 6],
                cfg,
                listeners,
                inbound_udp: HashMap::new(),
                inbound_udp_by_client: HashMap::new(),
                next_inbound_port: *INBOUND_PORTS.start(),
            },
            waker,
        ))
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

    fn new_socket(&self, buffer: usize) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
        s.set_nagle_enabled(false);
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(TCP_TIMEOUT.as_secs())));
        s
    }

    /// Hands `syn` to smoltcp with `handle` as the only listener that can take it (see the
    /// module invariants); false when smoltcp did not take it.
    fn hand_syn(&mut self, handle: SocketHandle, syn: Vec<u8>) -> bool {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.device.rx.push_back(syn);
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        if s.state() == tcp::State::Listen {
            s.abort();
            return false;
        }
        true
    }

    fn new_tcp(&mut self, src: SocketAddr, dst: SocketAddr, syn: Vec<u8>) {
        if self.full() {
            self.refuse_full(Protocol::Tcp, dst);
            self.device.rx.push_back(syn);
            return;
        }
        if self.is_gateway(dst.ip()) && dst.port() == 53 {
            let mut s = self.new_socket(DNS_TCP_MAX);
            if s.listen(IpListenEndpoint { addr: Some(IpAddress::from(dst.ip())), port: 53 }).is_err() {
                return;
            }
            let handle = self.sockets.add(s);
            if !self.hand_syn(handle, syn) {
                self.sockets.remove(handle);
                return;
            }
            let id = self.insert_flow(Flow::Dns(DnsTcp { handle, inbuf: Vec::new(), since: Instant::now() }));
            self.tcp_keys.insert((src, dst), id);
            return;
        }
        let names = self.pins.names(dst.ip(), Instant::now());
        let d = self.decide(Protocol::Tcp, dst.ip(), dst.port(), &names);
        if !d.allowed() {
            self.denied(Protocol::Tcp, dst, &names, &d);
            self.device.rx.push_back(syn);
            return;
        }
        self.stats.add(&self.stats.flows_allowed, 1);
        let host = match TcpStream::connect(self.host_target(dst)) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!("connect {dst}: {e}");
                self.device.rx.push_back(syn);
                return;
            }
        };
        let _ = host.set_nodelay(true);
        let mut s = self.new_socket(self.cfg.tcp_buffer);
        if s.listen(IpListenEndpoint { addr: Some(IpAddress::from(dst.ip())), port: dst.port() }).is_err() {
            return;
        }
        s.pause_synack(true);
        let handle = self.sockets.add(s);
        if !self.hand_syn(handle, syn) {
            self.sockets.remove(handle);
            return;
        }
        let flow = TcpFlow {
            key: (src, dst),
            handle,
            host,
            phase: TcpPhase::Connecting { since: Instant::now() },
            readable: false,
            writable: false,
            host_eof: false,
            guest_eof: false,
            sni_done: false,
            inbound: false,
            names,
        };
        let id = self.insert_flow(Flow::Tcp(flow));
        self.tcp_keys.insert((src, dst), id);
        if let Some(Some(Flow::Tcp(f))) = self.flows.get_mut(id) {
            if let Err(e) = self.poll.registry().register(&mut f.host, Token(FLOW_BASE + id), Interest::READABLE | Interest::WRITABLE) {
                tracing::warn!("registering a flow: {e}");
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
            }
        }
    }

    fn flow_event(&mut self, id: usize, readable: bool, writable: bool) {
        let Some(Some(flow)) = self.flows.get_mut(id) else { return };
        match flow {
            Flow::Tcp(f) => {
                f.readable |= readable;
                f.writable |= writable;
                if writable && matches!(f.phase, TcpPhase::Connecting { .. }) {
                    match (f.host.take_error(), f.host.peer_addr()) {
                        (Ok(None), Ok(_)) => {
                            f.phase = TcpPhase::Open { since: Instant::now() };
                            self.sockets.get_mut::<tcp::Socket>(f.handle).pause_synack(false);
                        }
                        (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => {}
                        (Ok(Some(e)) | Err(e), _) | (Ok(None), Err(e)) => {
                            tracing::debug!("connect {}: {e}", f.key.1);
                            self.sockets.get_mut::<tcp::Socket>(f.handle).abort();
                            f.host_eof = true;
                            f.guest_eof = true;
                        }
                    }
                }
            }
            Flow::Udp(_) => {
                if readable {
                    self.udp_readable(id);
                }
            }
            Flow::Dns(_) => {}
            Flow::Icmp(_) => {
                if readable {
                    self.icmp_readable(id);
                }
            }
        }
    }

    /// Moves data between every open TCP flow's two ends; true when anything moved.
    fn pump_flows(&mut self) -> bool {
        let mut moved = false;
        for id in 0..self.flows.len() {
            match &self.flows[id] {
                Some(Flow::Tcp(_)) => moved |= self.pump_tcp(id),
                Some(Flow::Dns(_)) => moved |= self.pump_dns_tcp(id),
                _ => {}
            }
        }
        moved
    }

    fn pump_tcp(&mut self, id: usize) -> bool {
        let Some(Some(Flow::Tcp(f))) = self.flows.get_mut(id) else { return false };
        if !matches!(f.phase, TcpPhase::Open { .. }) {
            return false;
        }
        let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
        let mut moved = false;
        // Guest to host.
        if !f.sni_done && !f.inbound && s.can_recv() {
            let waited = match f.phase {
                TcpPhase::Open { since } => since.elapsed(),
                _ => Duration::ZERO,
            };
            let head = s.peek(crate::sni::MAX_HELLO).map(|b| b.to_vec()).unwrap_or_default();
            match crate::sni::peek(&head) {
                crate::sni::Peek::Incomplete if waited < SNI_WAIT && s.recv_queue() < crate::sni::MAX_HELLO && s.may_recv() => return false,
                crate::sni::Peek::Hello(Some(name)) => {
                    f.sni_done = true;
                    if !f.names.contains(&name) {
                        f.names.insert(0, name);
                        let (dst, names) = (f.key.1, f.names.clone());
                        let d = policy::decide(&self.policy, &FlowQuery { protocol: Protocol::Tcp, ip: dst.ip(), port: dst.port(), names: &names }, &self.host_addrs, self.plugins.as_mut());
                        if !d.allowed() {
                            let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
                            s.abort();
                            f.host_eof = true;
                            f.guest_eof = true;
                            self.denied(Protocol::Tcp, dst, &names, &d);
                            return true;
                        }
                    }
                }
                _ => f.sni_done = true,
            }
        }
        let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
        while f.writable && s.can_recv() {
            let host = &mut f.host;
            match s.recv(|buf| match host.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => moved = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => f.writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => {
                    s.abort();
                    f.host_eof = true;
                    f.guest_eof = true;
                    return true;
                }
                Err(_) => break,
            }
        }
        // The guest closed its half and everything it sent is out: close ours to the host.
        if !f.guest_eof && s.recv_queue() == 0 && matches!(s.state(), tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait) {
            f.guest_eof = true;
            let _ = f.host.shutdown(std::net::Shutdown::Write);
            moved = true;
        }
        // Host to guest.
        while f.readable && !f.host_eof && s.can_send() {
            let host = &mut f.host;
            match s.send(|buf| match host.read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(0)) => {
                    f.host_eof = true;
                    s.close();
                    moved = true;
                }
                Ok(Ok(_)) => moved = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => f.readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => {
                    s.abort();
                    f.host_eof = true;
                    f.guest_eof = true;
                    return true;
                }
                Err(_) => break,
            }
        }
        moved
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
                let _ = self.poll.registry().deregister(&mut f.host);
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
                    self.sockets.get_mut::<tcp::Socket>(f.handle).abort();
                    f.host_eof = true;
                    f.guest_eof = true;
                }
                Some(Flow::Udp(_)) | Some(Flow::Icmp(_)) => self.remove_flow(id),
                _ => {}
            }
        }
    }

    // ---- UDP ----

    fn udp_datagram(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8], frame: &[u8]) {
        let now = Instant::now();
        let id = match self.udp_keys.get(&(src, dst)) {
            Some(id) => *id,
            None => {
                if self.full() {
                    self.refuse_full(Protocol::Udp, dst);
                    return;
                }
                let names = self.pins.names(dst.ip(), now);
                let d = self.decide(Protocol::Udp, dst.ip(), dst.port(), &names);
                if !d.allowed() {
                    self.denied(Protocol::Udp, dst, &names, &d);
                    if let Some(u) = packet::unreachable(frame, self.gateway_for(src.ip()), true) {
                        self.to_guest(&u);
                    }
                    return;
                }
                self.stats.add(&self.stats.flows_allowed, 1);
                let target = self.host_target(dst);
                let host = match UdpSocket::bind(packet::unspecified(target.ip())).and_then(|s| s.connect(target).map(|_| s)) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("udp {dst}: {e}");
                        return;
                    }
                };
                let id = self.insert_flow(Flow::Udp(UdpFlow { key: (src, dst), host, last: now }));
                self.udp_keys.insert((src, dst), id);
                if let Some(Some(Flow::Udp(u))) = self.flows.get_mut(id) {
                    if self.poll.registry().register(&mut u.host, Token(FLOW_BASE + id), Interest::READABLE).is_err() {
                        self.remove_flow(id);
                        return;
                    }
                }
                id
            }
        };
        if let Some(Some(Flow::Udp(u))) = self.flows.get_mut(id) {
            u.last = now;
            let _ = u.host.send(payload);
        }
    }

    fn udp_readable(&mut self, id: usize) {
        let mut buf = vec![0u8; 65536];
        for _ in 0..BATCH {
            let Some(Some(Flow::Udp(u))) = self.flows.get_mut(id) else { return };
            match u.host.recv(&mut buf) {
                Ok(n) => {
                    u.last = Instant::now();
                    let (guest, remote) = u.key;
                    // The guest may not take what its MTU cannot carry.
                    let overhead = if guest.is_ipv4() { 28 } else { 48 };
                    if n + overhead > self.cfg.mtu {
                        continue;
                    }
                    let p = packet::udp(remote, guest, &buf[..n]);
                    self.to_guest(&p);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
        }
    }

    // ---- published ports ----

    /// A gateway port for a new connection into the guest, none in use.
    fn inbound_port(&mut self) -> Option<u16> {
        let span = usize::from(INBOUND_PORTS.end() - INBOUND_PORTS.start()) + 1;
        let guest = SocketAddr::new(IpAddr::V4(self.cfg.guest_v4), 0);
        for _ in 0..span {
            let p = self.next_inbound_port;
            self.next_inbound_port = if p == *INBOUND_PORTS.end() { *INBOUND_PORTS.start() } else { p + 1 };
            let gw = SocketAddr::new(IpAddr::V4(self.cfg.gateway_v4), p);
            let used = self.inbound_udp.contains_key(&p) || self.tcp_keys.keys().any(|(g, r)| *r == gw && g.ip() == guest.ip());
            if !used {
                return Some(p);
            }
        }
        None
    }

    fn published_readable(&mut self, index: usize) {
        let Some(l) = self.listeners.get(index) else { return };
        match &l.socket {
            crate::Listener::MioTcp(_) => self.accept_published(index),
            crate::Listener::MioUdp(_) => self.published_datagrams(index),
            _ => {}
        }
    }

    fn accept_published(&mut self, index: usize) {
        for _ in 0..BATCH {
            let (stream, peer) = match &self.listeners[index].socket {
                crate::Listener::MioTcp(l) => match l.accept() {
                    Ok(x) => x,
                    Err(_) => return,
                },
                _ => return,
            };
            let guest_port = self.listeners[index].guest_port;
            if self.full() {
                let d = Decision { verdict: policy::Verdict::Deny { reason: format!("the sandbox has {} open flows", self.count) }, decided_by: "network.maxConnections".into() };
                self.denied(Protocol::Tcp, peer, &[], &d);
                continue;
            }
            let Some(port) = self.inbound_port() else { continue };
            let guest = SocketAddr::new(IpAddr::V4(self.cfg.guest_v4), guest_port);
            let local = SocketAddr::new(IpAddr::V4(self.cfg.gateway_v4), port);
            let mut s = self.new_socket(self.cfg.tcp_buffer);
            if s.connect(self.iface.context(), smoltcp::wire::IpEndpoint::from(guest), smoltcp::wire::IpListenEndpoint::from(local)).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let handle = self.sockets.add(s);
            let flow = TcpFlow {
                key: (guest, local),
                handle,
                host: stream,
                phase: TcpPhase::Open { since: Instant::now() },
                readable: true,
                writable: true,
                host_eof: false,
                guest_eof: false,
                sni_done: true,
                inbound: true,
                names: Vec::new(),
            };
            let id = self.insert_flow(Flow::Tcp(flow));
            self.tcp_keys.insert((guest, local), id);
            if let Some(Some(Flow::Tcp(f))) = self.flows.get_mut(id) {
                if self.poll.registry().register(&mut f.host, Token(FLOW_BASE + id), Interest::READABLE | Interest::WRITABLE).is_err() {
                    self.sockets.get_mut::<tcp::Socket>(handle).abort();
                }
            }
        }
    }

    fn published_datagrams(&mut self, index: usize) {
        let mut buf = vec![0u8; 65536];
        for _ in 0..BATCH {
            let (n, client) = match &self.listeners[index].socket {
                crate::Listener::MioUdp(u) => match u.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => return,
                },
                _ => return,
            };
            let port = match self.inbound_udp_by_client.get(&(index, client)) {
                Some(p) => *p,
                None => {
                    if self.inbound_udp.len() >= self.cfg.max_connections {
                        continue;
                    }
                    let Some(p) = self.inbound_port() else { continue };
                    self.inbound_udp.insert(p, InboundUdp { listener: index, client, last: Instant::now() });
                    self.inbound_udp_by_client.insert((index, client), p);
                    p
                }
            };
            if let Some(u) = self.inbound_udp.get_mut(&port) {
                u.last = Instant::now();
            }
            if n + 28 > self.cfg.mtu {
                continue;
            }
            let guest = SocketAddr::new(IpAddr::V4(self.cfg.guest_v4), self.listeners[index].guest_port);
            let p = packet::udp(SocketAddr::new(IpAddr::V4(self.cfg.gateway_v4), port), guest, &buf[..n]);
            self.to_guest(&p);
        }
    }

    /// The guest answered a datagram of a published port: back to that client.
    fn inbound_udp_reply(&mut self, port: u16, payload: &[u8]) {
        let Some(u) = self.inbound_udp.get_mut(&port) else { return };
        u.last = Instant::now();
        if let Some(Listener { socket: crate::Listener::MioUdp(sock), .. }) = self.listeners.get(u.listener) {
            let _ = sock.send_to(payload, u.client);
        }
    }

    // ---- ICMP echo ----

    fn echo(&mut self, src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8], frame: &[u8]) {
        let key = (src, dst, ident);
        let id = match self.icmp_keys.get(&key) {
            Some(id) => *id,
            None => {
                let d = if self.full() {
                    Decision { verdict: policy::Verdict::Deny { reason: format!("the sandbox has {} open flows", self.count) }, decided_by: "network.maxConnections".into() }
                } else {
                    self.decide(Protocol::Icmp, dst, 0, &[])
                };
                if !d.allowed() {
                    self.denied(Protocol::Icmp, SocketAddr::new(dst, 0), &[], &d);
                    if let Some(u) = packet::unreachable(frame, self.gateway_for(src), true) {
                        self.to_guest(&u);
                    }
                    return;
                }
                self.stats.add(&self.stats.flows_allowed, 1);
                let target = self.host_target(SocketAddr::new(dst, 0)).ip();
                let wire_ident = (self.now().total_micros() as u16) ^ ident.rotate_left(7);
                let sock = match crate::icmp::IcmpSocket::open(target, wire_ident) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("icmp {dst}: {e}");
                        return;
                    }
                };
                let id = self.insert_flow(Flow::Icmp(IcmpFlow { key, sock, last: Instant::now() }));
                self.icmp_keys.insert(key, id);
                if let Some(Some(Flow::Icmp(i))) = self.flows.get(id) {
                    let fd = i.sock.fd.as_raw_fd();
                    if self.poll.registry().register(&mut SourceFd(&fd), Token(FLOW_BASE + id), Interest::READABLE).is_err() {
                        self.remove_flow(id);
                        return;
                    }
                }
                id
            }
        };
        if let Some(Some(Flow::Icmp(i))) = self.flows.get_mut(id) {
            i.last = Instant::now();
            let _ = i.sock.send(seq, data);
        }
    }

    fn icmp_readable(&mut self, id: usize) {
        let mut buf = vec![0u8; 65536];
        for _ in 0..BATCH {
            let Some(Some(Flow::Icmp(i))) = self.flows.get_mut(id) else { return };
            match i.sock.recv(&mut buf) {
                Ok(Some((seq, range))) => {
                    let (guest, dst, ident) = i.key;
                    if range.len() + 48 > self.cfg.mtu {
                        continue;
                    }
                    let reply = packet::echo_reply(dst, guest, ident, seq, &buf[range]);
                    self.to_guest(&reply);
                }
                _ => return,
            }
        }
    }

    // ---- DNS ----

    fn dns_query(&mut self, bytes: &[u8], asker: Asker) {
        self.stats.add(&self.stats.dns_queries, 1);
        let mut refused = None;
        let out = self.resolver.query(bytes, asker, &self.policy, self.plugins.as_mut(), Instant::now(), &mut refused);
        self.count_plugins();
        if let Some(r) = refused {
            self.stats.add(&self.stats.dns_nxdomain, 1);
            self.emit(NetEvent::DnsRefused { name: r.name, reason: r.reason, decided_by: r.decided_by });
        }
        match out {
            QueryOutcome::Reply(b) => self.dns_reply(asker, &b),
            QueryOutcome::Forward { upstream, bytes } => self.send_upstream(upstream, &bytes),
            QueryOutcome::Drop => {}
        }
    }

    fn send_upstream(&mut self, up: SocketAddr, bytes: &[u8]) {
        let sock = if up.is_ipv4() { &self.dns_v4 } else { &self.dns_v6 };
        if let Some(s) = sock {
            let _ = s.send_to(bytes, up);
        }
    }

    fn dns_upstream_readable(&mut self, token: Token) {
        let mut buf = vec![0u8; 65536];
        loop {
            let sock = if token == DNS_V4 { &self.dns_v4 } else { &self.dns_v6 };
            let Some(s) = sock else { return };
            let (n, from) = match s.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => return,
            };
            let Some(a) = self.resolver.answer(&buf[..n], from, &self.policy, &self.host_addrs) else { continue };
            let now = Instant::now();
            for (ip, name, ttl) in a.pins {
                self.pins.insert(ip, &name, ttl, now);
            }
            if a.nxdomain {
                self.stats.add(&self.stats.dns_nxdomain, 1);
            }
            if let Some(r) = a.refusal {
                self.emit(NetEvent::DnsRefused { name: r.name, reason: r.reason, decided_by: r.decided_by });
            }
            self.dns_reply(a.asker, &a.bytes);
        }
    }

    fn dns_reply(&mut self, asker: Asker, bytes: &[u8]) {
        match asker {
            Asker::Udp { guest, gateway } => {
                let p = packet::udp(gateway, guest, bytes);
                self.to_guest(&p);
            }
            Asker::Tcp(id) => {
                if let Some(Some(Flow::Dns(d))) = self.flows.get(id) {
                    let s = self.sockets.get_mut::<tcp::Socket>(d.handle);
                    if s.send_capacity() - s.send_queue() >= bytes.len() + 2 {
                        let _ = s.send_slice(&(bytes.len() as u16).to_be_bytes());
                        let _ = s.send_slice(bytes);
                    }
                }
            }
        }
    }

    fn pump_dns_tcp(&mut self, id: usize) -> bool {
        let Some(Some(Flow::Dns(d))) = self.flows.get_mut(id) else { return false };
        let s = self.sockets.get_mut::<tcp::Socket>(d.handle);
        let mut moved = false;
        while s.can_recv() && d.inbuf.len() < DNS_TCP_MAX {
            let room = DNS_TCP_MAX - d.inbuf.len();
            let inbuf = &mut d.inbuf;
            match s.recv(|b| {
                let n = b.len().min(room);
                inbuf.extend_from_slice(&b[..n]);
                (n, n)
            }) {
                Ok(0) | Err(_) => break,
                Ok(_) => moved = true,
            }
        }
        let mut queries = Vec::new();
        while d.inbuf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([d.inbuf[0], d.inbuf[1]]));
            if d.inbuf.len() < 2 + len {
                break;
            }
            queries.push(d.inbuf[2..2 + len].to_vec());
            d.inbuf.drain(..2 + len);
        }
        if !s.may_recv() && s.state() == tcp::State::CloseWait {
            s.close();
        }
        for q in queries {
            self.dns_query(&q, Asker::Tcp(id));
        }
        moved
    }
}
