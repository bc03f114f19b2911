//! The floors: what each backend cannot beat, measured in the same run so that every figure is
//! also a ratio. Each backend's floors live in their own file here (`file.rs`, `memory.rs`) as
//! one [`Floors`] value, listed once in [`FLOORS`]; a backend without an entry simply has no
//! floor yet (network backends add theirs: Redis `PING`; later ZooKeeper `exists`, an etcd range
//! read, `SELECT 1`).
//!
//! | backend | uncontended | contended | handoff | many-locks | waiters |
//! |---|---|---|---|---|---|
//! | file | `flock(LOCK_EX)` + `flock(LOCK_UN)` on an open descriptor; also open+flock+unlock+close, what `flock(1)` does per call | C processes, blocking `flock` on an open descriptor | two processes handing a raw blocking `flock` back and forth (the kernel wakes the waiter) | open+`flock` N files, then close them | W processes blocked in `flock` (the kernel queues them) |
//! | memory | `tokio::sync::Mutex` lock + unlock (RwLock / Semaphore for those modes) | C tasks on one `tokio::sync::Mutex` | two threads handing a `tokio::sync::Mutex` back and forth | N `tokio::sync::Mutex` guards | W tasks on one `tokio::sync::Mutex` |
//! | redis | 2 × `PING` (acquire + release at best), and 1 × `PING` | C tasks, a connection each, on one `tokio::sync::Mutex`: `PING`, critical section, `PING` | two threads handing a `tokio::sync::Mutex`, the new holder sends one `PING` | none | W tasks on one `tokio::sync::Mutex`, a `PING` per turn |
//! | redlock | 2 × a `PING` round (one `PING` to every master at once, all answers awaited), and 1 × | as redis, with rounds | as redis, with one round | none | as redis, a round per turn |
//!
//! Waiter *tasks* use the `tokio::sync::Mutex` floor on every backend ([`task_waiters`]).

mod file;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redlock")]
mod redlock;
#[cfg(feature = "redis")]
mod round_trip;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use file::{flock, flock_hold_loop, flock_wait_once, open_floor_file};

use super::clock::{self, now_ns};
use super::contended::ClientResult;
use super::handoff::{Hold, Pace};
use super::mode::Mode;
use super::spawn;
use super::stats::{Measured, Samples};
use super::target::Target;
use super::waiters::{self, WaiterKind};
use crate::exit::{self, Failure};

/// A floor measurement in progress.
pub type Floor<'a, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + 'a>>;

/// What the contended floor returns: what the clients took, each client's result, the final
/// counter.
pub type ContendedFloor = (String, Vec<ClientResult>, u64);

/// What the waiters floor returns: what queued, and the drain time in seconds.
pub type DrainFloor = (String, f64);

/// What the handoff floor returns: what it is, and the holds of each of its two clients.
pub type HandoffFloor = (String, Vec<Vec<Hold>>);

/// One backend's floors, one function per workload (`None`: that workload has no floor there).
pub struct Floors {
    /// The backend's registry name.
    pub backend: &'static str,
    /// The uncontended floors; the first is the one ratios are taken against.
    pub uncontended: for<'a> fn(&'a Target, Mode, Duration) -> Floor<'a, Vec<Measured>>,
    /// The contended floor with this many clients for this long.
    pub contended: for<'a> fn(&'a Target, u32, Duration) -> Floor<'a, Option<ContendedFloor>>,
    /// The waiters floor: what queued, and the drain time in seconds.
    pub waiters: for<'a> fn(&'a Target, u32, WaiterKind) -> Floor<'a, Option<DrainFloor>>,
    /// The handoff floor: what it is, and the holds of each of its two clients.
    pub handoff: for<'a> fn(&'a Target, u64, Pace) -> Floor<'a, Option<HandoffFloor>>,
    /// The many-locks floor.
    pub many_locks: fn(&Target, u64) -> Result<Option<ManyFloor>, Failure>,
    /// `--start-server`: starts private servers for the URL given (its scheme says which: one
    /// server, a cluster, several masters), through the testkit (leased loopback ports, temporary
    /// directories, never outliving the bench), and returns the URL to bench and a handle that
    /// stops them when dropped; `None` for backends that need no server.
    pub start_server: Option<StartServer>,
}

/// `--start-server` of one backend: the URL given in, the servers started out.
pub type StartServer = fn(&str) -> Result<StartedServer, Failure>;

/// A private server started for one `interlock bench` run: its URL, and what stops it on drop.
pub struct StartedServer {
    /// The URL to bench.
    pub url: String,
    /// Stops the server when dropped.
    pub _stop_on_drop: Box<dyn std::any::Any>,
}

/// The floors of the backend that `url`'s scheme names.
pub fn floors_for_url(url: &str) -> Option<&'static Floors> {
    let scheme = interlock::LockUrl::parse(url).ok()?.scheme().to_owned();
    let backend = interlock::backends::for_scheme(&scheme)?;
    FLOORS.iter().copied().find(|f| f.backend == backend.name)
}

/// The backends whose contended floor keeps the lock for [`Target::hold`] as ours does.
pub const HOLD_AWARE: &[&str] = &["file", "memory"];

/// Every backend's floors.
static FLOORS: &[&Floors] = &[
    &file::FLOORS,
    &memory::FLOORS,
    #[cfg(feature = "redis")]
    &redis::FLOORS,
    #[cfg(feature = "redlock")]
    &redlock::FLOORS,
];

fn floors_of(target: &Target) -> Option<&'static Floors> {
    FLOORS.iter().copied().find(|f| f.backend == target.backend)
}

/// The backend's uncontended floors; the first is the one ratios are taken against.
///
/// # Errors
///
/// 74 when the floor's file cannot be used.
pub async fn uncontended(target: &Target, mode: Mode, duration: Duration) -> Result<Vec<Measured>, Failure> {
    match floors_of(target) {
        Some(f) => (f.uncontended)(target, mode, duration).await,
        None => Ok(Vec::new()),
    }
}

/// The backend's contended floor: what the clients took, each client's result, and the final
/// counter.
///
/// # Errors
///
/// As for starting and collecting clients; 74 for the counter file.
pub async fn contended(target: &Target, clients: u32, duration: Duration) -> Result<Option<ContendedFloor>, Failure> {
    match floors_of(target) {
        // A floor that would not hold the lock as long as ours did is no floor: none rather than a
        // wrong ratio.
        Some(f) if !target.hold.is_zero() && !HOLD_AWARE.contains(&f.backend) => Ok(None),
        Some(f) => (f.contended)(target, clients, duration).await,
        None => Ok(None),
    }
}

/// The waiters floor: what queued, and the drain time (seconds from the release to the last
/// waiter's acquisition).
///
/// # Errors
///
/// As for starting and collecting clients.
pub async fn waiters(target: &Target, w: u32, kind: WaiterKind) -> Result<Option<DrainFloor>, Failure> {
    match floors_of(target) {
        Some(f) => (f.waiters)(target, w, kind).await,
        None => Ok(None),
    }
}

/// The backend's handoff floor: what it is, and the holds of each of its two clients.
///
/// # Errors
///
/// As for starting and collecting clients.
pub async fn handoff(target: &Target, holds: u64, pace: Pace) -> Result<Option<HandoffFloor>, Failure> {
    match floors_of(target) {
        Some(f) => (f.handoff)(target, holds, pace).await,
        None => Ok(None),
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
    match floors_of(target) {
        Some(f) => (f.many_locks)(target, n),
        None => Ok(None),
    }
}

/// The waiters floor for waiter *tasks*, on every backend: W tasks on one `tokio::sync::Mutex`.
///
/// # Errors
///
/// When a task fails.
pub async fn task_waiters(w: u32) -> Result<Option<DrainFloor>, Failure> {
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
