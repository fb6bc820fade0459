//! virtio-rng from a hostile guest driver (see virtio_block.rs): no panic, the pass ends, and
//! only write-only buffers and the used ring change.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, memory)) = data.split_first() else { return };
    let Some(mut guest) = vmm::fuzzing::Guest::new(memory, 1u16 << (sel & 7)) else { return };
    vmm::fuzzing::rng(&mut guest);
    if let Err(e) = guest.check_writes() {
        panic!("{e}");
    }
});
