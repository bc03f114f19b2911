//! The `redlock://` backend: one RESP3 `ConnectionManager` per master (commands and the
//! subscriptions of waiters, reconnecting by itself), opened lazily so that a master that is
//! down when the provider connects joins when it comes back; every operation is one round of
//! requests sent to all masters at once, decided by a quorum.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, RedisError};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinHandle;

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
    Request, Wait, instant_after,
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
    config: RedisConfig,
    client: Client,
    conn: OnceCell<ConnectionManager>,
    wakeups: Arc<Wakeups>,
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
    fn new(config: RedisConfig, wakeups: Arc<Wakeups>) -> Result<Master> {
        // The redis backend's client (plain, or TLS with the URL's certificates), in RESP3 for
        // the wake-ups' push messages.
        let client = client_speaking(&config, Some(ProtocolVersion::RESP3)).map_err(rebrand)?;
        Ok(Master { config, client, conn: OnceCell::new(), wakeups })
    }

    fn err(&self, what: &str, e: RedisError) -> Error {
        rebrand(map_err(&self.config, what, e))
    }

    fn timeout(&self) -> Duration {
        self.config.command_timeout
    }

    /// The master's connection, opened on first use (and retried at the next use when that
    /// fails).
    async fn conn(&self) -> Result<ConnectionManager> {
        self.conn.get_or_try_init(|| self.open()).await.cloned()
    }

    async fn open(&self) -> Result<ConnectionManager> {
        let t = self.timeout();
        // A plain connection first: a refused password fails here at once (the manager would
        // retry it with backoff).
        let mut first = self
            .client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new().set_connection_timeout(Some(t)).set_response_timeout(Some(t)),
            )
            .await
            .map_err(|e| self.err("connect", e))?;
        redis::cmd("PING").query_async::<redis::Value>(&mut first).await.map_err(|e| self.err("PING", e))?;
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
        let Some(c) = self.conn.get() else { return Ok(()) };
        c.clone().unsubscribe(channel).await.map_err(|e| self.err("UNSUBSCRIBE", e))
    }

    async fn ping(&self) -> Result<()> {
        let mut c = self.conn().await?;
        redis::cmd("PING").query_async::<redis::Value>(&mut c).await.map(drop).map_err(|e| self.err("PING", e))
    }

    /// Runs `inv` on this master, again on a new connection when the connection was lost
    /// (`CLIENT KILL`, a reset, a restart), within the master's command timeout (the round bounds
    /// the whole): a killed connection costs a reconnect, not this master's vote. `retried` is set
    /// when a try failed that may have run on the master (its answer lost with the connection).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        retried: &mut bool,
    ) -> std::result::Result<T, Failed> {
        let mut reconnect = Reconnect::within(self.timeout());
        loop {
            let mut c = self.conn().await.map_err(Failed::Connect)?;
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

    async fn acquire(&self, op: &Op, wait: bool) -> Result<Vec<i64>> {
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
        match self.invoke(&inv, &mut false).await {
            Ok(v) => Ok(v),
            Err(f) => Err(self.explain(op, "acquire", f).await),
        }
    }

    async fn writeback(&self, op: &Op, token: u64) -> Result<i64> {
        let mut inv = scripts::WRITEBACK.prepare_invoke();
        inv.key(&op.keys.lock).key(&op.keys.fence).key(&op.keys.readers);
        inv.arg(&op.token).arg(token.to_string()).arg(op.side).arg(READERS_VALUE);
        match self.invoke(&inv, &mut false).await {
            Ok(v) => Ok(v),
            Err(f) => Err(self.explain(op, "write back the fencing token of", f).await),
        }
    }

    async fn renew(&self, op: &Op, lease: Duration) -> Result<i64> {
        let mut inv = scripts::RENEW.prepare_invoke();
        inv.key(&op.keys.lock).key(&op.keys.readers);
        inv.arg(&op.token).arg(duration_ms(lease)).arg(op.side).arg(READERS_VALUE);
        match self.invoke(&inv, &mut false).await {
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
        let held: i64 = match self.invoke(&inv, &mut retried).await {
            Ok(v) => v,
            Err(f) => return Err(self.explain(op, "release", f).await),
        };
        Ok(if retried { 1 } else { held })
    }

    async fn status(&self, keys: &Keys) -> Result<(i64, i64, i64, i64)> {
        let mut inv = scripts::STATUS.prepare_invoke();
        inv.key(&keys.lock).key(&keys.readers).key(&keys.qx).arg(READERS_VALUE);
        let [kind, readers, pttl, waiting]: [i64; 4] = self
            .invoke::<Vec<i64>>(&inv, &mut false)
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
/// returns their answers as they come (`(master index, answer)`). The requests are tasks of their
/// own: a caller that has its quorum stops reading, and the rest still complete (a late grant
/// is ours and is released with the lock; a late release still releases).
pub(crate) fn round<T, F, Fut>(masters: &[Arc<Master>], f: F) -> Round<T>
where
    T: Send + 'static,
    F: Fn(Arc<Master>) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut handles = Vec::with_capacity(masters.len());
    for (i, m) in masters.iter().enumerate() {
        let (tx, t, shown) = (tx.clone(), m.timeout(), m.config.shown.clone());
        let request = f(m.clone());
        handles.push(tokio::spawn(async move {
            let answer = tokio::time::timeout(t, request).await.unwrap_or_else(|_| {
                Err(Error::Unavailable {
                    backend: BACKEND,
                    message: format!("{shown}: no answer within {t:?}"),
                    source: None,
                })
            });
            let _ = tx.send((i, answer));
        }));
    }
    Round { rx, handles }
}

/// The answers of one [`round`].
pub(crate) struct Round<T> {
    rx: mpsc::UnboundedReceiver<(usize, Result<T>)>,
    handles: Vec<JoinHandle<()>>,
}

impl<T> Round<T> {
    /// The next answer; `None` once every master answered.
    pub(crate) async fn recv(&mut self) -> Option<(usize, Result<T>)> {
        self.rx.recv().await
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
    in_flight: StdMutex<Vec<JoinHandle<()>>>,
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

    fn track<T>(&self, round: &mut Round<T>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // A long wait makes many attempts: keep only the requests that may still land.
        in_flight.retain(|h| !h.is_finished());
        in_flight.append(&mut round.handles);
    }

    /// Waits until this acquisition's requests have landed (each is bounded by its timeout).
    async fn settle(&self) {
        let handles = std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }
}

/// Releases `op` on every master (after its acquire requests landed); the undo of a cancelled
/// or failed acquisition. Returns how many masters held it, how many did not, and the errors.
/// With `quorum`, returns as soon as that many held it (the other requests still complete).
async fn release_everywhere(
    masters: Arc<[Arc<Master>]>,
    op: Arc<Op>,
    keep_waiting: bool,
    quorum: Option<usize>,
) -> (usize, usize, Vec<Error>) {
    op.settle().await;
    let mut replies = {
        let op = op.clone();
        round(&masters, move |m| {
            let op = op.clone();
            async move { m.release(&op, keep_waiting).await }
        })
    };
    let (mut held, mut not_held, mut errors) = (0, 0, Vec::new());
    while let Some((_, r)) = replies.recv().await {
        match r {
            Ok(1) => held += 1,
            Ok(_) => not_held += 1,
            Err(e) => errors.push(e),
        }
        if quorum.is_some_and(|q| held >= q) {
            break;
        }
    }
    (held, not_held, errors)
}

/// The `redlock://` backend.
pub(crate) struct RedlockProvider {
    config: RedlockConfig,
    masters: Arc<[Arc<Master>]>,
    wakeups: Arc<Wakeups>,
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
    pub(crate) async fn connect(config: RedlockConfig) -> Result<RedlockProvider> {
        let wakeups = Arc::new(Wakeups::default());
        let masters: Arc<[Arc<Master>]> = config
            .masters
            .iter()
            .map(|c| Master::new(c.clone(), wakeups.clone()).map(Arc::new))
            .collect::<Result<Vec<_>>>()?
            .into();
        let mut replies = round(&masters, |m| async move { m.ping().await });
        let (mut ok, mut errors) = (0, Vec::new());
        while let Some((_, r)) = replies.recv().await {
            match r {
                Ok(()) => ok += 1,
                Err(e) => errors.push(e),
            }
        }
        let quorum = config.quorum();
        if let Some(i) = errors.iter().position(|e| matches!(e, Error::Auth { .. })) {
            return Err(errors.swap_remove(i));
        }
        if ok < quorum {
            return Err(no_quorum("connect", ok, masters.len(), quorum, errors));
        }
        for e in &errors {
            tracing::warn!(error = %e, "redlock: a master is unreachable; going on with the quorum of the others");
        }
        Ok(RedlockProvider { config, masters, wakeups })
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
            in_flight: StdMutex::new(Vec::new()),
        });
        let waiting = matches!(wait, Wait::Until(_));
        // Armed before the first request: whatever we may have set on a master (a key, a share,
        // a waiting writer's registration) goes if we are dropped.
        let undo = Cleanup::new({
            let (masters, op) = (self.masters.clone(), op.clone());
            async move {
                let (_, _, errors) = release_everywhere(masters, op, false, None).await;
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
                let op = op.clone();
                async move { m.acquire(&op, waiting).await }
            })
        };
        op.track(&mut replies);
        let mut granted: Vec<(usize, u64)> = Vec::new();
        let (mut busy, mut pttl, mut errors) = (0usize, None::<Duration>, Vec::new());
        while let Some((i, r)) = replies.recv().await {
            let reply = r.and_then(|v| match v[..] {
                [1, fence] => u64::try_from(fence).map(Ok).map_err(|_| {
                    backend_error(format!("lock {:?}: a fencing token out of range: {fence}", op.name.display()))
                }),
                [0, ttl] => Ok(Err(ttl)),
                _ => Err(backend_error(format!("lock {:?}: unexpected script reply {v:?}", op.name.display()))),
            });
            match reply {
                Ok(Ok(fence)) => granted.push((i, fence)),
                Ok(Err(ttl)) => {
                    busy += 1;
                    if ttl > 0 {
                        let t = Duration::from_millis(ttl.unsigned_abs());
                        pttl = Some(pttl.map_or(t, |p| p.min(t)));
                    }
                }
                Err(e) => errors.push(e),
            }
            if granted.len() >= quorum {
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
        // did not come back), everywhere, before anyone retries. A waiter keeps its place in the
        // queues and publishes nothing (its competitors retry on their own).
        if !granted.is_empty() || !errors.is_empty() {
            let (_, _, release_errors) = release_everywhere(self.masters.clone(), op.clone(), waiting, None).await;
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
        while let Some((_, r)) = replies.recv().await {
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
        status.location = Some(format!("key {:?} (db {}) on {n} masters", keys.lock, self.config.masters[0].db));
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
                release_everywhere(self.masters.clone(), self.op.clone(), false, Some(quorum)).await;
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
}

/// A plain connection of its own to every master (see `super::raw_connections`).
pub(crate) async fn raw_connections(config: &RedlockConfig) -> Result<Vec<crate::backends::redis::RawConnection>> {
    let mut out = Vec::new();
    for c in &config.masters {
        out.push(crate::backends::redis::raw::raw_connection(c).await.map_err(rebrand)?);
    }
    Ok(out)
}
