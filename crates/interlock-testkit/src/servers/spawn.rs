//! How server processes are started so that none outlives the test process, however it ends.
//!
//! Two mechanisms, the second backing up the first:
//!
//! 1. **Parent-death signal.** Every server gets `PR_SET_PDEATHSIG = SIGKILL` between `fork` and
//!    `exec`, after its user id is set (a change of credentials clears that setting, which is why
//!    servers that must not run as root get their user from `Command::uid`/`gid` here rather than
//!    from `setpriv`, whose `setresuid` would run after our `prctl`). The kernel sends the signal
//!    when the *thread* that forked the child exits, not the process; test threads end with their
//!    test, while a server shared through a `static` must live as long as the binary. So every
//!    fork happens on one spawner thread that lives until the process ends: a `kill -9` of the test
//!    binary, its normal `exit`, or a panic that aborts it all kill the servers at once.
//! 2. **Reaper.** The first server start also starts a small `sh` in a process group of its own
//!    (so Ctrl-C of `cargo test` does not reach it), whose standard input is a pipe from this
//!    process. The pipe reaches end-of-file only when this process is gone (every descriptor we
//!    create is close-on-exec, so no child keeps it open). Then the reaper SIGKILLs every process
//!    whose working directory is inside this process's server directory (servers run there, and
//!    so do their own children, such as PostgreSQL's backends), and removes the directory. Servers
//!    shared through a `static` are never dropped, so their data directories go this way too.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

use rustix::process::Signal;

type Job = (Command, Sender<io::Result<Child>>);

/// This process's server directory, reaper and spawner thread.
#[derive(Debug)]
struct Session {
    root: PathBuf,
    reaper_pid: u32,
    spawner: Mutex<Sender<Job>>,
    /// Never written to and never closed while we live: its end-of-file tells the reaper we died.
    _reaper_stdin: ChildStdin,
}

/// The reaper: waits for end-of-file on stdin, kills what runs inside `$1` (unless `$2` is
/// `nokill`), removes `$1`.
const REAPER: &str = r#"
trap '' INT TERM HUP QUIT PIPE
root=$1
cat >/dev/null
i=0
[ "$2" = nokill ] && i=100
while [ $i -lt 100 ]; do
  left=
  for link in $(find /proc -mindepth 2 -maxdepth 2 -name cwd -lname "$root/*" 2>/dev/null); do
    pid=${link#/proc/}; pid=${pid%/cwd}
    kill -KILL "$pid" 2>/dev/null && left=1
  done
  [ -z "$left" ] && break
  i=$((i+1)); sleep 0.05
done
rm -rf -- "$root" 2>/dev/null || { sleep 0.2; rm -rf -- "$root"; }
"#;

/// For the testkit's own tests, which show that each mechanism alone is enough:
/// `INTERLOCK_TESTKIT_ONLY=pdeathsig` keeps the reaper from killing anything (it still removes
/// the directory), `INTERLOCK_TESTKIT_ONLY=reaper` gives servers no parent-death signal.
const ONLY_ENV: &str = "INTERLOCK_TESTKIT_ONLY";

fn only(mechanism: &str) -> bool {
    static ONLY: OnceLock<Option<String>> = OnceLock::new();
    ONLY.get_or_init(|| std::env::var(ONLY_ENV).ok()).as_deref() == Some(mechanism)
}

/// This process's session, set up by the first caller. A failure (an unusable `$TMPDIR`, no
/// `sh`, no thread) is returned, not cached: the next caller tries again.
fn session() -> io::Result<&'static Session> {
    static SESSION: OnceLock<Session> = OnceLock::new();
    static SETUP: Mutex<()> = Mutex::new(());
    if let Some(s) = SESSION.get() {
        return Ok(s);
    }
    let _one_at_a_time = SETUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = SESSION.get() {
        return Ok(s);
    }
    let session = Session::start()?;
    Ok(SESSION.get_or_init(|| session))
}

impl Session {
    fn start() -> io::Result<Session> {
        let context = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        let root =
            tempfile::Builder::new().prefix(&format!("interlock-servers-{}-", std::process::id())).tempdir().map_err(
                |e| context(&format!("cannot create a directory in {} ($TMPDIR)", std::env::temp_dir().display()), e),
            )?;
        // Servers that run as another user must reach their own directory inside.
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| context(&format!("cannot chmod {}", root.path().display()), e))?;
        let mut reaper = Command::new("sh")
            .args(["-c", REAPER, "interlock-testkit-reaper"])
            .arg(root.path())
            .arg(if only("pdeathsig") { "nokill" } else { "kill" })
            .current_dir("/")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| context("cannot start the servers' reaper (sh)", e))?;
        let reaper_pid = reaper.id();
        let Some(reaper_stdin) = reaper.stdin.take() else {
            let _ = reaper.kill();
            let _ = reaper.wait();
            return Err(io::Error::other("the servers' reaper (sh) has no standard input"));
        };
        // Not waited for: it outlives us on purpose. Dropping a `Child` neither kills nor waits.
        drop(reaper);

        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("interlock-testkit-spawner".into())
            .spawn(move || {
                // Ends only with the process: `SESSION` holds the sender forever.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            // The reaper sees its stdin close when `reaper_stdin` is dropped here, and removes
            // the directory (`keep` has not run yet, so `root` would remove it too).
            .map_err(|e| context("cannot start the servers' spawner thread", e))?;
        Ok(Session { root: root.keep(), reaper_pid, spawner: Mutex::new(tx), _reaper_stdin: reaper_stdin })
    }
}

/// The directory that holds every server home of this process (made by the first call, in
/// `$TMPDIR`); the reaper removes it when this process is gone.
///
/// # Errors
///
/// When it cannot be made (`$TMPDIR` missing or not writable), or the reaper or the spawner
/// thread cannot be started.
pub fn session_dir() -> io::Result<&'static Path> {
    Ok(&session()?.root)
}

/// The reaper's process id (see the module docs).
///
/// # Errors
///
/// As [`session_dir`].
pub fn reaper_pid() -> io::Result<u32> {
    Ok(session()?.reaper_pid)
}

/// Spawns `cmd` on the spawner thread, with SIGKILL as its parent-death signal.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<Child> {
    if !only("reaper") {
        die_with_parent(&mut cmd);
    }
    let (reply_tx, reply_rx) = channel();
    session()?
        .spawner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// Makes the child get SIGKILL when the thread that forks it (the spawner) ends, that is when
/// this process ends.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: `pre_exec` runs the closure in the forked child before `exec`, where only
    // async-signal-safe work is allowed. It makes two raw system calls (`prctl`, `getppid`)
    // through rustix, reads a copied `Pid`, and builds an `io::Error` from an errno (no
    // allocation). std runs it after `setgid`/`setuid`, so the setting survives to `exec`.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // If we died before the line above, no signal will come: give up instead.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from(rustix::io::Errno::SRCH));
            }
            Ok(())
        });
    }
}
