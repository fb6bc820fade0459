//! The native routes, `/v1`: sandboxes (list, create from a manifest, get, delete, stop,
//! start, apply), a command collected or streamed (`exec`), logs and events (files are
//! [`super::files`]'s, interactive commands [`super::interactive`]'s). Each
//! renders the library's types: the view `get -o json` prints, the library's errors as
//! problems.

use super::exec;
use super::streams::{self, Framing};
use super::problem::{ApiResult, Problem};
use super::{hostpaths, ApiState, API_SOURCE};
use crate::error::Error;
use crate::reconcile::Orchestrator;
use crate::sandbox::Sandbox;
use crate::spec::{Kind, ResourceSpec};
use crate::view::{ApplyReport, ResourceView};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::{router::OpenApiRouter, routes};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

type St = State<Arc<ApiState>>;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, remove))
        .routes(routes!(stop))
        .routes(routes!(start))
        .routes(routes!(exec_collected))
        .routes(routes!(logs))
        .routes(routes!(sandbox_events))
        .routes(routes!(all_events))
        .routes(routes!(apply))
        .routes(routes!(pools))
}

/// Runs `f` on a blocking thread with the data directory open.
pub(super) async fn with_orchestrator<T: Send + 'static>(state: &ApiState, f: impl FnOnce(&mut Orchestrator) -> crate::Result<T> + Send + 'static) -> ApiResult<T> {
    let config = state.config.clone();
    super::blocking(move || f(&mut Orchestrator::open(config)?)).await
}

#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", responses((status = 200, description = "Every sandbox, whatever made it", body = Vec<ResourceView>)))]
async fn list(State(state): St) -> ApiResult<Json<Vec<ResourceView>>> {
    let views = with_orchestrator(&state, |o| o.list()).await?;
    Ok(Json(views.into_iter().filter(|v| v.kind == "Sandbox").collect()))
}

#[utoipa::path(get, path = "/v1/sandboxes/{name}", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox")), responses((status = 200, body = ResourceView), (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json")))]
async fn show(State(state): St, Path(name): Path<String>) -> ApiResult<Json<ResourceView>> {
    let view = with_orchestrator(&state, move |o| o.get(&name)).await?;
    if view.kind != "Sandbox" {
        return Err(Problem::not_found(format!("no sandbox named {:?} (it is a {})", view.name, view.kind)));
    }
    Ok(Json(view))
}

/// Parses a request body as one resource of `kind` (JSON is YAML: errors are located in the
/// body as in a file), after the host-path screen.
pub fn parse_one(state: &ApiState, body: &[u8], kind: Kind) -> ApiResult<crate::spec::Resource> {
    let text = std::str::from_utf8(body).map_err(|_| Problem::bad_request("the body is not UTF-8 text (send the manifest as JSON or YAML)"))?;
    hostpaths::screen(text, state.allow_host_paths.as_deref())?;
    // Relative paths resolve inside the allowed root (or nowhere at all).
    let base = state.allow_host_paths.clone().unwrap_or_else(|| std::path::PathBuf::from("/nonexistent"));
    // One sandbox created at once: its secrets may carry values (see spec::parse_request).
    let manifests = crate::spec::parse_request(&base.join("request"), text).map_err(|errors| Problem::from(Error::InvalidSpec(errors)))?;
    let [manifest] = <[_; 1]>::try_from(manifests).map_err(|m: Vec<_>| Problem::invalid(format!("the body holds {} resources; send exactly one {kind}", m.len())))?;
    if manifest.resource.kind() != kind {
        return Err(Problem::invalid(format!("the body is a {}; this route takes a {kind}", manifest.resource.kind())));
    }
    hostpaths::check_resolved(&manifest.resource, state.allow_host_paths.as_deref())?;
    super::reach::check(&manifest.resource, state.allow_client_network)?;
    Ok(manifest.resource)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ApplyQuery {
    /// The name of this manifest's source: applying it again under the same name prunes what
    /// it no longer declares.
    #[serde(default = "default_source")]
    source: String,
    #[serde(default)]
    dry_run: bool,
}

fn default_source() -> String {
    "apply".into()
}

/// `POST /v1/apply?source=NAME`: a whole manifest (YAML or JSON, any number of documents)
/// applied as the source `api:NAME`, with the report `apply` prints.
#[utoipa::path(post, path = "/v1/apply", tag = "sandboxes", params(ApplyQuery), request_body(content = String, description = "A whole manifest: any number of resources, YAML (--- separated) or JSON", content_type = "application/yaml"), responses((status = 200, description = "The report (or, for a dry run, the plan)", body = ApplyReport), (status = 409, description = "Another source declares one of its objects", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid manifest: every problem, located", body = Problem, content_type = "application/problem+json")))]
async fn apply(State(state): St, q: Result<Query<ApplyQuery>, QueryRejection>, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let (q, body) = (query(q)?, bytes(body)?);
    if q.source.is_empty() || q.source.len() > 63 || !q.source.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(Problem::bad_request(format!("source {:?}: lower-case letters, digits and '-', at most 63", q.source)));
    }
    let text = std::str::from_utf8(&body).map_err(|_| Problem::bad_request("the body is not UTF-8 text"))?.to_string();
    hostpaths::screen(&text, state.allow_host_paths.as_deref())?;
    let base = state.allow_host_paths.clone().unwrap_or_else(|| std::path::PathBuf::from("/nonexistent"));
    let manifests = crate::spec::parse_str(&base.join("request"), &text).map_err(|errors| Problem::from(Error::InvalidSpec(errors)))?;
    for m in &manifests {
        hostpaths::check_resolved(&m.resource, state.allow_host_paths.as_deref())?;
        super::reach::check(&m.resource, state.allow_client_network)?;
    }
    let source = format!("{API_SOURCE}:{}", q.source);
    if q.dry_run {
        let plan = with_orchestrator(&state, move |o| Ok(o.plan(&source, &manifests, false)?)).await?;
        return Ok(Json(plan).into_response());
    }
    let report = with_orchestrator(&state, move |o| Ok(o.apply(&source, &manifests, false)?)).await?;
    Ok(Json(report).into_response())
}

/// The warm pools' figures: size, ready, hits, misses.
#[utoipa::path(get, path = "/v1/pools", tag = "observe", responses((status = 200, body = Vec<super::pool::PoolView>)))]
async fn pools(State(state): St) -> Json<Vec<super::pool::PoolView>> {
    Json(state.pools.iter().map(|p| p.view()).collect())
}

/// Creates a sandbox from a manifest (from a warm pool, ready at once, when a pool's spec is
/// the manifest's: its image and `memory: 2Gi`, nothing else, isolation auto or namespace).
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body(content = crate::api::openapi::Manifest, description = "One Sandbox manifest, JSON or YAML"), responses((status = 201, description = "Created and running", body = ResourceView), (status = 403, description = "A host path (or a wider network) the server does not allow clients", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid spec: every problem, located in the body", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The isolation asked for is not available on this host", body = Problem, content_type = "application/problem+json")))]
async fn create(State(state): St, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let body = bytes(body)?;
    let resource = parse_one(&state, &body, Kind::Sandbox)?;
    let ResourceSpec::Sandbox(spec) = &resource.spec else {
        return Err(Problem::invalid("not a Sandbox"));
    };
    let sandbox = match from_pool(&state, &resource, spec).await? {
        Some(sandbox) => sandbox,
        None => crate::sandbox::create_resource(state.config.clone(), resource, API_SOURCE, "HTTP API".into()).await.map_err(Problem::from)?,
    };
    let view = sandbox.view().await.map_err(Problem::from)?;
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/v1/sandboxes/{}", view.name))], Json(view)).into_response())
}

/// A warm pool's sandbox made `resource`, when a pool's spec is what it asks for and one is
/// ready; None: make a fresh one (no pool matches, none is ready, or the one taken could not
/// take the name: it is removed and the request does not notice).
async fn from_pool(state: &std::sync::Arc<ApiState>, resource: &crate::spec::Resource, spec: &crate::spec::SandboxSpec) -> ApiResult<Option<Sandbox>> {
    let Some(pool) = state.pools.iter().find(|p| p.serves(spec)) else { return Ok(None) };
    // A name in use is the client's 409 before a pooled sandbox is spent on it.
    match Sandbox::get_in(state.config.clone(), &resource.name).await {
        Ok(_) => return Err(Problem::conflict(format!("a sandbox named {:?} already exists; remove it first", resource.name))),
        Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let Some(pooled) = pool.take() else { return Ok(None) };
    match pooled.clone().take_over(resource.clone(), API_SOURCE, "HTTP API (warm pool)".into()).await {
        Ok(sandbox) => Ok(Some(sandbox)),
        Err(e) => {
            tracing::warn!("a pooled sandbox could not become {}: {e}; making a fresh one", resource.name);
            super::pool::discard(state, pooled).await;
            Ok(None)
        }
    }
}

/// The sandbox `name`, made by the API (a sandbox another source declares is that source's to
/// change: the API would fight it).
async fn owned(state: &ApiState, name: &str) -> ApiResult<Sandbox> {
    let n = name.to_string();
    let source = with_orchestrator(state, move |o| {
        let row = o.store.resource(Kind::Sandbox, &n)?.ok_or_else(|| Error::no_sandbox(&n))?;
        Ok(row.source)
    })
    .await?;
    if source != API_SOURCE && !source.starts_with(&format!("{API_SOURCE}:")) {
        return Err(Problem::conflict(format!("sandbox {name:?} is declared by {source}; change it there (the API changes only the sandboxes it made)")));
    }
    Sandbox::get_in(state.config.clone(), name).await.map_err(Problem::from)
}

#[utoipa::path(delete, path = "/v1/sandboxes/{name}", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox")), responses((status = 204, description = "Removed: no process, mount or directory left"), (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Another source declares it", body = Problem, content_type = "application/problem+json")))]
async fn remove(State(state): St, Path(name): Path<String>) -> ApiResult<StatusCode> {
    owned(&state, &name).await?.remove().await.map_err(Problem::from)?;
    state.handles.forget(&name);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{name}/stop", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox")), responses((status = 204, description = "Stopped (SIGTERM, SIGKILL after 5 s)"), (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Another source declares it", body = Problem, content_type = "application/problem+json")))]
async fn stop(State(state): St, Path(name): Path<String>) -> ApiResult<StatusCode> {
    owned(&state, &name).await?.stop_and_wait().await.map_err(Problem::from)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{name}/start", tag = "sandboxes", params(("name" = String, Path, description = "The sandbox")), responses((status = 204, description = "Running again, its writable layer kept"), (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Another source declares it", body = Problem, content_type = "application/problem+json")))]
async fn start(State(state): St, Path(name): Path<String>) -> ApiResult<StatusCode> {
    owned(&state, &name).await?.start().await.map_err(Problem::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sandboxes/{name}/exec`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecBody {
    /// The program and its arguments (no shell: `["sh", "-c", "..."]` for one).
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
    timeout_ms: Option<u64>,
    /// Text for the command's standard input.
    stdin: Option<String>,
    /// Bytes for it, base64.
    stdin_base64: Option<String>,
}

/// A collected command, as JSON: text when it is UTF-8, base64 (and said so) when not.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecAnswer {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stdout_encoding: &'static str,
    pub stderr: String,
    pub stderr_encoding: &'static str,
    pub truncated: bool,
}

fn encode(data: Vec<u8>) -> (String, &'static str) {
    match String::from_utf8(data) {
        Ok(s) => (s, "utf-8"),
        Err(e) => (base64::engine::general_purpose::STANDARD.encode(e.into_bytes()), "base64"),
    }
}

/// A body within the bound, or the problem that says it is not.
pub fn bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "the request body is larger than this server accepts"),
        status => Problem::new(status, "bad-request", e.body_text()),
    })
}

/// The query a route takes, or a problem naming what is wrong with it.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q).map_err(|e| Problem::bad_request(e.body_text()))
}

pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("the body is not the JSON this route takes: {e}")))
}

/// A command: collected as JSON, or streamed as it runs when `Accept` asks for NDJSON or
/// server-sent events.
#[utoipa::path(post, path = "/v1/sandboxes/{name}/exec", tag = "exec", params(("name" = String, Path, description = "The sandbox")), request_body = ExecBody, responses((status = 200, description = "The command's exit and output; with Accept: application/x-ndjson or text/event-stream, its events as they happen (started, stdout, stderr, exited)", body = ExecAnswer), (status = 400, description = "An empty command or a bad body", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The sandbox is not running", body = Problem, content_type = "application/problem+json"), (status = 422, description = "The command could not start (kind spawn-failed)", body = Problem, content_type = "application/problem+json"), (status = 429, description = "The sandbox runs as many API commands as it may", body = Problem, content_type = "application/problem+json")))]
async fn exec_collected(State(state): St, Path(name): Path<String>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let body = bytes(body)?;
    let req: ExecBody = json_body(&body)?;
    let stdin = match (req.stdin, req.stdin_base64) {
        (Some(_), Some(_)) => return Err(Problem::bad_request("give stdin or stdinBase64, not both")),
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(b64)) => Some(base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| Problem::bad_request(format!("stdinBase64: {e}")))?),
        (None, None) => None,
    };
    let sandbox = state.handles.get(&state.config, &name).await.map_err(Problem::from)?;
    let options = exec::options(&state, req.command, req.env, req.cwd, req.user, req.timeout_ms)?;
    if let Some(framing) = Framing::from_accept(&headers) {
        let slot = state.exec_slot(&name)?;
        let handle = exec::start(&sandbox, options, stdin).await?;
        return Ok(streams::exec(handle, slot, framing));
    }
    let out = exec::run(&state, &sandbox, options, stdin).await?;
    let ((stdout, stdout_encoding), (stderr, stderr_encoding)) = (encode(out.stdout), encode(out.stderr));
    Ok(Json(ExecAnswer {
        exit_code: out.status.code,
        signal: out.status.signal,
        timed_out: out.status.timed_out,
        stdout,
        stdout_encoding,
        stderr,
        stderr_encoding,
        truncated: out.truncated,
    })
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    #[serde(default)]
    follow: bool,
    /// Past events to send first.
    #[serde(default = "default_history")]
    history: usize,
}

fn default_history() -> usize {
    100
}

/// The sandbox's log: plain bytes, or `log` events when `Accept` asks for a stream framing.
#[utoipa::path(get, path = "/v1/sandboxes/{name}/logs", tag = "observe", params(("name" = String, Path, description = "The sandbox"), StreamQuery), responses((status = 200, description = "The main process's output: bytes, or log events with Accept: application/x-ndjson or text/event-stream", content_type = "application/octet-stream", body = Vec<u8>), (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json")))]
async fn logs(State(state): St, Path(name): Path<String>, headers: HeaderMap, q: Result<Query<StreamQuery>, QueryRejection>) -> ApiResult<Response> {
    let q = query(q)?;
    streams::logs(&state, &name, q.follow, Framing::from_accept(&headers)).await
}

#[utoipa::path(get, path = "/v1/sandboxes/{name}/events", tag = "observe", params(("name" = String, Path, description = "The sandbox"), StreamQuery), responses((status = 200, description = "Events as NDJSON (or SSE with Accept: text/event-stream): type, at, object, reason, message", content_type = "application/x-ndjson", body = String), (status = 404, description = "No such sandbox", body = Problem, content_type = "application/problem+json")))]
async fn sandbox_events(State(state): St, Path(name): Path<String>, headers: HeaderMap, q: Result<Query<StreamQuery>, QueryRejection>) -> ApiResult<Response> {
    let q = query(q)?;
    streams::events(&state, Some(&name), q.history, q.follow, Framing::from_accept(&headers).unwrap_or(Framing::Ndjson)).await
}

#[utoipa::path(get, path = "/v1/events", tag = "observe", params(StreamQuery), responses((status = 200, description = "Every object's events, as NDJSON (or SSE)", content_type = "application/x-ndjson", body = String)))]
async fn all_events(State(state): St, headers: HeaderMap, q: Result<Query<StreamQuery>, QueryRejection>) -> ApiResult<Response> {
    let q = query(q)?;
    streams::events(&state, None, q.history, q.follow, Framing::from_accept(&headers).unwrap_or(Framing::Ndjson)).await
}
