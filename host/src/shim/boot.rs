//! The boot handshake both backends share on the shim's side: `Init` to the agent (with the
//! writable disk's mount riding on it when there is one), then `Ready` or the agent's own error
//! within a bound; once a root has its patches, the marker that keeps later starts from
//! applying them again.

use crate::paths::InstanceDir;
use guest_agent::protocol::{self, AgentRequest, Frame, FrameError, Response, SandboxInit};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Sends `init` and waits up to `timeout` for `Ready`. `no_answer` says why the agent did not
/// answer (the kind knows more: a VM that ended, its console).
pub fn init_agent(agent: &mut UnixStream, init: SandboxInit, fds: &[BorrowedFd<'_>], timeout: Duration, no_answer: impl FnOnce(FrameError) -> String) -> Result<(), String> {
    agent.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let frame = Frame { id: 1, body: AgentRequest::Init(Box::new(init)) };
    protocol::send_with_fds(agent, &frame, fds)
    .map_err(|e| format!("sending init to the agent: {e}"))?;
    match protocol::read_frame::<Response>(agent) {
        Ok(Frame { body: Response::Ready, .. }) => {}
        Ok(Frame { body: Response::Error { message, .. }, .. }) => return Err(message),
        Ok(other) => return Err(format!("unexpected answer from the agent: {:?}", other.body)),
        // A read timeout is EAGAIN on a socket: say it was the bound, not an i/o fault.
        Err(FrameError::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(no_answer(FrameError::Io(std::io::Error::new(e.kind(), format!("no answer within {} s", timeout.as_secs())))))
        }
        Err(e) => return Err(no_answer(e)),
    }
    agent.set_read_timeout(None).map_err(|e| e.to_string())
}

/// The writable layer now has its patches: later starts of this instance must not apply them
/// again.
pub fn mark_patched(dir: &InstanceDir) {
    if !dir.patched_marker().exists() {
        let _ = crate::paths::write_atomic(&dir.patched_marker(), b"");
    }
}
