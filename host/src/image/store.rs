//! The content-addressed image store under `DATA/images`:
//!
//! - `blobs/sha256/HEX`: manifests, configs and compressed layers, verified against their digest;
//! - `layers/sha256/HEX/`: each layer unpacked once, keyed by its diff_id, shared by all images;
//! - `refs/KEY.json`: what a reference (a tag, a digest, a layout) resolved to;
//! - `tmp/` and `locks/`: work in progress and per-digest locks.
//!
//! Invariants: a blob or layer appears under its final name only complete and verified (written
//! in `tmp/`, checked, renamed); one flock per digest makes concurrent pulls of the same content
//! do the work once; anything left in `tmp/` by an interrupted pull is never read and is removed
//! by `prune`.

use super::unpack::{unpack, UnpackError};
use super::{ImageConfig, ImageError, ResolvedImage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// What a reference resolved to, as recorded in `refs/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Uncompressed layer digests, bottom first (as in the image config).
    pub diff_ids: Vec<String>,
    /// Compressed layer blob digests, in the same order.
    pub layer_digests: Vec<String>,
    /// Compressed size of all layers.
    pub size: u64,
    pub config: ImageConfig,
    pub pulled_at: String,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

use crate::ids::{hex, random_hex};

/// The `sha256:HEX` digest of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// `sha256:HEX` -> `HEX`, refusing anything else (a digest names a file: it must be safe).
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| ImageError::Invalid(format!("unsupported digest {digest:?} (sha256 only)")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(ImageError::Invalid(format!("malformed digest {digest:?}")));
    }
    Ok(hex)
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), bytes: 0 }
    }
    pub fn digest(self) -> String {
        format!("sha256:{}", hex(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> ImageError {
    move |e| ImageError::Store(format!("{what}: {e}"))
}

impl ImageStore {
    pub fn open(data_root: &Path) -> Result<ImageStore, ImageError> {
        let root = data_root.join("images");
        for d in ["blobs/sha256", "layers/sha256", "refs", "tmp", "locks"] {
            fs::create_dir_all(root.join(d)).map_err(io(format!("creating {}", root.join(d).display())))?;
        }
        Ok(ImageStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers/sha256").join(digest_hex(diff_id)?))
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_path(diff_id).map(|p| p.is_dir()).unwrap_or(false)
    }

    fn tmp_path(&self, tag: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{tag}-{}", random_hex(8)))
    }

    /// A fresh, empty working directory under tmp/ (the caller removes it).
    pub fn scratch_dir(&self, tag: &str) -> Result<PathBuf, ImageError> {
        let p = self.tmp_path(tag);
        fs::create_dir(&p).map_err(io(format!("creating {}", p.display())))?;
        Ok(p)
    }

    /// Holds the lock of one digest for the life of the returned file.
    pub fn lock(&self, digest: &str) -> Result<fs::File, ImageError> {
        let path = self.root.join("locks").join(digest_hex(digest)?);
        crate::paths::lock(&path).map_err(io(format!("locking {digest}")))
    }

    /// Stores a blob from `reader`, verifying its digest; a mismatch keeps nothing.
    pub fn put_blob(&self, digest: &str, reader: impl Read) -> Result<PathBuf, ImageError> {
        let final_path = self.blob_path(digest)?;
        if final_path.exists() {
            return Ok(final_path);
        }
        let tmp = self.tmp_path("blob");
        let mut hashing = HashingReader::new(reader);
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            io::copy(&mut hashing, &mut f)?;
            f.flush()?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::Store(format!("writing blob {digest}: {e}")));
        }
        let got = hashing.digest();
        if got != digest {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::DigestMismatch { expected: digest.into(), got });
        }
        fs::rename(&tmp, &final_path).map_err(io(format!("storing blob {digest}")))?;
        Ok(final_path)
    }

    /// Unpacks a stored layer blob once per diff_id (verified against the config's diff_id).
    pub fn unpack_layer(&self, blob: &Path, media_type: &str, diff_id: &str) -> Result<PathBuf, ImageError> {
        let final_path = self.layer_path(diff_id)?;
        let _lock = self.lock(diff_id)?;
        if final_path.is_dir() {
            return Ok(final_path);
        }
        let file = fs::File::open(blob).map_err(io(format!("opening {}", blob.display())))?;
        let file = io::BufReader::with_capacity(256 * 1024, file);
        let decompressed: Box<dyn Read> = if media_type.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else if media_type.ends_with("zstd") {
            return Err(ImageError::Invalid(format!("layer {diff_id}: zstd-compressed layers are not supported yet")));
        } else {
            Box::new(file)
        };
        let mut hashing = HashingReader::new(decompressed);
        let tmp = self.tmp_path("layer");
        fs::create_dir(&tmp).map_err(io("creating a layer directory"))?;
        let outcome = unpack(&mut hashing, &tmp).and_then(|stats| {
            // The tar may end before the stream does (padding): hash everything.
            io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
            Ok(stats)
        });
        let stats = match outcome {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(ImageError::Layer { diff_id: diff_id.into(), source: e });
            }
        };
        let got = hashing.digest();
        if got != diff_id {
            let _ = fs::remove_dir_all(&tmp);
            return Err(ImageError::DigestMismatch { expected: diff_id.into(), got });
        }
        if stats.skipped_devices > 0 {
            tracing::warn!("layer {diff_id}: {} device node(s) not created", stats.skipped_devices);
        }
        fs::rename(&tmp, &final_path).map_err(io(format!("storing layer {diff_id}")))?;
        Ok(final_path)
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(reference.as_bytes());
        self.root.join("refs").join(format!("{}.json", &hex(&h.finalize())[..32]))
    }

    pub fn record(&self, reference: &str) -> Option<ImageRecord> {
        let r: ImageRecord = serde_json::from_slice(&fs::read(self.ref_path(reference)).ok()?).ok()?;
        // Only usable when every layer is still here.
        (r.reference == reference && r.diff_ids.iter().all(|d| self.has_layer(d))).then_some(r)
    }

    pub fn save_record(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| ImageError::Store(e.to_string()))?;
        crate::paths::write_atomic(&self.ref_path(&record.reference), &json).map_err(io("saving the image record"))
    }

    pub fn records(&self) -> Vec<ImageRecord> {
        let mut out: Vec<ImageRecord> = fs::read_dir(self.root.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json") && !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        out
    }

    pub fn remove_record(&self, reference: &str) -> bool {
        fs::remove_file(self.ref_path(reference)).is_ok()
    }

    /// The resolved image for a record: layers topmost first, for overlayfs. A layer listed
    /// twice is kept at its topmost place only: overlayfs refuses one directory twice, and the
    /// top copy's files and whiteouts already cover all the lower copy did.
    pub fn resolved(&self, record: &ImageRecord) -> Result<ResolvedImage, ImageError> {
        let mut layers: Vec<PathBuf> = Vec::new();
        for d in record.diff_ids.iter().rev() {
            let p = self.layer_path(d)?;
            if !layers.contains(&p) {
                layers.push(p);
            }
        }
        Ok(ResolvedImage { layers, config: record.config.clone(), digest: Some(record.manifest_digest.clone()) })
    }

    /// Removes layers and blobs no record references and none of `in_use` (layer directories
    /// running sandboxes sit on), and everything in tmp/. Returns (layers, blobs) removed.
    pub fn prune(&self, in_use: &[PathBuf]) -> Result<(usize, usize), ImageError> {
        let records = self.records();
        let keep_layers: Vec<PathBuf> = records.iter().flat_map(|r| r.diff_ids.iter().filter_map(|d| self.layer_path(d).ok())).chain(in_use.iter().cloned()).collect();
        let mut removed = (0, 0);
        for e in fs::read_dir(self.root.join("layers/sha256")).into_iter().flatten().flatten() {
            if !keep_layers.contains(&e.path()) && fs::remove_dir_all(e.path()).is_ok() {
                removed.0 += 1;
            }
        }
        let keep_blobs: Vec<String> = records
            .iter()
            .flat_map(|r| [r.manifest_digest.clone(), r.config_digest.clone()].into_iter().chain(r.layer_digests.iter().cloned()))
            .filter_map(|d| digest_hex(&d).ok().map(String::from))
            .collect();
        for e in fs::read_dir(self.root.join("blobs/sha256")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) && fs::remove_file(e.path()).is_ok() {
                removed.1 += 1;
            }
        }
        let keep_disks: Vec<String> = records.iter().filter_map(|r| digest_hex(&r.manifest_digest).ok().map(|h| format!("{h}.erofs"))).collect();
        for e in fs::read_dir(self.root.join("disks")).into_iter().flatten().flatten() {
            if !keep_disks.contains(&e.file_name().to_string_lossy().into_owned()) {
                let _ = fs::remove_file(e.path());
            }
        }
        for e in fs::read_dir(self.root.join("tmp")).into_iter().flatten().flatten() {
            let _ = if e.path().is_dir() { fs::remove_dir_all(e.path()) } else { fs::remove_file(e.path()) };
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_listed_twice_is_kept_at_its_topmost_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let record = ImageRecord {
            reference: "x".into(),
            manifest_digest: d('0'),
            config_digest: d('1'),
            diff_ids: vec![d('a'), d('b'), d('a'), d('c')],
            layer_digests: vec![],
            size: 0,
            config: Default::default(),
            pulled_at: String::new(),
        };
        let names: Vec<String> = store.resolved(&record).unwrap().layers.iter().map(|p| p.file_name().unwrap().to_string_lossy()[..1].to_string()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }

    #[test]
    fn digests_that_are_not_sha256_hex_are_refused() {
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex("md5:abc").is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
