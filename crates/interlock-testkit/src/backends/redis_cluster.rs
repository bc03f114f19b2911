//! The `redis+cluster://` harness: a key prefix of the 3-master cluster shared by the test
//! binary per harness, or a cluster of its own for the cases that restart it; the `interlock`
//! binary for the cross-process cases; fault hooks through the testkit's own RESP client.
//!
//! Hooks that do not apply to a cluster without replicas: [`Harness::kill_members`] (a killed
//! master takes its slots with it: that is an outage, tested on its own in
//! `tests/redis_cluster.rs`, not a minority loss), and [`Harness::kill_connections`] (as on one
//! server, a key outlives its client's connection; tested on its own too).

use std::path::{Path, PathBuf};

use super::Home;
use super::redis::LEASE;
use crate::harness::Harness;
use crate::servers::redis_cluster::{self, RedisCluster, RedisClusterNs};

/// `redis+cluster://` on the testkit's private 3-master Redis Cluster.
#[derive(Debug)]
pub struct RedisClusterHarness {
    home: Home<RedisCluster, RedisClusterNs<'static>>,
    bin: PathBuf,
}

impl RedisClusterHarness {
    /// A key prefix of the shared cluster ([`redis_cluster::shared`]); `None` after a loud skip
    /// when `redis-server` is not installed. `bin` is the `interlock` binary.
    pub fn new(bin: impl Into<PathBuf>) -> Option<Self> {
        let ns = redis_cluster::shared()?.namespace();
        Some(RedisClusterHarness { home: Home::Shared(ns), bin: bin.into() })
    }

    /// A 3-master cluster of its own, which [`Harness::restart_server`] restarts. `None` after
    /// a loud skip.
    pub fn own_cluster(bin: impl Into<PathBuf>) -> Option<Self> {
        let cluster: &'static RedisCluster = Box::leak(Box::new(RedisCluster::start_or_skip(3)?));
        Some(RedisClusterHarness { home: Home::Own(cluster, cluster.namespace()), bin: bin.into() })
    }

    /// This harness's key prefix of its cluster.
    pub fn ns(&self) -> &RedisClusterNs<'static> {
        self.home.ns()
    }

    /// The cluster.
    pub fn cluster(&self) -> &RedisCluster {
        self.ns().cluster()
    }

    /// The lock key of `name` in this harness's URL.
    pub fn key(&self, name: &str) -> String {
        interlock::redis::lock_key(&self.ns().prefix, name)
    }
}

impl Drop for RedisClusterHarness {
    /// A cluster of its own is killed with its harness (the reaper removes its directories).
    fn drop(&mut self) {
        if let Some(cluster) = self.home.own() {
            cluster.kill();
        }
    }
}

impl Harness for RedisClusterHarness {
    fn url(&self) -> String {
        format!("{}?prefix={}&lease={}ms", self.ns().url(), self.ns().prefix, LEASE.as_millis())
    }

    fn bin(&self) -> Option<&Path> {
        Some(&self.bin)
    }

    /// Deletes the lock's keys (one slot, so one `DEL` on the node that serves it), as their
    /// lease running out would.
    async fn expire(&self, name: &str) -> bool {
        let key = self.key(name);
        let base = interlock::redis::side_key_base(&self.ns().prefix, name);
        let (readers, sem) = (format!("{base}:readers"), format!("{base}:sem"));
        self.cluster().cmd_for(&key, &["DEL", &key, &readers, &sem]).expect("DEL");
        true
    }

    /// Restarts every node of the harness's own cluster (no persistence: every key is gone);
    /// not possible on the shared one.
    async fn restart_server(&self) -> bool {
        let Some(cluster) = self.home.own() else { return false };
        tokio::task::spawn_blocking(move || cluster.restart().expect("restart the cluster"))
            .await
            .expect("restart task");
        true
    }

    /// As on one server: a missing fencing counter starts again at the server clock in µs.
    fn tokens_survive_restart(&self) -> bool {
        true
    }

    /// A key outlives the client connection that set it (tested on its own in
    /// `tests/redis_cluster.rs`).
    async fn kill_connections(&self, _name: &str) -> bool {
        false
    }
}
