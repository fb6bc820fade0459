//! One exec session's thread: pumps the process's output to the peer, enforces its timeout and
//! reports its exit, all from one `poll` over its stdout, its stderr and its [`ExitSlot`].
//!
//! Invariants:
//! - `Exited` is the session's last frame: output read before the exit, and output that
//!   drains within [`DRAIN_TIMEOUT`] after it, comes first.
//! - A grandchild that keeps the output open does not hold the session past the drain timeout.
//! - Nothing is sent before the launcher says go: `Started` is the first frame a client hears.

use crate::agent::Outbox;
use crate::process::ExitSlot;
use crate::protocol::{ExitStatus, Response};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait for a process's output to drain after it exited (a background grandchild
/// may keep the pipe open forever).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What one session serves.
pub struct Session {
    pub id: u64,
    pub stdout: OwnedFd,
    /// None when stdout and stderr share a terminal.
    pub stderr: Option<OwnedFd>,
    pub exit: Arc<ExitSlot>,
    pub timeout: Option<Duration>,
}

struct Output {
    fd: OwnedFd,
    is_err: bool,
    buf: Vec<u8>,
}

impl Output {
    /// Reads what is there and sends it; false at end of file (or the peer gone).
    fn pump(&mut self, id: u64, out: &Outbox) -> bool {
        // SAFETY: reading into our own buffer from a descriptor we own.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // EIO: the PTY's last slave closed.
            return matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock);
        }
        if n == 0 {
            return false;
        }
        let n = n as usize;
        let data = self.buf[..n].to_vec();
        // Most commands print little: start small (no fresh pages to fault in for every exec)
        // and grow to a pipe's worth once a read fills the buffer.
        if n == self.buf.len() && self.buf.len() < 64 * 1024 {
            self.buf = vec![0u8; 64 * 1024];
        }
        let body = if self.is_err { Response::Stderr { data } } else { Response::Stdout { data } };
        out.send(id, body)
    }
}

/// Serves the session of process `pid` until it has exited and its output drained; returns
/// its exit status (`timed_out` set when its timeout killed it).
pub fn serve(s: Session, pid: i32, out: &Outbox) -> ExitStatus {
    let mut outputs: Vec<Output> = std::iter::once((s.stdout, false))
        .chain(s.stderr.map(|fd| (fd, true)))
        .map(|(fd, is_err)| Output { fd, is_err, buf: vec![0u8; 4096] })
        .collect();
    let mut kill_at = s.timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() && s.exit.get().is_some() {
            drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
        }
        if outputs.is_empty() && drain_until.is_some() {
            break;
        }
        let now = Instant::now();
        let wait = match (drain_until, kill_at) {
            (Some(d), _) if d <= now => break,
            (Some(d), _) => Some(d - now),
            (None, Some(k)) if k <= now => {
                timed_out = true;
                kill_at = None;
                // SAFETY: killing the process group of a child we started (it called setsid).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
                continue;
            }
            (None, Some(k)) => Some(k - now),
            (None, None) => None,
        };
        let mut fds: Vec<libc::pollfd> = outputs.iter().map(|o| libc::pollfd { fd: o.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        if drain_until.is_none() {
            fds.push(libc::pollfd { fd: s.exit.fd(), events: libc::POLLIN, revents: 0 });
        }
        // Rounded up: a deadline a fraction of a millisecond away must not spin.
        let ms = wait.map_or(-1, |w| w.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
        // SAFETY: `fds` is a valid array of its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let mut i = 0;
        outputs.retain_mut(|o| {
            let ready = fds[i].revents != 0;
            i += 1;
            !ready || o.pump(s.id, out)
        });
    }
    let mut status = s.exit.get().unwrap_or(ExitStatus { code: None, signal: None, timed_out: false });
    status.timed_out = timed_out;
    status
}
