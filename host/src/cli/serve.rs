//! `serve --config DIR`: GitOps. The directory is the desired state; it is watched recursively
//! (debounced, so an editor's write-temp-then-rename save is one change) and reconciled after
//! every change, plus a periodic resync that applies restart policies to sandboxes that died.
//! A broken file keeps the last good state running and is reported.

use crate::reconcile::Orchestrator;
use crate::spec;
use anyhow::{Context, Result};
use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

const DEBOUNCE: Duration = Duration::from_millis(150);

fn log(msg: &str) {
    eprintln!("{} {msg}", chrono::Utc::now().format("%H:%M:%S%.3f"));
}

/// One reconcile pass over the config directory.
fn reconcile_dir(orch: &mut Orchestrator, dir: &Path, source: &str, prune_empty: bool, last_error: &mut Option<String>) -> Result<()> {
    let _lock = orch.lock()?;
    for line in orch.adopt_all()? {
        log(&format!("note: {line}"));
    }
    match spec::load_source(dir) {
        Err(errors) => {
            let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
            if last_error.as_deref() != Some(text.as_str()) {
                for e in &errors {
                    log(&format!("error: {e}"));
                }
                log("keeping the last good state; fix the file(s) above");
                orch.record_source_error(source, &text)?;
                *last_error = Some(text);
            }
        }
        Ok(manifests) => {
            if last_error.take().is_some() {
                log("configuration is valid again");
            }
            match orch.apply(source, &manifests, prune_empty) {
                Ok(report) => {
                    for kept in &report.plan.prune_skipped {
                        log(&format!("warning: {kept} kept: the directory declares nothing (--prune-empty removes)"));
                    }
                    for action in report.actions.iter().filter(|a| a.result.changed()) {
                        log(&action.to_string());
                    }
                }
                Err(e) => log(&format!("error: {e}")),
            }
        }
    }
    for line in orch.heal_all()? {
        log(&line);
    }
    Ok(())
}

pub fn serve(orch: &mut Orchestrator, dir: &Path, resync_secs: u64, prune_empty: bool) -> Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = super::source_id(dir)?;
    let dir = Path::new(&source).to_path_buf();
    let (tx, rx) = channel();
    let mut debouncer = new_debouncer(DEBOUNCE, None, tx).context("starting the file watcher")?;
    debouncer.watch(&dir, RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
    log(&format!("serving {} (resync every {resync_secs}s)", dir.display()));
    // Metrics sinks run beside the reconciler, on their own store connection.
    let (data, registry) = (orch.data.clone(), orch.plugins.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::Builder::new()
        .name("metrics-sinks".into())
        .spawn(move || crate::plugin::metrics::run(data, registry, stop))
        .context("starting the metrics-sink thread")?;
    let mut last_error = None;
    reconcile_dir(orch, &dir, &source, prune_empty, &mut last_error)?;
    let resync = Duration::from_secs(resync_secs.max(1));
    let mut next_resync = Instant::now() + resync;
    loop {
        let wait = next_resync.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Ok(events)) => {
                // Drain whatever else arrived: one reconcile covers them all.
                while rx.try_recv().is_ok() {}
                if events.is_empty() {
                    continue;
                }
            }
            Ok(Err(errors)) => {
                for e in errors {
                    log(&format!("watch error: {e}"));
                }
            }
            Err(RecvTimeoutError::Timeout) => next_resync = Instant::now() + resync,
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the file watcher stopped"),
        }
        if let Err(e) = reconcile_dir(orch, &dir, &source, prune_empty, &mut last_error) {
            log(&format!("error: {e:#}"));
        }
    }
}
