//! One sandbox, driven from a program: [`Sandbox`] is a handle (its name and a configuration,
//! plus a cached connection to its shim), made by [`Sandbox::builder`] or found again by
//! [`Sandbox::get`] from any process. The sandbox is a resource like any other: source
//! `library`, listed by `get`, adopted and reconciled, never pruned by a file source.
//!
//! Invariants:
//! - The handle owns no sandbox state: dropping it leaves the sandbox running (detached), and
//!   two handles (in one process or two) drive one sandbox safely.
//! - One request at a time per connection: an operation takes the cached connection, or opens
//!   its own while another holds it, and puts it back only after a clean answer.
//! - Store writes (create, stop, remove) take the sandbox's own lock like every other writer;
//!   exec and the file API never touch the store once connected.

mod builder;
pub mod copy;
mod direct;
mod events;
mod exec;
mod fs;
mod logs;
mod pooled;
pub mod tarball;

pub use builder::{PatchBuilder, SandboxBuilder};
pub(crate) use builder::create_resource;
pub use copy::Copied;
pub use events::EventStream;
pub use exec::{ExecControl, ExecEvent, ExecHandle, ExecOptions, ExecOutput};
pub use fs::SandboxFs;
pub use logs::LogStream;
pub use guest_agent::protocol::{DirEntry, ExitStatus, FileKind, FileStat, Rlimits};

use crate::client::{ClientError, ShimClient};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reconcile::{Orchestrator, STOP_GRACE};
use crate::view::ResourceView;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The source of sandboxes made through the library.
pub const LIBRARY_SOURCE: &str = "library";

/// A handle to one sandbox.
///
/// ```no_run
/// # async fn demo() -> orchestrator::Result<()> {
/// use orchestrator::Sandbox;
/// // Another process created "worker"; reconnect to it by name.
/// let sandbox = Sandbox::get("worker").await?;
/// let out = sandbox.exec("uname", ["-r"]).await?;
/// println!("kernel {}", out.stdout_lossy().trim());
/// sandbox.stop_and_wait().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sandbox {
    name: String,
    config: Arc<Config>,
    connection: Arc<Mutex<Option<Connection>>>,
    /// The root the file API's short path uses ([`direct`]), once found.
    direct: Arc<Mutex<DirectState>>,
}

/// How long a handle trusts that the short path is not for its sandbox before asking again.
const DIRECT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
enum DirectState {
    #[default]
    Unknown,
    /// Not for this sandbox when last asked (a microVM, a user namespace, a shim that does not
    /// know the request, a sandbox not running): file requests go through the agent. Asked
    /// again after [`DIRECT_RETRY`]: a kept handle may outlive the instance it was asked for.
    Unavailable(std::time::Instant),
    Open(Arc<direct::DirectRoot>),
}

struct Connection {
    socket: PathBuf,
    client: ShimClient,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("name", &self.name).field("data_dir", &self.config.data_dir).finish()
    }
}

/// Runs blocking work (the store, the shim's socket) off the async runtime's threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Protocol(format!("a worker thread failed: {e}")))?
}

impl Sandbox {
    /// A builder for a new sandbox named `name` (1-63 lowercase letters, digits and '-').
    pub fn builder(name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder::new(name.into())
    }

    /// The existing sandbox `name`, in the data directory [`Config::from_env`] names.
    pub async fn get(name: impl Into<String>) -> Result<Sandbox> {
        Sandbox::get_in(Config::from_env(), name).await
    }

    /// The existing sandbox `name` (or a unique prefix of its instance id) under `config`.
    pub async fn get_in(config: Config, name: impl Into<String>) -> Result<Sandbox> {
        let text = name.into();
        blocking(move || {
            let orch = Orchestrator::open(config)?;
            let name = orch.resolve_name(&text)?;
            Ok(Sandbox { name, config: orch.config.clone(), connection: Arc::default(), direct: Arc::default() })
        })
        .await
    }

    pub(crate) fn handle(name: String, config: Arc<Config>) -> Sandbox {
        Sandbox { name, config, connection: Arc::default(), direct: Arc::default() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its view, as `get -o json` shows it (status, instance, restarts, network counters).
    pub async fn view(&self) -> Result<ResourceView> {
        let (config, name) = (self.config.clone(), self.name.clone());
        blocking(move || Orchestrator::open((*config).clone())?.get(&name)).await
    }

    /// The filesystem inside the sandbox.
    pub fn fs(&self) -> SandboxFs {
        SandboxFs::new(self.clone())
    }

    /// Runs a change of this sandbox's instance under its lock (blocking, off the runtime);
    /// the cached connection is dropped, since the instance may be another one after.
    async fn change<T: Send + 'static>(&self, f: impl FnOnce(&mut Orchestrator, &str) -> Result<T> + Send + 'static) -> Result<T> {
        let this = self.clone();
        blocking(move || {
            let mut orch = Orchestrator::open((*this.config).clone())?;
            let _lock = orch.lock_object(&this.name)?;
            this.forget_connection();
            f(&mut orch, &this.name)
        })
        .await
    }

    /// Asks the sandbox to stop (SIGTERM, then SIGKILL after the grace period) and returns
    /// without waiting; it stays stopped until [`Sandbox::start`], whatever its restart policy.
    pub async fn stop(&self) -> Result<()> {
        self.change(|orch, name| {
            let mut row = orch.store.sandbox(name)?.ok_or_else(|| Error::no_sandbox(name))?;
            row.user_stopped = true;
            orch.store.update_sandbox(&row)?;
            orch.store.event(&format!("Sandbox/{name}"), "Stopping", "stop requested")?;
            let dir = orch.instance_dir(&row);
            if crate::paths::shim_alive(&dir) {
                let mut client = ShimClient::connect(&dir.socket()).map_err(|e| Error::sandbox(name, e))?;
                client.stop(STOP_GRACE.as_millis() as u64).map_err(|e| Error::sandbox(name, e))?;
            }
            Ok(())
        })
        .await
    }

    /// Stops the sandbox and returns once its processes are gone and its status recorded.
    pub async fn stop_and_wait(&self) -> Result<()> {
        self.change(|orch, name| Ok(orch.stop(name)?)).await
    }

    /// Starts a stopped or exited sandbox again (a new instance if its spec changed).
    pub async fn start(&self) -> Result<()> {
        self.change(|orch, name| Ok(orch.start(name)?)).await
    }

    /// Kills every process in the sandbox but its init: it stays, running nothing. Refused for
    /// a sandbox with a main process.
    pub(crate) async fn kill_others(&self) -> Result<()> {
        let this = self.clone();
        blocking(move || this.with_client(|c| c.kill_others())).await
    }

    /// Stops the sandbox if it runs and deletes it: its instance, its files, its resource.
    pub async fn remove(&self) -> Result<()> {
        self.change(|orch, name| Ok(orch.delete(name)?)).await
    }

    /// The sandbox's root for the file API's short path (blocking: it may ask the shim), or
    /// None when requests go through the agent.
    pub(crate) fn direct_root(&self) -> Option<Arc<direct::DirectRoot>> {
        let mut state = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            DirectState::Open(root) if root.alive() => return Some(root.clone()),
            DirectState::Unavailable(asked) if asked.elapsed() < DIRECT_RETRY => return None,
            // Not found yet, or the init it belonged to has ended (a restart): find it now.
            _ => {}
        }
        let found = self.with_client(|c| c.init_pid()).ok().and_then(|pid| direct::DirectRoot::open(pid, || self.with_client(|c| c.init_pid()).ok())).map(Arc::new);
        *state = found.clone().map_or_else(|| DirectState::Unavailable(std::time::Instant::now()), DirectState::Open);
        found
    }

    fn forget_connection(&self) {
        self.connection.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A connection to the running instance's shim, found through the store.
    fn connect(&self) -> Result<Connection> {
        let orch = Orchestrator::open((*self.config).clone())?;
        let row = orch.store.sandbox(&self.name)?.ok_or_else(|| Error::no_sandbox(&self.name))?;
        let dir = orch.instance_dir(&row);
        if !crate::paths::shim_alive(&dir) {
            return Err(Error::NotRunning { name: self.name.clone(), status: orch.observe(&row).status.as_str().to_string() });
        }
        let client = ShimClient::connect(&dir.socket()).map_err(|e| self.lost(e))?;
        Ok(Connection { socket: dir.socket(), client })
    }

    /// The error for a shim that stopped answering: the sandbox was removed or stopped meanwhile
    /// (a request racing a delete: the client's to know, not a failure), else it failed.
    fn lost(&self, e: ClientError) -> Error {
        let Ok(orch) = Orchestrator::open((*self.config).clone()) else { return Error::sandbox(&self.name, e) };
        match orch.store.sandbox(&self.name) {
            Ok(None) => Error::no_sandbox(&self.name),
            Ok(Some(row)) if !crate::paths::shim_alive(&orch.instance_dir(&row)) => {
                Error::NotRunning { name: self.name.clone(), status: orch.observe(&row).status.as_str().to_string() }
            }
            _ => Error::sandbox(&self.name, e),
        }
    }

    /// Runs one request on a connection (blocking). A cached connection that turns out to be
    /// dead (the instance was re-created) is replaced once; a request that failed on a fresh
    /// connection is not retried.
    pub(crate) fn with_client<T>(&self, mut f: impl FnMut(&mut ShimClient) -> std::result::Result<T, ClientError>) -> Result<T> {
        let cached = self.connection.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (mut conn, fresh) = match cached {
            Some(c) => (c, false),
            None => (self.connect()?, true),
        };
        let result = match f(&mut conn.client) {
            Err(ClientError::Frame(_)) if !fresh => {
                conn = self.connect()?;
                f(&mut conn.client)
            }
            other => other,
        };
        match result {
            Ok(v) => {
                let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
                if slot.is_none() {
                    *slot = Some(conn);
                }
                Ok(v)
            }
            Err(e @ ClientError::Remote { .. }) => {
                // The connection is fine; the request was refused.
                let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
                if slot.is_none() {
                    *slot = Some(conn);
                }
                Err(Error::from(e))
            }
            Err(e) => {
                tracing::debug!("sandbox {}: dropping the connection to {}: {e}", self.name, conn.socket.display());
                Err(match e {
                    ClientError::Connect { .. } | ClientError::Frame(_) => self.lost(e),
                    other => Error::sandbox(&self.name, other),
                })
            }
        }
    }
}


