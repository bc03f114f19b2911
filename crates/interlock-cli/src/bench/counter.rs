//! The contended workload's shared counter: a decimal number in a plain file, read and written
//! back plus one under the lock. If the lock ever lets two holders in, increments get lost and the
//! final value falls short of the acquisitions counted.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::exit::{self, Failure};

/// Width of the record: the value is rewritten in place at a fixed width, so that a reader racing
/// a writer (with `--no-lock`) never sees an empty file.
const WIDTH: usize = 20;

/// An open counter file.
#[derive(Debug)]
pub struct Counter {
    file: File,
    lenient: bool,
}

impl Counter {
    /// Creates (or empties) the counter at `path` with the value 0.
    ///
    /// # Errors
    ///
    /// 74 when the file cannot be written.
    pub fn create(path: &Path) -> Result<(), Failure> {
        std::fs::write(path, format!("{:>WIDTH$}\n", 0))
            .map_err(|e| Failure::io(format!("cannot create counter {}", path.display()), e))
    }

    /// Opens the counter at `path`. `lenient` (without the lock) reads a torn value as 0 instead of
    /// failing.
    ///
    /// # Errors
    ///
    /// 74 when the file cannot be opened.
    pub fn open(path: &Path, lenient: bool) -> Result<Counter, Failure> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Failure::io(format!("cannot open counter {}", path.display()), e))?;
        Ok(Counter { file, lenient })
    }

    /// Reads the value.
    ///
    /// # Errors
    ///
    /// 74 when the file cannot be read or (with the lock) does not hold a number.
    pub fn read(&self) -> Result<u64, Failure> {
        let mut buf = [0u8; WIDTH + 1];
        let n = self.file.read_at(&mut buf, 0).map_err(|e| Failure::io("cannot read the counter", e))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        match text.trim().parse() {
            Ok(v) => Ok(v),
            Err(_) if self.lenient => Ok(0),
            Err(_) => Err(Failure::new(exit::IO_ERROR, format!("the counter holds {text:?}, not a number"))),
        }
    }

    /// Writes `value` in place.
    ///
    /// # Errors
    ///
    /// 74 when the file cannot be written.
    pub fn write(&self, value: u64) -> Result<(), Failure> {
        self.file
            .write_all_at(format!("{value:>WIDTH$}\n").as_bytes(), 0)
            .map_err(|e| Failure::io("cannot write the counter", e))
    }

    /// Reads the final value from `path`.
    ///
    /// # Errors
    ///
    /// As [`Counter::open`] and [`Counter::read`].
    pub fn value(path: &Path) -> Result<u64, Failure> {
        Counter::open(path, false)?.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c");
        Counter::create(&p).unwrap();
        let c = Counter::open(&p, false).unwrap();
        assert_eq!(c.read().unwrap(), 0);
        c.write(41).unwrap();
        c.write(c.read().unwrap() + 1).unwrap();
        assert_eq!(Counter::value(&p).unwrap(), 42);
        std::fs::write(&p, "junk").unwrap();
        assert!(c.read().is_err());
        assert_eq!(Counter::open(&p, true).unwrap().read().unwrap(), 0);
    }
}
