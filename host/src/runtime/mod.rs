//! Runtimes: the host side of each isolation kind. A runtime says whether this host can run its
//! kind, starts a sandbox instance (through a detached shim) and stops it. Namespace sandboxes
//! and microVMs are implemented; `auto` picks microVMs only where this host's KVM can boot the
//! guest kernel (see `microvm::probe`).

use crate::cgroup::Cgroup;
use crate::config::Config;
use crate::paths::{shim_alive, InstanceDir};
use crate::shim::ShimConfig;
use crate::spec::{Isolation, SandboxSpec};
use guest_agent::protocol::ShimStatus;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0} isolation is not available on this host: {1}")]
    Unavailable(&'static str, String),
    #[error("starting the sandbox's shim: {0}")]
    Spawn(std::io::Error),
    #[error("{0}")]
    Start(String),
    /// Another shim holds this instance (one a killed CLI launched): adopt it, do not fail.
    #[error("another shim already runs this sandbox")]
    AlreadyRunning,
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

pub struct StartRequest<'a> {
    pub name: &'a str,
    /// Namespace or microVM (never `auto`: resolved when the instance was recorded).
    pub isolation: Isolation,
    pub instance: &'a str,
    pub dir: &'a InstanceDir,
    /// The spec with the image's defaults applied.
    pub spec: &'a SandboxSpec,
    pub image: &'a crate::image::ResolvedImage,
    pub wait_for_attach: bool,
    pub main_stdin: bool,
    /// Root filesystem patches for a first start (empty otherwise).
    pub patches: &'a [guest_agent::protocol::PatchOp],
    /// Resolved secrets, handed to the shim over a pipe, never written anywhere.
    pub secrets: &'a [crate::plugin::secrets::ResolvedSecret],
    pub labels: &'a std::collections::BTreeMap<String, String>,
    /// The Plugin resources `spec.network.plugins` names, for the shim's network policy.
    pub network_plugins: Vec<(String, crate::spec::PluginSpec)>,
    pub plugin_cache: Option<PathBuf>,
    /// `spec.volumes`, resolved (see `crate::volume::resolve`).
    pub volumes: &'a [crate::volume::ResolvedMount],
}

pub trait Runtime: Send + Sync {
    fn isolation(&self) -> Isolation;
    /// Ok when this host can run sandboxes of this kind, else why not and what to do.
    fn check_host(&self) -> Result<(), String>;
    /// Starts the instance; returns once the sandbox is ready for requests.
    fn start(&self, req: &StartRequest<'_>) -> Result<(), RuntimeError>;
}

pub struct NamespaceRuntime {
    pub config: Arc<Config>,
}

impl Runtime for NamespaceRuntime {
    fn isolation(&self) -> Isolation {
        Isolation::Namespace
    }

    fn check_host(&self) -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("namespace sandboxes need root (mounts, cgroups); run as root".into());
        }
        if !std::path::Path::new("/proc/self/ns/pid").exists() {
            return Err("the kernel has no PID namespaces".into());
        }
        Ok(())
    }

    fn start(&self, req: &StartRequest<'_>) -> Result<(), RuntimeError> {
        self.check_host().map_err(|e| RuntimeError::Unavailable("namespace", e))?;
        create_instance_dir(req.dir)?;
        let disk = req.dir.writable_disk();
        // An instance from before writable layers were bounded keeps its unbounded upper
        // directory (its files live there) until it is re-created.
        let legacy_upper = std::fs::read_dir(req.dir.upper()).map(|mut d| d.next().is_some()).unwrap_or(false);
        if !disk.exists() && !legacy_upper && req.spec.writable_layer == crate::spec::WritableLayer::Disk {
            let owner = if req.spec.user_namespace { crate::shim::USERNS_BASE } else { 0 };
            let store = crate::image::store::ImageStore::open(&self.config.data_dir)?;
            crate::image::disk::writable_disk(store.root(), &disk, req.spec.disk_bytes(), owner)?;
        }
        let image = req.image;
        let cfg = ShimConfig {
            instance: req.instance.to_string(),
            name: req.name.to_string(),
            dir: req.dir.path().to_path_buf(),
            backend: crate::shim::BackendConfig::Namespace { lower_dirs: image.layers.iter().map(|p| p.to_string_lossy().into_owned()).collect() },
            spec: req.spec.clone(),
            wait_for_attach: req.wait_for_attach,
            main_stdin: req.main_stdin,
            patches: req.patches.to_vec(),
            labels: req.labels.clone(),
            network_plugins: req.network_plugins.clone(),
            plugin_cache: req.plugin_cache.clone(),
            data_dir: Some(self.config.data_dir.clone()),
            dns_upstreams: self.config.dns_upstreams().map_err(RuntimeError::Start)?,
            upstream_ca: upstream_ca(),
            volumes: req.volumes.to_vec(),
            trust_anchor: None,
        };
        launch_shim(&self.config, req.dir, &cfg, req.secrets)
    }
}

/// MicroVM sandboxes: the shim boots the guest kernel with the agent's initramfs, the image's
/// read-only EROFS disk and the instance's ext4 scratch disk.
pub struct MicrovmRuntime {
    pub config: Arc<Config>,
    /// The sandbox's `kernel:`; None: the configured kernel.
    pub kernel: Option<String>,
}

/// Default guest memory.
const DEFAULT_VM_MEMORY: u64 = 256 << 20;

impl MicrovmRuntime {
    fn image_disk(&self, req: &StartRequest<'_>) -> Result<PathBuf, RuntimeError> {
        if let Some(dir) = req.spec.image.strip_prefix("dir:") {
            // A plain directory: its own disk per instance (there is no digest to share by).
            let disk = req.dir.path().join("image.erofs");
            if !disk.exists() {
                crate::image::disk::dir_disk(std::path::Path::new(dir), &disk)?;
            }
            return Ok(disk);
        }
        let store = crate::image::store::ImageStore::open(&self.config.data_dir)?;
        let key = crate::image::canonical(&req.spec.image);
        let record = store.record(&key).ok_or_else(|| RuntimeError::Start(format!("image {key} is not in the local store")))?;
        Ok(crate::image::disk::image_disk(&store, &record)?)
    }
}

impl Runtime for MicrovmRuntime {
    fn isolation(&self) -> Isolation {
        Isolation::Microvm
    }

    fn check_host(&self) -> Result<(), String> {
        crate::microvm::probe::ready(&self.config, self.kernel.as_deref())
    }

    fn start(&self, req: &StartRequest<'_>) -> Result<(), RuntimeError> {
        self.check_host().map_err(|e| RuntimeError::Unavailable("microvm", e))?;
        if req.spec.writable_layer == crate::spec::WritableLayer::Memory {
            return Err(RuntimeError::Start("a microVM's writable layer is its scratch disk: `writableLayer: memory` is for namespace sandboxes (use isolation namespace or auto)".into()));
        }
        let shares = req.volumes.iter().any(|v| !matches!(v.source, crate::volume::ResolvedSource::Tmpfs { .. }));
        if let Some(v) = req.volumes.iter().find(|v| matches!(v.source, crate::volume::ResolvedSource::HostPath { file: true, .. })) {
            return Err(RuntimeError::Start(format!("{}: a microVM mounts host directories only, not single files (virtio-fs shares a directory); mount its directory, or use isolation: namespace", v.mount_path)));
        }
        let virtiofsd = if shares {
            Some(crate::microvm::probe::virtiofsd().ok_or_else(|| RuntimeError::Start("volumes in microVMs need virtiofsd (the Rust virtio-fs daemon): `cargo install virtiofsd`, or name it with ORCHESTRATOR_VIRTIOFSD".into()))?)
        } else {
            None
        };
        let data = self.config.data_dir.as_path();
        let kernel = crate::microvm::kernel::for_sandbox(&self.config, self.kernel.as_deref()).map_err(RuntimeError::Start)?;
        let boot_image = kernel.boot_image(data).map_err(RuntimeError::Start)?;
        let agent = crate::microvm::initramfs::agent_binary(&self.config).map_err(RuntimeError::Start)?;
        let initrd = crate::microvm::initramfs::cached(data, &kernel, &agent).map_err(RuntimeError::Start)?;
        create_instance_dir(req.dir)?;
        let image_disk = self.image_disk(req)?;
        // The scratch disk's size is the bound on what the guest can write (`spec.disk`).
        let scratch_disk = req.dir.path().join("scratch.ext4");
        if !scratch_disk.exists() {
            let store = crate::image::store::ImageStore::open(data)?;
            crate::image::disk::writable_disk(store.root(), &scratch_disk, req.spec.disk_bytes(), 0)?;
        }
        let vcpus = req.spec.cpus.map(|c| c.ceil().clamp(1.0, 32.0) as u8).unwrap_or(1);
        let cfg = ShimConfig {
            instance: req.instance.to_string(),
            name: req.name.to_string(),
            dir: req.dir.path().to_path_buf(),
            spec: req.spec.clone(),
            wait_for_attach: req.wait_for_attach,
            main_stdin: req.main_stdin,
            patches: req.patches.to_vec(),
            backend: crate::shim::BackendConfig::Microvm(crate::shim::MicrovmConfig {
                kernel: boot_image,
                initrd,
                cmdline: crate::microvm::kernel::guest_cmdline(&self.config),
                ready_timeout_secs: self.config.vm_ready_timeout.as_secs(),
                image_disk,
                scratch_disk,
                vcpus,
                mem_bytes: req.spec.memory.unwrap_or(DEFAULT_VM_MEMORY),
                virtiofsd,
            }),
            labels: req.labels.clone(),
            network_plugins: req.network_plugins.clone(),
            plugin_cache: req.plugin_cache.clone(),
            data_dir: Some(data.to_path_buf()),
            dns_upstreams: self.config.dns_upstreams().map_err(RuntimeError::Start)?,
            upstream_ca: upstream_ca(),
            volumes: req.volumes.to_vec(),
            trust_anchor: None,
        };
        launch_shim(&self.config, req.dir, &cfg, req.secrets)
    }
}

/// What the reconciler does to sandbox instances, behind one seam: [`HostInstances`] drives
/// shims on this host; the reconciler's tests drive an in-memory fake, without root.
pub trait Instances: Send + Sync {
    /// The isolation this host runs `spec` with (`auto` resolved).
    fn isolation(&self, spec: &SandboxSpec) -> Isolation;
    /// Starts an instance of `req.isolation`; returns once it is ready for requests.
    fn start(&self, req: &StartRequest<'_>) -> Result<(), RuntimeError>;
    /// Whether the instance's shim lives, and what it last reported.
    fn observe(&self, dir: &InstanceDir) -> Observed;
    /// Stops an instance (graceful, then forced) and cleans up; safe on one already gone.
    fn stop(&self, instance: &str, dir: &InstanceDir, grace: Duration);
    /// Removes what a dead instance left on the host.
    fn cleanup(&self, instance: &str, dir: &InstanceDir);
}

/// An instance as its shim last left it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub alive: bool,
    pub state: Option<ShimStatus>,
}

/// The instances of this host: shims of the kind each sandbox asks for.
pub struct HostInstances {
    pub config: Arc<Config>,
}

impl HostInstances {
    fn runtime(&self, isolation: Isolation, kernel: Option<&str>) -> Box<dyn Runtime> {
        match isolation {
            Isolation::Microvm => Box::new(MicrovmRuntime { config: self.config.clone(), kernel: kernel.map(str::to_string) }),
            Isolation::Namespace | Isolation::Auto => Box::new(NamespaceRuntime { config: self.config.clone() }),
        }
    }
}

impl Instances for HostInstances {
    /// `auto` prefers microVMs where this host can boot the sandbox's kernel.
    fn isolation(&self, spec: &SandboxSpec) -> Isolation {
        // A microVM mounts named volumes and host paths through virtiofsd: without it, `auto`
        // picks the kind that can mount them.
        let shares = spec.volumes.iter().any(|v| !matches!(v.source, crate::spec::MountSource::Tmpfs(_)));
        match spec.isolation {
            // A memory layer is a namespace sandbox's (a microVM writes to its scratch disk).
            Isolation::Auto if spec.writable_layer == crate::spec::WritableLayer::Memory => Isolation::Namespace,
            Isolation::Auto if (!shares || crate::microvm::probe::virtiofsd().is_some()) && self.runtime(Isolation::Microvm, spec.kernel.as_deref()).check_host().is_ok() => Isolation::Microvm,
            Isolation::Auto => Isolation::Namespace,
            chosen => chosen,
        }
    }

    fn start(&self, req: &StartRequest<'_>) -> Result<(), RuntimeError> {
        self.runtime(req.isolation, req.spec.kernel.as_deref()).start(req)
    }

    fn observe(&self, dir: &InstanceDir) -> Observed {
        Observed { alive: shim_alive(dir), state: crate::shim::read_state(dir) }
    }

    fn stop(&self, instance: &str, dir: &InstanceDir, grace: Duration) {
        stop_instance(instance, dir, grace)
    }

    fn cleanup(&self, instance: &str, dir: &InstanceDir) {
        cleanup_instance(instance, dir)
    }
}

/// The instance directory: 0711, so the shim's socket inside is reachable only by name.
fn create_instance_dir(dir: &InstanceDir) -> Result<(), RuntimeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir.path())
        .map_err(|e| RuntimeError::Io { path: dir.path().display().to_string(), source: e })
}

/// `ORCHESTRATOR_UPSTREAM_CA`: extra roots for intercepted flows' real servers (the shim's
/// environment is cleared, so the launcher resolves it).
fn upstream_ca() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(std::env::var_os("ORCHESTRATOR_UPSTREAM_CA").filter(|v| !v.is_empty())?);
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

fn launch_shim(config: &Config, dir: &InstanceDir, cfg: &ShimConfig, secrets: &[crate::plugin::secrets::ResolvedSecret]) -> Result<(), RuntimeError> {
    create_instance_dir(dir)?;
    let json = serde_json::to_vec_pretty(cfg).map_err(|e| RuntimeError::Start(e.to_string()))?;
    crate::paths::write_atomic(&dir.config(), &json).map_err(|e| RuntimeError::Io { path: dir.config().display().to_string(), source: e })?;
    let socket_len = dir.socket().as_os_str().len();
    if socket_len >= 108 {
        return Err(RuntimeError::Start(format!(
            "the data directory path is too long for a Unix socket ({socket_len} bytes, limit 107); use a shorter --data-dir"
        )));
    }
    let mut child = Command::new(config.binary())
        .arg("__shim")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear()
        .env("PATH", guest_agent::abi::DEFAULT_PATH)
        .spawn()
        .map_err(RuntimeError::Spawn)?;
    // Secrets travel over the shim's stdin only: a pipe, never a file or an argument.
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let mut payload = crate::plugin::secrets::encode(secrets);
        // A shim that died before reading shows up as a failed start below.
        let _ = stdin.write_all(payload.as_bytes());
        crate::plugin::secrets::wipe(&mut payload);
    }
    let stdout = child.stdout.take().ok_or_else(|| RuntimeError::Start("no readiness pipe".into()))?;
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    // The launched process forks the real shim and exits at once.
    let _ = child.wait();
    match line.trim_end() {
        "READY" => Ok(()),
        l if l.ends_with(crate::shim::ALREADY_RUNNING) => Err(RuntimeError::AlreadyRunning),
        l if l.starts_with("ERROR: ") => Err(RuntimeError::Start(l["ERROR: ".len()..].to_string())),
        _ => {
            let log = std::fs::read_to_string(dir.shim_log()).unwrap_or_default();
            Err(RuntimeError::Start(format!("the shim exited before the sandbox was ready; shim log: {}", log.trim())))
        }
    }
}

/// Stops an instance: asks its shim (graceful, then forced), waits for it to exit, and removes
/// whatever a dead shim left behind. Safe to call on an instance that is already gone.
pub fn stop_instance(instance: &str, dir: &InstanceDir, grace: Duration) {
    if shim_alive(dir) {
        let asked = crate::client::ShimClient::connect(&dir.socket()).and_then(|mut c| c.stop(grace.as_millis() as u64)).is_ok();
        let deadline = Instant::now() + if asked { grace + Duration::from_secs(10) } else { Duration::ZERO };
        while shim_alive(dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if shim_alive(dir) {
            kill_shim(dir);
        }
    }
    cleanup_instance(instance, dir);
}

fn kill_shim(dir: &InstanceDir) {
    if let Some(pid) = std::fs::read_to_string(dir.path().join("shim.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        // SAFETY: the pid comes from the instance's pid file and the lock proves that shim lives.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while shim_alive(dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Removes host-side leftovers of a dead instance (its cgroup and socket). The sandbox's mounts
/// lived in its own mount namespace and died with it.
pub fn cleanup_instance(instance: &str, dir: &InstanceDir) {
    let cg = Cgroup::of(instance);
    if cg.exists() {
        if let Err(e) = cg.destroy() {
            tracing::warn!("sandbox instance {instance}: {e}");
        }
    }
    crate::shim::idmap::detach_all(dir.path(), true);
    let _ = std::fs::remove_file(dir.socket());
}

#[cfg(test)]
pub mod fake;
