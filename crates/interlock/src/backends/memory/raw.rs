//! The in-process state behind `memory://`: a table of holders per name, in named spaces shared by
//! every provider of the process.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, LazyLock, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Step;
use super::config::MemoryConfig;
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::{
    BoxFuture, Capabilities, Cleanup, HeldMode, LockKind, LockStatus, LostSignal, RawHeld, RawProvider, Renewal,
    Request, Wait, instant_after,
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
    /// process would.
    paused: HashMap<u64, LockName>,
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
    expires: Option<Instant>,
    lost: LostSignal,
}

impl Entry {
    /// Drops holders whose lease ran out, as a server would; wakes waiters if any went.
    fn purge_expired(&mut self, now: Instant) {
        let before = self.holders.len();
        self.holders.retain(|h| h.expires.is_none_or(|e| e > now));
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

    fn next_expiry(&self) -> Option<Instant> {
        self.holders.iter().filter_map(|h| h.expires).min()
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

    /// Fault hook: the backend forgets every holder of `name`, as when a lease runs out on a server.
    /// Holders are not told; they find out at their next renewal.
    pub(crate) fn expire(&self, name: &LockName) -> usize {
        let mut st = self.state();
        let mut n = 0;
        for kind in [LockKind::Mutex, LockKind::Semaphore { permits: 1 }] {
            if let Some(e) = st.locks.get_mut(&Key::new(name, kind)) {
                n += e.holders.len();
                e.holders.clear();
                e.changed.notify_waiters();
            }
        }
        n
    }

    /// Fault hook: the backend pushes a loss to every holder of `name` (like a session expiry
    /// event) and forgets them.
    pub(crate) fn revoke(&self, name: &LockName) -> usize {
        {
            let st = self.state();
            for kind in [LockKind::Mutex, LockKind::Semaphore { permits: 1 }] {
                if let Some(e) = st.locks.get(&Key::new(name, kind)) {
                    for h in &e.holders {
                        h.lost.set("revoked by the memory backend's fault hook");
                    }
                }
            }
        }
        self.expire(name)
    }

    /// Fault hook: a server restart that keeps nothing but the fencing counters. Every holder of
    /// every name is told (its session ended with the server) and forgotten; waiters are woken
    /// and try again, as clients that reconnect. Returns how many holders were dropped.
    pub(crate) fn restart(&self) -> usize {
        let mut st = self.state();
        let mut n = 0;
        for e in st.locks.values_mut() {
            for h in &e.holders {
                h.lost.set("the memory backend restarted (fault hook)");
            }
            n += e.holders.len();
            e.holders.clear();
            e.changed.notify_waiters();
        }
        st.paused.clear();
        n
    }

    /// Fault hook: the renewals of the current holders of `name` wait (before they reach the
    /// lock table) until [`Space::resume_holders`], as those of a stopped process would.
    pub(crate) fn pause_holders(&self, name: &LockName) -> usize {
        let mut st = self.state();
        let mut ids = Vec::new();
        for kind in [LockKind::Mutex, LockKind::Semaphore { permits: 1 }] {
            if let Some(e) = st.locks.get(&Key::new(name, kind)) {
                ids.extend(e.holders.iter().map(|h| h.id));
            }
        }
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

    /// Waits while holder `id` is paused ([`Space::pause_holders`]).
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
}

impl MemoryProvider {
    pub(crate) fn new(config: MemoryConfig) -> Self {
        MemoryProvider { space: Space::named(&config.space), config }
    }

    async fn acquire_inner(&self, req: Request, wait: Wait) -> Result<Option<Arc<dyn RawHeld>>> {
        // The request on its way to the "server".
        self.space.pause(Step::Acquire).await;
        let key = Key::new(&req.name, req.kind);
        let mut waiting: Option<WaiterMark> = None;
        loop {
            let granted = {
                let mut st = self.space.state();
                let now = Instant::now();
                let id = st.next_id;
                let entry = st.locks.entry(key.clone()).or_default();
                entry.purge_expired(now);
                let admitted = entry.admits(req.kind).map_err(|e| match e {
                    Error::PermitsMismatch { existing, requested, .. } => {
                        Error::PermitsMismatch { name: req.name.display(), existing, requested }
                    }
                    other => other,
                })?;
                if admitted {
                    let expires = match self.config.expiring {
                        true => Some(req.lease.valid_from(now)?),
                        false => None,
                    };
                    if req.kind != LockKind::Read {
                        entry.fence += 1;
                    }
                    let token = entry.fence;
                    let lost = LostSignal::new();
                    entry.holders.push(Holder { id, kind: req.kind, expires, lost: lost.clone() });
                    st.next_id += 1;
                    Ok(MemoryHeld {
                        space: self.space.clone(),
                        key: key.clone(),
                        id,
                        token,
                        valid_until: expires,
                        lost,
                    })
                } else {
                    if wait == Wait::Try {
                        return Ok(None);
                    }
                    if waiting.is_none() {
                        entry.waiters += 1;
                        waiting = Some(WaiterMark { space: self.space.clone(), key: key.clone() });
                    }
                    Err((entry.changed.clone().notified_owned(), entry.next_expiry()))
                }
            };
            let (notified, wake_at) = match granted {
                Err(wait) => wait,
                Ok(held) => {
                    drop(waiting);
                    return Ok(Some(self.answer(held).await));
                }
            };
            // `notified` was created under the state lock, so a release after that point wakes it.
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
        Capabilities::new(false, self.config.expiring, true)
    }

    fn acquire(&self, request: Request, wait: Wait) -> BoxFuture<'_, Result<Option<Arc<dyn RawHeld>>>> {
        Box::pin(self.acquire_inner(request, wait))
    }

    fn status<'a>(&'a self, name: &'a LockName) -> BoxFuture<'a, Result<LockStatus>> {
        Box::pin(async move {
            let mut st = self.space.state();
            let mut status = LockStatus::free();
            if let Some(e) = st.locks.get_mut(&Key::Rw(name.clone())) {
                e.purge_expired(Instant::now());
                status.held = match e.holders.first() {
                    None => None,
                    Some(h) if h.kind.is_exclusive() => Some(HeldMode::Exclusive),
                    Some(_) => Some(HeldMode::Shared(e.holders.len())),
                };
                status.holders = e.holders.iter().map(|h| format!("holder#{} ({})", h.id, h.kind.as_str())).collect();
                status.waiters = Some(e.waiters);
            }
            if status.held.is_none()
                && let Some(e) = st.locks.get_mut(&Key::Semaphore(name.clone()))
            {
                e.purge_expired(Instant::now());
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
    /// Set by the `revoke` fault hook; watched by the core through `watch_lost`.
    lost: LostSignal,
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
            self.space.while_paused(self.id).await;
            let mut st = self.space.state();
            if st.renewals_fail {
                return Err(Error::Unavailable {
                    backend: BACKEND,
                    message: "renewals are failing (fault hook)".into(),
                    source: None,
                });
            }
            let now = Instant::now();
            let Some(e) = st.locks.get_mut(&self.key) else { return Ok(Renewal::Lost) };
            e.purge_expired(now);
            match e.holders.iter_mut().find(|h| h.id == self.id) {
                Some(h) => {
                    h.expires = Some(instant_after(now, lease)?);
                    // Valid from when the renewal was sent, as a network client must count.
                    Ok(Renewal::Until(instant_after(sent, lease)?))
                }
                None => Ok(Renewal::Lost),
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
