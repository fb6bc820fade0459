//! Namespace sandboxes: clone(2) a child into new PID, mount, UTS, IPC and network namespaces
//! (and a user namespace on request), put it in the sandbox's cgroup, then let it exec the agent,
//! which builds the root itself (guest_agent::init) and answers `Ready`.

use super::{Backend, ShimConfig};
use crate::cgroup::{Cgroup, Limits};
use crate::paths::InstanceDir;
use guest_agent::protocol::SandboxInit;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{chown, DirBuilderExt};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Host uid/gid that root inside a user-namespaced sandbox maps to (a 65536-wide range).
pub const USERNS_BASE: u32 = 100_000;
const USERNS_SIZE: u32 = 65_536;
/// The agent's fd for its stream to the shim.
const AGENT_FD: i32 = 3;
/// Where the agent attaches it, relative to the instance directory.
const WRITABLE_MOUNT: &str = "disk";
/// How long the agent may take to build the root and answer `Ready`: about 10 ms as a rule,
/// but its overlay and ext4 writes can wait behind the host's writeback: on a fresh machine,
/// right after the first build (gigabytes of dirty pages), one took over 20 s here. A slow
/// start is not a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct NamespaceBackend {
    pid: Option<i32>,
    cgroup: Option<Cgroup>,
    exited: bool,
    /// The loop device under the writable disk and the disk's file, to wait for at teardown.
    loop_device: Option<(String, std::path::PathBuf)>,
    /// The sandbox's end of its network link (a TUN fd), until the shim's stack takes it.
    link: Option<(netstack::StackConfig, OwnedFd)>,
    /// The loop device's `stat` line when it was attached (a reused device keeps old counts).
    loop_base: String,
    /// Writer locks of the volumes this sandbox mounts writable, held while it lives.
    volume_locks: Vec<std::fs::File>,
    /// The writable volumes' roots, trimmed at teardown.
    volume_trim: Vec<OwnedFd>,
}

impl Backend for NamespaceBackend {
    fn launch(&mut self, cfg: &ShimConfig) -> Result<UnixStream, String> {
        let dir = InstanceDir(cfg.dir.clone());
        // The bounded writable disk (loop device, ext4 mount) is made on a helper thread while
        // this one starts the sandbox's init and joins it to its cgroup: the first write to a
        // cgroup.procs waits out an RCU grace period (about 10 ms here), and the agent's own
        // exec runs meanwhile too. An instance made before disks were bounded keeps its old
        // upper directory on the host's filesystem.
        let in_memory = cfg.spec.writable_layer == crate::spec::WritableLayer::Memory;
        let disk_job = if in_memory {
            None
        } else if dir.writable_disk().exists() {
            let image = dir.writable_disk();
            Some(std::thread::Builder::new().name("writable-disk".into()).spawn(move || super::writable::mount_detached(&image)).map_err(|e| format!("starting a thread: {e}"))?)
        } else {
            tracing::warn!("no writable disk in {}: this instance keeps its unbounded upper directory until it is re-created", dir.path().display());
            None
        };
        let layered = disk_job.is_some() || in_memory;
        let layer_dirs = if layered { vec![dir.writable_mount(), dir.rootfs()] } else { vec![dir.upper(), dir.work(), dir.rootfs()] };
        for d in layer_dirs {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            if cfg.spec.user_namespace {
                chown(&d, Some(USERNS_BASE), Some(USERNS_BASE)).map_err(|e| format!("chown {}: {e}", d.display()))?;
            }
        }
        let map = format!("0 {USERNS_BASE} {USERNS_SIZE}\n");
        let userns = if cfg.spec.user_namespace { Some(super::idmap::userns_with_map(&map)?) } else { None };
        // Before anything else of the sandbox exists: a second writer is refused with nothing
        // to clean up.
        let first_volume_fd = usize::from(disk_job.is_some());
        // A restart in this shim: the previous start's locks are ours to give up first.
        self.volume_locks.clear();
        let volumes = super::volumes::prepare(&cfg.name, &cfg.volumes, userns.as_ref(), first_volume_fd)?;
        self.volume_locks = volumes.locks;
        super::volumes::trim_all(std::mem::take(&mut self.volume_trim));
        self.volume_trim = volumes.trim;
        let limits = Limits { memory: cfg.spec.memory, cpus: cfg.spec.cpus, pids: cfg.spec.limits.pids, restrict_devices: true };
        let cgroup = Cgroup::fresh(&cfg.instance, &limits).map_err(|e| format!("cgroup: {e}"))?;
        self.cgroup = Some(cgroup.clone());

        let lower_dirs = if let Some(userns) = &userns {
            super::idmap::mount_layers(dir.path(), cfg.backend.lower_dirs(), userns)?
        } else {
            short_layer_names(dir.path(), cfg.backend.lower_dirs())?
        };
        // Relative to the instance directory (see SandboxInit::base_dir).
        let lower_dirs: Vec<String> = lower_dirs
            .iter()
            .map(|l| std::path::Path::new(l).strip_prefix(dir.path()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| l.clone()))
            .collect();
        let (mut ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let exe = super::sealed_exe::own_binary()?;
        let cloned = clone_agent(theirs, &exe, cfg.spec.user_namespace, |pid| if cfg.spec.user_namespace { write_id_maps(pid, &map) } else { Ok(()) });
        // The sandbox holds its own copies of the idmapped layers now (or failed to start).
        super::idmap::detach_all(dir.path(), false);
        let pid = cloned?;
        self.pid = Some(pid);
        // The agent does nothing of the sandbox's before Init, and Init waits for the cgroup.
        cgroup.add(pid).map_err(|e| format!("joining the cgroup: {e}"))?;
        let disk = match disk_job {
            Some(job) => {
                let disk = job.join().map_err(|_| "the writable disk's thread panicked".to_string())??;
                self.loop_device = Some((disk.loop_device.clone(), dir.writable_disk()));
                // With the device's counters now: a reused loop device keeps its old ones.
                self.loop_base = std::fs::read_to_string(format!("/sys/block/{}/stat", disk.loop_device.trim_start_matches("/dev/"))).unwrap_or_default();
                Some(disk.mount)
            }
            None => None,
        };

        // The link is made in the sandbox's network namespace before the agent configures it.
        let network = match super::network::link(cfg)? {
            Some((stack, init)) => {
                let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
                let fd = netstack::tun::create_in(&netns, super::network::INTERFACE).map_err(|e| format!("creating the sandbox's network link: {e}"))?;
                self.link = Some((stack, fd));
                Some(init)
            }
            None => None,
        };
        let init = SandboxInit {
            hostname: cfg.name.clone(),
            base_dir: dir.path().to_string_lossy().into_owned(),
            lower_dirs,
            upper_dir: if layered { "disk/upper".into() } else { "upper".into() },
            work_dir: if layered { "disk/work".into() } else { "work".into() },
            mount_point: dir.rootfs().to_string_lossy().into_owned(),
            seccomp: true,
            patches: cfg.patches.clone(),
            writable_mount: layered.then(|| WRITABLE_MOUNT.to_string()),
            writable_tmpfs: in_memory.then(|| cfg.spec.memory_layer_bytes()),
            network,
            trust_anchor: cfg.trust_anchor.clone(),
            mounts: volumes.mounts,
        };
        let fds: Vec<_> = disk.iter().chain(volumes.fds.iter()).map(|f| f.as_fd()).collect();
        let sent = super::boot::init_agent(&mut ours, init, &fds, READY_TIMEOUT, |e| format!("the agent did not start: {e}"));
        // The sandbox has its own references now; the shim keeps no handle on the mounts.
        drop(fds);
        drop((disk, volumes.fds));
        sent?;
        super::idmap::detach_all(dir.path(), true);
        super::boot::mark_patched(&dir);
        Ok(ours)
    }

    fn take_link(&mut self) -> Option<(netstack::StackConfig, OwnedFd)> {
        self.link.take()
    }

    /// cgroup v2's io.stat (every device: the writable disk and volumes); on v1, whose blkio
    /// counters stay 0 without a throttle, the writable disk's own loop device since attach.
    fn disk_io(&self, cgroup: &Cgroup) -> Option<crate::cgroup::IoCounters> {
        cgroup.io_counters().or_else(|| {
            let (dev, image) = self.loop_device.as_ref()?;
            crate::cgroup::loop_device_io(dev, &self.loop_base, image)
        })
    }

    fn wait(&mut self, timeout: Duration) -> bool {
        let Some(pid) = self.pid else { return true };
        if self.exited {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child without blocking.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if rc == pid || rc < 0 {
                self.exited = true;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn kill(&mut self) {
        if let (Some(pid), false) = (self.pid, self.exited) {
            // SAFETY: SIGKILL to the sandbox init we cloned; killing it ends its PID namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn teardown(&mut self) {
        if !self.wait(Duration::ZERO) {
            self.kill();
            self.wait(Duration::from_secs(5));
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.destroy() {
                tracing::warn!("cgroup cleanup: {e}");
            }
        }
        super::volumes::trim_all(std::mem::take(&mut self.volume_trim));
        self.volume_locks.clear();
        if let Some((dev, image)) = &self.loop_device {
            if !super::writable::wait_released(dev, image, Duration::from_secs(5)) {
                tracing::warn!("{dev} still holds the writable disk 5 s after the sandbox ended");
            }
        }
    }

    fn init_pid(&self) -> Option<i32> {
        self.pid
    }
}

/// `l0`, `l1`, … in the instance directory, linking to the image layers (topmost first).
fn short_layer_names(instance_dir: &std::path::Path, layers: &[String]) -> Result<Vec<String>, String> {
    layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let link = instance_dir.join(format!("l{i}"));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(layer, &link).map_err(|e| format!("linking layer {i}: {e}"))?;
            Ok(link.to_string_lossy().into_owned())
        })
        .collect()
}

fn write_id_maps(pid: i32, map: &str) -> Result<(), String> {
    for f in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{f}"), map).map_err(|e| format!("writing {f}: {e}"))?;
    }
    Ok(())
}

/// Clones the sandbox init into fresh namespaces. The child waits until `prepare` (run in the
/// parent with the child's pid: the user namespace's id maps) has finished, then executes the
/// agent from `exe` (the sealed binary) as `orchestrator-agent __agent` with the stream on
/// fd 3 and nothing else: stdin and stdout are /dev/null, stderr stays the shim log (for the
/// agent's own last words), every other fd is closed by the execve. Returns the pid.
fn clone_agent(stream: UnixStream, exe: &OwnedFd, userns: bool, prepare: impl FnOnce(i32) -> Result<(), String>) -> Result<i32, String> {
    let argv0 = CString::new("orchestrator-agent").map_err(|e| e.to_string())?;
    let argv1 = CString::new("__agent").map_err(|e| e.to_string())?;
    let argv = [argv0.as_ptr(), argv1.as_ptr(), std::ptr::null()];
    // The sandbox starts with a clean environment, never the host's.
    let env0 = CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").map_err(|e| e.to_string())?;
    let envp = [env0.as_ptr(), std::ptr::null()];
    let devnull = std::fs::File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 creates two fds we take ownership of right away.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and unowned.
    let (sync_r, sync_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;
    if userns {
        flags |= libc::CLONE_NEWUSER;
    }
    // Moved above fd 3 first, so the dup2 below never overwrites a source.
    // SAFETY: F_DUPFD_CLOEXEC of a valid fd returns a new fd we own.
    let raised = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if raised < 0 {
        return Err(format!("dup: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just created.
    let sock = unsafe { OwnedFd::from_raw_fd(raised) };
    let sock_fd = sock.as_raw_fd();
    let null_fd = devnull.as_raw_fd();
    let exe_fd = exe.as_raw_fd();
    let sync_fd = sync_r.as_raw_fd();
    // SAFETY: a fork-like clone (no new stack): only this thread is copied, and the child only
    // makes raw syscalls on data prepared above, then execs or _exits (async-signal-safe, so
    // the shim's helper threads do not matter).
    let pid = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(format!("clone: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            let mut b = 0u8;
            if libc::read(sync_fd, (&mut b as *mut u8).cast(), 1) != 1 {
                libc::_exit(126);
            }
            if userns && (libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0) {
                libc::_exit(125);
            }
            // dup2 clears close-on-exec on the copies: exactly these cross the execve.
            if libc::dup2(sock_fd, AGENT_FD) < 0 || libc::dup2(null_fd, 0) < 0 || libc::dup2(null_fd, 1) < 0 {
                libc::_exit(124);
            }
            guest_agent::fds::cloexec_from((AGENT_FD + 1) as libc::c_uint);
            libc::syscall(libc::SYS_execveat, exe_fd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
            libc::_exit(127);
        }
    }
    let pid = pid as i32;
    drop((stream, sock, devnull, sync_r));
    if let Err(e) = prepare(pid) {
        // SAFETY: killing the child we just cloned.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(e);
    }
    // SAFETY: one byte releases the child.
    if unsafe { libc::write(sync_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
        return Err(format!("releasing the sandbox init: {}", std::io::Error::last_os_error()));
    }
    Ok(pid)
}

/// Sets the hostname of the sandbox whose init is `pid`, from a thread of the shim that joins
/// the sandbox's UTS namespace for that and then ends (the shim's own threads keep the host's).
/// The agent dropped `CAP_SYS_ADMIN` at lock-down, so the host side does it.
pub fn set_hostname(pid: i32, name: &str) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/uts")).map_err(|e| format!("opening the sandbox's UTS namespace: {e}"))?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name("set-hostname".into())
        .spawn(move || -> Result<(), String> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUTS).map_err(|e| format!("joining the sandbox's UTS namespace: {e}"))?;
            nix::unistd::sethostname(&name).map_err(|e| format!("setting the hostname: {e}"))
        })
        .map_err(|e| format!("starting a thread: {e}"))?
        .join()
        .map_err(|_| "the hostname thread panicked".to_string())?
}
