//! virtio-net from a hostile guest driver: its tx and rx queues laid out by the fuzzer, and
//! frames from the stack waiting on the link. Invariants: no panic; the pass ends; only
//! write-only buffers and the used rings change; every frame the device sent is whole (at
//! most the largest frame) and came from a chain the guest offered.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let half = rest.len() / 2;
    let (tx_mem, rx_mem) = rest.split_at(half);
    let Some(mut tx) = vmm::fuzzing::Guest::new(tx_mem, 1u16 << (sel & 7)) else { return };
    let Some(mut rx) = vmm::fuzzing::Guest::new(rx_mem, 1u16 << ((sel >> 4) & 7)) else { return };
    // Frames from the stack: slices of the input itself, a full-size one included.
    let big = vec![0x5au8; 65_535 + 14];
    let frames: Vec<&[u8]> = vec![&rest[..rest.len().min(60)], &big, &rest[..rest.len().min(1500)]];
    let sent = match vmm::fuzzing::net(&mut tx, &mut rx, &frames) {
        Ok(s) => s,
        Err(_) => return,
    };
    for f in &sent {
        assert!(f.len() <= 65_535 + 14, "a frame of {} bytes left the device", f.len());
    }
    if let Err(e) = tx.check_writes() {
        panic!("tx: {e}");
    }
    if let Err(e) = rx.check_writes() {
        panic!("rx: {e}");
    }
});
