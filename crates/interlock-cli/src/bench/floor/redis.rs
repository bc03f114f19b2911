//! The redis backend's floors: `PING` round trips to the same server, on connections of their
//! own. A lock acquisition and a release are one round trip each at best, so the uncontended
//! floor is two `PING`s; the handoff floor is one `PING` after a local handoff (the waiter has to
//! hear of the release over the network once); contended and waiters hold a `tokio::sync::Mutex`
//! for a `PING` (plus the same critical section), so the floor pays one round trip per turn.
//!
//! `--start-server` starts a private `redis-server`, or a private 3-master Redis Cluster for
//! `redis+cluster://`, through the testkit's servers (leased loopback ports, temporary
//! directories, no persistence), and stops them by pid when the bench ends; they get SIGKILL as
//! their parent-death signal, so a `kill -9` of the bench does not leave them running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use interlock::redis::FloorConnection;

use super::{ContendedFloor, DrainFloor, Floors, HandoffFloor, StartedServer};
use crate::bench::clock::{self, now_ns, ns};
use crate::bench::counter::Counter;
use crate::bench::handoff::Pace;
use crate::bench::spawn;
use crate::bench::stats::{Measured, Samples};
use crate::bench::target::Target;
use crate::bench::waiters::{self, WaiterKind};
use crate::exit::{self, Failure};

pub(super) const FLOORS: Floors = Floors {
    backend: "redis",
    uncontended: |t, _, d| Box::pin(uncontended(t, d)),
    contended: |t, clients, d| Box::pin(contended(t, clients, d)),
    waiters: |t, w, kind| Box::pin(waiters(t, w, kind)),
    handoff: |t, holds, pace| Box::pin(handoff(t, holds, pace)),
    many_locks: |_, _| Ok(None),
    start_server: Some(start_server),
};

async fn open(target: &Target) -> Result<FloorConnection, Failure> {
    FloorConnection::open(target.secret_url()).await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
}

async fn ping(c: &mut FloorConnection) -> Result<(), Failure> {
    c.ping().await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
}

async fn uncontended(target: &Target, duration: Duration) -> Result<Vec<Measured>, Failure> {
    let mut c = open(target).await?;
    let mut out = Vec::new();
    for (what, n) in [("2 × PING (two round trips: acquire + release at best)", 2), ("PING (one round trip)", 1)] {
        let mut samples = Samples::with_capacity(1 << 16);
        let start = Instant::now();
        while start.elapsed() < duration {
            let t = Instant::now();
            for _ in 0..n {
                ping(&mut c).await?;
            }
            samples.push(clock::ns(t.elapsed()));
        }
        out.push(Measured::new(what, samples, start.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// `clients` tasks, each with its own connection, on one `tokio::sync::Mutex`: under it a `PING`,
/// the counter's read and write, and a `PING` (the two round trips of a lock, at best).
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
        let (mutex, counter, mut c) = (mutex.clone(), Counter::open(&path, false)?, open(target).await?);
        tasks.spawn(async move {
            let start = now_ns();
            let end = start.saturating_add(ns(duration));
            let mut count = 0u64;
            loop {
                let guard = mutex.lock().await;
                ping(&mut c).await?;
                counter.write(counter.read()?.saturating_add(1))?;
                ping(&mut c).await?;
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
    let what = "C tasks (a connection each) on one tokio::sync::Mutex: PING, critical section, PING".into();
    Ok(Some((what, results, Counter::value(&path)?)))
}

/// W tasks (a connection each) queued on one `tokio::sync::Mutex`; each holds it for a `PING`
/// and the waiters' hold.
async fn waiters(target: &Target, w: u32, kind: WaiterKind) -> Result<Option<DrainFloor>, Failure> {
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let holder = mutex.clone().lock_owned().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..w {
        let (mutex, mut c) = (mutex.clone(), open(target).await?);
        tasks.spawn(async move {
            let guard = mutex.lock().await;
            ping(&mut c).await?;
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
        WaiterKind::Process => "W tasks (a connection each; not processes) on one tokio::sync::Mutex, a PING per turn",
        WaiterKind::Task => "W tasks (a connection each) on one tokio::sync::Mutex, a PING per turn",
    };
    Ok(Some((what.into(), (last - t0) as f64 / 1e9)))
}

/// Two threads hand a `tokio::sync::Mutex` back and forth; the new holder sends one `PING`
/// before it counts as holding: a handoff that crosses the network once.
async fn handoff(target: &Target, holds: u64, pace: Pace) -> Result<Option<HandoffFloor>, Failure> {
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let url = target.secret_url().to_owned();
    let holds = spawn::threads(2, |_| {
        let (mutex, url) = (mutex.clone(), url.clone());
        async move {
            let mut c =
                FloorConnection::open(&url).await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))?;
            let mut out = Vec::with_capacity(usize::try_from(holds).unwrap_or(0));
            for _ in 0..holds {
                let guard = mutex.lock().await;
                ping(&mut c).await?;
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
    Ok(Some(("tokio::sync::Mutex + one PING by the new holder, 2 threads".into(), holds)))
}

/// `--start-server` for `redis://` (one private `redis-server`) and `redis+cluster://` (a private
/// cluster of three masters), started through the testkit: leased loopback ports, a temporary
/// directory, no persistence, SIGKILL as their parent-death signal and a reaper that removes
/// what is left, so they never outlive this run, even after a `kill -9` of the bench.
pub(super) fn start_server(url: &str) -> Result<StartedServer, Failure> {
    use interlock_testkit::servers::redis::{Redis, RedisOptions};
    use interlock_testkit::servers::redis_cluster::RedisCluster;
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "redis" => {
            let server = Redis::start(&RedisOptions::default()).map_err(start_failure)?;
            let pid = server.pid().map_or_else(|| "?".to_owned(), |p| p.to_string());
            eprintln!("interlock bench: started redis-server (pid {pid}) on 127.0.0.1:{}", server.port());
            Ok(StartedServer { url: server.url(0), _stop_on_drop: Box::new(server) })
        }
        "redis+cluster" => {
            let cluster = RedisCluster::start(3).map_err(start_failure)?;
            eprintln!("interlock bench: started a 3-master Redis Cluster at {}", cluster.url());
            Ok(StartedServer { url: cluster.url(), _stop_on_drop: Box::new(cluster) })
        }
        _ => Err(Failure::new(
            exit::USAGE,
            format!(
                "--start-server starts `redis://` and `redis+cluster://` servers, not `{scheme}://` ones: start it yourself"
            ),
        )),
    }
}

/// A testkit start error as one line: a missing program says how to install it.
pub(super) fn start_failure(e: interlock_testkit::servers::StartError) -> Failure {
    match e {
        interlock_testkit::servers::StartError::Missing { program } => Failure::new(
            exit::UNAVAILABLE,
            format!("--start-server: {program} is not installed (Debian: apt-get install redis-server)"),
        ),
        e => {
            let text = e.to_string();
            Failure::new(
                exit::UNAVAILABLE,
                format!("--start-server: {}", text.lines().next().unwrap_or("cannot start")),
            )
        }
    }
}
