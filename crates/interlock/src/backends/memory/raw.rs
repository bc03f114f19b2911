//! The in-process state behind `memory://`: a table of holders per name, in named spaces shared by
//! every provider of the process.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::config::MemoryConfig;
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::{
    BoxFuture, Capabilities, HeldMode, LockKind, LockStatus, LostSignal, RawHeld, RawProvider, Renewal, Request, Wait,
    instant_after,
};

const BACKEND: &str = "memory";

static SPACES: LazyLock<StdMutex<HashMap<String, Arc<Space>>>> = LazyLock::new(Default::default);

/// One namespace of in-process locks.
#[derive(Debug, Default)]
pub(crate) struct Space {
    state: StdMutex<State>,
}

#[derive(Debug, Default)]
struct State {
    locks: HashMap<Key, Entry>,
    next_id: u64,
    renewals_fail: bool,
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

    pub(crate) fn set_renewals_failing(&self, fail: bool) {
        self.state().renewals_fail = fail;
    }

    pub(crate) fn counts(&self, key: &Key) -> (usize, usize) {
        let st = self.state();
        st.locks.get(key).map_or((0, 0), |e| (e.holders.len(), e.waiters))
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
        let key = Key::new(&req.name, req.kind);
        let mut waiting: Option<WaiterMark> = None;
        loop {
            let notified;
            let wake_at;
            {
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
                    entry.holders.push(Holder { id, kind: req.kind, expires, lost: req.lost.clone() });
                    st.next_id += 1;
                    return Ok(Some(Arc::new(MemoryHeld {
                        space: self.space.clone(),
                        key,
                        id,
                        token,
                        valid_until: expires,
                    })));
                }
                if wait == Wait::Try {
                    return Ok(None);
                }
                if waiting.is_none() {
                    entry.waiters += 1;
                    waiting = Some(WaiterMark { space: self.space.clone(), key: key.clone() });
                }
                notified = entry.changed.clone().notified_owned();
                wake_at = entry.next_expiry();
            }
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
                    let until = instant_after(now, lease)?;
                    h.expires = Some(until);
                    Ok(Renewal::Until(until))
                }
                None => Ok(Renewal::Lost),
            }
        })
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        let released = self.release_now();
        Box::pin(async move { Ok(released) })
    }

    fn release_on_drop(self: Arc<Self>) {
        self.release_now();
    }
}
