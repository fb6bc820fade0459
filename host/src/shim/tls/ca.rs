//! The sandbox's own certificate authority: made when the shim starts (rcgen, ECDSA P-256),
//! its key only in this process's memory (the shim is not dumpable), its certificate installed
//! in the sandbox's trust stores by the agent. Leaf certificates are issued per server name on
//! first use and cached.
//!
//! Invariants:
//! - One CA per shim run: a restarted sandbox gets a new one (and the agent replaces the old
//!   certificate), so a key can never outlive the process that holds it.
//! - Validity starts `SKEW` in the past, so a guest whose clock is behind (a microVM that
//!   booted with a stale clock) does not see "not yet valid"; leaves end `LEAF_LIFETIME` after
//!   issue and are re-issued a day before that.
//! - The cache is bounded (`MAX_LEAVES`); beyond it the oldest half is dropped.

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How far in the past validity starts.
const SKEW: time::Duration = time::Duration::days(7);
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
const LEAF_LIFETIME: time::Duration = time::Duration::days(7);
/// A cached leaf is re-issued when it has less than this left.
const LEAF_RENEW: Duration = Duration::from_secs(24 * 3600);
const MAX_LEAVES: usize = 1024;

pub struct SandboxCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    leaves: Mutex<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCa").field("key", &"<in memory only>").finish()
    }
}

impl SandboxCa {
    pub fn new(sandbox: &str) -> Result<SandboxCa, rcgen::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "orchestrator");
        // The sandbox's name helps a person reading a certificate chain; bounded for the DN.
        let name: String = sandbox.chars().take(40).collect();
        dn.push(DnType::CommonName, format!("orchestrator sandbox {name} interception CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        Ok(SandboxCa { pem: cert.pem(), issuer: Issuer::new(params, key), leaves: Mutex::new(HashMap::new()) })
    }

    /// The CA certificate (PEM), for the sandbox's trust stores.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `server_name`, from the cache or freshly issued.
    pub fn leaf(&self, server_name: &str) -> Result<Arc<CertifiedKey>, String> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        let now = Instant::now();
        {
            let leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((key, renew_at)) = leaves.get(&name) {
                if now < *renew_at {
                    return Ok(key.clone());
                }
            }
        }
        let key = self.issue(&name)?;
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if leaves.len() >= MAX_LEAVES {
            let mut by_age: Vec<(String, Instant)> = leaves.iter().map(|(k, (_, t))| (k.clone(), *t)).collect();
            by_age.sort_by_key(|(_, t)| *t);
            for (k, _) in by_age.into_iter().take(MAX_LEAVES / 2) {
                leaves.remove(&k);
            }
        }
        let renew_at = now + Duration::from_secs(LEAF_LIFETIME.whole_seconds() as u64).saturating_sub(LEAF_RENEW);
        leaves.insert(name, (key.clone(), renew_at));
        Ok(key)
    }

    fn issue(&self, name: &str) -> Result<Arc<CertifiedKey>, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| format!("a key for {name}: {e}"))?;
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(|e| format!("{name:?} cannot be a certificate's name: {e}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| format!("signing a certificate for {name}: {e}"))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| format!("the key for {name}: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(vec![CertificateDer::from(cert.der().to_vec())], signer)))
    }
}

/// Presents the leaf for the ClientHello's server name.
#[derive(Debug)]
pub struct LeafResolver(pub Arc<SandboxCa>);

impl rustls::server::ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.0.leaf(name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("no certificate for {name}: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_chain_to_the_ca_are_cached_and_refuse_bad_names() {
        let ca = SandboxCa::new("t").unwrap();
        let a = ca.leaf("Api.Example.").unwrap();
        let b = ca.leaf("api.example").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one leaf per name, whatever its spelling");
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca.certificate_pem().as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(rustls::crypto::ring::default_provider())).build().unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.example").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        // A guest whose clock is three days behind still accepts it.
        let behind = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() - 3 * 86400));
        for at in [now, behind] {
            rustls::client::danger::ServerCertVerifier::verify_server_cert(&*verifier, &a.cert[0], &[], &name, &[], at).unwrap();
        }
        let other = rustls::pki_types::ServerName::try_from("other.example").unwrap();
        assert!(rustls::client::danger::ServerCertVerifier::verify_server_cert(&*verifier, &a.cert[0], &[], &other, &[], now).is_err());
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
