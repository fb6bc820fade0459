//! A sandbox's `spec.volumes` inside its root: the detached mounts the shim made (named
//! volumes, host paths; already read-only, nosuid, nodev and idmapped as they must be) and
//! fresh tmpfs mounts, attached parents first at paths resolved inside the root.
//!
//! Invariants:
//! - No symlink is followed on the way to a mount point: each component is opened with
//!   `O_NOFOLLOW` relative to its parent's fd, so an image whose `/data` links to `/etc` (or to
//!   a host path, since the root is not pivoted yet) gets an error, never a mount elsewhere.
//! - Missing directories (and the file of a single-file mount) are created inside the root.
//! - A mount is attached to the fd of its target (`MOVE_MOUNT_T_EMPTY_PATH`), never by path.

use crate::protocol::{MountInit, MountInitSource};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Mounts `mounts` into the root at `root`; `fds` are the ones the Init carried (each taken
/// once, by index).
pub fn attach_all(root: &Path, mounts: &[MountInit], fds: &mut [Option<OwnedFd>]) -> Result<(), String> {
    let mut ordered: Vec<&MountInit> = mounts.iter().collect();
    ordered.sort_by_key(|m| m.target.split('/').filter(|c| !c.is_empty()).count());
    for m in ordered {
        let source = match &m.source {
            MountInitSource::Fd(i) => fds.get_mut(*i).and_then(Option::take).ok_or_else(|| format!("mount {}: fd {i} did not come with the Init", m.target))?,
            MountInitSource::Tmpfs { size } => tmpfs(*size).map_err(|e| format!("mount {}: {e}", m.target))?,
            MountInitSource::Virtiofs { tag, read_only } => virtiofs(tag, *read_only).map_err(|e| format!("mount {}: {e}", m.target))?,
        };
        let target = open_target(root, &m.target, m.file)?;
        // SAFETY: move_mount of a detached mount we own onto an fd we opened.
        let rc = unsafe {
            libc::syscall(libc::SYS_move_mount, source.as_raw_fd(), c"".as_ptr(), target.as_raw_fd(), c"".as_ptr(), MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)
        };
        if rc != 0 {
            return Err(os_err(format_args!("mounting on {}", m.target)));
        }
    }
    Ok(())
}

/// A detached tmpfs of `size` bytes, like /tmp (mode 1777), nosuid and nodev.
pub fn tmpfs(size: u64) -> Result<OwnedFd, String> {
    let name = cstr("tmpfs")?;
    // SAFETY: fsopen with a NUL-terminated name; returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("fsopen(tmpfs)"));
    }
    // SAFETY: just returned by fsopen.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for (key, value) in [("size", size.to_string()), ("mode", "1777".to_string())] {
        let (k, v) = (cstr(key)?, cstr(&value)?);
        // SAFETY: fsconfig on our context with NUL-terminated strings.
        if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0) } != 0 {
            return Err(os_err(format_args!("tmpfs {key}={value}")));
        }
    }
    // SAFETY: as above, with no key or value.
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, std::ptr::null::<libc::c_char>(), std::ptr::null::<libc::c_char>(), 0) } != 0 {
        return Err(os_err("creating a tmpfs"));
    }
    // SAFETY: fsmount of a created context; returns a new fd we own.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV) };
    if m < 0 {
        return Err(os_err("fsmount(tmpfs)"));
    }
    // SAFETY: just returned by fsmount.
    Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
}

/// The virtio-fs share `tag` (a microVM's volume or host path) as a detached mount, nosuid and
/// nodev, read-only on request.
pub fn virtiofs(tag: &str, read_only: bool) -> Result<OwnedFd, String> {
    let name = cstr("virtiofs")?;
    // SAFETY: fsopen with a NUL-terminated name; returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("fsopen(virtiofs) (is the virtiofs module in the initramfs?)"));
    }
    // SAFETY: just returned by fsopen.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let (k, v) = (cstr("source")?, cstr(tag)?);
    // SAFETY: fsconfig on our context with NUL-terminated strings.
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0) } != 0 {
        return Err(os_err(format_args!("virtiofs source={tag}")));
    }
    // SAFETY: as above, with no key or value.
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, std::ptr::null::<libc::c_char>(), std::ptr::null::<libc::c_char>(), 0) } != 0 {
        return Err(os_err(format_args!("mounting the virtio-fs share {tag}")));
    }
    let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    // SAFETY: fsmount of a created context; returns a new fd we own.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(os_err("fsmount(virtiofs)"));
    }
    // SAFETY: just returned by fsmount.
    Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
}

fn open_nofollow(dir: &OwnedFd, name: &CString) -> std::io::Result<OwnedFd> {
    // SAFETY: openat relative to a directory fd we own, with a NUL-terminated single component.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn file_type(fd: &OwnedFd) -> std::io::Result<libc::mode_t> {
    // SAFETY: a zeroed plain-data struct, filled by fstat on our fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// The mount point `target` (absolute inside the root) as an `O_PATH` fd, made when missing,
/// reached without following any symlink.
pub fn open_target(root: &Path, target: &str, file: bool) -> Result<OwnedFd, String> {
    let root_c = cstr(&root.to_string_lossy())?;
    // SAFETY: open of a NUL-terminated path; the root itself is ours (the overlay just mounted).
    let fd = unsafe { libc::open(root_c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(format_args!("opening the root {}", root.display())));
    }
    // SAFETY: just opened.
    let mut cur = unsafe { OwnedFd::from_raw_fd(fd) };
    let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("mount path {target:?} is not a normalised absolute path"));
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let shown = format!("/{}", parts[..=i].join("/"));
        let name = cstr(part)?;
        let next = match open_nofollow(&cur, &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: creating one entry relative to a directory fd we own; O_EXCL and
                // O_NOFOLLOW, so a racing symlink fails it rather than being followed.
                let rc = unsafe {
                    if last && file {
                        let f = libc::openat(cur.as_raw_fd(), name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o644);
                        if f >= 0 {
                            libc::close(f);
                        }
                        f.min(0)
                    } else {
                        libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755)
                    }
                };
                if rc != 0 {
                    return Err(os_err(format_args!("creating the mount point {shown}")));
                }
                open_nofollow(&cur, &name).map_err(|e| format!("opening {shown}: {e}"))?
            }
            Err(e) => return Err(format!("opening {shown}: {e}")),
        };
        let kind = file_type(&next).map_err(|e| format!("stat {shown}: {e}"))?;
        let want = if last && file { libc::S_IFREG } else { libc::S_IFDIR };
        if kind != want {
            let what = match kind {
                libc::S_IFLNK => "a symlink in the image (mount points are never followed through links)",
                libc::S_IFDIR => "a directory, but the mount is a single file",
                libc::S_IFREG => "a file, but the mount is a directory",
                _ => "neither a directory nor a regular file",
            };
            return Err(format!("mount path {target}: {shown} is {what}"));
        }
        cur = next;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_made_inside_the_root_and_symlinks_refused() {
        let root = std::env::temp_dir().join(format!("mounts-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("data")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();
        std::fs::write(root.join("etc/hosts"), "").unwrap();
        open_target(&root, "/srv/app/cache", false).unwrap();
        assert!(root.join("srv/app/cache").is_dir());
        open_target(&root, "/etc/app.conf", true).unwrap();
        assert!(root.join("etc/app.conf").is_file());
        for (target, file) in [("/data", false), ("/data/x", false), ("/etc/up/tmp", false), ("/etc/hosts", false), ("/srv", true), ("/a/../b", false)] {
            let e = open_target(&root, target, file).unwrap_err();
            assert!(e.contains("mount path") || e.contains("opening"), "{target}: {e}");
        }
        // Nothing was made outside the root through the links.
        assert!(!Path::new("/etc/x").exists() && !Path::new("/tmp/x").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
