//! `orchestrator cp` and `orchestrator fs`: a running sandbox's file API from the command line.
//!
//! Copying out treats the sandbox as hostile (its agent may lie, its files are its own):
//! - entry names are single path components (no `/`, `.`, `..` or NUL), so nothing lands
//!   outside the destination;
//! - files and directories are created new (`O_EXCL`, never through an existing link), and the
//!   sandbox's symbolic links are recreated only after every file and directory is written, so
//!   no write can follow a link the copy made;
//! - setuid, setgid and sticky bits are dropped: a copy never plants a privileged program on
//!   the host.

use super::Format;
use crate::client::ShimClient;
use crate::reconcile::Orchestrator;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use guest_agent::protocol::{FileKind, FileStat};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum FsCommand {
    /// List a directory: one entry per line (kind, size, mode, name).
    Ls {
        name: String,
        path: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show a file's kind, size, mode, owner, mtime and link target.
    Stat {
        name: String,
        path: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Print a file (streamed).
    Cat { name: String, path: String },
    /// Make a directory (`-p`: and its parents).
    Mkdir {
        name: String,
        path: String,
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Remove a file, or a directory tree with `-r`.
    Rm {
        name: String,
        path: String,
        #[arg(short = 'r', long)]
        recursive: bool,
    },
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Host(PathBuf),
    Sandbox { name: String, path: String },
}

impl Location {
    /// `NAME:/path` names a sandbox's file (the path is absolute); anything else is a host path
    /// (write `./a:b` for a host file whose name has a colon).
    pub fn parse(text: &str) -> Location {
        if let Some((name, path)) = text.split_once(':') {
            if crate::spec::is_valid_name(name) && path.starts_with('/') {
                return Location::Sandbox { name: name.to_string(), path: path.to_string() };
            }
        }
        Location::Host(PathBuf::from(text))
    }
}

/// A name a sandbox gave for a directory entry, if it is one path component.
pub fn safe_component(name: &str) -> Option<&str> {
    (!name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')).then_some(name)
}

/// A name as it may reach a terminal: quoted with escapes when it holds control characters (a
/// sandbox's file name must not drive the user's terminal).
pub fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    if name.chars().any(char::is_control) {
        format!("{name:?}").into()
    } else {
        name.into()
    }
}

/// A sandbox's permission bits as a copy on the host keeps them.
pub fn host_mode(mode: u32) -> u32 {
    mode & 0o777
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn basename(path: &str) -> Result<&str> {
    path.trim_end_matches('/').rsplit('/').next().filter(|b| !b.is_empty()).ok_or_else(|| anyhow!("{path:?} names no file (copy a file or a directory, not /)"))
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

fn stat_json(path: &str, s: &FileStat) -> serde_json::Value {
    serde_json::json!({ "path": path, "kind": kind_name(s.kind), "size": s.size, "mode": format!("{:o}", s.mode & 0o7777), "uid": s.uid, "gid": s.gid, "mtime": s.mtime_secs, "target": s.symlink_target })
}

pub fn fs(orch: &Orchestrator, command: FsCommand) -> Result<i32> {
    match command {
        FsCommand::Ls { name, path, output } => {
            let mut c = super::interactive::connect(orch, &name)?;
            let mut entries = c.list_dir(&path).with_context(|| format!("{name}:{path}"))?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let mut rows = Vec::new();
            for e in &entries {
                let Some(n) = safe_component(&e.name) else { continue };
                let st = c.stat(&join(&path, n)).ok();
                rows.push((n.to_string(), e.kind, st));
            }
            let mut out = std::io::stdout().lock();
            match output {
                Format::Table => {
                    for (n, kind, st) in rows {
                        let (size, mode) = st.map(|s| (s.size.to_string(), format!("{:04o}", s.mode & 0o7777))).unwrap_or(("-".into(), "-".into()));
                        writeln!(out, "{:<8} {:>12} {:>5}  {}", kind_name(kind), size, mode, printable(&n))?;
                    }
                }
                Format::Json | Format::Yaml => {
                    let list: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|(n, kind, st)| match st {
                            Some(s) => stat_json(&join(&path, n), s),
                            None => serde_json::json!({ "path": join(&path, n), "kind": kind_name(*kind) }),
                        })
                        .collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                }
            }
            Ok(0)
        }
        FsCommand::Stat { name, path, output } => {
            let s = super::interactive::connect(orch, &name)?.stat(&path).with_context(|| format!("{name}:{path}"))?;
            match output {
                Format::Table => {
                    println!("{path}: {} {} bytes mode {:04o} owner {}:{} mtime {}", kind_name(s.kind), s.size, s.mode & 0o7777, s.uid, s.gid, s.mtime_secs);
                    if let Some(t) = &s.symlink_target {
                        println!("  -> {}", printable(t));
                    }
                }
                Format::Json | Format::Yaml => println!("{}", serde_json::to_string_pretty(&stat_json(&path, &s))?),
            }
            Ok(0)
        }
        FsCommand::Cat { name, path } => {
            let mut c = super::interactive::connect(orch, &name)?;
            let mut out = std::io::stdout().lock();
            c.read_file_to(&path, &mut out).with_context(|| format!("{name}:{path}"))?;
            out.flush()?;
            Ok(0)
        }
        FsCommand::Mkdir { name, path, parents } => {
            super::interactive::connect(orch, &name)?.mkdir(&path, parents).with_context(|| format!("{name}:{path}"))?;
            Ok(0)
        }
        FsCommand::Rm { name, path, recursive } => {
            super::interactive::connect(orch, &name)?.remove(&path, recursive).with_context(|| format!("{name}:{path}"))?;
            Ok(0)
        }
    }
}

/// `cp SRC DEST`: one side a sandbox's `NAME:/path`, the other a host path; files and
/// directory trees, modes kept (less setuid/setgid/sticky on the way out).
pub fn cp(orch: &Orchestrator, src: &str, dest: &str) -> Result<i32> {
    match (Location::parse(src), Location::parse(dest)) {
        (Location::Host(from), Location::Sandbox { name, path }) => {
            let mut c = super::interactive::connect(orch, &name)?;
            let meta = std::fs::symlink_metadata(&from).with_context(|| format!("{}", from.display()))?;
            let base = from.file_name().and_then(|b| b.to_str()).ok_or_else(|| anyhow!("{}: not a file or directory name", from.display()))?;
            // Into an existing directory: under its own name there, as cp does.
            let target = match c.stat(&path) {
                Ok(s) if s.kind == FileKind::Dir => join(&path, base),
                _ => path.clone(),
            };
            let copied = copy_in(&mut c, &from, &meta, &target).with_context(|| format!("copying {} to {name}:{target}", from.display()))?;
            eprintln!("copied {copied} to {name}:{target}");
            Ok(0)
        }
        (Location::Sandbox { name, path }, Location::Host(to)) => {
            let mut c = super::interactive::connect(orch, &name)?;
            let s = c.stat(&path).with_context(|| format!("{name}:{path}"))?;
            let target = if to.is_dir() { to.join(basename(&path)?) } else { to.clone() };
            // A file over an existing host file replaces it (a link there is replaced, never
            // followed); anything else that exists is refused below, never merged into.
            if s.kind == FileKind::File && std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file() || m.file_type().is_symlink()) {
                std::fs::remove_file(&target).with_context(|| format!("replacing {}", target.display()))?;
            }
            let mut links = Vec::new();
            let copied = copy_out(&mut c, &path, &s, &target, &mut links, 0).with_context(|| format!("copying {name}:{path} to {}", target.display()))?;
            // Last: no write of this copy can follow a link it made.
            for (link, target) in links {
                std::os::unix::fs::symlink(&target, &link).with_context(|| format!("making the link {}", link.display()))?;
            }
            eprintln!("copied {copied} to {}", target.display());
            Ok(0)
        }
        (Location::Sandbox { .. }, Location::Sandbox { .. }) => bail!("cp copies between the host and a sandbox; for two sandboxes, copy through the host"),
        (Location::Host(_), Location::Host(_)) => bail!("name a sandbox's file on one side: NAME:/path (e.g. `orchestrator cp ./app web:/srv/app`)"),
    }
}

/// What a copy moved, for the closing line.
#[derive(Default)]
struct Copied {
    files: u64,
    dirs: u64,
    links: u64,
    bytes: u64,
}

impl std::ops::AddAssign for Copied {
    fn add_assign(&mut self, o: Copied) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.links += o.links;
        self.bytes += o.bytes;
    }
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} file(s), {} director(ies), {} link(s), {}", self.files, self.dirs, self.links, crate::spec::quantity::format_bytes(self.bytes))
    }
}

fn copy_in(c: &mut ShimClient, from: &Path, meta: &std::fs::Metadata, target: &str) -> Result<Copied> {
    let mode = meta.permissions().mode() & 0o7777;
    let mut done = Copied::default();
    if meta.file_type().is_symlink() {
        eprintln!("warning: {} is a symbolic link; the file API makes no links, skipped", from.display());
    } else if meta.is_dir() {
        c.mkdir(target, true)?;
        done.dirs += 1;
        let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(n) = e.file_name().to_str().map(str::to_string) else {
                eprintln!("warning: {}: not UTF-8, skipped", e.path().display());
                continue;
            };
            done += copy_in(c, &e.path(), &std::fs::symlink_metadata(e.path())?, &join(target, &n))?;
        }
    } else if meta.is_file() {
        let mut f = std::fs::File::open(from)?;
        done.bytes += c.write_file_from(target, &mut f, Some(mode))?;
        done.files += 1;
    } else {
        eprintln!("warning: {} is not a file, directory or link, skipped", from.display());
    }
    Ok(done)
}

/// How deep a copied-out tree may go: a sandbox can nest directories without end.
const MAX_DEPTH: usize = 256;

fn copy_out(c: &mut ShimClient, path: &str, s: &FileStat, target: &Path, links: &mut Vec<(PathBuf, String)>, depth: usize) -> Result<Copied> {
    if depth > MAX_DEPTH {
        bail!("{path}: more than {MAX_DEPTH} directories deep");
    }
    let mut done = Copied::default();
    match s.kind {
        FileKind::Dir => {
            std::fs::DirBuilder::new().mode(0o700).create(target).with_context(|| format!("creating {} (cp never merges into an existing host directory: remove it, or copy to a new path)", target.display()))?;
            done.dirs += 1;
            let mut entries = c.list_dir(path)?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            for e in entries {
                let Some(n) = safe_component(&e.name) else {
                    eprintln!("warning: {path}: an entry named {:?} is not a file name, skipped", e.name);
                    continue;
                };
                let child = join(path, n);
                let st = c.stat(&child)?;
                done += copy_out(c, &child, &st, &target.join(n), links, depth + 1)?;
            }
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(host_mode(s.mode)))?;
        }
        FileKind::File => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(target)
                .with_context(|| format!("creating {}", target.display()))?;
            done.bytes += c.read_file_to(path, &mut f)?;
            f.set_permissions(std::fs::Permissions::from_mode(host_mode(s.mode)))?;
            done.files += 1;
        }
        FileKind::Symlink => {
            let t = s.symlink_target.clone().ok_or_else(|| anyhow!("{path}: a link without a target"))?;
            links.push((target.to_path_buf(), t));
            done.links += 1;
        }
        FileKind::Other => eprintln!("warning: {path} is not a file, directory or link, skipped"),
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_a_sandbox_only_with_an_absolute_path() {
        assert_eq!(Location::parse("web:/etc/motd"), Location::Sandbox { name: "web".into(), path: "/etc/motd".into() });
        assert_eq!(Location::parse("./web:/x"), Location::Host("./web:/x".into()));
        assert_eq!(Location::parse("web:relative"), Location::Host("web:relative".into()));
        assert_eq!(Location::parse("Web:/x"), Location::Host("Web:/x".into()));
        assert_eq!(Location::parse("/tmp/a"), Location::Host("/tmp/a".into()));
    }

    #[test]
    fn hostile_entry_names_and_modes_are_refused_or_tamed() {
        for bad in ["", ".", "..", "a/b", "../x", "/etc", "a\0b"] {
            assert_eq!(safe_component(bad), None, "{bad:?}");
        }
        assert_eq!(safe_component("...x"), Some("...x"));
        assert_eq!(host_mode(0o4755), 0o755);
        assert_eq!(host_mode(0o2775), 0o775);
        assert_eq!(host_mode(0o1777), 0o777);
        assert_eq!(printable("plain name"), "plain name");
        assert_eq!(printable("evil\x1b]0;pwned\x07"), "\"evil\\u{1b}]0;pwned\\u{7}\"");
    }
}
