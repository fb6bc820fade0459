//! What the API streams: a command's events (`POST .../exec` with `Accept:
//! application/x-ndjson` or `text/event-stream`), a sandbox's logs and the event log. Each is
//! read from the library's bounded streams as the client reads the response: a client that
//! stops reading holds only its own command (which waits, then dies with the dropped
//! response), never the server or another client.

use super::problem::{ApiResult, Problem};
use super::ApiState;
use crate::sandbox::{ExecEvent, ExecHandle, Sandbox};
use axum::body::Body;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

/// How a stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object per line.
    Ndjson,
    /// Server-sent events: `event: TYPE` and `data: JSON`.
    Sse,
}

impl Framing {
    /// The framing the request's `Accept` asks for, if it asks for a stream.
    pub fn from_accept(headers: &HeaderMap) -> Option<Framing> {
        let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
        if accept.contains("text/event-stream") {
            Some(Framing::Sse)
        } else if accept.contains("application/x-ndjson") || accept.contains("application/jsonl") {
            Some(Framing::Ndjson)
        } else {
            None
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Framing::Ndjson => "application/x-ndjson",
            Framing::Sse => "text/event-stream",
        }
    }

    pub fn frame(self, value: &Value) -> Vec<u8> {
        match self {
            Framing::Ndjson => format!("{value}\n").into_bytes(),
            Framing::Sse => format!("event: {}\ndata: {value}\n\n", value["type"].as_str().unwrap_or("message")).into_bytes(),
        }
    }

    pub fn response(self, body: Body) -> Response {
        ([(header::CONTENT_TYPE, self.content_type()), (header::CACHE_CONTROL, "no-cache")], body).into_response()
    }
}

/// Output as JSON: `data` when it is UTF-8 text, `dataBase64` when not.
fn output(kind: &str, data: Vec<u8>) -> Value {
    match String::from_utf8(data) {
        Ok(text) => json!({"type": kind, "data": text}),
        Err(e) => json!({"type": kind, "dataBase64": base64::engine::general_purpose::STANDARD.encode(e.into_bytes())}),
    }
}

fn event_json(event: ExecEvent) -> Value {
    match event {
        ExecEvent::Started { pid } => json!({"type": "started", "pid": pid}),
        ExecEvent::Stdout(d) => output("stdout", d),
        ExecEvent::Stderr(d) => output("stderr", d),
        ExecEvent::Exited(s) => json!({"type": "exited", "exitCode": s.code, "signal": s.signal, "timedOut": s.timed_out}),
    }
}

/// A running command's events (`started` first, `exited` last) as a streamed response; the
/// exec slot is held until it ends.
pub fn exec(handle: ExecHandle, slot: OwnedSemaphorePermit, framing: Framing) -> Response {
    let stream = futures_util::stream::unfold((Some(handle), slot), move |(handle, slot)| async move {
        let mut handle = handle?;
        let event = handle.recv().await?;
        let done = matches!(event, ExecEvent::Exited(_));
        let bytes = framing.frame(&event_json(event));
        Some((Ok::<_, std::io::Error>(bytes), (if done { None } else { Some(handle) }, slot)))
    });
    framing.response(Body::from_stream(stream))
}

/// A sandbox's log (its main process's output): the whole of it, then, when following, what
/// it writes until it ends. Plain bytes, or framed as `log` events.
pub async fn logs(state: &ApiState, name: &str, follow: bool, framing: Option<Framing>) -> ApiResult<Response> {
    let sandbox = Sandbox::get_in(state.config.clone(), name).await.map_err(Problem::from)?;
    let logs = sandbox.logs(follow).await.map_err(Problem::from)?;
    let stream = futures_util::stream::unfold(logs, move |mut logs| async move {
        let chunk = logs.next().await?;
        let item = chunk.map_err(|e| std::io::Error::other(e.to_string())).map(|data| match framing {
            Some(f) => f.frame(&output("log", data)),
            None => data,
        });
        Some((item, logs))
    });
    let body = Body::from_stream(stream);
    Ok(match framing {
        Some(f) => f.response(body),
        None => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
    })
}

/// The event log (of one sandbox, or all): `history` past events, then, when following, new
/// ones as they are recorded.
pub async fn events(state: &ApiState, sandbox: Option<&str>, history: usize, follow: bool, framing: Framing) -> ApiResult<Response> {
    let frame = move |e: &crate::store::Event| framing.frame(&json!({"type": "event", "at": e.at, "object": e.object, "reason": e.reason, "message": e.message}));
    if !follow {
        let object = sandbox.map(|n| format!("Sandbox/{n}"));
        if let Some(name) = sandbox {
            // An unknown sandbox is a 404, not an empty history.
            Sandbox::get_in(state.config.clone(), name).await.map_err(Problem::from)?;
        }
        let config = state.config.clone();
        let past = super::blocking(move || Ok(crate::reconcile::Orchestrator::open(config)?.store.events(object.as_deref(), history)?)).await?;
        return Ok(framing.response(Body::from(past.iter().flat_map(frame).collect::<Vec<u8>>())));
    }
    let stream = match sandbox {
        Some(name) => Sandbox::get_in(state.config.clone(), name).await.map_err(Problem::from)?.events(history).await,
        None => crate::sandbox::EventStream::all(state.config.clone(), history).await,
    }
    .map_err(Problem::from)?;
    let body = futures_util::stream::unfold(stream, move |mut stream| async move {
        let event = stream.next().await?;
        let item = event.map_err(|e| std::io::Error::other(e.to_string())).map(|e| frame(&e));
        Some((item, stream))
    });
    Ok(framing.response(Body::from_stream(body)))
}
