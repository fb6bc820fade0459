//! Reconciliation: makes observed sandboxes match the desired resources.
//!
//! Invariants:
//! - Whoever changes an object's instance holds that object's lock (`lock_object`), so an
//!   object is never reconciled twice at once, and a command on one sandbox never waits for the
//!   reconcile of another. Changes to desired state (a source's plan and commit, claiming a new
//!   name) hold the data directory's lock (`lock`), briefly. Order: an object's lock may be
//!   held while taking the data directory's, never the reverse.
//! - Desired state is committed in one transaction before any sandbox is touched; an instance is
//!   recorded (status Pending) before its shim starts. A process killed at any point leaves a
//!   state that the next reconcile completes, and never two instances for one name.
//! - A source only prunes resources it created; an empty desired set prunes nothing unless asked.
//! - Converging is idempotent: a running sandbox whose spec is unchanged is left alone.

use crate::config::Config;
use crate::paths::{DataDir, InstanceDir};
use crate::plugin::Registry;
use crate::runtime::{self, Instances, StartRequest};
use crate::spec::{Isolation, Kind, Manifest, Resource, ResourceSpec, RestartPolicy, SandboxSpec};
use crate::store::{now, SandboxRow, Status, Store, StoreError};
use crate::view::{Action, ActionResult, ApplyReport};
use guest_agent::protocol::SandboxState;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

/// Grace period between SIGTERM and SIGKILL when a sandbox is stopped or replaced.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("opening the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("{0}")]
    Conflict(String),
    #[error("sandbox {name:?}: {message}")]
    Sandbox { name: String, message: String },
    /// The sandbox could not start; the runtime's error says why (image, isolation, shim).
    /// (`error` is not a `source`: the message already carries it, and a CLI printing the
    /// chain would say it twice.)
    #[error("sandbox {name:?}: {error}")]
    Start { name: String, error: runtime::RuntimeError },
    #[error("no sandbox named {0:?}")]
    NotFound(String),
    /// A request's own words are wrong (a bad name, a size out of bounds).
    #[error("{0}")]
    Invalid(String),
    #[error("no volume named {0:?}")]
    NoVolume(String),
    /// A volume's disk could not be made or removed.
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
}

pub type Result<T> = std::result::Result<T, ReconcileError>;

pub use crate::view::{Change, Plan, PlanItem};

/// What converging one sandbox did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    Created,
    Recreated,
    Restarted,
    Removed,
    /// Only `spec.network` changed: applied to the running sandbox, nothing restarted.
    NetworkUpdated,
}

impl From<&Outcome> for ActionResult {
    fn from(o: &Outcome) -> ActionResult {
        match o {
            Outcome::Nothing => ActionResult::Unchanged,
            Outcome::Created => ActionResult::Created,
            Outcome::Recreated => ActionResult::Recreated,
            Outcome::Restarted => ActionResult::Restarted,
            Outcome::Removed => ActionResult::Removed,
            Outcome::NetworkUpdated => ActionResult::NetworkUpdated,
        }
    }
}

pub struct Orchestrator {
    pub config: Arc<Config>,
    pub data: DataDir,
    pub store: Store,
    /// Plugins by name, loaded on first use (no wasmtime engine until a plugin is needed).
    pub plugins: Arc<Registry>,
    /// Where instances start, stop and are observed: this host's shims (a fake in tests).
    pub instances: Arc<dyn Instances>,
}


fn object(name: &str) -> String {
    format!("Sandbox/{name}")
}

fn sandbox_spec(r: &Resource) -> Option<&SandboxSpec> {
    match &r.spec {
        ResourceSpec::Sandbox(s) => Some(s),
        _ => None,
    }
}

/// What converging one sandbox must do, from its desired resource and its observed instance
/// alone (no I/O: the controller's decisions are tested without root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Desired, no instance: start one.
    Create,
    /// An instance nothing desires any more.
    Remove,
    /// The spec changed: apply `spec.network` live when that is all, else a new instance.
    Replace,
    /// Same spec, but it ended and its restart policy (or a start that never finished) says go.
    Restart,
}

pub fn decide(desired: Option<&Resource>, row: Option<&SandboxRow>) -> Decision {
    let (desired, row) = match (desired, row) {
        (None, None) => return Decision::Nothing,
        (None, Some(_)) => return Decision::Remove,
        (Some(_), None) => return Decision::Create,
        (Some(d), Some(r)) => (d, r),
    };
    if row.spec != desired.canonical_json() {
        return Decision::Replace;
    }
    let policy = sandbox_spec(desired).map(|s| s.restart_policy).unwrap_or(RestartPolicy::Never);
    let restart = match row.status {
        Status::Running | Status::Exited => false,
        Status::Pending => true,
        Status::Stopped => !row.user_stopped && policy.restarts(false),
        Status::Failed => !row.user_stopped && policy.restarts(true),
    };
    if restart {
        Decision::Restart
    } else {
        Decision::Nothing
    }
}

impl Orchestrator {
    /// Opens (creating it if needed) the data directory the configuration names.
    ///
    /// ```no_run
    /// let mut orchestrator = orchestrator::Orchestrator::open(orchestrator::Config::new("/tmp/sandboxes"))?;
    /// for view in orchestrator.list()? {
    ///     println!("{} {}", view.name, view.status);
    /// }
    /// # Ok::<(), orchestrator::Error>(())
    /// ```
    pub fn open(mut config: Config) -> std::result::Result<Orchestrator, crate::Error> {
        let root = config.data_dir.clone();
        let data = DataDir::open(&root).map_err(|e| crate::Error::io(format!("opening the data directory {}", root.display()), e))?;
        // Shims and their configuration get the canonical path, wherever the caller ran.
        config.data_dir = data.root().to_path_buf();
        let store = Store::open(&data.db())?;
        let plugins = Arc::new(Registry::new(Some(config.plugin_cache())));
        let config = Arc::new(config);
        let instances = Arc::new(crate::runtime::HostInstances { config: config.clone() });
        Ok(Orchestrator { config, data, store, plugins, instances })
    }

    /// Takes the desired-state lock (blocking) for the life of the returned file.
    pub fn lock(&self) -> Result<File> {
        crate::paths::lock(&self.data.reconcile_lock())
            .map_err(|e| ReconcileError::DataDir { path: self.data.reconcile_lock().display().to_string(), source: e })
    }

    pub fn try_lock(&self) -> Option<File> {
        crate::paths::try_lock(&self.data.reconcile_lock()).ok().flatten()
    }

    /// Takes one object's lock (blocking) for the life of the returned file.
    pub fn lock_object(&self, name: &str) -> Result<File> {
        let path = self.data.object_lock(name).map_err(|e| ReconcileError::DataDir { path: self.data.object_locks().display().to_string(), source: e })?;
        crate::paths::lock(&path).map_err(|e| ReconcileError::DataDir { path: path.display().to_string(), source: e })
    }

    /// One object's lock if nobody holds it.
    pub fn try_lock_object(&self, name: &str) -> Option<File> {
        crate::paths::try_lock(&self.data.object_lock(name).ok()?).ok().flatten()
    }

    pub fn instance_dir(&self, row: &SandboxRow) -> InstanceDir {
        self.data.instance(&row.instance)
    }

    pub fn plan(&self, source: &str, manifests: &[Manifest], prune_empty: bool) -> Result<Plan> {
        let existing = self.store.resources(None)?;
        let mut plan = Plan::default();
        for m in manifests {
            let r = &m.resource;
            let change = match existing.iter().find(|e| e.resource.kind() == r.kind() && e.resource.name == r.name) {
                None => Change::Create,
                Some(e) if e.source != source => {
                    plan.conflicts.push(format!(
                        "{}/{} ({}) is already managed by {}; delete it there first or rename it",
                        r.kind(), r.name, m.origin, e.source
                    ));
                    continue;
                }
                Some(e) if e.resource != *r => Change::Update,
                Some(_) => Change::Unchanged,
            };
            plan.items.push(PlanItem { kind: r.kind(), name: r.name.clone(), change, origin: m.origin.to_string() });
        }
        let pruned: Vec<PlanItem> = existing
            .iter()
            .filter(|e| e.source == source)
            .filter(|e| !manifests.iter().any(|m| m.resource.kind() == e.resource.kind() && m.resource.name == e.resource.name))
            .map(|e| PlanItem { kind: e.resource.kind(), name: e.resource.name.clone(), change: Change::Delete, origin: e.origin.clone() })
            .collect();
        if manifests.is_empty() && !prune_empty {
            plan.prune_skipped = pruned.iter().map(|p| format!("{}/{}", p.kind, p.name)).collect();
        } else {
            plan.items.extend(pruned);
        }
        plan.conflicts.extend(volumes::volumes_still_mounted(&existing, manifests, &plan));
        Ok(plan)
    }

    /// Applies a validated source: commits its desired state, then converges its sandboxes.
    /// Returns the plan and what happened to each plugin and sandbox; failures are reported
    /// there, but do not undo the desired state (the next reconcile retries).
    /// Takes the locks itself: the caller holds none.
    pub fn apply(&mut self, source: &str, manifests: &[Manifest], prune_empty: bool) -> Result<ApplyReport> {
        let mut report = {
            let _desired = self.lock()?;
            self.commit(source, manifests, prune_empty)?
        };
        let mut names: Vec<String> =
            report.plan.items.iter().filter(|i| i.kind == Kind::Sandbox).map(|i| i.name.clone()).collect();
        names.dedup();
        for name in names {
            let _object = self.lock_object(&name)?;
            let result = match self.converge(&name) {
                Ok(o) => ActionResult::from(&o),
                Err(e) => ActionResult::Failed { message: e.to_string() },
            };
            report.actions.push(Action { kind: Kind::Sandbox, name, result });
        }
        Ok(report)
    }

    /// Commits a validated source's desired state and compiles its new and changed plugins;
    /// touches no sandbox (the controller converges each one as its own work item). The
    /// report's actions are the plugins'. The caller holds the desired-state lock.
    pub fn commit(&mut self, source: &str, manifests: &[Manifest], prune_empty: bool) -> Result<ApplyReport> {
        let plan = self.plan(source, manifests, prune_empty)?;
        if !plan.conflicts.is_empty() {
            return Err(ReconcileError::Conflict(plan.conflicts.join("\n")));
        }
        let tx = self.store.transaction()?;
        for m in manifests {
            Store::upsert_resource(&tx, &m.resource, source, &m.origin.to_string())?;
        }
        for item in plan.items.iter().filter(|i| i.change == Change::Delete) {
            Store::delete_resource(&tx, item.kind, &item.name)?;
        }
        Store::record_source(&tx, source, None)?;
        tx.commit()?;
        for item in &plan.items {
            if item.change != Change::Unchanged {
                let verb = match item.change {
                    Change::Create => "Created",
                    Change::Update => "Updated",
                    _ => "Deleted",
                };
                self.store.event(&format!("{}/{}", item.kind, item.name), verb, &format!("desired state from {}", item.origin))?;
            }
        }
        let mut actions = self.converge_volumes(manifests, &plan)?;
        // Compile new and changed plugins now, so a broken component is reported at apply.
        for m in manifests {
            if let ResourceSpec::Plugin(spec) = &m.resource.spec {
                let result = match self.plugins.refresh(&m.resource.name, spec) {
                    Some(Ok(p)) => ActionResult::Loaded { kinds: p.kinds().iter().map(|k| k.as_str().to_string()).collect() },
                    Some(Err(e)) => {
                        self.store.event(&format!("Plugin/{}", m.resource.name), "LoadFailed", &e.to_string())?;
                        ActionResult::Failed { message: e.to_string() }
                    }
                    None => continue,
                };
                actions.push(Action { kind: Kind::Plugin, name: m.resource.name.clone(), result });
            }
        }
        Ok(ApplyReport { plan, actions })
    }

    /// Records that a source could not be read; nothing it declared is touched.
    pub fn record_source_error(&mut self, source: &str, message: &str) -> Result<()> {
        let tx = self.store.transaction()?;
        Store::record_source(&tx, source, Some(message))?;
        tx.commit()?;
        self.store.event(&format!("source:{source}"), "InvalidSource", message)?;
        Ok(())
    }

    /// What the instance's shim reports, without writing anything.
    pub fn observe(&self, row: &SandboxRow) -> SandboxRow {
        let crate::runtime::Observed { alive, state } = self.instances.observe(&self.instance_dir(row));
        let mut next = row.clone();
        if let Some(st) = &state {
            next.restarts = i64::from(st.restarts);
            next.exit_code = st.last_exit.map(|e| i64::from(e.shell_code()));
            next.shim_pid = Some(i64::from(st.shim_pid));
        }
        next.status = match (alive, state.as_ref().map(|s| s.state)) {
            (true, Some(SandboxState::Starting)) | (true, None) => Status::Pending,
            (true, Some(_)) => Status::Running,
            (false, Some(SandboxState::Exited)) => Status::Exited,
            (false, Some(SandboxState::Stopped)) => Status::Stopped,
            (false, Some(SandboxState::Failed)) => Status::Failed,
            (false, Some(_)) => Status::Failed,
            (false, None) if row.status == Status::Pending => Status::Pending,
            (false, None) => Status::Failed,
        };
        if next.status != Status::Running && next.status != Status::Pending {
            next.message = state.as_ref().and_then(|s| s.message.clone());
            if !alive && matches!(state.as_ref().map(|s| s.state), Some(SandboxState::Running | SandboxState::Starting)) {
                next.message = Some("the sandbox's shim died; sandbox cleaned up".into());
            }
        } else {
            next.message = None;
        }
        next
    }

    /// Observes a sandbox, stores any change with an event, and cleans up after a dead shim.
    pub fn refresh(&mut self, row: &SandboxRow) -> Result<SandboxRow> {
        let mut next = self.observe(row);
        if next.status == row.status && next.restarts == row.restarts && next.exit_code == row.exit_code {
            return Ok(next);
        }
        let ended = matches!(next.status, Status::Exited | Status::Stopped | Status::Failed);
        if ended {
            self.instances.cleanup(&row.instance, &self.instance_dir(row));
            if next.finished_at.is_none() || row.status == Status::Running {
                next.finished_at = Some(now());
            }
        }
        self.store.update_sandbox(&next)?;
        if next.status != row.status {
            let why = next.message.clone().unwrap_or_default();
            self.store.event(&object(&row.name), next.status.as_str(), &why)?;
        }
        Ok(next)
    }

    /// Adopts live shims and reports dead ones; returns a line for each sandbox that died.
    /// Takes each object's lock, skipping one somebody else is changing.
    pub fn adopt_all(&mut self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for row in self.store.sandboxes()? {
            let Some(_object) = self.try_lock_object(&row.name) else { continue };
            let next = self.refresh(&row)?;
            if row.status == Status::Running && next.status != Status::Running {
                lines.push(format!(
                    "sandbox {} is {}: {}",
                    row.name,
                    next.status.as_str(),
                    next.message.as_deref().unwrap_or("its process ended")
                ));
            }
        }
        Ok(lines)
    }

    /// Makes one sandbox match its desired resource.
    pub fn converge(&mut self, name: &str) -> Result<Outcome> {
        let desired = self.store.resource(Kind::Sandbox, name)?.map(|d| d.resource);
        let mut row = self.store.sandbox(name)?;
        if let Some(r) = &row {
            let mut next = self.refresh(r)?;
            if next.status == Status::Pending && self.instances.observe(&self.instance_dir(&next)).alive {
                // A shim started by a process that died before recording it: let it finish
                // starting and adopt it (starting another would fail on the instance lock anyway).
                next = self.await_start(&next)?;
            }
            row = Some(next);
        }
        match (decide(desired.as_ref(), row.as_ref()), desired, row) {
            (Decision::Nothing, _, _) => Ok(Outcome::Nothing),
            (Decision::Remove, _, Some(row)) => {
                self.remove_instance(&row)?;
                Ok(Outcome::Removed)
            }
            (Decision::Create, Some(desired), _) => {
                self.create_instance(&desired, false, false)?;
                Ok(Outcome::Created)
            }
            (Decision::Replace, Some(desired), Some(mut row)) => {
                if row.status == Status::Running && self.update_network_live(&mut row, &desired)? {
                    return Ok(Outcome::NetworkUpdated);
                }
                self.remove_instance(&row)?;
                self.create_instance(&desired, false, false)?;
                Ok(Outcome::Recreated)
            }
            (Decision::Restart, Some(desired), Some(row)) => {
                self.start_instance(row, &desired, false, false)?;
                Ok(Outcome::Restarted)
            }
            _ => Ok(Outcome::Nothing),
        }
    }

    /// When the running sandbox differs from `desired` only in `spec.network` (and keeps its
    /// link), hands the new section to its shim and records it; true when that happened.
    fn update_network_live(&mut self, row: &mut SandboxRow, desired: &Resource) -> Result<bool> {
        let Ok(current) = serde_json::from_str::<Resource>(&row.spec) else { return Ok(false) };
        let (Some(old), Some(new)) = (sandbox_spec(&current), sandbox_spec(desired)) else { return Ok(false) };
        // The link's shape (its existence, MTU, flow bound) is set at start; the policy is not.
        if old.network.has_link() != new.network.has_link() || old.network.mtu != new.network.mtu || old.network.max_connections != new.network.max_connections {
            return Ok(false);
        }
        let mut same = current.clone();
        if let ResourceSpec::Sandbox(s) = &mut same.spec {
            s.network = new.network.clone();
        }
        if same.canonical_json() != desired.canonical_json() {
            return Ok(false);
        }
        let update = crate::shim::network::NetworkUpdate {
            network: new.network.clone(),
            plugins: new.network.plugins.iter().filter_map(|n| self.plugin_spec(n).map(|s| (n.clone(), s))).collect(),
        };
        let failed = |message: String| ReconcileError::Sandbox { name: row.name.clone(), message };
        let config = serde_json::to_string(&update).map_err(|e| failed(e.to_string()))?;
        let mut client = crate::client::ShimClient::connect(&self.instance_dir(row).socket()).map_err(|e| failed(format!("reaching the shim: {e}")))?;
        match client.call(guest_agent::protocol::ShimRequest::UpdateNetwork { config }).map_err(|e| failed(format!("updating the network: {e}")))? {
            guest_agent::protocol::Response::Done => {}
            guest_agent::protocol::Response::Error { message, .. } => return Err(failed(format!("updating the network: {message}"))),
            other => return Err(failed(format!("updating the network: unexpected answer {other:?}"))),
        }
        row.spec = desired.canonical_json();
        self.store.update_sandbox(row)?;
        self.store.event(&object(&row.name), "NetworkUpdated", "spec.network applied to the running sandbox")?;
        Ok(true)
    }

    fn await_start(&mut self, row: &SandboxRow) -> Result<SandboxRow> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = self.refresh(row)?;
            if next.status != Status::Pending || std::time::Instant::now() > deadline {
                return Ok(next);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The spec of the applied Plugin resource `name`.
    pub fn plugin_spec(&self, name: &str) -> Option<crate::spec::PluginSpec> {
        match self.store.resource(Kind::Plugin, name).ok().flatten()?.resource.spec {
            ResourceSpec::Plugin(p) => Some(p),
            _ => None,
        }
    }

    /// Records a new instance (Pending) and starts it.
    pub fn create_instance(&mut self, res: &Resource, wait_for_attach: bool, main_stdin: bool) -> Result<SandboxRow> {
        let spec = sandbox_spec(res).ok_or_else(|| ReconcileError::NotFound(res.name.clone()))?;
        let isolation = self.instances.isolation(spec);
        let row = SandboxRow {
            name: res.name.clone(),
            instance: format!("{}-{}", res.name, crate::ids::random_hex(4)),
            spec: res.canonical_json(),
            status: Status::Pending,
            isolation: isolation.as_str().into(),
            shim_pid: None,
            exit_code: None,
            restarts: 0,
            message: None,
            user_stopped: false,
            created_at: now(),
            started_at: None,
            finished_at: None,
        };
        self.store.insert_sandbox(&row)?;
        self.start_instance(row, res, wait_for_attach, main_stdin)
    }

    fn start_instance(&mut self, mut row: SandboxRow, res: &Resource, wait_for_attach: bool, main_stdin: bool) -> Result<SandboxRow> {
        let spec = sandbox_spec(res).ok_or_else(|| ReconcileError::NotFound(res.name.clone()))?;
        let dir = self.instance_dir(&row);
        // An instance keeps the kind it was recorded with: its disks are made for that kind.
        let isolation = match row.isolation.as_str() {
            "microvm" => Isolation::Microvm,
            "namespace" => Isolation::Namespace,
            _ => self.instances.isolation(spec),
        };
        let outcome = crate::image::resolve(self.data.root(), &self.config.registries, &spec.image, spec.pull_policy)
            .map_err(runtime::RuntimeError::from)
            .and_then(|image| {
                let info = crate::hooks::sandbox_info(res, spec, isolation.as_str());
                let lookup = |name: &str| self.plugin_spec(name);
                // A memory layer starts from the image every time: it needs its patches again.
                let first_start = spec.writable_layer == crate::spec::WritableLayer::Memory || !dir.patched_marker().exists();
                let prepared = crate::hooks::prepare(&self.plugins, &lookup, &info, spec, &image, first_start).map_err(runtime::RuntimeError::Start)?;
                let volumes = crate::volume::resolve(self.data.root(), &self.store, &spec.volumes).map_err(runtime::RuntimeError::Start)?;
                let mut effective = crate::image::apply_defaults(spec, &image.config);
                for secret in &prepared.secrets {
                    effective.env.insert(secret.env.clone(), secret.placeholder.clone());
                }
                self.instances.start(&StartRequest {
                    name: &row.name,
                    isolation,
                    instance: &row.instance,
                    dir: &dir,
                    spec: &effective,
                    image: &image,
                    wait_for_attach,
                    main_stdin,
                    patches: &prepared.patches,
                    secrets: &prepared.secrets,
                    labels: &res.labels,
                    network_plugins: spec.network.plugins.iter().filter_map(|n| lookup(n).map(|s| (n.clone(), s))).collect(),
                    plugin_cache: Some(self.config.plugin_cache()),
                    volumes: &volumes,
                })
            });
        let result = match outcome {
            // A shim launched for this instance by a process that died before recording it.
            Err(runtime::RuntimeError::AlreadyRunning) => match self.await_start(&row)? {
                adopted if adopted.status == Status::Running => Ok(()),
                other => Err(runtime::RuntimeError::Start(format!("the instance's existing shim did not start ({})", other.status.as_str()))),
            },
            other => other,
        };
        match result {
            Ok(()) => {
                row.status = Status::Running;
                row.user_stopped = false;
                row.started_at = Some(now());
                row.finished_at = None;
                row.message = None;
                row.exit_code = None;
                row.shim_pid = self.instances.observe(&dir).state.map(|s| i64::from(s.shim_pid));
                self.store.update_sandbox(&row)?;
                if let Err(e) = self.data.link_socket(&row.name, &dir) {
                    tracing::warn!("sandbox {}: linking its socket by name: {e} (exec finds it through the store)", row.name);
                }
                self.store.event(&object(&row.name), "Started", &format!("instance {} ({})", row.instance, isolation.as_str()))?;
                Ok(row)
            }
            Err(e) => {
                row.status = Status::Failed;
                row.message = Some(e.to_string());
                row.finished_at = Some(now());
                self.store.update_sandbox(&row)?;
                self.store.event(&object(&row.name), "FailedToStart", &e.to_string())?;
                Err(ReconcileError::Start { name: row.name, error: e })
            }
        }
    }

    /// Stops an instance and removes everything it had: processes, cgroups, files, its row.
    pub fn remove_instance(&mut self, row: &SandboxRow) -> Result<()> {
        let dir = self.instance_dir(row);
        self.data.unlink_socket(&row.name, &dir);
        self.instances.stop(&row.instance, &dir, STOP_GRACE);
        if let Err(e) = std::fs::remove_dir_all(dir.path()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(ReconcileError::Sandbox { name: row.name.clone(), message: format!("removing {}: {e}", dir.path().display()) });
            }
        }
        self.store.delete_sandbox(&row.name)?;
        self.store.event(&object(&row.name), "Removed", &format!("instance {}", row.instance))?;
        Ok(())
    }

    /// Deletes a sandbox (or volume, plugin) by name, whatever source declared it. A Volume of
    /// that name that declared sandboxes (other than one of the same name, deleted with it)
    /// mount is refused (`delete_volume` forces).
    pub fn delete(&mut self, name: &str) -> Result<()> {
        let volume = self.store.resource(Kind::Volume, name)?.is_some();
        if volume {
            let users: Vec<String> = crate::volume::users(&self.store, name)?.into_iter().filter(|u| u != name).collect();
            if !users.is_empty() {
                return Err(volumes::volume_in_use(name, &users));
            }
        }
        let mut found = false;
        if let Some(row) = self.store.sandbox(name)? {
            self.remove_instance(&row)?;
            found = true;
        }
        let tx = self.store.transaction()?;
        for kind in Kind::ALL {
            found |= tx.execute("DELETE FROM resources WHERE kind = ?1 AND name = ?2", rusqlite::params![kind.as_str(), name])
                .map_err(StoreError::from)?
                > 0;
        }
        tx.commit()?;
        if !found {
            return Err(ReconcileError::NotFound(name.into()));
        }
        if volume {
            crate::volume::remove(self.data.root(), name)?;
            self.store.event(&format!("Volume/{name}"), "Deleted", "its data was deleted")?;
        }
        Ok(())
    }

    pub fn stop(&mut self, name: &str) -> Result<()> {
        let row = self.store.sandbox(name)?.ok_or_else(|| ReconcileError::NotFound(name.into()))?;
        self.instances.stop(&row.instance, &self.instance_dir(&row), STOP_GRACE);
        let mut next = self.refresh(&row)?;
        next.user_stopped = true;
        if next.status == Status::Running || next.status == Status::Pending {
            next.status = Status::Stopped;
        }
        self.store.update_sandbox(&next)?;
        self.store.event(&object(name), "Stopped", "stopped on request")?;
        Ok(())
    }

    pub fn start(&mut self, name: &str) -> Result<()> {
        let row = self.store.sandbox(name)?.ok_or_else(|| ReconcileError::NotFound(name.into()))?;
        let row = self.refresh(&row)?;
        if row.status == Status::Running {
            return Ok(());
        }
        let res = self
            .store
            .resource(Kind::Sandbox, name)?
            .ok_or_else(|| ReconcileError::NotFound(name.into()))?
            .resource;
        if row.spec != res.canonical_json() {
            self.remove_instance(&row)?;
            self.create_instance(&res, false, false)?;
        } else {
            self.start_instance(row, &res, false, false)?;
        }
        Ok(())
    }
}

mod locks;
mod secrets;
#[cfg(test)]
mod tests;
mod volumes;
