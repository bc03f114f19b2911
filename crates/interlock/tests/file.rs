//! file:// specifics: the files it creates, tools that truncate or delete lock files, symlinks and
//! FIFOs, names that try to escape, peers that unlock without closing. (The shared contract is in
//! the conformance suite; interop with flock(1) and Python is in the CLI's tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use interlock::{Error, Provider};

const EVENTUALLY: Duration = Duration::from_secs(20);

async fn provider(dir: &Path) -> Provider {
    interlock::connect(&format!("file://{}", dir.display())).await.unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn creates_the_documented_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    drop(p.mutex("deploy").unwrap().lock().await.unwrap());
    let pool = p.semaphore("pool", 2).unwrap();
    // Permit files are created as they are first tried: holding both creates both.
    let held = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    drop(held);
    assert_eq!(
        listing(tmp.path()),
        [".deploy.fence", ".pool#sem.fence", "deploy", "pool#sem", "pool#sem.0", "pool#sem.1"]
    );
}

#[tokio::test]
async fn names_cannot_escape_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    let p = provider(&dir).await;
    for name in ["../escape", "../../etc/passwd", "/abs", "..", "."] {
        drop(p.mutex(name).unwrap().lock().await.unwrap());
    }
    assert_eq!(listing(tmp.path()), ["locks"], "nothing created outside the lock directory");
    assert!(listing(&dir).iter().all(|f| !f.contains('/')));
}

#[tokio::test]
async fn tokens_survive_tools_that_truncate_or_rewrite_the_lock_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let m = p.mutex("t").unwrap();
    let t1 = m.lock().await.unwrap().fencing_token().unwrap();
    std::fs::write(tmp.path().join("t"), b"12345 pid file written by another tool\n").unwrap();
    let t2 = m.lock().await.unwrap().fencing_token().unwrap();
    File::create(tmp.path().join("t")).unwrap(); // truncate
    let t3 = m.lock().await.unwrap().fencing_token().unwrap();
    assert!(t1 < t2 && t2 < t3, "{t1} {t2} {t3}");
    // And across a "restart" (a new provider).
    let t4 = provider(tmp.path()).await.mutex("t").unwrap().lock().await.unwrap().fencing_token().unwrap();
    assert!(t4 > t3);
}

#[tokio::test]
async fn refuses_symlinks_and_special_files() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    let dir = tmp.path().join("locks");
    let p = provider(&dir).await;
    std::fs::create_dir(&dir).unwrap(); // connect creates nothing; here the test plants files first
    std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
    let e = p.mutex("link").unwrap().try_lock().await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(!target.exists(), "nothing is created through a symlink");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o600),
        0,
    )
    .unwrap();
    let e = tokio::time::timeout(EVENTUALLY, p.mutex("fifo").unwrap().try_lock()).await.expect("no hang").unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    std::fs::create_dir(dir.join("adir")).unwrap();
    assert!(p.mutex("adir").unwrap().try_lock().await.is_err());
}

/// Someone deletes the lock file while we wait (some tools unlink lock files on release). The
/// old holder now holds an orphaned inode that excludes nobody (true of every flock-based tool:
/// never delete a lock file in use); what interlock guarantees is that the waiter notices, locks
/// the file that is at the path now, and so still excludes everyone who comes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_follows_a_deleted_lock_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (p1, p2, p3) = (provider(tmp.path()).await, provider(tmp.path()).await, provider(tmp.path()).await);
    let a = p1.mutex("x").unwrap().lock().await.unwrap();
    let m = p2.mutex("x").unwrap();
    let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::remove_file(tmp.path().join("x")).unwrap();
    let b = waiter.await.unwrap().expect("the waiter takes the new file at the path");
    assert!(p3.mutex("x").unwrap().try_lock().await.unwrap().is_none(), "the waiter holds the file at the path");
    drop((a, b));
    drop(p3.mutex("x").unwrap().try_lock().await.unwrap().expect("free"));
}

/// A peer that unlocks without closing sends no inotify event; the bounded re-check catches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_unlocking_without_close_is_noticed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let peer = File::create(tmp.path().join("u")).unwrap();
    rustix::fs::flock(&peer, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let m = p.mutex("u").unwrap();
    let waiter = tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    rustix::fs::flock(&peer, rustix::fs::FlockOperation::Unlock).unwrap();
    drop(waiter.await.unwrap().expect("acquired after the peer's LOCK_UN"));
    drop(peer);
}

/// `status` names the holder process from /proc/locks, and semaphores report their permits.
#[tokio::test]
async fn status_names_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let g = p.mutex("s").unwrap().lock().await.unwrap();
    let st = p.status("s").await.unwrap();
    assert_eq!(st.holders, [format!("pid {} (exclusive)", std::process::id())]);
    assert_eq!(st.location.as_deref(), Some(tmp.path().join("s").to_str().unwrap()));
    drop(g);
    let sem = p.semaphore("pool", 3).unwrap();
    let (a, b) = (sem.acquire().await.unwrap(), sem.acquire().await.unwrap());
    let st = p.status("pool").await.unwrap();
    assert_eq!((st.permits, st.held), (Some(3), Some(interlock::HeldMode::Shared(2))));
    drop((a, b));
}

#[tokio::test]
async fn semaphore_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let e = p.semaphore("big", 5000).unwrap().try_acquire().await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

/// In a directory shared between users on purpose, the counter and metadata files get the write
/// bits the directory grants, so the other users can take the same locks.
#[tokio::test]
async fn shared_directories_get_shared_sidecars() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let p = provider(&shared).await;
    drop(p.mutex("m").unwrap().lock().await.unwrap());
    drop(p.semaphore("s", 2).unwrap().acquire().await.unwrap());
    for f in [".m.fence", "s#sem", ".s#sem.fence"] {
        let mode = std::fs::metadata(shared.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o666, 0o666, "{f}: {mode:o}");
    }
    let private = tmp.path().join("private");
    let p = provider(&private).await;
    drop(p.mutex("m").unwrap().lock().await.unwrap());
    let mode = std::fs::metadata(private.join(".m.fence")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o066 & !0o044, 0, "private directory, no group/other write: {mode:o}");
}
