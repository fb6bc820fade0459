//! `orchestrator-core`: one binary for the CLI, the per-sandbox shim (`__shim DIR`) and a
//! namespace sandbox's init (`__agent`, the guest agent as PID 1). Users run it through the
//! `orchestrator` front (front.rs), which starts `exec` faster and hands it everything else.

use clap::Parser;

fn main() {
    orchestrator::run_internal_command();
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
