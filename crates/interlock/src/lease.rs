//! The lease monitor: renews an expiring lock in the background and raises the lost signal when
//! it can no longer prove the lock is held. Written once for every backend with leases.
//!
//! The monitor trusts only the local monotonic clock: a lock is valid until the instant the
//! backend reported for the last successful renewal (counted from when that renewal was *sent*),
//! and is declared lost as soon as that instant passes without a newer one, even if the backend
//! cannot be reached to say so.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::raw::{LeaseConfig, LostSignal, RawHeld, Renewal};

/// The instant until which a lock is known to be valid, shared by the guard and its monitor;
/// `None` once the guard released it (a released lock never "expires").
#[derive(Debug)]
pub(crate) struct Validity(StdMutex<Option<Instant>>);

impl Validity {
    pub(crate) fn new(until: Instant) -> Arc<Self> {
        Arc::new(Validity(StdMutex::new(Some(until))))
    }

    pub(crate) fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extends the validity, unless the lock was released meanwhile.
    fn extend(&self, until: Instant) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if v.is_some() {
            *v = Some(until);
        }
    }

    /// The guard released the lock: from now on it neither expires nor is lost.
    pub(crate) fn release(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// True when the validity has run out by the local clock (never after release).
    pub(crate) fn expired(&self) -> bool {
        self.get().is_some_and(|t| Instant::now() >= t)
    }
}

/// Starts renewing `raw` every `cfg.renew_every`; stops when the lock is lost (and says so on
/// `lost`) or when the returned task is aborted (release or drop of the guard).
pub(crate) fn spawn(
    raw: Arc<dyn RawHeld>,
    cfg: LeaseConfig,
    lost: LostSignal,
    validity: Arc<Validity>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let reason = tokio::select! {
            reason = renew_until_lost(&*raw, cfg, &validity) => reason,
            () = lost.wait() => return,
        };
        if let Some(reason) = reason {
            lost.set(reason);
        }
    })
}

/// Renews until the lock is lost (returns why) or released (returns `None`).
async fn renew_until_lost(raw: &dyn RawHeld, cfg: LeaseConfig, validity: &Validity) -> Option<String> {
    // Retry a failed renewal a few times per renewal period, never past the validity.
    let retry_every = (cfg.renew_every / 4).max(Duration::from_millis(10));
    // The config was validated, so these sums cannot overflow on a real clock; if one did, renew
    // at the validity instead of panicking.
    let after = |at: Instant, d: Duration, fallback: Option<Instant>| at.checked_add(d).or(fallback);
    let mut next = after(Instant::now(), cfg.renew_every, validity.get())?;
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
                next = after(sent, cfg.renew_every, Some(t))?;
            }
            Ok(Ok(Renewal::Lost)) => {
                return Some("the backend no longer holds the lock for us (expired, deleted or taken over)".into());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease renewal failed; retrying until the lease runs out");
                next = after(Instant::now(), retry_every, Some(until))?;
            }
        }
    }
}
