//! `contended`: C clients on one name, each for `--duration`: acquire, read the counter, write it
//! back plus one, release, count. Total throughput, fairness (fewest ÷ most acquisitions of one
//! client), and the exclusion check: the final counter must equal the acquisitions counted.
//!
//! Clients are processes (this binary as `bench-client`); for an in-process backend (`memory://`)
//! they are tasks of the bench process, each with its own provider.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::clock::{now_ns, ns};
use super::counter::Counter;
use super::floor;
use super::holdtime::HoldTime;
use super::mode::{Handle, Mode};
use super::report::{self, Section};
use super::spawn::{self, Clients};
use super::stats::ratio;
use super::target::Target;
use crate::exit::{self, Failure};

/// What `contended` found for one client count.
#[derive(Debug, Serialize)]
pub struct Contended {
    /// Clients.
    pub clients: u32,
    /// `processes` or `tasks`.
    pub kind: String,
    /// The primitive.
    pub mode: String,
    /// Acquisitions per second, all clients together.
    pub ops_per_sec: f64,
    /// `ops_per_sec` ÷ the uncontended throughput, when that was measured (the uncontended
    /// workload has no critical section, so this also charges the counter file's cost).
    pub vs_uncontended: Option<f64>,
    /// `ops_per_sec` ÷ the throughput of one client doing the same critical section, when the
    /// sweep includes 1 client.
    pub vs_one_client: Option<f64>,
    /// Acquisitions counted by all clients.
    pub acquisitions: u64,
    /// Fewest acquisitions of one client.
    pub min_per_client: u64,
    /// Most acquisitions of one client.
    pub max_per_client: u64,
    /// `min_per_client / max_per_client` (1 is perfectly fair).
    pub fairness: f64,
    /// The counter's final value.
    pub counter: u64,
    /// `ok`, `VIOLATED`, or `n/a` (shared modes let several holders in on purpose).
    pub exclusion: String,
    /// How long each client kept the lock (`--hold`; `0 ms` by default), ours and the floor alike.
    pub hold: String,
    /// True when the clients ran without the lock (`--no-lock`, a test of the check itself).
    pub no_lock: bool,
    /// File backend: non-blocking `flock` attempts per acquisition, all clients together (1 means
    /// no attempt was wasted; more shows how many waiters each release woke).
    pub lock_attempts_per_acquisition: Option<f64>,
    /// The same workload on the backend's floor, where it has one.
    pub floor: Option<ContendedFloor>,
    /// `ops_per_sec` ÷ the floor's.
    pub vs_floor: Option<f64>,
}

/// The contended workload on the backend's floor.
#[derive(Debug, Serialize)]
pub struct ContendedFloor {
    /// What the clients took.
    pub what: String,
    /// Acquisitions per second, all clients together.
    pub ops_per_sec: f64,
    /// Fewest acquisitions of one client.
    pub min_per_client: u64,
    /// Most acquisitions of one client.
    pub max_per_client: u64,
    /// `min_per_client / max_per_client`.
    pub fairness: f64,
    /// `ok` or `VIOLATED` (the floor is a lock too).
    pub exclusion: String,
}

/// One client's result: acquisitions, nanoseconds it ran, backend lock attempts.
pub type ClientResult = (u64, u64, u64);

/// One client's loop; returns its acquisitions, the nanoseconds it ran and its lock attempts.
/// Between reading the counter and writing it back, the client keeps the lock for `hold` (a
/// blocking sleep when `blocking`, for a client alone on its thread; else a tokio sleep).
///
/// # Errors
///
/// The library's errors; 74 for the counter file.
pub async fn client_loop(
    handle: &Handle,
    counter: &Counter,
    duration: Duration,
    no_lock: bool,
    hold: HoldTime,
    blocking: bool,
) -> Result<ClientResult, Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let attempts = interlock::file::lock_attempts();
    let start = now_ns();
    let end = start.saturating_add(ns(duration));
    let mut count = 0u64;
    loop {
        let guard = if no_lock { None } else { Some(handle.acquire().await.map_err(lock_err)?) };
        let value = counter.read()?;
        if !hold.is_zero() {
            if blocking {
                std::thread::sleep(hold.draw());
            } else {
                tokio::time::sleep(hold.draw()).await;
            }
        }
        counter.write(value.saturating_add(1))?;
        if let Some(guard) = guard {
            guard.release().await.map_err(lock_err)?;
        }
        count += 1;
        if now_ns() >= end {
            break;
        }
        if no_lock {
            tokio::task::yield_now().await;
        }
    }
    Ok((count, now_ns() - start, interlock::file::lock_attempts().saturating_sub(attempts)))
}

/// Totals of one run: acquisitions, ops/s, fewest and most per client, fairness.
fn tally(results: &[ClientResult]) -> (u64, f64, u64, u64, f64) {
    let acquisitions: u64 = results.iter().map(|r| r.0).sum();
    let elapsed = results.iter().map(|r| r.1).max().unwrap_or(0) as f64 / 1e9;
    let min = results.iter().map(|r| r.0).min().unwrap_or(0);
    let max = results.iter().map(|r| r.0).max().unwrap_or(0);
    let ops = if elapsed > 0.0 { acquisitions as f64 / elapsed } else { 0.0 };
    (acquisitions, ops, min, max, if max > 0 { min as f64 / max as f64 } else { 0.0 })
}

/// Parses the clients' `done COUNT ELAPSED ATTEMPTS` lines.
///
/// # Errors
///
/// 69 for a missing or malformed line.
pub fn parse_done(lines: &[Vec<String>]) -> Result<Vec<ClientResult>, Failure> {
    lines
        .iter()
        .map(|l| match spawn::numbers(l, "done")?[..] {
            [count, elapsed, attempts] => Ok((count, elapsed, attempts)),
            _ => Err(Failure::new(exit::UNAVAILABLE, "a contended client printed a malformed done line")),
        })
        .collect()
}

/// The counter file of one run, in a private temporary directory outside the lock directory.
fn counter_file() -> Result<(tempfile::TempDir, PathBuf), Failure> {
    let tmp = tempfile::Builder::new()
        .prefix("interlock-bench-")
        .tempdir()
        .map_err(|e| Failure::io("cannot create a temporary directory for the counter", e))?;
    let path = tmp.path().join("counter");
    Counter::create(&path)?;
    Ok((tmp, path))
}

/// Runs the workload for `clients` clients, then the same on the backend's floor.
///
/// # Errors
///
/// The library's errors; a client's failure; 74 for the counter file.
pub async fn run(
    target: &Target,
    mode: Mode,
    clients: u32,
    duration: Duration,
    no_lock: bool,
    uncontended_ops: Option<f64>,
) -> Result<Contended, Failure> {
    let hold = target.hold;
    let (_tmp, path) = counter_file()?;
    let name = target.name("contended");
    let results: Vec<ClientResult> = if target.cross_process {
        let args = |_| {
            let mut a: Vec<String> = vec!["--job".into(), "contended".into(), "--name".into(), name.clone()];
            a.extend(["--mode".into(), mode.to_string(), "--counter".into(), path.display().to_string()]);
            a.extend(["--duration".into(), duration.as_secs_f64().to_string()]);
            a.extend(hold.args());
            if no_lock {
                a.push("--no-lock".into());
            }
            a
        };
        let mut c = Clients::start(clients as usize, Some(target.secret_url()), args).await?;
        c.go();
        parse_done(&c.finish(duration + Duration::from_secs(120)).await?)?
    } else {
        let before = interlock::file::lock_attempts();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let handle = mode.handle(&target.new_provider().await?, &name).map_err(|e| Failure::from_lock(&e, 1))?;
            let counter = Counter::open(&path, no_lock)?;
            tasks.spawn(async move { client_loop(&handle, &counter, duration, no_lock, hold, false).await });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (count, elapsed, _) = r.map_err(|_| Failure::new(exit::IO_ERROR, "a contended task failed"))??;
            out.push((count, elapsed, 0));
        }
        // Tasks share the process's counter: count them all at once.
        if let Some(first) = out.first_mut() {
            first.2 = interlock::file::lock_attempts().saturating_sub(before);
        }
        out
    };
    let counter = Counter::value(&path)?;
    let (acquisitions, ops_per_sec, min, max, fairness) = tally(&results);
    let exclusion = match (mode.exclusive() || no_lock, counter == acquisitions) {
        (false, _) => "n/a",
        (true, true) => "ok",
        (true, false) => "VIOLATED",
    };
    let attempts: u64 = results.iter().map(|r| r.2).sum();
    let lock_attempts_per_acquisition =
        (target.backend == "file" && !no_lock && acquisitions > 0).then(|| attempts as f64 / acquisitions as f64);
    target.cleanup("contended");
    let floor = match floor::contended(target, clients, duration).await? {
        Some((what, results, counter)) => {
            let (acquisitions, ops_per_sec, min, max, fairness) = tally(&results);
            Some(ContendedFloor {
                what,
                ops_per_sec,
                min_per_client: min,
                max_per_client: max,
                fairness,
                exclusion: if counter == acquisitions { "ok" } else { "VIOLATED" }.into(),
            })
        }
        None => None,
    };
    target.cleanup("contended");
    Ok(Contended {
        clients,
        kind: if target.cross_process { "processes" } else { "tasks" }.into(),
        mode: mode.to_string(),
        ops_per_sec,
        vs_uncontended: uncontended_ops.and_then(|u| ratio(ops_per_sec, u)),
        vs_one_client: None,
        acquisitions,
        min_per_client: min,
        max_per_client: max,
        fairness,
        counter,
        exclusion: exclusion.into(),
        hold: hold.to_string(),
        no_lock,
        lock_attempts_per_acquisition,
        vs_floor: floor.as_ref().and_then(|f| ratio(ops_per_sec, f.ops_per_sec)),
        floor,
    })
}

/// Runs the floor's clients on a fresh counter: `processes` clients started with `args(counter)`
/// (a floor that crosses processes), or in-process tasks made by the caller.
///
/// # Errors
///
/// As for starting and collecting clients; 74 for the counter file.
pub async fn floor_processes(
    clients: u32,
    duration: Duration,
    args: impl Fn(&std::path::Path) -> Vec<String>,
) -> Result<(Vec<ClientResult>, u64), Failure> {
    let (_tmp, path) = counter_file()?;
    let mut c = Clients::start(clients as usize, None, |_| args(&path)).await?;
    c.go();
    let results = parse_done(&c.finish(duration + Duration::from_secs(120)).await?)?;
    Ok((results, Counter::value(&path)?))
}

/// The in-process floor: `clients` tasks on one `tokio::sync::Mutex`, the same critical section.
///
/// # Errors
///
/// 74 for the counter file.
pub async fn floor_tasks(
    clients: u32,
    duration: Duration,
    hold: HoldTime,
) -> Result<(Vec<ClientResult>, u64), Failure> {
    let (_tmp, path) = counter_file()?;
    let mutex = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (mutex, counter) = (mutex.clone(), Counter::open(&path, false)?);
        tasks.spawn(async move {
            let start = now_ns();
            let end = start.saturating_add(ns(duration));
            let mut count = 0u64;
            loop {
                let guard = mutex.lock().await;
                let value = counter.read()?;
                if !hold.is_zero() {
                    tokio::time::sleep(hold.draw()).await;
                }
                counter.write(value.saturating_add(1))?;
                drop(guard);
                count += 1;
                if now_ns() >= end {
                    return Ok::<_, Failure>((count, now_ns() - start, 0));
                }
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.map_err(|_| Failure::new(exit::IO_ERROR, "a contended floor task failed"))??);
    }
    Ok((out, Counter::value(&path)?))
}

/// One client of the file floor: `flock` (blocking) on an open descriptor, the same critical
/// section, `flock(LOCK_UN)`, until `duration` is over.
///
/// # Errors
///
/// 74 for `flock` or the counter file.
pub fn flock_client_loop(
    file: &std::fs::File,
    counter: &Counter,
    duration: Duration,
    hold: HoldTime,
) -> Result<ClientResult, Failure> {
    let start = now_ns();
    let end = start.saturating_add(ns(duration));
    let mut count = 0u64;
    loop {
        floor::flock(file, rustix::fs::FlockOperation::LockExclusive)?;
        let value = counter.read()?;
        if !hold.is_zero() {
            std::thread::sleep(hold.draw());
        }
        counter.write(value.saturating_add(1))?;
        floor::flock(file, rustix::fs::FlockOperation::Unlock)?;
        count += 1;
        if now_ns() >= end {
            return Ok((count, now_ns() - start, 0));
        }
    }
}

impl Contended {
    /// The exclusion violation this run showed, as a message.
    pub fn violation(&self) -> Option<String> {
        (self.exclusion == "VIOLATED").then(|| {
            format!(
                "contended, {} {}{}: counter {} but {} acquisitions counted ({} increments lost)",
                self.clients,
                self.kind,
                if self.no_lock { " without the lock (--no-lock)" } else { "" },
                self.counter,
                self.acquisitions,
                self.acquisitions.saturating_sub(self.counter)
            )
        })
    }
}

/// `1 process`, `8 processes`, `2 tasks`.
fn clients_label(r: &Contended) -> String {
    match (r.clients, r.kind.as_str()) {
        (1, "processes") => "1 process".into(),
        (1, "tasks") => "1 task".into(),
        (n, kind) => format!("{n} {kind}"),
    }
}

/// Fills in [`Contended::vs_one_client`] when the sweep has a 1-client run.
pub fn compare_with_one_client(runs: &mut [Contended]) {
    let Some(one) = runs.iter().find(|r| r.clients == 1).map(|r| r.ops_per_sec) else { return };
    for r in runs {
        r.vs_one_client = ratio(r.ops_per_sec, one);
    }
}

/// The table section for all client counts.
pub fn section(runs: &[Contended], duration: Duration) -> Section {
    let mut rows = Vec::new();
    for r in runs {
        let check = match r.exclusion.as_str() {
            "ok" => format!("ok ({})", report::count(r.counter)),
            "VIOLATED" => format!("VIOLATED ({} ≠ {})", report::count(r.counter), report::count(r.acquisitions)),
            other => other.to_owned(),
        };
        rows.push(vec![
            format!("interlock, {}", clients_label(r)),
            report::ops(r.ops_per_sec),
            report::times(r.vs_uncontended),
            report::times(r.vs_one_client),
            report::times(r.vs_floor),
            format!("{}–{}", report::count(r.min_per_client), report::count(r.max_per_client)),
            format!("{:.2}", r.fairness),
            r.lock_attempts_per_acquisition.map_or_else(|| "—".into(), |a| format!("{a:.1}")),
            check,
        ]);
        if let Some(f) = &r.floor {
            rows.push(vec![
                format!("floor, {}", clients_label(r)),
                report::ops(f.ops_per_sec),
                "".into(),
                "".into(),
                report::times(Some(1.0)),
                format!("{}–{}", report::count(f.min_per_client), report::count(f.max_per_client)),
                format!("{:.2}", f.fairness),
                "—".into(),
                f.exclusion.clone(),
            ]);
        }
    }
    let mut notes = Vec::new();
    if let Some(r) = runs.first() {
        notes.push(format!(
            "each client: acquire, read the counter file, hold {}, write it + 1, release (ours and the floor alike); {:.1} s per client count; mode {}",
            r.hold,
            duration.as_secs_f64(),
            r.mode
        ));
        if let Some(f) = &r.floor {
            notes.push(format!("floor: {}", f.what));
        } else if r.hold != HoldTime::ZERO.to_string() {
            notes.push("no floor: this backend's contended floor does not keep the lock for --hold yet".into());
        }
        notes.push(
            "÷ uncontended: against the uncontended workload, which has no critical section; ÷ 1 client: against \
             the 1-client run of this sweep (same critical section), when --clients includes 1"
                .into(),
        );
        if r.lock_attempts_per_acquisition.is_some() {
            notes.push(
                "attempts/acq: non-blocking flock attempts per acquisition, all clients (1.0 = none wasted)".into(),
            );
        }
        if r.kind == "tasks" {
            notes.push(
                "this backend is in-process only: clients are tasks of the bench process (one provider each), not processes"
                    .into(),
            );
        }
        if r.exclusion == "n/a" {
            notes.push(format!("counter check n/a: mode {} lets several holders in at once", r.mode));
        }
    }
    Section {
        title: "contended: C clients on one name".into(),
        header: [
            "",
            "ops/s",
            "÷ uncontended",
            "÷ 1 client",
            "÷ floor",
            "acq/client",
            "min/max",
            "attempts/acq",
            "counter check",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        notes,
    }
}
