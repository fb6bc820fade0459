//! [`SandboxBuilder`]: a sandbox's spec built in code, checked like a YAML one, and created as
//! a resource of the `library` source.

use super::{blocking, Sandbox, LIBRARY_SOURCE};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reconcile::Orchestrator;
use crate::spec::{self, Isolation, Kind, Limits, NetworkPreset, PortMapping, PortProtocol, Resource, ResourceSpec, RestartPolicy, SandboxSpec, SecretRef, SpecError};
use guest_agent::protocol::PatchOp;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A new sandbox's spec. Unlike `run` or a YAML sandbox without `command`, a built sandbox
/// runs no main process unless [`SandboxBuilder::command`] gives one (not even the image's
/// Entrypoint and Cmd): it waits for `exec`, as microsandbox's do.
///
/// ```no_run
/// # async fn demo() -> orchestrator::Result<()> {
/// use orchestrator::Sandbox;
/// let sandbox = Sandbox::builder("agent-1")
///     .image("python:3.12-slim")
///     .cpus(1)
///     .memory(512)
///     .env("MODE", "test")
///     .workdir("/work")
///     .patch(|p| p.mkdir("/work", Some(0o755)).text("/work/hello.py", "print('hello')\n", None))
///     .label("team", "research")
///     .create()
///     .await?;
/// assert_eq!(sandbox.exec("python3", ["hello.py"]).await?.stdout_lossy(), "hello\n");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    name: String,
    image: Option<String>,
    spec: SandboxSpec,
    labels: BTreeMap<String, String>,
    config: Option<Config>,
    problems: Vec<(String, String)>,
}

/// Root filesystem changes made before the sandbox's first start ([`SandboxBuilder::patch`]).
///
/// ```no_run
/// # async fn demo() -> orchestrator::Result<()> {
/// let sandbox = orchestrator::Sandbox::builder("web")
///     .image("dir:/srv/rootfs")
///     .patch(|p| p.mkdir("/srv/app", None).text("/srv/app/config.toml", "debug = true\n", None).append("/etc/hosts", "10.0.0.2 db\n"))
///     .create()
///     .await?;
/// assert_eq!(sandbox.fs().read_to_string("/srv/app/config.toml").await?, "debug = true\n");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PatchBuilder {
    ops: Vec<PatchOp>,
}

impl PatchBuilder {
    /// Writes a file (mode 0644 unless given), replacing what is there.
    pub fn text(self, path: impl Into<String>, contents: impl Into<String>, mode: Option<u32>) -> Self {
        self.file(path, contents.into().into_bytes(), mode)
    }
    pub fn file(mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: Option<u32>) -> Self {
        self.ops.push(PatchOp::Write { path: path.into(), contents: contents.into(), mode: mode.unwrap_or(0o644) });
        self
    }
    /// Appends to a file (creating it).
    pub fn append(mut self, path: impl Into<String>, contents: impl Into<String>) -> Self {
        self.ops.push(PatchOp::Append { path: path.into(), contents: contents.into().into_bytes() });
        self
    }
    /// Makes a directory and its parents (mode 0755 unless given).
    pub fn mkdir(mut self, path: impl Into<String>, mode: Option<u32>) -> Self {
        self.ops.push(PatchOp::Mkdir { path: path.into(), mode: mode.unwrap_or(0o755) });
        self
    }
    pub fn symlink(mut self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.ops.push(PatchOp::Symlink { path: path.into(), target: target.into() });
        self
    }
    pub fn chmod(mut self, path: impl Into<String>, mode: u32) -> Self {
        self.ops.push(PatchOp::Chmod { path: path.into(), mode });
        self
    }
    pub fn remove(mut self, path: impl Into<String>) -> Self {
        self.ops.push(PatchOp::Remove { path: path.into() });
        self
    }
}

impl SandboxBuilder {
    pub(super) fn new(name: String) -> SandboxBuilder {
        let mut spec = SandboxSpec::new(String::new());
        spec.command = Some(Vec::new());
        SandboxBuilder { name, image: None, spec, labels: BTreeMap::new(), config: None, problems: Vec::new() }
    }

    /// The configuration to create it under; default [`Config::from_env`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// An OCI image (`alpine:3.20`, `host:port/name@sha256:...`), `oci-layout:DIR[:TAG]`,
    /// `oci-archive:FILE[:TAG]`, or a root filesystem directory (`dir:PATH` or a path).
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }
    /// CPUs (fractions allowed: 0.5 is half a core).
    pub fn cpus(mut self, cpus: impl Into<f64>) -> Self {
        self.spec.cpus = Some(cpus.into());
        self
    }
    /// Memory in MiB.
    pub fn memory(mut self, mib: u64) -> Self {
        self.spec.memory = Some(mib.saturating_mul(1 << 20));
        self
    }
    /// The bound on the writable layer in MiB (default 10 GiB).
    pub fn disk(mut self, mib: u64) -> Self {
        self.spec.disk = Some(mib.saturating_mul(1 << 20));
        self
    }
    /// Where the writable layer lives (default: a disk of its own; see [`WritableLayer`]).
    pub fn writable_layer(mut self, layer: crate::spec::WritableLayer) -> Self {
        self.spec.writable_layer = layer;
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.insert(key.into(), value.into());
        self
    }
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.spec.workdir = Some(dir.into());
        self
    }
    /// `name`, `uid` or `uid:gid` for the main process and execs.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.spec.user = Some(user.into());
        self
    }
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.spec.isolation = isolation;
        self
    }
    /// MicroVMs: the guest kernel (a package directory, an image file, or a name in
    /// `DATA/kernels`).
    pub fn kernel(mut self, kernel: impl Into<String>) -> Self {
        self.spec.kernel = Some(kernel.into());
        self
    }
    /// Process limits (pids, open files, file size, CPU seconds).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.spec.limits = limits;
        self
    }
    /// Root filesystem changes, applied before the first start.
    pub fn patch(mut self, f: impl FnOnce(PatchBuilder) -> PatchBuilder) -> Self {
        self.spec.patches.extend(f(PatchBuilder::default()).ops);
        self
    }
    /// A secret from a secret-provider plugin: the sandbox sees a placeholder in `env`; the value
    /// may only go to `allow_hosts`.
    pub fn secret<I: IntoIterator<Item = S>, S: Into<String>>(mut self, env: impl Into<String>, provider: impl Into<String>, key: impl Into<String>, allow_hosts: I) -> Self {
        self.spec.secrets.push(SecretRef {
            env: env.into(),
            provider: provider.into(),
            key: key.into(),
            allow_hosts: allow_hosts.into_iter().map(Into::into).collect(),
            inject_into: vec![crate::spec::InjectInto::Headers],
            on_violation: crate::spec::OnViolation::Block,
            value: None,
        });
        self
    }
    /// A secret given by value (as microsandbox's `secret_env`): the sandbox sees a placeholder
    /// in `env`; the value goes to the sandbox's shim only, is stored nowhere and may only go to
    /// `allow_hosts`. A sandbox whose shim is gone cannot start again with it: re-create it.
    pub fn secret_value<I: IntoIterator<Item = S>, S: Into<String>>(mut self, env: impl Into<String>, value: impl Into<String>, allow_hosts: I) -> Self {
        self.spec.secrets.push(SecretRef {
            env: env.into(),
            provider: crate::spec::VALUE_PROVIDER.into(),
            key: String::new(),
            allow_hosts: allow_hosts.into_iter().map(Into::into).collect(),
            inject_into: vec![crate::spec::InjectInto::Headers],
            on_violation: crate::spec::OnViolation::Block,
            value: Some(crate::spec::GivenValue(value.into())),
        });
        self
    }
    /// Widens where the last secret added is substituted (headers only by default) and what a
    /// placeholder caught going elsewhere does.
    pub fn secret_options(mut self, inject_into: &[crate::spec::InjectInto], on_violation: crate::spec::OnViolation) -> Self {
        if let Some(last) = self.spec.secrets.last_mut() {
            last.inject_into = inject_into.to_vec();
            last.on_violation = on_violation;
        }
        self
    }
    /// Names whose TLS is intercepted (`spec.network.tls.intercept`) and names never
    /// intercepted (`bypass`), besides the secrets' hosts.
    pub fn tls_interception<I: IntoIterator<Item = S>, B: IntoIterator<Item = S>, S: Into<String>>(mut self, intercept: I, bypass: B) -> Self {
        self.spec.network.tls.intercept.extend(intercept.into_iter().map(Into::into));
        self.spec.network.tls.bypass.extend(bypass.into_iter().map(Into::into));
        self
    }
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    /// A main process; without one the sandbox runs none and waits for `exec`.
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.spec.command = Some(argv.into_iter().map(Into::into).collect());
        self
    }
    /// Whether a main process that ends (or a shim that dies) is started again (default Always).
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.spec.restart_policy = policy;
        self
    }
    /// The network preset: public-only (default), none (loopback only) or allow-all.
    pub fn network(mut self, preset: NetworkPreset) -> Self {
        self.spec.network.policy = preset;
        self
    }
    /// Publishes a TCP port: 127.0.0.1:`host` on the host reaches `guest` inside.
    pub fn port(mut self, host: u16, guest: u16) -> Self {
        match PortMapping::parse(&format!("{host}:{guest}")) {
            Ok(m) => self.spec.ports.push(m),
            Err(e) => self.problems.push(("spec.ports".into(), e)),
        }
        self
    }

    /// Mounts named volume `volume` at `path` (read-only with `read_only`); create it first
    /// (`Orchestrator::create_volume`, `orchestrator volume create`, or a `kind: Volume`).
    pub fn volume(self, volume: impl Into<String>, path: impl Into<String>, read_only: bool) -> Self {
        let volume = volume.into();
        self.mount(spec::MountSource::Volume(volume), path.into(), read_only)
    }
    /// Mounts a host directory or file at `path` (relative host paths start at the current
    /// directory).
    pub fn host_path(self, host: impl AsRef<std::path::Path>, path: impl Into<String>, read_only: bool) -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let host = cwd.join(host.as_ref()).components().collect::<PathBuf>().to_string_lossy().into_owned();
        self.mount(spec::MountSource::HostPath(host), path.into(), read_only)
    }
    /// A fresh tmpfs of `mib` MiB at `path`, charged to the sandbox's memory.
    pub fn tmpfs(self, path: impl Into<String>, mib: u64) -> Self {
        self.mount(spec::MountSource::Tmpfs(mib << 20), path.into(), false)
    }
    fn mount(mut self, source: spec::MountSource, path: String, read_only: bool) -> Self {
        match spec::check_mount_path(&path) {
            Ok(mount_path) => self.spec.volumes.push(spec::VolumeMount { source, mount_path, read_only }),
            Err(e) => self.problems.push(("spec.volumes".into(), e)),
        }
        self
    }

    /// The resource this builder describes, checked as a YAML sandbox is.
    pub fn resource(&self) -> Result<Resource> {
        let mut spec = self.spec.clone();
        let mut errors: Vec<SpecError> = Vec::new();
        let file = PathBuf::from(format!("Sandbox::builder({:?})", self.name));
        let mut problem = |field: &str, message: String, hint: Option<String>| {
            errors.push(SpecError { file: file.clone(), line: 0, col: 0, field: field.to_string(), message, hint });
        };
        for (field, message) in &self.problems {
            problem(field, message.clone(), None);
        }
        if !spec::is_valid_name(&self.name) {
            problem("metadata.name", format!("{:?} is not a name", self.name), Some("use 1-63 lowercase letters, digits and '-'".into()));
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        match self.image.as_deref() {
            None => problem("spec.image", "no image".into(), Some("call .image(\"alpine:3.20\") (or a root filesystem directory)".into())),
            Some(image) => match spec::normalise_image(&bare_directory(image), &cwd) {
                Ok(i) => spec.image = i,
                Err((message, hint)) => problem("spec.image", message, Some(hint)),
            },
        }
        if spec.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
            problem("spec.cpus", "must be above 0 (and at most 1024)".into(), None);
        }
        if spec.memory.is_some_and(|m| m < 4 << 20) {
            problem("spec.memory", "below the 4 MiB a sandbox needs".into(), None);
        }
        if let Some(d) = spec.disk {
            if let Err(e) = spec::check_disk(d) {
                problem("spec.disk", e, None);
            }
        }
        for key in spec.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                problem(&format!("spec.env.{key}"), "not an environment variable name".into(), None);
            }
        }
        for (i, op) in spec.patches.iter().enumerate() {
            let path = match op {
                PatchOp::Write { path, .. } | PatchOp::Append { path, .. } | PatchOp::Mkdir { path, .. } | PatchOp::Symlink { path, .. } | PatchOp::Chmod { path, .. } | PatchOp::Remove { path } => path,
            };
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path == "/" {
                problem(&format!("spec.patches[{i}].path"), format!("{path:?} is not an absolute path inside the root"), None);
            }
        }
        for (i, s) in spec.secrets.iter().enumerate() {
            if s.env.is_empty() || s.env.starts_with(|c: char| c.is_ascii_digit()) || !s.env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                problem(&format!("spec.secrets[{i}].env"), format!("{:?} is not an environment variable name", s.env), None);
            }
        }
        if let Some(k) = spec.kernel.clone() {
            if spec.isolation == Isolation::Namespace {
                problem("spec.kernel", "a namespace sandbox runs on the host's kernel".into(), Some("use Isolation::Microvm".into()));
            }
            match spec::normalise_kernel(&k, &cwd) {
                Ok(k) => spec.kernel = Some(k),
                Err((message, hint)) => problem("spec.kernel", message, Some(hint)),
            }
        }
        if spec.network.policy == NetworkPreset::None && !spec.ports.is_empty() {
            problem("spec.ports", "a sandbox without a network has no link to publish ports on".into(), None);
        }
        for (i, v) in spec.volumes.iter().enumerate() {
            match &v.source {
                spec::MountSource::Volume(n) if !spec::is_valid_name(n) => problem(&format!("spec.volumes[{i}].name"), format!("{n:?} is not a volume name"), None),
                spec::MountSource::Tmpfs(size) => {
                    if let Err(e) = spec::check_tmpfs_size(*size) {
                        problem(&format!("spec.volumes[{i}].size"), e, None);
                    }
                }
                _ => {}
            }
        }
        if let Some(p) = spec::duplicate_mount_path(&spec.volumes) {
            problem("spec.volumes", format!("{p} is mounted twice"), None);
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &spec.ports {
            if !seen.insert((p.host, p.protocol == PortProtocol::Udp)) {
                problem("spec.ports", format!("host port {} is published twice", p.host), None);
            }
        }
        if !errors.is_empty() {
            return Err(Error::InvalidSpec(errors));
        }
        Ok(Resource { name: self.name.clone(), labels: self.labels.clone(), spec: ResourceSpec::Sandbox(spec) })
    }

    /// Creates the sandbox and returns once it is ready for `exec`. It is detached: it runs
    /// on after this program ends, until stopped or removed. A name already in use is
    /// [`crate::ErrorKind::Conflict`]; a create that fails leaves nothing behind.
    pub async fn create(self) -> Result<Sandbox> {
        let resource = self.resource()?;
        let config = self.config.unwrap_or_else(Config::from_env);
        create_resource(config, resource, LIBRARY_SOURCE, "Sandbox::builder".into()).await
    }
}

/// Records a validated Sandbox resource under `source` (a new name only: one in use is a
/// conflict) and starts it; a start that fails leaves nothing behind.
pub(crate) async fn create_resource(config: Config, mut resource: Resource, source: &'static str, origin: String) -> Result<Sandbox> {
    blocking(move || {
        // Values given with the request go to memory that only this start reads, never the store.
        let given = crate::hooks::take_given_values(&mut resource);
        let mut orch = Orchestrator::open(config)?;
        let name = resource.name.clone();
        let _object = orch.lock_object(&name)?;
        {
            // Claiming a name is a change of desired state.
            let _desired = orch.lock()?;
            if let Some(existing) = orch.store.resource(Kind::Sandbox, &name)? {
                return Err(Error::Conflict(format!(
                    "a sandbox named {name:?} already exists (source {}); reconnect with Sandbox::get, or remove it first",
                    existing.source
                )));
            }
            let tx = orch.store.transaction()?;
            crate::store::Store::upsert_resource(&tx, &resource, source, &origin)?;
            tx.commit()?;
        }
        let _given = crate::hooks::GivenGuard::hold(&name, given);
        if let Err(e) = orch.create_instance(&resource, false, false) {
            let _ = orch.delete(&name);
            return Err(e.into());
        }
        Ok(Sandbox::handle(name, orch.config.clone()))
    })
    .await
}

/// A root filesystem directory named by its path alone (`/srv/rootfs`, `./rootfs`) is a
/// `dir:` image, as microsandbox's builder takes one.
fn bare_directory(image: &str) -> String {
    if image.starts_with(['/', '.']) && std::path::Path::new(image).is_dir() {
        format!("dir:{image}")
    } else {
        image.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let e = Sandbox::builder("Bad_Name").cpus(0).memory(1).disk(1).patch(|p| p.text("etc/x", "", None)).resource().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        let fields: Vec<&str> = e.diagnostics().iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "spec.image", "spec.cpus", "spec.memory", "spec.disk", "spec.patches[0].path"]);
    }

    #[test]
    fn a_built_sandbox_runs_no_main_process_unless_told() {
        let r = Sandbox::builder("a").image("/").memory(64).resource().unwrap();
        let ResourceSpec::Sandbox(s) = &r.spec else { panic!() };
        assert_eq!(s.command.as_deref(), Some(&[][..]));
        assert_eq!(s.image, "dir:/");
        assert_eq!(s.memory, Some(64 << 20));
        let r = Sandbox::builder("a").image("/").command(["sleep", "1"]).resource().unwrap();
        let ResourceSpec::Sandbox(s) = &r.spec else { panic!() };
        assert_eq!(s.command.as_deref(), Some(&["sleep".to_string(), "1".to_string()][..]));
    }
}
