//! The controlling terminal, for job control in `interlock run`: which process group is in its
//! foreground, and handing the foreground to another group, as a shell does for its jobs.

use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::process::Pid;

/// The controlling terminal (`/dev/tty`), when there is one.
#[derive(Debug)]
pub struct Terminal(OwnedFd);

impl Terminal {
    /// Opens the controlling terminal; `None` without one (cron, services, `setsid`).
    pub fn open() -> Option<Terminal> {
        rustix::fs::open("/dev/tty", OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty()).ok().map(Terminal)
    }

    /// The terminal's foreground process group.
    pub fn foreground(&self) -> Option<Pid> {
        rustix::termios::tcgetpgrp(&self.0).ok()
    }

    /// True when our own process group is in the terminal's foreground.
    pub fn is_ours(&self) -> bool {
        self.foreground() == Some(rustix::process::getpgrp())
    }

    /// Puts `group` in the terminal's foreground. From the background this would stop us with
    /// SIGTTOU, so that signal is blocked in this thread meanwhile (the kernel allows the change
    /// then), as shells do.
    pub fn give_to(&self, group: Pid) {
        let result = with_sigttou_blocked(|| rustix::termios::tcsetpgrp(&self.0, group));
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot hand the terminal's foreground over");
        }
    }
}

/// Runs `f` with SIGTTOU blocked in the calling thread.
#[allow(unsafe_code)]
fn with_sigttou_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: `sigset_t` is plain data that `sigemptyset` initialises; `pthread_sigmask` only
    // changes the calling thread's mask and is restored to `old` before we return.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0;
        let out = f();
        if blocked {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        out
    }
}
