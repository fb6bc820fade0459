//! An in-memory [`Instances`] for the reconciler's and the controller's tests: instances that
//! start, run, end and fail as a test says, without root, shims or cgroups. It records every
//! start and stop so a test can assert what the reconciler did, not only what it returned.

use super::{Instances, Observed, RuntimeError, StartRequest};
use crate::paths::InstanceDir;
use crate::spec::{Isolation, SandboxSpec};
use guest_agent::protocol::{ExitStatus, SandboxState, ShimStatus};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct FakeInstances {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By instance directory.
    instances: HashMap<String, Observed>,
    /// Instance names and kinds, in start order.
    starts: Vec<(String, Isolation)>,
    stops: Vec<String>,
    /// Errors the next starts return, first first.
    failures: Vec<RuntimeError>,
    microvm_available: bool,
    next_pid: u32,
}

fn key(dir: &InstanceDir) -> String {
    dir.path().display().to_string()
}

fn status(state: SandboxState, shim_pid: u32, last_exit: Option<ExitStatus>, message: Option<&str>) -> Option<ShimStatus> {
    Some(ShimStatus { state, shim_pid, main_pid: None, restarts: 0, last_exit, message: message.map(str::to_string) })
}

impl FakeInstances {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `auto` finds a microVM-capable host.
    pub fn set_microvm_available(&self, yes: bool) {
        self.with(|i| i.microvm_available = yes);
    }

    /// The next start fails with `error`.
    pub fn fail_next_start(&self, error: RuntimeError) {
        self.with(|i| i.failures.push(error));
    }

    /// The instance's main process exits with `code`; its shim ends.
    pub fn exit(&self, dir: &InstanceDir, code: i32) {
        self.with(|i| {
            let pid = i.instances.get(&key(dir)).and_then(|o| o.state.as_ref()).map_or(0, |s| s.shim_pid);
            let exit = ExitStatus { code: Some(code), signal: None, timed_out: false };
            let state = if code == 0 { SandboxState::Exited } else { SandboxState::Failed };
            i.instances.insert(key(dir), Observed { alive: false, state: status(state, pid, Some(exit), Some("its process ended")) });
        });
    }

    /// The instance's shim dies without a word (killed): its last state still says running.
    pub fn kill_shim(&self, dir: &InstanceDir) {
        self.with(|i| {
            if let Some(o) = i.instances.get_mut(&key(dir)) {
                o.alive = false;
            }
        });
    }

    /// A shim some other process launched and never recorded, now running.
    pub fn adopt_running(&self, dir: &InstanceDir) {
        self.with(|i| {
            i.next_pid += 1;
            let pid = 1000 + i.next_pid;
            i.instances.insert(key(dir), Observed { alive: true, state: status(SandboxState::Running, pid, None, None) });
        });
    }

    pub fn starts(&self) -> Vec<(String, Isolation)> {
        self.with(|i| i.starts.clone())
    }

    pub fn stops(&self) -> Vec<String> {
        self.with(|i| i.stops.clone())
    }
}

impl Instances for FakeInstances {
    fn isolation(&self, spec: &SandboxSpec) -> Isolation {
        match spec.isolation {
            Isolation::Auto if self.with(|i| i.microvm_available) => Isolation::Microvm,
            Isolation::Auto => Isolation::Namespace,
            chosen => chosen,
        }
    }

    fn start(&self, req: &StartRequest<'_>) -> Result<(), RuntimeError> {
        assert_ne!(req.isolation, Isolation::Auto, "the reconciler resolves auto before it starts an instance");
        self.with(|i| {
            if !i.failures.is_empty() {
                return Err(i.failures.remove(0));
            }
            if i.instances.get(&key(req.dir)).is_some_and(|o| o.alive) {
                return Err(RuntimeError::AlreadyRunning);
            }
            i.starts.push((req.instance.to_string(), req.isolation));
            i.next_pid += 1;
            let pid = 1000 + i.next_pid;
            i.instances.insert(key(req.dir), Observed { alive: true, state: status(SandboxState::Running, pid, None, None) });
            Ok(())
        })
    }

    fn observe(&self, dir: &InstanceDir) -> Observed {
        self.with(|i| i.instances.get(&key(dir)).cloned().unwrap_or_default())
    }

    fn stop(&self, instance: &str, dir: &InstanceDir, _grace: Duration) {
        self.with(|i| {
            i.stops.push(instance.to_string());
            if let Some(o) = i.instances.get_mut(&key(dir)) {
                if o.alive {
                    o.alive = false;
                    let pid = o.state.as_ref().map_or(0, |s| s.shim_pid);
                    o.state = status(SandboxState::Stopped, pid, None, Some("stopped on request"));
                }
            }
        });
    }

    fn cleanup(&self, _instance: &str, _dir: &InstanceDir) {}
}
