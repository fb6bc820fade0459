//! The OCI and Docker JSON an image author (or a registry) hands us: index, manifest and
//! config, with platform selection and the process defaults. Invariants: no panic; platform
//! selection only ever returns a descriptor the index lists; process defaults hold only
//! entries the image wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator::image::oci::{is_index, select_platform, ConfigFile, Index, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = is_index(value.get("mediaType").and_then(|m| m.as_str()), &value);
    }
    if let Ok(index) = serde_json::from_slice::<Index>(data) {
        if let Ok(d) = select_platform(&index, "fuzz") {
            assert!(index.manifests.iter().any(|m| std::ptr::eq(m, d)));
        }
    }
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = orchestrator::image::store::digest_hex(&m.config.digest);
        for l in &m.layers {
            let _ = orchestrator::image::store::digest_hex(&l.digest);
        }
    }
    if let Ok(config) = serde_json::from_slice::<ConfigFile>(data) {
        let defaults = config.image_config();
        let raw = config.config.and_then(|c| c.env).unwrap_or_default();
        for (k, v) in &defaults.env {
            assert!(raw.contains(&format!("{k}={v}")), "{k}={v} is not one of the image's entries");
        }
    }
});
