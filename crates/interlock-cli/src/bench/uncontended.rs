//! `uncontended`: one client takes and releases one lock in a loop through the async API, next to
//! the backend's floor (for files: a raw `flock` pair on an open descriptor).

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::floor;
use super::mode::{Handle, Mode};
use super::report::{self, Section};
use super::stats::{Measured, Samples, ratio};
use super::target::Target;
use crate::exit::{self, Failure};

/// Acquisitions before timing starts (file creation, first inotify watch, caches).
const WARMUP: usize = 200;

/// What `uncontended` found.
#[derive(Debug, Serialize)]
pub struct Uncontended {
    /// The primitive.
    pub mode: String,
    /// `lock()` + `release()`: what a program pays per critical section.
    pub lock: Measured,
    /// `try_lock()` + `release()`: the same without preparing to wait.
    pub try_lock: Measured,
    /// The backend's floors: the first is the one the ratios use.
    pub floors: Vec<Measured>,
    /// `lock` p50 ÷ first floor p50.
    pub ratio_p50: Option<f64>,
    /// First floor ops/s ÷ `lock` ops/s: how many floor operations fit in one of ours.
    pub ratio_ops: Option<f64>,
}

/// Runs the workload: `lock()` for `duration`, then `try_lock()` and the floors for a shorter
/// time (they are fast and steady).
///
/// # Errors
///
/// The library's errors; 74 when a floor's file cannot be used.
pub async fn run(target: &Target, mode: Mode, duration: Duration) -> Result<Uncontended, Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let name = target.name("uncontended");
    let handle = mode.handle(&target.provider, &name).map_err(lock_err)?;
    for _ in 0..WARMUP {
        handle.acquire().await.map_err(lock_err)?.release().await.map_err(lock_err)?;
    }
    let lock = timed("interlock lock() + release()", duration, || lock_release(&handle)).await?;
    let short = duration.min(Duration::from_secs(1));
    let try_lock = timed("interlock try_lock() + release()", short, || try_release(&handle)).await?;
    let floors = floor::uncontended(target, mode, short).await?;
    target.cleanup("uncontended");
    let (ratio_p50, ratio_ops) = match floors.first() {
        Some(f) => (ratio(lock.latency.p50_ns as f64, f.latency.p50_ns as f64), ratio(f.ops_per_sec, lock.ops_per_sec)),
        None => (None, None),
    };
    Ok(Uncontended { mode: mode.to_string(), lock, try_lock, floors, ratio_p50, ratio_ops })
}

async fn lock_release(handle: &Handle) -> Result<(), Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    handle.acquire().await.map_err(lock_err)?.release().await.map_err(lock_err)
}

async fn try_release(handle: &Handle) -> Result<(), Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    match handle.try_acquire().await.map_err(lock_err)? {
        Some(guard) => guard.release().await.map_err(lock_err),
        None => Err(Failure::new(exit::UNAVAILABLE, "the uncontended lock was held by someone else")),
    }
}

/// Times `op` back to back for `duration`.
async fn timed<F, Fut>(what: &str, duration: Duration, mut op: F) -> Result<Measured, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let mut samples = Samples::with_capacity(1 << 16);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        op().await?;
        samples.push(super::clock::ns(t.elapsed()));
    }
    Ok(Measured::new(what, samples, start.elapsed().as_secs_f64()))
}

impl Uncontended {
    /// The table section.
    pub fn section(&self) -> Section {
        let floor_p50 = self.floors.first().map(|f| f.latency.p50_ns as f64);
        let row = |m: &Measured| {
            vec![
                m.what.clone(),
                report::ops(m.ops_per_sec),
                report::ns(m.latency.p50_ns as f64),
                report::ns(m.latency.p99_ns as f64),
                report::ns(m.latency.max_ns as f64),
                report::times(floor_p50.and_then(|f| ratio(m.latency.p50_ns as f64, f))),
            ]
        };
        let mut rows = vec![row(&self.lock), row(&self.try_lock)];
        rows.extend(self.floors.iter().enumerate().map(|(i, f)| {
            let mut r = row(f);
            r[0] = format!("{} {}", if i == 0 { "floor:" } else { "ref:" }, f.what);
            r
        }));
        let mut notes = vec![format!(
            "one client, one name, mode {}, {} acquire+release pairs timed",
            self.mode,
            report::count(self.lock.latency.count)
        )];
        if self.floors.is_empty() {
            notes.push("no floor is defined for this backend yet".into());
        }
        Section {
            title: "uncontended: one client, acquire + release in a loop".into(),
            header: ["", "ops/s", "p50", "p99", "max", "p50 ÷ floor"].map(String::from).to_vec(),
            rows,
            notes,
        }
    }
}
