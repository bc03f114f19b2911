//! What the server `Spec` needs for ZooKeeper, etcd, MariaDB and PostgreSQL, proven with dummy
//! programs (this test binary acting as a server, and small `sh` scripts): programs and tools
//! found in version directories off `$PATH`, missing programs and files reported before anything
//! starts (skipped, or a failure with `INTERLOCK_TEST_REQUIRE=1`), servers with several leased
//! ports, a clash on a port the Spec does not lease told apart from one on its own ports, a
//! listener on an unleased port refused, and homes that a server run as another user can reach
//! (or a clear error when `$TMPDIR` keeps it out).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interlock_testkit::servers::{Ctx, Group, Server, Signal, Spec, StartError, User, pid_alive};

/// Set for the dummy server (this test binary run as `dummy_server`).
const DUMMY_ENV: &str = "INTERLOCK_TESTKIT_DUMMY_SERVER";
/// Set in the child process of the `$TMPDIR` cases: which one it runs.
const CHILD_ENV: &str = "INTERLOCK_TESTKIT_SPEC_CHILD";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A dummy server: this test binary, run as its `dummy_server` test, listening on 127.0.0.1 on
/// every port `listen(ctx)` gives (each answers `dummy PID`), ready once its client port answers
/// with its pid.
fn dummy(name: &str, listen: impl Fn(&Ctx<'_>) -> Vec<u16> + Send + Sync + 'static) -> Spec {
    let exe = std::env::current_exe().unwrap();
    Spec::new(name, exe.to_str().unwrap())
        .env(DUMMY_ENV, "1")
        .args(move |ctx| {
            let mut a: Vec<OsString> = ["--exact", "dummy_server", "--ignored", "--nocapture", "--test-threads=1"]
                .map(OsString::from)
                .to_vec();
            a.extend(listen(ctx).into_iter().map(|p| OsString::from(format!("listen={p}"))));
            a
        })
        .ready(|ctx| {
            let c =
                std::net::TcpStream::connect_timeout(&ctx.addr(), Duration::from_secs(1)).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(c).read_line(&mut line).map_err(|e| e.to_string())?;
            match ctx.pid {
                Some(pid) if line.trim() == format!("dummy {pid}") => Ok(()),
                _ => Err(format!("answered {line:?}")),
            }
        })
        .ready_timeout(Duration::from_secs(30))
}

/// A port nothing listens on (its probe is closed at once), not leased.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An executable `sh` script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---------------------------------------------------------------- programs, tools and files

/// PostgreSQL's programs are in `/usr/lib/postgresql/<version>/bin`, off `$PATH`: the program
/// and its tools are found in the newest version directory, and an `init` step runs a tool from
/// there (`initdb`).
#[test]
fn programs_and_tools_are_found_in_version_directories_newest_first() {
    let tmp = tempfile::tempdir().unwrap();
    for v in ["9.6", "15", "10"] {
        let bin = tmp.path().join(v).join("bin");
        script(&bin.join("fake-postgres"), &format!("echo {v} > data/which; exec sleep 600"));
        script(&bin.join("fake-initdb"), &format!("echo {v} > \"$1\"/initdb-ran"));
    }
    let pattern = format!("{}/*/bin", tmp.path().display());
    let spec = Spec::new("fake-pg", "fake-postgres")
        .search(&pattern)
        .tool("fake-initdb")
        .init(|ctx| {
            let status = ctx.tool("fake-initdb").arg(ctx.data).status().map_err(|e| e.to_string())?;
            if status.success() { Ok(()) } else { Err(format!("initdb: {status}")) }
        })
        .ready(|ctx| if ctx.data.join("which").exists() { Ok(()) } else { Err("not yet".into()) })
        .stop_signal(Signal::KILL);
    assert_eq!(spec.program_path().unwrap(), tmp.path().join("15/bin/fake-postgres"));
    let s = Server::start(spec).unwrap();
    assert_eq!(read(&s.data_dir().join("initdb-ran")).trim(), "15", "the tool of the newest version");
    assert_eq!(read(&s.data_dir().join("which")).trim(), "15", "the program of the newest version");
    assert!(s.log_tail(5).contains(&format!("start #1: {}", tmp.path().join("15/bin/fake-postgres").display())));
}

/// `java` can be installed without `zookeeper.jar`, and PostgreSQL's tools may be missing: the
/// start is `Missing` (naming what, where it was looked for, and the package) before anything
/// runs or is created, and `start_or_skip` skips loudly, or fails with
/// `INTERLOCK_TEST_REQUIRE=1`, never panicking otherwise.
#[test]
fn a_missing_tool_or_file_is_missing_before_anything_starts() {
    let inits = Arc::new(AtomicUsize::new(0));
    let counted = |spec: Spec| {
        let inits = Arc::clone(&inits);
        spec.init(move |_| {
            inits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    };
    let zk = counted(Spec::new("zk-like", "sh").requires("/nonexistent/interlock/zookeeper.jar").package("zookeeper"));
    let pg =
        counted(Spec::new("pg-like", "sh").search("/nonexistent/interlock/*/bin").tool("interlock-no-such-initdb"));
    let program = counted(Spec::new("prog-like", "interlock-no-such-server").search("/nonexistent/interlock/*/bin"));
    let cases = [
        (zk, "/nonexistent/interlock/zookeeper.jar (needed by zk-like) is not installed (Debian package zookeeper)"),
        (pg, "interlock-no-such-initdb (looked in /nonexistent/interlock/*/bin and $PATH) is not installed"),
        (program, "interlock-no-such-server (looked in /nonexistent/interlock/*/bin and $PATH) is not installed"),
    ];
    for (spec, said) in cases {
        let name = spec.name().to_owned();
        match Server::start(spec.clone()) {
            Err(e @ StartError::Missing { .. }) => assert_eq!(e.to_string(), said),
            other => panic!("{name}: {other:?}"),
        }
        assert!(matches!(Group::start(spec.clone(), 3), Err(StartError::Missing { .. })));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Server::start_or_skip(spec)));
        if interlock_testkit::required() {
            assert!(outcome.is_err(), "{name}: INTERLOCK_TEST_REQUIRE=1 makes it a failure");
        } else {
            assert!(outcome.unwrap().is_none(), "{name}: skipped");
        }
        let dir = interlock_testkit::servers::session_dir().unwrap();
        let made: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}-")))
            .collect();
        assert!(made.is_empty(), "{name}: a home was made for a server that cannot start: {made:?}");
    }
    assert_eq!(inits.load(Ordering::SeqCst), 0, "no init step ran");
}

// ---------------------------------------------------------------- ports

/// An etcd member (client and peer port) or a ZooKeeper ensemble member (client, quorum and
/// election ports) listens on every port it leased: that is no clash.
#[test]
fn a_server_may_listen_on_every_port_it_leased() {
    let g = Group::start(dummy("ensemble", |ctx| ctx.ports.to_vec()).ports(3).stop_signal(Signal::KILL), 3).unwrap();
    for m in g.members() {
        assert_eq!(m.ports().len(), 3);
        for &p in m.ports() {
            assert!(TcpListener::bind(("127.0.0.1", p)).is_err(), "{} listens on {p}", m.name());
        }
    }
}

/// A port of its own taken under it (by a program outside the leases) is retried on fresh ports.
#[test]
fn a_clash_on_its_own_port_is_retried_on_fresh_ports() {
    let squatters: Arc<Mutex<Vec<TcpListener>>> = Arc::default();
    let held = Arc::clone(&squatters);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let spec = dummy("squatted", move |ctx| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            held.lock().unwrap().push(TcpListener::bind(("127.0.0.1", ctx.port())).unwrap());
        }
        vec![ctx.port()]
    })
    .stop_signal(Signal::KILL);
    let s = Server::start(spec).unwrap();
    let squatted = squatters.lock().unwrap()[0].local_addr().unwrap().port();
    assert_ne!(s.port(), squatted, "started on a fresh port");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one start on the squatted port, one elsewhere");
}

/// A port it opens but does not lease (ZooKeeper's admin server on 8080) in use: the start fails
/// at once as `UnleasedPort`, naming the port, rather than retrying on fresh ports (its own were
/// free); a restart that meets it fails at once too, rather than waiting for its own port.
#[test]
fn a_clash_on_a_port_it_does_not_lease_fails_at_once_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = taken.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let spec = dummy("admin-like", move |ctx| {
        counted.fetch_add(1, Ordering::SeqCst);
        vec![ctx.port(), other]
    });
    match Server::start(spec) {
        Err(e @ StartError::UnleasedPort { .. }) => {
            let StartError::UnleasedPort { ref ports, taken: true, .. } = e else { panic!("{e:?}") };
            assert_eq!(ports, &[other]);
            let text = e.to_string();
            assert!(text.contains(&format!("in use ({other})")) && text.contains("Spec::ports"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");

    let second = Arc::new(AtomicBool::new(false));
    let later = Arc::clone(&second);
    let restarts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&restarts);
    let spec = dummy("admin-later", move |ctx| {
        if later.load(Ordering::SeqCst) {
            counted.fetch_add(1, Ordering::SeqCst);
            vec![ctx.port(), other]
        } else {
            vec![ctx.port()]
        }
    })
    .stop_signal(Signal::KILL);
    let s = Server::start(spec).unwrap();
    second.store(true, Ordering::SeqCst);
    assert!(matches!(s.restart(), Err(StartError::UnleasedPort { taken: true, .. })));
    assert_eq!(restarts.load(Ordering::SeqCst), 1, "the restart did not wait for a port of its own");
    drop(taken);
}

/// A server that listens on a port it did not lease (free now, but another test's server could
/// take it first) fails to start, naming the port, and is killed; unless its Spec allows it.
#[test]
fn a_listener_on_a_port_it_did_not_lease_is_refused() {
    let extra = free_port();
    let pid = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&pid);
    let spec = dummy("listens-more", move |ctx| vec![ctx.port(), extra]).ready(move |ctx| {
        *seen.lock().unwrap() = ctx.pid;
        std::net::TcpStream::connect(ctx.addr()).map(drop).map_err(|e| e.to_string())
    });
    match Server::start(spec.clone()) {
        Err(e @ StartError::UnleasedPort { .. }) => {
            let StartError::UnleasedPort { ref ports, taken: false, .. } = e else { panic!("{e:?}") };
            assert_eq!(ports, &[extra]);
            assert!(e.to_string().contains(&format!("listens on ports its Spec does not lease ({extra})")), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let pid = pid.lock().unwrap().unwrap();
    assert!(!pid_alive(pid), "the refused server is killed");
    let s = Server::start(spec.allow_unleased_listeners()).unwrap();
    assert!(TcpListener::bind(("127.0.0.1", extra)).is_err(), "it listens there, as allowed");
    drop(s);
}

// ---------------------------------------------------------------- another user

/// As root, a server run as another user (PostgreSQL's `postgres`, here `nobody`) reaches its
/// home and data directory, owns them, and so do the `init` steps run with `Ctx::command`.
#[test]
fn a_server_run_as_another_user_reaches_its_home_and_data() {
    if !is_root() {
        eprintln!("a_server_run_as_another_user_reaches_its_home_and_data: not applicable (needs root)");
        return;
    }
    let spec = Spec::new("as-nobody", "sh")
        .run_as("nobody")
        .init(|ctx| {
            let out = ctx.command("sh").args(["-c", "id -u > data/init-uid && touch home-writable"]).output();
            let out = out.map_err(|e| e.to_string())?;
            if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
        })
        .args(|_| ["-c", "id -u > data/server-uid && exec sleep 600"].map(OsString::from).to_vec())
        .ready(|ctx| if ctx.data.join("server-uid").exists() { Ok(()) } else { Err("not yet".into()) })
        .stop_signal(Signal::KILL);
    let s = Server::start(spec).unwrap();
    let uid = User::lookup("nobody").unwrap().uid;
    assert_eq!(read(&s.data_dir().join("init-uid")).trim(), uid.to_string());
    assert_eq!(read(&s.data_dir().join("server-uid")).trim(), uid.to_string());
    assert_eq!(std::fs::metadata(s.data_dir().join("server-uid")).unwrap().uid(), uid);
    assert!(s.home().join("home-writable").exists());
}

/// A `$TMPDIR` that is missing, or (as root) private to root, is a `Setup` error naming the
/// directory and what to do, before anything runs: in child processes, since the servers'
/// directory is made once per process.
#[test]
fn an_unusable_tmpdir_is_a_setup_error_naming_it() {
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cases = vec![("missing", PathBuf::from("/nonexistent/interlock-tmp"))];
    if is_root() {
        cases.push(("private", private.path().to_owned()));
    } else {
        eprintln!("an_unusable_tmpdir_is_a_setup_error_naming_it (private): not applicable (needs root)");
    }
    for (case, tmpdir) in cases {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_starts_with_tmpdir", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, case)
            .env("TMPDIR", &tmpdir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: {stderr}");
        assert!(stderr.contains("CHILD OK"), "{case}: {stderr}");
    }
}

/// Not a test of its own: run by `an_unusable_tmpdir_is_a_setup_error_naming_it` in a child
/// process with its `$TMPDIR`.
#[test]
#[ignore = "run by an_unusable_tmpdir_is_a_setup_error_naming_it in a child process"]
fn child_starts_with_tmpdir() {
    let Ok(case) = std::env::var(CHILD_ENV) else { return };
    let tmpdir = std::env::var("TMPDIR").unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let mut spec = Spec::new("tmpdir-case", "sh").init(move |_| {
        flag.store(true, Ordering::SeqCst);
        Ok(())
    });
    if case == "private" {
        spec = spec.run_as("nobody");
    }
    let e = Server::start(spec).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StartError::Setup { .. }), "{e:?}");
    assert!(!text.contains('\n') && text.contains(&tmpdir), "{text}");
    if case == "private" {
        assert!(text.contains("nobody cannot reach") && text.contains("set TMPDIR"), "{text}");
    } else {
        assert!(text.contains("($TMPDIR)"), "{text}");
    }
    assert!(!ran.load(Ordering::SeqCst), "no init step ran");
    eprintln!("CHILD OK: {text}");
}

/// Not a test of its own: the dummy server that the tests above start (this binary, with
/// `listen=PORT` arguments). Listens on 127.0.0.1 on each port, or exits 1 saying why (as
/// servers say it: "Address already in use"); answers every connection with `dummy PID`.
#[test]
#[ignore = "the dummy server the other tests start"]
fn dummy_server() {
    if std::env::var_os(DUMMY_ENV).is_none() {
        return;
    }
    let pid = std::process::id();
    let mut listeners = Vec::new();
    for port in std::env::args().filter_map(|a| a.strip_prefix("listen=").and_then(|p| p.parse::<u16>().ok())) {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("dummy: bind 127.0.0.1:{port}: {e}");
                std::process::exit(1);
            }
        }
    }
    eprintln!(
        "dummy: pid {pid} listening on {:?}",
        listeners.iter().map(|l| l.local_addr().unwrap()).collect::<Vec<_>>()
    );
    for l in listeners {
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = writeln!(c, "dummy {pid}");
            }
        });
    }
    loop {
        std::thread::park();
    }
}
