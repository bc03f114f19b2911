//! A private Redis Cluster: N `redis-server` masters (no replicas) with `cluster-enabled yes`,
//! each on a leased client port and a leased cluster-bus port, its `nodes.conf` in its data
//! directory, formed by hand as `redis-cli --cluster create --cluster-replicas 0` would: the
//! 16384 slots split in N equal ranges (`CLUSTER ADDSLOTSRANGE`), config epochs 1..N, `CLUSTER
//! MEET` from the first node, then ready once every node reports `cluster_state:ok` and knows
//! every other. Stopped by PID like every testkit server.
//!
//! No persistence: a restart keeps each node's identity and slots (`nodes.conf`) but no key,
//! as a Redis restarted without an append-only file. `cluster-node-timeout` is 2 s, so that a
//! killed master is marked failed (and the cluster `CLUSTERDOWN`) within a few seconds.

use std::ffi::OsString;
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::resp::{Resp, RespConn};
use super::server::{Group, LogOnPanic, Server, Spec, StartError, restart_stopped};

/// How long the testkit's own connections wait for a reply.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16384;

/// How long a node may be unreachable before the others mark it failed (`cluster-node-timeout`).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// The [`Spec`] of one cluster node: two ports (client, cluster bus), `cluster-enabled yes`.
pub fn spec() -> Spec {
    spec_with(None)
}

/// [`spec`], and with `tls` a third port for TLS clients (`--tls-port`), the cluster bus over TLS
/// (`tls-cluster yes`) and the certificates of `tls`. The plain port stays, for the testkit's own
/// client (Redis answers `CLUSTER SLOTS` with the ports of the asker's kind: TLS for TLS).
pub fn spec_with(tls: Option<&super::redis_tls::TlsFiles>) -> Spec {
    let certs = tls.map(|f| [f.path("server.crt"), f.path("server.key"), f.path("ca.crt")]);
    Spec::new(if certs.is_some() { "redis-cluster-tls" } else { "redis-cluster" }, "redis-server")
        .package("redis-server")
        .ports(if certs.is_some() { 3 } else { 2 })
        .args(move |ctx| {
            let port = ctx.port().to_string();
            let bus = ctx.ports[1].to_string();
            let timeout = NODE_TIMEOUT.as_millis().to_string();
            let mut a: Vec<OsString> = Vec::new();
            for s in ["--port", &port, "--cluster-port", &bus, "--bind", "127.0.0.1", "--protected-mode", "yes"] {
                a.push(s.into());
            }
            for s in ["--daemonize", "no", "--cluster-enabled", "yes", "--cluster-node-timeout", &timeout] {
                a.push(s.into());
            }
            a.push("--cluster-config-file".into());
            a.push(ctx.data.join("nodes.conf").into());
            a.push("--dir".into());
            a.push(ctx.data.into());
            for s in ["--save", "", "--appendonly", "no", "--logfile", "", "--enable-debug-command", "local"] {
                a.push(s.into());
            }
            if let Some([cert, key, ca]) = &certs {
                let tls_port = ctx.ports[2].to_string();
                for s in ["--tls-port", &tls_port, "--tls-cluster", "yes", "--tls-auth-clients", "no"] {
                    a.push(s.into());
                }
                for (opt, path) in [("--tls-cert-file", cert), ("--tls-key-file", key), ("--tls-ca-cert-file", ca)] {
                    a.push(opt.into());
                    a.push(path.into());
                }
            }
            a
        })
        .ready(|ctx| {
            let mut c = RespConn::connect(ctx.addr(), Duration::from_secs(1)).map_err(|e| e.to_string())?;
            match c.call(&["PING"]).map_err(|e| e.to_string())? {
                Resp::Simple(s) if s == "PONG" => {}
                other => return Err(format!("PING answered {other:?}")),
            }
            let info = c.call(&["INFO", "server"]).map_err(|e| e.to_string())?.text().unwrap_or_default();
            let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
            match (pid, ctx.pid) {
                (Some(p), Some(ours)) if p == ours.to_string() => Ok(()),
                (p, _) => Err(format!("the Redis on port {} is process {p:?}, not ours", ctx.port())),
            }
        })
        .ready_timeout(Duration::from_secs(30))
}

/// A running private Redis Cluster of N masters.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Server>,
    /// Started with [`RedisCluster::start_tls`]: clients use the TLS ports.
    tls: bool,
}

impl RedisCluster {
    /// Starts `masters` nodes and forms the cluster (slots split evenly, in node order).
    ///
    /// # Errors
    ///
    /// As [`Group::start`]; a cluster that does not reach `cluster_state:ok` in 30 s is a
    /// [`StartError::Failed`].
    pub fn start(masters: usize) -> Result<RedisCluster, StartError> {
        let cluster = RedisCluster { nodes: Group::start(spec(), masters)?.into_members(), tls: false };
        cluster.form().map_err(|e| cluster.failed(format!("forming the cluster: {e}")))?;
        Ok(cluster)
    }

    /// [`RedisCluster::start`] over TLS with the certificates of `files` ([`spec_with`]);
    /// [`RedisCluster::url`] is then `rediss+cluster://` with the TLS ports (add `?ca=`).
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::start`].
    pub fn start_tls(masters: usize, files: &super::redis_tls::TlsFiles) -> Result<RedisCluster, StartError> {
        let cluster = RedisCluster { nodes: Group::start(spec_with(Some(files)), masters)?.into_members(), tls: true };
        cluster.form().map_err(|e| cluster.failed(format!("forming the cluster: {e}")))?;
        Ok(cluster)
    }

    /// [`RedisCluster::start`], skipping (loudly; a failure with `INTERLOCK_TEST_REQUIRE=1`)
    /// when `redis-server` is not installed.
    ///
    /// # Panics
    ///
    /// When it fails to start or form, or is missing and required.
    pub fn start_or_skip(masters: usize) -> Option<RedisCluster> {
        StartError::or_skip(RedisCluster::start(masters))
    }

    fn failed(&self, reason: String) -> StartError {
        let log_tail = self.nodes.iter().map(|n| format!("[{}]\n{}", n.name(), n.log_tail(15))).collect();
        StartError::failed("redis-cluster", reason, log_tail)
    }

    fn form(&self) -> io::Result<()> {
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let (lo, hi) = slot_range(i, n);
            let mut c = connect(node)?;
            c.call(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()])?.ok()?;
            c.call(&["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()])?.ok()?;
        }
        let mut first = connect(&self.nodes[0])?;
        for node in &self.nodes[1..] {
            let (port, bus) = (node.port().to_string(), node.ports()[1].to_string());
            first.call(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus])?.ok()?;
        }
        self.wait_ok(Duration::from_secs(30))
    }

    /// Waits until every running node reports `cluster_state:ok`, knows every node, and sees
    /// every slot assigned.
    ///
    /// # Errors
    ///
    /// A `TimedOut` error naming the last state seen.
    pub fn wait_ok(&self, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        let n = self.nodes.len().to_string();
        loop {
            let mut last = String::new();
            let all_ok = self.nodes.iter().filter(|s| s.is_running()).all(|node| {
                let info = connect(node)
                    .and_then(|mut c| c.call(&["CLUSTER", "INFO"]))
                    .map(|r| r.text().unwrap_or_default())
                    .unwrap_or_else(|e| e.to_string());
                let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("");
                let ok = field("cluster_state:") == "ok"
                    && field("cluster_known_nodes:") == n
                    && field("cluster_slots_assigned:") == SLOTS.to_string();
                if !ok {
                    last = format!("{}: {}", node.name(), info.replace("\r\n", " "));
                }
                ok
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("cluster not ok: {last}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes, by index (node `i` serves the `i`-th of N equal slot ranges).
    pub fn nodes(&self) -> &[Server] {
        &self.nodes
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` (every node as a seed), or
    /// `rediss+cluster://` with the TLS ports for a cluster of [`RedisCluster::start_tls`].
    pub fn url(&self) -> String {
        let port = |n: &Server| if self.tls { n.ports()[2] } else { n.port() };
        let seeds: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", port(n))).collect();
        format!("{}://{}", if self.tls { "rediss+cluster" } else { "redis+cluster" }, seeds.join(","))
    }

    /// The slot range `(first, last)` that node `i` served when the cluster was formed.
    pub fn slots_of(&self, i: usize) -> (u16, u16) {
        slot_range(i, self.nodes.len())
    }

    /// The index of the node that serves `slot` now, by `CLUSTER SLOTS` on the first running
    /// node.
    ///
    /// # Errors
    ///
    /// I/O errors, error replies, and a slot that no node of ours serves.
    pub fn node_of_slot(&self, slot: u16) -> io::Result<usize> {
        let asked = self.nodes.iter().position(Server::is_running).unwrap_or(0);
        let Resp::Array(ranges) = self.cmd_on(asked, &["CLUSTER", "SLOTS"])? else {
            return Err(io::Error::other("CLUSTER SLOTS: not an array"));
        };
        for range in ranges {
            let Resp::Array(f) = range else { continue };
            let (Some(lo), Some(hi)) = (f.first().and_then(Resp::int), f.get(1).and_then(Resp::int)) else { continue };
            if (lo..=hi).contains(&i64::from(slot)) {
                let port = match f.get(2) {
                    Some(Resp::Array(master)) => master.get(1).and_then(Resp::int),
                    _ => None,
                };
                if let Some(i) = self.nodes.iter().position(|n| Some(i64::from(n.port())) == port) {
                    return Ok(i);
                }
            }
        }
        Err(io::Error::other(format!("no node of ours serves slot {slot}")))
    }

    /// Node `i`'s cluster node id (`CLUSTER MYID`).
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn node_id(&self, i: usize) -> io::Result<String> {
        self.cmd_on(i, &["CLUSTER", "MYID"])?.text().ok_or_else(|| io::Error::other("CLUSTER MYID: no text"))
    }

    /// Fault hook: moves `slot` and its keys to node `to`, as `redis-cli --cluster reshard`
    /// does (`SETSLOT IMPORTING` / `MIGRATING`, `MIGRATE` of every key, `SETSLOT NODE` on every
    /// node): clients that still send the slot's keys to the old node get `MOVED` (or `ASK`
    /// while it moves), and clients blocked on a key of it are unblocked with `MOVED`.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn move_slot(&self, slot: u16, to: usize) -> io::Result<()> {
        let from = self.node_of_slot(slot)?;
        if from == to {
            return Ok(());
        }
        let (from_id, to_id, s) = (self.node_id(from)?, self.node_id(to)?, slot.to_string());
        self.cmd_on(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id])?;
        self.cmd_on(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id])?;
        let port = self.nodes[to].port().to_string();
        loop {
            let keys: Vec<String> = match self.cmd_on(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"])? {
                Resp::Array(k) => k.iter().filter_map(Resp::text).collect(),
                _ => Vec::new(),
            };
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "REPLACE", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            self.cmd_on(from, &args)?;
        }
        for i in std::iter::once(to)
            .chain(std::iter::once(from))
            .chain((0..self.nodes.len()).filter(|i| ![from, to].contains(i)))
        {
            if self.nodes[i].is_running() {
                self.cmd_on(i, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id])?;
            }
        }
        Ok(())
    }

    /// `CLUSTER KEYSLOT key`, as the server computes it.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn keyslot(&self, key: &str) -> io::Result<u16> {
        let asked = self.nodes.iter().position(Server::is_running).unwrap_or(0);
        let r = self.cmd_on(asked, &["CLUSTER", "KEYSLOT", key])?;
        r.int().and_then(|s| u16::try_from(s).ok()).ok_or_else(|| io::Error::other(format!("KEYSLOT: {r:?}")))
    }

    /// Runs one command on node `i`; an error reply is an `Err`.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn cmd_on(&self, i: usize, args: &[&str]) -> io::Result<Resp> {
        connect(&self.nodes[i])?.call(args)?.ok()
    }

    /// Runs one command about `key` on the node that serves its slot.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn cmd_for(&self, key: &str, args: &[&str]) -> io::Result<Resp> {
        let node = self.node_of_slot(self.keyslot(key)?)?;
        self.cmd_on(node, args)
    }

    /// Fault hook: closes, server-side, every client connection on every running node whose
    /// address is not the testkit's own; returns how many.
    ///
    /// # Errors
    ///
    /// I/O errors and error replies.
    pub fn kill_clients(&self) -> io::Result<usize> {
        let mut n = 0;
        for node in self.nodes.iter().filter(|s| s.is_running()) {
            let mut c = connect(node)?;
            let me = c.call(&["CLIENT", "ID"])?.ok()?.int();
            let list = c.call(&["CLIENT", "LIST"])?.ok()?.text().unwrap_or_default();
            for line in list.lines() {
                let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).and_then(|v| v.parse::<i64>().ok());
                if let Some(id) = id.filter(|id| Some(*id) != me) {
                    let r = c.call(&["CLIENT", "KILL", "ID", &id.to_string()])?.ok()?;
                    n += usize::from(r.int() == Some(1));
                }
            }
        }
        Ok(n)
    }

    /// Fault hook: restarts every node (SIGTERM, then started again on its own ports with its
    /// `nodes.conf`, without its keys) and waits until the cluster is ok again.
    ///
    /// # Errors
    ///
    /// As [`Server::restart`], or a cluster that does not come back in 30 s.
    pub fn restart(&self) -> Result<(), StartError> {
        for node in &self.nodes {
            node.stop();
        }
        restart_stopped(self.nodes.iter())?;
        self.wait_ok(Duration::from_secs(30)).map_err(|e| self.failed(format!("after the restart: {e}")))
    }

    /// Fault hook: SIGKILLs every node (the data and ports stay).
    pub fn kill(&self) {
        for node in &self.nodes {
            node.kill();
        }
    }

    /// A key prefix of its own for one test case (a cluster has one database), and a guard
    /// that prints every node's log tail if the case panics.
    pub fn namespace(&self) -> RedisClusterNs<'_> {
        RedisClusterNs {
            cluster: self,
            prefix: format!("{}:", crate::unique("t")),
            _log: LogOnPanic::many(self.nodes.iter()),
        }
    }
}

/// One test case's part of a [`RedisCluster`]: a unique key prefix.
#[derive(Debug)]
pub struct RedisClusterNs<'a> {
    cluster: &'a RedisCluster,
    /// A unique key prefix (`t-PID-...:`).
    pub prefix: String,
    _log: LogOnPanic<'a>,
}

impl RedisClusterNs<'_> {
    /// The cluster.
    pub fn cluster(&self) -> &RedisCluster {
        self.cluster
    }

    /// The cluster's URL (without options).
    pub fn url(&self) -> String {
        self.cluster.url()
    }
}

/// Node `i` of `n`'s slots: `n` equal ranges, the remainder spread over the first ones.
fn slot_range(i: usize, n: usize) -> (u16, u16) {
    let (total, n) = (usize::from(SLOTS), n.max(1));
    let lo = total * i / n;
    let hi = total * (i + 1) / n - 1;
    (u16::try_from(lo).unwrap_or(0), u16::try_from(hi).unwrap_or(SLOTS - 1))
}

fn connect(node: &Server) -> io::Result<RespConn> {
    RespConn::connect(node.addr(), TIMEOUT)
}

/// The 3-master cluster shared by every test of this test binary (started by the first
/// caller; each test takes a [`RedisCluster::namespace`]). `None` after a loud skip when
/// `redis-server` is not installed. Fault tests that break the cluster start their own.
///
/// # Panics
///
/// When it fails to start, or is missing and required.
pub fn shared() -> Option<&'static RedisCluster> {
    static SHARED: OnceLock<Option<RedisCluster>> = OnceLock::new();
    SHARED.get_or_init(|| RedisCluster::start_or_skip(3)).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_cover_every_slot_once() {
        assert_eq!([slot_range(0, 3), slot_range(1, 3), slot_range(2, 3)], [(0, 5460), (5461, 10921), (10922, 16383)]);
        assert_eq!(slot_range(0, 1), (0, 16383));
    }
}
