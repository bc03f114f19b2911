//! Private server processes for tests and benches: real servers (never mocks) started on leased
//! loopback ports in directories of their own, stopped by PID (never by name), broken on purpose
//! by fault hooks, and never left running after the test process, however it ends.
//!
//! - [`Spec`] says how to run one kind of server (program, arguments, readiness probe, stop
//!   signal, user, its ports) and what it needs installed (program and tools, searched in
//!   version directories before `$PATH`, files such as `zookeeper.jar`: checked before anything
//!   starts); [`Server`] is one running instance, [`Group`] several that know each other's
//!   ports. A backend adds a module here with its `Spec` and helpers, as [`redis`] does.
//! - Ports: [`PortLease`] (a `flock`ed lock file per port, shared by every test process on the
//!   machine, plus a bind probe; a start whose port was taken anyway is retried elsewhere, one
//!   that needed a port its Spec does not lease fails at once, naming it, and so does one that
//!   listens on such a port).
//! - Lifetime: every server gets SIGKILL as its parent-death signal from a spawner thread that
//!   lives as long as the process, and a reaper process removes what is left when the process
//!   is gone, even after `kill -9` (see `spawn.rs`).
//!
//! See `docs/testing.md`, "Servers".

mod access;
mod listeners;
mod ports;
mod programs;
pub mod redis;
pub mod redis_cluster;
pub mod redis_tls;
pub mod resp;
mod server;
mod spawn;

use std::path::{Path, PathBuf};

pub use ports::PortLease;
pub use programs::{dirs_matching, find_program};
pub use rustix::process::Signal;
pub use server::{Ctx, Group, LogOnPanic, Server, Spec, StartError, User};
pub use spawn::{reaper_pid, session_dir};

/// The absolute path of `program` on `$PATH`, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True while process `pid` exists and is not a zombie (a dead process that nobody has reaped
/// yet, which a PID 1 that does not reap can leave behind for good).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold anything.
        Ok(stat) => {
            stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
        }
        Err(_) => false,
    }
}
