//! The gateway's DNS on the wire: queries from the guest (UDP, or TCP to port 53) to the
//! resolver, its forwards to the upstream sockets, and answers back to whoever asked.

use super::*;

impl Stack {

    pub(super) fn dns_query(&mut self, bytes: &[u8], asker: Asker) {
        self.stats.add(&self.stats.dns_queries, 1);
        if let Some(secret) = self.guard.find_ignore_case(bytes) {
            // Refused at once: the query goes nowhere (no resolver's timeout to wait out).
            let secret = secret.to_string();
            self.secret_blocked(secret, None, Vec::new(), "a DNS query");
            if let QueryOutcome::Reply(b) = crate::dns::refuse(bytes) {
                self.dns_reply(asker, &b);
            }
            return;
        }
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

    pub(super) fn send_upstream(&mut self, up: SocketAddr, bytes: &[u8]) {
        let sock = if up.is_ipv4() { &self.dns_v4 } else { &self.dns_v6 };
        if let Some(s) = sock {
            let _ = s.send_to(bytes, up);
        }
    }

    pub(super) fn dns_upstream_readable(&mut self, token: Token) {
        self.with_scratch(|s, buf| s.dns_upstream_readable_into(token, buf))
    }

    fn dns_upstream_readable_into(&mut self, token: Token, buf: &mut [u8]) {
        loop {
            let sock = if token == DNS_V4 { &self.dns_v4 } else { &self.dns_v6 };
            let Some(s) = sock else { return };
            let (n, from) = match s.recv_from(buf) {
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

    pub(super) fn dns_reply(&mut self, asker: Asker, bytes: &[u8]) {
        match asker {
            Asker::Udp { guest, gateway } => {
                let p = packet::udp(gateway, guest, bytes);
                self.to_guest(&p);
            }
            Asker::Tcp { flow, serial } => {
                // The connection that asked, not a later one in its slot.
                if let Some(Some(Flow::Dns(d))) = self.flows.get(flow) {
                    if d.serial != serial {
                        return;
                    }
                    let s = self.sockets.get_mut::<tcp::Socket>(d.handle);
                    if s.send_capacity() - s.send_queue() >= bytes.len() + 2 {
                        let _ = s.send_slice(&(bytes.len() as u16).to_be_bytes());
                        let _ = s.send_slice(bytes);
                    }
                }
            }
        }
    }

    pub(super) fn pump_dns_tcp(&mut self, id: usize) -> bool {
        let Some(Some(Flow::Dns(d))) = self.flows.get_mut(id) else { return false };
        let serial = d.serial;
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
            self.dns_query(&q, Asker::Tcp { flow: id, serial });
        }
        moved
    }
}
