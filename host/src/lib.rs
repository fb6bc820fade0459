//! The orchestrator: sandboxes declared in YAML or built in code, reconciled, isolated in
//! Linux namespaces or microVMs, driven through the guest agent.
//!
//! As a library, it is used in two ways:
//! - [`Sandbox::builder`] makes one sandbox and drives it (exec, streaming, files, stop);
//!   the sandbox is detached (its shim outlives the program) and [`Sandbox::get`] reconnects
//!   to it from any process.
//! - [`Orchestrator`] is the whole state: apply manifests, list, describe, delete.
//!
//! Both read one [`Config`] and return one [`Error`]. A program that starts sandboxes runs
//! their shims from its own executable unless [`Config::binary`] names the `orchestrator`
//! binary, so it calls [`run_internal_command`] first thing in `main`:
//!
//! ```no_run
//! fn main() -> Result<(), orchestrator::Error> {
//!     // Before any runtime or thread starts: a shim or a sandbox's init must own its signals.
//!     orchestrator::run_internal_command();
//!     tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
//!         let sandbox = orchestrator::Sandbox::builder("hello").image("alpine:3.20").create().await?;
//!         let out = sandbox.shell("echo hello from $(hostname)").await?;
//!         print!("{}", out.stdout_lossy());
//!         sandbox.remove().await
//!     })
//! }
//! ```
//!
//! The binary in main.rs is the command line, a renderer over this library; [`api`] is the
//! HTTP API `serve` offers over the same library, and [`mcp`] the MCP server.

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod controller;
pub mod error;
pub mod hooks;
pub mod mcp;
pub mod ids;
pub mod image;
pub mod microvm;
pub mod net_counters;
pub mod paths;
pub mod plugin;
pub mod queries;
pub mod reconcile;
pub mod runtime;
pub mod sandbox;
pub mod shim;
pub mod sources;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod view;
pub mod volume;

pub use config::{Config, Credentials, RegistryConfig};
pub use error::{Error, ErrorKind, Result};
pub use queries::Description;
pub use reconcile::Orchestrator;
pub use sandbox::{EventStream, ExecEvent, ExecHandle, ExecOptions, ExecOutput, LogStream, Sandbox, SandboxBuilder, SandboxFs};
pub use view::{ApplyReport, ResourceView};

/// Runs this process as a sandbox's shim or a namespace sandbox's init when it was started as
/// one (`BINARY __shim DIR`, `BINARY __agent`), and never returns then; otherwise returns at
/// once. A program that embeds the library and starts sandboxes calls it first in `main`,
/// before it starts a runtime or any thread (the orchestrator's own binary does): both roles
/// fork and take signals (SIGCHLD, SIGTERM) through signalfd, which only works when no other
/// thread exists to receive them. Called too late, it refuses to run either role.
pub fn run_internal_command() {
    use std::os::fd::FromRawFd;
    let mut args = std::env::args_os();
    let _ = args.next();
    let role = args.next();
    let role = role.as_deref().and_then(|a| a.to_str());
    if matches!(role, Some("__agent" | "__shim")) && thread_count() > 1 {
        eprintln!(
            "orchestrator: {} cannot run in a process with {} threads: call orchestrator::run_internal_command() first in main, before a runtime starts (not inside #[tokio::main])",
            role.unwrap_or_default(),
            thread_count()
        );
        std::process::exit(70);
    }
    match role {
        Some("__agent") => {
            // SAFETY: the shim hands the sandbox init its stream on fd 3 and nothing else owns it.
            let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(3) };
            guest_agent::namespace_main(stream)
        }
        Some("__shim") => {
            let dir = args.next().map(std::path::PathBuf::from).unwrap_or_default();
            shim::main(dir)
        }
        _ => {}
    }
}

/// This process's thread count, from /proc (1 when it cannot be read: the check is advisory).
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|n| n.trim().parse().ok())))
        .unwrap_or(1)
}
