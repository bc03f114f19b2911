//! `interlock run NAME -- COMMAND`: what `flock(1)` does for files, on every backend.

use std::ffi::{OsStr, OsString};
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use clap::Args;
use interlock::Guard;
use rustix::process::Signal;
use tokio::process::{Child, Command};

use crate::acquire::{self, Held, LockArgs};
use crate::exit::{self, Failure, Outcome};
use crate::signals::{self, Signals};

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

/// Takes the lock, runs the command with `INTERLOCK_NAME` and `INTERLOCK_TOKEN` in its
/// environment, passes SIGINT, SIGTERM and SIGHUP on to it, and releases the lock when it exits.
///
/// Returns the command's exit status (`128 + N` if it died of signal N), or 75 when the lock was
/// lost: then the command gets SIGTERM, and SIGKILL after `--kill-after`.
///
/// # Errors
///
/// A [`Failure`]: 64 without a command, the conflict code when the lock is held elsewhere, 127 or
/// 126 when the command cannot be found or executed, the library's code for backend errors.
pub async fn run(args: RunArgs) -> Outcome {
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Failure::usage("run needs a command after `--`: interlock run NAME -- COMMAND [ARGS...]"));
    };
    let Held { provider: _provider, guard } = acquire::acquire(&args.lock).await?;
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(failure) => return Err(release_quietly(guard, failure).await),
    };
    let token = guard.fencing_token().map(|t| t.to_string()).unwrap_or_default();
    let spawned =
        Command::new(program).args(rest).env("INTERLOCK_NAME", &args.lock.name).env("INTERLOCK_TOKEN", token).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Err(release_quietly(guard, spawn_failure(program, &e)).await),
    };
    let pid = child.id();
    let lost = guard.lost();
    tokio::pin!(lost);
    let waited = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            () = &mut lost => break None,
            sig = signals.recv() => signals::send(pid, sig),
        }
    };
    match waited {
        Some(Ok(status)) => finish(guard, status).await,
        Some(Err(e)) => Err(release_quietly(guard, Failure::io("cannot wait for the command", e)).await),
        None => {
            stop_after_loss(guard, &mut child, &mut signals, args.kill_after).await;
            Ok(exit::LOCK_LOST)
        }
    }
}

/// Releases the lock after the command exited, and picks the exit code.
async fn finish(guard: Guard, status: ExitStatus) -> Outcome {
    let code = exit::child_code(status);
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

/// The lock is gone: says so, then stops the command (SIGTERM, SIGKILL after `grace`), still
/// passing our signals on to it meanwhile.
async fn stop_after_loss(guard: Guard, child: &mut Child, signals: &mut Signals, grace: Duration) {
    let name = guard.name().to_owned();
    let why = match guard.release().await {
        Err(e) => e.to_string(),
        Ok(()) => format!("lock {} was lost while held", exit::show_name(&name)),
    };
    exit::say(&format!("{why}; stopping the command (SIGTERM, then SIGKILL after {grace:?})"));
    let pid = child.id();
    signals::send(pid, Signal::TERM);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = child.wait() => return,
            () = &mut deadline => break,
            sig = signals.recv() => signals::send(pid, sig),
        }
    }
    tracing::debug!("the command outlived its grace period; sending SIGKILL");
    if let Err(e) = child.start_kill() {
        tracing::debug!(error = %e, "cannot kill the command");
    }
    let _ = child.wait().await;
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
