//! TCP flows: a guest's SYN becomes a listening socket whose SYN-ACK waits for the host
//! connect (see the parent's invariants), and open flows are spliced both ways, the first guest
//! bytes peeked for a TLS server name, the flow then offered to the interceptor.

use super::*;

impl TcpFlow {
    /// Ends the flow at once: a RST to the guest (on the next poll), nothing more either way.
    pub(super) fn reset(&mut self, s: &mut tcp::Socket<'static>) {
        s.abort();
        self.host_eof = true;
        self.guest_eof = true;
    }
}

impl Stack {
    pub(super) fn new_socket(&self, buffer: usize) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
        s.set_nagle_enabled(false);
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(TCP_TIMEOUT.as_secs())));
        s
    }

    /// Hands `syn` to smoltcp with `handle` as the only listener that can take it (see the
    /// module invariants); false when smoltcp did not take it.
    pub(super) fn hand_syn(&mut self, handle: SocketHandle, syn: Vec<u8>) -> bool {
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

    pub(super) fn new_tcp(&mut self, src: SocketAddr, dst: SocketAddr, syn: Vec<u8>) {
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
            self.next_dns_serial += 1;
            let serial = self.next_dns_serial;
            let id = self.insert_flow(Flow::Dns(DnsTcp { handle, serial, inbuf: Vec::new(), since: Instant::now() }));
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
            host: HostEnd::Direct(host),
            phase: TcpPhase::Connecting { since: Instant::now() },
            readable: false,
            writable: false,
            host_eof: false,
            guest_eof: false,
            sni_done: false,
            inbound: false,
            intercept_requested: d.intercept_requested(),
            resolved: names.clone(),
            names,
            guard_tail: Vec::new(),
        };
        let id = self.insert_flow(Flow::Tcp(flow));
        self.tcp_keys.insert((src, dst), id);
        if let Some(Some(Flow::Tcp(f))) = self.flows.get_mut(id) {
            if let Err(e) = self.poll.registry().register(f.host.source(), Token(FLOW_BASE + id), Interest::READABLE | Interest::WRITABLE) {
                tracing::warn!("registering a flow: {e}");
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
            }
        }
    }

    pub(super) fn flow_event(&mut self, id: usize, readable: bool, writable: bool) {
        let Some(Some(flow)) = self.flows.get_mut(id) else { return };
        match flow {
            Flow::Tcp(f) => {
                f.readable |= readable;
                f.writable |= writable;
                if let (true, TcpPhase::Connecting { .. }, HostEnd::Direct(host)) = (writable, &f.phase, &f.host) {
                    match (host.take_error(), host.peer_addr()) {
                        (Ok(None), Ok(_)) => {
                            f.phase = TcpPhase::Open { since: Instant::now() };
                            self.sockets.get_mut::<tcp::Socket>(f.handle).pause_synack(false);
                        }
                        (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => {}
                        (Ok(Some(e)) | Err(e), _) | (Ok(None), Err(e)) => {
                            tracing::debug!("connect {}: {e}", f.key.1);
                            f.reset(self.sockets.get_mut::<tcp::Socket>(f.handle));
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
    pub(super) fn pump_flows(&mut self) -> bool {
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

    /// Offers flow `id` (open, its ClientHello naming `server_name` still unread) to the
    /// interceptor; if it wants the flow, the interceptor's stream becomes the flow's far end.
    fn offer(&mut self, id: usize, server_name: String) {
        let Some(interceptor) = self.interceptor.as_mut() else { return };
        let Some(Some(Flow::Tcp(f))) = self.flows.get_mut(id) else { return };
        let HostEnd::Direct(direct) = &f.host else { return };
        let offered = crate::OfferedFlow { destination: f.key.1, server_name, names: f.names.clone(), resolved: f.resolved.clone(), requested_by_policy: f.intercept_requested };
        if !interceptor.wants(&offered) {
            return;
        }
        // The interceptor gets its own fd of the connection; ours is closed only once it took it,
        // so a failure leaves the flow whole enough to reset.
        let taken = dup_stream(direct).and_then(|upstream| {
            let stream = interceptor.take(offered.clone(), upstream)?;
            stream.set_nonblocking(true)?;
            let mut stream = mio::net::UnixStream::from_std(stream);
            self.poll.registry().deregister(f.host.source())?;
            self.poll.registry().register(&mut stream, Token(FLOW_BASE + id), Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match taken {
            Ok(stream) => {
                f.host = HostEnd::Intercepted(stream);
                f.readable = false;
                f.writable = false;
            }
            Err(e) => {
                tracing::warn!("the interceptor could not take the flow to {} ({}): {e}; resetting it", offered.server_name, offered.destination);
                f.reset(self.sockets.get_mut::<tcp::Socket>(f.handle));
            }
        }
    }

    pub(super) fn pump_tcp(&mut self, id: usize) -> bool {
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
                    // A server name is sent on in the clear (and to the real server by an
                    // interceptor): one carrying a placeholder ends the flow here.
                    if let Some(secret) = self.guard.find_ignore_case(name.as_bytes()) {
                        let secret = secret.to_string();
                        let (dst, names) = (f.key.1, f.names.clone());
                        f.reset(self.sockets.get_mut::<tcp::Socket>(f.handle));
                        self.secret_blocked(secret, Some(dst), names, "a TLS server name");
                        return true;
                    }
                    if !f.names.contains(&name) {
                        f.names.insert(0, name.clone());
                        let (dst, names) = (f.key.1, f.names.clone());
                        let d = policy::decide(&self.policy, &FlowQuery { protocol: Protocol::Tcp, ip: dst.ip(), port: dst.port(), names: &names }, &self.host_addrs, self.plugins.as_mut());
                        if !d.allowed() {
                            let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
                            f.reset(s);
                            self.denied(Protocol::Tcp, dst, &names, &d);
                            return true;
                        }
                        f.intercept_requested |= d.intercept_requested();
                    }
                    if self.interceptor.is_some() {
                        self.offer(id, name);
                        return true;
                    }
                }
                _ => f.sni_done = true,
            }
        }
        let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
        // Bytes an interceptor receives are its to inspect; the rest pass the guard here.
        let guard = (!f.inbound && matches!(f.host, HostEnd::Direct(_)) && !self.guard.is_empty()).then_some(&self.guard);
        let mut caught = None;
        while f.writable && s.can_recv() {
            let host = &mut f.host;
            let tail = &mut f.guard_tail;
            match s.recv(|buf| {
                if let Some(g) = guard {
                    if let Some(secret) = g.scan_stream(tail, buf) {
                        caught = Some(secret.to_string());
                        return (0, Ok(0));
                    }
                }
                match host.write(buf) {
                    Ok(n) => {
                        if let Some(g) = guard {
                            g.advance(tail, &buf[..n]);
                        }
                        (n, Ok(n))
                    }
                    Err(e) => (0, Err(e)),
                }
            }) {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => moved = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => f.writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => {
                    f.reset(s);
                    return true;
                }
                Err(_) => break,
            }
        }
        if let Some(secret) = caught {
            f.reset(s);
            let _ = f.host.shutdown(std::net::Shutdown::Both);
            let (destination, names) = (f.key.1, f.names.clone());
            self.secret_blocked(secret, Some(destination), names, "a TCP connection that is not intercepted");
            return true;
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
                    f.reset(s);
                    return true;
                }
                Err(_) => break,
            }
        }
        moved
    }
}

/// A second, independent handle on a connected socket (the same connection).
fn dup_stream(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd that we own, or -1.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just made and is owned by nothing else.
    Ok(std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
