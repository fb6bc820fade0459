//! Commands in a sandbox: collected ([`Sandbox::exec`], [`Sandbox::shell`],
//! [`Sandbox::exec_with`]) or streamed ([`Sandbox::exec_stream`], an [`ExecHandle`] with its
//! events, a stdin sink, resize and signals).

use super::{blocking, Sandbox};
use crate::client::{Output, Sender};
use crate::error::{Error, Result};
use guest_agent::protocol::{AgentRequest, ExecRequest, ExitStatus, Rlimits, TtySize, CHUNK_LEN};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a command runs: its arguments, environment, directory, user, limits and terminal.
///
/// ```no_run
/// # async fn demo(sandbox: orchestrator::Sandbox) -> orchestrator::Result<()> {
/// use orchestrator::ExecOptions;
/// use std::time::Duration;
/// let out = sandbox
///     .exec_with(ExecOptions::new("python3").args(["-c", "import os; print(os.getcwd())"]).cwd("/tmp").timeout(Duration::from_secs(5)))
///     .await?;
/// assert_eq!(out.stdout_lossy().trim(), "/tmp");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOptions {
    pub argv: Vec<String>,
    /// Added to (and overriding) the sandbox's environment.
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// `name`, `uid` or `uid:gid`, as the sandbox's /etc/passwd and /etc/group know them.
    pub user: Option<String>,
    /// Killed (SIGKILL) after this long; the status says `timed_out`.
    pub timeout: Option<Duration>,
    pub rlimits: Rlimits,
    /// A terminal of this size (rows, columns); None: pipes.
    pub tty: Option<(u16, u16)>,
    /// Keep stdin open for [`ExecHandle::write_stdin`] (streamed execs always do).
    pub stdin: bool,
}

impl ExecOptions {
    pub fn new(program: impl Into<String>) -> ExecOptions {
        ExecOptions { argv: vec![program.into()], ..Default::default() }
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }
    pub fn rlimits(mut self, rlimits: Rlimits) -> Self {
        self.rlimits = rlimits;
        self
    }
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some((rows, cols));
        self
    }

    fn request(&self, stdin: bool) -> ExecRequest {
        ExecRequest {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            user: self.user.clone(),
            tty: self.tty.map(|(rows, cols)| TtySize { rows, cols }),
            stdin: stdin || self.stdin,
            rlimits: self.rlimits.clone(),
            timeout_ms: self.timeout.map(|t| t.as_millis().max(1) as u64),
        }
    }
}

/// A finished command's output and status.
///
/// ```no_run
/// # async fn demo(sandbox: orchestrator::Sandbox) -> orchestrator::Result<()> {
/// let out = sandbox.shell("ls /nope; echo done").await?;
/// assert_eq!(out.code(), 0, "the script's last command decides");
/// assert_eq!(out.stdout_lossy(), "done\n");
/// assert!(out.stderr_lossy().contains("No such file"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// The exit code, shell style (128 + N for signal N).
    pub fn code(&self) -> i32 {
        self.status.shell_code()
    }
    pub fn success(&self) -> bool {
        self.status.code == Some(0)
    }
    /// Stdout as text; an error when it is not UTF-8.
    pub fn stdout(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.stdout)
    }
    pub fn stderr(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.stderr)
    }
    pub fn stdout_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }
    pub fn stderr_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
}

/// What a streamed command did, in order: `Started` first, `Exited` last.
///
/// ```no_run
/// # async fn demo(sandbox: orchestrator::Sandbox) -> orchestrator::Result<()> {
/// use orchestrator::ExecEvent;
/// let mut handle = sandbox.exec_stream("sh", ["-c", "echo out; echo err >&2"]).await?;
/// while let Some(event) = handle.recv().await {
///     match event {
///         ExecEvent::Started { pid } => println!("pid {pid}"),
///         ExecEvent::Stdout(data) | ExecEvent::Stderr(data) => print!("{}", String::from_utf8_lossy(&data)),
///         ExecEvent::Exited(status) => println!("exit {}", status.shell_code()),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started { pid: u32 },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(ExitStatus),
}

/// Output chunks buffered between the sandbox and a slow reader; beyond them the sandbox's
/// writes wait (backpressure), nothing is dropped.
const EVENT_BUFFER: usize = 64;

/// A running command: its events ([`ExecHandle::recv`]), its stdin, its terminal and signals.
/// Dropping the handle before the command exits kills it; [`ExecHandle::wait`] lets it finish.
///
/// ```no_run
/// # async fn demo(sandbox: orchestrator::Sandbox) -> orchestrator::Result<()> {
/// use orchestrator::ExecEvent;
/// let mut cat = sandbox.exec_stream("cat", ["-n"]).await?;
/// cat.write_stdin("hello\n").await?;
/// cat.close_stdin()?;
/// while let Some(event) = cat.recv().await {
///     match event {
///         ExecEvent::Stdout(data) => print!("{}", String::from_utf8_lossy(&data)),
///         ExecEvent::Exited(status) => println!("exited {:?}", status.code),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ExecHandle {
    pid: u32,
    events: mpsc::Receiver<ExecEvent>,
    input: Sender,
    done: Option<tokio::task::JoinHandle<Result<ExitStatus>>>,
}

impl ExecHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event; None once `Exited` has been received (or the connection was lost:
    /// [`ExecHandle::wait`] then says why).
    pub async fn recv(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    /// Writes to the command's stdin (in frames of at most the protocol's chunk size).
    pub async fn write_stdin(&self, data: impl Into<Vec<u8>>) -> Result<()> {
        self.control().write_stdin(data).await
    }

    /// Closes stdin: the command reads end of file.
    pub fn close_stdin(&self) -> Result<()> {
        self.control().close_stdin()
    }

    /// Resizes the command's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.control().resize(rows, cols)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the command.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.control().signal(signal)
    }

    /// The command's stdin, terminal and signals as a value of its own, for a task that feeds
    /// the command while another reads its events ([`ExecHandle::recv`]).
    pub fn control(&self) -> ExecControl {
        ExecControl { input: self.input.clone() }
    }

    /// Waits for the command to exit, discarding output not yet received.
    pub async fn wait(mut self) -> Result<ExitStatus> {
        self.events.close();
        while self.events.recv().await.is_some() {}
        let done = self.done.take().ok_or_else(|| Error::Protocol("the command was already waited for".into()))?;
        done.await.map_err(|e| Error::Protocol(format!("a worker thread failed: {e}")))?
    }
}

/// A running command's input side: stdin, terminal size and signals. Cloneable; it outlives
/// nothing: once the command has exited, every call fails with a closed connection.
#[derive(Clone)]
pub struct ExecControl {
    input: Sender,
}

impl ExecControl {
    /// Writes to the command's stdin (in frames of at most the protocol's chunk size).
    pub async fn write_stdin(&self, data: impl Into<Vec<u8>>) -> Result<()> {
        let data = data.into();
        let input = self.input.clone();
        blocking(move || {
            for chunk in data.chunks(CHUNK_LEN) {
                if !input.send(AgentRequest::Stdin { data: chunk.to_vec() }) {
                    return Err(lost());
                }
            }
            Ok(())
        })
        .await
    }

    /// Closes stdin: the command reads end of file.
    pub fn close_stdin(&self) -> Result<()> {
        self.send(AgentRequest::CloseStdin)
    }

    /// Resizes the command's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.send(AgentRequest::Resize { rows, cols })
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the command.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.send(AgentRequest::Signal { signal })
    }

    fn send(&self, request: AgentRequest) -> Result<()> {
        if self.input.send(request) {
            Ok(())
        } else {
            Err(lost())
        }
    }
}

impl Drop for ExecHandle {
    fn drop(&mut self) {
        if self.done.as_ref().is_some_and(|d| !d.is_finished()) {
            let _ = self.input.send(AgentRequest::Signal { signal: libc::SIGKILL });
        }
    }
}

fn lost() -> Error {
    Error::Protocol("the command's connection is closed".into())
}

impl Sandbox {
    /// Runs `program` with `args` and collects its output.
    pub async fn exec<I, S>(&self, program: impl Into<String>, args: I) -> Result<ExecOutput>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exec_with(ExecOptions::new(program).args(args)).await
    }

    /// Runs a shell script (`/bin/sh -c SCRIPT`) and collects its output.
    pub async fn shell(&self, script: impl Into<String>) -> Result<ExecOutput> {
        self.exec_with(ExecOptions::new("/bin/sh").args(["-c".to_string(), script.into()])).await
    }

    /// Runs a command as `options` say and collects its output.
    pub async fn exec_with(&self, options: ExecOptions) -> Result<ExecOutput> {
        let this = self.clone();
        let req = options.request(false);
        blocking(move || {
            let (status, stdout, stderr) = this.with_client(|c| c.exec(req.clone()))?;
            Ok(ExecOutput { status, stdout, stderr })
        })
        .await
    }

    /// Starts `program` with `args` and streams it; stdin stays open until closed.
    pub async fn exec_stream<I, S>(&self, program: impl Into<String>, args: I) -> Result<ExecHandle>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exec_stream_with(ExecOptions::new(program).args(args)).await
    }

    /// Starts a command as `options` say and streams it; returns once it runs (a command that
    /// cannot start is an error here: [`crate::ErrorKind::SpawnFailed`]).
    pub async fn exec_stream_with(&self, options: ExecOptions) -> Result<ExecHandle> {
        let this = self.clone();
        let req = options.request(true);
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (started_tx, started) = oneshot::channel::<(Sender, u32)>();
        let done = tokio::task::spawn_blocking(move || {
            let mut started_tx = Some(started_tx);
            let events_tx = events_tx;
            let status = this.with_client(|c| {
                c.exec_streaming(
                    req.clone(),
                    |sender, pid| {
                        if let Some(tx) = started_tx.take() {
                            let _ = events_tx.blocking_send(ExecEvent::Started { pid });
                            let _ = tx.send((sender, pid));
                        }
                    },
                    // A reader that went away only stops receiving; the command runs on.
                    |o| {
                        let _ = events_tx.blocking_send(match o {
                            Output::Stdout(d) => ExecEvent::Stdout(d.to_vec()),
                            Output::Stderr(d) => ExecEvent::Stderr(d.to_vec()),
                        });
                    },
                )
            })?;
            let _ = events_tx.blocking_send(ExecEvent::Exited(status));
            Ok(status)
        });
        match started.await {
            Ok((input, pid)) => Ok(ExecHandle { pid, events, input, done: Some(done) }),
            // The worker ended before the command started: its error says why.
            Err(_) => match done.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(Error::Protocol("the command ended before it was reported started".into())),
                Err(e) => Err(Error::Protocol(format!("a worker thread failed: {e}"))),
            },
        }
    }
}
