//! A sandbox's files over `/v1/sandboxes/{name}/files`: read and write streamed (neither side
//! holds a whole file: chunks flow between the HTTP body and the agent), remove, list, stat.
//!
//! Invariants:
//! - Paths are absolute and reached through the sandbox's agent, which resolves every path
//!   inside the sandbox's own root: `/../../etc/passwd` is the sandbox's `/etc/passwd`, never
//!   the host's.
//! - A written body is bounded by `--max-file-body` ([`super::Limits::max_file`]), counted as it
//!   arrives: past it the answer is 413 and the partial file is removed. Inside the sandbox,
//!   its disk bound applies as to any writer.
//! - At most [`CHUNKS_IN_FLIGHT`] chunks wait between a client and the agent, either way: a
//!   client that stops reading (or sending) holds one blocking thread and its own connection
//!   to the shim, never the server.

use super::problem::{ApiResult, Problem};
use super::sandboxes::query;
use super::ApiState;
use crate::sandbox::Sandbox;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use guest_agent::protocol::{DirEntry, FileKind, FileStat};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Chunks buffered between an HTTP body and the agent.
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// Files up to this size go in one request on the sandbox's kept connection, whole (the
/// common case, and the fast one); larger ones stream on a connection of their own.
pub const WHOLE: usize = 1 << 20;

type St = State<Arc<ApiState>>;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(read_file, write_file, remove_file)).routes(routes!(list_dir)).routes(routes!(stat))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PathQuery {
    /// An absolute path inside the sandbox.
    #[param(pattern = "^/")]
    path: String,
    /// Octal permission bits for a written file (default 644).
    mode: Option<String>,
    /// Remove a directory and everything under it.
    #[serde(default)]
    recursive: bool,
}

/// A path in the sandbox, absolute (the agent resolves it inside the sandbox's root).
fn sandbox_path(path: &str) -> ApiResult<String> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Problem::bad_request(format!("path {path:?} must be absolute inside the sandbox, e.g. /tmp/data.txt")));
    }
    Ok(path.to_string())
}

async fn sandbox(state: &ApiState, name: &str) -> ApiResult<Sandbox> {
    state.handles.get(&state.config, name).await.map_err(Problem::from)
}

/// How feeding a request body to the agent ended, when it did not end well.
enum Fed {
    /// Past `--max-file-body`.
    TooLarge,
    /// The client's body failed (a reset, a malformed chunk).
    BrokeOff(String),
    /// The write stopped taking chunks (it failed: its own error says why).
    WriterGone,
}

/// Bytes written to it go, chunk by chunk, to an async receiver; fails once the receiver is
/// gone (the client left).
struct ChannelWriter(mpsc::Sender<std::io::Result<Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.blocking_send(Ok(Bytes::copy_from_slice(buf))).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client stopped reading"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads what an async sender sends; a sender error (the body went over its bound, or the
/// client broke off) is a read error.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// A file's bytes, streamed as the agent reads them.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{name}/files",
    tag = "files",
    params(("name" = String, Path, description = "The sandbox"), PathQuery),
    responses(
        (status = 200, description = "The file's bytes, streamed (chunked)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "A relative path, or a directory (list it instead)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sandbox or file", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn read_file(State(state): St, Path(name): Path<String>, q: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<Response> {
    let q = query(q)?;
    let path = sandbox_path(&q.path)?;
    let fs = sandbox(&state, &name).await?.fs();
    // One request on the sandbox's kept connection serves a small file whole; a larger one
    // streams its rest on a connection of its own.
    let first = match fs.read_range(path.clone(), 0, WHOLE as u64).await {
        Ok(data) => data,
        // Errors the client can act on (no file, a directory) before the 200 is sent.
        Err(e) => {
            let st = fs.stat(path.clone()).await.map_err(Problem::from)?;
            if st.kind == FileKind::Dir {
                return Err(Problem::bad_request(format!("{path} is a directory: list it with GET .../files/list?path={path}")));
            }
            return Err(Problem::from(e));
        }
    };
    if first.len() < WHOLE {
        return Ok(([(header::CONTENT_TYPE, "application/octet-stream")], first).into_response());
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
    let _ = tx.send(Ok(Bytes::from(first))).await;
    tokio::spawn(async move {
        if let Err(e) = fs.read_to(path.clone(), WHOLE as u64, ChannelWriter(tx.clone())).await {
            // The status has gone: the error aborts the body (no final chunk), so the client
            // sees a failed transfer, never a short file that looks whole.
            tracing::debug!("streaming {path} out of a sandbox ended early: {e}");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    let body = Body::from_stream(stream_of(rx));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

fn stream_of(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// Creates or replaces a file from the request body, streamed.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{name}/files",
    tag = "files",
    params(("name" = String, Path, description = "The sandbox"), PathQuery),
    request_body(content = Vec<u8>, description = "The file's bytes, streamed in (at most --max-file-body)", content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "A relative path or a bad mode", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sandbox or directory", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than --max-file-body (the partial file is removed)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn write_file(State(state): St, Path(name): Path<String>, q: Result<Query<PathQuery>, QueryRejection>, headers: HeaderMap, body: Body) -> ApiResult<StatusCode> {
    let q = query(q)?;
    let path = sandbox_path(&q.path)?;
    let mode = match q.mode.as_deref() {
        None => None,
        Some(m) => Some(u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| Problem::bad_request(format!("mode {m:?} is not octal permission bits, e.g. 644")))?),
    };
    let fs = sandbox(&state, &name).await?.fs();
    let max = state.limits.max_file;
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max) {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", format!("the file is larger than this server accepts ({max} bytes, --max-file-body)")));
    }
    if announced.is_some_and(|n| n <= WHOLE as u64) {
        let data = axum::body::to_bytes(body, WHOLE).await.map_err(|e| Problem::bad_request(format!("reading the body: {e}")))?;
        fs.write_with_mode(path, data.to_vec(), mode).await.map_err(Problem::from)?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
    let feeder = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    total += c.len() as u64;
                    if total > max {
                        let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over the bound"))).await;
                        return Err(Fed::TooLarge);
                    }
                    tx.send(Ok(c)).await.map_err(|_| Fed::WriterGone)?;
                }
                Err(e) => {
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why = format!("{why}: {s}");
                        source = s.source();
                    }
                    let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
                    return Err(Fed::BrokeOff(why));
                }
            }
        }
        Ok(())
    });
    let written = fs.write_from(path.clone(), ChannelReader { rx, chunk: Bytes::new() }, mode).await;
    let fed = feeder.await.unwrap_or_else(|e| Err(Fed::BrokeOff(e.to_string())));
    match (fed, written) {
        (Ok(()), Ok(_)) => Ok(StatusCode::NO_CONTENT),
        // The write failed first (the feeder then found nobody reading): its error is the answer.
        (Ok(()), Err(e)) | (Err(Fed::WriterGone), Err(e)) => Err(Problem::from(e)),
        (Err(fed), _) => {
            // Nothing half-written is left behind a refused body.
            let _ = fs.remove(path).await;
            Err(match fed {
                Fed::TooLarge => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", format!("the file is larger than this server accepts ({max} bytes, --max-file-body)")),
                Fed::BrokeOff(e) => Problem::bad_request(format!("the request body broke off: {e}")),
                Fed::WriterGone => Problem::bad_request("the request body broke off"),
            })
        }
    }
}

#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{name}/files",
    tag = "files",
    params(("name" = String, Path, description = "The sandbox"), PathQuery),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such sandbox or file", body = Problem, content_type = "application/problem+json"))
)]
async fn remove_file(State(state): St, Path(name): Path<String>, q: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<StatusCode> {
    let q = query(q)?;
    let path = sandbox_path(&q.path)?;
    let fs = sandbox(&state, &name).await?.fs();
    if q.recursive { fs.remove_all(path).await } else { fs.remove(path).await }.map_err(Problem::from)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{name}/files/list",
    tag = "files",
    params(("name" = String, Path, description = "The sandbox"), PathQuery),
    responses((status = 200, body = Vec<DirEntry>), (status = 404, description = "No such sandbox or directory", body = Problem, content_type = "application/problem+json"))
)]
async fn list_dir(State(state): St, Path(name): Path<String>, q: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<Json<Vec<DirEntry>>> {
    let q = query(q)?;
    let path = sandbox_path(&q.path)?;
    let mut entries = sandbox(&state, &name).await?.fs().list(path).await.map_err(Problem::from)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(entries))
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{name}/files/stat",
    tag = "files",
    params(("name" = String, Path, description = "The sandbox"), PathQuery),
    responses((status = 200, body = FileStat), (status = 404, description = "No such sandbox or file", body = Problem, content_type = "application/problem+json"))
)]
async fn stat(State(state): St, Path(name): Path<String>, q: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<Json<FileStat>> {
    let q = query(q)?;
    let path = sandbox_path(&q.path)?;
    Ok(Json(sandbox(&state, &name).await?.fs().stat(path).await.map_err(Problem::from)?))
}
