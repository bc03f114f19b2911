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

/// A read lock only reads the fencing counter: on a name no writer used yet it gets token 0 and
/// creates no counter file (so it needs no write access to the directory's files).
#[tokio::test]
async fn a_reader_creates_no_counter() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let r = p.rwlock("r").unwrap().read().await.unwrap();
    assert_eq!(r.fencing_token(), Some(0));
    drop(r);
    assert_eq!(listing(tmp.path()), ["r"]);
    let w = p.rwlock("r").unwrap().write().await.unwrap();
    assert_eq!(w.fencing_token(), Some(1));
    drop(w);
    assert_eq!(p.rwlock("r").unwrap().read().await.unwrap().fencing_token(), Some(1));
}

/// Root using a directory that belongs to another user makes its files that user's, so the
/// directory's owner is never locked out of a name root used first.
#[tokio::test]
async fn files_root_creates_belong_to_the_directorys_owner() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return eprintln!("files_root_creates_belong_to_the_directorys_owner: needs root; skipped");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("theirs");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let p = provider(&dir).await;
    drop(p.mutex("m").unwrap().lock().await.unwrap());
    drop(p.semaphore("s", 2).unwrap().acquire().await.unwrap());
    let files = listing(&dir);
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let m = std::fs::symlink_metadata(dir.join(&f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{f}");
    }
    // In its own directory, root keeps its files.
    let own = tmp.path().join("own");
    drop(provider(&own).await.mutex("m").unwrap().lock().await.unwrap());
    assert_eq!(std::fs::metadata(own.join(".m.fence")).unwrap().uid(), 0);
}

/// A fencing counter that is not exactly what interlock writes (20 digits and a newline) is
/// refused with an error naming the file, by writers, readers and semaphores alike.
#[tokio::test]
async fn a_counter_that_is_not_ours_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    drop(p.mutex("c").unwrap().lock().await.unwrap());
    drop(p.semaphore("s", 2).unwrap().acquire().await.unwrap());
    let long_number = format!("{}3", " ".repeat(70));
    for bad in
        ["", " \n\t ", &long_number, "14", "00000000000000000014", "00000000000000000014\n0", "18446744073709551616\n"]
    {
        for fence in [".c.fence", ".s#sem.fence"] {
            let path = tmp.path().join(fence);
            std::fs::write(&path, bad).unwrap();
            let errs = if fence == ".c.fence" {
                vec![
                    p.mutex("c").unwrap().try_lock().await.unwrap_err(),
                    p.rwlock("c").unwrap().try_read().await.unwrap_err(),
                ]
            } else {
                vec![p.semaphore("s", 2).unwrap().try_acquire().await.unwrap_err()]
            };
            for e in errs {
                assert!(matches!(e, Error::Backend { .. }), "{bad:?}: {e:?}");
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()) && msg.contains("refusing"), "{bad:?}: {msg}");
                assert!(!msg.contains('\n'), "one line: {msg:?}");
            }
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad, "left as it was");
        }
    }
    std::fs::write(tmp.path().join(".c.fence"), "18446744073709551614\n").unwrap();
    assert_eq!(p.mutex("c").unwrap().lock().await.unwrap().fencing_token(), Some(u64::MAX));
    assert!(p.mutex("c").unwrap().lock().await.is_err(), "the counter cannot wrap");
}

/// Semaphore members bump one counter concurrently, from its first use on: every permit gets its
/// own token, and the counter file is never seen empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_use_of_a_semaphore_counter() {
    for _ in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let p = provider(tmp.path()).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let sem = p.semaphore("pool", 8).unwrap();
            tasks.push(tokio::spawn(async move { sem.acquire_timeout(EVENTUALLY).await }));
        }
        let mut guards = Vec::new();
        for t in tasks {
            guards.push(t.await.unwrap().expect("a permit"));
        }
        let mut tokens: Vec<u64> = guards.iter().map(|g| g.fencing_token().unwrap()).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, (1..=8).collect::<Vec<u64>>());
        drop(guards);
        assert!(listing(tmp.path()).iter().all(|f| !f.ends_with(".tmp")), "{:?}", listing(tmp.path()));
    }
}

/// Another tool holding one of a semaphore's internal files (its metadata file, or its fencing
/// counter): a single try reports contention instead of waiting for it, and a timed acquisition
/// times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_does_not_wait_for_a_semaphores_internal_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let sem = p.semaphore("x", 2).unwrap();
    drop(sem.acquire().await.unwrap());
    for internal in ["x#sem", ".x#sem.fence"] {
        let foreign = File::open(tmp.path().join(internal)).unwrap();
        rustix::fs::flock(&foreign, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let tried = tokio::time::timeout(EVENTUALLY, sem.try_acquire()).await.expect("a try does not wait");
        assert!(tried.unwrap().is_none(), "{internal}: contention");
        let timed = tokio::time::timeout(EVENTUALLY, sem.acquire_timeout(Duration::from_millis(300))).await;
        assert!(timed.expect("bounded").unwrap_err().is_timeout(), "{internal}");
        drop(foreign);
        drop(sem.try_acquire().await.unwrap().expect("free again"));
    }
}

/// A peer holding `dir/name` exclusively, as `flock(1)` would; unlocks when dropped.
fn peer_holding(dir: &Path, name: &str) -> File {
    let f = File::create(dir.join(name)).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
    f
}

/// A waiter that gave up (deadline) leaves a wait blocked in the kernel; when the lock comes to
/// it, it is unlocked at once (a "ghost" hold), so a peer waiting behind it gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_wait_in_the_kernel_passes_the_lock_on() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let holder = peer_holding(tmp.path(), "ghost");
    let before = interlock::file::ghost_stats();
    let e = p.mutex("ghost").unwrap().lock_timeout(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    // A second peer queues in the kernel behind our abandoned wait.
    let path = tmp.path().join("ghost");
    let second = std::thread::spawn(move || {
        let f = File::open(path).unwrap();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
        f
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(holder);
    let second = tokio::task::spawn_blocking(move || second.join().unwrap()).await.unwrap();
    let after = interlock::file::ghost_stats();
    assert!(after.holds > before.holds, "the abandoned wait got the lock and let it go: {before:?} {after:?}");
    assert!(after.longest < Duration::from_secs(1), "{after:?}");
    assert!(p.mutex("ghost").unwrap().try_lock().await.unwrap().is_none(), "the second peer holds it");
    drop(second);
    drop(p.mutex("ghost").unwrap().try_lock().await.unwrap().expect("free once the peer is gone"));
}

/// A new waiter of the same process takes over an abandoned wait on the same file (keeping its
/// place in the kernel's queue) instead of queueing a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_waiter_adopts_an_abandoned_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let holder = peer_holding(tmp.path(), "adopt");
    let m = p.mutex("adopt").unwrap();
    assert!(m.lock_timeout(Duration::from_millis(30)).await.is_err());
    let before = interlock::file::ghost_stats();
    let m2 = m.clone();
    let waiter = tokio::spawn(async move { m2.lock_timeout(EVENTUALLY).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(interlock::file::ghost_stats().adopted > before.adopted);
    drop(holder);
    let g = waiter.await.unwrap().expect("the adopting waiter gets the lock");
    let other = provider(tmp.path()).await;
    assert!(other.mutex("adopt").unwrap().try_lock().await.unwrap().is_none(), "and holds it");
    drop(g);
}

/// More waits than the pool's threads (64): the rest wait with inotify, and every one gets its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_past_the_pool_bound_still_get_their_locks() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let n = 80;
    let holders: Vec<File> = (0..n).map(|i| peer_holding(tmp.path(), &format!("many-{i}"))).collect();
    let mut waiters = Vec::new();
    for i in 0..n {
        let m = p.mutex(format!("many-{i}")).unwrap();
        waiters.push(tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(holders);
    for w in waiters {
        drop(w.await.unwrap().expect("acquired"));
    }
}

/// The blocking API waits forever on the caller's own thread, in the kernel.
#[test]
fn the_blocking_api_waits_in_the_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let p = interlock::blocking::connect(&format!("file://{}", tmp.path().display())).unwrap();
    let holder = peer_holding(tmp.path(), "b");
    let m = p.mutex("b").unwrap();
    let waiter = std::thread::spawn(move || {
        let g = m.lock().unwrap();
        let token = g.fencing_token();
        g.release().unwrap();
        token
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished());
    drop(holder);
    assert_eq!(waiter.join().unwrap(), Some(1));
}

/// A provider reuses a released lock file's descriptor for its next guard; a descriptor that was
/// handed out (`lock_fds`, as `interlock run` does) is never reused: a process still holding the
/// copy must not share the next guard's open file description (it would "lock" it too).
#[tokio::test]
async fn a_handed_out_descriptor_is_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let m = p.mutex("out").unwrap();
    let g = m.lock().await.unwrap();
    let fds = g.lock_fds().unwrap();
    g.release().await.unwrap();
    let g2 = m.lock().await.unwrap();
    let copy = fds.first().expect("one descriptor");
    let e = rustix::fs::flock(copy, rustix::fs::FlockOperation::NonBlockingLockExclusive);
    assert_eq!(e, Err(rustix::io::Errno::WOULDBLOCK), "the copy is another open file description");
    drop(g2);
}

/// A kept descriptor whose file was deleted meanwhile is noticed: the provider locks the file at
/// the path, never the orphan.
#[tokio::test]
async fn a_kept_descriptor_of_a_deleted_file_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path()).await;
    let m = p.mutex("gone").unwrap();
    m.lock().await.unwrap().release().await.unwrap();
    std::fs::remove_file(tmp.path().join("gone")).unwrap();
    let peer = peer_holding(tmp.path(), "gone");
    assert!(m.try_lock().await.unwrap().is_none(), "the peer holds the file at the path");
    drop(peer);
    let g = m.try_lock().await.unwrap().expect("free");
    assert!(
        rustix::fs::flock(
            File::open(tmp.path().join("gone")).unwrap(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        )
        .is_err(),
        "our guard holds the file at the path"
    );
    drop(g);
}
