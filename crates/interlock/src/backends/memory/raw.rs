//! The in-process state behind `memory://`: a table of holders per name, in named spaces shared by
//! every provider of the process.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Step;
use super::config::{Expiry, MemoryConfig};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::{
    BoxFuture, Capabilities, Cleanup, HeldMode, LeaseConfig, LockKind, LockStatus, LostSignal, RawHeld, RawProvider,
    Renewal, Request, Tasks, Wait, instant_after,
};

const BACKEND: &str = "memory";

static SPACES: LazyLock<StdMutex<HashMap<String, Arc<Space>>>> = LazyLock::new(Default::default);

/// One namespace of in-process locks.
#[derive(Debug, Default)]
pub(crate) struct Space {
    state: StdMutex<State>,
    /// Wakes operations paused in a step when the delays change, and renewals of paused holders
    /// when they resume.
    delays_changed: Notify,
    /// Acquisitions whose future was dropped before it answered (cancelled by the caller, or by
    /// the core at a deadline): a diagnostic for "cancellation stays the exception".
    abandoned: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    locks: HashMap<Key, Entry>,
    next_id: u64,
    renewals_fail: bool,
    /// Fault hook: how long each step takes (absent: no time at all).
    delays: HashMap<Step, Duration>,
    /// How many operations are inside each delayed step right now.
    in_step: HashMap<Step, usize>,
    /// Fault hook: holders (by id, with their name) whose renewals wait, as those of a stopped
    /// process would; and sessions (by id) whose keep-alives and renewals wait.
    paused: HashMap<u64, LockName>,
    /// The live sessions of `expiry=session` providers, by id: when one goes, every holder of it
    /// goes.
    sessions: HashMap<u64, Session>,
}

/// A session on the "server": one lease for every lock of one provider.
#[derive(Debug)]
struct Session {
    expires: Instant,
    /// Shared with the provider's side of the session and every lock of it: set when the server
    /// ends the session and tells the client (a kill, a restart).
    lost: LostSignal,
}

/// Mutexes and read-write locks of one name are one lock; a semaphore of that name is another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Rw(LockName),
    Semaphore(LockName),
}

impl Key {
    fn new(name: &LockName, kind: LockKind) -> Key {
        match kind {
            LockKind::Semaphore { .. } => Key::Semaphore(name.clone()),
            _ => Key::Rw(name.clone()),
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    holders: Vec<Holder>,
    /// The last fencing token issued; kept for the life of the process so tokens never repeat.
    fence: u64,
    waiters: usize,
    changed: Arc<Notify>,
}

#[derive(Debug)]
struct Holder {
    id: u64,
    kind: LockKind,
    /// `expiry=lock`: when its lease runs out.
    expires: Option<Instant>,
    lost: LostSignal,
    /// `expiry=session`: its session, whose end ends it.
    session: Option<u64>,
    /// `expiry=connection`: a holder dropped by a fault hook is told at once (its connection
    /// closed), not left to find out.
    tell_on_expire: bool,
}

impl Holder {
    /// Whether the "server" still keeps it at `now`: its lease has not run out, its session lives.
    fn alive(&self, now: Instant, sessions: &HashMap<u64, Session>) -> bool {
        self.expires.is_none_or(|e| e > now)
            && self.session.is_none_or(|s| sessions.get(&s).is_some_and(|s| s.expires > now))
    }
}

impl Entry {
    /// Drops holders whose lease or session ran out, as a server would; wakes waiters if any went.
    fn purge_expired(&mut self, now: Instant, sessions: &HashMap<u64, Session>) {
        let before = self.holders.len();
        self.holders.retain(|h| h.alive(now, sessions));
        if self.holders.len() != before {
            self.changed.notify_waiters();
        }
    }

    fn admits(&self, kind: LockKind) -> Result<bool> {
        Ok(match kind {
            LockKind::Mutex | LockKind::Write => self.holders.is_empty(),
            LockKind::Read => self.holders.iter().all(|h| h.kind == LockKind::Read),
            LockKind::Semaphore { permits } => {
                if let Some(LockKind::Semaphore { permits: existing }) = self.holders.first().map(|h| h.kind)
                    && existing != permits
                {
                    return Err(Error::PermitsMismatch { name: String::new(), existing, requested: permits });
                }
                self.holders.len() < permits as usize
            }
        })
    }

    fn next_expiry(&self, sessions: &HashMap<u64, Session>) -> Option<Instant> {
        let session_expiry = |h: &Holder| h.session.and_then(|s| sessions.get(&s)).map(|s| s.expires);
        self.holders.iter().filter_map(|h| h.expires.or_else(|| session_expiry(h))).min()
    }
}

impl State {
    /// Ends session `id` on the "server": every holder of it is dropped (told, with `tell`, as
    /// when the server kills the session; otherwise silently, as when it lapses). Returns how many
    /// holders went.
    fn end_session(&mut self, id: u64, tell: Option<&str>) -> usize {
        let Some(session) = self.sessions.remove(&id) else { return 0 };
        if let Some(reason) = tell {
            session.lost.set(reason);
        }
        self.paused.remove(&id);
        let mut n = 0;
        for e in self.locks.values_mut() {
            let before = e.holders.len();
            e.holders.retain(|h| h.session != Some(id));
            if e.holders.len() != before {
                n += before - e.holders.len();
                e.changed.notify_waiters();
            }
        }
        n
    }

    /// The holders of `name` (its mutex / read-write lock and its semaphore).
    fn holders_of<'a>(&'a self, name: &LockName) -> impl Iterator<Item = &'a Holder> + 'a {
        let keys = [Key::new(name, LockKind::Mutex), Key::new(name, LockKind::Semaphore { permits: 1 })];
        keys.into_iter().filter_map(|k| self.locks.get(&k)).flat_map(|e| e.holders.iter())
    }

    /// Takes every holder of `name` away: their sessions end with them (`expiry=session`);
    /// holders that `tell_on_expire` (or all, with `tell_all`) are told why. Returns how many
    /// holders went, of `name` and of the sessions that ended.
    fn take_away(&mut self, name: &LockName, reason: &str, tell_all: bool) -> usize {
        let sessions: Vec<u64> = self.holders_of(name).filter_map(|h| h.session).collect();
        let mut n = 0;
        for s in sessions {
            n += self.end_session(s, tell_all.then_some(reason));
        }
        for kind in [LockKind::Mutex, LockKind::Semaphore { permits: 1 }] {
            if let Some(e) = self.locks.get_mut(&Key::new(name, kind)) {
                for h in &e.holders {
                    if tell_all || h.tell_on_expire {
                        h.lost.set(reason);
                    }
                }
                n += e.holders.len();
                e.holders.clear();
                e.changed.notify_waiters();
            }
        }
        n
    }
}

impl Space {
    pub(crate) fn named(name: &str) -> Arc<Space> {
        let mut spaces = SPACES.lock().unwrap_or_else(|p| p.into_inner());
        spaces.entry(name.to_owned()).or_default().clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fault hook: the backend forgets every holder of `name`, as when a lease runs out on a server
    /// (with `expiry=session`: their sessions lapse, and every lock of them goes). Holders are not
    /// told; they find out at their next renewal (or keep-alive). With `expiry=connection` the
    /// holders' connections are killed, and a client sees that at once: they are told.
    pub(crate) fn expire(&self, name: &LockName) -> usize {
        self.state().take_away(name, "the memory backend's fault hook closed its connection", false)
    }

    /// Fault hook: the backend pushes a loss to every holder of `name` (like a session expiry
    /// event) and forgets them; with `expiry=session`, their sessions are killed, and every lock
    /// of them is told.
    pub(crate) fn revoke(&self, name: &LockName) -> usize {
        self.state().take_away(name, "revoked by the memory backend's fault hook", true)
    }

    /// Fault hook: a server restart that keeps nothing but the fencing counters. Every holder of
    /// every name is told (its session ended with the server) and forgotten; waiters are woken
    /// and try again, as clients that reconnect. Returns how many holders were dropped.
    pub(crate) fn restart(&self) -> usize {
        let mut st = self.state();
        let reason = "the memory backend restarted (fault hook)";
        let sessions: Vec<u64> = st.sessions.keys().copied().collect();
        let mut n = 0;
        for s in sessions {
            n += st.end_session(s, Some(reason));
        }
        for e in st.locks.values_mut() {
            for h in &e.holders {
                h.lost.set(reason);
            }
            n += e.holders.len();
            e.holders.clear();
            e.changed.notify_waiters();
        }
        st.paused.clear();
        n
    }

    /// Fault hook: the renewals of the current holders of `name` wait (before they reach the
    /// lock table) until [`Space::resume_holders`], as those of a stopped process would; with
    /// `expiry=session`, their sessions' keep-alives and every renewal of them too.
    pub(crate) fn pause_holders(&self, name: &LockName) -> usize {
        let mut st = self.state();
        let ids: Vec<u64> = st.holders_of(name).map(|h| h.session.unwrap_or(h.id)).collect();
        st.paused.extend(ids.iter().map(|&id| (id, name.clone())));
        ids.len()
    }

    /// Fault hook: the holders of `name` paused by [`Space::pause_holders`] renew again, even
    /// those the backend has dropped meanwhile (their renewal then finds the lock gone); renewals
    /// waiting go on at once. Returns how many were paused.
    pub(crate) fn resume_holders(&self, name: &LockName) -> usize {
        let n = {
            let mut st = self.state();
            let before = st.paused.len();
            st.paused.retain(|_, n| n != name);
            before - st.paused.len()
        };
        self.delays_changed.notify_waiters();
        n
    }

    /// Waits while holder or session `id` is paused ([`Space::pause_holders`]).
    async fn while_paused(&self, id: u64) {
        loop {
            let mut resumed = pin!(self.delays_changed.notified());
            resumed.as_mut().enable();
            if !self.state().paused.contains_key(&id) {
                return;
            }
            resumed.await;
        }
    }

    /// How many acquisitions were dropped before they answered.
    pub(crate) fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// How many sessions are alive on the "server".
    pub(crate) fn sessions(&self) -> usize {
        let mut st = self.state();
        let now = Instant::now();
        st.sessions.retain(|_, s| s.expires > now);
        st.sessions.len()
    }

    pub(crate) fn set_renewals_failing(&self, fail: bool) {
        self.state().renewals_fail = fail;
    }

    pub(crate) fn counts(&self, key: &Key) -> (usize, usize) {
        let st = self.state();
        st.locks.get(key).map_or((0, 0), |e| (e.holders.len(), e.waiters))
    }

    /// Fault hook: makes `step` take `delay` (`None`: no time). Operations already paused in the
    /// step re-read it at once.
    pub(crate) fn set_delay(&self, step: Step, delay: Option<Duration>) {
        {
            let mut st = self.state();
            match delay {
                Some(d) => st.delays.insert(step, d),
                None => st.delays.remove(&step),
            };
        }
        self.delays_changed.notify_waiters();
    }

    pub(crate) fn in_step(&self, step: Step) -> usize {
        self.state().in_step.get(&step).copied().unwrap_or(0)
    }

    fn is_delayed(&self, step: Step) -> bool {
        self.state().delays.contains_key(&step)
    }

    /// Takes as long as the delay of `step` says (measured from the call; a delay changed
    /// meanwhile applies at once). An await point of the backend that a test can cancel at.
    async fn pause(&self, step: Step) {
        let started = Instant::now();
        if !self.is_delayed(step) {
            return;
        }
        let _mark = StepMark::enter(self, step);
        loop {
            let mut changed = pin!(self.delays_changed.notified());
            changed.as_mut().enable();
            let Some(delay) = self.state().delays.get(&step).copied() else { return };
            match started.checked_add(delay) {
                Some(until) if Instant::now() >= until => return,
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => return,
                        () = changed => {}
                    }
                }
                // Too long to represent: paused until the delay changes.
                None => changed.await,
            }
        }
    }
}

/// Counts an operation inside a delayed step, until it leaves it (or is dropped there).
struct StepMark<'a> {
    space: &'a Space,
    step: Step,
}

impl<'a> StepMark<'a> {
    fn enter(space: &'a Space, step: Step) -> Self {
        *space.state().in_step.entry(step).or_default() += 1;
        StepMark { space, step }
    }
}

impl Drop for StepMark<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.space.state().in_step.get_mut(&self.step) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The `memory://` backend.
#[derive(Debug)]
pub(crate) struct MemoryProvider {
    space: Arc<Space>,
    config: MemoryConfig,
    /// `expiry=session`: the provider's current session (a new one replaces it when it ends).
    session: Arc<StdMutex<Option<Arc<ClientSession>>>>,
}

/// The provider's side of its session: what it knows of it.
#[derive(Debug)]
struct ClientSession {
    id: u64,
    /// Until when the session is known to live, by the local clock: from when its last
    /// successful keep-alive was sent.
    valid_until: StdMutex<Instant>,
    /// Set when the session ends (told by the server, or found gone by a keep-alive).
    lost: LostSignal,
}

impl ClientSession {
    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts an acquisition as abandoned unless it answered.
struct Answered<'a> {
    space: &'a Space,
    done: bool,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.space.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl MemoryProvider {
    /// The provider; with `expiry=session`, its session's keep-alive runs as a task of `tasks`,
    /// as a ZooKeeper client's event loop keeps its session alive.
    pub(crate) fn new(config: MemoryConfig, tasks: &Tasks) -> Self {
        let provider = MemoryProvider { space: Space::named(&config.space), config, session: Arc::default() };
        if let (Expiry::Session, Some(lease)) = (provider.config.expiry, provider.config.lease) {
            let keep_alive = keep_alive(provider.space.clone(), provider.session.clone(), lease);
            if !tasks.spawn(keep_alive) {
                tracing::warn!("memory: no runtime for the session's keep-alive; the session lapses unless renewed");
            }
        }
        provider
    }

    async fn acquire_inner(&self, req: Request, wait: Wait) -> Result<Option<Arc<dyn RawHeld>>> {
        let mut answered = Answered { space: &self.space, done: false };
        let result = self.acquire_answer(req, wait).await;
        answered.done = true;
        result
    }

    async fn acquire_answer(&self, req: Request, wait: Wait) -> Result<Option<Arc<dyn RawHeld>>> {
        let sent = self.config.server_timeouts.map(|_| Instant::now());
        // The request on its way to the "server".
        self.space.pause(Step::Acquire).await;
        // With server-side timeouts, the server's own deadline: the wait's time left when it was
        // sent, counted from its arrival (as `GET_LOCK(name, t)` counts).
        let server_deadline = match (sent, wait) {
            (Some(sent), Wait::Until(Some(d))) => d.checked_add(Instant::now().saturating_duration_since(sent)),
            _ => None,
        };
        let key = Key::new(&req.name, req.kind);
        let mut waiting: Option<WaiterMark> = None;
        loop {
            let granted = {
                let mut st = self.space.state();
                let now = Instant::now();
                let session = self.session_for(&mut st, now)?;
                let State { locks, sessions, next_id, .. } = &mut *st;
                let id = *next_id;
                let entry = locks.entry(key.clone()).or_default();
                entry.purge_expired(now, sessions);
                let admitted = entry.admits(req.kind).map_err(|e| match e {
                    Error::PermitsMismatch { existing, requested, .. } => {
                        Error::PermitsMismatch { name: req.name.display(), existing, requested }
                    }
                    other => other,
                })?;
                if admitted {
                    let expires = match self.config.expiry {
                        Expiry::Lock => Some(req.lease.valid_from(now)?),
                        _ => None,
                    };
                    if req.kind != LockKind::Read {
                        entry.fence += 1;
                    }
                    let token = entry.fence;
                    let lost = session.as_ref().map_or_else(LostSignal::new, |s| s.lost.clone());
                    entry.holders.push(Holder {
                        id,
                        kind: req.kind,
                        expires,
                        lost: lost.clone(),
                        session: session.as_ref().map(|s| s.id),
                        tell_on_expire: self.config.expiry == Expiry::Connection,
                    });
                    *next_id += 1;
                    Ok(MemoryHeld {
                        space: self.space.clone(),
                        key: key.clone(),
                        id,
                        token,
                        valid_until: expires.or_else(|| session.as_ref().map(|s| s.valid_until())),
                        lost,
                        session,
                    })
                } else if wait == Wait::Try {
                    return Ok(None);
                } else if server_deadline.is_some_and(|d| now >= d) {
                    // Timed out on the "server": no longer a waiter there.
                    Err(None)
                } else {
                    if waiting.is_none() {
                        entry.waiters += 1;
                        waiting = Some(WaiterMark { space: self.space.clone(), key: key.clone() });
                    }
                    Err(Some((entry.changed.clone().notified_owned(), entry.next_expiry(sessions))))
                }
            };
            let (notified, wake_at) = match granted {
                Err(Some(wait)) => wait,
                Err(None) => {
                    drop(waiting);
                    // "Not granted", on its way back.
                    self.space.pause(Step::TimedOut).await;
                    return Ok(None);
                }
                Ok(held) => {
                    drop(waiting);
                    return Ok(Some(self.answer(held).await));
                }
            };
            // `notified` was created under the state lock, so a release after that point wakes it.
            let wake_at = match (wake_at, server_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wake_at {
                Some(t) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(t.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// With `expiry=session`: the provider's session, a new one if it has none or the server
    /// ended it (as a ZooKeeper client opens a new session after an expiry).
    fn session_for(&self, st: &mut State, now: Instant) -> Result<Option<Arc<ClientSession>>> {
        let (Expiry::Session, Some(lease)) = (self.config.expiry, self.config.lease) else { return Ok(None) };
        let mut current = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = current.as_ref()
            && st.sessions.get(&s.id).is_some_and(|live| live.expires > now)
            && !s.lost.is_set()
        {
            return Ok(Some(s.clone()));
        }
        if let Some(old) = current.take() {
            st.end_session(old.id, None);
            old.lost.set("the memory backend's session expired");
        }
        let expires = lease.valid_from(now)?;
        let id = st.next_id;
        st.next_id += 1;
        let lost = LostSignal::new();
        st.sessions.insert(id, Session { expires, lost: lost.clone() });
        let session = Arc::new(ClientSession { id, valid_until: StdMutex::new(expires), lost });
        *current = Some(session.clone());
        Ok(Some(session))
    }
}

/// The session's keep-alive (`expiry=session`): every renewal interval, extends the provider's
/// current session on the "server"; when the server no longer has it, the session is lost, and
/// with it every lock of it. Keep-alives take the `Renew` step's delay, wait while the session is
/// paused, and fail while renewals fail (then the next one is tried sooner).
async fn keep_alive(space: Arc<Space>, current: Arc<StdMutex<Option<Arc<ClientSession>>>>, lease: LeaseConfig) {
    let retry = (lease.renew_every / 4).max(Duration::from_millis(10));
    let mut pause = lease.renew_every;
    loop {
        tokio::time::sleep(pause).await;
        pause = lease.renew_every;
        let Some(session) = current.lock().unwrap_or_else(|p| p.into_inner()).clone() else { continue };
        if session.lost.is_set() {
            continue;
        }
        let sent = Instant::now();
        space.pause(Step::Renew).await;
        space.while_paused(session.id).await;
        let mut st = space.state();
        if st.renewals_fail {
            pause = retry;
            continue;
        }
        let now = Instant::now();
        match st.sessions.get_mut(&session.id) {
            Some(s) if s.expires > now => {
                s.expires = now + lease.lease;
                drop(st);
                *session.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + lease.lease;
            }
            _ => {
                st.end_session(session.id, None);
                drop(st);
                session.lost.set("the memory backend's session expired (found by its keep-alive)");
            }
        }
    }
}

impl MemoryProvider {
    /// The answer to a granted acquisition, on its way back (a delay a test can cancel in).
    async fn answer(&self, held: MemoryHeld) -> Arc<dyn RawHeld> {
        let held = Arc::new(held);
        // Granted on the "server"; if the caller gives up before the answer arrives, the grant
        // must be undone after the caller is gone: the pattern every backend follows for what it
        // created during an acquisition.
        let undo = Cleanup::new({
            let held = held.clone();
            async move {
                held.space.pause(Step::Undo).await;
                held.release_now();
            }
        });
        self.space.pause(Step::Grant).await;
        undo.disarm();
        held
    }
}

/// Counts a waiter while it waits; cancel-safe bookkeeping for the "leaves nothing behind" tests.
struct WaiterMark {
    space: Arc<Space>,
    key: Key,
}

impl Drop for WaiterMark {
    fn drop(&mut self) {
        if let Some(e) = self.space.state().locks.get_mut(&self.key) {
            e.waiters -= 1;
        }
    }
}

impl RawProvider for MemoryProvider {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(false, self.config.expiry != Expiry::None, true).with_lease(self.config.expiry.model())
    }

    fn deadline_grace(&self) -> Option<Duration> {
        self.config.server_timeouts
    }

    fn acquire(&self, request: Request, wait: Wait) -> BoxFuture<'_, Result<Option<Arc<dyn RawHeld>>>> {
        Box::pin(self.acquire_inner(request, wait))
    }

    fn status<'a>(&'a self, name: &'a LockName) -> BoxFuture<'a, Result<LockStatus>> {
        Box::pin(async move {
            let mut st = self.space.state();
            let State { locks, sessions, .. } = &mut *st;
            let mut status = LockStatus::free();
            if let Some(e) = locks.get_mut(&Key::Rw(name.clone())) {
                e.purge_expired(Instant::now(), sessions);
                status.held = match e.holders.first() {
                    None => None,
                    Some(h) if h.kind.is_exclusive() => Some(HeldMode::Exclusive),
                    Some(_) => Some(HeldMode::Shared(e.holders.len())),
                };
                status.holders = e.holders.iter().map(|h| format!("holder#{} ({})", h.id, h.kind.as_str())).collect();
                status.waiters = Some(e.waiters);
            }
            if status.held.is_none()
                && let Some(e) = locks.get_mut(&Key::Semaphore(name.clone()))
            {
                e.purge_expired(Instant::now(), sessions);
                if let Some(LockKind::Semaphore { permits }) = e.holders.first().map(|h| h.kind) {
                    status.held = Some(HeldMode::Shared(e.holders.len()));
                    status.permits = Some(permits);
                    status.holders = e.holders.iter().map(|h| format!("holder#{}", h.id)).collect();
                    status.waiters = Some(e.waiters);
                }
            }
            Ok(status)
        })
    }
}

#[derive(Debug)]
struct MemoryHeld {
    space: Arc<Space>,
    key: Key,
    id: u64,
    token: u64,
    valid_until: Option<Instant>,
    /// Set by the `revoke` fault hook (for a lock of a session: when the session ends); watched
    /// by the core through `watch_lost`.
    lost: LostSignal,
    /// `expiry=session`: the session it belongs to.
    session: Option<Arc<ClientSession>>,
}

impl MemoryHeld {
    /// Removes our holder entry; false when it was already gone (expired or revoked).
    fn release_now(&self) -> bool {
        let mut st = self.space.state();
        let Some(e) = st.locks.get_mut(&self.key) else { return false };
        let before = e.holders.len();
        e.holders.retain(|h| h.id != self.id);
        let removed = e.holders.len() != before;
        if removed {
            e.changed.notify_waiters();
        }
        removed
    }
}

impl RawHeld for MemoryHeld {
    fn fencing_token(&self) -> Option<u64> {
        Some(self.token)
    }

    fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    fn renew(&self, lease: Duration) -> BoxFuture<'_, Result<Renewal>> {
        Box::pin(async move {
            let sent = Instant::now();
            self.space.pause(Step::Renew).await;
            self.space.while_paused(self.session.as_ref().map_or(self.id, |s| s.id)).await;
            let mut st = self.space.state();
            if st.renewals_fail {
                return Err(Error::Unavailable {
                    backend: BACKEND,
                    message: "renewals are failing (fault hook)".into(),
                    source: None,
                });
            }
            let now = Instant::now();
            let State { locks, sessions, .. } = &mut *st;
            let Some(e) = locks.get_mut(&self.key) else { return Ok(Renewal::Lost) };
            e.purge_expired(now, sessions);
            match (e.holders.iter_mut().find(|h| h.id == self.id), &self.session) {
                // A lock of a session: still there, valid as long as the session is (its
                // keep-alive extends it); nothing of its own to extend.
                (Some(_), Some(session)) => Ok(Renewal::Until(session.valid_until())),
                (Some(h), None) => {
                    h.expires = Some(instant_after(now, lease)?);
                    // Valid from when the renewal was sent, as a network client must count.
                    Ok(Renewal::Until(instant_after(sent, lease)?))
                }
                (None, _) => Ok(Renewal::Lost),
            }
        })
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        if self.space.is_delayed(Step::Release) {
            // A release that takes time, as over a network.
            return Box::pin(async move {
                self.space.pause(Step::Release).await;
                Ok(self.release_now())
            });
        }
        // Synchronous: done before the future is first polled, so a dropped guard is released
        // inside `drop`.
        let released = self.release_now();
        Box::pin(async move { Ok(released) })
    }

    fn watch_lost(&self) -> Option<BoxFuture<'static, String>> {
        Some(Box::pin(self.lost.reason_when_set()))
    }
}
