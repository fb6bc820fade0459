//! Guest packets in and out: what a frame from the guest is (parsed with smoltcp's wire
//! types, every length checked), and the few packets the stack writes itself (UDP datagrams
//! from host sockets, ICMP errors and echo replies); TCP is smoltcp's.
//!
//! Invariant: `parse` never trusts a length field; a packet whose headers do not fit is `Other`
//! and is dropped by the caller.

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A TCP segment; `syn` is a connection request (SYN without ACK).
    Tcp { src: SocketAddr, dst: SocketAddr, syn: bool },
    Udp { src: SocketAddr, dst: SocketAddr, payload: &'a [u8] },
    /// An ICMP or ICMPv6 echo request.
    Echo { src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &'a [u8] },
    Other,
}

/// Looks at one IP packet from the guest.
pub fn parse(packet: &[u8]) -> Parsed<'_> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => parse_v4(packet),
        Some(6) => parse_v6(packet),
        _ => Parsed::Other,
    }
}

fn parse_v4(packet: &[u8]) -> Parsed<'_> {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else { return Parsed::Other };
    // Fragments are not reassembled: a guest with our MTU has no reason to send them.
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Parsed::Other;
    }
    let header = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let Some(payload) = packet.get(header..total) else { return Parsed::Other };
    transport(IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), ip.next_header(), payload)
}

fn parse_v6(packet: &[u8]) -> Parsed<'_> {
    let Ok(ip) = Ipv6Packet::new_checked(packet) else { return Parsed::Other };
    let len = usize::from(ip.payload_len());
    // Extension headers are not followed: the transport must come first.
    let Some(payload) = packet.get(40..40 + len) else { return Parsed::Other };
    transport(IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()), ip.next_header(), payload)
}

fn transport(src: IpAddr, dst: IpAddr, proto: IpProtocol, payload: &[u8]) -> Parsed<'_> {
    match proto {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else { return Parsed::Other };
            Parsed::Tcp { src: SocketAddr::new(src, tcp.src_port()), dst: SocketAddr::new(dst, tcp.dst_port()), syn: tcp.syn() && !tcp.ack() }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else { return Parsed::Other };
            let len = usize::from(udp.len());
            let Some(data) = payload.get(8..len) else { return Parsed::Other };
            Parsed::Udp { src: SocketAddr::new(src, udp.src_port()), dst: SocketAddr::new(dst, udp.dst_port()), payload: data }
        }
        IpProtocol::Icmp | IpProtocol::Icmpv6 => {
            let request = if proto == IpProtocol::Icmp { 8 } else { 128 };
            if payload.len() < 8 || payload[0] != request || payload[1] != 0 {
                return Parsed::Other;
            }
            let ident = u16::from_be_bytes([payload[4], payload[5]]);
            let seq = u16::from_be_bytes([payload[6], payload[7]]);
            Parsed::Echo { src, dst, ident, seq, data: &payload[8..] }
        }
        _ => Parsed::Other,
    }
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add(sum: &mut u32, data: &[u8]) {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        *sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        *sum += u32::from(*last) << 8;
    }
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&mut sum, &s.octets());
            add(&mut sum, &d.octets());
        }
        (s, d) => {
            add(&mut sum, &v6(s).octets());
            add(&mut sum, &v6(d).octets());
        }
    }
    sum + u32::from(proto) + len as u32
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// An IP header for `len` bytes of `proto` from `src` to `dst`, followed by the payload that
/// `fill` writes (its checksum field included, see `finish`).
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> (Vec<u8>, usize) {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0u8; 20 + len];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
            p[6] = 0x40; // don't fragment
            p[8] = 64;
            p[9] = proto;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&d.octets());
            let mut sum = 0;
            add(&mut sum, &p[..20]);
            let c = fold(sum);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            (p, 20)
        }
        (s, d) => {
            let mut p = vec![0u8; 40 + len];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            p[6] = proto;
            p[7] = 64;
            p[8..24].copy_from_slice(&v6(s).octets());
            p[24..40].copy_from_slice(&v6(d).octets());
            (p, 40)
        }
    }
}

/// A UDP datagram from `src` to `dst` (both of one family).
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let (mut p, off) = ip_packet(src.ip(), dst.ip(), 17, len);
    p[off..off + 2].copy_from_slice(&src.port().to_be_bytes());
    p[off + 2..off + 4].copy_from_slice(&dst.port().to_be_bytes());
    p[off + 4..off + 6].copy_from_slice(&(len as u16).to_be_bytes());
    p[off + 8..].copy_from_slice(payload);
    let mut sum = pseudo(src.ip(), dst.ip(), 17, len);
    add(&mut sum, &p[off..]);
    let c = match fold(sum) {
        0 => 0xffff,
        c => c,
    };
    p[off + 6..off + 8].copy_from_slice(&c.to_be_bytes());
    p
}

fn icmp(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let proto = if src.is_ipv4() { 1 } else { 58 };
    let len = 8 + data.len();
    let (mut p, off) = ip_packet(src, dst, proto, len);
    p[off] = kind;
    p[off + 1] = code;
    p[off + 4..off + 8].copy_from_slice(&rest);
    p[off + 8..].copy_from_slice(data);
    let mut sum = if proto == 58 { pseudo(src, dst, 58, len) } else { 0 };
    add(&mut sum, &p[off..]);
    let c = fold(sum);
    p[off + 2..off + 4].copy_from_slice(&c.to_be_bytes());
    p
}

/// An echo reply from `src` to the guest at `dst`.
pub fn echo_reply(src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let kind = if src.is_ipv4() { 0 } else { 129 };
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&ident.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    icmp(src, dst, kind, 0, rest, data)
}

/// "Port unreachable" (administratively prohibited for `prohibited`) about `original`, the
/// guest's packet, from `from`: a denied UDP flow fails at once, as a TCP RST does.
pub fn unreachable(original: &[u8], from: IpAddr, prohibited: bool) -> Option<Vec<u8>> {
    let to = match parse(original) {
        Parsed::Udp { src, .. } => src.ip(),
        Parsed::Echo { src, .. } => src,
        _ => return None,
    };
    // As much of the original as fits in a minimum MTU, per RFC 1812 / RFC 4443.
    let keep = original.len().min(if to.is_ipv4() { 548 } else { 1232 });
    let (kind, code) = match (to.is_ipv4(), prohibited) {
        (true, false) => (3, 3),
        (true, true) => (3, 13),
        (false, false) => (1, 4),
        (false, true) => (1, 1),
    };
    let from = match (from, to) {
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => return None,
        (f, _) => f,
    };
    Some(icmp(from, to, kind, code, [0; 4], &original[..keep]))
}

/// Unspecified addresses of a family, for binding host sockets.
pub fn unspecified(of: IpAddr) -> SocketAddr {
    match of {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_datagrams_parse_back_with_valid_checksums() {
        for (s, d) in [("10.0.2.2:53", "10.0.2.15:4000"), ("[fd00::1]:53", "[fd00::2]:4000")] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let p = udp(s, d, b"hello");
            assert_eq!(parse(&p), Parsed::Udp { src: s, dst: d, payload: b"hello" });
            let caps = smoltcp::phy::ChecksumCapabilities::default();
            let (src, dst) = (smoltcp::wire::IpAddress::from(s.ip()), smoltcp::wire::IpAddress::from(d.ip()));
            let off = if s.is_ipv4() { 20 } else { 40 };
            assert!(UdpPacket::new_checked(&p[off..]).unwrap().verify_checksum(&src, &dst));
            if s.is_ipv4() {
                assert!(Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
            }
            let _ = caps;
        }
    }

    #[test]
    fn lengths_that_lie_are_other() {
        let mut p = udp("10.0.2.2:53".parse().unwrap(), "10.0.2.15:4000".parse().unwrap(), b"hello");
        p[20 + 4..20 + 6].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(parse(&p), Parsed::Other);
        assert_eq!(parse(&[0x45, 0, 0]), Parsed::Other);
        assert_eq!(parse(&[]), Parsed::Other);
    }

    #[test]
    fn an_unreachable_quotes_the_packet_back_to_its_sender() {
        let p = udp("10.0.2.15:4000".parse().unwrap(), "10.1.2.3:53".parse().unwrap(), b"x");
        let u = unreachable(&p, "10.0.2.2".parse().unwrap(), true).unwrap();
        assert_eq!(&u[16..20], &[10, 0, 2, 15]);
        assert_eq!((u[20], u[21]), (3, 13));
        assert_eq!(&u[28..], &p[..]);
    }
}
