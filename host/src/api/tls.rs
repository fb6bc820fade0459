//! HTTPS for `--listen` (`--tls-cert FILE --tls-key FILE`, PEM): rustls with the ring
//! provider, TLS 1.2 and 1.3, ALPN `http/1.1`.
//!
//! Invariants:
//! - Handshakes run beside the accept loop, each bounded by [`HANDSHAKE_TIMEOUT`] and at most
//!   [`HANDSHAKES_AT_ONCE`] at a time: a client that opens a connection and says nothing holds
//!   one slot for a few seconds, never the listener.
//! - A connection whose handshake fails (plain HTTP on the TLS port, a bad client hello) is
//!   closed; the server goes on.
//! - Bad certificate or key files stop `serve` before it listens, with the file and the
//!   reason.

use super::{io, ApiError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
pub const HANDSHAKES_AT_ONCE: usize = 256;

/// The server's TLS configuration from PEM files.
pub fn config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ApiError> {
    let bad = |file: &Path, what: &str, e: &dyn std::fmt::Display| ApiError::Config(format!("--tls-{what} {}: {e}", file.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, "cert", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, "cert", &e))?;
    if certs.is_empty() {
        return Err(bad(cert, "cert", &"no CERTIFICATE block in it (a PEM certificate chain, the server's first)"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, "key", &format!("{e} (a PEM private key: PKCS#8, PKCS#1 or SEC1)")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ApiError::Config(format!("--tls-cert {} and --tls-key do not make a server identity: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out of their TLS handshake, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` (inside a tokio runtime).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Result<TlsListener, ApiError> {
        let local = tcp.local_addr().map_err(io("reading the TLS listener's address"))?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, most likely: wait rather than spin.
                        tracing::warn!("accepting a TLS connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor ended (its runtime is shutting down): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
