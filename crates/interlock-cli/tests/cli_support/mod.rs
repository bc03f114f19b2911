//! Helpers shared by the CLI's integration tests: the binary, a private lock directory per test,
//! commands with a deadline, and child processes that are killed when a test ends.
#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_interlock");

/// The "eventually" bound: generous, never a speed assertion.
pub const LONG: Duration = Duration::from_secs(20);

/// A private lock directory (inside a temp dir that is removed at the end of the test).
pub struct LockDir {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl LockDir {
    pub fn new() -> LockDir {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("locks");
        LockDir { tmp, dir }
    }

    /// The `file://` URL of the lock directory.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// `interlock` with a clean environment (no `INTERLOCK_URL` or `INTERLOCK_LOG` from outside).
pub fn interlock() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG");
    c
}

/// What a finished command said.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code and that stderr is exactly one `interlock: ...` line; returns it.
    pub fn fails_with(&self, code: i32) -> String {
        assert_eq!(self.code(), Some(code), "exit code; stderr: {}; stdout: {}", self.stderr, self.stdout);
        one_error_line(&self.stderr)
    }

    pub fn succeeds(&self) {
        assert!(self.status.success(), "expected success, got {:?}; stderr: {}", self.status, self.stderr);
    }
}

/// Asserts that `stderr` is exactly one line starting with `interlock: `, and returns it.
pub fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one stderr line, got: {stderr:?}");
    assert!(lines[0].starts_with("interlock: "), "stderr line must start with `interlock: `: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_owned()
}

/// Runs `cmd` to completion (stdin closed), killing it and failing the test after a minute.
pub fn output(mut cmd: Command) -> Out {
    let mut p = Proc::spawn_with(&mut cmd, false);
    let status = p.wait_within(Duration::from_secs(60));
    // The reader threads end at EOF, which comes once the process is gone.
    Out { status, stdout: p.all_stdout(), stderr: p.stderr() }
}

/// Runs `interlock ARGS...` to completion.
pub fn run(args: &[&str]) -> Out {
    let mut c = interlock();
    c.args(args);
    output(c)
}

/// A child process that is killed (SIGKILL) and reaped when dropped. Its stdout is read line by
/// line on a thread; its stderr is collected.
pub struct Proc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout_done: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` with piped stdin (kept open until [`Proc::close_stdin`]), stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Proc {
        Proc::spawn_with(&mut cmd, true)
    }

    fn spawn_with(cmd: &mut Command, keep_stdin: bool) -> Proc {
        cmd.stdin(if keep_stdin { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut stderr_pipe = child.stderr.take().expect("stderr pipe");
        let (tx, lines) = channel();
        let stdout_done = Arc::new(Mutex::new(Vec::new()));
        let all = stdout_done.clone();
        let t1 = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = stderr.clone();
        let t2 = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr_pipe.read_to_end(&mut buf);
            err.lock().unwrap().push_str(&String::from_utf8_lossy(&buf));
        });
        Proc { child, stdin, lines, stdout_done, stderr, threads: vec![t1, t2] }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, waiting up to [`LONG`].
    pub fn line(&self) -> String {
        match self.lines.recv_timeout(LONG) {
            Ok(l) => l,
            Err(_) => panic!("no line on stdout within {LONG:?}; stderr: {}", self.stderr_now()),
        }
    }

    /// Writes to the child's stdin.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).expect("write to child");
        stdin.flush().expect("flush to child");
    }

    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for the child to exit, up to [`LONG`].
    pub fn wait(&mut self) -> ExitStatus {
        self.wait_within(LONG)
    }

    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                // The output ends when the last process holding the pipes is gone, which may be
                // a descendant that outlives the child: wait for that too, but not forever.
                while !self.threads.iter().all(|t| t.is_finished()) {
                    assert!(Instant::now() < deadline, "the output of a finished process stayed open: {st:?}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                for t in self.threads.drain(..) {
                    let _ = t.join();
                }
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("process did not exit within {limit:?}; stderr: {}", self.stderr_now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True if the child is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.wait()
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Everything on stderr (complete once the process has been waited for).
    pub fn stderr(&self) -> String {
        self.stderr_now()
    }

    fn stderr_now(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every stdout line so far (all of them once the process has been waited for).
    pub fn all_stdout(&self) -> String {
        self.stdout_done.lock().unwrap().iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `interlock hold ARGS...` that has printed its token line; returns the process and the line.
pub fn hold(args: &[&str]) -> (Proc, String) {
    let mut c = interlock();
    c.arg("hold").args(args);
    let p = Proc::spawn(c);
    let line = p.line();
    assert!(line.starts_with("token="), "hold printed {line:?}");
    (p, line)
}

/// True if `path` exists as anything (also a dangling symlink).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Every path under `root`, recursively, relative to it.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            out.push(path.strip_prefix(root).expect("prefix").to_path_buf());
            if std::fs::symlink_metadata(&path).expect("lstat").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Finds a peer tool; a missing one skips the test loudly, or fails it under
/// `INTERLOCK_TEST_REQUIRE=1`.
pub fn require_tool(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("INTERLOCK_TEST_REQUIRE").as_deref() == Ok("1") {
            panic!("`{program}` is required (INTERLOCK_TEST_REQUIRE=1) but is missing or broken");
        }
        eprintln!("!!!!! SKIPPING: `{program}` is missing or broken; install it to run this interop test !!!!!");
    }
    ok
}
