//! The file backend's own files beside each lock (`.NAME.fence`, `NAME#sem`, `.NAME#sem.fence`),
//! seen from the command line:
//! - `-n` and `-w` stay bounded when another tool holds one of those files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{LockDir, Proc, interlock, run};

/// `flock FILE` holding FILE for at most `secs` seconds (or until its stdin closes); returns once
/// it holds it.
fn flock_holder(path: &Path, secs: u32) -> Proc {
    let mut c = Command::new("flock");
    c.arg(path).args(["sh", "-c", &format!("echo locked; timeout {secs} cat >/dev/null")]);
    let p = Proc::spawn(c);
    assert_eq!(p.line(), "locked");
    p
}

/// Another tool holding one of a semaphore's internal files: `-n` reports the conflict at once
/// (well before that tool lets go), `-w 1` after about a second.
#[test]
fn nonblocking_semaphore_acquisitions_do_not_wait_for_internal_files() {
    if !cli_support::require_tool("flock", &["--version"]) {
        return;
    }
    for internal in ["x#sem", ".x#sem.fence"] {
        let d = LockDir::new();
        let url = d.url();
        // Make the files exist, with valid content, as interlock leaves them.
        run(&["run", "-u", &url, "--permits", "2", "x", "--", "true"]).succeeds();
        let mut holder = flock_holder(&d.path(internal), 15);
        run(&["run", "-u", &url, "-n", "--permits", "2", "x", "--", "true"]).fails_with(1);
        assert!(holder.running(), "{internal}: `run -n` waited for the flock holder to end");
        run(&["run", "-u", &url, "-w", "0", "--permits", "2", "x", "--", "true"]).fails_with(1);
        assert!(holder.running(), "{internal}: `run -w 0` waited for the flock holder to end");
        let out = cli_support::output({
            let mut c = interlock();
            c.args(["hold", "-u", &url, "-n", "--permits", "2", "x"]);
            c
        });
        out.fails_with(1);
        assert!(holder.running(), "{internal}: `hold -n` waited for the flock holder to end");
        let started = Instant::now();
        run(&["run", "-u", &url, "-w", "1", "--permits", "2", "x", "--", "true"]).fails_with(1);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(900), "{internal}: `-w 1` gave up after {waited:?}");
        assert!(holder.running(), "{internal}: `run -w 1` waited for the flock holder to end");
        holder.close_stdin();
        assert!(holder.wait().success());
        run(&["run", "-u", &url, "-n", "--permits", "2", "x", "--", "true"]).succeeds();
    }
}
