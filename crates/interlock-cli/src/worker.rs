//! `interlock worker` (hidden): the test and bench helper. T OS threads each do K increments of a
//! counter in a plain file, read and written non-atomically under the lock, through the blocking
//! API. Prints one line per increment, `<value read> <fencing token or ->`, so that a test can check
//! that P processes x T threads x K increments end exactly at P*T*K and that tokens, sorted by the
//! value read, strictly increase.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use interlock::blocking;

use crate::acquire;
use crate::exit::{self, Failure, Outcome};

/// Which primitive the worker takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `mutex(NAME)`.
    Mutex,
    /// The write side of `rwlock(NAME)`.
    Write,
    /// One permit of `semaphore(NAME, N)`.
    Semaphore(u32),
}

/// Parses `mutex`, `write` or `semaphore:N`.
///
/// # Errors
///
/// A one-line reason for clap to show.
pub fn parse_mode(text: &str) -> Result<Mode, String> {
    match text {
        "mutex" => Ok(Mode::Mutex),
        "write" => Ok(Mode::Write),
        _ => match text.strip_prefix("semaphore:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(Mode::Semaphore(n)),
            _ => Err(format!("`{text}`: use mutex, write or semaphore:N")),
        },
    }
}

/// Flags of `interlock worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Lock URL [default: $INTERLOCK_URL, else file://]
    #[arg(short = 'u', long, value_name = "URL")]
    pub url: Option<String>,

    /// Lock name
    #[arg(value_name = "NAME")]
    pub name: String,

    /// The counter file (a decimal integer; empty or missing is 0)
    #[arg(long, value_name = "FILE")]
    pub counter: PathBuf,

    /// OS threads
    #[arg(long, value_name = "T", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,

    /// Increments per thread
    #[arg(long, value_name = "K", default_value_t = 100)]
    pub iterations: u64,

    /// mutex, write (the write side of a read-write lock) or semaphore:N
    #[arg(long, value_name = "MODE", default_value = "mutex", value_parser = parse_mode)]
    pub mode: Mode,

    /// Increment without the lock (to show lost updates)
    #[arg(long)]
    pub no_lock: bool,

    /// Microseconds to sleep between reading and writing the counter
    #[arg(long, value_name = "U", default_value_t = 100)]
    pub hold_us: u64,

    /// Print `ready`, then wait for stdin to close before starting (a start barrier)
    #[arg(long)]
    pub wait_stdin: bool,
}

/// One increment: the value read and the fencing token of the lock it was made under.
type Record = (u64, Option<u64>);

/// The lock handle the threads share.
#[derive(Debug)]
enum Lock {
    Mutex(blocking::Mutex),
    Write(blocking::RwLock),
    Semaphore(blocking::Semaphore),
}

impl Lock {
    /// Waits for the lock.
    fn acquire(&self) -> interlock::Result<blocking::Guard> {
        match self {
            Lock::Mutex(m) => m.lock(),
            Lock::Write(rw) => rw.write(),
            Lock::Semaphore(s) => s.acquire(),
        }
    }
}

/// Runs the worker. Synchronous: it must run outside any async runtime (the blocking API refuses
/// to run inside one).
///
/// # Errors
///
/// The library's code for lock errors, 75 when a release reports the lock lost, 74 when the counter
/// file or stdout cannot be used.
pub fn worker(args: WorkerArgs) -> Outcome {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let provider = blocking::connect(&acquire::resolve_url(args.url.as_deref())).map_err(lock_err)?;
    let lock = match args.mode {
        Mode::Mutex => Lock::Mutex(provider.mutex(&args.name).map_err(lock_err)?),
        Mode::Write => Lock::Write(provider.rwlock(&args.name).map_err(lock_err)?),
        Mode::Semaphore(n) => Lock::Semaphore(provider.semaphore(&args.name, n).map_err(lock_err)?),
    };
    if args.wait_stdin {
        print_ready()?;
        wait_stdin_closed();
    }
    let stop = AtomicBool::new(false);
    let results: Vec<Result<Vec<Record>, Failure>> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..args.threads {
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn_scoped(s, || increments(&lock, &args, &stop));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return vec![Err(Failure::io("cannot start a worker thread", e))];
                }
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Failure::new(exit::IO_ERROR, "a worker thread panicked"))))
            .collect()
    });
    let mut records = Vec::new();
    let mut first_failure = None;
    for r in results {
        match r {
            Ok(mut rs) => records.append(&mut rs),
            Err(f) => {
                first_failure.get_or_insert(f);
            }
        }
    }
    if let Some(f) = first_failure {
        return Err(f);
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (value, token) in records {
        let token = token.map_or_else(|| "-".to_owned(), |t| t.to_string());
        writeln!(out, "{value} {token}").map_err(|e| Failure::io("cannot write to stdout", e))?;
    }
    out.flush().map_err(|e| Failure::io("cannot write to stdout", e))?;
    Ok(0)
}

/// One thread's K increments. Stops early when another thread failed.
fn increments(lock: &Lock, args: &WorkerArgs, stop: &AtomicBool) -> Result<Vec<Record>, Failure> {
    let mut records = Vec::with_capacity(usize::try_from(args.iterations).unwrap_or(0).min(1 << 20));
    let run = || -> Result<Vec<Record>, Failure> {
        for _ in 0..args.iterations {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let guard = if args.no_lock {
                None
            } else {
                Some(lock.acquire().map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))?)
            };
            let value = read_counter(&args.counter, args.no_lock)?;
            if args.hold_us > 0 {
                std::thread::sleep(Duration::from_micros(args.hold_us));
            }
            write_counter(&args.counter, value.saturating_add(1))?;
            let token = guard.as_ref().and_then(blocking::Guard::fencing_token);
            if let Some(guard) = guard {
                guard.release().map_err(|e| Failure::new(exit::LOCK_LOST, e.to_string()))?;
            }
            records.push((value, token));
        }
        Ok(records)
    };
    let result = run();
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    result
}

/// Reads the counter: a decimal integer; empty or missing is 0. Without the lock a torn read is
/// expected and counts as 0; with it, anything else is an error.
fn read_counter(path: &Path, lenient: bool) -> Result<u64, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Failure::io(format!("cannot read counter {}", path.display()), e)),
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    match text.parse() {
        Ok(v) => Ok(v),
        Err(_) if lenient => Ok(0),
        Err(_) => Err(Failure::new(exit::IO_ERROR, format!("counter {} holds {text:?}, not a number", path.display()))),
    }
}

/// Writes the counter (truncate, then write the decimal value).
fn write_counter(path: &Path, value: u64) -> Result<(), Failure> {
    std::fs::write(path, value.to_string())
        .map_err(|e| Failure::io(format!("cannot write counter {}", path.display()), e))
}

/// Prints the `ready` line of the start barrier.
fn print_ready() -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(b"ready\n").and_then(|()| out.flush()).map_err(|e| Failure::io("cannot write to stdout", e))
}

/// Blocks until stdin reaches end of file (or fails).
fn wait_stdin_closed() {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
