//! The `redis://` harness: a namespace (database and key prefix) of the shared test server per
//! harness, or a private server of its own for the cases that restart it; the `interlock`
//! binary for the cross-process cases; fault hooks through the testkit's own RESP client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Home;
use crate::harness::Harness;
use crate::servers::redis::{self, Redis, RedisNs, RedisOptions};

/// The lease in the harness's URL: short, so that `kill -9` cases finish quickly, and long
/// enough that renewals (every third of it) keep locks through a loaded machine.
pub const LEASE: Duration = Duration::from_secs(2);

/// `redis://` on the testkit's private `redis-server`.
#[derive(Debug)]
pub struct RedisHarness {
    home: Home<Redis, RedisNs<'static>>,
    bin: PathBuf,
}

impl RedisHarness {
    /// A namespace of the shared server ([`redis::shared`]); `None` after a loud skip when
    /// `redis-server` is not installed. `bin` is the `interlock` binary.
    pub fn new(bin: impl Into<PathBuf>) -> Option<Self> {
        let ns = redis::shared()?.namespace();
        Some(RedisHarness { home: Home::Shared(ns), bin: bin.into() })
    }

    /// A private server (no persistence) of its own, which [`Harness::restart_server`] restarts.
    /// `None` after a loud skip.
    pub fn own_server(bin: impl Into<PathBuf>) -> Option<Self> {
        let server: &'static Redis = Box::leak(Box::new(Redis::start_or_skip(&RedisOptions::default())?));
        Some(RedisHarness { home: Home::Own(server, server.namespace()), bin: bin.into() })
    }

    /// This harness's namespace (its database and key prefix) of its server.
    pub fn ns(&self) -> &RedisNs<'static> {
        self.home.ns()
    }

    /// The lock key of `name` in this harness's URL.
    pub fn key(&self, name: &str) -> String {
        interlock::redis::lock_key(&self.ns().prefix, name)
    }

    /// The base of the side keys of `name` in this harness's URL
    /// ([`interlock::redis::side_key_base`]).
    pub fn side(&self, name: &str) -> String {
        interlock::redis::side_key_base(&self.ns().prefix, name)
    }
}

impl Drop for RedisHarness {
    /// A server of its own is killed with its harness (its memory was leaked to lend the
    /// namespace a `'static` server; the reaper removes its directory when the process ends).
    fn drop(&mut self) {
        if let Some(server) = self.home.own() {
            server.kill();
        }
    }
}

impl Harness for RedisHarness {
    fn url(&self) -> String {
        format!("{}?prefix={}&lease={}ms", self.ns().url(), self.ns().prefix, LEASE.as_millis())
    }

    fn bin(&self) -> Option<&Path> {
        Some(&self.bin)
    }

    /// Deletes the lock's keys, as their lease running out would.
    async fn expire(&self, name: &str) -> bool {
        let key = self.key(name);
        let tag = self.side(name);
        self.ns().cmd(&["DEL", &key, &format!("{tag}:readers"), &format!("{tag}:sem")]).expect("DEL");
        true
    }

    /// Restarts the harness's own server (no persistence: every key is gone); not possible on
    /// the shared one.
    async fn restart_server(&self) -> bool {
        let Some(server) = self.home.own() else { return false };
        tokio::task::spawn_blocking(move || server.restart().expect("restart redis-server"))
            .await
            .expect("restart task");
        true
    }

    /// Fencing counters are keys like the locks: a server restarted without persistence loses
    /// them, and the counter starts again at the server's clock in microseconds, which is above
    /// every earlier token (see docs/backends/redis.md, "Fencing"). So tokens do survive.
    fn tokens_survive_restart(&self) -> bool {
        true
    }

    /// A Redis key outlives the client connection that set it: killing the holder's connection
    /// does not lose the lock (tested on its own: `redis::client_kill_keeps_the_lock`).
    async fn kill_connections(&self, _name: &str) -> bool {
        false
    }

    /// `CLIENT KILL` of every connection that has this namespace's database selected.
    async fn kill_client_connections(&self) -> bool {
        self.ns().kill_clients().expect("CLIENT KILL");
        true
    }
}
