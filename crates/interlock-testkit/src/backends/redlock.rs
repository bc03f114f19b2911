//! The `redlock://` harness: a namespace (the same database and a key prefix on every master)
//! of a group of private `redis-server` masters shared by the test binary, or a group of its own
//! for the cases that kill or restart masters; the `interlock` binary for the cross-process
//! cases; fault hooks through the testkit's own RESP client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Home;
use crate::harness::Harness;
use crate::servers::redis::{self, RedisGroup, RedisGroupNs, RedisOptions};

/// The lease in the harness's URL, as for the redis harness: short, so that `kill -9` cases end
/// quickly, long enough that renewals keep locks through a loaded machine.
pub const LEASE: Duration = Duration::from_secs(2);

/// `redlock://` on N private `redis-server` masters.
#[derive(Debug)]
pub struct RedlockHarness {
    home: Home<RedisGroup, RedisGroupNs<'static>>,
    bin: PathBuf,
}

impl RedlockHarness {
    /// A namespace of the shared group of `n` masters ([`redis::shared_group`]); `None` after a
    /// loud skip when `redis-server` is not installed. `bin` is the `interlock` binary.
    pub fn new(bin: impl Into<PathBuf>, n: usize) -> Option<Self> {
        let ns = redis::shared_group(n)?.namespace();
        Some(RedlockHarness { home: Home::Shared(ns), bin: bin.into() })
    }

    /// A group of `n` masters of its own (no persistence), which [`Harness::kill_members`] and
    /// [`Harness::restart_server`] break. `None` after a loud skip.
    pub fn own_group(bin: impl Into<PathBuf>, n: usize) -> Option<Self> {
        let group: &'static RedisGroup = Box::leak(Box::new(RedisGroup::start_or_skip(n, &RedisOptions::default())?));
        Some(RedlockHarness { home: Home::Own(group, group.namespace()), bin: bin.into() })
    }

    /// This harness's namespace of its masters.
    pub fn ns(&self) -> &RedisGroupNs<'static> {
        self.home.ns()
    }

    /// The masters.
    pub fn group(&self) -> &RedisGroup {
        self.ns().group()
    }

    /// The lock key of `name` on every master.
    pub fn key(&self, name: &str) -> String {
        interlock::redlock::lock_key(&self.ns().prefix, name)
    }

    /// The base of the side keys (and the channel) of `name` on every master: the redis
    /// backend's rule ([`interlock::redis::side_key_base`]).
    pub fn side(&self, name: &str) -> String {
        interlock::redis::side_key_base(&self.ns().prefix, name)
    }

    /// `redlock://127.0.0.1:P1,127.0.0.1:P2,.../DB`, without options.
    pub fn base_url(&self) -> String {
        let hosts: Vec<String> = self.group().members().iter().map(|r| format!("127.0.0.1:{}", r.port())).collect();
        format!("redlock://{}/{}", hosts.join(","), self.ns().db)
    }

    /// Runs `args` on every running master, in this namespace's database.
    pub fn cmd_all(&self, args: &[&str]) {
        for r in self.group().members().iter().filter(|r| r.is_running()) {
            r.cmd(self.ns().db, args).expect("command on a master");
        }
    }
}

impl Drop for RedlockHarness {
    fn drop(&mut self) {
        if let Some(group) = self.home.own() {
            for r in group.members() {
                r.kill();
            }
        }
    }
}

impl Harness for RedlockHarness {
    fn url(&self) -> String {
        format!("{}?prefix={}&lease={}ms", self.base_url(), self.ns().prefix, LEASE.as_millis())
    }

    fn bin(&self) -> Option<&Path> {
        Some(&self.bin)
    }

    /// Deletes the lock's keys on every master, as their lease running out would.
    async fn expire(&self, name: &str) -> bool {
        let key = self.key(name);
        self.cmd_all(&["DEL", &key, &format!("{}:readers", self.side(name))]);
        true
    }

    /// Restarts every master of the harness's own group (no persistence: every key is gone);
    /// not possible on the shared group.
    async fn restart_server(&self) -> bool {
        let Some(group) = self.home.own() else { return false };
        tokio::task::spawn_blocking(move || {
            for r in group.members() {
                r.restart().expect("restart a master");
            }
        })
        .await
        .expect("restart task");
        true
    }

    /// SIGKILLs `k` running masters of the harness's own group; `None` on the shared group.
    async fn kill_members(&self, k: usize) -> Option<usize> {
        let group = self.home.own()?;
        tokio::task::spawn_blocking(move || group.kill_k(k)).await.expect("kill task");
        Some(group.len())
    }

    /// Fencing counters start again at each master's clock in microseconds after a restart
    /// without persistence, above every earlier token (docs/backends/redlock.md, "Fencing").
    fn tokens_survive_restart(&self) -> bool {
        true
    }

    /// A key outlives the client connection that set it, on every master.
    async fn kill_connections(&self, _name: &str) -> bool {
        false
    }

    /// `CLIENT KILL` of every connection of this namespace on every running master.
    async fn kill_client_connections(&self) -> bool {
        for (i, r) in self.group().members().iter().enumerate() {
            if r.is_running() {
                self.ns().kill_clients_on(i).expect("CLIENT KILL");
            }
        }
        true
    }
}
