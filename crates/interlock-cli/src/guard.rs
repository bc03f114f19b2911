//! `interlock guard` (hidden): the watchman `interlock run` starts beside the command on backends
//! whose locks expire. If interlock dies (even by SIGKILL), nobody renews the lock, so the
//! command's whole process group must stop: the command itself gets its own parent-death signal,
//! but its children do not. The guardian gets SIGTERM as its parent-death signal and then kills
//! the command's process group with SIGKILL.
//!
//! It runs in a process group of its own (so signals meant for interlock's group or the
//! command's never reach it), catches the usual termination signals so that a stray one cannot
//! end it, and acts only once interlock is really gone (its parent changed). `interlock run`
//! kills it (SIGKILL) once the command's tree is done.

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

    /// The command's process group, killed when interlock dies
    #[arg(long)]
    pub group: i32,
}

/// Waits for interlock's death, then kills the command's process group. Exits 0 after that,
/// or never returns while interlock lives (it kills us).
///
/// # Errors
///
/// A [`Failure`] (exit 64) for a bad pid or group, (74) when the signal handlers cannot be set.
pub fn guard(args: GuardArgs) -> Outcome {
    let (Some(parent), Some(group)) = (Pid::from_raw(args.parent), Pid::from_raw(args.group)) else {
        return Err(Failure::usage("guard needs a positive --parent and --group"));
    };
    let mut signals = Signals::new([sig::SIGTERM, sig::SIGHUP, sig::SIGINT, sig::SIGQUIT, sig::SIGUSR1, sig::SIGUSR2])
        .map_err(|e| Failure::io("cannot install signal handlers", e))?;
    // interlock may have died before our parent-death signal was set up (interlock set it
    // between fork and exec, and checked our parent there): look once before waiting.
    loop {
        if rustix::process::getppid() != Some(parent) {
            if let Err(e) = rustix::process::kill_process_group(group, Signal::KILL) {
                tracing::debug!(error = %e, "cannot kill the command's process group");
            }
            exit::say("interlock died while the command ran; its lock expires unrenewed, so the command was killed");
            return Ok(0);
        }
        // Any caught signal wakes us; only interlock's death (our parent changed) counts.
        let _ = signals.wait().count();
    }
}
