//! Background tasks that a provider owns: the one way a backend runs work of its own in the
//! background (a connection's driver future, a session's event loop or keep-alive, watch streams,
//! the per-server requests of a quorum round that outlive the round's answer).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// The background tasks of one provider: counted, stopped by [`crate::Provider::close`] and by
/// the drop of the provider's last handle, never left behind.
///
/// The core makes one per provider and hands it to the backend's constructor; the backend keeps a
/// clone and spawns through it instead of `tokio::spawn`. Two kinds:
///
/// - [`Tasks::spawn`]: work that runs until it ends by itself or the provider closes (a driver
///   loop, a keep-alive, a subscription that lingers): aborted at close;
/// - [`Tasks::spawn_finishing`]: work that ends by itself within a bound the backend sets (a
///   request already on its way, whose answer nobody waits for any more but which must land: the
///   release of a lock on the last servers of a quorum round): left to finish at close, which
///   waits for it. Bound it (a command timeout): close waits for it. Accepted after close too:
///   the undo of an acquisition abandoned just before a dropped provider closed still runs.
///
/// Tasks run on the runtime current where they are spawned, or on the runtime that made the
/// provider (where its connections live) when none is. In a forked child (the process id is no
/// longer the one that made the `Tasks`), [`Tasks::shutdown`] touches nothing: the parent's
/// tasks, whose runtime threads are not in the child, are neither aborted nor waited for (an
/// abort would wake the parent's runtime through the descriptors both processes share). A child
/// must not use a provider it inherited (it connects anew, as the Python package does); spawning
/// checks nothing, so that it costs no system call.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use interlock::raw::Tasks;
/// let tasks = Tasks::new();
/// assert!(tasks.spawn(std::future::pending())); // a loop that runs until the provider closes
/// assert!(tasks.spawn_finishing(async { tokio::task::yield_now().await }));
/// assert_eq!(tasks.count(), 2);
/// tasks.shutdown().await; // what `Provider::close` does after the backend's `close`
/// assert_eq!(tasks.count(), 0);
/// assert!(!tasks.spawn(async {}), "closed: no new loop");
/// # }
/// ```
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

struct Inner {
    /// The process that made this set: in any other (a forked child), hands off.
    pid: u32,
    /// The runtime that made it, for spawns from where no runtime is current.
    handle: Option<Handle>,
    state: StdMutex<State>,
    /// Tasks whose future is still alive (running, or aborted but not yet dropped).
    live: AtomicUsize,
    /// Notified when `live` drops to zero.
    idle: Notify,
}

#[derive(Default)]
struct State {
    closed: bool,
    next: u64,
    /// The tasks that close aborts, by id (each removes itself when it ends).
    until_close: HashMap<u64, AbortHandle>,
}

/// How long [`Tasks::shutdown`] waits, at most, for the tasks to end (finishing tasks are bounded
/// by their backend; this only keeps a close from hanging on a runtime that nobody drives).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks").field("count", &self.count()).field("closed", &self.is_closed()).finish()
    }
}

/// Counts a task's future as live until it is dropped (finished or aborted).
struct Live(Arc<Inner>);

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tasks {
    /// An empty set, bound to the current runtime if there is one.
    pub fn new() -> Tasks {
        Tasks {
            inner: Arc::new(Inner {
                pid: std::process::id(),
                handle: Handle::try_current().ok(),
                state: StdMutex::new(State::default()),
                live: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True in a forked child of the process that made this set (a system call: not on hot paths).
    fn forked(&self) -> bool {
        self.inner.pid != std::process::id()
    }

    /// Spawns `work`, to run until it ends or the provider closes (then it is aborted at its next
    /// await point). Returns `false`, dropping `work` unrun, once the provider is closed, or where
    /// no runtime can run it.
    pub fn spawn<F>(&self, work: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.start(work, true)
    }

    /// Spawns `work`, which ends by itself within a bound (the backend's: a request's timeout):
    /// close waits for it rather than aborting it, and it is accepted after close too (releases and
    /// undos must land). Returns `false` only where no runtime can run it.
    pub fn spawn_finishing<F>(&self, work: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.start(work, false)
    }

    fn start<F>(&self, work: F, abort_at_close: bool) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(handle) = Handle::try_current().ok().or_else(|| self.inner.handle.clone()) else {
            tracing::warn!("no tokio runtime to run a provider's background task on");
            return false;
        };
        if !abort_at_close {
            // No bookkeeping but the count: close waits for it, never aborts it.
            self.inner.live.fetch_add(1, Ordering::SeqCst);
            let live = Live(self.inner.clone());
            drop(handle.spawn(async move {
                let _live = live;
                work.await;
            }));
            return true;
        }
        let mut state = self.state();
        if state.closed {
            return false;
        }
        let id = state.next;
        state.next += 1;
        self.inner.live.fetch_add(1, Ordering::SeqCst);
        let live = Live(self.inner.clone());
        let me = Arc::downgrade(&self.inner);
        let task = handle.spawn(async move {
            let _live = live;
            work.await;
            if let Some(inner) = me.upgrade() {
                inner.state.lock().unwrap_or_else(|p| p.into_inner()).until_close.remove(&id);
            }
        });
        // Under the lock: the task removes itself only once this is in.
        state.until_close.insert(id, task.abort_handle());
        true
    }

    /// How many tasks are alive (a diagnostic: tests assert that none is left after close).
    pub fn count(&self) -> usize {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// True once [`Tasks::shutdown`] was called.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Refuses new tasks, aborts those that run until close, and waits until every task is gone
    /// (the finishing ones have ended). Called by the core after the backend's
    /// [`crate::raw::RawProvider::close`]; backends do not call it. In a forked child it touches
    /// nothing.
    pub async fn shutdown(&self) {
        if self.forked() {
            return;
        }
        let aborts: Vec<AbortHandle> = {
            let mut state = self.state();
            state.closed = true;
            state.until_close.drain().map(|(_, a)| a).collect()
        };
        for a in aborts {
            a.abort();
        }
        let idle = async {
            loop {
                let notified = self.inner.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_LIMIT, idle).await.is_err() {
            tracing::warn!(
                left = self.count(),
                "a provider's background tasks did not end within {SHUTDOWN_LIMIT:?} of close"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_aborts_the_loops_and_waits_for_the_finishing_work() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(tasks.spawn(std::future::pending()));
        assert!(tasks.spawn_finishing(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send("landed");
        }));
        assert_eq!(tasks.count(), 2);
        tasks.shutdown().await;
        assert_eq!(tasks.count(), 0);
        assert_eq!(rx.await.unwrap(), "landed", "close let the finishing work finish");
        assert!(!tasks.spawn(async {}), "no loop after close");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(tasks.spawn_finishing(async move { drop(tx) }), "bounded work (an undo) still runs");
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn tasks_that_end_by_themselves_are_not_counted() {
        let tasks = Tasks::new();
        assert!(tasks.spawn(async {}));
        assert!(tasks.spawn_finishing(async {}));
        for _ in 0..100 {
            if tasks.count() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks.count(), 0);
        assert!(tasks.state().until_close.is_empty());
    }

    #[test]
    fn spawns_on_the_runtime_that_made_it_from_a_plain_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let tasks = rt.block_on(async { Tasks::new() });
        let (tx, rx) = std::sync::mpsc::channel();
        let t = tasks.clone();
        std::thread::spawn(move || {
            assert!(t.spawn(async move {
                let _ = tx.send(());
            }));
        })
        .join()
        .unwrap();
        rx.recv_timeout(Duration::from_secs(20)).unwrap();
        rt.block_on(tasks.shutdown());
    }
}
