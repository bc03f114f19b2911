//! `waiters`: W waiters queue on one name while the bench holds it; then the bench releases, and
//! the waiters take it one after another (each holds briefly and releases). How many backend
//! operations does each release cost? One release should wake one waiter, not all of them.
//!
//! For the file backend the count is `interlock::file::lock_attempts()` (non-blocking `flock`
//! attempts) summed over every waiter: each waiter process reports its own. Waiter *tasks* of one
//! process share one provider, so its in-process FIFO queue sends only the head of the queue to
//! the backend; waiter *processes* each watch the lock file, and every release (a close of the
//! file) wakes all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use super::clock::now_ns;
use super::floor;
use super::mode::{Handle, Mode};
use super::report::{self, Section};
use super::spawn::{self, Clients};
use super::stats::ratio;
use super::target::Target;
use crate::exit::{self, Failure};

/// How long each waiter holds the lock once it has it.
pub const HOLD: Duration = Duration::from_micros(200);

/// How long the bench waits, after every waiter said `going`, for all of them to settle into
/// waiting: long enough for each to make its first attempt.
pub fn settle(w: u32) -> Duration {
    Duration::from_millis(100) + Duration::from_millis(2) * w
}

/// What the waiters are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaiterKind {
    /// One process per waiter.
    Process,
    /// Tasks of one process, sharing one provider.
    Task,
}

/// What `waiters` found.
#[derive(Debug, Serialize)]
pub struct Waiters {
    /// Waiters (`--waiters`).
    pub waiters: u32,
    /// `processes` or `tasks`.
    pub kind: String,
    /// Releases that handed the lock to a waiter (the bench's and every waiter's but the last).
    pub releases: u64,
    /// Backend operations (lock attempts) of all waiters together, where the backend counts them.
    pub backend_ops: Option<u64>,
    /// `backend_ops / releases`.
    pub ops_per_release: Option<f64>,
    /// What a herd-free backend would need per release: each waiter's first, failing attempt plus
    /// the one that wins (processes); the head task's attempts only (tasks).
    pub ideal_ops_per_release: f64,
    /// From the bench's release to the last waiter's acquisition, in seconds.
    pub drain_s: f64,
    /// The same queue on the backend's floor, where it has one.
    pub floor: Option<WaitersFloor>,
    /// `drain_s` ÷ the floor's.
    pub drain_vs_floor: Option<f64>,
    /// Remarks.
    pub notes: Vec<String>,
}

/// The waiters workload on the backend's floor.
#[derive(Debug, Serialize)]
pub struct WaitersFloor {
    /// What queued.
    pub what: String,
    /// From the release to the last waiter's acquisition, in seconds.
    pub drain_s: f64,
}

/// One waiter: waits for the lock, holds it `hold`, releases it; returns when it got it
/// (`CLOCK_MONOTONIC` ns). `blocking`: hold with a thread sleep (a client alone on its thread).
///
/// # Errors
///
/// The library's errors.
pub async fn wait_once(handle: &Handle, hold: Duration, blocking: bool) -> Result<u64, Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let guard = handle.acquire().await.map_err(lock_err)?;
    let acquired = now_ns();
    if blocking {
        std::thread::sleep(hold);
    } else {
        tokio::time::sleep(hold).await;
    }
    guard.release().await.map_err(lock_err)?;
    Ok(acquired)
}

/// Runs the workload.
///
/// # Errors
///
/// The library's errors; a waiter's failure.
pub async fn run(target: &Target, w: u32, kind: WaiterKind) -> Result<Waiters, Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let mut notes = Vec::new();
    let kind = if kind == WaiterKind::Process && !target.cross_process {
        notes.push("this backend is in-process only: the waiters are tasks, not processes".into());
        WaiterKind::Task
    } else {
        kind
    };
    let name = target.name("waiters");
    let counts = target.backend == "file";
    let holder = target.provider.mutex(&name).map_err(lock_err)?.lock().await.map_err(lock_err)?;
    let settle = settle(w);
    let (attempts, acquired, t0) = match kind {
        WaiterKind::Process => {
            let args = |_| {
                ["--job", "waiter", "--name", name.as_str(), "--hold-us"]
                    .map(String::from)
                    .into_iter()
                    .chain([HOLD.as_micros().to_string()])
                    .collect()
            };
            let mut c = Clients::start(w as usize, Some(target.secret_url()), args).await?;
            c.go();
            c.wait_for("going", Duration::from_secs(120)).await?;
            tokio::time::sleep(settle).await;
            let t0 = now_ns();
            holder.release().await.map_err(lock_err)?;
            let lines = c.finish(Duration::from_secs(60) + Duration::from_millis(50) * w).await?;
            let mut attempts = 0;
            let mut acquired = Vec::new();
            for l in &lines {
                match spawn::numbers(l, "done")?[..] {
                    [a, t] => {
                        attempts += a;
                        acquired.push(t);
                    }
                    _ => return Err(Failure::new(exit::UNAVAILABLE, "a waiter printed a malformed done line")),
                }
            }
            (attempts, acquired, t0)
        }
        WaiterKind::Task => {
            let provider = target.new_provider().await?;
            let handle = Mode::Mutex.handle(&provider, &name).map_err(lock_err)?;
            let before = interlock::file::lock_attempts();
            let going = Arc::new(AtomicUsize::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..w {
                let (handle, going) = (handle.clone(), going.clone());
                tasks.spawn(async move {
                    going.fetch_add(1, Ordering::SeqCst);
                    wait_once(&handle, HOLD, false).await
                });
            }
            let limit = tokio::time::Instant::now() + Duration::from_secs(60);
            while going.load(Ordering::SeqCst) < w as usize && tokio::time::Instant::now() < limit {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(settle / 4).await;
            let t0 = now_ns();
            holder.release().await.map_err(lock_err)?;
            let mut acquired = Vec::new();
            while let Some(r) = tasks.join_next().await {
                acquired.push(r.map_err(|_| Failure::new(exit::IO_ERROR, "a waiter task failed"))??);
            }
            (interlock::file::lock_attempts().saturating_sub(before), acquired, t0)
        }
    };
    target.cleanup("waiters");
    let floor = floor::waiters(target, w, kind).await?.map(|(what, drain_s)| WaitersFloor { what, drain_s });
    target.cleanup("waiters");
    let releases = u64::from(w);
    let drain_s = acquired.iter().max().map_or(0.0, |&t| t.saturating_sub(t0) as f64 / 1e9);
    let (backend_ops, ops_per_release) = if counts {
        (Some(attempts), Some(attempts as f64 / releases as f64))
    } else {
        notes.push(format!("the {} backend does not count its operations", target.backend));
        (None, None)
    };
    let ideal_ops_per_release = match kind {
        WaiterKind::Process => 2.0,
        WaiterKind::Task => (releases + 1) as f64 / releases as f64,
    };
    Ok(Waiters {
        waiters: w,
        kind: match kind {
            WaiterKind::Process => "processes",
            WaiterKind::Task => "tasks",
        }
        .into(),
        releases,
        backend_ops,
        ops_per_release,
        ideal_ops_per_release,
        drain_s,
        drain_vs_floor: floor.as_ref().and_then(|f| ratio(drain_s, f.drain_s)),
        floor,
        notes,
    })
}

impl Waiters {
    /// The table section.
    pub fn section(&self) -> Section {
        let per_release = if self.releases > 0 { self.drain_s * 1e9 / self.releases as f64 } else { 0.0 };
        let mut rows = vec![vec![
            format!("interlock, {} waiting {}", self.waiters, self.kind),
            report::count(self.releases),
            self.backend_ops.map_or_else(|| "n/a".into(), report::count),
            self.ops_per_release.map_or_else(|| "n/a".into(), |v| format!("{v:.1}")),
            format!("{:.1}", self.ideal_ops_per_release),
            report::secs(self.drain_s),
            report::ns(per_release),
            report::times(self.drain_vs_floor),
        ]];
        if let Some(f) = &self.floor {
            let per = if self.releases > 0 { f.drain_s * 1e9 / self.releases as f64 } else { 0.0 };
            rows.push(vec![
                format!("floor: {}", f.what),
                report::count(self.releases),
                "—".into(),
                "—".into(),
                "".into(),
                report::secs(f.drain_s),
                report::ns(per),
                report::times(Some(1.0)),
            ]);
        }
        let mut notes = vec![format!(
            "the bench holds the lock while all queue, then releases; each waiter holds {} µs ({}) and releases; \
             drain is from the bench's release to the last waiter's acquisition, holds included",
            HOLD.as_micros(),
            if self.kind == "tasks" { "a tokio sleep, about 1 ms" } else { "a thread sleep" }
        )];
        notes.push(match self.kind.as_str() {
            "processes" => "ideal: each waiter's first (failing) attempt + the one that wins = 2 per release".into(),
            _ => "ideal: tasks of one provider queue in-process; only the head of the queue goes to the backend".into(),
        });
        notes.extend(self.notes.iter().cloned());
        Section {
            title: "waiters: W queued on one name, released one after another".into(),
            header: ["", "releases", "backend ops", "ops/release", "ideal", "drain", "drain/release", "÷ floor"]
                .map(String::from)
                .to_vec(),
            rows,
            notes,
        }
    }
}
