//! Lock names: any non-empty UTF-8 string of at most 1024 bytes without NUL.
//!
//! Each backend maps a [`LockName`] to its own key space deterministically; the mappings are
//! documented per backend and pinned by golden-value tests.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result, display_name};

/// The longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// A validated lock name. Cheap to clone.
///
/// # Examples
///
/// ```
/// use interlock::LockName;
/// assert!(LockName::new("jobs/cleanup").is_ok());
/// assert!(LockName::new("").is_err());
/// assert!(LockName::new("a\0b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(Arc<str>);

impl LockName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] when the name is empty, longer than [`MAX_NAME_LEN`] bytes or
    /// contains a NUL character.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        let reason = if name.is_empty() {
            Some("a lock name must not be empty")
        } else if name.len() > MAX_NAME_LEN {
            Some("a lock name must be at most 1024 bytes")
        } else if name.contains('\0') {
            Some("a lock name must not contain NUL")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidName { name: display_name(name), reason }),
            None => Ok(LockName(Arc::from(name))),
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name shortened for messages.
    pub(crate) fn display(&self) -> String {
        display_name(&self.0)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LockName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(LockName::new("x").is_ok());
        assert!(LockName::new("../../etc/passwd").is_ok());
        assert!(LockName::new("ünïcødé 🔒").is_ok());
        assert!(LockName::new("a".repeat(1024)).is_ok());
        for bad in ["".to_string(), "a\0".to_string(), "a".repeat(1025), "x".repeat(10_000)] {
            let e = LockName::new(&bad).unwrap_err();
            assert!(matches!(e, Error::InvalidName { .. }), "{bad:?}");
            assert!(e.to_string().len() < 200, "error stays short: {e}");
        }
    }
}
