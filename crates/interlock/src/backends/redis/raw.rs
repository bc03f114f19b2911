//! The `redis://` backend: one `ConnectionManager` (a multiplexed connection that reconnects)
//! for every command of the provider, and a dedicated connection per waiting acquisition for its
//! blocking `BLPOP`, never the shared one.
//!
//! `redis+cluster://`: the same with the `redis` crate's cluster connection (it maps slots to
//! nodes, follows `MOVED` / `ASK` and reconnects) in place of the `ConnectionManager`, and a
//! cluster connection of its own per waiter, so that a blocking `BLPOP` only ever holds up its
//! own waiter's connection to the node of its slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    ProtocolVersion, RedisConnectionInfo, RedisError, RedisFuture, ScriptInvocation, ServerErrorKind, Value,
};

use super::config::{RedisConfig, TlsFiles};
use super::keys::{self, Keys, READERS_VALUE};
use super::scripts;
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::{
    BoxFuture, Capabilities, Cleanup, HeldMode, LockKind, LockStatus, RawHeld, RawProvider, Renewal, Request, Wait,
    instant_after,
};

pub(crate) const BACKEND: &str = super::BACKEND_NAME;

/// A waiter re-checks at least this often, even without a wake-up: the bound on noticing a
/// release by a peer tool that does not wake interlock's waiters (redis-py's `Lock`, a plain
/// `DEL`), and how often it refreshes its place in the queue.
pub(crate) const RECHECK: Duration = Duration::from_millis(500);

/// How long a waiter's place in the queue lasts without a refresh (each of its attempts, at least
/// every [`RECHECK`], refreshes it): a waiter that died (or is stopped) holds up the queue at most
/// this long.
pub(crate) const REGISTRATION: Duration = Duration::from_secs(2);

/// How long a lock handed over to a waiter lives until the waiter claims it (at most the lease):
/// a waiter that is gone (killed, stopped, its undo lost) holds up the next one at most this long,
/// not for its whole lease. A live waiter claims at once: its next attempt is pipelined behind
/// its wait, so Redis runs it as soon as the hand-over's push ends that wait.
pub(crate) const CLAIM: Duration = Duration::from_secs(1);

/// At most this many idle waiter connections are kept for the next waiter.
const IDLE_WAITER_CONNECTIONS: usize = 4;

/// A connection to Redis: the provider's shared one (a `ConnectionManager`, or a cluster
/// connection), or a waiter's own (a plain multiplexed connection, or a cluster connection).
#[derive(Clone)]
pub(crate) enum Conn {
    Manager(ConnectionManager),
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Manager(_) => "Conn::Manager",
            Conn::Plain(_) => "Conn::Plain",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How the provider opens connections.
#[derive(Clone)]
enum Clients {
    Single(Box<Client>),
    /// The client of the waiters' cluster connections: no reply bound of its own (a `BLPOP`
    /// blocks on purpose; the waiter bounds each wait itself). The shared connection has one.
    Cluster(Box<ClusterClient>),
}

/// The `redis://` backend.
pub(crate) struct RedisProvider {
    clients: Clients,
    conn: Conn,
    config: RedisConfig,
    /// Dedicated connections for blocking waits, idle.
    idle: StdMutex<Vec<Conn>>,
}

impl std::fmt::Debug for RedisProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProvider").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RedisProvider {
    /// Connects and verifies the server (`AUTH`, `SELECT`, `PING`), so that a wrong password is
    /// `Error::Auth` and an unreachable server `Error::Unavailable`, here rather than at the first
    /// acquisition.
    pub(crate) async fn connect(config: RedisConfig) -> Result<RedisProvider> {
        if config.cluster {
            return Self::connect_cluster(config).await;
        }
        let client = client(&config)?;
        // A plain connection first: it fails at once (the ConnectionManager would retry a refused
        // password with backoff). It becomes the first idle waiter connection.
        let mut first = client
            .get_multiplexed_async_connection_with_config(&waiter_config(&config))
            .await
            .map_err(|e| map_err(&config, "connect", e))?;
        ping(&mut first).await.map_err(|e| map_err(&config, "PING", e))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.command_timeout))
            .set_connection_timeout(Some(config.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(|e| map_err(&config, "connect", e))?;
        Ok(RedisProvider {
            clients: Clients::Single(Box::new(client)),
            conn: Conn::Manager(conn),
            config,
            idle: StdMutex::new(vec![Conn::Plain(first)]),
        })
    }

    /// `redis+cluster://`: a cluster connection from the seed nodes (the first that answers
    /// gives the slot map), checked with a `PING` to every master.
    async fn connect_cluster(config: RedisConfig) -> Result<RedisProvider> {
        let shared = cluster_client(&config, Some(config.command_timeout))?;
        let waiters = cluster_client(&config, None)?;
        let mut conn = shared.get_async_connection().await.map_err(|e| map_err(&config, "connect", e))?;
        let ping = RoutingInfo::MultiNode((redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters, None));
        conn.route_command(redis::cmd("PING"), ping).await.map_err(|e| map_err(&config, "PING", e))?;
        Ok(RedisProvider {
            clients: Clients::Cluster(Box::new(waiters)),
            conn: Conn::Cluster(conn),
            config,
            idle: StdMutex::new(Vec::new()),
        })
    }

    /// A connection of its own for one blocking wait.
    async fn waiter_connection(&self) -> redis::RedisResult<Conn> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        match &self.clients {
            Clients::Single(client) => {
                client.get_multiplexed_async_connection_with_config(&waiter_config(&self.config)).await.map(Conn::Plain)
            }
            Clients::Cluster(waiters) => waiters.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// Keeps a waiter connection whose last command completed, for the next waiter.
    fn keep_idle(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_WAITER_CONNECTIONS {
            idle.push(c);
        }
    }

    async fn acquire_inner(&self, req: Request, wait: Wait) -> Result<Option<Arc<dyn RawHeld>>> {
        let op = Op::new(&self.config, &req);
        let member = match wait {
            Wait::Try => String::new(),
            Wait::Until(_) => op.member(),
        };
        // The waiter connection whose wait (and the attempt pipelined behind it) is in flight:
        // if we are dropped then, the undo must also run behind that attempt.
        let in_flight: Arc<StdMutex<Option<Conn>>> = Arc::default();
        // Armed before the first request: if we are dropped with it in flight, the lock may be
        // ours on the server (and our place in the queue), and the undo removes both.
        let undo =
            Cleanup::new(op.clone().undo(self.conn.clone(), member.clone(), self.config.clone(), in_flight.clone()));
        let mut waiter: Option<Conn> = None;
        // The answer of the attempt pipelined behind the last wait, and when that was sent.
        let mut after_wait: Option<(Vec<i64>, Instant)> = None;
        loop {
            let (reply, sent) = match after_wait.take() {
                Some(answer) => answer,
                None => {
                    let sent = Instant::now();
                    (self.attempt(&op, &member).await?, sent)
                }
            };
            let fence = match reply[..] {
                // Set by this attempt, or claimed by it after a release handed it over: either
                // way by a script that ran after `sent`, with our whole lease.
                [1, fence] => fence,
                [-1, existing] => {
                    let LockKind::Semaphore { permits } = req.kind else { return Err(op.bad_reply(&reply)) };
                    return Err(Error::PermitsMismatch {
                        name: req.name.display(),
                        existing: u32::try_from(existing).unwrap_or(0),
                        requested: permits,
                    });
                }
                [0, pttl] => {
                    let Wait::Until(deadline) = wait else {
                        // A single try registers nothing: there is nothing to undo.
                        undo.disarm();
                        return Ok(None);
                    };
                    // Re-check at the holder key's expiry (a peer tool's lock that nobody
                    // releases) and at the bounded interval, which also refreshes our place.
                    let mut timeout = RECHECK.min(req.lease.lease / 4).max(Duration::from_millis(2));
                    if pttl > 0 {
                        timeout = timeout.min(Duration::from_millis(pttl.unsigned_abs() + 1));
                    }
                    if let Some(d) = deadline {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Ok(None);
                        }
                        timeout = timeout.min(left);
                    }
                    let mut c = match waiter.take() {
                        Some(c) => c,
                        None => match self.waiter_connection().await {
                            Ok(c) => c,
                            Err(e) if lost_connection(&e) => {
                                // The next attempt reconnects, or says the server is gone.
                                tracing::debug!(error = %op.map_err(&self.config, "connect a waiter for", e), "re-checking");
                                tokio::time::sleep(Duration::from_millis(20).min(timeout)).await;
                                continue;
                            }
                            Err(e) => return Err(op.map_err(&self.config, "connect a waiter for", e)),
                        },
                    };
                    *in_flight.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                    let sent = Instant::now();
                    let limit = timeout + self.config.command_timeout;
                    let answer =
                        tokio::time::timeout(limit, op.wait_then_attempt(&mut c, &member, timeout, &self.config)).await;
                    *in_flight.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    match answer {
                        Ok(Ok(reply)) => {
                            waiter = Some(c);
                            after_wait = Some((reply, sent));
                        }
                        // The script is not cached (the server restarted, `SCRIPT FLUSH`): the next
                        // attempt, a plain one, loads it.
                        Ok(Err(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => waiter = Some(c),
                        // On a cluster, the wait may end with a redirection (its slot moved while
                        // it waited: Redis unblocks it with MOVED) or a node that went away: the
                        // next attempt finds out, through the cluster client (which follows the
                        // slot), and fails there if the cluster is down. A short pause keeps a
                        // failing node from making this a busy loop.
                        Ok(Err(e)) if self.config.cluster || lost_connection(&e) => {
                            // The connection was lost (killed, reset, a restart): it is dropped,
                            // and the next attempt goes over the provider's connection, which
                            // reconnects, and finds out whatever that connection's last attempt did.
                            tracing::debug!(error = %op.map_err(&self.config, "wait", e), "the wait ended early; re-checking");
                            tokio::time::sleep(Duration::from_millis(20).min(timeout)).await;
                        }
                        Ok(Err(e)) => return Err(op.explain(&c, &self.config, &member, "wait", e).await),
                        // No answer in time: that connection is dropped, the next attempt (a plain
                        // one) finds out what the pipelined one did, and the next wait opens
                        // another connection.
                        Err(_) => {}
                    }
                    continue;
                }
                _ => return Err(op.bad_reply(&reply)),
            };
            // Valid from when the request that took it was sent (a lock claimed behind a long
            // wait has less left than its lease: the monitor renews it in time).
            let held = RedisHeld {
                conn: self.conn.clone(),
                config: self.config.clone(),
                op: op.clone(),
                fence: op.token_from(fence)?,
                valid_until: req.lease.valid_from(sent)?,
                released: AtomicBool::new(false),
            };
            undo.disarm();
            if let Some(c) = waiter {
                self.keep_idle(c);
            }
            return Ok(Some(Arc::new(held)));
        }
    }

    /// One attempt on the provider's connection, made again on a new connection when that one was
    /// lost (killed, reset), for up to `command_timeout`. An attempt is safe to repeat: one that
    /// got the lock before its answer was lost finds it ours and claims it again.
    async fn attempt(&self, op: &Op, member: &str) -> Result<Vec<i64>> {
        let mut reconnect = Reconnect::within(self.config.command_timeout);
        loop {
            let mut conn = self.conn.clone();
            match op.invoke(Script::Acquire, &mut conn, member, &self.config).await {
                Ok(reply) => return Ok(reply),
                Err(e) if reconnect.again(&e).await => {}
                Err(e) => return Err(op.explain(&self.conn, &self.config, member, "acquire", e).await),
            }
        }
    }

    async fn status_inner(&self, name: &LockName) -> Result<LockStatus> {
        let keys = Keys::status(&self.config.prefix, name.as_str());
        let mut inv = scripts::STATUS.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in ["", "", "", "", "", READERS_VALUE] {
            inv.arg(a);
        }
        let mut reconnect = Reconnect::within(self.config.command_timeout);
        let r: Vec<i64> = loop {
            let mut conn = self.conn.clone();
            match inv.invoke_async(&mut conn).await {
                Ok(r) => break r,
                Err(e) if reconnect.again(&e).await => {}
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    // KEYS of status.lua: the lock key, readers, Q, QX, permit holders, permits count,
                    // the semaphore's Q and QX.
                    let types = ["string", "zset", "zset", "zset", "zset", "string", "zset", "zset"];
                    let pairs: Vec<(String, &str)> = keys.iter().cloned().zip(types).collect();
                    let Some(why) = wrong_type(&mut self.conn.clone(), &pairs, Some(&keys[0])).await else {
                        return Err(map_err(&self.config, "status", e));
                    };
                    return Err(backend_error(format!("{}: status {:?}: {why}", server(&self.config), name.display())));
                }
                Err(e) => return Err(map_err(&self.config, "status", e)),
            }
        };
        let [kind, readers, pttl, waiters, permit_holders, permits, permit_waiters] = r[..] else {
            return Err(backend_error(format!("status: unexpected reply {r:?}")));
        };
        let count = |n: i64| usize::try_from(n).unwrap_or(0);
        let mut status = LockStatus::free();
        status.location = Some(format!("key {:?} (db {})", keys[0], self.config.db));
        let expires = |pttl: i64| match pttl {
            -1 => "no expiry".to_owned(),
            ms => format!("expires in {ms}ms"),
        };
        match kind {
            1 => {
                status.held = Some(HeldMode::Exclusive);
                status.holders = vec![format!("one holder ({})", expires(pttl))];
            }
            2 => {
                status.held = Some(HeldMode::Shared(count(readers)));
                status.holders = vec![format!("{readers} reader(s) ({})", expires(pttl))];
            }
            3 => {
                return Err(backend_error(format!(
                    "status: the key {:?} is not a lock (it holds another type of value)",
                    keys[0]
                )));
            }
            _ => {}
        }
        status.waiters = Some(count(waiters));
        if status.held.is_none() && permit_holders > 0 {
            status.held = Some(HeldMode::Shared(count(permit_holders)));
            status.permits = u32::try_from(permits).ok();
            status.holders = vec![format!("{permit_holders} permit holder(s)")];
            status.waiters = Some(count(permit_waiters));
            status.location = Some(format!("key {:?} (db {})", keys[4], self.config.db));
        }
        Ok(status)
    }
}

fn connection_info(config: &RedisConfig, host: &str, port: u16) -> Result<ConnectionInfo> {
    let addr = match config.tls {
        Some(_) => ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None },
        None => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    let mut redis = RedisConnectionInfo::default().set_db(config.db).set_skip_set_lib_name();
    if let Some(u) = &config.user {
        redis = redis.set_username(u);
    }
    if let Some(p) = &config.password {
        redis = redis.set_password(p);
    }
    Ok(addr.into_connection_info().map_err(|e| map_err(config, "connect", e))?.set_redis_settings(redis))
}

fn client(config: &RedisConfig) -> Result<Client> {
    client_speaking(config, None)
}

/// A client of `config`'s server (plain or TLS, with its certificates), speaking `protocol` when
/// given (the redlock backend's masters speak RESP3, for push messages).
pub(crate) fn client_speaking(config: &RedisConfig, protocol: Option<ProtocolVersion>) -> Result<Client> {
    let mut info = connection_info(config, &config.host, config.port)?;
    if let Some(protocol) = protocol {
        let redis = info.redis_settings().clone().set_protocol(protocol);
        info = info.set_redis_settings(redis);
    }
    let Some(tls) = &config.tls else {
        return Client::open(info).map_err(|e| map_err(config, "connect", e));
    };
    match tls_certificates(tls) {
        None => Client::open(info).map_err(|e| map_err(config, "connect", e)),
        Some(certs) => Client::build_with_tls(info, certs).map_err(|e| map_err(config, "TLS setup", e)),
    }
}

/// The CA and client certificate of `?ca=`, `?cert=`, `?key=` (`None`: the system's roots, no
/// client certificate). Installs the crypto provider first.
fn tls_certificates(tls: &TlsFiles) -> Option<redis::TlsCertificates> {
    // rustls needs a process-wide crypto provider: ring's, unless the program installed one.
    // rustls 0.23.48 deprecates it for lacking post-quantum key exchange (X25519MLKEM768), which
    // Redis cannot use anyway (it needs OpenSSL 3.5; Debian 12's Redis has 3.0); ring builds in
    // a fraction of aws-lc-rs's time and without cmake.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    if tls.ca.is_none() && tls.client.is_none() {
        return None;
    }
    Some(redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
        root_cert: tls.ca.clone(),
    })
}

/// A client of the cluster of `config`'s seed nodes; `response_timeout` bounds each reply
/// (`None`: no bound of the client's own).
fn cluster_client(config: &RedisConfig, response_timeout: Option<Duration>) -> Result<ClusterClient> {
    let seeds =
        config.nodes.iter().map(|(host, port)| connection_info(config, host, *port)).collect::<Result<Vec<_>>>()?;
    let mut builder = ClusterClient::builder(seeds)
        .connection_timeout(config.command_timeout)
        // Follow MOVED / ASK / TRYAGAIN and reconnect a few times, then report the error.
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(500);
    builder = match response_timeout {
        // `command_timeout` bounds a command with its retries and redirections, as its name says.
        Some(t) => builder.response_timeout(t).overall_response_timeout(Some(t)),
        None => builder.response_timeout(Duration::from_secs(24 * 3600)).overall_response_timeout(None),
    };
    if let Some(certs) = config.tls.as_ref().and_then(tls_certificates) {
        builder = builder.certs(certs);
    }
    builder.build().map_err(|e| map_err(config, "connect", e))
}

/// Waiter connections: no response timeout of the client's own (a `BLPOP` blocks on purpose);
/// the caller bounds each wait.
fn waiter_config(config: &RedisConfig) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_connection_timeout(Some(config.command_timeout)).set_response_timeout(None)
}

async fn ping(c: &mut impl ConnectionLike) -> redis::RedisResult<()> {
    redis::cmd("PING").query_async::<redis::Value>(c).await.map(drop)
}

fn backend_error(message: String) -> Error {
    Error::Backend { backend: BACKEND, message, source: None }
}

/// One line, naming the server (never its password), and the right variant: `Auth` for refused
/// credentials, `Unavailable` when the server cannot be reached or is not serving.
pub(crate) fn map_err(config: &RedisConfig, what: &str, e: RedisError) -> Error {
    let text = e.to_string().replace(['\r', '\n'], " ");
    let code = e.code().unwrap_or("");
    let server = server(config);
    // The server's NOAUTH / NOPERM can come back wrapped (as the answer to the connection's SELECT).
    let lower = text.to_ascii_lowercase();
    // Credentials accepted, but the user's ACL lacks what interlock needs: say what.
    if code == "NOPERM" || lower.contains("no permissions to") {
        return Error::Auth {
            backend: BACKEND,
            message: format!("permission denied: {server}: {what}: {}", missing_permission(&text)),
            source: Some(Box::new(e)),
        };
    }
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(code, "WRONGPASS" | "NOAUTH")
        || lower.contains("authentication required")
        || lower.contains("invalid username-password")
    {
        return Error::Auth {
            backend: BACKEND,
            message: format!("authentication failed: {server}: {what}: {text}"),
            source: Some(Box::new(e)),
        };
    }
    if let Some(why) = tls_refusal(&e) {
        return Error::Auth {
            backend: BACKEND,
            message: format!("authentication failed: {server}: {what}: TLS: {why}"),
            source: Some(Box::new(e)),
        };
    }
    // A script refused a fencing counter that interlock never wrote (clock_fence.lua).
    if code == "BADFENCE" {
        return Error::Backend {
            backend: BACKEND,
            message: format!("{server}: {what}: {}", script_error_text(&e)),
            source: Some(Box::new(e)),
        };
    }
    // A redirection that comes back to us: the cluster client followed it as far as it could,
    // and the node that serves the slot does not answer (or the slot is between nodes).
    if let Some((host, port)) = e.redirect_node() {
        return Error::Unavailable {
            backend: BACKEND,
            message: format!(
                "{server}: {what}: the cluster node that serves the key's slot ({host}:{port}) does not answer ({text})"
            ),
            source: Some(Box::new(e)),
        };
    }
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(code, "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN")
    {
        // Over TLS 1.3, a server that wants a client certificate rejects the client after the
        // handshake: its alert is lost when the first command's write finds the connection
        // closed. Say so on the connection's first command.
        let hint = match &config.tls {
            Some(tls)
                if tls.client.is_none()
                    && e.is_connection_dropped()
                    && !e.is_connection_refusal()
                    && (what == "PING" || what == "connect") =>
            {
                " (over TLS, a server that wants a client certificate closes the connection after the handshake: \
                 give one with ?cert=PATH&key=PATH)"
            }
            _ => "",
        };
        return Error::Unavailable {
            backend: BACKEND,
            message: format!("{server}: {what}: {text}{hint}"),
            source: Some(Box::new(e)),
        };
    }
    Error::Backend { backend: BACKEND, message: format!("{server}: {what}: {text}"), source: Some(Box::new(e)) }
}

/// The server as errors name it: `host:port`, or `cluster SEED,SEED,...` (never a password).
fn server(config: &RedisConfig) -> String {
    if config.cluster {
        let seeds: Vec<String> = config.nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        format!("cluster {}", seeds.join(","))
    } else {
        format!("{}:{}", config.host, config.port)
    }
}

/// What a `NOPERM` says is missing, in interlock's words, with the server's text.
fn missing_permission(text: &str) -> String {
    let command = text.split("to run the '").nth(1).and_then(|rest| rest.split('\'').next());
    if let Some(cmd) = command {
        return format!(
            "the server's ACL does not let this user run {} ({text}); interlock needs EVALSHA, EVAL, BLPOP, PING and \
             SELECT, and the commands its scripts use (see \"URL options\" in docs/backends/redis.md)",
            cmd.to_ascii_uppercase()
        );
    }
    if text.contains("key") {
        return format!(
            "the server's ACL does not let this user use a key of this lock ({text}); allow the lock key and its side \
             keys (see \"Name mapping\" in docs/backends/redis.md)"
        );
    }
    if text.contains("channel") {
        return format!("the server's ACL does not let this user use a channel of this lock ({text})");
    }
    text.to_owned()
}

/// The text of an error a script raised on purpose (`error({err = 'CODE text'})`), without the
/// code and the `script: SHA, on @user_script:N.` that Redis appends.
fn script_error_text(e: &RedisError) -> String {
    let detail = e.detail().unwrap_or("").replace(['\r', '\n'], " ");
    match detail.find(" script: ") {
        Some(i) => detail[..i].trim().to_owned(),
        None => detail.trim().to_owned(),
    }
}

/// The TLS handshake failed for a reason that retrying cannot fix: the server's certificate is
/// not trusted, or the server refused ours. Found in the error's sources (rustls's error, inside
/// an I/O error).
fn tls_refusal(e: &RedisError) -> Option<String> {
    use rustls::AlertDescription as A;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        // The redis crate keeps its I/O error in an `Arc` (which is itself an `Error`).
        let s: &(dyn std::error::Error + 'static) = match s.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            Some(inner) => &**inner,
            None => s,
        };
        let tls = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        match tls {
            Some(rustls::Error::InvalidCertificate(why)) => {
                return Some(format!(
                    "the server's certificate is not trusted ({why:?}): give the CA that signed it with ?ca=PATH"
                ));
            }
            Some(rustls::Error::AlertReceived(
                alert @ (A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateUnknown),
            )) => {
                return Some(format!(
                    "the server refused this client ({alert:?}): it wants a client certificate that its CA signed (?cert=PATH&key=PATH)"
                ));
            }
            _ => {}
        }
        source = s.source();
    }
    // The cluster client reports a failed first connection as text ("Failed to create initial
    // connections - Io: invalid peer certificate: ..."), without the error as a source.
    let text = e.to_string();
    if let Some(i) = text.find("invalid peer certificate") {
        return Some(format!(
            "the server's certificate is not trusted ({}): give the CA that signed it with ?ca=PATH",
            &text[i..]
        ));
    }
    let alerts = ["CertificateRequired", "BadCertificate", "UnknownCA", "AccessDenied", "CertificateUnknown"];
    if text.contains("received fatal alert") && alerts.iter().any(|a| text.contains(a)) {
        return Some(format!(
            "the server refused this client ({text}): it wants a client certificate that its CA signed (?cert=PATH&key=PATH)"
        ));
    }
    None
}

/// A fresh random token: 32 hex digits (128 bits from the kernel).
pub(crate) fn new_token() -> String {
    let mut buf = [0u8; 16];
    if rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty()).map_or(true, |n| n < 16) {
        // No kernel randomness (never seen on Linux): unique by process, time and a counter,
        // which is all a token needs to be (it is not a secret).
        use sha2::Digest;
        static N: AtomicU64 = AtomicU64::new(0);
        let seed = format!(
            "{} {:?} {} {:?}",
            std::process::id(),
            std::time::SystemTime::now(),
            N.fetch_add(1, Ordering::Relaxed),
            Instant::now()
        );
        buf.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..16]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Acquire,
    Release,
    Renew,
}

/// One acquisition: its keys, token and lease.
#[derive(Clone, Debug)]
struct Op {
    name: LockName,
    kind: LockKind,
    keys: Keys,
    token: String,
    lease_ms: u64,
}

impl Op {
    fn new(config: &RedisConfig, req: &Request) -> Op {
        Op {
            name: req.name.clone(),
            kind: req.kind,
            keys: Keys::new(&config.prefix, req.name.as_str(), req.kind),
            token: new_token(),
            lease_ms: duration_ms(req.lease.lease),
        }
    }

    /// This acquisition as a waiter in the queue: `KIND:TOKEN:CLAIM_MS[:PERMITS]`, all a release
    /// needs to hand it the lock: a hand-over sets the lock for [`CLAIM`] (at most the lease),
    /// which our next attempt, pipelined behind our wait, turns into our whole lease.
    fn member(&self) -> String {
        let claim = duration_ms(CLAIM).min(self.lease_ms);
        match self.kind {
            LockKind::Read => format!("r:{}:{claim}", self.token),
            LockKind::Semaphore { permits } => format!("s:{}:{claim}:{permits}", self.token),
            _ => format!("w:{}:{claim}", self.token),
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        which: Script,
        conn: &mut impl ConnectionLike,
        member: &str,
        _config: &RedisConfig,
    ) -> redis::RedisResult<T> {
        self.invocation(which, member, self.lease_ms, false).invoke_async(conn).await
    }

    /// The invocation of one of our scripts: KEYS and ARGV as the scripts expect them (see
    /// `scripts/acquire_rw.lua`); `unblock` asks a release to end a wait of ours that may still be
    /// blocked (an undo, see [`Op::undo`]).
    fn invocation(&self, which: Script, member: &str, lease_ms: u64, unblock: bool) -> ScriptInvocation<'static> {
        let sem = matches!(self.kind, LockKind::Semaphore { .. });
        let script: &'static redis::Script = match (which, sem) {
            (Script::Acquire, false) => &scripts::ACQUIRE_RW,
            (Script::Release, false) => &scripts::RELEASE_RW,
            (Script::Renew, false) => &scripts::RENEW_RW,
            (Script::Acquire, true) => &scripts::ACQUIRE_SEM,
            (Script::Release, true) => &scripts::RELEASE_SEM,
            (Script::Renew, true) => &scripts::RENEW_SEM,
        };
        let mut inv = script.prepare_invoke();
        for k in &self.keys.script_keys {
            inv.key(k);
        }
        let sixth = match self.kind {
            LockKind::Semaphore { permits } => permits.to_string(),
            _ => READERS_VALUE.to_owned(),
        };
        inv.arg(&self.token)
            .arg(lease_ms)
            .arg(member)
            .arg(duration_ms(REGISTRATION))
            .arg(&self.keys.wake_prefix)
            .arg(sixth)
            .arg(if self.kind == LockKind::Read { "r" } else { "w" })
            .arg(if unblock { "1" } else { "0" });
        inv
    }

    /// One wait on the waiter's own connection: `BLPOP` on its wake-up list for at most `timeout`,
    /// and the next attempt pipelined behind it, which Redis runs as soon as the `BLPOP` returns
    /// (pushed to by a hand-over, or timed out). A lock handed over is thus claimed (extended from
    /// its short claim window to our lease) in the same round trip as the wake-up, by the server,
    /// and a waiter that is gone (its connection closed) claims nothing. Returns the attempt's
    /// answer; the `BLPOP`'s is not needed.
    async fn wait_then_attempt(
        &self,
        conn: &mut Conn,
        member: &str,
        timeout: Duration,
        _config: &RedisConfig,
    ) -> redis::RedisResult<Vec<i64>> {
        let attempt = self.invocation(Script::Acquire, member, self.lease_ms, false);
        let mut pipe = redis::pipe();
        pipe.cmd("BLPOP")
            .arg(format!("{}{member}", self.keys.wake_prefix))
            .arg(format!("{:.3}", timeout.as_secs_f64().max(0.001)))
            .ignore()
            .invoke_script(&attempt);
        let (reply,): (Vec<i64>,) = pipe.query_async(conn).await?;
        Ok(reply)
    }

    /// The undo of a cancelled acquisition: releases the lock if it became ours, and removes our
    /// place in the queue (waking the next waiter when the lock is free). With a wait in flight
    /// on our waiter connection (`in_flight`), the attempt pipelined behind it runs on the server
    /// after that wait, and may queue us again or take the lock: so the first undo, on the
    /// provider's connection, also ends that wait (a push to our list), and a second undo runs
    /// behind the attempt on its connection (Redis runs one connection's commands in order). If
    /// that connection is gone, the attempt went with it or ran before: a third undo on the
    /// provider's connection covers the second case.
    async fn undo(self, shared: Conn, member: String, config: RedisConfig, in_flight: Arc<StdMutex<Option<Conn>>>) {
        let pending = in_flight.lock().unwrap_or_else(|p| p.into_inner()).take();
        let first = self.release_retrying(&shared, &member, pending.is_some(), &config).await;
        if let Err(e) = first {
            tracing::debug!(error = %e, "undo of a cancelled acquisition failed; the lease and the queue registration expire on their own");
        }
        let Some(mut c) = pending else { return };
        let behind = self.invocation(Script::Release, &member, self.lease_ms, false);
        match tokio::time::timeout(RECHECK + config.command_timeout, behind.invoke_async::<i64>(&mut c)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !lost_connection(&e) => {
                tracing::debug!(error = %self.map_err(&config, "undo", e), "undo behind a cancelled wait failed");
            }
            _ => {
                if let Err(e) = self.release_retrying(&shared, &member, false, &config).await {
                    tracing::debug!(error = %e, "undo of a cancelled acquisition failed; the lease and the queue registration expire on their own");
                }
            }
        }
    }

    /// The release script on the provider's connection, made again on a new connection when that
    /// one was lost, for up to `command_timeout`. Returns whether this holder still held it.
    async fn release_retrying(&self, conn: &Conn, member: &str, unblock: bool, config: &RedisConfig) -> Result<bool> {
        let mut reconnect = Reconnect::within(config.command_timeout);
        let mut ambiguous = false;
        loop {
            let mut c = conn.clone();
            match self.invocation(Script::Release, member, self.lease_ms, unblock).invoke_async::<i64>(&mut c).await {
                // After an attempt whose answer was lost with its connection, "not ours" may be
                // that attempt's own doing.
                Ok(r) => return Ok(r == 1 || ambiguous),
                Err(e) if reconnect.again(&e).await => ambiguous = true,
                Err(e) => return Err(self.explain(conn, config, member, "release", e).await),
            }
        }
    }

    fn map_err(&self, config: &RedisConfig, what: &str, e: RedisError) -> Error {
        let key = keys::lock_key(&config.prefix, self.name.as_str());
        if e.code() == Some("WRONGTYPE") {
            // Which key, when `explain` could not tell (it was changed back meanwhile).
            return Error::Backend {
                backend: BACKEND,
                message: format!(
                    "{what} {:?}: a key of this lock ({key:?} or one of its side keys {}:*) holds another type \
                     than interlock keeps there",
                    self.name.display(),
                    keys::side_base_of(&config.prefix, self.name.as_str())
                ),
                source: Some(Box::new(e)),
            };
        }
        match map_err(config, &format!("{what} {:?}", self.name.display()), e) {
            Error::Auth { backend, message, source } if message.contains("use a key of this lock") => Error::Auth {
                backend,
                message: format!(
                    "{message}: the lock key {key:?} and its side keys {}:*",
                    keys::side_base_of(&config.prefix, self.name.as_str())
                ),
                source,
            },
            other => other,
        }
    }

    /// [`Op::map_err`], naming for a `WRONGTYPE` the key that holds another type than interlock
    /// keeps there, found with `TYPE` on each key of this lock (on the error path only).
    async fn explain(&self, conn: &Conn, config: &RedisConfig, member: &str, what: &str, e: RedisError) -> Error {
        if e.code() != Some("WRONGTYPE") {
            return self.map_err(config, what, e);
        }
        let k = &self.keys.script_keys;
        let types: [&str; 5] = match self.kind {
            // holders, fence, permits count, Q, QX (acquire_sem.lua)
            LockKind::Semaphore { .. } => ["zset", "string", "string", "zset", "zset"],
            // the lock key, fence, readers, Q, QX (acquire_rw.lua)
            _ => ["string", "string", "zset", "zset", "zset"],
        };
        let wake = (!member.is_empty()).then(|| (format!("{}{member}", self.keys.wake_prefix), "list"));
        let keys: Vec<(String, &str)> = k.iter().cloned().zip(types).chain(wake).collect();
        let lock_key = (!matches!(self.kind, LockKind::Semaphore { .. })).then_some(k[0].as_str());
        match wrong_type(&mut conn.clone(), &keys, lock_key).await {
            Some(why) => Error::Backend {
                backend: BACKEND,
                message: format!("{}: {what} {:?}: {why}", server(config), self.name.display()),
                source: Some(Box::new(e)),
            },
            None => self.map_err(config, what, e),
        }
    }

    fn bad_reply(&self, reply: &[i64]) -> Error {
        backend_error(format!("lock {:?}: unexpected script reply {reply:?}", self.name.display()))
    }

    /// A fencing token from a script's answer.
    fn token_from(&self, fence: i64) -> Result<u64> {
        u64::try_from(fence).map_err(|_| self.bad_reply(&[1, fence]))
    }
}

/// After a `WRONGTYPE`: the first of `keys` (key, the type interlock keeps there) that holds
/// another type, found with `TYPE`, said in one phrase; `lock_key` is the one that is the lock.
pub(crate) async fn wrong_type(
    conn: &mut impl ConnectionLike,
    keys: &[(String, &str)],
    lock_key: Option<&str>,
) -> Option<String> {
    for (key, expected) in keys {
        let found = redis::cmd("TYPE").arg(key).query_async::<String>(conn).await.ok()?;
        if found == "none" || found == *expected {
            continue;
        }
        return Some(if Some(key.as_str()) == lock_key {
            format!("the key {key:?} holds a {found}, not a string: it holds a value that is not a lock")
        } else {
            format!(
                "interlock's key {key:?} holds a {found}, where interlock keeps a {expected}: something else wrote it \
                 (delete it if nothing else uses it)"
            )
        });
    }
    None
}

/// Whether `e` says the connection was lost (killed by `CLIENT KILL`, reset, closed by a restart,
/// refused while the server comes back), or that a cluster that just came back has not yet found
/// its nodes or agreed on its slots (`ClusterConnectionNotFound`, `CLUSTERDOWN`, `TRYAGAIN`,
/// `LOADING`): worth the same request again on a new connection.
fn lost_connection(e: &RedisError) -> bool {
    e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain | ServerErrorKind::BusyLoading
                )
        )
}

/// Repeats a request whose connection was lost, on the connection that the `ConnectionManager`
/// (or the cluster client) opens in its place, with short pauses, until a bound: so that a killed
/// connection costs a reconnect, not an error, and only a server that stays unreachable for that
/// long is `Unavailable`.
pub(crate) struct Reconnect {
    give_up: Instant,
    pause: Duration,
}

impl Reconnect {
    pub(crate) fn within(bound: Duration) -> Reconnect {
        Reconnect { give_up: Instant::now() + bound, pause: Duration::from_millis(5) }
    }

    /// After the request failed with `e`: pauses and returns `true` when it is worth trying again.
    pub(crate) async fn again(&mut self, e: &RedisError) -> bool {
        if !lost_connection(e) || Instant::now() + self.pause >= self.give_up {
            return false;
        }
        tracing::debug!(error = %e, "the connection to Redis was lost; trying again on a new one");
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
        true
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A lock held on Redis.
struct RedisHeld {
    conn: Conn,
    config: RedisConfig,
    op: Op,
    fence: u64,
    valid_until: Instant,
    released: AtomicBool,
}

impl std::fmt::Debug for RedisHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHeld")
            .field("key", &self.op.keys.script_keys[0])
            .field("kind", &self.op.kind)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl RawHeld for RedisHeld {
    fn fencing_token(&self) -> Option<u64> {
        Some(self.fence)
    }

    fn valid_until(&self) -> Option<Instant> {
        Some(self.valid_until)
    }

    /// Renews on the provider's connection, again on a new one when that one was lost (for up to
    /// `command_timeout`; the monitor bounds the whole by the lease's validity).
    fn renew(&self, lease: Duration) -> BoxFuture<'_, Result<Renewal>> {
        Box::pin(async move {
            let sent = Instant::now();
            let mut reconnect = Reconnect::within(self.config.command_timeout);
            let r: i64 = loop {
                let mut conn = self.conn.clone();
                match self.op.invocation(Script::Renew, "", duration_ms(lease), false).invoke_async(&mut conn).await {
                    Ok(r) => break r,
                    Err(e) if reconnect.again(&e).await => {}
                    Err(e) => return Err(self.op.explain(&self.conn, &self.config, "", "renew", e).await),
                }
            };
            Ok(if r == 1 { Renewal::Until(instant_after(sent, lease)?) } else { Renewal::Lost })
        })
    }

    /// Releases on the provider's connection, again on a new one when that one was lost (for up
    /// to `command_timeout`), so that a killed connection does not leave the key for its lease.
    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            if self.released.load(Ordering::SeqCst) {
                return Ok(true);
            }
            let held = self.op.release_retrying(&self.conn, "", false, &self.config).await?;
            self.released.store(true, Ordering::SeqCst);
            Ok(held)
        })
    }
}

impl RawProvider for RedisProvider {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        super::BACKEND.capabilities
    }

    fn acquire(&self, request: Request, wait: Wait) -> BoxFuture<'_, Result<Option<Arc<dyn RawHeld>>>> {
        Box::pin(self.acquire_inner(request, wait))
    }

    fn status<'a>(&'a self, name: &'a LockName) -> BoxFuture<'a, Result<LockStatus>> {
        Box::pin(self.status_inner(name))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        // The shared connection closes when its last clone (held locks keep one) is dropped.
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Box::pin(async { Ok(()) })
    }
}

/// A plain connection of its own to `config`'s server (see `super::raw_connection`): a multiplexed
/// connection, or on a cluster a cluster connection; `command_timeout` bounds the connection and
/// each reply.
pub(crate) async fn raw_connection(config: &RedisConfig) -> Result<super::RawConnection> {
    if config.cluster {
        let client = cluster_client(config, Some(config.command_timeout))?;
        let c = client.get_async_connection().await.map_err(|e| map_err(config, "connect", e))?;
        return Ok(super::RawConnection::Cluster(c));
    }
    let c = client(config)?
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.command_timeout))
                .set_response_timeout(Some(config.command_timeout)),
        )
        .await
        .map_err(|e| map_err(config, "connect", e))?;
    Ok(super::RawConnection::Server(c))
}
