//! The `file://` harness: a fresh temporary lock directory per harness, and the `interlock`
//! binary for the cross-process cases. No server, and nothing to break: the kernel holds a
//! `flock` for as long as its holder's file descriptor lives.

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

    async fn expire(&self, _name: &str) -> bool {
        false
    }

    /// No server: the kernel holds the locks, and nothing short of the holder's death (or an
    /// unlock by it) takes them away.
    async fn restart_server(&self) -> bool {
        false
    }

    /// No connections: a `flock` lives in its holder's open file description.
    async fn kill_connections(&self, _name: &str) -> bool {
        false
    }

    /// Not needed: the paused-holder case stops an `interlock hold` process, which on `file`
    /// keeps its lock however long it is stopped (the case is not applicable: no leases).
    async fn pause_holders(&self, _name: &str) -> bool {
        false
    }

    async fn resume_holders(&self, _name: &str) -> bool {
        false
    }
}
