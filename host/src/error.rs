//! The library's one error type. Every public operation returns [`Error`]; its [`ErrorKind`]
//! is what a server maps to a status (404, 409, 422, 503, 504, ...) and what a program matches
//! on. The message is written for a person: what was wrong, where, and what to do.

use crate::client::ClientError;
use crate::image::ImageError;
use crate::reconcile::ReconcileError;
use crate::runtime::RuntimeError;
use crate::spec::SpecError;
use guest_agent::protocol::ErrorCode;
use serde::Serialize;
use std::time::Duration;

/// What went wrong, as a caller decides on it (an HTTP server maps it to a status).
///
/// ```no_run
/// # async fn demo() {
/// use orchestrator::{ErrorKind, Sandbox};
/// match Sandbox::get("web").await {
///     Ok(sandbox) => println!("{}", sandbox.name()),
///     Err(e) if e.kind() == ErrorKind::NotFound => println!("no sandbox web yet"),
///     Err(e) => eprintln!("error: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such sandbox, resource, image or path.
    NotFound,
    /// It exists already, another source manages it, or its state forbids the operation.
    Conflict,
    /// The spec (or a request) is invalid; the diagnostics say where.
    InvalidSpec,
    /// The image could not be found, pulled or unpacked.
    ImageUnavailable,
    /// This host cannot run the isolation asked for; the reason is the doctor's.
    IsolationUnavailable,
    /// The sandbox exists but is not running.
    NotRunning,
    /// The sandbox failed to start or died.
    SandboxFailed,
    /// A command could not be started inside the sandbox (not found, not executable).
    SpawnFailed,
    /// The sandbox refused a file operation.
    PermissionDenied,
    /// A request the sandbox cannot act on as given: a directory read as a file, a file
    /// listed as a directory, a malformed request.
    InvalidArgument,
    Timeout,
    /// Reading or writing the host's files, or the state database.
    Io,
    /// The sandbox's shim or agent answered something this version does not understand.
    Protocol,
}

/// The error of every public operation. Its text says what was wrong and what to do;
/// [`Error::kind`] says which kind it is; an invalid spec carries every located diagnostic.
///
/// ```no_run
/// # async fn demo() {
/// let err = orchestrator::Sandbox::builder("web").image("dir:/srv/rootfs").cpus(-1.0).create().await.unwrap_err();
/// assert_eq!(err.kind(), orchestrator::ErrorKind::InvalidSpec);
/// for d in err.diagnostics() {
///     eprintln!("{}: {}", d.field, d.message);
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no {what} named {name:?}")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// Every problem found, each located (file:line:column, field) with a hint where one helps.
    #[error("{}", render_diagnostics(.0))]
    InvalidSpec(Vec<SpecError>),
    #[error(transparent)]
    ImageUnavailable(ImageError),
    #[error("{isolation} isolation is not available on this host: {reason}")]
    IsolationUnavailable { isolation: &'static str, reason: String },
    #[error("sandbox {name:?} is not running ({status}); start it with `orchestrator start {name}`")]
    NotRunning { name: String, status: String },
    #[error("sandbox {name:?}: {reason}")]
    SandboxFailed { name: String, reason: String },
    #[error("{0}")]
    SpawnFailed(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("the state database: {0}")]
    State(String),
    #[error("{0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn render_diagnostics(errors: &[SpecError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!("{} errors:\n{}", many.len(), many.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::InvalidSpec(_) => ErrorKind::InvalidSpec,
            Error::ImageUnavailable(_) => ErrorKind::ImageUnavailable,
            Error::IsolationUnavailable { .. } => ErrorKind::IsolationUnavailable,
            Error::NotRunning { .. } => ErrorKind::NotRunning,
            Error::SandboxFailed { .. } => ErrorKind::SandboxFailed,
            Error::SpawnFailed(_) => ErrorKind::SpawnFailed,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Io { .. } | Error::State(_) => ErrorKind::Io,
            Error::Protocol(_) => ErrorKind::Protocol,
        }
    }

    /// The located problems of an invalid spec (empty for every other kind).
    pub fn diagnostics(&self) -> &[SpecError] {
        match self {
            Error::InvalidSpec(d) => d,
            _ => &[],
        }
    }

    pub(crate) fn no_sandbox(name: &str) -> Error {
        Error::NotFound { what: "sandbox", name: name.to_string() }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    pub(crate) fn sandbox(name: &str, e: ClientError) -> Error {
        match e {
            ClientError::Connect { .. } | ClientError::Frame(_) => {
                Error::SandboxFailed { name: name.to_string(), reason: format!("lost contact with its shim: {e}") }
            }
            other => Error::from(other),
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        match e {
            ClientError::Remote { code, message } => match code {
                ErrorCode::NotFound => Error::NotFound { what: "path", name: message },
                ErrorCode::AlreadyExists => Error::Conflict(message),
                ErrorCode::PermissionDenied => Error::PermissionDenied(message),
                ErrorCode::SpawnFailed => Error::SpawnFailed(message),
                ErrorCode::BadRequest | ErrorCode::TooLarge | ErrorCode::Unsupported => Error::InvalidArgument(message),
                ErrorCode::Io => Error::Io { context: "inside the sandbox".into(), source: std::io::Error::other(message) },
                ErrorCode::VersionMismatch | ErrorCode::Internal => Error::Protocol(message),
            },
            ClientError::Local(source) => Error::Io { context: "on the host".into(), source },
            ClientError::Connect { .. } | ClientError::Frame(_) | ClientError::Unexpected(_) => Error::Protocol(e.to_string()),
        }
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Error {
        match e {
            RuntimeError::Unavailable(isolation, reason) => Error::IsolationUnavailable { isolation, reason },
            RuntimeError::Image(e) => Error::ImageUnavailable(e),
            RuntimeError::Io { path, source } => Error::Io { context: path, source },
            other => Error::SandboxFailed { name: String::new(), reason: other.to_string() },
        }
    }
}

impl From<ReconcileError> for Error {
    fn from(e: ReconcileError) -> Error {
        match e {
            ReconcileError::NotFound(name) => Error::NotFound { what: "sandbox", name },
            ReconcileError::Conflict(message) => Error::Conflict(message),
            ReconcileError::Invalid(message) => Error::InvalidArgument(message),
            ReconcileError::NoVolume(name) => Error::NotFound { what: "volume", name },
            ReconcileError::Volume(crate::volume::VolumeError::TooLarge { name, message }) => Error::InvalidArgument(format!("volume {name:?}: {message}")),
            ReconcileError::Volume(e) => Error::Io { context: "the volume's disk".into(), source: std::io::Error::other(e.to_string()) },
            ReconcileError::Start { name, error } => match Error::from(error) {
                Error::SandboxFailed { reason, .. } => Error::SandboxFailed { name, reason },
                typed => typed,
            },
            ReconcileError::Sandbox { name, message } => Error::SandboxFailed { name, reason: message },
            ReconcileError::DataDir { path, source } => Error::Io { context: format!("the data directory {path}"), source },
            ReconcileError::Store(e) => Error::State(e.to_string()),
            ReconcileError::Sqlite(e) => Error::State(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Error {
        Error::State(e.to_string())
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::State(e.to_string())
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Error {
        Error::ImageUnavailable(e)
    }
}

impl From<Vec<SpecError>> for Error {
    fn from(errors: Vec<SpecError>) -> Error {
        Error::InvalidSpec(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_failure_keeps_its_cause() {
        let e = Error::from(ReconcileError::Start {
            name: "web".into(),
            error: RuntimeError::Unavailable("microvm", "no /dev/kvm".into()),
        });
        assert_eq!(e.kind(), ErrorKind::IsolationUnavailable);
        assert!(e.to_string().contains("no /dev/kvm"), "{e}");
        let e = Error::from(ReconcileError::Start { name: "web".into(), error: RuntimeError::Start("boom".into()) });
        assert_eq!(e.kind(), ErrorKind::SandboxFailed);
        assert_eq!(e.to_string(), "sandbox \"web\": boom");
    }

    #[test]
    fn the_agents_codes_become_kinds() {
        let remote = |code| Error::from(ClientError::Remote { code, message: "m".into() }).kind();
        assert_eq!(remote(ErrorCode::NotFound), ErrorKind::NotFound);
        assert_eq!(remote(ErrorCode::AlreadyExists), ErrorKind::Conflict);
        assert_eq!(remote(ErrorCode::SpawnFailed), ErrorKind::SpawnFailed);
        assert_eq!(remote(ErrorCode::PermissionDenied), ErrorKind::PermissionDenied);
    }

    #[test]
    fn every_diagnostic_is_in_the_message() {
        let d = |line| SpecError { file: "a.yaml".into(), line, col: 3, field: "spec.cpus".into(), message: "bad".into(), hint: None };
        let e = Error::InvalidSpec(vec![d(1), d(7)]);
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        let text = e.to_string();
        assert!(text.contains("a.yaml:1:3") && text.contains("a.yaml:7:3"), "{text}");
        assert_eq!(e.diagnostics().len(), 2);
    }
}
