//! A sandbox's main-process output as a stream ([`Sandbox::logs`]): what its log holds, then,
//! when following, what it writes next, until the sandbox's shim ends.

use super::Sandbox;
use crate::error::{Error, Result};
use crate::reconcile::Orchestrator;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a followed log is looked at again.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// The largest chunk handed out at once.
const LOG_CHUNK: usize = 64 * 1024;

/// The chunks of a sandbox's log, in order.
///
/// ```no_run
/// # async fn demo(sandbox: orchestrator::Sandbox) -> orchestrator::Result<()> {
/// let mut logs = sandbox.logs(true).await?;
/// while let Some(chunk) = logs.next().await {
///     print!("{}", String::from_utf8_lossy(&chunk?));
/// }
/// # Ok(()) }
/// ```
pub struct LogStream {
    chunks: mpsc::Receiver<Result<Vec<u8>>>,
}

impl LogStream {
    /// The next chunk; None at the end (not following: the end of the file; following: the
    /// sandbox's shim ended and everything it wrote was read).
    pub async fn next(&mut self) -> Option<Result<Vec<u8>>> {
        self.chunks.recv().await
    }

    /// Everything until the end, in one buffer.
    pub async fn read_all(mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next().await {
            out.extend(chunk?);
        }
        Ok(out)
    }
}

impl Sandbox {
    /// The main process's output (stdout and stderr as the log holds them); `follow` keeps
    /// the stream open for what comes next, until the sandbox stops.
    pub async fn logs(&self, follow: bool) -> Result<LogStream> {
        let this = self.clone();
        let (path, dir) = super::blocking(move || {
            let orch = Orchestrator::open((*this.config).clone())?;
            let row = orch.store.sandbox(&this.name)?.ok_or_else(|| Error::no_sandbox(&this.name))?;
            let dir = orch.instance_dir(&row);
            Ok((dir.main_log(), dir))
        })
        .await?;
        let (tx, chunks) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Error::io(path.display().to_string(), e)));
                    return;
                }
            };
            let mut pos = 0u64;
            let mut buf = vec![0u8; LOG_CHUNK];
            loop {
                let alive = follow && crate::paths::shim_alive(&dir);
                let n = match file.seek(SeekFrom::Start(pos)).and_then(|_| file.read(&mut buf)) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Error::io(path.display().to_string(), e)));
                        return;
                    }
                };
                if n > 0 {
                    pos += n as u64;
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        return;
                    }
                    continue;
                }
                // At the end: done unless following a sandbox that still runs (checked before
                // the read, so nothing it wrote before ending is missed).
                if !alive {
                    return;
                }
                std::thread::sleep(FOLLOW_POLL);
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(LogStream { chunks })
    }
}
