//! TLS interception in the shim: the `netstack::FlowInterceptor` that terminates a sandbox's
//! TLS flows with a certificate of the sandbox's own CA (`ca`), re-opens them to the real
//! server (verified against the host's roots plus `ORCHESTRATOR_UPSTREAM_CA`), and proxies
//! HTTP/1.1 and HTTP/2 between the two (`proxy`), substituting secrets into requests to their
//! allowed hosts and refusing requests that carry a placeholder anywhere else (`rewrite`).
//!
//! Which flows are taken (`wants`):
//! - never a name of `network.tls.bypass` (pinned clients): spliced untouched;
//! - every other TLS flow of a sandbox that has secrets: a placeholder sent to another HTTPS
//!   host can only be seen (and refused) in a flow that is opened;
//! - names of `network.tls.intercept`, and flows a policy plugin answered `intercept-tls` for.
//!
//! QUIC (UDP 443) to a name that would be taken is refused, so clients fall back to TCP.
//! Everything runs on a small tokio runtime of its own, made on the first flow taken.

mod ca;
mod proxy;
pub mod rewrite;

pub use ca::SandboxCa;

use crate::plugin::secrets::ResolvedSecret;
use crate::spec::{host_matches, TlsSpec};
use netstack::{NetEvent, OfferedFlow};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, OnceLock};

/// Stops the sandbox (a secret's `onViolation: block-and-stop`), with the reason.
pub type StopSandbox = Arc<dyn Fn(String) + Send + Sync>;

/// One sandbox's interception: its CA, its secrets and which names are taken.
pub struct Interception {
    ca: Arc<SandboxCa>,
    secrets: &'static [ResolvedSecret],
    tls: TlsSpec,
    upstream_ca: Option<PathBuf>,
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
    configs: OnceLock<Result<proxy::Configs, String>>,
}

impl Interception {
    /// None when the sandbox needs no interception: no secrets, no `tls.intercept`, and no
    /// policy plugin that could ask for it.
    pub fn for_sandbox(cfg: &super::ShimConfig, secrets: &'static [ResolvedSecret]) -> Result<Option<Arc<Interception>>, String> {
        let net = &cfg.spec.network;
        if !net.has_link() || (secrets.is_empty() && net.tls.intercept.is_empty() && net.plugins.is_empty()) {
            return Ok(None);
        }
        let ca = SandboxCa::new(&cfg.name).map_err(|e| format!("making the sandbox's TLS interception CA: {e}"))?;
        Ok(Some(Arc::new(Interception {
            ca: Arc::new(ca),
            secrets,
            tls: net.tls.clone(),
            upstream_ca: cfg.upstream_ca.clone(),
            runtime: OnceLock::new(),
            configs: OnceLock::new(),
        })))
    }

    /// The CA certificate the agent installs in the sandbox.
    pub fn ca_pem(&self) -> &str {
        self.ca.certificate_pem()
    }

    /// Whether a flow whose TLS server name is `name` is taken. (Only the server name counts:
    /// other names resolved to the same address say nothing about this flow.)
    fn takes(&self, name: &str, requested_by_policy: bool) -> bool {
        let matches = |patterns: &[String]| patterns.iter().any(|p| host_matches(p, name));
        if matches(&self.tls.bypass) {
            return false;
        }
        requested_by_policy || !self.secrets.is_empty() || matches(&self.tls.intercept)
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, String> {
        self.runtime
            .get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("tls-proxy").enable_all().build().map_err(|e| format!("starting the TLS proxy: {e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn configs(&self) -> Result<&proxy::Configs, String> {
        self.configs.get_or_init(|| proxy::Configs::new(self.ca.clone(), self.upstream_ca.as_deref())).as_ref().map_err(Clone::clone)
    }

    /// The stack's side of it, reporting to `events`.
    pub fn interceptor(self: &Arc<Self>, events: mpsc::Sender<NetEvent>, stop: StopSandbox) -> Box<dyn netstack::FlowInterceptor> {
        Box::new(Interceptor { interception: self.clone(), events, stop })
    }
}

struct Interceptor {
    interception: Arc<Interception>,
    events: mpsc::Sender<NetEvent>,
    stop: StopSandbox,
}

impl netstack::FlowInterceptor for Interceptor {
    fn wants(&mut self, flow: &OfferedFlow) -> bool {
        self.interception.takes(&flow.server_name, flow.requested_by_policy)
    }

    fn take(&mut self, flow: OfferedFlow, upstream: std::net::TcpStream) -> std::io::Result<std::os::unix::net::UnixStream> {
        let i = &self.interception;
        let runtime = i.runtime().map_err(std::io::Error::other)?;
        let configs = i.configs().map_err(std::io::Error::other)?.clone();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        upstream.set_nonblocking(true)?;
        let ctx = proxy::FlowContext { flow, secrets: i.secrets, configs, events: self.events.clone(), stop: self.stop.clone() };
        runtime.spawn(proxy::serve(ctx, ours, upstream));
        Ok(theirs)
    }

    fn blocks_quic(&mut self, _destination: SocketAddr, names: &[String]) -> bool {
        // QUIC has no server name we can read here: refused when any name the address is known
        // by would be taken, or, with secrets, when it is known by none (it would carry
        // requests nobody sees).
        if names.is_empty() {
            return !self.interception.secrets.is_empty();
        }
        names.iter().any(|n| self.interception.takes(n, false))
    }
}
