//! What a rootfs-patch plugin (or a config author's `spec.patches`) returns: any list of
//! operations, checked as the host checks a component's output, then applied to a fresh root
//! beside a sentinel, as the agent applies them. Invariants: no panic; a list the check passes
//! never reaches outside the root (through `..`, absolute symlinks or symlink chains made by
//! earlier operations); the reason text a plugin gives is bounded and stays valid UTF-8.
#![no_main]

use arbitrary::Arbitrary;
use guest_agent::protocol::{check_patches, PatchOp};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

#[derive(Arbitrary, Debug)]
enum Op {
    Write { path: String, contents: Vec<u8>, mode: u32 },
    Append { path: String, contents: Vec<u8> },
    Mkdir { path: String, mode: u32 },
    Symlink { path: String, target: String },
    Chmod { path: String, mode: u32 },
    Remove { path: String },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    reason: String,
    max: u8,
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|input: Input| {
    let bounded = orchestrator::plugin::bounded(&input.reason, usize::from(input.max));
    assert!(bounded.len() <= usize::from(input.max) + 40 || bounded == input.reason);
    let ops: Vec<PatchOp> = input
        .ops
        .into_iter()
        .take(64)
        .map(|op| match op {
            Op::Write { path, contents, mode } => PatchOp::Write { path, contents, mode: mode & 0o7777 },
            Op::Append { path, contents } => PatchOp::Append { path, contents },
            Op::Mkdir { path, mode } => PatchOp::Mkdir { path, mode: mode & 0o7777 },
            Op::Symlink { path, target } => PatchOp::Symlink { path, target },
            Op::Chmod { path, mode } => PatchOp::Chmod { path, mode: mode & 0o7777 },
            Op::Remove { path } => PatchOp::Remove { path },
        })
        .collect();
    if check_patches(&ops).is_err() {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
    let _ = guest_agent::patch::apply(&root, &ops);
    assert_eq!(names(base.path()), ["outside", "root"], "a patch landed beside the root");
    assert_eq!(names(&outside), ["sentinel"], "a patch landed outside the root");
    assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"untouched");
    assert!(std::fs::symlink_metadata(&root).unwrap().is_dir(), "the root itself was replaced");
});
