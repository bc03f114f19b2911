//! Finding a server's programs and files before it starts: its program and tools in the
//! directories a [`super::Spec`] names (PostgreSQL's are in `/usr/lib/postgresql/15/bin`, off
//! `$PATH`), then on `$PATH`; the files it needs (`java` is no ZooKeeper without
//! `zookeeper.jar`). What is missing is a [`super::StartError::Missing`]: skipped loudly, or a
//! failure with `INTERLOCK_TEST_REQUIRE=1`, before anything is started.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// The directories that `pattern` names: a path whose components may be `*` (any entry), the
/// newest version first (`/usr/lib/postgresql/*/bin`: `.../16/bin` before `.../15/bin` before
/// `.../9.6/bin`). Only directories that exist; none for a pattern that matches nothing.
///
/// # Examples
///
/// ```
/// let dirs = interlock_testkit::servers::dirs_matching("/nonexistent/*/bin");
/// assert!(dirs.is_empty());
/// assert_eq!(interlock_testkit::servers::dirs_matching("/"), [std::path::PathBuf::from("/")]);
/// ```
pub fn dirs_matching(pattern: &str) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from(if pattern.starts_with('/') { "/" } else { "." })];
    for part in pattern.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let mut next = Vec::new();
        for dir in &found {
            if part == "*" {
                let Ok(entries) = std::fs::read_dir(dir) else { continue };
                let mut names: Vec<String> =
                    entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
                names.sort_by(|a, b| newest_first(a, b));
                next.extend(names.into_iter().map(|n| dir.join(n)));
            } else {
                next.push(dir.join(part));
            }
        }
        found = next;
    }
    found.retain(|d| d.is_dir());
    found
}

/// Orders names as versions, the highest first: runs of digits compare as numbers.
fn newest_first(a: &str, b: &str) -> Ordering {
    version_key(b).cmp(&version_key(a)).then_with(|| b.cmp(a))
}

/// `15.2-x` as `[Num(15), Text("."), Num(2), Text("-x")]`.
fn version_key(s: &str) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let digits = c.is_ascii_digit();
        let end = rest.find(|ch: char| ch.is_ascii_digit() != digits).unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(end);
        out.push(if digits { Chunk::Num(chunk.parse().unwrap_or(u64::MAX)) } else { Chunk::Text(chunk.to_owned()) });
        rest = tail;
    }
    out
}

/// A run of a name; numbers rank above text, so versions come before other names.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Chunk {
    Text(String),
    Num(u64),
}

/// The absolute path of the program `name`: itself when it names a path (it must be an
/// executable file), else the first executable `name` in `dirs`, then on `$PATH`.
pub fn find_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return super::is_executable(&p).then_some(p);
    }
    dirs.iter().map(|d| d.join(name)).find(|p| super::is_executable(p)).or_else(|| super::which(name))
}

/// How a missing program is named in messages: `initdb (looked in /usr/lib/postgresql/*/bin and
/// $PATH)`, or just `redis-server` when only `$PATH` was searched.
pub(crate) fn describe_missing(name: &str, patterns: &[String]) -> String {
    if name.contains('/') || patterns.is_empty() {
        name.to_owned()
    } else {
        format!("{name} (looked in {} and $PATH)", patterns.join(", "))
    }
}

/// The first of `files` that does not exist.
pub(crate) fn first_missing_file(files: &[PathBuf]) -> Option<&Path> {
    files.iter().map(PathBuf::as_path).find(|f| !f.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_newest_first() {
        let mut v = vec!["9.6", "15", "16", "10", "main", "15.2"];
        v.sort_by(|a, b| newest_first(a, b));
        assert_eq!(v, ["16", "15.2", "15", "10", "9.6", "main"]);
    }

    #[test]
    fn patterns_expand_to_existing_directories() {
        let tmp = tempfile::tempdir().unwrap();
        for v in ["9.6", "15", "16"] {
            std::fs::create_dir_all(tmp.path().join(v).join("bin")).unwrap();
        }
        std::fs::create_dir_all(tmp.path().join("17")).unwrap(); // no bin: not a match
        std::fs::write(tmp.path().join("18"), "a file").unwrap();
        let found = dirs_matching(&format!("{}/*/bin", tmp.path().display()));
        let names: Vec<_> = found.iter().map(|p| p.strip_prefix(tmp.path()).unwrap().to_owned()).collect();
        assert_eq!(names, [PathBuf::from("16/bin"), "15/bin".into(), "9.6/bin".into()]);
        assert!(dirs_matching(&format!("{}/*/nothing", tmp.path().display())).is_empty());
        assert_eq!(dirs_matching(&tmp.path().display().to_string()), [tmp.path().to_owned()]);
    }

    #[test]
    fn missing_programs_are_described_with_where_they_were_looked_for() {
        assert_eq!(describe_missing("redis-server", &[]), "redis-server");
        assert_eq!(
            describe_missing("initdb", &["/usr/lib/postgresql/*/bin".into()]),
            "initdb (looked in /usr/lib/postgresql/*/bin and $PATH)"
        );
        assert_eq!(describe_missing("/opt/x/bin/y", &["/z".into()]), "/opt/x/bin/y");
    }
}
