//! `interlock run NAME -- COMMAND`: what `flock(1)` does for files, on every backend.
//!
//! The lock covers the command's whole process tree. interlock becomes the tree's child
//! subreaper, so descendants that the command leaves behind are re-parented to it, and it releases
//! the lock only once the last of them has exited. On the file backend the command also inherits
//! the lock's descriptor, so the lock outlives even `kill -9` of interlock, as with `flock(1)`. On
//! backends whose locks expire, the command gets SIGKILL if interlock dies (nobody would renew the
//! lock any more).
//!
//! Signals: each signal that reaches interlock reaches each process of the command exactly once.
//! - Started in the foreground of a terminal, the command stays in interlock's process group, as
//!   under `flock(1)`: Ctrl-C, Ctrl-\ and Ctrl-Z reach it from the terminal itself, so interlock
//!   does not pass on signals that the kernel sent (or that a process of its own group sent, which
//!   is how `kill 0` reaches a whole group); it passes on the others.
//! - Anywhere else (scripts, cron, services, `timeout`, background jobs), the command gets a
//!   process group of its own, so a signal sent to interlock's group (`timeout`'s SIGTERM, a
//!   shell's SIGHUP to its jobs) reaches interlock alone, which passes it on to the command's tree.
//! - A signal that was ignored when interlock started (`nohup`) stays ignored, for the command too.
//! - SIGTSTP is passed on like the others, then interlock stops itself; SIGCONT continues the
//!   command again (in its own group).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use clap::Args;
use interlock::Guard;
use rustix::process::{Pid, Signal, WaitStatus};

use crate::acquire::{self, Held, LockArgs};
use crate::exit::{self, Failure, Outcome};
use crate::signals::{Caught, Signals};
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

/// The signals interlock passes on to the command (SIGCHLD tells it about the tree, SIGCONT and
/// SIGTSTP are handled for job control).
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

/// Where the command runs, relative to interlock's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// In interlock's group, which holds the terminal: the terminal signals both.
    SameGroup,
    /// In a group of its own: only interlock passes signals on.
    OwnGroup,
}

impl Mode {
    /// `SameGroup` when interlock's process group is the foreground group of its controlling
    /// terminal, else `OwnGroup`.
    fn detect(terminal: Option<&Terminal>) -> Mode {
        match terminal {
            Some(t) if t.is_ours() => Mode::SameGroup,
            _ => Mode::OwnGroup,
        }
    }
}

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
    let Held { provider, guard } = acquire::acquire(&args.lock).await?;
    let terminal = Terminal::open();
    let mode = Mode::detect(terminal.as_ref());
    // Before the command exists, so that no state change of it is missed.
    let mut signals = match Signals::install(CAUGHT) {
        Ok(s) => s,
        Err(failure) => return Err(release_quietly(guard, failure).await),
    };
    if let Err(e) = tree::become_subreaper() {
        return Err(release_quietly(guard, Failure::io("cannot become the command's subreaper", e)).await);
    }
    let inherit: Vec<OwnedFd> = match guard.lock_fds() {
        Ok(fds) => fds,
        Err(e) => return Err(release_quietly(guard, Failure::from_lock(&e, exit::CONFLICT_DEFAULT)).await),
    };
    let spec = Spec {
        own_group: mode == Mode::OwnGroup,
        death_signal: provider.capabilities().can_lose.then_some(Signal::KILL),
        inherit: &inherit,
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
    let mut runner = Runner {
        mode,
        tree: &mut tree,
        signals: &mut signals,
        my_group: rustix::process::getpgrp(),
        last: None,
        terminal,
        wants_terminal: false,
    };
    let lost = guard.lost();
    tokio::pin!(lost);
    let finished = tokio::select! {
        done = runner.until_done() => Some(done),
        () = &mut lost => None,
    };
    runner.take_terminal_back();
    match finished {
        Some(Ok(())) => finish(guard, runner.tree.status()).await,
        Some(Err(e)) => Err(release_quietly(guard, Failure::io("cannot wait for the command", e)).await),
        None => {
            runner.stop_after_loss(guard, args.kill_after).await;
            Ok(exit::LOCK_LOST)
        }
    }
}

/// Waits for the tree and passes signals on to it.
struct Runner<'a> {
    mode: Mode,
    tree: &'a mut Tree,
    signals: &'a mut Signals,
    my_group: Pid,
    /// The last signal passed on: which, from whom, when.
    last: Option<(Signal, Option<i32>, Instant)>,
    /// The controlling terminal, for job control in `OwnGroup` mode.
    terminal: Option<Terminal>,
    /// The command stopped to read or write the terminal: hand it the terminal when we are in
    /// the foreground again.
    wants_terminal: bool,
}

/// A second copy of one signal from one sender within this time is the same event: the kernel
/// would have merged it into the first had it still been pending, and `timeout(1)` sends its
/// signal twice, to its child and then to its process group.
const SAME_EVENT: Duration = Duration::from_millis(100);

impl Runner<'_> {
    /// Until no process of the tree is left.
    async fn until_done(&mut self) -> io::Result<()> {
        // A state change before the handler was installed would have been missed: look once.
        if self.tree.reap()? == Reaped::Done {
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
            Signal::CHILD => {
                let reaped = self.tree.reap()?;
                if let Reaped::Stopped(sig) = reaped {
                    self.command_stopped(sig);
                }
                Ok(reaped)
            }
            Signal::TSTP => {
                if self.forwards(caught) {
                    self.tree.signal(Signal::TSTP);
                }
                stop_ourselves();
                Ok(Reaped::Running)
            }
            sig => {
                if sig == Signal::CONT && self.wants_terminal && self.terminal.as_ref().is_some_and(Terminal::is_ours) {
                    // `fg`: the shell gave us the terminal; the command is the one that needs it.
                    if let (Some(t), Some(group)) = (&self.terminal, self.tree.group) {
                        t.give_to(group);
                    }
                }
                if self.forwards(caught) {
                    self.tree.signal(sig);
                }
                Ok(Reaped::Running)
            }
        }
    }

    /// Job control in `OwnGroup` mode, where the shell sees interlock, not the command: when the
    /// command stops for the terminal (reading or writing it from the background: SIGTTIN,
    /// SIGTTOU) or stops with the terminal's foreground that we handed it (Ctrl-Z), take the
    /// terminal back and stop too, so that the shell shows the job stopped and `fg` works.
    /// Other stops (a SIGSTOP sent to the command alone, our own forwarded SIGTSTP) change nothing.
    fn command_stopped(&mut self, sig: Signal) {
        if self.mode != Mode::OwnGroup {
            return;
        }
        let (Some(terminal), Some(group)) = (&self.terminal, self.tree.group) else { return };
        let handed = terminal.foreground() == Some(group);
        let for_terminal = sig == Signal::TTIN || sig == Signal::TTOU;
        if !(for_terminal || (handed && sig == Signal::TSTP)) || !tree::is_stopped(self.tree.child) {
            return;
        }
        self.wants_terminal = true;
        if handed {
            terminal.give_to(self.my_group);
        }
        stop_ourselves();
    }

    /// Before exiting: if the command's group still has the terminal's foreground, give it back to
    /// ours, where the shell left it.
    fn take_terminal_back(&self) {
        if let (Some(t), Some(group)) = (&self.terminal, self.tree.group)
            && t.foreground() == Some(group)
        {
            t.give_to(self.my_group);
        }
    }

    /// Whether `caught` must be passed on: only where the command's processes did not get it
    /// too, and only once per event (see [`SAME_EVENT`]).
    fn forwards(&mut self, caught: Caught) -> bool {
        let now = Instant::now();
        let repeat = self.last.is_some_and(|(sig, sender, at)| {
            sig == caught.signal && sender == caught.sender && now.duration_since(at) < SAME_EVENT
        });
        if repeat || !self.reached_only_us(caught) {
            return false;
        }
        self.last = Some((caught.signal, caught.sender, now));
        true
    }

    /// True when `caught` reached interlock but not the command.
    fn reached_only_us(&self, caught: Caught) -> bool {
        let sender_group = caught.sender.and_then(Pid::from_raw).and_then(|p| rustix::process::getpgid(Some(p)).ok());
        match self.mode {
            // The terminal (kernel) and members of our own group (`kill 0`) reached the command
            // already; the shell's SIGCONT after `fg` went to the whole group too.
            Mode::SameGroup => {
                !caught.from_kernel && caught.signal != Signal::CONT && sender_group != Some(self.my_group)
            }
            // Never bounce a signal that the command itself sent us back at it.
            Mode::OwnGroup => sender_group.is_none() || sender_group != self.tree.group,
        }
    }

    /// The lock is gone: says so, then stops the command's tree (SIGTERM, SIGKILL after `grace`),
    /// still passing our signals on meanwhile.
    async fn stop_after_loss(&mut self, guard: Guard, grace: Duration) {
        let name = guard.name().to_owned();
        let why = match guard.release().await {
            Err(e) => e.to_string(),
            Ok(()) => format!("lock {} was lost while held", exit::show_name(&name)),
        };
        exit::say(&format!("{why}; stopping the command (SIGTERM, then SIGKILL after {grace:?})"));
        self.tree.signal(Signal::TERM);
        if let Ok(Ok(())) = tokio::time::timeout(grace, self.until_done()).await {
            return;
        }
        tracing::debug!("the command outlived its grace period; sending SIGKILL");
        loop {
            self.tree.signal(Signal::KILL);
            match self.tree.reap() {
                Ok(Reaped::Done) | Err(_) => return,
                Ok(_) => {}
            }
            // Woken by the next SIGCHLD (or any signal), then kill whatever is still there.
            let caught = self.signals.recv().await;
            if caught.signal != Signal::CHILD && self.forwards(caught) {
                self.tree.signal(caught.signal);
            }
        }
    }
}

/// Stops interlock as a stop signal's default action would, so that the shell sees its job stop.
fn stop_ourselves() {
    if let Err(e) = rustix::process::kill_process(rustix::process::getpid(), Signal::STOP) {
        tracing::debug!(error = %e, "cannot stop ourselves");
    }
}

/// Releases the lock after the command's tree has exited, and picks the exit code.
async fn finish(guard: Guard, status: Option<WaitStatus>) -> Outcome {
    let code = status.map_or(1, |st| exit::child_code(std::os::unix::process::ExitStatusExt::from_raw(st.as_raw())));
    match guard.release().await {
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
