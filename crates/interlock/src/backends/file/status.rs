//! `interlock status` for files: who holds a lock file, read from `/proc/locks` without touching
//! the lock (probing with a try-lock could make someone else's `flock -n` fail).

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::mapping;
use super::raw::{Access, open_in_dir};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::raw::{HeldMode, LockStatus};

/// One `FLOCK` line of `/proc/locks`.
#[derive(Debug, PartialEq, Eq)]
struct FlockEntry {
    blocked: bool,
    write: bool,
    pid: u32,
    major: u32,
    minor: u32,
    ino: u64,
}

/// Parses `/proc/locks` text, keeping `FLOCK` entries. Format per line:
/// `ID: [->] FLOCK ADVISORY WRITE|READ PID MAJ:MIN:INODE START END`, major and minor in hex.
fn parse_proc_locks(text: &str) -> Vec<FlockEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1).peekable();
            let blocked = f.peek() == Some(&"->");
            if blocked {
                f.next();
            }
            if f.next()? != "FLOCK" {
                return None;
            }
            f.next()?; // ADVISORY
            let write = match f.next()? {
                "WRITE" => true,
                "READ" => false,
                _ => return None,
            };
            let pid = f.next()?.parse().ok()?;
            let mut dev = f.next()?.split(':');
            let major = u32::from_str_radix(dev.next()?, 16).ok()?;
            let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
            let ino = dev.next()?.parse().ok()?;
            Some(FlockEntry { blocked, write, pid, major, minor, ino })
        })
        .collect()
}

fn holders_of<'a>(entries: &'a [FlockEntry], path: &Path) -> Option<Vec<&'a FlockEntry>> {
    let st = rustix::fs::lstat(path).ok()?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    Some(entries.iter().filter(|e| e.ino == st.st_ino && e.major == major && e.minor == minor).collect())
}

/// `/proc/locks`, as two reads in a row agree (a few tries, then the last read). The kernel makes
/// the file up as it is read, a page at a time, so a read during other processes' lock traffic can
/// show one lock twice or miss one.
fn read_proc_locks() -> Result<String> {
    let read = || std::fs::read_to_string("/proc/locks").map_err(|e| Error::io("cannot read /proc/locks", e));
    let mut text = read()?;
    for _ in 0..5 {
        let again = read()?;
        if again == text {
            break;
        }
        text = again;
    }
    Ok(text)
}

pub(crate) fn status(dir: &Path, name: &LockName) -> Result<LockStatus> {
    let entries = parse_proc_locks(&read_proc_locks()?);
    let base = mapping::file_name(name.as_str());
    let path = dir.join(&base);
    let mut status = LockStatus::free();
    status.location = Some(path.display().to_string());
    if let Some(found) = holders_of(&entries, &path) {
        let held: Vec<_> = found.iter().filter(|e| !e.blocked).collect();
        status.waiters = Some(found.len() - held.len());
        status.held = match held.first() {
            None => None,
            Some(e) if e.write => Some(HeldMode::Exclusive),
            Some(_) => Some(HeldMode::Shared(held.len())),
        };
        status.holders =
            held.iter().map(|e| format!("pid {} ({})", e.pid, if e.write { "exclusive" } else { "shared" })).collect();
    }
    if status.held.is_some() {
        return Ok(status);
    }
    // A semaphore of that name?
    let sem = mapping::semaphore_name(&base);
    let meta_path = dir.join(&sem);
    if std::fs::symlink_metadata(&meta_path).is_err() {
        return Ok(status);
    }
    let permits = open_in_dir(&meta_path, Access::Read).ok().and_then(|(f, _)| {
        let mut buf = [0u8; 32];
        let n = f.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse::<u32>().ok()
    });
    let Some(permits) = permits else { return Ok(status) };
    let mut holders = Vec::new();
    for i in 0..permits {
        if let Some(found) = holders_of(&entries, &dir.join(mapping::permit_name(&sem, i))) {
            holders.extend(found.into_iter().filter(|e| !e.blocked).map(|e| format!("pid {} (permit {i})", e.pid)));
        }
    }
    status.location = Some(meta_path.display().to_string());
    status.permits = Some(permits);
    if !holders.is_empty() {
        status.held = Some(HeldMode::Shared(holders.len()));
    }
    status.holders = holders;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 99 fd:01:5678 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 77 08:01:1 0 EOF\n\
                    3: FLOCK  ADVISORY  READ 42 00:1a:9 0 EOF\n";
        let e = parse_proc_locks(text);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0], FlockEntry { blocked: false, write: true, pid: 1234, major: 0xfd, minor: 1, ino: 5678 });
        assert!(e[1].blocked);
        assert_eq!((e[2].write, e[2].pid, e[2].minor), (false, 42, 0x1a));
    }
}
