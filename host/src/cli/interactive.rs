//! Commands that stream a process: `exec`, `run` and `attach`. They forward stdin (raw mode
//! for terminals, resizes included), print output as it arrives and exit with the process's
//! code (128+N for signal N).

use crate::client::{Output, Sender, ShimClient};
use crate::reconcile::Orchestrator;
use crate::spec::{Kind, SandboxSpec};
use anyhow::{anyhow, bail, Context, Result};
use guest_agent::protocol::{AgentRequest, ErrorCode, ExecRequest, Response, TtySize};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

pub struct ExecOptions {
    pub interactive: bool,
    pub tty: bool,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub timeout: Option<u64>,
}

/// Puts the local terminal in raw mode for as long as it lives.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable(wanted: bool) -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !wanted || !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(saved) = tcgetattr(stdin.as_fd()) else { return RawMode(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

fn terminal_size() -> TtySize {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 {
        TtySize { rows: ws.ws_row, cols: ws.ws_col }
    } else {
        TtySize { rows: 24, cols: 80 }
    }
}

/// Forwards local stdin (and terminal resizes) to a remote process. With `detach_keys`,
/// Ctrl-P Ctrl-Q ends the CLI without touching the process.
fn forward_stdin(sender: Sender, tty: bool, detach_keys: bool) {
    if tty {
        let resize = sender.clone();
        std::thread::spawn(move || {
            let mut last = terminal_size();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let now = terminal_size();
                if now != last {
                    last = now;
                    if !resize.send(AgentRequest::Resize { rows: now.rows, cols: now.cols }) {
                        return;
                    }
                }
            }
        });
    }
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        let mut prev_ctrl_p = false;
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    sender.send(AgentRequest::CloseStdin);
                    return;
                }
                Ok(n) => {
                    if detach_keys {
                        for b in &buf[..n] {
                            if prev_ctrl_p && *b == 0x11 {
                                drop(RawMode(None));
                                eprintln!("\r\ndetached");
                                std::process::exit(0);
                            }
                            prev_ctrl_p = *b == 0x10;
                        }
                    }
                    if !sender.send(AgentRequest::Stdin { data: buf[..n].to_vec() }) {
                        return;
                    }
                }
            }
        }
    });
}

fn write_output(o: Output<'_>) {
    match o {
        Output::Stdout(d) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(d);
            let _ = out.flush();
        }
        Output::Stderr(d) => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(d);
            let _ = err.flush();
        }
    }
}

pub(super) fn connect(orch: &Orchestrator, name: &str) -> Result<ShimClient> {
    let row = orch.store.sandbox(name)?.ok_or_else(|| anyhow!("no sandbox named {name:?} (see `orchestrator get`)"))?;
    let dir = orch.instance_dir(&row);
    if !crate::paths::shim_alive(&dir) {
        let status = orch.observe(&row).status;
        bail!("sandbox {name:?} is not running ({}); start it with `orchestrator start {name}`", status.as_str());
    }
    ShimClient::connect(&dir.socket()).with_context(|| format!("sandbox {name:?}"))
}

/// Exit code for a command that could not be started: 127 not found, 126 otherwise.
fn spawn_failure(e: &crate::client::ClientError) -> Option<i32> {
    match e {
        crate::client::ClientError::Remote { code: ErrorCode::SpawnFailed, message } => {
            eprintln!("orchestrator: {message}");
            Some(if message.contains("not found") { 127 } else { 126 })
        }
        _ => None,
    }
}

/// The running sandbox `name` through its socket link, without the state database (None when
/// the link is missing or its shim gone: the caller asks the store, which also says why).
pub(super) fn connect_by_link(data_root: &std::path::Path, name: &str) -> Option<ShimClient> {
    if !crate::spec::is_valid_name(name) {
        return None;
    }
    ShimClient::connect_pipelined(&crate::paths::socket_link(data_root, name)).ok()
}

pub fn exec(orch: &Orchestrator, name: &str, argv: Vec<String>, o: ExecOptions) -> Result<i32> {
    exec_on(connect(orch, name)?, argv, o)
}

/// `exec` on a connected shim.
pub fn exec_on(mut client: ShimClient, argv: Vec<String>, o: ExecOptions) -> Result<i32> {
    let tty = o.tty && std::io::stdin().is_terminal();
    if o.tty && !tty {
        eprintln!("orchestrator: -t ignored: stdin is not a terminal");
    }
    let req = ExecRequest {
        argv,
        env: o.env,
        cwd: o.workdir,
        user: o.user,
        tty: tty.then(terminal_size),
        stdin: o.interactive,
        rlimits: Default::default(),
        timeout_ms: o.timeout.map(|s| s * 1000),
    };
    let raw = RawMode::enable(tty && o.interactive);
    let interactive = o.interactive;
    let result = client.exec_streaming(
        req,
        |sender, _pid| {
            if interactive {
                forward_stdin(sender, tty, false);
            }
        },
        write_output,
    );
    drop(raw);
    match result {
        Ok(st) => {
            if st.timed_out {
                eprintln!("orchestrator: command timed out and was killed");
            }
            Ok(st.shell_code())
        }
        Err(e) => match spawn_failure(&e) {
            Some(code) => Ok(code),
            None => Err(e.into()),
        },
    }
}

/// Streams the main process of an attached sandbox until it exits; returns its shell code.
fn stream_main(client: &mut ShimClient, id: u64) -> Result<i32> {
    loop {
        let f = client.recv()?;
        if f.id != id {
            continue;
        }
        match f.body {
            Response::Started { .. } | Response::Ready => {}
            Response::Stdout { data } => write_output(Output::Stdout(&data)),
            Response::Stderr { data } => write_output(Output::Stderr(&data)),
            Response::Exited(st) => return Ok(st.shell_code()),
            Response::Error { code: ErrorCode::SpawnFailed, message } => {
                eprintln!("orchestrator: {message}");
                return Ok(if message.contains("not found") { 127 } else { 126 });
            }
            Response::Error { message, .. } => bail!("{message}"),
            other => bail!("unexpected response {other:?}"),
        }
    }
}

pub fn attach(orch: &Orchestrator, name: &str) -> Result<i32> {
    let mut client = connect(orch, name)?;
    let tty = orch
        .store
        .resource(Kind::Sandbox, name)?
        .map(|r| matches!(&r.resource.spec, crate::spec::ResourceSpec::Sandbox(s) if s.tty))
        .unwrap_or(false);
    let id = client.attach()?;
    let raw = RawMode::enable(tty);
    if tty {
        let size = terminal_size();
        client.sender(id).send(AgentRequest::Resize { rows: size.rows, cols: size.cols });
    }
    forward_stdin(client.sender(id), tty, true);
    let code = stream_main(&mut client, id);
    drop(raw);
    code
}

/// `run`: makes a sandbox from the command line; attached (its output here, its exit code
/// returned) unless `detach`, which prints its name and leaves it running.
pub fn run(orch: &mut Orchestrator, name: Option<String>, mut spec: SandboxSpec, interactive: bool, rm: bool, detach: bool) -> Result<i32> {
    if spec.command.is_none() && spec.image.starts_with("dir:") {
        bail!("a root filesystem directory has no default command: give one after `--`");
    }
    let name = name.unwrap_or_else(|| {
        format!("run-{}", crate::ids::random_hex(3))
    });
    if !crate::spec::is_valid_name(&name) {
        bail!("--name {name:?}: use 1-63 lowercase letters, digits and '-'");
    }
    let tty = spec.tty && std::io::stdin().is_terminal();
    spec.tty = tty;
    let manifest = super::cli_resource(&name, spec);
    {
        let _object = orch.lock_object(&name)?;
        {
            // Claiming a name is a change of desired state.
            let _desired = orch.lock()?;
            if orch.store.resource(Kind::Sandbox, &name)?.is_some() {
                bail!("a sandbox named {name:?} already exists; pick another --name or delete it");
            }
            let tx = orch.store.transaction()?;
            crate::store::Store::upsert_resource(&tx, &manifest.resource, "cli", "orchestrator run")?;
            tx.commit()?;
        }
        if let Err(e) = orch.create_instance(&manifest.resource, !detach, interactive) {
            if rm {
                let _ = orch.delete(&name);
            }
            return Err(e.into());
        }
    }
    if detach {
        println!("{name}");
        return Ok(0);
    }
    let outcome = (|| -> Result<i32> {
        let mut client = connect(orch, &name)?;
        let id = client.attach()?;
        let raw = RawMode::enable(tty);
        if interactive {
            forward_stdin(client.sender(id), tty, false);
        }
        let code = stream_main(&mut client, id);
        drop(raw);
        code
    })();
    if rm {
        let object = orch.lock_object(&name)?;
        orch.delete(&name)?;
        // The name is nothing's now: its lock file goes too (`paths::remove_lock`).
        if let Ok(path) = orch.data.object_lock(&name) {
            let _ = crate::paths::remove_lock(&path, object);
        }
    } else if let Some(row) = orch.store.sandbox(&name)? {
        if let Some(_object) = orch.try_lock_object(&name) {
            // Wait briefly for the shim to record the exit, so `get` right after shows it.
            let dir = orch.instance_dir(&row);
            for _ in 0..500 {
                if !crate::paths::shim_alive(&dir) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            orch.refresh(&row)?;
        }
    }
    outcome
}
