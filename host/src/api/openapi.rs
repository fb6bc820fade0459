//! The API's OpenAPI 3.1 document, generated from the handlers' own annotations and the
//! types they return (utoipa), served at `/openapi.json` and committed as
//! `docs/openapi.json` so that a change to the API shows in review.
//!
//! Invariants:
//! - The document and the router come from one [`utoipa_axum::router::OpenApiRouter`]: a
//!   route cannot be served without being described, nor described without being served.
//! - Every operation but `/health` requires the bearer token, and every
//!   operation documents the problem+json answer errors take.
//! - The committed file equals what this build generates (a unit test fails otherwise and
//!   says how to regenerate it: `just openapi`).

use super::problem::{Diagnostic, Problem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _, ToSchema};

/// Routes that answer without the token (the document itself needs it, as every other route).
pub const PUBLIC_PATHS: [&str; 1] = ["/health"];

/// A resource manifest as the routes that take one read it: the same document as a YAML
/// file's (`apiVersion`, `kind`, `metadata`, `spec`), as JSON or YAML. The spec's fields are
/// those of README.md's "Resources" section; they are validated as a file's are, and every
/// problem comes back located (line, column, field) in a 422.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": "box"}, "spec": {"image": "docker.io/library/alpine:3.20", "memory": "256Mi"}}))]
pub struct Manifest {
    /// `orchestrator/v1`.
    #[schema(rename = "apiVersion")]
    api_version: String,
    /// `Sandbox`, `Volume` or `Plugin`.
    kind: String,
    metadata: Metadata,
    /// The kind's fields (README.md, "Resources").
    spec: serde_json::Map<String, serde_json::Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Metadata {
    /// Lower-case letters, digits and '-', at most 63.
    name: String,
    #[schema(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "orchestrator",
        description = "Sandboxes (namespace sandboxes and microVMs) driven over HTTP: the native API under /v1, OpenSandbox-compatible routes at the root. Errors are application/problem+json (RFC 9457) whose `kind` is the library's error kind. See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem, Diagnostic, Manifest, Metadata)),
    modifiers(&Security),
    tags(
        (name = "sandboxes", description = "Sandboxes: create, list, stop, start, remove, apply"),
        (name = "exec", description = "Commands: collected, streamed (NDJSON, SSE) and interactive (WebSocket)"),
        (name = "files", description = "A sandbox's files"),
        (name = "observe", description = "Logs, events and warm pools"),
        (name = "images", description = "The local image store"),
        (name = "plugins", description = "Applied plugins and network-policy decisions"),
        (name = "volumes", description = "Named volumes: a filesystem each, its size the quota"),
        (name = "opensandbox", description = "Routes compatible with OpenSandbox's server"),
    )
)]
struct Base;

/// The bearer token on every operation but the public ones, and the problem answer on all.
struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("The token in DATA/api.token, --token-file or ORCHESTRATOR_API_TOKEN")).build()));
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content("application/problem+json", ContentBuilder::new().schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem")))).build())
                .build()
        };
        for (path, item) in api.paths.paths.iter_mut() {
            let public = PUBLIC_PATHS.contains(&path.as_str());
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten() {
                if !public {
                    op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                    op.responses.responses.entry("401".into()).or_insert_with(|| RefOr::T(problem("No token, or a wrong one")));
                }
                op.responses.responses.entry("default".into()).or_insert_with(|| RefOr::T(problem("A problem: `kind` says which (the library's error kinds, or the API's own)")));
            }
        }
    }
}

static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "observe", responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)))]
async fn served() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT.get_or_init(document_json).as_str())
}

/// The API's routes and their description, before state is attached.
pub fn router() -> utoipa_axum::router::OpenApiRouter<std::sync::Arc<super::ApiState>> {
    utoipa_axum::router::OpenApiRouter::with_openapi(Base::openapi())
        .merge(super::sandboxes::routes())
        .merge(super::files::routes())
        .merge(super::interactive::routes())
        .merge(super::catalog::routes())
        .merge(super::volumes::routes())
        .merge(super::compat::routes())
        .merge(super::metrics::routes())
        .routes(utoipa_axum::routes!(served))
}

/// The whole document, as `/openapi.json` serves it.
pub fn document() -> OpenApi {
    let (_, mut api) = router().split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    Security.modify(&mut api);
    api
}

/// The document as committed: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut text = document().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/openapi.json is what this build serves; `UPDATE_OPENAPI=1` (`just openapi`)
    /// rewrites it.
    #[test]
    fn the_committed_openapi_document_is_what_the_server_serves() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == generated, "docs/openapi.json is out of date with the API's routes and types: run `just openapi` and commit it");
        let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for route in ["/v1/sandboxes", "/v1/sandboxes/{name}/exec", "/v1/sandboxes/{name}/exec/ws", "/v1/images", "/v1/plugins", "/run", "/sessions/{id}/run"] {
            assert!(doc["paths"][route].is_object(), "{route} is described");
        }
        assert!(doc["paths"]["/health"]["get"]["security"].is_null(), "/health needs no token");
        // Every operation declares the parameters its path template names.
        for (path, item) in doc["paths"].as_object().unwrap() {
            let named: Vec<&str> = path.split('{').skip(1).filter_map(|s| s.split('}').next()).collect();
            for (method, op) in item.as_object().unwrap() {
                let declared: Vec<&str> = op["parameters"].as_array().map(|ps| ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect()).unwrap_or_default();
                assert_eq!(declared, named, "{method} {path}: the path parameters it declares");
            }
        }
        assert_eq!(doc["paths"]["/v1/sandboxes"]["get"]["security"][0]["bearer"], serde_json::json!([]));
    }
}
