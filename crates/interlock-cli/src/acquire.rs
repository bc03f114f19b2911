//! The acquisition flags shared by `run` and `hold`: which URL, which primitive, how long to wait.

use std::time::{Duration, Instant};

use clap::Args;
use interlock::{AcquireOptions, Guard, Provider};
use rustix::process::Signal;

use crate::exit::{self, Failure};
use crate::signals::{self, Signals};

/// How long interlock waits, at most, before it exits, for the cleanups still running: the undo of
/// an abandoned wait (its place in a server's queue, a lock handed to it meanwhile) and the
/// releases of locks it dropped. They take a round trip or two; what a server that does not answer
/// in this time would have removed is left to its own expiry (a waiter's registration, a lease).
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(3);

/// Flags that say which lock to take and how.
#[derive(Args, Debug, Clone)]
pub struct LockArgs {
    /// Lock URL [default: $INTERLOCK_URL, else file://]
    #[arg(short = 'u', long, value_name = "URL")]
    pub url: Option<String>,

    /// Take the read (shared) side of a read-write lock; many shared holders can hold it at once
    #[arg(short = 's', long, conflicts_with = "permits")]
    pub shared: bool,

    /// Make one attempt: if the lock is held elsewhere, exit with the conflict code at once
    #[arg(short = 'n', long)]
    pub nonblock: bool,

    /// Wait at most SECS seconds (fractions allowed; 0 means one attempt), then exit with the
    /// conflict code
    #[arg(short = 'w', long, value_name = "SECS", value_parser = parse_secs, allow_negative_numbers = true)]
    pub timeout: Option<Duration>,

    /// Exit code when the lock is held elsewhere (-n) or the wait timed out (-w)
    #[arg(short = 'E', long, value_name = "N", default_value_t = exit::CONFLICT_DEFAULT)]
    pub conflict_exit_code: u8,

    /// Take one permit of a semaphore with N permits instead of a mutex
    #[arg(long, value_name = "N")]
    pub permits: Option<u32>,

    /// Lease for backends whose locks each have one (Redis, Redlock), renewed in the background (e.g.
    /// 30s); refused (exit 69) where locks do not expire (file) or share a session's lease
    #[arg(long, value_name = "DUR", value_parser = parse_dur)]
    pub lease: Option<Duration>,

    /// Lock name: any non-empty UTF-8 string up to 1024 bytes without NUL
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Parses `-w SECS`: a float number of seconds, finite, non-negative, below 100 years.
///
/// # Errors
///
/// A one-line reason for clap to show.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.trim().parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    interlock::url::secs_to_duration(secs)
}

/// Parses a duration flag such as `--lease 30s` or `--kill-after 500ms`.
///
/// # Errors
///
/// A one-line reason for clap to show.
pub fn parse_dur(text: &str) -> Result<Duration, String> {
    interlock::url::parse_duration(text)
}

/// The URL to use: the flag, else a non-empty `$INTERLOCK_URL`, else
/// [`interlock::url::DEFAULT_URL`], the private default directory
/// ([`interlock::url::default_url`], which the Python package uses too).
pub fn resolve_url(flag: Option<&str>) -> String {
    flag.map_or_else(interlock::url::default_url, str::to_owned)
}

/// Connects to the backend named by `url`.
///
/// # Errors
///
/// The library's error, mapped to its exit code (64 for a bad URL, 69 for a backend that cannot be
/// used).
pub async fn connect(url: &str) -> Result<Provider, Failure> {
    interlock::connect(url).await.map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
}

/// Connects for `run`, `hold` and `status`, which only make sense when other processes see the
/// lock: a backend whose locks live inside one process (`memory://`) is refused, since every
/// interlock command is a process of its own and would exclude nobody.
/// `INTERLOCK_ALLOW_IN_PROCESS=1` lifts the refusal, for interlock's own tests of lease handling.
///
/// # Errors
///
/// As [`connect`]; 64 for an in-process backend.
pub async fn connect_shared(url: &str) -> Result<Provider, Failure> {
    let provider = connect(url).await?;
    if !provider.capabilities().cross_process && std::env::var_os("INTERLOCK_ALLOW_IN_PROCESS").is_none_or(|v| v != "1")
    {
        return Err(Failure::usage(format!(
            "{} locks live inside one process, so they cannot exclude other processes or other interlock \
             commands; use a file:// directory or a server backend",
            provider.url()
        )));
    }
    Ok(provider)
}

/// A lock taken by [`acquire`], with the provider that made it.
#[derive(Debug)]
pub struct Held {
    /// The provider, kept alive as long as the guard.
    pub provider: Provider,
    /// The held lock.
    pub guard: Guard,
}

impl LockArgs {
    /// How long to wait, from `-n` and `-w` (`-n` wins; `-w 0` is one attempt).
    pub fn options(&self) -> AcquireOptions {
        self.options_after(Duration::ZERO)
    }

    /// [`LockArgs::options`] for a wait that starts `spent` after the first began (a wait given
    /// up while interlock was stopped, and started again): what is left of `-w`, and one attempt
    /// once nothing is.
    pub fn options_after(&self, spent: Duration) -> AcquireOptions {
        let options = match (self.nonblock, self.timeout.map(|d| d.saturating_sub(spent))) {
            (true, _) => AcquireOptions::try_once(),
            (false, Some(d)) if d.is_zero() => AcquireOptions::try_once(),
            (false, Some(d)) => AcquireOptions::timeout(d),
            (false, None) => AcquireOptions::forever(),
        };
        match self.lease {
            Some(lease) => options.lease(lease),
            None => options,
        }
    }
}

/// Connects and takes the lock the flags describe: a mutex by default, the read side of a
/// read-write lock with `-s`, one permit of a semaphore with `--permits N`; and catches `catch`
/// (see [`Signals::install`]), returning them for the caller to handle once the lock is held.
///
/// On backends whose locks expire (Redis, Redlock), where a waiter's place lives on the server,
/// the signals are caught from before the wait: one that would otherwise end interlock (SIGHUP,
/// SIGINT, SIGTERM, ...) ends the wait, its undo runs (within [`CLEANUP_LIMIT`]) so that the wait
/// leaves nothing behind, and then interlock dies of that signal, as it would have without the
/// handler; a second one meanwhile (not a copy of the first, see [`signals::Caught::repeats`]; not a
/// SIGHUP, which a hangup brings twice, from the kernel and from the shell) ends interlock at once
/// by that signal, without waiting for a server that does not answer. SIGTSTP gives the wait up
/// too (a stopped waiter must never be handed the lock: it would hold it, doing nothing, for its
/// lease), lets its undo land, and stops interlock as it would have (unless its process group is
/// orphaned, where the kernel would have discarded the signal); once continued, interlock waits
/// again, for what is left of `-w`, at the end of the queue. SIGCONT and SIGCHLD change nothing.
/// Only the signals in `catch` are caught (`hold` does not catch SIGTSTP). On the others (file)
/// the process's end takes an abandoned wait with it (the kernel drops a dead process's `flock`
/// wait), and the wait may block this thread in the kernel, where no handler could run: there the
/// signals keep their default action until the lock is held.
///
/// # Errors
///
/// A [`Failure`] with the conflict code (`-E`) when the lock is held elsewhere or the wait timed
/// out; otherwise the library's error and its exit code; 74 when the signals cannot be caught.
pub async fn acquire(args: &LockArgs, catch: &[Signal]) -> Result<(Held, Signals), Failure> {
    let provider = connect_shared(&resolve_url(args.url.as_deref())).await?;
    if !provider.capabilities().can_lose {
        let guard = take(&provider, args, args.options()).await?;
        return match Signals::install(catch) {
            Ok(signals) => Ok((Held { provider, guard }, signals)),
            Err(failure) => {
                if let Err(e) = guard.release().await {
                    tracing::warn!(error = %e, "releasing the lock failed");
                }
                Err(failure)
            }
        };
    }
    let mut signals = Signals::install(catch)?;
    let started = Instant::now();
    let mut attempt = Box::pin(take(&provider, args, args.options()));
    let guard = loop {
        tokio::select! {
            taken = &mut attempt => break taken?,
            caught = signals.recv() => match caught.signal {
                Signal::CHILD | Signal::CONT => {}
                Signal::TSTP if crate::tree::group_is_orphaned(rustix::process::getpgrp()) => {}
                Signal::TSTP => {
                    tracing::debug!("SIGTSTP while waiting for the lock; giving up the wait until continued");
                    drop(attempt);
                    if let Some(sig) = land_undo(&mut signals, None).await {
                        signals::die_of(sig);
                    }
                    if let Err(e) = rustix::process::kill_process(rustix::process::getpid(), Signal::STOP) {
                        tracing::debug!(error = %e, "cannot stop ourselves");
                    }
                    // Continued: wait again, for what is left.
                    attempt = Box::pin(take(&provider, args, args.options_after(started.elapsed())));
                }
                sig => {
                    tracing::debug!(signal = sig.as_raw(), "signal while waiting for the lock; giving up the wait");
                    drop(attempt);
                    signals::die_of(land_undo(&mut signals, Some(caught)).await.unwrap_or(sig));
                }
            }
        }
    };
    drop(attempt);
    Ok((Held { provider, guard }, signals))
}

/// Lets the undo of a wait just given up land (at most [`CLEANUP_LIMIT`]), while signals keep
/// coming: returns the terminating signal to die of, `first` (the one that ended the wait) or
/// one that came meanwhile. A second terminating signal (not a copy of `first`, nor a SIGHUP)
/// ends interlock at once, by that signal: the user insists, and a server that does not answer
/// must not keep interlock alive for [`CLEANUP_LIMIT`].
async fn land_undo(signals: &mut Signals, mut first: Option<signals::Caught>) -> Option<Signal> {
    let landed = interlock::finish_cleanups(CLEANUP_LIMIT);
    tokio::pin!(landed);
    loop {
        tokio::select! {
            _ = &mut landed => return first.map(|c| c.signal),
            caught = signals.recv() => match (caught.signal, first) {
                (Signal::CHILD | Signal::CONT | Signal::TSTP, _) => {}
                (_, None) => first = Some(caught),
                (Signal::HUP, Some(_)) => {}
                (sig, Some(f)) if !caught.repeats(&f) => {
                    tracing::debug!(signal = sig.as_raw(), "a second signal while the wait's undo lands: exiting now");
                    signals::die_of(sig);
                }
                _ => {}
            }
        }
    }
}

/// Takes the lock the flags describe from `provider`, waiting as `options` say.
async fn take(provider: &Provider, args: &LockArgs, options: AcquireOptions) -> Result<Guard, Failure> {
    let conflict = args.conflict_exit_code;
    let fail = |e: interlock::Error| Failure::from_lock(&e, conflict);
    let attempt = match (args.shared, args.permits) {
        (true, Some(_)) => return Err(Failure::usage("--shared and --permits cannot be used together")),
        (true, None) => provider.rwlock(&args.name).map_err(fail)?.read_with(options).await,
        (false, Some(n)) => provider.semaphore(&args.name, n).map_err(fail)?.acquire_with(options).await,
        (false, None) => provider.mutex(&args.name).map_err(fail)?.lock_with(options).await,
    };
    match attempt.map_err(fail)? {
        Some(guard) => {
            tracing::debug!(name = %args.name, token = ?guard.fencing_token(), url = provider.url(), "acquired");
            Ok(guard)
        }
        None => Err(Failure::new(conflict, format!("lock {} is held elsewhere", exit::show_name(&args.name)))),
    }
}

/// The fencing token as the CLI shows it: the number, or `none`.
pub fn token_text(guard: &Guard) -> String {
    guard.fencing_token().map_or_else(|| "none".to_owned(), |t| t.to_string())
}
