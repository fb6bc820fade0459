//! The seam between the shim and an isolation technology. A backend starts the sandbox with
//! the agent as its PID 1 and hands back the agent's stream; the shim does everything else
//! (relaying, supervision, state) the same way for every backend.

use super::ShimConfig;
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub trait Backend: Send {
    /// Starts the sandbox and returns a connected, initialised agent stream (after `Ready`).
    fn launch(&mut self, cfg: &ShimConfig) -> Result<UnixStream, String>;
    /// Waits up to `timeout` for the sandbox (its init / VM) to end; true when it has.
    fn wait(&mut self, timeout: Duration) -> bool;
    /// Ends the sandbox at once.
    fn kill(&mut self);
    /// Removes what the sandbox left on the host (cgroups, devices). Idempotent.
    fn teardown(&mut self);
    /// Process id of the sandbox's init as seen from the host, if any.
    fn init_pid(&self) -> Option<i32>;
    /// Why the sandbox ended, when the backend knows more than "init exited" (a VM's kernel
    /// panic, triple fault, power-off).
    fn end_reason(&mut self) -> Option<String> {
        None
    }
    /// The sandbox's end of its network link and the link's shape, once, after `launch`;
    /// None when the sandbox has no link (`network.policy: none`) or the backend has none yet.
    fn take_link(&mut self) -> Option<(netstack::StackConfig, std::os::fd::OwnedFd)> {
        None
    }
    /// The sandbox's disk I/O so far, when the backend counts it; `cgroup` is the sandbox's.
    fn disk_io(&self, cgroup: &crate::cgroup::Cgroup) -> Option<crate::cgroup::IoCounters> {
        cgroup.io_counters()
    }
}
