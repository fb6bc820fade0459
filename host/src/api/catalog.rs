//! What the server has besides sandboxes: the local image store (`GET /v1/images`, `POST
//! /v1/images/pull` with progress over SSE or NDJSON) and the applied plugins (`GET
//! /v1/plugins`, `POST /v1/plugins/{name}/eval`: a network policy's decision about a flow or a
//! DNS query, as `plugin eval` prints it).
//!
//! Invariants:
//! - A pull names a registry image; `oci-layout:`/`oci-archive:` paths are host paths, refused
//!   unless the operator gave a root (`--allow-host-paths`) they resolve inside.
//! - At most [`PULLS_AT_ONCE`] pulls run at once (429 beyond); a pull's progress is sent at
//!   most every [`PROGRESS_EVERY`] per layer, and a client that stops reading it never stalls
//!   the pull (progress it did not take is dropped, the result is not).
//! - An evaluation names an address, never a host name: the server resolves nothing for a
//!   client.

use super::problem::{ApiResult, Problem};
use super::sandboxes::{bytes, json_body, with_orchestrator};
use super::streams::Framing;
use super::ApiState;
use crate::error::Error;
use crate::image::store::ImageStore;
use crate::plugin::evaluate::{Evaluator, Question, Verdict};
use crate::plugin::Protocol;
use crate::view::{ImageView, PluginView};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Pulls running at once.
pub const PULLS_AT_ONCE: usize = 4;
/// The most often one layer's progress is sent.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

type St = State<Arc<ApiState>>;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(list_images)).routes(routes!(pull)).routes(routes!(list_plugins)).routes(routes!(eval))
}

/// The local images.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<ImageView>)))]
async fn list_images(State(state): St) -> ApiResult<Json<Vec<ImageView>>> {
    let root = state.config.data_dir.clone();
    let records = super::blocking(move || Ok(ImageStore::open(&root)?.records())).await?;
    Ok(Json(records.iter().map(Into::into).collect()))
}

/// `POST /v1/images/pull`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    /// A registry reference (`127.0.0.1:5000/team/app:1`, `alpine:3.20`); `oci-layout:DIR[:TAG]`
    /// and `oci-archive:FILE[:TAG]` only inside the server's allowed host paths.
    reference: String,
}

/// The reference a client may pull, normalised (host paths resolved inside the allowed root).
fn pullable(state: &ApiState, reference: &str) -> ApiResult<String> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Err(Problem::bad_request("the reference is empty, e.g. {\"reference\": \"alpine:3.20\"}"));
    }
    let names_path = ["dir:", "oci-layout:", "oci-archive:"].iter().any(|p| reference.starts_with(p)) || reference.starts_with('/') || reference.starts_with('.');
    if reference.starts_with("dir:") {
        return Err(Problem::bad_request("dir: images are directories used in place; there is nothing to pull"));
    }
    match (&state.allow_host_paths, names_path) {
        (None, true) => Err(Problem::forbidden(format!("{reference:?} names a path on the server's host, which API clients may not do; pull a registry image, or ask the operator for --allow-host-paths DIR"))),
        (Some(root), true) => {
            let normalised = crate::spec::normalise_image(reference, root).map_err(|(m, h)| Problem::invalid(format!("{m} ({h})")))?;
            super::hostpaths::check_image(&normalised, Some(root))?;
            Ok(normalised)
        }
        (_, false) => Ok(reference.to_string()),
    }
}

/// Fetches an image into the store: the image when it is there; with `Accept:
/// text/event-stream` or `application/x-ndjson`, `progress` events (per layer: `layer`,
/// `done`, `total` bytes) and then `pulled` (the image) or `error` (a problem).
#[utoipa::path(
    post,
    path = "/v1/images/pull",
    tag = "images",
    request_body = PullBody,
    responses(
        (status = 200, description = "Pulled (or, when a stream was asked for, the stream of progress and the result)", body = ImageView),
        (status = 403, description = "A host path without --allow-host-paths", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The image cannot be fetched (kind image-unavailable)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "As many pulls run as the server allows", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn pull(State(state): St, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let body: PullBody = json_body(&bytes(body)?)?;
    let reference = pullable(&state, &body.reference)?;
    let permit = state.pulls.clone().try_acquire_owned().map_err(|_| Problem::too_many(format!("{PULLS_AT_ONCE} pulls are running; retry when one ends")))?;
    let (config, framing) = (state.config.clone(), Framing::from_accept(&headers));
    let (progress_tx, progress_rx) = mpsc::channel::<serde_json::Value>(64);
    let task = tokio::task::spawn_blocking(move || -> crate::Result<ImageView> {
        let _permit = permit;
        let store = ImageStore::open(&config.data_dir)?;
        let last: Mutex<HashMap<String, Instant>> = Mutex::new(HashMap::new());
        let progress = |layer: &str, done: u64, total: Option<u64>| {
            let finished = total == Some(done);
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if !finished && last.get(layer).is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
                return;
            }
            last.insert(layer.to_string(), Instant::now());
            // A reader that is behind loses progress, never the pull.
            let _ = progress_tx.try_send(json!({"type": "progress", "layer": layer, "done": done, "total": total}));
        };
        let record = crate::image::pull(&store, &config.registries, &reference, &progress)?;
        Ok(ImageView::from(&record))
    });
    let Some(framing) = framing else {
        drop(progress_rx);
        let view = task.await.map_err(|e| Problem::from(Error::Protocol(format!("a worker thread failed: {e}"))))?.map_err(Problem::from)?;
        return Ok(Json(view).into_response());
    };
    let stream = futures_util::stream::unfold((Some(progress_rx), Some(task)), move |(rx, task)| async move {
        if let Some(mut rx) = rx {
            if let Some(event) = rx.recv().await {
                return Some((Ok::<_, std::io::Error>(framing.frame(&event)), (Some(rx), task)));
            }
        }
        let result = task?.await;
        let last = match result {
            Ok(Ok(view)) => json!({"type": "pulled", "image": view}),
            Ok(Err(e)) => problem_event(&Problem::from(e)),
            Err(e) => problem_event(&Problem::from(Error::Protocol(format!("a worker thread failed: {e}")))),
        };
        Some((Ok(framing.frame(&last)), (None, None)))
    });
    Ok(framing.response(Body::from_stream(stream)))
}

fn problem_event(p: &Problem) -> serde_json::Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["type"] = json!("error");
    v
}

/// The applied plugins and what each implements.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", responses((status = 200, body = Vec<PluginView>)))]
async fn list_plugins(State(state): St) -> ApiResult<Json<Vec<PluginView>>> {
    Ok(Json(with_orchestrator(&state, |o| o.plugin_views()).await?))
}

/// `POST /v1/plugins/{name}/eval`: a flow (`connect`) or a DNS query (`dns`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvalBody {
    /// A new flow to `IP:PORT` (an address: the server resolves no names for clients).
    connect: Option<String>,
    /// The name the sandbox used for that address (its DNS answer or TLS SNI).
    domain: Option<String>,
    /// `tcp` (default) or `udp`.
    protocol: Option<String>,
    /// A DNS query for this name instead of a flow.
    dns: Option<String>,
    /// The DNS record type (default `A`).
    #[serde(rename = "type")]
    record_type: Option<String>,
    /// Decide as this applied sandbox (its name, labels, image); default: an anonymous one.
    sandbox: Option<String>,
}

fn question(body: EvalBody) -> ApiResult<(Question, Option<String>)> {
    let q = match (body.connect, body.dns) {
        (Some(_), Some(_)) => return Err(Problem::bad_request("give connect or dns, not both")),
        (None, None) => return Err(Problem::bad_request("give connect (\"IP:PORT\") or dns (\"NAME\")")),
        (None, Some(name)) => {
            if name.is_empty() || name.len() > 253 {
                return Err(Problem::bad_request("dns: a name of 1 to 253 characters"));
            }
            Question::Dns { name, record_type: body.record_type.unwrap_or_else(|| "A".into()).to_ascii_uppercase() }
        }
        (Some(target), None) => {
            let addr: std::net::SocketAddr = target.parse().map_err(|_| Problem::bad_request(format!("connect: {target:?} is not IP:PORT (e.g. 93.184.216.34:443 or [2001:db8::1]:443); pass the name as domain")))?;
            let protocol = match body.protocol.as_deref().unwrap_or("tcp") {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => return Err(Problem::bad_request(format!("protocol: {other:?} is not tcp or udp"))),
            };
            Question::Flow { protocol, ip: addr.ip(), port: addr.port(), domain: body.domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase()) }
        }
    };
    Ok((q, body.sandbox))
}

/// Asks the applied network-policy plugin `name` about a flow or a DNS query (uncached).
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/eval",
    tag = "plugins",
    params(("name" = String, Path, description = "An applied network-policy plugin")),
    request_body = EvalBody,
    responses(
        (status = 200, description = "The plugin's decision", body = Verdict),
        (status = 404, description = "No such plugin (or sandbox)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The plugin is not a network policy", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn eval(State(state): St, Path(name): Path<String>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Verdict>> {
    let (q, sandbox) = question(json_body(&bytes(body)?)?)?;
    Ok(Json(with_orchestrator(&state, move |o| Ok(Evaluator::new(o, &name, sandbox.as_deref())?.ask(&q))).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> EvalBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_evaluation_names_an_address_and_one_question() {
        let (q, _) = question(body(json!({"connect": "192.0.2.1:443", "domain": "Example.COM."}))).unwrap();
        assert_eq!(q, Question::Flow { protocol: Protocol::Tcp, ip: "192.0.2.1".parse().unwrap(), port: 443, domain: Some("example.com".into()) });
        let (q, s) = question(body(json!({"dns": "evil.test", "type": "aaaa", "sandbox": "box"}))).unwrap();
        assert_eq!((q, s.as_deref()), (Question::Dns { name: "evil.test".into(), record_type: "AAAA".into() }, Some("box")));
        assert_eq!(question(body(json!({"connect": "example.com:443"}))).unwrap_err().status, 400, "no name resolution for clients");
        assert_eq!(question(body(json!({"connect": "192.0.2.1:443", "dns": "x"}))).unwrap_err().status, 400);
        assert_eq!(question(body(json!({}))).unwrap_err().status, 400);
        assert_eq!(question(body(json!({"connect": "192.0.2.1:53", "protocol": "icmp"}))).unwrap_err().status, 400);
    }
}
