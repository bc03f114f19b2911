//! `interlock bench`: measures a backend by URL, and in the same run the floor that backend cannot
//! beat, so that every figure is also a ratio.
//!
//! One file per job: the flags and the dispatch here; one file per workload ([`uncontended`],
//! [`contended`], [`handoff`], [`many_locks`], [`waiters`]); [`floor`] (the floors, one match arm
//! per backend); [`stats`] (percentiles); [`report`] (table and JSON); [`plot`] (SVG); [`client`]
//! (the child-process side, the hidden `bench-client` subcommand) and [`spawn`] (its parent side);
//! small helpers: [`mode`], [`target`], [`counter`], [`clock`], [`progress`].

pub mod client;
mod clock;
mod contended;
mod counter;
mod floor;
mod handoff;
mod holdtime;
mod many_locks;
mod mode;
mod plot;
mod progress;
mod report;
mod spawn;
mod stats;
mod target;
mod uncontended;
mod waiters;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use self::holdtime::HoldTime;
use self::mode::Mode;
use self::progress::Progress;
use self::report::{Machine, Report};
use self::target::Target;
use self::waiters::WaiterKind;
use crate::acquire;
use crate::exit::{Failure, Outcome};

/// Exit code when a workload saw two holders of an exclusive lock at once (`EX_SOFTWARE`).
pub const EXCLUSION_VIOLATED: u8 = 70;

/// The text after `interlock bench --help`.
pub const HELP: &str = "\
Workloads (default: all, in this order):
  uncontended  one client takes and releases one lock in a loop (async API): ops/s, p50/p99/max
  contended    C clients (processes; tasks for memory://) on one name, each for SECS: acquire, read a
               counter file, hold --hold (default 0), write it + 1, release. Total ops/s, min/max acquisitions per client,
               and a check that the counter equals the acquisitions counted
  handoff      2 clients alternate on one name, each holding --hold (default 1ms): gap from the
               holder's release to the waiting peer holding the lock (CLOCK_MONOTONIC, across
               processes): p50/p99/max
  many-locks   one process holds N distinct locks: time to take them all, memory per held lock,
               time to release them all
  waiters      W waiters queue on one name and are released one after another: backend operations
               per release (one release should wake one waiter, not all of them)

Every figure is shown next to the backend's floor, measured in the same run, and as a multiple of
it: file: a raw flock(LOCK_EX)+flock(LOCK_UN) pair on an open descriptor (and open+flock+unlock+close,
what flock(1) does per call), and two processes handing a raw blocking flock back and forth;
memory: tokio::sync::Mutex. Lock names are bench-<pid>-<workload>, so a bench never touches real
locks; their files are removed at the end. --mode applies to uncontended, contended and handoff;
--hold (1ms, or 1ms..11ms drawn uniformly per hold) to contended and handoff, floor alike.

Exit status:
  0   everything measured, no exclusion violation
  64  usage error: bad flags, URL or workload
  69  backend unavailable or unusable, or a bench client failed
  70  EXCLUSION VIOLATED: the counter check or the handoff saw two holders of an exclusive lock at once
  74  local I/O error (the counter file, the plot, stdout)

Environment:
  INTERLOCK_URL    the lock URL when -u is not given (default: file://); passed to client processes
                   in their environment, never on their command line";

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    /// One client, acquire + release in a loop.
    Uncontended,
    /// C clients on one name, with the exclusion check.
    Contended,
    /// Release-to-acquire gap between two clients.
    Handoff,
    /// One process holds N locks.
    ManyLocks,
    /// W waiters on one name: backend operations per release.
    Waiters,
}

/// Flags of `interlock bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Lock URL [default: $INTERLOCK_URL, else file://]
    #[arg(short = 'u', long, value_name = "URL")]
    pub url: Option<String>,

    /// Workloads to run [default: all]
    #[arg(value_name = "WORKLOAD", value_enum)]
    pub workloads: Vec<Workload>,

    /// contended: client counts to sweep, comma-separated (each 1 to 1024)
    #[arg(long, value_name = "C,C,...", value_delimiter = ',', default_value = "2,8,32", overrides_with = "clients",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: Vec<u32>,

    /// Seconds per measurement (uncontended; contended, per client count); fractions allowed
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_duration)]
    pub duration: Duration,

    /// handoff: handoffs to collect (at least 500)
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(500..=1_000_000))]
    pub handoffs: u64,

    /// many-locks: distinct locks to hold at once
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub locks: u64,

    /// waiters: how many wait on one name
    #[arg(long, value_name = "W", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub waiters: u32,

    /// waiters: one process per waiter, or tasks of one process sharing a provider
    #[arg(long, value_name = "KIND", value_enum, default_value = "process")]
    pub waiter_kind: WaiterKind,

    /// handoff, contended: how long each client keeps the lock, a time or a range drawn anew for
    /// every hold, e.g. 1ms or 1ms..11ms; the floor's clients keep it alike [default: handoff 1ms,
    /// contended 0]
    #[arg(long, value_name = "DUR[..DUR]", value_parser = HoldTime::parse)]
    pub hold: Option<HoldTime>,

    /// The primitive: mutex, read, write or semaphore:N
    #[arg(long, value_name = "MODE", default_value = "mutex", value_parser = Mode::parse)]
    pub mode: Mode,

    /// Print one JSON document on stdout instead of the table
    #[arg(long)]
    pub json: bool,

    /// Draw latency distributions and throughput against clients into FILE.svg
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Start private servers for backends that need them (file and memory need none): one
    /// redis-server for redis://, a 3-master cluster for redis+cluster://, 3 masters (or as many
    /// as the URL names) for redlock://; they never outlive the bench
    #[arg(long)]
    pub start_server: bool,

    /// Test only: contended clients skip the lock, so the counter check must fail
    #[arg(long, hide = true)]
    pub no_lock: bool,
}

/// Parses `--duration`: seconds, above zero, at most an hour.
///
/// # Errors
///
/// A one-line reason for clap to show.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = acquire::parse_secs(text)?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err(format!("`{text}`: the duration must be above 0 and at most 3600 seconds"));
    }
    Ok(d)
}

/// Runs the workloads, prints the table (or the JSON), draws the plot.
///
/// # Errors
///
/// 70 after the report when exclusion was violated; otherwise as listed in [`HELP`].
pub async fn bench(args: BenchArgs) -> Outcome {
    let mut url = acquire::resolve_url(args.url.as_deref());
    let starter = floor::floors_for_url(&url).and_then(|f| f.start_server);
    // Kept until the end of the run: dropping it stops the server.
    let server = match (args.start_server, starter) {
        (true, Some(start)) => Some(start(&url)?),
        _ => None,
    };
    if let Some(s) = &server {
        url.clone_from(&s.url);
    }
    let mut target = Target::connect(&url).await?;
    target.hold = args.hold.unwrap_or(HoldTime::ZERO);
    let mut workloads = args.workloads.clone();
    if workloads.is_empty() {
        workloads = Workload::value_variants().to_vec();
    }
    workloads.sort();
    workloads.dedup();
    let mut report = Report {
        url: target.shown_url().to_owned(),
        backend: target.backend.to_owned(),
        mode: args.mode.to_string(),
        machine: Machine::detect(),
        duration_s: args.duration.as_secs_f64(),
        uncontended: None,
        contended: None,
        handoff: None,
        many_locks: None,
        waiters: None,
        notes: Vec::new(),
        violations: Vec::new(),
    };
    if args.start_server && server.is_none() {
        report
            .notes
            .push(format!("--start-server: the {} backend needs no server; the URL is used as given", target.backend));
    }
    if args.no_lock {
        report.notes.push("--no-lock: contended clients skipped the lock (a test of the counter check)".into());
    }
    let progress = Progress::start();
    let outcome = run_all(&target, &args, &workloads, &progress, &mut report).await;
    target.cleanup("");
    drop(progress);
    outcome?;

    let text = if args.json { report.json() } else { report.table() };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| Failure::io("cannot write to stdout", e))?;
    drop(out);
    if let Some(path) = &args.plot {
        plot::write(&report, path)?;
    }
    if !report.violations.is_empty() {
        return Err(Failure::new(EXCLUSION_VIOLATED, format!("EXCLUSION VIOLATED: {}", report.violations.join("; "))));
    }
    Ok(0)
}

/// Runs each workload in turn, filling in `report`.
async fn run_all(
    target: &Target,
    args: &BenchArgs,
    workloads: &[Workload],
    progress: &Progress,
    report: &mut Report,
) -> Result<(), Failure> {
    let secs = args.duration.as_secs_f64();
    for w in workloads {
        match w {
            Workload::Uncontended => {
                progress.step(format!("uncontended, {secs} s + floors"));
                report.uncontended = Some(uncontended::run(target, args.mode, args.duration).await?);
            }
            Workload::Contended => {
                let base = report.uncontended.as_ref().map(|u| u.lock.ops_per_sec);
                let mut runs = Vec::new();
                for &c in &args.clients {
                    progress.step(format!("contended, {c} clients, {secs} s"));
                    let run = contended::run(target, args.mode, c, args.duration, args.no_lock, base).await?;
                    report.violations.extend(run.violation());
                    runs.push(run);
                }
                contended::compare_with_one_client(&mut runs);
                report.contended = Some(runs);
            }
            Workload::Handoff => {
                progress.step(format!("handoff, {} handoffs, ours then the floor", args.handoffs));
                let h = handoff::run(target, args.mode, args.handoffs, args.hold).await?;
                report.violations.extend(h.violations());
                report.handoff = Some(h);
            }
            Workload::ManyLocks => {
                progress.step(format!("many-locks, {} locks", args.locks));
                report.many_locks = Some(many_locks::run(target, args.locks).await?);
            }
            Workload::Waiters => {
                progress.step(format!("waiters, {} waiting", args.waiters));
                report.waiters = Some(waiters::run(target, args.waiters, args.waiter_kind).await?);
            }
        }
    }
    Ok(())
}
