//! `serve --config DIR`: the GitOps controller (`crate::controller`) with its log on stderr,
//! each line timestamped.

use crate::controller::{Backoff, ServeOptions};
use crate::reconcile::Orchestrator;
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

fn log(msg: &str) {
    eprintln!("{} {msg}", chrono::Utc::now().format("%H:%M:%S%.3f"));
}

pub fn serve(orch: &mut Orchestrator, dir: &Path, resync_secs: u64, prune_empty: bool) -> Result<i32> {
    let options = ServeOptions { resync: Duration::from_secs(resync_secs.max(1)), prune_empty, backoff: Backoff::default() };
    crate::controller::serve(orch, dir, &options, &log)?;
    Ok(0)
}
