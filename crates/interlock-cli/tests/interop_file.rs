//! The file backend against the real peer tools: `flock(1)` from util-linux and Python's
//! `fcntl.flock`. A missing tool skips its tests loudly, or fails them under
//! `INTERLOCK_TEST_REQUIRE=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::process::Command;
use std::time::Duration;

use cli_support::{LockDir, Proc, hold, interlock, run};

const FLOCK: &str = "flock";
const PYTHON: &str = "python3";

fn have_flock() -> bool {
    cli_support::require_tool(FLOCK, &["--version"])
}

fn have_python() -> bool {
    cli_support::require_tool(PYTHON, &["-c", "import fcntl"])
}

/// `flock [-s] FILE` holding the lock until its stdin closes; returns once it holds it.
fn flock_holder(d: &LockDir, name: &str, shared: bool) -> Proc {
    let mut c = Command::new(FLOCK);
    if shared {
        c.arg("-s");
    }
    c.arg(d.path(name)).args(["sh", "-c", "echo locked; cat >/dev/null"]);
    let p = Proc::spawn(c);
    assert_eq!(p.line(), "locked");
    p
}

/// `flock -n [-s] FILE true`: true if it got the lock.
fn flock_try(d: &LockDir, name: &str, shared: bool) -> bool {
    let mut c = Command::new(FLOCK);
    c.arg("-n");
    if shared {
        c.arg("-s");
    }
    c.arg(d.path(name)).arg("true");
    let out = cli_support::output(c);
    match out.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("flock -n exited {other:?}: {}", out.stderr),
    }
}

/// A Python program that takes `fcntl.flock(f, LOCK_EX)` on the lock file and says `locked`.
/// On a stdin line `unlock` it calls `LOCK_UN` but keeps the file open, and says `unlocked`; it
/// exits at end of stdin.
const PY_HOLDER: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
for line in sys.stdin:
    if line.strip() == "unlock":
        fcntl.flock(f, fcntl.LOCK_UN)
        print("unlocked", flush=True)
"#;

/// A Python program that tries `LOCK_EX | LOCK_NB` once: exit 0 if it got the lock, 3 if not.
const PY_TRY: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "a")
try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
"#;

fn python_holder(d: &LockDir, name: &str) -> Proc {
    let mut c = Command::new(PYTHON);
    c.args(["-c", PY_HOLDER]).arg(d.path(name));
    let p = Proc::spawn(c);
    assert_eq!(p.line(), "locked");
    p
}

fn python_try(d: &LockDir, name: &str) -> Option<i32> {
    let mut c = Command::new(PYTHON);
    c.args(["-c", PY_TRY]).arg(d.path(name));
    cli_support::output(c).code()
}

/// Makes the lock directory exist (tools other than interlock do not create it).
fn lock_dir() -> LockDir {
    let d = LockDir::new();
    std::fs::create_dir(&d.dir).unwrap();
    d
}

#[test]
fn flock_holder_makes_interlock_run_nonblock_conflict() {
    if !have_flock() {
        return;
    }
    let d = lock_dir();
    let url = d.url();
    let mut holder = flock_holder(&d, "deploy", false);
    run(&["run", "-u", &url, "-n", "deploy", "--", "true"]).fails_with(1);
    run(&["run", "-u", &url, "-n", "-E", "9", "deploy", "--", "true"]).fails_with(9);
    run(&["run", "-u", &url, "-s", "-n", "deploy", "--", "true"]).fails_with(1);
    holder.close_stdin();
    assert!(holder.wait().success());
    run(&["run", "-u", &url, "-n", "deploy", "--", "true"]).succeeds();
}

#[test]
fn interlock_hold_makes_flock_nonblock_fail() {
    if !have_flock() {
        return;
    }
    let d = lock_dir();
    let (mut holder, _) = hold(&["-u", &d.url(), "deploy"]);
    assert!(!flock_try(&d, "deploy", false), "flock -n got a lock interlock holds");
    assert!(!flock_try(&d, "deploy", true), "flock -n -s got a lock interlock holds exclusively");
    holder.close_stdin();
    assert!(holder.wait().success());
    assert!(flock_try(&d, "deploy", false), "flock -n must succeed once interlock released");
}

#[test]
fn shared_holders_share_with_flock_s_and_exclude_exclusive() {
    if !have_flock() {
        return;
    }
    let d = lock_dir();
    let url = d.url();
    let _reader = flock_holder(&d, "cfg", true);
    run(&["run", "-u", &url, "-s", "-n", "cfg", "--", "true"]).succeeds();
    run(&["run", "-u", &url, "-n", "cfg", "--", "true"]).fails_with(1);
    let (_ours, _) = hold(&["-u", &url, "-s", "-n", "cfg"]);
    assert!(flock_try(&d, "cfg", true), "flock -n -s must share with interlock -s");
    assert!(!flock_try(&d, "cfg", false), "flock -n (exclusive) must not get a shared-held lock");
}

#[test]
fn python_fcntl_flock_excludes_interlock_and_the_other_way_round() {
    if !have_python() {
        return;
    }
    let d = lock_dir();
    let url = d.url();
    let mut py = python_holder(&d, "job");
    run(&["run", "-u", &url, "-n", "job", "--", "true"]).fails_with(1);
    run(&["run", "-u", &url, "-w", "0.2", "job", "--", "true"]).fails_with(1);
    py.close_stdin();
    assert!(py.wait().success());

    let (mut holder, _) = hold(&["-u", &url, "job"]);
    assert_eq!(python_try(&d, "job"), Some(3), "python got LOCK_EX|LOCK_NB on a lock interlock holds");
    holder.close_stdin();
    assert!(holder.wait().success());
    assert_eq!(python_try(&d, "job"), Some(0));
}

#[test]
fn a_waiting_interlock_gets_the_lock_when_flock_releases() {
    if !have_flock() {
        return;
    }
    let d = lock_dir();
    let mut holder = flock_holder(&d, "job", false);
    let mut c = interlock();
    c.args(["run", "-u", &d.url(), "-w", "20", "job", "--", "echo", "ran"]);
    let mut waiter = Proc::spawn(c);
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.running(), "interlock must wait while flock holds the lock: {}", waiter.stderr());
    holder.close_stdin();
    assert!(holder.wait().success());
    assert!(waiter.wait().success(), "{}", waiter.stderr());
    assert_eq!(waiter.all_stdout(), "ran\n");
}

#[test]
fn a_python_holder_that_unlocks_but_keeps_the_file_open_lets_a_waiter_in() {
    if !have_python() {
        return;
    }
    let d = lock_dir();
    let mut py = python_holder(&d, "job");
    let mut c = interlock();
    c.args(["run", "-u", &d.url(), "-w", "20", "job", "--", "echo", "ran"]);
    let mut waiter = Proc::spawn(c);
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.running(), "interlock must wait while python holds the lock: {}", waiter.stderr());
    // LOCK_UN without closing: no close event for inotify, so only the bounded re-check sees it.
    py.send("unlock\n");
    assert_eq!(py.line(), "unlocked");
    assert!(waiter.wait().success(), "{}", waiter.stderr());
    assert_eq!(waiter.all_stdout(), "ran\n");
    assert!(py.running(), "python kept its file open throughout");
    py.close_stdin();
    assert!(py.wait().success());
}

/// A directory shared between users on purpose: what one user created (lock file, fencing counter,
/// semaphore metadata), another can lock too. Needs root, to act as a second user with setpriv.
#[test]
fn two_users_share_a_lock_directory() {
    if !rustix::process::geteuid().is_root() {
        return eprintln!("two_users_share_a_lock_directory: needs root to switch users; skipped");
    }
    if !cli_support::require_tool("setpriv", &["--version"]) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let url = format!("file://{}", shared.display());
    for args in
        [&["run", "-u", &url, "job", "--", "true"][..], &["run", "-u", &url, "--permits", "2", "pool", "--", "true"]]
    {
        // First as root (creates the files), then as nobody.
        let root = cli_support::output({
            let mut c = interlock();
            c.args(args);
            c
        });
        root.succeeds();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_interlock")]).args(args);
        let nobody = cli_support::output(c);
        assert_eq!(nobody.code(), Some(0), "as nobody: {}", nobody.stderr);
    }
}

/// The Python lock libraries people use: `filelock.FileLock` and `portalocker.lock`, both
/// `fcntl.flock` on POSIX. `hold` programs print `locked` and hold until stdin closes; `try`
/// programs exit 0 if they got the lock at once, 3 if not.
const PY_LIBS: &[(&str, &str, &str)] = &[
    (
        "filelock",
        "import sys, filelock\nl = filelock.FileLock(sys.argv[1])\nl.acquire()\nprint('locked', flush=True)\nsys.stdin.read()\nl.release()\n",
        "import sys, filelock\ntry:\n    filelock.FileLock(sys.argv[1], timeout=0).acquire()\nexcept filelock.Timeout:\n    sys.exit(3)\n",
    ),
    (
        "portalocker",
        "import sys, portalocker\nf = open(sys.argv[1], 'a')\nportalocker.lock(f, portalocker.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n",
        "import sys, portalocker\nf = open(sys.argv[1], 'a')\ntry:\n    portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)\nexcept portalocker.exceptions.LockException:\n    sys.exit(3)\n",
    ),
];

#[test]
fn python_lock_libraries_exclude_and_are_excluded() {
    for (module, hold_py, try_py) in PY_LIBS {
        if !cli_support::require_tool(PYTHON, &["-c", &format!("import {module}")]) {
            continue;
        }
        let d = lock_dir();
        let url = d.url();
        let mut c = Command::new(PYTHON);
        c.args(["-c", hold_py]).arg(d.path("job"));
        let mut theirs = Proc::spawn(c);
        assert_eq!(theirs.line(), "locked", "{module}");
        run(&["run", "-u", &url, "-n", "job", "--", "true"]).fails_with(1);
        theirs.close_stdin();
        assert!(theirs.wait().success(), "{module}");
        let (mut ours, _) = hold(&["-u", &url, "job"]);
        let mut c = Command::new(PYTHON);
        c.args(["-c", try_py]).arg(d.path("job"));
        assert_eq!(cli_support::output(c).code(), Some(3), "{module} got a lock interlock holds");
        ours.close_stdin();
        assert!(ours.wait().success());
        let mut c = Command::new(PYTHON);
        c.args(["-c", try_py]).arg(d.path("job"));
        assert_eq!(cli_support::output(c).code(), Some(0), "{module} must get the lock once interlock released it");
    }
}

/// The threads of process `pid` by name (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// `interlock run` waiting without a deadline blocks in `flock(2)` on its own thread (no pool
/// thread: one wake-up when the lock comes), and the kernel hands it the lock when `flock(1)`
/// releases. With `-w`, a pool thread waits instead, so the deadline stays exact.
#[test]
fn interlock_run_waits_in_the_kernel_on_its_own_thread() {
    if !have_flock() {
        return;
    }
    let d = LockDir::new();
    std::fs::create_dir_all(&d.dir).unwrap();
    let url = d.url();
    let mut holder = flock_holder(&d, "k", false);
    for (timeout, pool) in [(None, false), (Some("30"), true)] {
        let mut c = interlock();
        c.args(["run", "-u", &url]);
        if let Some(t) = timeout {
            c.args(["-w", t]);
        }
        c.args(["k", "--", "echo", "ran"]);
        let mut p = Proc::spawn(c);
        let pid = p.pid().to_string();
        let deadline = std::time::Instant::now() + cli_support::LONG;
        // A blocked request of interlock's process in /proc/locks: `N: -> FLOCK ADVISORY WRITE PID ...`.
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("->") && l.split_whitespace().nth(5) == Some(pid.as_str()))
        {
            assert!(std::time::Instant::now() < deadline, "interlock run never blocked in flock");
            std::thread::sleep(Duration::from_millis(10));
        }
        let names = thread_names(p.pid());
        assert_eq!(names.iter().any(|n| n.starts_with("interlock-floc")), pool, "timeout {timeout:?}: {names:?}");
        holder.close_stdin();
        assert_eq!(p.line(), "ran");
        assert!(p.wait().success());
        holder = flock_holder(&d, "k", false);
    }
}
