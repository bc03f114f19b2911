//! The file backend's pool of waits in the kernel (at most 64 per process), alone in this test
//! binary: the pool belongs to the process, so tests running beside this one would take its room.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs::File;
use std::time::{Duration, Instant};

const EVENTUALLY: Duration = Duration::from_secs(20);

/// `(major, minor, inode)` of an open file, as /proc/locks shows it.
fn file_key(f: &File) -> (u32, u32, u64) {
    let st = rustix::fs::fstat(f).unwrap();
    (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev), st.st_ino)
}

/// How many of `files` this process waits for in a blocked `flock` (`N: -> FLOCK ...` lines).
fn blocked_in_kernel(files: &HashSet<(u32, u32, u64)>) -> usize {
    let pid = std::process::id().to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 7 || f[1] != "->" || f[2] != "FLOCK" || f[5] != pid {
                return false;
            }
            let mut dev = f[6].split(':');
            let key = (|| {
                let major = u32::from_str_radix(dev.next()?, 16).ok()?;
                let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
                Some((major, minor, dev.next()?.parse().ok()?))
            })();
            key.is_some_and(|k| files.contains(&k))
        })
        .count()
}

/// Waiters the pool turned away (more than 64 at once) wait with inotify, and come back to wait
/// in the kernel as soon as waits end: every remaining waiter is then blocked in `flock`, so a
/// release that sends no inotify event (`LOCK_UN` without a close, as a provider's kept
/// descriptors do) reaches each of them at once rather than at the 100 ms re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_turned_away_come_back_to_the_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let p = interlock::connect(&format!("file://{}", tmp.path().display())).await.unwrap();
    let (n, first) = (74, 10);
    let holders: Vec<File> = (0..n)
        .map(|i| {
            let f = File::create(tmp.path().join(format!("n{i}"))).unwrap();
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
            f
        })
        .collect();
    let mut waiters = Vec::new();
    for i in 0..n {
        let m = p.mutex(format!("n{i}")).unwrap();
        waiters.push(tokio::spawn(async move { m.lock_timeout(EVENTUALLY).await }));
    }
    let all: HashSet<_> = holders.iter().map(file_key).collect();
    let rest: HashSet<_> = holders[first..].iter().map(file_key).collect();
    let until = |want: usize, of: HashSet<(u32, u32, u64)>, what: &'static str| async move {
        let deadline = Instant::now() + EVENTUALLY;
        while blocked_in_kernel(&of) != want {
            assert!(Instant::now() < deadline, "{what}: {} of {want} blocked in flock", blocked_in_kernel(&of));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    until(64, all, "the pool is full").await;

    // The first holders close: their waiters get their locks, and the waits that end make room
    // for the ones turned away.
    let mut holders = holders.into_iter();
    drop(holders.by_ref().take(first).collect::<Vec<_>>());
    let mut guards = Vec::new();
    for w in waiters.drain(..first) {
        guards.push(w.await.unwrap().expect("acquired"));
    }
    until(n - first, rest, "every remaining waiter back in the kernel").await;

    // The rest unlock without closing: the kernel wakes each waiter.
    let rest: Vec<File> = holders.collect();
    for f in &rest {
        rustix::fs::flock(f, rustix::fs::FlockOperation::Unlock).unwrap();
    }
    for w in waiters {
        guards.push(w.await.unwrap().expect("acquired"));
    }
    assert_eq!(guards.len(), n);
}
