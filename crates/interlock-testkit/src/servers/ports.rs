//! Loopback ports that no other test can be handed at the same time.
//!
//! A port is leased, not just probed: its lease is an exclusive `flock` on
//! `/tmp/interlock-test-ports/PORT.lock`, held as long as the [`PortLease`] lives (across restarts
//! of the server on it). Every test binary of every checkout on the machine takes ports through
//! these locks, so two of them can never be handed the same port, whatever they run in parallel;
//! a process that dies, even by SIGKILL, drops its locks with it. A port whose lock is free must
//! also bind on 127.0.0.1 right now, which skips ports that other programs listen on.
//!
//! Ports come from 20000 up to the kernel's ephemeral range (`ip_local_port_range`, usually from
//! 32768): no standard service listens there, and the kernel never picks one of them as the local
//! port of an outgoing connection, which could otherwise take a port between the probe and the
//! server's `bind`. What can still happen, a program outside these rules binding the port in that
//! window, makes the server exit with "address already in use", and [`super::Server::start`]
//! then starts it again on another port.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{FlockOperation, flock};

/// The lowest port handed out.
const LOW: u16 = 20000;
/// Never above this, whatever the ephemeral range says.
const HIGH: u16 = 32768;

/// A loopback port reserved for this process until the lease is dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    _lock: File,
}

impl PortLease {
    /// Leases a free port from the range (see the module docs).
    ///
    /// # Errors
    ///
    /// When the lease directory cannot be used (`/tmp` not writable), or every port of the
    /// range is leased or bound.
    pub fn lease() -> io::Result<PortLease> {
        static CURSOR: AtomicUsize = AtomicUsize::new(usize::MAX);
        // The lock files' directory first: unusable, no port can be leased (say why, at once).
        lock_dir()?;
        let (low, high) = range();
        let span = usize::from(high - low);
        // Each process starts at its own place in the range, then walks on from there.
        let seed = (std::process::id() as usize).wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as usize);
        let _ = CURSOR.compare_exchange(usize::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
        for _ in 0..span {
            let i = CURSOR.fetch_add(1, Ordering::Relaxed) % span;
            let Some(port) = u16::try_from(i).ok().and_then(|i| low.checked_add(i)) else { continue };
            if let Some(lease) = PortLease::try_reserve(port) {
                return Ok(lease);
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, format!("no free loopback port in {low}..{high}")))
    }

    /// [`PortLease::lease`] for tests, which want a port or a failure.
    ///
    /// # Panics
    ///
    /// When no port can be leased.
    pub fn reserve() -> PortLease {
        PortLease::lease().unwrap_or_else(|e| panic!("cannot lease a loopback port: {e}"))
    }

    /// Leases `port` if no other lease holds it and it binds on 127.0.0.1 now.
    pub fn try_reserve(port: u16) -> Option<PortLease> {
        let lock = open_lock(port).ok()?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive).ok()?;
        // std's bind sets SO_REUSEADDR, as servers do: a port in TIME_WAIT is usable, a listener is not.
        drop(TcpListener::bind(("127.0.0.1", port)).ok()?);
        Some(PortLease { port, _lock: lock })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// `LOW..min(HIGH, start of the ephemeral range)`.
fn range() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(HIGH);
    let high = ephemeral.min(HIGH);
    if high > LOW + 1000 { (LOW, high) } else { (LOW, HIGH) }
}

/// The lock file of `port`, created when missing (readable by all: `flock` needs no write access).
fn open_lock(port: u16) -> io::Result<File> {
    let path = lock_dir()?.join(format!("{port}.lock"));
    match OpenOptions::new().append(true).create(true).mode(0o666).open(&path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(&path),
        other => other,
    }
}

/// `/tmp/interlock-test-ports` (mode 1777, shared by every user), or a per-user one when another
/// user made the shared one unusable.
fn lock_dir() -> io::Result<PathBuf> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let context = |dir: &std::path::Path, e: io::Error| {
        io::Error::new(e.kind(), format!("cannot use {} for the port leases: {e}", dir.display()))
    };
    let shared = PathBuf::from("/tmp/interlock-test-ports");
    let dir = match make_dir(&shared) {
        Ok(()) => shared,
        Err(_) => {
            let own = PathBuf::from(format!("/tmp/interlock-test-ports-{}", rustix::process::geteuid().as_raw()));
            make_dir(&own).map_err(|e| context(&own, e))?;
            own
        }
    };
    Ok(DIR.get_or_init(|| dir).clone())
}

fn make_dir(dir: &std::path::Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // Usable means we can create our lock files in it.
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).map_err(io::Error::from)
}
