//! The agent as a microVM's init (PID 1 of the guest kernel, started from the initramfs the
//! host builds): mounts the kernel filesystems, loads the modules the initramfs carries (in the
//! dependency order the host wrote), connects to the host over vsock, mounts the image disk
//! (EROFS, read-only) and the scratch disk (ext4), builds the sandbox root on them with the same
//! code as a namespace sandbox, switches into it and serves the same protocol.
//!
//! When the agent ends, the VM powers off: init must never exit (the kernel would panic).

use nix::mount::{mount, MsFlags};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub use crate::abi::{AGENT_PORT, HOST_CID, IMAGE_DISK, SCRATCH_DISK};
/// Where the initramfs keeps modules, and the file listing them in load order.
const MODULES_DIR: &str = "/modules";
const MODULE_ORDER: &str = "/modules/order";
pub const IMAGE_MOUNT: &str = "/mnt/image";
pub const SCRATCH_MOUNT: &str = "/mnt/scratch";
pub const ROOT_MOUNT: &str = "/mnt/root";
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Says something on the console (the VM's console log on the host).
fn say(msg: &str) {
    if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "guest-agent: {msg}");
    }
}

/// The vsock connection to the host, once made (for `power_off`).
static HOST_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Ends the VM: flush the disks, then power off. Once locked down the agent has neither
/// CAP_SYS_BOOT nor reboot(2) (its own seccomp filter): then closing the host channel is the
/// signal, and the VMM ends the VM when the agent's connection closes (after the last reply
/// has reached the host).
pub fn power_off() -> ! {
    // SAFETY: sync, reboot(2) with the power-off command, and shutdown(2) on our own socket.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
        let fd = HOST_FD.load(std::sync::atomic::Ordering::SeqCst);
        if fd >= 0 {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
    // Init must not exit (the kernel would panic): wait for the VMM to end the VM.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn fail(msg: &str) -> ! {
    say(msg);
    power_off()
}

fn mount_kernel_fs() -> Result<(), String> {
    for (src, target, fstype, flags) in [
        ("proc", "/proc", "proc", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC),
        ("sysfs", "/sys", "sysfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID),
    ] {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(src), target, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(e) => return Err(format!("mounting {target}: {e}")),
        }
    }
    Ok(())
}

/// Loads every module named in /modules/order, in that order (dependencies first).
fn load_modules() -> Result<(), String> {
    let Ok(order) = std::fs::read_to_string(MODULE_ORDER) else { return Ok(()) };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if name.contains('/') {
            return Err(format!("bad module name {name:?} in {MODULE_ORDER}"));
        }
        let path = Path::new(MODULES_DIR).join(name);
        let file = std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        // SAFETY: finit_module on an open module file with empty parameters.
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading module {name}: {err}"));
            }
        }
    }
    Ok(())
}

fn wait_for(path: &str) -> Result<(), String> {
    let deadline = Instant::now() + DEVICE_WAIT;
    while !Path::new(path).exists() {
        if Instant::now() > deadline {
            return Err(format!("{path} did not appear within {DEVICE_WAIT:?} (is its driver in the initramfs?)"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Connects to the host's agent port over vsock (retrying while the device comes up).
fn connect_host() -> Result<UnixStream, String> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        // SAFETY: a fresh socket whose fd we own; sockaddr_vm is plain data.
        let result = unsafe {
            let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                let mut addr: libc::sockaddr_vm = std::mem::zeroed();
                addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
                addr.svm_cid = HOST_CID;
                addr.svm_port = AGENT_PORT;
                if libc::connect(fd, (&addr as *const libc::sockaddr_vm).cast(), std::mem::size_of::<libc::sockaddr_vm>() as u32) == 0 {
                    // A stream socket: std's UnixStream only issues read/write/shutdown/
                    // setsockopt(SO_*TIMEO) on it, which vsock supports the same way.
                    Ok(UnixStream::from_raw_fd(fd))
                } else {
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    Err(e)
                }
            }
        };
        match result {
            Ok(s) => {
                HOST_FD.store(s.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
                return Ok(s);
            }
            Err(e) if Instant::now() > deadline => return Err(format!("connecting to the host over vsock: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn mount_disks() -> Result<(), String> {
    for (dev, target, fstype, flags, data) in [
        (IMAGE_DISK, IMAGE_MOUNT, "erofs", MsFlags::MS_RDONLY, None),
        // nodev, nosuid: nothing on the writable disk may act as a device or gain ids;
        // noinit_itable: the guest would otherwise zero its inode tables in the background,
        // writing hundreds of MiB into the host's sparse disk file.
        (SCRATCH_DISK, SCRATCH_MOUNT, "ext4", MsFlags::MS_NODEV | MsFlags::MS_NOSUID, Some("errors=remount-ro,noinit_itable")),
    ] {
        wait_for(dev)?;
        std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
        mount(Some(dev), target, Some(fstype), flags, data).map_err(|e| format!("mounting {dev} ({fstype}) on {target}: {e}"))?;
    }
    for d in ["upper", "work"] {
        let p = Path::new(SCRATCH_MOUNT).join(d);
        std::fs::create_dir_all(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
    }
    std::fs::create_dir_all(ROOT_MOUNT).map_err(|e| format!("creating {ROOT_MOUNT}: {e}"))?;
    Ok(())
}

/// The `Init` a microVM's agent expects: the overlay over the two disks it mounts itself.
pub fn sandbox_init(hostname: &str, patches: Vec<crate::protocol::PatchOp>) -> crate::protocol::SandboxInit {
    crate::protocol::SandboxInit {
        hostname: hostname.to_string(),
        base_dir: String::new(),
        lower_dirs: vec![IMAGE_MOUNT.into()],
        upper_dir: format!("{SCRATCH_MOUNT}/upper"),
        work_dir: format!("{SCRATCH_MOUNT}/work"),
        mount_point: ROOT_MOUNT.into(),
        seccomp: true,
        patches,
        writable_mount: None,
        writable_tmpfs: None,
        network: None,
        trust_anchor: None,
        mounts: Vec::new(),
    }
}

pub fn main() -> ! {
    crate::agent::set_vm_mode();
    // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"guest-agent".as_ptr(), 0, 0, 0) };
    if let Err(e) = mount_kernel_fs().and_then(|_| load_modules()) {
        fail(&e);
    }
    let mut stream = connect_host().unwrap_or_else(|e| fail(&e));
    let frame = match crate::agent::read_first_request(&mut stream) {
        Ok(f) => f,
        Err(e) => fail(&format!("reading Init from the host: {e}")),
    };
    let build_root = |init: &crate::protocol::SandboxInit| {
        mount_disks()?;
        crate::init::setup_root_in(init, crate::init::SwitchRoot::MoveMount, Vec::new()).map_err(|e| e.to_string())
    };
    crate::boot::run(stream, frame, build_root, fail)
}
