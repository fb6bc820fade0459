//! Builds a namespace sandbox's root from inside its fresh mount namespace: overlayfs over the
//! image, /proc, a minimal /dev, read-only /sys, masked kernel files, pivot_root, hostname and
//! loopback. Runs as PID 1 before any thread exists; mounts vanish with the namespace, so nothing
//! is left on the host when the sandbox ends.

use crate::protocol::SandboxInit;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root, sethostname};
use std::fs;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct InitError {
    step: String,
    source: std::io::Error,
}

fn step<T, E: Into<std::io::Error>>(r: Result<T, E>, what: impl FnOnce() -> String) -> Result<T, InitError> {
    r.map_err(|e| InitError { step: what(), source: e.into() })
}

fn errno(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

fn mnt(src: Option<&str>, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<(), InitError> {
    step(mount(src, target, fstype, flags, data).map_err(errno), || {
        format!("mounting {} on {}", fstype.or(src).unwrap_or("?"), target.display())
    })
}

fn mkdir_p(path: &Path, mode: u32) -> Result<(), InitError> {
    step(fs::DirBuilder::new().recursive(true).mode(mode).create(path), || format!("creating {}", path.display()))
}

/// Device nodes bind-mounted from the host (works inside a user namespace, where mknod does not).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Kernel files hidden from the sandbox (as container runtimes do).
const MASKED_FILES: &[&str] = &["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats"];
const MASKED_DIRS: &[&str] = &["/proc/acpi", "/proc/scsi", "/sys/firmware"];
/// Read-only rather than masked: a write fails loudly (EROFS) instead of vanishing into
/// /dev/null, so nothing inside believes it reached the kernel.
const READ_ONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];
/// The image's directories that the agent mounts over. Each must be a real directory of the
/// image: a symlink would be followed from the host's root before pivot_root (runc's
/// CVE-2021-30465 class), so one is refused.
const MOUNT_POINTS: &[&str] = &["proc", "dev", "sys"];

/// Remounts the bind mount at `target` read-only, keeping the flags it has (inside a user
/// namespace the kernel refuses a remount that would clear a flag the host set), and adding
/// nosuid and noexec. Never nodev: the mounts this serves are device nodes.
fn remount_read_only(target: &Path) -> Result<(), InitError> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let have = step(statvfs(target).map_err(errno), || format!("reading the flags of {}", target.display()))?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    for (st, ms) in [
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    mnt(None, target, None, flags, None)
}

/// How the new root replaces the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchRoot {
    /// pivot_root, then detach the old root (namespace sandboxes).
    PivotRoot,
    /// Move the new root over `/` and chroot into it: the only way off an initramfs, where
    /// pivot_root is refused (microVMs).
    MoveMount,
}

/// A namespace sandbox's root; `fds` came with the Init: first the detached mount of its
/// writable disk (when the Init names a `writable_mount`), then the volumes' its mounts name.
pub fn setup_root(init: &SandboxInit, fds: Vec<std::os::fd::OwnedFd>) -> Result<(), InitError> {
    setup_root_in(init, SwitchRoot::PivotRoot, fds)
}

pub fn setup_root_in(init: &SandboxInit, switch: SwitchRoot, fds: Vec<std::os::fd::OwnedFd>) -> Result<(), InitError> {
    let mut fds: Vec<Option<std::os::fd::OwnedFd>> = fds.into_iter().map(Some).collect();
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // The shim has moved us into the sandbox's cgroup by now: make it our cgroup root.
    step(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(errno), || "entering a cgroup namespace".into())?;
    mnt(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;

    let root = Path::new(&init.mount_point);
    if !init.base_dir.is_empty() {
        step(chdir(init.base_dir.as_str()).map_err(errno), || format!("entering {}", init.base_dir))?;
    }
    if let Some(target) = &init.writable_mount {
        match init.writable_tmpfs {
            // nosuid and nodev as the disk's mount: the overlay's own nodev covers the root,
            // and these cover the layer's directory itself.
            Some(bytes) => mnt(Some("tmpfs"), Path::new(target), Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(&format!("size={bytes},mode=0755")))?,
            None => {
                let disk = fds.first_mut().and_then(Option::take).ok_or_else(|| InitError { step: "the Init names a writable disk but none came with it".into(), source: std::io::ErrorKind::InvalidInput.into() })?;
                attach_writable_disk(disk, target)?;
            }
        }
        for d in [&init.upper_dir, &init.work_dir] {
            mkdir_p(Path::new(d), 0o755)?;
        }
    }
    let overlay = format!(
        "lowerdir={},upperdir={},workdir={}",
        init.lower_dirs.join(":"),
        init.upper_dir,
        init.work_dir
    );
    // nodev: a device node made or unpacked into the root opens nothing (the agent's own
    // nodes in /dev are bind mounts of the host's, on mounts of their own).
    mnt(Some("overlay"), root, Some("overlay"), MsFlags::MS_NODEV, Some(&overlay))?;
    // Before /proc, /sys and /dev exist in the new root, so no patch can reach them.
    crate::patch::apply(root, &init.patches).map_err(|e| InitError { step: "applying rootfs patches".into(), source: std::io::Error::other(e.to_string()) })?;
    crate::trust::install(root, init.trust_anchor.as_deref()).map_err(|e| InitError { step: "installing the interception CA".into(), source: std::io::Error::other(e) })?;
    refuse_symlinked_mount_points(root)?;
    crate::mounts::attach_all(root, &init.mounts, &mut fds).map_err(|e| InitError { step: "mounting spec.volumes".into(), source: std::io::Error::other(e) })?;

    let proc_dir = root.join("proc");
    mkdir_p(&proc_dir, 0o555)?;
    mnt(Some("proc"), &proc_dir, Some("proc"), nosuid_nodev_noexec, None)?;

    setup_dev(&root.join("dev"))?;

    let sys = root.join("sys");
    mkdir_p(&sys, 0o555)?;
    let ro = nosuid_nodev_noexec | MsFlags::MS_RDONLY;
    if mount(Some("sysfs"), &sys, Some("sysfs"), ro, None::<&str>).is_err() {
        // sysfs needs a network namespace owned by our user namespace; an empty /sys is safe.
        mnt(Some("tmpfs"), &sys, Some("tmpfs"), ro, Some("size=0"))?;
    }

    step(chdir(root).map_err(errno), || "entering the new root".into())?;
    match switch {
        SwitchRoot::PivotRoot => {
            step(pivot_root(".", ".").map_err(errno), || "pivot_root".into())?;
            step(umount2(".", MntFlags::MNT_DETACH).map_err(errno), || "detaching the old root".into())?;
        }
        SwitchRoot::MoveMount => {
            mnt(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
            step(nix::unistd::chroot(".").map_err(errno), || "chroot into the new root".into())?;
        }
    }
    step(chdir("/").map_err(errno), || "chdir /".into())?;

    // Before /proc/sys turns read-only: the link's sysctls (DAD, unprivileged ping) are set.
    if let Some(net) = &init.network {
        step(crate::net::configure(net), || format!("configuring {}", net.interface))?;
    }
    mask_kernel_files()?;
    step(sethostname(&init.hostname).map_err(errno), || "setting the hostname".into())?;
    step(loopback_up(), || "bringing up loopback".into())?;
    Ok(())
}

fn refuse_symlinked_mount_points(root: &Path) -> Result<(), InitError> {
    for name in MOUNT_POINTS {
        let path = root.join(name);
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default();
                return Err(InitError {
                    step: format!("the image's /{name} is a symlink (to {target:?}); the sandbox mounts its own /{name} there, so it must be a directory or absent"),
                    source: std::io::ErrorKind::InvalidData.into(),
                });
            }
        }
    }
    Ok(())
}

/// Attaches the detached mount of the writable disk at `target`, relative to the current
/// directory; the fd closes afterwards.
fn attach_writable_disk(disk: std::os::fd::OwnedFd, target: &str) -> Result<(), InitError> {
    use std::os::fd::AsRawFd;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let c_target = std::ffi::CString::new(target).map_err(|_| InitError { step: "attaching the writable disk".into(), source: std::io::ErrorKind::InvalidInput.into() })?;
    // SAFETY: move_mount of the detached mount we were handed onto a directory we name.
    let rc = unsafe { libc::syscall(libc::SYS_move_mount, disk.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, c_target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) };
    step(if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }, || format!("attaching the writable disk at {target}"))
}

fn setup_dev(dev: &Path) -> Result<(), InitError> {
    mkdir_p(dev, 0o755)?;
    // nodev too: the nodes below are bind mounts that keep their own (host /dev) mount.
    mnt(Some("tmpfs"), dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV, Some("mode=755,size=65536k"))?;
    for name in DEVICES {
        let target = dev.join(name);
        step(fs::File::create(&target), || format!("creating {}", target.display()))?;
        let host = format!("/dev/{name}");
        mnt(Some(&host), &target, None, MsFlags::MS_BIND, None)?;
        // Read-only: the node is the host's own inode, and root inside (without a user
        // namespace, the host's uid 0) could otherwise chmod or chown the host's /dev/null.
        // A read-only mount refuses metadata changes; reads and writes of a device go on.
        remount_read_only(&target)?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts, 0o755)?;
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdir_p(&shm, 0o1777)?;
    mnt(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step(symlink(target, dev.join(link)), || format!("linking /dev/{link}"))?;
    }
    Ok(())
}

fn mask_kernel_files() -> Result<(), InitError> {
    for f in MASKED_FILES {
        if Path::new(f).exists() {
            mnt(Some("/dev/null"), Path::new(f), None, MsFlags::MS_BIND, None)?;
        }
    }
    for d in MASKED_DIRS {
        if Path::new(d).is_dir() {
            mnt(Some("tmpfs"), Path::new(d), Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))?;
        }
    }
    for d in READ_ONLY {
        let p = Path::new(d);
        if p.exists() {
            mnt(Some(d), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            mnt(
                None,
                p,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None,
            )?;
        }
    }
    Ok(())
}

/// `ip link set lo up`, with the plain ioctl interface (no netlink dependency for one flag).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a socket used only for two interface ioctls on a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}
