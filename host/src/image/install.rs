//! The step every image source ends with: verify and store the config, unpack the layers this
//! store does not have yet (in parallel, each once), and record what the reference resolved to.

use super::oci::{ConfigFile, Descriptor, Manifest};
use super::store::{sha256_digest, ImageRecord, ImageStore};
use super::ImageError;
use std::path::PathBuf;

pub struct Pending<'a> {
    pub reference: &'a str,
    pub manifest_digest: String,
    pub manifest: Manifest,
    pub config_bytes: Vec<u8>,
}

/// `blob_for` returns the local path of a layer blob (fetching it if the source must).
pub fn install(
    store: &ImageStore,
    p: Pending<'_>,
    blob_for: &(dyn Fn(&Descriptor) -> Result<PathBuf, ImageError> + Sync),
) -> Result<ImageRecord, ImageError> {
    let got = sha256_digest(&p.config_bytes);
    if got != p.manifest.config.digest {
        return Err(ImageError::DigestMismatch { expected: p.manifest.config.digest.clone(), got });
    }
    store.put_blob(&p.manifest.config.digest, &p.config_bytes[..])?;
    let config: ConfigFile = serde_json::from_slice(&p.config_bytes)
        .map_err(|e| ImageError::Invalid(format!("{}: image config is not valid: {e}", p.reference)))?;
    if config.rootfs.diff_ids.len() != p.manifest.layers.len() {
        return Err(ImageError::Invalid(format!(
            "{}: the manifest lists {} layers but the config {}",
            p.reference,
            p.manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let missing: Vec<(&Descriptor, &String)> =
        p.manifest.layers.iter().zip(&config.rootfs.diff_ids).filter(|(_, d)| !store.has_layer(d)).collect();
    // Layers unpack into separate directories: do them side by side.
    let results: Vec<Result<PathBuf, ImageError>> = std::thread::scope(|s| {
        let handles: Vec<_> = missing
            .iter()
            .map(|(desc, diff_id)| s.spawn(move || store.unpack_layer(&blob_for(desc)?, &desc.media_type, diff_id)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(ImageError::Store("a layer unpack panicked".into())))).collect()
    });
    for r in results {
        r?;
    }
    let record = ImageRecord {
        reference: p.reference.to_string(),
        manifest_digest: p.manifest_digest,
        config_digest: p.manifest.config.digest.clone(),
        diff_ids: config.rootfs.diff_ids.clone(),
        layer_digests: p.manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        size: p.manifest.layers.iter().map(|l| l.size.max(0) as u64).sum(),
        config: config.image_config(),
        pulled_at: crate::store::now(),
    };
    store.save_record(&record)?;
    Ok(record)
}
