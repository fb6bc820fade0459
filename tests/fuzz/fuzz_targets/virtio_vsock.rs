//! virtio-vsock from a hostile guest (a microVM's guest is root in its own kernel): packets on
//! the tx queue and buffers on the rx queue as the fuzzer writes them, the agent's host stream
//! a real socket pair. Invariants: no panic; both passes end; the device writes only
//! write-only buffers and the used rings; the host end receives at most what the guest's
//! packets carried.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (sel, rest) = data.split_at(2);
    let half = rest.len() / 2;
    let Some(mut tx) = vmm::fuzzing::Guest::new(&rest[..half], 1u16 << (sel[0] & 7)) else { return };
    let Some(mut rx) = vmm::fuzzing::Guest::new(&rest[half..], 1u16 << (sel[1] & 7)) else { return };
    let (host_end, mut agent) = std::os::unix::net::UnixStream::pair().unwrap();
    agent.set_nonblocking(true).unwrap();
    vmm::fuzzing::vsock(&mut tx, &mut rx, host_end);
    if let Err(e) = tx.check_writes() {
        panic!("tx queue: {e}");
    }
    if let Err(e) = rx.check_writes() {
        panic!("rx queue: {e}");
    }
    let mut got = Vec::new();
    let _ = agent.read_to_end(&mut got);
    assert!(got.len() <= vmm::fuzzing::MEM_SIZE, "the host received more than guest memory holds");
});
