//! Images: turn a sandbox's `image` reference into read-only root filesystem layers and the
//! image's process defaults. Sources: `dir:PATH` (a rootfs used in place), registries
//! (`alpine:3.20`, `host:port/name@sha256:...`), `oci-layout:DIR[:TAG]` and
//! `oci-archive:FILE[:TAG]`. Everything but `dir:` goes through the content-addressed store.

pub mod disk;
pub mod install;
pub mod layout;
pub mod oci;
pub mod registry;
pub mod store;
pub mod unpack;

use crate::config::RegistryConfig;
use crate::spec::SandboxSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
pub use store::{ImageRecord, ImageStore};

/// Process defaults an image carries (Docker's Entrypoint/Cmd/Env/WorkingDir/User).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// Read-only layers, topmost first (overlayfs `lowerdir` order).
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    /// The manifest digest, for store-backed images.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {reference:?}: {message}")]
    Unavailable { reference: String, message: String },
    #[error("unsupported image reference {0:?}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("image store: {0}")]
    Store(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("content does not match its digest: expected {expected}, got {got}; nothing was kept")]
    DigestMismatch { expected: String, got: String },
    #[error("layer {diff_id}")]
    Layer { diff_id: String, source: unpack::UnpackError },
    #[error("image {0:?} is not in the local store and pullPolicy is Never; pull it first (`orchestrator image pull {0}`)")]
    NotPresent(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

/// A store-backed image source: fetches `reference` into the store.
pub trait ImageSource {
    fn handles(&self, reference: &str) -> bool;
    fn fetch(&self, store: &ImageStore, registries: &RegistryConfig, reference: &str, progress: registry::Progress<'_>) -> Result<ImageRecord, ImageError>;
}

struct RegistrySource;
struct LayoutSource;
struct ArchiveSource;

impl ImageSource for RegistrySource {
    fn handles(&self, reference: &str) -> bool {
        !reference.starts_with(['/', '.']) && !["dir:", "oci-layout:", "oci-archive:"].iter().any(|p| reference.starts_with(p))
    }
    fn fetch(&self, store: &ImageStore, registries: &RegistryConfig, reference: &str, progress: registry::Progress<'_>) -> Result<ImageRecord, ImageError> {
        registry::pull(store, registries, reference, progress)
    }
}

impl ImageSource for LayoutSource {
    fn handles(&self, reference: &str) -> bool {
        reference.starts_with("oci-layout:")
    }
    fn fetch(&self, store: &ImageStore, _registries: &RegistryConfig, reference: &str, _progress: registry::Progress<'_>) -> Result<ImageRecord, ImageError> {
        let (dir, tag) = layout::split_tag(&reference["oci-layout:".len()..]);
        layout::import_layout(store, reference, &dir, tag.as_deref())
    }
}

impl ImageSource for ArchiveSource {
    fn handles(&self, reference: &str) -> bool {
        reference.starts_with("oci-archive:")
    }
    fn fetch(&self, store: &ImageStore, _registries: &RegistryConfig, reference: &str, _progress: registry::Progress<'_>) -> Result<ImageRecord, ImageError> {
        let (file, tag) = layout::split_tag(&reference["oci-archive:".len()..]);
        layout::import_archive(store, reference, &file, tag.as_deref())
    }
}

/// The canonical form of a registry reference (`alpine` -> `docker.io/library/alpine:latest`);
/// other references are returned as they are.
pub fn canonical(reference: &str) -> String {
    if reference.starts_with("dir:") || reference.starts_with("oci-layout:") || reference.starts_with("oci-archive:") {
        return reference.to_string();
    }
    reference.parse::<oci_client::Reference>().map(|r| r.whole()).unwrap_or_else(|_| reference.to_string())
}

fn no_progress(_: &str, _: u64, _: Option<u64>) {}

/// Fetches (always) a store-backed image into the store.
pub fn pull(store: &ImageStore, registries: &RegistryConfig, reference: &str, progress: registry::Progress<'_>) -> Result<ImageRecord, ImageError> {
    let reference = canonical(reference);
    let sources: [&dyn ImageSource; 3] = [&LayoutSource, &ArchiveSource, &RegistrySource];
    match sources.iter().find(|s| s.handles(&reference)) {
        Some(s) => s.fetch(store, registries, &reference, progress),
        None => Err(ImageError::Unsupported(reference)),
    }
}

/// Layers and defaults for a sandbox's image, fetching it as `policy` says. The store under
/// `data_root` is only opened for store-backed references (`dir:` stays on the fast path).
pub fn resolve(data_root: &std::path::Path, registries: &RegistryConfig, reference: &str, policy: PullPolicy) -> Result<ResolvedImage, ImageError> {
    if let Some(path) = reference.strip_prefix("dir:") {
        let path = PathBuf::from(path);
        if !path.is_dir() {
            return Err(ImageError::Unavailable { reference: reference.into(), message: format!("{} is not a directory", path.display()) });
        }
        return Ok(ResolvedImage { layers: vec![path], config: ImageConfig::default(), digest: None });
    }
    let store = ImageStore::open(data_root)?;
    let key = canonical(reference);
    let record = match (policy, store.record(&key)) {
        (PullPolicy::Always, _) => pull(&store, registries, &key, &no_progress)?,
        (_, Some(r)) => r,
        (PullPolicy::Never, None) => return Err(ImageError::NotPresent(key)),
        (PullPolicy::IfNotPresent, None) => pull(&store, registries, &key, &no_progress)?,
    };
    store.resolved(&record)
}

/// The sandbox spec with the image's defaults filled in, as Docker applies them: the spec's
/// `command` replaces Entrypoint and Cmd (Kubernetes' `command`); without one, Entrypoint + Cmd
/// run; image Env comes first and the spec's overrides it; WorkingDir and User apply unless the
/// spec sets its own. An empty `command` (the library's default) means no main process at all,
/// not even the image's.
pub fn apply_defaults(spec: &SandboxSpec, image: &ImageConfig) -> SandboxSpec {
    let mut out = spec.clone();
    match &out.command {
        None => {
            let argv: Vec<String> = image.entrypoint.iter().chain(image.cmd.iter()).cloned().collect();
            if !argv.is_empty() {
                out.command = Some(argv);
            }
        }
        Some(argv) if argv.is_empty() => out.command = None,
        Some(_) => {}
    }
    let mut env = image.env.clone();
    env.extend(spec.env.clone());
    out.env = env;
    out.workdir = spec.workdir.clone().or_else(|| image.workdir.clone());
    out.user = spec.user.clone().or_else(|| image.user.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        let image = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: [("PATH".into(), "/opt/bin:/bin".into()), ("MODE".into(), "image".into())].into(),
            workdir: Some("/app".into()),
            user: Some("app".into()),
        };
        let mut spec = SandboxSpec::new("x".into());
        spec.env.insert("MODE".into(), "spec".into());
        let eff = apply_defaults(&spec, &image);
        assert_eq!(eff.command.unwrap(), ["/entry", "serve"]);
        assert_eq!(eff.env["MODE"], "spec");
        assert_eq!(eff.env["PATH"], "/opt/bin:/bin");
        assert_eq!((eff.workdir.as_deref(), eff.user.as_deref()), (Some("/app"), Some("app")));
        spec.command = Some(Vec::new());
        assert_eq!(apply_defaults(&spec, &image).command, None, "no main process, not the image's");
        spec.command = Some(vec!["sh".into()]);
        spec.workdir = Some("/w".into());
        let eff = apply_defaults(&spec, &image);
        assert_eq!(eff.command.unwrap(), ["sh"]);
        assert_eq!(eff.workdir.as_deref(), Some("/w"));
    }

    #[test]
    fn references_are_canonical() {
        assert_eq!(canonical("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(canonical("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000/busybox:1");
        assert_eq!(canonical("oci-layout:/x:y"), "oci-layout:/x:y");
    }
}
