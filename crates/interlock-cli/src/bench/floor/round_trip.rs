//! Floors for backends whose lock operations are network rounds (redis, redlock): a lock's
//! acquisition and release are one round each at best, so the uncontended floor is two rounds;
//! the handoff floor is one round after a local handoff (the waiter has to hear of the release
//! over the network once); contended and waiters hold a `tokio::sync::Mutex` for a round (plus
//! the same critical section), so the floor pays one round per turn. What a round is comes from
//! the backend: a `PING` to one server, or a `PING` to every Redlock master at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ContendedFloor, DrainFloor, HandoffFloor};
use crate::bench::clock::{self, now_ns, ns};
use crate::bench::counter::Counter;
use crate::bench::handoff::Pace;
use crate::bench::spawn;
use crate::bench::stats::{Measured, Samples};
use crate::bench::target::Target;
use crate::bench::waiters::{self, WaiterKind};
use crate::exit::{self, Failure};

/// A connection (or set of connections) of its own that can do one round.
pub(super) trait RoundTrip: Sized + Send + 'static {
    /// Connects to the backend at `url`.
    fn open(url: &str) -> impl Future<Output = Result<Self, Failure>> + Send;
    /// One round: what one lock operation costs at best.
    fn round(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Rounds in a loop for `duration`, once per row: `rows(connection)` names each row and says how
/// many rounds one sample takes (2 for a lock and a release, 1 for a single operation).
pub(super) async fn uncontended<R: RoundTrip>(
    target: &Target,
    duration: Duration,
    rows: fn(&R) -> [(String, u32); 2],
) -> Result<Vec<Measured>, Failure> {
    let mut c = R::open(target.secret_url()).await?;
    let mut out = Vec::new();
    for (what, rounds) in rows(&c) {
        let mut samples = Samples::with_capacity(1 << 16);
        let start = Instant::now();
        while start.elapsed() < duration {
            let t = Instant::now();
            for _ in 0..rounds {
                c.round().await?;
            }
            samples.push(clock::ns(t.elapsed()));
        }
        out.push(Measured::new(what, samples, start.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// `clients` tasks, each with its own connection, on one `tokio::sync::Mutex`: under it a round,
/// the counter's read and write, and a round (the two rounds of a lock, at best).
pub(super) async fn contended<R: RoundTrip>(
    target: &Target,
    clients: u32,
    duration: Duration,
    what: &str,
) -> Result<Option<ContendedFloor>, Failure> {
    let tmp = tempfile::Builder::new()
        .prefix("interlock-bench-")
        .tempdir()
        .map_err(|e| Failure::io("cannot create a temporary directory for the counter", e))?;
    let path = tmp.path().join("counter");
    Counter::create(&path)?;
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (mutex, counter, mut c) =
            (mutex.clone(), Counter::open(&path, false)?, R::open(target.secret_url()).await?);
        tasks.spawn(async move {
            let start = now_ns();
            let end = start.saturating_add(ns(duration));
            let mut count = 0u64;
            loop {
                let guard = mutex.lock().await;
                c.round().await?;
                counter.write(counter.read()?.saturating_add(1))?;
                c.round().await?;
                drop(guard);
                count += 1;
                if now_ns() >= end {
                    return Ok::<_, Failure>((count, now_ns() - start, 0));
                }
            }
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.map_err(|_| Failure::new(exit::IO_ERROR, "a contended floor task failed"))??);
    }
    Ok(Some((what.to_owned(), results, Counter::value(&path)?)))
}

/// W tasks (a connection each) queued on one `tokio::sync::Mutex`; each holds it for a round and
/// the waiters' hold. `what`: the row for waiter processes (which the floor runs as tasks) and
/// for waiter tasks.
pub(super) async fn waiters<R: RoundTrip>(
    target: &Target,
    w: u32,
    kind: WaiterKind,
    what: [&str; 2],
) -> Result<Option<DrainFloor>, Failure> {
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let holder = mutex.clone().lock_owned().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..w {
        let (mutex, mut c) = (mutex.clone(), R::open(target.secret_url()).await?);
        tasks.spawn(async move {
            let guard = mutex.lock().await;
            c.round().await?;
            let acquired = now_ns();
            tokio::time::sleep(waiters::HOLD).await;
            drop(guard);
            Ok::<_, Failure>(acquired)
        });
    }
    tokio::time::sleep(waiters::settle(w) / 4).await;
    let t0 = now_ns();
    drop(holder);
    let mut last = t0;
    while let Some(r) = tasks.join_next().await {
        last = last.max(r.map_err(|_| Failure::new(exit::IO_ERROR, "a waiter floor task failed"))??);
    }
    let what = match kind {
        WaiterKind::Process => what[0],
        WaiterKind::Task => what[1],
    };
    Ok(Some((what.into(), (last - t0) as f64 / 1e9)))
}

/// Two threads hand a `tokio::sync::Mutex` back and forth; the new holder does one round before
/// it counts as holding: a handoff that crosses the network once.
pub(super) async fn handoff<R: RoundTrip>(
    target: &Target,
    holds: u64,
    pace: Pace,
    what: &str,
) -> Result<Option<HandoffFloor>, Failure> {
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let url = target.secret_url().to_owned();
    let holds = spawn::threads(2, |_| {
        let (mutex, url) = (mutex.clone(), url.clone());
        async move {
            let mut c = R::open(&url).await?;
            let mut out = Vec::with_capacity(usize::try_from(holds).unwrap_or(0));
            for _ in 0..holds {
                let guard = mutex.lock().await;
                c.round().await?;
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
    Ok(Some((what.to_owned(), holds)))
}
