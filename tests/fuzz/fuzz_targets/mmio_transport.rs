//! The virtio-MMIO transport's registers as a hostile guest driver writes and reads them (any
//! order, offset and width), in front of a probe device that checks what activation hands it;
//! and the real devices' config spaces (block, net, vsock, rng) at any offset and width.
//! Invariants: no panic; magic, version and queue maxima read as the transport promises; a
//! reset clears status and interrupts; a device is activated only for a VERSION_1 driver, with
//! features it offered and queues valid in guest memory; config reads past a space give zeros.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vmm::fuzzing::Access;

#[derive(Arbitrary, Debug)]
struct Raw {
    write: bool,
    offset: u16,
    width: u8,
    value: u64,
}

static DISK: OnceLock<std::fs::File> = OnceLock::new();

fuzz_target!(|raw: Vec<Raw>| {
    let accesses: Vec<Access> = raw
        .iter()
        .take(512)
        .map(|r| Access { write: r.write, offset: u64::from(r.offset & 0x1ff), width: [1, 2, 4, 8][usize::from(r.width & 3)], value: r.value })
        .collect();
    if let Err(e) = vmm::fuzzing::mmio(&accesses) {
        panic!("{e}");
    }
    let config: Vec<Access> = raw.iter().take(64).map(|r| Access { write: r.write, offset: u64::from(r.offset), width: usize::from(r.width % 9), value: r.value }).collect();
    let disk = DISK.get_or_init(|| {
        let f = tempfile::tempfile().expect("a temporary disk");
        f.set_len(1 << 20).expect("sizing the disk");
        f
    });
    if let Err(e) = vmm::fuzzing::config_spaces(&config, disk.try_clone().expect("cloning the disk")) {
        panic!("{e}");
    }
});
