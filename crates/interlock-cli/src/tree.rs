//! The command's whole process tree: `interlock run` starts the command, becomes its child
//! subreaper (so every descendant the command leaves behind is re-parented to interlock rather
//! than to init), reaps everything, signals every process of the tree, and knows when the last
//! one is gone. Linux only, like the rest of interlock.

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use rustix::io::FdFlags;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

/// How the command is started.
#[derive(Debug)]
pub struct Spec<'a> {
    /// Sent to the command if interlock dies first (`PR_SET_PDEATHSIG`): for locks that expire
    /// once interlock no longer renews them.
    pub death_signal: Option<Signal>,
    /// Descriptors the command inherits (the file backend's lock), close-on-exec cleared in the
    /// child only.
    pub inherit: &'a [OwnedFd],
    /// The signals interlock catches: the command starts with their default action (or ignoring
    /// them, for those in `ignored`), and none of them can reach interlock's handlers in the
    /// child between `fork` and `exec`.
    pub caught: &'a [Signal],
    /// Those of `caught` that were ignored when interlock started (SIGCHLD, which interlock
    /// catches anyway): the command inherits them ignored.
    pub ignored: &'a [Signal],
    /// Start a guardian first (see [`Tree::spawn`]), for locks that expire once interlock no
    /// longer renews them.
    pub guardian: bool,
    /// For the guardian: the lock's validity when the command starts, and how long before the
    /// validity runs out unrenewed the guardian stops the tree (`guard.rs`). Later instants go
    /// through [`Tree::lease_feed`].
    pub lease: Option<(Instant, Duration)>,
}

/// interlock's end of the guardian's lease feed (its standard input): one message per validity
/// instant of the lock. Non-blocking: a guardian that does not read (stopped with the whole tree)
/// never holds interlock up; the newest instant is what counts, and a full pipe (thousands of
/// unread renewals) only loses older ones. It remembers the newest instant, for a guardian
/// started in place of one that died ([`Tree::reap`]).
#[derive(Clone, Debug)]
pub struct LeaseFeed(Arc<StdMutex<FeedPipe>>);

#[derive(Debug)]
struct FeedPipe {
    writer: std::io::PipeWriter,
    newest: Instant,
}

impl LeaseFeed {
    fn new(writer: std::io::PipeWriter, first: Instant) -> LeaseFeed {
        LeaseFeed(Arc::new(StdMutex::new(FeedPipe { writer, newest: first })))
    }

    /// Tells the guardian that the lock is valid until `until`.
    pub fn send(&self, until: Instant) {
        let mut pipe = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pipe.newest = until;
        if let Err(e) = (&pipe.writer).write_all(&crate::guard::encode(until)) {
            tracing::debug!(error = %e, "cannot tell the guardian the lock's new validity");
        }
    }

    /// Feeds a new guardian from now on: `start` gets the newest instant and returns the write
    /// end of the new guardian's feed (which already holds that instant). No instant sent
    /// meanwhile is lost: `send` waits.
    fn replace(&self, start: impl FnOnce(Instant) -> io::Result<Option<std::io::PipeWriter>>) -> io::Result<()> {
        let mut pipe = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(writer) = start(pipe.newest)? {
            pipe.writer = writer;
        }
        Ok(())
    }
}

/// What [`Tree::reap`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaped {
    /// Some process of the tree still runs.
    Running,
    /// The command itself was stopped by this signal (job control).
    Stopped(Signal),
    /// No process of the tree is left.
    Done,
}

/// The running command and its descendants.
#[derive(Debug)]
pub struct Tree {
    me: Pid,
    /// The command's own process (the direct child).
    pub child: Pid,
    /// The command's process group: its own (the command leads it), or the guardian's.
    pub group: Pid,
    status: Option<WaitStatus>,
    /// The guardian (`interlock guard`) that kills the command's group if interlock dies: a
    /// child of ours, but not part of the tree.
    guardian: Option<Pid>,
    /// How the guardian ended, once reaped.
    guardian_status: Option<WaitStatus>,
    /// The guardian's margin before the lease's end (`--margin-ms`), for one started in place of
    /// a guardian that died.
    margin: Option<Duration>,
    /// The guardian died and no other could be started: the tree was killed.
    unguarded: bool,
    /// The guardian's lease feed (held as long as the tree: its end-of-file tells the guardian
    /// that interlock is gone).
    feed: Option<LeaseFeed>,
}

/// Makes this process the child subreaper of everything it starts from now on: orphaned
/// descendants are re-parented to us, so we can wait for them and signal them.
///
/// # Errors
///
/// The `prctl` error (old kernels).
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}

impl Tree {
    /// Starts `cmd` as `spec` says, in a process group of its own, or, with `spec.guardian`, in
    /// the group of a guardian started just before it: `interlock guard` (a re-execution of this
    /// binary, see `guard.rs`) gets SIGTERM when interlock dies and then kills its whole group,
    /// the command's tree. Started first, it leaves no moment in which interlock could die with
    /// the command running unguarded.
    ///
    /// Must be called from the thread that will outlive the command (the main thread): the
    /// parent-death signal fires when the *thread* that forked exits.
    ///
    /// # Errors
    ///
    /// The spawn error: the command was not found or could not be executed (or the guardian
    /// could not be started).
    pub fn spawn(cmd: &mut Command, spec: &Spec<'_>) -> io::Result<Tree> {
        let me = rustix::process::getpid();
        let (guardian, feed) = if spec.guardian {
            let (pid, writer) = spawn_guardian(me, spec.lease, None)?;
            (Some(pid), writer.zip(spec.lease).map(|(w, (first, _))| LeaseFeed::new(w, first)))
        } else {
            (None, None)
        };
        // The raw numbers are copied into the closure, which runs in the child where the
        // descriptors are the same numbers.
        let fds: Vec<i32> = spec.inherit.iter().map(AsRawFd::as_raw_fd).collect();
        let caught: Vec<i32> = spec.caught.iter().map(|s| s.as_raw()).collect();
        let ignored: Vec<i32> = spec.ignored.iter().map(|s| s.as_raw()).collect();
        cmd.process_group(Pid::as_raw(guardian));
        let to_block = caught.clone();
        let spawned = with_signals_blocked(&to_block, |mask| {
            child_setup(cmd, ChildSetup { parent: me, death: spec.death_signal, fds, caught, ignored, mask });
            cmd.spawn()
        });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                Tree::end_guardian(guardian);
                return Err(e);
            }
        };
        let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) else {
            Tree::end_guardian(guardian);
            return Err(io::Error::other("bad pid"));
        };
        // std's `Child` is dropped without waiting: we reap with `waitpid` ourselves.
        drop(child);
        Ok(Tree {
            me,
            child: pid,
            group: guardian.unwrap_or(pid),
            status: None,
            guardian,
            guardian_status: None,
            margin: spec.lease.map(|(_, margin)| margin),
            unguarded: false,
            feed,
        })
    }

    /// Reaps every child whose state changed (the command, and descendants re-parented to us);
    /// says whether any process of the tree is left, or how the command changed.
    ///
    /// # Errors
    ///
    /// An unexpected `waitpid` error.
    pub fn reap(&mut self) -> io::Result<Reaped> {
        let mut seen = Reaped::Running;
        loop {
            match rustix::process::wait(WaitOptions::NOHANG | WaitOptions::UNTRACED) {
                Ok(Some((pid, st))) if pid == self.child => {
                    if st.exited() || st.signaled() {
                        self.status = Some(st);
                    } else if let Some(sig) = st.stopping_signal().and_then(Signal::from_named_raw) {
                        seen = Reaped::Stopped(sig);
                    }
                }
                // A stop of the guardian (someone's SIGSTOP to the command's group) is not its end.
                Ok(Some((pid, st))) if Some(pid) == self.guardian && (st.exited() || st.signaled()) => {
                    // It killed the tree when the lease ran out, or someone killed it.
                    tracing::debug!(status = ?st, "the guardian process ended");
                    self.guardian = None;
                    self.guardian_status = Some(st);
                    if !self.killed_by_guardian() {
                        self.replace_guardian(pid, st);
                    }
                }
                Ok(Some(_)) => {} // a descendant re-parented to us: reaped (or the guardian stopped)
                Ok(None) => {
                    // The guardian is a child but not part of the tree: alone, it means done.
                    if let Some(guardian) = self.guardian
                        && descendants(self.me).iter().all(|p| p.pid == guardian.as_raw_nonzero().get())
                    {
                        self.stop_guardian();
                        continue;
                    }
                    return Ok(seen);
                }
                Err(rustix::io::Errno::CHILD) => return Ok(Reaped::Done),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The guardian `dead` ended while the tree runs (someone killed it: `kill -9`, the OOM
    /// killer), not because it killed the tree: without one, nothing would keep the tree inside
    /// the lease if interlock were paused, nor kill its group if interlock died. Another takes
    /// its place, in the command's process group, fed the newest validity instant. If none can
    /// be started (no process left for it, a process limit), the tree is killed: a command that
    /// could run past its lease unwatched is what the guardian is there to prevent (interlock
    /// then exits 75).
    fn replace_guardian(&mut self, dead: Pid, st: WaitStatus) {
        if descendants(self.me).is_empty() {
            return;
        }
        let how = match (st.exit_status(), st.terminating_signal()) {
            (Some(code), _) => format!("exited {code}"),
            (_, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".to_owned(),
        };
        let (me, group, margin) = (self.me, self.group, self.margin);
        let mut started = None;
        let result = match (&self.feed, margin) {
            (Some(feed), Some(margin)) => feed.replace(|newest| {
                let (pid, writer) = spawn_guardian(me, Some((newest, margin)), Some(group))?;
                started = Some(pid);
                Ok(writer)
            }),
            _ => spawn_guardian(me, None, Some(group)).map(|(pid, _)| started = Some(pid)),
        };
        match (result, started) {
            (Ok(()), Some(pid)) => {
                self.guardian = Some(pid);
                self.guardian_status = None;
                crate::exit::say(&format!(
                    "the guardian process ({}) {how} while the command ran: another one ({}) keeps the command \
                     inside the lock's lease",
                    dead.as_raw_nonzero(),
                    pid.as_raw_nonzero()
                ));
            }
            (result, _) => {
                let why = result.err().map_or_else(|| "no pid".to_owned(), |e| e.to_string());
                crate::exit::say(&format!(
                    "the guardian process ({}) {how} while the command ran, and no other can be started ({why}): \
                     the command is killed (SIGKILL), since nothing would keep it inside the lock's lease",
                    dead.as_raw_nonzero()
                ));
                self.unguarded = true;
                self.signal(Signal::KILL);
            }
        }
    }

    /// Kills and reaps the guardian: the tree is done.
    fn stop_guardian(&mut self) {
        Tree::end_guardian(self.guardian.take());
    }

    fn end_guardian(guardian: Option<Pid>) {
        if let Some(guardian) = guardian {
            let _ = rustix::process::kill_process(guardian, Signal::KILL);
            let _ = rustix::process::waitpid(Some(guardian), WaitOptions::empty());
        }
    }

    /// The command's own exit status, once it has exited.
    pub fn status(&self) -> Option<WaitStatus> {
        self.status
    }

    /// The guardian's lease feed, when it has one.
    pub fn lease_feed(&self) -> Option<LeaseFeed> {
        self.feed.clone()
    }

    /// True when the guardian killed the tree because the lock's lease ran out unrenewed (it
    /// then exits 75).
    pub fn killed_by_guardian(&self) -> bool {
        self.guardian_status.is_some_and(|st| st.exit_status() == Some(i32::from(crate::exit::LOCK_LOST)))
    }

    /// True when the tree was killed because its guardian died and no other could be started.
    pub fn killed_unguarded(&self) -> bool {
        self.unguarded
    }

    /// Sends `sig` to every process of the tree, each once: the command's process group with one
    /// `kill`, then every other descendant found under `/proc`, rescanning until a scan finds none
    /// not yet signalled (a process forked meanwhile gets it too).
    pub fn signal(&self, sig: Signal) {
        let group = self.group.as_raw_nonzero().get();
        let mut done: HashSet<i32> = HashSet::new();
        let mut members = descendants(self.me);
        // Only while the group can still be ours: its leader (the command, or the guardian) not
        // yet reaped (its pid, so the group id, cannot be reused until then), or one of our
        // processes still in it.
        if (self.status.is_none() || self.guardian.is_some() || members.iter().any(|p| p.pgid == group))
            && let Err(e) = rustix::process::kill_process_group(self.group, sig)
        {
            tracing::debug!(error = %e, "cannot signal the command's process group");
        }
        for _ in 0..16 {
            let mut fresh = false;
            let guardian = Pid::as_raw(self.guardian);
            for p in members.iter().filter(|p| p.pgid != group && p.pid != guardian) {
                if !done.insert(p.pid) {
                    continue;
                }
                fresh = true;
                match signal_scanned(*p, sig) {
                    Ok(true) => {}
                    // Its parent changed since the scan (re-parented to us, or a new process with
                    // that pid): look at it again in the next scan.
                    Ok(false) => {
                        done.remove(&p.pid);
                    }
                    Err(e) => tracing::debug!(pid = p.pid, error = %e, "cannot signal a process of the command"),
                }
            }
            if !fresh {
                return;
            }
            members = descendants(self.me);
        }
    }
}

/// Signals a process found by a `/proc` scan, and only that process: through a pidfd, taken
/// after checking that the pid still has the parent the scan saw, so a process that exited and
/// whose pid was reused by an unrelated one in between is never signalled. `Ok(false)` when the
/// parent changed (the caller scans again), `Ok(true)` when signalled or gone.
fn signal_scanned(p: ProcEntry, sig: Signal) -> io::Result<bool> {
    let Some(pid) = Pid::from_raw(p.pid) else { return Ok(true) };
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        // Gone already.
        Err(rustix::io::Errno::SRCH) => return Ok(true),
        // A kernel without pidfds (before 5.3): a plain kill, with the small window it has.
        Err(rustix::io::Errno::NOSYS) => {
            return rustix::process::kill_process(pid, sig).map(|()| true).map_err(Into::into);
        }
        Err(e) => return Err(e.into()),
    };
    // The pidfd refers to whatever process has the pid now: make sure it is the one we scanned
    // (same parent). From here on the pidfd cannot be redirected to another process.
    let now = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).ok().and_then(|t| parse_stat(&t));
    match now {
        None => return Ok(true),
        Some(n) if n.ppid != p.ppid => return Ok(false),
        Some(_) => {}
    }
    match rustix::process::pidfd_send_signal(&pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to every descendant of `root` but `except` (the guardian, from inside the command's
/// group, where a group-wide SIGSTOP would stop it too), each once, rescanning until a scan finds
/// none not yet signalled. While interlock lives, every process of the command's tree is its
/// descendant (it is their subreaper).
pub fn signal_all_below(root: Pid, except: Pid, sig: Signal) {
    let except = except.as_raw_nonzero().get();
    let mut done: HashSet<i32> = HashSet::new();
    for _ in 0..16 {
        let mut fresh = false;
        for p in descendants(root).into_iter().filter(|p| p.pid != except) {
            if !done.insert(p.pid) {
                continue;
            }
            fresh = true;
            match signal_scanned(p, sig) {
                Ok(true) => {}
                Ok(false) => {
                    done.remove(&p.pid);
                }
                Err(e) => tracing::debug!(pid = p.pid, error = %e, "cannot signal a process of the command"),
            }
        }
        if !fresh {
            return;
        }
    }
}

/// True while process `pid` is stopped (state `T` in `/proc/PID/stat`).
pub fn is_stopped(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
}

/// What the child sets up between `fork` and `exec`.
struct ChildSetup {
    parent: Pid,
    death: Option<Signal>,
    fds: Vec<i32>,
    caught: Vec<i32>,
    ignored: Vec<i32>,
    /// The signal mask to restore (the one interlock inherited).
    mask: libc::sigset_t,
}

/// Runs `f` with `signals` blocked in this thread, passing it the mask from before. The child
/// forked meanwhile starts with them blocked too, so none can run interlock's handler in it.
#[allow(unsafe_code)]
fn with_signals_blocked<T>(signals: &[i32], f: impl FnOnce(libc::sigset_t) -> T) -> T {
    // SAFETY: `sigset_t` is plain data, initialised by `sigemptyset` / `pthread_sigmask`; the
    // mask is changed for this thread only and restored before we return.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0;
        let out = f(old);
        if blocked {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        out
    }
}

/// Sets up the child between `fork` and `exec`: the parent-death signal, the inherited lock
/// descriptors, default (or ignored) actions for the signals interlock catches, then the signal
/// mask interlock inherited.
#[allow(unsafe_code)]
fn child_setup(cmd: &mut Command, setup: ChildSetup) {
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // work is allowed: raw system calls through rustix and libc's `signal` and `sigprocmask`
    // (async-signal-safe by POSIX), no allocation, no locks. It only reads `setup`, which was
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(sig) = setup.death {
                rustix::process::set_parent_process_death_signal(Some(sig))?;
                // interlock may have died before the line above: then nobody would signal us.
                if rustix::process::getppid() != Some(setup.parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            for &fd in &setup.fds {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, FdFlags::empty())?;
            }
            for &sig in &setup.caught {
                let action = if setup.ignored.contains(&sig) { libc::SIG_IGN } else { libc::SIG_DFL };
                libc::signal(sig, action);
            }
            libc::sigprocmask(libc::SIG_SETMASK, &setup.mask, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Starts `interlock guard --parent ME`, with SIGTERM as its parent-death signal, in a process
/// group of its own (whose id is its pid), or in the existing group `join` (a guardian started in
/// place of one that died); returns its pid. With `lease`, its standard input is a pipe that
/// already holds the first validity instant (`--margin-ms`), and the pipe's write end (for the
/// later ones) is returned.
fn spawn_guardian(
    me: Pid,
    lease: Option<(Instant, Duration)>,
    join: Option<Pid>,
) -> io::Result<(Pid, Option<std::io::PipeWriter>)> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("guard").arg("--parent").arg(me.as_raw_nonzero().to_string());
    let feed = match lease {
        Some((until, margin)) => {
            // Both ends close-on-exec: the command never holds either.
            let (reader, mut writer) = std::io::pipe()?;
            let mut flags = rustix::fs::fcntl_getfl(&writer)?;
            flags |= rustix::fs::OFlags::NONBLOCK;
            rustix::fs::fcntl_setfl(&writer, flags)?;
            writer.write_all(&crate::guard::encode(until))?;
            cmd.arg("--margin-ms").arg(margin.as_millis().max(1).to_string());
            cmd.stdin(reader);
            Some(writer)
        }
        None => {
            cmd.stdin(std::process::Stdio::null());
            None
        }
    };
    cmd.stdout(std::process::Stdio::null()).process_group(Pid::as_raw(join));
    guardian_setup(&mut cmd);
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw).ok_or_else(|| io::Error::other("bad pid"))?;
    Ok((pid, feed))
}

/// Sets up the guardian between `fork` and `exec`: SIGTERM when interlock dies; SIGTTIN and SIGTTOU
/// ignored (dispositions that survive `exec`): the kernel sends them to the command's whole
/// process group, the guardian's, when the command reads or writes the terminal from the
/// background, and the guardian must never be stopped by them (nor by its own messages on a
/// terminal with `tostop`).
#[allow(unsafe_code)]
fn guardian_setup(cmd: &mut Command) {
    // SAFETY: as in `child_setup`: raw system calls, `sigprocmask` and `signal` (async-signal-safe), in
    // the forked child before `exec`, on a `sigset_t` initialised by `sigemptyset`.
    unsafe {
        cmd.pre_exec(move || {
            // Blocked until the guardian has its handler: a SIGTERM before that stays pending
            // instead of ending it unnoticed.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGTTIN, libc::SIG_IGN);
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            // If interlock dies before this line, the guardian sees that itself (its parent changed).
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
            Ok(())
        });
    }
}

/// One process under `/proc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcEntry {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

/// True when process group `pgid` is orphaned: no member has a parent in another group of the
/// same session (POSIX). The kernel discards SIGTSTP, SIGTTIN and SIGTTOU sent to a process of an
/// orphaned group (when they would stop it), since no shell would ever continue it.
pub fn group_is_orphaned(pgid: Pid) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    let all: Vec<ProcEntry> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|t| parse_stat(&t)))
        .collect();
    let pgid = pgid.as_raw_nonzero().get();
    !all.iter().filter(|p| p.pgid == pgid).any(|member| {
        all.iter().any(|parent| parent.pid == member.ppid && parent.pgid != pgid && parent.sid == member.sid)
    })
}

/// Every descendant of `root` (not `root` itself), from `/proc/PID/stat`.
fn descendants(root: Pid) -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let all: Vec<ProcEntry> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|t| parse_stat(&t)))
        .collect();
    tree_below(&all, root.as_raw_nonzero().get())
}

/// The entries below `root` in the parent relation.
fn tree_below(all: &[ProcEntry], root: i32) -> Vec<ProcEntry> {
    let mut inside: HashSet<i32> = HashSet::from([root]);
    let mut out = Vec::new();
    // Parents come and go in any order under /proc: repeat until nothing new joins.
    loop {
        let before = out.len();
        for p in all {
            if p.pid != root && inside.contains(&p.ppid) && inside.insert(p.pid) {
                out.push(*p);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid pgrp ...`; `comm` may hold spaces and `)`.
fn parse_stat(text: &str) -> Option<ProcEntry> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut f = tail.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    Some(ProcEntry { pid, ppid, pgid, sid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_odd_names() {
        let e = parse_stat("4242 (sh) S 4000 4242 4000 0 -1 4194560 ...").unwrap();
        assert_eq!(e, ProcEntry { pid: 4242, ppid: 4000, pgid: 4242, sid: 4000 });
        let e = parse_stat("7 (a) b (c) R 1 7 7 0").unwrap();
        assert_eq!((e.pid, e.ppid, e.pgid), (7, 1, 7));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn finds_the_whole_tree_below_a_root() {
        let e = |pid, ppid| ProcEntry { pid, ppid, pgid: 0, sid: 0 };
        let all = [e(1, 0), e(10, 1), e(11, 10), e(12, 11), e(13, 10), e(20, 1)];
        let mut below: Vec<i32> = tree_below(&all, 10).iter().map(|p| p.pid).collect();
        below.sort();
        assert_eq!(below, [11, 12, 13]);
    }
}
