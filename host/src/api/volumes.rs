//! Named volumes over HTTP: `GET/POST /v1/volumes`, `GET/DELETE /v1/volumes/{name}`. They are
//! what `volume ls|create|inspect|rm` do, as the same views; a volume that declared sandboxes
//! mount is deleted only with `?force=true` (409 otherwise, naming them).

use super::problem::{ApiResult, Problem};
use super::sandboxes::{bytes, json_body, with_orchestrator};
use super::{ApiState, API_SOURCE};
use crate::error::Error;
use crate::spec::VolumeSpec;
use crate::view::VolumeView;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::body::Bytes;
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

type St = State<Arc<ApiState>>;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, remove))
}

/// `POST /v1/volumes`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    /// Its quota: `1Gi`, `512Mi`, or bytes. Default 1Gi.
    #[serde(default)]
    pub size: Option<String>,
    /// Several sandboxes may mount it writable at once.
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Delete it even though declared sandboxes mount it (running ones keep their mount until
    /// they end).
    #[serde(default)]
    pub force: bool,
}

fn not_found(name: &str) -> Error {
    Error::NotFound { what: "volume", name: name.to_string() }
}

async fn view(state: &ApiState, name: String) -> ApiResult<VolumeView> {
    with_orchestrator(state, move |o| o.volume_views()?.into_iter().find(|v| v.name == name).ok_or_else(|| not_found(&name))).await
}

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", responses((status = 200, description = "Every volume, with its size, use on the host's disk and users", body = Vec<VolumeView>)))]
async fn list(State(state): St) -> ApiResult<Json<Vec<VolumeView>>> {
    Ok(Json(with_orchestrator(&state, |o| o.volume_views()).await?))
}

#[utoipa::path(
    post,
    path = "/v1/volumes",
    tag = "volumes",
    request_body = CreateVolume,
    responses(
        (status = 201, description = "Created, its disk made", body = VolumeView),
        (status = 409, description = "A volume of that name exists", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "A bad name or size", body = Problem, content_type = "application/problem+json")
    )
)]
async fn create(State(state): St, body: Result<Bytes, BytesRejection>) -> ApiResult<(StatusCode, Json<VolumeView>)> {
    let req: CreateVolume = json_body(&bytes(body)?)?;
    let size = req.size.as_deref().map(crate::spec::quantity::parse_bytes).transpose().map_err(|e| Problem::from(Error::InvalidArgument(format!("size: {e}"))))?;
    let name = req.name.clone();
    with_orchestrator(&state, move |o| {
        let _object = o.lock_object(&name)?;
        o.create_volume(&name, VolumeSpec { size, shared: req.shared }, API_SOURCE, "HTTP API").map_err(Error::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view(&state, req.name).await?)))
}

#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path, description = "The volume")), responses((status = 200, body = VolumeView), (status = 404, description = "No such volume", body = Problem, content_type = "application/problem+json")))]
async fn show(State(state): St, Path(name): Path<String>) -> ApiResult<Json<VolumeView>> {
    Ok(Json(view(&state, name).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/volumes/{name}",
    tag = "volumes",
    params(("name" = String, Path, description = "The volume"), RemoveQuery),
    responses(
        (status = 204, description = "Deleted with its data"),
        (status = 404, description = "No such volume", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Declared sandboxes mount it (they are named)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn remove(State(state): St, Path(name): Path<String>, Query(q): Query<RemoveQuery>) -> ApiResult<StatusCode> {
    with_orchestrator(&state, move |o| {
        let _object = o.lock_object(&name)?;
        o.delete_volume(&name, q.force).map_err(Error::from)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
