//! The `orchestrator` command line: argument parsing (clap) and one function per command.
//! Errors carry their context (file, line, field, sandbox) up to `main`, which prints them.

mod files;
mod images;
mod interactive;
mod microvm;
mod output;
mod plugins;
mod serve;
mod top;
mod volumes;

use crate::reconcile::{Change, Orchestrator, ReconcileError};
use crate::spec::{self, Isolation, Kind, Manifest, Origin, Resource, ResourceSpec, RestartPolicy, SandboxSpec};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "orchestrator", version, about = "Run YAML-declared sandboxes, reconciled and isolated")]
pub struct Cli {
    /// Where state, images and sandboxes live.
    #[arg(long, global = true, env = "ORCHESTRATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Registries reached over plain HTTP (host:port, comma-separated); all others use TLS.
    #[arg(long, global = true, env = "ORCHESTRATOR_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum KindArg {
    #[value(alias = "sandbox")]
    Sandboxes,
    #[value(alias = "volume")]
    Volumes,
    #[value(alias = "plugin")]
    Plugins,
    All,
}

/// How a command's process is run (shared by `exec` and `run`).
#[derive(clap::Args, Debug)]
pub struct ProcessArgs {
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, update and prune resources to match a YAML file or directory.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Prune this source's resources even when it declares none.
        #[arg(long)]
        prune_empty: bool,
    },
    /// Show what `apply` would do (exit 0: nothing, 1: changes).
    Diff {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List resources: `get`, `get sandboxes|volumes|plugins|all`, `get [KIND] NAME`.
    Get {
        #[arg(num_args = 0..=2, value_name = "KIND|NAME")]
        args: Vec<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show one sandbox in detail, with its recent events.
    Describe { name: String },
    /// Recent events: every object's, or one sandbox's (network denials included).
    Events {
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// How many of the newest events to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Delete sandboxes (and other resources) by name, or everything a file or directory declares.
    Delete {
        names: Vec<String>,
        #[arg(short = 'f', long = "filename", conflicts_with = "names")]
        file: Option<PathBuf>,
    },
    /// Print the main process's output.
    Logs {
        name: String,
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// A microVM's console instead: what its kernel and guest agent printed.
        #[arg(long)]
        console: bool,
    },
    /// Run a command in a running sandbox.
    Exec {
        #[command(flatten)]
        process: ProcessArgs,
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command in a new sandbox and exit with its exit code (`-d`: leave it running).
    Run {
        /// Delete the sandbox when the command ends.
        #[arg(long, conflicts_with = "detach")]
        rm: bool,
        /// Start it and return at once, printing its name (it runs on without this command).
        #[arg(short = 'd', long, conflicts_with_all = ["interactive", "tty"])]
        detach: bool,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        process: ProcessArgs,
        #[arg(long, default_value = "auto")]
        isolation: String,
        #[arg(long)]
        memory: Option<String>,
        #[arg(long)]
        cpus: Option<f64>,
        /// The bound on the sandbox's writable layer (e.g. 1Gi; default 10Gi): writes past it
        /// fail with ENOSPC inside.
        #[arg(long)]
        disk: Option<String>,
        /// Where the writable layer lives: disk (default; kept across stop and start) or memory (a
        /// tmpfs charged to the sandbox's memory, nothing on the host's disk: faster to make
        /// and remove, for a sandbox used once, as with --rm). Namespace sandboxes.
        #[arg(long, value_name = "disk|memory")]
        writable_layer: Option<String>,
        /// MicroVMs: the guest kernel (a package directory, an image file, or a name in DATA/kernels).
        #[arg(long)]
        kernel: Option<String>,
        /// The network preset: public-only (default), none (loopback only) or allow-all.
        #[arg(long, value_name = "POLICY")]
        network: Option<String>,
        /// Publish a port: `[ADDR:]HOST:GUEST[/udp]` (ADDR defaults to 127.0.0.1); repeatable.
        #[arg(short = 'p', long = "publish", value_name = "[ADDR:]HOST:GUEST[/udp]")]
        publish: Vec<String>,
        /// Mount a named volume or a host path: `NAME:/path[:ro]`, `/host/path:/path[:ro]`
        /// (a host path starts with / or .); repeatable.
        #[arg(short = 'v', long = "volume", value_name = "SOURCE:PATH[:ro]")]
        volume: Vec<String>,
        /// Mount a fresh tmpfs: `PATH[:SIZE]` (default 64Mi); repeatable.
        #[arg(long, value_name = "PATH[:SIZE]")]
        tmpfs: Vec<String>,
        image: String,
        /// Without one, the image's Entrypoint and Cmd run (as with docker run).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List sandboxes: running ones, or every one with `-a` (also `ls`, `list`).
    #[command(visible_aliases = ["ls", "list"])]
    Ps {
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// A sandbox's view as JSON (what `get -o json` shows for it).
    Inspect { name: String },
    /// Running sandboxes' CPU, memory, tasks and network, refreshed every interval.
    Top {
        /// One table (after one interval: CPU is measured over it), then exit.
        #[arg(long)]
        once: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Seconds between samples.
        #[arg(short = 'n', long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Delete sandboxes; a running one only with `--force` (also `remove`).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Copy files or directory trees between the host and a sandbox: `cp ./app web:/srv/app`,
    /// `cp web:/var/log ./logs`; `-` is a tar stream: `cp web:/srv - | tar t`,
    /// `tar c app | cp - web:/srv` (unpacked into that directory).
    Cp { src: String, dest: String },
    /// A running sandbox's files: ls, stat, cat, mkdir, rm.
    Fs {
        #[command(subcommand)]
        command: files::FsCommand,
    },
    /// Stop sandboxes (they stay stopped until `start`).
    Stop { names: Vec<String> },
    /// Start stopped or exited sandboxes.
    Start { names: Vec<String> },
    /// Attach to a sandbox's main process (Ctrl-P Ctrl-Q detaches).
    Attach { name: String },
    /// Named volumes: create, ls, inspect, rm.
    Volume {
        #[command(subcommand)]
        command: volumes::VolumeCommand,
    },
    /// Manage images: pull, ls, inspect, rm, prune, import.
    Image {
        #[command(subcommand)]
        command: images::ImageCommand,
    },
    /// Plugins: check a component, evaluate a network policy, list applied plugins.
    Plugin {
        #[command(subcommand)]
        command: plugins::PluginCommand,
    },
    /// What isolation this host can run, and how to fix what it cannot.
    Doctor,
    /// The microVM guest kernel: fetch, show, initramfs.
    Kernel {
        #[command(subcommand)]
        command: microvm::KernelCommand,
    },
    /// An MCP server on standard input and output: tools for AI agents to create sandboxes,
    /// run commands and code, and read, write and list files.
    Mcp {
        /// The image of sandboxes a tool call names none for.
        #[arg(long, default_value = "127.0.0.1:5000/demo/busybox:1")]
        default_image: String,
        /// A host directory the agent may name paths in (dir: images); none without it.
        #[arg(long)]
        allow_host_paths: Option<PathBuf>,
        /// Let the agent's sandboxes have the allow-all network.
        #[arg(long)]
        allow_client_network: bool,
    },
    /// Serve the HTTP API (on DATA/api.sock; `--listen` adds TCP) and, with `--config DIR`,
    /// keep sandboxes in line with that directory (GitOps).
    Serve {
        /// A directory of YAML sources to follow; without it, the API only.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds between full resyncs (restart policies, drift).
        #[arg(long, default_value_t = 5)]
        resync: u64,
        #[arg(long)]
        prune_empty: bool,
        #[command(flatten)]
        api: serve::ApiFlags,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let mut config = crate::Config::from_env();
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if !cli.insecure_registry.is_empty() {
        config.registries.insecure = cli.insecure_registry.clone();
    }
    let data_dir = config.data_dir.clone();
    let open = || Orchestrator::open(config.clone()).with_context(|| format!("data directory {}", data_dir.display()));
    match cli.command {
        Command::Apply { file, dry_run, prune_empty } => apply(&mut open()?, &file, dry_run, prune_empty),
        Command::Diff { file } => diff(&open()?, &file),
        Command::Get { args, output } => {
            let (kind, name) = match args.as_slice() {
                [] => (None, None),
                [one] => match KindArg::from_str(one, true) {
                    Ok(k) => (Some(k), None),
                    Err(_) => (Some(KindArg::All), Some(one.clone())),
                },
                [k, n] => (Some(KindArg::from_str(k, true).map_err(|_| anyhow!("unknown kind {k:?}: use sandboxes, volumes, plugins or all"))?), Some(n.clone())),
                _ => bail!("get takes at most a kind and a name"),
            };
            output::get(&mut open()?, kind, name.as_deref(), output)
        }
        Command::Describe { name } => {
            let mut orch = open()?;
            let name = sandbox_name(&orch, &name)?;
            output::describe(&mut orch, &name)
        }
        Command::Events { name, output: format, limit } => output::events(&open()?, name.as_deref(), format, limit),
        Command::Delete { names, file } => delete(&mut open()?, names, file),
        Command::Logs { name, follow, tail, console } => {
            let orch = open()?;
            let name = sandbox_name(&orch, &name)?;
            output::logs(&orch, &name, follow, tail, console)
        }
        Command::Exec { process: p, user, timeout, name, command } => {
            // The front (front.rs) tried the sandbox's socket link already: ask the store.
            let opts = ExecFlags { interactive: p.interactive, tty: p.tty, env: p.env, workdir: p.workdir, user, timeout }.options()?;
            let orch = open()?;
            let name = sandbox_name(&orch, &name)?;
            interactive::exec(&orch, &name, command, opts)
        }
        Command::Run { rm, detach, name, process: p, isolation, memory, cpus, disk, writable_layer, kernel, network, publish, volume, tmpfs, image, command } => {
            let mut spec = SandboxSpec::new(
                spec_image(&image).map_err(|(msg, hint)| anyhow!("{msg}\n    hint: {hint}"))?,
            );
            spec.command = (!command.is_empty()).then_some(command);
            spec.restart_policy = RestartPolicy::Never;
            spec.tty = p.tty;
            spec.env = parse_env(&p.env)?;
            spec.workdir = p.workdir;
            spec.cpus = cpus;
            spec.memory = memory.map(|m| spec::quantity::parse_bytes(&m)).transpose().map_err(|e| anyhow!("--memory: {e}"))?;
            spec.disk = disk.map(|d| spec::quantity::parse_bytes(&d)).transpose().map_err(|e| anyhow!("--disk: {e}"))?;
            if let Some(d) = spec.disk {
                spec::check_disk(d).map_err(|e| anyhow!("--disk: {e}\n    hint: e.g. --disk 1Gi"))?;
            }
            spec.writable_layer = match writable_layer.as_deref() {
                None | Some("disk") => spec::WritableLayer::Disk,
                Some("memory") => spec::WritableLayer::Memory,
                Some(other) => bail!("--writable-layer: {other:?} is neither disk nor memory"),
            };
            if let Some(n) = network.as_deref() {
                spec.network.policy = match n {
                    "public-only" => spec::NetworkPreset::PublicOnly,
                    "none" => spec::NetworkPreset::None,
                    "allow-all" => spec::NetworkPreset::AllowAll,
                    other => bail!("--network {other}: not a policy\n    hint: public-only (the default), none or allow-all"),
                };
                if spec.network.policy == spec::NetworkPreset::None && !publish.is_empty() {
                    bail!("--network none has no link to publish ports on");
                }
            }
            for text in &publish {
                let m = spec::PortMapping::parse(text).map_err(|e| anyhow!("--publish {text}: {e}\n    hint: e.g. -p 8080:80, -p 0.0.0.0:5353:53/udp"))?;
                if spec.ports.iter().any(|o| o.host == m.host && o.protocol == m.protocol) {
                    bail!("--publish {text}: host port {} is published twice", m.host);
                }
                spec.ports.push(m);
            }
            spec.volumes = volumes::mounts_from_flags(&volume, &tmpfs)?;
            spec.isolation = match isolation.as_str() {
                "auto" => Isolation::Auto,
                "namespace" => Isolation::Namespace,
                "microvm" => Isolation::Microvm,
                other => bail!("--isolation {other:?}: use auto, namespace or microvm"),
            };
            if let Some(k) = kernel {
                if spec.isolation == Isolation::Namespace {
                    bail!("--kernel: a namespace sandbox runs on the host's kernel; use --isolation microvm");
                }
                let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
                spec.kernel = Some(spec::normalise_kernel(&k, &cwd).map_err(|(msg, hint)| anyhow!("--kernel: {msg}\n    hint: {hint}"))?);
            }
            interactive::run(&mut open()?, name, spec, p.interactive, rm, detach)
        }
        Command::Ps { all, output } => output::ps(&mut open()?, all, output),
        Command::Top { once, output, interval } => top::top(&open()?, once, output, std::time::Duration::try_from_secs_f64(interval.clamp(0.2, 3600.0)).unwrap_or(std::time::Duration::from_secs(1))),
        Command::Inspect { name } => {
            let mut orch = open()?;
            let name = sandbox_name(&orch, &name)?;
            output::inspect(&mut orch, &name)
        }
        Command::Rm { names, force } => {
            let mut orch = open()?;
            let names = names.iter().map(|n| sandbox_name(&orch, n)).collect::<Result<Vec<_>>>()?;
            each(&mut orch, &names, "removed", |o, n| {
                let running = o.store.sandbox(n)?.map(|r| o.observe(&r).status == crate::store::Status::Running).unwrap_or(false);
                if running && !force {
                    return Err(ReconcileError::Conflict(format!("sandbox {n:?} is running; stop it first, or remove it with --force")));
                }
                o.delete(n)
            })
        }
        Command::Cp { src, dest } => files::cp(&open()?, &src, &dest),
        Command::Fs { command } => files::fs(&open()?, command),
        Command::Stop { names } => {
            let mut orch = open()?;
            let names = names.iter().map(|n| sandbox_name(&orch, n)).collect::<Result<Vec<_>>>()?;
            each(&mut orch, &names, "stopped", |o, n| o.stop(n))
        }
        Command::Start { names } => {
            let mut orch = open()?;
            let names = names.iter().map(|n| sandbox_name(&orch, n)).collect::<Result<Vec<_>>>()?;
            each(&mut orch, &names, "started", |o, n| o.start(n))
        }
        Command::Attach { name } => {
            let orch = open()?;
            let name = sandbox_name(&orch, &name)?;
            interactive::attach(&orch, &name)
        }
        Command::Image { command } => images::run(&open()?, command),
        Command::Volume { command } => volumes::run(&mut open()?, command),
        Command::Plugin { command } => plugins::run(&open()?, command),
        Command::Doctor => microvm::doctor(&config),
        Command::Kernel { command } => microvm::kernel(&config, command),
        Command::Mcp { default_image, allow_host_paths, allow_client_network } => {
            let allow_host_paths = match allow_host_paths {
                Some(p) => Some(std::fs::canonicalize(&p).with_context(|| format!("--allow-host-paths {}", p.display()))?),
                None => None,
            };
            let limits = crate::api::Limits::default();
            let options = crate::mcp::McpOptions { default_image, allow_host_paths, allow_client_network, default_timeout: limits.default_exec_timeout, max_timeout: limits.max_exec_timeout };
            crate::mcp::serve_stdio(config.clone(), options)?;
            Ok(0)
        }
        Command::Serve { config: dir, resync, prune_empty, api } => serve::serve(&mut open()?, dir.as_deref(), resync, prune_empty, api),
    }
}

/// `exec`'s flags, as the fast front (`front.rs`) parses them.
#[derive(Debug, Default)]
pub struct ExecFlags {
    pub interactive: bool,
    pub tty: bool,
    /// `K=V` pairs.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub timeout: Option<u64>,
}

/// `exec` on a running sandbox reached by name through its socket link, without the state
/// database; None when the link does not answer (the core then resolves the name through the
/// store and says why it cannot).
pub fn exec_by_name(data_dir: &Path, name: &str, command: Vec<String>, flags: ExecFlags) -> Option<Result<i32>> {
    let client = interactive::connect_by_link(data_dir, name)?;
    Some(flags.options().and_then(|opts| interactive::exec_on(client, command, opts)))
}

impl ExecFlags {
    fn options(self) -> Result<interactive::ExecOptions> {
        Ok(interactive::ExecOptions {
            interactive: self.interactive,
            tty: self.tty,
            env: parse_env(&self.env)?,
            workdir: self.workdir,
            user: self.user,
            timeout: self.timeout,
        })
    }
}

/// A sandbox by its name, or by a unique prefix of its instance id (as `get -o json` shows it).
fn sandbox_name(orch: &Orchestrator, text: &str) -> Result<String> {
    orch.resolve_name(text).map_err(|e| match e {
        crate::Error::NotFound { .. } => anyhow!("no sandbox named {text:?}, and no instance id starts with it (see `orchestrator ps -a`)"),
        other => other.into(),
    })
}

fn spec_image(image: &str) -> std::result::Result<String, (String, String)> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    spec::normalise_image(image, &cwd)
}

fn parse_env(pairs: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow!("-e {p:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// The identity of a source: its canonical path.
pub fn source_id(path: &Path) -> Result<String> {
    let canon = std::fs::canonicalize(path).with_context(|| format!("{}: no such file or directory", path.display()))?;
    Ok(canon.to_string_lossy().into_owned())
}

/// Loads a source; on errors prints every one, records them, and fails.
fn load(orch: Option<&mut Orchestrator>, path: &Path) -> Result<Vec<Manifest>> {
    match spec::load_source(path) {
        Ok(m) => Ok(m),
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            let summary = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
            if let (Some(orch), Ok(source)) = (orch, source_id(path)) {
                let _lock = orch.lock()?;
                orch.record_source_error(&source, &summary)?;
            }
            bail!("{} error(s) in {}; nothing was changed", errors.len(), path.display())
        }
    }
}

fn print_plan(plan: &crate::reconcile::Plan) {
    for item in &plan.items {
        let sign = match item.change {
            Change::Create => "+",
            Change::Update => "~",
            Change::Delete => "-",
            Change::Unchanged => "=",
        };
        println!("{sign} {}/{} ({:?}, {})", item.kind, item.name, item.change, item.origin);
    }
    for kept in &plan.prune_skipped {
        println!("! {kept} kept: the source declares nothing (use --prune-empty to remove)");
    }
}

fn adopt(orch: &mut Orchestrator) -> Result<()> {
    for line in orch.adopt_all()? {
        eprintln!("note: {line}");
    }
    Ok(())
}

fn apply(orch: &mut Orchestrator, file: &Path, dry_run: bool, prune_empty: bool) -> Result<i32> {
    let manifests = load(if dry_run { None } else { Some(orch) }, file)?;
    let source = source_id(file)?;
    if dry_run {
        let plan = orch.plan(&source, &manifests, prune_empty)?;
        print_plan(&plan);
        for c in &plan.conflicts {
            eprintln!("error: {c}");
        }
        return Ok(if plan.conflicts.is_empty() { 0 } else { 1 });
    }
    adopt(orch)?;
    let report = orch.apply(&source, &manifests, prune_empty)?;
    for item in report.plan.items.iter().filter(|i| i.kind != Kind::Sandbox && i.change != Change::Unchanged) {
        let verb = match item.change {
            Change::Create => "created",
            Change::Update => "updated",
            _ => "deleted",
        };
        println!("{}/{} {verb}", item.kind.as_str().to_lowercase(), item.name);
    }
    for action in &report.actions {
        println!("{action}");
    }
    for kept in &report.plan.prune_skipped {
        eprintln!("warning: {kept} kept: {} declares nothing (use --prune-empty to remove)", file.display());
    }
    Ok(if report.failures().next().is_none() { 0 } else { 1 })
}

fn diff(orch: &Orchestrator, file: &Path) -> Result<i32> {
    let manifests = match spec::load_source(file) {
        Ok(m) => m,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Ok(2);
        }
    };
    let plan = orch.plan(&source_id(file)?, &manifests, false)?;
    print_plan(&plan);
    for c in &plan.conflicts {
        eprintln!("error: {c}");
    }
    Ok(if plan.has_changes() || !plan.conflicts.is_empty() { 1 } else { 0 })
}

fn delete(orch: &mut Orchestrator, names: Vec<String>, file: Option<PathBuf>) -> Result<i32> {
    match file {
        // What a file declares may already be gone: deleting it again is not an error.
        Some(f) => {
            let names: Vec<String> = load(None, &f)?.into_iter().map(|m| m.resource.name).collect();
            if names.is_empty() {
                return Ok(0);
            }
            each(orch, &names, "deleted", |o, n| match o.delete(n) {
                Err(ReconcileError::NotFound(_)) => Ok(()),
                other => other,
            })
        }
        None if names.is_empty() => bail!("name what to delete, or pass -f FILE|DIR"),
        None => each(orch, &names, "deleted", |o, n| o.delete(n)),
    }
}

fn each(orch: &mut Orchestrator, names: &[String], done: &str, f: impl Fn(&mut Orchestrator, &str) -> std::result::Result<(), ReconcileError>) -> Result<i32> {
    if names.is_empty() {
        bail!("name at least one sandbox");
    }
    adopt(orch)?;
    let mut code = 0;
    for n in names {
        let _object = orch.lock_object(n)?;
        match f(orch, n) {
            Ok(()) => println!("{n} {done}"),
            Err(e) => {
                eprintln!("error: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// A one-off sandbox resource (for `run`), owned by the `cli` source.
pub fn cli_resource(name: &str, spec: SandboxSpec) -> Manifest {
    Manifest {
        resource: Resource { name: name.into(), labels: Default::default(), spec: ResourceSpec::Sandbox(spec) },
        origin: Origin { file: PathBuf::from("orchestrator run"), line: 0 },
    }
}
