//! `spec.volumes` of a Sandbox and the `spec` of a Volume, read with the same located,
//! collect-every-error rules as the rest.

use super::{resolve_path, Ctx, Node, Value};
use crate::spec::{check_mount_path, check_tmpfs_size, check_volume_size, MountSource, VolumeMount, VolumeSpec, DEFAULT_TMPFS_SIZE, MAX_MOUNTS};
use std::path::Path;

const MOUNT_FIELDS: &[&str] = &["name", "hostPath", "tmpfs", "mountPath", "readOnly", "size"];
pub(super) const VOLUME_FIELDS: &[&str] = &["size", "shared"];

pub(super) fn volume(ctx: &mut Ctx<'_>, node: Option<&Node>) -> Option<VolumeSpec> {
    let Some(node) = node else { return Some(VolumeSpec { size: None, shared: false }) };
    let f = ctx.map(node, "spec", VOLUME_FIELDS)?;
    let before = ctx.errors.len();
    let size = f.get("size").and_then(|n| {
        let size = ctx.bytes(n, "spec.size")?;
        match check_volume_size(size) {
            Ok(()) => Some(size),
            Err(msg) => {
                ctx.err(n, "spec.size", msg, Some("e.g. 1Gi; without `size` a volume holds 1Gi".into()));
                None
            }
        }
    });
    let shared = f.get("shared").and_then(|n| ctx.bool(n, "spec.shared")).unwrap_or(false);
    (ctx.errors.len() == before).then_some(VolumeSpec { size, shared })
}

pub(super) fn mounts(ctx: &mut Ctx<'_>, node: &Node, base_dir: &Path) -> Vec<VolumeMount> {
    let Value::Seq(items) = &node.value else {
        ctx.wrong_type(node, "spec.volumes", "a list of { name | hostPath | tmpfs, mountPath, readOnly }");
        return Vec::new();
    };
    if items.len() > MAX_MOUNTS {
        ctx.err(node, "spec.volumes", format!("{} mounts; at most {MAX_MOUNTS}", items.len()), None);
        return Vec::new();
    }
    let mut out: Vec<VolumeMount> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let Some(f) = ctx.map(item, &field, MOUNT_FIELDS) else { continue };
        let given: Vec<&str> = ["name", "hostPath", "tmpfs"].into_iter().filter(|k| f.get(k).is_some()).collect();
        if given.len() != 1 {
            let msg = if given.is_empty() { "names no source".to_string() } else { format!("names {} sources ({})", given.len(), given.join(", ")) };
            ctx.err(item, &field, msg, Some("exactly one of `name: VOLUME`, `hostPath: PATH` or `tmpfs: MOUNTPATH`".into()));
            continue;
        }
        let read_only = f.get("readOnly").and_then(|n| ctx.bool(n, &format!("{field}.readOnly"))).unwrap_or(false);
        let path_of = |ctx: &mut Ctx<'_>, n: &Node, key: &str| {
            let p = ctx.nonempty_string(n, &format!("{field}.{key}"))?;
            check_mount_path(&p).map_err(|msg| ctx.err(n, &format!("{field}.{key}"), msg, Some("an absolute path inside the sandbox, such as /data".into()))).ok()
        };
        let mount_path = |ctx: &mut Ctx<'_>| match f.get("mountPath") {
            Some(n) => path_of(ctx, n, "mountPath"),
            None => {
                ctx.err(item, &format!("{field}.mountPath"), "missing", Some("where it appears inside the sandbox, e.g. /data".into()));
                None
            }
        };
        if f.get("size").is_some() && f.get("tmpfs").is_none() {
            ctx.err(f.get("size").unwrap_or(item), &format!("{field}.size"), "only a tmpfs mount has a size here", Some("a named volume's size is its Volume's `spec.size`".into()));
        }
        let mount = if let Some(n) = f.get("name") {
            let name = ctx.nonempty_string(n, &format!("{field}.name"));
            if let Some(name) = &name {
                if !crate::spec::is_valid_name(name) {
                    ctx.err(n, &format!("{field}.name"), format!("{name:?} is not a volume name"), Some("lowercase letters, digits and '-'".into()));
                }
            }
            name.zip(mount_path(ctx)).map(|(name, mount_path)| VolumeMount { source: MountSource::Volume(name), mount_path, read_only })
        } else if let Some(n) = f.get("hostPath") {
            let host = ctx.nonempty_string(n, &format!("{field}.hostPath")).map(|p| resolve_path(base_dir, &p).components().collect::<std::path::PathBuf>().to_string_lossy().into_owned());
            host.zip(mount_path(ctx)).map(|(host, mount_path)| VolumeMount { source: MountSource::HostPath(host), mount_path, read_only })
        } else {
            let n = f.get("tmpfs").unwrap_or(item);
            if f.get("mountPath").is_some() {
                ctx.err(item, &format!("{field}.mountPath"), "a tmpfs mount names its path in `tmpfs`", Some("e.g. `{ tmpfs: /scratch, size: 64Mi }`".into()));
            }
            if read_only {
                ctx.err(item, &format!("{field}.readOnly"), "a read-only tmpfs would stay empty", None);
            }
            let size = match f.get("size") {
                Some(s) => ctx.bytes(s, &format!("{field}.size")).and_then(|b| match check_tmpfs_size(b) {
                    Ok(()) => Some(b),
                    Err(msg) => {
                        ctx.err(s, &format!("{field}.size"), msg, None);
                        None
                    }
                }),
                None => Some(DEFAULT_TMPFS_SIZE),
            };
            path_of(ctx, n, "tmpfs").zip(size).map(|(mount_path, size)| VolumeMount { source: MountSource::Tmpfs(size), mount_path, read_only: false })
        };
        let Some(mount) = mount else { continue };
        if out.iter().any(|o| o.mount_path == mount.mount_path) {
            ctx.err(item, &field, format!("{} is mounted twice", mount.mount_path), Some("give each mount its own mountPath".into()));
            continue;
        }
        out.push(mount);
    }
    out
}
