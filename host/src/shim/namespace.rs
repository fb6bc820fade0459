//! Namespace sandboxes: clone(2) a child into new PID, mount, UTS, IPC and network namespaces
//! (and a user namespace on request), put it in the sandbox's cgroup, then let it exec the agent,
//! which builds the root itself (guest_agent::init) and answers `Ready`.

use super::{Backend, ShimConfig};
use crate::cgroup::{Cgroup, Limits};
use crate::paths::InstanceDir;
use guest_agent::protocol::{self, Frame, Request, Response, SandboxInit};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{chown, DirBuilderExt};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Host uid/gid that root inside a user-namespaced sandbox maps to (a 65536-wide range).
pub const USERNS_BASE: u32 = 100_000;
const USERNS_SIZE: u32 = 65_536;
/// The agent's fd for its stream to the shim.
const AGENT_FD: i32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct NamespaceBackend {
    pid: Option<i32>,
    cgroup: Option<Cgroup>,
    exited: bool,
}

impl Backend for NamespaceBackend {
    fn launch(&mut self, cfg: &ShimConfig) -> Result<UnixStream, String> {
        let dir = InstanceDir(cfg.dir.clone());
        for d in [dir.upper(), dir.work(), dir.rootfs()] {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            if cfg.spec.user_namespace {
                chown(&d, Some(USERNS_BASE), Some(USERNS_BASE)).map_err(|e| format!("chown {}: {e}", d.display()))?;
            }
        }
        let limits = Limits { memory: cfg.spec.memory, cpus: cfg.spec.cpus, pids: cfg.spec.limits.pids };
        let cgroup = Cgroup::fresh(&cfg.instance, &limits).map_err(|e| format!("cgroup: {e}"))?;
        self.cgroup = Some(cgroup.clone());

        let map = format!("0 {USERNS_BASE} {USERNS_SIZE}\n");
        let lower_dirs = if cfg.spec.user_namespace {
            let userns = super::idmap::userns_with_map(&map)?;
            super::idmap::mount_layers(dir.path(), &cfg.lower_dirs, &userns)?
        } else {
            short_layer_names(dir.path(), &cfg.lower_dirs)?
        };
        // Relative to the instance directory (see SandboxInit::base_dir).
        let lower_dirs: Vec<String> = lower_dirs
            .iter()
            .map(|l| std::path::Path::new(l).strip_prefix(dir.path()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| l.clone()))
            .collect();
        let (mut ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let cloned = clone_agent(theirs, cfg.spec.user_namespace, |pid| {
            if cfg.spec.user_namespace {
                write_id_maps(pid, &map)?;
            }
            cgroup.add(pid).map_err(|e| format!("joining the cgroup: {e}"))
        });
        // The sandbox holds its own copies of the idmapped layers now (or failed to start).
        super::idmap::detach_all(dir.path(), false);
        let pid = cloned?;
        self.pid = Some(pid);

        let init = SandboxInit {
            hostname: cfg.name.clone(),
            base_dir: dir.path().to_string_lossy().into_owned(),
            lower_dirs,
            upper_dir: "upper".into(),
            work_dir: "work".into(),
            mount_point: dir.rootfs().to_string_lossy().into_owned(),
            seccomp: true,
            patches: cfg.patches.clone(),
        };
        ours.set_read_timeout(Some(READY_TIMEOUT)).map_err(|e| e.to_string())?;
        protocol::write_frame(&mut ours, &Frame { id: 1, body: Request::Init(Box::new(init)) })
            .map_err(|e| format!("sending init to the agent: {e}"))?;
        match protocol::read_frame::<Response>(&mut ours) {
            Ok(Frame { body: Response::Ready, .. }) => {}
            Ok(Frame { body: Response::Error { message, .. }, .. }) => return Err(message),
            Ok(other) => return Err(format!("unexpected answer from the agent: {:?}", other.body)),
            Err(e) => return Err(format!("the agent did not start: {e}")),
        }
        ours.set_read_timeout(None).map_err(|e| e.to_string())?;
        super::idmap::detach_all(dir.path(), true);
        if !dir.patched_marker().exists() {
            // The writable layer now has its patches: later starts must not apply them again.
            let _ = crate::paths::write_atomic(&dir.patched_marker(), b"");
        }
        Ok(ours)
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
/// parent with the child's pid) has finished, then execs `/proc/self/exe __agent` with the
/// stream on fd 3. Returns the child's pid.
fn clone_agent(stream: UnixStream, userns: bool, prepare: impl FnOnce(i32) -> Result<(), String>) -> Result<i32, String> {
    let exe = CString::new("/proc/self/exe").map_err(|e| e.to_string())?;
    let argv0 = CString::new("orchestrator-agent").map_err(|e| e.to_string())?;
    let argv1 = CString::new("__agent").map_err(|e| e.to_string())?;
    let argv = [argv0.as_ptr(), argv1.as_ptr(), std::ptr::null()];
    // The sandbox starts with a clean environment, never the host's.
    let env0 = CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").map_err(|e| e.to_string())?;
    let envp = [env0.as_ptr(), std::ptr::null()];
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
    let sock_fd = stream.as_raw_fd();
    let sync_fd = sync_r.as_raw_fd();
    // SAFETY: a fork-like clone (no new stack); the child only makes raw syscalls on data prepared
    // above, then execs or _exits. The shim has no other threads at this point.
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
            if sock_fd == AGENT_FD {
                libc::fcntl(AGENT_FD, libc::F_SETFD, 0);
            } else if libc::dup2(sock_fd, AGENT_FD) < 0 {
                libc::_exit(124);
            }
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let pid = pid as i32;
    drop(stream);
    drop(sync_r);
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
