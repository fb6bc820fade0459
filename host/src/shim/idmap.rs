//! Idmapped image layers for user-namespaced sandboxes. Image files belong to host ids
//! (usually root), which a user namespace does not map: the sandbox's root would see them as
//! `nobody` and overlayfs could not copy them up (EOVERFLOW). An idmapped bind mount of each
//! layer shows host id N as `USERNS_BASE + N`, which the sandbox maps back to N, so the image
//! looks as it does without a user namespace while nothing on the host changes owner.
//!
//! The mounts are made private in the host mount namespace just before the sandbox's namespaces
//! are cloned (the sandbox keeps its copy) and detached right after; `detach_all` also removes
//! any a crashed shim left.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub(super) const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// Directory-name prefix of the layer mount points inside an instance directory.
const LAYER_PREFIX: &str = "idmapped-layer-";

/// `struct mount_attr` of mount_setattr(2) (also used by `sealed_exe`).
#[repr(C)]
pub(super) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A user namespace with `map` for uids and gids, held open by the returned fd.
pub fn userns_with_map(map: &str) -> Result<OwnedFd, String> {
    let mut ready = [0; 2];
    let mut done = [0; 2];
    // SAFETY: two fresh pipes.
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0 || unsafe { libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe"));
    }
    // SAFETY: the child only makes raw syscalls and _exits (async-signal-safe, whatever other
    // threads the shim has).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            let mut b = 0u8;
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            libc::write(ready[1], [u8::from(ok)].as_ptr().cast(), 1);
            libc::read(done[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    let finish = |result: Result<OwnedFd, String>| {
        // SAFETY: releasing and reaping the helper child; closing our pipe ends.
        unsafe {
            libc::write(done[1], [1u8].as_ptr().cast(), 1);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            for fd in [ready[0], ready[1], done[0], done[1]] {
                libc::close(fd);
            }
        }
        result
    };
    let mut b = 0u8;
    // SAFETY: reading one byte from our pipe.
    if unsafe { libc::read(ready[0], (&mut b as *mut u8).cast(), 1) } != 1 || b != 1 {
        return finish(Err("creating a user namespace for the idmapped image".into()));
    }
    for f in ["uid_map", "gid_map"] {
        if let Err(e) = std::fs::write(format!("/proc/{pid}/{f}"), map) {
            return finish(Err(format!("writing {f}: {e}")));
        }
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from).map_err(|e| format!("opening the user namespace: {e}"));
    finish(ns)
}

/// Mounts `src` at `target` with ids mapped through `userns`, private to this mount namespace.
fn mount_idmapped(src: &Path, target: &Path, userns: &OwnedFd) -> Result<(), String> {
    let c_src = CString::new(src.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let c_target = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let empty = CString::default();
    // SAFETY: open_tree with a valid path; returns a new fd we own.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_src.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE)
    };
    if fd < 0 {
        return Err(os_err(&format!("open_tree {}", src.display())));
    }
    // SAFETY: fd was just returned by open_tree.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    // SAFETY: mount_setattr on the detached tree with a correctly sized mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(os_err(&format!(
            "idmapping {} (the filesystem or kernel may not support idmapped mounts; Linux 5.19+ with ext4, xfs, btrfs or tmpfs)",
            src.display()
        )));
    }
    std::fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    // SAFETY: attaching the detached tree at an existing directory.
    let rc = unsafe {
        libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, c_target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    };
    if rc != 0 {
        return Err(os_err(&format!("attaching the idmapped {}", src.display())));
    }
    mount(None::<&str>, target, None::<&str>, MsFlags::MS_PRIVATE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("making {} private: {e}", target.display()))
}

/// Idmapped copies of `layers` under `instance_dir`, in the same order.
pub fn mount_layers(instance_dir: &Path, layers: &[String], userns: &OwnedFd) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let target = instance_dir.join(format!("{LAYER_PREFIX}{i}"));
        if let Err(e) = mount_idmapped(Path::new(layer), &target, userns) {
            detach_all(instance_dir, true);
            return Err(e);
        }
        out.push(target.to_string_lossy().into_owned());
    }
    Ok(out)
}

/// Detaches every idmapped layer mount of an instance (host side) and, with `remove`, the mount
/// points too. Removing must wait until the sandbox has built its root: rmdir of a mount point
/// detaches the mounts on it in every other namespace as well (Linux 3.18+).
pub fn detach_all(instance_dir: &Path, remove: bool) {
    let Ok(entries) = std::fs::read_dir(instance_dir) else { return };
    let targets: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(LAYER_PREFIX))
        .map(|e| e.path())
        .collect();
    for t in targets {
        let _ = umount2(&t, MntFlags::MNT_DETACH);
        if remove {
            let _ = std::fs::remove_dir(&t);
        }
    }
}
