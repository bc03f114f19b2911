//! `interlock hold NAME`: take a lock, say its fencing token, and hold it until standard input
//! closes or SIGINT/SIGTERM arrives. For scripts and cross-process tests.

use std::io::{Read, Write};

use clap::Args;
use tokio::sync::oneshot;

use crate::acquire::{self, Held, LockArgs};
use crate::exit::{self, Failure, Outcome};
use crate::signals;

/// Flags of `interlock hold`.
#[derive(Args, Debug)]
pub struct HoldArgs {
    #[command(flatten)]
    pub lock: LockArgs,
}

/// Takes the lock, prints `token=<N>` (or `token=none`) on stdout, and holds the lock until stdin
/// reaches end of file or SIGINT, SIGTERM or SIGHUP arrives; then releases it and returns 0.
/// Returns 75 at once if the lock is lost meanwhile.
///
/// # Errors
///
/// A [`Failure`]: the conflict code when the lock is held elsewhere, 74 when stdout cannot be
/// written, the library's code for backend errors.
pub async fn hold(args: HoldArgs) -> Outcome {
    let (Held { provider: _provider, guard }, mut signals) = acquire::acquire(&args.lock, signals::RELEASE_ON).await?;
    let line = format!("token={}\n", acquire::token_text(&guard));
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
        drop(out);
        let _ = guard.release().await;
        return Err(Failure::io("cannot write the token to stdout", e));
    }
    drop(out);
    let closed = stdin_closed();
    let lost = guard.lost();
    tokio::select! {
        _ = closed => tracing::debug!("stdin closed; releasing"),
        caught = signals.recv() => tracing::debug!(signal = caught.signal.as_raw(), "signal; releasing"),
        () = lost => {
            let name = guard.name().to_owned();
            return Err(match guard.release().await {
                Err(e) => Failure::from_lock(&e, exit::CONFLICT_DEFAULT),
                Ok(()) => Failure::new(exit::LOCK_LOST, format!("lock {} was lost while held", exit::show_name(&name))),
            });
        }
    }
    match guard.release().await {
        Ok(()) => Ok(0),
        Err(e) => Err(Failure::from_lock(&e, exit::CONFLICT_DEFAULT)),
    }
}

/// Completes when standard input reaches end of file (or fails), discarding what it reads.
///
/// The read runs on a plain OS thread, not tokio's blocking pool, so a read that never ends cannot
/// hold up the runtime's shutdown when we exit for another reason.
pub fn stdin_closed() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "reading stdin failed; treating it as closed");
                    break;
                }
            }
        }
        let _ = tx.send(());
    });
    if let Err(e) = spawned {
        // Without the thread the sender is dropped, so the receiver completes at once: holding
        // on with no way to be told to stop would be worse.
        tracing::warn!(error = %e, "cannot watch stdin; releasing at once");
    }
    rx
}
