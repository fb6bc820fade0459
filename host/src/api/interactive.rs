//! Interactive commands over a WebSocket: `GET /v1/sandboxes/{name}/exec/ws`. What a
//! terminal in a browser (xterm.js) or an agent's shell tool needs: stdin as it is typed, the
//! output as it comes, a terminal that can be resized, signals, and the exit.
//!
//! The conversation:
//! 1. The client's first message, text within [`START_WAIT`]: the command as JSON
//!    ([`StartMessage`]: `command`, `env`, `cwd`, `user`, `timeoutMs`, `tty`, `rows`, `cols`).
//! 2. The server answers `{"type":"started","pid":N}` (or `{"type":"error",...problem}` and
//!    closes with 1008 when the command cannot start).
//! 3. Output: binary messages whose first byte is the stream (1 stdout, 2 stderr) and the rest
//!    its bytes. Input: binary messages are stdin as they are; text messages are JSON
//!    controls: `{"type":"stdin","data":"text"}`, `{"type":"eof"}`, `{"type":"resize","rows":R,
//!    "cols":C}`, `{"type":"signal","signal":15}` (or `"TERM"`, `"SIGINT"`, ...).
//! 4. `{"type":"exited","exitCode":..,"signal":..,"timedOut":..}`, then a normal close (1000).
//!
//! Invariants:
//! - The sandbox's exec slot is taken before the upgrade (429 otherwise) and held until the
//!   socket ends; the command's run time is bounded like every API command's.
//! - A client that goes away (close, reset) kills its command: nothing runs unattended.
//! - Output is never read faster than the client takes it, and stdin is never taken faster
//!   than the command reads it; while stdin waits, output still flows (no deadlock on a
//!   command that writes before it reads).
//! - A malformed control message is answered with an `error` message and the session goes on;
//!   messages are bounded ([`MAX_MESSAGE`]).

use super::exec;
use super::problem::{ApiResult, Problem};
use super::ApiState;
use crate::sandbox::{ExecControl, ExecEvent, ExecOptions, Sandbox};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use utoipa_axum::{router::OpenApiRouter, routes};

/// How long the server waits for the start message.
pub const START_WAIT: Duration = Duration::from_secs(10);
/// The largest message either side may send.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Stdin chunks in flight between the socket and the command.
const STDIN_QUEUE: usize = 16;

/// The stream byte of an output message.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

/// The first message: the command.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartMessage {
    /// The program and its arguments (no shell: `["sh", "-c", "..."]` for one).
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
    timeout_ms: Option<u64>,
    /// A terminal (then stderr is the terminal too).
    #[serde(default)]
    tty: bool,
    /// The terminal's size (default 24 x 80).
    rows: Option<u16>,
    cols: Option<u16>,
}

/// A control message after the start.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Control {
    Stdin { data: String },
    Eof,
    Resize { rows: u16, cols: u16 },
    Signal { signal: SignalName },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SignalName {
    Number(i32),
    Name(String),
}

impl SignalName {
    fn number(&self) -> Option<i32> {
        match self {
            SignalName::Number(n) if (1..=64).contains(n) => Some(*n),
            SignalName::Number(_) => None,
            SignalName::Name(name) => {
                let bare = name.trim().to_ascii_uppercase();
                let bare = bare.strip_prefix("SIG").unwrap_or(&bare);
                Some(match bare {
                    "HUP" => libc::SIGHUP,
                    "INT" => libc::SIGINT,
                    "QUIT" => libc::SIGQUIT,
                    "KILL" => libc::SIGKILL,
                    "USR1" => libc::SIGUSR1,
                    "USR2" => libc::SIGUSR2,
                    "TERM" => libc::SIGTERM,
                    "CONT" => libc::SIGCONT,
                    "STOP" => libc::SIGSTOP,
                    "TSTP" => libc::SIGTSTP,
                    "WINCH" => libc::SIGWINCH,
                    _ => return None,
                })
            }
        }
    }
}

/// Runs a command interactively over a WebSocket (see the module's conversation).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{name}/exec/ws",
    tag = "exec",
    params(("name" = String, Path, description = "The sandbox")),
    responses(
        (status = 101, description = "Switching to the WebSocket: first message the command (StartMessage as JSON); then binary stdin and JSON controls in, `started`, binary output (first byte 1 stdout, 2 stderr) and `exited` out"),
        (status = 400, description = "Not a WebSocket request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The sandbox runs as many API commands as it may", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn upgrade(State(state): State<Arc<ApiState>>, Path(name): Path<String>, ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> ApiResult<Response> {
    let ws = ws.map_err(|e| Problem::bad_request(format!("this route is a WebSocket (GET with Upgrade: websocket): {}", e.body_text())))?;
    let sandbox = state.handles.get(&state.config, &name).await.map_err(Problem::from)?;
    let slot = state.exec_slot(&name)?;
    Ok(ws.max_message_size(MAX_MESSAGE).max_frame_size(MAX_MESSAGE).on_upgrade(move |socket| session(state, sandbox, slot, socket)))
}

fn text(value: serde_json::Value) -> Message {
    Message::Text(value.to_string().into())
}

fn problem_message(p: &Problem) -> Message {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["type"] = json!("error");
    text(v)
}

async fn close(socket: &mut (impl SinkExt<Message> + Unpin), code: u16, reason: &str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.chars().take(100).collect::<String>().into() }))).await;
}

/// The start message, or the problem with it.
async fn read_start(rx: &mut (impl StreamExt<Item = Result<Message, axum::Error>> + Unpin)) -> ApiResult<StartMessage> {
    loop {
        let msg = tokio::time::timeout(START_WAIT, rx.next())
            .await
            .map_err(|_| Problem::bad_request(format!("no command within {}s: send it first, as JSON text", START_WAIT.as_secs())))?;
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).map_err(|e| Problem::bad_request(format!("the first message is not the command this route takes: {e}"))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => return Err(Problem::bad_request("the first message must be the command, as JSON text")),
            Some(Err(e)) => return Err(Problem::bad_request(format!("reading the first message: {e}"))),
            None => return Err(Problem::bad_request("the client left before sending a command")),
        }
    }
}

fn options(state: &ApiState, start: StartMessage) -> ApiResult<ExecOptions> {
    let mut options = exec::options(state, start.command, start.env, start.cwd, start.user, start.timeout_ms)?;
    options.stdin = true;
    if start.tty {
        options.tty = Some((start.rows.unwrap_or(24).max(1), start.cols.unwrap_or(80).max(1)));
    }
    Ok(options)
}

/// Feeds stdin chunks to the command in order; closes its stdin when the queue ends.
async fn feed(control: ExecControl, mut chunks: mpsc::Receiver<Vec<u8>>) {
    while let Some(chunk) = chunks.recv().await {
        if control.write_stdin(chunk).await.is_err() {
            return;
        }
    }
    let _ = control.close_stdin();
}

async fn session(state: Arc<ApiState>, sandbox: Sandbox, _slot: OwnedSemaphorePermit, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let start = match read_start(&mut rx).await.and_then(|s| options(&state, s)) {
        Ok(o) => o,
        Err(p) => {
            let _ = tx.send(problem_message(&p)).await;
            return close(&mut tx, 1008, &p.detail).await;
        }
    };
    let mut handle = match sandbox.exec_stream_with(start).await {
        Ok(h) => h,
        Err(e) => {
            let p = Problem::from(e);
            let _ = tx.send(problem_message(&p)).await;
            return close(&mut tx, 1008, &p.detail).await;
        }
    };
    if tx.send(text(json!({"type": "started", "pid": handle.pid()}))).await.is_err() {
        return;
    }
    let control = handle.control();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
    tokio::spawn(feed(control.clone(), stdin_rx));
    let mut stdin = Some(stdin_tx);
    // A stdin chunk the queue had no room for: the socket is not read until it goes.
    let mut waiting: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            event = handle.recv() => match event {
                Some(ExecEvent::Started { .. }) => {}
                Some(ExecEvent::Stdout(d)) | Some(ExecEvent::Stderr(d)) if d.is_empty() => {}
                Some(ExecEvent::Stdout(d)) => if tx.send(output(STDOUT, d)).await.is_err() { return },
                Some(ExecEvent::Stderr(d)) => if tx.send(output(STDERR, d)).await.is_err() { return },
                Some(ExecEvent::Exited(s)) => {
                    let _ = tx.send(text(json!({"type": "exited", "exitCode": s.code, "signal": s.signal, "timedOut": s.timed_out}))).await;
                    return close(&mut tx, 1000, "exited").await;
                }
                None => {
                    let answer = match handle.wait().await {
                        Ok(s) => text(json!({"type": "exited", "exitCode": s.code, "signal": s.signal, "timedOut": s.timed_out})),
                        Err(e) => problem_message(&Problem::from(e)),
                    };
                    let _ = tx.send(answer).await;
                    return close(&mut tx, 1000, "exited").await;
                }
            },
            permit = async { stdin.clone()?.reserve_owned().await.ok() }, if waiting.is_some() => {
                match (permit, waiting.take()) {
                    (Some(p), Some(chunk)) => drop(p.send(chunk)),
                    // The feeder is gone: the command's stdin is closed.
                    _ => stdin = None,
                }
            },
            msg = rx.next(), if waiting.is_none() => match msg {
                // The client left: dropping the handle kills the command.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Binary(b))) => waiting = Some(b.to_vec()).filter(|b| !b.is_empty() && stdin.is_some()),
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Control>(t.as_str()) {
                    Ok(Control::Stdin { data }) => waiting = Some(data.into_bytes()).filter(|b| !b.is_empty() && stdin.is_some()),
                    Ok(Control::Eof) => stdin = None,
                    Ok(Control::Resize { rows, cols }) => { let _ = control.resize(rows.max(1), cols.max(1)); }
                    Ok(Control::Signal { signal }) => match signal.number() {
                        Some(n) => { let _ = control.signal(n); }
                        None => if tx.send(problem_message(&Problem::bad_request(format!("{signal:?} is not a signal this route sends (a number 1-64, or a name such as TERM)")))).await.is_err() { return },
                    },
                    Err(e) => if tx.send(problem_message(&Problem::bad_request(format!("not a control message ({e}); send stdin as binary, or {{\"type\":\"stdin|eof|resize|signal\",...}}")))).await.is_err() { return },
                },
                Some(Ok(_)) => {}
            },
        }
    }
}

fn output(stream: u8, data: Vec<u8>) -> Message {
    let mut framed = Vec::with_capacity(data.len() + 1);
    framed.push(stream);
    framed.extend_from_slice(&data);
    Message::Binary(framed.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_numbers_or_names_and_nothing_else() {
        let parse = |s: &str| serde_json::from_str::<Control>(s).ok();
        assert!(matches!(parse(r#"{"type":"signal","signal":"TERM"}"#), Some(Control::Signal { signal }) if signal.number() == Some(libc::SIGTERM)));
        assert!(matches!(parse(r#"{"type":"signal","signal":"sigint"}"#), Some(Control::Signal { signal }) if signal.number() == Some(libc::SIGINT)));
        assert!(matches!(parse(r#"{"type":"signal","signal":9}"#), Some(Control::Signal { signal }) if signal.number() == Some(9)));
        assert!(matches!(parse(r#"{"type":"signal","signal":0}"#), Some(Control::Signal { signal }) if signal.number().is_none()));
        assert!(matches!(parse(r#"{"type":"signal","signal":"BOGUS"}"#), Some(Control::Signal { signal }) if signal.number().is_none()));
        assert!(matches!(parse(r#"{"type":"resize","rows":40,"cols":120}"#), Some(Control::Resize { rows: 40, cols: 120 })));
        assert!(matches!(parse(r#"{"type":"eof"}"#), Some(Control::Eof)));
        assert!(parse(r#"{"type":"resize","rows":40}"#).is_none());
        assert!(parse(r#"{"type":"exec"}"#).is_none());
    }
}
