//! `serve [--config DIR]`: the HTTP API (`crate::api`) on its own thread and, given a
//! directory, the GitOps controller (`crate::controller`), with their log on stderr, each line
//! timestamped.

use crate::api::{ApiOptions, Limits};
use crate::controller::{Backoff, ServeOptions};
use crate::reconcile::Orchestrator;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn log(msg: &str) {
    eprintln!("{} {msg}", chrono::Utc::now().format("%H:%M:%S%.3f"));
}

/// How the API is offered.
#[derive(Debug, clap::Args)]
pub struct ApiFlags {
    /// The API's Unix socket (default DATA/api.sock, mode 0600).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve the API on this TCP address too, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTPS on --listen: the server's certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key", requires = "listen")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Read the bearer token from this file (default: ORCHESTRATOR_API_TOKEN, else
    /// DATA/api.token, generated on first start).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// No token at all: only when nothing but loopback and the Unix socket listens.
    #[arg(long)]
    insecure_no_auth: bool,
    /// A host directory API clients may name paths in (dir: images, kernels, plugins); none
    /// without it.
    #[arg(long)]
    allow_host_paths: Option<PathBuf>,
    /// Let clients' sandboxes reach beyond the public internet (allow-all, allow rules for
    /// ranges or the host) and publish host ports.
    #[arg(long)]
    allow_client_network: bool,
    /// The image of `/run`'s and the sessions' sandboxes.
    #[arg(long, default_value = "127.0.0.1:5000/demo/busybox:1")]
    default_image: String,
    /// Seconds a session may stay idle before it is removed.
    #[arg(long, default_value_t = 300)]
    session_idle: u64,
    /// OpenSandbox-style sessions at once (each is a sandbox); more are refused with 429.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = Limits::default().max_body)]
    max_body: usize,
    /// Largest file written through the files route (streamed), in bytes.
    #[arg(long, default_value_t = Limits::default().max_file)]
    max_file_body: u64,
    /// Keep N sandboxes of IMAGE ready for `/run` (repeatable), e.g. --warm-pool alpine:3.20=4.
    #[arg(long = "warm-pool", value_name = "IMAGE=N")]
    warm_pool: Vec<String>,
    /// Do not serve the API (the controller only).
    #[arg(long)]
    no_api: bool,
    /// Resolve running sandboxes' secrets again every S seconds and hand rotated values to
    /// their shims (0: never).
    #[arg(long, value_name = "S", default_value_t = 60)]
    secret_refresh: u64,
}

/// How often `serve` removes the lock files of names nothing has any more.
const LOCK_SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Runs `task` every `period` on a thread named `name`, with an `Orchestrator` of its own.
fn every(orch: &Orchestrator, name: &'static str, period: Duration, mut task: impl FnMut(&Orchestrator) + Send + 'static) -> Result<()> {
    let config = (*orch.config).clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let orch = match Orchestrator::open(config) {
                Ok(o) => o,
                Err(e) => return tracing::error!("{name} is off: {e}"),
            };
            loop {
                std::thread::sleep(period);
                task(&orch);
            }
        })
        .with_context(|| format!("starting {name}"))?;
    Ok(())
}

pub fn serve(orch: &mut Orchestrator, dir: Option<&Path>, resync_secs: u64, prune_empty: bool, flags: ApiFlags) -> Result<i32> {
    if flags.secret_refresh > 0 {
        every(orch, "secret-refresh", Duration::from_secs(flags.secret_refresh), |orch| {
            if let Err(e) = orch.refresh_secrets() {
                tracing::warn!("refreshing secrets: {e}");
            }
        })?;
    }
    // Lock files of names used once (a pool's sandboxes, `/run`'s) would pile up for ever.
    every(orch, "lock-sweep", LOCK_SWEEP_EVERY, |orch| match orch.sweep_object_locks() {
        Ok(n) if n > 0 => tracing::debug!("removed {n} lock files of names no longer in use"),
        Ok(_) => {}
        Err(e) => tracing::warn!("sweeping lock files: {e}"),
    })?;
    let api = if flags.no_api {
        None
    } else {
        let allow_host_paths = match flags.allow_host_paths {
            Some(p) => Some(std::fs::canonicalize(&p).with_context(|| format!("--allow-host-paths {}", p.display()))?),
            None => None,
        };
        let mut warm_pools = Vec::new();
        for p in &flags.warm_pool {
            let (image, n) = p.rsplit_once('=').with_context(|| format!("--warm-pool {p}: IMAGE=N, e.g. alpine:3.20=4"))?;
            let n: usize = n.parse().ok().filter(|n| (1..=64).contains(n)).with_context(|| format!("--warm-pool {p}: N is 1 to 64"))?;
            warm_pools.push((image.to_string(), n));
        }
        let options = ApiOptions {
            warm_pools,
            socket: flags.socket,
            listen: flags.listen,
            tls: flags.tls_cert.zip(flags.tls_key),
            token_file: flags.token_file,
            token_env: std::env::var("ORCHESTRATOR_API_TOKEN").ok(),
            insecure_no_auth: flags.insecure_no_auth,
            allow_host_paths,
            allow_client_network: flags.allow_client_network,
            default_image: flags.default_image,
            session_idle: Duration::from_secs(flags.session_idle.max(1)),
            max_sessions: flags.max_sessions.max(1),
            limits: Limits { max_body: flags.max_body, max_file: flags.max_file_body, ..Limits::default() },
        };
        let running = crate::api::start((*orch.config).clone(), options, log)?;
        let auth = running.token_from.as_deref().map_or("no authentication".to_string(), |from| format!("token from {from}"));
        log(&format!("API on unix:{} ({auth})", running.socket.display()));
        if let Some(addr) = running.tcp {
            log(&format!("API on {}://{addr}", if running.tls { "https" } else { "http" }));
        }
        Some(running)
    };
    match (dir, api) {
        (Some(dir), _) => {
            let options = ServeOptions { resync: Duration::from_secs(resync_secs.max(1)), prune_empty, backoff: Backoff::default() };
            crate::controller::serve(orch, dir, &options, &log)?;
        }
        (None, Some(api)) => api.join(),
        (None, None) => anyhow::bail!("nothing to serve: give --config DIR, or drop --no-api"),
    }
    Ok(0)
}
