//! The redis backend's floors: `PING` round trips to the same server, on connections of their
//! own (see [`super::round_trip`] for what each workload's floor does with one). The library
//! opens them ([`interlock::redis::raw_connection`], as its own connections: TLS, ACL user,
//! database); the bench times its `PING`s here.
//!
//! `--start-server` starts a private `redis-server`, or a private 3-master Redis Cluster for
//! `redis+cluster://`, through the testkit's servers (leased loopback ports, temporary
//! directories, no persistence), and stops them by pid when the bench ends; they get SIGKILL as
//! their parent-death signal, so a `kill -9` of the bench does not leave them running.

use interlock::redis::RawConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

use super::round_trip::{self, RoundTrip};
use super::{Floors, StartedServer};
use crate::exit::{self, Failure};

pub(super) const FLOORS: Floors = Floors {
    backend: "redis",
    uncontended: |t, _, d| {
        Box::pin(round_trip::uncontended::<Ping>(t, d, |_| {
            [("2 × PING (two round trips: acquire + release at best)".into(), 2), ("PING (one round trip)".into(), 1)]
        }))
    },
    contended: |t, clients, d| {
        Box::pin(round_trip::contended::<Ping>(
            t,
            clients,
            d,
            "C tasks (a connection each) on one tokio::sync::Mutex: PING, critical section, PING",
        ))
    },
    waiters: |t, w, kind| {
        Box::pin(round_trip::waiters::<Ping>(
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
        Box::pin(round_trip::handoff::<Ping>(
            t,
            holds,
            pace,
            "tokio::sync::Mutex + one PING by the new holder, 2 threads",
        ))
    },
    many_locks: |_, _| Ok(None),
    start_server: Some(start_server),
};

/// A connection of its own to the server of the URL; a round is one `PING`.
pub(super) struct Ping(RawConnection);

impl RoundTrip for Ping {
    async fn open(url: &str) -> Result<Self, Failure> {
        let conn =
            interlock::redis::raw_connection(url).await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))?;
        let mut c = Ping(conn);
        c.round().await?;
        Ok(c)
    }

    async fn round(&mut self) -> Result<(), Failure> {
        ping(&mut self.0).await
    }
}

/// One `PING` round trip on `c`; on a cluster, to the master of slot 0 (one node, as a lock's
/// commands go to the one node of its slot).
///
/// # Errors
///
/// 69 when the server does not answer.
pub(super) async fn ping(c: &mut RawConnection) -> Result<(), Failure> {
    let cmd = redis::cmd("PING");
    let r = match c {
        RawConnection::Server(c) => cmd.query_async::<redis::Value>(c).await.map(drop),
        RawConnection::Cluster(c) => {
            let slot0 = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(0, SlotAddr::Master)));
            c.route_command(cmd, slot0).await.map(drop)
        }
        _ => return Err(Failure::new(exit::UNAVAILABLE, "the redis floor cannot use this kind of connection")),
    };
    r.map_err(|e| Failure::new(exit::UNAVAILABLE, format!("the redis floor's PING failed: {e}")))
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

/// A testkit start error as one line: a missing program names its package (69); a local
/// failure to prepare the servers (`$TMPDIR` unusable, no port lease) is an I/O error (74).
pub(super) fn start_failure(e: interlock_testkit::servers::StartError) -> Failure {
    use interlock_testkit::servers::StartError;
    match e {
        // `redis-server is not installed (Debian package redis-server)`.
        e @ StartError::Missing { .. } => Failure::new(exit::UNAVAILABLE, format!("--start-server: {e}")),
        e @ StartError::Setup { .. } => Failure::new(exit::IO_ERROR, format!("--start-server: {}", one_line(&e))),
        e => Failure::new(exit::UNAVAILABLE, format!("--start-server: {}", one_line(&e))),
    }
}

/// The first line of `e`'s message (a start failure goes on with the server's log).
fn one_line(e: &interlock_testkit::servers::StartError) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or("cannot start").to_owned()
}
