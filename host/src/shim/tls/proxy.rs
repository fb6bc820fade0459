//! One intercepted flow, start to end: the guest's ClientHello is read first (its ALPN list),
//! the real server is reached with the same offer and verified, and only then is the guest's
//! handshake finished, with the protocol the server chose: the guest speaks to us what the
//! server speaks to us, so requests pass through hyper unchanged in framing (HTTP/1.1 keep-alive
//! and upgrades, HTTP/2 streams, chunked and streaming bodies).
//!
//! Invariants:
//! - Nothing of a request leaves before its head has passed `rewrite`: a refused request gets
//!   a 403 from us and the server sees nothing of it.
//! - A body that may not carry a placeholder (a secret not allowed here) is read whole first
//!   when its length is known and at most `MAX_SUBSTITUTED_BODY` (a refused one leaves nothing
//!   at the server); any other body is scanned as it streams, and a placeholder aborts the
//!   request mid-body (the server sees a broken request, never the rest). The guest gets a 403.
//! - A real server that fails verification is never talked to: the guest's requests get a 502
//!   saying why, and an event is recorded. There is no unverified fallback.
//! - A flow that is not HTTP (an ALPN other than h2/http/1.1, or none on a port other than
//!   443/8443) is relayed byte for byte with every placeholder refused.

use super::ca::LeafResolver;
use super::rewrite::{self, Blocked, Destination};
use super::{SandboxCa, StopSandbox};
use crate::plugin::secrets::ResolvedSecret;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use netstack::{NetEvent, OfferedFlow, SecretGuard};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body a secret is substituted into (`injectInto: [body]`); larger ones pass as
/// they are.
pub const MAX_SUBSTITUTED_BODY: usize = 1 << 20;
const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// The TLS configurations, made once per sandbox (on the first flow taken).
#[derive(Clone)]
pub struct Configs {
    resolver: Arc<LeafResolver>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    server_h2: Arc<ServerConfig>,
    server_h1: Arc<ServerConfig>,
    server_none: Arc<ServerConfig>,
    /// One per ALPN offer (the variants share one session cache: resumption to the real
    /// servers across flows).
    client: Arc<ClientConfig>,
    client_h2_h1: Arc<ClientConfig>,
    client_h1: Arc<ClientConfig>,
    client_h2: Arc<ClientConfig>,
}

impl Configs {
    pub fn new(ca: Arc<SandboxCa>, upstream_ca: Option<&std::path::Path>) -> Result<Configs, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(LeafResolver(ca));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = upstream_ca {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("ORCHESTRATOR_UPSTREAM_CA={}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ORCHESTRATOR_UPSTREAM_CA={}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("ORCHESTRATOR_UPSTREAM_CA={}: {e}", path.display()))?;
            }
        }
        if roots.is_empty() {
            return Err("no trusted root certificates: the host has no CA bundle and ORCHESTRATOR_UPSTREAM_CA names none".into());
        }
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let with_alpn = |alpn: &[&[u8]]| {
            let mut c = client.clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        Ok(Configs {
            server_h2: Arc::new(server_config(&provider, &resolver, &[H2])?),
            server_h1: Arc::new(server_config(&provider, &resolver, &[H1])?),
            server_none: Arc::new(server_config(&provider, &resolver, &[])?),
            client_h2_h1: with_alpn(&[H2, H1]),
            client_h1: with_alpn(&[H1]),
            client_h2: with_alpn(&[H2]),
            client: with_alpn(&[]),
            resolver,
            provider,
        })
    }

    fn client_for(&self, offered: &[Vec<u8>]) -> Arc<ClientConfig> {
        let (h2, h1) = (offered.iter().any(|p| p == H2), offered.iter().any(|p| p == H1));
        let others = offered.iter().any(|p| p != H2 && p != H1);
        match (h2, h1, others) {
            (_, _, true) => {
                let mut c = (*self.client).clone();
                c.alpn_protocols = offered.to_vec();
                Arc::new(c)
            }
            (true, true, _) => self.client_h2_h1.clone(),
            (false, true, _) => self.client_h1.clone(),
            (true, false, _) => self.client_h2.clone(),
            (false, false, _) => self.client.clone(),
        }
    }

    fn server_for(&self, alpn: Option<&[u8]>) -> Result<Arc<ServerConfig>, String> {
        Ok(match alpn {
            None => self.server_none.clone(),
            Some(H2) => self.server_h2.clone(),
            Some(H1) => self.server_h1.clone(),
            Some(other) => Arc::new(server_config(&self.provider, &self.resolver, &[other])?),
        })
    }
}

fn server_config(provider: &Arc<rustls::crypto::CryptoProvider>, resolver: &Arc<LeafResolver>, alpn: &[&[u8]]) -> Result<ServerConfig, String> {
    let mut c = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(c)
}

pub struct FlowContext {
    pub flow: OfferedFlow,
    pub secrets: &'static [ResolvedSecret],
    pub configs: Configs,
    pub events: mpsc::Sender<NetEvent>,
    pub stop: StopSandbox,
}

impl FlowContext {
    fn blocked(&self, b: &Blocked, host: Option<&str>) {
        let mut names = vec![self.flow.server_name.clone()];
        names.extend(host.filter(|h| *h != self.flow.server_name).map(str::to_string));
        tracing::warn!("secret {}: a request to {} carried its placeholder ({}); refused", b.secret, self.flow.server_name, b.reason);
        let _ = self.events.send(NetEvent::SecretBlocked { secret: b.secret.clone(), destination: Some(self.flow.destination), names, via: format!("an HTTPS request ({})", b.reason) });
        if b.stop {
            (self.stop)(format!("secret {}: its placeholder was sent to {} (onViolation: block-and-stop)", b.secret, self.flow.server_name));
        }
    }

    fn guard(&self, secrets: &[&ResolvedSecret]) -> SecretGuard {
        SecretGuard::new(secrets.iter().map(|s| (s.placeholder.clone(), s.env.clone())))
    }
}

enum Protocol {
    H2,
    H1,
    Raw,
}

/// Runs the flow to its end.
pub async fn serve(ctx: FlowContext, guest: std::os::unix::net::UnixStream, upstream: std::net::TcpStream) {
    let name = ctx.flow.server_name.clone();
    if let Err(e) = serve_flow(ctx, guest, upstream).await {
        tracing::debug!("intercepted flow to {name}: {e}");
    }
}

async fn serve_flow(ctx: FlowContext, guest: std::os::unix::net::UnixStream, upstream: std::net::TcpStream) -> Result<(), String> {
    let guest = tokio::net::UnixStream::from_std(guest).map_err(|e| e.to_string())?;
    let upstream = tokio::net::TcpStream::from_std(upstream).map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), guest);
    let start = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await.map_err(|_| "the guest's ClientHello did not come".to_string())?.map_err(|e| format!("the guest's ClientHello: {e}"))?;
    let offered: Vec<Vec<u8>> = start.client_hello().alpn().map(|i| i.map(<[u8]>::to_vec).collect()).unwrap_or_default();
    let server_name = ServerName::try_from(ctx.flow.server_name.clone()).map_err(|e| format!("{}: {e}", ctx.flow.server_name))?;
    let connector = tokio_rustls::TlsConnector::from(ctx.configs.client_for(&offered));
    let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name, upstream)).await;
    let up = match connected {
        Ok(Ok(up)) => up,
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            tracing::warn!("intercepted flow to {}: the real server failed: {reason}", ctx.flow.server_name);
            let _ = ctx.events.send(NetEvent::UpstreamTlsFailed { destination: ctx.flow.destination, server_name: ctx.flow.server_name.clone(), reason: reason.clone() });
            // The guest learns why, in its own protocol, instead of a bare reset.
            let alpn = if offered.is_empty() || offered.iter().any(|p| p == H1) { Some(H1) } else if offered.iter().any(|p| p == H2) { Some(H2) } else { return Err(reason) };
            let guest = start.into_stream(ctx.configs.server_for(if offered.is_empty() { None } else { alpn })?).await.map_err(|e| format!("the guest's handshake: {e}"))?;
            let message = format!("the real server {} failed TLS verification or the handshake: {reason}", ctx.flow.server_name);
            return serve_error(guest, alpn == Some(H2), message).await;
        }
    };
    let negotiated = up.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let protocol = match negotiated.as_deref() {
        Some(H2) => Protocol::H2,
        Some(H1) => Protocol::H1,
        Some(_) => Protocol::Raw,
        None if offered.iter().any(|p| p == H1) || matches!(ctx.flow.destination.port(), 443 | 8443) => Protocol::H1,
        None => Protocol::Raw,
    };
    let config = ctx.configs.server_for(negotiated.as_deref())?;
    let guest = tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await.map_err(|_| "the guest's handshake timed out".to_string())?.map_err(|e| format!("the guest's handshake: {e}"))?;
    match protocol {
        Protocol::H1 => serve_h1(Arc::new(ctx), guest, up).await,
        Protocol::H2 => serve_h2(Arc::new(ctx), guest, up).await,
        Protocol::Raw => relay(ctx, guest, up).await,
    }
}

type GuestTls = tokio_rustls::server::TlsStream<tokio::net::UnixStream>;
type UpstreamTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

enum Upstream {
    H1(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<ProxyBody>>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

// When the real server's connection ends (it closed a kept-alive connection, or failed), the
// guest's is shut down gracefully too (HTTP/1.1: after the request in flight; HTTP/2: GOAWAY),
// so its client reconnects instead of getting a 502 for every later request.

async fn serve_h1(ctx: Arc<FlowContext>, guest: GuestTls, up: UpstreamTls) -> Result<(), String> {
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(up)).await.map_err(|e| e.to_string())?;
    let (closed, upstream_closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
        let _ = closed.send(());
    });
    let upstream = Arc::new(Upstream::H1(tokio::sync::Mutex::new(sender)));
    let service = hyper::service::service_fn(move |req| {
        let (ctx, upstream) = (ctx.clone(), upstream.clone());
        async move { Ok::<_, Infallible>(forward(&ctx, &upstream, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(guest), service).with_upgrades();
    until_upstream_ends(conn, upstream_closed, |c| c.graceful_shutdown()).await
}

async fn serve_h2(ctx: Arc<FlowContext>, guest: GuestTls, up: UpstreamTls) -> Result<(), String> {
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, ProxyBody>(TokioExecutor::new(), TokioIo::new(up)).await.map_err(|e| e.to_string())?;
    let (closed, upstream_closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed.send(());
    });
    let upstream = Arc::new(Upstream::H2(sender));
    let service = hyper::service::service_fn(move |req| {
        let (ctx, upstream) = (ctx.clone(), upstream.clone());
        async move { Ok::<_, Infallible>(forward(&ctx, &upstream, req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(guest), service);
    until_upstream_ends(conn, upstream_closed, |c| c.graceful_shutdown()).await
}

/// Runs the guest's connection `conn` to its end, shutting it down gracefully (`shutdown`)
/// once the real server's connection has ended.
async fn until_upstream_ends<C, E>(conn: C, upstream_closed: tokio::sync::oneshot::Receiver<()>, shutdown: impl FnOnce(Pin<&mut C>)) -> Result<(), String>
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => done.map_err(|e| e.to_string()),
        _ = upstream_closed => {
            shutdown(conn.as_mut());
            conn.await.map_err(|e| e.to_string())
        }
    }
}

/// Answers every request of the guest's connection with a 502 naming `message`.
async fn serve_error(guest: GuestTls, h2: bool, message: String) -> Result<(), String> {
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let message = message.clone();
        async move { Ok::<_, Infallible>(plain(StatusCode::BAD_GATEWAY, "x-orchestrator-error", &message)) }
    });
    let io = TokioIo::new(guest);
    if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await.map_err(|e| e.to_string())
    } else {
        hyper::server::conn::http1::Builder::new().serve_connection(io, service).await.map_err(|e| e.to_string())
    }
}

fn plain(status: StatusCode, header: &str, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    let value = http::HeaderValue::from_str(&message.replace(|c: char| c.is_control(), " ")).unwrap_or_else(|_| http::HeaderValue::from_static("refused"));
    if let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) {
        r.headers_mut().insert(name, value);
    }
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn forbidden(b: &Blocked) -> Response<ProxyBody> {
    plain(StatusCode::FORBIDDEN, "x-orchestrator-blocked", &format!("secret {} may not be sent here: {}", b.secret, b.reason))
}

async fn forward(ctx: &Arc<FlowContext>, upstream: &Upstream, req: Request<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let dest = Destination { server_name: &ctx.flow.server_name, resolved: &ctx.flow.resolved };
    let rewritten = match rewrite::rewrite(&mut parts, ctx.secrets, &dest) {
        Ok(r) => r,
        Err(b) => {
            ctx.blocked(&b, rewrite::request_host(&parts).as_deref());
            return forbidden(&b);
        }
    };
    let guest_upgrade = parts.headers.contains_key(http::header::UPGRADE).then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>()).flatten();
    let mut body: ProxyBody = body.map_err(BoxError::from).boxed();
    if !rewritten.body_secrets.is_empty() && identity_encoded(&parts.headers) {
        body = substitute_body(body, &rewritten.body_secrets, &mut parts.headers).await;
    }
    let caught: Arc<Mutex<Option<Blocked>>> = Arc::new(Mutex::new(None));
    if !rewritten.watch.is_empty() {
        let guard = ctx.guard(&rewritten.watch);
        let stops = |secret: &str| rewritten.watch.iter().any(|s| s.env == secret && s.on_violation == crate::spec::OnViolation::BlockAndStop);
        let reason = "the request body carried its placeholder to a host it may not reach";
        if body.size_hint().exact().is_some_and(|n| n as usize <= MAX_SUBSTITUTED_BODY) {
            // A body of a known, bounded length is read whole first: a refused one leaves
            // nothing, not even the request's head, at the server.
            let whole = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return plain(StatusCode::BAD_REQUEST, "x-orchestrator-error", &format!("reading the request body: {e}")),
            };
            if let Some(secret) = guard.find(&whole) {
                let b = Blocked { secret: secret.to_string(), reason: reason.into(), stop: stops(secret) };
                ctx.blocked(&b, rewrite::request_host(&parts).as_deref());
                return forbidden(&b);
            }
            body = Full::new(whole).map_err(|never| match never {}).boxed();
        } else {
            // A streamed body goes as it comes (it may be an interactive stream), checked on
            // the way: a placeholder aborts the request mid-body.
            let on_violation = rewritten.watch.iter().map(|s| (s.env.clone(), stops(&s.env))).collect();
            body = Guarded { inner: body, guard, tail: Vec::new(), caught: caught.clone(), on_violation }.boxed();
        }
    }
    let host = rewrite::request_host(&parts);
    let request = Request::from_parts(parts, body);
    let sent = match upstream {
        Upstream::H1(sender) => {
            let mut sender = sender.lock().await;
            match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(e) => Err(e),
            }
        }
        Upstream::H2(sender) => {
            let mut sender = sender.clone();
            match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(e) => Err(e),
            }
        }
    };
    let blocked = caught.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(b) = blocked {
        ctx.blocked(&b, host.as_deref());
        return forbidden(&b);
    }
    match sent {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(guest_upgrade) = guest_upgrade {
                    let server_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(async move {
                        if let (Ok(g), Ok(s)) = tokio::join!(guest_upgrade, server_upgrade) {
                            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(g), &mut TokioIo::new(s)).await;
                        }
                    });
                }
            }
            response.map(|b| b.map_err(BoxError::from).boxed())
        }
        Err(e) => plain(StatusCode::BAD_GATEWAY, "x-orchestrator-error", &format!("the request to {} failed: {e}", ctx.flow.server_name)),
    }
}

fn identity_encoded(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::CONTENT_ENCODING).iter().all(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Reads up to `MAX_SUBSTITUTED_BODY` of `body`: if it ends within that, the placeholders are
/// replaced and the length fixed; a longer body goes on unchanged.
async fn substitute_body(mut body: ProxyBody, secrets: &[&ResolvedSecret], headers: &mut http::HeaderMap) -> ProxyBody {
    let mut collected = Vec::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    collected.extend_from_slice(&data);
                    if collected.len() > MAX_SUBSTITUTED_BODY {
                        return Prefixed { prefix: Some(Bytes::from(collected)), inner: body }.boxed();
                    }
                }
                // Trailers: the body is over; they are not forwarded with a rewritten body.
                Err(_) => break,
            },
            // What came goes on, then the failure: the server sees a broken request, never a
            // shortened one that looks whole.
            Some(Err(e)) => {
                let failed = http_body_util::StreamBody::new(futures_util::stream::iter([Err::<Frame<Bytes>, BoxError>(e)]));
                return Prefixed { prefix: Some(Bytes::from(collected)), inner: failed.boxed() }.boxed();
            }
        }
    }
    let replaced = rewrite::substitute_body(&collected, secrets);
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(replaced.len()));
    Full::new(Bytes::from(replaced)).map_err(|never| match never {}).boxed()
}

/// `prefix`, then the rest of `inner`.
struct Prefixed {
    prefix: Option<Bytes>,
    inner: ProxyBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// A body that fails at the first placeholder of a secret that may not go here.
struct Guarded {
    inner: ProxyBody,
    guard: SecretGuard,
    tail: Vec<u8>,
    caught: Arc<Mutex<Option<Blocked>>>,
    /// (secret, block-and-stop)
    on_violation: Vec<(String, bool)>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(secret) = this.guard.scan_stream(&this.tail, data) {
                        let stop = this.on_violation.iter().any(|(s, stop)| s == secret && *stop);
                        let blocked = Blocked { secret: secret.to_string(), reason: "the request body carried its placeholder to a host it may not reach".into(), stop };
                        *this.caught.lock().unwrap_or_else(|e| e.into_inner()) = Some(blocked);
                        return Poll::Ready(Some(Err("refused: a secret's placeholder in the body".into())));
                    }
                    this.guard.advance(&mut this.tail, data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A TLS flow that is not HTTP: relayed both ways, every placeholder refused.
async fn relay(ctx: FlowContext, guest: GuestTls, up: UpstreamTls) -> Result<(), String> {
    let all: Vec<&ResolvedSecret> = ctx.secrets.iter().collect();
    let guard = ctx.guard(&all);
    let (mut guest_read, mut guest_write) = tokio::io::split(guest);
    let (mut up_read, mut up_write) = tokio::io::split(up);
    let to_server = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut tail = Vec::new();
        loop {
            let n = guest_read.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                let _ = up_write.shutdown().await;
                return Ok::<(), String>(());
            }
            if let Some(secret) = guard.scan_stream(&tail, &buf[..n]) {
                let stop = ctx.secrets.iter().any(|s| s.env == secret && s.on_violation == crate::spec::OnViolation::BlockAndStop);
                ctx.blocked(&Blocked { secret: secret.to_string(), reason: "a TLS flow that is not HTTP carried its placeholder".into(), stop }, None);
                return Err("refused: a secret's placeholder".into());
            }
            guard.advance(&mut tail, &buf[..n]);
            up_write.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
        }
    };
    let to_guest = async {
        tokio::io::copy(&mut up_read, &mut guest_write).await.map_err(|e| e.to_string())?;
        let _ = guest_write.shutdown().await;
        Ok::<(), String>(())
    };
    tokio::try_join!(to_server, to_guest).map(|_| ())
}
