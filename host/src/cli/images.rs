//! `orchestrator image pull|ls|inspect|rm|prune|import`.

use crate::image::oci::host_platform;
use crate::image::store::{sha256_digest, ImageStore};
use crate::image::{self, canonical, install};
use crate::reconcile::Orchestrator;
use crate::spec::quantity::human_bytes as format_bytes;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Fetch images into the local store (registry, oci-layout:DIR[:TAG], oci-archive:FILE[:TAG]).
    Pull {
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// List local images.
    Ls {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: super::Format,
    },
    /// Show what a local image resolved to: digests, layers, process defaults.
    Inspect { reference: String },
    /// Forget local image references (layers go with `prune`).
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove layers and blobs no image reference or sandbox uses.
    Prune,
    /// Make a local image from a root filesystem directory or tarball.
    Import { source: PathBuf, tag: String },
    /// Build (once) and print the read-only EROFS disk of a local image, for microVMs.
    Disk { reference: String },
}

fn store(orch: &Orchestrator) -> Result<ImageStore> {
    Ok(ImageStore::open(orch.data.root())?)
}

/// Per-layer progress bars on a terminal; a plain line per finished layer otherwise.
struct Bars {
    quiet: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        let multi = (!quiet && std::io::stderr().is_terminal()).then(MultiProgress::new);
        Bars { quiet, multi, bars: Mutex::new(HashMap::new()) }
    }

    fn update(&self, digest: &str, done: u64, total: Option<u64>) {
        let Some(multi) = &self.multi else {
            if !self.quiet && total == Some(done) {
                eprintln!("layer {digest}: {} downloaded", format_bytes(done));
            }
            return;
        };
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(digest.to_string()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(total.unwrap_or(0)));
            if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}") {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(digest.chars().skip(7).take(12).collect::<String>());
            b
        });
        bar.set_position(done);
        if total == Some(done) {
            bar.finish();
        }
    }
}

pub fn run(orch: &Orchestrator, cmd: ImageCommand) -> Result<i32> {
    let store = store(orch)?;
    match cmd {
        ImageCommand::Pull { quiet, references } => {
            for reference in references {
                let started = Instant::now();
                let bars = Bars::new(quiet);
                let spec_ref = image_arg(&reference)?;
                let record = image::pull(&store, &orch.config.registries, &spec_ref, &|d, done, total| bars.update(d, done, total))
                    .with_context(|| format!("pulling {reference}"))?;
                if !quiet {
                    println!(
                        "{} {} ({} layers, {}) in {:.2}s",
                        record.reference,
                        record.manifest_digest,
                        record.diff_ids.len(),
                        format_bytes(record.size),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(0)
        }
        ImageCommand::Ls { output } => {
            let records = store.records();
            if output == super::Format::Json {
                let views: Vec<crate::view::ImageView> = records.iter().map(Into::into).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
                return Ok(0);
            }
            println!("{:<60} {:<20} {:>6} {:>10}", "REFERENCE", "DIGEST", "LAYERS", "SIZE");
            for r in records {
                println!("{:<60} {:<20} {:>6} {:>10}", r.reference, &r.manifest_digest[..19.min(r.manifest_digest.len())], r.diff_ids.len(), format_bytes(r.size));
            }
            Ok(0)
        }
        ImageCommand::Inspect { reference } => {
            let key = canonical(&image_arg(&reference)?);
            let r = store.record(&key).ok_or_else(|| anyhow!("no local image {key:?} (see `orchestrator image ls`)"))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(0)
        }
        ImageCommand::Rm { references } => {
            let mut code = 0;
            for reference in references {
                let key = canonical(&image_arg(&reference)?);
                if store.remove_record(&key) {
                    println!("{key} removed");
                } else {
                    eprintln!("error: no local image {key:?}");
                    code = 1;
                }
            }
            Ok(code)
        }
        ImageCommand::Prune => {
            let (layers, blobs) = store.prune(&layers_in_use(orch))?;
            println!("removed {layers} layer(s) and {blobs} blob(s)");
            Ok(0)
        }
        ImageCommand::Disk { reference } => {
            let key = canonical(&image_arg(&reference)?);
            let r = store.record(&key).ok_or_else(|| anyhow!("no local image {key:?} (pull it first)"))?;
            println!("{}", image::disk::image_disk(&store, &r)?.display());
            Ok(0)
        }
        ImageCommand::Import { source, tag } => {
            let key = canonical(&tag);
            let record = import(&store, &source, &key)?;
            println!("{} {} (1 layer, {})", record.reference, record.manifest_digest, format_bytes(record.size));
            Ok(0)
        }
    }
}

/// oci-layout/oci-archive paths relative to the current directory become absolute.
fn image_arg(reference: &str) -> Result<String> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    crate::spec::normalise_image(reference, &cwd).map_err(|(m, h)| anyhow!("{m}\n    hint: {h}"))
}

/// Layer directories that sandbox instances sit on (from their shim configs).
fn layers_in_use(orch: &Orchestrator) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for row in orch.store.sandboxes().unwrap_or_default() {
        if let Ok(cfg) = crate::shim::ShimConfig::load(orch.instance_dir(&row).path()) {
            out.extend(cfg.backend.lower_dirs().iter().map(PathBuf::from));
        }
    }
    out
}

/// One uncompressed layer from a directory (tarred) or a tarball (gzip or not), plus a config
/// and a manifest, installed like any other image.
fn import(store: &ImageStore, source: &Path, reference: &str) -> Result<image::ImageRecord> {
    let scratch = store.scratch_dir("import")?;
    let layer_tar = scratch.join("layer.tar");
    let result = (|| -> Result<image::ImageRecord> {
        if source.is_dir() {
            let f = std::fs::File::create(&layer_tar)?;
            let mut b = tar::Builder::new(f);
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Complete);
            b.append_dir_all(".", source).with_context(|| format!("archiving {}", source.display()))?;
            b.into_inner()?.flush()?;
        } else if source.is_file() {
            let mut input = std::fs::File::open(source)?;
            let mut magic = [0u8; 2];
            let gz = input.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
            let input = std::fs::File::open(source)?;
            let mut reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(input)) } else { Box::new(input) };
            std::io::copy(&mut reader, &mut std::fs::File::create(&layer_tar)?)?;
        } else {
            bail!("{}: neither a directory nor a file", source.display());
        }
        let bytes_len = std::fs::metadata(&layer_tar)?.len();
        let mut hashing = crate::image::store::HashingReader::new(std::fs::File::open(&layer_tar)?);
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        let layer_digest = hashing.digest();
        store.put_blob(&layer_digest, std::fs::File::open(&layer_tar)?)?;
        let (os, arch) = host_platform();
        let config = serde_json::json!({
            "architecture": arch, "os": os,
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = sha256_digest(&config_bytes);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": bytes_len}],
        });
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        let manifest_digest = sha256_digest(&manifest_bytes);
        store.put_blob(&manifest_digest, &manifest_bytes[..])?;
        let parsed: image::oci::Manifest = serde_json::from_slice(&manifest_bytes)?;
        let pending = install::Pending { reference, manifest_digest, manifest: parsed, config_bytes };
        Ok(install::install(store, pending, &|d| store.blob_path(&d.digest))?)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
