//! Disks for microVMs: one read-only EROFS image per image (its layers merged, whiteouts
//! applied), built once per manifest digest and cached under `DATA/images/disks/`, and a
//! writable, sparse ext4 scratch disk per sandbox.
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

/// A sandbox's writable scratch disk: a sparse ext4 file of `size` bytes.
pub fn scratch_disk(path: &Path, size: u64) -> Result<(), ImageError> {
    let file = std::fs::File::create(path).map_err(|e| ImageError::Store(format!("{}: {e}", path.display())))?;
    file.set_len(size).map_err(|e| ImageError::Store(format!("{}: {e}", path.display())))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-m", "0"])
        .arg(path)
        .output()
        .map_err(|e| tool_error("mkfs.ext4", e))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(path);
        return Err(ImageError::Store(format!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}
