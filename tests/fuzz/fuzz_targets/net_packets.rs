//! What a sandbox sends on its link: IP packets into the stack's classifier, the ICMP errors
//! built from them, and the TLS ClientHello peeked for its server name. Invariants: no panic;
//! a parsed payload is a part of the packet; an ICMP error quotes at most a minimum MTU and
//! parses back as addressed to the packet's sender; a server name is a lower-case host name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack::packet::{self, Parsed};
use netstack::sni::{self, Peek};
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let range = data.as_ptr_range();
    match packet::parse(data) {
        Parsed::Udp { src, payload, .. } => {
            assert!(payload.is_empty() || range.contains(&payload.as_ptr()));
            let gateway: IpAddr = if src.is_ipv4() { "10.0.2.2".parse().unwrap() } else { "fd00:6f72:6368::2".parse().unwrap() };
            if let Some(err) = packet::unreachable(data, gateway, true) {
                assert!(err.len() <= 40 + 8 + 1232, "an ICMP error of {} bytes", err.len());
                match packet::parse(&err) {
                    Parsed::Other => {}
                    other => panic!("an ICMP error parsed as {other:?}"),
                }
                let to = if src.is_ipv4() { IpAddr::from(<[u8; 4]>::try_from(&err[16..20]).unwrap()) } else { IpAddr::from(<[u8; 16]>::try_from(&err[24..40]).unwrap()) };
                assert_eq!(to, src.ip(), "the error goes back to the sender");
            }
        }
        Parsed::Echo { src, dst, ident, seq, data: body } => {
            let reply = packet::echo_reply(dst, src, ident, seq, body);
            assert!(matches!(packet::parse(&reply), Parsed::Other), "a reply is not a request");
        }
        Parsed::Tcp { .. } | Parsed::Other => {}
    }
    if let Peek::Hello(Some(name)) = sni::peek(data) {
        assert!(!name.is_empty() && name.len() <= 253);
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'), "{name:?}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(c) = netstack::policy::Cidr::parse(text) {
            assert!(c.contains(c.addr));
        }
    }
});
