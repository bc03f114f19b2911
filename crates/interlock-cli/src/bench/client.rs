//! The child-process side (the hidden `bench-client` subcommand): one client of a workload. It
//! connects (the URL comes in `$INTERLOCK_URL`), prints `ready`, waits for its standard input to
//! close (the start barrier), runs, and reports its results as lines on stdout:
//!
//! | job | lines |
//! |---|---|
//! | `contended`, `contended-floor` | `done <acquisitions> <elapsed ns> <lock attempts>` |
//! | `handoff`, `handoff-blocking`, `handoff-floor` | `hold <acquired ns> <released ns>` per hold, then `done` |
//! | `waiter`, `waiter-floor` | `going` just before it starts waiting, then `done <lock attempts> <acquired ns>` |
//! | `many-locks` | `note <text>` remarks, then `done <held> <take ns> <release ns> <rss before> <rss after>` |
//!
//! The `-floor` jobs take a raw `flock` on `--file` instead of an interlock lock (no URL needed).
//!
//! Timestamps are `CLOCK_MONOTONIC` nanoseconds, comparable across processes. A client runs on a
//! single-threaded runtime so that hundreds of them stay light.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::counter::Counter;
use super::handoff::Pace;
use super::holdtime::HoldTime;
use super::mode::Mode;
use super::{contended, floor, handoff, many_locks, waiters};
use crate::acquire;
use crate::exit::{self, Failure, Outcome};
use crate::hold;

/// What a client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Job {
    /// Increment the counter under the lock until the duration is over.
    Contended,
    /// The same with a raw blocking `flock` on `--file`.
    ContendedFloor,
    /// Take and release the lock, pacing so the peer is always waiting at a release.
    Handoff,
    /// `handoff` through the blocking API (`interlock::blocking`), mutex only.
    HandoffBlocking,
    /// The same with raw blocking `flock` on `--file` (the kernel's own handoff).
    HandoffFloor,
    /// Wait once for the lock, hold it briefly, release it.
    Waiter,
    /// The same with a raw blocking `flock` on `--file`.
    WaiterFloor,
    /// Hold `--locks` distinct locks named `NAME-0`, `NAME-1`, ... at once, then release them.
    ManyLocks,
}

/// Flags of `interlock bench-client`.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// What to do
    #[arg(long, value_enum)]
    pub job: Job,

    /// Lock name
    #[arg(long, value_name = "NAME", default_value = "")]
    pub name: String,

    /// mutex, read, write or semaphore:N
    #[arg(long, value_name = "MODE", default_value = "mutex", value_parser = Mode::parse)]
    pub mode: Mode,

    /// contended: how long to run, in seconds
    #[arg(long, value_name = "SECS", value_parser = acquire::parse_secs)]
    pub duration: Option<Duration>,

    /// contended: the counter file
    #[arg(long, value_name = "FILE")]
    pub counter: Option<PathBuf>,

    /// contended: increment without the lock (to prove the counter check can fail)
    #[arg(long)]
    pub no_lock: bool,

    /// handoff: how many times to take the lock
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub holds: u64,

    /// handoff, waiter, contended: how long to hold the lock, in microseconds (the shortest hold
    /// when --hold-max-us is larger)
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub hold_us: u64,

    /// handoff, contended: the longest hold, in microseconds; each hold is drawn uniformly from
    /// --hold-us to this
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub hold_max_us: u64,

    /// handoff: how long to pause after a release before trying again, in microseconds
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub pause_us: u64,

    /// many-locks: how many locks to hold
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub locks: u64,

    /// The -floor jobs: the file to `flock`
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Runs one client on its own single-threaded runtime.
///
/// # Errors
///
/// The library's code for lock errors, 74 for local I/O, 64 for missing flags.
pub fn main(args: ClientArgs) -> Outcome {
    if args.job == Job::HandoffBlocking {
        // The blocking API refuses to run inside an async runtime.
        return handoff_blocking(&args);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::io("cannot start the async runtime", e))?;
    runtime.block_on(run(args))
}

async fn run(args: ClientArgs) -> Outcome {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let pace = Pace {
        hold: HoldTime::from_micros(args.hold_us, args.hold_max_us),
        pause: Duration::from_micros(args.pause_us),
    };
    if matches!(args.job, Job::HandoffFloor | Job::ContendedFloor | Job::WaiterFloor) {
        return run_floor(&args, pace).await;
    }
    let provider = acquire::connect(&acquire::resolve_url(None)).await?;
    let handle = args.mode.handle(&provider, &args.name).map_err(lock_err)?;
    match args.job {
        Job::Contended => {
            let path = args.counter.as_deref().ok_or_else(|| Failure::usage("contended needs --counter"))?;
            let duration = args.duration.ok_or_else(|| Failure::usage("contended needs --duration"))?;
            let counter = Counter::open(path, args.no_lock)?;
            barrier().await?;
            let (count, elapsed, attempts) =
                contended::client_loop(&handle, &counter, duration, args.no_lock, pace.hold, true).await?;
            say(&format!("done {count} {elapsed} {attempts}\n"))?;
        }
        Job::Handoff => {
            barrier().await?;
            let holds = handoff::hold_loop(&handle, args.holds, pace, true).await?;
            report_holds(&holds)?;
        }
        Job::Waiter => {
            barrier().await?;
            let before = interlock::file::lock_attempts();
            say("going\n")?;
            let acquired = waiters::wait_once(&handle, pace.hold.draw(), true).await?;
            let attempts = interlock::file::lock_attempts().saturating_sub(before);
            say(&format!("done {attempts} {acquired}\n"))?;
        }
        Job::ManyLocks => {
            barrier().await?;
            let lines = many_locks::hold_many(&provider, &args.name, args.locks).await?;
            say(&lines.iter().map(|l| format!("{l}\n")).collect::<String>())?;
        }
        Job::HandoffFloor | Job::ContendedFloor | Job::WaiterFloor | Job::HandoffBlocking => {}
    }
    Ok(0)
}

/// `handoff` through the blocking API: the caller's own thread waits (in the kernel, on the
/// file backend), as a program without an async runtime does.
fn handoff_blocking(args: &ClientArgs) -> Outcome {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    if args.mode != Mode::Mutex {
        return Err(Failure::usage("handoff-blocking takes --mode mutex"));
    }
    let pace = Pace {
        hold: HoldTime::from_micros(args.hold_us, args.hold_max_us),
        pause: Duration::from_micros(args.pause_us),
    };
    let provider = interlock::blocking::connect(&acquire::resolve_url(None)).map_err(lock_err)?;
    let mutex = provider.mutex(&args.name).map_err(lock_err)?;
    say("ready\n")?;
    // The start barrier: stdin closes.
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    let mut holds = Vec::with_capacity(usize::try_from(args.holds).unwrap_or(0));
    for _ in 0..args.holds {
        let guard = mutex.lock().map_err(lock_err)?;
        let acquired = super::clock::now_ns();
        pace.hold_blocking();
        let released = super::clock::now_ns();
        guard.release().map_err(lock_err)?;
        holds.push((acquired, released));
        pace.pause_blocking();
    }
    report_holds(&holds)
}

/// A client of a file floor: raw `flock` on `--file`, no interlock lock.
async fn run_floor(args: &ClientArgs, pace: Pace) -> Outcome {
    let path = args.file.as_deref().ok_or_else(|| Failure::usage("the -floor jobs need --file"))?;
    let file = floor::open_floor_file(path)?;
    match args.job {
        Job::HandoffFloor => {
            barrier().await?;
            let holds = floor::flock_hold_loop(&file, args.holds, pace)?;
            report_holds(&holds)
        }
        Job::ContendedFloor => {
            let counter = args.counter.as_deref().ok_or_else(|| Failure::usage("contended-floor needs --counter"))?;
            let duration = args.duration.ok_or_else(|| Failure::usage("contended-floor needs --duration"))?;
            let counter = Counter::open(counter, false)?;
            barrier().await?;
            let (count, elapsed, _) = contended::flock_client_loop(&file, &counter, duration, pace.hold)?;
            say(&format!("done {count} {elapsed} 0\n"))?;
            Ok(0)
        }
        _ => {
            barrier().await?;
            say("going\n")?;
            let acquired = floor::flock_wait_once(&file, pace.hold.draw())?;
            say(&format!("done 0 {acquired}\n"))?;
            Ok(0)
        }
    }
}

/// Prints `ready` and waits for stdin to close.
async fn barrier() -> Result<(), Failure> {
    say("ready\n")?;
    let _ = hold::stdin_closed().await;
    Ok(())
}

/// Prints one `hold ACQ REL` line per hold, then `done`.
fn report_holds(holds: &[(u64, u64)]) -> Outcome {
    let mut text = String::with_capacity(holds.len() * 40 + 8);
    for (acq, rel) in holds {
        let _ = writeln!(text, "hold {acq} {rel}");
    }
    text.push_str("done\n");
    say(&text)?;
    Ok(0)
}

/// Writes `text` to stdout and flushes it.
fn say(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| Failure::io("cannot write to stdout", e))
}
