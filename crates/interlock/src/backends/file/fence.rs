//! Fencing tokens for file locks: a counter in a hidden file beside the lock file
//! (`.NAME.fence`), so that tools which truncate or rewrite the lock file itself cannot reset it.
//!
//! Every acquisition reads the counter: an exclusive holder (mutex, writer) adds one and takes the
//! new value; a reader takes the current value, which is the last exclusive token because readers
//! and writers exclude each other on the lock file. Exclusive holders are alone, so they need no
//! lock on the counter; the holders of one semaphore's permits are not, so they take a short
//! `flock` on the counter file while they bump it. The value is written in place, fixed width, so a reader never sees
//! a half-written number. It survives process restarts; it is not fsynced, so a power loss can lose
//! the most recent increments. Deleting the file restarts the count: don't.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::raw::{Attempt, lock_internal, open_in_dir};
use crate::error::{Error, Result};

const WIDTH: usize = 21; // 20 digits (u64::MAX) and a newline

/// Adds one to the counter at `path` and returns the new value (`bump`), or returns the current
/// value (`!bump`). With `lock`, under an exclusive `flock` of the counter file; then `Ok(None)`
/// when `try_only` and another process keeps that file locked. `share`: see
/// [`super::raw::open_in_dir`].
pub(crate) async fn next(path: &Path, bump: bool, lock: bool, share: u32, try_only: bool) -> Result<Option<u64>> {
    let ctx = || format!("fencing counter {}", path.display());
    let (file, id): (File, _) = open_in_dir(path, Some(share)).map_err(|e| Error::io(ctx(), e))?;
    if lock {
        // Held by other members for a few microseconds; wait for it like any lock, without
        // blocking the thread (a single try does not wait).
        if let Attempt::Busy = lock_internal(&file, path, id, false, try_only, false).await? {
            return Ok(None);
        }
    }
    // One read: the counter is 21 bytes written in place, so a short read only happens at EOF.
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0).map_err(|e| Error::io(ctx(), e))?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("?").trim();
    let current: u64 = if text.is_empty() {
        0
    } else {
        text.parse().map_err(|_| Error::Backend {
            backend: "file",
            message: format!(
                "{} does not hold a counter ({:?}); refusing to restart fencing tokens from zero",
                path.display(),
                text.chars().take(24).collect::<String>()
            ),
            source: None,
        })?
    };
    if !bump {
        return Ok(Some(current));
    }
    let value = current.checked_add(1).ok_or_else(|| Error::Backend {
        backend: "file",
        message: format!("{} reached the largest fencing token", path.display()),
        source: None,
    })?;
    let text = format!("{value:0w$}\n", w = WIDTH - 1);
    file.write_all_at(text.as_bytes(), 0).map_err(|e| Error::io(ctx(), e))?;
    // Closing `file` drops its flock.
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_persists_and_refuses_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".x.fence");
        assert_eq!(next(&p, false, true, 0o600, false).await.unwrap(), Some(0));
        assert_eq!(next(&p, true, true, 0o600, false).await.unwrap(), Some(1));
        assert_eq!(next(&p, true, true, 0o600, true).await.unwrap(), Some(2));
        assert_eq!(next(&p, false, true, 0o600, false).await.unwrap(), Some(2));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "00000000000000000002\n");
        std::fs::write(&p, b"junk").unwrap();
        assert!(next(&p, true, true, 0o600, false).await.unwrap_err().to_string().contains("refusing"));
    }
}
