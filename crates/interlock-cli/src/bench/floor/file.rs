//! The file backend's floors: raw `flock(2)` on descriptors of the same directory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use super::{ContendedFloor, DrainFloor, Floors, HandoffFloor, ManyFloor, parse_holds, task_waiters, timed};
use crate::bench::clock::now_ns;
use crate::bench::contended;
use crate::bench::handoff::{Hold, Pace};
use crate::bench::mode::Mode;
use crate::bench::spawn::{self, Clients};
use crate::bench::stats::Measured;
use crate::bench::target::Target;
use crate::bench::waiters::{self, WaiterKind};
use crate::exit::Failure;

pub(super) const FLOORS: Floors = Floors {
    backend: "file",
    uncontended: |t, mode, d| Box::pin(uncontended(t, mode, d)),
    contended: |t, clients, d| Box::pin(contended(t, clients, d)),
    waiters: |t, w, kind| Box::pin(waiters(t, w, kind)),
    handoff: |t, holds, pace| Box::pin(handoff(t, holds, pace)),
    many_locks,
    start_server: None,
};

/// The lock directory of a file target (every file target has one).
fn dir(target: &Target) -> Result<&Path, Failure> {
    target.lock_dir.as_deref().ok_or_else(|| Failure::usage("the file floors need the lock directory"))
}

async fn uncontended(target: &Target, mode: Mode, duration: Duration) -> Result<Vec<Measured>, Failure> {
    let path = dir(target)?.join(target.name("uncontended-floor"));
    let op = if mode == Mode::Read { FlockOperation::LockShared } else { FlockOperation::LockExclusive };
    let side = if mode == Mode::Read { "LOCK_SH" } else { "LOCK_EX" };
    let file = open_floor_file(&path)?;
    let pair = timed(&format!("flock({side}) + flock(LOCK_UN), open fd"), duration, || {
        flock(&file, op)?;
        flock(&file, FlockOperation::Unlock)
    })?;
    let full = timed("open + flock + unlock + close (flock(1))", duration, || {
        let f = open_floor_file(&path)?;
        flock(&f, op)?;
        flock(&f, FlockOperation::Unlock)
    })?;
    Ok(vec![pair, full])
}

async fn contended(target: &Target, clients: u32, duration: Duration) -> Result<Option<ContendedFloor>, Failure> {
    let path = dir(target)?.join(target.name("contended-floor"));
    open_floor_file(&path)?;
    let args = |counter: &Path| {
        ["--job", "contended-floor", "--file"]
            .map(String::from)
            .into_iter()
            .chain([path.display().to_string(), "--counter".into(), counter.display().to_string()])
            .chain(["--duration".into(), duration.as_secs_f64().to_string()])
            .chain(target.hold.args())
            .collect()
    };
    let (results, counter) = contended::floor_processes(clients, duration, args).await?;
    Ok(Some(("blocking flock(LOCK_EX) on an open descriptor, same critical section".into(), results, counter)))
}

async fn waiters(target: &Target, w: u32, kind: WaiterKind) -> Result<Option<DrainFloor>, Failure> {
    if kind != WaiterKind::Process {
        return task_waiters(w).await;
    }
    let path = dir(target)?.join(target.name("waiters-floor"));
    let holder = open_floor_file(&path)?;
    flock(&holder, FlockOperation::LockExclusive)?;
    let args = |_| {
        ["--job", "waiter-floor", "--file"]
            .map(String::from)
            .into_iter()
            .chain([path.display().to_string(), "--hold-us".into(), waiters::HOLD.as_micros().to_string()])
            .collect()
    };
    let mut c = Clients::start(w as usize, None, args).await?;
    c.go();
    c.wait_for("going", Duration::from_secs(120)).await?;
    tokio::time::sleep(waiters::settle(w)).await;
    let t0 = now_ns();
    flock(&holder, FlockOperation::Unlock)?;
    drop(holder);
    let lines = c.finish(Duration::from_secs(60) + Duration::from_millis(50) * w).await?;
    let mut last = t0;
    for l in &lines {
        if let [_, t] = spawn::numbers(l, "done")?[..] {
            last = last.max(t);
        }
    }
    Ok(Some(("W processes blocked in flock(LOCK_EX) (the kernel queues them)".into(), (last - t0) as f64 / 1e9)))
}

async fn handoff(target: &Target, holds: u64, pace: Pace) -> Result<Option<HandoffFloor>, Failure> {
    let path = dir(target)?.join(target.name("handoff-floor"));
    open_floor_file(&path)?;
    let args = |_| {
        let mut a: Vec<String> = vec!["--job".into(), "handoff-floor".into(), "--file".into()];
        a.push(path.display().to_string());
        a.extend(pace.args(holds));
        a
    };
    let mut clients = Clients::start(2, None, args).await?;
    clients.go();
    let lines = clients.finish(pace.limit(holds)).await?;
    let holds = lines.iter().map(|l| parse_holds(l)).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(("raw blocking flock, 2 processes (kernel wakeup)".into(), holds)))
}

fn many_locks(target: &Target, n: u64) -> Result<Option<ManyFloor>, Failure> {
    let dir = dir(target)?;
    let t = Instant::now();
    let mut files = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        let f = open_floor_file(&dir.join(format!("{}-{i}", target.name("many-locks-floor"))))?;
        flock(&f, FlockOperation::NonBlockingLockExclusive)?;
        files.push(f);
    }
    let take_all_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    drop(files);
    let release_all_s = t.elapsed().as_secs_f64();
    Ok(Some(ManyFloor {
        what: "open + flock(LOCK_EX|LOCK_NB) each file, then close".into(),
        take_all_s,
        release_all_s,
    }))
}

/// One waiter of the file floor: a blocking `flock`, hold, unlock; returns when it got the lock.
///
/// # Errors
///
/// 74 when `flock` fails.
pub fn flock_wait_once(file: &File, hold: Duration) -> Result<u64, Failure> {
    flock(file, FlockOperation::LockExclusive)?;
    let acquired = now_ns();
    std::thread::sleep(hold);
    flock(file, FlockOperation::Unlock)?;
    Ok(acquired)
}

/// Opens (creating, mode 0600) a floor's file in the lock directory, never through a symlink.
///
/// # Errors
///
/// 74 when it cannot be opened.
pub fn open_floor_file(path: &Path) -> Result<File, Failure> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Failure::io(format!("cannot open floor file {}", path.display()), e))
}

/// One client of the file handoff floor: `holds` times take `file` with a blocking `flock`, hold
/// it, release it, pause.
///
/// # Errors
///
/// 74 when `flock` fails.
pub fn flock_hold_loop(file: &File, holds: u64, pace: Pace) -> Result<Vec<Hold>, Failure> {
    let mut out = Vec::with_capacity(usize::try_from(holds).unwrap_or(0));
    for _ in 0..holds {
        flock(file, FlockOperation::LockExclusive)?;
        let acquired = now_ns();
        pace.hold_blocking();
        let released = now_ns();
        flock(file, FlockOperation::Unlock)?;
        out.push((acquired, released));
        pace.pause_blocking();
    }
    Ok(out)
}

/// `flock(2)`, retried when interrupted.
///
/// # Errors
///
/// 74 when it fails.
pub fn flock(file: &File, op: FlockOperation) -> Result<(), Failure> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Failure::io("flock", e.into())),
        }
    }
}
