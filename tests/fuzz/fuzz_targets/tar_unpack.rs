//! An image layer from a hostile author: any bytes as a tar stream, unpacked into a fresh
//! directory beside a sentinel. Invariants: no panic; nothing is created, changed or followed
//! outside the destination (the sentinel directory is exactly as it was, and the parent holds
//! nothing new).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("tempdir");
    let dest = base.path().join("layer");
    let outside = base.path().join("outside");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
    let _ = orchestrator::image::unpack::unpack(std::io::Cursor::new(data), &dest);
    assert_eq!(names(base.path()), ["layer", "outside"], "an entry landed beside the layer");
    assert_eq!(names(&outside), ["sentinel"], "an entry landed outside the layer");
    assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"untouched");
    let meta = std::fs::symlink_metadata(&dest).unwrap();
    assert!(meta.is_dir(), "the destination itself was replaced");
});
