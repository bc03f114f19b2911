//! The provider's own life: `close()`, and closing when the last handle goes, never under a held
//! lock. A backend of the test's own counts what the core asks of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use interlock::raw::{BoxFuture, Capabilities, LeaseConfig, RawHeld, RawProvider, Request, Wait};
use interlock::{Error, LockName, LockStatus, Provider};

/// A backend that grants every request and counts `close()` calls.
#[derive(Debug, Default)]
struct Counting {
    closes: AtomicUsize,
}

#[derive(Debug)]
struct Granted;

impl RawHeld for Granted {
    fn fencing_token(&self) -> Option<u64> {
        Some(1)
    }

    fn release(&self) -> BoxFuture<'_, interlock::Result<bool>> {
        Box::pin(async { Ok(true) })
    }
}

impl RawProvider for Counting {
    fn backend(&self) -> &'static str {
        "counting"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(false, false, true)
    }

    fn acquire(&self, _: Request, _: Wait) -> BoxFuture<'_, interlock::Result<Option<Arc<dyn RawHeld>>>> {
        Box::pin(async { Ok(Some(Arc::new(Granted) as Arc<dyn RawHeld>)) })
    }

    fn status<'a>(&'a self, _: &'a LockName) -> BoxFuture<'a, interlock::Result<LockStatus>> {
        Box::pin(async { Ok(LockStatus::free()) })
    }

    fn close(&self) -> BoxFuture<'_, interlock::Result<()>> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

fn provider() -> (Provider, Arc<Counting>) {
    let raw = Arc::new(Counting::default());
    let lease = LeaseConfig::new(Duration::from_secs(10), Duration::from_secs(3)).unwrap();
    (Provider::from_raw(raw.clone(), Some(lease), "counting://".into()), raw)
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn close_stops_the_backend_once_and_refuses_later_acquisitions() {
    let (p, raw) = provider();
    let clone = p.clone();
    assert!(!p.is_closed());
    p.close().await.unwrap();
    p.close().await.unwrap();
    assert_eq!(raw.closes.load(Ordering::SeqCst), 1, "closed once");
    assert!(clone.is_closed(), "clones share the provider");
    let e = clone.mutex("x").unwrap().try_lock().await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }) && e.to_string().contains("closed"), "{e}");
    drop((p, clone));
    tokio::task::yield_now().await;
    assert_eq!(raw.closes.load(Ordering::SeqCst), 1, "dropping a closed provider does not close it again");
}

#[tokio::test]
async fn the_last_handle_closes_the_backend_but_never_under_a_held_lock() {
    let (p, raw) = provider();
    let guard = p.mutex("x").unwrap().lock().await.unwrap();
    drop(p);
    tokio::task::yield_now().await;
    assert_eq!(raw.closes.load(Ordering::SeqCst), 0, "a held lock keeps its provider open");
    guard.release().await.unwrap();
    eventually("closed once the last guard is gone", || raw.closes.load(Ordering::SeqCst) == 1).await;

    let (p, raw) = provider();
    drop(p.mutex("y").unwrap().lock().await.unwrap());
    drop(p);
    eventually("closed when the last handle is dropped", || raw.closes.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn file_and_memory_providers_close() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["memory://close-test".to_owned(), format!("file://{}", dir.path().display())] {
        let p = interlock::connect(&url).await.unwrap();
        let g = p.mutex("x").unwrap().lock().await.unwrap();
        p.close().await.unwrap();
        // Neither holds its locks on a connection: the guard is still good.
        assert!(!g.is_lost(), "{url}");
        g.release().await.unwrap();
        assert!(p.mutex("x").unwrap().lock().await.is_err(), "{url}");
    }
}

#[test]
fn the_blocking_facade_closes_too() {
    let p = interlock::blocking::connect("memory://close-blocking").unwrap();
    p.close().unwrap();
    assert!(p.mutex("x").unwrap().try_lock().is_err());
}

/// A backend without read-write locks or semaphores never sees a request for one: the core
/// refuses it with `Unsupported`, naming the backend.
#[tokio::test]
async fn primitives_a_backend_lacks_are_refused_by_the_core() {
    #[derive(Debug, Default)]
    struct MutexOnly(Counting);
    impl RawProvider for MutexOnly {
        fn backend(&self) -> &'static str {
            "mutex-only"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::new(false, false, true).without_rwlock().without_semaphore()
        }
        fn acquire(&self, r: Request, w: Wait) -> BoxFuture<'_, interlock::Result<Option<Arc<dyn RawHeld>>>> {
            assert!(!matches!(r.kind, interlock::LockKind::Read | interlock::LockKind::Semaphore { .. }), "{r:?}");
            self.0.acquire(r, w)
        }
        fn status<'a>(&'a self, name: &'a LockName) -> BoxFuture<'a, interlock::Result<LockStatus>> {
            self.0.status(name)
        }
    }
    let lease = LeaseConfig::new(Duration::from_secs(10), Duration::from_secs(3)).unwrap();
    let p = Provider::from_raw(Arc::new(MutexOnly::default()), Some(lease), "mutex-only://".into());
    for e in [
        p.rwlock("x").unwrap().try_read().await.unwrap_err(),
        p.semaphore("x", 2).unwrap().try_acquire().await.unwrap_err(),
    ] {
        assert!(matches!(e, Error::Unsupported { backend: "mutex-only", .. }), "{e}");
    }
    p.mutex("x").unwrap().try_lock().await.unwrap().unwrap().release().await.unwrap();
    p.rwlock("x").unwrap().try_write().await.unwrap().unwrap().release().await.unwrap();
}

/// `connect` gives up on a backend that does not connect within `connect_timeout`, with one
/// `Unavailable` line that names the option; a slow one within the limit connects.
#[tokio::test]
async fn connect_gives_up_after_the_connect_timeout() {
    let started = Instant::now();
    let e = interlock::connect("memory://slow?connect_delay=30s&connect_timeout=200ms").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20), "it waited for the backend");
    assert!(matches!(e, Error::Unavailable { backend: "memory", .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("connect_timeout") && !text.contains('\n'), "{text}");
    interlock::connect("memory://slow?connect_delay=50ms&connect_timeout=20s").await.unwrap();
}
