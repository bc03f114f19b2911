//! In-process queueing: waiters for one name in one provider queue here, fairly, so that a
//! process sends one waiter to the backend instead of a hundred, and a local handoff does not need
//! a backend round trip to find the next local waiter.
//!
//! The local gate mirrors the primitive (a FIFO read-write lock for mutexes and read-write locks,
//! a FIFO semaphore for semaphores). It is an optimisation and a fairness device, not the source of
//! mutual exclusion: the backend lock taken after the gate is what excludes, including between two
//! providers in one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Instant;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore};

use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::LockKind;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Mutex and read-write lock of one name share a gate: a mutex is a write lock.
    Rw(LockName),
    Semaphore(LockName),
}

#[derive(Debug)]
enum Gate {
    Rw(Arc<RwLock<()>>),
    Semaphore { sem: Arc<Semaphore>, permits: u32 },
}

/// Holds a place in the local gate; dropping it lets the next local waiter in. An acquisition
/// that bypasses the gate holds an empty one ([`LocalPermit::none`]).
#[derive(Debug)]
pub(crate) struct LocalPermit {
    _held: Option<(Held, Arc<Gate>)>,
}

impl LocalPermit {
    /// No place in any gate: for acquisitions that go straight to the backend.
    pub(crate) fn none() -> LocalPermit {
        LocalPermit { _held: None }
    }
}

#[derive(Debug)]
enum Held {
    Read(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
    Permit(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// The gates of one provider, one per name in use. Entries disappear when the last waiter or
/// holder of a name goes away.
#[derive(Default)]
pub(crate) struct LocalQueues {
    gates: StdMutex<Gates>,
}

#[derive(Default)]
struct Gates {
    map: HashMap<Key, Weak<Gate>>,
    /// Sweep dead entries when the map reaches this size: twice the live entries found by the
    /// last sweep (at least 64), so sweeping stays amortised O(1) per acquisition even when a
    /// process holds thousands of locks.
    sweep_at: usize,
}

impl std::fmt::Debug for LocalQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueues").field("names", &self.len()).finish()
    }
}

pub(crate) enum Outcome {
    Entered(LocalPermit),
    Busy,
}

impl LocalQueues {
    /// Number of names with a live gate (waiters or holders). Used by tests to prove that a
    /// cancelled acquisition leaves nothing behind.
    pub(crate) fn len(&self) -> usize {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.map.values().filter(|w| w.strong_count() > 0).count()
    }

    fn gate(&self, name: &LockName, kind: LockKind) -> Result<Arc<Gate>> {
        let key = match kind {
            LockKind::Semaphore { .. } => Key::Semaphore(name.clone()),
            _ => Key::Rw(name.clone()),
        };
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = gates.map.get(&key).and_then(Weak::upgrade) {
            if let (Gate::Semaphore { permits, .. }, LockKind::Semaphore { permits: wanted }) = (&*gate, kind)
                && *permits != wanted
            {
                return Err(Error::PermitsMismatch { name: name.display(), existing: *permits, requested: wanted });
            }
            return Ok(gate);
        }
        if gates.map.len() >= gates.sweep_at.max(64) {
            gates.map.retain(|_, w| w.strong_count() > 0);
            gates.sweep_at = gates.map.len() * 2;
        }
        let gate = Arc::new(match kind {
            LockKind::Semaphore { permits } => {
                Gate::Semaphore { sem: Arc::new(Semaphore::new(permits as usize)), permits }
            }
            _ => Gate::Rw(Arc::new(RwLock::new(()))),
        });
        gates.map.insert(key, Arc::downgrade(&gate));
        Ok(gate)
    }

    /// Enters the gate for `kind` on `name`: at once (`deadline` ignored) when `try_only`, else
    /// waiting until `deadline` (`None`: forever). Cancel-safe.
    pub(crate) async fn enter(
        &self,
        name: &LockName,
        kind: LockKind,
        try_only: bool,
        deadline: Option<Instant>,
    ) -> Result<Outcome> {
        let gate = self.gate(name, kind)?;
        let held = if try_only {
            let held = match &*gate {
                Gate::Rw(rw) if kind == LockKind::Read => rw.clone().try_read_owned().ok().map(Held::Read),
                Gate::Rw(rw) => rw.clone().try_write_owned().ok().map(Held::Write),
                Gate::Semaphore { sem, .. } => sem.clone().try_acquire_owned().ok().map(Held::Permit),
            };
            match held {
                Some(h) => h,
                None => return Ok(Outcome::Busy),
            }
        } else {
            let wait = async {
                match &*gate {
                    Gate::Rw(rw) if kind == LockKind::Read => Held::Read(rw.clone().read_owned().await),
                    Gate::Rw(rw) => Held::Write(rw.clone().write_owned().await),
                    Gate::Semaphore { sem, .. } => match sem.clone().acquire_owned().await {
                        Ok(p) => Held::Permit(p),
                        // We never close the semaphore.
                        Err(_) => std::future::pending().await,
                    },
                }
            };
            match deadline {
                None => wait.await,
                Some(d) => match tokio::time::timeout_at(d.into(), wait).await {
                    Ok(h) => h,
                    Err(_) => return Ok(Outcome::Busy),
                },
            }
        };
        Ok(Outcome::Entered(LocalPermit { _held: Some((held, gate)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> LockName {
        LockName::new(s).unwrap()
    }

    #[tokio::test]
    async fn entries_vanish_when_unused_and_permits_must_agree() {
        let q = LocalQueues::default();
        let a = q.enter(&name("a"), LockKind::Semaphore { permits: 2 }, true, None).await.unwrap();
        assert_eq!(q.len(), 1);
        let e = q.enter(&name("a"), LockKind::Semaphore { permits: 3 }, true, None).await;
        assert!(matches!(e, Err(Error::PermitsMismatch { existing: 2, requested: 3, .. })));
        drop(a);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn mutex_and_write_share_a_gate_readers_share() {
        let q = LocalQueues::default();
        let r1 = q.enter(&name("n"), LockKind::Read, true, None).await.unwrap();
        let r2 = q.enter(&name("n"), LockKind::Read, true, None).await.unwrap();
        assert!(matches!(r1, Outcome::Entered(_)) && matches!(r2, Outcome::Entered(_)));
        assert!(matches!(q.enter(&name("n"), LockKind::Mutex, true, None).await.unwrap(), Outcome::Busy));
        drop((r1, r2));
        assert!(matches!(q.enter(&name("n"), LockKind::Write, true, None).await.unwrap(), Outcome::Entered(_)));
    }
}
