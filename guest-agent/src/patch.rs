//! Applies root filesystem patches to a freshly mounted sandbox root, before anything runs in
//! it. Every path is resolved with `openat2(RESOLVE_IN_ROOT)` relative to the root, so a
//! symbolic link in the image (`/etc/motd -> /../../host/file`) resolves inside the sandbox and
//! never outside it; the final component of remove, symlink and mkdir is never followed.
//! Writes go through the overlay mount, so they land in the writable layer (with whiteouts for
//! removed image files) and the image stays untouched.

use crate::protocol::{check_patch_path, PatchOp};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("patch {index} ({op} {path}): {message}")]
pub struct PatchError {
    pub index: usize,
    pub op: &'static str,
    pub path: String,
    pub message: String,
}

/// Applies `ops` in order to the root mounted at `root`; stops at the first failure.
pub fn apply(root: &Path, ops: &[PatchOp]) -> Result<(), PatchError> {
    if ops.is_empty() {
        return Ok(());
    }
    let root_fd = open_root(root).map_err(|e| PatchError { index: 0, op: "open", path: root.display().to_string(), message: e.to_string() })?;
    for (i, op) in ops.iter().enumerate() {
        apply_one(&root_fd, op).map_err(|message| PatchError { index: i + 1, op: op.name(), path: op.path().to_string(), message })?;
    }
    Ok(())
}

pub(crate) fn open_root(root: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
}

fn apply_one(root: &OwnedFd, op: &PatchOp) -> Result<(), String> {
    check_patch_path(op.path())?;
    let (parent, name) = split(op.path())?;
    match op {
        PatchOp::Write { contents, mode, .. } => {
            let dir = mkdir_all(root, &parent)?;
            let fd = openat(&dir, name.as_str(), OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, mode_of(*mode))
                .map_err(|e| describe(e, "creating the file"))?;
            // An existing file keeps its old mode through O_CREAT: set the one asked for.
            fchmod(&fd, mode_of(*mode)).map_err(|e| describe(e, "setting the mode"))?;
            File::from(fd).write_all(contents).map_err(|e| format!("writing: {e}"))
        }
        PatchOp::Append { contents, .. } => {
            let dir = mkdir_all(root, &parent)?;
            let fd = openat(&dir, name.as_str(), OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::from_bits_truncate(0o644))
                .map_err(|e| describe(e, "opening the file"))?;
            File::from(fd).write_all(contents).map_err(|e| format!("appending: {e}"))
        }
        PatchOp::Mkdir { mode, .. } => {
            let dir = mkdir_all(root, &parent)?;
            match mkdirat(&dir, name.as_str(), mode_of(*mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(describe(e, "creating the directory")),
            }
            let fd = openat(&dir, name.as_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| describe(e, "opening the directory (is something else at that path?)"))?;
            fchmod(&fd, mode_of(*mode)).map_err(|e| describe(e, "setting the mode"))
        }
        PatchOp::Symlink { target, .. } => {
            let dir = mkdir_all(root, &parent)?;
            remove_at(&dir, &name)?;
            symlinkat(target.as_str(), &dir, name.as_str()).map_err(|e| describe(e, "creating the link"))
        }
        PatchOp::Chmod { mode, .. } => {
            let fd = resolve(root, op.path(), OFlag::O_RDONLY).map_err(|e| describe(e, "opening"))?;
            fchmod(&fd, mode_of(*mode)).map_err(|e| describe(e, "changing the mode"))
        }
        PatchOp::Remove { .. } => match resolve(root, &parent, OFlag::O_DIRECTORY) {
            Ok(dir) => remove_at(&dir, &name),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(describe(e, "opening the parent directory")),
        },
    }
}

fn mode_of(mode: u32) -> Mode {
    // Permission bits and sticky/setgid only: a patch cannot create setuid files.
    Mode::from_bits_truncate(mode & 0o3777)
}

fn describe(e: Errno, what: &str) -> String {
    format!("{what}: {}", e.desc())
}

/// `/a/b/c` -> (`/a/b`, `c`), after dropping empty and `.` components.
fn split(path: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let (name, parents) = parts.split_last().ok_or("the root itself cannot be patched")?;
    Ok((format!("/{}", parents.join("/")), (*name).to_string()))
}

pub(crate) fn resolve(root: &OwnedFd, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let relative = path.trim_start_matches('/');
    openat2(root, if relative.is_empty() { "." } else { relative }, how)
}

/// Creates `dir` and its parents (0755) inside the root, each step resolved in the root.
pub(crate) fn mkdir_all(root: &OwnedFd, dir: &str) -> Result<OwnedFd, String> {
    let mut current = resolve(root, "/", OFlag::O_DIRECTORY).map_err(|e| describe(e, "opening the root"))?;
    let mut walked = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        walked.push('/');
        walked.push_str(part);
        match mkdirat(&current, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(describe(e, &format!("creating {walked}"))),
        }
        // Resolving the whole prefix again from the root keeps a symlinked parent inside it.
        current = resolve(root, &walked, OFlag::O_DIRECTORY).map_err(|e| describe(e, &format!("opening {walked}")))?;
    }
    Ok(current)
}

/// Removes `name` in `dir` (file, link or a whole tree); a missing entry is fine.
fn remove_at(dir: &impl AsFd, name: &str) -> Result<(), String> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {
            let sub = openat(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| describe(e, &format!("opening {name}")))?;
            let entries = nix::dir::Dir::from_fd(sub.try_clone().map_err(|e| format!("dup: {e}"))?)
                .map_err(|e| describe(e, &format!("listing {name}")))?
                .into_iter()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "." && n != "..")
                .collect::<Vec<_>>();
            for entry in entries {
                remove_at(&sub, &entry)?;
            }
            match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(describe(e, &format!("removing {name}"))),
            }
        }
        Err(e) => Err(describe(e, &format!("removing {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &str, contents: &str, mode: u32) -> PatchOp {
        PatchOp::Write { path: path.into(), contents: contents.as_bytes().to_vec(), mode }
    }

    #[test]
    fn operations_apply_in_order() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        fs::write(root.path().join("etc/motd"), "old").unwrap();
        fs::create_dir_all(root.path().join("var/tree/a")).unwrap();
        fs::write(root.path().join("var/tree/a/f"), "x").unwrap();
        let ops = vec![
            PatchOp::Mkdir { path: "/opt/app/conf".into(), mode: 0o750 },
            write("/opt/app/conf/app.ini", "k=v\n", 0o640),
            PatchOp::Append { path: "/etc/hosts".into(), contents: b"10.0.0.1 db\n".to_vec() },
            PatchOp::Symlink { path: "/opt/app/current".into(), target: "conf".into() },
            PatchOp::Chmod { path: "/opt/app/conf/app.ini".into(), mode: 0o600 },
            PatchOp::Remove { path: "/etc/motd".into() },
            PatchOp::Remove { path: "/var/tree".into() },
            PatchOp::Remove { path: "/does/not/exist".into() },
        ];
        apply(root.path(), &ops).unwrap();
        let p = root.path();
        assert_eq!(fs::read_to_string(p.join("opt/app/conf/app.ini")).unwrap(), "k=v\n");
        assert_eq!(fs::metadata(p.join("opt/app/conf/app.ini")).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(fs::metadata(p.join("opt/app/conf")).unwrap().permissions().mode() & 0o7777, 0o750);
        assert_eq!(fs::read_to_string(p.join("etc/hosts")).unwrap(), "127.0.0.1 localhost\n10.0.0.1 db\n");
        assert_eq!(fs::read_link(p.join("opt/app/current")).unwrap().to_str(), Some("conf"));
        assert!(!p.join("etc/motd").exists());
        assert!(!p.join("var/tree").exists());
    }

    #[test]
    fn symlinks_in_the_image_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        // An image whose /etc is a link to an absolute host path, and a file linking out.
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), root.path().join("motd")).unwrap();
        fs::write(outside.path().join("victim"), "untouched").unwrap();
        // The link's target does not exist inside the root: refused, nothing written outside.
        assert!(apply(root.path(), &[write("/etc/passwd", "x", 0o644)]).is_err());
        assert!(!outside.path().join("passwd").exists());
        // Once it exists inside the root, the write lands there, not at the host path.
        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        apply(root.path(), &[write("/etc/passwd", "x", 0o644)]).unwrap();
        assert!(!outside.path().join("passwd").exists());
        assert_eq!(fs::read_to_string(inside.join("passwd")).unwrap(), "x");
        // A final component that is a symlink is not followed by write.
        let err = apply(root.path(), &[write("/motd", "x", 0o644)]).unwrap_err();
        assert!(err.to_string().contains("motd"), "{err}");
        assert_eq!(fs::read_to_string(outside.path().join("victim")).unwrap(), "untouched");
        // Removing the link removes the link, not its target.
        apply(root.path(), &[PatchOp::Remove { path: "/motd".into() }]).unwrap();
        assert!(outside.path().join("victim").exists());
    }

    #[test]
    fn escaping_and_kernel_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["/../x", "/etc/../../x", "relative", "/proc/sys/kernel/core_pattern", "/sys", "/dev/./sda", "/", "/a\0b"] {
            let err = apply(root.path(), &[write(bad, "x", 0o644)]).unwrap_err();
            assert_eq!(err.index, 1, "{bad}: {err}");
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn setuid_bits_are_dropped() {
        let root = tempfile::tempdir().unwrap();
        apply(root.path(), &[write("/bin/x", "#!/bin/sh\n", 0o4755)]).unwrap();
        assert_eq!(fs::metadata(root.path().join("bin/x")).unwrap().permissions().mode() & 0o7777, 0o755);
    }
}
