//! The termination signals interlock catches while it holds a lock (SIGINT, SIGTERM, SIGHUP), so
//! that it can release cleanly or pass them on to the command it runs.
//!
//! They are installed only once the lock is held: while waiting for a lock, these signals keep
//! their default action and end the process (the wait leaves nothing behind).

use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};

use crate::exit::Failure;

/// Catches SIGINT, SIGTERM and SIGHUP from the moment it is made.
#[derive(Debug)]
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    ///
    /// A [`Failure`] (exit 74) if the operating system refuses.
    pub fn install() -> Result<Signals, Failure> {
        let install = |kind: SignalKind| signal(kind).map_err(|e| Failure::io("cannot install signal handlers", e));
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// Waits for the next of the three signals and says which it was.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::INT,
            _ = self.term.recv() => Signal::TERM,
            _ = self.hup.recv() => Signal::HUP,
        }
    }
}

/// Sends `sig` to process `pid`, ignoring a process that is already gone.
pub fn send(pid: Option<u32>, sig: Signal) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).and_then(Pid::from_raw) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, sig) {
        tracing::debug!(pid = pid.as_raw_nonzero().get(), error = %e, "cannot signal the command");
    }
}
