//! `handoff`: two clients contend on one name; how long after one releases does the other, already
//! waiting, hold the lock? The holder takes a `CLOCK_MONOTONIC` timestamp just before it releases,
//! the waiter one just after it acquires; the clock is system-wide, so the gap can be taken across
//! processes. Next to it, the backend's own handoff floor (for files: the kernel handing a blocking
//! `flock` from one process to the other).
//!
//! Pacing makes every release a handoff to a waiting peer: a holder holds [`HOLD`] (or `--hold`, a
//! time or a range drawn anew for every hold, the same for ours and the floor), and after a
//! release pauses [`PAUSE`] before trying again, so the peer (which started waiting during the
//! previous hold) gets the lock, and this client is waiting again long before the peer releases.
//! Only an acquisition whose predecessor release was by the *other* client counts.

use std::time::Duration;

use serde::Serialize;

use super::clock::now_ns;
use super::floor;
use super::holdtime::HoldTime;
use super::mode::{Handle, Mode};
use super::report::{self, Section};
use super::spawn::{self, Clients};
use super::stats::{Samples, Summary, ratio};
use super::target::Target;
use crate::exit::{self, Failure};

/// How long a holder holds the lock unless `--hold` says otherwise.
pub const HOLD: Duration = Duration::from_micros(1000);
/// How long a client pauses after a release before trying again.
pub const PAUSE: Duration = Duration::from_micros(200);

/// One hold: `CLOCK_MONOTONIC` ns just after acquiring and just before releasing.
pub type Hold = (u64, u64);

/// How a client paces its holds.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Time held (drawn afresh for every hold when it is a range).
    pub hold: HoldTime,
    /// Time between a release and the next attempt.
    pub pause: Duration,
}

impl Pace {
    /// The default pacing, with `hold` (`--hold`) in place of [`HOLD`] when given.
    pub fn standard(hold: Option<HoldTime>) -> Pace {
        Pace { hold: hold.unwrap_or(HoldTime::fixed(HOLD)), pause: PAUSE }
    }

    /// The `bench-client` flags for `holds` holds at this pace.
    pub fn args(&self, holds: u64) -> Vec<String> {
        let mut a = vec!["--holds".into(), holds.to_string(), "--pause-us".into(), self.pause.as_micros().to_string()];
        a.extend(self.hold.args());
        a
    }

    /// A generous bound on how long `holds` holds by two clients can take.
    pub fn limit(&self, holds: u64) -> Duration {
        let per = (self.hold.max + self.pause) * 20;
        per.saturating_mul(u32::try_from(holds).unwrap_or(u32::MAX)) + Duration::from_secs(60)
    }

    /// Sleeps one hold time, blocking the thread (precise; for a client alone on its thread).
    pub fn hold_blocking(&self) {
        std::thread::sleep(self.hold.draw());
    }

    /// Sleeps the pause, blocking the thread.
    pub fn pause_blocking(&self) {
        std::thread::sleep(self.pause);
    }
}

/// What `handoff` found.
#[derive(Debug, Serialize)]
pub struct Handoff {
    /// The primitive.
    pub mode: String,
    /// `processes` or `threads` (in-process backends).
    pub clients: String,
    /// Handoffs asked for (`--handoffs`).
    pub wanted: u64,
    /// Ours.
    pub ours: Gaps,
    /// Ours through the blocking API, where it waits differently (the file backend: on the
    /// caller's thread, in the kernel).
    pub blocking: Option<Gaps>,
    /// The floor, if the backend has one.
    pub floor: Option<Gaps>,
    /// Our p50 ÷ the floor's p50.
    pub ratio_p50: Option<f64>,
    /// Set when the workload could not run in this mode.
    pub skipped: Option<String>,
    /// How long each client held the lock, the same for ours and the floor (`1 ms`, or
    /// `1 ms to 11 ms (uniform)` with `--hold 1ms..11ms`).
    pub hold: String,
}

/// The gaps of one series of handoffs.
#[derive(Debug, Serialize)]
pub struct Gaps {
    /// What handed the lock over.
    pub what: String,
    /// Handoffs counted.
    pub handoffs: u64,
    /// Acquisitions that started before the previous holder's release: exclusion violated.
    pub overlaps: u64,
    /// Release → acquisition gaps.
    pub gap: Summary,
    /// The distribution, for the plot.
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
}

/// One client's loop: `holds` times acquire, hold, release, pause. `blocking` sleeps block the
/// thread (a client alone on its runtime), otherwise they are tokio sleeps.
///
/// # Errors
///
/// The library's errors.
pub async fn hold_loop(handle: &Handle, holds: u64, pace: Pace, blocking: bool) -> Result<Vec<Hold>, Failure> {
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let mut out = Vec::with_capacity(usize::try_from(holds).unwrap_or(0));
    for _ in 0..holds {
        let guard = handle.acquire().await.map_err(lock_err)?;
        let acquired = now_ns();
        if blocking {
            pace.hold_blocking()
        } else {
            tokio::time::sleep(pace.hold.draw()).await
        }
        let released = now_ns();
        guard.release().await.map_err(lock_err)?;
        out.push((acquired, released));
        if blocking { pace.pause_blocking() } else { tokio::time::sleep(pace.pause).await }
    }
    Ok(out)
}

/// Merges the holds of all clients in time order and measures each handoff: an acquisition whose
/// predecessor was released by another client.
pub fn gaps(what: &str, clients: &[Vec<Hold>]) -> Gaps {
    let mut all: Vec<(u64, u64, usize)> =
        clients.iter().enumerate().flat_map(|(c, holds)| holds.iter().map(move |&(a, r)| (a, r, c))).collect();
    all.sort_unstable();
    let mut samples = Samples::with_capacity(all.len());
    let mut overlaps = 0;
    for w in all.windows(2) {
        let ((_, prev_rel, prev_c), (acq, _, c)) = (w[0], w[1]);
        if acq < prev_rel {
            overlaps += 1;
        } else if c != prev_c {
            samples.push(acq - prev_rel);
        }
    }
    Gaps {
        what: what.to_owned(),
        handoffs: samples.len() as u64,
        overlaps,
        gap: samples.summary(),
        cdf: samples.cdf(400),
    }
}

/// Runs the workload: ours, then the floor, each until about `wanted` handoffs.
///
/// # Errors
///
/// The library's errors; a client's failure.
pub async fn run(target: &Target, mode: Mode, wanted: u64, hold: Option<HoldTime>) -> Result<Handoff, Failure> {
    let clients = if target.cross_process { "processes" } else { "threads" };
    let mut result = Handoff {
        mode: mode.to_string(),
        clients: clients.into(),
        wanted,
        ours: gaps("", &[]),
        blocking: None,
        floor: None,
        ratio_p50: None,
        skipped: None,
        hold: String::new(),
    };
    if !mode.exclusive() {
        result.skipped = Some(format!(
            "skipped: mode {mode} lets both clients hold at once, so nothing is handed over; use mutex, write or semaphore:1"
        ));
        return Ok(result);
    }
    let pace = Pace::standard(hold);
    result.hold = pace.hold.to_string();
    // Two clients alternate, so each needs about half the holds; a margin covers the first and
    // last holds, which are no handoffs.
    let holds = wanted / 2 + wanted / 10 + 20;
    let name = target.name("handoff");
    let processes = async |job: &str| -> Result<Vec<Vec<Hold>>, Failure> {
        let args = |_| {
            let mut a: Vec<String> = vec!["--job".into(), job.into(), "--name".into(), name.clone()];
            a.extend(["--mode".into(), mode.to_string()]);
            a.extend(pace.args(holds));
            a
        };
        let mut c = Clients::start(2, Some(target.secret_url()), args).await?;
        c.go();
        let lines = c.finish(pace.limit(holds)).await?;
        lines.iter().map(|l| floor::parse_holds(l)).collect::<Result<Vec<_>, _>>()
    };
    let ours = if target.cross_process {
        processes("handoff").await?
    } else {
        let mut handles = Vec::new();
        for _ in 0..2 {
            let p = target.new_provider().await?;
            handles.push(mode.handle(&p, &name).map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))?);
        }
        spawn::threads(2, |i| hold_loop(&handles[i], holds, pace, true))?
    };
    let what = format!("interlock {mode}, 2 {clients}");
    result.ours = gaps(&what, &ours);
    // The file backend's blocking API waits on the caller's thread (one wake-up per handoff
    // instead of two): worth its own row.
    if target.cross_process && target.backend == "file" && mode == Mode::Mutex {
        let holds = processes("handoff-blocking").await?;
        result.blocking = Some(gaps(&format!("interlock {mode}, blocking API, 2 {clients}"), &holds));
    }
    if let Some((what, holds)) = floor::handoff(target, holds, pace).await? {
        result.floor = Some(gaps(&what, &holds));
    }
    result.ratio_p50 = result.floor.as_ref().and_then(|f| ratio(result.ours.gap.p50_ns as f64, f.gap.p50_ns as f64));
    target.cleanup("handoff");
    Ok(result)
}

impl Handoff {
    /// Exclusion violations seen (holds that overlapped), as messages.
    pub fn violations(&self) -> Vec<String> {
        std::iter::once(&self.ours)
            .chain(&self.blocking)
            .filter(|g| g.overlaps > 0)
            .map(|g| {
                format!("handoff ({}): {} acquisitions started before the previous holder released", g.what, g.overlaps)
            })
            .collect()
    }

    /// The table section.
    pub fn section(&self) -> Section {
        let mut notes = Vec::new();
        if let Some(s) = &self.skipped {
            notes.push(s.clone());
        } else {
            notes.push(format!(
                "2 {} on one name (ours and the floor alike); holder holds {}, pauses {} µs after a release so the peer is always waiting",
                self.clients,
                self.hold,
                PAUSE.as_micros()
            ));
            if self.ours.handoffs < self.wanted {
                notes.push(format!("collected {} handoffs of the {} asked for", self.ours.handoffs, self.wanted));
            }
            if self.floor.is_none() {
                notes.push("no floor is defined for this backend yet".into());
            }
        }
        let floor_p50 = self.floor.as_ref().map(|f| f.gap.p50_ns as f64);
        let row = |g: &Gaps, label: String| {
            vec![
                label,
                report::count(g.handoffs),
                report::ns(g.gap.p50_ns as f64),
                report::ns(g.gap.p99_ns as f64),
                report::ns(g.gap.max_ns as f64),
                report::times(floor_p50.and_then(|f| ratio(g.gap.p50_ns as f64, f))),
            ]
        };
        let mut rows = Vec::new();
        if self.skipped.is_none() {
            rows.push(row(&self.ours, self.ours.what.clone()));
            if let Some(b) = &self.blocking {
                rows.push(row(b, b.what.clone()));
            }
            if let Some(f) = &self.floor {
                rows.push(row(f, format!("floor: {}", f.what)));
            }
        }
        Section {
            title: "handoff: release → the waiting peer holds the lock".into(),
            header: ["", "handoffs", "p50", "p99", "max", "p50 ÷ floor"].map(String::from).to_vec(),
            rows,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_handoffs_between_clients() {
        // a: 0-10, 30-40; b: 12-20 (gap 2 after a), 41-50 (gap 1 after a); a again 55-60 after b (gap 5).
        let a = vec![(0, 10), (30, 40), (55, 60)];
        let b = vec![(12, 20), (41, 50)];
        let g = gaps("x", &[a, b]);
        // b after a (2), a after b (10), b after a (1), a after b (5).
        assert_eq!(g.handoffs, 4);
        assert_eq!(g.overlaps, 0);
        assert_eq!((g.gap.min_ns, g.gap.max_ns), (1, 10));
        // Same client twice in a row is no handoff.
        let g = gaps("x", &[vec![(0, 5), (6, 8)], vec![]]);
        assert_eq!(g.handoffs, 0);
        // An acquisition before the previous release is an overlap.
        let g = gaps("x", &[vec![(0, 10)], vec![(5, 12)]]);
        assert_eq!(g.overlaps, 1);
    }
}
