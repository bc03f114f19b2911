//! The file backend's own files beside each lock (`.NAME.fence`, `NAME#sem`, `.NAME#sem.fence`),
//! seen from the command line:
//! - whoever can take a lock with `flock(1)` can take it with interlock, even after root used the
//!   name first in a directory that belongs to someone else;
//! - `-n` and `-w` stay bounded when another tool holds one of those files;
//! - a fencing counter that is not exactly what interlock writes is refused, never restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{LockDir, Out, Proc, interlock, run};

const NOBODY: u32 = 65534;

/// A lock directory owned by `nobody`, mode 0755, inside a 0755 temp dir it can traverse.
struct NobodysDir {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl NobodysDir {
    fn new() -> NobodysDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("locks");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        NobodysDir { _tmp: tmp, dir }
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// Needs root (to act as a second user) and setpriv; says why when it skips.
fn can_switch_users(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("{test}: needs root to switch users; skipped");
        return false;
    }
    cli_support::require_tool("setpriv", &["--version"])
}

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

fn owner(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Root takes each kind of lock once in nobody's 0755 directory; nobody can then take the same
/// names (mutex, shared, semaphore) with `-n`, and the tokens keep increasing. The files root
/// created belong to the directory's owner.
#[test]
fn root_using_a_name_first_does_not_lock_the_directory_owner_out() {
    if !can_switch_users("root_using_a_name_first_does_not_lock_the_directory_owner_out") {
        return;
    }
    let d = NobodysDir::new();
    let url = d.url();
    // A reader first, on a name nobody used yet: it must not need (or create) a counter.
    assert_eq!(token_of_run(false, &url, &["-s"], "fresh"), 0);
    let t1 = token_of_run(false, &url, &[], "job");
    let (mut holder, line) = cli_support::hold(&["-u", &url, "--permits", "2", "pool"]);
    let p1: u64 = line.trim_start_matches("token=").parse().unwrap();
    holder.close_stdin();
    assert!(holder.wait().success());

    let t2 = token_of_run(true, &url, &["-n"], "job");
    assert!(t2 > t1, "{t1} then {t2}");
    assert_eq!(token_of_run(true, &url, &["-n", "-s"], "job"), t2, "a reader sees the last writer's token");
    assert_eq!(token_of_run(true, &url, &["-n", "-s"], "fresh"), 0);
    assert!(!d.dir.join(".fresh.fence").exists(), "a reader created the fencing counter");
    assert!(token_of_run(true, &url, &["-n"], "fresh") >= 1);
    let p2 = token_of_run(true, &url, &["-n", "--permits", "2"], "pool");
    assert!(p2 > p1, "{p1} then {p2}");
    // And root again, after nobody: still increasing.
    assert!(token_of_run(false, &url, &["-n"], "job") > t2);
    assert!(token_of_run(false, &url, &["-n", "--permits", "2"], "pool") > p2);

    for entry in std::fs::read_dir(&d.dir).unwrap() {
        let f = entry.unwrap().path();
        let (uid, gid, _) = owner(&f);
        assert_eq!((uid, gid), (NOBODY, NOBODY), "{} must belong to the directory's owner", f.display());
    }
}

/// Files left by older versions: root-owned 0644 side files in nobody's 0755 directory. nobody
/// replaces them (it owns the directory) and the tokens continue where they were.
#[test]
fn the_directory_owner_recovers_from_root_owned_side_files() {
    if !can_switch_users("the_directory_owner_recovers_from_root_owned_side_files") {
        return;
    }
    let d = NobodysDir::new();
    let url = d.url();
    let plant = |name: &str, content: &str| {
        let p = d.dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(owner(&p), (0, 0, 0o644));
    };
    plant("job", "");
    plant(".job.fence", "00000000000000000007\n");
    plant("pool#sem", "2\n");
    plant("pool#sem.0", "");
    plant("pool#sem.1", "");
    plant(".pool#sem.fence", "00000000000000000005\n");
    plant("other#sem", "2\n");
    plant(".other#sem.fence", "00000000000000000040\n");

    assert_eq!(token_of_run(true, &url, &["-n", "-s"], "job"), 7, "a reader only reads the counter");
    assert_eq!(owner(&d.dir.join(".job.fence")).0, 0, "a reader does not replace the counter");
    assert_eq!(token_of_run(true, &url, &["-n"], "job"), 8);
    assert_eq!(token_of_run(true, &url, &["-n"], "job"), 9);
    assert_eq!(token_of_run(true, &url, &["-n", "-s"], "job"), 9);
    // A member that is not the first only reads `pool#sem`: root holds a permit meanwhile.
    let (mut root_member, line) = cli_support::hold(&["-u", &url, "--permits", "2", "pool"]);
    assert_eq!(line, "token=6");
    assert_eq!(token_of_run(true, &url, &["-n", "--permits", "2"], "pool"), 7);
    root_member.close_stdin();
    assert!(root_member.wait().success());
    assert_eq!(token_of_run(true, &url, &["-n", "--permits", "2"], "pool"), 8);
    // The first member with another permits count rewrites `NAME#sem`, which root owns.
    assert_eq!(token_of_run(true, &url, &["-n", "--permits", "3"], "other"), 41);
    assert_eq!(std::fs::read_to_string(d.dir.join("other#sem")).unwrap().trim(), "3");
    assert_eq!(token_of_run(false, &url, &["-n", "--permits", "3"], "other"), 42);

    for f in [".job.fence", ".pool#sem.fence", "other#sem", ".other#sem.fence"] {
        assert_eq!(owner(&d.dir.join(f)).0, NOBODY, "{f} was replaced by its directory's owner");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&d.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".fence") && n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
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

/// In a shared directory (1777), a semaphore's permit files made by a user with umask 077 are
/// still readable by the others, so another user can take a permit; and a permit file someone
/// else made unreadable only takes that permit out of use.
#[test]
fn permit_files_in_a_shared_directory_serve_every_user() {
    if !can_switch_users("permit_files_in_a_shared_directory_serve_every_user") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let url = format!("file://{}", dir.display());
    // nobody, with umask 077, creates the semaphore's files.
    let mut c = Command::new("sh");
    c.args(["-c", "umask 077; exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"", "sh"]);
    c.args([cli_support::BIN, "run", "-u", &url, "--permits", "2", "pool", "--", "true"]);
    c.env_remove("INTERLOCK_URL");
    let out = cli_support::output(c);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    for i in 0..2 {
        let path = dir.join(format!("pool#sem.{i}"));
        if path.exists() {
            assert_eq!(owner(&path).2 & 0o444, 0o444, "permit file {i} must be readable by all");
        }
    }
    // Another user (uid 12345) takes both permits in turn.
    for _ in 0..4 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=12345", "--regid=12345", "--clear-groups", cli_support::BIN]);
        c.args(["run", "-u", &url, "-n", "--permits", "2", "pool", "--", "true"]).env_remove("INTERLOCK_URL");
        let out = cli_support::output(c);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
    }
    // A permit file made unreadable (0600, someone else's) only takes that permit out of use.
    std::fs::set_permissions(dir.join("pool#sem.0"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(dir.join("pool#sem.0"), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut c = Command::new("setpriv");
    c.args(["--reuid=12345", "--regid=12345", "--clear-groups", cli_support::BIN]);
    c.args(["run", "-u", &url, "-n", "--permits", "2", "pool", "--", "true"]).env_remove("INTERLOCK_URL");
    let out = cli_support::output(c);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}
