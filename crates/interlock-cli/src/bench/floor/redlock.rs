//! The redlock backend's floors: one `PING` to every master at once, on connections of their
//! own ([`interlock::redlock::raw_connections`]), and waiting for all N answers (the slowest of
//! N round trips): what one Redlock round costs at best (see [`super::round_trip`] for what each
//! workload's floor does with one).
//!
//! `--start-server` starts three private `redis-server` masters (the redis floor's
//! `--start-server`, three times) and kills them, by pid, when the bench ends.

use interlock::redis::RawConnection;

use super::round_trip::{self, RoundTrip};
use super::{Floors, StartedServer};
use crate::exit::{self, Failure};

/// How many masters `--start-server` starts.
const MASTERS: usize = 3;

pub(super) const FLOORS: Floors = Floors {
    backend: "redlock",
    uncontended: |t, _, d| {
        Box::pin(round_trip::uncontended::<PingRound>(t, d, |c| {
            let n = c.len();
            [
                (format!("2 × PING round to all {n} masters (acquire + release at best)"), 2),
                (format!("PING round to all {n} masters at once (one Redlock round)"), 1),
            ]
        }))
    },
    contended: |t, clients, d| {
        Box::pin(round_trip::contended::<PingRound>(
            t,
            clients,
            d,
            "C tasks (connections each) on one tokio::sync::Mutex: PING round, critical section, PING round",
        ))
    },
    waiters: |t, w, kind| {
        Box::pin(round_trip::waiters::<PingRound>(
            t,
            w,
            kind,
            [
                "W tasks (not processes) on one tokio::sync::Mutex, a PING round per turn",
                "W tasks on one tokio::sync::Mutex, a PING round per turn",
            ],
        ))
    },
    handoff: |t, holds, pace| {
        Box::pin(round_trip::handoff::<PingRound>(
            t,
            holds,
            pace,
            "tokio::sync::Mutex + one PING round by the new holder, 2 threads",
        ))
    },
    many_locks: |_, _| Ok(None),
    start_server: Some(start_servers),
};

/// A connection of its own to every master; a round is one `PING` to each at once, done when
/// all have answered.
pub(super) struct PingRound(Vec<RawConnection>);

impl PingRound {
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl RoundTrip for PingRound {
    async fn open(url: &str) -> Result<Self, Failure> {
        let conns = interlock::redlock::raw_connections(url)
            .await
            .map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))?;
        let mut c = PingRound(conns);
        c.round().await?;
        Ok(c)
    }

    async fn round(&mut self) -> Result<(), Failure> {
        // Polled together on this task, as the backend's rounds are: no task per master.
        for r in futures_util::future::join_all(self.0.iter_mut().map(super::redis::ping)).await {
            r?;
        }
        Ok(())
    }
}

/// Starts private `redis-server`s through the testkit (see the redis floor's `start_server`):
/// as many as the URL names hosts when that is 3 or more, else [`MASTERS`], and returns the
/// `redlock://` URL of all of them.
fn start_servers(url: &str) -> Result<StartedServer, Failure> {
    use interlock_testkit::servers::redis::{RedisGroup, RedisOptions};
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if scheme != "redlock" {
        return Err(Failure::new(
            exit::USAGE,
            format!("--start-server starts `redlock://` masters, not `{scheme}://` ones: start them yourself"),
        ));
    }
    let named = url.split_once("://").map_or("", |(_, rest)| rest).split(['/', '?']).next().unwrap_or("");
    let n = named.split(',').filter(|h| !h.is_empty()).count();
    let n = if n >= 3 { n } else { MASTERS };
    let group = RedisGroup::start(n, &RedisOptions::default()).map_err(super::redis::start_failure)?;
    let hosts: Vec<String> = group.members().iter().map(|m| format!("127.0.0.1:{}", m.port())).collect();
    eprintln!("interlock bench: started {n} redis-server masters on {}", hosts.join(","));
    Ok(StartedServer { url: format!("redlock://{}/0", hosts.join(",")), _stop_on_drop: Box::new(group) })
}
