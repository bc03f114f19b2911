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

fn session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix(&format!("interlock-servers-{}-", std::process::id()))
            .tempdir()
            .expect("create the server directory")
            .keep();
        // Servers that run as another user must reach their own directory inside.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod the server directory");
        let mut reaper = Command::new("sh")
            .args(["-c", REAPER, "interlock-testkit-reaper"])
            .arg(&root)
            .arg(if only("pdeathsig") { "nokill" } else { "kill" })
            .current_dir("/")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server reaper (sh)");
        let reaper_stdin = reaper.stdin.take().expect("reaper stdin");
        let reaper_pid = reaper.id();
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
            .expect("start the spawner thread");
        Session { root, reaper_pid, spawner: Mutex::new(tx), _reaper_stdin: reaper_stdin }
    })
}

/// The directory that holds every server home of this process; the reaper removes it when this
/// process is gone.
pub fn session_dir() -> &'static Path {
    &session().root
}

/// The reaper's process id (see the module docs).
pub fn reaper_pid() -> u32 {
    session().reaper_pid
}

/// Spawns `cmd` on the spawner thread, with SIGKILL as its parent-death signal.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<Child> {
    if !only("reaper") {
        die_with_parent(&mut cmd);
    }
    let (reply_tx, reply_rx) = channel();
    session()
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
