//! Published ports: host listeners whose connections and datagrams go into the guest from the
//! gateway's address, each on a gateway port of its own.

use super::*;

impl Stack {

    /// A gateway port for a new connection into the guest, none in use.
    pub(super) fn inbound_port(&mut self) -> Option<u16> {
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

    pub(super) fn published_readable(&mut self, index: usize) {
        let Some(l) = self.listeners.get(index) else { return };
        match &l.socket {
            crate::Listener::MioTcp(_) => self.accept_published(index),
            crate::Listener::MioUdp(_) => self.published_datagrams(index),
            _ => {}
        }
    }

    pub(super) fn accept_published(&mut self, index: usize) {
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
                host: HostEnd::Direct(stream),
                phase: TcpPhase::Open { since: Instant::now() },
                readable: true,
                writable: true,
                host_eof: false,
                guest_eof: false,
                sni_done: true,
                inbound: true,
                intercept_requested: false,
                names: Vec::new(),
                resolved: Vec::new(),
                guard_tail: Vec::new(),
            };
            let id = self.insert_flow(Flow::Tcp(flow));
            self.tcp_keys.insert((guest, local), id);
            if let Some(Some(Flow::Tcp(f))) = self.flows.get_mut(id) {
                if self.poll.registry().register(f.host.source(), Token(FLOW_BASE + id), Interest::READABLE | Interest::WRITABLE).is_err() {
                    self.sockets.get_mut::<tcp::Socket>(handle).abort();
                }
            }
        }
    }

    pub(super) fn published_datagrams(&mut self, index: usize) {
        self.with_scratch(|s, buf| s.published_datagrams_into(index, buf))
    }

    fn published_datagrams_into(&mut self, index: usize, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let (n, client) = match &self.listeners[index].socket {
                crate::Listener::MioUdp(u) => match u.recv_from(buf) {
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
    pub(super) fn inbound_udp_reply(&mut self, port: u16, payload: &[u8]) {
        let Some(u) = self.inbound_udp.get_mut(&port) else { return };
        u.last = Instant::now();
        if let Some(Listener { socket: crate::Listener::MioUdp(sock), .. }) = self.listeners.get(u.listener) {
            let _ = sock.send_to(payload, u.client);
        }
    }
}
