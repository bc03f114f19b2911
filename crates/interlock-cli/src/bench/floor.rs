//! The floors: what each backend cannot beat, measured in the same run so that every figure is
//! also a ratio. One `match` arm per backend in each function; a backend without an arm simply
//! has no floor yet (network backends will add theirs: Redis `PING`, ZooKeeper `exists`, an etcd
//! range read, `SELECT 1`).
//!
//! | backend | uncontended | contended | handoff | many-locks | waiters |
//! |---|---|---|---|---|---|
//! | file | `flock(LOCK_EX)` + `flock(LOCK_UN)` on an open descriptor; also open+flock+unlock+close, what `flock(1)` does per call | C processes, blocking `flock` on an open descriptor | two processes handing a raw blocking `flock` back and forth (the kernel wakes the waiter) | open+`flock` N files, then close them | W processes blocked in `flock` (the kernel queues them) |
//! | memory | `tokio::sync::Mutex` lock + unlock (RwLock / Semaphore for those modes) | C tasks on one `tokio::sync::Mutex` | two threads handing a `tokio::sync::Mutex` back and forth | N `tokio::sync::Mutex` guards | W tasks on one `tokio::sync::Mutex` |
//!
//! Waiter *tasks* use the `tokio::sync::Mutex` floor on every backend.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use serde::Serialize;

use super::clock::{self, now_ns};
use super::contended::{self, ClientResult};
use super::handoff::{Hold, Pace};
use super::mode::Mode;
use super::spawn::{self, Clients};
use super::stats::{Measured, Samples};
use super::target::Target;
use super::waiters::{self, WaiterKind};
use crate::exit::{self, Failure};

/// The backend's uncontended floors; the first is the one ratios are taken against.
///
/// # Errors
///
/// 74 when the floor's file cannot be used.
pub async fn uncontended(target: &Target, mode: Mode, duration: Duration) -> Result<Vec<Measured>, Failure> {
    match (target.backend, &target.lock_dir) {
        ("file", Some(dir)) => {
            let path = dir.join(target.name("uncontended-floor"));
            let op = if mode == Mode::Read { FlockOperation::LockShared } else { FlockOperation::LockExclusive };
            let side = if mode == Mode::Read { "LOCK_SH" } else { "LOCK_EX" };
            let file = open_floor_file(&path)?;
            let pair = timed(&format!("flock({side}) + flock(LOCK_UN), open fd"), duration, || {
                flock(&file, op)?;
                flock(&file, FlockOperation::Unlock)
            })?;
            let full = timed("open + flock + unlock + close (flock(1))", duration, || {
                let f = open_floor_file(&path)?;
                flock(&f, op)?;
                flock(&f, FlockOperation::Unlock)
            })?;
            Ok(vec![pair, full])
        }
        ("memory", _) => Ok(vec![memory_uncontended(mode, duration).await]),
        _ => Ok(Vec::new()),
    }
}

/// The backend's contended floor: what the clients took, each client's result, and the final
/// counter.
///
/// # Errors
///
/// As for starting and collecting clients; 74 for the counter file.
pub async fn contended(
    target: &Target,
    clients: u32,
    duration: Duration,
) -> Result<Option<(String, Vec<ClientResult>, u64)>, Failure> {
    match (target.backend, &target.lock_dir) {
        ("file", Some(dir)) => {
            let path = dir.join(target.name("contended-floor"));
            open_floor_file(&path)?;
            let args = |counter: &Path| {
                ["--job", "contended-floor", "--file"]
                    .map(String::from)
                    .into_iter()
                    .chain([path.display().to_string(), "--counter".into(), counter.display().to_string()])
                    .chain(["--duration".into(), duration.as_secs_f64().to_string()])
                    .collect()
            };
            let (results, counter) = contended::floor_processes(clients, duration, args).await?;
            Ok(Some(("blocking flock(LOCK_EX) on an open descriptor, same critical section".into(), results, counter)))
        }
        ("memory", _) => {
            let (results, counter) = contended::floor_tasks(clients, duration).await?;
            Ok(Some(("tokio::sync::Mutex shared by the tasks, same critical section".into(), results, counter)))
        }
        _ => Ok(None),
    }
}

/// The waiters floor: what queued, and the drain time (seconds from the release to the last
/// waiter's acquisition).
///
/// # Errors
///
/// As for starting and collecting clients.
pub async fn waiters(target: &Target, w: u32, kind: WaiterKind) -> Result<Option<(String, f64)>, Failure> {
    match (target.backend, &target.lock_dir, kind) {
        ("file", Some(dir), WaiterKind::Process) => {
            let path = dir.join(target.name("waiters-floor"));
            let holder = open_floor_file(&path)?;
            flock(&holder, FlockOperation::LockExclusive)?;
            let args = |_| {
                ["--job", "waiter-floor", "--file"]
                    .map(String::from)
                    .into_iter()
                    .chain([path.display().to_string(), "--hold-us".into(), waiters::HOLD.as_micros().to_string()])
                    .collect()
            };
            let mut c = Clients::start(w as usize, None, args).await?;
            c.go();
            c.wait_for("going", Duration::from_secs(120)).await?;
            tokio::time::sleep(waiters::settle(w)).await;
            let t0 = now_ns();
            flock(&holder, FlockOperation::Unlock)?;
            drop(holder);
            let lines = c.finish(Duration::from_secs(60) + Duration::from_millis(50) * w).await?;
            let mut last = t0;
            for l in &lines {
                if let [_, t] = spawn::numbers(l, "done")?[..] {
                    last = last.max(t);
                }
            }
            Ok(Some((
                "W processes blocked in flock(LOCK_EX) (the kernel queues them)".into(),
                (last - t0) as f64 / 1e9,
            )))
        }
        ("file" | "memory", ..) => {
            let mutex = Arc::new(tokio::sync::Mutex::new(()));
            let holder = mutex.clone().lock_owned().await;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..w {
                let mutex = mutex.clone();
                tasks.spawn(async move {
                    let guard = mutex.lock().await;
                    let acquired = now_ns();
                    tokio::time::sleep(waiters::HOLD).await;
                    drop(guard);
                    acquired
                });
            }
            tokio::time::sleep(waiters::settle(w) / 4).await;
            let t0 = now_ns();
            drop(holder);
            let mut last = t0;
            while let Some(r) = tasks.join_next().await {
                last = last.max(r.map_err(|_| Failure::new(exit::IO_ERROR, "a waiter floor task failed"))?);
            }
            Ok(Some(("W tasks on one tokio::sync::Mutex".into(), (last - t0) as f64 / 1e9)))
        }
        _ => Ok(None),
    }
}

/// One waiter of the file floor: a blocking `flock`, hold, unlock; returns when it got the lock.
///
/// # Errors
///
/// 74 when `flock` fails.
pub fn flock_wait_once(file: &File, hold: Duration) -> Result<u64, Failure> {
    flock(file, FlockOperation::LockExclusive)?;
    let acquired = now_ns();
    std::thread::sleep(hold);
    flock(file, FlockOperation::Unlock)?;
    Ok(acquired)
}

/// The backend's handoff floor: what it is, and the holds of each of its two clients.
///
/// # Errors
///
/// As for starting and collecting clients.
pub async fn handoff(target: &Target, holds: u64, pace: Pace) -> Result<Option<(String, Vec<Vec<Hold>>)>, Failure> {
    match (target.backend, &target.lock_dir) {
        ("file", Some(dir)) => {
            let path = dir.join(target.name("handoff-floor"));
            open_floor_file(&path)?;
            let args = |_| {
                let mut a: Vec<String> = vec!["--job".into(), "handoff-floor".into(), "--file".into()];
                a.push(path.display().to_string());
                a.extend(pace.args(holds));
                a
            };
            let mut clients = Clients::start(2, None, args).await?;
            clients.go();
            let lines = clients.finish(pace.limit(holds)).await?;
            let holds = lines.iter().map(|l| parse_holds(l)).collect::<Result<Vec<_>, _>>()?;
            Ok(Some(("raw blocking flock, 2 processes (kernel wakeup)".into(), holds)))
        }
        ("memory", _) => {
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
        _ => Ok(None),
    }
}

/// The many-locks floor: how long it takes to take and to drop `n` raw locks.
#[derive(Clone, Debug, Serialize)]
pub struct ManyFloor {
    /// What was timed.
    pub what: String,
    /// Seconds to take them all.
    pub take_all_s: f64,
    /// Seconds to release them all.
    pub release_all_s: f64,
}

/// The backend's many-locks floor.
///
/// # Errors
///
/// 74 when a floor file cannot be used (e.g. out of file descriptors).
pub fn many_locks(target: &Target, n: u64) -> Result<Option<ManyFloor>, Failure> {
    match (target.backend, &target.lock_dir) {
        ("file", Some(dir)) => {
            let t = Instant::now();
            let mut files = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            for i in 0..n {
                let f = open_floor_file(&dir.join(format!("{}-{i}", target.name("many-locks-floor"))))?;
                flock(&f, FlockOperation::NonBlockingLockExclusive)?;
                files.push(f);
            }
            let take_all_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            drop(files);
            let release_all_s = t.elapsed().as_secs_f64();
            Ok(Some(ManyFloor {
                what: "open + flock(LOCK_EX|LOCK_NB) each file, then close".into(),
                take_all_s,
                release_all_s,
            }))
        }
        ("memory", _) => {
            let mutexes: Vec<_> = (0..n).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect();
            let t = Instant::now();
            let guards: Vec<_> = mutexes.iter().filter_map(|m| m.clone().try_lock_owned().ok()).collect();
            let take_all_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            drop(guards);
            let release_all_s = t.elapsed().as_secs_f64();
            Ok(Some(ManyFloor { what: "tokio::sync::Mutex::try_lock_owned each".into(), take_all_s, release_all_s }))
        }
        _ => Ok(None),
    }
}

/// Opens (creating, mode 0600) a floor's file in the lock directory, never through a symlink.
///
/// # Errors
///
/// 74 when it cannot be opened.
pub fn open_floor_file(path: &Path) -> Result<File, Failure> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Failure::io(format!("cannot open floor file {}", path.display()), e))
}

/// One client of the file handoff floor: `holds` times take `file` with a blocking `flock`, hold
/// it, release it, pause.
///
/// # Errors
///
/// 74 when `flock` fails.
pub fn flock_hold_loop(file: &File, holds: u64, pace: Pace) -> Result<Vec<Hold>, Failure> {
    let mut out = Vec::with_capacity(usize::try_from(holds).unwrap_or(0));
    for _ in 0..holds {
        flock(file, FlockOperation::LockExclusive)?;
        let acquired = now_ns();
        pace.hold_blocking();
        let released = now_ns();
        flock(file, FlockOperation::Unlock)?;
        out.push((acquired, released));
        pace.pause_blocking();
    }
    Ok(out)
}

/// Parses a client's `hold ACQ REL` lines.
///
/// # Errors
///
/// 69 for a malformed line.
pub fn parse_holds(lines: &[String]) -> Result<Vec<Hold>, Failure> {
    spawn::all_numbers(lines, "hold")?
        .into_iter()
        .map(|v| match v[..] {
            [a, r] => Ok((a, r)),
            _ => Err(Failure::new(exit::UNAVAILABLE, "a bench client printed a malformed hold line")),
        })
        .collect()
}

/// `flock(2)`, retried when interrupted.
///
/// # Errors
///
/// 74 when it fails.
pub fn flock(file: &File, op: FlockOperation) -> Result<(), Failure> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Failure::io("flock", e.into())),
        }
    }
}

/// Times `op` back to back for `duration`.
fn timed(what: &str, duration: Duration, mut op: impl FnMut() -> Result<(), Failure>) -> Result<Measured, Failure> {
    let mut samples = Samples::with_capacity(1 << 18);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        op()?;
        samples.push(clock::ns(t.elapsed()));
    }
    Ok(Measured::new(what, samples, start.elapsed().as_secs_f64()))
}

/// The in-process floor: a tokio primitive of the same kind, taken and released in a loop.
async fn memory_uncontended(mode: Mode, duration: Duration) -> Measured {
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
