//! Running one command for a request: stdin given whole, output collected up to a bound (the
//! rest is read and dropped, so the command never blocks on a full pipe), a run-time bound,
//! and one of the sandbox's exec slots held for the duration.

use super::problem::{ApiResult, Problem};
use super::ApiState;
use crate::sandbox::{ExecEvent, ExecHandle, ExecOptions, Sandbox};
use guest_agent::protocol::ExitStatus;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a collected command gave.
pub struct Collected {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond the bound was dropped.
    pub truncated: bool,
}

/// The timeout a request gets: what it asked for within the server's bound, else the default.
pub fn timeout(state: &ApiState, asked_ms: Option<u64>) -> Duration {
    asked_ms.map(Duration::from_millis).unwrap_or(state.limits.default_exec_timeout).min(state.limits.max_exec_timeout)
}

/// A command as the API's routes take it (collected, streamed, interactive): the program
/// and its arguments (an empty one is a 400), its environment, directory and user, and its
/// run time within the server's bound.
pub fn options(state: &ApiState, command: Vec<String>, env: BTreeMap<String, String>, cwd: Option<String>, user: Option<String>, timeout_ms: Option<u64>) -> ApiResult<ExecOptions> {
    let mut argv = command.into_iter();
    let program = argv.next().filter(|p| !p.is_empty()).ok_or_else(|| Problem::bad_request("the command is empty: give at least the program, e.g. [\"/bin/echo\", \"hi\"]"))?;
    let mut options = ExecOptions::new(program).args(argv);
    options.env = env;
    options.cwd = cwd;
    options.user = user;
    options.timeout = Some(timeout(state, timeout_ms));
    Ok(options)
}

/// Starts `options` in `sandbox`, hands it `stdin` whole and closes it (None: no stdin).
pub async fn start(sandbox: &Sandbox, mut options: ExecOptions, stdin: Option<Vec<u8>>) -> ApiResult<ExecHandle> {
    if options.argv.first().is_none_or(|p| p.is_empty()) {
        return Err(Problem::bad_request("the command is empty: give at least the program, e.g. [\"/bin/echo\", \"hi\"]"));
    }
    options.stdin = stdin.is_some();
    let handle = sandbox.exec_stream_with(options).await.map_err(Problem::from)?;
    if let Some(data) = stdin {
        if !data.is_empty() {
            handle.write_stdin(data).await.map_err(Problem::from)?;
        }
        handle.close_stdin().map_err(Problem::from)?;
    }
    Ok(handle)
}

/// Reads a started command to its end, keeping `max` bytes of each of stdout and stderr.
pub async fn collect(mut handle: ExecHandle, max: usize) -> ApiResult<Collected> {
    let (mut stdout, mut stderr, mut truncated) = (Vec::new(), Vec::new(), false);
    let mut keep = |buf: &mut Vec<u8>, data: Vec<u8>| {
        let room = max.saturating_sub(buf.len());
        if data.len() > room {
            truncated = true;
        }
        buf.extend_from_slice(&data[..data.len().min(room)]);
    };
    while let Some(event) = handle.recv().await {
        match event {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout(d) => keep(&mut stdout, d),
            ExecEvent::Stderr(d) => keep(&mut stderr, d),
            ExecEvent::Exited(status) => return Ok(Collected { status, stdout, stderr, truncated }),
        }
    }
    // The stream ended without an exit: the sandbox went away under the command.
    let status = handle.wait().await.map_err(Problem::from)?;
    Ok(Collected { status, stdout, stderr, truncated })
}

/// Runs `options` in `sandbox` with `stdin`, in one of its exec slots, and collects its output.
pub async fn run(state: &ApiState, sandbox: &Sandbox, options: ExecOptions, stdin: Option<Vec<u8>>) -> ApiResult<Collected> {
    let _slot = state.exec_slot(sandbox.name())?;
    collect(start(sandbox, options, stdin).await?, state.limits.max_output).await
}
