//! Named volumes on the host and what a sandbox's `spec.volumes` resolve to.
//!
//! A volume is a sparse ext4 image, `DATA/volumes/NAME/disk.ext4`, of exactly the Volume's
//! `size`. A filesystem of its own is the only bound that holds for every writer at once
//! (namespace sandboxes, a virtio-fs daemon, the host): no host-filesystem quota support is
//! needed, a full volume is ENOSPC inside it and nothing else on the host fills up. It is never
//! mounted in the host's mount table: each sandbox's shim mounts the image's loop device as a
//! detached mount (`shim::volumes`), and all of them share one superblock, so writes by one are
//! seen by the others at once.
//!
//! Invariants:
//! - One loop device per image at a time: a second would give a second superblock over the
//!   same blocks (corruption). Whoever attaches holds `attach.lock` and first looks for a
//!   device that already backs the image; autoclear frees it with the last mount.
//! - One writer unless the volume is `shared`: a writer holds `writer.lock` (flock) for the
//!   life of its shim, so a killed shim releases it.
//! - Data is deleted only with the Volume resource, and a Volume that a declared sandbox mounts
//!   is not deleted (unless forced).

use crate::spec::{MountSource, VolumeMount, VolumeSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name:?}: {message}")]
    Failed { name: String, message: String },
    /// The host's filesystem cannot hold an image of the size asked for.
    #[error("volume {name:?}: {message}")]
    TooLarge { name: String, message: String },
}

fn failed(name: &str, message: impl Into<String>) -> VolumeError {
    VolumeError::Failed { name: name.to_string(), message: message.into() }
}

/// The files of one volume.
#[derive(Debug, Clone)]
pub struct VolumeDir(pub PathBuf);

impl VolumeDir {
    pub fn of(data_root: &Path, name: &str) -> VolumeDir {
        VolumeDir(data_root.join("volumes").join(name))
    }
    pub fn disk(&self) -> PathBuf {
        self.0.join("disk.ext4")
    }
    /// Held (flock) while a loop device is found or attached for the disk.
    pub fn attach_lock(&self) -> PathBuf {
        self.0.join("attach.lock")
    }
    /// Held (flock) by the shim of the sandbox that mounts the volume writable.
    pub fn writer_lock(&self) -> PathBuf {
        self.0.join("writer.lock")
    }
    /// The name of the sandbox holding the writer lock (for the error of a second writer).
    pub fn writer_name(&self) -> PathBuf {
        self.0.join("writer")
    }
}

/// What a sandbox's start hands its shim for one mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedMount {
    pub mount_path: String,
    pub read_only: bool,
    pub source: ResolvedSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResolvedSource {
    Volume { name: String, dir: PathBuf, shared: bool },
    /// Canonical host path; `file` when it is a single file.
    HostPath { path: PathBuf, file: bool },
    Tmpfs { size: u64 },
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Grown,
    Unchanged,
}

/// The loop device that backs `image` now, if any (`/dev/loopN`).
pub fn backing_loop(image: &Path) -> Option<String> {
    let image = std::fs::canonicalize(image).ok()?;
    std::fs::read_dir("/sys/block").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            return None;
        }
        let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
        (Path::new(backing.trim()) == image).then(|| format!("/dev/{name}"))
    })
}

/// Makes the volume's disk when it has none, and grows it to a larger `size` while no sandbox
/// has it mounted. A smaller size is refused: it would cut off data.
pub fn ensure(data_root: &Path, name: &str, spec: &VolumeSpec) -> Result<Ensured, VolumeError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = VolumeDir::of(data_root, name);
    let want = spec.size_bytes();
    let disk = dir.disk();
    if let Ok(meta) = std::fs::metadata(&disk) {
        let have = meta.len();
        if want == have {
            return Ok(Ensured::Unchanged);
        }
        if want < have {
            return Err(failed(name, format!("its disk holds {} and cannot shrink to {}: that would cut off data", human(have), human(want))));
        }
        if backing_loop(&disk).is_some() {
            return Err(failed(name, format!("it is mounted; stop the sandboxes that mount it to grow it to {}", human(want))));
        }
        grow(&disk, want).map_err(|e| failed(name, e))?;
        return Ok(Ensured::Grown);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir.0).map_err(|e| failed(name, format!("creating {}: {e}", dir.0.display())))?;
    let partial = disk.with_extension("partial");
    // A size past the host filesystem's largest file (ext4: 16 TiB less a block) says so.
    if let Err(e) = std::fs::File::create(&partial).and_then(|f| f.set_len(want)) {
        let _ = std::fs::remove_file(&partial);
        return Err(match e.raw_os_error() {
            Some(libc::EFBIG) | Some(libc::EINVAL) => VolumeError::TooLarge { name: name.into(), message: format!("the host's filesystem under {} cannot hold a {} file; choose a smaller size", dir.0.display(), human(want)) },
            _ => failed(name, format!("{}: {e}", partial.display())),
        });
    }
    let made = crate::image::disk::mkfs_ext4(&partial, want, 0, &[]).map_err(|e| failed(name, e.to_string())).and_then(|()| {
        std::fs::rename(&partial, &disk).map_err(|e| failed(name, format!("{}: {e}", disk.display())))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    made.map(|()| Ensured::Created)
}

fn grow(disk: &Path, size: u64) -> Result<(), String> {
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("running {what}: {e} (Debian package e2fsprogs)"))?;
        // e2fsck: 1 means errors were corrected, which is fine before a resize.
        if out.status.success() || (what == "e2fsck" && out.status.code() == Some(1)) {
            Ok(())
        } else {
            Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    run(std::process::Command::new("e2fsck").args(["-f", "-p"]).arg(disk), "e2fsck")?;
    std::fs::OpenOptions::new().write(true).open(disk).and_then(|f| f.set_len(size)).map_err(|e| format!("{}: {e}", disk.display()))?;
    run(std::process::Command::new("resize2fs").arg(disk), "resize2fs")
}

/// Deletes the volume's data. A sandbox still running with it mounted keeps its mount (the
/// blocks are freed when it ends).
pub fn remove(data_root: &Path, name: &str) -> Result<(), VolumeError> {
    let dir = VolumeDir::of(data_root, name);
    match std::fs::remove_dir_all(&dir.0) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed(name, format!("removing {}: {e}", dir.0.display()))),
    }
}

/// A volume's size and what its data takes on the host's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub size: u64,
    /// Bytes the sparse image occupies on the host (data and metadata written so far).
    pub allocated: u64,
    /// A loop device backs it now: some sandbox has it mounted.
    pub mounted: bool,
}

pub fn usage(data_root: &Path, name: &str) -> Option<Usage> {
    use std::os::unix::fs::MetadataExt;
    let disk = VolumeDir::of(data_root, name).disk();
    let meta = std::fs::metadata(&disk).ok()?;
    Some(Usage { size: meta.len(), allocated: meta.blocks() * 512, mounted: backing_loop(&disk).is_some() })
}

/// Sandboxes whose declared spec mounts volume `name`.
pub fn users(store: &crate::store::Store, name: &str) -> Result<Vec<String>, crate::store::StoreError> {
    Ok(store
        .resources(Some(crate::spec::Kind::Sandbox))?
        .into_iter()
        .filter(|r| match &r.resource.spec {
            crate::spec::ResourceSpec::Sandbox(s) => mounts_volume(&s.volumes, name),
            _ => false,
        })
        .map(|r| r.resource.name)
        .collect())
}

pub fn mounts_volume(mounts: &[VolumeMount], name: &str) -> bool {
    mounts.iter().any(|m| matches!(&m.source, MountSource::Volume(v) if v == name))
}

/// `spec.volumes` as the shim needs them: named volumes found (and their disks made), host
/// paths checked and made canonical.
pub fn resolve(data_root: &Path, store: &crate::store::Store, mounts: &[VolumeMount]) -> Result<Vec<ResolvedMount>, String> {
    mounts
        .iter()
        .map(|m| {
            let source = match &m.source {
                MountSource::Volume(name) => {
                    let declared = store.resource(crate::spec::Kind::Volume, name).map_err(|e| e.to_string())?;
                    let Some(crate::spec::ResourceSpec::Volume(spec)) = declared.map(|d| d.resource.spec) else {
                        return Err(format!(
                            "volume {name:?} (mounted at {}) does not exist; declare it (`kind: Volume`) or create it: orchestrator volume create {name}",
                            m.mount_path
                        ));
                    };
                    // Made when missing (removed by hand; stored before volumes had disks), grown
                    // when its Volume grew while it was mounted. A disk that cannot grow now
                    // is mounted as it is.
                    if let Err(e) = ensure(data_root, name, &spec) {
                        if !VolumeDir::of(data_root, name).disk().exists() {
                            return Err(e.to_string());
                        }
                        tracing::warn!("{e}");
                    }
                    ResolvedSource::Volume { name: name.clone(), dir: VolumeDir::of(data_root, name).0, shared: spec.shared }
                }
                MountSource::HostPath(p) => {
                    let path = check_host_path(data_root, Path::new(p))?;
                    let file = std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false);
                    ResolvedSource::HostPath { path, file }
                }
                MountSource::Tmpfs(size) => ResolvedSource::Tmpfs { size: *size },
            };
            Ok(ResolvedMount { mount_path: m.mount_path.clone(), read_only: m.read_only, source })
        })
        .collect()
}

/// A host path a sandbox may mount: it exists, is a directory or regular file, and is neither
/// inside the data directory nor one of its ancestors (either would hand the sandbox other
/// sandboxes' files, the state database and the API token).
pub fn check_host_path(data_root: &Path, path: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("hostPath {}: {e}; create it first, or fix the path (relative paths start at the YAML file's directory)", path.display()))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| format!("hostPath {}: {e}", path.display()))?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(format!("hostPath {} is neither a directory nor a regular file", path.display()));
    }
    let data = std::fs::canonicalize(data_root).unwrap_or_else(|_| data_root.to_path_buf());
    if canonical.starts_with(&data) || data.starts_with(&canonical) {
        return Err(format!(
            "hostPath {} would expose the orchestrator's data directory {} (other sandboxes, the state, the API token); mount a directory outside it",
            path.display(),
            data.display()
        ));
    }
    Ok(canonical)
}

/// `1Gi`, `512Mi`, `3.2Gi`: sizes as people write them.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return if bytes % scale == 0 { format!("{}{unit}", bytes / scale) } else { format!("{:.1}{unit}", bytes as f64 / scale as f64) };
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_inside_or_above_the_data_dir_are_refused() {
        let base = std::env::temp_dir().join(format!("volume-test-{}", std::process::id()));
        let data = base.join("data");
        std::fs::create_dir_all(data.join("sandboxes")).unwrap();
        std::fs::create_dir_all(base.join("src")).unwrap();
        std::os::unix::fs::symlink(data.join("sandboxes"), base.join("sneaky")).unwrap();
        assert_eq!(check_host_path(&data, &base.join("src")).unwrap(), std::fs::canonicalize(base.join("src")).unwrap());
        for bad in [data.clone(), data.join("sandboxes"), base.clone(), base.join("sneaky"), PathBuf::from("/")] {
            let e = check_host_path(&data, &bad).unwrap_err();
            assert!(e.contains("data directory"), "{}: {e}", bad.display());
        }
        assert!(check_host_path(&data, &base.join("missing")).unwrap_err().contains("create it first"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(human(1 << 30), "1Gi");
        assert_eq!(human(64 << 20), "64Mi");
        assert_eq!(human(1536 << 20), "1.5Gi");
        assert_eq!(human(12), "12");
    }
}
