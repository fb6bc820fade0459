//! Starting processes and collecting their exit statuses, as PID 1 must.
//!
//! Invariants:
//! - Only the reaper calls `waitpid`, always on any child (`-1`), so orphans re-parented to PID 1
//!   never stay zombies.
//! - A child is registered in `Reaper::children` under the same lock that is held across its
//!   `fork`, so the reaper can never collect an exit status before the pid is known.
//! - Between `fork` and `execve` the child calls only async-signal-safe functions on data prepared
//!   before the fork (the agent is multi-threaded).

use crate::protocol::{ExitStatus, Rlimits, TtySize};
use crate::users::Identity;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Reaper {
    children: Mutex<HashMap<i32, Sender<ExitStatus>>>,
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Collects every exited child; call on SIGCHLD.
    pub fn reap(&self) {
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid on any child without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let exit = if libc::WIFEXITED(status) {
                ExitStatus { code: Some(libc::WEXITSTATUS(status)), signal: None, timed_out: false }
            } else if libc::WIFSIGNALED(status) {
                ExitStatus { code: None, signal: Some(libc::WTERMSIG(status)), timed_out: false }
            } else {
                continue;
            };
            if let Some(tx) = self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid) {
                let _ = tx.send(exit);
            }
        }
    }

    pub fn live_children(&self) -> Vec<i32> {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }
}

pub struct SpawnRequest<'a> {
    pub argv: &'a [String],
    pub env: Vec<(String, String)>,
    pub cwd: &'a str,
    pub identity: &'a Identity,
    pub rlimits: &'a Rlimits,
    pub tty: Option<TtySize>,
    pub stdin: bool,
}

/// The parent's ends of a started process's standard streams. The child waits at its `gate`
/// right before execve, so the caller can set up everything that serves it first (a process
/// that forks fast must not starve the agent of the threads that pump its output).
pub struct Spawned {
    pub pid: i32,
    pub exit: Receiver<ExitStatus>,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    /// None when stdout and stderr share a terminal.
    pub stderr: Option<OwnedFd>,
    /// The PTY master, for resizing.
    pub pty_master: Option<OwnedFd>,
    pub gate: Gate,
}

/// Lets a held child exec. Dropping it unreleased makes the child exit (status 126).
pub struct Gate {
    go: OwnedFd,
    errors: OwnedFd,
    program: String,
}

impl Gate {
    /// Releases the child and reports whether it reached execve.
    pub fn release(self) -> Result<(), SpawnError> {
        // SAFETY: one byte into our pipe; EPIPE (the child already failed) is reported below.
        unsafe { libc::write(self.go.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        drop(self.go);
        let mut buf = [0u8; 4];
        if read_full(self.errors.as_raw_fd(), &mut buf) != 4 {
            return Ok(());
        }
        let stage = STAGES.get(buf[0] as usize).copied().unwrap_or("exec");
        let errno = i32::from(buf[1]) | (i32::from(buf[2]) << 8);
        if stage == "execve" && errno == libc::ENOENT {
            return Err(SpawnError::NotFound(self.program));
        }
        Err(SpawnError::Os { stage, source: std::io::Error::from_raw_os_error(errno) })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: executable file not found in $PATH")]
    NotFound(String),
    #[error("argv is empty")]
    EmptyArgv,
    #[error("argument contains a NUL byte")]
    Nul,
    #[error("{stage}: {source}")]
    Os { stage: &'static str, source: std::io::Error },
}

fn os(stage: &'static str) -> impl FnOnce(std::io::Error) -> SpawnError {
    move |source| SpawnError::Os { stage, source }
}

fn cstr(s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we immediately own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Os { stage: "pipe", source: std::io::Error::last_os_error() });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Finds the program like execvp would, before the fork (allocation is not allowed after it).
pub fn resolve_program(program: &str, path_var: Option<&str>, cwd: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    };
    if program.contains('/') {
        let p = if program.starts_with('/') {
            std::path::PathBuf::from(program)
        } else {
            std::path::Path::new(cwd).join(program)
        };
        // Checked here, as a PATH lookup is, so that a missing program fails the request
        // before it is reported started (execve's own errors come after `Started`).
        return executable(&p).then(|| p.to_string_lossy().into_owned());
    }
    let path_var = path_var.unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| executable(p))
        .map(|p| p.to_string_lossy().into_owned())
}

/// What the child writes to the error pipe when a step before execve fails.
const STAGES: &[&str] = &["setsid", "controlling terminal", "stdio", "rlimit", "setgroups", "setgid", "setuid", "chdir", "execve"];

pub fn spawn(reaper: &Reaper, req: SpawnRequest<'_>) -> Result<Spawned, SpawnError> {
    let program = req.argv.first().ok_or(SpawnError::EmptyArgv)?;
    let path_var = req.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let resolved = resolve_program(program, path_var, req.cwd).ok_or_else(|| SpawnError::NotFound(program.clone()))?;
    let path_c = cstr(&resolved)?;
    let argv_c = req.argv.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
    let env_c = req.env.iter().map(|(k, v)| cstr(&format!("{k}={v}"))).collect::<Result<Vec<_>, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let cwd_c = cstr(req.cwd)?;
    let groups: Vec<libc::gid_t> = req.identity.groups.clone();
    let limits: Vec<(libc::__rlimit_resource_t, u64)> = [
        (libc::RLIMIT_NOFILE, req.rlimits.nofile),
        (libc::RLIMIT_NPROC, req.rlimits.nproc),
        (libc::RLIMIT_FSIZE, req.rlimits.fsize),
        (libc::RLIMIT_CPU, req.rlimits.cpu_secs),
    ]
    .into_iter()
    .filter_map(|(r, v)| v.map(|v| (r, v)))
    .collect();

    // Parent ends / child ends of the standard streams.
    let (stdin_parent, stdin_child, stdout_parent, stdout_child, stderr_parent, stderr_child, master);
    if let Some(size) = req.tty {
        let ws = nix::pty::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| SpawnError::Os { stage: "openpty", source: e.into() })?;
        set_cloexec(pty.master.as_raw_fd());
        set_cloexec(pty.slave.as_raw_fd());
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(os("dup"));
        stdout_parent = dup(&pty.master)?;
        stdin_parent = if req.stdin { Some(dup(&pty.master)?) } else { None };
        stderr_parent = None;
        stdin_child = Some(dup(&pty.slave)?);
        stderr_child = Some(dup(&pty.slave)?);
        stdout_child = pty.slave;
        master = Some(pty.master);
    } else {
        let (r, w) = pipe()?;
        stdout_parent = r;
        stdout_child = w;
        let (r, w) = pipe()?;
        stderr_parent = Some(r);
        stderr_child = Some(w);
        if req.stdin {
            let (r, w) = pipe()?;
            stdin_child = Some(r);
            stdin_parent = Some(w);
        } else {
            stdin_child = None;
            stdin_parent = None;
        }
        master = None;
    }
    let devnull = std::fs::File::open("/dev/null").map_err(os("opening /dev/null"))?;
    let in_fd: RawFd = stdin_child.as_ref().map(|f| f.as_raw_fd()).unwrap_or(devnull.as_raw_fd());
    let out_fd = stdout_child.as_raw_fd();
    let err_fd = stderr_child.as_ref().map(|f| f.as_raw_fd()).unwrap_or(out_fd);
    let tty = req.tty.is_some();
    let (err_r, err_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (uid, gid) = (req.identity.uid, req.identity.gid);

    let (tx, rx) = mpsc::channel();
    let mut children = reaper.children.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the child only calls async-signal-safe functions on pre-built data, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Os { stage: "fork", source: std::io::Error::last_os_error() });
    }
    if pid == 0 {
        // SAFETY: see above; every path ends in execve or _exit.
        unsafe {
            let fail = |stage: u8| -> ! {
                let e = *libc::__errno_location();
                let msg = [stage, (e & 0xff) as u8, ((e >> 8) & 0xff) as u8, 0];
                libc::write(err_w.as_raw_fd(), msg.as_ptr().cast(), 4);
                libc::_exit(127);
            };
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Dispositions survive execve: a process must not inherit ignored signals from
            // whoever started the agent (a shell's background job ignores SIGINT and SIGQUIT).
            for sig in 1..libc::SIGRTMIN() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if libc::setsid() < 0 {
                fail(0);
            }
            if tty && libc::ioctl(out_fd, libc::TIOCSCTTY, 0) < 0 {
                fail(1);
            }
            if libc::dup2(in_fd, 0) < 0 || libc::dup2(out_fd, 1) < 0 || libc::dup2(err_fd, 2) < 0 {
                fail(2);
            }
            for (res, v) in &limits {
                let lim = libc::rlimit { rlim_cur: *v, rlim_max: *v };
                if libc::setrlimit(*res, &lim) != 0 {
                    fail(3);
                }
            }
            // Only root may set groups; anyone may "change" to the ids they already have.
            if libc::geteuid() == 0 && libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                fail(4);
            }
            if libc::setresgid(gid, gid, gid) != 0 {
                fail(5);
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                fail(6);
            }
            if libc::chdir(cwd_c.as_ptr()) != 0 {
                fail(7);
            }
            let mut go = 0u8;
            if libc::read(go_r.as_raw_fd(), (&mut go as *mut u8).cast(), 1) != 1 {
                libc::_exit(126);
            }
            // Only 0, 1 and 2 cross into the program, whatever else is open in the agent.
            crate::fds::cloexec_from(3);
            libc::execve(path_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
            fail(8);
        }
    }
    children.insert(pid, tx);
    drop(children);
    drop((stdin_child, stdout_child, stderr_child, err_w, go_r, devnull));
    let gate = Gate { go: go_w, errors: err_r, program: program.clone() };
    Ok(Spawned { pid, exit: rx, stdin: stdin_parent, stdout: stdout_parent, stderr: stderr_parent, pty_master: master, gate })
}

fn read_full(fd: RawFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of a valid buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    got
}

pub fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
}

pub fn resize(master: &OwnedFd, size: TtySize) {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ on a PTY master with a valid winsize.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}
