//! Routes compatible with OpenSandbox's server, at the root as it serves them, so that its
//! clients (curl lines from its README, its SDKs' HTTP calls, agents written against it) work
//! unchanged: `/health`, `/run` (a fresh sandbox per command, removed after it), and
//! `/sessions` (a sandbox whose files persist across runs, with an environment and a working
//! directory the server keeps, removed after an idle time).
//!
//! Where OpenSandbox answers loosely we answer as its clients read it but stricter: paths stay
//! inside the sandbox (its server joins them to a host directory), output that is not UTF-8 is
//! decoded lossily rather than dropped, errors are problem+json with its status codes, and
//! concurrent `/run`s never share a directory.

use super::exec;
use super::problem::{ApiResult, Problem};
use super::sandboxes::{bytes, json_body, query};
use super::{ApiState, RUN_SOURCE, SESSION_SOURCE};
use crate::reconcile::Orchestrator;
use crate::sandbox::{ExecOptions, Sandbox};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::{router::OpenApiRouter, routes};
use base64::Engine;
use guest_agent::protocol::{FileKind, Rlimits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type St = State<Arc<ApiState>>;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(run_once))
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(show_session, delete_session))
        .routes(routes!(run_in_session))
        .routes(routes!(set_env))
        .routes(routes!(set_cwd))
        .routes(routes!(write_file))
        .routes(routes!(write_bulk))
        .routes(routes!(read_file))
        .routes(routes!(list_files))
}

/// The one route without a token: `OK` while the server serves.
#[utoipa::path(get, path = "/health", tag = "opensandbox", responses((status = 200, description = "OK", content_type = "text/plain", body = String)))]
async fn health() -> &'static str {
    "OK"
}

/// A command as OpenSandbox takes it, with its defaults (those its server applies).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct RunBody {
    command: Vec<String>,
    /// CPU time, milliseconds.
    #[serde(default = "default_time")]
    time: u64,
    /// Memory, KiB.
    #[serde(default = "default_mem")]
    mem: u64,
    /// Largest file written, KiB.
    #[serde(default = "default_fsize")]
    fsize: u64,
    #[serde(default = "default_nofile")]
    nofile: u64,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

fn default_time() -> u64 {
    300_000
}
fn default_mem() -> u64 {
    2_097_152
}
fn default_fsize() -> u64 {
    1_048_576
}
fn default_nofile() -> u64 {
    256
}

/// OpenSandbox's answer to a command.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RunResult {
    stdout: String,
    stderr: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
}

impl RunBody {
    fn options(&self, env: &BTreeMap<String, String>, cwd: Option<&str>, state: &ApiState) -> ExecOptions {
        let mut argv = self.command.iter().cloned();
        let mut o = ExecOptions::new(argv.next().unwrap_or_default()).args(argv);
        o.env = env.clone();
        o.env.extend(self.env.clone());
        o.cwd = cwd.map(str::to_string);
        o.rlimits = Rlimits {
            nofile: Some(self.nofile.max(16)),
            nproc: None,
            fsize: Some(self.fsize.saturating_mul(1024)),
            cpu_secs: Some((self.time / 1000).max(1)),
        };
        // CPU time is what `time` bounds; the wall clock gets the server's bound.
        o.timeout = Some(exec::timeout(state, None));
        o
    }
}

async fn execute(state: &ApiState, sandbox: &Sandbox, options: ExecOptions) -> ApiResult<Json<RunResult>> {
    let out = exec::run(state, sandbox, options, None).await?;
    Ok(Json(RunResult {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code: out.status.code,
        signal: out.status.signal,
    }))
}

#[utoipa::path(post, path = "/run", tag = "opensandbox", request_body = RunBody, responses((status = 200, description = "The command ran in a fresh sandbox, removed afterwards", body = RunResult), (status = 400, description = "Not the body this route takes", body = Problem, content_type = "application/problem+json")))]
async fn run_once(State(state): St, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<RunResult>> {
    let body: RunBody = json_body(&bytes(body)?)?;
    let memory = body.mem.saturating_mul(1024);
    // A warm sandbox when the pool of the default image has one that fits.
    let pooled = match state.pools.iter().find(|p| p.image == state.default_image) {
        Some(p) if memory == super::pool::POOL_MEMORY => p.take(),
        Some(p) => {
            p.miss();
            None
        }
        None => None,
    };
    let cwd = body.cwd.clone();
    let options = body.options(&BTreeMap::new(), cwd.as_deref(), &state);
    if let Some(sandbox) = pooled {
        let result = execute(&state, &sandbox, options.clone()).await;
        super::pool::discard(&state, sandbox).await;
        // A pooled sandbox that died while it waited is the pool's loss, not the request's.
        match &result {
            Err(p) if p.kind == "not-running" || p.kind == "not-found" => tracing::warn!("a pooled sandbox was gone: {}", p.detail),
            _ => return result,
        }
    }
    let sandbox = super::pool::make(&state, &state.default_image, "run", RUN_SOURCE, Some(memory), super::pool::POOL_LAYER).await?;
    let result = execute(&state, &sandbox, options).await;
    super::pool::discard(&state, sandbox).await;
    result
}

/// A session: a sandbox (its handle, whose connection to the shim is kept between runs), and
/// what its runs inherit.
struct Session {
    sandbox: Sandbox,
    env: BTreeMap<String, String>,
    cwd: String,
    created: Instant,
    last_used: Instant,
}

/// The live sessions, by id.
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    idle: Duration,
    /// Sessions at once (each is a sandbox): more are refused with 429.
    max: usize,
    /// Sessions being made (counted against `max` before they exist).
    making: std::sync::atomic::AtomicUsize,
}

/// A place for one session being made; given back when dropped.
struct Reservation<'a>(&'a Sessions);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.making.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Sessions {
    pub fn new(idle: Duration, max: usize) -> Sessions {
        Sessions { by_id: Mutex::new(HashMap::new()), idle, max, making: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// A place for a new session, or 429 when as many exist (or are being made) as allowed.
    fn reserve(&self) -> ApiResult<Reservation<'_>> {
        let sessions = self.lock();
        if sessions.len() + self.making.load(std::sync::atomic::Ordering::SeqCst) >= self.max {
            return Err(Problem::too_many(format!("{} sessions exist, as many as this server keeps (--max-sessions); delete one, or let an idle one expire", self.max)));
        }
        self.making.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Reservation(self))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request whose session was deleted (or expired) while it ran failed because of that:
    /// a 404, not a failure of the server.
    fn raced(&self, id: &str, p: Problem) -> Problem {
        if p.status >= 500 && !self.lock().contains_key(id) {
            return Problem::not_found(format!("session {id:?} was deleted while the request ran"));
        }
        p
    }

    /// The session's sandbox, env and cwd, marking it used.
    fn touch(&self, id: &str) -> ApiResult<(Sandbox, BTreeMap<String, String>, String)> {
        let mut sessions = self.lock();
        let s = sessions.get_mut(id).ok_or_else(|| Problem::not_found(format!("no session {id:?} (it may have expired)")))?;
        s.last_used = Instant::now();
        Ok((s.sandbox.clone(), s.env.clone(), s.cwd.clone()))
    }
}

/// OpenSandbox's view of a session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SessionInfo {
    id: String,
    env: BTreeMap<String, String>,
    cwd: String,
    age_secs: u64,
    idle_secs: u64,
    preview_url: Option<String>,
    ports: Vec<u16>,
    status: &'static str,
}

fn info(id: &str, s: &Session) -> SessionInfo {
    SessionInfo {
        id: id.to_string(),
        env: s.env.clone(),
        cwd: s.cwd.clone(),
        age_secs: s.created.elapsed().as_secs(),
        idle_secs: s.last_used.elapsed().as_secs(),
        preview_url: None,
        ports: Vec::new(),
        status: "running",
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct EnvBody {
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Created {
    session_id: String,
    preview_url: Option<String>,
}

#[utoipa::path(post, path = "/sessions", tag = "opensandbox", request_body(content = Option<EnvBody>), responses((status = 200, body = Created), (status = 429, description = "As many sessions exist as the server keeps (--max-sessions)", body = Problem, content_type = "application/problem+json")))]
async fn create_session(State(state): St, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Created>> {
    let body = bytes(body)?;
    let env: EnvBody = if body.iter().all(u8::is_ascii_whitespace) { EnvBody { env: BTreeMap::new() } } else { json_body(&body)? };
    let _place = state.sessions.reserve()?;
    // A session's layer is a disk: its memory is unbounded, and a disk bounds what it writes
    // without taking the host's memory.
    let sandbox = super::pool::make(&state, &state.default_image, "session", SESSION_SOURCE, None, crate::spec::WritableLayer::Disk).await?;
    let id = uuid_v4();
    let now = Instant::now();
    state.sessions.lock().insert(id.clone(), Session { sandbox, env: env.env, cwd: "/".into(), created: now, last_used: now });
    Ok(Json(Created { session_id: id, preview_url: None }))
}

#[utoipa::path(get, path = "/sessions", tag = "opensandbox", responses((status = 200, body = Vec<SessionInfo>)))]
async fn list_sessions(State(state): St) -> Json<Vec<SessionInfo>> {
    Json(state.sessions.lock().iter().map(|(id, s)| info(id, s)).collect())
}

#[utoipa::path(get, path = "/sessions/{id}", tag = "opensandbox", params(("id" = String, Path, description = "The session id")), responses((status = 200, body = SessionInfo), (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json")))]
async fn show_session(State(state): St, Path(id): Path<String>) -> ApiResult<Json<SessionInfo>> {
    let sessions = state.sessions.lock();
    let s = sessions.get(&id).ok_or_else(|| Problem::not_found(format!("no session {id:?}")))?;
    Ok(Json(info(&id, s)))
}

#[utoipa::path(delete, path = "/sessions/{id}", tag = "opensandbox", params(("id" = String, Path, description = "The session id")), responses((status = 204, description = "Removed with its sandbox"), (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json")))]
async fn delete_session(State(state): St, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let session = state.sessions.lock().remove(&id).ok_or_else(|| Problem::not_found(format!("no session {id:?}")))?;
    remove_sandbox(&state, session.sandbox.name()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_sandbox(state: &ApiState, name: &str) -> ApiResult<()> {
    match Sandbox::get_in(state.config.clone(), name).await {
        Ok(sandbox) => sandbox.remove().await.map_err(Problem::from),
        Err(e) if e.kind() == crate::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(post, path = "/sessions/{id}/run", tag = "opensandbox", params(("id" = String, Path, description = "The session id")), request_body = RunBody, responses((status = 200, body = RunResult), (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json")))]
async fn run_in_session(State(state): St, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<RunResult>> {
    let body: RunBody = json_body(&bytes(body)?)?;
    let (sandbox, env, cwd) = state.sessions.touch(&id)?;
    // OpenSandbox's rule: a run's cwd counts only when it is not "/" (clients send "/" for none).
    let cwd = body.cwd.clone().filter(|c| c != "/").unwrap_or(cwd);
    execute(&state, &sandbox, body.options(&env, Some(&cwd), &state)).await.map_err(|p| state.sessions.raced(&id, p))
}

#[utoipa::path(post, path = "/sessions/{id}/env", tag = "opensandbox", params(("id" = String, Path, description = "The session id")), request_body = EnvBody, responses((status = 200, description = "Merged into the session's environment"), (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json")))]
async fn set_env(State(state): St, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> ApiResult<StatusCode> {
    let body: EnvBody = json_body(&bytes(body)?)?;
    state.sessions.touch(&id)?;
    if let Some(s) = state.sessions.lock().get_mut(&id) {
        s.env.extend(body.env);
    }
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct CwdBody {
    cwd: String,
}

#[utoipa::path(post, path = "/sessions/{id}/cwd", tag = "opensandbox", params(("id" = String, Path, description = "The session id")), request_body = CwdBody, responses((status = 200, description = "The session's working directory"), (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json")))]
async fn set_cwd(State(state): St, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> ApiResult<StatusCode> {
    let body: CwdBody = json_body(&bytes(body)?)?;
    let cwd = inside(&body.cwd)?;
    state.sessions.touch(&id)?;
    if let Some(s) = state.sessions.lock().get_mut(&id) {
        s.cwd = cwd;
    }
    Ok(StatusCode::OK)
}

/// A session path as OpenSandbox's clients give it (relative ones start at the root), as an
/// absolute path in the sandbox (its agent keeps it inside the sandbox's root).
fn inside(path: &str) -> ApiResult<String> {
    if path.contains('\0') {
        return Err(Problem::bad_request("a path must not contain NUL"));
    }
    Ok(format!("/{}", path.trim_start_matches('/')))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct WriteBody {
    path: String,
    content: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Success {
    success: bool,
}

/// Files this small are written first and their parents made only when missing (one request
/// in the common case); larger ones make their parents first rather than keep a copy.
const WRITE_FIRST: usize = 64 << 10;

/// Writes a file, making its parent directories as needed.
async fn write_one(sandbox: &Sandbox, path: &str, data: Vec<u8>) -> crate::Result<()> {
    let fs = sandbox.fs();
    let parent = path.rsplit_once('/').map(|(p, _)| p).filter(|p| !p.is_empty());
    if data.len() <= WRITE_FIRST {
        match fs.write_with_mode(path.to_string(), data.clone(), Some(0o644)).await {
            Err(e) if e.kind() == crate::ErrorKind::NotFound && parent.is_some() => {}
            other => return other,
        }
    }
    if let Some(parent) = parent {
        fs.mkdir(parent.to_string()).await?;
    }
    fs.write_with_mode(path.to_string(), data, Some(0o644)).await
}

fn decode(content: &str, what: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(content).map_err(|e| Problem::bad_request(format!("Invalid base64{what}: {e}")))
}

#[utoipa::path(post, path = "/sessions/{id}/files/write", tag = "opensandbox", params(("id" = String, Path, description = "The session id")), request_body = WriteBody, responses((status = 200, body = Success), (status = 400, description = "Invalid base64", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json")))]
async fn write_file(State(state): St, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Success>> {
    let body: WriteBody = json_body(&bytes(body)?)?;
    let (sandbox, _, _) = state.sessions.touch(&id)?;
    let (path, data) = (inside(&body.path)?, decode(&body.content, "")?);
    write_one(&sandbox, &path, data).await.map_err(|e| state.sessions.raced(&id, e.into()))?;
    Ok(Json(Success { success: true }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct BulkBody {
    files: Vec<WriteBody>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BulkError {
    path: String,
    error: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BulkResult {
    success: bool,
    errors: Vec<BulkError>,
}

#[utoipa::path(post, path = "/sessions/{id}/files/write-bulk", tag = "opensandbox", params(("id" = String, Path, description = "The session id")), request_body = BulkBody, responses((status = 200, body = BulkResult), (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json")))]
async fn write_bulk(State(state): St, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<BulkResult>> {
    let body: BulkBody = json_body(&bytes(body)?)?;
    let (sandbox, _, _) = state.sessions.touch(&id)?;
    // Every entry decodes before anything is written.
    let mut files = Vec::new();
    for f in body.files {
        files.push((inside(&f.path)?, decode(&f.content, &format!(" for {}", f.path))?, f.path));
    }
    let mut errors = Vec::new();
    for (path, data, given) in files {
        if let Err(e) = write_one(&sandbox, &path, data).await {
            errors.push(BulkError { path: given, error: e.to_string() });
        }
    }
    Ok(Json(BulkResult { success: errors.is_empty(), errors }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PathQuery {
    path: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Content {
    content: String,
}

#[utoipa::path(get, path = "/sessions/{id}/files/read", tag = "opensandbox", params(("id" = String, Path, description = "The session id"), PathQuery), responses((status = 200, body = Content), (status = 404, description = "No such session or file", body = Problem, content_type = "application/problem+json")))]
async fn read_file(State(state): St, Path(id): Path<String>, q: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<Json<Content>> {
    let q = query(q)?;
    let (sandbox, _, _) = state.sessions.touch(&id)?;
    let path = inside(&q.path)?;
    // One request, bounded: a byte past the bound says the file is too large.
    let max = state.limits.max_body;
    let data = sandbox.fs().read_range(path.clone(), 0, max as u64 + 1).await.map_err(|e| state.sessions.raced(&id, e.into()))?;
    if data.len() > max {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", format!("{path} is more than this route returns ({max} bytes)")));
    }
    Ok(Json(Content { content: base64::engine::general_purpose::STANDARD.encode(data) }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct FileEntry {
    name: String,
    path: String,
    is_directory: bool,
    size: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Listing {
    files: Vec<FileEntry>,
}

#[utoipa::path(get, path = "/sessions/{id}/files/list", tag = "opensandbox", params(("id" = String, Path, description = "The session id"), PathQuery), responses((status = 200, body = Listing), (status = 404, description = "No such session or directory", body = Problem, content_type = "application/problem+json")))]
async fn list_files(State(state): St, Path(id): Path<String>, q: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<Json<Listing>> {
    let q = query(q)?;
    let (sandbox, _, _) = state.sessions.touch(&id)?;
    let dir = inside(&q.path)?;
    let fs = sandbox.fs();
    let mut entries = fs.list(dir.clone()).await.map_err(|e| state.sessions.raced(&id, e.into()))?;
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let base = dir.trim_end_matches('/');
    let mut files = Vec::with_capacity(entries.len());
    for e in entries {
        let path = format!("{base}/{}", e.name);
        let size = fs.stat(path.clone()).await.map(|s| s.size).unwrap_or(0);
        files.push(FileEntry { is_directory: e.kind == FileKind::Dir, name: e.name, path, size });
    }
    Ok(Json(Listing { files }))
}

/// A random version-4 UUID, as OpenSandbox's session ids are.
fn uuid_v4() -> String {
    let h = crate::ids::random_hex(16);
    let mut b: Vec<char> = h.chars().collect();
    b[12] = '4';
    b[16] = ['8', '9', 'a', 'b'][usize::from_str_radix(&b[16].to_string(), 16).unwrap_or(0) % 4];
    let s: String = b.into_iter().collect();
    format!("{}-{}-{}-{}-{}", &s[0..8], &s[8..12], &s[12..16], &s[16..20], &s[20..32])
}

/// What an earlier server left: its `/run`, session and pool sandboxes (their state was in its
/// memory). Listed before this server makes any, so that none of its own is taken for one.
pub fn leftovers(config: &crate::Config) -> crate::Result<Vec<String>> {
    let orch = Orchestrator::open(config.clone())?;
    let rows = orch.store.resources(Some(crate::spec::Kind::Sandbox))?;
    Ok(rows.into_iter().filter(|r| [RUN_SOURCE, SESSION_SOURCE, super::pool::POOL_SOURCE].contains(&r.source.as_str())).map(|r| r.resource.name).collect())
}

/// Removes `leftovers` (as listed at start), then expires idle sessions every few seconds.
pub fn start_background(state: Arc<ApiState>, leftovers: Vec<String>) {
    let remover = state.clone();
    tokio::spawn(async move {
        for name in leftovers {
            if let Err(e) = remove_sandbox(&remover, &name).await {
                tracing::warn!("removing the API's leftover sandbox {name}: {}", e.detail);
            }
        }
    });
    tokio::spawn(async move {
        let sweep = (state.sessions.idle / 5).clamp(Duration::from_millis(200), Duration::from_secs(60));
        loop {
            tokio::time::sleep(sweep).await;
            let expired: Vec<(String, String)> = {
                let mut sessions = state.sessions.lock();
                let ids: Vec<String> = sessions.iter().filter(|(_, s)| s.last_used.elapsed() >= state.sessions.idle).map(|(id, _)| id.clone()).collect();
                ids.into_iter().filter_map(|id| sessions.remove(&id).map(|s| (id, s.sandbox.name().to_string()))).collect()
            };
            for (id, sandbox) in expired {
                tracing::info!("session {id} expired (idle {}s)", state.sessions.idle.as_secs());
                if let Err(e) = remove_sandbox(&state, &sandbox).await {
                    tracing::warn!("removing expired session {id}'s sandbox {sandbox}: {}", e.detail);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_version_4_uuids_and_paths_start_at_the_root() {
        let id = uuid_v4();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]), "{id}");
        assert_ne!(id, uuid_v4());
        assert_eq!(inside("tmp/x").unwrap(), "/tmp/x");
        assert_eq!(inside("//etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(inside("").unwrap(), "/");
    }
}
