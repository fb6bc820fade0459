//! `orchestrator cp` and `orchestrator fs`: a running sandbox's file API from the command line.
//! The copying itself, and how it treats a hostile sandbox, is `crate::sandbox::copy`'s; this
//! module parses locations and prints (a sandbox's names reach the terminal escaped).

use super::Format;
use crate::reconcile::Orchestrator;
use crate::sandbox::copy::{self, join, safe_component, Copied};
use crate::sandbox::tarball;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use guest_agent::protocol::{FileKind, FileStat};
use std::io::Write;
use std::path::PathBuf;

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

/// A name as it may reach a terminal: quoted with escapes when it holds control characters (a
/// sandbox's file name must not drive the user's terminal).
pub fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    if name.chars().any(char::is_control) {
        format!("{name:?}").into()
    } else {
        name.into()
    }
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
    let warn = |copied: &Copied| {
        for s in &copied.skipped {
            eprintln!("warning: {} skipped", printable(s));
        }
    };
    match (Location::parse(src), Location::parse(dest)) {
        (Location::Host(from), Location::Sandbox { name, path }) if from.as_os_str() == "-" => {
            let mut c = super::interactive::connect(orch, &name)?;
            let copied = tarball::import(&mut c, &mut std::io::stdin().lock(), &path).with_context(|| format!("unpacking the tar stream on standard input into {name}:{path}"))?;
            warn(&copied);
            eprintln!("copied {copied} to {name}:{path}");
            Ok(0)
        }
        (Location::Sandbox { name, path }, Location::Host(to)) if to.as_os_str() == "-" => {
            let mut c = super::interactive::connect(orch, &name)?;
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
            let copied = tarball::export(&mut c, &path, &mut out).with_context(|| format!("writing {name}:{path} as a tar stream"))?;
            out.flush().context("writing the tar stream to standard output")?;
            warn(&copied);
            Ok(0)
        }
        (Location::Host(from), Location::Sandbox { name, path }) => {
            let mut c = super::interactive::connect(orch, &name)?;
            let (target, copied) = copy::copy_to_sandbox(&mut c, &from, &path).with_context(|| format!("copying {} to {name}:{path}", from.display()))?;
            warn(&copied);
            eprintln!("copied {copied} to {name}:{target}");
            Ok(0)
        }
        (Location::Sandbox { name, path }, Location::Host(to)) => {
            let mut c = super::interactive::connect(orch, &name)?;
            let (target, copied) = copy::copy_from_sandbox(&mut c, &path, &to).with_context(|| format!("copying {name}:{path} to {}", to.display()))?;
            warn(&copied);
            eprintln!("copied {copied} to {}", target.display());
            Ok(0)
        }
        (Location::Sandbox { .. }, Location::Sandbox { .. }) => bail!("cp copies between the host and a sandbox; for two sandboxes, copy through the host"),
        (Location::Host(_), Location::Host(_)) => bail!("name a sandbox's file on one side: NAME:/path (e.g. `orchestrator cp ./app web:/srv/app`)"),
    }
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
    fn hostile_names_cannot_drive_the_terminal() {
        assert_eq!(printable("plain name"), "plain name");
        assert_eq!(printable("evil\x1b]0;pwned\x07"), "\"evil\\u{1b}]0;pwned\\u{7}\"");
    }
}
