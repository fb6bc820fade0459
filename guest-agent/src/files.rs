//! The filesystem API inside the sandbox: chunked, binary-safe reads and writes, listing, stat,
//! mkdir, remove and rename. Paths are the sandbox's own (the agent runs inside its root), so
//! there is nothing to escape to.

use crate::protocol::{error, DirEntry, ErrorCode, FileKind, FileStat, Response, CHUNK_LEN};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

/// Entries per `Entries` frame, well under the frame limit even with 255-byte names.
const ENTRIES_PER_FRAME: usize = 1024;

pub fn io_error(path: &str, e: &io::Error) -> Response {
    let code = match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        // A read-only place (the image's bound nodes, /proc/sys) refuses like a permission.
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => ErrorCode::PermissionDenied,
        // The sandbox's own bound (its disk, RLIMIT_FSIZE): the caller's to make room for.
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => ErrorCode::TooLarge,
        io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        // The path names the wrong kind of thing, or is no path at all: the caller's to fix.
        io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::DirectoryNotEmpty
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::InvalidFilename
        | io::ErrorKind::NotSeekable => ErrorCode::BadRequest,
        _ => ErrorCode::Io,
    };
    error(code, format!("{path}: {e}"))
}

fn kind_of(ft: fs::FileType) -> FileKind {
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// Streams a file's contents through `send`, `CHUNK_LEN` bytes per frame, the last with `eof`.
pub fn read_file(path: &str, offset: u64, len: Option<u64>, send: &mut dyn FnMut(Response) -> bool) {
    // Non-blocking: a pipe opens at once, writer or not, and is refused by the seek below
    // instead of the open waiting for a writer that never comes. Regular files ignore it.
    let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) => {
            send(io_error(path, &e));
            return;
        }
    };
    // Always, even to 0: pipes and terminals cannot seek, and refusing them here (a 400 for the
    // caller) keeps a read from waiting forever for a writer that never comes.
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        send(io_error(path, &e));
        return;
    }
    let mut remaining = len.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; CHUNK_LEN];
    loop {
        let want = remaining.min(CHUNK_LEN as u64) as usize;
        let n = if want == 0 { Ok(0) } else { file.read(&mut buf[..want]) };
        match n {
            Ok(0) => {
                send(Response::Data { data: vec![], eof: true });
                return;
            }
            Ok(n) => {
                remaining -= n as u64;
                if !send(Response::Data { data: buf[..n].to_vec(), eof: remaining == 0 }) {
                    return;
                }
                if remaining == 0 {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                send(io_error(path, &e));
                return;
            }
        }
    }
}

pub fn write_file(path: &str, offset: u64, data: &[u8], truncate: bool, mode: Option<u32>) -> Response {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(truncate)
            .mode(mode.unwrap_or(0o644))
            // A pipe without a reader fails the open at once (ENXIO) instead of waiting for
            // one; with a reader it is refused by the seek before any data goes in.
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        // Before the data (a replaced file never shows it under its old, looser mode) and,
        // for set-id bits, again after it: a write clears those.
        if let Some(m) = mode {
            file.set_permissions(fs::Permissions::from_mode(m))?;
        }
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(data)?;
        match mode {
            Some(m) if m & 0o6000 != 0 => file.set_permissions(fs::Permissions::from_mode(m)),
            _ => Ok(()),
        }
    })();
    match result {
        Ok(()) => Response::Done,
        Err(e) => io_error(path, &e),
    }
}

pub fn list_dir(path: &str, send: &mut dyn FnMut(Response) -> bool) {
    let entries = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) => {
            send(io_error(path, &e));
            return;
        }
    };
    let mut all: Vec<DirEntry> = entries
        .filter_map(Result::ok)
        .map(|e| DirEntry {
            name: e.file_name().to_string_lossy().into_owned(),
            kind: e.file_type().map(kind_of).unwrap_or(FileKind::Other),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for chunk in all.chunks(ENTRIES_PER_FRAME) {
        if !send(Response::Entries(chunk.to_vec())) {
            return;
        }
    }
    send(Response::Done);
}

pub fn stat(path: &str, follow: bool) -> Response {
    let md = if follow { fs::metadata(path) } else { fs::symlink_metadata(path) };
    match md {
        Ok(m) => Response::Stat(FileStat {
            kind: kind_of(m.file_type()),
            size: m.len(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime_secs: m.mtime(),
            symlink_target: if m.file_type().is_symlink() {
                fs::read_link(path).ok().map(|p| p.to_string_lossy().into_owned())
            } else {
                None
            },
        }),
        Err(e) => io_error(path, &e),
    }
}

pub fn mkdir(path: &str, parents: bool, mode: Option<u32>) -> Response {
    match fs::DirBuilder::new().recursive(parents).mode(mode.unwrap_or(0o755)).create(path) {
        Ok(()) => Response::Done,
        Err(e) => io_error(path, &e),
    }
}

pub fn remove(path: &str, recursive: bool) -> Response {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && recursive => fs::remove_dir_all(path),
        Ok(m) if m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Response::Done,
        Err(e) => io_error(path, &e),
    }
}

pub fn rename(from: &str, to: &str) -> Response {
    match fs::rename(from, to) {
        Ok(()) => Response::Done,
        Err(e) => io_error(&format!("{from} -> {to}"), &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(kind: io::ErrorKind) -> ErrorCode {
        match io_error("/p", &io::Error::from(kind)) {
            Response::Error { code, .. } => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_wrong_kind_of_path_is_the_callers_mistake_not_an_io_failure() {
        for kind in [io::ErrorKind::IsADirectory, io::ErrorKind::NotADirectory, io::ErrorKind::NotSeekable, io::ErrorKind::InvalidFilename] {
            assert_eq!(code(kind), ErrorCode::BadRequest, "{kind:?}");
        }
        assert_eq!(code(io::ErrorKind::NotFound), ErrorCode::NotFound);
        assert_eq!(code(io::ErrorKind::PermissionDenied), ErrorCode::PermissionDenied);
        assert_eq!(code(io::ErrorKind::ReadOnlyFilesystem), ErrorCode::PermissionDenied);
        assert_eq!(code(io::ErrorKind::StorageFull), ErrorCode::TooLarge);
        assert_eq!(code(io::ErrorKind::Other), ErrorCode::Io);
    }

    #[test]
    fn a_pipe_is_refused_at_once_rather_than_read_forever() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A writer end keeps the open from blocking; nobody ever writes.
        let _writer = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
        let mut answers = Vec::new();
        read_file(fifo.to_str().unwrap(), 0, None, &mut |r| {
            answers.push(r);
            true
        });
        assert!(matches!(answers.as_slice(), [Response::Error { code: ErrorCode::BadRequest, .. }]), "{answers:?}");
    }

    #[test]
    fn a_pipe_nobody_holds_open_is_refused_at_once_for_reading_and_writing() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let path = fifo.to_str().unwrap().to_string();
        // On a thread: a blocking open would never return, and the test must fail, not hang.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            read_file(&path, 0, None, &mut |r| {
                answers.push(r);
                true
            });
            let written = write_file(&path, 0, b"data", true, None);
            let _ = tx.send((answers, written));
        });
        let (answers, written) = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("a pipe with no other end held the open");
        assert!(matches!(answers.as_slice(), [Response::Error { code: ErrorCode::BadRequest, .. }]), "read: {answers:?}");
        assert!(matches!(written, Response::Error { .. }), "write: {written:?}");
        // With a reader there, a write is refused before any data goes in.
        let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        assert!(matches!(write_file(fifo.to_str().unwrap(), 0, b"data", true, None), Response::Error { code: ErrorCode::BadRequest, .. }));
        let mut got = [0u8; 8];
        assert!(matches!((&reader).read(&mut got), Ok(0) | Err(_)), "data went into the pipe");
    }
}
