//! The guest kernel: Debian's cloud kernel package, extracted (never installed) into
//! `DATA/kernels/<package>/`, with `DATA/kernels/current` naming the one in use.
//! `ORCHESTRATOR_KERNEL_DIR` points at an extracted package elsewhere (the test set-up shares
//! one cache); a sandbox's `kernel:` names its own (a package directory, a kernel image file,
//! or a kernel provisioned in `DATA/kernels`). `orchestrator kernel fetch` provisions Debian's
//! with apt-get download + dpkg-deb. The VMM is handed the vmlinux unpacked from the bzImage
//! once and cached (`DATA/kernels/vmlinux/`), so no boot pays for decompressing the kernel.

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A guest kernel: its image (bzImage or vmlinux) and, for a modular kernel, the modules tree
/// of that version (an extracted package has both).
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub dir: PathBuf,
    pub version: String,
    pub image: PathBuf,
    /// `lib/modules/VERSION`; None for a kernel image given on its own (its virtio drivers,
    /// vsock, overlayfs and EROFS must then be built in).
    pub modules: Option<PathBuf>,
}

/// Kernel image file names in a package's `boot/`, with the version after the prefix.
const IMAGE_PREFIXES: [&str; 2] = ["vmlinuz-", "vmlinux-"];

fn version_of(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    IMAGE_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).filter(|v| !v.is_empty()).map(str::to_string)
}

impl GuestKernel {
    /// Reads an extracted package directory (`boot/vmlinuz-V` or `boot/vmlinux-V`,
    /// `lib/modules/V/`).
    pub fn open(dir: &Path) -> Result<GuestKernel, String> {
        let boot = dir.join("boot");
        let entries = std::fs::read_dir(&boot).map_err(|e| format!("{}: {e} (not an extracted kernel package; run `orchestrator kernel fetch`)", boot.display()))?;
        let mut images: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| version_of(p).is_some()).collect();
        images.sort();
        let image = images.pop().ok_or_else(|| format!("no boot/vmlinuz-* or boot/vmlinux-* in {}", dir.display()))?;
        let version = version_of(&image).unwrap_or_default();
        let modules = dir.join("lib/modules").join(&version);
        if !modules.is_dir() {
            return Err(format!("{} has no modules for {version} (lib/modules/{version})", dir.display()));
        }
        Ok(GuestKernel { dir: dir.to_path_buf(), version, image, modules: Some(modules) })
    }

    /// A kernel image file. Inside a package (`PKG/boot/vmlinuz-V`) it gets that package's
    /// modules; on its own it gets none.
    pub fn from_image(file: &Path) -> Result<GuestKernel, String> {
        let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a kernel image file", file.display()));
        }
        let parent = file.parent().unwrap_or(Path::new("/"));
        let named = version_of(file);
        if let (Some(version), true) = (&named, parent.file_name().is_some_and(|n| n == "boot")) {
            let pkg = parent.parent().unwrap_or(Path::new("/"));
            let modules = pkg.join("lib/modules").join(version);
            if modules.is_dir() {
                return Ok(GuestKernel { dir: pkg.to_path_buf(), version: version.clone(), image: file.to_path_buf(), modules: Some(modules) });
            }
        }
        let version = named.unwrap_or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        Ok(GuestKernel { dir: parent.to_path_buf(), version, image: file.to_path_buf(), modules: None })
    }

    /// What the VMM boots: the vmlinux unpacked from the bzImage (once, cached under
    /// `DATA/kernels/vmlinux/`), or the image itself when it is already an ELF or its payload
    /// is not one we unpack (the VMM then enters the bzImage through its 64-bit entry).
    pub fn boot_image(&self, data: &Path) -> Result<PathBuf, String> {
        let meta = std::fs::metadata(&self.image).map_err(|e| format!("{}: {e}", self.image.display()))?;
        let mut head = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(&self.image).map_err(|e| format!("{}: {e}", self.image.display()))?;
            f.read_exact(&mut head).map_err(|e| format!("{}: {e}", self.image.display()))?;
        }
        if &head == b"\x7fELF" {
            return Ok(self.image.clone());
        }
        use std::os::unix::fs::MetadataExt;
        let stamp = format!("{}|{}|{}|{}", self.image.display(), meta.len(), meta.mtime(), meta.mtime_nsec());
        let digest = crate::image::store::sha256_digest(stamp.as_bytes());
        let key = &digest["sha256:".len()..][..16];
        let dir = kernels_dir(data).join("vmlinux");
        let path = dir.join(format!("{}-{key}.elf", self.version));
        if path.exists() {
            return Ok(path);
        }
        let bzimage = std::fs::read(&self.image).map_err(|e| format!("{}: {e}", self.image.display()))?;
        match vmm::kernel::vmlinux_from(&bzimage) {
            Ok(vmlinux) => {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                crate::paths::write_atomic(&path, &vmlinux).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(path)
            }
            Err(e) => {
                tracing::debug!("{}: {e}; the VMM boots the bzImage itself", self.image.display());
                Ok(self.image.clone())
            }
        }
    }
}

pub fn kernels_dir(data: &Path) -> PathBuf {
    data.join("kernels")
}

/// The kernel sandboxes use: the configured kernel directory (`ORCHESTRATOR_KERNEL_DIR` for the
/// command line), else `DATA/kernels/current`.
pub fn configured(config: &Config) -> Result<GuestKernel, String> {
    if let Some(dir) = &config.kernel_dir {
        return GuestKernel::open(dir).map_err(|e| format!("the configured kernel directory (ORCHESTRATOR_KERNEL_DIR): {e}"));
    }
    let data = config.data_dir.as_path();
    let current = kernels_dir(data).join("current");
    if !current.exists() {
        return Err(format!("no guest kernel in {} (run `orchestrator kernel fetch`, or set ORCHESTRATOR_KERNEL_DIR)", kernels_dir(data).display()));
    }
    GuestKernel::open(&current)
}

/// The guest kernel's command line. No `nomodule`: the agent loads the virtio modules.
/// `cryptomgr.notests` skips the boot-time self-tests of every crypto algorithm (0.4 s of guest
/// time nested); `8250.nr_uarts=1` probes COM1 only.
pub const GUEST_CMDLINE: &str = "console=ttyS0 quiet loglevel=4 panic=-1 reboot=acpi pci=off i8042.noaux i8042.nokbd i8042.nopnp random.trust_cpu=on cryptomgr.notests 8250.nr_uarts=1";

/// The guest kernel's command line: ours, then the configuration's extra text.
pub fn guest_cmdline(config: &Config) -> String {
    match config.guest_cmdline_append.as_deref().map(str::trim) {
        Some(extra) if !extra.is_empty() => format!("{GUEST_CMDLINE} {extra}"),
        _ => GUEST_CMDLINE.to_string(),
    }
}

/// The kernel of one sandbox: its `kernel:` (an absolute path to a package directory or an
/// image file, or the name of a kernel in `DATA/kernels`), else the configured one.
pub fn for_sandbox(config: &Config, kernel: Option<&str>) -> Result<GuestKernel, String> {
    let Some(k) = kernel else { return configured(config) };
    let data = config.data_dir.as_path();
    // Validation makes paths absolute; a name must stay inside DATA/kernels.
    if !k.starts_with('/') && (k.contains('/') || k.starts_with('.')) {
        return Err(format!("spec.kernel: {k:?} is neither an absolute path nor a kernel name"));
    }
    let path = if k.starts_with('/') { PathBuf::from(k) } else { kernels_dir(data).join(k) };
    let result = if path.is_dir() {
        GuestKernel::open(&path)
    } else if path.exists() {
        GuestKernel::from_image(&path)
    } else if k.starts_with('/') {
        Err(format!("{k} does not exist"))
    } else {
        Err(format!("no kernel named {k:?} in {} (`orchestrator kernel fetch` provisions Debian's; or give a path)", kernels_dir(data).display()))
    };
    result.map_err(|e| format!("spec.kernel: {e}"))
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
        let tmp = root.join(format!(".fetch-{}", crate::ids::random_hex(6)));
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
    let link_tmp = root.join(format!(".current-{}", crate::ids::random_hex(6)));
    std::os::unix::fs::symlink(&package, &link_tmp).map_err(|e| format!("{}: {e}", link_tmp.display()))?;
    std::fs::rename(&link_tmp, &current).map_err(|e| format!("{}: {e}", current.display()))?;
    GuestKernel::open(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cmdline_gets_its_extra() {
        let mut c = Config::new("/d");
        assert_eq!(guest_cmdline(&c), GUEST_CMDLINE);
        c.guest_cmdline_append = Some(" initcall_debug ".into());
        assert!(guest_cmdline(&c).ends_with(" initcall_debug"));
    }

    fn package(root: &Path, version: &str, image: &[u8]) -> PathBuf {
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::create_dir_all(root.join("lib/modules").join(version)).unwrap();
        let file = root.join("boot").join(format!("vmlinuz-{version}"));
        std::fs::write(&file, image).unwrap();
        file
    }

    #[test]
    fn a_kernel_is_a_package_an_image_in_one_or_an_image_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let image = package(&tmp.path().join("pkg"), "6.1.0-9-cloud-amd64", b"\x7fELF...");
        let k = GuestKernel::open(&tmp.path().join("pkg")).unwrap();
        assert_eq!(k.version, "6.1.0-9-cloud-amd64");
        assert_eq!(k.image, image);
        assert!(k.modules.as_ref().unwrap().ends_with("lib/modules/6.1.0-9-cloud-amd64"));
        // The image file of a package: that package's modules.
        let k = GuestKernel::from_image(&image).unwrap();
        assert_eq!(k.modules, GuestKernel::open(&tmp.path().join("pkg")).unwrap().modules);
        // An image on its own: no modules (its drivers are built in).
        let alone = tmp.path().join("my-vmlinux");
        std::fs::write(&alone, b"\x7fELF...").unwrap();
        let k = GuestKernel::from_image(&alone).unwrap();
        assert_eq!((k.version.as_str(), k.modules.is_none()), ("my-vmlinux", true));
        // An ELF image is booted as it is.
        assert_eq!(k.boot_image(tmp.path()).unwrap(), alone);
    }

    #[test]
    fn sandbox_kernels_resolve_by_path_or_name_and_explain_what_is_missing() {
        let data = tempfile::tempdir().unwrap();
        package(&kernels_dir(data.path()).join("linux-image-x"), "6.1.0-9-cloud-amd64", b"\x7fELF...");
        assert_eq!(for_sandbox(&Config::new(data.path()), Some("linux-image-x")).unwrap().version, "6.1.0-9-cloud-amd64");
        let err = for_sandbox(&Config::new(data.path()), Some("linux-image-y")).unwrap_err();
        assert!(err.contains("no kernel named \"linux-image-y\"") && err.contains("kernel fetch"), "{err}");
        let err = for_sandbox(&Config::new(data.path()), Some("/no/such/kernel")).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        for escape in ["../../etc", "..", "a/../../b"] {
            let err = for_sandbox(&Config::new(data.path()), Some(escape)).unwrap_err();
            assert!(err.contains("neither an absolute path nor a kernel name"), "{escape}: {err}");
        }
    }

    /// Debian's bzImage: unpacked once into the cache, reused after.
    #[test]
    fn a_bzimage_is_unpacked_once_for_the_vmm() {
        let Some(dir) = std::env::var_os("ORCHESTRATOR_TEST_KERNEL_DIR") else {
            eprintln!("SKIPPED: ORCHESTRATOR_TEST_KERNEL_DIR is not set (tests/vm/kernels.sh provisions Debian's kernel)");
            return;
        };
        let data = tempfile::tempdir().unwrap();
        let k = GuestKernel::open(Path::new(&dir)).unwrap();
        let boot = k.boot_image(data.path()).unwrap();
        assert!(boot.starts_with(kernels_dir(data.path()).join("vmlinux")), "{}", boot.display());
        assert!(std::fs::read(&boot).unwrap().starts_with(b"\x7fELF"));
        let mtime = std::fs::metadata(&boot).unwrap().modified().unwrap();
        assert_eq!(k.boot_image(data.path()).unwrap(), boot);
        assert_eq!(std::fs::metadata(&boot).unwrap().modified().unwrap(), mtime);
    }
}
