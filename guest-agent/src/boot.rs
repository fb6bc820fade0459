//! The boot sequence both kinds of sandbox share on the agent's side. The first frame must be
//! `Init`; the root is built from it (each kind its own way: a namespace's pivot, a VM's
//! disks); the agent locks itself down; it answers `Ready`, or the error once, and only then
//! serves requests. Nothing of the sandbox runs before `Ready`.

use crate::protocol::{self, error, AgentRequest, ErrorCode, Frame, Response, SandboxInit};
use std::os::unix::net::UnixStream;

/// Boots from `first` (the frame read from `stream`) and serves; never returns. `build_root`
/// makes the sandbox's root; `fail` ends the agent the way its kind must (exit, or power off).
pub fn run(mut stream: UnixStream, first: Frame<AgentRequest>, build_root: impl FnOnce(&SandboxInit) -> Result<(), String>, fail: fn(&str) -> !) -> ! {
    let id = first.id;
    let mut refuse = |message: String| -> ! {
        let _ = protocol::write_frame(&mut stream, &Frame { id, body: error(ErrorCode::Internal, message.clone()) });
        fail(&message)
    };
    let AgentRequest::Init(init) = first.body else { refuse("the first request must be Init".into()) };
    if let Err(e) = build_root(&init) {
        refuse(format!("building the sandbox root: {e}"));
    }
    if let Err(e) = crate::lock_down(init.seccomp) {
        refuse(e.to_string());
    }
    if protocol::write_frame(&mut stream, &Frame { id, body: Response::Ready }).is_err() {
        fail("the host went away before Ready");
    }
    crate::agent::serve(stream)
}
