//! Descriptors kept open between acquisitions, by path: ONE least-recently-used cache per
//! process, shared by every file provider, of lock files and fencing counters, so that an
//! uncontended acquisition skips an `open`, an `fstat` and a `close`, while any number of names
//! and providers never pin more than a small share of the process's descriptors.
//!
//! **Size.** At most 1/8 of the soft `RLIMIT_NOFILE` ([`capacity_for`]: at least
//! [`MIN_CAPACITY`], at most [`MAX_CAPACITY`]), read when the cache is made and again every
//! [`RECHECK_PUTS`] descriptors put back, so a limit lowered later shrinks the cache within that
//! many releases. When an `open` of the backend fails with `EMFILE` or `ENFILE`, every kept
//! descriptor is closed ([`relieve`]) and the `open` is tried once more: the cache is never
//! what makes the process run out.
//!
//! A descriptor is *taken out* while it is in use and put back after, so two users never share
//! one (two guards on one open file description would not exclude each other). Users check, before
//! they rely on a kept descriptor, that the path still names its file (`lstat`: device and inode).
//!
//! **Forks.** The cache belongs to the process (pid and [`clofork::generation`]) that made it. A
//! forked child makes a new one and never touches its parent's (whose lock a thread of the parent
//! may have held at the fork, and whose descriptors the fork handler closed in the child): an open
//! file description is never shared between parent and child.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::clofork::{self, Fd};
use super::raw::FileId;

/// Most descriptors the cache keeps, whatever the limit.
pub(crate) const MAX_CAPACITY: usize = 1024;
/// Fewest descriptors the cache keeps (when the limit is tiny).
pub(crate) const MIN_CAPACITY: usize = 4;
/// The share of the soft `RLIMIT_NOFILE` the cache may keep: 1 in this many.
pub(crate) const LIMIT_SHARE: u64 = 8;
/// The limit is read again every this many descriptors put back.
pub(crate) const RECHECK_PUTS: u32 = 64;

/// How many descriptors the cache keeps under a soft limit of `soft` (`None`: unlimited).
pub(crate) fn capacity_for(soft: Option<u64>) -> usize {
    match soft {
        None => MAX_CAPACITY,
        Some(n) => usize::try_from(n / LIMIT_SHARE).unwrap_or(usize::MAX).clamp(MIN_CAPACITY, MAX_CAPACITY),
    }
}

fn capacity_now() -> usize {
    capacity_for(rustix::process::getrlimit(rustix::process::Resource::Nofile).current)
}

/// Descriptors kept open between acquisitions, by path (see the module's documentation).
pub(crate) struct Cache {
    lru: Mutex<Lru>,
    /// Whether the capacity follows the descriptor limit (the process's cache) or is fixed (tests).
    follows_limit: bool,
}

struct Lru {
    capacity: usize,
    /// Puts since the limit was last read.
    puts: u32,
    /// Ticks of use, to order the entries.
    tick: u64,
    entries: HashMap<PathBuf, (Fd, FileId, u64)>,
    /// The entries by last use, oldest first.
    order: BTreeMap<u64, PathBuf>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.lru.try_lock().map(|l| l.entries.len()).ok();
        f.debug_struct("fdcache::Cache").field("kept", &kept).finish()
    }
}

/// The process's cache, and which process that is.
struct Instance {
    pid: u32,
    generation: u64,
    cache: Cache,
}

static SHARED: AtomicPtr<Instance> = AtomicPtr::new(std::ptr::null_mut());

/// The cache of this process (`pid`: ours, `std::process::id()`, which the caller asks once per
/// acquisition): made on first use, and again in a forked child, which leaves its parent's alone.
#[allow(unsafe_code)]
pub(crate) fn shared(pid: u32) -> &'static Cache {
    let generation = clofork::generation();
    let mut seen = SHARED.load(Ordering::Acquire);
    loop {
        // SAFETY: a non-null SHARED points to a leaked `Instance`, never freed.
        if let Some(i) = unsafe { seen.as_ref() }
            && i.pid == pid
            && i.generation == generation
        {
            return &i.cache;
        }
        let new = Box::into_raw(Box::new(Instance { pid, generation, cache: Cache::following_limit() }));
        match SHARED.compare_exchange(seen, new, Ordering::AcqRel, Ordering::Acquire) {
            // The one it replaces is a parent's (forked): leaked, never touched again.
            // SAFETY: `new` was just leaked and is now published; it is never freed.
            Ok(_) => return unsafe { &(*new).cache },
            Err(current) => {
                // Another thread made one first: use it.
                // SAFETY: `new` came from `Box::into_raw` above and was never published.
                drop(unsafe { Box::from_raw(new) });
                seen = current;
            }
        }
    }
}

/// Closes every descriptor the process's cache keeps, after an `open` of the backend failed with
/// `EMFILE` or `ENFILE`: its caller then tries once more. Returns how many were closed.
pub(crate) fn relieve() -> usize {
    shared(std::process::id()).clear()
}

impl Cache {
    fn following_limit() -> Cache {
        Cache::with(capacity_now(), true)
    }

    /// A cache of at most `capacity` descriptors, whatever the limit (tests).
    #[cfg(test)]
    pub(crate) fn fixed(capacity: usize) -> Cache {
        Cache::with(capacity, false)
    }

    fn with(capacity: usize, follows_limit: bool) -> Cache {
        let lru = Lru { capacity, puts: 0, tick: 0, entries: HashMap::new(), order: BTreeMap::new() };
        Cache { lru: Mutex::new(lru), follows_limit }
    }

    fn lru(&self) -> MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept descriptor of `path`, taken out of the cache (put it back with [`Cache::put`]).
    pub(crate) fn take(&self, path: &Path) -> Option<(Fd, FileId)> {
        let mut lru = self.lru();
        let (file, id, tick) = lru.entries.remove(path)?;
        lru.order.remove(&tick);
        Some((file, id))
    }

    /// Keeps `file` (the file `id` at `path`) open, evicting the least recently used
    /// descriptors past the capacity.
    pub(crate) fn put(&self, path: &Path, file: Fd, id: FileId) {
        let mut evicted = Vec::new();
        let mut lru = self.lru();
        if self.follows_limit {
            lru.puts += 1;
            if lru.puts >= RECHECK_PUTS {
                lru.puts = 0;
                lru.capacity = capacity_now();
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((old, _, old_tick)) = lru.entries.insert(path.to_owned(), (file, id, tick)) {
            lru.order.remove(&old_tick);
            evicted.push(old);
        }
        lru.order.insert(tick, path.to_owned());
        while lru.entries.len() > lru.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else { break };
            evicted.extend(lru.entries.remove(&oldest).map(|(f, _, _)| f));
        }
        // Closed after the lock is let go.
        drop(lru);
        drop(evicted);
    }

    /// Closes every kept descriptor and reads the limit again; returns how many were kept.
    fn clear(&self) -> usize {
        let mut lru = self.lru();
        let entries = std::mem::take(&mut lru.entries);
        lru.order.clear();
        if self.follows_limit {
            lru.capacity = capacity_now();
            lru.puts = 0;
        }
        drop(lru);
        entries.len()
    }

    /// How many descriptors are kept (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lru().entries.len()
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
        let cache = Cache::fixed(100);
        let open = |i: usize| {
            let p = tmp.path().join(format!(".n{i}.fence"));
            std::fs::write(&p, "0\\n").unwrap();
            let (f, id) = open_in_dir(&p, Access::Read).unwrap();
            (p, f, id)
        };
        let (first, f, id) = open(0);
        cache.put(&first, f, id);
        for i in 1..=110 {
            // Touch the first one now and then: it stays.
            if i % 20 == 0 {
                let (f, id) = cache.take(&first).expect("kept");
                cache.put(&first, f, id);
            }
            let (p, f, id) = open(i);
            cache.put(&p, f, id);
        }
        assert_eq!(cache.len(), 100);
        assert!(cache.take(&first).is_some(), "recently used");
        assert!(cache.take(&tmp.path().join(".n1.fence")).is_none(), "the oldest went first");
        assert_eq!(cache.clear(), 99);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_capacity_is_a_share_of_the_descriptor_limit() {
        assert_eq!(capacity_for(None), MAX_CAPACITY);
        assert_eq!(capacity_for(Some(u64::MAX)), MAX_CAPACITY);
        assert_eq!(capacity_for(Some(1_048_576)), MAX_CAPACITY);
        assert_eq!(capacity_for(Some(1024)), 128);
        assert_eq!(capacity_for(Some(256)), 32);
        assert_eq!(capacity_for(Some(16)), MIN_CAPACITY);
        assert_eq!(capacity_for(Some(0)), MIN_CAPACITY);
    }

    #[test]
    fn one_cache_per_process() {
        let pid = std::process::id();
        assert!(std::ptr::eq(shared(pid), shared(pid)));
    }
}
