//! The monitor: one task per guard that renews an expiring lock in the background, awaits the
//! backend's loss events ([`RawHeld::watch_lost`]), and raises the lost signal when it can no
//! longer prove the lock is held. Written once for every backend; it stops when the guard is
//! released or dropped, so backends need no tasks of their own to watch a held lock.
//!
//! The monitor trusts only the local monotonic clock: a lock is valid until the instant the
//! backend reported for the last successful renewal (counted from when that renewal was *sent*),
//! and is declared lost as soon as that instant passes without a newer one, even if the backend
//! cannot be reached to say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::raw::{BoxFuture, LeaseConfig, LostSignal, RawHeld, Renewal};

/// The instant until which a lock is known to be valid, shared by the guard and its monitor;
/// `None` once the guard released it (a released lock never "expires"). A watch, so that
/// [`crate::ValidityWatch`] can follow each renewal.
#[derive(Debug)]
pub(crate) struct Validity(tokio::sync::watch::Sender<Option<Instant>>);

impl Validity {
    pub(crate) fn new(until: Instant) -> Arc<Self> {
        Arc::new(Validity(tokio::sync::watch::Sender::new(Some(until))))
    }

    pub(crate) fn get(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// Extends the validity, unless the lock was released meanwhile.
    fn extend(&self, until: Instant) {
        self.0.send_if_modified(|v| {
            let changed = v.is_some_and(|t| t != until);
            if changed {
                *v = Some(until);
            }
            changed
        });
    }

    /// The guard released the lock: from now on it neither expires nor is lost.
    pub(crate) fn release(&self) {
        self.0.send_if_modified(|v| v.take().is_some());
    }

    /// True when the validity has run out by the local clock (never after release).
    pub(crate) fn expired(&self) -> bool {
        self.get().is_some_and(|t| Instant::now() >= t)
    }

    /// A receiver that sees every change from now on.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Instant>> {
        self.0.subscribe()
    }
}

/// Counts the live monitor tasks of one provider (a diagnostic for leak tests).
#[derive(Debug, Default)]
pub(crate) struct MonitorCount(AtomicUsize);

impl MonitorCount {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Decrements the count when the monitor task's future is dropped (finished or aborted).
struct Live(Arc<MonitorCount>);

impl Live {
    fn new(count: Arc<MonitorCount>) -> Live {
        count.0.fetch_add(1, Ordering::SeqCst);
        Live(count)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the monitor of one guard watches.
pub(crate) struct Watch {
    pub(crate) raw: Arc<dyn RawHeld>,
    pub(crate) cfg: LeaseConfig,
    pub(crate) lost: LostSignal,
    /// For expiring locks: renew them, and declare them lost when this runs out.
    pub(crate) validity: Option<Arc<Validity>>,
    /// The backend's loss event, if it has one.
    pub(crate) event: Option<BoxFuture<'static, String>>,
}

/// Starts the monitor of one guard, when there is anything to watch: renews the lease before its
/// validity runs out (see [`next_renewal`]) and awaits the backend's loss event; stops when the
/// lock is lost (and says so on `lost`) or when the returned task is aborted (release or drop of
/// the guard).
pub(crate) fn spawn(watch: Watch, count: &Arc<MonitorCount>) -> Option<JoinHandle<()>> {
    let Watch { raw, cfg, lost, validity, event } = watch;
    if validity.is_none() && event.is_none() {
        return None;
    }
    let live = Live::new(count.clone());
    Some(tokio::spawn(async move {
        let _live = live;
        let renewals = async {
            match &validity {
                Some(v) => renew_until_lost(&*raw, cfg, v).await,
                None => std::future::pending().await,
            }
        };
        let event = async {
            match event {
                Some(e) => Some(e.await),
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            reason = renewals => reason,
            reason = event => reason,
            () = lost.wait() => return,
        };
        if let Some(reason) = reason {
            lost.set(reason);
        }
    }))
}

/// When to renew a lock valid until `until`, by the validity the backend reported, not by a fixed
/// period: the lease's margin ([`LeaseConfig::margin`], lease minus renewal interval) before the
/// validity runs out, so that a lock renewed every third of its lease is renewed with two thirds
/// left, however much of it the backend granted.
///
/// `sent` is when the request that reported `until` was sent, for a renewal; `None` for the
/// acquisition. A lock acquired with less than the margin left (handed over near the end of its
/// lease, a TTL rounded down, a session near its timeout) is renewed at once. After a renewal
/// that reported less than the margin, the next one comes no sooner than the renewal interval or
/// half of what is left after the renewal's sending, whichever is shorter: never a busy loop, even
/// against a backend that keeps granting little (or reports a session's validity that has not
/// moved yet).
fn next_renewal(cfg: LeaseConfig, until: Instant, now: Instant, sent: Option<Instant>) -> Instant {
    let by_margin = until.checked_sub(cfg.margin()).unwrap_or(now);
    let earliest = match sent {
        None => now,
        Some(sent) => {
            let gap = cfg.renew_every.min(until.saturating_duration_since(sent) / 2).max(Duration::from_millis(1));
            sent.checked_add(gap).unwrap_or(until)
        }
    };
    by_margin.max(earliest).min(until)
}

/// Renews until the lock is lost (returns why) or released (returns `None`).
async fn renew_until_lost(raw: &dyn RawHeld, cfg: LeaseConfig, validity: &Validity) -> Option<String> {
    // Retry a failed renewal a few times per renewal period, never past the validity.
    let retry_every = (cfg.renew_every / 4).max(Duration::from_millis(10));
    let mut next = next_renewal(cfg, validity.get()?, Instant::now(), None);
    loop {
        let until = validity.get()?;
        // Wake at the next renewal, or at expiry if that comes first.
        tokio::time::sleep_until(next.min(until).into()).await;
        let until = validity.get()?;
        if Instant::now() >= until {
            return Some(format!("lease of {:?} ran out by the local clock before a renewal succeeded", cfg.lease));
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(until.into(), raw.renew(cfg.lease)).await {
            Err(_) => return Some(format!("lease of {:?} ran out while a renewal was in flight", cfg.lease)),
            Ok(Ok(Renewal::Until(t))) => {
                validity.extend(t);
                next = next_renewal(cfg, validity.get()?, Instant::now(), Some(sent));
            }
            Ok(Ok(Renewal::Lost)) => {
                return Some("the backend no longer holds the lock for us (expired, deleted or taken over)".into());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease renewal failed; retrying until the lease runs out");
                next = Instant::now().checked_add(retry_every).unwrap_or(until).min(until);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lease_ms: u64, renew_ms: u64) -> LeaseConfig {
        LeaseConfig::new(Duration::from_millis(lease_ms), Duration::from_millis(renew_ms)).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn renewals_come_a_margin_before_the_validity() {
        let now = Instant::now();
        // A full lease from a request sent now: every third of it, as before.
        assert_eq!(next_renewal(cfg(900, 300), now + ms(900), now, None), now + ms(300));
        assert_eq!(next_renewal(cfg(900, 300), now + ms(900), now, Some(now)), now + ms(300));
        // Granted with less left than the margin (600 ms): renewed at once.
        assert_eq!(next_renewal(cfg(900, 300), now + ms(200), now, None), now);
        // Granted with a little more than the margin: renewed when the margin is left.
        assert_eq!(next_renewal(cfg(900, 800), now + ms(500), now, None), now + ms(400));
    }

    #[test]
    fn a_backend_that_grants_little_is_not_renewed_in_a_busy_loop() {
        let now = Instant::now();
        // A renewal sent now that reported 200 ms (less than the 600 ms margin): half of it.
        assert_eq!(next_renewal(cfg(900, 300), now + ms(200), now, Some(now)), now + ms(100));
        // A validity that has not moved (a session's keep-alive not yet back): half of what is
        // left, so the renewals close in on the validity, at least 1 ms apart, never past it.
        assert_eq!(next_renewal(cfg(900, 300), now + ms(10), now, Some(now)), now + ms(5));
        assert_eq!(next_renewal(cfg(900, 300), now + ms(1), now, Some(now)), now + ms(1));
        assert_eq!(next_renewal(cfg(900, 300), now, now, Some(now)), now);
    }
}
