//! The interceptor seam over a real link: the stack runs on one end of a packet socket pair, a
//! smoltcp "guest" on the other, and the guest's connections go through the policy to a real
//! TCP listener on this host's loopback (the `host` group, allowed by a rule for its port only).
//! Nothing leaves loopback.

use netstack::addr::Group;
use netstack::policy::{Action, Rule};
use netstack::{FlowInterceptor, NetworkPolicy, OfferedFlow, StackConfig, Wiring};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The guest's end of the link: one message, one IP packet.
struct GuestLink(OwnedFd);

struct Rx(Vec<u8>);
struct Tx<'a>(&'a OwnedFd);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        // SAFETY: writing a live buffer of its own length to an fd we own.
        unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        r
    }
}

impl Device for GuestLink {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let mut buf = vec![0; 65536];
        // SAFETY: reading into a live buffer of its own length.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some((Rx(buf), Tx(&self.0)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps
    }
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds that we then own.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just made and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A smoltcp host at the guest's address, routed through the stack's gateway.
struct Guest {
    link: GuestLink,
    iface: Interface,
    sockets: SocketSet<'static>,
    started: Instant,
    next_port: u16,
}

impl Guest {
    fn new(fd: OwnedFd) -> Guest {
        let mut link = GuestLink(fd);
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut link, smoltcp::time::Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(10, 0, 2, 2)).unwrap();
        Guest { link, iface, sockets: SocketSet::new(Vec::new()), started: Instant::now(), next_port: 49_152 }
    }

    fn poll(&mut self) {
        let now = smoltcp::time::Instant::from_millis(self.started.elapsed().as_millis() as i64);
        self.iface.poll(now, &mut self.link, &mut self.sockets);
    }

    /// Connects to the gateway's `port`, sends `first`, and collects what comes back until the
    /// peer closes, the connection is reset, or `limit` passes. (bytes, whether it was reset)
    fn exchange(&mut self, port: u16, first: &[u8], limit: Duration) -> (Vec<u8>, bool) {
        let socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]));
        let handle = self.sockets.add(socket);
        self.next_port += 1;
        let local = self.next_port;
        self.sockets.get_mut::<tcp::Socket>(handle).connect(self.iface.context(), (IpAddress::v4(10, 0, 2, 2), port), local).unwrap();
        let (mut sent, mut got, mut was_open) = (false, Vec::new(), false);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.poll();
            let s = self.sockets.get_mut::<tcp::Socket>(handle);
            if s.may_send() {
                was_open = true;
                if !sent {
                    assert_eq!(s.send_slice(first).unwrap(), first.len());
                    sent = true;
                }
            }
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if was_open && !s.is_open() || (was_open && s.state() == tcp::State::CloseWait) {
                break;
            }
            if !was_open && s.state() == tcp::State::Closed {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        let reset = s.state() == tcp::State::Closed && got.is_empty();
        s.abort();
        self.poll();
        self.sockets.remove(handle);
        (got, reset)
    }
}

/// Takes flows to `intercept.test`, answers them itself, and greets their upstream; fails to
/// take `broken.test`.
struct TestInterceptor {
    offers: Arc<Mutex<Vec<OfferedFlow>>>,
    hello_len: usize,
}

impl FlowInterceptor for TestInterceptor {
    fn wants(&mut self, flow: &OfferedFlow) -> bool {
        self.offers.lock().unwrap().push(flow.clone());
        flow.server_name != "plain.test"
    }

    fn take(&mut self, flow: OfferedFlow, mut upstream: std::net::TcpStream) -> std::io::Result<UnixStream> {
        if flow.server_name == "broken.test" {
            return Err(std::io::Error::other("no certificate for broken.test"));
        }
        upstream.set_nonblocking(false)?;
        let (ours, theirs) = UnixStream::pair()?;
        let hello_len = self.hello_len;
        std::thread::spawn(move || {
            let mut ours = ours;
            let mut hello = vec![0; hello_len];
            ours.read_exact(&mut hello).unwrap();
            assert_eq!(hello, netstack::sni::client_hello(&flow.server_name), "the guest's ClientHello reaches the interceptor whole");
            upstream.write_all(b"from the interceptor\n").unwrap();
            let mut reply = [0u8; 3];
            upstream.read_exact(&mut reply).unwrap();
            ours.write_all(b"intercepted; upstream said ").unwrap();
            ours.write_all(&reply).unwrap();
        });
        Ok(theirs)
    }
}

#[test]
fn an_interceptor_takes_the_flows_it_wants_with_the_upstream_the_policy_allowed() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The upstream: answers an interceptor's greeting with "ok!", and a spliced flow with
    // "direct" after reading its ClientHello whole.
    let hello = netstack::sni::client_hello("plain.test");
    let upstream_saw = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    {
        let saw = upstream_saw.clone();
        let plain_len = hello.len();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let saw = saw.clone();
                std::thread::spawn(move || {
                    let mut first = [0u8; 1];
                    if conn.read_exact(&mut first).is_err() {
                        return;
                    }
                    if first[0] == 0x16 {
                        let mut rest = vec![0; plain_len - 1];
                        conn.read_exact(&mut rest).unwrap();
                        saw.lock().unwrap().push([&first[..], &rest].concat());
                        conn.write_all(b"direct").unwrap();
                    } else {
                        let mut line = vec![first[0]];
                        let mut b = [0u8; 1];
                        while b[0] != b'\n' && conn.read_exact(&mut b).is_ok() {
                            line.push(b[0]);
                        }
                        saw.lock().unwrap().push(line);
                        conn.write_all(b"ok!").unwrap();
                    }
                });
            }
        });
    }

    let (stack_end, guest_end) = seqpacket_pair();
    let rule = Rule { action: Some(Action::Allow), group: Some(Group::Host), ports: vec![(port, port)], ..Default::default() };
    let policy = NetworkPolicy { rules: vec![rule], ..Default::default() };
    let (events, _events_rx) = std::sync::mpsc::channel();
    let offers = Arc::new(Mutex::new(Vec::new()));
    let wiring = Wiring {
        interceptor: Some(Box::new(TestInterceptor { offers: offers.clone(), hello_len: netstack::sni::client_hello("intercept.test").len() })),
        ..Wiring::new(policy, events)
    };
    let cfg = StackConfig { mtu: 1500, ..Default::default() };
    let handle = netstack::spawn(cfg, stack_end, wiring).unwrap();
    let mut guest = Guest::new(guest_end);

    // Taken: the interceptor answers, having greeted the real upstream.
    let (got, reset) = guest.exchange(port, &netstack::sni::client_hello("intercept.test"), Duration::from_secs(10));
    assert!(!reset);
    assert_eq!(String::from_utf8_lossy(&got), "intercepted; upstream said ok!");
    assert_eq!(upstream_saw.lock().unwrap().as_slice(), [b"from the interceptor\n".to_vec()], "the upstream heard only the interceptor");
    {
        let offers = offers.lock().unwrap();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].server_name, "intercept.test");
        assert_eq!(offers[0].names, ["intercept.test"]);
        assert_eq!(offers[0].destination, SocketAddr::from(([10, 0, 2, 2], port)));
        assert!(!offers[0].requested_by_policy);
    }

    // Not wanted: spliced untouched, the ClientHello reaches the upstream as the guest sent it.
    let (got, reset) = guest.exchange(port, &hello, Duration::from_secs(10));
    assert!(!reset);
    assert_eq!(String::from_utf8_lossy(&got), "direct");
    assert_eq!(upstream_saw.lock().unwrap().last().unwrap(), &hello);

    // Wanted but not taken: the guest's connection is reset, nothing is spliced uninspected.
    let before = upstream_saw.lock().unwrap().len();
    let (got, reset) = guest.exchange(port, &netstack::sni::client_hello("broken.test"), Duration::from_secs(10));
    assert!(got.is_empty() && reset, "{got:?} reset={reset}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(upstream_saw.lock().unwrap().len(), before, "no byte of the broken flow reached the upstream");
    assert_eq!(offers.lock().unwrap().len(), 3);

    // The policy still decides first: another loopback port is refused before any interceptor.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = closed.local_addr().unwrap().port();
    let (got, reset) = guest.exchange(other, &netstack::sni::client_hello("intercept.test"), Duration::from_secs(5));
    assert!(got.is_empty() && reset);
    assert_eq!(offers.lock().unwrap().len(), 3, "a denied flow is never offered");
    handle.stop();
}
