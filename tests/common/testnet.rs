#![allow(dead_code)] // each test binary uses a part of it
//! A test's own little internet, so network tests never send a packet off this machine:
//!
//! - `orch-TAG`: the network namespace the orchestrator (CLI, shims, their host sockets) runs
//!   in. Its only link is a veth pair to `inet-TAG`, its default route goes there, and its own
//!   address is 198.51.100.1.
//! - `inet-TAG`: the "internet". It holds 198.51.100.2 (the router), the web server
//!   `WEB` (203.0.113.10, HTTP on 80, UDP echo on 7), the DNS server `DNS` (192.0.2.53, UDP and
//!   TCP), and the addresses a policy must refuse, so a policy bug reaches them here and
//!   nowhere else: a private address `PRIVATE` (10.1.2.3) and the metadata address
//!   169.254.169.254, each serving HTTP that names itself.
//!
//! Servers are threads of the test process that entered the namespace (setns is per thread);
//! they are real sockets answering real packets. Everything is removed on drop.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const WEB: &str = "203.0.113.10";
pub const WEB2: &str = "203.0.113.11";
pub const DNS: &str = "192.0.2.53";
pub const PRIVATE: &str = "10.1.2.3";
pub const METADATA: &str = "169.254.169.254";
pub const HOST_OWN: &str = "198.51.100.1";
/// The web server's IPv6 address (documentation range 2001:db8::/32).
pub const WEB6: &str = "2001:db8:2::10";

/// Names the test DNS server answers (everything else: NXDOMAIN).
pub fn zone(name: &str, rtype: RecordType) -> Option<IpAddr> {
    let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
    match (name, rtype) {
        ("web.test", RecordType::A) | ("evil.example", RecordType::A) | ("a.tracking.example", RecordType::A) | ("pinned.test", RecordType::A) => v4(WEB),
        ("other.test", RecordType::A) => v4(WEB2),
        ("rebind.test", RecordType::A) => v4(PRIVATE),
        ("meta.test", RecordType::A) => v4(METADATA),
        _ => None,
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct TestNet {
    pub tag: String,
    /// DNS queries the server has answered.
    pub dns_queries: Arc<AtomicU64>,
    /// HTTP requests the web server has answered.
    pub http_requests: Arc<AtomicU64>,
}

impl TestNet {
    /// `tag`: a few characters unique to the test (interface names are at most 15 bytes).
    pub fn new(tag: &str) -> TestNet {
        assert!(tag.len() <= 8, "tag {tag:?} too long for interface names");
        let (orch, inet) = (format!("orch-{tag}"), format!("inet-{tag}"));
        let _ = Command::new("ip").args(["netns", "del", &orch]).output();
        let _ = Command::new("ip").args(["netns", "del", &inet]).output();
        ip(&["netns", "add", &orch]);
        ip(&["netns", "add", &inet]);
        let (vo, vi) = (format!("vo-{tag}"), format!("vi-{tag}"));
        ip(&["link", "add", &vo, "netns", &orch, "type", "veth", "peer", "name", &vi, "netns", &inet]);
        ip(&["-n", &orch, "link", "set", "lo", "up"]);
        ip(&["-n", &orch, "addr", "add", &format!("{HOST_OWN}/24"), "dev", &vo]);
        ip(&["-n", &orch, "link", "set", &vo, "up"]);
        ip(&["-n", &orch, "route", "add", "default", "via", "198.51.100.2"]);
        ip(&["-n", &orch, "addr", "add", "2001:db8:1::1/64", "dev", &vo, "nodad"]);
        ip(&["-n", &orch, "-6", "route", "add", "default", "via", "2001:db8:1::2"]);
        ip(&["-n", &inet, "link", "set", "lo", "up"]);
        ip(&["-n", &inet, "addr", "add", "198.51.100.2/24", "dev", &vi]);
        ip(&["-n", &inet, "link", "set", &vi, "up"]);
        for a in [WEB, WEB2, DNS, PRIVATE, METADATA] {
            ip(&["-n", &inet, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        ip(&["-n", &inet, "addr", "add", "2001:db8:1::2/64", "dev", &vi, "nodad"]);
        // nodad: without it the address is "tentative" until the kernel's DAD work runs (even on lo),
        // and a bind in that window fails with EADDRNOTAVAIL (seen in CI).
        ip(&["-n", &inet, "addr", "add", &format!("{WEB6}/128"), "dev", "lo", "nodad"]);
        let net = TestNet { tag: tag.to_string(), dns_queries: Arc::new(AtomicU64::new(0)), http_requests: Arc::new(AtomicU64::new(0)) };
        let inet_path = net.inet_ns();
        for (addr, body) in [(WEB, "web"), (WEB2, "other"), (PRIVATE, "private"), (METADATA, "metadata"), (WEB6, "web6")] {
            let counter = net.http_requests.clone();
            serve_http(&inet_path, SocketAddr::new(addr.parse().unwrap(), 80), body, counter);
        }
        serve_udp_echo(&inet_path, SocketAddr::new(WEB.parse().unwrap(), 7));
        serve_dns(&inet_path, SocketAddr::new(DNS.parse().unwrap(), 53), net.dns_queries.clone());
        net
    }

    pub fn orch_ns(&self) -> String {
        format!("/run/netns/orch-{}", self.tag)
    }

    pub fn inet_ns(&self) -> String {
        format!("/run/netns/inet-{}", self.tag)
    }

    /// An HTTP server on the orchestrator namespace's loopback (the "host" of its sandboxes).
    pub fn host_http(&self, port: u16, body: &'static str) {
        serve_http(&self.orch_ns(), SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port), body, Arc::new(AtomicU64::new(0)));
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in [format!("orch-{}", self.tag), format!("inet-{}", self.tag)] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn in_netns<F: FnOnce() + Send + 'static>(ns: &str, f: F) {
    let file = std::fs::File::open(ns).unwrap_or_else(|e| panic!("opening {ns}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        tx.send(rc).unwrap();
        if rc == 0 {
            f();
        }
    });
    assert_eq!(rx.recv().unwrap(), 0, "setns into {ns}");
}

pub fn bound<T>(ns: &str, bind: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> T
where
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || tx.send(bind()).unwrap());
    rx.recv().unwrap().unwrap_or_else(|e| panic!("binding a test server in {ns}: {e}"))
}

pub fn serve_http(ns: &str, addr: SocketAddr, body: &'static str, counter: Arc<AtomicU64>) {
    let listener = bound(ns, move || TcpListener::bind(addr));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n", body.len() + 1);
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
}

fn serve_udp_echo(ns: &str, addr: SocketAddr) {
    let sock = bound(ns, move || UdpSocket::bind(addr));
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries().first()?.clone();
    let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let mut m = Message::new();
    m.set_id(q.id()).set_message_type(MessageType::Response).set_recursion_desired(q.recursion_desired()).set_recursion_available(true);
    m.add_query(question.clone());
    match zone(&name, question.query_type()) {
        Some(ip) => {
            let data = match ip {
                IpAddr::V4(a) => RData::A(rdata::A(a)),
                IpAddr::V6(a) => RData::AAAA(rdata::AAAA(a)),
            };
            m.add_answer(Record::from_rdata(Name::from_ascii(&name).ok()?, 60, data));
        }
        None if zone(&name, RecordType::A).is_some() => {}
        None => {
            m.set_response_code(ResponseCode::NXDomain);
        }
    }
    m.to_vec().ok()
}

fn serve_dns(ns: &str, addr: SocketAddr, counter: Arc<AtomicU64>) {
    let sock = bound(ns, move || UdpSocket::bind(addr));
    let c = counter.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            c.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = answer(&buf[..n]) {
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    let listener = bound(ns, move || TcpListener::bind(addr));
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut len = [0u8; 2];
                while conn.read_exact(&mut len).is_ok() {
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut q).is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Some(reply) = answer(&q) else { return };
                    let _ = conn.write_all(&(reply.len() as u16).to_be_bytes());
                    let _ = conn.write_all(&reply);
                }
            });
        }
    });
}
