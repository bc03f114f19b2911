//! `many-locks`: one process holds N distinct locks: how long taking them all takes, how much
//! memory each held lock costs this process, how long releasing them all takes.
//!
//! The file backend keeps one descriptor open per held lock, so the bench raises its soft
//! `RLIMIT_NOFILE` to the hard limit first, and caps N (saying so) if that is still too low.

use std::time::{Duration, Instant};

use interlock::Provider;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use serde::Serialize;

use super::clock::ns;
use super::floor::{self, ManyFloor};
use super::report::{self, Section};
use super::spawn::{self, Clients};
use super::stats::ratio;
use super::target::Target;
use crate::exit::{self, Failure};

/// Descriptors kept free for everything else the process opens.
const FD_MARGIN: u64 = 128;

/// What `many-locks` found.
#[derive(Debug, Serialize)]
pub struct ManyLocks {
    /// Locks asked for (`--locks`).
    pub requested: u64,
    /// Locks held (fewer when the descriptor limit capped it).
    pub held: u64,
    /// Seconds to take them all (`lock()` each, one after another).
    pub take_all_s: f64,
    /// Seconds to release them all.
    pub release_all_s: f64,
    /// Resident memory of this process per held lock (bytes), from `/proc/self/statm`.
    pub rss_bytes_per_lock: Option<f64>,
    /// The floor, where the backend has one.
    pub floor: Option<ManyFloor>,
    /// What was done about the descriptor limit, and other remarks.
    pub notes: Vec<String>,
}

/// Runs the workload in a fresh client process (so that its resident-memory growth is the locks'
/// alone, not the reuse of memory other workloads freed), then the floor in this one.
///
/// # Errors
///
/// The client's failure (e.g. running out of descriptors anyway).
pub async fn run(target: &Target, requested: u64) -> Result<ManyLocks, Failure> {
    let prefix = target.name("many-locks");
    let args = |_| {
        ["--job", "many-locks", "--name", prefix.as_str(), "--locks"]
            .map(String::from)
            .into_iter()
            .chain([requested.to_string()])
            .collect()
    };
    let mut c = Clients::start(1, Some(target.secret_url()), args).await?;
    c.go();
    let lines = c.finish(Duration::from_secs(600)).await?;
    let lines = lines.first().map_or(&[][..], Vec::as_slice);
    let mut notes: Vec<String> = lines.iter().filter_map(|l| l.strip_prefix("note ")).map(str::to_owned).collect();
    let [held, take_ns, release_ns, before, after] = spawn::numbers(lines, "done")?[..] else {
        return Err(Failure::new(exit::UNAVAILABLE, "the many-locks client printed a malformed done line"));
    };
    notes.push(format!(
        "memory: the holding process's resident set growth ÷ N, from a fresh process (guards and the library's \
         per-lock state; kernel memory for open files and locks not counted); one Guard is {} bytes",
        std::mem::size_of::<interlock::Guard>()
    ));
    target.cleanup("many-locks");
    let floor = floor::many_locks(target, held)?;
    target.cleanup("many-locks");
    Ok(ManyLocks {
        requested,
        held,
        take_all_s: take_ns as f64 / 1e9,
        release_all_s: release_ns as f64 / 1e9,
        rss_bytes_per_lock: (held > 0 && after > 0).then(|| after.saturating_sub(before) as f64 / held as f64),
        floor,
        notes,
    })
}

/// The client side: takes `requested` locks `PREFIX-0`, `PREFIX-1`, ... with `lock()`, one after
/// another, then releases them all. Returns the lines to print: `note TEXT` remarks, then
/// `done HELD TAKE_NS RELEASE_NS RSS_BEFORE RSS_AFTER` (RSS 0 when unknown).
///
/// # Errors
///
/// The library's errors.
pub async fn hold_many(provider: &Provider, prefix: &str, requested: u64) -> Result<Vec<String>, Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let mut notes = Vec::new();
    let mut n = requested;
    if provider.backend() == "file"
        && let Some(limit) = raise_nofile(&mut notes)
        && limit < n + FD_MARGIN
    {
        n = limit.saturating_sub(FD_MARGIN).max(1);
        notes.push(format!(
            "capped at {} locks: the open-files limit is {limit} and each held file lock needs a descriptor",
            report::count(n)
        ));
    }
    let mut handles = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        handles.push(provider.mutex(format!("{prefix}-{i}")).map_err(lock_err)?);
    }
    let mut guards = Vec::with_capacity(handles.len());
    let rss_before = rss_bytes().unwrap_or(0);
    let t = Instant::now();
    for h in &handles {
        guards.push(h.lock().await.map_err(lock_err)?);
    }
    let take = t.elapsed();
    let rss_after = rss_bytes().unwrap_or(0);
    let t = Instant::now();
    for g in guards {
        g.release().await.map_err(lock_err)?;
    }
    let release = t.elapsed();
    let mut lines: Vec<String> = notes.into_iter().map(|n| format!("note {}", exit::one_line(&n))).collect();
    lines.push(format!("done {n} {} {} {rss_before} {rss_after}", ns(take), ns(release)));
    Ok(lines)
}

/// Raises the soft open-files limit to the hard limit; returns the limit now in force.
fn raise_nofile(notes: &mut Vec<String>) -> Option<u64> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (current, maximum) else { return None };
    let Some(hard) = hard else {
        notes.push(format!("the open-files limit (RLIMIT_NOFILE) is {soft}, with no hard limit above it"));
        return Some(soft);
    };
    if hard <= soft {
        notes.push(format!("the open-files limit (RLIMIT_NOFILE) is {soft}, already its hard limit"));
        return Some(soft);
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
        Ok(()) => {
            notes.push(format!(
                "raised this process's open-files soft limit (RLIMIT_NOFILE) from {soft} to its hard limit {hard}: the \
                 file backend keeps one descriptor per held lock"
            ));
            Some(hard)
        }
        Err(e) => {
            notes.push(format!("could not raise the open-files limit from {soft} to {hard}: {e}"));
            Some(soft)
        }
    }
}

/// This process's resident memory in bytes, from `/proc/self/statm`.
fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

impl ManyLocks {
    /// The table section.
    pub fn section(&self) -> Section {
        let per = |s: f64| if self.held > 0 { s * 1e9 / self.held as f64 } else { 0.0 };
        let mut rows = vec![vec![
            "interlock lock() each / release() each".to_owned(),
            report::secs(self.take_all_s),
            report::ns(per(self.take_all_s)),
            report::secs(self.release_all_s),
            report::ns(per(self.release_all_s)),
            self.rss_bytes_per_lock.map_or_else(|| "?".into(), report::bytes),
            report::times(self.floor.as_ref().and_then(|f| ratio(self.take_all_s, f.take_all_s))),
        ]];
        if let Some(f) = &self.floor {
            rows.push(vec![
                format!("floor: {}", f.what),
                report::secs(f.take_all_s),
                report::ns(per(f.take_all_s)),
                report::secs(f.release_all_s),
                report::ns(per(f.release_all_s)),
                "—".into(),
                report::times(Some(1.0)),
            ]);
        }
        let mut notes = vec![format!("{} distinct locks held at once by one process", report::count(self.held))];
        notes.extend(self.notes.iter().cloned());
        Section {
            title: "many-locks: one process holds N locks".into(),
            header: ["", "take all", "per lock", "release all", "per lock", "memory/lock", "take ÷ floor"]
                .map(String::from)
                .to_vec(),
            rows,
            notes,
        }
    }
}
