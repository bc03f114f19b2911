//! The redlock backend's floors: one `PING` to every master at once, on connections of their
//! own, and waiting for all N answers (the slowest of N round trips): what one Redlock round
//! costs at best. A lock acquisition and a release are one round each at best, so the
//! uncontended floor is two such rounds; the handoff floor is one round after a local handoff;
//! contended and waiters hold a `tokio::sync::Mutex` for a round, as the redis floors do for a
//! `PING`.
//!
//! `--start-server` starts three private `redis-server` masters (the redis floor's
//! `--start-server`, three times) and kills them, by pid, when the bench ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use interlock::redlock::FloorConnections;

use super::{ContendedFloor, DrainFloor, Floors, HandoffFloor, StartedServer};
use crate::bench::clock::{self, now_ns, ns};
use crate::bench::counter::Counter;
use crate::bench::handoff::Pace;
use crate::bench::spawn;
use crate::bench::stats::{Measured, Samples};
use crate::bench::target::Target;
use crate::bench::waiters::{self, WaiterKind};
use crate::exit::{self, Failure};

/// How many masters `--start-server` starts.
const MASTERS: usize = 3;

pub(super) const FLOORS: Floors = Floors {
    backend: "redlock",
    uncontended: |t, _, d| Box::pin(uncontended(t, d)),
    contended: |t, clients, d| Box::pin(contended(t, clients, d)),
    waiters: |t, w, kind| Box::pin(waiters(t, w, kind)),
    handoff: |t, holds, pace| Box::pin(handoff(t, holds, pace)),
    many_locks: |_, _| Ok(None),
    start_server: Some(start_servers),
};

async fn open(url: &str) -> Result<FloorConnections, Failure> {
    FloorConnections::open(url).await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
}

async fn round(c: &mut FloorConnections) -> Result<(), Failure> {
    c.ping_all().await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
}

async fn uncontended(target: &Target, duration: Duration) -> Result<Vec<Measured>, Failure> {
    let mut c = open(target.secret_url()).await?;
    let n = c.len();
    let mut out = Vec::new();
    for (what, rounds) in [
        (format!("2 × PING round to all {n} masters (acquire + release at best)"), 2),
        (format!("PING round to all {n} masters at once (one Redlock round)"), 1),
    ] {
        let mut samples = Samples::with_capacity(1 << 16);
        let start = Instant::now();
        while start.elapsed() < duration {
            let t = Instant::now();
            for _ in 0..rounds {
                round(&mut c).await?;
            }
            samples.push(clock::ns(t.elapsed()));
        }
        out.push(Measured::new(what, samples, start.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// `clients` tasks, each with its own connections, on one `tokio::sync::Mutex`: under it a
/// round, the counter's read and write, and a round.
async fn contended(target: &Target, clients: u32, duration: Duration) -> Result<Option<ContendedFloor>, Failure> {
    let tmp = tempfile::Builder::new()
        .prefix("interlock-bench-")
        .tempdir()
        .map_err(|e| Failure::io("cannot create a temporary directory for the counter", e))?;
    let path = tmp.path().join("counter");
    Counter::create(&path)?;
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (mutex, counter, mut c) = (mutex.clone(), Counter::open(&path, false)?, open(target.secret_url()).await?);
        tasks.spawn(async move {
            let start = now_ns();
            let end = start.saturating_add(ns(duration));
            let mut count = 0u64;
            loop {
                let guard = mutex.lock().await;
                round(&mut c).await?;
                counter.write(counter.read()?.saturating_add(1))?;
                round(&mut c).await?;
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
    let what = "C tasks (connections each) on one tokio::sync::Mutex: PING round, critical section, PING round".into();
    Ok(Some((what, results, Counter::value(&path)?)))
}

/// W tasks queued on one `tokio::sync::Mutex`; each holds it for a round and the waiters' hold.
async fn waiters(target: &Target, w: u32, kind: WaiterKind) -> Result<Option<DrainFloor>, Failure> {
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let holder = mutex.clone().lock_owned().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..w {
        let (mutex, mut c) = (mutex.clone(), open(target.secret_url()).await?);
        tasks.spawn(async move {
            let guard = mutex.lock().await;
            round(&mut c).await?;
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
        WaiterKind::Process => "W tasks (not processes) on one tokio::sync::Mutex, a PING round per turn",
        WaiterKind::Task => "W tasks on one tokio::sync::Mutex, a PING round per turn",
    };
    Ok(Some((what.into(), (last - t0) as f64 / 1e9)))
}

/// Two threads hand a `tokio::sync::Mutex` back and forth; the new holder sends one round
/// before it counts as holding.
async fn handoff(target: &Target, holds: u64, pace: Pace) -> Result<Option<HandoffFloor>, Failure> {
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let url = target.secret_url().to_owned();
    let holds = spawn::threads(2, |_| {
        let (mutex, url) = (mutex.clone(), url.clone());
        async move {
            let mut c = open(&url).await?;
            let mut out = Vec::with_capacity(usize::try_from(holds).unwrap_or(0));
            for _ in 0..holds {
                let guard = mutex.lock().await;
                round(&mut c).await?;
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
    Ok(Some(("tokio::sync::Mutex + one PING round by the new holder, 2 threads".into(), holds)))
}

/// Starts private `redis-server`s through the testkit (see the redis floor's `start_server`):
/// as many as the URL names hosts when that is 3 or more, else [`MASTERS`], and returns the
/// `redlock://` URL of all of them.
fn start_servers(url: &str) -> Result<StartedServer, Failure> {
    use interlock_testkit::servers::redis::{RedisGroup, RedisOptions};
    let named = url.split_once("://").map_or("", |(_, rest)| rest).split(['/', '?']).next().unwrap_or("");
    let n = named.split(',').filter(|h| !h.is_empty()).count();
    let n = if n >= 3 { n } else { MASTERS };
    let group = RedisGroup::start(n, &RedisOptions::default()).map_err(super::redis::start_failure)?;
    let hosts: Vec<String> = group.members().iter().map(|m| format!("127.0.0.1:{}", m.port())).collect();
    eprintln!("interlock bench: started {n} redis-server masters on {}", hosts.join(","));
    Ok(StartedServer { url: format!("redlock://{}/0", hosts.join(",")), _stop_on_drop: Box::new(group) })
}
