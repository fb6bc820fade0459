//! Image sources: turn a sandbox's `image` reference into read-only root filesystem layers and
//! the image's default process settings. `dir:` is the only source today; registries,
//! `oci-layout:` and `oci-archive:` plug in as further `ImageSource` implementations.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Process defaults an image carries (Docker's Entrypoint/Cmd/Env/WorkingDir/User).
#[derive(Debug, Clone, Default, PartialEq)]
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
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {reference:?}: {message}")]
    Unavailable { reference: String, message: String },
    #[error("unsupported image reference {0:?} (this version runs `dir:PATH` root filesystems)")]
    Unsupported(String),
}

pub trait ImageSource {
    /// Whether this source handles `reference`.
    fn handles(&self, reference: &str) -> bool;
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError>;
}

/// A root filesystem directory used in place, read-only, as the single lower layer.
pub struct DirSource;

impl ImageSource for DirSource {
    fn handles(&self, reference: &str) -> bool {
        reference.starts_with("dir:")
    }

    fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let path = PathBuf::from(reference.trim_start_matches("dir:"));
        if !path.is_dir() {
            return Err(ImageError::Unavailable {
                reference: reference.into(),
                message: format!("{} is not a directory", path.display()),
            });
        }
        Ok(ResolvedImage { layers: vec![path], config: ImageConfig::default() })
    }
}

pub fn resolve(reference: &str) -> Result<ResolvedImage, ImageError> {
    let sources: [&dyn ImageSource; 1] = [&DirSource];
    match sources.iter().find(|s| s.handles(reference)) {
        Some(s) => s.resolve(reference),
        None => Err(ImageError::Unsupported(reference.into())),
    }
}
