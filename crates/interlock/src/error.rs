//! The one error type of interlock.
//!
//! Contention is not an error: `try_*` methods return `Ok(None)` when the lock is held elsewhere.
//! [`Error::Timeout`], [`Error::LockLost`] and [`Error::Unavailable`] are distinct variants so that
//! callers can branch on them.

use std::time::Duration;

/// A boxed error from a backend's client library, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, interlock::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when taking, holding or releasing a lock.
///
/// Messages are one line, name the backend where there is one, and never contain a password:
/// URLs in errors are always redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A timed acquisition did not get the lock in time.
    #[error("timed out after {waited:?} waiting for lock {name:?}")]
    Timeout {
        /// The lock name (possibly shortened for display).
        name: String,
        /// How long the caller asked to wait.
        waited: Duration,
    },

    /// The lock was lost while held (lease expired, session gone, key deleted or overwritten).
    /// The critical section that ran under it may not have been exclusive.
    #[error("lock {name:?} was lost while held ({reason})")]
    LockLost {
        /// The lock name (possibly shortened for display).
        name: String,
        /// What was observed.
        reason: String,
    },

    /// The lock name is not acceptable (empty, too long, contains NUL).
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The offending name, shortened for display.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The URL could not be parsed or names an option that does not exist.
    #[error("invalid lock URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with any password replaced by `***`.
        url: String,
        /// Why it was refused.
        reason: String,
    },

    /// An argument other than the name or URL is out of range (permits, lease, timeout).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Holders of one semaphore disagree on its number of permits.
    #[error("semaphore {name:?} has {existing} permits, but {requested} were requested")]
    PermitsMismatch {
        /// The semaphore name (possibly shortened for display).
        name: String,
        /// The permits count already in use.
        existing: u32,
        /// The permits count this caller asked for.
        requested: u32,
    },

    /// The backend cannot do this, or is not built into this binary.
    #[error("{backend}: {operation}")]
    Unsupported {
        /// The backend name, e.g. `file` or `redis`.
        backend: &'static str,
        /// What was asked and why it cannot be done, as a sentence ("... is not supported ...").
        operation: String,
    },

    /// The backend cannot be reached (server down, connection refused, no quorum).
    #[error("{backend}: unavailable: {message}")]
    Unavailable {
        /// The backend name.
        backend: &'static str,
        /// A one-line description.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend refused us: our credentials (a wrong password, an unknown user, an untrusted
    /// TLS certificate), or what they allow (a server's ACL without a command or key that interlock
    /// needs). Not retryable: the configuration must change. The message says which, and starts
    /// with `authentication failed` or `permission denied`.
    #[error("{backend}: {message}")]
    Auth {
        /// The backend name.
        backend: &'static str,
        /// A one-line description (never the password), starting with `authentication failed` or
        /// `permission denied`.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend answered with an error that fits no other variant.
    #[error("{backend}: {message}")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// A one-line description.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A local I/O operation failed (lock directory, lock file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path involved.
        context: String,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True for errors where trying again later may succeed: timeouts, unavailable backends and
    /// transient I/O errors. Invalid input, authentication failures and lost locks are not.
    ///
    /// # Examples
    ///
    /// ```
    /// let e = interlock::Error::Timeout { name: "job".into(), waited: std::time::Duration::from_secs(1) };
    /// assert!(e.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Unavailable { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True for [`Error::LockLost`].
    pub fn is_lock_lost(&self) -> bool {
        matches!(self, Error::LockLost { .. })
    }

    /// True for input that the caller got wrong: names, URLs, arguments.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::InvalidName { .. }
                | Error::InvalidUrl { .. }
                | Error::InvalidArgument(_)
                | Error::PermitsMismatch { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// Shortens a name for display in errors and logs (names may be up to 1024 bytes).
pub(crate) fn display_name(name: &str) -> String {
    const MAX: usize = 80;
    if name.len() <= MAX {
        return name.to_owned();
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_and_names_backend() {
        let e =
            Error::Unavailable { backend: "redis", message: "connection refused (127.0.0.1:1)".into(), source: None };
        let s = e.to_string();
        assert_eq!(s, "redis: unavailable: connection refused (127.0.0.1:1)");
        assert!(!s.contains('\n'));
        assert!(e.is_retryable());
    }

    #[test]
    fn long_names_are_shortened() {
        let n = "é".repeat(100);
        let d = display_name(&n);
        assert!(d.len() < 90);
        assert!(d.ends_with('…'));
    }
}
