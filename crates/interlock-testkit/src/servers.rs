//! Private server processes for tests and benches: started on free loopback ports in temp dirs,
//! stopped by PID (never by name). Backends that need a server add a `start_*` function here,
//! following the tested snippets in `shared/servers/`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test that starts a
/// server on it right away).
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// The absolute path of `program` on `$PATH`, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A server process we started, with its data directory; killed (by PID) and reaped on drop.
#[derive(Debug)]
pub struct ServerProcess {
    /// What it is, for messages.
    pub name: String,
    /// The port it listens on.
    pub port: u16,
    child: Child,
    /// Its data directory, removed on drop.
    pub dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Wraps a started child.
    pub fn new(name: impl Into<String>, port: u16, child: Child, dir: tempfile::TempDir) -> Self {
        ServerProcess { name: name.into(), port, child, dir }
    }

    /// Its process id, for fault injection (SIGSTOP, SIGKILL).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
