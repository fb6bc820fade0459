//! The OCI (and Docker v2) JSON documents an image consists of, as far as pulling and running
//! need them, plus platform selection in an index and the image config's process defaults.

use super::{ImageConfig, ImageError};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub config: Option<ProcessConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

/// The platform this host runs, in OCI terms.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

/// Picks the manifest for this host from an index.
pub fn select_platform<'a>(index: &'a Index, what: &str) -> Result<&'a Descriptor, ImageError> {
    let (os, arch) = host_platform();
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch))
        .ok_or_else(|| {
            let offered: Vec<String> =
                index.manifests.iter().filter_map(|d| d.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture))).collect();
            ImageError::Invalid(format!("{what} has no {os}/{arch} image (it offers: {})", offered.join(", ")))
        })
}

pub fn is_index(media_type: Option<&str>, json: &serde_json::Value) -> bool {
    matches!(media_type, Some(MEDIA_INDEX) | Some(MEDIA_DOCKER_LIST)) || (json.get("manifests").is_some() && json.get("layers").is_none())
}

impl ConfigFile {
    /// Docker's process defaults from the image config.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c
                .env
                .unwrap_or_default()
                .iter()
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
            workdir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
        }
    }
}
