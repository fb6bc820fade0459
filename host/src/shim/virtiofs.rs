//! A microVM's named volumes and host paths: one `virtiofsd` per mount, which the VMM drives as
//! a vhost-user frontend (virtio-fs). Each daemon serves a detached mount made exactly as for a
//! namespace sandbox (`volumes::detach`: the volume's shared superblock, its writer lock, its
//! read-only flag), attached in a mount namespace of the daemon's own, so the host's mount table
//! never holds it and a volume is shared by microVMs and namespace sandboxes at once.
//!
//! Invariants:
//! - The daemon sees only its one directory (`--sandbox chroot` inside its own mount
//!   namespace), refuses writes to a read-only mount twice over (`--readonly`, and the mount's
//!   flag), and ends when the VM's connection does.
//! - Daemons are this shim's children: they are killed and reaped with the sandbox.

use super::volumes::detach;
use crate::paths::InstanceDir;
use crate::volume::{ResolvedMount, ResolvedSource};
use guest_agent::protocol::{MountInit, MountInitSource};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOCKET_WAIT: Duration = Duration::from_secs(10);
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// The daemons of one start and what the VM and its agent need from them.
#[derive(Default)]
pub struct Shares {
    pub vm: Vec<vmm::ShareConfig>,
    pub mounts: Vec<MountInit>,
    pub locks: Vec<std::fs::File>,
    pub trim: Vec<OwnedFd>,
    children: Vec<Child>,
}

impl Shares {
    /// Kills and reaps the daemons (the VM has ended or never started).
    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Shares {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a daemon for each named volume and host path of `volumes`; tmpfs mounts become the
/// agent's own. `binary` is virtiofsd.
pub fn start(sandbox: &str, volumes: &[ResolvedMount], binary: Option<&Path>, dir: &InstanceDir) -> Result<Shares, String> {
    let mut out = Shares::default();
    for (i, v) in volumes.iter().enumerate() {
        if let ResolvedSource::Tmpfs { size } = v.source {
            out.mounts.push(MountInit { target: v.mount_path.clone(), source: MountInitSource::Tmpfs { size }, file: false });
            continue;
        }
        let binary = binary.ok_or_else(|| format!("{}: volumes in microVMs need virtiofsd: install it (`cargo install virtiofsd`, or tests/vm/virtiofsd.sh) or name it with ORCHESTRATOR_VIRTIOFSD", v.mount_path))?;
        let Some(d) = detach(sandbox, v, None)? else { continue };
        if d.file {
            return Err(format!("{}: a microVM mounts host directories only, not single files (virtio-fs shares a directory); mount the file's directory, or use isolation: namespace", v.mount_path));
        }
        out.locks.extend(d.lock);
        out.trim.extend(d.trim);
        let tag = format!("vol{i}");
        let shared_dir = dir.path().join(format!("virtiofs-{i}"));
        let socket = dir.path().join(format!("virtiofs-{i}.sock"));
        let _ = std::fs::remove_file(&socket);
        std::fs::create_dir_all(&shared_dir).map_err(|e| format!("creating {}: {e}", shared_dir.display()))?;
        let child = spawn(binary, &d.mount, &shared_dir, &socket, v.read_only)?;
        out.children.push(child);
        wait_for_socket(&socket, out.children.last_mut())?;
        out.vm.push(vmm::ShareConfig { tag: tag.clone(), socket });
        out.mounts.push(MountInit { target: v.mount_path.clone(), source: MountInitSource::Virtiofs { tag, read_only: v.read_only }, file: false });
    }
    Ok(out)
}

/// virtiofsd serving `mount`, which it finds at `shared_dir` in a mount namespace of its own.
fn spawn(binary: &Path, mount: &OwnedFd, shared_dir: &Path, socket: &Path, read_only: bool) -> Result<Child, String> {
    let target = CString::new(shared_dir.as_os_str().as_encoded_bytes()).map_err(|_| "a NUL in the instance path".to_string())?;
    let mount_fd = mount.as_raw_fd();
    let mut cmd = Command::new(binary);
    cmd.arg("--socket-path").arg(socket).arg("--shared-dir").arg(shared_dir).args(["--sandbox", "chroot", "--cache", "auto", "--log-level", "error"]);
    if read_only {
        cmd.arg("--readonly");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: between fork and exec the child makes only raw syscalls on data prepared above:
    // a private mount namespace, then the detached mount attached at the shared directory.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_move_mount, mount_fd, c"".as_ptr(), libc::AT_FDCWD, target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("starting virtiofsd ({}): {e}", binary.display()))
}

fn wait_for_socket(socket: &Path, child: Option<&mut Child>) -> Result<(), String> {
    let deadline = Instant::now() + SOCKET_WAIT;
    let mut child = child;
    while !socket.exists() {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("virtiofsd ended before it listened ({status}); its messages are in the shim log"));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("virtiofsd did not listen on {} within {SOCKET_WAIT:?}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
