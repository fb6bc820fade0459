//! MicroVM sandboxes: the shim runs the VMM (`vmm` crate) in its own process, so the VM lives
//! exactly as long as the shim. The agent is the guest's init; it connects back over vsock,
//! which the VMM bridges to the stream this backend hands the shim. From there on everything
//! (exec, files, logs, supervision) is the same code as for namespace sandboxes. The guest's
//! network is virtio-net over a socketpair into the same stack namespace sandboxes use, with
//! Ethernet framing.
//!
//! The shim puts itself (the VMM: vCPU and device threads) into the sandbox's cgroup before the
//! VM exists, so guest RAM, VMM overhead and CPU time are charged to the sandbox: `cpus` is a
//! CPU quota as for namespace sandboxes, memory is bounded at the guest's RAM plus
//! `VMM_MEMORY_HEADROOM` (and `SHARE_MEMORY_HEADROOM` per virtio-fs share), and metrics sinks
//! see microVMs like any other sandbox.

use super::{Backend, ShimConfig};
use crate::cgroup::{Cgroup, Limits};
use crate::paths::InstanceDir;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long the console log may grow (the guest writes it; it must not fill the disk).
const CONSOLE_LIMIT: u64 = 4 << 20;

/// What the VMM may use beyond guest RAM (its own heap, thread stacks, the page cache of the
/// disks it reads) before the cgroup reclaims or, at worst, kills it.
const VMM_MEMORY_HEADROOM: u64 = 64 << 20;
/// More per virtio-fs share: its virtiofsd runs in the sandbox's cgroup, and the page cache of
/// what the guest writes through it is charged there (reclaimable once written back, but a burst
/// of dirty pages under a cgroup v1 limit can reach the OOM killer before writeback frees it).
const SHARE_MEMORY_HEADROOM: u64 = 64 << 20;

#[derive(Default)]
pub struct MicrovmBackend {
    vm: Option<vmm::Vm>,
    cgroup: Option<Cgroup>,
    /// The stack's end of the guest's virtio-net link, until the shim's stack takes it.
    link: Option<(netstack::StackConfig, std::os::fd::OwnedFd)>,
    /// The virtiofsd daemons of its volumes, their writer locks and roots to trim.
    shares: Option<super::virtiofs::Shares>,
}

/// Room for a burst of full-size frames in each direction of the link.
const LINK_BUFFER: libc::c_int = 4 << 20;

/// A non-blocking SOCK_SEQPACKET pair: one Ethernet frame per message, both ends in this
/// process (the VMM's virtio-net and the shim's stack).
fn link_pair() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds we then own.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(format!("socketpair for the network link: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and ours.
    let (a, b) = unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&a, &b] {
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: setsockopt with an int we own.
            unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&LINK_BUFFER as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
        }
    }
    Ok((a, b))
}

/// The console's last lines on one line: the start error travels as a single line to the
/// launcher (the readiness pipe), and the state file keeps the same text.
fn console_tail(dir: &InstanceDir) -> String {
    let text = std::fs::read_to_string(dir.console_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).rev().take(12).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

impl Backend for MicrovmBackend {
    fn launch(&mut self, cfg: &ShimConfig) -> Result<UnixStream, String> {
        let dir = InstanceDir(cfg.dir.clone());
        let super::BackendConfig::Microvm(m) = &cfg.backend else { return Err("the shim config is not a microVM's".into()) };
        let shares = cfg.volumes.iter().filter(|v| !matches!(v.source, crate::volume::ResolvedSource::Tmpfs { .. })).count() as u64;
        let limits = Limits { memory: Some(m.mem_bytes + VMM_MEMORY_HEADROOM + shares * SHARE_MEMORY_HEADROOM), cpus: cfg.spec.cpus, pids: None, restrict_devices: false };
        let cgroup = Cgroup::fresh(&cfg.instance, &limits).map_err(|e| format!("cgroup: {e}"))?;
        self.cgroup = Some(cgroup.clone());
        cgroup.add(std::process::id() as i32).map_err(|e| format!("moving the VMM into the sandbox's cgroup: {e}"))?;
        let network = super::network::link(cfg)?;
        let net = match &network {
            Some((stack, _)) => {
                let (guest_end, stack_end) = link_pair()?;
                self.link = Some((netstack::StackConfig { medium: netstack::Medium::Ethernet, ..stack.clone() }, stack_end));
                Some(vmm::NetConfig { link: std::sync::Arc::new(guest_end), mac: netstack::GUEST_MAC, mtu: stack.mtu as u16 })
            }
            None => None,
        };
        if let Some(mut old) = self.shares.take() {
            old.stop();
            super::volumes::trim_all(std::mem::take(&mut old.trim));
        }
        let mut shares = super::virtiofs::start(&cfg.name, &cfg.volumes, m.virtiofsd.as_deref(), &dir)?;
        let share_configs = std::mem::take(&mut shares.vm);
        let mounts = std::mem::take(&mut shares.mounts);
        self.shares = Some(shares);
        let vm_cfg = vmm::VmConfig {
            vcpus: m.vcpus,
            mem_bytes: m.mem_bytes,
            kernel: m.kernel.clone(),
            boot: vmm::kernel::BootProtocol::Auto,
            initrd: Some(m.initrd.clone()),
            cmdline: m.cmdline.clone(),
            disks: vec![
                vmm::DiskConfig { path: m.image_disk.clone(), read_only: true },
                vmm::DiskConfig { path: m.scratch_disk.clone(), read_only: false },
            ],
            console_log: Some(dir.console_log()),
            console_limit: CONSOLE_LIMIT,
            guest_cid: guest_agent::abi::GUEST_CID,
            net,
            shares: share_configs,
        };
        let started = vmm::Vm::start(&vm_cfg).map_err(|e| format!("starting the VM: {e}"))?;
        // The shim log (this process's stderr) records what booted, whatever the log level.
        eprintln!("microVM: {} through {}, {} vCPU(s), {} MiB", m.kernel.display(), started.entry, m.vcpus, m.mem_bytes >> 20);
        let mut agent = started.agent;
        self.vm = Some(started.vm);
        let mut init = guest_agent::vm::sandbox_init(&cfg.name, cfg.patches.clone());
        init.network = network.map(|(_, init)| init);
        init.trust_anchor = cfg.trust_anchor.clone();
        init.mounts = mounts;
        // The launcher's configuration, not this process's environment (which it clears).
        let ready_timeout = Duration::from_secs(m.ready_timeout_secs.max(1));
        let vm = self.vm.as_ref();
        super::boot::init_agent(&mut agent, init, &[], ready_timeout, |e| {
            let why = match vm.and_then(|vm| vm.wait(Duration::ZERO)) {
                Some(reason) => format!("the VM ended before the agent was ready: {reason}"),
                None => format!("the agent did not answer within {ready_timeout:?}: {e}"),
            };
            format!("{why}; console: {}", console_tail(&dir))
        })?;
        super::boot::mark_patched(&dir);
        Ok(agent)
    }

    fn take_link(&mut self) -> Option<(netstack::StackConfig, std::os::fd::OwnedFd)> {
        self.link.take()
    }

    fn wait(&mut self, timeout: Duration) -> bool {
        match &self.vm {
            None => true,
            Some(vm) => match vm.wait(timeout) {
                Some(reason) => {
                    if !matches!(reason, vmm::ExitReason::PowerOff | vmm::ExitReason::Stopped) {
                        tracing::warn!("microVM ended: {reason}");
                    }
                    true
                }
                None => false,
            },
        }
    }

    fn kill(&mut self) {
        if let Some(vm) = &self.vm {
            vm.stop();
        }
    }

    fn teardown(&mut self) {
        // Dropping the VM stops it and joins its threads; guest memory goes with it. Then the
        // daemons (their connection is gone) and the volumes' trim and locks.
        self.vm = None;
        if let Some(mut shares) = self.shares.take() {
            shares.stop();
            super::volumes::trim_all(std::mem::take(&mut shares.trim));
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.leave().and_then(|_| cg.destroy()) {
                tracing::warn!("cgroup cleanup: {e}");
            }
        }
    }

    fn init_pid(&self) -> Option<i32> {
        None
    }

    /// What the guest read and wrote through its virtio-blk disks (the VMM's counters).
    fn disk_io(&self, _cgroup: &Cgroup) -> Option<crate::cgroup::IoCounters> {
        let t = self.vm.as_ref()?.disk_io();
        Some(crate::cgroup::IoCounters { read_bytes: t.read_bytes, write_bytes: t.write_bytes, read_ops: t.read_ops, write_ops: t.write_ops })
    }

    fn end_reason(&mut self) -> Option<String> {
        let reason = self.vm.as_ref()?.wait(Duration::from_secs(2))?;
        Some(format!("the microVM ended: {reason}"))
    }
}

#[cfg(test)]
mod tests {
    /// The VMM (which must not depend on the agent) keeps its own copy of the vsock contract.
    #[test]
    fn the_vmm_and_the_agent_agree_on_vsock() {
        assert_eq!(vmm::devices::vsock::AGENT_PORT, guest_agent::abi::AGENT_PORT);
        assert_eq!(vmm::devices::vsock::HOST_CID, u64::from(guest_agent::abi::HOST_CID));
    }
}
