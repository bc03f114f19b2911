//! Close-on-fork for the file backend's descriptors: no lock file, fencing counter or inotify
//! descriptor of this process survives into a child made by `fork()`.
//!
//! A child that inherits a descriptor of a lock file keeps its open file description, and so its
//! `flock`, alive: were the parent then killed, the lock would stay held until the child exits
//! (a `multiprocessing` worker, a uWSGI or gunicorn worker that never uses interlock). Linux has
//! no `O_CLOFORK` (proposed in 2020, not merged; as of 6.x there is none), so the backend keeps
//! every descriptor it opens in a table here, and a `pthread_atfork` child handler, registered
//! once per process, closes them all in the child, whoever forks: Python's `os.fork`, uWSGI,
//! `multiprocessing`, a Rust program, std's `Command` when it forks for a `pre_exec`. Forks that
//! run no atfork handler (a raw `clone`, `vfork`, glibc's `_Fork`, `posix_spawn`) exec at once
//! (close-on-exec is set on every descriptor), or are caught by the pid checks the backend makes
//! anyway.
//!
//! The child handler runs in a child of a possibly multi-threaded process, where only
//! async-signal-safe work is allowed: it reads the table (atomics in chunks that are never
//! freed), calls `close(2)` and bumps [`generation`]. No allocation, no lock.
//!
//! Every [`Fd`] records the generation it was opened in. One from an older generation belongs to
//! the parent: the handler already closed this process's copy and its number may belong to
//! something else now, so it is forgotten, never closed, unlocked or used again.
//!
//! A fork must not fall between an `open` and its entry in the table (the child would keep an
//! unlisted copy), nor between the removal of an entry and its `close`. Those two steps run in a
//! *section*, and the prepare handler (in the forking thread of the parent, before the fork)
//! waits until no thread is inside one and keeps new ones out until the fork is done. A section
//! holds no lock and allocates nothing (the table grows before, outside it), so the wait is
//! short; it is bounded by [`QUIESCE_BOUND`] all the same (an `open` stuck on a hung
//! filesystem): past it the fork goes on, and at worst one descriptor in flight leaks into the
//! child (never one closed twice, never another's closed).
//!
//! Descriptors handed out on purpose (`Guard::lock_fds`, what `interlock run` passes to its
//! command) are duplicates made outside this table: children inherit them.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Slots of the table's first chunk; chunk `k` has `FIRST << k`.
const FIRST: usize = 256;
/// Most chunks: `FIRST * (2^CHUNKS - 1)` slots, more than any descriptor table can hold.
const CHUNKS: usize = 24;
/// Longest the prepare handler waits for threads inside a section (see the module docs).
pub(crate) const QUIESCE_BOUND: Duration = Duration::from_secs(2);

/// The table: chunk `k` (a leaked `[AtomicI32; FIRST << k]`, -1 for a free slot) or null.
static TABLE: [AtomicPtr<AtomicI32>; CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS];
/// Slots in the chunks allocated so far.
static CAPACITY: AtomicUsize = AtomicUsize::new(0);
/// Slots reserved (in use, or about to be): never more than [`CAPACITY`] once reserved.
static USED: AtomicUsize = AtomicUsize::new(0);
/// Where the next search for a free slot starts.
static HINT: AtomicUsize = AtomicUsize::new(0);
/// Forks in progress (prepare handler run, parent handler not yet).
static FORKING: AtomicUsize = AtomicUsize::new(0);
/// Threads inside a section.
static INFLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Bumped in every child by the child handler: which process (in a line of forks) we are.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static HANDLERS: Once = Once::new();

thread_local! {
    /// Sections this thread is inside (a fork from a signal handler may interrupt one).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// This process's generation: changes in every forked child (see the module docs).
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// A descriptor of the file backend, closed in forked children (see the module docs). Derefs to
/// the [`File`]; dropped in the process that opened it, it closes; in a child, it is forgotten.
pub(crate) struct Fd {
    file: ManuallyDrop<File>,
    slot: usize,
    generation: u64,
}

impl std::fmt::Debug for Fd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fd").field("fd", &self.file.as_raw_fd()).field("ours", &self.is_ours()).finish()
    }
}

impl std::ops::Deref for Fd {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Fd {
    /// Makes a descriptor with `make` (an `open`, `inotify_init`, ...) and lists it, in one
    /// section, so that no fork falls in between.
    pub(crate) fn new<E>(make: impl FnOnce() -> Result<OwnedFd, E>) -> Result<Fd, E> {
        HANDLERS.call_once(register_handlers);
        let reserved = Reservation::take();
        let section = Section::enter();
        let fd = make()?;
        let raw = fd.as_raw_fd();
        let slot = claim(raw);
        let generation = generation();
        drop(section);
        std::mem::forget(reserved);
        Ok(Fd { file: ManuallyDrop::new(File::from(fd)), slot, generation })
    }

    /// True in the process that opened it; false in a forked child, where the handler closed
    /// this process's copy.
    pub(crate) fn is_ours(&self) -> bool {
        self.generation == generation()
    }
}

impl Drop for Fd {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `file` is taken once, here, and `self` is not used after.
        let file = unsafe { ManuallyDrop::take(&mut self.file) };
        if !self.is_ours() {
            // The parent's: already closed here by the child handler, the number maybe reused.
            let _ = file.into_raw_fd();
            return;
        }
        let raw = file.as_raw_fd();
        let section = Section::enter();
        // Unlisted first, then closed: a fork in between (only past the prepare handler's bound)
        // leaks a copy rather than closing a number that may be another's by then.
        if let Some(slot) = slot_at(self.slot) {
            let _ = slot.compare_exchange(raw, -1, Ordering::Relaxed, Ordering::Relaxed);
        }
        drop(file);
        drop(section);
        USED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reserved slot, given back if the descriptor is not made.
struct Reservation;

impl Reservation {
    /// Reserves a slot, growing the table (outside any section: it allocates) until there is one.
    fn take() -> Reservation {
        let used = USED.fetch_add(1, Ordering::SeqCst) + 1;
        while used > CAPACITY.load(Ordering::Acquire) {
            if !grow() {
                break;
            }
        }
        Reservation
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        USED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Adds the next chunk; false when every chunk exists (more slots than any process can have
/// descriptors: not reached).
#[allow(unsafe_code)]
fn grow() -> bool {
    let Some(k) = TABLE.iter().position(|c| c.load(Ordering::Acquire).is_null()) else { return false };
    let chunk: Box<[AtomicI32]> = (0..FIRST << k).map(|_| AtomicI32::new(-1)).collect();
    let new = Box::into_raw(chunk).cast::<AtomicI32>();
    if TABLE[k].compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Another thread added chunk `k` first.
        // SAFETY: `new` came from `Box::into_raw` of a slice of this length just above and was
        // never published.
        drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(new, FIRST << k)) });
    }
    CAPACITY.fetch_max(FIRST * ((1 << (k + 1)) - 1), Ordering::AcqRel);
    true
}

/// Slot `i` of the table, if its chunk exists.
#[allow(unsafe_code)]
fn slot_at(i: usize) -> Option<&'static AtomicI32> {
    // Chunk k holds the slots FIRST * (2^k - 1) .. FIRST * (2^(k+1) - 1).
    let k = (i / FIRST + 1).ilog2() as usize;
    let chunk = TABLE.get(k)?.load(Ordering::Acquire);
    if chunk.is_null() {
        return None;
    }
    let offset = i - FIRST * ((1 << k) - 1);
    // SAFETY: chunk `k` is a leaked slice of `FIRST << k` atomics, never freed, and
    // `offset < FIRST << k` by the arithmetic above.
    Some(unsafe { &*chunk.add(offset) })
}

/// Lists `fd` in a free slot and returns the slot. A free slot exists: this thread reserved one
/// (a search can still miss it while other threads take and free slots, hence a few passes).
fn claim(fd: RawFd) -> usize {
    for _ in 0..16 {
        let capacity = CAPACITY.load(Ordering::Acquire);
        let start = HINT.load(Ordering::Relaxed);
        for j in 0..capacity {
            let i = (start + j) % capacity;
            if let Some(slot) = slot_at(i)
                && slot.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                HINT.store(i + 1, Ordering::Relaxed);
                return i;
            }
        }
    }
    // Only when the table could not grow (more slots than any process can have descriptors: not
    // reached): the descriptor is then not closed at fork, as without this module.
    usize::MAX
}

/// Keeps forks out while it lives (see the module docs).
struct Section;

impl Section {
    fn enter() -> Section {
        let depth = DEPTH.get();
        DEPTH.set(depth + 1);
        if depth > 0 {
            // Already inside one: a fork waits for the outer section anyway.
            INFLIGHT.fetch_add(1, Ordering::SeqCst);
            return Section;
        }
        loop {
            if FORKING.load(Ordering::SeqCst) == 0 {
                INFLIGHT.fetch_add(1, Ordering::SeqCst);
                // Either the forking thread sees us in INFLIGHT and waits, or we see it here.
                if FORKING.load(Ordering::SeqCst) == 0 {
                    return Section;
                }
                INFLIGHT.fetch_sub(1, Ordering::SeqCst);
            }
            std::thread::yield_now();
        }
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        INFLIGHT.fetch_sub(1, Ordering::SeqCst);
        DEPTH.set(DEPTH.get().saturating_sub(1));
    }
}

#[allow(unsafe_code)]
fn register_handlers() {
    // SAFETY: the three handlers are `extern "C"` functions without arguments that live as long
    // as the program; `child` does only async-signal-safe work (see its docs).
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        tracing::warn!(
            error = %io::Error::from_raw_os_error(rc),
            "cannot register the fork handler: forked children may keep file locks alive"
        );
    }
}

/// Before a fork, in the forking thread: waits (bounded) until no thread is inside a section.
extern "C" fn prepare() {
    FORKING.fetch_add(1, Ordering::SeqCst);
    if DEPTH.get() > 0 {
        // Forking from inside a section of this very thread (a signal handler): it cannot end.
        return;
    }
    let start = Instant::now();
    let mut spins = 0u32;
    while INFLIGHT.load(Ordering::SeqCst) != 0 {
        if spins < 64 {
            spins += 1;
            std::thread::yield_now();
        } else if start.elapsed() > QUIESCE_BOUND {
            return;
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// After a fork (or a failed one), in the parent.
extern "C" fn parent() {
    FORKING.fetch_sub(1, Ordering::SeqCst);
}

/// After a fork, in the child: closes every listed descriptor. Async-signal-safe: atomic loads
/// and stores, `close(2)`, a thread-local read; no allocation, no lock.
#[allow(unsafe_code)]
extern "C" fn child() {
    for (k, chunk) in TABLE.iter().enumerate() {
        let chunk = chunk.load(Ordering::Acquire);
        if chunk.is_null() {
            break;
        }
        for offset in 0..FIRST << k {
            // SAFETY: as in `slot_at`: a leaked chunk of `FIRST << k` atomics.
            let slot = unsafe { &*chunk.add(offset) };
            let fd = slot.swap(-1, Ordering::Relaxed);
            if fd >= 0 {
                // SAFETY: `close` is async-signal-safe; `fd` is this child's copy of a
                // descriptor the backend listed, closed nowhere else in the child (its `Fd`
                // sees another generation and forgets it).
                unsafe {
                    libc::close(fd);
                }
            }
        }
    }
    USED.store(0, Ordering::SeqCst);
    // The only thread here is the forking one; it may be inside a section (a signal handler).
    INFLIGHT.store(DEPTH.get(), Ordering::SeqCst);
    FORKING.store(0, Ordering::SeqCst);
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_onto_chunks() {
        for (i, k, offset) in [(0, 0, 0), (255, 0, 255), (256, 1, 0), (767, 1, 511), (768, 2, 0)] {
            let got = (i / FIRST + 1).ilog2() as usize;
            assert_eq!(got, k, "slot {i}");
            assert_eq!(i - FIRST * ((1 << got) - 1), offset, "slot {i}");
        }
    }

    #[test]
    fn listed_while_open() {
        let listed = |raw: RawFd| {
            (0..CAPACITY.load(Ordering::Acquire)).any(|i| slot_at(i).is_some_and(|s| s.load(Ordering::Relaxed) == raw))
        };
        let open = || {
            use rustix::fs::{Mode, OFlags, open};
            Fd::new(|| open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())).unwrap()
        };
        let many: Vec<Fd> = (0..FIRST + 10).map(|_| open()).collect();
        assert!(CAPACITY.load(Ordering::Acquire) >= FIRST + 10, "the table grew");
        assert!(many.iter().all(|f| listed(f.as_raw_fd())));
        assert!(many.iter().all(Fd::is_ours));
        let failed: Result<Fd, rustix::io::Errno> = Fd::new(|| Err(rustix::io::Errno::NOENT));
        assert!(failed.is_err(), "an error makes no entry");
        // Closing is checked by the fork tests (tests/file_fork.rs): other tests of this binary
        // open descriptors meanwhile, so a number seen listed after a drop may be theirs.
    }
}
