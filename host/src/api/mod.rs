//! The HTTP API `serve` offers beside its GitOps controller: the native `/v1` routes over the
//! library (the views and typed errors the CLI renders, as JSON and problem+json) and, at the
//! root, routes compatible with OpenSandbox's server (`/health`, `/run`, `/sessions...`).
//! axum on tokio; a Unix socket by default (`DATA/api.sock`, 0600), TCP only when asked.
//!
//! Invariants:
//! - Every route but `/health` needs the bearer token ([`auth`]); `--insecure-no-auth` is
//!   accepted only when nothing but loopback and the Unix socket listens.
//! - Request bodies, collected command output, concurrent execs per sandbox and each command's
//!   run time are bounded ([`Limits`]); a request over a bound gets a clear problem, and the
//!   server keeps serving the others.
//! - An API client never names a host path unless the operator gave a root for them
//!   ([`hostpaths`]).
//! - Sandboxes made through `/v1` have the source `api`, `/run`'s and the sessions' their own:
//!   no file source prunes them, and the server removes leftovers of its own on start.

pub mod auth;
mod catalog;
mod compat;
pub(crate) mod exec;
mod files;
mod foreground;
mod handles;
pub mod hostpaths;
mod interactive;
pub mod metrics;
pub mod openapi;
pub mod pool;
pub mod problem;
pub mod reach;
mod sandboxes;
mod streams;
mod volumes;
pub mod tls;

use crate::config::Config;
use axum::extract::DefaultBodyLimit;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The source of sandboxes made with `POST /v1/sandboxes` and `/v1/apply`.
pub const API_SOURCE: &str = "api";
/// The source of `/run`'s one-shot sandboxes (removed after their command).
pub const RUN_SOURCE: &str = "api-run";
/// The source of OpenSandbox-style sessions (removed when they expire).
pub const SESSION_SOURCE: &str = "api-session";

/// Bounds on what one request may take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request bodies read whole (a spec, stdin, an OpenSandbox file).
    pub max_body: usize,
    /// A file written through `PUT /v1/sandboxes/{name}/files`, streamed (never held whole).
    pub max_file: u64,
    /// Each of a command's stdout and stderr, collected; beyond it the output is cut and the
    /// answer says `truncated`.
    pub max_output: usize,
    /// Commands running at once in one sandbox; more get 429.
    pub execs_per_sandbox: usize,
    /// A command's run time when the request sets none.
    pub default_exec_timeout: Duration,
    /// The most a request may ask for.
    pub max_exec_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 32 << 20,
            max_file: 16 << 30,
            max_output: 16 << 20,
            execs_per_sandbox: 16,
            default_exec_timeout: Duration::from_secs(300),
            max_exec_timeout: Duration::from_secs(3600),
        }
    }
}

/// How `serve` offers the API.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// The Unix socket; None: `DATA/api.sock`.
    pub socket: Option<PathBuf>,
    /// A TCP address too (loopback unless the operator means otherwise).
    pub listen: Option<SocketAddr>,
    /// HTTPS on `listen`: the PEM certificate chain and private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub token_file: Option<PathBuf>,
    /// `ORCHESTRATOR_API_TOKEN`, as the CLI read it.
    pub token_env: Option<String>,
    pub insecure_no_auth: bool,
    /// The host directory API clients may name paths in (None: no host paths at all).
    pub allow_host_paths: Option<PathBuf>,
    /// Clients' sandboxes may widen their network beyond the public internet and publish
    /// host ports.
    pub allow_client_network: bool,
    /// The image of `/run`'s and the sessions' sandboxes.
    pub default_image: String,
    /// A session idle this long is removed.
    pub session_idle: Duration,
    /// Sessions at once (each is a sandbox).
    pub max_sessions: usize,
    /// Warm pools: (image, how many sandboxes to keep ready).
    pub warm_pools: Vec<(String, usize)>,
    pub limits: Limits,
}

/// The sandboxes with exec slots beyond which idle slots are forgotten.
const EXEC_SLOTS_PRUNED_AT: usize = 256;

/// What every handler shares.
pub struct ApiState {
    pub config: Config,
    pub token: Option<auth::Token>,
    pub allow_host_paths: Option<PathBuf>,
    pub allow_client_network: bool,
    pub default_image: String,
    pub limits: Limits,
    /// The host part of `--listen`, which MCP clients over TCP send as `Host`.
    pub listen_host: Option<String>,
    exec_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    sessions: compat::Sessions,
    pub pools: Vec<Arc<pool::WarmPool>>,
    /// Removals of used sandboxes running in the background, bounded: beyond it a request
    /// waits for one to finish (the host never piles up used sandboxes).
    discards: Arc<Semaphore>,
    /// Used sandboxes waiting for a gap between requests to be removed.
    discards_waiting: std::sync::atomic::AtomicUsize,
    /// How many may wait ([`pool::discards_may_wait`]).
    discards_may_wait: usize,
    /// The requests in progress: background work waits for gaps between them.
    foreground: Arc<foreground::Foreground>,
    /// Image pulls running at once ([`catalog::PULLS_AT_ONCE`]).
    pulls: Arc<Semaphore>,
    /// Handles of the sandboxes requests name, kept between requests.
    handles: handles::Handles,
}

impl ApiState {
    /// A slot to run one command in `sandbox`, or 429 when it has as many as it may.
    fn exec_slot(&self, sandbox: &str) -> problem::ApiResult<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut slots = self.exec_slots.lock().unwrap_or_else(|e| e.into_inner());
            // Every `/run` names a new sandbox: idle entries go once there are many, so the
            // map stays as small as the sandboxes running commands (an idle entry dropped for
            // a live sandbox is only made again).
            if slots.len() >= EXEC_SLOTS_PRUNED_AT {
                let all = self.limits.execs_per_sandbox;
                slots.retain(|_, s| s.available_permits() < all);
            }
            slots.entry(sandbox.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.limits.execs_per_sandbox))).clone()
        };
        sem.try_acquire_owned().map_err(|_| {
            problem::Problem::too_many(format!("sandbox {sandbox:?} already runs {} commands through the API; retry when one ends", self.limits.execs_per_sandbox))
        })
    }
}

/// Runs `f` on a blocking thread (the library's operations block: the store, the shims); a
/// thread that panicked is a problem like any other.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::Result<T> + Send + 'static) -> problem::ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| problem::Problem::from(crate::Error::Protocol(format!("a worker thread failed: {e}"))))?
        .map_err(problem::Problem::from)
}

/// The MCP tools at `/mcp` (streamable HTTP, one JSON answer per request, no sessions to
/// keep), behind the same token as every other route.
fn mcp_service(state: &ApiState) -> rmcp::transport::streamable_http_server::StreamableHttpService<crate::mcp::Tools, rmcp::transport::streamable_http_server::session::local::LocalSessionManager> {
    use rmcp::transport::streamable_http_server::{session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService};
    let tools = crate::mcp::Tools::new(
        state.config.clone(),
        crate::mcp::McpOptions {
            default_image: state.default_image.clone(),
            allow_host_paths: state.allow_host_paths.clone(),
            allow_client_network: state.allow_client_network,
            default_timeout: state.limits.default_exec_timeout,
            max_timeout: state.limits.max_exec_timeout,
        },
    );
    let mut config = StreamableHttpServerConfig::default();
    config.stateful_mode = false;
    config.json_response = true;
    // The Unix socket's clients name no host; TCP clients name the address they reached.
    config.allowed_hosts.push("orchestrator".into());
    config.allowed_hosts.extend(state.listen_host.clone());
    StreamableHttpService::new(move || Ok(tools.clone()), Arc::new(LocalSessionManager::default()), config)
}

/// The API's routes over `state` (the same router the OpenAPI document describes).
pub fn router(state: Arc<ApiState>) -> axum::Router {
    let (routes, _) = openapi::router().split_for_parts();
    routes
        .nest_service("/mcp", mcp_service(&state))
        .fallback(|| async { problem::Problem::not_found("no such route; the API's routes are under /v1 (and OpenSandbox's at the root); GET /openapi.json lists them") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require))
        .layer(DefaultBodyLimit::max(state.limits.max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts every request (refused ones too) by method, route template and status class, and
/// holds background work back while it runs.
async fn count_request(axum::extract::State(state): axum::extract::State<Arc<ApiState>>, req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let _running = state.foreground.begin();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    crate::telemetry::get().api_request(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

/// The server holds descriptors for each client connection, session and kept sandbox handle
/// (a shim connection, a pidfd, a root): its soft limit on open files goes up to the hard one
/// (any process may raise its own that far), so a busy server does not run out at the usual
/// soft default of 1024.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20).max(lim.rlim_cur);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open files limit: {}", std::io::Error::last_os_error());
            }
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ApiError {
    let context = context.into();
    move |source| ApiError::Io { context, source }
}

/// A running API: its addresses, and the thread that serves it.
pub struct RunningApi {
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    /// The TCP address speaks HTTPS.
    pub tls: bool,
    pub token_from: Option<String>,
    thread: std::thread::JoinHandle<()>,
}

impl RunningApi {
    /// Blocks until the server stops (it stops only with the process).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Binds the listeners and serves the API on a thread of its own (a tokio runtime beside the
/// controller's loop). Returns once it accepts connections.
pub fn start(config: Config, options: ApiOptions, log: fn(&str)) -> Result<RunningApi, ApiError> {
    let tcp_public = options.listen.is_some_and(|a| !a.ip().is_loopback());
    if options.insecure_no_auth && tcp_public {
        return Err(ApiError::Config(format!(
            "refusing --insecure-no-auth on {}: without a token the API may listen only on loopback addresses and the Unix socket",
            options.listen.map(|a| a.to_string()).unwrap_or_default()
        )));
    }
    let (token, token_from) = if options.insecure_no_auth {
        (None, None)
    } else {
        let (t, from) = auth::load(options.token_env.clone(), options.token_file.as_deref(), &config.data_dir).map_err(ApiError::Config)?;
        (Some(t), Some(from))
    };
    if let Some(root) = &options.allow_host_paths {
        if !root.is_dir() {
            return Err(ApiError::Config(format!("--allow-host-paths {}: not a directory", root.display())));
        }
    }
    raise_open_files_limit();
    let socket = options.socket.clone().unwrap_or_else(|| config.data_dir.join("api.sock"));
    // One worker thread, which also accepts: the async side of a request is parsing and
    // bookkeeping, and what blocks (the shim's socket, the store, files) runs on the blocking
    // pool. A second worker only moved each request between threads: a context switch each
    // way, which in a VM costs more than the work (a 1 KiB file write took 0.82 ms with two
    // workers, 0.59 with one).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().thread_name("api").build().map_err(io("starting the API's runtime"))?;
    let unix = {
        let _guard = runtime.enter();
        bind_unix(&socket)?
    };
    let tcp = match options.listen {
        Some(addr) => {
            let _guard = runtime.enter();
            let std_listener = std::net::TcpListener::bind(addr).map_err(io(format!("listening on {addr}")))?;
            std_listener.set_nonblocking(true).map_err(io(format!("listening on {addr}")))?;
            Some(tokio::net::TcpListener::from_std(std_listener).map_err(io(format!("listening on {addr}")))?)
        }
        None => None,
    };
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let tls = match (&options.tls, &tcp) {
        (Some((cert, key)), Some(_)) => Some(tls::config(cert, key)?),
        (Some(_), None) => return Err(ApiError::Config("--tls-cert and --tls-key secure --listen: give --listen ADDR:PORT too (the Unix socket is private already)".into())),
        (None, _) => None,
    };
    let state = Arc::new(ApiState {
        config,
        token,
        allow_host_paths: options.allow_host_paths.clone(),
        allow_client_network: options.allow_client_network,
        default_image: options.default_image.clone(),
        limits: options.limits.clone(),
        listen_host: tcp_addr.map(|a| a.ip().to_string()),
        exec_slots: Mutex::new(HashMap::new()),
        sessions: compat::Sessions::new(options.session_idle, options.max_sessions),
        pools: options.warm_pools.iter().map(|(image, n)| pool::WarmPool::new(image.clone(), *n)).collect(),
        discards: Arc::new(Semaphore::new(8)),
        discards_waiting: Default::default(),
        discards_may_wait: pool::discards_may_wait(&options.warm_pools),
        foreground: foreground::Foreground::new(),
        pulls: Arc::new(Semaphore::new(catalog::PULLS_AT_ONCE)),
        handles: Default::default(),
    });
    if options.insecure_no_auth {
        log("warning: the API runs without authentication (--insecure-no-auth): anyone who reaches its socket or loopback port controls every sandbox");
    }
    let leftovers = compat::leftovers(&state.config).map_err(|e| ApiError::Config(format!("listing what an earlier server left: {e}")))?;
    // Made into a service once: served as a bare `Router`, axum rebuilds every route (each with
    // its layers) for every connection, which cost more CPU than a small request itself.
    let app = router(state.clone()).into_make_service();
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            // Spawned, not run by block_on: on this thread the accept loops would hand every
            // new connection to the worker, a thread switch per request.
            let serving = runtime.spawn(async move {
                compat::start_background(state.clone(), leftovers);
                for p in &state.pools {
                    pool::keep_filled(state.clone(), p.clone());
                }
                let unix_server = axum::serve(unix, app.clone());
                let tcp_server = async {
                    match (tcp, tls) {
                        (Some(tcp), Some(tls)) => match tls::TlsListener::new(tcp, tls) {
                            Ok(listener) => axum::serve(listener, app).await,
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        },
                        (Some(tcp), None) => axum::serve(tcp, app).await,
                        (None, _) => std::future::pending().await,
                    }
                };
                // Neither ends while the process serves; whichever fails first is told.
                let ended = tokio::select! {
                    r = async { unix_server.await } => r,
                    r = tcp_server => r,
                };
                if let Err(e) = ended {
                    log(&format!("error: the API stopped: {e}"));
                }
            });
            if let Err(e) = runtime.block_on(serving) {
                log(&format!("error: the API's task failed: {e}"));
            }
        })
        .map_err(io("starting the API's thread"))?;
    Ok(RunningApi { socket, tcp: tcp_addr, tls: options.tls.is_some(), token_from, thread })
}

/// The Unix socket, 0600; a stale one (nobody answers on it) is replaced, a live one refused.
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, ApiError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::Config(format!("another server already listens on {}; stop it first, or give --socket another path", path.display())));
        }
        std::fs::remove_file(path).map_err(io(format!("removing the stale socket {}", path.display())))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io(format!("listening on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(format!("making {} private", path.display())))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ApiState {
        ApiState {
            config: Config::new("/nonexistent"),
            token: None,
            allow_host_paths: None,
            allow_client_network: false,
            default_image: String::new(),
            limits: Limits { execs_per_sandbox: 2, ..Limits::default() },
            listen_host: None,
            exec_slots: Mutex::new(HashMap::new()),
            sessions: compat::Sessions::new(Duration::from_secs(1), 4),
            pools: Vec::new(),
            discards: Arc::new(Semaphore::new(1)),
            discards_waiting: Default::default(),
            discards_may_wait: 1,
            foreground: foreground::Foreground::new(),
            pulls: Arc::new(Semaphore::new(1)),
            handles: Default::default(),
        }
    }

    #[test]
    fn exec_slots_bound_each_sandbox_and_idle_ones_are_forgotten() {
        let state = state();
        let held = [state.exec_slot("busy").unwrap(), state.exec_slot("busy").unwrap()];
        assert_eq!(state.exec_slot("busy").unwrap_err().status, 429, "a third command in a sandbox of two slots");
        for i in 0..EXEC_SLOTS_PRUNED_AT * 3 {
            drop(state.exec_slot(&format!("run-{i}")).unwrap());
        }
        let slots = state.exec_slots.lock().unwrap().len();
        assert!(slots <= EXEC_SLOTS_PRUNED_AT + 1, "one-shot sandboxes leave no slot behind: {slots}");
        assert_eq!(state.exec_slot("busy").unwrap_err().status, 429, "a busy sandbox's slots are kept");
        drop(held);
        assert!(state.exec_slot("busy").is_ok());
    }
}
