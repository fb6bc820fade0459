//! Ping through host sockets: a guest's echo request to an allowed address is sent again from
//! an ICMP socket of the shim, and the reply comes back to the guest with the guest's own
//! identifier. Unprivileged ICMP sockets (`SOCK_DGRAM`, `net.ipv4.ping_group_range`) are used
//! where the host allows them; elsewhere a raw socket (the shim runs as root), whose replies
//! are filtered by source address and identifier, since a raw socket sees every echo reply the
//! host receives.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub struct IcmpSocket {
    pub fd: OwnedFd,
    raw: bool,
    v6: bool,
    dst: IpAddr,
    /// The identifier on the wire (a raw socket's own; the kernel picks a datagram socket's).
    ident: u16,
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data, large enough for both families.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(a).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn socket(family: i32, kind: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

impl IcmpSocket {
    pub fn open(dst: IpAddr, ident: u16) -> io::Result<IcmpSocket> {
        let v6 = dst.is_ipv6();
        let (family, proto) = if v6 { (libc::AF_INET6, libc::IPPROTO_ICMPV6) } else { (libc::AF_INET, libc::IPPROTO_ICMP) };
        let (fd, raw) = match socket(family, libc::SOCK_DGRAM, proto) {
            Ok(fd) => (fd, false),
            Err(_) => (socket(family, libc::SOCK_RAW, proto)?, true),
        };
        let (addr, len) = sockaddr(dst);
        // SAFETY: connect with an address of the socket's family.
        if unsafe { libc::connect(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(IcmpSocket { fd, raw, v6, dst, ident })
    }

    pub fn send(&self, seq: u16, data: &[u8]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(8 + data.len());
        msg.extend_from_slice(&[if self.v6 { 128 } else { 8 }, 0, 0, 0]);
        msg.extend_from_slice(&self.ident.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(data);
        if !self.v6 {
            // The kernel sums ICMPv6 itself; ICMP over a raw socket is ours to sum.
            let c = sum(&msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
        }
        // SAFETY: sending a live buffer on a connected socket.
        if unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next echo reply for this flow: (sequence, data). `Ok(None)`: nothing (more) waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(u16, std::ops::Range<usize>)>> {
        loop {
            // SAFETY: receiving into a live buffer; the source address is written to `from`.
            let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut flen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let n = unsafe { libc::recvfrom(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, &mut from as *mut _ as *mut libc::sockaddr, &mut flen) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
            }
            let n = n as usize;
            // A raw IPv4 socket hands over the IP header too.
            let off = if self.raw && !self.v6 { usize::from(buf.first().map(|b| b & 0x0f).unwrap_or(5)) * 4 } else { 0 };
            if n < off + 8 {
                continue;
            }
            let m = &buf[off..n];
            let reply = if self.v6 { 129 } else { 0 };
            if m[0] != reply || m[1] != 0 {
                continue;
            }
            if self.raw {
                let ident = u16::from_be_bytes([m[4], m[5]]);
                if ident != self.ident || from_ip(&from) != Some(self.dst) {
                    continue;
                }
            }
            let seq = u16::from_be_bytes([m[6], m[7]]);
            return Ok(Some((seq, off + 8..n)));
        }
    }
}

fn from_ip(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(u32::from_be(sin.sin_addr.s_addr).into()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(sin6.sin6_addr.s6_addr.into()))
        }
        _ => None,
    }
}
