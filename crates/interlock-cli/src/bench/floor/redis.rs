//! The redis backend's floors: `PING` round trips to the same server, on connections of their
//! own (see [`super::round_trip`] for what each workload's floor does with one).
//!
//! `--start-server` starts a private `redis-server`, or a private 3-master Redis Cluster for
//! `redis+cluster://`, through the testkit's servers (leased loopback ports, temporary
//! directories, no persistence), and stops them by pid when the bench ends; they get SIGKILL as
//! their parent-death signal, so a `kill -9` of the bench does not leave them running.

use interlock::redis::FloorConnection;

use super::round_trip::{self, RoundTrip};
use super::{Floors, StartedServer};
use crate::exit::{self, Failure};

pub(super) const FLOORS: Floors = Floors {
    backend: "redis",
    uncontended: |t, _, d| {
        Box::pin(round_trip::uncontended::<FloorConnection>(t, d, |_| {
            [("2 × PING (two round trips: acquire + release at best)".into(), 2), ("PING (one round trip)".into(), 1)]
        }))
    },
    contended: |t, clients, d| {
        Box::pin(round_trip::contended::<FloorConnection>(
            t,
            clients,
            d,
            "C tasks (a connection each) on one tokio::sync::Mutex: PING, critical section, PING",
        ))
    },
    waiters: |t, w, kind| {
        Box::pin(round_trip::waiters::<FloorConnection>(
            t,
            w,
            kind,
            [
                "W tasks (a connection each; not processes) on one tokio::sync::Mutex, a PING per turn",
                "W tasks (a connection each) on one tokio::sync::Mutex, a PING per turn",
            ],
        ))
    },
    handoff: |t, holds, pace| {
        Box::pin(round_trip::handoff::<FloorConnection>(
            t,
            holds,
            pace,
            "tokio::sync::Mutex + one PING by the new holder, 2 threads",
        ))
    },
    many_locks: |_, _| Ok(None),
    start_server: Some(start_server),
};

impl RoundTrip for FloorConnection {
    async fn open(url: &str) -> Result<Self, Failure> {
        FloorConnection::open(url).await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
    }

    async fn round(&mut self) -> Result<(), Failure> {
        self.ping().await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
    }
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
