//! Pulling from registries with the `oci-client` crate: references as Docker writes them,
//! multi-arch indexes resolved to this host's platform, anonymous or basic auth (Docker's
//! config.json, or the configured credentials), TLS always except for the registries the
//! configuration lists as insecure (loopback too: never silently).
//! Layer blobs download concurrently, each verified against its digest as it streams to disk.

use super::install::{install, Pending};
use super::oci::Manifest;
use super::store::{ImageRecord, ImageStore};
use crate::ids::hex;
use super::ImageError;
use crate::config::RegistryConfig;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::io::Write;

/// Reports download progress: (layer digest, bytes so far, total if known).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, Option<u64>) + Sync);

/// Credentials for a registry: the configured ones first, then Docker's config.json; else
/// anonymous.
fn auth_for(config: &RegistryConfig, registry: &str) -> RegistryAuth {
    if let Some(c) = &config.credentials {
        return RegistryAuth::Basic(c.username.clone(), c.password.clone());
    }
    let auths = config
        .docker_config
        .as_ref()
        .map(|d| d.join("config.json"))
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("auths").cloned());
    let candidates = [registry.to_string(), format!("https://{registry}"), format!("https://{registry}/v1/")];
    for key in candidates {
        if let Some(encoded) = auths.as_ref().and_then(|a| a.get(&key)).and_then(|e| e.get("auth")).and_then(|v| v.as_str()) {
            use base64::Engine;
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) {
                if let Some((u, p)) = String::from_utf8_lossy(&decoded).split_once(':') {
                    return RegistryAuth::Basic(u.to_string(), p.to_string());
                }
            }
        }
    }
    RegistryAuth::Anonymous
}

fn registry_error(reference: &str, e: impl std::fmt::Display) -> ImageError {
    let text = e.to_string();
    if text.contains("Invalid digest") {
        return ImageError::Registry(format!("{reference}: content does not match its digest ({text}); nothing was kept"));
    }
    let hint = if text.contains("error sending request") || text.contains("onnect") {
        " (is the registry up and reachable? a plain-HTTP registry must be listed with --insecure-registry or ORCHESTRATOR_INSECURE_REGISTRIES)"
    } else if text.contains("manifest unknown") || text.contains("not found") || text.contains("404") {
        " (no such image or tag in that registry)"
    } else {
        ""
    };
    ImageError::Registry(format!("{reference}: {text}{hint}"))
}

async fn download(client: &Client, r: &Reference, store: &ImageStore, layer: &oci_client::manifest::OciDescriptor, progress: Progress<'_>) -> Result<(), ImageError> {
    let digest = layer.digest.as_str();
    let final_path = store.blob_path(digest)?;
    let _lock = store.lock(digest)?;
    if final_path.exists() {
        return Ok(());
    }
    let mut stream = client.pull_blob_stream(r, layer).await.map_err(|e| registry_error(&r.whole(), e))?;
    let total = stream.content_length.or(u64::try_from(layer.size).ok());
    let tmp = final_path.with_file_name(format!("{}.partial", final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| ImageError::Store(format!("{}: {e}", tmp.display())))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while let Some(chunk) = stream.stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(registry_error(&r.whole(), e));
            }
        };
        hasher.update(&chunk);
        if let Err(e) = file.write_all(&chunk) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::Store(format!("writing {}: {e}", tmp.display())));
        }
        done += chunk.len() as u64;
        crate::telemetry::get().pulled(chunk.len() as u64);
        progress(digest, done, total);
    }
    let got = format!("sha256:{}", hex(&hasher.finalize()));
    if got != digest {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::DigestMismatch { expected: digest.to_string(), got });
    }
    std::fs::rename(&tmp, &final_path).map_err(|e| ImageError::Store(format!("storing {digest}: {e}")))
}

pub fn pull(store: &ImageStore, config: &RegistryConfig, reference: &str, progress: Progress<'_>) -> Result<ImageRecord, ImageError> {
    let r: Reference = reference.parse().map_err(|e| ImageError::Invalid(format!("{reference:?} is not an image reference: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ImageError::Store(format!("starting the download runtime: {e}")))?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(config.insecure.clone()),
        platform_resolver: Some(Box::new(oci_client::client::current_platform_resolver)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        ..Default::default()
    });
    let auth = auth_for(config, r.resolve_registry());
    let (oci_manifest, manifest_digest, config_bytes) = runtime.block_on(async {
        let (m, digest) = client.pull_image_manifest(&r, &auth).await.map_err(|e| registry_error(reference, e))?;
        let mut config = Vec::new();
        client.pull_blob(&r, &m.config, &mut config).await.map_err(|e| registry_error(reference, e))?;
        Ok::<_, ImageError>((m, digest, config))
    })?;
    let manifest: Manifest = serde_json::to_value(&oci_manifest)
        .and_then(serde_json::from_value)
        .map_err(|e| ImageError::Invalid(format!("{reference}: manifest: {e}")))?;
    let config: super::oci::ConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::Invalid(format!("{reference}: image config: {e}")))?;
    // Download what is neither unpacked nor stored, all layers at once.
    let mut wanted: Vec<&oci_client::manifest::OciDescriptor> = oci_manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .filter(|(l, d)| !store.has_layer(d) && !store.blob_path(&l.digest).map(|p| p.exists()).unwrap_or(false))
        .map(|(l, _)| l)
        .collect();
    // One download per blob (a digest's lock is not re-entrant within this process).
    wanted.sort_by(|a, b| a.digest.cmp(&b.digest));
    wanted.dedup_by(|a, b| a.digest == b.digest);
    runtime.block_on(async {
        let downloads = wanted.iter().map(|l| download(&client, &r, store, l, progress));
        futures_util::future::try_join_all(downloads).await
    })?;
    install(store, Pending { reference, manifest_digest, manifest, config_bytes }, &|d| store.blob_path(&d.digest))
}
