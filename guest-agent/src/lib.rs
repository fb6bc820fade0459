//! The guest agent: PID 1 inside every sandbox (namespace or microVM), and the host<->agent
//! protocol that the host links against, so both sides always agree on the wire format.

pub mod abi;
pub mod agent;
mod boot;
pub mod fds;
mod files;
pub mod net;
pub mod init;
pub mod mounts;
pub mod patch;
mod process;
pub mod protocol;
pub mod security;
mod session;
pub mod trust;
pub mod users;
pub mod vm;

use std::os::unix::net::UnixStream;

/// The last step before `Ready`, for namespace and microVM sandboxes alike.
pub fn lock_down(seccomp: bool) -> Result<(), security::SecurityError> {
    // Processes in the sandbox share our uid: non-dumpable keeps them from ptracing PID 1
    // or reading its memory (execve makes their own children dumpable again).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    security::drop_capabilities()?;
    security::set_no_new_privs()?;
    if seccomp {
        security::install_seccomp()?;
    }
    Ok(())
}

/// Entry point of a namespace sandbox's PID 1: receives `Init` on `stream`, builds the root,
/// locks itself down, answers `Ready` (or the error) and serves requests. Never returns.
pub fn namespace_main(stream: UnixStream) -> ! {
    // The name `ps` shows for PID 1 inside the sandbox (we were started as /proc/self/exe).
    // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"guest-agent".as_ptr(), 0, 0, 0) };
    // The writable disk's mount and the volumes' ride on the Init frame.
    let (frame, fds) = match protocol::read_frame_with_fds::<protocol::AgentRequest>(&stream) {
        Ok(f) => f,
        Err(_) => std::process::exit(1),
    };
    boot::run(stream, frame, |init| init::setup_root(init, fds).map_err(|e| e.to_string()), exit_failed)
}

/// A namespace sandbox's init ends by exiting: the shim sees it and reports the error it got.
fn exit_failed(_: &str) -> ! {
    std::process::exit(1)
}
