//! `interlock guard` (hidden): the watchman `interlock run` starts before the command on backends
//! whose locks expire. If interlock dies (even by SIGKILL), nobody renews the lock, so the
//! command's whole tree must stop: the command itself gets its own parent-death signal, but its
//! children do not. The guardian leads a process group of its own, which the command then joins;
//! it gets SIGTERM as its parent-death signal and then kills its group with SIGKILL.
//!
//! It catches the signals interlock passes on to that group, so that none can end or stop it, and
//! acts only once interlock is really gone (its parent changed). `interlock run` kills it
//! (SIGKILL) once the command's tree is done.

use clap::Args;
use rustix::process::{Pid, Signal};
use signal_hook::consts::signal as sig;
use signal_hook::iterator::Signals;

use crate::exit::{self, Failure, Outcome};

/// Arguments of `interlock guard`.
#[derive(Args, Debug)]
pub struct GuardArgs {
    /// interlock's process id: when our parent is no longer this process, interlock is dead
    #[arg(long)]
    pub parent: i32,
}

/// Waits for interlock's death, then kills the command's process group. Exits 0 after that,
/// or never returns while interlock lives (it kills us).
///
/// # Errors
///
/// A [`Failure`] (exit 64) for a bad pid or group, (74) when the signal handlers cannot be set.
pub fn guard(args: GuardArgs) -> Outcome {
    let Some(parent) = Pid::from_raw(args.parent) else {
        return Err(Failure::usage("guard needs a positive --parent"));
    };
    // The command's group is ours, so interlock's signals for it reach us too: catch them all
    // (a caught SIGTSTP does not stop us either), and act only on interlock's death.
    let mut signals = Signals::new([
        sig::SIGTERM,
        sig::SIGHUP,
        sig::SIGINT,
        sig::SIGQUIT,
        sig::SIGUSR1,
        sig::SIGUSR2,
        sig::SIGALRM,
        sig::SIGTSTP,
    ])
    .map_err(|e| Failure::io("cannot install signal handlers", e))?;
    // interlock blocked SIGTERM for us until now (see `tree::guardian_setup`).
    crate::signals::unblock(&[sig::SIGTERM]);
    // interlock may have died before our parent-death signal was set up (interlock set it
    // between fork and exec, and checked our parent there): look once before waiting.
    loop {
        if rustix::process::getppid() != Some(parent) {
            // Our own group: the command's tree, and us.
            exit::say("interlock died while the command ran; its lock expires unrenewed, so the command is killed");
            if let Err(e) = rustix::process::kill_current_process_group(Signal::KILL) {
                tracing::debug!(error = %e, "cannot kill the command's process group");
            }
            return Ok(0);
        }
        // Any caught signal wakes us; only interlock's death (our parent changed) counts.
        let _ = signals.wait().count();
    }
}
