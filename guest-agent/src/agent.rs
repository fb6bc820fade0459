//! The agent's request loop: reads frames, runs exec sessions and file operations, forwards
//! signals and reaps every process in the sandbox. One connection (to the shim) per agent; if it
//! closes, the agent ends every process and exits, so a sandbox never outlives its owner.

use crate::files;
use crate::process::{self, ExitSlot, Reaper, SpawnRequest};
use crate::session;
use crate::protocol::{
    self, error, AgentRequest, ErrorCode, ExecRequest, Frame, FrameError, Response, TtySize,
    CHUNK_LEN, PROTOCOL_VERSION,
};
use crate::users;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Starts a thread without panicking when the sandbox's pids limit refuses one.
fn spawn_thread(f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    thread::Builder::new().spawn(f).map(|_| ())
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that served an exec session and wait a little for the next one. Creating a thread
/// costs a short command's exec a tenth of its round trip here (its stack's page faults), and
/// scripts and agents run commands one after another.
///
/// Invariants: at most [`Workers::MAX_IDLE`] threads wait, each at most [`Workers::IDLE`],
/// so an idle sandbox gives its pids budget back; a job handed to a worker that has just
/// timed out comes back and goes to another (or a new thread), never lost.
#[derive(Default)]
struct Workers {
    idle: Mutex<Vec<Sender<Job>>>,
}

impl Workers {
    const MAX_IDLE: usize = 2;
    const IDLE: Duration = Duration::from_secs(10);

    /// Runs `job` on an idle worker, or on a new thread when none waits.
    fn run(self: &Arc<Self>, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut job: Job = Box::new(job);
        loop {
            let Some(worker) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() else { break };
            match worker.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        let workers = self.clone();
        spawn_thread(move || {
            job();
            loop {
                let (tx, rx) = mpsc::channel::<Job>();
                {
                    let mut idle = workers.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() >= Self::MAX_IDLE {
                        return;
                    }
                    idle.push(tx);
                }
                match rx.recv_timeout(Self::IDLE) {
                    Ok(next) => next(),
                    Err(_) => return,
                }
            }
        })
    }
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
    workers: Arc<Workers>,
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
        workers: Arc::default(),
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
                if let Err(e) = self.workers.run(move || files::read_file(&path, offset, len, &mut |r| out.send(id, r))) {
                    self.reply(id, out_of_threads(e));
                }
            }
            AgentRequest::WriteFile { path, offset, data, truncate, mode } => {
                self.out.send(id, files::write_file(&path, offset, &data, truncate, mode));
            }
            AgentRequest::ListDir { path } => {
                let out = self.out.clone();
                if let Err(e) = self.workers.run(move || files::list_dir(&path, &mut |r| out.send(id, r))) {
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
            AgentRequest::KillOthers => {
                // As PID 1 of its namespace (or the guest), kill(-1) reaches every other process
                // in it and never the agent; the reaper collects them as usual.
                // SAFETY: kill with a constant signal; no memory is involved.
                let killed = unsafe { libc::kill(-1, libc::SIGKILL) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
                self.reply(id, if killed { Response::Done } else { error(ErrorCode::Internal, format!("kill(-1): {}", std::io::Error::last_os_error())) });
            }
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
        // Everything that serves the process exists before it is created; the session waits
        // for the launch, so that `Started` is the first thing the client hears.
        let (launched_tx, launched_rx) = mpsc::channel::<i32>();
        let setup = (|| -> std::io::Result<(Option<Sender<StdinMsg>>, Arc<ExitSlot>)> {
            let exit = ExitSlot::new()?;
            let stdin_tx = match sp.stdin {
                Some(fd) => {
                    let (tx, rx) = mpsc::channel::<StdinMsg>();
                    self.workers.run(move || {
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
            let session = session::Session { id, stdout: sp.stdout, stderr: sp.stderr, exit: exit.clone(), timeout: req.timeout_ms.map(Duration::from_millis) };
            let agent = self.clone();
            self.workers.run(move || {
                // Not launched: nothing to serve (dropping the fds closes them).
                if let Ok(pid) = launched_rx.recv() {
                    let status = session::serve(session, pid, &agent.out);
                    agent.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    agent.out.send(id, Response::Exited(status));
                }
            })?;
            Ok((stdin_tx, exit))
        })();
        let (stdin_tx, exit) = match setup {
            Ok(served) => served,
            Err(e) => {
                // Nothing was created; the threads that did start end as their channels close.
                drop(sessions);
                return self.reply(id, out_of_threads(e));
            }
        };
        let pid = match sp.launcher.launch(&self.reaper, &exit) {
            Ok(pid) => pid,
            Err(e) => {
                drop(sessions);
                return self.reply(id, error(ErrorCode::SpawnFailed, e.to_string()));
            }
        };
        let master = sp.pty_master.map(Arc::new);
        sessions.insert(id, Session { pid, stdin: stdin_tx, pty_master: master });
        drop(sessions);
        self.out.send(id, Response::Started { pid: pid as u32 });
        let _ = launched_tx.send(pid);
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
