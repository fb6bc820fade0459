#![allow(dead_code)] // each test binary uses a part of it
//! HTTPS servers of the test internet (tests/common/testnet.rs), with certificates from the
//! test's own CA: `web.test` and `pinned.test` on WEB:443, `other.test` (the host that must
//! never receive a secret) on WEB2:443, and `web.test` again on WEB:8443 with a certificate
//! nobody trusts. Each speaks HTTP/1.1 and HTTP/2 (ALPN) and counts the requests it answered.
//!
//! - `/echo`: what arrived, one `key=value` per line: `proto`, `authorization`, `x-key`,
//!   `query`, `content-encoding`, `body-len`, `body-sha256`, `body` (when short UTF-8).
//! - `/bytes/N`: N bytes (the benchmarks' downloads).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Digest;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct HttpsServers {
    /// The test CA (PEM): what `ORCHESTRATOR_UPSTREAM_CA` names, and what a pinned client uses.
    pub ca_pem: String,
    pub web_requests: Arc<AtomicU64>,
    pub other_requests: Arc<AtomicU64>,
    runtime: tokio::runtime::Runtime,
}

fn certificate(names: &[&str], issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = match issuer {
        Some(i) => params.signed_by(&key, i).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    (vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
}

fn server_config(chain: Vec<rustls::pki_types::CertificateDer<'static>>, key: rustls::pki_types::PrivateKeyDer<'static>) -> Arc<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

impl HttpsServers {
    pub fn start(net: &super::testnet::TestNet) -> HttpsServers {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "orchestrator test CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let servers = HttpsServers { ca_pem: ca_cert.pem(), web_requests: Arc::new(AtomicU64::new(0)), other_requests: Arc::new(AtomicU64::new(0)), runtime };
        let ns = net.inet_ns();
        let (chain, key) = certificate(&["web.test", "pinned.test"], Some(&issuer));
        servers.serve(&ns, SocketAddr::new(super::testnet::WEB.parse().unwrap(), 443), server_config(chain, key), servers.web_requests.clone());
        let (chain, key) = certificate(&["other.test"], Some(&issuer));
        servers.serve(&ns, SocketAddr::new(super::testnet::WEB2.parse().unwrap(), 443), server_config(chain, key), servers.other_requests.clone());
        let (chain, key) = certificate(&["web.test"], None);
        servers.serve(&ns, SocketAddr::new(super::testnet::WEB.parse().unwrap(), 8443), server_config(chain, key), servers.web_requests.clone());
        servers
    }

    fn serve(&self, ns: &str, addr: SocketAddr, config: Arc<rustls::ServerConfig>, counter: Arc<AtomicU64>) {
        let listener = super::testnet::bound(ns, move || std::net::TcpListener::bind(addr));
        listener.set_nonblocking(true).unwrap();
        let _guard = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        self.runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                // As servers in front of clients do (nginx's tcp_nodelay): without it the
                // handshake's last flight waits out a delayed ACK.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let service = hyper::service::service_fn(move |req| {
                        let counter = counter.clone();
                        async move { Ok::<_, Infallible>(answer(req, &counter).await) }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                    }
                });
            }
        });
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>, counter: &AtomicU64) -> Response<TestBody> {
    counter.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok()) {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let frames = (0..n.div_ceil(chunk.len())).map(move |i| Ok::<_, Infallible>(Frame::data(chunk.slice(..(n - i * chunk.len()).min(chunk.len())))));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))));
        r.headers_mut().insert("content-length", n.into());
        return r;
    }
    let header = |name: &str| req.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    let mut text = format!(
        "proto={:?}\nauthorization={}\nx-key={}\nquery={}\ncontent-encoding={}\n",
        req.version(),
        header("authorization"),
        header("x-key"),
        req.uri().query().unwrap_or(""),
        header("content-encoding")
    );
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let digest: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    text.push_str(&format!("body-len={}\nbody-sha256={digest}\n", body.len()));
    if body.len() < 1024 {
        if let Ok(s) = std::str::from_utf8(&body) {
            text.push_str(&format!("body={s}\n"));
        }
    }
    Response::new(BodyExt::boxed(Full::new(Bytes::from(text))))
}
