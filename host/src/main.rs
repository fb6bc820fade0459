//! `orchestrator`: one binary for the CLI, the per-sandbox shim (`__shim DIR`) and a namespace
//! sandbox's init (`__agent`, the guest agent as PID 1).

use clap::Parser;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

fn main() {
    let mut args = std::env::args_os();
    let _ = args.next();
    match args.next().as_deref().and_then(|a| a.to_str()) {
        Some("__agent") => {
            // SAFETY: the shim hands the sandbox init its stream on fd 3 and nothing else owns it.
            let stream = unsafe { UnixStream::from_raw_fd(3) };
            guest_agent::namespace_main(stream)
        }
        Some("__shim") => {
            let dir = args.next().map(std::path::PathBuf::from).unwrap_or_default();
            orchestrator::shim::main(dir)
        }
        _ => {}
    }
    // A CLI whose output is piped into `head` should end quietly, like any Unix tool.
    // SAFETY: restoring the default SIGPIPE disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCHESTRATOR_LOG").unwrap_or_else(|_| "warn,orchestrator::plugin=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = orchestrator::cli::Cli::parse();
    match orchestrator::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
