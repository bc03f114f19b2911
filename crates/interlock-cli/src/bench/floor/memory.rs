//! The memory backend's floors: tokio's own primitives, in the same process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ContendedFloor, Floors, HandoffFloor, ManyFloor, task_waiters};
use crate::bench::clock::{self, now_ns};
use crate::bench::contended;
use crate::bench::handoff::Pace;
use crate::bench::holdtime::HoldTime;
use crate::bench::mode::Mode;
use crate::bench::spawn;
use crate::bench::stats::{Measured, Samples};
use crate::bench::target::Target;
use crate::exit::Failure;

pub(super) const FLOORS: Floors = Floors {
    backend: "memory",
    uncontended: |_, mode, d| Box::pin(async move { Ok(vec![uncontended(mode, d).await]) }),
    contended: |t, clients, d| Box::pin(contended(clients, d, t.hold)),
    waiters: |_, w, _| Box::pin(task_waiters(w)),
    handoff: |_, holds, pace| Box::pin(async move { handoff(holds, pace) }),
    many_locks,
    start_server: None,
};

/// A tokio primitive of the same kind, taken and released in a loop.
async fn uncontended(mode: Mode, duration: Duration) -> Measured {
    let mut samples = Samples::with_capacity(1 << 18);
    let start = Instant::now();
    let what = match mode {
        Mode::Read => {
            let rw = tokio::sync::RwLock::new(());
            while start.elapsed() < duration {
                let t = Instant::now();
                drop(rw.read().await);
                samples.push(clock::ns(t.elapsed()));
            }
            "tokio::sync::RwLock read + drop"
        }
        Mode::Semaphore(n) => {
            let sem = tokio::sync::Semaphore::new(n as usize);
            while start.elapsed() < duration {
                let t = Instant::now();
                // Never closed, so acquiring cannot fail.
                drop(sem.acquire().await);
                samples.push(clock::ns(t.elapsed()));
            }
            "tokio::sync::Semaphore acquire + drop"
        }
        Mode::Mutex | Mode::Write => {
            let m = tokio::sync::Mutex::new(());
            while start.elapsed() < duration {
                let t = Instant::now();
                drop(m.lock().await);
                samples.push(clock::ns(t.elapsed()));
            }
            "tokio::sync::Mutex lock + drop"
        }
    };
    Measured::new(what, samples, start.elapsed().as_secs_f64())
}

async fn contended(clients: u32, duration: Duration, hold: HoldTime) -> Result<Option<ContendedFloor>, Failure> {
    let (results, counter) = contended::floor_tasks(clients, duration, hold).await?;
    Ok(Some(("tokio::sync::Mutex shared by the tasks, same critical section".into(), results, counter)))
}

fn handoff(holds: u64, pace: Pace) -> Result<Option<HandoffFloor>, Failure> {
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let holds = spawn::threads(2, |_| {
        let mutex = mutex.clone();
        async move {
            let mut out = Vec::with_capacity(usize::try_from(holds).unwrap_or(0));
            for _ in 0..holds {
                let guard = mutex.lock().await;
                let acquired = now_ns();
                pace.hold_blocking();
                let released = now_ns();
                drop(guard);
                out.push((acquired, released));
                pace.pause_blocking();
            }
            Ok(out)
        }
    })?;
    Ok(Some(("tokio::sync::Mutex, 2 threads".into(), holds)))
}

fn many_locks(_: &Target, n: u64) -> Result<Option<ManyFloor>, Failure> {
    let mutexes: Vec<_> = (0..n).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect();
    let t = Instant::now();
    let guards: Vec<_> = mutexes.iter().filter_map(|m| m.clone().try_lock_owned().ok()).collect();
    let take_all_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    drop(guards);
    let release_all_s = t.elapsed().as_secs_f64();
    Ok(Some(ManyFloor { what: "tokio::sync::Mutex::try_lock_owned each".into(), take_all_s, release_all_s }))
}
