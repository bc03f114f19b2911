//! file:// and fork(): no descriptor of a lock file, fencing counter or inotify watch of the file
//! backend survives into a forked child, so a lock never outlives its holder inside a child that
//! never uses interlock (a multiprocessing or uWSGI worker): kept (cached) descriptors, held
//! guards, waits in progress in the kernel, the fencing counter cache, the inotify instance.
//!
//! Children forked by this (multi-threaded) test process only call async-signal-safe functions
//! (`write`, `close`, `alarm`, `pause`) and are SIGKILLed by the test; they say when they run,
//! since the fork handlers under test run in the child before `fork` returns there. Holders that
//! must die with a live child are helper processes: this test binary run again with
//! `INTERLOCK_FORK_HELPER` set (the `helper` test below, which does nothing otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EVENTUALLY: Duration = Duration::from_secs(20);

/// A forked copy of this process that only waits for its SIGKILL (sent on drop).
struct Forked(i32);

impl Forked {
    /// Forks; returns once the child runs (its fork handlers are done by then).
    #[allow(unsafe_code)]
    fn start() -> Forked {
        let mut pipe = [0; 2];
        // SAFETY: a plain system call on a local array of two descriptors.
        assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let [ready, tell] = pipe;
        // SAFETY: the child only calls async-signal-safe functions (`write`, `close`, `alarm`,
        // `pause`), as a child of a multi-threaded process must.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above. No pipe of the test's is kept open by a child that outlives it,
            // and a child that was never killed (its test crashed) ends on its own.
            unsafe {
                libc::write(tell, [1u8].as_ptr().cast(), 1);
                for fd in [ready, tell, 0, 1, 2] {
                    libc::close(fd);
                }
                libc::alarm(120);
            }
            loop {
                // SAFETY: async-signal-safe; the parent ends the child with SIGKILL.
                unsafe { libc::pause() };
            }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let mut byte = 0u8;
        // SAFETY: plain system calls on the pipe made above.
        unsafe {
            libc::close(tell);
            assert_eq!(libc::read(ready, (&raw mut byte).cast(), 1), 1, "the child did not start");
            libc::close(ready);
        }
        Forked(pid)
    }
}

impl Drop for Forked {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: plain system calls on our own child's pid.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// What the descriptors of process `pid` point at.
fn fd_targets(pid: i32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect()
}

/// The descriptors of process `pid` open on files of `dir`.
fn fds_in(pid: i32, dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut v: Vec<String> = fd_targets(pid).into_iter().filter(|t| t.starts_with(&prefix)).collect();
    v.sort();
    v
}

/// How many `flock` requests process `pid` has blocked in the kernel (`N: -> FLOCK ...` lines).
fn blocked_in_kernel(pid: i32) -> usize {
    let pid = pid.to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5 && f[1] == "->" && f[2] == "FLOCK" && f[5] == pid
        })
        .count()
}

fn inotify_fds(pid: i32) -> usize {
    fd_targets(pid).iter().filter(|t| t.contains("inotify")).count()
}

fn me() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

#[test]
fn a_child_inherits_no_kept_descriptor() {
    let tmp = tempfile::tempdir().unwrap();
    let locks = interlock::blocking::connect(&url(tmp.path())).unwrap();
    // Released guards leave their lock file's and fencing counter's descriptors kept open (the
    // counter's from the second acquisition on: the first creates it).
    for name in ["a", "b", "c", "a", "b", "c"] {
        locks.mutex(name).unwrap().lock().unwrap().release().unwrap();
    }
    let kept = fds_in(me(), tmp.path());
    assert!(kept.iter().any(|f| f.ends_with("/a")) && kept.iter().any(|f| f.ends_with("/.a.fence")), "{kept:?}");
    let child = Forked::start();
    assert_eq!(fds_in(child.0, tmp.path()), Vec::<String>::new(), "the child inherited {kept:?}");
    // The parent's are untouched, and still work.
    assert_eq!(fds_in(me(), tmp.path()), kept);
    let g = locks.mutex("a").unwrap().try_lock().unwrap().expect("free");
    assert_eq!(g.fencing_token(), Some(3));
}

#[test]
fn a_child_inherits_no_held_guard_and_no_counter() {
    let tmp = tempfile::tempdir().unwrap();
    let locks = interlock::blocking::connect(&url(tmp.path())).unwrap();
    let m = locks.mutex("job").unwrap().lock().unwrap();
    let r = locks.rwlock("doc").unwrap().read().unwrap();
    let s = locks.semaphore("pool", 2).unwrap().acquire().unwrap();
    let held = fds_in(me(), tmp.path());
    assert!(held.len() >= 4, "{held:?}");
    let child = Forked::start();
    assert_eq!(fds_in(child.0, tmp.path()), Vec::<String>::new(), "the child inherited {held:?}");
    // The parent still holds them all: another process's attempt fails.
    let other = std::fs::File::open(tmp.path().join("job")).unwrap();
    assert!(other.try_lock().is_err());
    drop((m, r, s));
    other.try_lock().unwrap();
}

#[test]
fn a_child_inherits_no_wait_in_progress_and_no_inotify_instance() {
    let tmp = tempfile::tempdir().unwrap();
    // One provider per waiter: waiters of one provider for one name queue in the process, and
    // only the first waits at the backend.
    let connect = || interlock::blocking::connect(&url(tmp.path())).unwrap();
    let (a, b, c) = (connect(), connect(), connect());
    // Held by another open file description of ours: the waiters below wait for it.
    let holder = std::fs::File::create(tmp.path().join("job")).unwrap();
    holder.lock().unwrap();
    let permit = a.semaphore("pool", 1).unwrap().acquire().unwrap();
    let (started, inherited, child_inotify) = std::thread::scope(|scope| {
        // A wait in the kernel on a pool thread (a deadline), one on its own thread (none), and
        // a semaphore waiter on inotify.
        let waits = [
            scope.spawn(|| drop(a.mutex("job").unwrap().lock_timeout(EVENTUALLY).unwrap())),
            scope.spawn(|| drop(b.mutex("job").unwrap().lock().unwrap())),
            scope.spawn(|| drop(c.semaphore("pool", 1).unwrap().acquire_timeout(EVENTUALLY).unwrap())),
        ];
        let start = Instant::now();
        // Two requests blocked in flock, the permit's waiter watching with inotify.
        let started = loop {
            if blocked_in_kernel(me()) == 2 && inotify_fds(me()) == 1 {
                break true;
            }
            if start.elapsed() > EVENTUALLY {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let child = Forked::start();
        let seen = (started, fds_in(child.0, tmp.path()), inotify_fds(child.0));
        drop(child);
        // (Asserted once the waits are done: a panic here would leave them waiting forever.)
        holder.unlock().unwrap();
        drop(permit);
        for w in waits {
            w.join().unwrap();
        }
        seen
    });
    assert!(started, "the waits did not start");
    // The holder's own descriptor is the test's, not the backend's: the child keeps that one.
    assert_eq!(inherited, [format!("{}/job", tmp.path().display())], "the child inherited the waits'");
    assert_eq!(child_inotify, 0, "the child inherited the inotify instance");
}

/// A Rust program that forks and then goes on using interlock in the child: the child's guards
/// and waits are its own, its inherited ones are forgotten (never unlocked, never closed twice).
#[test]
fn a_child_that_uses_interlock_gets_its_own_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_helper("child-uses", tmp.path());
    assert_eq!(out, ["parent-still-holds", "child-ok"], "{out:?}");
}

/// The holder (a helper process) forks a child that lives on, then is SIGKILLed: the lock is free
/// at once, while the child still lives, and the child has no descriptor of the lock directory.
fn kill_9_of_holder_with_a_live_child(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let locks = interlock::blocking::connect(&url(tmp.path())).unwrap();
    // "waiting": the helper waits for a lock we hold (taken before it starts), forks meanwhile,
    // then gets it when we release.
    let ours = (mode == "waiting").then(|| locks.mutex("job").unwrap().lock().unwrap());
    let mut h = Helper::start(mode, tmp.path());
    if let Some(g) = ours {
        h.expect("waiting");
        h.expect("forked");
        g.release().unwrap();
    }
    h.expect("held");
    let child = h.forked_child();
    assert!(locks.mutex("job").unwrap().try_lock().unwrap().is_none(), "the helper holds it");
    h.kill9();
    assert!(Path::new(&format!("/proc/{child}")).exists(), "the child lives");
    let got = locks.mutex("job").unwrap().try_lock().unwrap();
    assert!(got.is_some(), "{mode}: the lock outlived its SIGKILLed holder in its child {child}");
    assert_eq!(fds_in(child, tmp.path()), Vec::<String>::new());
}

#[test]
fn kill_9_of_a_holder_whose_child_forked_after_a_cached_reuse() {
    kill_9_of_holder_with_a_live_child("cached");
}

#[test]
fn kill_9_of_a_holder_whose_child_forked_while_it_held() {
    kill_9_of_holder_with_a_live_child("held");
}

#[test]
fn kill_9_of_a_holder_whose_child_forked_while_it_waited_in_the_kernel() {
    kill_9_of_holder_with_a_live_child("waiting");
}

/// A helper process (this binary, running the `helper` test in the given mode).
struct Helper {
    proc: Child,
    out: BufReader<std::process::ChildStdout>,
    child: Option<i32>,
}

impl Helper {
    fn start(mode: &str, dir: &Path) -> Helper {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
            .env("INTERLOCK_FORK_HELPER", mode)
            .env("INTERLOCK_URL", url(dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(proc.stdout.take().unwrap());
        Helper { proc, out, child: None }
    }

    /// The helper's next report line (`HELPER word`), skipping the test harness's own lines;
    /// `child=PID` lines are recorded in `self.child`.
    fn next(&mut self) -> String {
        loop {
            let mut line = String::new();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "the helper ended early");
            // (The test harness may have begun the line: `test helper ... `.)
            let Some((_, word)) = line.trim().split_once("HELPER ") else { continue };
            match word.strip_prefix("child=") {
                Some(pid) => self.child = Some(pid.parse().unwrap()),
                None => return word.to_owned(),
            }
        }
    }

    fn expect(&mut self, word: &str) {
        assert_eq!(self.next(), word);
    }

    /// The pid of the child the helper forked (reported before its next word).
    fn forked_child(&mut self) -> i32 {
        self.child.expect("the helper reported no child")
    }

    fn kill9(&mut self) {
        self.proc.kill().unwrap();
        self.proc.wait().unwrap();
    }
}

impl Drop for Helper {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        if let Some(child) = self.child {
            // SAFETY: a plain system call; the child was re-parented, so it is not ours to reap.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
    }
}

/// Runs a helper to its end and returns its report lines.
fn run_helper(mode: &str, dir: &Path) -> Vec<String> {
    let mut h = Helper::start(mode, dir);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if h.out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some((_, word)) = line.trim().split_once("HELPER ") {
            lines.push(word.to_owned());
        }
    }
    assert!(h.proc.wait().unwrap().success(), "helper {mode} failed");
    lines
}

fn report(word: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "HELPER {word}").unwrap();
    out.flush().unwrap();
}

/// Forks a child that only sleeps; reports its pid.
fn fork_sleeper() {
    let child = Forked::start();
    report(&format!("child={}", child.0));
    // Left running: the test kills it once it has checked it.
    std::mem::forget(child);
}

/// The helper process's side (does nothing in a normal run).
#[test]
#[allow(unsafe_code)]
fn helper() {
    let Ok(mode) = std::env::var("INTERLOCK_FORK_HELPER") else { return };
    let url = std::env::var("INTERLOCK_URL").unwrap();
    let locks = interlock::blocking::connect(&url).unwrap();
    let m = locks.mutex("job").unwrap();
    match mode.as_str() {
        "cached" => {
            // Taken and released (the descriptor is kept), forked, taken again with the kept
            // descriptor: the open file description the child would share.
            m.lock().unwrap().release().unwrap();
            fork_sleeper();
            let g = m.lock().unwrap();
            report("held");
            std::mem::forget(g);
        }
        "held" => {
            let g = m.lock().unwrap();
            fork_sleeper();
            report("held");
            std::mem::forget(g);
        }
        "waiting" => {
            // Waits in the kernel on this thread (no deadline); another thread forks meanwhile.
            std::thread::spawn(|| {
                let start = Instant::now();
                while blocked_in_kernel(me()) == 0 {
                    if start.elapsed() > EVENTUALLY {
                        // Ends the helper: the test sees its output end instead of waiting.
                        eprintln!("the wait did not start");
                        std::process::exit(1);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                report("waiting");
                fork_sleeper();
                report("forked");
            });
            let g = m.lock().unwrap();
            report("held");
            std::mem::forget(g);
        }
        "child-uses" => {
            m.lock().unwrap().release().unwrap(); // a kept descriptor
            let g = m.lock().unwrap();
            let (mut checked, mut tell) = std::io::pipe().unwrap();
            // SAFETY: the child goes on in Rust, in a single-threaded copy of this process; it
            // uses only the blocking facade, which makes its own runtime and threads.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let locks = interlock::blocking::connect(&url).unwrap();
                    let m = locks.mutex("job").unwrap();
                    assert!(m.try_lock().unwrap().is_none(), "the parent's lock is not the child's");
                    let other = locks.mutex("other").unwrap().lock().unwrap();
                    other.release().unwrap();
                    // The inherited guard, dropped in the child: forgotten, the parent's lock kept.
                    drop(g);
                    assert!(m.try_lock().unwrap().is_none(), "the child's drop unlocked the parent's lock");
                    // ... and closed nothing of the child's own (its descriptor number, closed at
                    // the fork, may have been reused by the child's own kept descriptors).
                    let again = locks.mutex("other").unwrap().try_lock().unwrap().expect("free");
                    again.release().unwrap();
                    tell.write_all(b"1").unwrap();
                    // Its own wait, woken by the parent's release.
                    let waited = m.lock_timeout(EVENTUALLY).unwrap();
                    assert!(waited.fencing_token() > Some(2));
                    report("child-ok");
                }))
                .map_or(1, |()| 0);
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(code) };
            }
            drop(tell);
            let mut byte = [0u8];
            checked.read_exact(&mut byte).expect("the child failed its checks");
            assert!(m.try_lock().unwrap().is_none());
            report("parent-still-holds");
            g.release().unwrap();
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
            return;
        }
        other => panic!("unknown helper mode {other}"),
    }
    // Holds until killed.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}
