//! Copying files and directory trees between the host and a sandbox (`cp`, and the library's
//! `fs().copy_in` / `copy_out`), modes kept.
//!
//! Everything the sandbox says is hostile: a name is used only when it is one path component,
//! host files are created with O_EXCL and O_NOFOLLOW, an existing host directory is never
//! merged into, setuid/setgid/sticky bits never reach the host, links are made last (so no
//! write of the copy follows one it made), and a tree deeper than [`MAX_DEPTH`] is refused.

use crate::client::ShimClient;
use crate::error::{Error, Result};
use guest_agent::protocol::{FileKind, FileStat};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How deep a copied-out tree may go: a sandbox can nest directories without end.
pub const MAX_DEPTH: usize = 256;

/// What a copy moved, and what it skipped (with why).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    pub skipped: Vec<String>,
}

impl std::ops::AddAssign for Copied {
    fn add_assign(&mut self, mut o: Copied) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.links += o.links;
        self.bytes += o.bytes;
        self.skipped.append(&mut o.skipped);
    }
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} file(s), {} director(ies), {} link(s), {}", self.files, self.dirs, self.links, crate::spec::quantity::format_bytes(self.bytes))
    }
}

/// A name a sandbox gave for a directory entry, if it is one path component.
pub fn safe_component(name: &str) -> Option<&str> {
    (!name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')).then_some(name)
}

/// A sandbox's permission bits as a copy on the host keeps them.
pub fn host_mode(mode: u32) -> u32 {
    mode & 0o777
}

/// `dir/name` inside the sandbox.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of a sandbox path.
pub fn basename(path: &str) -> Result<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Error::Conflict(format!("{path:?} names no file (copy a file or a directory, not /)")))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::io(context, e)
}

/// Copies the host file or tree `from` to `target` in the sandbox; into `target` under its own
/// name when `target` is an existing directory there (as cp does). Returns the path written.
pub fn copy_to_sandbox(c: &mut ShimClient, from: &Path, target: &str) -> Result<(String, Copied)> {
    let meta = std::fs::symlink_metadata(from).map_err(io(from.display().to_string()))?;
    let base = from.file_name().and_then(|b| b.to_str()).ok_or_else(|| Error::Conflict(format!("{}: not a file or directory name", from.display())))?;
    let target = match c.stat(target) {
        Ok(s) if s.kind == FileKind::Dir => join(target, base),
        _ => target.to_string(),
    };
    let copied = copy_in(c, from, &meta, &target)?;
    Ok((target, copied))
}

fn copy_in(c: &mut ShimClient, from: &Path, meta: &std::fs::Metadata, target: &str) -> Result<Copied> {
    let mode = meta.permissions().mode() & 0o7777;
    let mut done = Copied::default();
    if meta.file_type().is_symlink() {
        done.skipped.push(format!("{} is a symbolic link; the file API makes no links", from.display()));
    } else if meta.is_dir() {
        c.mkdir(target, true)?;
        done.dirs += 1;
        let read = std::fs::read_dir(from).map_err(io(from.display().to_string()))?;
        let mut entries: Vec<_> = read.collect::<std::io::Result<_>>().map_err(io(from.display().to_string()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(n) = e.file_name().to_str().map(str::to_string) else {
                done.skipped.push(format!("{}: not UTF-8", e.path().display()));
                continue;
            };
            let meta = std::fs::symlink_metadata(e.path()).map_err(io(e.path().display().to_string()))?;
            done += copy_in(c, &e.path(), &meta, &join(target, &n))?;
        }
    } else if meta.is_file() {
        let mut f = std::fs::File::open(from).map_err(io(from.display().to_string()))?;
        done.bytes += c.write_file_from(target, &mut f, Some(mode))?;
        done.files += 1;
    } else {
        done.skipped.push(format!("{} is not a file, directory or link", from.display()));
    }
    Ok(done)
}

/// The entries of the sandbox directory `path` a copy may take, by name, each with its sandbox
/// path and stat. An entry whose name is not one path component is left out and reported in
/// `done.skipped`.
pub fn children(c: &mut ShimClient, path: &str, done: &mut Copied) -> Result<Vec<(String, String, FileStat)>> {
    let mut entries = c.list_dir(path)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Some(n) = safe_component(&e.name) else {
            done.skipped.push(format!("{path}: an entry named {:?} is not a file name", e.name));
            continue;
        };
        let child = join(path, n);
        let st = c.stat(&child)?;
        out.push((n.to_string(), child, st));
    }
    Ok(out)
}

/// Copies the sandbox's file or tree `path` to the host path `to` (into it under its own name
/// when `to` is a directory). A file over an existing host file replaces it (a link there is
/// replaced, never followed); any other existing target is refused. Returns the path written.
pub fn copy_from_sandbox(c: &mut ShimClient, path: &str, to: &Path) -> Result<(PathBuf, Copied)> {
    let s = c.stat(path)?;
    let target = if to.is_dir() { to.join(basename(path)?) } else { to.to_path_buf() };
    if s.kind == FileKind::File && std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file() || m.file_type().is_symlink()) {
        std::fs::remove_file(&target).map_err(io(format!("replacing {}", target.display())))?;
    }
    let mut links = Vec::new();
    let copied = copy_out(c, path, &s, &target, &mut links, 0)?;
    for (link, dest) in links {
        std::os::unix::fs::symlink(&dest, &link).map_err(io(format!("making the link {}", link.display())))?;
    }
    Ok((target, copied))
}

fn copy_out(c: &mut ShimClient, path: &str, s: &FileStat, target: &Path, links: &mut Vec<(PathBuf, String)>, depth: usize) -> Result<Copied> {
    if depth > MAX_DEPTH {
        return Err(Error::Conflict(format!("{path}: more than {MAX_DEPTH} directories deep")));
    }
    let mut done = Copied::default();
    match s.kind {
        FileKind::Dir => {
            std::fs::DirBuilder::new().mode(0o700).create(target).map_err(io(format!(
                "creating {} (a copy never merges into an existing host directory: remove it, or copy to a new path)",
                target.display()
            )))?;
            done.dirs += 1;
            for (n, child, st) in children(c, path, &mut done)? {
                done += copy_out(c, &child, &st, &target.join(n), links, depth + 1)?;
            }
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(host_mode(s.mode))).map_err(io(target.display().to_string()))?;
        }
        FileKind::File => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(target)
                .map_err(io(format!("creating {}", target.display())))?;
            done.bytes += c.read_file_to(path, &mut f)?;
            f.set_permissions(std::fs::Permissions::from_mode(host_mode(s.mode))).map_err(io(target.display().to_string()))?;
            done.files += 1;
        }
        FileKind::Symlink => {
            let t = s.symlink_target.clone().ok_or_else(|| Error::Protocol(format!("{path}: a link without a target")))?;
            links.push((target.to_path_buf(), t));
            done.links += 1;
        }
        FileKind::Other => done.skipped.push(format!("{path} is not a file, directory or link")),
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_entry_names_and_modes_are_refused_or_tamed() {
        for bad in ["", ".", "..", "a/b", "../x", "/etc", "a\0b"] {
            assert_eq!(safe_component(bad), None, "{bad:?}");
        }
        assert_eq!(safe_component("...x"), Some("...x"));
        assert_eq!(host_mode(0o4755), 0o755);
        assert_eq!(host_mode(0o2775), 0o775);
        assert_eq!(host_mode(0o1777), 0o777);
        assert_eq!(basename("/a/b/").unwrap(), "b");
        assert!(basename("/").is_err());
    }
}
