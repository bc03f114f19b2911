//! Lock names to Redis keys (pinned by the golden tests below: a silent change would break
//! exclusion between two versions running side by side, and interop with peer tools).
//!
//! The lock key is `prefix + name`, verbatim: the key a redis-py `Lock(name)` (or any `SET name
//! token NX PX` peer) uses, so the two exclude each other. interlock's own side keys start with
//! a base `B` whose hash tag puts them in the lock key's Redis Cluster slot, so that every key of
//! one lock lives in one slot (one node) and each script touches a single slot:
//!
//! - `K` without `}` (the usual case): `B = {K}`, the whole key as the tag (`K` itself has no hash
//!   tag, so it hashes as a whole too).
//! - `K` with a hash tag `T` (Redis's rule: the text between the first `{` and the first `}` after
//!   it, when not empty; `a{b}c` hashes as `b`): `B = {T}LEN:K`, `LEN` the length of `K` in bytes.
//! - `K` with a `}` but no hash tag (`a}b`, `x{}y`): it hashes as a whole, and no tag can hold its
//!   `}`; `B = {S}LEN:K`, `S` the first of the strings `0`..`9`, `a`..`z`, `A`..`Z`, then of two
//!   and three such characters, that hashes to `K`'s slot.
//!
//! The base is unique per key (after its first `}`, `{K}` has a `:`, the others a digit, and
//! `LEN:K` can be read back), so no two locks share a side key.
//!
//! With a key prefix `P` that has no `{`, the side keys start with the prefix too: their base is
//! `P + B` (`app:{app:L}:fence` for prefix `app:` and name `L`), so that an ACL user limited to
//! `~P*` reaches every key of its locks. `P` has no `{`, so the first `{` of the side key is still
//! `B`'s: the same hash tag, the same slot, and the base stays unique (`P` ends where the first
//! `{` is). An empty prefix changes nothing (`{deploy}:fence`); a prefix with a `{` keeps `B`
//! alone, since its `{` could open another hash tag.
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

/// The start of every side key of lock key `key`, in its cluster slot (see the module docs).
pub(crate) fn side_base(key: &str) -> String {
    if !key.contains('}') {
        return format!("{{{key}}}");
    }
    let tag = match hash_tag(key) {
        Some(t) => t,
        None => tag_for_slot(slot(key)),
    };
    format!("{{{tag}}}{}:{key}", key.len())
}

/// The hash tag of `key` by Redis Cluster's rule: the text between the first `{` and the first
/// `}` after it, when that is not empty.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// The Redis Cluster slot of `key` (`CLUSTER KEYSLOT`): CRC16 of its hash tag, or of the whole
/// key without one, modulo 16384.
pub(crate) fn slot(key: &str) -> u16 {
    crc16(hash_tag(key).unwrap_or(key).as_bytes()) % SLOTS
}

const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the one Redis Cluster uses.
pub(crate) fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)])
}

const CRC16_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
};

/// A short tag that hashes to `slot`: the first of `0`..`9`, `a`..`z`, `A`..`Z`, then of the
/// strings of two and three of those characters (in that order), that does. Three characters
/// cover every slot (a test checks it); the table is built once, on first use.
fn tag_for_slot(slot: u16) -> &'static str {
    use std::sync::OnceLock;
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut table = vec![String::new(); usize::from(SLOTS)];
        let mut left = table.len();
        let mut candidates: Vec<Vec<u8>> = vec![Vec::new()];
        while left > 0 {
            let longer: Vec<Vec<u8>> =
                candidates.iter().flat_map(|c| CHARS.iter().map(move |&ch| [c.as_slice(), &[ch]].concat())).collect();
            for c in &longer {
                let entry = &mut table[usize::from(crc16(c) % SLOTS)];
                if entry.is_empty() {
                    *entry = String::from_utf8_lossy(c).into_owned();
                    left -= 1;
                }
            }
            candidates = longer;
        }
        table
    });
    &table[usize::from(slot % SLOTS)]
}

/// The base of every side key of lock `name` under `prefix` (see the module docs): the prefix
/// (when it has no `{`) and the key's [`side_base`].
pub(crate) fn side_base_of(prefix: &str, name: &str) -> String {
    let base = side_base(&lock_key(prefix, name));
    if prefix.contains('{') { base } else { format!("{prefix}{base}") }
}

impl Keys {
    pub(crate) fn new(prefix: &str, name: &str, kind: LockKind) -> Keys {
        let t = side_base_of(prefix, name);
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
        // With a prefix, the side keys start with it (an ACL user `~lock:*` reaches them).
        let k = Keys::new("lock:", "jobs/clean up ü", LockKind::Write);
        assert_eq!(k.script_keys[0], "lock:jobs/clean up ü");
        assert_eq!(k.script_keys[1], "lock:{lock:jobs/clean up ü}:fence");
        let s = Keys::new("p:", "x", LockKind::Semaphore { permits: 3 });
        assert_eq!(
            s.script_keys,
            ["p:{p:x}:sem", "p:{p:x}:sem:fence", "p:{p:x}:sem:permits", "p:{p:x}:sem:q", "p:{p:x}:sem:qx"]
        );
        assert_eq!(s.wake_prefix, "p:{p:x}:sem:wake:");
        // A prefix with a `{` keeps the base alone (its `{` would open another hash tag).
        assert_eq!(Keys::new("{t}:", "x", LockKind::Mutex).script_keys[1], "{t}5:{t}:x:fence");
        assert_eq!(
            Keys::status("", "n"),
            ["n", "{n}:readers", "{n}:q", "{n}:qx", "{n}:sem", "{n}:sem:permits", "{n}:sem:q", "{n}:sem:qx"]
        );
        assert_eq!(READERS_VALUE, "interlock:readers");
    }

    /// Golden values for keys with braces: the side keys follow the lock key's hash tag.
    #[test]
    fn golden_keys_with_braces() {
        let k = Keys::new("", "a{b}c", LockKind::Mutex);
        assert_eq!(k.script_keys, ["a{b}c", "{b}5:a{b}c:fence", "{b}5:a{b}c:readers", "{b}5:a{b}c:q", "{b}5:a{b}c:qx"]);
        assert_eq!(k.wake_prefix, "{b}5:a{b}c:wake:");
        let s = Keys::new("lock:", "{user1}", LockKind::Semaphore { permits: 2 });
        assert_eq!(s.script_keys[0], "lock:{user1}12:lock:{user1}:sem");
        assert_eq!(s.wake_prefix, "lock:{user1}12:lock:{user1}:sem:wake:");
        // A `{` without a `}` after it: no tag, the whole key is the tag (as before).
        assert_eq!(side_base("a{b"), "{a{b}");
        assert_eq!(side_base("{{a}}"), "{{a}5:{{a}}");
        // A `}` without a tag: a short tag of the key's slot.
        assert_eq!(side_base("a}b"), "{4w2}3:a}b");
        assert_eq!(side_base("x{}y"), "{3u}4:x{}y");
        assert_eq!(side_base("}"), "{Du}1:}");
    }

    #[test]
    fn crc16_and_slots_as_redis_computes_them() {
        assert_eq!(crc16(b"123456789"), 0x31c3);
        // `CLUSTER KEYSLOT` on Redis 7.0.15.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(
            (hash_tag("a{b}c"), hash_tag("a{}b"), hash_tag("a}b{"), hash_tag("{x")),
            (Some("b"), None, None, None)
        );
    }

    /// Every side key of a lock hashes to the lock key's slot, and no two locks share one.
    #[test]
    fn side_keys_share_the_lock_keys_slot_and_are_unique() {
        let names = [
            "deploy",
            "a{b}c",
            "{b}",
            "b",
            "a{b}c:sem",
            "x{}y",
            "a}b",
            "}",
            "{",
            "{}",
            "}{",
            "{{a}}",
            "a{b",
            "ü{ß}",
            "{x}:fence",
            "x",
            "{x}5:a{x}c",
            "a{x}c",
            "{b}5:a{b}c",
            "",
            "{}}",
            "}}",
        ];
        let mut seen = std::collections::HashMap::new();
        for prefix in ["", "p:", "{t}:", "q}", "a{", "}{x"] {
            for name in names {
                let key = lock_key(prefix, name);
                if key.is_empty() {
                    continue;
                }
                let mut all: Vec<String> = Vec::new();
                for kind in [LockKind::Mutex, LockKind::Semaphore { permits: 1 }] {
                    let k = Keys::new(prefix, name, kind);
                    all.extend(k.script_keys.iter().cloned());
                    all.push(format!("{}w:00:1", k.wake_prefix));
                }
                for k in &all {
                    assert_eq!(slot(k), slot(&key), "{k:?} is not in the slot of {key:?}");
                    if *k != key {
                        let other = seen.insert(k.clone(), key.clone());
                        assert!(other.is_none() || other.as_ref() == Some(&key), "{k:?}: {key:?} and {other:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn three_characters_tag_every_slot() {
        for s in 0..SLOTS {
            let t = tag_for_slot(s);
            assert!(!t.is_empty() && t.len() <= 3 && !t.contains(['{', '}']), "{s}: {t:?}");
            assert_eq!(slot(t), s);
        }
    }
}
