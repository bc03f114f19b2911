//! The `file://` harness: a fresh temporary lock directory per harness, and the `interlock`
//! binary for the cross-process cases. No server, and nothing to break: the kernel holds a
//! `flock` for as long as its holder's file descriptor lives, so the backend declares that it
//! cannot lose a lock, and the suite never calls a fault hook (the trait's defaults stay).

use std::path::{Path, PathBuf};

use crate::harness::Harness;

/// `file://` in a fresh temporary directory.
#[derive(Debug)]
pub struct FileHarness {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl FileHarness {
    /// A harness with its own lock directory, driving `bin` (the `interlock` binary) for
    /// cross-process cases.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        FileHarness { dir: tempfile::tempdir().expect("tempdir"), bin: bin.into() }
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Harness for FileHarness {
    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn bin(&self) -> Option<&Path> {
        Some(&self.bin)
    }
}
