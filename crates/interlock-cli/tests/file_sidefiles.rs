//! The file backend's own files beside each lock (`.NAME.fence`, `NAME#sem`, `.NAME#sem.fence`),
//! seen from the command line:
//! - `-n` and `-w` stay bounded when another tool holds one of those files;
//! - a fencing counter that is not exactly what interlock writes is refused, never restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{LockDir, Out, Proc, interlock, run};

/// `interlock ARGS...` as root, or as `nobody` through setpriv.
fn interlock_as(nobody: bool, args: &[&str]) -> Out {
    let mut c = if nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", cli_support::BIN]);
        c.env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG");
        c
    } else {
        interlock()
    };
    c.args(args);
    cli_support::output(c)
}

/// `interlock run [FLAGS...] NAME -- sh -c 'echo $INTERLOCK_TOKEN'`: the token it got.
fn token_of_run(nobody: bool, url: &str, flags: &[&str], name: &str) -> u64 {
    let mut args = vec!["run", "-u", url];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[name, "--", "sh", "-c", "echo $INTERLOCK_TOKEN"]);
    let out = interlock_as(nobody, &args);
    let who = if nobody { "nobody" } else { "root" };
    assert_eq!(out.code(), Some(0), "{who}: interlock {args:?}: {}", out.stderr);
    out.stdout.trim().parse().unwrap_or_else(|_| panic!("{who}: token {:?}", out.stdout))
}

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

/// A fencing counter that is not exactly 20 digits and a newline is refused, with one line that
/// names the file and exit 69; valid files continue from their value.
#[test]
fn a_bad_fencing_counter_is_refused_not_restarted() {
    let d = LockDir::new();
    let url = d.url();
    run(&["run", "-u", &url, "c", "--", "true"]).succeeds();
    run(&["run", "-u", &url, "--permits", "2", "s", "--", "true"]).succeeds();
    let spaces_then_3 = format!("{}3", " ".repeat(70)).into_bytes();
    let bad: &[&[u8]] = &[
        b"",
        b" ",
        b"\n",
        b"                     ",
        &spaces_then_3,
        b"3",
        b"3\n",
        b"00000000000000000014",
        b"00000000000000000014\n\n",
        b"00000000000000000014\nx",
        b"00000000000000000014 ",
        b"0000000000000000014\n ",
        b"99999999999999999999\n",
        b"-0000000000000000014\n",
        b"+0000000000000000014\n",
        b"0000000000000000001a\n",
        b"00000000000000000014\r",
    ];
    for content in bad {
        for (flags, fence) in
            [(&[][..], ".c.fence"), (&["-s"][..], ".c.fence"), (&["--permits", "2"][..], ".s#sem.fence")]
        {
            let path = d.path(fence);
            std::fs::write(&path, content).unwrap();
            let name = if fence == ".c.fence" { "c" } else { "s" };
            let mut args = vec!["run", "-u", &url, "-n"];
            args.extend_from_slice(flags);
            args.extend_from_slice(&[name, "--", "true"]);
            let line = run(&args).fails_with(69);
            assert!(line.contains(&path.display().to_string()), "{content:?} {flags:?}: {line}");
            assert!(line.contains("refusing to restart fencing tokens"), "{content:?}: {line}");
            assert_eq!(std::fs::read(&path).unwrap(), *content, "the bad counter was left as it was");
        }
    }
    std::fs::write(d.path(".c.fence"), "00000000000000000014\n").unwrap();
    assert_eq!(token_of_run(false, &url, &["-s"], "c"), 14);
    assert_eq!(token_of_run(false, &url, &[], "c"), 15);
    std::fs::write(d.path(".s#sem.fence"), "00000000000000000030\n").unwrap();
    assert_eq!(token_of_run(false, &url, &["--permits", "2"], "s"), 31);
}
