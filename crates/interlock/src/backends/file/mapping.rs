//! Lock name → file name, the file backend's key space. Pinned by golden values below: changing
//! any of them breaks exclusion between two interlock versions running side by side.
//!
//! - A *safe* name (`[A-Za-z0-9_][A-Za-z0-9_.-]*`, at most 200 bytes) is used verbatim, so
//!   `flock /DIR/NAME` and `interlock run NAME` meet on the same file.
//! - Any other name is percent-encoded: every byte outside `[A-Za-z0-9_.-]`, and a leading `.` or
//!   `-`, becomes `%XX` (uppercase hex). Encoded names always contain `%`; safe names never do.
//! - A mapped name longer than 200 bytes becomes its first 120 bytes (never splitting an escape),
//!   `~`, and the lowercase hex SHA-256 of the original name (185 bytes at most). Only hashed names
//!   contain `~`.
//!
//! No mapped name contains `/`, is `.` or `..`, or starts with `.`, so none can leave the lock
//! directory or collide with the backend's own files, which all start with `.` or contain `#`:
//! `.NAME.fence` (fencing counter), `NAME#sem` and `NAME#sem.I` (semaphore metadata and permits).

use sha2::{Digest, Sha256};

/// Longest mapped name kept as is.
pub(crate) const MAX_MAPPED: usize = 200;
/// How much of an over-long mapped name is kept before the hash.
const HASH_PREFIX: usize = 120;

/// The file name (inside the lock directory) for lock `name`.
pub(crate) fn file_name(name: &str) -> String {
    let mapped = if is_safe(name) { name.to_owned() } else { encode(name) };
    if mapped.len() <= MAX_MAPPED {
        return mapped;
    }
    let mut cut = HASH_PREFIX;
    // Do not split a `%XX` escape: back up to its `%`.
    if let Some(pct) = mapped[cut.saturating_sub(2)..cut].rfind('%') {
        cut = cut - 2 + pct;
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}~{hex}", &mapped[..cut])
}

/// The file holding the fencing counter of a lock or semaphore file.
pub(crate) fn fence_name(lock_file: &str) -> String {
    format!(".{lock_file}.fence")
}

/// The semaphore metadata file (its permits count), also the base of its permit files.
pub(crate) fn semaphore_name(lock_file: &str) -> String {
    format!("{lock_file}#sem")
}

/// Permit file `i` of a semaphore.
pub(crate) fn permit_name(semaphore_file: &str, i: u32) -> String {
    format!("{semaphore_file}.{i}")
}

fn safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn is_safe(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() <= MAX_MAPPED
        && b.first().is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
        && b.iter().all(|&c| safe_byte(c))
}

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 3);
    for (i, &b) in name.as_bytes().iter().enumerate() {
        if safe_byte(b) && !(i == 0 && matches!(b, b'.' | b'-')) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: these must never change.
    #[test]
    fn golden_values() {
        let cases: &[(&str, &str)] = &[
            ("simple", "simple"),
            ("job_1.lock", "job_1.lock"),
            ("CamelCase-2", "CamelCase-2"),
            ("a b", "a%20b"),
            ("jobs/cleanup", "jobs%2Fcleanup"),
            ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
            ("..", "%2E."),
            (".", "%2E"),
            (".hidden", "%2Ehidden"),
            ("-rf", "%2Drf"),
            ("50%", "50%25"),
            ("x#sem", "x%23sem"),
            ("a~b", "a%7Eb"),
            ("ünï", "%C3%BCn%C3%AF"),
            ("🔒", "%F0%9F%94%92"),
        ];
        for (name, want) in cases {
            assert_eq!(file_name(name), *want, "{name:?}");
        }
        assert_eq!(file_name(&"a".repeat(200)), "a".repeat(200));
        assert_eq!(
            file_name(&"a".repeat(201)),
            format!("{}~{}", "a".repeat(120), "a92efd82109373e58f9a2056dee01e807e216ce6075f7051207c0a9f7d666e50")
        );
        // 119 safe bytes then escapes: the cut backs up to the start of the escape at byte 119.
        let n = format!("{}{}", "b".repeat(119), "/".repeat(40));
        let f = file_name(&n);
        assert!(f.starts_with(&format!("{}~", "b".repeat(119))), "{f}");
    }

    #[test]
    fn never_escapes_or_collides_with_own_files() {
        for name in ["/", "/etc/passwd", "..", "a/../../b", "\u{7f}", "x\ny", &"/".repeat(1024), &"é".repeat(512)] {
            let f = file_name(name);
            assert!(!f.contains('/') && f != "." && f != ".." && !f.starts_with('.'), "{name:?} -> {f}");
            assert!(!f.contains('#'), "{f}");
            assert!(f.len() <= MAX_MAPPED, "{} bytes", f.len());
            assert!(fence_name(&permit_name(&semaphore_name(&f), 4095)).len() < 255);
        }
    }

    #[test]
    fn distinct_names_stay_distinct() {
        let names = ["a", "A", "a b", "a%20b", "a_b", ".a", "%2Ea", "-a", "%2Da"];
        let mut files: Vec<String> = names.iter().map(|n| file_name(n)).collect();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), names.len());
    }
}
