//! The binary a namespace sandbox's init runs, out of the sandbox's reach (the class of runc's
//! CVE-2019-5736): the agent is this very binary, and a process inside that reaches it through
//! `/proc/1/exe` or a `#!/proc/self/exe` script must not be able to overwrite it for the host.
//!
//! runc re-executes from a sealed copy (a memfd, or since 1.2 a private read-only overlay).
//! A memfd copy of this 40 MB binary per sandbox would cost 40 MB of memory each, charged to
//! the sandbox's own memory limit; so, like runc's overlay, the agent executes through a
//! *detached read-only bind mount* of the binary: an `open_tree` clone that exists in no mount
//! table and that nothing can remount writable, so every path to the file through the agent's
//! exe gives EROFS. It costs one mount clone per start and no memory.

use super::idmap::{MountAttr, OPEN_TREE_CLONE};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// An fd of this process's own executable on a detached read-only mount, for `execveat`.
pub fn own_binary() -> Result<OwnedFd, String> {
    sealed(c"/proc/self/exe")
}

/// `path` (symlinks followed) on a detached read-only, nosuid, nodev mount of its own.
fn sealed(path: &std::ffi::CStr) -> Result<OwnedFd, String> {
    // SAFETY: open_tree of a path (the magic link is followed to the binary) into a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint) };
    if fd < 0 {
        return Err(format!("cloning a mount of the agent binary: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: open_tree returned a new fd we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr on the detached mount with a correctly sized mount_attr.
    let rc = unsafe {
        libc::syscall(libc::SYS_mount_setattr, tree.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH as libc::c_uint, &attr as *const MountAttr, std::mem::size_of::<MountAttr>())
    };
    if rc != 0 {
        return Err(format!("making the agent binary's mount read-only: {}", std::io::Error::last_os_error()));
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root opening the file for writing through the sealed fd is refused with EROFS even when
    /// nothing executes it (a running binary is refused with ETXTBSY anyway, which ends with
    /// the last process that runs it: the read-only mount does not).
    #[test]
    fn a_sealed_file_cannot_be_opened_for_writing_through_its_mount() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: open_tree needs root (run the tests as root: `just test`)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("binary");
        std::fs::write(&file, b"\x7fELF not really").unwrap();
        let c_path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        let fd = sealed(&c_path).unwrap();
        let through = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let err = std::fs::OpenOptions::new().write(true).open(&through).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        assert_eq!(std::fs::read(&through).unwrap(), b"\x7fELF not really", "still readable");
        assert!(std::fs::OpenOptions::new().write(true).open(&file).is_ok(), "the file itself is writable where it lives");
        // The running binary's sealed mount says read-only, nosuid, nodev.
        let own = own_binary().unwrap();
        // SAFETY: a zeroed statvfs filled by fstatvfs on our fd.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstatvfs(own.as_raw_fd(), &mut st) }, 0);
        let want = libc::ST_RDONLY | libc::ST_NOSUID | libc::ST_NODEV;
        assert_eq!(st.f_flag & want, want, "mount flags {:#x}", st.f_flag);
    }
}
