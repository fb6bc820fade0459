//! The shim's running half: one agent stream, many client connections, the main process.
//!
//! Invariants:
//! - Client request ids are private to each connection; the shim maps each to a fresh agent id
//!   (`Shared::next_id`), so clients can never address each other's processes.
//! - A route (agent id -> client) lives until the agent sends that request's terminal response.
//! - Every exec the shim forwards carries the sandbox's env, workdir, user and rlimits as
//!   defaults, so `exec` sees what the main process sees.
//! - The shim exits only through `finalize`, which tears the sandbox down and records why.
//! - The main process is in exactly one `MainState`; only `start_main` leaves `NotStarted` or
//!   `Restarting`, so it never runs twice at once.
//!
//! Threads: the agent reader (`run`'s loop), one reader and one writer per client, the signal
//! waiter, timers (restart back-off, attach wait, the shutdown deadline), and the network
//! stack's own (see `shim::network`). Lock order: `main` may be held while taking `agent` (the
//! main process's Exec is written under it, so a restart cannot overtake an exit); every other
//! lock (`routes`, `status`, `ending`, `log`, `backend`, `network`, a client's `targets`) is
//! taken alone and released before the next.

use super::{signal_ready, write_state, Backend, ShimConfig};
use crate::paths::InstanceDir;
use guest_agent::protocol::{
    self, error, AgentRequest, ErrorCode, ExecRequest, ExitStatus, Frame, Response, Rlimits, SandboxState,
    ShimRequest, ShimStatus, TtySize, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Main-process restart back-off: doubles from the first value up to the cap, and starts over
/// once a run has lasted `BACKOFF_RESET`.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// A `run` whose client never attaches starts its command anyway after this long.
const ATTACH_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_TTY: TtySize = TtySize { rows: 24, cols: 80 };
/// main.log is rotated to main.log.1 at this size, so a chatty sandbox cannot fill the disk.
const LOG_ROTATE_BYTES: u64 = 16 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy)]
enum Target {
    Agent { id: u64, tty: bool },
    Main,
}

/// A client that falls this far behind is disconnected rather than allowed to stall the
/// agent reader (and with it every other client and the sandbox's output).
const CLIENT_BACKLOG_BYTES: usize = 16 << 20;

/// One client connection. Frames go through a queue drained by the client's own writer thread,
/// so a client that stops reading only ever blocks itself.
struct Client {
    queue: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    conn: UnixStream,
    targets: Mutex<HashMap<u64, Target>>,
}

impl Client {
    fn new(conn: &UnixStream) -> std::io::Result<Arc<Client>> {
        let mut writer = conn.try_clone()?;
        let (queue, frames) = mpsc::channel::<Vec<u8>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let drained = queued.clone();
        thread::spawn(move || {
            for buf in frames {
                drained.fetch_sub(buf.len(), Ordering::Relaxed);
                if writer.write_all(&buf).is_err() {
                    let _ = writer.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        });
        Ok(Arc::new(Client { queue, queued, conn: conn.try_clone()?, targets: Mutex::new(HashMap::new()) }))
    }

    fn send(&self, id: u64, body: Response) -> bool {
        let Ok(buf) = protocol::encode(&Frame { id, body }) else { return false };
        if self.queued.fetch_add(buf.len(), Ordering::Relaxed) + buf.len() > CLIENT_BACKLOG_BYTES {
            // The shim's stderr is its shim.log.
            eprintln!("shim: a client fell {CLIENT_BACKLOG_BYTES} bytes behind; disconnecting it");
            let _ = self.conn.shutdown(std::net::Shutdown::Both);
            return false;
        }
        self.queue.send(buf).is_ok()
    }
}

struct Route {
    client: Arc<Client>,
    client_id: u64,
}

/// Where the main process (`spec.command`) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MainState {
    /// Not started: the sandbox has no command, or a `run` client has not attached yet.
    NotStarted,
    /// Running as the agent's request `id`.
    Running { id: u64, since: Instant },
    /// Exited; the restart policy starts it again after the back-off.
    Restarting,
    /// Exited for good, or the sandbox is going down.
    Ended,
}

struct Main {
    state: MainState,
    /// Clients attached to its output (and its stdin).
    attached: Vec<(Arc<Client>, u64)>,
    /// The last restart delay, doubled on each quick failure.
    backoff: Option<Duration>,
}

impl Main {
    fn running_id(&self) -> Option<u64> {
        match self.state {
            MainState::Running { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// The main process's log file and its size (kept here, not asked of the kernel per write).
struct MainLog {
    file: File,
    written: u64,
}

impl MainLog {
    fn open(path: &std::path::Path) -> Option<MainLog> {
        let file = crate::paths::open_private_append(path).ok()?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Some(MainLog { file, written })
    }
}

struct Shared {
    cfg: ShimConfig,
    /// The sandbox's name now: `cfg.name` until a `SetIdentity` (shared with the network's
    /// event thread, which names the sandbox in every event).
    name: Arc<Mutex<String>>,
    dir: InstanceDir,
    agent: Mutex<UnixStream>,
    next_id: AtomicU64,
    routes: Mutex<HashMap<u64, Route>>,
    main: Mutex<Main>,
    status: Mutex<ShimStatus>,
    /// Set once the sandbox is going down: the state to record and why.
    ending: Mutex<Option<(SandboxState, String)>>,
    stopping: AtomicBool,
    log: Mutex<Option<MainLog>>,
    backend: Mutex<Box<dyn Backend>>,
    /// The sandbox's network stack, when it has a link (its own thread; see shim::network).
    network: Mutex<Option<super::network::Network>>,
}

pub fn run(cfg: ShimConfig, dir: InstanceDir, backend: Box<dyn Backend>, agent: UnixStream, _lock: File, published: Vec<netstack::Published>, interception: Option<Arc<super::tls::Interception>>) -> ! {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    // SAFETY: a vanished client must surface as EPIPE, not kill the shim.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    let shim_pid = std::process::id();
    let writer = agent.try_clone().unwrap_or_else(|e| super::fail_early(&format!("agent stream: {e}")));
    let log = MainLog::open(&dir.main_log());
    let shared = Arc::new(Shared {
        name: Arc::new(Mutex::new(cfg.name.clone())),
        cfg,
        dir,
        agent: Mutex::new(writer),
        next_id: AtomicU64::new(100),
        routes: Mutex::new(HashMap::new()),
        main: Mutex::new(Main { state: MainState::NotStarted, attached: Vec::new(), backoff: None }),
        status: Mutex::new(ShimStatus { state: SandboxState::Running, shim_pid, main_pid: None, restarts: 0, last_exit: None, message: None }),
        ending: Mutex::new(None),
        stopping: AtomicBool::new(false),
        log: Mutex::new(log),
        backend: Mutex::new(backend),
        network: Mutex::new(None),
    });
    let mut reader = BufReader::new(agent);
    if let Err(e) = handshake(&shared, &mut reader) {
        shared.finalize(SandboxState::Failed, format!("agent handshake: {e}"), true);
    }
    let link = lock(&shared.backend).take_link();
    if let Some((stack, fd)) = link {
        let interceptor = interception.map(|i| {
            let weak = Arc::downgrade(&shared);
            let stop: super::tls::StopSandbox = Arc::new(move |why: String| {
                if let Some(s) = weak.upgrade() {
                    tracing::warn!("{why}: stopping the sandbox");
                    // Exited: ended on purpose, so no restart policy brings it back.
                    s.begin_shutdown(SandboxState::Exited, why, Duration::from_secs(2));
                }
            });
            (i, stop)
        });
        match super::network::start(&shared.cfg, shared.name.clone(), stack, fd, published, interceptor) {
            Ok(n) => *lock(&shared.network) = Some(n),
            Err(e) => shared.finalize(SandboxState::Failed, format!("network: {e}"), true),
        }
    }
    let _ = std::fs::remove_file(shared.dir.socket());
    let listener = match UnixListener::bind(shared.dir.socket()) {
        Ok(l) => {
            use std::os::unix::fs::PermissionsExt;
            // Connecting needs write permission on the socket: the owner (root) only.
            let _ = std::fs::set_permissions(shared.dir.socket(), std::fs::Permissions::from_mode(0o600));
            l
        }
        Err(e) => shared.finalize(SandboxState::Failed, format!("binding {}: {e}", shared.dir.socket().display()), true),
    };
    if let Some(workdir) = &shared.cfg.spec.workdir {
        // Like Docker's WORKDIR: created if the image lacks it. The agent handles requests in
        // order, so it exists before the main process or any exec starts.
        let id = shared.alloc_id();
        shared.to_agent(id, AgentRequest::Mkdir { path: workdir.clone(), parents: true, mode: None });
    }
    shared.publish_status();
    if shared.cfg.spec.command.is_some() {
        if shared.cfg.wait_for_attach {
            let s = shared.clone();
            thread::spawn(move || {
                thread::sleep(ATTACH_WAIT);
                s.start_main_once();
            });
        } else {
            shared.start_main_once();
        }
    }
    signal_ready();
    {
        let s = shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                thread::spawn(move || s.serve_client(conn));
            }
        });
    }
    {
        let s = shared.clone();
        thread::spawn(move || {
            if signals.wait().is_ok() {
                s.begin_shutdown(SandboxState::Stopped, "the shim was asked to terminate".into(), Duration::from_secs(10));
            }
        });
    }
    loop {
        match protocol::read_frame::<Response>(&mut reader) {
            Ok(frame) => shared.from_agent(frame.id, frame.body),
            Err(e) if e.recoverable() => tracing::warn!("bad frame from the agent: {e}"),
            Err(_) => break,
        }
    }
    let ending = lock(&shared.ending).clone();
    let (state, message) = ending.unwrap_or_else(|| {
        let why = lock(&shared.backend).end_reason().unwrap_or_else(|| "the sandbox's init exited unexpectedly".into());
        (SandboxState::Failed, why)
    });
    shared.finalize(state, message, false)
}

/// How long the agent has to answer Hello: it is up (it answered Init), so only a broken
/// channel is this slow; without a bound the launcher would wait for READY forever.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn handshake(shared: &Shared, reader: &mut BufReader<UnixStream>) -> Result<(), String> {
    shared.to_agent(1, AgentRequest::Hello { version: PROTOCOL_VERSION, client: "shim".into() });
    let _ = reader.get_ref().set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let answer = protocol::read_frame::<Response>(reader);
    let _ = reader.get_ref().set_read_timeout(None);
    match answer {
        Ok(Frame { body: Response::Hello { .. }, .. }) => Ok(()),
        Ok(Frame { body: Response::Error { message, .. }, .. }) => Err(message),
        Ok(f) => Err(format!("unexpected {:?}", f.body)),
        Err(e) => Err(e.to_string()),
    }
}

fn is_terminal(r: &Response) -> bool {
    match r {
        Response::Data { eof, .. } => *eof,
        Response::Started { .. } | Response::Stdout { .. } | Response::Stderr { .. } | Response::Entries(_) => false,
        _ => true,
    }
}

impl Shared {
    fn alloc_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn to_agent(&self, id: u64, body: AgentRequest) -> bool {
        let Ok(buf) = protocol::encode(&Frame { id, body }) else { return false };
        lock(&self.agent).write_all(&buf).is_ok()
    }

    fn publish_status(&self) {
        write_state(&self.dir, &lock(&self.status));
    }

    fn base_env(&self) -> std::collections::BTreeMap<String, String> {
        let mut env = std::collections::BTreeMap::new();
        env.insert("HOSTNAME".to_string(), lock(&self.name).clone());
        if self.cfg.trust_anchor.is_some() {
            // What runtimes read instead of (or beside) the distribution's store; the files
            // are the agent's (`guest_agent::trust`). The spec's env can still override them.
            use guest_agent::trust::{OWN_BUNDLE, OWN_CA};
            for (k, v) in [("SSL_CERT_FILE", OWN_BUNDLE), ("REQUESTS_CA_BUNDLE", OWN_BUNDLE), ("CURL_CA_BUNDLE", OWN_BUNDLE), ("NODE_EXTRA_CA_CERTS", OWN_CA)] {
                env.insert(k.to_string(), v.to_string());
            }
        }
        env.extend(self.cfg.spec.env.clone());
        env
    }

    fn rlimits(&self, given: Rlimits) -> Rlimits {
        let l = &self.cfg.spec.limits;
        Rlimits {
            nofile: given.nofile.or(l.nofile),
            nproc: given.nproc,
            fsize: given.fsize.or(l.fsize),
            cpu_secs: given.cpu_secs.or(l.cpu_time_secs),
        }
    }

    /// Sandbox defaults under the client's explicit choices.
    fn augment(&self, mut req: ExecRequest) -> ExecRequest {
        let mut env = self.base_env();
        env.extend(std::mem::take(&mut req.env));
        req.env = env;
        req.cwd = req.cwd.or_else(|| self.cfg.spec.workdir.clone());
        req.user = req.user.or_else(|| self.cfg.spec.user.clone());
        req.rlimits = self.rlimits(req.rlimits);
        req
    }

    fn start_main_once(&self) {
        let mut main = lock(&self.main);
        if main.state == MainState::NotStarted {
            self.start_main(&mut main);
        }
    }

    /// Starts the main process from `NotStarted` or `Restarting`; in any other state it does
    /// nothing.
    fn start_main(&self, main: &mut Main) {
        if !matches!(main.state, MainState::NotStarted | MainState::Restarting) {
            return;
        }
        let Some(argv) = self.cfg.spec.command.clone() else { return };
        if self.stopping.load(Ordering::SeqCst) {
            main.state = MainState::Ended;
            return;
        }
        let id = self.alloc_id();
        main.state = MainState::Running { id, since: Instant::now() };
        let tty = self.cfg.spec.tty;
        let req = self.augment(ExecRequest {
            argv,
            tty: tty.then_some(DEFAULT_TTY),
            stdin: tty || self.cfg.main_stdin,
            ..Default::default()
        });
        self.to_agent(id, AgentRequest::Exec(Box::new(req)));
    }

    fn log_main(&self, data: &[u8]) {
        let mut log = lock(&self.log);
        if log.as_ref().is_some_and(|l| l.written >= LOG_ROTATE_BYTES) {
            let path = self.dir.main_log();
            let _ = std::fs::rename(&path, path.with_extension("log.1"));
            *log = MainLog::open(&path);
        }
        if let Some(l) = log.as_mut() {
            if l.file.write_all(data).is_ok() {
                l.written += data.len() as u64;
            }
        }
    }

    fn from_agent(self: &Arc<Self>, id: u64, body: Response) {
        let is_main = lock(&self.main).running_id() == Some(id);
        if is_main {
            return self.from_main(body);
        }
        let terminal = is_terminal(&body);
        let route = {
            let mut routes = lock(&self.routes);
            if terminal { routes.remove(&id) } else { routes.get(&id).map(|r| Route { client: r.client.clone(), client_id: r.client_id }) }
        };
        if let Some(r) = route {
            if terminal {
                lock(&r.client.targets).remove(&r.client_id);
            }
            r.client.send(r.client_id, body);
        }
    }

    fn from_main(self: &Arc<Self>, body: Response) {
        match &body {
            Response::Started { pid } => {
                let mut st = lock(&self.status);
                st.main_pid = Some(*pid);
                st.state = SandboxState::Running;
                write_state(&self.dir, &st);
            }
            Response::Stdout { data } | Response::Stderr { data } => self.log_main(data),
            Response::Error { message, .. } => self.log_main(format!("orchestrator: main process: {message}\n").as_bytes()),
            _ => {}
        }
        let attached: Vec<(Arc<Client>, u64)> = lock(&self.main).attached.clone();
        for (client, cid) in &attached {
            client.send(*cid, body.clone());
        }
        let exit = match body {
            Response::Exited(st) => st,
            Response::Error { .. } => ExitStatus { code: Some(127), signal: None, timed_out: false },
            _ => return,
        };
        let failed = exit.code != Some(0);
        let restart = self.cfg.spec.restart_policy.restarts(failed) && !self.stopping.load(Ordering::SeqCst);
        {
            let mut st = lock(&self.status);
            st.main_pid = None;
            st.last_exit = Some(exit);
            if restart {
                st.restarts += 1;
            }
            write_state(&self.dir, &st);
        }
        let mut main = lock(&self.main);
        let ran = match main.state {
            MainState::Running { since, .. } => since.elapsed(),
            _ => Duration::ZERO,
        };
        main.attached.clear();
        if !restart {
            main.state = MainState::Ended;
            drop(main);
            let why = match (exit.code, exit.signal) {
                (Some(c), _) => format!("main process exited with code {c}"),
                (None, Some(s)) => format!("main process killed by signal {s}"),
                _ => "main process ended".to_string(),
            };
            return self.begin_shutdown(SandboxState::Exited, why, Duration::from_secs(2));
        }
        main.state = MainState::Restarting;
        let delay = match main.backoff {
            Some(d) if ran < BACKOFF_RESET => (d * 2).min(BACKOFF_CAP),
            _ => BACKOFF_FIRST,
        };
        main.backoff = Some(delay);
        drop(main);
        let s = self.clone();
        thread::spawn(move || {
            thread::sleep(delay);
            s.start_main(&mut lock(&s.main));
        });
    }

    /// Asks the agent to end every process; the agent's exit ends the read loop in `run`.
    fn begin_shutdown(self: &Arc<Self>, state: SandboxState, message: String, grace: Duration) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        *lock(&self.ending) = Some((state, message));
        let id = self.alloc_id();
        self.to_agent(id, AgentRequest::Shutdown { grace_ms: grace.as_millis() as u64 });
        let s = self.clone();
        thread::spawn(move || {
            thread::sleep(grace + Duration::from_secs(5));
            lock(&s.backend).kill();
        });
    }

    fn finalize(&self, state: SandboxState, message: String, early: bool) -> ! {
        lock(&self.backend).teardown();
        let _ = std::fs::remove_file(self.dir.socket());
        {
            let mut st = lock(&self.status);
            st.state = state;
            st.main_pid = None;
            st.message = Some(message.clone());
            write_state(&self.dir, &st);
        }
        if early {
            super::fail_early(&message);
        }
        std::process::exit(0)
    }

    fn serve_client(self: &Arc<Self>, conn: UnixStream) {
        let Ok(client) = Client::new(&conn) else { return };
        let mut reader = BufReader::new(conn);
        loop {
            let payload = match protocol::read_payload(&mut reader) {
                Ok(p) => p,
                Err(e) if e.recoverable() => {
                    client.send(0, error(ErrorCode::TooLarge, e.to_string()));
                    continue;
                }
                Err(_) => break,
            };
            match protocol::decode::<ShimRequest>(&payload) {
                Ok(f) => self.from_client(&client, f.id, f.body),
                Err(e) => {
                    client.send(protocol::peek_id(&payload), error(ErrorCode::BadRequest, e.to_string()));
                }
            }
        }
        self.client_gone(&client);
    }

    /// A client that goes away hangs up its processes' stdin (and terminal), like a closed shell.
    fn client_gone(&self, client: &Arc<Client>) {
        let targets: Vec<Target> = lock(&client.targets).drain().map(|(_, t)| t).collect();
        for t in targets {
            if let Target::Agent { id, tty } = t {
                lock(&self.routes).remove(&id);
                self.to_agent(id, AgentRequest::CloseStdin);
                if tty {
                    self.to_agent(id, AgentRequest::Signal { signal: libc::SIGHUP });
                }
            }
        }
        lock(&self.main).attached.retain(|(c, _)| !Arc::ptr_eq(c, client));
    }

    fn forward(&self, client: &Arc<Client>, client_id: u64, body: AgentRequest, tty: bool) {
        let id = self.alloc_id();
        lock(&client.targets).insert(client_id, Target::Agent { id, tty });
        lock(&self.routes).insert(id, Route { client: client.clone(), client_id });
        if !self.to_agent(id, body) {
            lock(&self.routes).remove(&id);
            client.send(client_id, error(ErrorCode::Io, "the sandbox is not reachable (agent gone)"));
        }
    }

    fn from_client(self: &Arc<Self>, client: &Arc<Client>, cid: u64, body: ShimRequest) {
        match body {
            ShimRequest::Hello { version, .. } => {
                let reply = if version == PROTOCOL_VERSION {
                    Response::Hello { version, agent: format!("shim {}", env!("CARGO_PKG_VERSION")) }
                } else {
                    error(ErrorCode::VersionMismatch, format!("shim speaks protocol {PROTOCOL_VERSION}, client speaks {version}"))
                };
                client.send(cid, reply);
            }
            ShimRequest::Status => {
                let st = lock(&self.status).clone();
                client.send(cid, Response::Status(st));
            }
            ShimRequest::Sample => {
                let cg = crate::cgroup::Cgroup::of(&self.cfg.instance);
                let disk = lock(&self.backend).disk_io(&cg);
                let sample = guest_agent::protocol::ResourceSample {
                    cpu_usage_us: cg.cpu_usage_us().unwrap_or(0),
                    memory_bytes: cg.memory_usage().unwrap_or(0),
                    memory_peak_bytes: cg.memory_peak(),
                    pids: cg.pids_current().unwrap_or(0),
                    disk,
                };
                client.send(cid, Response::Sample(sample));
            }
            ShimRequest::InitPid => {
                let reply = if !matches!(self.cfg.backend, super::BackendConfig::Namespace { .. }) {
                    error(ErrorCode::Unsupported, "a microVM's root is inside its guest")
                } else {
                    // Under the backend's lock, which reaping takes too: a pid answered here is
                    // the sandbox's init, not yet reaped, so no other process can have it.
                    let mut backend = lock(&self.backend);
                    match backend.init_pid() {
                        Some(pid) if !backend.wait(Duration::ZERO) => Response::InitPid { pid: pid as u32 },
                        _ => error(ErrorCode::NotFound, "the sandbox's init has ended"),
                    }
                };
                client.send(cid, reply);
            }
            ShimRequest::Stop { grace_ms } => {
                self.begin_shutdown(SandboxState::Stopped, "stopped on request".into(), Duration::from_millis(grace_ms));
                client.send(cid, Response::Done);
            }
            ShimRequest::Attach => self.attach(client, cid),
            ShimRequest::UpdateSecrets { values } => {
                let reply = match serde_json::from_str::<Vec<crate::plugin::secrets::SecretValue>>(&values) {
                    Err(e) => error(ErrorCode::BadRequest, format!("secret values: {e}")),
                    Ok(given) => {
                        let secrets = super::secrets();
                        match given.iter().find(|g| !secrets.iter().any(|s| s.env == g.env)) {
                            Some(g) => error(ErrorCode::BadRequest, format!("this sandbox has no secret {}", g.env)),
                            None => {
                                for g in &given {
                                    if let Some(s) = secrets.iter().find(|s| s.env == g.env) {
                                        if s.set_value(g.value.clone()) {
                                            tracing::info!("secret {}: a new value (rotated by its provider)", s.env);
                                        }
                                    }
                                }
                                Response::Done
                            }
                        }
                    }
                };
                let mut values = values;
                crate::plugin::secrets::wipe(&mut values);
                client.send(cid, reply);
            }
            ShimRequest::UpdateNetwork { config } => {
                let reply = match serde_json::from_str::<super::network::NetworkUpdate>(&config) {
                    Err(e) => error(ErrorCode::BadRequest, format!("network update: {e}")),
                    Ok(update) => match lock(&self.network).as_ref() {
                        None => error(ErrorCode::Unsupported, "this sandbox has no network link"),
                        Some(net) => match net.update(&self.cfg, update) {
                            Ok(()) => Response::Done,
                            Err(e) => error(ErrorCode::BadRequest, e),
                        },
                    },
                };
                client.send(cid, reply);
            }
            ShimRequest::SetIdentity { name } => {
                let reply = match self.set_identity(&name) {
                    Ok(()) => Response::Done,
                    Err(e) => error(ErrorCode::Unsupported, e),
                };
                client.send(cid, reply);
            }
            ShimRequest::Agent(request) => self.for_agent(client, cid, request),
        }
    }

    /// Renames the running sandbox (see `ShimRequest::SetIdentity`). Only where nothing has
    /// seen the old identity but the store: no network-policy plugins or metrics sinks (they
    /// were told the name at start), and a namespace sandbox (the shim sets the hostname from
    /// the host side; a microVM's agent can no longer).
    fn set_identity(&self, name: &str) -> Result<(), String> {
        if !crate::spec::is_valid_name(name) {
            return Err(format!("{name:?} is not a sandbox name"));
        }
        if !self.cfg.network_plugins.is_empty() || !self.cfg.spec.hooks.metrics_sinks.is_empty() {
            return Err("plugins know this sandbox by its name: it cannot take another".into());
        }
        if !matches!(self.cfg.backend, super::BackendConfig::Namespace { .. }) {
            return Err("only a namespace sandbox can take another name while it runs".into());
        }
        let pid = lock(&self.backend).init_pid().ok_or("the sandbox has no init process")?;
        super::namespace::set_hostname(pid, name)?;
        *lock(&self.name) = name.to_string();
        Ok(())
    }

    /// A client's request for the agent: exec, its process's stdin, resize and signals, and the
    /// file API. `Hello`, `Init` and `Shutdown` are the shim's own to send.
    fn for_agent(self: &Arc<Self>, client: &Arc<Client>, cid: u64, body: AgentRequest) {
        match body {
            AgentRequest::Exec(req) => {
                let tty = req.tty.is_some();
                if self.stopping.load(Ordering::SeqCst) {
                    client.send(cid, error(ErrorCode::Unsupported, "the sandbox is shutting down"));
                    return;
                }
                self.forward(client, cid, AgentRequest::Exec(Box::new(self.augment(*req))), tty);
            }
            AgentRequest::Stdin { .. } | AgentRequest::CloseStdin | AgentRequest::Resize { .. } | AgentRequest::Signal { .. } => {
                let target = lock(&client.targets).get(&cid).copied();
                match target {
                    Some(Target::Agent { id, .. }) => {
                        self.to_agent(id, body);
                    }
                    Some(Target::Main) => {
                        let running = lock(&self.main).running_id();
                        if let Some(id) = running {
                            self.to_agent(id, body);
                        }
                    }
                    None => {
                        client.send(cid, error(ErrorCode::NotFound, format!("no running process for request {cid}")));
                    }
                }
            }
            AgentRequest::Hello { .. } | AgentRequest::Init(_) | AgentRequest::Shutdown { .. } => {
                client.send(cid, error(ErrorCode::BadRequest, "not allowed from a client (use Hello with the shim, and Stop)"));
            }
            AgentRequest::KillOthers if self.cfg.spec.command.is_some() => {
                client.send(cid, error(ErrorCode::Unsupported, "this sandbox has a main process: stop the sandbox instead"));
            }
            fs_request => self.forward(client, cid, fs_request, false),
        }
    }

    fn attach(self: &Arc<Self>, client: &Arc<Client>, cid: u64) {
        if self.cfg.spec.command.is_none() {
            client.send(cid, error(ErrorCode::Unsupported, "this sandbox has no main process to attach to"));
            return;
        }
        let state = {
            let mut main = lock(&self.main);
            main.attached.push((client.clone(), cid));
            main.state
        };
        lock(&client.targets).insert(cid, Target::Main);
        client.send(cid, Response::Ready);
        match state {
            MainState::Running { .. } | MainState::NotStarted => {}
            MainState::Restarting => {
                client.send(cid, error(ErrorCode::NotFound, "the main process is not running (restarting)"));
            }
            MainState::Ended => {
                client.send(cid, error(ErrorCode::NotFound, "the main process has ended"));
            }
        }
        if self.cfg.wait_for_attach {
            self.start_main_once();
        }
    }
}
