//! The signals interlock catches while it holds a lock, so that it can release cleanly (`hold`) or
//! pass them on to the command it runs (`run`).
//!
//! They are installed once the lock is held, or, on backends whose locks expire, before the wait
//! for it: there a signal that ends interlock while it waits (SIGTERM from `timeout`, Ctrl-C)
//! first lets the wait's undo land, so that nothing is left on the backend, and then ends
//! interlock by the signal's default action ([`die_of`]). Elsewhere (file), signals keep their
//! default action while interlock waits, and the process's end takes the wait with it.
//!
//! A signal that was ignored when interlock started (`nohup` ignores SIGHUP, a shell ignores
//! SIGINT for background jobs) is never caught: it stays ignored for interlock and, since ignored
//! dispositions survive `exec`, for the command too.

use std::thread::JoinHandle;

use rustix::process::Signal;
use signal_hook::consts::signal as sig;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::{Handle, SignalsInfo};
use signal_hook::low_level::siginfo::Cause;
use tokio::sync::mpsc;

use crate::exit::Failure;

/// The signals `hold` releases on.
pub const RELEASE_ON: &[Signal] = &[Signal::HUP, Signal::INT, Signal::TERM];

/// One caught signal and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caught {
    /// The signal.
    pub signal: Signal,
    /// Sent by the kernel itself: a terminal's Ctrl-C, Ctrl-\ or Ctrl-Z (which go to the whole
    /// foreground process group), a hangup; or a child's state change for SIGCHLD.
    pub from_kernel: bool,
    /// The process that sent it with `kill(2)`, when known.
    pub sender: Option<i32>,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// A second copy of one signal from one sender that arrives within this time is the same event:
/// `timeout(1)` sends its signal to its child and then to its process group, microseconds apart,
/// and the kernel would have merged the two had the first still been pending.
pub const SAME_EVENT: std::time::Duration = std::time::Duration::from_millis(10);

impl Caught {
    /// Whether this is a copy of `earlier`: the same signal from the same sender within
    /// [`SAME_EVENT`] (one event, as `timeout(1)` sends it).
    pub fn repeats(&self, earlier: &Caught) -> bool {
        self.signal == earlier.signal
            && self.sender == earlier.sender
            && self.at.saturating_duration_since(earlier.at) < SAME_EVENT
    }
}

/// Catches a set of signals from the moment it is made, until it is dropped.
#[derive(Debug)]
pub struct Signals {
    registered: Vec<Signal>,
    rx: mpsc::UnboundedReceiver<Caught>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Signals {
    /// Catches `wanted`, except those that were ignored when interlock started (see the module
    /// docs) and SIGCHLD, which is always caught when asked for.
    ///
    /// # Errors
    ///
    /// A [`Failure`] (exit 74) if the operating system refuses.
    pub fn install(wanted: &[Signal]) -> Result<Signals, Failure> {
        let ignored = ignored_at_start();
        let registered: Vec<Signal> =
            wanted.iter().copied().filter(|s| *s == Signal::CHILD || !ignored.contains(*s)).collect();
        let raw: Vec<i32> = registered.iter().map(|s| s.as_raw()).collect();
        let mut info =
            SignalsInfo::<WithOrigin>::new(&raw).map_err(|e| Failure::io("cannot install signal handlers", e))?;
        let handle = info.handle();
        let (tx, rx) = mpsc::unbounded_channel();
        let raw_for_thread = raw.clone();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                // A mask inherited from whoever started us may block them: this thread must get them.
                unblock(&raw_for_thread);
                for origin in info.forever() {
                    // Signals we did not register cannot arrive here; skip rather than panic.
                    let Some(signal) = Signal::from_named_raw(origin.signal) else { continue };
                    let caught = Caught {
                        signal,
                        from_kernel: matches!(origin.cause, Cause::Kernel) || origin.signal == sig::SIGCHLD,
                        sender: origin.process.map(|p| p.pid),
                        at: std::time::Instant::now(),
                    };
                    if tx.send(caught).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Failure::io("cannot start the signal thread", e))?;
        Ok(Signals { registered, rx, handle, thread: Some(thread) })
    }

    /// The signals actually caught: those asked for, less those ignored at start.
    pub fn registered(&self) -> &[Signal] {
        &self.registered
    }

    /// Waits for the next caught signal.
    pub async fn recv(&mut self) -> Caught {
        match self.rx.recv().await {
            Some(caught) => caught,
            // The thread is gone (it cannot fail, but never spin): nothing more will come.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Ends interlock as `signal`'s default action would (so that the parent sees it die of that
/// signal), after interlock caught it: the handler is reset to the default and the signal raised
/// again. For a signal whose default is not to terminate, exits with 128 + N, as a shell would
/// report a death by it.
pub fn die_of(signal: Signal) -> ! {
    if let Err(e) = signal_hook::low_level::emulate_default_handler(signal.as_raw()) {
        tracing::debug!(error = %e, "cannot raise the signal again");
    }
    let code = i32::from(crate::exit::SIGNAL_BASE) + signal.as_raw();
    std::process::exit(code)
}

/// Unblocks `signals` in the calling thread.
#[allow(unsafe_code)]
pub fn unblock(signals: &[i32]) {
    // SAFETY: `sigset_t` is plain data initialised by `sigemptyset`; only this thread's mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// A set of signals, as the kernel's masks in `/proc/self/status` show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalSet(u64);

impl SignalSet {
    /// True if `signal` is in the set.
    pub fn contains(self, signal: Signal) -> bool {
        let n = signal.as_raw();
        (1..=64).contains(&n) && self.0 & (1u64 << (n - 1)) != 0
    }
}

/// The signals that were ignored when this process started, read from the kernel (`SigIgn:` in
/// `/proc/self/status`) before we install anything. SIGPIPE is never reported: the Rust runtime
/// ignores it in every program before `main`, so whether our parent did is unknowable.
pub fn ignored_at_start() -> SignalSet {
    static AT_START: std::sync::OnceLock<SignalSet> = std::sync::OnceLock::new();
    *AT_START.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mask = parse_sig_ign(&status).unwrap_or(0);
        SignalSet(mask & !(1u64 << (Signal::PIPE.as_raw() - 1)))
    })
}

/// The `SigIgn:` mask of a `/proc/PID/status` text.
fn parse_sig_ign(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ignored_mask() {
        let text = "Name:\tx\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001001\nSigCgt:\t0\n";
        let set = SignalSet(parse_sig_ign(text).unwrap());
        assert!(set.contains(Signal::HUP)); // bit 0 = signal 1
        assert!(set.contains(Signal::PIPE)); // bit 12 = signal 13
        assert!(!set.contains(Signal::TERM));
        assert_eq!(parse_sig_ign("nothing"), None);
    }
}
