//! Installs the sandbox's interception CA (TLS interception in the shim) into the new root's
//! trust stores before anything runs: appended, between markers, to each distribution bundle
//! the image has (Debian/Ubuntu/Alpine, RHEL/Fedora, openSUSE), and written to two paths of
//! our own that the runtimes' variables point at (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
//! `CURL_CA_BUNDLE`: the bundle; `NODE_EXTRA_CA_CERTS`: the CA alone; the shim sets them).
//!
//! Invariants:
//! - Every path is resolved inside the root (`openat2(RESOLVE_IN_ROOT)`), the last component
//!   never followed: the image's symlinks cannot point a write outside it. A bundle that is a
//!   symlink is skipped (its target is another entry of the list, or not a bundle).
//! - Idempotent across restarts: a previous start's block (another CA: the key lives only in
//!   the shim that made it) is removed before the new one goes in, so a bundle holds at most one.
//! - Without a CA (interception off) a previous block is still removed: a CA whose key is gone
//!   must not stay trusted.

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

/// Distribution CA bundles, relative to the root.
pub const BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// The image's first bundle plus our CA: what `SSL_CERT_FILE` and friends name.
pub const OWN_BUNDLE: &str = "/etc/ssl/orchestrator/ca-bundle.pem";
/// Our CA alone (`NODE_EXTRA_CA_CERTS` adds it to node's built-in roots).
pub const OWN_CA: &str = "/etc/ssl/orchestrator/sandbox-ca.pem";

const BEGIN: &str = "# orchestrator: this sandbox's TLS interception CA (replaced at every start)\n";
const END: &str = "# end orchestrator\n";
/// A bundle larger than this is not a CA bundle.
const MAX_BUNDLE: u64 = 16 << 20;

/// Installs `ca_pem` (None: removes a previous start's CA) in the root mounted at `root`.
pub fn install(root: &Path, ca_pem: Option<&str>) -> Result<(), String> {
    let root_fd = crate::patch::open_root(root).map_err(|e| format!("opening the root: {e}"))?;
    // Every start runs this: without a CA to install and without our own file (written with
    // every block), no bundle holds a block, and none is read.
    if ca_pem.is_none() && crate::patch::resolve(&root_fd, OWN_CA, OFlag::O_PATH | OFlag::O_NOFOLLOW).is_err() {
        return Ok(());
    }
    let block = ca_pem.map(|pem| format!("{BEGIN}{}{}{END}", pem.trim_end(), "\n"));
    let mut first_bundle: Option<String> = None;
    for path in BUNDLES {
        let Some(text) = read(&root_fd, path)? else { continue };
        let clean = strip(&text);
        if first_bundle.is_none() {
            first_bundle = Some(clean.clone());
        }
        if clean.len() == text.len() && block.is_none() {
            continue;
        }
        let mut next = clean;
        if let Some(b) = &block {
            if !next.is_empty() && !next.ends_with('\n') {
                next.push('\n');
            }
            next.push_str(b);
        }
        write(&root_fd, path, &next)?;
    }
    let Some(block) = block else {
        for path in [OWN_BUNDLE, OWN_CA] {
            remove(&root_fd, path);
        }
        return Ok(());
    };
    let mut own = first_bundle.unwrap_or_default();
    if !own.is_empty() && !own.ends_with('\n') {
        own.push('\n');
    }
    own.push_str(&block);
    write(&root_fd, OWN_BUNDLE, &own)?;
    write(&root_fd, OWN_CA, &block)?;
    Ok(())
}

/// The text without any block of ours.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        out.push_str(&rest[..start]);
        rest = match rest[start..].find(END) {
            Some(end) => &rest[start + end + END.len()..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// A regular file's text; None when it is absent, a symlink or not a file.
fn read(root: &OwnedFd, path: &str) -> Result<Option<String>, String> {
    let fd = match crate::patch::resolve(root, path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(format!("opening {path}: {}", e.desc())),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_BUNDLE {
        return Ok(None);
    }
    let mut text = String::new();
    if file.take(MAX_BUNDLE).read_to_string(&mut text).is_err() {
        return Ok(None);
    }
    Ok(Some(text))
}

fn remove(root: &OwnedFd, path: &str) {
    if let Some((parent, name)) = path.rsplit_once('/') {
        if let Ok(dir) = crate::patch::resolve(root, parent, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            let _ = nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

fn write(root: &OwnedFd, path: &str, text: &str) -> Result<(), String> {
    let (parent, name) = path.rsplit_once('/').ok_or_else(|| format!("{path}: not absolute"))?;
    let dir = crate::patch::mkdir_all(root, parent)?;
    let fd = nix::fcntl::openat(&dir, name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::from_bits_truncate(0o644))
        .map_err(|e| format!("writing {path}: {}", e.desc()))?;
    let _ = nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o644));
    std::fs::File::from(fd).write_all(text.as_bytes()).map_err(|e| format!("writing {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA1: &str = "-----BEGIN CERTIFICATE-----\nONE\n-----END CERTIFICATE-----\n";
    const CA2: &str = "-----BEGIN CERTIFICATE-----\nTWO\n-----END CERTIFICATE-----\n";

    #[test]
    fn bundles_get_one_block_replaced_on_restart_and_removed_without_a_ca() {
        let root = tempfile::tempdir().unwrap();
        let certs = root.path().join("etc/ssl/certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca-certificates.crt"), "PUBLIC ROOTS\n").unwrap();
        // A hostile image: the Alpine name is a symlink to a file outside the root.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc/ssl/cert.pem")).unwrap();

        install(root.path(), Some(CA1)).unwrap();
        install(root.path(), Some(CA2)).unwrap();
        let bundle = std::fs::read_to_string(certs.join("ca-certificates.crt")).unwrap();
        assert!(bundle.starts_with("PUBLIC ROOTS\n") && bundle.contains("TWO") && !bundle.contains("ONE"), "{bundle}");
        assert_eq!(bundle.matches(BEGIN).count(), 1);
        let own = std::fs::read_to_string(root.path().join(OWN_BUNDLE.trim_start_matches('/'))).unwrap();
        assert!(own.starts_with("PUBLIC ROOTS\n") && own.contains("TWO"), "{own}");
        assert!(std::fs::read_to_string(root.path().join(OWN_CA.trim_start_matches('/'))).unwrap().contains("TWO"));
        assert_eq!(std::fs::read_to_string(outside.path()).unwrap(), "", "a symlinked bundle is never written through");

        install(root.path(), None).unwrap();
        assert_eq!(std::fs::read_to_string(certs.join("ca-certificates.crt")).unwrap(), "PUBLIC ROOTS\n");
        assert!(!root.path().join(OWN_CA.trim_start_matches('/')).exists());
    }

    #[test]
    fn an_image_without_bundles_gets_ours() {
        let root = tempfile::tempdir().unwrap();
        install(root.path(), Some(CA1)).unwrap();
        assert!(std::fs::read_to_string(root.path().join(OWN_BUNDLE.trim_start_matches('/'))).unwrap().contains("ONE"));
        assert!(!root.path().join("etc/ssl/certs/ca-certificates.crt").exists());
    }
}
