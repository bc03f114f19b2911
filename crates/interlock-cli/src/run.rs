//! `interlock run NAME -- COMMAND`: what `flock(1)` does for files, on every backend.
//!
//! The lock covers the command's whole process tree. interlock becomes the tree's child
//! subreaper, so descendants that the command leaves behind are re-parented to it, and it releases
//! the lock only once the last of them has exited. On the file backend the command also inherits
//! the lock's descriptor, so the lock outlives even `kill -9` of interlock, as with `flock(1)`. On
//! backends whose locks expire, the command gets SIGKILL if interlock dies (nobody would renew the
//! lock any more), and so does its process group, from a guardian process (`guard.rs`). The
//! guardian also keeps the tree inside the lease when interlock itself is paused or cannot renew:
//! interlock tells it each new validity instant, and it stops the tree (SIGSTOP) a margin before
//! the newest one runs out, continues it if a renewal comes in time, and kills it at the instant
//! itself; interlock passes no SIGCONT on to a tree inside that margin.
//!
//! Signals: the command runs in a process group of its own, so that a signal sent to interlock's
//! group (`timeout`, a shell's job control, the terminal's Ctrl-C while interlock has it) reaches
//! interlock alone, and interlock passes each signal it gets on to every process of the command's
//! tree, once. A signal ignored when interlock started (`nohup`) stays ignored, for the command
//! too. Job control works as a shell does it: when the command needs the terminal (it is stopped
//! by SIGTTIN or SIGTTOU) and interlock has it, interlock hands the terminal's foreground to the
//! command's group, takes it back when the command stops on Ctrl-Z (stopping its own group as the
//! terminal would have), and hands it over again on `fg`. See `docs/run.md`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use clap::Args;
use interlock::{Guard, ValidityWatch};
use rustix::process::{Pid, Signal, WaitStatus};

use crate::acquire::{self, Held, LockArgs};
use crate::exit::{self, Failure, Outcome};
use crate::signals::{self, Caught, Signals};
use crate::tree::{self, Reaped, Spec, Tree};
use crate::tty::Terminal;

/// Flags of `interlock run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// If the lock is lost while the command runs, it gets SIGTERM, and SIGKILL this long after
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = acquire::parse_dur)]
    pub kill_after: Duration,

    /// The command to run under the lock, and its arguments (after `--`)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// The signals interlock passes on to the command (SIGCHLD tells it about the tree; SIGTSTP and
/// SIGCONT are also handled for job control).
const CAUGHT: &[Signal] = &[
    Signal::HUP,
    Signal::INT,
    Signal::QUIT,
    Signal::TERM,
    Signal::USR1,
    Signal::USR2,
    Signal::ALARM,
    Signal::TSTP,
    Signal::CONT,
    Signal::CHILD,
];

/// Takes the lock, runs the command with `INTERLOCK_NAME` and `INTERLOCK_TOKEN` in its
/// environment and the signals passed on (module docs), and releases the lock when the command
/// and every process it left behind have exited.
///
/// Returns the command's exit status (`128 + N` if it died of signal N), or 75 when the lock was
/// lost: then the command's tree gets SIGTERM, and SIGKILL after `--kill-after`.
///
/// # Errors
///
/// A [`Failure`]: 64 without a command, the conflict code when the lock is held elsewhere, 127 or
/// 126 when the command cannot be found or executed, the library's code for backend errors.
pub async fn run(args: RunArgs) -> Outcome {
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Failure::usage("run needs a command after `--`: interlock run NAME -- COMMAND [ARGS...]"));
    };
    // The signals are caught before the command exists, so that no state change of it is missed
    // (and, on backends whose locks expire, before the wait: see acquire::acquire).
    let (Held { provider, guard }, mut signals) = acquire::acquire(&args.lock, CAUGHT).await?;
    if let Err(e) = tree::become_subreaper() {
        return Err(release_quietly(guard, Failure::io("cannot become the command's subreaper", e)).await);
    }
    let inherit: Vec<OwnedFd> = match guard.lock_fds() {
        Ok(fds) => fds,
        Err(e) => return Err(release_quietly(guard, Failure::from_lock(&e, exit::CONFLICT_DEFAULT)).await),
    };
    let ignored: Vec<Signal> =
        signals.registered().iter().copied().filter(|s| signals::ignored_at_start().contains(*s)).collect();
    // Locks that expire once interlock no longer renews them: the command must not outlive it,
    // nor its lease.
    let expiring = provider.capabilities().can_lose;
    let lease =
        args.lock.lease.or_else(|| provider.default_lease().map(|l| l.lease)).unwrap_or(interlock::DEFAULT_LEASE);
    let lease_watch = guard.validity_watch().filter(|_| expiring).map(|w| (w, crate::guard::margin(lease)));
    let spec = Spec {
        death_signal: expiring.then_some(Signal::KILL),
        inherit: &inherit,
        caught: signals.registered(),
        ignored: &ignored,
        guardian: expiring,
        lease: lease_watch.as_ref().and_then(|(w, margin)| w.valid_until().map(|t| (t, *margin))),
    };
    let mut cmd = std::process::Command::new(program);
    let token = guard.fencing_token().map(|t| t.to_string()).unwrap_or_default();
    cmd.args(rest).env("INTERLOCK_NAME", &args.lock.name).env("INTERLOCK_TOKEN", token);
    let mut tree = match Tree::spawn(&mut cmd, &spec) {
        Ok(tree) => tree,
        Err(e) => return Err(release_quietly(guard, spawn_failure(program, &e)).await),
    };
    // interlock's own copies are not needed: the guard holds the lock, the command its copies.
    drop(inherit);
    // Each renewal's new validity goes to the guardian (the first went with its start).
    let forwarder = tree.lease_feed().zip(lease_watch.clone()).map(|(feed, (mut watch, _))| {
        tokio::spawn(async move {
            while let Some(until) = watch.changed().await {
                feed.send(until);
            }
        })
    });
    let mut runner = Runner::new(&mut tree, &mut signals, lease_watch);
    let lost = guard.lost();
    tokio::pin!(lost);
    let finished = tokio::select! {
        done = runner.until_done() => Some(done),
        () = &mut lost => None,
    };
    runner.take_terminal_back();
    if let Some(f) = forwarder {
        f.abort();
    }
    match finished {
        Some(Ok(())) => finish(guard, runner.tree).await,
        Some(Err(e)) => {
            // Never release while the command may still run: end it first.
            runner.kill_all().await;
            Err(release_quietly(guard, Failure::io("cannot wait for the command", e)).await)
        }
        None => {
            runner.stop_after_loss(guard, args.kill_after).await;
            Ok(exit::LOCK_LOST)
        }
    }
}

/// Waits for the tree and passes signals on to it.
struct Runner<'a> {
    tree: &'a mut Tree,
    signals: &'a mut Signals,
    me: Pid,
    my_group: Pid,
    /// The last signal passed on: which, from whom, when it arrived.
    last: Option<(Signal, Option<i32>, Instant)>,
    /// The controlling terminal, for job control.
    terminal: Option<Terminal>,
    /// The command stopped to use the terminal: hand it the terminal whenever we have it.
    wants_terminal: bool,
    /// The lock's validity, and the guardian's margin before it, on backends whose locks expire.
    lease: Option<(ValidityWatch, Duration)>,
}

impl<'a> Runner<'a> {
    fn new(tree: &'a mut Tree, signals: &'a mut Signals, lease: Option<(ValidityWatch, Duration)>) -> Runner<'a> {
        Runner {
            tree,
            signals,
            me: rustix::process::getpid(),
            my_group: rustix::process::getpgrp(),
            last: None,
            terminal: Terminal::open(),
            wants_terminal: false,
            lease,
        }
    }

    /// Whether the command may be continued (SIGCONT): not when its lease's validity ends within
    /// the guardian's margin (the guardian stops the tree then, and continues it itself after a
    /// renewal), nor once the lock was released after a loss. Always on locks that do not expire.
    fn may_continue(&self) -> bool {
        match &self.lease {
            None => true,
            Some((watch, margin)) => watch.valid_until().is_some_and(|t| Instant::now() + *margin < t),
        }
    }

    /// Until no process of the tree is left.
    async fn until_done(&mut self) -> io::Result<()> {
        // A state change before the handler was installed would have been missed: look once.
        if self.reap()? == Reaped::Done {
            return Ok(());
        }
        loop {
            let caught = self.signals.recv().await;
            if self.handle(caught)? == Reaped::Done {
                return Ok(());
            }
        }
    }

    /// Handles one caught signal: reaps on SIGCHLD, passes the others on.
    fn handle(&mut self, caught: Caught) -> io::Result<Reaped> {
        match caught.signal {
            Signal::CHILD => self.reap(),
            Signal::TSTP if tree::group_is_orphaned(self.my_group) => {
                // The kernel would have discarded it (nobody could continue us): so do we.
                tracing::debug!("SIGTSTP in an orphaned process group: ignored, as the kernel would");
                Ok(Reaped::Running)
            }
            Signal::TSTP => {
                if self.forwards(caught) {
                    self.tree.signal(Signal::TSTP);
                }
                stop_ourselves();
                Ok(Reaped::Running)
            }
            Signal::CONT if !self.may_continue() => {
                // The guardian keeps the tree stopped until a renewal comes (it then continues
                // it): a SIGCONT now would let it run on as the lease runs out.
                tracing::debug!("SIGCONT not passed on: the lock's lease is about to run out unrenewed");
                Ok(Reaped::Running)
            }
            sig => {
                if sig == Signal::CONT {
                    self.hand_terminal_over();
                }
                if self.forwards(caught) {
                    self.tree.signal(sig);
                }
                Ok(Reaped::Running)
            }
        }
    }

    /// Reaps, and acts on a stop of the command (every stop is reported once: never drop one).
    fn reap(&mut self) -> io::Result<Reaped> {
        let reaped = self.tree.reap()?;
        if let Reaped::Stopped(sig) = reaped {
            self.command_stopped(sig);
        }
        Ok(reaped)
    }

    /// Job control, where the shell sees interlock and its group, not the command's:
    /// - the command stopped to read or write the terminal (SIGTTIN, SIGTTOU): if we have the
    ///   terminal, hand it over and continue the command; if not, stop too, so the shell shows the
    ///   job stopped, and hand it over on `fg`;
    /// - the command stopped on Ctrl-Z while it had the terminal: take the terminal back and stop
    ///   our own group, which is what the terminal would have done had we kept it.
    ///
    /// Other stops (a SIGSTOP sent to the command alone, a SIGTSTP we passed on) change nothing.
    fn command_stopped(&mut self, sig: Signal) {
        let Some(terminal) = &self.terminal else { return };
        let had_terminal = terminal.foreground() == Some(self.tree.group);
        let for_terminal = sig == Signal::TTIN || sig == Signal::TTOU;
        if !(for_terminal || (had_terminal && sig == Signal::TSTP)) || !tree::is_stopped(self.tree.child) {
            return;
        }
        self.wants_terminal = true;
        if had_terminal {
            terminal.give_to(self.my_group);
            kill_group(self.my_group, Signal::TSTP);
        } else if terminal.is_ours() {
            self.hand_terminal_over();
            if self.may_continue() {
                kill_group(self.tree.group, Signal::CONT);
            }
        } else {
            stop_ourselves();
        }
    }

    /// Gives the terminal to the command's group if the command needs it and we have it.
    fn hand_terminal_over(&self) {
        if let Some(t) = &self.terminal
            && self.wants_terminal
            && t.is_ours()
        {
            t.give_to(self.tree.group);
        }
    }

    /// Before exiting: if the command's group still has the terminal, give it back to ours,
    /// where the shell left it.
    fn take_terminal_back(&self) {
        if let Some(t) = &self.terminal
            && t.foreground() == Some(self.tree.group)
        {
            t.give_to(self.my_group);
        }
    }

    /// Whether `caught` must be passed on: not a repeat of the same event (see
    /// [`signals::SAME_EVENT`]), not something we sent ourselves (job control), not something a
    /// process of the command's group sent (never bounce a signal back at its sender), not a
    /// hangup the kernel also sent to the command's group because it had the terminal.
    fn forwards(&mut self, caught: Caught) -> bool {
        let repeat = self.last.is_some_and(|(sig, sender, at)| {
            sig == caught.signal && sender == caught.sender && caught.at.duration_since(at) < signals::SAME_EVENT
        });
        let sender = caught.sender.and_then(Pid::from_raw);
        let ours = sender == Some(self.me);
        let from_command = sender.and_then(|p| rustix::process::getpgid(Some(p)).ok()) == Some(self.tree.group);
        let terminal_hangup = caught.from_kernel
            && caught.signal == Signal::HUP
            && self.terminal.as_ref().and_then(Terminal::foreground) == Some(self.tree.group);
        if repeat || ours || from_command || terminal_hangup {
            return false;
        }
        self.last = Some((caught.signal, caught.sender, caught.at));
        true
    }

    /// The lock is gone: says so, then stops the command's tree (SIGTERM, SIGKILL after `grace`),
    /// still passing our signals on meanwhile. Never past the lease it had: when the lease ran
    /// out (the guardian stopped the tree before its end and kills it), SIGKILL at once; when
    /// the backend reported the loss earlier, the grace ends where the guardian's margin begins.
    async fn stop_after_loss(&mut self, guard: Guard, grace: Duration) {
        let name = guard.name().to_owned();
        let left = match &self.lease {
            Some((_, margin)) => {
                guard.valid_until().map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now() + *margin))
            }
            None => grace,
        };
        let why = match guard.release().await {
            Err(e) => e.to_string(),
            Ok(()) => format!("lock {} was lost while held", exit::show_name(&name)),
        };
        if left.is_zero() {
            exit::say(&format!("{why}; the command, stopped before the lease ran out, is killed (SIGKILL)"));
            self.kill_all().await;
            return;
        }
        let grace = grace.min(left);
        exit::say(&format!("{why}; stopping the command (SIGTERM, then SIGKILL after {grace:?})"));
        self.tree.signal(Signal::TERM);
        if let Ok(Ok(())) = tokio::time::timeout(grace, self.until_done()).await {
            return;
        }
        tracing::debug!("the command outlived its grace period; sending SIGKILL");
        self.kill_all().await;
    }

    /// SIGKILL to every process of the tree until none is left (one forking meanwhile included).
    async fn kill_all(&mut self) {
        loop {
            self.tree.signal(Signal::KILL);
            match self.reap() {
                Ok(Reaped::Done) | Err(_) => return,
                Ok(_) => {}
            }
            // Woken by the next SIGCHLD (or any signal), then kill whatever is still there.
            let caught = self.signals.recv().await;
            if caught.signal != Signal::CHILD {
                let _ = self.handle(caught);
            }
        }
    }
}

/// Sends `sig` to process group `group`, logging a failure.
fn kill_group(group: Pid, sig: Signal) {
    if let Err(e) = rustix::process::kill_process_group(group, sig) {
        tracing::debug!(group = group.as_raw_nonzero().get(), error = %e, "cannot signal a process group");
    }
}

/// Stops interlock as a stop signal's default action would, so that the shell sees its job stop.
fn stop_ourselves() {
    if let Err(e) = rustix::process::kill_process(rustix::process::getpid(), Signal::STOP) {
        tracing::debug!(error = %e, "cannot stop ourselves");
    }
}

/// Releases the lock after the command's tree has exited, and picks the exit code: 75 when the
/// guardian killed the tree because the lease ran out, even if a late renewal kept the lock.
async fn finish(guard: Guard, tree: &Tree) -> Outcome {
    let status: Option<WaitStatus> = tree.status();
    let code = status.map_or(1, |st| exit::child_code(std::os::unix::process::ExitStatusExt::from_raw(st.as_raw())));
    let name = exit::show_name(guard.name());
    match guard.release().await {
        Ok(()) if tree.killed_by_guardian() => Err(Failure::new(
            exit::LOCK_LOST,
            format!("lock {name}: the command was killed when its lease ran out before a renewal reached the guardian"),
        )),
        Ok(()) if tree.killed_unguarded() => Err(Failure::new(
            exit::LOCK_LOST,
            format!("lock {name}: the command was killed when its guardian died and no other could be started"),
        )),
        Ok(()) => Ok(code),
        Err(e) if e.is_lock_lost() => Err(Failure::from_lock(&e, exit::CONFLICT_DEFAULT)),
        Err(e) => {
            // The command finished under the lock; a failed release does not change its result.
            exit::say(&format!("warning: releasing the lock failed: {e}"));
            Ok(code)
        }
    }
}

/// Releases the lock on an early exit path, keeping `failure` as the result (a release error is
/// only logged: the failure is what the user needs to see).
async fn release_quietly(guard: Guard, failure: Failure) -> Failure {
    if let Err(e) = guard.release().await {
        tracing::warn!(error = %e, "releasing the lock failed");
    }
    failure
}

/// The failure for a command that could not be started: 127 when it does not exist, 126 when it
/// cannot be executed, as the shells do.
fn spawn_failure(program: &OsStr, err: &io::Error) -> Failure {
    let shown = exit::show_name(&program.to_string_lossy());
    match err.kind() {
        io::ErrorKind::NotFound => Failure::new(exit::NOT_FOUND, format!("cannot run {shown}: command not found")),
        _ => Failure::new(exit::NOT_EXECUTABLE, format!("cannot run {shown}: {err}")),
    }
}
