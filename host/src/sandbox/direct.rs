//! The file API's short path for namespace sandboxes: a regular file read or written by the
//! host itself through the sandbox's root (`/proc/PID/root` of its init), instead of a request
//! through the shim to the agent and back. It takes two thread hops and two socket round
//! trips off a small read or write; anything unusual goes the long way, so the agent stays the
//! one place that defines what the file API does and how it fails.
//!
//! The host process is root on the host, so everything here is written against a root inside
//! the sandbox that prepares the tree to trick it:
//! - Paths resolve with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from the sandbox's
//!   root: `..`, absolute links and `/proc/*/root`-style links stay inside it.
//! - The last component is opened `O_PATH | O_NOFOLLOW` (no open of a device or FIFO happens)
//!   and must be a regular file on a filesystem that holds plain data (overlay, ext4, tmpfs,
//!   xfs, btrfs); only then is it reopened through `/proc/self/fd` for reading or writing. A
//!   procfs or sysfs file (which the sandbox's root may not write but the host's may), a
//!   device node, a FIFO, a link as the last component: the long way.
//! - A new file is created `O_EXCL` in a parent resolved as above and given to the sandbox's
//!   root, as the agent would have made it.
//! - Where the sandbox's root is a mount that refuses device nodes (`nodev`, which a sandbox
//!   without `CAP_SYS_ADMIN` cannot remount) and holds plain data, a path that stays on that
//!   mount (`RESOLVE_NO_XDEV`) skips the parent and the `/proc/self/fd` reopen: it is checked
//!   through an `O_PATH` handle, then walked again and opened `O_NOFOLLOW | O_NONBLOCK`, and
//!   kept only when it is the inode checked. No device can open on that mount; a FIFO or
//!   socket the sandbox swaps in between the two walks opens without waiting (or not at all)
//!   and is closed unused. A path that crosses a mount (a volume, `/dev`, `/proc`) takes the
//!   way above; a new file is still created `O_EXCL`, in the same single walk.
//! - Only for sandboxes without a user namespace, whose root keeps `CAP_DAC_OVERRIDE` over
//!   every file: the host's root then may do nothing in the tree that the sandbox's root may
//!   not. A user-namespaced sandbox's root has no power over ids its namespace does not map
//!   (a directory or file of a host path it may not enter), and a host process would have to
//!   check every step of a path the way the kernel checks it for the sandbox; its files always
//!   go through its agent.
//! - The root is found once per handle: the shim names its init's pid while that process is
//!   not yet reaped (so the pid is no one else's), the host opens a pidfd and the root, and
//!   asks again; every use checks the pidfd first, so a sandbox that ended or restarted is
//!   never written through a stale root.

use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, Mode, SFlag};
use nix::sys::statvfs::{fstatvfs, FsFlags};
use nix::sys::statfs::{fstatfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The most a read reserves ahead from a file's length (a larger file's buffer grows as it is
/// read, as it would without the hint).
const MAX_PRESIZE: u64 = 16 << 20;

/// A namespace sandbox's root as the host reaches it.
pub struct DirectRoot {
    /// The sandbox's init: readable once it has exited.
    pidfd: OwnedFd,
    root: OwnedFd,
    /// The host uid and gid of the sandbox's root user.
    owner: (u32, u32),
    /// `owner` is this process's own ids: what it creates needs no `fchown`.
    owner_is_ours: bool,
    /// `root`'s mount is `nodev` and plain data: paths that stay on it are opened from the root, walk by walk.
    root_mount_sealed: bool,
}

/// How an open from the root (on its own mount) went.
enum OnRoot<T> {
    Done(Direct<T>),
    /// The path crosses a mount (or the root's mount is not sealed): the parent's way decides.
    LeftRoot,
}

/// What the short path did: done, or the request should go the long way (through the agent).
pub type Direct<T> = Option<T>;

impl DirectRoot {
    /// Opens the root of the sandbox whose init is `pid`; `confirm` asks the shim again and
    /// must name the same pid (it answers only while that init is not reaped). None when this
    /// process cannot (not root, an old kernel) or the sandbox changed meanwhile.
    pub fn open(pid: u32, confirm: impl FnOnce() -> Option<u32>) -> Option<DirectRoot> {
        let (uid, userns) = root_id(&std::fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?)?;
        let (gid, _) = root_id(&std::fs::read_to_string(format!("/proc/{pid}/gid_map")).ok()?)?;
        if userns {
            return None;
        }
        // SAFETY: pidfd_open with a pid and no flags returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return None;
        }
        // SAFETY: a new fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let root = nix::fcntl::open(format!("/proc/{pid}/root").as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
        // Asked again after the maps were read too: they were the sandbox init's.
        if confirm() != Some(pid) {
            return None;
        }
        let owner_is_ours = (uid, gid) == (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let root_mount_sealed = fstatvfs(&root).is_ok_and(|s| s.flags().contains(FsFlags::ST_NODEV)) && plain_data(&root);
        Some(DirectRoot { pidfd, root, owner: (uid, gid), owner_is_ours, root_mount_sealed })
    }

    /// The sandbox's init still runs (so `root` is still its root).
    pub fn alive(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polling one fd of ours without waiting.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n == 0
    }

    /// At most `len` bytes of the regular file `path` from `offset`.
    pub fn read_range(&self, path: &str, offset: u64, len: u64) -> Direct<Vec<u8>> {
        let (mut file, size) = match self.open_on_root(path, OFlag::O_RDONLY) {
            OnRoot::Done(opened) => opened?,
            OnRoot::LeftRoot => {
                let (dir, name) = self.parent(path)?;
                self.reopen_regular(&dir, &name, OFlag::O_RDONLY)?
            }
        };
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).ok()?;
        }
        // Sized from the file's length (a file that grows meanwhile still reads to `len`): one
        // read for its bytes and one that finds the end.
        let mut out = Vec::with_capacity(len.min(size.saturating_sub(offset)).min(MAX_PRESIZE) as usize);
        file.take(len).read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// Creates or replaces the regular file `path` with `data` (`mode`, or 0644 for a new one).
    pub fn write(&self, path: &str, data: &[u8], mode: Option<u32>) -> Direct<()> {
        let new_mode = Mode::from_bits_truncate(mode.unwrap_or(0o644) & 0o7777);
        if let OnRoot::Done(written) = self.write_on_root(path, data, mode, new_mode) {
            return written;
        }
        let (dir, name) = self.parent(path)?;
        let mut file = match openat(&dir, name.as_str(), OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, new_mode) {
            Ok(fd) => {
                let file = std::fs::File::from(fd);
                // The sandbox's root owns what it creates; a file the host cannot hand over
                // goes again, the long way. Each call is skipped when the create already gave
                // the file that owner and mode (the usual case: root's, 0644 under umask 022).
                let chowned = if self.owner_is_ours { Ok(()) } else { nix::unistd::fchown(&file, Some(self.owner.0.into()), Some(self.owner.1.into())) };
                let given = chowned.and_then(|_| if new_mode.bits() & process_umask() == 0 { Ok(()) } else { fchmod(&file, new_mode) });
                if given.is_err() {
                    let _ = nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                    return None;
                }
                file
            }
            Err(nix::errno::Errno::EEXIST) => {
                let (file, _) = self.reopen_regular(&dir, &name, OFlag::O_WRONLY | OFlag::O_TRUNC)?;
                if let Some(m) = mode {
                    fchmod(&file, Mode::from_bits_truncate(m & 0o7777)).ok()?;
                }
                file
            }
            Err(_) => return None,
        };
        file.write_all(data).ok()
    }

    /// [`write`](Self::write) from the root, on its own mount: a new file when its create needs no
    /// fix-up of owner or mode (else the parent's way, which can remove what it could not hand
    /// over), an existing regular file truncated and rewritten.
    fn write_on_root(&self, path: &str, data: &[u8], mode: Option<u32>, new_mode: Mode) -> OnRoot<()> {
        let Some(relative) = self.on_root(path) else { return OnRoot::LeftRoot };
        if !self.owner_is_ours || new_mode.bits() & process_umask() != 0 {
            return OnRoot::LeftRoot;
        }
        let create = OpenHow::new().flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).mode(new_mode).resolve(on_root_resolve());
        let mut file = match openat2(&self.root, relative, create) {
            Ok(fd) => std::fs::File::from(fd),
            Err(nix::errno::Errno::EEXIST) => match self.open_on_root(path, OFlag::O_WRONLY) {
                OnRoot::Done(Some((file, _))) => {
                    let fixed = file.set_len(0).is_ok() && mode.is_none_or(|m| fchmod(&file, Mode::from_bits_truncate(m & 0o7777)).is_ok());
                    if !fixed {
                        return OnRoot::Done(None);
                    }
                    file
                }
                other => return other.map(|_| ()),
            },
            Err(nix::errno::Errno::EXDEV) => return OnRoot::LeftRoot,
            Err(_) => return OnRoot::Done(None),
        };
        OnRoot::Done(file.write_all(data).ok())
    }

    /// `path` opened with `flags` when it stays on the root's sealed mount and is a regular
    /// file, with its size. Checked first through an `O_PATH` handle (no open of anything
    /// else happens), then walked again to open it: a file swapped in between is opened
    /// without waiting, told apart by its inode (the handle keeps the checked one from being
    /// reused) and closed unused.
    fn open_on_root(&self, path: &str, flags: OFlag) -> OnRoot<(std::fs::File, u64)> {
        let Some(relative) = self.on_root(path) else { return OnRoot::LeftRoot };
        let walk = |flags: OFlag| openat2(&self.root, relative, OpenHow::new().flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).resolve(on_root_resolve()));
        let handle = match walk(OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EXDEV) => return OnRoot::LeftRoot,
            Err(_) => return OnRoot::Done(None),
        };
        let regular = |fd: &OwnedFd| fstat(fd).ok().filter(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG);
        let Some(checked) = regular(&handle) else { return OnRoot::Done(None) };
        let Ok(fd) = walk(flags | OFlag::O_NONBLOCK | OFlag::O_NOCTTY) else { return OnRoot::Done(None) };
        // An inode that copy-up moved (a first write to an image file) differs too: the long way.
        let same = regular(&fd).is_some_and(|st| (st.st_dev, st.st_ino) == (checked.st_dev, checked.st_ino));
        OnRoot::Done(same.then(|| (std::fs::File::from(fd), u64::try_from(checked.st_size).unwrap_or(0))))
    }

    /// `path` relative to the root when opens from the root may take it: the root's mount is
    /// sealed and the path names a file below the root (not the root, `.` or `..`).
    fn on_root<'p>(&self, path: &'p str) -> Option<&'p str> {
        if !self.root_mount_sealed || !path.starts_with('/') || path.contains('\0') || path.ends_with('/') {
            return None;
        }
        let name = path.rsplit('/').next()?;
        let relative = path.trim_start_matches('/');
        (!relative.is_empty() && name != "." && name != "..").then_some(relative)
    }

    /// The directory holding `path`'s last component, resolved inside the root, and that
    /// component. None for the root itself, `.` or `..` as the last component, or a directory
    /// on a filesystem this path does not handle.
    fn parent(&self, path: &str) -> Option<(OwnedFd, String)> {
        // Whether the init still runs was checked by whoever handed out this root.
        if !path.starts_with('/') || path.contains('\0') {
            return None;
        }
        let (parent, name) = path.trim_end_matches('/').rsplit_once('/')?;
        if name.is_empty() || name == "." || name == ".." {
            return None;
        }
        let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let relative = parent.trim_start_matches('/');
        let dir = openat2(&self.root, if relative.is_empty() { "." } else { relative }, how).ok()?;
        plain_data(&dir).then_some((dir, name.to_string()))
    }

    /// `name` in `dir` opened with `flags` when it is a regular file on a plain-data filesystem;
    /// never opens anything else. With its size when checked.
    fn reopen_regular(&self, dir: &OwnedFd, name: &str, flags: OFlag) -> Option<(std::fs::File, u64)> {
        let handle = openat(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
        let st = fstat(&handle).ok()?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG || !plain_data(&handle) {
            return None;
        }
        // The same inode, now open for I/O: nothing can swap it between the check and here.
        let fd = nix::fcntl::open(format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(), flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY, Mode::empty()).ok()?;
        Some((std::fs::File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
    }
}

/// How opens from the root resolve: inside the root, no `/proc` magic links, never off its mount.
fn on_root_resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

impl<T> OnRoot<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> OnRoot<U> {
        match self {
            OnRoot::Done(done) => OnRoot::Done(done.map(f)),
            OnRoot::LeftRoot => OnRoot::LeftRoot,
        }
    }
}

/// This process's umask (read once: it never changes while the server runs); all bits set when
/// it cannot be read, so that every new file's mode is set explicitly.
fn process_umask() -> libc::mode_t {
    static UMASK: std::sync::OnceLock<libc::mode_t> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("Umask:")).and_then(|m| libc::mode_t::from_str_radix(m.trim(), 8).ok()).unwrap_or(0o7777)
    })
}

/// Filesystems whose regular files are plain data (no kernel interface behind a write).
fn plain_data(fd: &impl AsFd) -> bool {
    fstatfs(fd).is_ok_and(|s| [OVERLAYFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC, BTRFS_SUPER_MAGIC].contains(&s.filesystem_type()))
}

/// The host id that id 0 maps to in a `uid_map`/`gid_map`, and whether the map is a user
/// namespace's (not the whole range of the initial one).
fn root_id(map: &str) -> Option<(u32, bool)> {
    map.lines().find_map(|line| {
        let mut f = line.split_whitespace().map(|n| n.parse::<u64>().ok());
        let (inside, outside, count) = (f.next()??, f.next()??, f.next()??);
        (inside == 0).then(|| (outside as u32, count != u64::from(u32::MAX)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_id_comes_from_the_map_line_of_id_0() {
        assert_eq!(root_id("         0          0 4294967295\n"), Some((0, false)));
        assert_eq!(root_id("         0     100000      65536\n"), Some((100_000, true)));
        assert_eq!(root_id("      1000     100000          1\n"), None, "no id 0 inside");
        assert_eq!(root_id("garbage"), None);
    }
}
