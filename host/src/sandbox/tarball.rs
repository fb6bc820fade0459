//! Tar streams of a sandbox's files, as `docker cp` and `kubectl cp` speak them:
//! `cp NAME:/path -` writes one to standard output, `cp - NAME:/dir` unpacks one from standard
//! input, and the library's `fs().export_tar` / `import_tar` do the same for a program.
//!
//! Out of the sandbox (hostile): entry names are made only of names that are one path
//! component; a file's size is what its stat said (a file that grows meanwhile is cut there,
//! one that shrinks is padded with zeros, both reported); setuid, setgid and sticky bits are
//! dropped; a tree deeper than [`MAX_DEPTH`] is refused. Nothing is buffered past one chunk.
//!
//! Into the sandbox: an entry whose path is absolute or climbs with `..` stops the import
//! before it writes that entry; links, devices and fifos are skipped with a warning (the file
//! API makes none); parents are made as needed.

use super::copy::{basename, children, host_mode, join, Copied, MAX_DEPTH};
use crate::client::ShimClient;
use crate::error::{Error, Result};
use guest_agent::protocol::{FileKind, FileStat};
use std::io::{Read, Write};
use std::path::Component;

fn local(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::io(context, e)
}

/// Writes the sandbox's file or tree `path` to `out` as a tar stream whose top entry is the
/// path's own name (`/etc/apt` gives `apt/...`).
pub fn export(c: &mut ShimClient, path: &str, out: &mut dyn Write) -> Result<Copied> {
    let stat = c.stat(path)?;
    let name = basename(path)?.to_string();
    let mut tar = tar::Builder::new(out);
    let mut done = Copied::default();
    export_entry(c, &mut tar, path, &stat, &name, 0, &mut done)?;
    tar.finish().map_err(local("finishing the tar stream"))?;
    Ok(done)
}

fn header(kind: tar::EntryType, stat: &FileStat, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(host_mode(stat.mode));
    h.set_size(size);
    h.set_uid(u64::from(stat.uid));
    h.set_gid(u64::from(stat.gid));
    h.set_mtime(stat.mtime_secs.max(0) as u64);
    h
}

fn export_entry(c: &mut ShimClient, tar: &mut tar::Builder<&mut dyn Write>, path: &str, stat: &FileStat, name: &str, depth: usize, done: &mut Copied) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::Conflict(format!("{path}: more than {MAX_DEPTH} directories deep")));
    }
    let write_error = local(format!("writing {name} to the tar stream"));
    match stat.kind {
        FileKind::Dir => {
            let mut h = header(tar::EntryType::Directory, stat, 0);
            tar.append_data(&mut h, format!("{name}/"), std::io::empty()).map_err(write_error)?;
            done.dirs += 1;
            for (n, child, st) in children(c, path, done)? {
                export_entry(c, tar, &child, &st, &format!("{name}/{n}"), depth + 1, done)?;
            }
        }
        FileKind::File => {
            let mut h = header(tar::EntryType::Regular, stat, stat.size);
            let mut stream = c.read_file_stream(path)?;
            let mut exact = Exactly { inner: &mut stream, left: stat.size, short: false };
            tar.append_data(&mut h, name, &mut exact).map_err(write_error)?;
            let short = exact.short;
            // Whatever the file grew by since its stat is read and dropped: the connection
            // must be at the end of this file before its next request.
            let extra = std::io::copy(&mut stream, &mut std::io::sink()).map_err(local(format!("reading {path}")))?;
            if short {
                done.skipped.push(format!("{path} shrank while it was copied; padded with zeros to {} bytes", stat.size));
            } else if extra > 0 {
                done.skipped.push(format!("{path} grew by {extra} bytes while it was copied; cut at {} bytes", stat.size));
            }
            done.files += 1;
            done.bytes += stat.size;
        }
        FileKind::Symlink => {
            let target = stat.symlink_target.clone().ok_or_else(|| Error::Protocol(format!("{path}: a link without a target")))?;
            let mut h = header(tar::EntryType::Symlink, stat, 0);
            tar.append_link(&mut h, name, &target).map_err(write_error)?;
            done.links += 1;
        }
        FileKind::Other => done.skipped.push(format!("{path} is not a file, directory or link")),
    }
    Ok(())
}

/// Exactly `left` bytes of `inner`: cut when it has more, zeros when it has fewer.
struct Exactly<'a, R: Read> {
    inner: &'a mut R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for Exactly<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.short { 0 } else { self.inner.read(&mut buf[..want])? };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// The sandbox path a tar entry names under `target`, refusing any that would land outside it.
fn entry_target(target: &str, entry: &std::path::Path) -> Result<Option<String>> {
    let mut parts = Vec::new();
    for part in entry.components() {
        match part {
            Component::Normal(p) => {
                let p = p.to_str().ok_or_else(|| Error::Conflict(format!("tar entry {}: not UTF-8", entry.display())))?;
                parts.push(p.to_string());
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Error::Conflict(format!(
                    "tar entry {:?} would land outside {target} (absolute, or climbing with ..); nothing after it was written",
                    entry.display().to_string()
                )))
            }
        }
    }
    Ok((!parts.is_empty()).then(|| parts.iter().fold(target.to_string(), |dir, p| join(&dir, p))))
}

/// Unpacks the tar stream `input` into the sandbox directory `target` (which must exist).
pub fn import(c: &mut ShimClient, input: &mut dyn Read, target: &str) -> Result<Copied> {
    match c.stat(target) {
        Ok(s) if s.kind == FileKind::Dir => {}
        Ok(_) => return Err(Error::Conflict(format!("{target} is not a directory; a tar stream unpacks into a directory"))),
        Err(e) => return Err(e.into()),
    }
    let mut archive = tar::Archive::new(input);
    let mut done = Copied::default();
    let mut made: std::collections::HashSet<String> = Default::default();
    let entries = archive.entries().map_err(local("reading the tar stream"))?;
    for entry in entries {
        let mut entry = entry.map_err(local("reading the tar stream"))?;
        let path = entry.path().map_err(local("reading a tar entry's name"))?.into_owned();
        let Some(dest) = entry_target(target, &path)? else { continue };
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(local(format!("tar entry {}: its mode", path.display())))? & 0o7777;
        if kind.is_dir() || kind.is_file() {
            if let Some((parent, _)) = dest.rsplit_once('/').filter(|(p, _)| !p.is_empty() && !made.contains(*p)) {
                c.mkdir(parent, true)?;
                made.insert(parent.to_string());
            }
        }
        if kind.is_dir() {
            c.mkdir(&dest, true)?;
            made.insert(dest);
            done.dirs += 1;
        } else if kind.is_file() {
            done.bytes += c.write_file_from(&dest, &mut entry, Some(mode))?;
            done.files += 1;
        } else if kind.is_symlink() || kind.is_hard_link() {
            done.skipped.push(format!("{} is a link; the file API makes no links", path.display()));
        } else if !kind.is_pax_global_extensions() && !kind.is_pax_local_extensions() && !kind.is_gnu_longname() && !kind.is_gnu_longlink() {
            done.skipped.push(format!("{} is not a file or directory", path.display()));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_land_under_the_target_or_are_refused() {
        let at = |p: &str| entry_target("/dst", std::path::Path::new(p));
        assert_eq!(at("a/b.txt").unwrap().as_deref(), Some("/dst/a/b.txt"));
        assert_eq!(at("./a/./b").unwrap().as_deref(), Some("/dst/a/b"));
        assert_eq!(at("./").unwrap(), None);
        for bad in ["../x", "a/../../x", "/etc/passwd"] {
            assert!(at(bad).is_err(), "{bad}");
        }
        assert_eq!(entry_target("/", std::path::Path::new("x")).unwrap().as_deref(), Some("/x"));
    }

    #[test]
    fn a_file_is_cut_or_padded_to_its_stated_size() {
        let mut out = Vec::new();
        let mut long: &[u8] = b"abcdef";
        let mut e = Exactly { inner: &mut long, left: 4, short: false };
        e.read_to_end(&mut out).unwrap();
        assert_eq!((out.as_slice(), e.short), (&b"abcd"[..], false));
        let mut short: &[u8] = b"ab";
        let mut out = Vec::new();
        let mut e = Exactly { inner: &mut short, left: 5, short: false };
        e.read_to_end(&mut out).unwrap();
        assert_eq!((out.as_slice(), e.short), (&b"ab\0\0\0"[..], true));
    }
}
