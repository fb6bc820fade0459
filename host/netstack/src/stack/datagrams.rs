//! UDP flows (one connected host socket per guest port and destination) and ping (ICMP
//! sockets of the host), each refused at once with an ICMP error when the policy denies it.

use super::*;

impl Stack {

    pub(super) fn udp_datagram(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8], frame: &[u8]) {
        let now = Instant::now();
        if let Some(secret) = self.guard.find(payload) {
            let (secret, names) = (secret.to_string(), self.pins.names(dst.ip(), now));
            self.secret_blocked(secret, Some(dst), names, "a UDP datagram");
            return;
        }
        let id = match self.udp_keys.get(&(src, dst)) {
            Some(id) => *id,
            None => {
                if self.full() {
                    self.refuse_full(Protocol::Udp, dst);
                    return;
                }
                let names = self.pins.names(dst.ip(), now);
                let mut d = self.decide(Protocol::Udp, dst.ip(), dst.port(), &names);
                if d.allowed() && dst.port() == 443 && (d.intercept_requested() || self.interceptor.as_mut().is_some_and(|i| i.blocks_quic(dst, &names))) {
                    d = Decision { verdict: policy::Verdict::Deny { reason: "QUIC to a host whose TLS is intercepted (the client falls back to TCP)".into() }, decided_by: "tls interception".into() };
                }
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

    pub(super) fn udp_readable(&mut self, id: usize) {
        self.with_scratch(|s, buf| s.udp_readable_into(id, buf))
    }

    fn udp_readable_into(&mut self, id: usize, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let Some(Some(Flow::Udp(u))) = self.flows.get_mut(id) else { return };
            match u.host.recv(buf) {
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


    pub(super) fn echo(&mut self, src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8], frame: &[u8]) {
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

    pub(super) fn icmp_readable(&mut self, id: usize) {
        self.with_scratch(|s, buf| s.icmp_readable_into(id, buf))
    }

    fn icmp_readable_into(&mut self, id: usize, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let Some(Some(Flow::Icmp(i))) = self.flows.get_mut(id) else { return };
            match i.sock.recv(buf) {
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
}
