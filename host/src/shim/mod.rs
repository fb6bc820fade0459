//! The per-sandbox shim: a detached process (`orchestrator __shim DIR`) that owns one sandbox
//! for its whole life. It starts the sandbox through a `Backend` (namespaces today, a microVM
//! later), supervises the main process under the restart policy, writes its log and state, and
//! serves clients on a Unix socket, relaying their requests to the agent. CLI and daemon may
//! exit or crash; the shim and its sandbox keep running.

mod backend;
mod boot;
pub mod idmap;
mod microvm;
mod namespace;
pub mod network;
mod sealed_exe;
mod server;
pub mod tls;
mod virtiofs;
mod volumes;
mod writable;

use crate::paths::{write_atomic, InstanceDir};
use crate::spec::{Isolation, SandboxSpec};
use guest_agent::protocol::{ShimStatus, SandboxState};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use backend::Backend;
pub use namespace::USERNS_BASE;

/// What a shim says when the instance it was asked to run already has one.
pub const ALREADY_RUNNING: &str = "another shim already runs this sandbox";

/// Everything the shim needs, written by the host into the instance directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    pub instance: String,
    pub name: String,
    pub dir: PathBuf,
    /// The kind of sandbox and what that kind needs.
    pub backend: BackendConfig,
    pub spec: SandboxSpec,
    /// Hold the main process until the first client attaches (`run`), so no output is lost.
    pub wait_for_attach: bool,
    /// Give the main process a stdin (interactive `run -i`, PTY sandboxes).
    pub main_stdin: bool,
    /// Root filesystem patches, present only for the start that creates the writable layer.
    #[serde(default)]
    pub patches: Vec<guest_agent::protocol::PatchOp>,
    /// The sandbox's labels (plugins see them).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The Plugin resources of `spec.network.plugins`, resolved by the host.
    #[serde(default)]
    pub network_plugins: Vec<(String, crate::spec::PluginSpec)>,
    #[serde(default)]
    pub plugin_cache: Option<PathBuf>,
    /// The data directory, whose store receives the sandbox's network events.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Where the gateway relays DNS queries (resolved by the host: the shim's environment is
    /// cleared).
    #[serde(default)]
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Extra roots intercepted flows' real servers are verified against, besides the host's
    /// (the launcher's `ORCHESTRATOR_UPSTREAM_CA`).
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// `spec.volumes`, resolved by the host (volumes found, host paths made canonical).
    #[serde(default)]
    pub volumes: Vec<crate::volume::ResolvedMount>,
    /// This run's interception CA certificate (set by the shim, never written).
    #[serde(skip)]
    pub trust_anchor: Option<String>,
}

/// Which kind of sandbox a shim runs (never `auto`: the host resolved it), with what only that
/// kind needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    Namespace {
        /// Read-only image layers, topmost first.
        lower_dirs: Vec<String>,
    },
    /// What the VMM boots.
    Microvm(MicrovmConfig),
}

impl BackendConfig {
    pub fn isolation(&self) -> Isolation {
        match self {
            BackendConfig::Namespace { .. } => Isolation::Namespace,
            BackendConfig::Microvm(_) => Isolation::Microvm,
        }
    }

    /// The host directories the sandbox's root sits on (none for a microVM: its image is a disk).
    pub fn lower_dirs(&self) -> &[String] {
        match self {
            BackendConfig::Namespace { lower_dirs } => lower_dirs,
            BackendConfig::Microvm(_) => &[],
        }
    }
}

/// A microVM's machine: resolved by the host runtime, booted by the shim's VMM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicrovmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub image_disk: PathBuf,
    pub scratch_disk: PathBuf,
    pub vcpus: u8,
    pub mem_bytes: u64,
    /// Launch to the agent's `Ready`, seconds.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_secs: u64,
    /// virtiofsd, for named volumes and host paths (resolved by the host: the shim's
    /// environment is cleared).
    #[serde(default)]
    pub virtiofsd: Option<PathBuf>,
}

fn default_ready_timeout() -> u64 {
    crate::config::DEFAULT_VM_READY_TIMEOUT.as_secs()
}

/// The sandbox's resolved secrets, held in this shim's memory for its whole life (the network
/// proxy substitutes them into requests to their allowed hosts).
static SECRETS: std::sync::OnceLock<Vec<crate::plugin::secrets::ResolvedSecret>> = std::sync::OnceLock::new();

/// Reads the secrets the launcher writes to our stdin (then EOF), at most 4 MiB.
fn receive_secrets() {
    use std::io::Read;
    let mut text = String::new();
    let _ = std::io::stdin().lock().take(4 << 20).read_to_string(&mut text);
    let secrets = crate::plugin::secrets::decode(&text);
    crate::plugin::secrets::wipe(&mut text);
    let _ = SECRETS.set(secrets);
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto stdin of /dev/null; the pipe is done.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
}

impl ShimConfig {
    pub fn load(dir: &Path) -> Result<ShimConfig, String> {
        let text = std::fs::read_to_string(InstanceDir(dir.to_path_buf()).config())
            .map_err(|e| format!("reading the shim config in {}: {e}", dir.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("parsing the shim config: {e}"))
    }
}

pub fn write_state(dir: &InstanceDir, status: &ShimStatus) {
    if let Ok(json) = serde_json::to_vec_pretty(status) {
        let _ = write_atomic(&dir.state(), &json);
    }
}

pub fn read_state(dir: &InstanceDir) -> Option<ShimStatus> {
    serde_json::from_slice(&std::fs::read(dir.state()).ok()?).ok()
}

/// `orchestrator __shim DIR`. Standard output is the launcher's readiness pipe: one line,
/// `READY` or `ERROR: why`, then it is closed.
pub fn main(dir: PathBuf) -> ! {
    // Detach: the launcher reaps our parent at once; we live on in a session of our own.
    // SAFETY: no threads exist yet in this process.
    match unsafe { libc::fork() } {
        -1 => fail_early("fork failed"),
        0 => {}
        _ => std::process::exit(0),
    }
    // SAFETY: setsid in the fresh child.
    unsafe { libc::setsid() };
    // Nobody (not even a process of our own uid) may read our memory: it holds secrets.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    receive_secrets();
    let dir = InstanceDir(dir);
    let lock = match crate::paths::try_lock(&dir.lock()) {
        Ok(Some(l)) => l,
        Ok(None) => fail_early(ALREADY_RUNNING),
        Err(e) => fail_early(&format!("locking {}: {e}", dir.lock().display())),
    };
    let mut cfg = match ShimConfig::load(dir.path()) {
        Ok(c) => c,
        Err(e) => fail_early(&e),
    };
    redirect_stderr(&dir);
    let interception = match tls::Interception::for_sandbox(&cfg, secrets()) {
        Ok(i) => i,
        Err(e) => fail_early(&e),
    };
    cfg.trust_anchor = interception.as_ref().map(|i| i.ca_pem().to_string());
    let mut backend: Box<dyn Backend> = match cfg.backend {
        BackendConfig::Namespace { .. } => Box::new(namespace::NamespaceBackend::default()),
        BackendConfig::Microvm(_) => Box::new(microvm::MicrovmBackend::default()),
    };
    let published = match network::bind_published(&cfg) {
        Ok(p) => p,
        Err(e) => fail_early(&e),
    };
    let shim_pid = std::process::id();
    let _ = std::fs::write(dir.path().join("shim.pid"), shim_pid.to_string());
    write_state(&dir, &ShimStatus { state: SandboxState::Starting, shim_pid, main_pid: None, restarts: 0, last_exit: None, message: None });
    let agent = match backend.launch(&cfg) {
        Ok(a) => a,
        Err(e) => {
            backend.teardown();
            let msg = format!("starting the sandbox: {e}");
            write_state(&dir, &ShimStatus { state: SandboxState::Failed, shim_pid, main_pid: None, restarts: 0, last_exit: None, message: Some(msg.clone()) });
            fail_early(&msg);
        }
    };
    server::run(cfg, dir, backend, agent, lock, published, interception)
}

/// The secrets this shim received (none before `receive_secrets`).
pub(crate) fn secrets() -> &'static [crate::plugin::secrets::ResolvedSecret] {
    SECRETS.get().map(Vec::as_slice).unwrap_or(&[])
}

fn fail_early(msg: &str) -> ! {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ERROR: {msg}");
    let _ = out.flush();
    std::process::exit(1);
}

/// From here on diagnostics go to the instance's shim.log.
fn redirect_stderr(dir: &InstanceDir) {
    if let Ok(f) = crate::paths::open_private_append(&dir.shim_log()) {
        // SAFETY: dup2 onto stderr of a file we just opened.
        unsafe { libc::dup2(f.as_raw_fd(), 2) };
    }
}

/// Tells the launcher we are ready and detaches stdout from its pipe.
fn signal_ready() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"READY\n");
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto stdout of /dev/null; closes the readiness pipe.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}
