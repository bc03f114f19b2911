//! Mutual exclusion between tasks, threads, providers and processes, and the controls that show
//! the check can fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::harness::Harness;
use crate::{process, unique};

use super::not_applicable;

/// A counter updated non-atomically (read, pause, write), plus an overlap detector.
#[derive(Default)]
struct Racy {
    value: AtomicU64,
    inside: AtomicBool,
    overlaps: AtomicU64,
}

impl Racy {
    async fn increment(&self) {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let v = self.value.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_micros(50)).await;
        self.value.store(v + 1, Ordering::SeqCst);
        self.inside.store(false, Ordering::SeqCst);
    }

    fn increment_blocking(&self) {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let v = self.value.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(50));
        self.value.store(v + 1, Ordering::SeqCst);
        self.inside.store(false, Ordering::SeqCst);
    }
}

const TASKS: u64 = 16;
const ITERATIONS: u64 = 25;

async fn run_tasks<H: Harness>(h: &H, locked: bool, providers: usize) -> (u64, u64) {
    let name = unique("excl");
    let mut ps = Vec::new();
    for _ in 0..providers {
        ps.push(h.provider().await);
    }
    let racy = Arc::new(Racy::default());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let m = ps[t as usize % providers].mutex(&name).unwrap();
        let racy = racy.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..ITERATIONS {
                let guard = if locked { Some(m.lock().await.unwrap()) } else { None };
                racy.increment().await;
                if let Some(g) = guard {
                    g.release().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (racy.value.load(Ordering::SeqCst), racy.overlaps.load(Ordering::SeqCst))
}

/// Many tasks of one provider, a non-atomic counter: ends exact, never two inside.
pub async fn mutex_excludes_tasks<H: Harness>(h: &H) {
    let (value, overlaps) = run_tasks(h, true, 1).await;
    assert_eq!(overlaps, 0, "two tasks were inside the lock at once");
    assert_eq!(value, TASKS * ITERATIONS);
}

/// The same run on four providers in one process: the backend itself excludes, not just the
/// in-process queue.
pub async fn mutex_excludes_across_providers<H: Harness>(h: &H) {
    let (value, overlaps) = run_tasks(h, true, 4).await;
    assert_eq!(overlaps, 0, "two holders from different providers overlapped");
    assert_eq!(value, TASKS * ITERATIONS);
}

/// Control: the same run without the lock loses updates, so the checks above can fail.
pub async fn unlocked_tasks_lose_updates<H: Harness>(h: &H) {
    let (value, overlaps) = run_tasks(h, false, 1).await;
    assert!(overlaps > 0 && value < TASKS * ITERATIONS, "the unlocked control did not race: {value}, {overlaps}");
}

/// OS threads through the blocking facade, each with its own acquisitions.
pub async fn mutex_excludes_threads<H: Harness>(h: &H) {
    let url = h.url();
    let name = unique("threads");
    let racy = Arc::new(Racy::default());
    let racy2 = racy.clone();
    // The blocking API refuses to run inside a runtime (spawn_blocking threads count), so drive
    // it from a plain OS thread and wait for that thread through a channel.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::scope(|s| {
            let providers: Vec<_> = (0..2).map(|_| interlock::blocking::connect(&url).unwrap()).collect();
            for t in 0..8 {
                let m = providers[t % 2].mutex(&name).unwrap();
                let racy = &racy2;
                s.spawn(move || {
                    for _ in 0..ITERATIONS {
                        let g = m.lock().unwrap();
                        racy.increment_blocking();
                        g.release().unwrap();
                    }
                });
            }
        });
        let _ = done_tx.send(());
    });
    done_rx.await.expect("the threads finished without panicking");
    assert_eq!(racy.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(racy.value.load(Ordering::SeqCst), 8 * ITERATIONS);
}

const PROCS: usize = 4;
const THREADS: usize = 3;
const PROC_ITERATIONS: usize = 25;

fn workers(no_lock: bool) -> process::Workers {
    process::Workers { processes: PROCS, threads: THREADS, iterations: PROC_ITERATIONS, no_lock }
}

/// P processes x T threads x K increments of a counter in a plain file, under the lock: exactly
/// P*T*K, and the fencing tokens, ordered by the value each holder read, strictly increase.
pub async fn mutex_excludes_processes<H: Harness>(h: &H) {
    let Some(bin) = h.bin() else { return not_applicable("mutex_excludes_processes", "no cross-process support") };
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let name = unique("procs");
    let mut log = process::run_workers(bin, &h.url(), &name, &counter, workers(false)).await;
    let total = (PROCS * THREADS * PROC_ITERATIONS) as u64;
    let value: u64 = std::fs::read_to_string(&counter).unwrap().trim().parse().unwrap();
    assert_eq!(value, total, "lost updates under the lock");
    log.sort();
    let values: Vec<u64> = log.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, (0..total).collect::<Vec<_>>(), "every value must be read exactly once");
    let tokens: Vec<u64> = log.iter().map(|(_, t)| t.expect("a fencing token")).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "fencing tokens must increase with the counter");
}

/// Control: the same processes without the lock lose updates.
pub async fn unlocked_processes_lose_updates<H: Harness>(h: &H) {
    let Some(bin) = h.bin() else {
        return not_applicable("unlocked_processes_lose_updates", "no cross-process support");
    };
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let name = unique("nolock");
    process::run_workers(bin, &h.url(), &name, &counter, workers(true)).await;
    // Racing unlocked writes lose updates, and can also leave a torn, larger number (a short
    // write over a longer one): any count but the exact one shows the race.
    let value: u64 = std::fs::read_to_string(&counter).unwrap().trim().parse().unwrap_or(0);
    let exact = (PROCS * THREADS * PROC_ITERATIONS) as u64;
    assert_ne!(value, exact, "the unlocked control did not lose updates ({value})");
}

/// A task that holds a lock and takes it again is refused: locks are not re-entrant.
pub async fn not_reentrant<H: Harness>(h: &H) {
    let p = h.provider().await;
    let m = p.mutex(unique("reentrant")).unwrap();
    let g = m.lock().await.unwrap();
    assert!(m.try_lock().await.unwrap().is_none(), "a second acquisition by the same task must be refused");
    g.release().await.unwrap();
}
