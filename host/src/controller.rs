//! The GitOps controller `serve` runs: a watched directory is the desired state; every change
//! commits it, and each sandbox is then reconciled on its own, as a work item with its own
//! requeue time and back-off (kube-runtime's controller shape).
//!
//! Invariants:
//! - One object is never reconciled twice at once: an item is either queued or in flight, and
//!   an item queued again while in flight runs once more after it finishes.
//! - A reconcile holds its object's lock only; committing a source holds the desired-state lock
//!   only while it commits. A command on another sandbox (`run --rm`, `stop`) never waits.
//! - A failure requeues its object with exponential back-off (capped); a success resets it.
//! - A broken source changes nothing: the last good state keeps running, and the error is
//!   logged once and recorded for `get`.

use crate::error::{Error, Result};
use crate::reconcile::{Orchestrator, Outcome};
use crate::spec::{self, Kind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long (a sandbox still starting, a periodic check).
    Requeue(Duration),
    /// Nothing until something changes (an edit, a resync).
    AwaitChange,
}

/// Exponential back-off for failing objects: `base`, doubling, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { base: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// The delay after the `failures`-th failure in a row (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// The controller's queue: which object is due when, which are in flight, how often each
/// failed in a row.
#[derive(Debug, Default)]
pub struct WorkQueue {
    due: BTreeMap<String, Instant>,
    in_flight: HashSet<String>,
    /// Queued again while in flight: run once more when it finishes, no earlier than this.
    again: HashMap<String, Instant>,
    failures: HashMap<String, u32>,
    backoff: Backoff,
}

impl WorkQueue {
    pub fn new(backoff: Backoff) -> WorkQueue {
        WorkQueue { backoff, ..Default::default() }
    }

    /// Queues `key` for `at` (an earlier time wins over a later one already queued).
    pub fn enqueue(&mut self, key: &str, at: Instant) {
        if self.in_flight.contains(key) {
            let t = self.again.entry(key.to_string()).or_insert(at);
            *t = (*t).min(at);
            return;
        }
        let t = self.due.entry(key.to_string()).or_insert(at);
        *t = (*t).min(at);
    }

    /// The earliest due item at `now`, marked in flight.
    pub fn pop(&mut self, now: Instant) -> Option<String> {
        let key = self.due.iter().filter(|(_, t)| **t <= now).min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())?;
        self.due.remove(&key);
        self.in_flight.insert(key.clone());
        Some(key)
    }

    /// When the next item is due (None: nothing queued).
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Records how `key`'s reconcile ended and queues it again as that says; returns the
    /// back-off delay after a failure.
    pub fn done(&mut self, key: &str, result: std::result::Result<Action, ()>, now: Instant) -> Option<Duration> {
        self.in_flight.remove(key);
        let mut backoff = None;
        let next = match result {
            Ok(action) => {
                self.failures.remove(key);
                match action {
                    Action::Requeue(d) => Some(now + d),
                    Action::AwaitChange => None,
                }
            }
            Err(()) => {
                let n = self.failures.entry(key.to_string()).or_insert(0);
                *n += 1;
                let d = self.backoff.delay(*n);
                backoff = Some(d);
                Some(now + d)
            }
        };
        let again = self.again.remove(key);
        // A change that arrived meanwhile runs after it; a failing object still waits out its
        // back-off (a crash loop must not become a busy loop).
        let at = match (next, again, backoff) {
            (Some(n), Some(_), Some(_)) => Some(n),
            (n, Some(a), None) => Some(n.map_or(a, |n| n.min(a))),
            (n, _, _) => n,
        };
        if let Some(at) = at {
            self.enqueue(key, at);
        }
        backoff
    }

    /// Consecutive failures of `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }

    /// Forgets an object that no longer exists.
    pub fn forget(&mut self, key: &str) {
        self.due.remove(key);
        self.again.remove(key);
        self.failures.remove(key);
    }
}

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Every sandbox is looked at this often (restart policies, drift).
    pub resync: Duration,
    /// Prune this source's resources even when it declares none.
    pub prune_empty: bool,
    pub backoff: Backoff,
}

/// How soon a sandbox that another process is still starting is looked at again.
const PENDING_RECHECK: Duration = Duration::from_secs(1);

/// A reconcile of one sandbox, under the lock for that one object.
fn reconcile_one(orch: &mut Orchestrator, name: &str) -> Result<(Outcome, Action)> {
    let _lock = orch.lock_object(name)?;
    let started = Instant::now();
    let converged = orch.converge(name);
    let label = match &converged {
        Ok(o) => format!("{o:?}").to_lowercase(),
        Err(_) => "failed".to_string(),
    };
    crate::telemetry::get().reconciled(&label, started.elapsed());
    let outcome = converged?;
    let action = match orch.store.sandbox(name)?.map(|r| r.status) {
        Some(crate::store::Status::Pending) => Action::Requeue(PENDING_RECHECK),
        _ => Action::AwaitChange,
    };
    Ok((outcome, action))
}

/// Reconciles one due object and queues it again as its result says.
fn work_on(orch: &mut Orchestrator, queue: &mut WorkQueue, name: &str, log: &dyn Fn(&str)) {
    let result = reconcile_one(orch, name);
    let now = Instant::now();
    match result {
        Ok((outcome, action)) => {
            if outcome != Outcome::Nothing {
                log(&format!("sandbox/{name} {}", format!("{outcome:?}").to_lowercase()));
            }
            if outcome == Outcome::Removed {
                queue.forget(name);
            }
            queue.done(name, Ok(action), now);
        }
        Err(e) => {
            let delay = queue.done(name, Err(()), now).unwrap_or_default();
            log(&format!("sandbox/{name} failed: {e}; retrying in {}s (failure {} in a row)", delay.as_secs(), queue.failures(name)));
        }
    }
}

/// Commits the source's desired state (no sandbox is touched) and returns the sandboxes it
/// changed, or None when it does not load (then nothing changed and the error is recorded).
fn commit_source(orch: &mut Orchestrator, dir: &Path, source: &str, prune_empty: bool, last_error: &mut Option<String>, log: &dyn Fn(&str)) -> Result<Option<Vec<String>>> {
    match spec::load_source(dir) {
        Err(errors) => {
            let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
            if last_error.as_deref() != Some(text.as_str()) {
                for e in &errors {
                    log(&format!("error: {e}"));
                }
                log("keeping the last good state; fix the file(s) above");
                let _lock = orch.lock()?;
                orch.record_source_error(source, &text)?;
                *last_error = Some(text);
            }
            Ok(None)
        }
        Ok(manifests) => {
            if last_error.take().is_some() {
                log("configuration is valid again");
            }
            let _lock = orch.lock()?;
            let report = match orch.commit(source, &manifests, prune_empty) {
                Ok(r) => r,
                Err(e) => {
                    log(&format!("error: {e}"));
                    return Ok(None);
                }
            };
            for kept in &report.plan.prune_skipped {
                log(&format!("warning: {kept} kept: the directory declares nothing (--prune-empty removes)"));
            }
            for action in report.actions.iter().filter(|a| a.result.changed()) {
                log(&action.to_string());
            }
            Ok(Some(report.plan.items.iter().filter(|i| i.kind == Kind::Sandbox).map(|i| i.name.clone()).collect()))
        }
    }
}

/// Watches `dir` and keeps the state in line with it until the watcher fails. `log` gets one
/// line per change, failure and back-off.
pub fn serve(orch: &mut Orchestrator, dir: &Path, options: &ServeOptions, log: &dyn Fn(&str)) -> Result<()> {
    use notify::RecursiveMode;
    use notify_debouncer_full::new_debouncer;
    use std::sync::mpsc::{channel, RecvTimeoutError};
    const DEBOUNCE: Duration = Duration::from_millis(150);

    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let source = crate::sources::source_id(dir)?;
    let dir = Path::new(&source).to_path_buf();
    let (tx, rx) = channel();
    let watch_error = |e: notify::Error| Error::Io { context: format!("watching {}", dir.display()), source: std::io::Error::other(e.to_string()) };
    let mut debouncer = new_debouncer(DEBOUNCE, None, tx).map_err(watch_error)?;
    debouncer.watch(&dir, RecursiveMode::Recursive).map_err(watch_error)?;
    log(&format!("serving {} (resync every {}s)", dir.display(), options.resync.as_secs()));
    // Metrics sinks run beside the reconciler, on their own store connection.
    let (data, registry) = (orch.data.clone(), orch.plugins.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::Builder::new()
        .name("metrics-sinks".into())
        .spawn(move || crate::plugin::metrics::run(data, registry, stop))
        .map_err(|e| Error::io("starting the metrics-sink thread", e))?;

    let mut queue = WorkQueue::new(options.backoff);
    let mut last_error = None;
    let mut source_changed = true;
    let mut next_resync = Instant::now();
    loop {
        let now = Instant::now();
        if source_changed {
            source_changed = false;
            for line in orch.adopt_all()? {
                log(&format!("note: {line}"));
            }
            for name in commit_source(orch, &dir, &source, options.prune_empty, &mut last_error, log)?.unwrap_or_default() {
                queue.enqueue(&name, now);
            }
        }
        if now >= next_resync {
            next_resync = now + options.resync;
            for row in orch.store.sandboxes()? {
                // A failing object keeps its back-off; a resync does not cut it short.
                if queue.failures(&row.name) == 0 {
                    queue.enqueue(&row.name, now);
                }
            }
        }
        // Every due object, one at a time, each under its own short hold of the lock.
        while let Some(name) = queue.pop(Instant::now()) {
            work_on(orch, &mut queue, &name, log);
            // A change on disk is taken before more queued work.
            if let Ok(first) = rx.try_recv() {
                source_changed = watched(first, &rx, log);
                if source_changed {
                    break;
                }
            }
        }
        if source_changed {
            continue;
        }
        let wake = queue.next_due().map_or(next_resync, |d| d.min(next_resync));
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(first) => source_changed = watched(first, &rx, log),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Io { context: format!("watching {}", dir.display()), source: std::io::Error::other("the file watcher stopped") })
            }
        }
    }
}

type WatchResult = std::result::Result<Vec<notify_debouncer_full::DebouncedEvent>, Vec<notify::Error>>;

/// Whether what the watcher sent (and whatever else is waiting) is a change to reconcile.
fn watched(first: WatchResult, rx: &std::sync::mpsc::Receiver<WatchResult>, log: &dyn Fn(&str)) -> bool {
    let mut changed = false;
    for item in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
        match item {
            Ok(events) => changed |= !events.is_empty(),
            Err(errors) => {
                for e in errors {
                    log(&format!("watch error: {e}"));
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        let b = Backoff { base: secs(1), max: secs(60) };
        let delays: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(u32::MAX), secs(60));
    }

    #[test]
    fn failures_requeue_with_back_off_and_a_success_resets_it() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new(Backoff { base: secs(1), max: secs(8) });
        q.enqueue("a", t0);
        assert_eq!(q.pop(t0).as_deref(), Some("a"));
        assert_eq!(q.done("a", Err(()), t0), Some(secs(1)));
        assert_eq!(q.pop(t0), None, "not before its back-off");
        assert_eq!(q.next_due(), Some(t0 + secs(1)));
        assert_eq!(q.pop(t0 + secs(1)).as_deref(), Some("a"));
        assert_eq!(q.done("a", Err(()), t0 + secs(1)), Some(secs(2)));
        assert_eq!(q.failures("a"), 2);
        assert_eq!(q.pop(t0 + secs(3)).as_deref(), Some("a"));
        assert_eq!(q.done("a", Ok(Action::AwaitChange), t0 + secs(3)), None);
        assert_eq!(q.failures("a"), 0);
        assert_eq!(q.next_due(), None, "a success that awaits a change queues nothing");
        q.enqueue("a", t0 + secs(4));
        q.pop(t0 + secs(4));
        q.done("a", Ok(Action::Requeue(secs(30))), t0 + secs(4));
        assert_eq!(q.next_due(), Some(t0 + secs(34)));
    }

    #[test]
    fn an_object_is_never_in_flight_twice_and_a_change_meanwhile_runs_after() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new(Backoff::default());
        q.enqueue("a", t0);
        q.enqueue("b", t0 + secs(1));
        assert_eq!(q.pop(t0).as_deref(), Some("a"));
        q.enqueue("a", t0);
        assert_eq!(q.pop(t0 + secs(1)).as_deref(), Some("b"), "a is in flight: only b is handed out");
        assert_eq!(q.pop(t0 + secs(1)), None);
        q.done("a", Ok(Action::AwaitChange), t0 + secs(1));
        assert_eq!(q.pop(t0 + secs(1)).as_deref(), Some("a"), "the change that came in flight runs once more");
        // A failing object that is changed meanwhile still waits out its back-off.
        q.enqueue("b", t0 + secs(1));
        assert_eq!(q.done("b", Err(()), t0 + secs(1)), Some(secs(1)));
        assert_eq!(q.pop(t0 + secs(1)), None);
        assert_eq!(q.pop(t0 + secs(2)).as_deref(), Some("b"));
    }

    /// The controller's loop body over the fake runtime: a sandbox whose start fails backs off
    /// (1 s, 2 s, ...), and the first success resets it.
    #[test]
    fn a_failing_sandbox_backs_off_and_recovers_when_its_start_succeeds() {
        use crate::runtime::{fake::FakeInstances, RuntimeError};
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("the rootfs directory");
        let mut orch = Orchestrator::open(crate::Config::new(tmp.path().join("data"))).expect("the orchestrator");
        let fake = std::sync::Arc::new(FakeInstances::default());
        orch.instances = fake.clone();
        let text = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: web }}\nspec: {{ image: 'dir:{}', isolation: microvm }}\n", rootfs.display());
        let manifests = crate::spec::parse_str(&rootfs.join("web.yaml"), &text).expect("a valid manifest");
        orch.commit("test", &manifests, false).expect("commit");

        let lines = std::cell::RefCell::new(Vec::<String>::new());
        let log = |l: &str| lines.borrow_mut().push(l.to_string());
        let mut queue = WorkQueue::new(Backoff { base: secs(1), max: secs(4) });
        let t0 = Instant::now();
        queue.enqueue("web", t0);
        for expected in [1, 2, 4, 4] {
            fake.fail_next_start(RuntimeError::Unavailable("microvm", "/dev/kvm is missing".into()));
            let name = queue.pop(Instant::now() + secs(3600)).expect("web is due");
            let before = Instant::now();
            work_on(&mut orch, &mut queue, &name, &log);
            let due = queue.next_due().expect("requeued");
            assert!(due >= before + secs(expected) && due <= Instant::now() + secs(expected), "failure {} waits {expected}s", queue.failures("web"));
            assert!(lines.borrow().last().is_some_and(|l| l.contains("/dev/kvm is missing") && l.contains(&format!("retrying in {expected}s"))), "{:?}", lines.borrow());
        }
        let name = queue.pop(Instant::now() + secs(3600)).expect("web is due");
        work_on(&mut orch, &mut queue, &name, &log);
        assert_eq!(queue.failures("web"), 0, "a success resets the back-off");
        assert_eq!(queue.next_due(), None, "a running sandbox waits for a change");
        assert_eq!(lines.borrow().last().map(String::as_str), Some("sandbox/web restarted"));
        assert_eq!(fake.starts().len(), 1);
    }

    #[test]
    fn the_earliest_time_wins_and_forget_drops_everything() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new(Backoff::default());
        q.enqueue("a", t0 + secs(10));
        q.enqueue("a", t0 + secs(5));
        q.enqueue("a", t0 + secs(7));
        assert_eq!(q.next_due(), Some(t0 + secs(5)));
        q.forget("a");
        assert_eq!(q.next_due(), None);
    }
}
