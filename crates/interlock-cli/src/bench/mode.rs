//! `--mode`: which primitive the bench takes, and a handle that takes it.

use std::fmt;

use interlock::{Guard, Provider};

/// Most permits `--mode semaphore:N` accepts (the file backend's own limit).
pub const MAX_PERMITS: u32 = 1024;

/// The primitive a workload takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `mutex(NAME)`.
    Mutex,
    /// The read side of `rwlock(NAME)`.
    Read,
    /// The write side of `rwlock(NAME)`.
    Write,
    /// One permit of `semaphore(NAME, N)`.
    Semaphore(u32),
}

impl Mode {
    /// Parses `mutex`, `read`, `write` or `semaphore:N`.
    ///
    /// # Errors
    ///
    /// A one-line reason for clap to show.
    pub fn parse(text: &str) -> Result<Mode, String> {
        match text {
            "mutex" => Ok(Mode::Mutex),
            "read" => Ok(Mode::Read),
            "write" => Ok(Mode::Write),
            _ => match text.strip_prefix("semaphore:").map(str::parse::<u32>) {
                Some(Ok(n)) if (1..=MAX_PERMITS).contains(&n) => Ok(Mode::Semaphore(n)),
                _ => Err(format!("`{text}`: use mutex, read, write or semaphore:N (N from 1 to {MAX_PERMITS})")),
            },
        }
    }

    /// True when two holders exclude each other (mutex, write, semaphore:1): only then can the
    /// counter check and the handoff measure anything.
    pub fn exclusive(self) -> bool {
        matches!(self, Mode::Mutex | Mode::Write | Mode::Semaphore(1))
    }

    /// A handle on `name` for this primitive.
    ///
    /// # Errors
    ///
    /// The library's error for a bad name.
    pub fn handle(self, provider: &Provider, name: &str) -> interlock::Result<Handle> {
        Ok(match self {
            Mode::Mutex => Handle::Mutex(provider.mutex(name)?),
            Mode::Read => Handle::Read(provider.rwlock(name)?),
            Mode::Write => Handle::Write(provider.rwlock(name)?),
            Mode::Semaphore(n) => Handle::Semaphore(provider.semaphore(name, n)?),
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Mutex => f.write_str("mutex"),
            Mode::Read => f.write_str("read"),
            Mode::Write => f.write_str("write"),
            Mode::Semaphore(n) => write!(f, "semaphore:{n}"),
        }
    }
}

/// A lock handle of any primitive, taken the same way.
#[derive(Clone, Debug)]
pub enum Handle {
    /// A mutex.
    Mutex(interlock::Mutex),
    /// The read side of a read-write lock.
    Read(interlock::RwLock),
    /// The write side of a read-write lock.
    Write(interlock::RwLock),
    /// A semaphore.
    Semaphore(interlock::Semaphore),
}

impl Handle {
    /// Waits for the lock (the plain `lock` / `read` / `write` / `acquire`).
    ///
    /// # Errors
    ///
    /// The library's errors.
    pub async fn acquire(&self) -> interlock::Result<Guard> {
        match self {
            Handle::Mutex(m) => m.lock().await,
            Handle::Read(rw) => rw.read().await,
            Handle::Write(rw) => rw.write().await,
            Handle::Semaphore(s) => s.acquire().await,
        }
    }

    /// One attempt (`try_lock` / `try_read` / `try_write` / `try_acquire`).
    ///
    /// # Errors
    ///
    /// The library's errors; contention is `Ok(None)`.
    pub async fn try_acquire(&self) -> interlock::Result<Option<Guard>> {
        match self {
            Handle::Mutex(m) => m.try_lock().await,
            Handle::Read(rw) => rw.try_read().await,
            Handle::Write(rw) => rw.try_write().await,
            Handle::Semaphore(s) => s.try_acquire().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!(Mode::parse("mutex"), Ok(Mode::Mutex));
        assert_eq!(Mode::parse("semaphore:3"), Ok(Mode::Semaphore(3)));
        assert_eq!(Mode::parse("semaphore:3").map(|m| m.to_string()), Ok("semaphore:3".to_owned()));
        for bad in ["", "Mutex", "semaphore:", "semaphore:0", "semaphore:-1", "semaphore:1025", "sem:2"] {
            assert!(Mode::parse(bad).is_err(), "{bad}");
        }
        assert!(Mode::Semaphore(1).exclusive() && Mode::Write.exclusive());
        assert!(!Mode::Read.exclusive() && !Mode::Semaphore(2).exclusive());
    }
}
