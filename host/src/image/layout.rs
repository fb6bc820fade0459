//! Images from an OCI image layout directory (`oci-layout:DIR[:TAG]`) or an archive of one
//! (`oci-archive:FILE[:TAG]`), as skopeo, buildah and umoci write them. Every blob read from the
//! layout is verified against its digest on its way into the store.

use super::install::{install, Pending};
use super::oci::{is_index, select_platform, Descriptor, Index, Manifest};
use super::store::{digest_hex, sha256_digest, ImageRecord, ImageStore};
use super::ImageError;
use std::path::{Path, PathBuf};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Splits `PATH[:TAG]`: the tag is whatever follows the last `:` when PATH alone exists.
pub fn split_tag(spec: &str) -> (PathBuf, Option<String>) {
    if Path::new(spec).exists() {
        return (PathBuf::from(spec), None);
    }
    match spec.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && Path::new(path).exists() => (PathBuf::from(path), Some(tag.to_string())),
        _ => (PathBuf::from(spec), None),
    }
}

fn blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let path = dir.join("blobs/sha256").join(digest_hex(digest)?);
    let bytes = std::fs::read(&path).map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))?;
    let got = sha256_digest(&bytes);
    if got != digest {
        return Err(ImageError::DigestMismatch { expected: digest.to_string(), got });
    }
    Ok(bytes)
}

pub fn import_layout(store: &ImageStore, reference: &str, dir: &Path, tag: Option<&str>) -> Result<ImageRecord, ImageError> {
    let index_path = dir.join("index.json");
    let index: Index = serde_json::from_slice(
        &std::fs::read(&index_path).map_err(|e| ImageError::Invalid(format!("{}: {e} (not an OCI image layout?)", index_path.display())))?,
    )
    .map_err(|e| ImageError::Invalid(format!("{}: {e}", index_path.display())))?;
    let chosen: &Descriptor = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .ok_or_else(|| ImageError::Invalid(format!("{}: no image tagged {t:?}", dir.display())))?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => return Err(ImageError::Invalid(format!("{} holds several images; name one with :TAG", dir.display()))),
    };
    let mut digest = chosen.digest.clone();
    let mut bytes = blob(dir, &digest)?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid(format!("manifest {digest}: {e}")))?;
    if is_index(Some(chosen.media_type.as_str()), &json) {
        let nested: Index = serde_json::from_value(json).map_err(|e| ImageError::Invalid(format!("index {digest}: {e}")))?;
        digest = select_platform(&nested, reference)?.digest.clone();
        bytes = blob(dir, &digest)?;
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid(format!("manifest {digest}: {e}")))?;
    let config_bytes = blob(dir, &manifest.config.digest)?;
    store.put_blob(&digest, &bytes[..])?;
    let layout = dir.to_path_buf();
    let blob_for = move |d: &Descriptor| -> Result<PathBuf, ImageError> {
        let src = layout.join("blobs/sha256").join(digest_hex(&d.digest)?);
        let file = std::fs::File::open(&src).map_err(|e| ImageError::Invalid(format!("{}: {e}", src.display())))?;
        store.put_blob(&d.digest, file)
    };
    install(store, Pending { reference, manifest_digest: digest, manifest, config_bytes }, &blob_for)
}

pub fn import_archive(store: &ImageStore, reference: &str, file: &Path, tag: Option<&str>) -> Result<ImageRecord, ImageError> {
    let tmp = store.scratch_dir("archive")?;
    let result = (|| {
        let f = std::fs::File::open(file).map_err(|e| ImageError::Invalid(format!("{}: {e}", file.display())))?;
        super::unpack::unpack(std::io::BufReader::new(f), &tmp).map_err(|e| ImageError::Invalid(format!("{}: {e}", file.display())))?;
        import_layout(store, reference, &tmp, tag)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
