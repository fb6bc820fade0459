//! Can this host boot a microVM? Each check says what is wrong and how to fix it; `doctor`
//! prints them all and `isolation: auto` picks microVMs only when all pass.

use crate::config::Config;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, String>,
}

/// KVM itself: the device, our access to it, and a hypervisor that boots stock kernels.
pub fn kvm() -> Result<String, String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Err("no /dev/kvm: load kvm_intel or kvm_amd (and enable VT-x/AMD-V, or nested virtualisation on a VM host)".into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Err(format!("cannot open /dev/kvm: {e} (run as root or join the kvm group)"));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("this host's KVM is kvm_pvm (page-table based, no VT-x/AMD-V): it boots only PVM guest kernels and a stock kernel hangs. Use `isolation: namespace` here, or a host with hardware virtualisation (the test suite runs microVMs in a nested harness: `just test-vm`)".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let module = ["kvm_intel", "kvm_amd"].into_iter().find(|m| Path::new("/sys/module").join(m).exists());
    match (hw, module) {
        (true, Some(m)) => Ok(format!("/dev/kvm works ({m})")),
        (false, Some(m)) => Ok(format!("/dev/kvm works ({m}; the CPU flags hide vmx/svm, as in some nested set-ups)")),
        (_, None) => Err("/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded; this KVM cannot be trusted to boot a stock kernel".into()),
    }
}

pub fn guest_kernel(config: &Config) -> Result<String, String> {
    let k = super::kernel::configured(config)?;
    let modules = super::initramfs::resolve(&k, super::initramfs::GUEST_MODULES).map_err(|e| format!("{} ({}): {e}", k.version, k.dir.display()))?;
    Ok(format!("{} at {} ({} modules for the initramfs)", k.version, k.dir.display(), modules.len()))
}

pub fn guest_agent(config: &Config) -> Result<String, String> {
    super::initramfs::agent_binary(config).map(|p| format!("static agent at {}", p.display()))
}

pub fn all(config: &Config) -> Vec<Check> {
    vec![
        Check { name: "kvm", result: kvm() },
        Check { name: "guest kernel", result: guest_kernel(config) },
        Check { name: "guest agent", result: guest_agent(config) },
    ]
}

/// Ok when microVMs can start here (with this `kernel:`, or the configured kernel); else the
/// first failure. Runs before every microVM or `auto` start, so it stops at the first failure
/// and only opens the kernel package (the module walk that `doctor` shows happens when the
/// initramfs is built).
pub fn ready(config: &Config, kernel: Option<&str>) -> Result<(), String> {
    kvm().map_err(|e| format!("kvm: {e}"))?;
    super::kernel::for_sandbox(config, kernel).map_err(|e| format!("guest kernel: {e}"))?;
    guest_agent(config).map(|_| ()).map_err(|e| format!("guest agent: {e}"))
}

/// virtiofsd, for volumes in microVMs: `ORCHESTRATOR_VIRTIOFSD`, else on PATH, else where
/// distributions install it.
pub fn virtiofsd() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("ORCHESTRATOR_VIRTIOFSD").filter(|v| !v.is_empty()) {
        return Some(std::path::PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("virtiofsd"))
        .chain(["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"].map(std::path::PathBuf::from))
        .find(|p| p.is_file())
}
