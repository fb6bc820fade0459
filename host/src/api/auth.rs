//! The API's bearer token: where it comes from (`ORCHESTRATOR_API_TOKEN`, `--token-file`, or
//! `DATA/api.token`, generated 0600 on first start), and the check every route but `/health`
//! passes. Tokens are compared as SHA-256 digests in constant time, so neither a token's bytes
//! nor its length leak through timing; a failure says only that a valid token is required.

use super::problem::Problem;
use super::ApiState;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// Shorter tokens are refused: a token is all that stands between a client and root.
pub const MIN_TOKEN_LEN: usize = 16;

/// The token a server uses.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    pub fn new(text: &str) -> Result<Token, String> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!("the API token must be at least {MIN_TOKEN_LEN} characters"));
        }
        Ok(Token { digest: Sha256::digest(text.as_bytes()).into() })
    }

    /// Whether `given` is this token, in time independent of both.
    pub fn matches(&self, given: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        d.iter().zip(self.digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// The token from the environment, a file, or `DATA/api.token` (created with a fresh random
/// token, 0600, when it does not exist). Returns the token and where it came from.
pub fn load(env: Option<String>, file: Option<&Path>, data_dir: &Path) -> Result<(Token, String), String> {
    if let Some(t) = env.filter(|t| !t.trim().is_empty()) {
        return Ok((Token::new(&t)?, "ORCHESTRATOR_API_TOKEN".into()));
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("reading the token file {}: {e}", f.display()))?;
        return Ok((Token::new(&text).map_err(|e| format!("{}: {e}", f.display()))?, f.display().to_string()));
    }
    let path = data_dir.join("api.token");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((Token::new(&text).map_err(|e| format!("{}: {e}", path.display()))?, path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = crate::ids::random_hex(32);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            f.write_all(format!("{text}\n").as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok((Token::new(&text)?, format!("{} (generated)", path.display())))
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// The middleware: `/health` is open, everything else needs the token (when the server has
/// one).
pub async fn require(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else { return next.run(req).await };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if token.matches(g.trim()) => next.run(req).await,
        _ => Problem::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly_and_short_ones_are_refused() {
        let t = Token::new("0123456789abcdef-secret").unwrap();
        assert!(t.matches("0123456789abcdef-secret"));
        assert!(!t.matches("0123456789abcdef-secreT"));
        assert!(!t.matches(""));
        assert!(Token::new("short").is_err());
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn a_token_is_generated_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_, from) = load(None, None, dir.path()).unwrap();
        assert!(from.ends_with("(generated)"));
        let path = dir.path().join("api.token");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let (again, from) = load(None, None, dir.path()).unwrap();
        assert!(!from.ends_with("(generated)"));
        assert!(again.matches(text.trim()));
        let (env, _) = load(Some("from-the-environment-1234".into()), None, dir.path()).unwrap();
        assert!(env.matches("from-the-environment-1234") && !env.matches(text.trim()));
    }
}
