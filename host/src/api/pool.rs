//! Warm pools (`serve --warm-pool IMAGE=N`): sandboxes of an image made (and warmed with two
//! trivial commands) ahead of the requests that need one, so that `/run` pays for a command
//! and `POST /v1/sandboxes` for a rename, not for building a sandbox. A pooled sandbox serves
//! one `/run` and is removed after it (in the background: the answer does not wait), or
//! becomes the sandbox a `/v1` client asked for; the pool refills behind it, several at once.
//! Refills and removals wait for a gap between requests (`foreground`): a pool is a reserve
//! that serves a burst as large as itself at a warm sandbox's speed, then refills while the
//! clients pause. Hits and misses are counted.
//!
//! Invariants:
//! - A sandbox is handed out once: it leaves the ready list under the pool's lock.
//! - A pooled sandbox is exactly what `/run` would make: the image, the memory bound
//!   OpenSandbox's default `mem` asks for, a writable layer in memory (it is used once), no
//!   main process; a request that asks for other
//!   memory gets a fresh sandbox (a miss) rather than a looser bound. A `/v1` manifest gets one
//!   only when its spec is that spec ([`WarmPool::serves`]).
//! - A pool never runs dry waiting for a gap: at its low water ([`low_water`]) it refills at
//!   once, and no background work waits longer than [`DEFER_AT_MOST`].
//! - Pooled sandboxes have their own source (`api-pool`) until one becomes a client's: a new
//!   `serve` removes any an earlier one left, and no file source prunes them.

use super::problem::{ApiResult, Problem};
use super::ApiState;
use crate::sandbox::Sandbox;
use crate::spec::{Isolation, Resource, ResourceSpec, SandboxSpec, WritableLayer};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// The source of pooled sandboxes.
pub const POOL_SOURCE: &str = "api-pool";
/// The memory bound of pooled sandboxes: OpenSandbox's default `mem` (2 GiB).
pub const POOL_MEMORY: u64 = 2 << 30;
/// Pooled sandboxes are made to be used once and removed: their writable layer is memory,
/// which spares making, mounting and removing a disk for each (see [`WritableLayer::Memory`]).
pub const POOL_LAYER: WritableLayer = WritableLayer::Memory;

/// One image's pool.
pub struct WarmPool {
    pub image: String,
    pub size: usize,
    ready: Mutex<VecDeque<Sandbox>>,
    making: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    wake: Notify,
    /// The spec every pooled sandbox has (set when the pool starts filling).
    template: OnceLock<SandboxSpec>,
    /// The image has no Entrypoint or Cmd (known once the pool has the image).
    idle_image: OnceLock<bool>,
}

/// A pool's figures (`GET /v1/pools`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    pub image: String,
    /// The memory bound of its sandboxes, bytes: with the image and the writable layer, the
    /// spec a `POST /v1/sandboxes` must ask for to get one.
    pub memory: u64,
    #[serde(rename = "writableLayer")]
    pub writable_layer: WritableLayer,
    pub size: usize,
    pub ready: usize,
    /// Being made now.
    pub making: usize,
    pub hits: u64,
    pub misses: u64,
}

impl WarmPool {
    pub fn new(image: String, size: usize) -> Arc<WarmPool> {
        Arc::new(WarmPool { image, size, ready: Mutex::new(VecDeque::new()), making: AtomicUsize::new(0), hits: AtomicU64::new(0), misses: AtomicU64::new(0), wake: Notify::new(), template: OnceLock::new(), idle_image: OnceLock::new() })
    }

    /// A ready sandbox (its handle, connected), if there is one; either way the pool refills.
    pub fn take(&self) -> Option<Sandbox> {
        let got = self.ready.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        match got {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        self.wake.notify_one();
        got
    }

    /// Whether a sandbox of this pool is what `requested` asks for: the same spec, but for an
    /// isolation of `auto` or `namespace` (a pooled sandbox can take a client's name only as a
    /// namespace sandbox; a microVM one refuses, and the request gets a fresh sandbox).
    pub fn serves(&self, requested: &SandboxSpec) -> bool {
        let Some(template) = self.template.get() else { return false };
        if !matches!(requested.isolation, Isolation::Auto | Isolation::Namespace) {
            return false;
        }
        let mut r = requested.clone();
        r.isolation = template.isolation;
        // No command means the image's Entrypoint and Cmd; for an image with neither, that is
        // the pooled sandboxes' "no main process".
        if r.command.is_none() && self.idle_image.get() == Some(&true) {
            r.command = template.command.clone();
        }
        r == *template
    }

    /// Counts a request the pool could not serve (it asked for what pooled sandboxes are not).
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn view(&self) -> PoolView {
        PoolView {
            image: self.image.clone(),
            memory: POOL_MEMORY,
            writable_layer: POOL_LAYER,
            size: self.size,
            ready: self.ready.lock().unwrap_or_else(|e| e.into_inner()).len(),
            making: self.making.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// The smallest memory bound a sandbox the API makes for itself gets (its agent needs some).
const MIN_MEMORY: u64 = 32 << 20;

/// The resource of a sandbox of `image` the API makes for its own use: no main process,
/// `memory` bytes (None: unbounded), its writable layer where `layer` says.
fn own_resource(state: &ApiState, image: &str, name: &str, memory: Option<u64>, layer: WritableLayer) -> ApiResult<Resource> {
    let mut builder = Sandbox::builder(name).config(state.config.clone()).image(image.to_string()).writable_layer(layer);
    if let Some(bytes) = memory {
        builder = builder.memory(bytes.max(MIN_MEMORY) >> 20);
    }
    builder.resource().map_err(Problem::from)
}

/// Makes a sandbox of `image` for the API's own use (a pool, `/run`, a session): a random name
/// under `prefix`, no main process, `memory` bytes (None: unbounded), its writable layer where
/// `layer` says, the source given.
pub async fn make(state: &ApiState, image: &str, prefix: &str, source: &'static str, memory: Option<u64>, layer: WritableLayer) -> ApiResult<Sandbox> {
    let resource = own_resource(state, image, &format!("{prefix}-{}", crate::ids::random_hex(6)), memory, layer)?;
    crate::sandbox::create_resource(state.config.clone(), resource, source, format!("HTTP API ({source})")).await.map_err(Problem::from)
}

/// Commands a new pooled sandbox runs before it is handed out. A sandbox's first commands pay
/// for what later ones find ready (the handle's connection to its shim, the agent's worker
/// thread, the first pages of a fork): measured here, 2.3-3.1 ms for the first `/bin/true`
/// against 0.6 ms from the third on. A pool exists to take that off the request.
const WARM_UP_EXECS: usize = 2;

/// Runs [`WARM_UP_EXECS`] trivial commands (their result does not matter: an image without
/// `true` still warms the connection and the agent).
async fn warm(sandbox: &Sandbox) {
    for _ in 0..WARM_UP_EXECS {
        let _ = sandbox.exec("true", Vec::<String>::new()).await;
    }
}

/// Sandboxes a pool makes at once. Making one is mostly waiting (on the kernel's RCU grace
/// periods, on the agent's start), not CPU: one at a time, a pool refills slower than
/// back-to-back requests drain it.
pub const REFILLS_AT_ONCE: usize = 4;

/// Keeps `pool` full for as long as the server runs, making up to [`REFILLS_AT_ONCE`] at a
/// time. A failure to make one (a missing image, a host that cannot run it) is logged and
/// retried with back-off, never in a tight loop.
pub fn keep_filled(state: Arc<ApiState>, pool: Arc<WarmPool>) {
    match own_resource(&state, &pool.image, "pool-template", Some(POOL_MEMORY), xlayer()).map(|r| r.spec) {
        Ok(ResourceSpec::Sandbox(spec)) => {
            let _ = pool.template.set(spec);
        }
        Ok(_) => {}
        Err(p) => tracing::warn!("warm pool {}: {}", pool.image, p.detail),
    }
    tokio::spawn(async move {
        let (config, image) = (state.config.clone(), pool.image.clone());
        let resolved = tokio::task::spawn_blocking(move || crate::image::resolve(&config.data_dir, &config.registries, &image, crate::image::PullPolicy::IfNotPresent)).await;
        if let Ok(Ok(r)) = resolved {
            let _ = pool.idle_image.set(r.config.entrypoint.is_empty() && r.config.cmd.is_empty());
        }
        let mut backoff = Duration::from_secs(1);
        let mut making: tokio::task::JoinSet<Result<Sandbox, Problem>> = tokio::task::JoinSet::new();
        loop {
            let ready = pool.ready.lock().unwrap_or_else(|e| e.into_inner()).len();
            let wants = ready + making.len() < pool.size && making.len() < REFILLS_AT_ONCE;
            // A pool about to run dry refills now; one with a reserve left waits for a gap
            // between requests, so that they keep the CPU.
            let start_now = wants && ready <= low_water(pool.size);
            if !start_now {
                let fg = state.foreground.clone();
                let gap = async {
                    if wants {
                        fg.gap(super::foreground::QUIET, DEFER_AT_MOST).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    Some(done) = making.join_next() => {
                        pool.making.store(making.len(), Ordering::Relaxed);
                        match done {
                            Ok(Ok(sandbox)) => {
                                backoff = Duration::from_secs(1);
                                pool.ready.lock().unwrap_or_else(|e| e.into_inner()).push_back(sandbox);
                            }
                            Ok(Err(p)) => {
                                tracing::warn!("warm pool {}: making a sandbox failed: {}; retrying in {}s", pool.image, p.detail, backoff.as_secs());
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(60));
                            }
                            Err(e) => tracing::warn!("warm pool {}: a refill task failed: {e}", pool.image),
                        }
                        continue;
                    }
                    // Taken meanwhile: look again (it may be at its low water now).
                    _ = pool.wake.notified() => continue,
                    () = gap => {}
                }
            }
            let (state, image) = (state.clone(), pool.image.clone());
            making.spawn(async move {
                let sandbox = make(&state, &image, "pool", POOL_SOURCE, Some(POOL_MEMORY), xlayer()).await?;
                warm(&sandbox).await;
                Ok::<_, Problem>(sandbox)
            });
            pool.making.store(making.len(), Ordering::Relaxed);
        }
    });
}

/// The ready sandboxes at or below which a pool refills without waiting for a gap between
/// requests: an eighth of it, at least one, so a steady stream of requests drains the reserve
/// only that far before refills compete with it.
fn low_water(size: usize) -> usize {
    (size / 8).max(1)
}

/// The longest background work waits for a gap between requests: under load that never
/// pauses it runs anyway, beside them. A backstop only: what must not wait is bounded by
/// count (a pool at its low water refills at once; past [`discards_may_wait`] a removal
/// starts at once), so this can be long enough for a burst of several seconds to pass.
const DEFER_AT_MOST: Duration = Duration::from_secs(30);

/// Used sandboxes that may wait for a gap at once (past them a removal starts right away): as
/// many as the pools hold, so that a burst the pools serve is not slowed by removals either,
/// and at least 8 for `/run` without a pool. What waits is a sandbox running nothing (its
/// other processes are killed first), for at most [`DEFER_AT_MOST`]; an idle one takes about
/// 6.5 MiB of the host's memory (measured: docs/BENCHMARKS.md).
pub fn discards_may_wait(pools: &[(String, usize)]) -> usize {
    pools.iter().map(|(_, n)| n).sum::<usize>().max(8)
}

/// Removes a used sandbox without making its request wait: in the next gap between requests
/// (at most [`DEFER_AT_MOST`] later, and right away once [`discards_may_wait`] wait), as many
/// at once as the server allows.
pub async fn discard(state: &Arc<ApiState>, sandbox: Sandbox) {
    let remove = |sandbox: Sandbox, permit: tokio::sync::OwnedSemaphorePermit| async move {
        if let Err(e) = sandbox.remove().await {
            tracing::warn!("removing the used sandbox {}: {e}", sandbox.name());
        }
        drop(permit);
    };
    if state.discards_waiting.fetch_add(1, Ordering::AcqRel) < state.discards_may_wait {
        let state = state.clone();
        tokio::spawn(async move {
            // Whatever its command left running (a background process, a fork bomb held by
            // its pids bound) ends now, not when the removal comes.
            if let Err(e) = sandbox.kill_others().await {
                tracing::warn!("ending what the used sandbox {} still runs: {e}", sandbox.name());
            }
            state.foreground.gap(super::foreground::QUIET, DEFER_AT_MOST).await;
            state.discards_waiting.fetch_sub(1, Ordering::AcqRel);
            let Ok(permit) = state.discards.clone().acquire_owned().await else { return };
            remove(sandbox, permit).await;
        });
        return;
    }
    state.discards_waiting.fetch_sub(1, Ordering::AcqRel);
    // As many wait as may: this request waits for a removal slot (the host never piles up
    // used sandboxes), not for the removal.
    let Ok(permit) = state.discards.clone().acquire_owned().await else { return };
    tokio::spawn(remove(sandbox, permit));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_is_handed_out_once_and_hits_and_misses_are_counted() {
        let pool = WarmPool::new("img".into(), 2);
        let config = std::sync::Arc::new(crate::Config::new("/nonexistent"));
        pool.ready.lock().unwrap().extend(["a", "b"].map(|n| Sandbox::handle(n.to_string(), config.clone())));
        assert_eq!(pool.take().map(|s| s.name().to_string()).as_deref(), Some("a"));
        assert_eq!(pool.take().map(|s| s.name().to_string()).as_deref(), Some("b"));
        assert!(pool.take().is_none());
        pool.miss();
        let v = pool.view();
        assert_eq!((v.ready, v.hits, v.misses), (0, 2, 2));
    }

    #[test]
    fn a_pool_serves_only_its_own_spec() {
        let pool = WarmPool::new("img".into(), 1);
        let config = crate::Config::new("/nonexistent");
        let spec = |b: crate::SandboxBuilder| match b.config(config.clone()).resource().unwrap().spec {
            ResourceSpec::Sandbox(s) => s,
            _ => unreachable!(),
        };
        let template = spec(Sandbox::builder("t").image("alpine:3.20").memory(POOL_MEMORY >> 20));
        assert!(!pool.serves(&template), "no template yet: nothing matches");
        pool.template.set(template.clone()).unwrap();
        assert!(pool.serves(&template));
        let mut asked = template.clone();
        asked.isolation = Isolation::Namespace;
        assert!(pool.serves(&asked), "namespace is what a pooled sandbox can become");
        asked.isolation = Isolation::Microvm;
        assert!(!pool.serves(&asked));
        let mut asked = template.clone();
        asked.memory = Some(64 << 20);
        assert!(!pool.serves(&asked), "other memory");
        let mut asked = template.clone();
        asked.env.insert("A".into(), "1".into());
        assert!(!pool.serves(&asked), "another environment");
        let mut asked = template.clone();
        asked.command = None;
        assert!(!pool.serves(&asked), "the image's Entrypoint may run: not an idle sandbox");
        pool.idle_image.set(true).unwrap();
        assert!(pool.serves(&asked), "an image with no Entrypoint or Cmd: idle either way");
    }
}

fn xlayer() -> WritableLayer { if std::env::var_os("XDISK").is_some() { WritableLayer::Disk } else { POOL_LAYER } }
