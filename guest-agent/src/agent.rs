//! The agent's request loop: reads frames, runs exec sessions and file operations, forwards
//! signals and reaps every process in the sandbox. One connection (to the shim) per agent; if it
//! closes, the agent ends every process and exits, so a sandbox never outlives its owner.

use crate::files;
use crate::process::{self, Reaper, SpawnRequest};
use crate::protocol::{
    self, error, AgentRequest, ErrorCode, ExecRequest, ExitStatus, Frame, FrameError, Response, TtySize,
    CHUNK_LEN, PROTOCOL_VERSION,
};
use crate::users;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for a process's output to drain after it exited (a background grandchild
/// may keep the pipe open forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts a thread without panicking when the sandbox's pids limit refuses one.
fn spawn_thread(f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    thread::Builder::new().spawn(f).map(|_| ())
}

fn out_of_threads(e: std::io::Error) -> Response {
    error(ErrorCode::SpawnFailed, format!("cannot start a thread ({e}); is the sandbox at its pids limit?"))
}

/// Serialises whole frames onto the shared connection.
pub struct Outbox {
    stream: Mutex<UnixStream>,
}

impl Outbox {
    pub fn new(stream: UnixStream) -> Arc<Self> {
        Arc::new(Self { stream: Mutex::new(stream) })
    }

    /// Returns false once the peer is gone.
    pub fn send(&self, id: u64, body: Response) -> bool {
        let Ok(buf) = protocol::encode(&Frame { id, body }) else { return false };
        let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        s.write_all(&buf).is_ok()
    }
}

enum StdinMsg {
    Data(Vec<u8>),
    Close,
}

struct Session {
    pid: i32,
    stdin: Option<Sender<StdinMsg>>,
    pty_master: Option<Arc<OwnedFd>>,
}

pub struct Agent {
    out: Arc<Outbox>,
    reaper: Arc<Reaper>,
    sessions: Mutex<HashMap<u64, Session>>,
    is_init: bool,
}

/// Signals the agent handles itself on a dedicated thread; blocked everywhere else.
fn handled_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        set.add(s);
    }
    set
}

static VM_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The agent is a microVM's init: ending means powering the VM off, never exiting.
pub fn set_vm_mode() {
    VM_MODE.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Ends the agent: exit in a namespace sandbox, power-off in a microVM.
pub fn finish(code: i32) -> ! {
    if VM_MODE.load(std::sync::atomic::Ordering::SeqCst) {
        crate::vm::power_off()
    }
    std::process::exit(code)
}

/// Serves the protocol on `stream` until the peer closes it or asks for shutdown; never returns.
pub fn serve(stream: UnixStream) -> ! {
    let signals = handled_signals();
    let _ = signals.thread_block();
    // SAFETY: ignoring SIGPIPE so a vanished reader surfaces as EPIPE instead of killing PID 1.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let is_init = std::process::id() == 1;
    if !is_init {
        // Outside a PID namespace (tests, development) orphans still come to us.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    process::set_cloexec(stream.as_raw_fd());
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => finish(1),
    };
    let agent = Arc::new(Agent {
        out: Outbox::new(writer),
        reaper: Reaper::new(),
        sessions: Mutex::new(HashMap::new()),
        is_init,
    });
    {
        let agent = agent.clone();
        let started = spawn_thread(move || loop {
            match signals.wait() {
                Ok(nix::sys::signal::Signal::SIGCHLD) => agent.reaper.reap(),
                Ok(sig) => agent.signal_all(sig as i32),
                Err(_) => {}
            }
        });
        if started.is_err() {
            finish(1);
        }
    }
    let mut reader = BufReader::with_capacity(CHUNK_LEN + 64, stream);
    loop {
        match protocol::read_payload(&mut reader) {
            Ok(payload) => match protocol::decode::<AgentRequest>(&payload) {
                Ok(frame) => agent.handle(frame.id, frame.body),
                Err(e) => {
                    agent.out.send(protocol::peek_id(&payload), error(ErrorCode::BadRequest, e.to_string()));
                }
            },
            Err(e) if e.recoverable() => {
                agent.out.send(0, error(ErrorCode::TooLarge, e.to_string()));
            }
            Err(_) => break,
        }
    }
    agent.shutdown(Duration::ZERO);
    finish(0);
}

/// Reads frames of one kind until the first request; used before `serve` (namespace init).
pub fn read_first_request(stream: &mut impl Read) -> Result<Frame<AgentRequest>, FrameError> {
    protocol::read_frame(stream)
}

impl Agent {
    fn handle(self: &Arc<Self>, id: u64, req: AgentRequest) {
        match req {
            AgentRequest::Hello { version, .. } => {
                let body = if version == PROTOCOL_VERSION {
                    Response::Hello { version, agent: format!("guest-agent {}", env!("CARGO_PKG_VERSION")) }
                } else {
                    error(
                        ErrorCode::VersionMismatch,
                        format!("agent speaks protocol {PROTOCOL_VERSION}, peer speaks {version}"),
                    )
                };
                self.out.send(id, body);
            }
            AgentRequest::Exec(req) => self.start_exec(id, *req),
            AgentRequest::Stdin { data } => self.to_session(id, |s| {
                if let Some(tx) = &s.stdin {
                    let _ = tx.send(StdinMsg::Data(data));
                }
            }),
            AgentRequest::CloseStdin => self.to_session(id, |s| {
                if let Some(tx) = s.stdin.take() {
                    let _ = tx.send(StdinMsg::Close);
                }
            }),
            AgentRequest::Resize { rows, cols } => self.to_session(id, |s| {
                if let Some(m) = &s.pty_master {
                    process::resize(m, TtySize { rows, cols });
                }
            }),
            AgentRequest::Signal { signal } => self.to_session(id, |s| {
                // SAFETY: kill with a pid we started; the signal number is checked by the kernel.
                unsafe { libc::kill(s.pid, signal) };
            }),
            AgentRequest::ReadFile { path, offset, len } => {
                let out = self.out.clone();
                if let Err(e) = spawn_thread(move || files::read_file(&path, offset, len, &mut |r| out.send(id, r))) {
                    self.reply(id, out_of_threads(e));
                }
            }
            AgentRequest::WriteFile { path, offset, data, truncate, mode } => {
                self.out.send(id, files::write_file(&path, offset, &data, truncate, mode));
            }
            AgentRequest::ListDir { path } => {
                let out = self.out.clone();
                if let Err(e) = spawn_thread(move || files::list_dir(&path, &mut |r| out.send(id, r))) {
                    self.reply(id, out_of_threads(e));
                }
            }
            AgentRequest::Stat { path, follow_symlinks } => {
                self.out.send(id, files::stat(&path, follow_symlinks));
            }
            AgentRequest::Mkdir { path, parents, mode } => self.reply(id, files::mkdir(&path, parents, mode)),
            AgentRequest::Remove { path, recursive } => self.reply(id, files::remove(&path, recursive)),
            AgentRequest::Rename { from, to } => self.reply(id, files::rename(&from, &to)),
            AgentRequest::Shutdown { grace_ms } => {
                self.shutdown(Duration::from_millis(grace_ms));
                self.out.send(id, Response::Done);
                finish(0);
            }
            AgentRequest::Init(_) => self.reply(id, error(ErrorCode::BadRequest, "sandbox is already initialised")),
        }
    }

    fn reply(&self, id: u64, body: Response) {
        self.out.send(id, body);
    }

    fn to_session(&self, id: u64, f: impl FnOnce(&mut Session)) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(&id) {
            Some(s) => f(s),
            None => {
                drop(sessions);
                self.out.send(id, error(ErrorCode::NotFound, format!("no running process for request {id}")));
            }
        }
    }

    fn start_exec(self: &Arc<Self>, id: u64, req: ExecRequest) {
        let identity = match users::resolve(req.user.as_deref()) {
            Ok(i) => i,
            Err(e) => return self.reply(id, error(ErrorCode::SpawnFailed, e)),
        };
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), crate::abi::DEFAULT_PATH.into());
        env.insert("HOME".into(), identity.home.clone());
        if let Some(name) = &identity.name {
            env.insert("USER".into(), name.clone());
        }
        if req.tty.is_some() {
            env.insert("TERM".into(), "xterm".into());
        }
        env.extend(req.env.clone());
        let cwd = req.cwd.clone().unwrap_or_else(|| {
            if std::path::Path::new(&identity.home).is_dir() { identity.home.clone() } else { "/".into() }
        });
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.contains_key(&id) {
            drop(sessions);
            return self.reply(id, error(ErrorCode::BadRequest, format!("request id {id} is already running")));
        }
        let prepared = process::prepare(SpawnRequest {
            argv: &req.argv,
            env: env.into_iter().collect(),
            cwd: &cwd,
            identity: &identity,
            rlimits: &req.rlimits,
            tty: req.tty,
            stdin: req.stdin,
        });
        let sp = match prepared {
            Ok(sp) => sp,
            Err(e) => {
                drop(sessions);
                return self.reply(id, error(ErrorCode::SpawnFailed, e.to_string()));
            }
        };
        // Everything that serves the process exists before it is created; its output waits
        // for `go` so that `Started` is the first thing the client hears.
        let (launched_tx, launched_rx) = mpsc::channel::<(i32, mpsc::Receiver<ExitStatus>)>();
        let mut go = Vec::new();
        let setup = (|| -> std::io::Result<Option<Sender<StdinMsg>>> {
            let stdin_tx = match sp.stdin {
                Some(fd) => {
                    let (tx, rx) = mpsc::channel::<StdinMsg>();
                    spawn_thread(move || {
                        let mut f = std::fs::File::from(fd);
                        while let Ok(StdinMsg::Data(d)) = rx.recv() {
                            if f.write_all(&d).is_err() {
                                break;
                            }
                        }
                    })?;
                    Some(tx)
                }
                None => None,
            };
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let mut pumps = 0;
            for (fd, is_err) in [(Some(sp.stdout), false), (sp.stderr, true)] {
                let Some(fd) = fd else { continue };
                pumps += 1;
                let out = self.out.clone();
                let done = done_tx.clone();
                let (go_tx, go_rx) = mpsc::channel::<()>();
                go.push(go_tx);
                spawn_thread(move || {
                    // Not launched: nothing to pump (dropping the fd closes it).
                    if go_rx.recv().is_ok() {
                        pump(fd, is_err, id, &out);
                    }
                    let _ = done.send(());
                })?;
            }
            drop(done_tx);
            let agent = self.clone();
            let timeout = req.timeout_ms.map(Duration::from_millis);
            spawn_thread(move || {
                if let Ok((pid, exit_rx)) = launched_rx.recv() {
                    agent.wait_exec(id, pid, exit_rx, done_rx, pumps, timeout);
                }
            })?;
            Ok(stdin_tx)
        })();
        let stdin_tx = match setup {
            Ok(tx) => tx,
            Err(e) => {
                // Nothing was created; the threads that did start end as their channels close.
                drop(sessions);
                return self.reply(id, out_of_threads(e));
            }
        };
        let (pid, exit_rx) = match sp.launcher.launch(&self.reaper) {
            Ok(launched) => launched,
            Err(e) => {
                drop(sessions);
                return self.reply(id, error(ErrorCode::SpawnFailed, e.to_string()));
            }
        };
        let master = sp.pty_master.map(Arc::new);
        sessions.insert(id, Session { pid, stdin: stdin_tx, pty_master: master });
        drop(sessions);
        self.out.send(id, Response::Started { pid: pid as u32 });
        for g in go {
            let _ = g.send(());
        }
        let _ = launched_tx.send((pid, exit_rx));
    }

    /// Waits for an exec to end (killing it at its timeout), lets its output drain, and reports
    /// the exit.
    fn wait_exec(&self, id: u64, pid: i32, exit_rx: mpsc::Receiver<ExitStatus>, done_rx: mpsc::Receiver<()>, pumps: usize, timeout: Option<Duration>) {
        let mut timed_out = false;
        let status = match timeout {
            Some(t) => match exit_rx.recv_timeout(t) {
                Ok(s) => Some(s),
                Err(RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    // SAFETY: killing the process group of a child we started (it called setsid).
                    unsafe {
                        libc::kill(-pid, libc::SIGKILL);
                        libc::kill(pid, libc::SIGKILL);
                    }
                    exit_rx.recv().ok()
                }
                Err(RecvTimeoutError::Disconnected) => None,
            },
            None => exit_rx.recv().ok(),
        };
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for _ in 0..pumps {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        let mut st = status.unwrap_or(ExitStatus { code: None, signal: None, timed_out: false });
        st.timed_out = timed_out;
        self.out.send(id, Response::Exited(st));
    }

    fn signal_all(&self, sig: i32) {
        if self.is_init {
            // SAFETY: as PID 1 of a PID namespace, -1 means every other process in the sandbox.
            unsafe { libc::kill(-1, sig) };
        } else {
            for pid in self.reaper.live_children() {
                // SAFETY: signalling the process groups of children we started.
                unsafe {
                    libc::kill(-pid, sig);
                    libc::kill(pid, sig);
                }
            }
        }
    }

    fn anything_running(&self) -> bool {
        if self.is_init {
            // SAFETY: signal 0 only checks whether any other process exists.
            unsafe { libc::kill(-1, 0) == 0 }
        } else {
            !self.reaper.live_children().is_empty()
        }
    }

    /// SIGTERM to everything, SIGKILL to what is left after `grace`.
    fn shutdown(&self, grace: Duration) {
        if !self.anything_running() {
            return;
        }
        self.signal_all(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.anything_running() {
            thread::sleep(Duration::from_millis(5));
        }
        self.signal_all(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.anything_running() {
            self.reaper.reap();
            thread::sleep(Duration::from_millis(2));
        }
    }
}

fn pump(fd: OwnedFd, is_err: bool, id: u64, out: &Outbox) {
    let mut f = std::fs::File::from(fd);
    // Most commands print little: start small (no fresh pages to fault in for every exec) and
    // grow to a pipe's worth once a read fills the buffer.
    let mut buf = vec![0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let data = buf[..n].to_vec();
                if n == buf.len() && buf.len() < 64 * 1024 {
                    buf = vec![0u8; 64 * 1024];
                }
                let body = if is_err { Response::Stderr { data } } else { Response::Stdout { data } };
                if !out.send(id, body) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: the PTY's last slave closed.
            Err(_) => return,
        }
    }
}
