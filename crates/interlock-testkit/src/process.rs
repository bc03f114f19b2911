//! Helper processes for cross-process cases: `interlock hold` (a holder another process can kill)
//! and `interlock worker` (threads incrementing a counter file under a lock).
//!
//! The lock URL reaches them in `$INTERLOCK_URL`, never in argv: `ps` and `/proc/PID/cmdline`
//! show every process's arguments to every user, and a URL may carry a password. Both
//! subcommands read `$INTERLOCK_URL` when `-u` is not given.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// A running `interlock hold NAME`: holds the lock until [`Hold::release`], [`Hold::kill9`] or drop.
#[derive(Debug)]
pub struct Hold {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The fencing token it printed.
    pub token: Option<u64>,
}

impl Hold {
    /// Starts `interlock hold [extra...] NAME` with `INTERLOCK_URL=url` and waits (up to 30 s) for
    /// its token line.
    ///
    /// # Panics
    ///
    /// When the process cannot start or does not print `token=...`.
    pub async fn start(bin: &Path, url: &str, name: &str, extra: &[&str]) -> Hold {
        let mut child = Command::new(bin)
            .arg("hold")
            .env("INTERLOCK_URL", url)
            .args(extra)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn interlock hold");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line))
            .await
            .expect("interlock hold printed no token within 30 s")
            .expect("read hold output");
        let token = line.trim().strip_prefix("token=").unwrap_or_else(|| panic!("unexpected hold output {line:?}"));
        Hold { child, stdin, token: token.parse().ok() }
    }

    /// The holder's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Fault hook: stops it with SIGSTOP (it keeps its connections, renews nothing, notices
    /// nothing) until [`Hold::resume`].
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Fault hook: continues it after [`Hold::pause`] (SIGCONT).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = i32::try_from(self.pid()).ok().and_then(rustix::process::Pid::from_raw).expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal the holder");
    }

    /// Closes its stdin so it releases, and waits for it to exit; returns its exit code.
    pub async fn release(mut self) -> Option<i32> {
        drop(self.stdin.take());
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("hold exits").ok()?;
        status.code()
    }

    /// Waits (up to `within`) for it to exit by itself, its stdin still open (so it has not been
    /// asked to release): after a lost lock it exits 75. Returns its exit code (`None`: killed by
    /// a signal).
    ///
    /// # Panics
    ///
    /// When it is still running after `within`.
    pub async fn wait_exit(mut self, within: Duration) -> Option<i32> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("interlock hold did not exit within {within:?}"))
            .ok()?;
        status.code()
    }

    /// SIGKILLs it (the kernel or the backend must release its lock) and reaps it.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = self.child.wait().await;
    }
}

/// Result lines of one `interlock worker`: `(counter value read, fencing token)` per iteration.
pub type WorkerLog = Vec<(u64, Option<u64>)>;

/// The shape of a [`run_workers`] run.
#[derive(Clone, Copy, Debug)]
pub struct Workers {
    /// Worker processes.
    pub processes: usize,
    /// Threads per process.
    pub threads: usize,
    /// Increments per thread.
    pub iterations: usize,
    /// Increment without the lock (the control run).
    pub no_lock: bool,
}

/// Runs `w.processes` workers, each with `w.threads` threads doing `w.iterations` increments of
/// the counter in `counter` (under the lock unless `w.no_lock`), all released at the same
/// instant. Returns every worker's log.
///
/// # Panics
///
/// When a worker fails.
pub async fn run_workers(bin: &Path, url: &str, name: &str, counter: &Path, w: Workers) -> WorkerLog {
    let Workers { processes, threads, iterations, no_lock } = w;
    let mut children = Vec::new();
    for _ in 0..processes {
        let mut cmd = Command::new(bin);
        cmd.args(["worker", name, "--counter"])
            .env("INTERLOCK_URL", url)
            .arg(counter)
            .args(["--threads", &threads.to_string(), "--iterations", &iterations.to_string(), "--wait-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if no_lock {
            cmd.arg("--no-lock");
        }
        let mut child = cmd.spawn().expect("spawn interlock worker");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut ready = String::new();
        tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut ready)).await.expect("worker ready").unwrap();
        assert_eq!(ready.trim(), "ready", "worker said {ready:?}");
        children.push((child, out));
    }
    // The start barrier: every worker starts when its stdin closes.
    for (child, _) in &mut children {
        drop(child.stdin.take());
    }
    let mut log = Vec::new();
    for (mut child, mut out) in children {
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(300), out.read_to_string(&mut text))
            .await
            .expect("worker ends")
            .unwrap();
        let status = child.wait().await.unwrap();
        assert!(status.success(), "worker failed: {status}");
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let value = f.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad worker line {line:?}"));
            let token = f.next().and_then(|t| t.parse().ok());
            log.push((value, token));
        }
    }
    log
}
