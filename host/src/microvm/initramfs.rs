//! The guest initramfs, one per (kernel, agent) pair, cached in `DATA/kernels/initramfs/`:
//! the static guest agent as `/init`, and the kernel modules a sandbox needs (virtio-mmio,
//! virtio-blk, vsock, virtio-rng, virtio-net, overlayfs, EROFS) with their dependencies, taken from each
//! module's own `depends=` (the package ships no modules.dep), listed in load order in
//! `/modules/order`. Written as a newc cpio archive, uncompressed (the kernel unpacks it
//! faster than it would decompress it).

use super::kernel::GuestKernel;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// What the agent needs in the guest; their dependencies are added.
pub const GUEST_MODULES: &[&str] = &["virtio_mmio", "virtio_blk", "vmw_vsock_virtio_transport", "virtio_rng", "virtio_net", "overlay", "erofs", "virtiofs"];

/// Module files of a kernel by module name (`-` and `_` are the same to modprobe).
fn module_index(modules: &Path) -> BTreeMap<String, PathBuf> {
    let mut index = BTreeMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                index.insert(name.replace('-', "_"), p);
            }
        }
    }
    index
}

/// The `depends=` field of a module's .modinfo section.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else { return Vec::new() };
    let rest = &module[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').map(|d| d.trim().replace('-', "_")).filter(|d| !d.is_empty()).collect()
}

/// Modules to load, dependencies first. Names built into the kernel are skipped; a kernel
/// without a modules tree gets none (its drivers must be built in).
pub fn resolve(kernel: &GuestKernel, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let Some(modules) = &kernel.modules else { return Ok(Vec::new()) };
    let index = module_index(modules);
    let builtin: HashSet<String> = std::fs::read_to_string(modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|n| n.trim_end_matches(".ko").replace('-', "_"))
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(name: &str, index: &BTreeMap<String, PathBuf>, builtin: &HashSet<String>, seen: &mut HashSet<String>, order: &mut Vec<(String, PathBuf)>, depth: usize) -> Result<(), String> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        if depth > 32 {
            return Err(format!("module dependencies nest too deep at {name}"));
        }
        let Some(path) = index.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            return Err(format!("kernel module {name} is neither a module file nor built in"));
        };
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for dep in depends(&bytes) {
            visit(&dep, index, builtin, seen, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &builtin, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

/// A newc cpio archive being written in memory.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// The archive for `kernel` with `agent` as /init.
pub fn build(kernel: &GuestKernel, agent: &[u8]) -> Result<Vec<u8>, String> {
    let modules = resolve(kernel, GUEST_MODULES)?;
    let mut c = Cpio { out: Vec::with_capacity(16 << 20), ino: 0 };
    for d in ["dev", "proc", "sys", "mnt", "modules", "tmp"] {
        c.entry(d, S_IFDIR | 0o755, (0, 0), &[]);
    }
    c.entry("dev/console", S_IFCHR | 0o600, (5, 1), &[]);
    c.entry("init", S_IFREG | 0o755, (0, 0), agent);
    let mut order = String::new();
    for (name, path) in &modules {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = format!("{name}.ko");
        c.entry(&format!("modules/{file}"), S_IFREG | 0o644, (0, 0), &bytes);
        order.push_str(&file);
        order.push('\n');
    }
    c.entry("modules/order", S_IFREG | 0o644, (0, 0), order.as_bytes());
    c.entry("TRAILER!!!", 0, (0, 0), &[]);
    Ok(c.out)
}

/// The cached initramfs for this kernel and agent, built on first use.
pub fn cached(data: &Path, kernel: &GuestKernel, agent_path: &Path) -> Result<PathBuf, String> {
    let agent = std::fs::read(agent_path).map_err(|e| format!("reading the guest agent {}: {e}", agent_path.display()))?;
    let mut h = Sha256::new();
    h.update(kernel.version.as_bytes());
    h.update(kernel.dir.to_string_lossy().as_bytes());
    h.update(kernel.image.to_string_lossy().as_bytes());
    h.update(kernel.modules.as_deref().unwrap_or(Path::new("")).to_string_lossy().as_bytes());
    h.update(&agent);
    for m in GUEST_MODULES {
        h.update(m.as_bytes());
    }
    let digest = crate::ids::hex(&h.finalize())[..24].to_string();
    let dir = super::kernel::kernels_dir(data).join("initramfs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{}-{digest}.cpio", kernel.version));
    if path.exists() {
        return Ok(path);
    }
    let archive = build(kernel, &agent)?;
    crate::paths::write_atomic(&path, &archive).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// True when the file is an ELF executable without an interpreter (runs in any image).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff.saturating_add(i * phentsize);
        bytes.get(at..at + 4).map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3).unwrap_or(false)
    })
}

/// The static guest agent: the configured one (`ORCHESTRATOR_GUEST_AGENT`), else beside the binary
/// (`orchestrator-agent-static`), else cargo's static build of it.
pub fn agent_binary(config: &crate::config::Config) -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(p) = &config.guest_agent {
        candidates.push(p.clone());
    } else {
        let exe = config.binary();
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("orchestrator-agent-static"));
            let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("release").to_string();
            if let Some(target) = dir.parent() {
                candidates.push(target.join("x86_64-unknown-linux-gnu").join(&profile).join("orchestrator-agent"));
                candidates.push(target.join("x86_64-unknown-linux-gnu").join("release").join("orchestrator-agent"));
            }
        }
    }
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            if is_static_elf(&bytes) {
                return Ok(c.clone());
            }
            return Err(format!("{} is not a static executable; build it with `just agent-static`", c.display()));
        }
    }
    Err(format!(
        "no static guest agent found (looked at {}); build it with `just agent-static` or set ORCHESTRATOR_GUEST_AGENT",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_field_is_read_from_modinfo() {
        let blob = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        assert_eq!(depends(blob), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"nothing here").is_empty());
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio { out: Vec::new(), ino: 0 };
        c.entry("init", S_IFREG | 0o755, (0, 0), b"abc");
        c.entry("TRAILER!!!", 0, (0, 0), &[]);
        assert!(c.out.starts_with(b"070701"));
        assert_eq!(c.out.len() % 4, 0);
        let text = String::from_utf8_lossy(&c.out);
        assert!(text.contains("init\0") && text.contains("TRAILER!!!"));
    }

    #[test]
    fn static_detection() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(!is_static_elf(&me), "test binaries are dynamic");
        assert!(!is_static_elf(b"not elf"));
    }
}
