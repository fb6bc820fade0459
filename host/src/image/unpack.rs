//! Unpacks one image layer (a tar stream) into a directory that overlayfs can use as a lower
//! layer, treating every entry as hostile.
//!
//! Invariants:
//! - Nothing is ever written outside `dest`: paths with `..` are rejected, leading `/` is
//!   stripped (as Docker does), and no existing symlink is ever followed on the way to an entry
//!   (every parent is checked with lstat). Symlinks are stored, never resolved; hard links must
//!   name a file already inside the layer.
//! - Whiteouts become overlayfs whiteouts (a 0/0 character device); opaque directories get the
//!   overlay opaque xattr (trusted.* for root mounts, user.* for user-namespaced mounts).
//! - Ownership, modes (setuid included), xattrs and hard links are kept. Device nodes are not
//!   created (an image has no business shipping them; /dev is the sandbox's own); FIFOs are.
//! - The caller unpacks into a fresh temporary directory and renames it into place only when
//!   this returns Ok, so a failure leaves nothing half-used.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} is hostile: {why}")]
    Hostile { path: String, why: String },
    #[error("layer entry {path:?}: {source}")]
    Io { path: String, source: io::Error },
    #[error("reading the layer: {0}")]
    Read(io::Error),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub skipped_devices: u64,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

fn hostile(path: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Hostile { path: path.to_string(), why: why.into() }
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io { path: path.to_string(), source }
}

/// Splits an archive path into safe components: no `..`, no empty or `.` parts, no NUL.
fn components(raw: &[u8], display: &str) -> Result<Vec<String>, UnpackError> {
    let text = std::str::from_utf8(raw).map_err(|_| hostile(display, "path is not UTF-8"))?;
    let mut out = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(hostile(display, "path contains `..`")),
            p if p.contains('\0') => return Err(hostile(display, "path contains NUL")),
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

/// Walks `parts` below `root` without following symlinks, creating missing directories.
fn safe_parent(root: &Path, parts: &[String], display: &str) -> Result<PathBuf, UnpackError> {
    let mut dir = root.to_path_buf();
    for part in parts {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(hostile(display, format!("a parent ({part}) is a symlink: writing through it could leave the layer")))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(hostile(display, format!("a parent ({part}) is not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(io_err(display))?;
            }
            Err(e) => return Err(io_err(display)(e)),
        }
    }
    Ok(dir)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: mknod with a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: lchown with a valid path; never follows a symlink.
    if unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in xattr name"))?;
    // SAFETY: lsetxattr with valid C strings and a value buffer of the given length.
    if unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks a directory opaque for overlayfs, for mounts by root and inside user namespaces.
fn set_opaque(dir: &Path) -> io::Result<()> {
    lsetxattr(dir, "trusted.overlay.opaque", b"y")?;
    let _ = lsetxattr(dir, "user.overlay.opaque", b"y");
    Ok(())
}

/// Unpacks an uncompressed tar stream into `dest` (an empty directory).
pub fn unpack(reader: impl Read, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    // Directory modes are applied last, so a read-only directory does not block its entries.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        stats.entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw_path).into_owned();
        let parts = components(&raw_path, &display)?;
        let Some((name, parents)) = parts.split_last() else {
            continue; // the layer root itself
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
        let dir = safe_parent(dest, parents, &display)?;

        if name == OPAQUE_MARKER {
            set_opaque(&dir).map_err(io_err(&display))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(hostile(&display, "malformed whiteout"));
            }
            let target = dir.join(hidden);
            remove_any(&target).map_err(io_err(&display))?;
            mknod(&target, libc::S_IFCHR, 0).map_err(io_err(&display))?;
            continue;
        }

        let target = dir.join(name);
        let existing = fs::symlink_metadata(&target).ok();
        let is_dir_entry = kind.is_dir();
        if let Some(m) = &existing {
            // A directory stays (and merges); anything else is replaced.
            if !(m.is_dir() && is_dir_entry) {
                remove_any(&target).map_err(io_err(&display))?;
            }
        }
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        match kind {
            tar::EntryType::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&target).map_err(io_err(&display))?;
                }
                lchown(&target, uid, gid).map_err(io_err(&display))?;
                dir_modes.push((target.clone(), mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err(&display))?;
                io::copy(&mut entry, &mut f).map_err(io_err(&display))?;
                drop(f);
                lchown(&target, uid, gid).map_err(io_err(&display))?;
                // After chown, which clears setuid/setgid bits.
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(io_err(&display))?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().ok_or_else(|| hostile(&display, "symlink without a target"))?;
                let link = std::ffi::OsStr::from_bytes(&link);
                symlink(link, &target).map_err(io_err(&display))?;
                lchown(&target, uid, gid).map_err(io_err(&display))?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name_bytes().ok_or_else(|| hostile(&display, "hard link without a target"))?;
                let link_parts = components(&link, &display)?;
                let Some((link_name, link_parents)) = link_parts.split_last() else {
                    return Err(hostile(&display, "hard link to the layer root"));
                };
                let source = safe_parent(dest, link_parents, &display)?.join(link_name);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Err(hostile(&display, "hard link to something that is not a regular file")),
                    Err(_) => return Err(hostile(&display, "hard link to a file not in this layer")),
                }
                fs::hard_link(&source, &target).map_err(io_err(&display))?;
            }
            tar::EntryType::Fifo => {
                mknod(&target, libc::S_IFIFO | mode, 0).map_err(io_err(&display))?;
                lchown(&target, uid, gid).map_err(io_err(&display))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                stats.skipped_devices += 1;
                continue;
            }
            // PAX/GNU metadata entries are consumed by the tar reader; anything else is ignored.
            _ => continue,
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Ok(key) = ext.key() {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        // Best effort: a filesystem without user xattrs must not fail the pull.
                        let _ = lsetxattr(&target, name, ext.value_bytes());
                    }
                }
            }
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(|e| UnpackError::Io { path: dir.display().to_string(), source: e })?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Builds a tar from raw entries; paths are written byte for byte (tar::Builder would
    /// refuse the hostile ones).
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }
        fn entry(mut self, path: &str, kind: tar::EntryType, link: &str, data: &[u8], mode: u32, uid: u64) -> Tar {
            let mut h = tar::Header::new_old();
            {
                let old = h.as_old_mut();
                old.name[..path.len()].copy_from_slice(path.as_bytes());
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        fn file(self, path: &str, data: &str) -> Tar {
            self.entry(path, tar::EntryType::Regular, "", data.as_bytes(), 0o644, 0)
        }
        fn dir(self, path: &str) -> Tar {
            self.entry(path, tar::EntryType::Directory, "", b"", 0o755, 0)
        }
        fn symlink(self, path: &str, target: &str) -> Tar {
            self.entry(path, tar::EntryType::Symlink, target, b"", 0o777, 0)
        }
        fn hardlink(self, path: &str, target: &str) -> Tar {
            self.entry(path, tar::EntryType::Link, target, b"", 0o644, 0)
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    /// Unpacks into `root/layer`; `root/outside` is the canary nothing may touch.
    fn run(tar: Tar) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("layer")).unwrap();
        fs::create_dir(root.path().join("outside")).unwrap();
        let r = unpack(&tar.bytes()[..], &root.path().join("layer"));
        (root, r)
    }

    fn assert_hostile(tar: Tar, why: &str) {
        let (root, r) = run(tar);
        match r {
            Err(UnpackError::Hostile { why: w, .. }) => assert!(w.contains(why), "{w}"),
            other => panic!("expected a hostile-entry error ({why}), got {other:?}"),
        }
        assert_eq!(fs::read_dir(root.path().join("outside")).unwrap().count(), 0, "nothing written outside");
    }

    #[test]
    fn dot_dot_is_rejected() {
        assert_hostile(Tar::new().file("../outside/evil", "x"), "`..`");
        assert_hostile(Tar::new().file("a/../../outside/evil", "x"), "`..`");
    }

    #[test]
    fn writes_through_symlinks_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        assert_hostile(Tar::new().symlink("link", outside.to_str().unwrap()).file("link/evil", "x"), "symlink");
        assert_hostile(Tar::new().symlink("up", "../outside").file("up/evil", "x"), "symlink");
        assert_hostile(Tar::new().symlink("d", "/").dir("d/etc").file("d/etc/evil", "x"), "symlink");
    }

    #[test]
    fn hard_links_must_stay_inside() {
        assert_hostile(Tar::new().hardlink("h", "../outside/x"), "`..`");
        assert_hostile(Tar::new().hardlink("h", "/etc/passwd"), "not in this layer");
        assert_hostile(Tar::new().symlink("s", "/etc").hardlink("h", "s/passwd"), "symlink");
    }

    #[test]
    fn absolute_paths_land_inside_the_layer() {
        let (root, r) = run(Tar::new().file("/etc/motd", "hi"));
        r.unwrap();
        assert_eq!(fs::read_to_string(root.path().join("layer/etc/motd")).unwrap(), "hi");
    }

    #[test]
    fn whiteouts_opaque_dirs_links_modes_and_devices() {
        let tar = Tar::new()
            .dir("d")
            .file(".wh.gone", "")
            .file("d/.wh..wh..opq", "")
            .file("d/kept", "k")
            .entry("bin/su", tar::EntryType::Regular, "", b"#!", 0o4755, 0)
            .entry("home/app/f", tar::EntryType::Regular, "", b"mine", 0o600, 1234)
            .hardlink("home/app/g", "home/app/f")
            .symlink("etc/alt", "/usr/bin/python3")
            .entry("dev/sda", tar::EntryType::Block, "", b"", 0o600, 0)
            .entry("run/fifo", tar::EntryType::Fifo, "", b"", 0o600, 0);
        let (root, r) = run(tar);
        let stats = r.unwrap();
        let l = root.path().join("layer");
        assert!(fs::symlink_metadata(l.join("gone")).unwrap().file_type().is_char_device());
        assert_eq!(fs::symlink_metadata(l.join("gone")).unwrap().rdev(), 0);
        let c = cpath(&l.join("d")).unwrap();
        let mut buf = [0u8; 4];
        // SAFETY: reading an xattr into a local buffer.
        let n = unsafe { libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..n.max(0) as usize], b"y");
        assert_eq!(fs::metadata(l.join("bin/su")).unwrap().mode() & 0o7777, 0o4755, "setuid kept");
        let f = fs::metadata(l.join("home/app/f")).unwrap();
        assert_eq!((f.uid(), f.gid(), f.mode() & 0o777), (1234, 1234, 0o600));
        assert_eq!(f.ino(), fs::metadata(l.join("home/app/g")).unwrap().ino(), "hard link kept");
        assert_eq!(fs::read_link(l.join("etc/alt")).unwrap(), Path::new("/usr/bin/python3"));
        assert!(!l.join("dev/sda").exists(), "device nodes are not created");
        assert_eq!(stats.skipped_devices, 1);
        assert!(fs::symlink_metadata(l.join("run/fifo")).unwrap().file_type().is_fifo());
    }

    #[test]
    fn a_later_entry_replaces_an_earlier_one() {
        let (root, r) = run(Tar::new().symlink("x", "/tmp").dir("x").file("x/f", "safe").file("y", "1").file("y", "2"));
        r.unwrap();
        let l = root.path().join("layer");
        assert!(fs::symlink_metadata(l.join("x")).unwrap().is_dir());
        assert_eq!(fs::read_to_string(l.join("x/f")).unwrap(), "safe");
        assert_eq!(fs::read_to_string(l.join("y")).unwrap(), "2");
    }
}
