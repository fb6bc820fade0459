//! Disks: for microVMs one read-only EROFS image per image (its layers merged, whiteouts
//! applied), built once per manifest digest and cached under `DATA/images/disks/`; for every
//! sandbox a writable, sparse ext4 disk whose size is the bound on what it can write.
//!
//! EROFS rather than ext4 for the image disk: it is read-only by construction (nothing in the
//! guest can corrupt a disk that other sandboxes share), compact, quick to build (no journal,
//! no free-space layout), and the Debian cloud kernel ships it. The layers are merged by a
//! read-only overlayfs mounted in a private mount namespace of the `mkfs.erofs` child only,
//! so the host never sees that mount and nothing is left behind if it dies.

use super::store::{digest_hex, ImageRecord, ImageStore};
use super::ImageError;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tool_error(tool: &str, e: std::io::Error) -> ImageError {
    ImageError::Store(format!("running {tool}: {e} (Debian package {}; `tests/setup.sh` installs it)", if tool == "mkfs.erofs" { "erofs-utils" } else { "e2fsprogs" }))
}

/// The image's read-only root disk, built on first use.
pub fn image_disk(store: &ImageStore, record: &ImageRecord) -> Result<PathBuf, ImageError> {
    let disks = store.root().join("disks");
    std::fs::create_dir_all(&disks).map_err(|e| ImageError::Store(format!("{}: {e}", disks.display())))?;
    let path = disks.join(format!("{}.erofs", digest_hex(&record.manifest_digest)?));
    if path.exists() {
        return Ok(path);
    }
    let _lock = store.lock(&record.manifest_digest)?;
    if path.exists() {
        return Ok(path);
    }
    let resolved = store.resolved(record)?;
    let tmp = path.with_extension("erofs.partial");
    let merged = store.scratch_dir("merge")?;
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet").arg(&tmp);
    if resolved.layers.len() == 1 {
        cmd.arg(&resolved.layers[0]);
    } else {
        cmd.arg(&merged);
        let lower: Vec<String> = resolved.layers.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let options = format!("lowerdir={}", lower.join(":"));
        let target = merged.clone();
        // SAFETY: between fork and exec only unshare and mount, on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                use nix::mount::{mount, MsFlags};
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
                mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(std::io::Error::from)?;
                mount(Some("overlay"), &target, Some("overlay"), MsFlags::MS_RDONLY, Some(options.as_str())).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
    }
    let out = cmd.output();
    let _ = std::fs::remove_dir(&merged);
    let out = out.map_err(|e| tool_error("mkfs.erofs", e))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Store(format!("mkfs.erofs failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    std::fs::rename(&tmp, &path).map_err(|e| ImageError::Store(format!("storing {}: {e}", path.display())))?;
    Ok(path)
}

/// An EROFS disk of one plain directory (`dir:` images), written to `out`.
pub fn dir_disk(dir: &Path, out: &Path) -> Result<(), ImageError> {
    let tmp = out.with_extension("erofs.partial");
    let result = Command::new("mkfs.erofs").arg("--quiet").arg(&tmp).arg(dir).output().map_err(|e| tool_error("mkfs.erofs", e))?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Store(format!("mkfs.erofs {}: {}", dir.display(), String::from_utf8_lossy(&result.stderr).trim())));
    }
    std::fs::rename(&tmp, out).map_err(|e| ImageError::Store(format!("{}: {e}", out.display())))
}

/// A sandbox's writable disk (a microVM's scratch disk, a namespace sandbox's bounded writable
/// layer): a sparse ext4 file of `size` bytes whose root directory belongs to `owner` (host
/// uid and gid; a user-namespaced sandbox's root is not host root).
///
/// It is a copy of a template made once per size and owner under `DATA/images/disks/`: mkfs
/// costs about 10 ms, a sparse copy of its 240 KiB of metadata well under one, and a one-shot
/// `run --rm` is a few tens of ms in all. Copies share the filesystem UUID, which nothing
/// here relies on (each is mounted alone, in its own sandbox).
pub fn writable_disk(store_root: &Path, path: &Path, size: u64, owner: u32) -> Result<(), ImageError> {
    let store_err = |p: &Path, e: std::io::Error| ImageError::Store(format!("{}: {e}", p.display()));
    let disks = store_root.join("disks");
    std::fs::create_dir_all(&disks).map_err(|e| store_err(&disks, e))?;
    let template = disks.join(format!("writable-{size}-{owner}.ext4"));
    if !template.exists() {
        // Racing creators each build their own and the last rename wins: both are valid.
        let tmp = disks.join(format!(".writable-{}.partial", crate::ids::random_hex(8)));
        let made = mkfs_ext4(&tmp, size, owner, &["upper", "work"]).and_then(|()| std::fs::rename(&tmp, &template).map_err(|e| store_err(&template, e)));
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        made?;
    }
    let partial = path.with_extension("ext4.partial");
    let copied = match sparse_copy(&template, &partial, size) {
        // A filesystem that reports no holes would have the copy write `size` bytes of zeros.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => mkfs_ext4(&partial, size, owner, &["upper", "work"]),
        other => other.map_err(|e| store_err(&partial, e)),
    };
    let done = copied.and_then(|()| std::fs::rename(&partial, path).map_err(|e| store_err(path, e)));
    if done.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    done
}

/// mkfs.ext4 with what makes it fast on a sparse file: no discard (it would punch 10 GiB of
/// holes), lazy inode tables and journal, no reserved GDT blocks for online growth (nothing
/// grows these), a 4 MiB journal and no blocks reserved for root (the sandbox's root is the
/// user the bound is for).
/// A writable layer's disk holds the overlay's `upper` and `work` directories from the start
/// (`dirs`, owned by `owner`), so a sandbox's first start does not journal two mkdirs.
pub(crate) fn mkfs_ext4(path: &Path, size: u64, owner: u32, dirs: &[&str]) -> Result<(), ImageError> {
    let store_err = |p: &Path, e: std::io::Error| ImageError::Store(format!("{}: {e}", p.display()));
    let file = std::fs::File::create(path).map_err(|e| store_err(path, e))?;
    file.set_len(size).map_err(|e| match e.raw_os_error() {
        // Past the host filesystem's largest file (ext4: 16 TiB less a block).
        Some(libc::EFBIG) => ImageError::Store(format!(
            "the host's filesystem under {} cannot hold a {}-byte disk file; choose a smaller size (spec.disk, --disk, a Volume's size)",
            path.parent().unwrap_or(path).display(),
            size
        )),
        _ => store_err(path, e),
    })?;
    drop(file);
    let seed = path.with_extension("seed");
    std::fs::create_dir_all(&seed).map_err(|e| store_err(&seed, e))?;
    for d in dirs {
        let dir = seed.join(d);
        std::fs::create_dir_all(&dir).map_err(|e| store_err(&dir, e))?;
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner)).map_err(|e| store_err(&dir, e))?;
    }
    std::os::unix::fs::chown(&seed, Some(owner), Some(owner)).map_err(|e| store_err(&seed, e))?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-J", "size=4", "-O", "^resize_inode"])
        .arg("-E")
        .arg(format!("lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner={owner}:{owner}"))
        .arg("-d")
        .arg(&seed)
        .arg(path)
        .output();
    let _ = std::fs::remove_dir_all(&seed);
    let out = out.map_err(|e| tool_error("mkfs.ext4", e))?;
    if !out.status.success() {
        return Err(ImageError::Store(format!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Copies only the data extents of `from` (SEEK_DATA / SEEK_HOLE), so `to` is as sparse as
/// the template, then sizes it to `size`.
fn sparse_copy(from: &Path, to: &Path, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let src = std::fs::File::open(from)?;
    let dst = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(to)?;
    let meta = src.metadata()?;
    let end = meta.len() as i64;
    // SAFETY: lseek on our own fd.
    let first_hole = unsafe { libc::lseek(src.as_raw_fd(), 0, libc::SEEK_HOLE) };
    if first_hole >= end && (meta.blocks() * 512) < meta.len() / 2 {
        return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "this filesystem reports no holes"));
    }
    let mut pos: i64 = 0;
    while pos < end {
        // SAFETY: lseek on our own fds.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            // SAFETY: copy_file_range between two regular files with valid offsets.
            let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, (hole - off_in) as usize, 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
        }
        pos = hole;
    }
    // No fsync: a disk cut short by a host crash in its first moments holds nothing yet, and
    // its mount fails with a clear error; the sandbox is then re-created.
    dst.set_len(size)

}
