//! add-ca: a rootfs-patch plugin that trusts an extra CA inside every sandbox and leaves a
//! motd. Config: `ca-pem` (the certificate, PEM), `message` (motd text, optional).
//! The certificate is appended to the bundles Debian/Alpine (`/etc/ssl/certs/ca-certificates.crt`)
//! and Fedora (`/etc/pki/tls/certs/ca-bundle.crt`) read, and kept as its own file.

use orchestrator_plugin_sdk::rootfs_patch::{self, AppendFile, ImageInfo, MakeDir, Operation, SandboxInfo, WriteFile};
use std::collections::BTreeMap;

pub fn operations(config: &BTreeMap<String, String>, sandbox: &str) -> Result<Vec<Operation>, String> {
    let mut ops = Vec::new();
    if let Some(pem) = config.get("ca-pem") {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err("config ca-pem is not a PEM certificate".into());
        }
        let mut pem = pem.clone();
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        ops.push(Operation::Mkdir(MakeDir { path: "/usr/local/share/ca-certificates".into(), mode: 0o755 }));
        ops.push(Operation::Write(WriteFile { path: "/usr/local/share/ca-certificates/orchestrator.crt".into(), contents: pem.clone().into_bytes(), mode: 0o644 }));
        for bundle in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
            ops.push(Operation::Append(AppendFile { path: bundle.into(), contents: pem.clone().into_bytes() }));
        }
    }
    let message = config.get("message").cloned().unwrap_or_else(|| format!("sandbox {sandbox}, managed by orchestrator\n"));
    ops.push(Operation::Write(WriteFile { path: "/etc/motd".into(), contents: message.into_bytes(), mode: 0o644 }));
    Ok(ops)
}

struct AddCa;

impl rootfs_patch::Guest for AddCa {
    fn patch(sandbox: SandboxInfo, _image: ImageInfo) -> Result<Vec<Operation>, String> {
        operations(&orchestrator_plugin_sdk::config(), &sandbox.name)
    }
}

orchestrator_plugin_sdk::export_rootfs_patch!(AddCa);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_installed_and_bundles_extended() {
        let config: BTreeMap<String, String> = [("ca-pem".to_string(), "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----".to_string())].into();
        let ops = operations(&config, "sb").unwrap();
        assert_eq!(ops.len(), 5);
        assert!(matches!(&ops[2], Operation::Append(a) if a.path == "/etc/ssl/certs/ca-certificates.crt" && a.contents.ends_with(b"-----\n")));
        assert!(matches!(&ops[4], Operation::Write(w) if w.contents == b"sandbox sb, managed by orchestrator\n"));
    }

    #[test]
    fn garbage_is_refused() {
        let config: BTreeMap<String, String> = [("ca-pem".to_string(), "hello".to_string())].into();
        assert!(operations(&config, "sb").is_err());
    }
}
