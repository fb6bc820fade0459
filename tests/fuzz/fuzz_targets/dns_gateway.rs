//! The gateway's resolver: queries from the sandbox and answers from upstream, both hostile.
//! Invariants: no panic; an answer for the sandbox parses as a response with the sandbox's own
//! id; a forwarded query differs from the sandbox's only in its id; an upstream answer is taken
//! only for a query in flight and leaves with the asker's id; pins come only from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack::dns::{Asker, QueryOutcome, Resolver};
use netstack::policy::{NetworkPolicy, NoPlugins};
use std::net::SocketAddr;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let upstream: SocketAddr = "192.0.2.53:53".parse().unwrap();
    let asker = Asker::Udp { guest: "10.0.2.15:5000".parse().unwrap(), gateway: "10.0.2.2:53".parse().unwrap() };
    let policy = NetworkPolicy { block_domains: vec!["evil.example".into()], ..Default::default() };
    let mut r = Resolver::new(vec![upstream]);
    // The bytes as a query from the sandbox.
    match r.query(data, asker, &policy, &mut NoPlugins, Instant::now(), &mut None) {
        QueryOutcome::Reply(bytes) => {
            assert!(bytes.len() >= 12);
            assert_eq!(&bytes[..2], &data[..2], "a reply keeps the sandbox's id");
            assert!(bytes[2] & 0x80 != 0, "a reply is a response");
        }
        QueryOutcome::Forward { upstream: to, bytes } => {
            assert_eq!(to, upstream);
            assert_eq!(bytes.len(), data.len());
            assert_eq!(&bytes[2..], &data[2..]);
            // The same bytes, marked a response, as the upstream's answer (the id it was sent
            // with): whatever records they hold are judged and pinned.
            let mut answer = bytes.clone();
            answer[2] |= 0x80;
            if let Some(a) = r.answer(&answer, upstream, &policy, &[]) {
                assert!(a.pins.len() <= 2 * answer.len() / 12 + 2);
                assert_eq!(&a.bytes[..2], &data[..2], "the answer leaves with the sandbox's id");
                assert_eq!(a.asker, asker);
            }
        }
        QueryOutcome::Drop => {}
    }
    // The bytes as an unsolicited answer: never taken.
    let mut fresh = Resolver::new(vec![upstream]);
    assert!(fresh.answer(data, upstream, &policy, &[]).is_none());
});
