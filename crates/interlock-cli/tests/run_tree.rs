//! `interlock run` keeps the command's whole process tree inside the lock, and signals reach the
//! command once: background children, `kill` of interlock, `kill -9` of interlock, `timeout`,
//! `nohup`, Ctrl-C and Ctrl-Z in a terminal, descendants in other process groups, a lost lock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{BIN, LockDir, Proc, interlock, run};
use rustix::process::Signal;

/// `interlock run -u URL NAME -- sh -c SCRIPT`, started.
fn start(url: &str, name: &str, script: &str) -> Proc {
    let mut c = interlock();
    c.args(["run", "-u", url, name, "--", "sh", "-c", script]);
    Proc::spawn(c)
}

/// Shell code that waits until the file `gate` exists: a process that stays in its critical
/// section until the test lets it go, however slow the machine.
fn wait_for(gate: &Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.02; done", gate.display())
}

/// The lines of `path` (empty if missing).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// `run -n NAME -- true`: 0 when the lock was free, 1 when held.
fn try_lock(url: &str, name: &str) -> Option<i32> {
    run(&["run", "-u", url, "-n", name, "--", "true"]).code()
}

/// A Python program that appends SIGNAL's name to `log` on each delivery (a shell would merge
/// two deliveries that come close together), prints `ready`, lives for `argv[1]` seconds, then
/// appends `end`.
fn counter(signal: &str, log: &Path) -> String {
    format!(
        "import signal, sys, time\n\
         signal.signal(signal.SIG{signal}, lambda *_: open({log:?}, 'a').write('{signal}\\n'))\n\
         print('ready', flush=True)\n\
         end = time.monotonic() + float(sys.argv[1])\n\
         while time.monotonic() < end: time.sleep(0.01)\n\
         open({log:?}, 'a').write('end\\n')\n",
        log = log.display().to_string()
    )
}

/// True while process `pid` exists (and is not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The state letter of process `pid` (`R`, `S`, `T` for stopped, ...).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).unwrap_or('?')
}

/// Waits until `cond` holds, failing the test after 20 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + cli_support::LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- the whole tree holds the lock

#[test]
fn a_background_child_keeps_the_lock_after_the_command_exits() {
    let d = LockDir::new();
    let url = d.url();
    let log = d.tmp.path().join("log");
    let gate = d.tmp.path().join("gate");
    let script = format!("({}; echo child >> {log}) & echo parent-exits", wait_for(&gate), log = log.display());
    let mut p = start(&url, "x", &script);
    assert_eq!(p.line(), "parent-exits");
    // The command itself has exited; its child has not: the lock stays held.
    assert_eq!(try_lock(&url, "x"), Some(1));
    assert!(lines(&log).is_empty(), "the child was still waiting");
    std::fs::write(&gate, "").unwrap();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(lines(&log), ["child"], "interlock exits only after the last descendant");
    assert_eq!(try_lock(&url, "x"), Some(0));
}

#[test]
fn a_daemon_that_detaches_still_runs_inside_the_lock() {
    // setsid + double fork: the daemon is orphaned, and re-parented to interlock (the subreaper).
    let d = LockDir::new();
    let url = d.url();
    let log = d.tmp.path().join("log");
    let gate = d.tmp.path().join("gate");
    let script = format!(
        "(setsid sh -c '{}; echo daemon >> {log}' < /dev/null > /dev/null 2>&1 &); echo detached",
        wait_for(&gate),
        log = log.display()
    );
    let mut p = start(&url, "x", &script);
    assert_eq!(p.line(), "detached");
    assert_eq!(try_lock(&url, "x"), Some(1));
    std::fs::write(&gate, "").unwrap();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(lines(&log), ["daemon"]);
    assert_eq!(try_lock(&url, "x"), Some(0));
}

#[test]
fn sigterm_reaches_every_process_of_the_command_once_and_the_lock_waits_for_all() {
    let d = LockDir::new();
    let url = d.url();
    let log = d.tmp.path().join("log");
    // The parent exits at once on SIGTERM; its child takes its time to finish.
    let gate = d.tmp.path().join("gate");
    let script = format!(
        "trap 'echo parent-term >> {log}; exit 0' TERM; \
         (trap 'echo child-term >> {log}; {wait}; echo child-end >> {log}; exit 0' TERM; \
          while :; do sleep 0.05; done) & \
         echo ready; wait",
        wait = wait_for(&gate),
        log = log.display()
    );
    let mut p = start(&url, "x", &script);
    assert_eq!(p.line(), "ready");
    std::thread::sleep(Duration::from_millis(100));
    p.signal(Signal::TERM);
    eventually("both got SIGTERM", || lines(&log).len() >= 2);
    // The child is still in its critical section: nobody else may have the lock.
    assert_eq!(try_lock(&url, "x"), Some(1));
    std::fs::write(&gate, "").unwrap();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    let mut got = lines(&log);
    got.sort();
    assert_eq!(got, ["child-end", "child-term", "parent-term"], "each process once, and the child finished");
    assert_eq!(try_lock(&url, "x"), Some(0));
}

#[test]
fn signals_reach_descendants_in_other_process_groups_and_sessions() {
    let d = LockDir::new();
    let url = d.url();
    let log = d.tmp.path().join("log");
    let script = format!(
        "setsid sh -c 'trap \"echo usr1 >> {log}; exit 0\" USR1; echo ready; exec > /dev/null 2>&1; \
         while :; do sleep 0.05; done' & wait",
        log = log.display()
    );
    let mut p = start(&url, "x", &script);
    assert_eq!(p.line(), "ready");
    p.signal(Signal::USR1);
    assert!(p.wait().code().is_some(), "{}", p.stderr());
    assert_eq!(lines(&log), ["usr1"]);
}

// ---------------------------------------------------------------- interlock killed with SIGKILL

#[test]
fn on_the_file_backend_the_command_keeps_the_lock_when_interlock_is_killed() {
    let d = LockDir::new();
    let url = d.url();
    let log = d.tmp.path().join("log");
    let gate = d.tmp.path().join("gate");
    let script = format!("echo ready; {}; echo done >> {log}", wait_for(&gate), log = log.display());
    let mut p = start(&url, "x", &script);
    assert_eq!(p.line(), "ready");
    // Not `kill9`, which also waits for the end of the output, which the command holds open.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    // As with flock(1): the command inherited the lock's descriptor.
    assert_eq!(try_lock(&url, "x"), Some(1));
    std::fs::write(&gate, "").unwrap();
    eventually("the command finished", || !lines(&log).is_empty());
    eventually("the lock is free once the command is gone", || try_lock(&url, "x") == Some(0));
}

#[test]
fn on_an_expiring_backend_the_command_and_its_children_die_with_interlock() {
    let mut c = interlock();
    c.env("INTERLOCK_ALLOW_IN_PROCESS", "1");
    c.args(["run", "-u", "memory://?lease=30s", "x", "--", "sh", "-c"]);
    c.arg("sleep 30 & echo $!; echo $$; exec > /dev/null 2>&1; wait");
    let mut p = Proc::spawn(c);
    let grandchild: i32 = p.line().parse().unwrap();
    let child: i32 = p.line().parse().unwrap();
    assert!(alive(child) && alive(grandchild));
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    eventually("the command got the parent-death signal", || !alive(child));
    eventually("the command's child was killed by the guardian", || !alive(grandchild));
}

/// The pids of `interlock guard --parent PARENT` processes.
fn guardians_of(parent: u32) -> Vec<u32> {
    let needle = format!("guard\0--parent\0{parent}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

#[test]
fn the_guardian_goes_when_the_command_is_done() {
    let mut c = interlock();
    c.env("INTERLOCK_ALLOW_IN_PROCESS", "1");
    c.args(["run", "-u", "memory://?lease=30s", "x", "--", "sh", "-c", "echo ready; sleep 0.3"]);
    let mut p = Proc::spawn(c);
    assert_eq!(p.line(), "ready");
    let pid = p.pid();
    assert_eq!(guardians_of(pid).len(), 1, "one guardian while the command runs");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert!(guardians_of(pid).is_empty(), "no guardian left behind");
    // None on the file backend, where the command keeps the lock if interlock dies.
    let d = LockDir::new();
    let mut p = start(&d.url(), "x", "echo ready; sleep 0.3");
    assert_eq!(p.line(), "ready");
    assert!(guardians_of(p.pid()).is_empty());
    assert_eq!(p.wait().code(), Some(0));
}

// ---------------------------------------------------------------- the lock is lost

#[test]
fn when_the_lock_is_lost_the_whole_tree_is_stopped() {
    let mut c = interlock();
    c.env("INTERLOCK_ALLOW_IN_PROCESS", "1");
    c.args(["run", "-u", "memory://?lease=200ms", "--kill-after", "300ms", "x", "--", "sh", "-c"]);
    // A grandchild that ignores SIGTERM: only SIGKILL, sent to the whole tree, ends it.
    c.arg("sh -c 'trap \"\" TERM; echo $$; exec > /dev/null 2>&1; while :; do sleep 0.05; done' & wait");
    let mut p = Proc::spawn(c);
    let grandchild: i32 = p.line().parse().unwrap();
    p.signal(Signal::STOP);
    std::thread::sleep(Duration::from_millis(800));
    p.signal(Signal::CONT);
    assert_eq!(p.wait().code(), Some(75), "{}", p.stderr());
    assert!(!alive(grandchild), "a process of the command outlived the lost lock");
}

// ---------------------------------------------------------------- signals arrive once

#[test]
fn timeout_delivers_sigterm_to_the_command_once() {
    if !cli_support::require_tool("timeout", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    let log = d.tmp.path().join("log");
    // `timeout 4`: time for interlock and Python to start on a loaded machine (with 1.5 s, a
    // SIGTERM once came before Python had its handler). The command logs each SIGTERM and ends
    // a second after the first, so a second delivery would still be logged.
    let script = format!(
        "import signal, time\n\
         end = time.monotonic() + 30\n\
         def on_term(*_):\n\
         \x20   global end\n\
         \x20   open({log:?}, 'a').write('TERM\\n')\n\
         \x20   end = min(end, time.monotonic() + 1)\n\
         signal.signal(signal.SIGTERM, on_term)\n\
         while time.monotonic() < end: time.sleep(0.01)\n\
         open({log:?}, 'a').write('end\\n')\n",
        log = log.display().to_string()
    );
    let mut c = Command::new("timeout");
    c.args(["4", BIN, "run", "-u", &d.url(), "x", "--", "python3", "-c", &script]);
    let out = cli_support::output(c);
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert_eq!(lines(&log), ["TERM", "end"], "SIGTERM must arrive exactly once");
}

#[test]
fn a_signal_ignored_at_start_stays_ignored_for_interlock_and_the_command() {
    if !cli_support::require_tool("nohup", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    let mut c = Command::new("nohup");
    c.env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG");
    c.args([BIN, "run", "-u", &d.url(), "x", "--", "sh", "-c", "echo ready; sleep 0.5; grep SigIgn /proc/self/status"]);
    let mut p = Proc::spawn(c);
    assert_eq!(p.line(), "ready");
    p.signal(Signal::HUP);
    assert_eq!(p.wait().code(), Some(0), "SIGHUP must not end the command: {}", p.stderr());
    let ign = p.all_stdout().lines().find_map(|l| l.strip_prefix("SigIgn:").map(str::trim).map(str::to_owned));
    let mask = u64::from_str_radix(&ign.expect("SigIgn line"), 16).unwrap();
    assert_ne!(mask & 1, 0, "the command inherited SIGHUP ignored (mask {mask:x})");
}

#[test]
fn sigtstp_stops_the_command_and_interlock_and_sigcont_resumes_both() {
    let d = LockDir::new();
    // The command waits for a line on stdin, not for a time that a loaded machine might outlast.
    // interlock gets a process group of its own, with its parent (this test) outside it, so the
    // group is never orphaned (a SIGTSTP to an orphaned group is ignored, by the kernel and by
    // interlock), even when the test itself runs in an orphaned group (started in the background
    // by a shell that has exited).
    let mut c = interlock();
    c.args(["run", "-u", &d.url(), "x", "--", "sh", "-c", "echo $$; read line; echo finished $line"]);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut p = Proc::spawn(c);
    let child: u32 = p.line().parse().unwrap();
    p.signal(Signal::TSTP);
    let deadline = Instant::now() + cli_support::LONG;
    while !(state(child) == 'T' && state(p.pid()) == 'T') {
        let states = (state(child), state(p.pid()));
        assert!(Instant::now() < deadline, "command and interlock not both stopped: {states:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.send("go\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.running() && state(child) == 'T', "a stopped command must not run on");
    p.signal(Signal::CONT);
    assert_eq!(p.line(), "finished go");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
}

/// Runs `argv` as the session leader of a new terminal (a pty), in its foreground; once `ready`
/// appears on the terminal, does `action` (`keys:TEXT` types TEXT, `hangup` closes the terminal,
/// `none`), and returns what Python saw (`stopped` if it stopped, then the exit status).
fn in_a_pty(argv: &[&str], action: &str) -> String {
    const PY: &str = r#"
import os, pty, select, sys, time
action, argv = sys.argv[1], sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
buf = b""
while b"ready" not in buf:
    r, _, _ = select.select([fd], [], [], 20)
    if not r: sys.exit("no ready from the command: %r" % buf)
    buf += os.read(fd, 100)
time.sleep(0.1)
if action.startswith("keys:"):
    os.write(fd, action[5:].encode())
elif action == "hangup":
    os.close(fd)
_, st = os.waitpid(pid, os.WUNTRACED)
if os.WIFSTOPPED(st):
    print("stopped", flush=True)
    time.sleep(0.3)
    os.killpg(pid, 18)  # SIGCONT, as a shell's fg does
    _, st = os.waitpid(pid, 0)
print("status", os.waitstatus_to_exitcode(st))
"#;
    let mut c = Command::new("python3");
    c.args(["-c", PY, action]).args(argv).env_remove("INTERLOCK_URL");
    let out = cli_support::output(c);
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// `in_a_pty` for `interlock run -u DIR x -- COMMAND` itself.
fn in_a_terminal(dir: &LockDir, command: &[&str], keys: &str) -> String {
    let url = dir.url();
    let mut argv = vec![BIN, "run", "-u", &url, "x", "--"];
    argv.extend(command);
    in_a_pty(&argv, &format!("keys:{keys}"))
}

/// On a backend whose locks expire, the command's process group is its guardian's: a command that
/// reads the terminal from there gets SIGTTIN, which the kernel sends to the whole group. The
/// guardian must not stop with it, nor interlock take that stop for the guardian's end (it then
/// lost track of the guardian and waited for it forever once the command was done: `interlock
/// run -u redis://... x -- ./ask-and-deploy.sh` hung in every terminal).
#[test]
fn a_command_that_reads_the_terminal_on_a_leased_backend_finishes() {
    if !cli_support::require_tool("python3", &["--version"]) {
        return;
    }
    const PY: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
buf = b""
def read(t):
    global buf
    r, _, _ = select.select([fd], [], [], t)
    if r:
        try: buf += os.read(fd, 1000)
        except OSError: time.sleep(t)
end = time.time() + 20
while b"ready" not in buf and time.time() < end: read(0.1)
time.sleep(0.3)
os.write(fd, b"hello\n")
end = time.time() + 15
while time.time() < end:
    read(0.1)
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        print("status", os.waitstatus_to_exitcode(st), "read" if b"got hello" in buf else "unread")
        sys.exit(0)
os.killpg(pid, 9)
print("hung: %r" % buf[-300:])
"#;
    let mut c = Command::new("python3");
    c.args(["-c", PY, BIN, "run", "-u", "memory://?lease=30s", "x", "--", "sh", "-c"])
        .arg("echo ready; read line; echo got $line")
        .env_remove("INTERLOCK_URL")
        .env("INTERLOCK_ALLOW_IN_PROCESS", "1");
    let out = cli_support::output(c);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "status 0 read", "{out:?}");
}

#[test]
fn ctrl_c_in_a_terminal_reaches_the_command_once() {
    if !cli_support::require_tool("python3", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    let log = d.tmp.path().join("log");
    let said = in_a_terminal(&d, &["python3", "-c", &counter("INT", &log), "1"], "\x03");
    assert_eq!(said.trim(), "status 0", "{said}");
    assert_eq!(lines(&log), ["INT", "end"], "SIGINT from the terminal must arrive exactly once");
}

// ---------------------------------------------------------------- in-process backends

#[test]
fn in_process_backends_are_refused_by_run_hold_and_status() {
    for args in [
        &["run", "-u", "memory://", "x", "--", "true"][..],
        &["hold", "-u", "memory://", "x"],
        &["status", "-u", "memory://", "x"],
    ] {
        let line = run(args).fails_with(64);
        assert!(line.contains("inside one process"), "{line}");
    }
}

#[test]
fn job_control_in_an_interactive_shell_ctrl_z_fg_and_a_background_job_that_reads_the_terminal() {
    if !cli_support::require_tool("python3", &["--version"]) || !cli_support::require_tool("bash", &["--version"]) {
        return;
    }
    // An interactive bash in a pty: the command, started in the background, stops when it reads
    // the terminal; the shell must see the job stopped, and `fg` (also after a Ctrl-Z) must let
    // it read.
    const PY: &str = r#"
import os, pty, select, sys, time
bin, url = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
buf = b""
last = b""
def until(s, t=20):
    global buf
    end = time.time() + t
    while s.encode() not in buf:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r: buf += os.read(fd, 1000)
        if time.time() > end: sys.exit("timed out waiting for %r: %r" % (s, buf[-300:]))
    global last
    i = buf.index(s.encode()) + len(s)
    last, buf = buf[:i], buf[i:]
def say(s): os.write(fd, s.encode())
def stopped():
    global buf
    for _ in range(100):
        say("jobs\n"); until("jobs"); until("$ ")
        if b"Stopped" in last: return
        time.sleep(0.2)
    sys.exit("the job never showed as stopped: %r" % (last[-3000:] + buf[-3000:]))
say("PS1='$ '\n"); until("$ ")
# A foreground job that does not use the terminal: Ctrl-Z reaches interlock's group, interlock
# passes it on and stops; fg resumes both.
say(f"{bin} run -u {url} y -- sh -c 'echo going; sleep 2; echo slept'\n"); until("going")
time.sleep(0.2)
say("\x1a"); until("Stopped"); until("$ ")
say("fg\n"); until("slept"); until("$ ")
say(f"{bin} run -u {url} x -- head -1 &\n"); until("$ ")
stopped()
say("fg\n"); until("head -1")
time.sleep(0.3)
say("\x1a"); until("Stopped"); until("$ ")
say("fg\n"); until("head -1")
time.sleep(0.3)
say("hello\n"); until("hello"); until("hello"); until("$ ")
say("echo rc=$?\n"); until("rc=0")
say("exit\n")
print("ok")
"#;
    let d = LockDir::new();
    // The file backend, and one whose locks expire, where the command's group is its guardian's
    // (quoted: the URL goes into the shell's command line).
    for url in [d.url(), "'memory://?lease=30s'".to_owned()] {
        let mut c = Command::new("python3");
        c.args(["-c", PY, BIN, &url])
            .env_remove("INTERLOCK_URL")
            .env("INTERLOCK_LOG", "debug")
            .env("INTERLOCK_ALLOW_IN_PROCESS", "1");
        let out = cli_support::output(c);
        assert!(out.status.success(), "{url}: {out:?}");
        assert_eq!(out.stdout.trim(), "ok", "{url}");
    }
}

#[test]
fn a_script_in_a_terminal_that_kills_its_background_interlock_reaches_the_command() {
    // The script and interlock share the terminal's foreground group (no job control in a
    // script): `kill $!` must still reach the command, once.
    if !cli_support::require_tool("python3", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    let log = d.tmp.path().join("log");
    let script = format!(
        "{bin} run -u {url} x -- python3 -c \"$1\" 3 & sleep 0.5; kill -TERM $!; wait $!",
        bin = BIN,
        url = d.url()
    );
    let said = in_a_pty(&["sh", "-c", &script, "sh", &counter("TERM", &log)], "none");
    assert_eq!(said.trim(), "status 0", "{said}");
    assert_eq!(lines(&log), ["TERM", "end"]);
}

#[test]
fn timeout_in_the_foreground_of_a_terminal_reaches_the_command_once() {
    if !cli_support::require_tool("python3", &["--version"]) || !cli_support::require_tool("timeout", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    let log = d.tmp.path().join("log");
    let url = d.url();
    let prog = counter("TERM", &log);
    let argv = ["timeout", "--foreground", "1", BIN, "run", "-u", &url, "x", "--", "python3", "-c", &prog, "2.5"];
    let said = in_a_pty(&argv, "none");
    assert_eq!(said.trim(), "status 124", "{said}");
    assert_eq!(lines(&log), ["TERM", "end"]);
}

#[test]
fn a_terminal_hangup_reaches_the_command_once() {
    // interlock is the session leader (as under `ssh -t host interlock run ...`): the kernel
    // sends it SIGHUP when the terminal goes away, and only it.
    if !cli_support::require_tool("python3", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    let log = d.tmp.path().join("log");
    let prog = format!(
        "import signal, sys, time\n\
         signal.signal(signal.SIGHUP, lambda *_: (open({log:?}, 'a').write('HUP\\n'), sys.exit(0)))\n\
         print('ready', flush=True)\n\
         time.sleep(5)\n\
         open({log:?}, 'a').write('end\\n')\n",
        log = log.display().to_string()
    );
    let url = d.url();
    let said = in_a_pty(&[BIN, "run", "-u", &url, "x", "--", "python3", "-c", &prog], "hangup");
    assert!(said.trim().starts_with("status"), "{said}");
    eventually("the command got SIGHUP", || !lines(&log).is_empty());
    assert_eq!(lines(&log), ["HUP"]);
}

#[test]
fn repeated_signals_are_all_passed_on() {
    let d = LockDir::new();
    let log = d.tmp.path().join("log");
    let mut c = interlock();
    c.args(["run", "-u", &d.url(), "x", "--", "python3", "-c", &counter("USR1", &log), "1.5"]);
    let mut p = Proc::spawn(c);
    assert_eq!(p.line(), "ready");
    for _ in 0..3 {
        p.signal(Signal::USR1);
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(lines(&log), ["USR1", "USR1", "USR1", "end"]);
}

/// Runs `interlock run ... -- grep Sig /proc/self/status` from Python after `prelude` (which
/// changes what interlock inherits), and returns the mask the command shows as `field`.
fn mask_after(prelude: &str, d: &LockDir, field: &str) -> u64 {
    let py = format!("import os, signal, sys\n{prelude}\nos.execv(sys.argv[1], sys.argv[1:])\n");
    let mut c = Command::new("python3");
    c.args(["-c", &py, BIN, "run", "-u", &d.url(), "x", "--", "grep", field, "/proc/self/status"]);
    c.env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG");
    let out = cli_support::output(c);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let mask = out.stdout.trim().strip_prefix(field).and_then(|m| m.strip_prefix(':')).map(str::trim);
    u64::from_str_radix(mask.unwrap_or_else(|| panic!("no {field} line: {out:?}")), 16).unwrap()
}

#[test]
fn a_blocked_sigchld_at_start_does_not_hang_run_and_the_command_inherits_the_mask() {
    let d = LockDir::new();
    let mask = mask_after("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})", &d, "SigBlk");
    assert_ne!(mask & (1 << 16), 0, "the command inherits the blocked SIGCHLD, as without interlock: {mask:x}");
}

#[test]
fn a_sigchld_ignored_at_start_stays_ignored_for_the_command() {
    // (A shell as the command would reset SIGCHLD itself; grep does not.)
    let d = LockDir::new();
    let mask = mask_after("signal.signal(signal.SIGCHLD, signal.SIG_IGN)", &d, "SigIgn");
    assert_ne!(mask & (1 << 16), 0, "SIGCHLD (17) must stay ignored: {mask:x}");
}

#[test]
fn sigtstp_in_an_orphaned_process_group_is_ignored_as_the_kernel_would() {
    // `setsid` makes interlock a session leader without a terminal: its group is orphaned, so no
    // shell could continue it, and the kernel would discard a SIGTSTP to a process there.
    if !cli_support::require_tool("setsid", &["--version"]) {
        return;
    }
    let d = LockDir::new();
    let mut c = Command::new("setsid");
    c.env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG");
    c.args(["--wait", BIN, "run", "-u", &d.url(), "x", "--", "sh", "-c", "echo $PPID; read line; echo finished $line"]);
    let mut p = Proc::spawn(c);
    let interlock: u32 = p.line().parse().unwrap();
    signal_pid(interlock, Signal::TSTP);
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(state(interlock), 'T', "interlock stopped in an orphaned group: nobody would continue it");
    p.send("go\n");
    assert_eq!(p.line(), "finished go");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
}

fn signal_pid(pid: u32, sig: Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}
