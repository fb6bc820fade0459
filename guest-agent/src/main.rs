//! `orchestrator-agent --fd N`: serves the agent protocol on an inherited socket. As PID 1
//! without arguments it is a microVM's init (`guest_agent::vm`). The host
//! normally runs the agent as `orchestrator __agent` (same code); this standalone binary is what
//! a microVM's initramfs carries.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Started by the kernel as a microVM's init (from the initramfs), with no arguments.
    if std::process::id() == 1 && args.len() <= 1 {
        guest_agent::vm::main()
    }
    let fd = match args.iter().position(|a| a == "--fd").and_then(|i| args.get(i + 1)).map(|s| s.parse::<i32>()) {
        Some(Ok(fd)) if fd > 2 => fd,
        _ => {
            eprintln!("usage: orchestrator-agent --fd N   (N: a connected stream socket, N > 2)");
            std::process::exit(2);
        }
    };
    // SAFETY: the caller hands us this fd; nothing else in this process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    guest_agent::agent::serve(stream)
}
