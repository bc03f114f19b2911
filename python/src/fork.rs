//! Fork safety: a lock held when the process forked belongs to the parent, never to the child.
//!
//! Every live guard is registered here. In a forked child (found by the hook Python runs after
//! `os.fork()`, or by the first use of any interlock object whose pid is not ours, for forks that
//! do not run Python's hooks, such as uwsgi's), every guard made by another process is marked
//! `Forked`: `lost` is true, `release()` raises `LockLost`, and the core guard is let go of with
//! `Guard::forget_after_fork`, never unlocked (an unlock in the child would unlock the parent's
//! lock), and nothing else of it runs (its runtime is not here).
//!
//! The descriptors themselves are not this module's job: the library's own `pthread_atfork`
//! handler closes every descriptor of the file backend in the child at the fork, whoever forks
//! and whether or not Python's hooks run (crates/interlock/src/backends/file/clofork.rs), so a
//! lock never outlives its holder in a child that never uses interlock.
//!
//! The registry is only touched with the GIL held, so a fork made from Python never finds it
//! locked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;

use crate::guard::{Shared, State};

static LIVE: Mutex<BTreeMap<u64, Weak<Shared>>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

pub(crate) fn register(shared: &Arc<Shared>) -> u64 {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Arc::downgrade(shared));
    id
}

pub(crate) fn unregister(id: u64) {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
}

/// Marks a guard inherited from the parent as not held, and lets go of the parent's lock without
/// touching it.
pub(crate) fn forget_inherited(shared: &Shared) {
    let mut state = shared.state();
    if let State::Held(_) = &*state
        && let State::Held(g) = std::mem::replace(&mut *state, State::Forked { parent: shared.pid })
    {
        // Dropping it would release the parent's lock (and run on a runtime that is not here);
        // this closes the child's copies of its descriptors (file backend) and nothing else.
        g.forget_after_fork();
    }
}

/// Marks every guard inherited through fork as not held.
pub(crate) fn after_fork_in_child(_py: Python<'_>) {
    let pid = std::process::id();
    let inherited: Vec<Arc<Shared>> = LIVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .filter(|s| s.pid != pid)
        .collect();
    for shared in inherited {
        forget_inherited(&shared);
    }
}

/// Python's `os.register_at_fork(after_in_child=...)` hook.
#[pyfunction]
pub(crate) fn _after_fork_in_child(py: Python<'_>) {
    after_fork_in_child(py);
}
