//! A namespace sandbox's `spec.volumes`, host side: each named volume and host path becomes a
//! detached mount with its final flags, handed to the agent with the Init (the agent attaches
//! them inside the root, see `guest_agent::mounts`); tmpfs mounts are the agent's own.
//!
//! Invariants:
//! - Nothing here mounts in the host's mount table, and nothing reads or walks a volume's
//!   contents: a symlink a sandbox leaves in a volume is only ever resolved inside a sandbox.
//! - Every mount is `nosuid` and `nodev`; a read-only one is read-only at the mount, which the
//!   sandbox (without CAP_SYS_ADMIN after lock-down, or in a user namespace where the flag is
//!   locked) cannot clear.
//! - A writable mount of a volume that is not `shared` holds the volume's writer lock for the
//!   shim's life: a second writer is refused, readers never wait.
//! - In a user-namespaced sandbox every mount is idmapped (host id N shows as N inside), so the
//!   sandbox's root owns what host root owns, as in the image.

use super::idmap::MountAttr;
use super::writable::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::volume::{ResolvedMount, ResolvedSource, VolumeDir};
use guest_agent::protocol::{MountInit, MountInitSource};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// The mounts of one start: fds to send with the Init (in order), the Init's entries, the
/// writer locks to hold while the sandbox lives, and the writable volumes' root directories,
/// trimmed when it ends ([`trim_all`]).
#[derive(Default)]
pub struct Prepared {
    pub fds: Vec<OwnedFd>,
    pub mounts: Vec<MountInit>,
    pub locks: Vec<std::fs::File>,
    pub trim: Vec<OwnedFd>,
}

/// Trims the writable volumes a sandbox had (their freed blocks go back to the host), once it
/// has ended.
pub fn trim_all(dirs: Vec<OwnedFd>) {
    for d in dirs {
        if let Err(e) = super::writable::trim(&d) {
            tracing::warn!("trimming a volume: {e}");
        }
    }
}

fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// One volume or host path as a detached mount with its final flags, and what the sandbox
/// holds while it lives: the volume's writer lock, and its root for the trim at the end.
pub struct Detached {
    pub mount: OwnedFd,
    pub lock: Option<std::fs::File>,
    pub trim: Option<OwnedFd>,
    /// A single host file rather than a directory.
    pub file: bool,
}

/// `v` as a detached mount (None for a tmpfs, which the guest side makes itself).
pub fn detach(sandbox: &str, v: &ResolvedMount, userns: Option<&OwnedFd>) -> Result<Option<Detached>, String> {
    match &v.source {
        ResolvedSource::Tmpfs { .. } => Ok(None),
        ResolvedSource::Volume { name, dir, shared } => {
            let dir = VolumeDir(dir.clone());
            let lock = if !v.read_only && !shared { Some(writer_lock(&dir, name, sandbox)?) } else { None };
            let _attaching = crate::paths::lock(&dir.attach_lock()).map_err(|e| format!("volume {name}: locking {}: {e}", dir.attach_lock().display()))?;
            let mut attrs = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID;
            if v.read_only {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            let mount = super::writable::mount_shared(&dir.disk(), attrs).map_err(|e| format!("volume {name}: {e}"))?;
            let mut trim = None;
            if !v.read_only {
                // SAFETY: openat of "." relative to the detached mount's root, a new fd we own.
                let root = unsafe { libc::openat(mount.as_raw_fd(), c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
                if root >= 0 {
                    // SAFETY: just opened.
                    trim = Some(unsafe { OwnedFd::from_raw_fd(root) });
                }
            }
            if let Some(ns) = userns {
                set_attrs(&mount, 0, Some(ns)).map_err(|e| format!("volume {name}: {e}"))?;
            }
            Ok(Some(Detached { mount, lock, trim, file: false }))
        }
        ResolvedSource::HostPath { path, file } => Ok(Some(Detached { mount: host_path(path, v.read_only, userns)?, lock: None, trim: None, file: *file })),
    }
}

/// Prepares `volumes` for sandbox `sandbox`; the fds' indices in the Init start at
/// `first_index` (after the writable disk's).
pub fn prepare(sandbox: &str, volumes: &[ResolvedMount], userns: Option<&OwnedFd>, first_index: usize) -> Result<Prepared, String> {
    let mut out = Prepared::default();
    for v in volumes {
        let Some(d) = detach(sandbox, v, userns)? else {
            if let ResolvedSource::Tmpfs { size } = v.source {
                out.mounts.push(MountInit { target: v.mount_path.clone(), source: MountInitSource::Tmpfs { size }, file: false });
            }
            continue;
        };
        out.locks.extend(d.lock);
        out.trim.extend(d.trim);
        out.mounts.push(MountInit { target: v.mount_path.clone(), source: MountInitSource::Fd(first_index + out.fds.len()), file: d.file });
        out.fds.push(d.mount);
    }
    Ok(out)
}

/// The volume's writer lock, or who holds it.
fn writer_lock(dir: &VolumeDir, name: &str, sandbox: &str) -> Result<std::fs::File, String> {
    match crate::paths::try_lock(&dir.writer_lock()) {
        Ok(Some(lock)) => {
            let _ = crate::paths::write_atomic(&dir.writer_name(), sandbox.as_bytes());
            Ok(lock)
        }
        Ok(None) => {
            let holder = std::fs::read_to_string(dir.writer_name()).unwrap_or_else(|_| "another sandbox".into());
            Err(format!(
                "volume {name} is mounted writable by sandbox {holder:?}; a volume has one writer at a time: mount it `readOnly: true`, stop {holder:?}, or declare the volume `shared: true`"
            ))
        }
        Err(e) => Err(format!("volume {name}: locking {}: {e}", dir.writer_lock().display())),
    }
}

/// A detached clone of the host path (not its submounts), `nosuid,nodev`, read-only on request.
fn host_path(path: &Path, read_only: bool, userns: Option<&OwnedFd>) -> Result<OwnedFd, String> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: open_tree with a NUL-terminated path; returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), super::idmap::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint) };
    if fd < 0 {
        return Err(os_err(format_args!("hostPath {}", path.display())));
    }
    // SAFETY: just returned by open_tree.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attrs = u64::from(MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID);
    if read_only {
        attrs |= u64::from(MOUNT_ATTR_RDONLY);
    }
    set_attrs(&tree, attrs, None).map_err(|e| format!("hostPath {}: {e}", path.display()))?;
    if let Some(ns) = userns {
        // A filesystem without idmapped mounts (9p, NFS, overlayfs on older kernels) still
        // mounts; its files then show as `nobody` inside the user namespace.
        if let Err(e) = set_attrs(&tree, 0, Some(ns)) {
            tracing::warn!("hostPath {} is not idmapped ({e}); its files show as nobody inside the sandbox", path.display());
        }
    }
    Ok(tree)
}

/// mount_setattr on a detached mount: `set` flags, and an idmap through `userns`.
fn set_attrs(tree: &OwnedFd, set: u64, userns: Option<&OwnedFd>) -> Result<(), String> {
    let attr = MountAttr {
        attr_set: set | if userns.is_some() { MOUNT_ATTR_IDMAP } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    // SAFETY: mount_setattr on our detached mount with a correctly sized mount_attr.
    let rc = unsafe {
        libc::syscall(libc::SYS_mount_setattr, tree.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH as libc::c_uint, &attr as *const MountAttr, std::mem::size_of::<MountAttr>())
    };
    if rc != 0 {
        return Err(os_err(if userns.is_some() { "idmapping the mount" } else { "setting the mount's flags" }));
    }
    Ok(())
}
