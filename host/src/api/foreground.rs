//! Requests first: the server's own background work (refilling warm pools, removing used
//! sandboxes) runs in the gaps between requests, not beside them.
//!
//! Why here and not in the kernel: on a small host that work is most of the CPU (making and
//! removing a sandbox costs about 25 ms of it here, a command in a warm one under 1 ms), and a
//! request that shares the CPU with it waits on the run queue: a pooled `/run` took 12 ms
//! back to back against 2.6 ms alone. Lowering the background threads' priority does not help,
//! because every sandbox has a cgroup of its own and a thread's policy counts only inside its
//! cgroup (docs/BENCHMARKS.md has both attempts); deciding *when* to start the work does.
//!
//! Invariants:
//! - A request counts from when it reaches the router until its response head is ready (a
//!   streamed body or a WebSocket after the upgrade does not hold background work back).
//! - Waiting for a gap is bounded ([`Foreground::gap`]'s `at_most`): under steady load the
//!   work still gets done, only later; callers bound how much of it may wait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long no request must have run before background work starts: longer than a client's
/// own pause between back-to-back requests (under a millisecond for a program, more for a
/// person), shorter than anything a person notices.
pub const QUIET: Duration = Duration::from_millis(50);

/// The requests in progress and when the last one ended.
pub struct Foreground {
    started: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds after `started` at which the last request ended.
    last_end: AtomicU64,
    ended: Notify,
}

/// Held while a request runs.
pub struct Request(Arc<Foreground>);

impl Drop for Request {
    fn drop(&mut self) {
        self.0.last_end.store(self.0.started.elapsed().as_nanos() as u64, Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Foreground {
    pub fn new() -> Arc<Foreground> {
        Arc::new(Foreground { started: Instant::now(), in_flight: AtomicUsize::new(0), last_end: AtomicU64::new(0), ended: Notify::new() })
    }

    /// Marks a request as running until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Request {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Request(self.clone())
    }

    /// How long it has been since the last request ended; None while one runs.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_nanos(self.last_end.load(Ordering::Acquire));
        Some(self.started.elapsed().saturating_sub(last))
    }

    /// Waits until no request has run for `quiet`, or `at_most` has passed. True when the gap
    /// came, false when the wait ran out.
    pub async fn gap(&self, quiet: Duration, at_most: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + at_most;
        loop {
            // Registered before the check, so a request that ends in between still wakes us.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let wait = match self.idle_for() {
                Some(idle) if idle >= quiet => return true,
                Some(idle) => quiet - idle,
                // A request runs: its end (or a later check) tells.
                None => at_most,
            };
            let wake = (tokio::time::Instant::now() + wait).min(deadline);
            tokio::select! {
                _ = &mut ended => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return self.idle_for().is_some_and(|idle| idle >= quiet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_waits_for_a_gap_between_requests_but_not_forever() {
        let fg = Foreground::new();
        let quiet = Duration::from_millis(30);
        tokio::time::sleep(quiet).await;
        assert!(fg.gap(quiet, Duration::from_secs(5)).await, "nothing ran: a gap already");

        let request = fg.begin();
        let t = Instant::now();
        assert!(!fg.gap(quiet, Duration::from_millis(100)).await, "a request runs throughout");
        assert!(t.elapsed() >= Duration::from_millis(100), "waited as long as it may");

        let waiter = {
            let fg = fg.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                (fg.gap(quiet, Duration::from_secs(5)).await, t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!waiter.is_finished(), "no gap while the request runs");
        drop(request);
        let (came, waited) = waiter.await.unwrap();
        assert!(came, "the request ended");
        assert!(waited >= Duration::from_millis(80) + quiet, "the gap is counted from the end of the request: {waited:?}");
        assert!(waited < Duration::from_secs(2), "and not much longer: {waited:?}");
    }
}
