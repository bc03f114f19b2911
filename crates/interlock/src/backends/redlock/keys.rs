//! Lock names to keys on each master (pinned by the golden tests below). The lock key is the
//! redis backend's, `prefix + name` verbatim (what redlock-py uses, and pottery with prefix
//! `redlock:`), so those tools and interlock exclude each other on every master. interlock's own
//! side keys start as the redis backend's do: the prefix (when it has no `{`), then `{prefix +
//! name}` for a lock key without `}`, the lock key's own hash tag otherwise (see the redis
//! backend's keys), so all of them share one slot (`{K}` below stands for that base):
//!
//! | key | type | what |
//! |---|---|---|
//! | `K` | string | the lock on this master: a holder's token, or [`READERS_VALUE`] while readers hold it |
//! | `{K}:fence` | integer | this master's fencing counter (kept for good) |
//! | `{K}:readers` | zset | reader token → expiry (server ms) |
//! | `{K}:writers` | zset | waiting writer token → registration expiry (server ms): keeps new readers out |
//! | `{K}:q`, `{K}:qx` | zset | waiting `w:TOKEN` / `r:TOKEN` → arrival (server µs), → registration expiry (server ms): who a release wakes |
//!
//! and the pub/sub channel `{K}:released`, on which a release that frees the lock publishes the
//! head waiter (`w:TOKEN`), or `*` for everyone.

#![cfg_attr(not(feature = "redlock"), allow(dead_code))]

#[cfg_attr(not(feature = "redlock"), allow(unused_imports))]
pub use crate::backends::redis::READERS_VALUE;

/// The keys of one lock on every master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    pub lock: String,
    pub fence: String,
    pub readers: String,
    pub writers: String,
    pub q: String,
    pub qx: String,
    /// Not a key: the pub/sub channel of releases.
    pub channel: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, name: &str) -> Keys {
        let lock = crate::backends::redis::lock_key(prefix, name);
        let tag = crate::backends::redis::side_base_of(prefix, name);
        Keys {
            fence: format!("{tag}:fence"),
            readers: format!("{tag}:readers"),
            writers: format!("{tag}:writers"),
            q: format!("{tag}:q"),
            qx: format!("{tag}:qx"),
            channel: format!("{tag}:released"),
            lock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: changing any of these breaks exclusion with older versions and peer tools.
    #[test]
    fn golden_keys() {
        let k = Keys::new("", "deploy");
        assert_eq!(
            [k.lock.as_str(), &k.fence, &k.readers, &k.writers, &k.q, &k.qx, &k.channel],
            [
                "deploy",
                "{deploy}:fence",
                "{deploy}:readers",
                "{deploy}:writers",
                "{deploy}:q",
                "{deploy}:qx",
                "{deploy}:released"
            ]
        );
        // With a prefix, the side keys and the channel start with it (an ACL user `~redlock:*`,
        // `&redlock:*` reaches them), as the redis backend's do.
        let k = Keys::new("redlock:", "jobs/x ü");
        assert_eq!((k.lock.as_str(), k.fence.as_str()), ("redlock:jobs/x ü", "redlock:{redlock:jobs/x ü}:fence"));
        assert_eq!(k.channel, "redlock:{redlock:jobs/x ü}:released");
        assert_eq!(READERS_VALUE, "interlock:readers");
        // A name with its own hash tag: the side keys follow it, as the redis backend's do.
        let k = Keys::new("", "a{b}c");
        assert_eq!((k.lock.as_str(), k.fence.as_str()), ("a{b}c", "{b}5:a{b}c:fence"));
    }
}
