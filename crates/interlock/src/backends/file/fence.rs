//! Fencing tokens for file locks: a counter in a hidden file beside the lock file
//! (`.NAME.fence`), so that tools which truncate or rewrite the lock file itself cannot reset it.
//!
//! Every acquisition reads the counter: an exclusive holder (mutex, writer) adds one and takes the
//! new value; a reader takes the current value, which is the last exclusive token because readers
//! and writers exclude each other on the lock file. Exclusive holders are alone, so they need no
//! lock on the counter; the holders of one semaphore's permits are not, so they take a short
//! `flock` on the counter file while they bump it. Readers only read: they never create or write
//! the file, so they need no write access to it.
//!
//! The counter is exactly 20 decimal digits and a newline, written in place, so a reader never
//! sees a half-written number. Anything else in the file is refused, never taken for zero: only a
//! missing file means "first use". A new counter file is created atomically with its first value
//! (a temporary file moved into place without replacing anything), so it is never seen empty.
//! It survives process restarts; it is not fsynced, so a power loss can lose the most recent
//! increments. Deleting the file restarts the count: don't.
//!
//! A counter file we may not write (left by another user, e.g. root-owned 0644 in a directory we
//! own) is replaced by a new file holding the next value, but only under the lock that protects
//! it: the lock file's exclusive lock for `.NAME.fence`, the counter's own exclusive lock for a
//! semaphore's (whose holders therefore check, once they hold it, that the path still names the
//! file they locked).
//!
//! The process keeps the descriptors of the `.NAME.fence` counters it bumped open in its
//! [`Cache`] (least recently used first out, shared with lock files and bounded by a share of
//! the descriptor limit, see [`super::fdcache`]), so that an uncontended
//! acquisition skips the counter's open, `fstat` and close. Before it uses a kept descriptor it
//! checks that the path still names that file (`lstat`: device and inode), so a counter that
//! someone deleted or replaced is noticed and opened afresh, exactly as without the cache. Only
//! descriptors we may write, of counters bumped under the lock file's exclusive lock, are kept: a
//! semaphore's counter, which its members lock, is opened and closed each time. A forked child
//! never inherits them (see [`super::clofork`]) and starts a cache of its own: a counter's open
//! file description is never shared between parent and child.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::fdcache::Cache;
use super::raw::{Access, Attempt, install, is_denied, lock_internal, open_in_dir, path_is};
use crate::error::{Error, Result};

const WIDTH: usize = 21; // 20 digits (u64::MAX) and a newline

/// What protects the counter while it is bumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    /// The caller holds the lock file exclusively: nobody else writes the counter.
    Held,
    /// The counter's own exclusive `flock` (semaphore members bump it concurrently). With
    /// `try_only`, a counter another process keeps locked is contention, not something to wait for.
    Own { try_only: bool },
}

/// The current value of the counter at `path`, for a reader: 0 when the file does not exist
/// (nobody took the lock exclusively yet). Never creates or writes the file. Uses the descriptor
/// `cache` keeps for `path` when the path still names its file.
pub(crate) fn current(path: &Path, cache: &Cache) -> Result<u64> {
    if let Some((file, id)) = cache.take(path)
        && path_is(path, id)?
    {
        let value = read(&file, path)?;
        cache.put(path, file, id);
        return Ok(value);
    }
    match open_in_dir(path, Access::Read) {
        Ok((file, _)) => read(&file, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(context(path), e)),
    }
}

/// Adds one to the counter at `path` and returns the new value; creates the counter with 1 on
/// first use. `Ok(None)` only with `Lock::Own { try_only: true }` when another process keeps the
/// counter locked. `share`: see [`super::raw::open_in_dir`]. With `Lock::Held`, the descriptor
/// is kept in `cache` and taken from it next time, when the path still names its file.
pub(crate) async fn bump(path: &Path, share: u32, lock: Lock, cache: &Cache) -> Result<Option<u64>> {
    if lock == Lock::Held
        && let Some((file, id)) = cache.take(path)
        && path_is(path, id)?
    {
        let value = next(&file, path)?;
        file.write_all_at(&encode(value), 0).map_err(|e| Error::io(context(path), e))?;
        cache.put(path, file, id);
        return Ok(Some(value));
    }
    for _ in 0..100 {
        let (file, id, writable) = match open_in_dir(path, Access::Update { share, create: false }) {
            Ok((file, id)) => (file, id, true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // First use. Losing the race to create it means someone else did: use theirs.
                if install(path, &encode(1), share, false).map_err(|e| Error::io(context(path), e))? {
                    return Ok(Some(1));
                }
                continue;
            }
            // We may not write it; we may still read it, lock it and replace it.
            Err(e) if is_denied(&e) => match open_in_dir(path, Access::Read) {
                Ok((file, id)) => (file, id, false),
                Err(gone) if gone.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => return Err(Error::io(context(path), e)),
            },
            Err(e) => return Err(Error::io(context(path), e)),
        };
        if let Lock::Own { try_only } = lock {
            // Held by other members for a few microseconds; wait for it like any lock, without
            // blocking the thread (a single try does not wait).
            match lock_internal(&file, path, id, false, try_only, true).await? {
                Attempt::Locked => {}
                Attempt::Busy => return Ok(None),
                // (`Room` only comes with `until_room`, which internal files never ask for.)
                Attempt::Replaced | Attempt::Room => continue,
            }
            // Whoever held it before us may have replaced it (see the module's documentation):
            // only the file at the path counts.
            if !path_is(path, id)? {
                continue;
            }
        }
        let value = next(&file, path)?;
        if writable {
            file.write_all_at(&encode(value), 0).map_err(|e| Error::io(context(path), e))?;
            if lock == Lock::Held {
                cache.put(path, file, id);
            }
        } else {
            // Replaced while we hold the lock that protects it, so no one writes it meanwhile.
            install(path, &encode(value), share, true).map_err(|e| {
                Error::io(format!("{} (it is not writable, and replacing it failed)", context(path)), e)
            })?;
        }
        // Closing `file` drops its flock.
        return Ok(Some(value));
    }
    Err(Error::Backend {
        backend: "file",
        message: format!("{} keeps changing; cannot draw a fencing token", path.display()),
        source: None,
    })
}

/// The counter's value plus one.
fn next(file: &File, path: &Path) -> Result<u64> {
    read(file, path)?.checked_add(1).ok_or_else(|| Error::Backend {
        backend: "file",
        message: format!("{} reached the largest fencing token", path.display()),
        source: None,
    })
}

fn context(path: &Path) -> String {
    format!("fencing counter {}", path.display())
}

/// The counter as interlock writes it: 20 digits, zero-padded, and a newline.
fn encode(value: u64) -> Vec<u8> {
    format!("{value:0w$}\n", w = WIDTH - 1).into_bytes()
}

/// The value of a counter file that holds exactly what [`encode`] writes; anything else (empty,
/// blank, too short or too long, other characters, a number beyond `u64`) is refused.
fn read(file: &File, path: &Path) -> Result<u64> {
    // One `pread` in the common case: a regular file returns all it has up to the buffer's size,
    // so 21 bytes read means a 21-byte file, and a longer file shows as more than 21.
    let mut buf = [0u8; 32];
    let mut n = 0;
    while n < WIDTH {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(context(path), e)),
        }
    }
    if let Some(value) = decode(&buf[..n]) {
        return Ok(value);
    }
    let found = match n {
        0 => "it is empty".to_owned(),
        _ => {
            let size = file.metadata().map_or(n as u64, |m| m.len());
            let shown = String::from_utf8_lossy(&buf[..n.min(24)]).into_owned();
            format!("found {size} bytes: {shown:?}{}", if n > 24 { "..." } else { "" })
        }
    };
    Err(Error::Backend {
        backend: "file",
        message: format!(
            "{} does not hold a counter (expected 20 digits and a newline; {found}); refusing to restart fencing tokens \
             (write the last token back in that form, or remove the file if nothing relies on the tokens)",
            path.display()
        ),
        source: None,
    })
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let (digits, newline) = bytes.split_at_checked(WIDTH - 1)?;
    if newline != b"\n" || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_what_it_encodes() {
        for v in [0, 1, 14, u64::MAX] {
            assert_eq!(decode(&encode(v)), Some(v));
            assert_eq!(encode(v).len(), WIDTH);
        }
        for bad in [
            &b""[..],
            b"\n",
            b"14\n",
            b"00000000000000000014",
            b"00000000000000000014\n\n",
            b"00000000000000000014\r",
            b" 0000000000000000014\n",
            b"+0000000000000000014\n",
            b"18446744073709551616\n",
            b"0000000000000000001\xff\n",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn counts_persists_and_refuses_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".x.fence");
        let cache = Cache::fixed(16);
        assert_eq!(current(&p, &cache).unwrap(), 0);
        assert!(!p.exists(), "reading creates nothing");
        let own = Lock::Own { try_only: false };
        assert_eq!(bump(&p, 0o600, own, &cache).await.unwrap(), Some(1));
        assert_eq!(cache.len(), 0, "a counter that is locked on its own is not kept");
        assert_eq!(bump(&p, 0o600, Lock::Held, &cache).await.unwrap(), Some(2));
        assert_eq!(cache.len(), 1);
        assert_eq!(current(&p, &cache).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "00000000000000000002\n");
        for junk in [&b"junk"[..], b"", b"   \n", b"00000000000000000002\n "] {
            std::fs::write(&p, junk).unwrap();
            let e = bump(&p, 0o600, own, &cache).await.unwrap_err().to_string();
            assert!(e.contains("refusing") && e.contains(".x.fence"), "{e}");
            assert!(current(&p, &cache).unwrap_err().to_string().contains("refusing"));
            let e = bump(&p, 0o600, Lock::Held, &cache).await.unwrap_err().to_string();
            assert!(e.contains("refusing"), "the kept descriptor reads what is there: {e}");
        }
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [".x.fence"], "no temporary files left");
    }

    #[tokio::test]
    async fn a_kept_counter_that_was_replaced_or_deleted_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".x.fence");
        let cache = Cache::fixed(16);
        assert_eq!(bump(&p, 0o600, Lock::Held, &cache).await.unwrap(), Some(1));
        assert_eq!(bump(&p, 0o600, Lock::Held, &cache).await.unwrap(), Some(2));
        // Replaced (another tool, another user): the new file counts, not the kept descriptor's.
        let other = tmp.path().join("other");
        std::fs::write(&other, encode(40)).unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert_eq!(current(&p, &cache).unwrap(), 40);
        assert_eq!(bump(&p, 0o600, Lock::Held, &cache).await.unwrap(), Some(41));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "00000000000000000041\n");
        // Deleted: the count restarts, as it does without the cache (the docs say: don't).
        std::fs::remove_file(&p).unwrap();
        assert_eq!(current(&p, &cache).unwrap(), 0);
        assert_eq!(bump(&p, 0o600, Lock::Held, &cache).await.unwrap(), Some(1));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "00000000000000000001\n");
    }
}
