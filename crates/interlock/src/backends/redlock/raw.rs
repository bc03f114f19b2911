//! The `redlock://` backend: one RESP3 `ConnectionManager` per master (commands and the
//! subscriptions of waiters, reconnecting by itself), opened lazily so that a master that is
//! down when the provider connects joins when it comes back; every operation is one round of
//! requests sent to all masters at once, decided by a quorum. The requests are tasks of the
//! provider ([`Tasks`]): a round's answers that nobody waits for any more still land, and the
//! provider's `close` waits for them (each is bounded by its master's command timeout), then closes
//! the masters' connections.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, RedisError};
use tokio::sync::{Notify, mpsc};

use super::config::{RedlockConfig, drift};
use super::keys::{Keys, READERS_VALUE};
use super::scripts;
use super::wake::{Interest, PushRouter, Wakeups};
use crate::backends::redis::config::RedisConfig;
use crate::backends::redis::raw::{Reconnect, client_speaking, map_err, new_token, wrong_type};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::{
    BoxFuture, Capabilities, Cleanup, HeldMode, LeaseConfig, LockKind, LockStatus, RawHeld, RawProvider, Renewal,
    Request, Tasks, Wait, instant_after,
};

pub(crate) const BACKEND: &str = super::BACKEND_NAME;

/// A waiter re-checks at least this often without a wake-up (plus up to [`JITTER`]): the bound on
/// noticing a release by a peer tool that does not publish (redlock-py, pottery), or a wake-up
/// lost with a master's connection.
pub(crate) const RECHECK: Duration = Duration::from_millis(500);

/// The most a waiter waits, at random, before it retries after a split vote (some masters
/// granted, no quorum): so that competing waiters do not split again in lockstep.
pub(crate) const JITTER: Duration = Duration::from_millis(50);

/// How long a waiting writer's registration (which keeps new readers out) lasts without the
/// refresh that each of its attempts makes.
const REGISTRATION: Duration = Duration::from_secs(2);

/// One master.
pub(crate) struct Master {
    /// Its place in the URL (and in every round's answers).
    index: usize,
    config: RedisConfig,
    client: Client,
    /// Its connection, opened on first use (`None` until then, and after a failed open).
    conn: StdMutex<Option<ConnectionManager>>,
    /// Held while the connection is being opened, so that one open serves every request.
    opening: tokio::sync::Mutex<()>,
    /// Set by the provider's `close`: only the undo of what the provider set (releases) may still
    /// use (or open) a connection.
    closed: AtomicBool,
    wakeups: Arc<Wakeups>,
    /// The provider's tasks, which run the requests of every round.
    tasks: Tasks,
    /// The master has our scripts cached (checked, and the missing ones loaded, when the
    /// connection opened; or a script of ours ran here), so an `EVALSHA` is one request (without
    /// them it is a `NOSCRIPT` answer, then the script sent again).
    scripted: AtomicBool,
    /// What the provider's masters found out about each other (one server named twice).
    peers: Arc<Peers>,
}

/// What each master of one provider is, as found when it first connected: its addresses and
/// its server's `run_id`, so that two masters of the URL that are one server (`127.0.0.1:6379` and
/// `localhost:6379`, or two addresses of one host) are refused: they would count twice in the
/// quorum, and a "majority" could then be a minority of the servers.
#[derive(Debug)]
pub(crate) struct Peers {
    /// The provider's URL, password redacted, for the error.
    url: String,
    /// Per master: its name in the URL, its addresses, its `run_id`.
    seen: StdMutex<Vec<Seen>>,
}

/// One master in [`Peers`]: its name in the URL, its addresses, its server's `run_id`.
type Seen = (String, Vec<SocketAddr>, Option<String>);

impl Peers {
    fn new(config: &RedlockConfig) -> Arc<Peers> {
        let seen = config.masters.iter().map(|m| (m.shown.clone(), Vec::new(), None)).collect();
        Arc::new(Peers { url: config.shown.clone(), seen: StdMutex::new(seen) })
    }

    /// Records what master `i` is; an error naming the other master when one is the same server.
    fn claim(&self, i: usize, addrs: Option<Vec<SocketAddr>>, run_id: Option<String>) -> Result<()> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let same = seen.iter().enumerate().filter(|(j, _)| *j != i).find_map(|(_, (other, their_addrs, theirs))| {
            if let Some(a) = addrs.as_ref().and_then(|a| a.iter().find(|a| their_addrs.contains(a))) {
                return Some(format!("{other} (both are {a})"));
            }
            match (&run_id, theirs) {
                (Some(ours), Some(theirs)) if ours == theirs => {
                    Some(format!("{other} (the same run_id in INFO server)"))
                }
                _ => None,
            }
        });
        if let Some(other) = same {
            return Err(Error::InvalidUrl {
                url: self.url.clone(),
                reason: format!(
                    "masters {} and {other} are the same server: each master counts once in the quorum, so name \
                     each server once",
                    seen[i].0
                ),
            });
        }
        if let Some(a) = addrs {
            seen[i].1 = a;
        }
        if run_id.is_some() {
            seen[i].2 = run_id;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master").field("addr", &self.config.shown).finish_non_exhaustive()
    }
}

/// Replaces the redis backend's name in an error from its helpers with ours.
fn rebrand(e: Error) -> Error {
    match e {
        Error::Unavailable { message, source, .. } => Error::Unavailable { backend: BACKEND, message, source },
        Error::Auth { message, source, .. } => Error::Auth { backend: BACKEND, message, source },
        Error::Backend { message, source, .. } => Error::Backend { backend: BACKEND, message, source },
        other => other,
    }
}

impl Master {
    fn new(
        index: usize,
        config: RedisConfig,
        wakeups: Arc<Wakeups>,
        peers: Arc<Peers>,
        tasks: Tasks,
    ) -> Result<Master> {
        // The redis backend's client (plain, or TLS with the URL's certificates), in RESP3 for
        // the wake-ups' push messages.
        let client = client_speaking(&config, Some(ProtocolVersion::RESP3)).map_err(rebrand)?;
        Ok(Master {
            index,
            config,
            client,
            conn: StdMutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            wakeups,
            tasks,
            scripted: AtomicBool::new(false),
            peers,
        })
    }

    fn err(&self, what: &str, e: RedisError) -> Error {
        rebrand(map_err(&self.config, what, e))
    }

    fn timeout(&self) -> Duration {
        self.config.command_timeout
    }

    /// The master's connection, opened on first use (and retried at the next use when that
    /// fails); refused once the provider is closed.
    async fn conn(&self) -> Result<ConnectionManager> {
        self.conn_for(false).await
    }

    /// [`Master::conn`]; with `cleanup` (a release, the undo of an acquisition) also once the
    /// provider is closed, so that what it set is still removed: a dropped provider is closed while
    /// the undo of its last abandoned acquisition may still be on its way.
    async fn conn_for(&self, cleanup: bool) -> Result<ConnectionManager> {
        if let Some(c) = self.current(cleanup)? {
            return Ok(c);
        }
        let _opening = self.opening.lock().await;
        if let Some(c) = self.current(cleanup)? {
            return Ok(c);
        }
        let c = self.open().await?;
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if !cleanup && self.closed.load(Ordering::SeqCst) {
            return Err(self.closed_error());
        }
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The connection if it is open; an error once the provider is closed (unless `cleanup`).
    fn current(&self, cleanup: bool) -> Result<Option<ConnectionManager>> {
        if !cleanup && self.closed.load(Ordering::SeqCst) {
            return Err(self.closed_error());
        }
        Ok(self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn closed_error(&self) -> Error {
        Error::Unavailable {
            backend: BACKEND,
            message: format!("{}: the provider was closed", self.config.shown),
            source: None,
        }
    }

    /// Closes the master's connection (the provider's `close`): requests still using it finish
    /// first (they hold clones of it); from then on only releases use a connection (one they open
    /// again if need be, kept until the last of them is done and the master is dropped).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(self.conn.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    async fn open(&self) -> Result<ConnectionManager> {
        let t = self.timeout();
        // The same address as another master's is the same server (a name that does not resolve
        // is left to the connection's own error).
        let addrs = tokio::net::lookup_host((self.config.host.as_str(), self.config.port)).await.ok();
        self.peers.claim(self.index, addrs.map(Iterator::collect), None)?;
        // A plain connection first: a refused password fails here at once (the manager would
        // retry it with backoff).
        let mut first = self
            .client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new().set_connection_timeout(Some(t)).set_response_timeout(Some(t)),
            )
            .await
            .map_err(|e| self.err("connect", e))?;
        // PING and the server's run_id in one round trip (both queued at once). INFO may be
        // refused to an ACL user: then only the addresses tell two masters apart.
        let mut second = first.clone();
        let info = async move { redis::cmd("INFO").arg("server").query_async::<String>(&mut second).await };
        // Which of our scripts the master has cached, in the same round trip.
        let mut third = first.clone();
        let hashes: Vec<&str> = scripts::ALL.iter().map(|s| s.get_hash()).collect();
        let cached =
            async move { redis::cmd("SCRIPT").arg("EXISTS").arg(hashes).query_async::<Vec<i64>>(&mut third).await };
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<redis::Value>(&mut first);
        let (ping, info, cached) = tokio::join!(ping, info, cached);
        ping.map_err(|e| self.err("PING", e))?;
        // The missing ones are loaded now (on first use after the master started, or after a
        // SCRIPT FLUSH): a request sent to this master is then one EVALSHA, which it runs when it
        // gets to it, also after this process has exited (a release sent to a paused master
        // just before `interlock run` exits). A `NOSCRIPT` answer would need us to send the
        // script again, and a paused master answers after we are gone. An ACL user without
        // SCRIPT is left to the EVALSHA / EVAL fallback of each request.
        if let Ok(cached) = cached {
            let mut all = cached.len() == scripts::ALL.len();
            for (script, have) in scripts::ALL.iter().zip(cached) {
                if have == 0 && script.load_async(&mut first).await.is_err() {
                    all = false;
                }
            }
            if all {
                self.scripted.store(true, Ordering::SeqCst);
            }
        }
        let run_id = info
            .ok()
            .and_then(|text| text.lines().find_map(|l| l.strip_prefix("run_id:")).map(|id| id.trim().to_owned()));
        self.peers.claim(self.index, None, run_id)?;
        drop(first);
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(t))
            .set_connection_timeout(Some(t))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200))
            .set_push_sender(PushRouter(self.wakeups.clone()))
            .set_automatic_resubscription();
        ConnectionManager::new_with_config(self.client.clone(), config).await.map_err(|e| self.err("connect", e))
    }

    pub(crate) async fn subscribe(&self, channel: &str) -> Result<()> {
        let mut c = self.conn().await?;
        c.subscribe(channel).await.map_err(|e| self.err("SUBSCRIBE", e))
    }

    /// Unsubscribes where a connection is open (a master never reached has no subscription).
    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<()> {
        let Ok(Some(mut c)) = self.current(false) else { return Ok(()) };
        c.unsubscribe(channel).await.map_err(|e| self.err("UNSUBSCRIBE", e))
    }

    async fn ping(&self) -> Result<()> {
        let mut c = self.conn().await?;
        redis::cmd("PING").query_async::<redis::Value>(&mut c).await.map(drop).map_err(|e| self.err("PING", e))
    }

    /// Runs `inv` on this master, again on a new connection when the connection was lost
    /// (`CLIENT KILL`, a reset, a restart), within the master's command timeout (the round bounds
    /// the whole): a killed connection costs a reconnect, not this master's vote. `retried` is set
    /// when a try failed that may have run on the master (its answer lost with the connection).
    /// `cleanup`: a release, which goes through also after the provider's close.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        retried: &mut bool,
        cleanup: bool,
    ) -> std::result::Result<T, Failed> {
        let mut reconnect = Reconnect::within(self.timeout());
        loop {
            let mut c = self.conn_for(cleanup).await.map_err(Failed::Connect)?;
            match inv.invoke_async(&mut c).await {
                Ok(v) => return Ok(v),
                Err(e) if reconnect.again(&e).await => *retried = true,
                Err(e) => return Err(Failed::Redis(e)),
            }
        }
    }

    /// The error of a request for `op` that failed; for a `WRONGTYPE`, naming the key of the lock
    /// that holds another type than interlock keeps there (found with `TYPE`, on the error path).
    async fn explain(&self, op: &Op, what: &str, f: Failed) -> Error {
        let e = match f {
            Failed::Connect(e) => return e,
            Failed::Redis(e) => e,
        };
        if e.code() == Some("WRONGTYPE")
            && let Ok(mut c) = self.conn().await
        {
            let k = &op.keys;
            let keys = [
                (k.lock.clone(), "string"),
                (k.fence.clone(), "string"),
                (k.readers.clone(), "zset"),
                (k.writers.clone(), "zset"),
                (k.q.clone(), "zset"),
                (k.qx.clone(), "zset"),
            ];
            if let Some(why) = wrong_type(&mut c, &keys, Some(&k.lock)).await {
                return Error::Backend {
                    backend: BACKEND,
                    message: format!("{}: {what} {:?}: {why}", self.config.shown, op.name.display()),
                    source: Some(Box::new(e)),
                };
            }
        }
        op.map_err(self, what, e)
    }

    /// The acquire script, made again on a new connection when the connection was lost (as
    /// [`Master::invoke`]). `sending` is given up once the request is in the connection's queue
    /// (or given up): a release of `op` on this master waits for that, so that it comes after
    /// the acquire on the same connection, which the master runs in order (a late grant on a
    /// slow master is released there, never left behind). Where the master may not have the
    /// script yet (no script of ours ran on it through this provider), the acquire may take a
    /// second request (`NOSCRIPT`, then the script), so `sending` is kept until the answer. A
    /// request made again after a lost connection is counted as on its way again; a release
    /// already sent by then (the attempt was decided meanwhile) may come first on the new
    /// connection, and a grant it then misses expires with its lease on this master alone.
    async fn acquire(&self, op: &Op, wait: bool, sending: Sending) -> Result<Vec<i64>> {
        let mut inv = scripts::ACQUIRE.prepare_invoke();
        inv.key(&op.keys.lock)
            .key(&op.keys.fence)
            .key(&op.keys.readers)
            .key(&op.keys.writers)
            .key(&op.keys.q)
            .key(&op.keys.qx);
        inv.arg(&op.token)
            .arg(op.lease_ms)
            .arg(op.side)
            .arg(READERS_VALUE)
            .arg(if wait { "1" } else { "0" })
            .arg(duration_ms(REGISTRATION))
            .arg(op.arrival);
        let again = sending.op.clone();
        let mut sending = Some(sending);
        let mut reconnect = Reconnect::within(self.timeout());
        loop {
            let mut c = self.conn().await?;
            let request = inv.invoke_async(&mut c);
            tokio::pin!(request);
            // The first poll puts the request in the connection's queue (the `redis` crate's
            // multiplexed pipeline: a FIFO channel, or a fair wait for room in it).
            let first = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await;
            if self.scripted.load(Ordering::SeqCst) {
                drop(sending.take());
            }
            let reply = match first {
                Poll::Ready(reply) => reply,
                Poll::Pending => request.await,
            };
            match reply {
                Ok(v) => {
                    self.scripted.store(true, Ordering::SeqCst);
                    return Ok(v);
                }
                Err(e) if reconnect.again(&e).await => {
                    if sending.is_none() {
                        sending = Some(again.sending(self.index));
                    }
                }
                Err(e) => return Err(self.explain(op, "acquire", Failed::Redis(e)).await),
            }
        }
    }

    async fn writeback(&self, op: &Op, token: u64) -> Result<i64> {
        let mut inv = scripts::WRITEBACK.prepare_invoke();
        inv.key(&op.keys.lock).key(&op.keys.fence).key(&op.keys.readers);
        inv.arg(&op.token).arg(token.to_string()).arg(op.side).arg(READERS_VALUE);
        match self.invoke(&inv, &mut false, false).await {
            Ok(v) => Ok(v),
            Err(f) => Err(self.explain(op, "write back the fencing token of", f).await),
        }
    }

    async fn renew(&self, op: &Op, lease: Duration) -> Result<i64> {
        let mut inv = scripts::RENEW.prepare_invoke();
        inv.key(&op.keys.lock).key(&op.keys.readers);
        inv.arg(&op.token).arg(duration_ms(lease)).arg(op.side).arg(READERS_VALUE);
        match self.invoke(&inv, &mut false, false).await {
            Ok(v) => Ok(v),
            Err(f) => Err(self.explain(op, "renew", f).await),
        }
    }

    /// Returns 1 when this holder held the lock here (or a try whose answer was lost with its
    /// connection may have released it), 0 when not.
    async fn release(&self, op: &Op, keep_waiting: bool) -> Result<i64> {
        let mut inv = scripts::RELEASE.prepare_invoke();
        inv.key(&op.keys.lock).key(&op.keys.readers).key(&op.keys.writers).key(&op.keys.q).key(&op.keys.qx);
        inv.arg(&op.token).arg(op.side).arg(READERS_VALUE).arg(&op.keys.channel).arg(if keep_waiting {
            "1"
        } else {
            "0"
        });
        let mut retried = false;
        let held: i64 = match self.invoke(&inv, &mut retried, true).await {
            Ok(v) => v,
            Err(f) => return Err(self.explain(op, "release", f).await),
        };
        Ok(if retried { 1 } else { held })
    }

    async fn status(&self, keys: &Keys) -> Result<(i64, i64, i64, i64)> {
        let mut inv = scripts::STATUS.prepare_invoke();
        inv.key(&keys.lock).key(&keys.readers).key(&keys.qx).arg(READERS_VALUE);
        let [kind, readers, pttl, waiting]: [i64; 4] = self
            .invoke::<Vec<i64>>(&inv, &mut false, false)
            .await
            .map_err(|f| f.into_error(|e| self.err("status", e)))?
            .try_into()
            .map_err(|r| backend_error(format!("{}: status: unexpected reply {r:?}", self.config.shown)))?;
        Ok((kind, readers, pttl, waiting))
    }
}

/// Why a request to one master failed: no connection (already an [`Error`]), or the server's
/// answer.
enum Failed {
    Connect(Error),
    Redis(RedisError),
}

impl Failed {
    fn into_error(self, map: impl FnOnce(RedisError) -> Error) -> Error {
        match self {
            Failed::Connect(e) => e,
            Failed::Redis(e) => map(e),
        }
    }
}

fn backend_error(message: String) -> Error {
    Error::Backend { backend: BACKEND, message, source: None }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Sends one request to every master at once, each bounded by its master's command timeout, and
/// returns their answers as they come (`(master index, answer)`). The requests are tasks of the
/// provider ([`Tasks::spawn_finishing`]): a caller that has its quorum stops reading, and the rest
/// still complete (a late grant is ours and is released with the lock; a late release still
/// releases), also across the provider's `close`, which waits for them.
pub(crate) fn round<T, F, Fut>(masters: &[Arc<Master>], f: F) -> Round<T>
where
    T: Send + 'static,
    F: Fn(Arc<Master>) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    gated_round(masters, None, f)
}

/// A [`round`] whose request to each master is sent only once every acquire request of `after`
/// to that master is in its connection's queue (or was given up), so that the master runs it
/// after them; the command timeout counts from then.
fn gated_round<T, F, Fut>(masters: &[Arc<Master>], after: Option<&Arc<Op>>, f: F) -> Round<T>
where
    T: Send + 'static,
    F: Fn(Arc<Master>) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    for m in masters {
        let (i, tx, t, shown) = (m.index, tx.clone(), m.timeout(), m.config.shown.clone());
        let request = f(m.clone());
        let after = after.cloned();
        let refused = tx.clone();
        let spawned = m.tasks.spawn_finishing(async move {
            if let Some(op) = after {
                op.sent_to(i).await;
            }
            let answer = tokio::time::timeout(t, request).await.unwrap_or_else(|_| {
                Err(Error::Unavailable {
                    backend: BACKEND,
                    message: format!("{shown}: no answer within {t:?}"),
                    source: None,
                })
            });
            let _ = tx.send((i, answer));
        });
        if !spawned {
            let _ = refused.send((
                i,
                Err(Error::Unavailable {
                    backend: BACKEND,
                    message: format!("{}: no tokio runtime to send the request on", m.config.shown),
                    source: None,
                }),
            ));
        }
    }
    Round { rx }
}

/// The answers of one [`round`], each with its master's index.
pub(crate) struct Round<T> {
    rx: mpsc::UnboundedReceiver<(usize, Result<T>)>,
}

impl<T> Round<T> {
    /// The next answer; `None` once every master answered.
    pub(crate) async fn recv(&mut self) -> Option<(usize, Result<T>)> {
        self.rx.recv().await
    }
}

/// Once a quorum has answered, how long the other masters still get: as long again as the quorum
/// took since `started`, plus 10 ms (a healthy master answers about as fast as the others; a
/// paused or overloaded one is left to the background). `connect` and `status` wait this long for
/// the rest; no call waits for a master beyond it.
fn straggler_deadline(started: Instant) -> tokio::time::Instant {
    let now = Instant::now();
    (now + now.duration_since(started) + Duration::from_millis(10)).into()
}

/// The next answer of `replies`; `None` once every master answered, or once `until` passed.
async fn next_answer<T>(replies: &mut Round<T>, until: Option<tokio::time::Instant>) -> Option<(usize, Result<T>)> {
    match until {
        None => replies.recv().await,
        Some(t) => tokio::time::timeout_at(t, replies.recv()).await.ok().flatten(),
    }
}

/// One line for a round that found no quorum: what each master that failed said.
fn no_quorum(what: &str, answered: usize, n: usize, quorum: usize, errors: Vec<Error>) -> Error {
    let auth = !errors.is_empty() && errors.iter().all(|e| matches!(e, Error::Auth { .. }));
    let fatal = errors.iter().position(|e| matches!(e, Error::Backend { .. }));
    let detail: Vec<String> = errors
        .iter()
        .map(|e| match e {
            Error::Unavailable { message, .. } | Error::Auth { message, .. } | Error::Backend { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        })
        .collect();
    let message = format!("{what}: {answered} of {n} masters answered, {quorum} needed ({})", detail.join("; "));
    let source = errors.into_iter().next().map(|e| Box::new(e) as crate::error::BoxError);
    if let Some(_i) = fatal {
        return Error::Backend { backend: BACKEND, message, source };
    }
    if auth {
        // Error::Auth messages say first which refusal it is (see the variant's docs).
        let lead = if detail.iter().all(|d| d.starts_with("permission denied")) {
            "permission denied"
        } else {
            "authentication failed"
        };
        return Error::Auth { backend: BACKEND, message: format!("{lead}: {message}"), source };
    }
    Error::Unavailable { backend: BACKEND, message, source }
}

/// A fresh random delay in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    let mut buf = [0u8; 8];
    let n = rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty()).unwrap_or(0);
    let r = if n == 8 { u64::from_le_bytes(buf) } else { u64::from(Instant::now().elapsed().subsec_nanos()) };
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(r % max_ns)
}

/// One acquisition: its keys, side, token and lease; and its requests still in flight, which its
/// undo waits for (so that an acquire request sent just before cancellation cannot land after
/// the undo's release).
#[derive(Debug)]
pub(crate) struct Op {
    name: LockName,
    side: &'static str,
    keys: Keys,
    token: String,
    lease_ms: u64,
    /// When the acquisition started, by this host's clock in µs: its rank in the wake-up queue,
    /// the same on every master.
    arrival: u64,
    /// Per master: this acquisition's acquire requests not yet in the master's connection queue
    /// (see [`Sending`]); `sent` is notified each time one gets there or is given up.
    unsent: Box<[AtomicUsize]>,
    sent: Notify,
}

/// One acquire request of an [`Op`] to one master on its way to the master's connection:
/// counted from before its task starts until it is dropped.
pub(crate) struct Sending {
    op: Arc<Op>,
    i: usize,
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.op.unsent[self.i].fetch_sub(1, Ordering::SeqCst);
        self.op.sent.notify_waiters();
    }
}

impl Op {
    fn map_err(&self, m: &Master, what: &str, e: RedisError) -> Error {
        if e.code() == Some("WRONGTYPE") {
            return Error::Backend {
                backend: BACKEND,
                message: format!(
                    "{}: {what} {:?}: the key {:?} holds a value that is not a lock (another type than a string)",
                    m.config.shown,
                    self.name.display(),
                    self.keys.lock
                ),
                source: Some(Box::new(e)),
            };
        }
        m.err(&format!("{what} {:?}", self.name.display()), e)
    }

    /// Counts an acquire request to master `i` as on its way (until the result is dropped).
    fn sending(self: &Arc<Self>, i: usize) -> Sending {
        self.unsent[i].fetch_add(1, Ordering::SeqCst);
        Sending { op: self.clone(), i }
    }

    /// Until every acquire request of this acquisition to master `i` is in that master's
    /// connection queue, or was given up (each is bounded by the master's command timeout).
    async fn sent_to(&self, i: usize) {
        loop {
            let notified = self.sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unsent[i].load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Where a [`release_everywhere`] releases, and which answers it waits for before it returns
/// (the others complete in the background).
enum Until {
    /// Every master, until every one answered, or until this many answered and the others had
    /// the stragglers' time ([`straggler_deadline`]) more: the undo of an abandoned acquisition,
    /// which a program about to exit waits for (`finish_cleanups`), and which must not wait for a
    /// paused minority. A late master's release is in its connection's queue by then, behind the
    /// acquire requests: it lands when the master runs again (also after this process has exited).
    Settled(usize),
    /// Every master, until this many held the lock, or so many did not that a quorum cannot have.
    Quorum(usize),
    /// Only the masters marked `true`, every answer (the undo of a failed attempt before the next
    /// one: nothing of it may still be on its way when the next attempt, with the same token,
    /// is sent).
    These(Vec<bool>),
}

/// Releases `op` on every master, each after its acquire requests to that master (so that a
/// late grant is released too); the undo of a cancelled or failed acquisition. Returns how many
/// masters held it, how many did not, and the errors, once the answers `until` names are in:
/// the other requests still complete in the background, and no caller waits for a slow master
/// it does not need.
async fn release_everywhere(
    masters: Arc<[Arc<Master>]>,
    op: Arc<Op>,
    keep_waiting: bool,
    until: Until,
) -> (usize, usize, Vec<Error>) {
    let n = masters.len();
    let targets: Vec<Arc<Master>> = match &until {
        Until::These(set) => masters.iter().filter(|m| set[m.index]).cloned().collect(),
        _ => masters.to_vec(),
    };
    let mut replies = {
        let op2 = op.clone();
        gated_round(&targets, Some(&op), move |m| {
            let op = op2.clone();
            async move { m.release(&op, keep_waiting).await }
        })
    };
    let (mut held, mut not_held, mut errors) = (0, 0, Vec::new());
    let (started, mut stragglers) = (Instant::now(), None);
    while let Some((_, r)) = next_answer(&mut replies, stragglers).await {
        match r {
            Ok(1) => held += 1,
            Ok(_) => not_held += 1,
            Err(e) => errors.push(e),
        }
        match until {
            Until::Quorum(q) if held >= q || not_held > n - q => break,
            Until::Settled(q) if stragglers.is_none() && held + not_held + errors.len() >= q => {
                stragglers = Some(straggler_deadline(started));
            }
            _ => {}
        }
    }
    (held, not_held, errors)
}

/// The rest of a failed attempt's answers, in the background: a late grant (or an answer that
/// did not come: it may still land) is released on its master, after the acquire.
fn undo_late_answers(
    tasks: &Tasks,
    masters: Arc<[Arc<Master>]>,
    op: Arc<Op>,
    mut replies: Round<Vec<i64>>,
    keep_waiting: bool,
) {
    // Each answer is bounded by its master's command timeout, and so is each release.
    tasks.spawn_finishing(async move {
        while let Some((i, r)) = replies.recv().await {
            if matches!(r.as_deref(), Ok([0, _])) {
                continue;
            }
            let m = &masters[i];
            match tokio::time::timeout(m.timeout(), m.release(&op, keep_waiting)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "redlock: undo of a late answer failed; its lease expires on its own")
                }
                Err(_) => {
                    tracing::debug!(master = %m.config.shown, "redlock: undo of a late answer timed out; its lease expires on its own")
                }
            }
        }
    });
}

/// The `redlock://` backend.
pub(crate) struct RedlockProvider {
    config: RedlockConfig,
    masters: Arc<[Arc<Master>]>,
    wakeups: Arc<Wakeups>,
    /// The provider's background tasks (the core shuts them down after `close`).
    tasks: Tasks,
}

impl std::fmt::Debug for RedlockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedlockProvider").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What one attempt found.
enum Attempt {
    Held(Arc<RedlockHeld>),
    /// Not granted: the shortest remaining TTL among the masters that found it held, and whether
    /// some master granted it (a split vote: retry after a jitter, not after a wake-up).
    Busy {
        pttl: Option<Duration>,
        split: bool,
    },
}

impl RedlockProvider {
    /// Connects to every master at once and verifies it (`HELLO 3` with `AUTH`, `SELECT`,
    /// `PING`). A quorum must answer; a master that does not is connected at its first use later.
    /// A refused password on any master is `Error::Auth`.
    pub(crate) async fn connect(config: RedlockConfig, tasks: Tasks) -> Result<RedlockProvider> {
        let wakeups = Arc::new(Wakeups::new(tasks.clone()));
        let peers = Peers::new(&config);
        let masters: Arc<[Arc<Master>]> = config
            .masters
            .iter()
            .enumerate()
            .map(|(i, c)| Master::new(i, c.clone(), wakeups.clone(), peers.clone(), tasks.clone()).map(Arc::new))
            .collect::<Result<Vec<_>>>()?
            .into();
        let (n, quorum) = (masters.len(), config.quorum());
        let started = Instant::now();
        let mut replies = round(&masters, |m| async move { m.ping().await });
        let (mut ok, mut errors, mut answered) = (0, Vec::new(), vec![false; n]);
        let mut stragglers = None;
        while let Some((i, r)) = next_answer(&mut replies, stragglers).await {
            answered[i] = true;
            match r {
                Ok(()) => ok += 1,
                Err(e) => errors.push(e),
            }
            if errors.len() > n - quorum {
                break;
            }
            if ok >= quorum && stragglers.is_none() {
                stragglers = Some(straggler_deadline(started));
            }
        }
        // One server named twice, a refused password: the URL is wrong, whatever the quorum.
        if let Some(i) = errors.iter().position(|e| matches!(e, Error::InvalidUrl { .. })) {
            return Err(errors.swap_remove(i));
        }
        if let Some(i) = errors.iter().position(|e| matches!(e, Error::Auth { .. })) {
            return Err(errors.swap_remove(i));
        }
        if ok < quorum {
            return Err(no_quorum("connect", ok, n, quorum, errors));
        }
        for e in &errors {
            tracing::warn!(error = %e, "redlock: a master is unreachable; going on with the quorum of the others");
        }
        for m in masters.iter().filter(|m| !answered[m.index]) {
            tracing::warn!(
                master = %m.config.shown,
                "redlock: a master did not answer in time; going on with the quorum of the others (its connection \
                 goes on in the background, and is retried at its next use)"
            );
        }
        Ok(RedlockProvider { config, masters, wakeups, tasks })
    }

    fn quorum(&self) -> usize {
        self.config.quorum()
    }

    async fn acquire_inner(&self, req: Request, wait: Wait) -> Result<Option<Arc<dyn RawHeld>>> {
        let op = Arc::new(Op {
            keys: Keys::new(&self.config.prefix, req.name.as_str()),
            name: req.name.clone(),
            side: if req.kind == LockKind::Read { "r" } else { "w" },
            token: new_token(),
            lease_ms: duration_ms(req.lease.lease),
            arrival: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            unsent: self.masters.iter().map(|_| AtomicUsize::new(0)).collect(),
            sent: Notify::new(),
        });
        let waiting = matches!(wait, Wait::Until(_));
        // Armed before the first request: whatever we may have set on a master (a key, a share,
        // a waiting writer's registration) goes if we are dropped.
        let undo = Cleanup::new({
            let (masters, op, quorum) = (self.masters.clone(), op.clone(), self.quorum());
            async move {
                let (_, _, errors) = release_everywhere(masters, op, false, Until::Settled(quorum)).await;
                for e in errors {
                    tracing::debug!(error = %e, "redlock: undo of an abandoned acquisition failed on a master; its lease expires on its own");
                }
            }
        });
        // A waiter subscribes once its first attempt found the lock busy, and attempts again
        // before it waits: no release after that second attempt goes unseen, and an uncontended
        // acquisition costs no subscription.
        let mut interest: Option<Interest> = None;
        if waiting && self.wakeups.is_subscribed(&op.keys.channel) {
            // Still subscribed for an earlier waiter: no round trip, and the first attempt counts.
            interest = Some(self.wakeups.interest(&self.masters, &op.keys.channel, self.quorum()).await);
        }
        let member = format!("{}:{}", op.side, op.token);
        loop {
            // Wake-ups from here on count: they may come while the attempt runs.
            let mut seen = interest.as_mut().map_or(0, |i| i.rx.borrow_and_update().seq);
            let (pttl, split) = match self.attempt(&op, req.lease, waiting).await? {
                Attempt::Held(held) => {
                    undo.disarm();
                    return Ok(Some(held as Arc<dyn RawHeld>));
                }
                Attempt::Busy { pttl, split } => (pttl, split),
            };
            let Wait::Until(deadline) = wait else {
                // A single try registered nothing, and its attempt released what it had set.
                undo.disarm();
                return Ok(None);
            };
            if interest.is_none() {
                interest = Some(self.wakeups.interest(&self.masters, &op.keys.channel, self.quorum()).await);
                continue;
            }
            // Retry when a release names us (or everyone), at the holder's expiry, and at the
            // bounded re-check; after a split vote (often: a release that reached some masters
            // and not yet the others), at the next wake-up or after a short random delay.
            let mut timeout = if split { jitter(JITTER) } else { RECHECK + jitter(JITTER) };
            if let Some(p) = pttl {
                timeout = timeout.min(p + Duration::from_millis(1));
            }
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                timeout = timeout.min(left);
            }
            let until = tokio::time::Instant::now() + timeout;
            match &mut interest {
                Some(i) => {
                    while let Ok(Ok(())) = tokio::time::timeout_at(until, i.rx.changed()).await {
                        let wake = i.rx.borrow_and_update();
                        let mine = wake.wakes(seen, &member);
                        seen = wake.seq;
                        if mine {
                            break;
                        }
                    }
                }
                _ => tokio::time::sleep_until(until).await,
            }
        }
    }

    /// One attempt: the acquire script on every master; on a quorum of grants within the
    /// validity, the fencing token (the quorum's maximum, written back to a majority that holds
    /// the lock when fewer than a quorum already have it); otherwise releases what it set on
    /// every master.
    async fn attempt(&self, op: &Arc<Op>, lease: LeaseConfig, waiting: bool) -> Result<Attempt> {
        let (n, quorum) = (self.masters.len(), self.quorum());
        let sent = Instant::now();
        let mut replies = {
            let op = op.clone();
            round(&self.masters, move |m| {
                let (op, sending) = (op.clone(), op.sending(m.index));
                async move { m.acquire(&op, waiting, sending).await }
            })
        };
        let mut granted: Vec<(usize, u64)> = Vec::new();
        let (mut busy, mut pttl, mut errors) = (0usize, None::<Duration>, Vec::new());
        // The masters whose answer may have set something (a grant, or an error: it may have
        // landed), and those that have not answered yet.
        let (mut to_undo, mut answered) = (vec![false; n], vec![false; n]);
        while let Some((i, r)) = replies.recv().await {
            answered[i] = true;
            let reply = r.and_then(|v| match v[..] {
                [1, fence] => u64::try_from(fence).map(Ok).map_err(|_| {
                    backend_error(format!("lock {:?}: a fencing token out of range: {fence}", op.name.display()))
                }),
                [0, ttl] => Ok(Err(ttl)),
                _ => Err(backend_error(format!("lock {:?}: unexpected script reply {v:?}", op.name.display()))),
            });
            match reply {
                Ok(Ok(fence)) => {
                    granted.push((i, fence));
                    to_undo[i] = true;
                }
                Ok(Err(ttl)) => {
                    busy += 1;
                    if ttl > 0 {
                        let t = Duration::from_millis(ttl.unsigned_abs());
                        pttl = Some(pttl.map_or(t, |p| p.min(t)));
                    }
                }
                Err(e) => {
                    errors.push(e);
                    to_undo[i] = true;
                }
            }
            // Decided without the rest: a quorum granted, too many found it busy for one to form
            // (the answer is "busy" whatever the others say), or too many failed (unavailable).
            // The late answers are undone below, each after its acquire.
            if granted.len() >= quorum || busy > n - quorum || errors.len() > n - quorum {
                break;
            }
        }
        if granted.len() >= quorum {
            let valid_until = instant_after(sent, lease.lease.saturating_sub(drift(lease.lease)))?;
            if Instant::now() < valid_until {
                let token = granted.iter().map(|(_, f)| *f).max().unwrap_or(0);
                let have = granted.iter().filter(|(_, f)| *f == token).count();
                if (have >= quorum || self.write_back(op, token).await >= quorum) && Instant::now() < valid_until {
                    return Ok(Attempt::Held(Arc::new(RedlockHeld {
                        masters: self.masters.clone(),
                        quorum,
                        op: op.clone(),
                        fence: token,
                        valid_until,
                        released: AtomicBool::new(false),
                    })));
                }
            }
        }
        // Not ours: undo what this attempt may have set (where it was granted, or where the answer
        // was an error) before anyone retries. No caller waits for the masters that have not
        // answered yet: a single try undoes their late answers in the background, when they are
        // not a plain "busy"; a waiter leaves them to its next attempt (same token: a late grant
        // there counts for it) and to its final release or undo, which reach every master after
        // its acquire requests. A waiter keeps its place in the queues and publishes nothing (its
        // competitors retry on their own).
        if !waiting && answered.iter().any(|a| !a) {
            undo_late_answers(&self.tasks, self.masters.clone(), op.clone(), replies, waiting);
        }
        if to_undo.iter().any(|u| *u) {
            let undo = release_everywhere(self.masters.clone(), op.clone(), waiting, Until::These(to_undo));
            let (_, _, release_errors) = undo.await;
            for e in release_errors {
                tracing::debug!(error = %e, "redlock: releasing a failed attempt failed on a master; its lease expires on its own");
            }
        }
        if let Some(i) = errors.iter().position(|e| matches!(e, Error::Backend { .. })) {
            return Err(errors.swap_remove(i));
        }
        if granted.len() + busy < quorum && !errors.is_empty() {
            return Err(no_quorum(
                &format!("acquire {:?}", op.name.display()),
                granted.len() + busy,
                n,
                quorum,
                errors,
            ));
        }
        Ok(Attempt::Busy { pttl, split: !granted.is_empty() })
    }

    /// Raises the fencing counter to `token` on every master where we hold the lock (the script
    /// checks): the quorum that granted it, and any master whose grant came after the quorum was
    /// counted, so that all their counters agree from then on and the next acquisitions' quorums
    /// return one value (no write-back). Returns on how many it now is, once a quorum.
    async fn write_back(&self, op: &Arc<Op>, token: u64) -> usize {
        let mut replies = {
            let op = op.clone();
            round(&self.masters, move |m| {
                let op = op.clone();
                async move { m.writeback(&op, token).await }
            })
        };
        let mut ok = 0;
        while let Some((_, r)) = replies.recv().await {
            match r {
                Ok(1) => ok += 1,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "redlock: fencing write-back failed on a master"),
            }
            if ok >= self.quorum() {
                break;
            }
        }
        ok
    }

    async fn status_inner(&self, name: &LockName) -> Result<LockStatus> {
        let keys = Arc::new(Keys::new(&self.config.prefix, name.as_str()));
        let (n, quorum) = (self.masters.len(), self.quorum());
        let started = Instant::now();
        let mut replies = {
            let keys = keys.clone();
            round(&self.masters, move |m| {
                let keys = keys.clone();
                async move { m.status(&keys).await }
            })
        };
        let (mut exclusive, mut shared, mut readers, mut answered) = (0, 0, 0i64, 0);
        let mut waiting = Vec::new();
        let mut pttl = None::<i64>;
        let mut errors = Vec::new();
        let mut heard = vec![false; n];
        let mut stragglers = None;
        while let Some((i, r)) = next_answer(&mut replies, stragglers).await {
            heard[i] = true;
            if answered + 1 >= quorum && stragglers.is_none() && r.is_ok() {
                stragglers = Some(straggler_deadline(started));
            }
            match r {
                Ok((3, ..)) => {
                    return Err(backend_error(format!(
                        "status: the key {:?} is not a lock (it holds another type of value)",
                        keys.lock
                    )));
                }
                Ok((kind, r, ttl, w)) => {
                    answered += 1;
                    waiting.push(w);
                    match kind {
                        1 => exclusive += 1,
                        2 => {
                            shared += 1;
                            readers = readers.max(r);
                        }
                        _ => continue,
                    }
                    pttl = Some(pttl.map_or(ttl, |p| p.max(ttl)));
                }
                Err(e) => errors.push(e),
            }
        }
        if answered < quorum {
            return Err(no_quorum(&format!("status {:?}", name.display()), answered, n, quorum, errors));
        }
        let mut status = LockStatus::free();
        // What it knows: which masters answered, and why the others did not.
        let mut missing: Vec<String> = errors
            .iter()
            .map(|e| match e {
                Error::Unavailable { message, .. } | Error::Auth { message, .. } | Error::Backend { message, .. } => {
                    message.clone()
                }
                other => other.to_string(),
            })
            .collect();
        missing.extend(
            self.masters.iter().filter(|m| !heard[m.index]).map(|m| format!("{}: no answer in time", m.config.shown)),
        );
        let answers = if missing.is_empty() {
            format!("on {n} masters")
        } else {
            format!("answered by {answered} of {n} masters; {} did not answer ({})", n - answered, missing.join("; "))
        };
        status.location = Some(format!("key {:?} (db {}) {answers}", keys.lock, self.config.masters[0].db));
        // Waiters registered on a quorum (a winner's stale registration on a minority of masters
        // expires on its own and is not counted).
        waiting.sort_unstable_by(|a, b| b.cmp(a));
        status.waiters = Some(usize::try_from(waiting.get(quorum - 1).copied().unwrap_or(0)).unwrap_or(0));
        let expires = match pttl {
            Some(-1) => "no expiry".to_owned(),
            Some(ms) => format!("expires in {ms}ms"),
            None => String::new(),
        };
        if exclusive >= quorum {
            status.held = Some(HeldMode::Exclusive);
            status.holders = vec![format!("one holder on {exclusive} of {n} masters ({expires})")];
        } else if shared >= quorum {
            status.held = Some(HeldMode::Shared(usize::try_from(readers).unwrap_or(0)));
            status.holders = vec![format!("{readers} reader(s) on {shared} of {n} masters ({expires})")];
        } else if exclusive + shared > 0 {
            status.holders = vec![format!("held on {} of {n} masters only (no quorum)", exclusive + shared)];
        }
        Ok(status)
    }
}

/// A lock held on a quorum of masters.
pub(crate) struct RedlockHeld {
    masters: Arc<[Arc<Master>]>,
    quorum: usize,
    op: Arc<Op>,
    fence: u64,
    valid_until: Instant,
    released: AtomicBool,
}

impl std::fmt::Debug for RedlockHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedlockHeld")
            .field("key", &self.op.keys.lock)
            .field("side", &self.op.side)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl RawHeld for RedlockHeld {
    fn fencing_token(&self) -> Option<u64> {
        Some(self.fence)
    }

    fn valid_until(&self) -> Option<Instant> {
        Some(self.valid_until)
    }

    /// Extends the lease on every master; valid again when a quorum extended it, lost as soon as
    /// a quorum can no longer be reached because too many masters say the lock is not ours; an
    /// error otherwise (the core retries until the validity runs out).
    fn renew(&self, lease: Duration) -> BoxFuture<'_, Result<Renewal>> {
        Box::pin(async move {
            // The provider was closed: no round (the lock runs out with its lease).
            if let Some(m) = self.masters.iter().find(|m| m.closed.load(Ordering::SeqCst)) {
                return Err(m.closed_error());
            }
            let (n, quorum) = (self.masters.len(), self.quorum);
            let sent = Instant::now();
            let mut replies = {
                let op = self.op.clone();
                round(&self.masters, move |m| {
                    let op = op.clone();
                    async move { m.renew(&op, lease).await }
                })
            };
            let (mut ok, mut not_ours, mut errors) = (0, 0, Vec::new());
            while let Some((_, r)) = replies.recv().await {
                match r {
                    Ok(1) => ok += 1,
                    Ok(_) => not_ours += 1,
                    Err(e) => errors.push(e),
                }
                if ok >= quorum {
                    return Ok(Renewal::Until(instant_after(sent, lease.saturating_sub(drift(lease)))?));
                }
                if not_ours > n - quorum {
                    return Ok(Renewal::Lost);
                }
            }
            Err(no_quorum(&format!("renew {:?}", self.op.name.display()), ok + not_ours, n, quorum, errors))
        })
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            if self.released.load(Ordering::SeqCst) {
                return Ok(true);
            }
            let (n, quorum) = (self.masters.len(), self.quorum);
            let (held, not_held, errors) =
                release_everywhere(self.masters.clone(), self.op.clone(), false, Until::Quorum(quorum)).await;
            if held < quorum && not_held <= n - quorum && !errors.is_empty() {
                return Err(no_quorum(
                    &format!("release {:?}", self.op.name.display()),
                    held + not_held,
                    n,
                    quorum,
                    errors,
                ));
            }
            self.released.store(true, Ordering::SeqCst);
            Ok(held >= quorum)
        })
    }
}

impl RawProvider for RedlockProvider {
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

    /// Closes every master's connection (their subscriptions with them): acquisitions, renewals
    /// and status through this provider fail with `Unavailable` from then on (held locks are then
    /// lost when their lease runs out), while releases (of guards, and the undos of abandoned
    /// acquisitions) still go through, opening a connection again if need be. The core then waits
    /// for the requests still on their way ([`round`]) and aborts the lingering unsubscribes.
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        for m in self.masters.iter() {
            m.close();
        }
        Box::pin(async { Ok(()) })
    }
}

/// A plain connection of its own to every master (see `super::raw_connections`).
pub(crate) async fn raw_connections(config: &RedlockConfig) -> Result<Vec<crate::backends::redis::RawConnection>> {
    let mut out = Vec::new();
    for c in &config.masters {
        out.push(crate::backends::redis::raw::raw_connection(c).await.map_err(rebrand)?);
    }
    Ok(out)
}
