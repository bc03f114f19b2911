//! Descriptors kept open between acquisitions, by path: a small LRU (least recently used first
//! out, at most [`CAPACITY`] per cache), so that an uncontended acquisition skips an `open`, an
//! `fstat` and a `close`, while 10,000 names never pin more than [`CAPACITY`] descriptors.
//!
//! A descriptor is *taken out* while it is in use and put back after, so two users never share
//! one (two guards on one open file description would not exclude each other). Users check, before
//! they rely on a kept descriptor, that the path still names its file (`lstat`: device and inode).
//! The cache records the pid that filled it: a forked child finds another pid and lets go of its
//! parent's entries before it uses any (an open file description is never shared between parent
//! and child). A child made by `fork()` has no copies of them: the fork handler closed them (see
//! [`super::clofork`]), and the entries only forget their numbers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, TryLockError};

use super::clofork::Fd;
use super::raw::FileId;

/// Most descriptors one cache keeps open.
pub(crate) const CAPACITY: usize = 1024;

/// Descriptors kept open between acquisitions, by path (see the module's documentation).
#[derive(Default)]
pub(crate) struct Cache(Mutex<Lru>);

#[derive(Default)]
struct Lru {
    /// The process that opened the descriptors (0: none yet).
    pid: u32,
    /// Ticks of use, to order the entries.
    tick: u64,
    entries: HashMap<PathBuf, (Fd, FileId, u64)>,
    /// The entries by last use, oldest first.
    order: BTreeMap<u64, PathBuf>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.0.try_lock().map(|l| l.entries.len()).ok();
        f.debug_struct("fdcache::Cache").field("kept", &kept).finish()
    }
}

impl Cache {
    /// The kept descriptor of `path`, taken out of the cache (put it back with [`Cache::put`]).
    /// Never one that another process (a parent we were forked from) opened: `pid` is ours
    /// (`std::process::id()`, a system call, so the caller asks once for both calls).
    pub(crate) fn take(&self, path: &Path, pid: u32) -> Option<(Fd, FileId)> {
        // `try_lock`: in a forked child a thread of the parent may have held it at the fork, and
        // it is not here to unlock it; busy (another thread bumping) simply means no cache.
        let mut lru = match self.0.try_lock() {
            Ok(l) => l,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        if lru.pid != pid {
            // Forked: these are the parent's descriptors; let go of them.
            *lru = Lru { pid, ..Lru::default() };
            return None;
        }
        let (file, id, tick) = lru.entries.remove(path)?;
        lru.order.remove(&tick);
        Some((file, id))
    }

    /// Keeps `file` (the file `id` at `path`) open, evicting the least recently used
    /// descriptor past [`CAPACITY`]. `pid`: as for [`Cache::take`].
    pub(crate) fn put(&self, path: &Path, file: Fd, id: FileId, pid: u32) {
        let mut lru = match self.0.try_lock() {
            Ok(l) => l,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if lru.pid != pid {
            *lru = Lru { pid, ..Lru::default() };
        }
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((_, _, old)) = lru.entries.insert(path.to_owned(), (file, id, tick)) {
            lru.order.remove(&old);
        }
        lru.order.insert(tick, path.to_owned());
        while lru.entries.len() > CAPACITY {
            let Some((_, oldest)) = lru.order.pop_first() else { break };
            lru.entries.remove(&oldest);
        }
    }

    /// How many descriptors are kept (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().map_or(0, |l| l.entries.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::backends::file::raw::{Access, open_in_dir};

    #[test]
    fn the_cache_is_bounded_and_forgets_the_least_recently_used() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::default();
        let pid = std::process::id();
        let open = |i: usize| {
            let p = tmp.path().join(format!(".n{i}.fence"));
            std::fs::write(&p, "0\\n").unwrap();
            let (f, id) = open_in_dir(&p, Access::Read).unwrap();
            (p, f, id)
        };
        let (first, f, id) = open(0);
        cache.put(&first, f, id, pid);
        for i in 1..=CAPACITY + 10 {
            // Touch the first one now and then: it stays.
            if i % 100 == 0 {
                let (f, id) = cache.take(&first, pid).expect("kept");
                cache.put(&first, f, id, pid);
            }
            let (p, f, id) = open(i);
            cache.put(&p, f, id, pid);
        }
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.take(&first, pid).is_some(), "recently used");
        assert!(cache.take(&tmp.path().join(".n1.fence"), pid).is_none(), "the oldest went first");
        // Another pid (a forked child) never gets the parent's descriptors, and they are closed.
        assert!(cache.take(&tmp.path().join(".n1030.fence"), pid.wrapping_add(1)).is_none());
        assert_eq!(cache.len(), 0);
    }
}
