//! The guest kernel: Debian's cloud kernel package, extracted (never installed) into
//! `DATA/kernels/<package>/`, with `DATA/kernels/current` naming the one in use.
//! `ORCHESTRATOR_KERNEL_DIR` points at an extracted package elsewhere (the test set-up shares
//! one cache). `orchestrator kernel fetch` provisions it with apt-get download + dpkg-deb.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An extracted kernel package: the bzImage and the modules tree of one version.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub dir: PathBuf,
    pub version: String,
    pub image: PathBuf,
    pub modules: PathBuf,
}

impl GuestKernel {
    /// Reads an extracted package directory (`boot/vmlinuz-V`, `lib/modules/V/`).
    pub fn open(dir: &Path) -> Result<GuestKernel, String> {
        let boot = dir.join("boot");
        let entries = std::fs::read_dir(&boot).map_err(|e| format!("{}: {e} (not an extracted kernel package; run `orchestrator kernel fetch`)", boot.display()))?;
        let mut images: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-"))).collect();
        images.sort();
        let image = images.pop().ok_or_else(|| format!("no boot/vmlinuz-* in {}", dir.display()))?;
        let version = image.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("vmlinuz-")).unwrap_or_default().to_string();
        let modules = dir.join("lib/modules").join(&version);
        if !modules.is_dir() {
            return Err(format!("{} has no modules for {version} (lib/modules/{version})", dir.display()));
        }
        Ok(GuestKernel { dir: dir.to_path_buf(), version, image, modules })
    }
}

pub fn kernels_dir(data: &Path) -> PathBuf {
    data.join("kernels")
}

/// The kernel sandboxes use: `ORCHESTRATOR_KERNEL_DIR`, else `DATA/kernels/current`.
pub fn configured(data: &Path) -> Result<GuestKernel, String> {
    if let Some(dir) = std::env::var_os("ORCHESTRATOR_KERNEL_DIR") {
        return GuestKernel::open(Path::new(&dir)).map_err(|e| format!("ORCHESTRATOR_KERNEL_DIR: {e}"));
    }
    let current = kernels_dir(data).join("current");
    if !current.exists() {
        return Err(format!("no guest kernel in {} (run `orchestrator kernel fetch`, or set ORCHESTRATOR_KERNEL_DIR)", kernels_dir(data).display()));
    }
    GuestKernel::open(&current)
}

/// The versioned package that `linux-image-cloud-amd64` depends on.
fn resolve_package() -> Result<String, String> {
    let out = Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]).output().map_err(|e| format!("running apt-cache: {e} (kernel fetch needs Debian's apt)"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.chars().nth(12).is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| "apt-cache does not know linux-image-cloud-amd64 (run `apt-get update`?)".into())
}

/// Downloads and extracts the Debian cloud kernel into the data dir; returns it.
pub fn fetch(data: &Path) -> Result<GuestKernel, String> {
    let package = resolve_package()?;
    let root = kernels_dir(data);
    let dir = root.join(&package);
    if !dir.join(".complete").exists() {
        let tmp = root.join(format!(".fetch-{}", crate::image::store::random_hex(6)));
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // apt's download user must be able to write here.
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
        }
        let result = (|| {
            let out = Command::new("apt-get").args(["download", "-qq", &package]).current_dir(&tmp).output().map_err(|e| format!("running apt-get: {e}"))?;
            if !out.status.success() {
                return Err(format!("apt-get download {package}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            let deb = std::fs::read_dir(&tmp).map_err(|e| e.to_string())?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb")).ok_or("apt-get downloaded no .deb")?;
            let _ = std::fs::remove_dir_all(&dir);
            let out = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir).output().map_err(|e| format!("running dpkg-deb: {e}"))?;
            if !out.status.success() {
                return Err(format!("dpkg-deb -x: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            std::fs::write(dir.join(".complete"), b"").map_err(|e| e.to_string())
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result?;
    }
    let current = root.join("current");
    let link_tmp = root.join(format!(".current-{}", crate::image::store::random_hex(6)));
    std::os::unix::fs::symlink(&package, &link_tmp).map_err(|e| format!("{}: {e}", link_tmp.display()))?;
    std::fs::rename(&link_tmp, &current).map_err(|e| format!("{}: {e}", current.display()))?;
    GuestKernel::open(&dir)
}
