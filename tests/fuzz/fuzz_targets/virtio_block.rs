//! virtio-blk from a hostile guest driver: guest memory (descriptor table, rings, buffers) as
//! the fuzzer writes it, one pass of the device over the queue, against a small disk file.
//! Invariants: no panic; the pass ends (cyclic and overlong chains included); the device
//! writes only the buffers of write-only descriptors and the used ring; nothing beyond the
//! disk's end is read or written (the file keeps its size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const DISK: u64 = 64 << 10;

fn disk() -> &'static std::path::Path {
    static PATH: OnceLock<tempfile::TempPath> = OnceLock::new();
    PATH.get_or_init(|| {
        let f = tempfile::NamedTempFile::new().expect("disk file");
        f.as_file().set_len(DISK).unwrap();
        f.into_temp_path()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, memory)) = data.split_first() else { return };
    let size = 1u16 << (sel & 7); // 1..=128
    let Some(mut guest) = vmm::fuzzing::Guest::new(memory, size) else { return };
    let file = std::fs::OpenOptions::new().read(true).write(true).open(disk()).unwrap();
    vmm::fuzzing::block(&mut guest, file, sel & 0x80 != 0).unwrap();
    if let Err(e) = guest.check_writes() {
        panic!("{e}");
    }
    assert_eq!(std::fs::metadata(disk()).unwrap().len(), DISK, "the disk grew or shrank");
});
