//! Volumes in the resource model: the `Volume` kind (a named filesystem of a fixed size under
//! `DATA/volumes`, see `crate::volume`) and a sandbox's `spec.volumes` (what it mounts where:
//! a named volume, a host path, or a tmpfs).

use serde::{Deserialize, Serialize};

/// A volume declared without `size`.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;
/// ext4's journal and metadata need a few MiB; below this a volume holds almost nothing.
pub const MIN_VOLUME_SIZE: u64 = 16 << 20;
pub const MAX_VOLUME_SIZE: u64 = 16 << 40;
/// A tmpfs mount declared without `size`.
pub const DEFAULT_TMPFS_SIZE: u64 = 64 << 20;
/// Mounts per sandbox: each is a mount and, for named volumes, a lock and a loop device.
pub const MAX_MOUNTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub size: Option<u64>,
    /// Several sandboxes may mount it writable at once (their writes meet in one filesystem,
    /// with no coordination beyond the kernel's); otherwise one writer and any readers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

impl VolumeSpec {
    pub fn size_bytes(&self) -> u64 {
        self.size.unwrap_or(DEFAULT_VOLUME_SIZE)
    }
}

/// One entry of `spec.volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub source: MountSource,
    /// Absolute, normalised path inside the sandbox.
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MountSource {
    /// A `Volume` resource, by name.
    Volume(String),
    /// A host directory or file, absolute (relative paths were resolved against the YAML
    /// file's directory).
    HostPath(String),
    /// A fresh tmpfs of this many bytes (charged to the sandbox's memory).
    Tmpfs(u64),
}

impl VolumeMount {
    /// `NAME:/path[:ro]`, `/host/path:/path[:ro]` (a host path starts with `/` or `.`) as
    /// `run -v` takes them; host paths are made absolute against `cwd`.
    pub fn parse_cli(text: &str, cwd: &std::path::Path) -> Result<VolumeMount, String> {
        let (rest, read_only) = match text.rsplit_once(':') {
            Some((r, "ro")) => (r, true),
            Some((r, "rw")) => (r, false),
            _ => (text, false),
        };
        let (source, path) = rest.split_once(':').ok_or("expected SOURCE:PATH[:ro]")?;
        let mount_path = check_mount_path(path)?;
        let source = if source.starts_with('/') || source.starts_with('.') {
            MountSource::HostPath(cwd.join(source).components().collect::<std::path::PathBuf>().to_string_lossy().into_owned())
        } else if super::is_valid_name(source) {
            MountSource::Volume(source.to_string())
        } else {
            return Err(format!("{source:?} is neither a volume name (lowercase letters, digits, '-') nor a host path (starting with / or .)"));
        };
        Ok(VolumeMount { source, mount_path, read_only })
    }

    /// `PATH[:SIZE]` as `run --tmpfs` takes it.
    pub fn parse_tmpfs(text: &str) -> Result<VolumeMount, String> {
        let (path, size) = match text.split_once(':') {
            Some((p, s)) => (p, super::quantity::parse_bytes(s)?),
            None => (text, DEFAULT_TMPFS_SIZE),
        };
        check_tmpfs_size(size)?;
        Ok(VolumeMount { source: MountSource::Tmpfs(size), mount_path: check_mount_path(path)?, read_only: false })
    }
}

pub fn check_volume_size(bytes: u64) -> Result<(), String> {
    if bytes < MIN_VOLUME_SIZE {
        Err("below the 16Mi minimum (the filesystem's own journal and metadata need room)".into())
    } else if bytes > MAX_VOLUME_SIZE {
        Err("above the 16Ti maximum".into())
    } else {
        Ok(())
    }
}

pub fn check_tmpfs_size(bytes: u64) -> Result<(), String> {
    if bytes < 4096 || bytes > MAX_VOLUME_SIZE {
        Err("a tmpfs size is between 4Ki and 16Ti".into())
    } else {
        Ok(())
    }
}

/// Directories the sandbox's own mounts own: a volume there would be hidden or would hide them.
const RESERVED: &[&str] = &["/proc", "/sys", "/dev"];

/// The normalised form of a mount path: absolute, no `.` or `..`, no empty components, not `/`
/// and not under `/proc`, `/sys` or `/dev`.
pub fn check_mount_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.len() > 1024 || path.contains('\0') {
        return Err("a mount path is at most 1024 bytes, without NUL".into());
    }
    let mut parts = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(format!("{path:?} contains {c:?}; give the path without it"));
        }
        parts.push(c);
    }
    if parts.is_empty() {
        return Err("a volume cannot be mounted on / (the image's root)".into());
    }
    let norm = format!("/{}", parts.join("/"));
    if let Some(r) = RESERVED.iter().find(|r| norm == **r || norm.starts_with(&format!("{r}/"))) {
        return Err(format!("{norm} is under {r}, which the sandbox mounts itself"));
    }
    Ok(norm)
}

/// Mount paths that appear twice (the later entry would hide the earlier).
pub fn duplicate_mount_path(mounts: &[VolumeMount]) -> Option<&str> {
    mounts.iter().enumerate().find(|(i, m)| mounts[..*i].iter().any(|o| o.mount_path == m.mount_path)).map(|(_, m)| m.mount_path.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_normalised_and_reserved_ones_refused() {
        assert_eq!(check_mount_path("/data//x/").unwrap(), "/data/x");
        for bad in ["data", "/", "/a/../etc", "/proc", "/proc/sys", "/dev/shm", "/sys", "/./a"] {
            assert!(check_mount_path(bad).is_err(), "{bad}");
        }
        assert_eq!(check_mount_path("/devices").unwrap(), "/devices");
    }

    #[test]
    fn cli_forms_parse() {
        let cwd = std::path::Path::new("/work");
        let m = VolumeMount::parse_cli("data:/data:ro", cwd).unwrap();
        assert_eq!((m.source, m.mount_path.as_str(), m.read_only), (MountSource::Volume("data".into()), "/data", true));
        let m = VolumeMount::parse_cli("./src:/src", cwd).unwrap();
        assert_eq!(m.source, MountSource::HostPath("/work/src".into()));
        assert!(!m.read_only);
        assert!(VolumeMount::parse_cli("Data:/x", cwd).is_err());
        assert!(VolumeMount::parse_cli("data", cwd).is_err());
        let t = VolumeMount::parse_tmpfs("/scratch:8Mi").unwrap();
        assert_eq!(t.source, MountSource::Tmpfs(8 << 20));
        assert!(VolumeMount::parse_tmpfs("/scratch:0").is_err());
    }
}
