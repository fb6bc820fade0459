//! `volume create|ls|inspect|rm`: named volumes from the command line (resources of the `cli`
//! source, as `run`'s sandboxes are), and `get volumes`' table.

use super::output::{print_table, to_yaml};
use super::Format;
use crate::reconcile::Orchestrator;
use crate::spec::{self, VolumeSpec};
use crate::volume::human;
use anyhow::{bail, Result};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a named volume: a filesystem of its own whose size is its quota.
    Create {
        name: String,
        /// Its size (e.g. 512Mi, 10Gi); writes past it fail with ENOSPC inside.
        #[arg(long, default_value = "1Gi")]
        size: String,
        /// Let several sandboxes mount it writable at once (otherwise one writer, any readers).
        #[arg(long)]
        shared: bool,
    },
    /// List volumes with their size, use on the host's disk and the sandboxes that mount them.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// One volume as JSON.
    Inspect { name: String },
    /// Delete volumes and their data; one that a sandbox mounts only with `--force`.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short = 'f', long)]
        force: bool,
    },
}

pub fn run(orch: &mut Orchestrator, command: VolumeCommand) -> Result<i32> {
    match command {
        VolumeCommand::Create { name, size, shared } => create(orch, &name, &size, shared),
        VolumeCommand::Ls { output } => list(orch, output),
        VolumeCommand::Inspect { name } => {
            let Some(v) = orch.volume_views()?.into_iter().find(|v| v.name == name) else {
                bail!("no volume named {name:?} (see `orchestrator volume ls`)");
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        VolumeCommand::Rm { names, force } => {
            let mut code = 0;
            for n in &names {
                let _object = orch.lock_object(n)?;
                match orch.delete_volume(n, force) {
                    Ok(()) => println!("{n} deleted"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

fn create(orch: &mut Orchestrator, name: &str, size: &str, shared: bool) -> Result<i32> {
    let size = spec::quantity::parse_bytes(size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    let _object = orch.lock_object(name)?;
    orch.create_volume(name, VolumeSpec { size: Some(size), shared }, "cli", "orchestrator volume create")?;
    println!("{name}");
    Ok(0)
}

/// `volume ls` and `get volumes`.
pub fn list(orch: &Orchestrator, format: Format) -> Result<i32> {
    let views = orch.volume_views()?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Format::Yaml => print!("{}", to_yaml(&serde_json::to_value(&views)?)),
        Format::Table => {
            let mut lines = vec![["NAME", "SIZE", "ON DISK", "MOUNTED", "SHARED", "USERS", "SOURCE", "CREATED"].map(String::from).to_vec()];
            for v in views {
                let users = if v.users.is_empty() { "-".to_string() } else { v.users.join(",") };
                let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
                lines.push(vec![v.name, human(v.size), human(v.allocated), yes_no(v.mounted), yes_no(v.shared), users, v.source, v.created_at]);
            }
            print_table(&lines);
        }
    }
    Ok(0)
}

/// `run -v` and `--tmpfs` as `spec.volumes`.
pub fn mounts_from_flags(volumes: &[String], tmpfs: &[String]) -> Result<Vec<spec::VolumeMount>> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("/"));
    let mut out: Vec<spec::VolumeMount> = Vec::new();
    for text in volumes {
        out.push(spec::VolumeMount::parse_cli(text, &cwd).map_err(|e| anyhow::anyhow!("--volume {text}: {e}\n    hint: e.g. -v data:/data, -v data:/data:ro, -v ./src:/src"))?);
    }
    for text in tmpfs {
        out.push(spec::VolumeMount::parse_tmpfs(text).map_err(|e| anyhow::anyhow!("--tmpfs {text}: {e}\n    hint: e.g. --tmpfs /scratch:64Mi"))?);
    }
    if let Some(p) = spec::duplicate_mount_path(&out) {
        bail!("{p} is mounted twice");
    }
    if out.len() > spec::MAX_MOUNTS {
        bail!("{} mounts; at most {}", out.len(), spec::MAX_MOUNTS);
    }
    Ok(out)
}
