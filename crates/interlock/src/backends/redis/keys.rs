//! Lock names to Redis keys (pinned by the golden tests below: a silent change would break
//! exclusion between two versions running side by side, and interop with peer tools).
//!
//! The lock key is `prefix + name`, verbatim: the key a redis-py `Lock(name)` (or any `SET name
//! token NX PX` peer) uses, so the two exclude each other. interlock's own side keys live under
//! the hash tag `{prefix + name}`, so every key of one lock hashes to the lock key's cluster slot
//! (when the lock key itself has no `{...}` in it):
//!
//! | key | type | what |
//! |---|---|---|
//! | `K` | string | the lock: a holder's token (mutex, writer, peer tools), or [`READERS_VALUE`] while readers hold it |
//! | `{K}:fence` | integer | the fencing counter of the mutex / read-write lock (kept for good) |
//! | `{K}:readers` | zset | reader token → expiry (server ms) |
//! | `{K}:q`, `{K}:qx` | zset | waiters → arrival (server µs), waiters → registration expiry (server ms) |
//! | `{K}:wake:<waiter>` | list | one waiter's wake-up list (BLPOP) |
//! | `{K}:sem`, `{K}:sem:permits`, `{K}:sem:fence` | zset, string, integer | a semaphore's permit holders → expiry, its permits count, its fencing counter |
//! | `{K}:sem:q`, `{K}:sem:qx`, `{K}:sem:wake:<waiter>` | | the semaphore's waiters, as above |

// Built without the `redis` feature too (for `lock_key`, `READERS_VALUE` and the golden tests).
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use crate::raw::LockKind;

/// The value of the lock key while readers hold it (a peer tool's `SET NX` fails on it).
pub const READERS_VALUE: &str = "interlock:readers";

/// The keys of one lock, for one primitive: the read-write lock's (mutex, reader, writer) or the
/// semaphore's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    /// `KEYS` of the acquire, release and renew scripts, in order (see the scripts).
    pub script_keys: [String; 5],
    /// The prefix of the waiters' wake-up lists (`... :wake:`).
    pub wake_prefix: String,
}

/// The lock key of `name`: `prefix + name`.
pub(crate) fn lock_key(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// `{prefix + name}`: the hash tag of every side key.
fn tag(prefix: &str, name: &str) -> String {
    format!("{{{}}}", lock_key(prefix, name))
}

impl Keys {
    pub(crate) fn new(prefix: &str, name: &str, kind: LockKind) -> Keys {
        let t = tag(prefix, name);
        match kind {
            LockKind::Semaphore { .. } => Keys {
                script_keys: [
                    format!("{t}:sem"),
                    format!("{t}:sem:fence"),
                    format!("{t}:sem:permits"),
                    format!("{t}:sem:q"),
                    format!("{t}:sem:qx"),
                ],
                wake_prefix: format!("{t}:sem:wake:"),
            },
            _ => Keys {
                script_keys: [
                    lock_key(prefix, name),
                    format!("{t}:fence"),
                    format!("{t}:readers"),
                    format!("{t}:q"),
                    format!("{t}:qx"),
                ],
                wake_prefix: format!("{t}:wake:"),
            },
        }
    }

    /// The keys of the status script: the read-write lock's key, readers, waiters' expiries,
    /// and the semaphore's holders, permits count and waiters' expiries.
    pub(crate) fn status(prefix: &str, name: &str) -> [String; 8] {
        let rw = Keys::new(prefix, name, LockKind::Mutex).script_keys;
        let sem = Keys::new(prefix, name, LockKind::Semaphore { permits: 1 }).script_keys;
        let [key, _, readers, q, qx] = rw;
        let [holders, _, permits, sq, sqx] = sem;
        [key, readers, q, qx, holders, permits, sq, sqx]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: changing any of these breaks exclusion with older versions and peer tools.
    #[test]
    fn golden_keys() {
        let k = Keys::new("", "deploy", LockKind::Mutex);
        assert_eq!(k.script_keys, ["deploy", "{deploy}:fence", "{deploy}:readers", "{deploy}:q", "{deploy}:qx"]);
        assert_eq!(k.wake_prefix, "{deploy}:wake:");
        assert_eq!(Keys::new("", "deploy", LockKind::Read), k);
        let k = Keys::new("lock:", "jobs/clean up ü", LockKind::Write);
        assert_eq!(k.script_keys[0], "lock:jobs/clean up ü");
        assert_eq!(k.script_keys[1], "{lock:jobs/clean up ü}:fence");
        let s = Keys::new("p:", "x", LockKind::Semaphore { permits: 3 });
        assert_eq!(s.script_keys, ["{p:x}:sem", "{p:x}:sem:fence", "{p:x}:sem:permits", "{p:x}:sem:q", "{p:x}:sem:qx"]);
        assert_eq!(s.wake_prefix, "{p:x}:sem:wake:");
        assert_eq!(
            Keys::status("", "n"),
            ["n", "{n}:readers", "{n}:q", "{n}:qx", "{n}:sem", "{n}:sem:permits", "{n}:sem:q", "{n}:sem:qx"]
        );
        assert_eq!(READERS_VALUE, "interlock:readers");
    }
}
