//! `orchestrator doctor` (what isolation this host can run, and the fix for what it cannot)
//! and `orchestrator kernel fetch|show|initramfs` (the guest kernel in the data dir).

use anyhow::{anyhow, Result};
use clap::Subcommand;
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum KernelCommand {
    /// Download Debian's cloud kernel package and extract it into the data dir (never installed).
    Fetch,
    /// Show the guest kernel sandboxes use (and unpack, once, the vmlinux the VMM boots).
    Show,
    /// Build (or reuse) the guest initramfs for the configured kernel; print its path.
    Initramfs,
}

pub fn kernel(config: &Config, cmd: KernelCommand) -> Result<i32> {
    let data = config.data_dir.as_path();
    match cmd {
        KernelCommand::Fetch => {
            let k = crate::microvm::kernel::fetch(data).map_err(|e| anyhow!(e))?;
            println!("kernel {} in {}", k.version, k.dir.display());
        }
        KernelCommand::Show => {
            let k = crate::microvm::kernel::configured(config).map_err(|e| anyhow!(e))?;
            let modules = k.modules.as_ref().map(|m| m.display().to_string()).unwrap_or_else(|| "none (drivers built in)".into());
            let boot = k.boot_image(data).map_err(|e| anyhow!(e))?;
            println!("version: {}\nimage:   {}\nboot:    {}\nmodules: {modules}\ncmdline: {}", k.version, k.image.display(), boot.display(), crate::microvm::kernel::guest_cmdline(config));
        }
        KernelCommand::Initramfs => {
            let k = crate::microvm::kernel::configured(config).map_err(|e| anyhow!(e))?;
            let agent = crate::microvm::initramfs::agent_binary(config).map_err(|e| anyhow!(e))?;
            println!("{}", crate::microvm::initramfs::cached(data, &k, &agent).map_err(|e| anyhow!(e))?.display());
        }
    }
    Ok(0)
}

/// Prints each check; exit 0 when microVMs work, 1 when only namespace sandboxes do.
pub fn doctor(config: &Config) -> Result<i32> {
    use crate::runtime::Runtime;
    let ns = crate::runtime::NamespaceRuntime { config: std::sync::Arc::new(config.clone()) }.check_host();
    println!("namespace sandboxes: {}", match &ns {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("NO: {e}"),
    });
    let mut all_ok = true;
    for c in crate::microvm::probe::all(config) {
        match c.result {
            Ok(what) => println!("microvm {}: ok, {what}", c.name),
            Err(why) => {
                all_ok = false;
                println!("microvm {}: NO: {why}", c.name);
            }
        }
    }
    // Optional: without it microVMs run, but mount no named volume or host path.
    match crate::microvm::probe::virtiofsd() {
        Some(p) => println!("microvm volumes: ok, virtiofsd at {}", p.display()),
        None => println!("microvm volumes: NO: no virtiofsd, so microVMs mount no named volume or host path (`cargo install virtiofsd`, or ORCHESTRATOR_VIRTIOFSD=PATH); sandboxes with them run as namespace sandboxes under `auto`"),
    }
    println!("isolation auto: {}", if all_ok { "microvm" } else { "namespace" });
    Ok(if all_ok { 0 } else { 1 })
}
