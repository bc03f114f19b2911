//! The `interlock` binary: every exit code, bad input (one stderr line, the documented code, no
//! panic), `run`, `hold` and `status` on a private file lock directory per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cli_support::{LockDir, Proc, exists, hold, interlock, one_error_line, output, run, walk};
use rustix::process::Signal;

// ---------------------------------------------------------------- help, usage, clap errors

#[test]
fn help_and_version_exit_0_and_help_documents_exit_codes() {
    for args in [&["--help"][..], &["run", "--help"], &["hold", "--help"], &["-h"]] {
        let out = run(args);
        out.succeeds();
        for needle in ["64", "69", "75", "126", "127", "128+N"] {
            assert!(out.stdout.contains(needle), "{args:?} help lacks {needle}: {}", out.stdout);
        }
    }
    let out = run(&["--version"]);
    out.succeeds();
    assert!(out.stdout.starts_with("interlock "), "{}", out.stdout);
    for args in [&["status", "--help"][..], &["demo", "flash-sale", "--help"]] {
        run(args).succeeds();
    }
}

#[test]
fn hidden_helpers_are_not_listed() {
    let out = run(&["--help"]);
    assert!(!out.stdout.contains("worker"), "{}", out.stdout);
    assert!(!out.stdout.contains("demo-buyer"), "{}", out.stdout);
}

#[test]
fn clap_errors_are_one_line_and_exit_64() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["run", "--bogus", "x", "--", "true"],
        &["run"],
        &["run", "x", "true"], // the command must come after `--`
        &["hold"],
        &["status"],
        &["run", "-E", "300", "x", "--", "true"],
        &["run", "--permits", "-3", "x", "--", "true"],
        &["run", "--permits", "many", "x", "--", "true"],
        &["demo"],
        &["demo", "flash-sale", "--buyers", "0"],
    ] {
        let out = run(args);
        out.fails_with(64);
    }
}

#[test]
fn clap_errors_name_what_is_missing_or_wrong() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["hold"], &["required arguments were not provided: <NAME>"]),
        (&["status"], &["required arguments were not provided: <NAME>..."]),
        (&["hold", "-u"], &["a value is required for '--url <URL>'"]),
        (&[], &["a subcommand is needed: run, hold, status"]),
        (&["demo"], &["demo needs a subcommand: flash-sale"]),
        (&["stauts"], &["unrecognized subcommand 'stauts'", "tip: ", "'status'"]),
        (&["bench", "nonsense"], &["invalid value 'nonsense'", "[possible values: "]),
    ];
    for (args, needles) in cases {
        let line = run(args).fails_with(64);
        for needle in *needles {
            assert!(line.contains(needle), "{args:?}: {line:?} lacks {needle:?}");
        }
        assert!(line.ends_with(" (see --help)"), "{line}");
    }
}

// ---------------------------------------------------------------- run: the command's status

#[test]
fn run_passes_the_command_exit_code_through() {
    let d = LockDir::new();
    let url = d.url();
    run(&["run", "-u", &url, "job", "--", "true"]).succeeds();
    let out = run(&["run", "-u", &url, "job", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.code(), Some(3));
    assert_eq!(out.stderr, "", "interlock itself says nothing when the command fails");
    let out = run(&["run", "-u", &url, "job", "--", "sh", "-c", "exit 255"]);
    assert_eq!(out.code(), Some(255));
}

#[test]
fn run_reports_a_command_killed_by_a_signal_as_128_plus_n() {
    let d = LockDir::new();
    let url = d.url();
    let out = run(&["run", "-u", &url, "job", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.code(), Some(143), "{out:?}");
    let out = run(&["run", "-u", &url, "job", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.code(), Some(137), "{out:?}");
    // The lock was released after each.
    run(&["run", "-u", &url, "-n", "job", "--", "true"]).succeeds();
}

#[test]
fn run_gives_the_command_its_name_and_fencing_token() {
    let d = LockDir::new();
    let url = d.url();
    let show = ["sh", "-c", "echo \"name=$INTERLOCK_NAME token=$INTERLOCK_TOKEN\""];
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let mut args = vec!["run", "-u", &url, "deploy", "--"];
        args.extend(show);
        let out = run(&args);
        out.succeeds();
        let line = out.stdout.trim();
        let token = line.strip_prefix("name=deploy token=").unwrap_or_else(|| panic!("{line:?}"));
        tokens.push(token.parse::<u64>().unwrap_or_else(|_| panic!("token {token:?}")));
    }
    assert!(tokens[1] > tokens[0], "fencing tokens must increase: {tokens:?}");
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let d = LockDir::new();
    let line = run(&["run", "-u", &d.url(), "job"]).fails_with(64);
    assert!(line.contains("command"), "{line}");
    run(&["run", "-u", &d.url(), "job", "--"]).fails_with(64);
}

#[test]
fn run_command_not_found_is_127_and_not_executable_is_126() {
    let d = LockDir::new();
    let url = d.url();
    let line = run(&["run", "-u", &url, "job", "--", "interlock-no-such-command-xyz"]).fails_with(127);
    assert!(line.contains("interlock-no-such-command-xyz"), "{line}");
    let script = d.tmp.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(&["run", "-u", &url, "job", "--", script.to_str().unwrap()]).fails_with(126);
    run(&["run", "-u", &url, "job", "--", d.tmp.path().to_str().unwrap()]).fails_with(126);
    // The lock is not left behind.
    run(&["run", "-u", &url, "-n", "job", "--", "true"]).succeeds();
}

#[test]
fn run_forwards_sigterm_to_the_command_and_exits_with_its_status() {
    let d = LockDir::new();
    let mut c = interlock();
    c.args(["run", "-u", &d.url(), "job", "--", "sh", "-c"]);
    c.arg("trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done");
    let mut p = Proc::spawn(c);
    assert_eq!(p.line(), "ready");
    p.signal(Signal::TERM);
    assert_eq!(p.line(), "got-term");
    assert_eq!(p.wait().code(), Some(42));
    run(&["run", "-u", &d.url(), "-n", "job", "--", "true"]).succeeds();
}

#[test]
fn run_takes_a_name_that_starts_with_a_dash_after_a_first_separator() {
    let d = LockDir::new();
    let url = d.url();
    let out = run(&["run", "-u", &url, "--", "-rf", "--", "sh", "-c", "echo \"$INTERLOCK_NAME\""]);
    out.succeeds();
    assert_eq!(out.stdout, "-rf\n");
    assert!(exists(&d.path("%2Drf")), "{:?}", walk(&d.dir));
    // The same lock as `hold -- -rf`.
    let (_holder, _) = hold(&["-u", &url, "--", "-rf"]);
    run(&["run", "-u", &url, "-n", "--", "-rf", "--", "true"]).fails_with(1);
    // After `-- NAME` must come `--`.
    let line = run(&["run", "-u", &url, "--", "-rf", "true"]).fails_with(64);
    assert!(line.contains("-- NAME -- COMMAND"), "{line}");
    run(&["run", "-u", &url, "--", "-rf"]).fails_with(64);
    let line = run(&["run", "-u", &url, "--"]).fails_with(64);
    assert!(line.contains("NAME"), "{line}");
}

#[test]
fn a_command_keeps_its_own_separator() {
    let d = LockDir::new();
    let url = d.url();
    let show_args = ["sh", "-c", "printf '%s|' \"$@\"", "sh"];
    // NAME before `--`: everything after it is the command's, `--` included.
    let mut args = vec!["run", "-u", &url, "job", "--"];
    args.extend(show_args);
    args.extend(["--", "-v", "file"]);
    let out = run(&args);
    out.succeeds();
    assert_eq!(out.stdout, "--|-v|file|\n");
    // NAME after `--`: the same, after the second `--`.
    let mut args = vec!["run", "-u", &url, "--", "job", "--"];
    args.extend(show_args);
    args.extend(["--", "-v"]);
    let out = run(&args);
    out.succeeds();
    assert_eq!(out.stdout, "--|-v|\n");
}

// ---------------------------------------------------------------- conflicts: -n, -w, -E

#[test]
fn nonblock_conflict_exits_1_by_default_and_the_e_value_when_given() {
    let d = LockDir::new();
    let url = d.url();
    let (_holder, _) = hold(&["-u", &url, "job"]);
    let line = run(&["run", "-u", &url, "-n", "job", "--", "true"]).fails_with(1);
    assert!(line.contains("\"job\" is held elsewhere"), "{line}");
    let line = run(&["run", "-u", &url, "-n", "-E", "7", "job", "--", "true"]).fails_with(7);
    assert!(line.contains("held elsewhere"), "{line}");
    run(&["run", "-u", &url, "--nonblock", "--conflict-exit-code", "0", "job", "--", "false"]).fails_with(0);
    run(&["hold", "-u", &url, "-n", "-E", "9", "job"]).fails_with(9);
}

#[test]
fn timeout_conflict_exits_with_the_conflict_code() {
    let d = LockDir::new();
    let url = d.url();
    let (_holder, _) = hold(&["-u", &url, "job"]);
    let line = run(&["run", "-u", &url, "-w", "0.3", "job", "--", "true"]).fails_with(1);
    assert!(line.contains("timed out"), "{line}");
    run(&["run", "-u", &url, "-w", "0.2", "-E", "5", "job", "--", "true"]).fails_with(5);
    // `-w 0` is one attempt; `-n` wins over `-w`.
    let line = run(&["run", "-u", &url, "-w", "0", "job", "--", "true"]).fails_with(1);
    assert!(line.contains("held elsewhere"), "{line}");
    let line = run(&["run", "-u", &url, "-n", "-w", "600", "job", "--", "true"]).fails_with(1);
    assert!(line.contains("held elsewhere"), "{line}");
}

#[test]
fn a_waiting_run_gets_the_lock_when_the_holder_lets_go() {
    let d = LockDir::new();
    let url = d.url();
    let (mut holder, _) = hold(&["-u", &url, "job"]);
    let mut c = interlock();
    c.args(["run", "-u", &url, "-w", "20", "job", "--", "echo", "got it"]);
    let mut waiter = Proc::spawn(c);
    std::thread::sleep(Duration::from_millis(200));
    holder.close_stdin();
    assert!(holder.wait().success());
    assert!(waiter.wait().success(), "{}", waiter.stderr());
    assert_eq!(waiter.all_stdout(), "got it\n");
}

// ---------------------------------------------------------------- hold

#[test]
fn hold_prints_a_token_and_releases_when_stdin_closes() {
    let d = LockDir::new();
    let url = d.url();
    let (mut holder, line) = hold(&["-u", &url, "job"]);
    let token = line.strip_prefix("token=").unwrap();
    assert!(token.parse::<u64>().is_ok(), "{line}");
    run(&["run", "-u", &url, "-n", "job", "--", "true"]).fails_with(1);
    assert!(holder.running());
    holder.close_stdin();
    assert!(holder.wait().success(), "{}", holder.stderr());
    assert_eq!(holder.stderr(), "");
    run(&["run", "-u", &url, "-n", "job", "--", "true"]).succeeds();
}

#[test]
fn hold_killed_with_sigkill_releases_at_once() {
    let d = LockDir::new();
    let url = d.url();
    let (mut holder, _) = hold(&["-u", &url, "job"]);
    run(&["run", "-u", &url, "-n", "job", "--", "true"]).fails_with(1);
    holder.kill9();
    // The kernel dropped the flock with the process: one attempt must succeed.
    run(&["run", "-u", &url, "-n", "job", "--", "true"]).succeeds();
}

#[test]
fn hold_releases_on_sigterm_and_sigint() {
    let d = LockDir::new();
    let url = d.url();
    for sig in [Signal::TERM, Signal::INT] {
        let (mut holder, _) = hold(&["-u", &url, "job"]);
        holder.signal(sig);
        assert_eq!(holder.wait().code(), Some(0), "{}", holder.stderr());
        run(&["run", "-u", &url, "-n", "job", "--", "true"]).succeeds();
    }
}

#[test]
fn hold_shared_and_semaphore() {
    let d = LockDir::new();
    let url = d.url();
    let (_r1, _) = hold(&["-u", &url, "-s", "cfg"]);
    let (_r2, _) = hold(&["-u", &url, "-s", "cfg"]);
    run(&["run", "-u", &url, "-n", "cfg", "--", "true"]).fails_with(1);
    run(&["run", "-u", &url, "-s", "-n", "cfg", "--", "true"]).succeeds();

    let (_p1, _) = hold(&["-u", &url, "--permits", "2", "slots"]);
    let (_p2, _) = hold(&["-u", &url, "--permits", "2", "slots"]);
    run(&["run", "-u", &url, "--permits", "2", "-n", "slots", "--", "true"]).fails_with(1);
    let line = run(&["run", "-u", &url, "--permits", "3", "-n", "slots", "--", "true"]).fails_with(64);
    assert!(line.contains("permits"), "{line}");
}

// ---------------------------------------------------------------- lost lock: 75

/// Stops a holder past its lease (SIGSTOP), then lets it go on: by its own clock the lease ran out.
fn pause_past_lease(p: &Proc) {
    p.signal(Signal::STOP);
    std::thread::sleep(Duration::from_millis(800));
    p.signal(Signal::CONT);
}

#[test]
fn hold_exits_75_when_the_lock_is_lost() {
    let mut c = interlock();
    c.env("INTERLOCK_ALLOW_IN_PROCESS", "1").args(["hold", "-u", "memory://?lease=200ms", "job"]);
    let mut holder = Proc::spawn(c);
    assert!(holder.line().starts_with("token="));
    pause_past_lease(&holder);
    assert_eq!(holder.wait().code(), Some(75), "{}", holder.stderr());
    let err = holder.stderr();
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("interlock: ")).collect();
    assert_eq!(ours.len(), 1, "{err}");
    assert!(ours[0].contains("lost"), "{err}");
}

/// interlock stopped past its lease: its command must not run on outside the lock, not even to
/// handle a SIGTERM (the guardian stops it before the lease ends and kills it when it ends; see
/// tests/run_lease.rs). The SIGTERM grace of a loss that the backend reports is tested on redis
/// (`run_sends_sigterm_when_the_backend_reports_the_loss` in tests/redis.rs).
#[test]
fn run_stops_the_command_and_exits_75_when_the_lock_is_lost() {
    let mut c = interlock();
    c.env("INTERLOCK_ALLOW_IN_PROCESS", "1");
    c.args(["run", "-u", "memory://?lease=200ms", "--kill-after", "20s", "job", "--", "sh", "-c"]);
    c.arg("trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done");
    let mut p = Proc::spawn(c);
    assert_eq!(p.line(), "ready");
    pause_past_lease(&p);
    assert_eq!(p.wait().code(), Some(75), "{}", p.stderr());
    assert!(p.stderr().contains("lost") && p.stderr().contains("SIGKILL"), "{}", p.stderr());
    assert!(!p.all_stdout().contains("got-term"), "the command ran on after the lease: {}", p.all_stdout());
}

#[test]
fn run_kills_a_command_that_ignores_sigterm_after_the_grace_period() {
    let mut c = interlock();
    c.env("INTERLOCK_ALLOW_IN_PROCESS", "1");
    c.args(["run", "-u", "memory://?lease=200ms", "--kill-after", "300ms", "job", "--", "sh", "-c"]);
    c.arg("trap '' TERM; echo ready; while :; do sleep 0.05; done");
    let mut p = Proc::spawn(c);
    assert_eq!(p.line(), "ready");
    pause_past_lease(&p);
    assert_eq!(p.wait().code(), Some(75), "{}", p.stderr());
}

// ---------------------------------------------------------------- bad names

#[test]
fn empty_and_oversized_names_are_usage_errors() {
    let d = LockDir::new();
    let url = d.url();
    let line = run(&["run", "-u", &url, "", "--", "true"]).fails_with(64);
    assert!(line.contains("empty"), "{line}");
    let huge = "n".repeat(10 * 1024);
    let line = run(&["run", "-u", &url, &huge, "--", "true"]).fails_with(64);
    assert!(line.len() < 400, "the name must be shortened in the message: {} bytes", line.len());
    run(&["hold", "-u", &url, &huge]).fails_with(64);
    run(&["status", "-u", &url, &huge]).fails_with(64);
}

#[test]
fn a_name_with_a_newline_still_gives_one_line_messages() {
    let d = LockDir::new();
    let url = d.url();
    let (_holder, _) = hold(&["-u", &url, "two\nlines"]);
    run(&["run", "-u", &url, "-n", "two\nlines", "--", "true"]).fails_with(1);
    run(&["run", "-u", &url, "-w", "0.1", "two\nlines", "--", "true"]).fails_with(1);
    let out = run(&["status", "-u", &url, "two\nlines"]);
    out.succeeds();
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
}

#[test]
fn a_traversal_name_stays_inside_the_lock_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let lock_dir = tmp.path().join("a").join("b").join("locks");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let url = format!("file://{}", lock_dir.display());
    run(&["run", "-u", &url, "../../etc/passwd", "--", "true"]).succeeds();
    run(&["run", "-u", &url, "/abs/../../x", "--", "true"]).succeeds();
    assert!(!exists(&tmp.path().join("a").join("etc")));
    for path in walk(tmp.path()) {
        let inside = path.starts_with("a/b/locks") || path.as_os_str() == "a" || path.as_os_str() == "a/b";
        assert!(inside, "created outside the lock directory: {}", path.display());
    }
    assert!(walk(&lock_dir).iter().all(|p| p.components().count() == 1), "{:?}", walk(&lock_dir));
}

// ---------------------------------------------------------------- bad URLs and lock directories

#[test]
fn a_lock_directory_that_is_a_plain_file_is_69() {
    let d = LockDir::new();
    std::fs::write(&d.dir, "not a directory").unwrap();
    let line = run(&["run", "-u", &d.url(), "job", "--", "true"]).fails_with(69);
    assert!(line.contains("not a directory"), "{line}");
    run(&["hold", "-u", &d.url(), "job"]).fails_with(69);
    run(&["status", "-u", &d.url(), "job"]).fails_with(69);
}

#[test]
fn a_lock_directory_that_cannot_be_written_is_69() {
    // Permissions do not stop root, but /proc refuses everyone.
    for url in ["file:///proc/interlock-test-no-such-dir", "file:///proc/self", "file:///proc/self/fd/x"] {
        let line = run(&["run", "-u", url, "job", "--", "true"]).fails_with(69);
        assert!(line.contains("/proc/"), "{line}");
        run(&["hold", "-u", url, "job"]).fails_with(69);
    }
}

#[test]
fn unknown_schemes_and_malformed_urls_are_64() {
    let line = run(&["run", "-u", "gopher://x", "job", "--", "true"]).fails_with(64);
    assert!(line.contains("gopher"), "{line}");
    for url in ["no-scheme", "://x", "1x://y", "file://host.example/x", "file://relative", "file:///tmp/x?a=b", "%zz"] {
        run(&["run", "-u", url, "job", "--", "true"]).fails_with(64);
    }
    run(&["status", "-u", "gopher://x", "job"]).fails_with(64);
}

/// A backend this build lacks is 69 with the registry's reason, on every command. The URLs use
/// the hidden test schemes, which no build serves: a planned backend's own scheme stops being
/// refused the day it is built, and a refused connection is 69 too, so the message is checked.
#[test]
fn a_backend_not_built_is_69_and_names_it() {
    let planned = format!("{}://u:hunter2@127.0.0.1:1/locks", interlock::backends::test_schemes::PLANNED);
    let off = format!("{}://127.0.0.1:1", interlock::backends::test_schemes::FEATURE_OFF);
    for (url, why) in [
        (&planned, "the test-only planned backend, which needs cargo feature `test-planned`, not implemented yet"),
        (&off, "the test-only feature-off backend, built without its cargo feature `test-feature-off`"),
    ] {
        let scheme = url.split("://").next().unwrap();
        let expected = format!("`{scheme}://` URLs are not supported by this build: {why}");
        for args in
            [&["run", "-u", url, "job", "--", "true"][..], &["hold", "-u", url, "job"], &["status", "-u", url, "job"]]
        {
            let line = run(args).fails_with(69);
            assert!(line.ends_with(&expected), "{args:?}: {line}");
            assert!(!line.contains("hunter2"), "{line}");
        }
    }
}

#[test]
fn interlock_url_from_the_environment_is_used() {
    let d = LockDir::new();
    let mut c = interlock();
    c.env("INTERLOCK_URL", d.url()).args(["run", "job", "--", "true"]);
    output(c).succeeds();
    assert!(exists(&d.path("job")), "the lock file must be in $INTERLOCK_URL's directory");
    let mut c = interlock();
    c.env("INTERLOCK_URL", "gopher://x").args(["run", "job", "--", "true"]);
    output(c).fails_with(64);
    // -u wins over the environment.
    let mut c = interlock();
    c.env("INTERLOCK_URL", "gopher://x").args(["run", "-u", &d.url(), "job", "--", "true"]);
    output(c).succeeds();
}

/// This user's default lock directory: the same path for every process of the user.
fn default_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/interlock-{}", rustix::process::geteuid().as_raw()))
}

/// Removes the given files when dropped (also when the test fails).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Environments of one user that used to disagree on the default directory: a login shell
/// (`XDG_RUNTIME_DIR`, its own `TMPDIR`), a cron job (`HOME`, `LOGNAME`, `SHELL`, `PATH` only) and
/// a bare service (nothing at all).
fn sessions(xdg: &Path, tmpdir: &Path) -> Vec<(&'static str, Vec<(&'static str, std::ffi::OsString)>)> {
    let os = |s: &str| std::ffi::OsString::from(s);
    let home = ("HOME", std::env::var_os("HOME").unwrap_or_else(|| os("/")));
    vec![
        (
            "login",
            vec![
                home.clone(),
                ("XDG_RUNTIME_DIR", xdg.into()),
                ("TMPDIR", tmpdir.into()),
                ("PATH", os("/usr/bin:/bin")),
            ],
        ),
        ("login without TMPDIR", vec![home.clone(), ("XDG_RUNTIME_DIR", xdg.into())]),
        ("login without XDG_RUNTIME_DIR", vec![home.clone(), ("TMPDIR", tmpdir.into())]),
        ("cron", vec![home, ("LOGNAME", os("root")), ("SHELL", os("/bin/sh")), ("PATH", os("/usr/bin:/bin"))]),
        ("service", vec![]),
    ]
}

/// `interlock ARGS...` with exactly the environment `env`.
fn in_session(env: &[(&str, std::ffi::OsString)], args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(cli_support::BIN);
    c.env_clear().envs(env.iter().map(|(k, v)| (*k, v))).args(args);
    c
}

#[test]
fn without_a_url_every_session_of_a_user_uses_one_default_directory() {
    let default = default_dir();
    let existed = exists(&default);
    let name = format!("interlock-test-default-{}", std::process::id());
    let _cleanup = RemoveOnDrop(vec![default.join(&name), default.join(format!(".{name}.fence"))]);
    let xdg = tempfile::tempdir().unwrap();
    let tmpdir = tempfile::tempdir().unwrap();
    let sessions = sessions(xdg.path(), tmpdir.path());
    // `status` creates nothing and shows where the lock file is.
    for (what, env) in &sessions {
        let out = output(in_session(env, &["status", &name]));
        out.succeeds();
        assert_eq!(out.stdout, format!("{name}: free [{}]\n", default.join(&name).display()), "{what}");
    }
    // A lock held from a login shell excludes the same user's cron job and service.
    let mut holder = Proc::spawn(in_session(&sessions[0].1, &["hold", &name]));
    assert!(holder.line().starts_with("token="));
    for (what, env) in &sessions[1..] {
        let out = output(in_session(env, &["run", "-n", &name, "--", "true"]));
        assert_eq!(out.code(), Some(1), "{what} got a lock held from a login shell: {}", out.stderr);
    }
    holder.close_stdin();
    assert!(holder.wait().success(), "{}", holder.stderr());
    output(in_session(&sessions[3].1, &["run", "-n", &name, "--", "true"])).succeeds();
    assert!(walk(xdg.path()).is_empty() && walk(tmpdir.path()).is_empty());
    // Private: ours, and nobody else may write to it (0700 when interlock created it).
    let meta = std::fs::symlink_metadata(&default).unwrap();
    assert!(meta.is_dir());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), rustix::process::geteuid().as_raw());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & 0o022, 0, "{mode:o}");
    if !existed {
        assert_eq!(mode, 0o700);
    }
}

/// `interlock ARGS...` in a private mount namespace with an empty tmpfs on /tmp, after the shell
/// commands `setup`: the default directory can be made hostile without touching the machine's.
fn in_private_tmp(setup: &str, args: &[&str]) -> cli_support::Out {
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"]);
    // The binary may itself live under /tmp (a checkout there), which the tmpfs hides: open it
    // first and run it through its descriptor.
    c.arg("exec 3< \"$0\" && mount -t tmpfs -o mode=1777 interlock-test /tmp && eval \"$SETUP\" && exec /proc/self/fd/3 \"$@\"");
    c.arg(cli_support::BIN).args(args);
    c.env("SETUP", setup).env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG");
    output(c)
}

/// The default directory is trusted only if it is ours and no one else can write to it, as
/// ssh-agent refuses its socket directory: one that someone else made under /tmp is refused (69).
#[test]
fn a_default_directory_others_control_is_refused() {
    if !rustix::process::geteuid().is_root() {
        return eprintln!("a_default_directory_others_control_is_refused: needs root for a private /tmp; skipped");
    }
    if !cli_support::require_tool(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs x /tmp"],
    ) {
        return;
    }
    let uid = rustix::process::geteuid().as_raw();
    let dir = format!("/tmp/interlock-{uid}");
    // Missing: the first acquisition creates it, 0700.
    let out = in_private_tmp("", &["run", "job", "--", "stat", "-c", "%a %u %F", &dir]);
    out.succeeds();
    assert_eq!(out.stdout, format!("700 {uid} directory\n"));
    let hostile = [
        (format!("mkdir -m 777 {dir}"), "others can write to it (mode 777)"),
        (format!("mkdir -m 1777 {dir}"), "others can write to it (mode 1777)"),
        (format!("mkdir -m 700 {dir} && chown 65534 {dir}"), "it belongs to uid 65534"),
        (format!("mkdir -m 700 /tmp/elsewhere && ln -s /tmp/elsewhere {dir}"), "it is a symbolic link"),
        (format!("touch {dir}"), "it is not a directory"),
    ];
    for (setup, why) in hostile {
        for args in [&["run", "job", "--", "true"][..], &["hold", "job"], &["status", "job"]] {
            let line = in_private_tmp(&setup, args).fails_with(69);
            assert!(line.contains(&format!("refusing default lock directory {dir}: {why}")), "{setup}: {line}");
        }
    }
}

// ---------------------------------------------------------------- bad numbers

#[test]
fn bad_timeouts_leases_and_permits_are_64() {
    let d = LockDir::new();
    let url = d.url();
    for w in ["-1", "1e30", "abc", "nan", "inf", "", "-0.5"] {
        let line = run(&["run", "-u", &url, "-w", w, "job", "--", "true"]).fails_with(64);
        assert!(line.contains("timeout") || line.contains("SECS"), "{line}");
    }
    for lease in ["abc", "-1s", "1ms", "5 parsecs"] {
        run(&["run", "-u", &url, "--lease", lease, "job", "--", "true"]).fails_with(64);
    }
    let line = run(&["run", "-u", &url, "--permits", "0", "job", "--", "true"]).fails_with(64);
    assert!(line.contains("permit"), "{line}");
    run(&["run", "-u", &url, "-s", "--permits", "2", "job", "--", "true"]).fails_with(64);
    run(&["run", "-u", &url, "--kill-after", "forever", "job", "--", "true"]).fails_with(64);
}

/// `--lease` on a backend whose locks do not expire is refused with one line (exit 69, as every
/// `Unsupported`), not ignored; a bad value is still a usage error first.
#[test]
fn a_lease_on_a_backend_without_leases_is_refused() {
    let d = LockDir::new();
    let url = d.url();
    for cmd in ["run", "hold"] {
        let mut args = vec![cmd, "-u", &url, "--lease", "30s", "job"];
        if cmd == "run" {
            args.extend(["--", "true"]);
        }
        let line = run(&args).fails_with(69);
        assert!(line.contains("a lease for one acquisition") && line.contains("do not expire"), "{cmd}: {line}");
    }
    run(&["run", "-u", &url, "--lease", "1ms", "job", "--", "true"]).fails_with(64);
}

// ---------------------------------------------------------------- status

#[test]
fn status_shows_free_and_held_locks() {
    let d = LockDir::new();
    let url = d.url();
    let out = run(&["status", "-u", &url, "job"]);
    out.succeeds();
    assert!(out.stdout.starts_with("job: free"), "{}", out.stdout);

    let (holder, _) = hold(&["-u", &url, "job"]);
    let (_r, _) = hold(&["-u", &url, "-s", "cache"]);
    let (_s, _) = hold(&["-u", &url, "--permits", "3", "slots"]);
    let out = run(&["status", "-u", &url, "job", "cache", "slots", "other"]);
    out.succeeds();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(lines[0].starts_with("job: held exclusive"), "{}", lines[0]);
    assert!(lines[0].contains(&format!("pid {}", holder.pid())), "{}", lines[0]);
    assert!(lines[1].starts_with("cache: held shared (1)"), "{}", lines[1]);
    assert!(lines[2].starts_with("slots: 1 of 3 permits held"), "{}", lines[2]);
    assert!(lines[3].starts_with("other: free"), "{}", lines[3]);
}

#[test]
fn status_on_a_missing_directory_says_free_and_creates_nothing() {
    let d = LockDir::new();
    let out = run(&["status", "-u", &d.url(), "job", "other"]);
    out.succeeds();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with("job: free"), "{}", out.stdout);
    assert!(lines[1].starts_with("other: free"), "{}", out.stdout);
    assert!(!exists(&d.dir), "status created the lock directory");
    assert!(walk(d.tmp.path()).is_empty(), "{:?}", walk(d.tmp.path()));
    // Its parent must exist, though: interlock never creates parents.
    let url = format!("file://{}/no/such/parent", d.tmp.path().display());
    let line = run(&["status", "-u", &url, "job"]).fails_with(69);
    assert!(line.contains("/no/such"), "{line}");
}

#[test]
fn run_creates_a_missing_lock_directory_with_mode_0700() {
    let d = LockDir::new();
    run(&["run", "-u", &d.url(), "job", "--", "true"]).succeeds();
    let mode = std::fs::metadata(&d.dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(exists(&d.path("job")));
}

/// `interlock ARGS...` as uid/gid 65534 (nobody), for tests run as root.
fn as_nobody(args: &[&str]) -> cli_support::Out {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", cli_support::BIN]).args(args);
    c.env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG");
    output(c)
}

/// Like `flock(1)`, status only reads: a directory nobody can write to is fine. An acquisition that
/// must create a file there gets the system's error naming the path (69).
#[test]
fn status_works_in_a_directory_it_cannot_write() {
    if !rustix::process::geteuid().is_root() {
        return eprintln!("status_works_in_a_directory_it_cannot_write: needs root to switch users; skipped");
    }
    if !cli_support::require_tool("setpriv", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    // The test's temp dir is 0700; let nobody in, but not write.
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(&d.dir).unwrap();
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = d.url();
    let (holder, _) = hold(&["-u", &url, "job"]);
    let out = as_nobody(&["status", "-u", &url, "job", "other"]);
    out.succeeds();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("job: held exclusive by pid {}", holder.pid())), "{}", out.stdout);
    assert!(lines[1].starts_with("other: free"), "{}", out.stdout);
    let line = as_nobody(&["run", "-u", &url, "other", "--", "true"]).fails_with(69);
    assert!(line.contains(&d.path("other").display().to_string()), "{line}");
    assert!(!exists(&d.path("other")));
}

// ---------------------------------------------------------------- secrets

#[test]
fn passwords_are_never_printed() {
    let d = LockDir::new();
    let urls = [
        "redis://u:hunter2@127.0.0.1:1/0",
        "rediss://:hunter2@127.0.0.1:1",
        "mysql://root:hunter2@127.0.0.1:1/db",
        "redis://u:hunter2@127.0.0.1:1/%zz",
        "redis://u:hunter2@127.0.0.1:1/0?bad",
        "gopher://u:hunter2@x",
        "file://u:hunter2@/tmp/x",
        "memory://u:hunter2@x",
        // Without `://`: still a user and a password.
        "mysql//root:hunter2@db",
        "memory:u:hunter2@x",
        "redis:u:hunter2@127.0.0.1:1",
        "u:hunter2@127.0.0.1",
        "file:u:hunter2@/tmp/x",
        // Options whose names look secret (unknown to every backend, refused, never echoed).
        "memory://?password=hunter2",
        "redis://127.0.0.1:1/0?lease=1s&auth_token=hunter2",
        "rediss://127.0.0.1:1?Api_Key=hunter2",
        "file:///tmp/x?PASSWD=hunter2",
        "redis://127.0.0.1:1/0?secret=hun:ter2@x",
    ];
    let check = |mut c: std::process::Command, what: &str| {
        c.env("INTERLOCK_LOG", "trace").current_dir(d.tmp.path());
        let out = output(c);
        assert!(!out.status.success(), "{what}");
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!all.contains("hunter2") && !all.contains("ter2@"), "{what} printed the password: {all}");
        assert!(!all.contains("panicked"), "{all}");
    };
    for url in urls {
        let runs: [&[&str]; 4] = [
            &["run", "job", "--", "true"],
            &["hold", "job"],
            &["status", "job"],
            &["demo", "flash-sale", "--buyers", "1"],
        ];
        for args in runs {
            // With -u ...
            let mut c = interlock();
            c.args(&args[..1]).args(["-u", url]).args(&args[1..]);
            check(c, &format!("{args:?} -u {url}"));
            // ... and with $INTERLOCK_URL.
            let mut c = interlock();
            c.env("INTERLOCK_URL", url).args(args);
            check(c, &format!("INTERLOCK_URL={url} {args:?}"));
        }
        let mut c = interlock();
        c.env("INTERLOCK_URL", url).args(["run", "job", "--", "true"]);
        one_error_line(&output(c).stderr);
        // A URL where clap does not expect it is echoed in clap's error: redacted too.
        for args in [&["hold", "job", url][..], &["run", "job", url], &["status", "--bogus", url]] {
            let mut c = interlock();
            c.args(args);
            check(c, &format!("{args:?}"));
        }
    }
}

// ---------------------------------------------------------------- worker (test helper)

#[test]
fn worker_increments_exactly_under_the_lock_with_increasing_tokens() {
    let d = LockDir::new();
    let counter = d.tmp.path().join("counter");
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut c = interlock();
        c.args(["worker", "-u", &d.url(), "ctr", "--counter", counter.to_str().unwrap()]);
        c.args(["--threads", "2", "--iterations", "25", "--hold-us", "50", "--wait-stdin"]);
        let p = Proc::spawn(c);
        assert_eq!(p.line(), "ready");
        workers.push(p);
    }
    for p in &mut workers {
        p.close_stdin();
    }
    let mut records = Vec::new();
    for p in &mut workers {
        assert!(p.wait().success(), "{}", p.stderr());
        for line in p.all_stdout().lines().skip(1) {
            let (value, token) = line.split_once(' ').unwrap();
            records.push((value.parse::<u64>().unwrap(), token.parse::<u64>().unwrap()));
        }
    }
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "100");
    records.sort();
    assert_eq!(records.len(), 100);
    for (i, w) in records.windows(2).enumerate() {
        assert_eq!(w[0].0, i as u64, "every value read exactly once");
        assert!(w[1].1 > w[0].1, "tokens must strictly increase with the value read: {w:?}");
    }
}
