//! Starting processes and collecting their exit statuses, as PID 1 must.
//!
//! Invariants:
//! - Only the reaper calls `waitpid`, always on any child (`-1`), so orphans re-parented to PID 1
//!   never stay zombies.
//! - A child is registered in `Reaper::children` under the same lock that is held across its
//!   creation, so the reaper can never collect an exit status before the pid is known.
//! - A process is created with `clone(CLONE_VM | CLONE_VFORK)`, as posix_spawn does: no copy of
//!   the agent's address space, no copy-on-write faults, and the agent's thread resumes only once
//!   the child has exec'd or failed. Between clone and execve the child shares the agent's memory,
//!   so it calls only raw system calls (never glibc's set*id wrappers, which signal every thread
//!   of the process they think they are in) on data prepared before, and writes nothing but its
//!   own stack and errno.
//! - Everything that serves a process (the session thread that pumps its output and reports
//!   its exit) exists before it is created ([`Prepared`] then [`Launcher::launch`]): a process
//!   that forks fast cannot starve the agent of the thread that serves it.
//! - An exit status is left in the child's [`ExitSlot`], whose eventfd then reads ready: a
//!   session waits for its output and its exit in one `poll`.

use crate::protocol::{ExitStatus, Rlimits, TtySize};
use crate::users::Identity;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// Where the reaper leaves one child's exit status, with an eventfd that reads ready once it
/// is there.
pub struct ExitSlot {
    status: Mutex<Option<ExitStatus>>,
    ready: OwnedFd,
}

impl ExitSlot {
    pub fn new() -> std::io::Result<Arc<ExitSlot>> {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Arc::new(ExitSlot { status: Mutex::new(None), ready: unsafe { OwnedFd::from_raw_fd(fd) } }))
    }

    fn set(&self, exit: ExitStatus) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit);
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write from a valid buffer to our eventfd.
        unsafe { libc::write(self.ready.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// The exit status, once the child has exited.
    pub fn get(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Readable once the status is there (reading it is never needed: `get` says).
    pub fn fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

#[derive(Default)]
pub struct Reaper {
    children: Mutex<HashMap<i32, Arc<ExitSlot>>>,
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
            if let Some(slot) = self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid) {
                slot.set(exit);
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

/// A process ready to be created: the parent's ends of its standard streams (to be served
/// first), and the [`Launcher`] that creates it. Dropped unlaunched, nothing runs and the
/// parent's ends read end-of-file.
pub struct Prepared {
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    /// None when stdout and stderr share a terminal.
    pub stderr: Option<OwnedFd>,
    /// The PTY master, for resizing.
    pub pty_master: Option<OwnedFd>,
    pub launcher: Launcher,
}

/// Everything the child needs, built before it exists (it may not allocate).
pub struct Launcher {
    program: String,
    path: CString,
    _argv: Vec<CString>,
    argv_p: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_p: Vec<*const libc::c_char>,
    cwd: CString,
    groups: Vec<libc::gid_t>,
    limits: Vec<(libc::__rlimit_resource_t, u64)>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    tty: bool,
    in_fd: RawFd,
    out_fd: RawFd,
    err_fd: RawFd,
    /// The child's ends, closed in the parent once it exists.
    _child_ends: Vec<OwnedFd>,
    _devnull: std::fs::File,
}

// SAFETY: the raw pointers point into the CStrings the launcher owns.
unsafe impl Send for Launcher {}

/// The child's stack between clone and execve: the few frames of [`child_main`] and libc's
/// syscall wrappers.
const CHILD_STACK: usize = 64 * 1024;

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
    let path_var = path_var.unwrap_or(crate::abi::DEFAULT_PATH);
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| executable(p))
        .map(|p| p.to_string_lossy().into_owned())
}

/// What the child writes to the error pipe when a step before execve fails.
const STAGES: &[&str] = &["setsid", "controlling terminal", "stdio", "rlimit", "setgroups", "setgid", "setuid", "chdir", "execve"];

/// Builds a process (its streams, arguments, environment, identity and limits) without
/// creating it.
pub fn prepare(req: SpawnRequest<'_>) -> Result<Prepared, SpawnError> {
    let program = req.argv.first().ok_or(SpawnError::EmptyArgv)?;
    let path_var = req.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let resolved = resolve_program(program, path_var, req.cwd).ok_or_else(|| SpawnError::NotFound(program.clone()))?;
    let path = cstr(&resolved)?;
    let argv = req.argv.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
    let env = req.env.iter().map(|(k, v)| cstr(&format!("{k}={v}"))).collect::<Result<Vec<_>, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let cwd = cstr(req.cwd)?;
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
    let child_ends: Vec<OwnedFd> = [stdin_child, Some(stdout_child), stderr_child].into_iter().flatten().collect();
    let launcher = Launcher {
        program: program.clone(),
        path,
        _argv: argv,
        argv_p,
        _env: env,
        env_p,
        cwd,
        groups: req.identity.groups.clone(),
        limits,
        uid: req.identity.uid,
        gid: req.identity.gid,
        tty: req.tty.is_some(),
        in_fd,
        out_fd,
        err_fd,
        _child_ends: child_ends,
        _devnull: devnull,
    };
    Ok(Prepared { stdin: stdin_parent, stdout: stdout_parent, stderr: stderr_parent, pty_master: master, launcher })
}

/// What the child is handed: the launcher and its error pipe.
struct ChildArgs<'a> {
    l: &'a Launcher,
    err_w: RawFd,
}

/// The child between clone and execve: raw system calls only, on the launcher's data. Reports
/// the failing step and errno on the error pipe and exits 127.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs the parent keeps alive until this child has exec'd or
    // exited (CLONE_VFORK suspends the parent until then).
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    let l = a.l;
    // SAFETY: every call below is a system call on prepared data; every path ends in execve or
    // _exit. errno lives in the suspended parent thread's TLS, which nothing reads meanwhile.
    unsafe {
        let fail = |stage: u8| -> ! {
            let e = *libc::__errno_location();
            let msg = [stage, (e & 0xff) as u8, ((e >> 8) & 0xff) as u8, 0];
            libc::write(a.err_w, msg.as_ptr().cast(), 4);
            libc::_exit(127);
        };
        // Dispositions survive execve: a process must not inherit ignored signals from whoever
        // started the agent (a shell's background job ignores SIGINT and SIGQUIT). Reset them
        // (in this child's own copy of the table) before unblocking anything, so no handler of
        // the agent can run on this shared memory.
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::setsid() < 0 {
            fail(0);
        }
        if l.tty && libc::ioctl(l.out_fd, libc::TIOCSCTTY, 0) < 0 {
            fail(1);
        }
        if libc::dup2(l.in_fd, 0) < 0 || libc::dup2(l.out_fd, 1) < 0 || libc::dup2(l.err_fd, 2) < 0 {
            fail(2);
        }
        for (res, v) in &l.limits {
            let lim = libc::rlimit { rlim_cur: *v, rlim_max: *v };
            if libc::setrlimit(*res, &lim) != 0 {
                fail(3);
            }
        }
        // Raw syscalls: glibc's wrappers would try to change the ids of every thread of the
        // agent, whose memory this child shares. Only root may set groups; anyone may "change"
        // to the ids they already have.
        if libc::geteuid() == 0 && libc::syscall(libc::SYS_setgroups, l.groups.len(), l.groups.as_ptr()) != 0 {
            fail(4);
        }
        if libc::syscall(libc::SYS_setresgid, l.gid, l.gid, l.gid) != 0 {
            fail(5);
        }
        if libc::syscall(libc::SYS_setresuid, l.uid, l.uid, l.uid) != 0 {
            fail(6);
        }
        if libc::chdir(l.cwd.as_ptr()) != 0 {
            fail(7);
        }
        // Only 0, 1 and 2 cross into the program, whatever else is open in the agent.
        crate::fds::cloexec_from(3);
        libc::execve(l.path.as_ptr(), l.argv_p.as_ptr(), l.env_p.as_ptr());
        fail(8);
    }
}

impl Launcher {
    /// Creates the process; returns once it has exec'd (its pid, and where its exit status
    /// will arrive) or with why it could not.
    pub fn launch(self, reaper: &Reaper, exit: &Arc<ExitSlot>) -> Result<i32, SpawnError> {
        let (err_r, err_w) = pipe()?;
        let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
        // The stack grows down from its 16-byte aligned top.
        let top = ((stack.as_mut_ptr() as usize + CHILD_STACK) & !15) as *mut libc::c_void;
        let args = ChildArgs { l: &self, err_w: err_w.as_raw_fd() };
        let mut children = reaper.children.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: child_main runs on its own stack with `args`, which outlive it (CLONE_VFORK:
        // this thread waits until the child has exec'd or exited); SIGCHLD reports its exit to
        // the reaper like any child's.
        let pid = unsafe {
            libc::clone(child_main, top, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, (&args as *const ChildArgs<'_>) as *mut libc::c_void)
        };
        if pid < 0 {
            return Err(SpawnError::Os { stage: "clone", source: std::io::Error::last_os_error() });
        }
        children.insert(pid, exit.clone());
        drop(children);
        drop(stack);
        drop(err_w);
        let mut buf = [0u8; 4];
        if read_full(err_r.as_raw_fd(), &mut buf) != 4 {
            return Ok(pid);
        }
        let stage = STAGES.get(buf[0] as usize).copied().unwrap_or("exec");
        let errno = i32::from(buf[1]) | (i32::from(buf[2]) << 8);
        if stage == "execve" && errno == libc::ENOENT {
            return Err(SpawnError::NotFound(self.program));
        }
        Err(SpawnError::Os { stage, source: std::io::Error::from_raw_os_error(errno) })
    }
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
