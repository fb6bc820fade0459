//! Errors as RFC 9457 `application/problem+json`: the library's typed [`ErrorKind`] becomes the
//! status and the `kind` member, an invalid spec carries every located diagnostic, and nothing
//! of the server's own state (host paths of its data directory, tokens) is added beyond what
//! the library's message says.

use crate::error::{Error, ErrorKind};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One located problem of a spec (file:line:column, field, message, hint).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A problem response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The library's error kind (`not-found`, `conflict`, `invalid-spec`, ...) or the API's own
    /// (`unauthorized`, `too-large`, `too-many-requests`, `bad-request`).
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Diagnostic>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("urn:orchestrator:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            kind: kind.to_string(),
            errors: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required (Authorization: Bearer TOKEN)")
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "host-path-forbidden", detail)
    }

    pub fn too_many(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", detail)
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec", detail)
    }
}

/// The status a library error kind answers with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::NotRunning => StatusCode::CONFLICT,
        ErrorKind::InvalidSpec | ErrorKind::ImageUnavailable | ErrorKind::SpawnFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::IsolationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Protocol => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        let kind = e.kind();
        let name = serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "internal".into());
        let mut p = Problem::new(status_of(kind), &name, e.to_string());
        p.errors = e
            .diagnostics()
            .iter()
            .map(|d| Diagnostic { line: d.line, column: d.col, field: d.field.clone(), message: d.message.clone(), hint: d.hint.clone() })
            .collect();
        if !p.errors.is_empty() {
            p.detail = format!("{} problem(s) in the request body", p.errors.len());
        }
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = std::result::Result<T, Problem>;
