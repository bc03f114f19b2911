//! The server testkit against a real `redis-server`: start on a leased port, readiness, kill,
//! stop with a chosen signal, restart on the same port and data, groups, a connection killed
//! server-side, pause/resume, another user, namespaces of a shared server, and nothing left
//! running after the test binary exits or is killed with SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interlock_testkit::servers::redis::{self, Redis, RedisGroup, RedisOptions};
use interlock_testkit::servers::redis::{RedisGroupNs, RedisNs};
use interlock_testkit::servers::resp::Resp;
use interlock_testkit::servers::{Group, PortLease, Server, Signal, Spec, StartError, pid_alive, which};

/// Set in the child test process that the `nothing_outlives_*` tests start.
const CHILD_ENV: &str = "INTERLOCK_TESTKIT_SERVERS_CHILD";
/// How long a process may take to disappear.
const GONE_WITHIN: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn ping(r: &Redis) -> Result<Resp, std::io::Error> {
    r.cmd(0, &["PING"])
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + GONE_WITHIN;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {GONE_WITHIN:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn proc_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned())
}

#[test]
fn starts_on_a_leased_port_and_answers_ping() {
    let Some(r) = Redis::start_or_skip(&RedisOptions::default()) else { return };
    assert!((20000..32768).contains(&r.port()), "port {} outside the leased range", r.port());
    assert_eq!(ping(&r).unwrap(), Resp::Simple("PONG".into()));
    let pid = r.pid().unwrap();
    let info = r.cmd(0, &["INFO", "server"]).unwrap().text().unwrap();
    assert!(info.contains(&format!("process_id:{pid}")), "{info}");
    // Its port is leased: no other test can be handed it while the server lives.
    assert!(PortLease::try_reserve(r.port()).is_none());
    assert!(r.log_tail(50).contains("Ready to accept connections"), "{}", r.log_tail(50));
    assert!(r.home().starts_with(interlock_testkit::servers::session_dir().unwrap()));
}

#[test]
fn kill_then_restart_on_the_same_port_keeps_the_data() {
    let opts = RedisOptions { persistence: true, ..RedisOptions::default() };
    let Some(r) = Redis::start_or_skip(&opts) else { return };
    let (port, pid) = (r.port(), r.pid().unwrap());
    r.cmd(3, &["SET", "k", "survives"]).unwrap();
    r.kill();
    assert!(!r.is_running() && !pid_alive(pid));
    assert_eq!(r.last_exit().unwrap().signal(), Some(9));
    assert!(ping(&r).is_err(), "nothing answers on a killed server's port");
    r.restart().unwrap();
    assert_eq!(r.port(), port);
    assert_ne!(r.pid().unwrap(), pid);
    assert_eq!(r.starts(), 2);
    assert_eq!(r.cmd(3, &["GET", "k"]).unwrap().text().as_deref(), Some("survives"));
    assert!(r.log_tail(200).contains("start #2"));
}

#[test]
fn stop_with_a_chosen_signal_then_restart() {
    let Some(r) = Redis::start_or_skip(&RedisOptions::default()) else { return };
    let status = r.stop_with(Signal::TERM, Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0), "redis exits cleanly on SIGTERM");
    assert!(r.log_tail(20).contains("ready to exit"), "{}", r.log_tail(20));
    assert_eq!(r.stop(), None, "stopping a stopped server does nothing");
    r.restart().unwrap();
    let pid = r.pid().unwrap();
    r.restart().unwrap(); // a running server is stopped first
    assert_ne!(r.pid().unwrap(), pid);
    assert_eq!(ping(&r).unwrap(), Resp::Simple("PONG".into()));
}

#[test]
fn restart_waits_while_another_process_holds_its_port() {
    let Some(r) = Redis::start_or_skip(&RedisOptions::default()) else { return };
    let port = r.port();
    r.kill();
    let squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(squatter);
    });
    r.restart().unwrap();
    releaser.join().unwrap();
    assert_eq!(r.port(), port);
    assert!(r.log_tail(200).to_lowercase().contains("address already in use"), "{}", r.log_tail(200));
    assert_eq!(ping(&r).unwrap(), Resp::Simple("PONG".into()));
}

#[test]
fn group_of_three_kill_one_restart_it() {
    let Some(g) = RedisGroup::start_or_skip(3, &RedisOptions::default()) else { return };
    let ports: Vec<u16> = g.members().iter().map(|r| r.port()).collect();
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ports:?}");
    assert_eq!(g.urls(2), ports.iter().map(|p| format!("redis://127.0.0.1:{p}/2")).collect::<Vec<_>>());
    assert_eq!(g.kill_k(1), [0]);
    assert!(!g.member(0).is_running() && ping(g.member(0)).is_err());
    for i in 1..3 {
        assert_eq!(ping(g.member(i)).unwrap(), Resp::Simple("PONG".into()), "member {i}");
    }
    assert_eq!(g.restart_stopped().unwrap(), [0]);
    assert_eq!(g.member(0).port(), ports[0]);
    assert!(g.members().iter().all(|r| ping(r).is_ok()));
    assert_eq!(g.kill_k(2), [0, 1]);
    assert_eq!(g.restart_stopped().unwrap(), [0, 1]);
    assert!(g.members().iter().all(|r| ping(r).is_ok()));
}

#[test]
fn a_connection_killed_server_side_is_closed() {
    let Some(r) = Redis::start_or_skip(&RedisOptions::default()) else { return };
    let mut victim = r.connect().unwrap();
    let mut bystander = r.connect().unwrap();
    victim.call(&["CLIENT", "SETNAME", "victim"]).unwrap().ok().unwrap();
    let listed = r.clients().unwrap();
    assert_eq!(listed.iter().filter(|c| c.name == "victim").count(), 1, "{listed:?}");
    let mine = listed.iter().find(|c| c.name == "victim").unwrap();
    assert_eq!(mine.addr, victim.local_addr().unwrap().to_string());
    assert_eq!(r.kill_clients_where(|c| c.name == "victim").unwrap(), 1);
    assert!(victim.call(&["PING"]).is_err(), "the killed connection is closed");
    assert_eq!(bystander.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
    assert!(!r.kill_client(mine.id).unwrap(), "killing it again finds nothing");
}

#[test]
fn pause_and_resume() {
    let Some(r) = Redis::start_or_skip(&RedisOptions::default()) else { return };
    let pid = r.pid().unwrap();
    let mut conn = r.connect().unwrap();
    r.pause();
    eventually("paused", || proc_field(pid, "State:").is_some_and(|s| s.starts_with('T')));
    let mut quick = interlock_testkit::servers::resp::RespConn::connect(r.addr(), Duration::from_millis(300)).unwrap();
    assert!(quick.call(&["PING"]).is_err(), "a paused server answers nothing");
    r.resume();
    assert_eq!(conn.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()), "connections survive a pause");
    assert_eq!(ping(&r).unwrap(), Resp::Simple("PONG".into()));
}

#[test]
fn shared_server_gives_each_case_its_own_namespace() {
    let Some(r) = redis::shared() else { return };
    assert!(std::ptr::eq(r, redis::shared().unwrap()), "one server per test binary");
    let (a, b) = (r.namespace(), r.namespace());
    assert_ne!(a.db, b.db);
    assert_ne!(a.prefix, b.prefix);
    assert_eq!(a.url(), format!("redis://127.0.0.1:{}/{}", r.port(), a.db));
    a.cmd(&["SET", &format!("{}k", a.prefix), "1"]).unwrap();
    assert_eq!(a.keys().unwrap(), [format!("{}k", a.prefix)]);
    assert!(b.keys().unwrap().is_empty(), "namespaces do not see each other's keys");
    // Killing a namespace's connections leaves the other namespaces' alone.
    let mut in_a = r.connect().unwrap();
    in_a.call(&["SELECT", &a.db.to_string()]).unwrap().ok().unwrap();
    let mut in_b = r.connect().unwrap();
    in_b.call(&["SELECT", &b.db.to_string()]).unwrap().ok().unwrap();
    // At least in_a (a connection that a.cmd just closed may not be gone yet server-side).
    assert!(a.kill_clients().unwrap() >= 1);
    assert!(in_a.call(&["PING"]).is_err());
    assert_eq!(in_b.call(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
}

#[test]
fn shared_group_is_started_once() {
    let Some(g) = redis::shared_group(3) else { return };
    assert!(std::ptr::eq(g, redis::shared_group(3).unwrap()));
    let ns = g.namespace();
    assert_eq!(ns.urls().len(), 3);
    for i in 0..3 {
        assert!(ns.keys_on(i).unwrap().is_empty());
    }
}

#[test]
fn a_server_started_from_a_thread_that_ended_lives_on() {
    // The parent-death signal fires when the forking *thread* ends: servers are forked by the
    // testkit's spawner thread, never by the (short-lived) caller.
    let started = std::thread::spawn(|| Redis::start_or_skip(&RedisOptions::default())).join().unwrap();
    let Some(r) = started else { return };
    std::thread::sleep(Duration::from_millis(500));
    assert!(r.is_running());
    assert_eq!(ping(&r).unwrap(), Resp::Simple("PONG".into()));
}

#[test]
fn runs_as_another_user() {
    if !is_root() {
        eprintln!("runs_as_another_user: not applicable (needs root to switch users)");
        return;
    }
    let opts =
        RedisOptions { user: Some("nobody".into()), password: Some("s3cret \"x\"".into()), ..RedisOptions::default() };
    let Some(r) = Redis::start_or_skip(&opts) else { return };
    let uid = r.user().unwrap().uid;
    let pid = r.pid().unwrap();
    assert_eq!(proc_field(pid, "Uid:").unwrap().split_whitespace().next(), Some(uid.to_string().as_str()));
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(r.data_dir()).unwrap()), uid);
    assert_eq!(ping(&r).unwrap(), Resp::Simple("PONG".into()), "AUTH with the password works");
    // The password is in a config file, not on the command line.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"));
    let mut anonymous = interlock_testkit::servers::resp::RespConn::connect(r.addr(), Duration::from_secs(5)).unwrap();
    assert!(matches!(anonymous.call(&["GET", "x"]).unwrap(), Resp::Error(e) if e.starts_with("NOAUTH")));
}

#[test]
fn a_missing_program_skips_or_fails() {
    let spec = Spec::new("ghost", "/nonexistent/interlock-no-such-server");
    assert!(matches!(Server::start(spec.clone()), Err(StartError::Missing { .. })));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Server::start_or_skip(spec)));
    if interlock_testkit::required() {
        assert!(outcome.is_err(), "INTERLOCK_TEST_REQUIRE=1 makes a missing server a failure");
    } else {
        assert!(outcome.unwrap().is_none());
    }
}

#[test]
fn a_failed_start_reports_its_log() {
    let spec = Spec::new("boom", "sh").args(|_| vec!["-c".into(), "echo boom-marker; echo more >&2; exit 3".into()]);
    match Server::start(spec) {
        Err(e @ StartError::Failed { .. }) => {
            let text = e.to_string();
            assert!(text.contains("exit code 3") && text.contains("boom-marker") && text.contains("more"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let slow = Spec::new("slow", "sleep")
        .args(|_| vec!["30".into()])
        .ready(|_| Err("never ready".into()))
        .ready_timeout(Duration::from_millis(500));
    let text = Server::start(slow).unwrap_err().to_string();
    assert!(text.contains("not ready after") && text.contains("never ready"), "{text}");
}

#[test]
fn servers_and_namespaces_can_live_in_a_harness() {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<Server>();
    send_sync_static::<Group>();
    send_sync_static::<Redis>();
    send_sync_static::<RedisGroup>();
    send_sync_static::<RedisNs<'static>>();
    send_sync_static::<RedisGroupNs<'static>>();
}

#[test]
fn group_members_know_each_others_ports() {
    use std::sync::{Arc, Mutex};
    /// What one member's `args` saw: its index, its ports, every member's ports.
    type Seen = (usize, Vec<u16>, Vec<Vec<u16>>);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = Arc::clone(&seen);
    let spec = Spec::new("sleeper", "sleep")
        .ports(2)
        .args(move |ctx| {
            record.lock().unwrap().push((ctx.index, ctx.ports.to_vec(), ctx.peers.to_vec()));
            vec!["60".into()]
        })
        .ready(|ctx| if ctx.pid.is_some() { Ok(()) } else { Err("no pid".into()) })
        .stop_signal(Signal::KILL);
    let g = Group::start(spec, 3).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let peers = &seen[0].2;
    assert_eq!(peers.len(), 3);
    for (index, ports, p) in &seen {
        assert_eq!(p, peers, "every member sees the same peers");
        assert_eq!(ports, &peers[*index]);
        assert_eq!(ports.len(), 2);
        assert_eq!(g.member(*index).ports(), &ports[..]);
    }
    let mut all: Vec<u16> = peers.concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 6, "six distinct ports");
    assert_eq!(g.member(1).stop().unwrap().signal(), Some(9), "stopped with its stop signal");
}

#[test]
fn port_leases_are_exclusive() {
    let a = PortLease::reserve();
    let b = PortLease::reserve();
    assert_ne!(a.port(), b.port());
    assert!(PortLease::try_reserve(a.port()).is_none(), "a leased port is not handed out again");
    let bound = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(PortLease::try_reserve(bound.local_addr().unwrap().port()).is_none(), "a bound port is not leased");
    let p = a.port();
    drop(a);
    assert!(PortLease::try_reserve(p).is_some(), "a dropped lease frees its port");
}

/// What the child test process prints: its servers' pids, its server directory, its reaper.
struct ChildReport {
    pids: Vec<u32>,
    dir: std::path::PathBuf,
    reaper: u32,
}

/// The child test process, SIGKILLed if the test fails before it does.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs [`child_starts_servers`] in a child process of this test binary (mode `wait` or `exit`)
/// and reads its report. `None` when `redis-server` is missing (skipped).
fn start_child(mode: &str, only: Option<&str>) -> Option<(ChildGuard, ChildReport)> {
    if which("redis-server").is_none() {
        interlock_testkit::skip("redis-server is not installed");
        return None;
    }
    let mut child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_starts_servers", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .env("INTERLOCK_TESTKIT_ONLY", only.unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert_ne!(out.read_line(&mut line).unwrap(), 0, "the child ended without a report");
        if let Some(rest) = line.trim().split_once("CHILD ").map(|(_, r)| r) {
            let field = |k: &str| rest.split(' ').find_map(|f| f.strip_prefix(k)).unwrap().to_owned();
            let pids = field("pids=").split(',').map(|p| p.parse().unwrap()).collect();
            let report = ChildReport { pids, dir: field("dir=").into(), reaper: field("reaper=").parse().unwrap() };
            // Keep draining its output so that it never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return Some((child, report));
        }
    }
}

fn assert_all_gone(report: &ChildReport) {
    for &pid in &report.pids {
        eventually(&format!("server {pid} gone"), || !pid_alive(pid));
    }
    eventually("the reaper removes the server directory", || !report.dir.exists());
    eventually("the reaper exits", || !pid_alive(report.reaper));
}

/// Starts the child, SIGKILLs it, and checks that its servers, directory and reaper are gone.
fn kill_9_child(only: Option<&str>) {
    let Some((mut child, report)) = start_child("wait", only) else { return };
    assert!(report.pids.len() >= 3, "shared server and group: {:?}", report.pids);
    for &pid in &report.pids {
        assert!(pid_alive(pid), "server {pid} runs before the kill");
    }
    child.0.kill().unwrap(); // SIGKILL: no destructor, no atexit, nothing of the child runs
    assert_eq!(child.0.wait().unwrap().signal(), Some(9));
    assert_all_gone(&report);
}

#[test]
fn nothing_outlives_a_test_binary_killed_with_sigkill() {
    kill_9_child(None);
}

#[test]
fn nothing_outlives_a_killed_test_binary_by_the_parent_death_signal_alone() {
    kill_9_child(Some("pdeathsig"));
}

#[test]
fn nothing_outlives_a_killed_test_binary_by_the_reaper_alone() {
    kill_9_child(Some("reaper"));
}

#[test]
fn nothing_outlives_a_test_binary_that_exits() {
    let Some((mut child, report)) = start_child("exit", None) else { return };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "child: {status}");
    // Its servers live in `static`s, which are never dropped: only the parent-death signal and
    // the reaper end them.
    assert_all_gone(&report);
}

/// Not a test of its own: the `nothing_outlives_*` tests run it in a child process, which starts
/// the shared server, a shared group of two (and, as root, a server run as `nobody`), all kept in
/// `static`s, prints their pids, then waits to be killed (`wait`) or returns (`exit`).
#[test]
#[ignore = "run by the nothing_outlives_* tests in a child process"]
fn child_starts_servers() {
    let Ok(mode) = std::env::var(CHILD_ENV) else { return };
    let mut pids = vec![redis::shared().unwrap().pid().unwrap()];
    pids.extend(redis::shared_group(2).unwrap().members().iter().map(|r| r.pid().unwrap()));
    if is_root() {
        static NOBODY: std::sync::OnceLock<Redis> = std::sync::OnceLock::new();
        let opts = RedisOptions { user: Some("nobody".into()), ..RedisOptions::default() };
        pids.push(NOBODY.get_or_init(|| Redis::start(&opts).unwrap()).pid().unwrap());
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!(
        "CHILD pids={} dir={} reaper={}",
        list.join(","),
        interlock_testkit::servers::session_dir().unwrap().display(),
        interlock_testkit::servers::reaper_pid().unwrap()
    );
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    if mode == "wait" {
        // Killed long before this, unless the parent test died first.
        std::thread::sleep(Duration::from_secs(120));
    }
}
