//! The MCP server (Model Context Protocol, on the official Rust SDK, rmcp): tools an AI agent
//! calls to make a sandbox, run commands and code in it, read, write and list its files, and
//! remove it. `orchestrator mcp` serves it on stdio; `serve` also at `/mcp` (streamable HTTP,
//! behind the API's token). Each tool's input schema is generated from its argument type.
//!
//! An agent is an untrusted client like any other: it names no host path unless the operator
//! allowed a root, every command has a time bound, output is bounded, and it removes only the
//! sandboxes the MCP server made (source `mcp`).

use crate::api::hostpaths;
use crate::config::Config;
use crate::sandbox::{ExecOptions, Sandbox};
use crate::spec::{Isolation, Kind, NetworkPreset};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Content, Implementation, ServerCapabilities, ServerInfo};
use rmcp::schemars::JsonSchema;
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The source of sandboxes the MCP tools make.
pub const MCP_SOURCE: &str = "mcp";
/// What a tool returns of a command's stdout and stderr, each.
const MAX_OUTPUT: usize = 1 << 20;

/// What the tools work with.
#[derive(Debug, Clone)]
pub struct McpOptions {
    pub default_image: String,
    /// The host directory clients may name paths in (None: none).
    pub allow_host_paths: Option<PathBuf>,
    /// Agents' sandboxes may have the `allow-all` network.
    pub allow_client_network: bool,
    /// A command's run time when the call sets none, and the most a call may ask for.
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

/// The MCP server's tools over one data directory.
#[derive(Debug, Clone)]
pub struct Tools {
    config: Config,
    options: McpOptions,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CreateArgs {
    /// The sandbox's name (lower-case letters, digits, '-'); one is made up when absent.
    pub name: Option<String>,
    /// An OCI image reference, e.g. `python:3.12-slim`; the server's default when absent.
    pub image: Option<String>,
    /// Memory bound in MiB.
    pub memory_mib: Option<u64>,
    /// CPUs (fractions allowed).
    pub cpus: Option<f64>,
    /// Environment variables of every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `namespace`, `microvm` or `auto` (default).
    pub isolation: Option<String>,
    /// `public-only` (default), `none` or `allow-all`.
    pub network: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct RunArgs {
    pub sandbox: String,
    /// The program and its arguments, e.g. ["ls", "-la", "/"] (no shell: use ["sh", "-c", "..."]).
    pub command: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Killed after this many seconds.
    pub timeout_secs: Option<u64>,
    /// Text for the command's standard input.
    pub stdin: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CodeArgs {
    pub sandbox: String,
    /// `python`, `node` or `sh`.
    pub language: String,
    pub code: String,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct PathArgs {
    pub sandbox: String,
    /// An absolute path inside the sandbox.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct WriteArgs {
    pub sandbox: String,
    /// An absolute path inside the sandbox; missing parent directories are made.
    pub path: String,
    pub content: String,
    /// `content` is base64 (for bytes that are not text).
    #[serde(default)]
    pub base64: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SandboxArgs {
    pub sandbox: String,
}

fn failed(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![Content::text(message.into())])
}

fn text(message: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![Content::text(message.into())])
}

fn json(value: serde_json::Value) -> CallToolResult {
    text(serde_json::to_string_pretty(&value).unwrap_or_default())
}

/// A tool's failure is the tool's answer (`isError`), with the library's words: the agent
/// reads it and decides.
type ToolResult = Result<CallToolResult, ErrorData>;

fn absolute(path: &str) -> Result<String, CallToolResult> {
    if path.starts_with('/') && !path.contains('\0') {
        Ok(path.to_string())
    } else {
        Err(failed(format!("{path:?}: give an absolute path inside the sandbox, e.g. /tmp/notes.txt")))
    }
}

impl Tools {
    pub fn new(config: Config, options: McpOptions) -> Tools {
        Tools { config, options }
    }

    async fn sandbox(&self, name: &str) -> Result<Sandbox, CallToolResult> {
        Sandbox::get_in(self.config.clone(), name).await.map_err(|e| failed(e.to_string()))
    }

    async fn run(&self, sandbox: &Sandbox, mut options: ExecOptions, stdin: Option<String>, timeout_secs: Option<u64>) -> ToolResult {
        options.timeout = Some(timeout_secs.map(Duration::from_secs).unwrap_or(self.options.default_timeout).min(self.options.max_timeout));
        let started = crate::api::exec::start(sandbox, options, stdin.map(String::into_bytes)).await;
        let out = match started {
            Ok(handle) => crate::api::exec::collect(handle, MAX_OUTPUT).await,
            Err(p) => Err(p),
        };
        let out = match out {
            Ok(out) => out,
            Err(p) => return Ok(failed(p.detail)),
        };
        Ok(json(serde_json::json!({
            "exit_code": out.status.code,
            "signal": out.status.signal,
            "timed_out": out.status.timed_out,
            "stdout": String::from_utf8_lossy(&out.stdout),
            "stderr": String::from_utf8_lossy(&out.stderr),
            "truncated": out.truncated,
        })))
    }
}

#[tool_router]
impl Tools {
    #[tool(description = "Create and start a sandbox (an isolated Linux machine). Returns its name; pass it to the other tools.")]
    async fn create_sandbox(&self, Parameters(a): Parameters<CreateArgs>) -> ToolResult {
        let name = a.name.unwrap_or_else(|| format!("agent-{}", crate::ids::random_hex(4)));
        let mut b = Sandbox::builder(&name).config(self.config.clone()).image(a.image.unwrap_or_else(|| self.options.default_image.clone()));
        if let Some(m) = a.memory_mib {
            b = b.memory(m);
        }
        if let Some(c) = a.cpus {
            b = b.cpus(c);
        }
        for (k, v) in a.env {
            b = b.env(k, v);
        }
        match a.isolation.as_deref() {
            None | Some("auto") => {}
            Some("namespace") => b = b.isolation(Isolation::Namespace),
            Some("microvm") => b = b.isolation(Isolation::Microvm),
            Some(other) => return Ok(failed(format!("isolation {other:?}: namespace, microvm or auto"))),
        }
        match a.network.as_deref() {
            None | Some("public-only") => {}
            Some("none") => b = b.network(NetworkPreset::None),
            Some("allow-all") => b = b.network(NetworkPreset::AllowAll),
            Some(other) => return Ok(failed(format!("network {other:?}: public-only, none or allow-all"))),
        }
        let resource = match b.resource() {
            Ok(r) => r,
            Err(e) => return Ok(failed(e.to_string())),
        };
        if let Err(p) = hostpaths::check_built(&resource, self.options.allow_host_paths.as_deref()).and_then(|()| crate::api::reach::check(&resource, self.options.allow_client_network)) {
            return Ok(failed(p.detail));
        }
        match crate::sandbox::create_resource(self.config.clone(), resource, MCP_SOURCE, "MCP".into()).await {
            Ok(s) => Ok(json(serde_json::json!({"name": s.name(), "status": "Running"}))),
            Err(e) => Ok(failed(e.to_string())),
        }
    }

    #[tool(description = "Run a command in a sandbox and return its exit code, stdout and stderr.")]
    async fn run_command(&self, Parameters(a): Parameters<RunArgs>) -> ToolResult {
        let sandbox = match self.sandbox(&a.sandbox).await {
            Ok(s) => s,
            Err(e) => return Ok(e),
        };
        let mut argv = a.command.into_iter();
        let Some(program) = argv.next().filter(|p| !p.is_empty()) else { return Ok(failed("the command is empty")) };
        let mut options = ExecOptions::new(program).args(argv);
        options.cwd = a.cwd;
        options.env = a.env;
        self.run(&sandbox, options, a.stdin, a.timeout_secs).await
    }

    #[tool(description = "Run a snippet of code (python, node or sh) in a sandbox and return its output.")]
    async fn run_code(&self, Parameters(a): Parameters<CodeArgs>) -> ToolResult {
        let (interpreter, ext) = match a.language.as_str() {
            "python" | "python3" => ("python3", "py"),
            "node" | "javascript" | "js" => ("node", "js"),
            "sh" | "shell" | "bash" => ("sh", "sh"),
            other => return Ok(failed(format!("language {other:?}: python, node or sh"))),
        };
        let sandbox = match self.sandbox(&a.sandbox).await {
            Ok(s) => s,
            Err(e) => return Ok(e),
        };
        let path = format!("/tmp/mcp-{}.{ext}", crate::ids::random_hex(6));
        if let Err(e) = sandbox.fs().write(path.clone(), a.code.into_bytes()).await {
            return Ok(failed(e.to_string()));
        }
        let result = self.run(&sandbox, ExecOptions::new(interpreter).args([path.clone()]), None, a.timeout_secs).await;
        let _ = sandbox.fs().remove(path).await;
        result
    }

    #[tool(description = "Read a file of a sandbox (text; bytes that are not UTF-8 come back base64).")]
    async fn read_file(&self, Parameters(a): Parameters<PathArgs>) -> ToolResult {
        let path = match absolute(&a.path) {
            Ok(p) => p,
            Err(e) => return Ok(e),
        };
        let sandbox = match self.sandbox(&a.sandbox).await {
            Ok(s) => s,
            Err(e) => return Ok(e),
        };
        let fs = sandbox.fs();
        match fs.stat(path.clone()).await {
            Ok(st) if st.size > MAX_OUTPUT as u64 => return Ok(failed(format!("{path} is {} bytes; read at most {MAX_OUTPUT} (use run_command with head or tail)", st.size))),
            Ok(_) => {}
            Err(e) => return Ok(failed(e.to_string())),
        }
        match fs.read(path).await {
            Ok(data) => Ok(match String::from_utf8(data) {
                Ok(t) => text(t),
                Err(e) => {
                    use base64::Engine;
                    text(format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(e.into_bytes())))
                }
            }),
            Err(e) => Ok(failed(e.to_string())),
        }
    }

    #[tool(description = "Write a file in a sandbox (parents are made).")]
    async fn write_file(&self, Parameters(a): Parameters<WriteArgs>) -> ToolResult {
        let path = match absolute(&a.path) {
            Ok(p) => p,
            Err(e) => return Ok(e),
        };
        let data = if a.base64 {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(&a.content) {
                Ok(d) => d,
                Err(e) => return Ok(failed(format!("content is not base64: {e}"))),
            }
        } else {
            a.content.into_bytes()
        };
        let sandbox = match self.sandbox(&a.sandbox).await {
            Ok(s) => s,
            Err(e) => return Ok(e),
        };
        let fs = sandbox.fs();
        if let Some((parent, _)) = path.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
            if let Err(e) = fs.mkdir(parent.to_string()).await {
                return Ok(failed(e.to_string()));
            }
        }
        let n = data.len();
        match fs.write(path.clone(), data).await {
            Ok(()) => Ok(text(format!("wrote {n} bytes to {path}"))),
            Err(e) => Ok(failed(e.to_string())),
        }
    }

    #[tool(description = "List a directory of a sandbox: names, kinds and sizes.")]
    async fn list_files(&self, Parameters(a): Parameters<PathArgs>) -> ToolResult {
        let path = match absolute(&a.path) {
            Ok(p) => p,
            Err(e) => return Ok(e),
        };
        let sandbox = match self.sandbox(&a.sandbox).await {
            Ok(s) => s,
            Err(e) => return Ok(e),
        };
        let fs = sandbox.fs();
        let mut entries = match fs.list(path.clone()).await {
            Ok(e) => e,
            Err(e) => return Ok(failed(e.to_string())),
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::new();
        for e in entries {
            let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
            let size = fs.stat(child).await.map(|s| s.size).unwrap_or(0);
            let kind = match e.kind {
                guest_agent::protocol::FileKind::File => "file",
                guest_agent::protocol::FileKind::Dir => "dir",
                guest_agent::protocol::FileKind::Symlink => "symlink",
                guest_agent::protocol::FileKind::Other => "other",
            };
            out.push(serde_json::json!({"name": e.name, "kind": kind, "size": size}));
        }
        Ok(json(serde_json::Value::Array(out)))
    }

    #[tool(description = "List the sandboxes: names, status, image.")]
    async fn list_sandboxes(&self) -> ToolResult {
        let config = self.config.clone();
        let views = tokio::task::spawn_blocking(move || crate::reconcile::Orchestrator::open(config).and_then(|mut o| o.list())).await;
        match views {
            Ok(Ok(v)) => Ok(json(serde_json::Value::Array(
                v.into_iter()
                    .filter(|v| v.kind == "Sandbox")
                    .map(|v| serde_json::json!({"name": v.name, "status": v.status, "image": v.image, "source": v.source}))
                    .collect(),
            ))),
            Ok(Err(e)) => Ok(failed(e.to_string())),
            Err(e) => Ok(failed(e.to_string())),
        }
    }

    #[tool(description = "Delete a sandbox this MCP server created, with everything in it.")]
    async fn delete_sandbox(&self, Parameters(a): Parameters<SandboxArgs>) -> ToolResult {
        let (config, name) = (self.config.clone(), a.sandbox.clone());
        let source = tokio::task::spawn_blocking(move || -> crate::Result<Option<String>> {
            let orch = crate::reconcile::Orchestrator::open(config)?;
            Ok(orch.store.resource(Kind::Sandbox, &name)?.map(|r| r.source))
        })
        .await;
        match source {
            Ok(Ok(Some(s))) if s == MCP_SOURCE => {}
            Ok(Ok(Some(s))) => return Ok(failed(format!("sandbox {:?} belongs to {s}; this server deletes only the sandboxes it created", a.sandbox))),
            Ok(Ok(None)) => return Ok(failed(format!("no sandbox named {:?}", a.sandbox))),
            Ok(Err(e)) => return Ok(failed(e.to_string())),
            Err(e) => return Ok(failed(e.to_string())),
        }
        let sandbox = match self.sandbox(&a.sandbox).await {
            Ok(s) => s,
            Err(e) => return Ok(e),
        };
        match sandbox.remove().await {
            Ok(()) => Ok(text(format!("deleted {}", a.sandbox))),
            Err(e) => Ok(failed(e.to_string())),
        }
    }
}

#[tool_handler]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerInfo {
        let mut info = ServerInfo::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("orchestrator", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "Sandboxes are isolated Linux machines. create_sandbox first, then run_command / run_code / read_file / write_file / list_files with its name; delete_sandbox when done.".into(),
        );
        info
    }
}

/// `orchestrator mcp`: the tools on standard input and output until the client goes.
pub fn serve_stdio(config: Config, options: McpOptions) -> crate::Result<()> {
    use rmcp::ServiceExt;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| crate::Error::io("starting the MCP server's runtime", e))?;
    runtime.block_on(async move {
        let service = Tools::new(config, options).serve(rmcp::transport::stdio()).await.map_err(|e| crate::Error::Protocol(format!("the MCP handshake failed: {e}")))?;
        service.waiting().await.map_err(|e| crate::Error::Protocol(format!("the MCP server stopped: {e}")))?;
        Ok(())
    })
}
