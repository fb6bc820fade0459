//! Address groups: what kind of place a destination is (public internet, a private network, the
//! host itself, a cloud metadata service). Presets and `group:` rules decide on these.
//!
//! Invariants:
//! - An IPv6 address that carries an IPv4 address the kernel would reach (IPv4-mapped
//!   `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`) is classified and
//!   connected as that IPv4 address, so `::ffff:127.0.0.1` is loopback, never "public".
//! - Every address falls in exactly one group, the most specific one: the metadata address is
//!   `Metadata`, not `LinkLocal`, so allowing link-local never opens metadata.
//! - `Unspecified` (0.0.0.0/8, ::, broadcast, 240/4) is never reachable: connecting to 0.0.0.0
//!   reaches the host's loopback on Linux.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Public,
    /// RFC 1918, CGNAT 100.64/10, ULA fc00::/7, and the other non-global ranges.
    Private,
    Loopback,
    LinkLocal,
    /// 169.254.169.254 and fd00:ec2::254: the cloud instance metadata services.
    Metadata,
    Multicast,
    /// The gateway address (reaches the host's loopback) and the host's own addresses.
    Host,
    Unspecified,
}

impl Group {
    pub const NAMES: &'static [&'static str] = &["public", "private", "loopback", "link-local", "metadata", "multicast", "host"];

    pub fn parse(name: &str) -> Option<Group> {
        Some(match name {
            "public" => Group::Public,
            "private" => Group::Private,
            "loopback" => Group::Loopback,
            "link-local" => Group::LinkLocal,
            "metadata" => Group::Metadata,
            "multicast" => Group::Multicast,
            "host" => Group::Host,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Public => "public",
            Group::Private => "private",
            Group::Loopback => "loopback",
            Group::LinkLocal => "link-local",
            Group::Metadata => "metadata",
            Group::Multicast => "multicast",
            Group::Host => "host",
            Group::Unspecified => "unspecified",
        }
    }
}

/// The IPv4 address an IPv6 address stands for, when the kernel would treat it as one.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible (deprecated, but some stacks still route it) and NAT64.
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    None
}

/// The address a connection to `ip` really goes to (see the module invariants).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Classifies `ip` (canonicalised first). `host` holds the gateway and the host's own addresses.
pub fn classify(ip: IpAddr, host: &[IpAddr]) -> Group {
    let ip = canonical(ip);
    if host.contains(&ip) {
        return Group::Host;
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Group {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Group::Metadata;
    }
    if o[0] == 0 || ip.is_broadcast() || o[0] >= 240 {
        return Group::Unspecified;
    }
    if ip.is_loopback() {
        return Group::Loopback;
    }
    if ip.is_link_local() {
        return Group::LinkLocal;
    }
    if ip.is_multicast() {
        return Group::Multicast;
    }
    let private = ip.is_private()
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18); // benchmarking 198.18/15
    if private {
        return Group::Private;
    }
    Group::Public
}

fn classify_v6(ip: Ipv6Addr) -> Group {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Group::Metadata;
    }
    if ip.is_unspecified() {
        return Group::Unspecified;
    }
    if ip.is_loopback() {
        return Group::Loopback;
    }
    if (s[0] & 0xffc0) == 0xfe80 {
        return Group::LinkLocal;
    }
    if ip.is_multicast() {
        return Group::Multicast;
    }
    // ULA fc00::/7, deprecated site-local fec0::/10, discard-only 100::/64.
    if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 || s[..4] == [0x100, 0, 0, 0] {
        return Group::Private;
    }
    Group::Public
}

/// The host's own interface addresses (getifaddrs), which `public-only` must never reach.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    // SAFETY: family AF_INET means sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    // SAFETY: family AF_INET6 means sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Group {
        classify(s.parse().unwrap(), &["10.0.2.2".parse().unwrap()])
    }

    #[test]
    fn groups_cover_the_ranges_public_only_denies() {
        for (addr, group) in [
            ("8.8.8.8", Group::Public),
            ("192.0.2.10", Group::Public),
            ("203.0.113.5", Group::Public),
            ("2001:db8::1", Group::Public),
            ("10.1.2.3", Group::Private),
            ("172.16.0.1", Group::Private),
            ("192.168.1.1", Group::Private),
            ("100.64.0.1", Group::Private),
            ("fd12::1", Group::Private),
            ("127.0.0.1", Group::Loopback),
            ("::1", Group::Loopback),
            ("169.254.1.1", Group::LinkLocal),
            ("fe80::1", Group::LinkLocal),
            ("169.254.169.254", Group::Metadata),
            ("fd00:ec2::254", Group::Metadata),
            ("224.0.0.1", Group::Multicast),
            ("ff02::1", Group::Multicast),
            ("0.0.0.0", Group::Unspecified),
            ("0.1.2.3", Group::Unspecified),
            ("255.255.255.255", Group::Unspecified),
            ("::", Group::Unspecified),
            ("10.0.2.2", Group::Host),
        ] {
            assert_eq!(g(addr), group, "{addr}");
        }
    }

    #[test]
    fn ipv6_spellings_of_ipv4_addresses_are_their_ipv4_address() {
        assert_eq!(g("::ffff:127.0.0.1"), Group::Loopback);
        assert_eq!(g("::ffff:169.254.169.254"), Group::Metadata);
        assert_eq!(g("::10.0.0.1"), Group::Private);
        assert_eq!(g("64:ff9b::a00:1"), Group::Private);
        assert_eq!(g("::ffff:10.0.2.2"), Group::Host);
        assert_eq!(canonical("::ffff:1.2.3.4".parse().unwrap()), "1.2.3.4".parse::<IpAddr>().unwrap());
    }
}
