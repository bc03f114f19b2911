//! `interlock bench`: its own correctness checks, never its speed. Argument handling, the
//! counter check (it passes with the lock and must fail without it), the JSON document, the plot,
//! and the lock directory left clean.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use cli_support::{LockDir, Out, run, walk};

/// Small settings, so that every test is short.
const SMALL: &[&str] =
    &["--duration", "0.3", "--clients", "2,3", "--handoffs", "500", "--locks", "200", "--waiters", "10"];

fn bench(url: &str, extra: &[&str]) -> Out {
    let mut args = vec!["bench", "-u", url];
    args.extend(SMALL);
    args.extend(extra);
    run(&args)
}

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

#[test]
fn bad_arguments_are_usage_errors_on_one_line() {
    let d = LockDir::new();
    let url = d.url();
    for bad in [
        &["--clients", "0"][..],
        &["--clients", "2,x"],
        &["--clients", ""],
        &["--handoffs", "499"],
        &["--duration", "0"],
        &["--duration", "soon"],
        &["--locks", "0"],
        &["--waiters", "0"],
        &["--waiter-kind", "thread"],
        &["--mode", "exclusive"],
        &["--mode", "semaphore:0"],
        &["--hold", "11ms..1ms"],
        &["--hold", "1ms.."],
        &["--hold", "..1ms"],
        &["--hold", "1ms..2ms..3ms"],
        &["--hold", "soon"],
        &["--hold", "1ms..1h"],
        &["unknown-workload"],
    ] {
        let mut args = vec!["bench", "-u", url.as_str()];
        args.extend(bad);
        let line = run(&args).fails_with(64);
        assert!(line.contains("see --help"), "{bad:?}: {line}");
    }
    let line = run(&["bench", "-u", "gopher://x", "uncontended"]).fails_with(64);
    assert!(line.contains("unknown scheme"), "{line}");
}

#[test]
fn help_documents_the_exclusion_exit_code() {
    let out = run(&["bench", "--help"]);
    out.succeeds();
    for needle in ["70", "EXCLUSION VIOLATED", "uncontended", "many-locks", "--waiter-kind", "INTERLOCK_URL"] {
        assert!(out.stdout.contains(needle), "--help lacks {needle:?}: {}", out.stdout);
    }
    assert!(!out.stdout.contains("--no-lock"), "the test-only flag is hidden");
}

#[test]
fn without_the_lock_the_counter_check_fails_loudly() {
    let d = LockDir::new();
    let out = bench(&d.url(), &["contended", "--clients", "4", "--no-lock"]);
    assert_eq!(out.code(), Some(70), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("EXCLUSION VIOLATED"), "{}", out.stdout);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("interlock: EXCLUSION VIOLATED: contended, 4 processes"), "{}", out.stderr);
}

#[test]
fn with_the_lock_the_counter_check_passes() {
    let d = LockDir::new();
    let out = bench(&d.url(), &["contended", "--json"]);
    out.succeeds();
    let v = json(&out);
    let runs = v["contended"].as_array().unwrap();
    assert_eq!(runs.iter().map(|r| r["clients"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
    for r in runs {
        assert_eq!(r["kind"], "processes");
        assert_eq!(r["exclusion"], "ok", "{r}");
        assert_eq!(r["counter"], r["acquisitions"], "{r}");
        assert!(r["acquisitions"].as_u64().unwrap() > 0, "{r}");
        assert!(r["lock_attempts_per_acquisition"].as_f64().unwrap() >= 1.0, "{r}");
        assert_eq!(r["floor"]["exclusion"], "ok", "the raw flock floor keeps the count too: {r}");
        assert!(r["floor"]["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(v["violations"].as_array().unwrap().len(), 0);
}

#[test]
fn json_has_every_workload_and_the_floors() {
    let d = LockDir::new();
    let out = bench(&d.url(), &["--json", "--start-server"]);
    out.succeeds();
    let v = json(&out);
    assert_eq!(v["backend"], "file");
    assert_eq!(v["mode"], "mutex");
    assert_eq!(v["url"], d.url().as_str());
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    for key in ["cpu_model", "kernel"] {
        assert!(v["machine"][key].is_string(), "machine.{key}");
    }
    let u = &v["uncontended"];
    for key in ["p50_ns", "p99_ns", "max_ns", "count"] {
        assert!(u["lock"]["latency"][key].is_u64(), "uncontended.lock.latency.{key}: {u}");
    }
    assert!(u["lock"]["ops_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(u["floors"].as_array().unwrap().len(), 2, "the flock pair and open+flock+close: {u}");
    assert!(u["ratio_p50"].as_f64().unwrap() > 0.0);
    let h = &v["handoff"];
    assert!(h["ours"]["handoffs"].as_u64().unwrap() > 0, "{h}");
    assert_eq!(h["ours"]["overlaps"], 0);
    assert!(h["floor"]["gap"]["p50_ns"].is_u64(), "{h}");
    let m = &v["many_locks"];
    assert_eq!(m["held"], 200);
    assert!(m["take_all_s"].as_f64().unwrap() > 0.0 && m["release_all_s"].as_f64().unwrap() > 0.0, "{m}");
    let w = &v["waiters"];
    assert_eq!((w["waiters"].as_u64(), w["kind"].as_str()), (Some(10), Some("processes")));
    assert!(w["ops_per_release"].as_f64().unwrap() >= 1.0, "{w}");
    assert!(w["floor"]["drain_s"].as_f64().unwrap() > 0.0, "{w}");
    let notes = v["notes"].as_array().unwrap();
    assert!(notes.iter().any(|n| n.as_str().unwrap().contains("--start-server")), "{notes:?}");
    // Every lock, fencing and floor file of the run is gone.
    assert_eq!(walk(&d.dir), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_hold_range_applies_to_ours_and_the_floor() {
    let d = LockDir::new();
    let out = bench(&d.url(), &["contended", "handoff", "--clients", "2", "--hold", "1ms..3ms", "--json"]);
    out.succeeds();
    let v = json(&out);
    let c = &v["contended"][0];
    assert_eq!(c["hold"], "1 ms to 3 ms (uniform)", "{c}");
    assert_eq!((c["exclusion"].as_str(), c["floor"]["exclusion"].as_str()), (Some("ok"), Some("ok")), "{c}");
    // Each acquisition holds at least 1 ms, so 2 clients in 0.3 s make at most about 300.
    for ops in [c["acquisitions"].as_u64().unwrap(), c["floor"]["ops_per_sec"].as_f64().unwrap() as u64 * 3 / 10] {
        assert!(ops > 0 && ops <= 330, "{c}");
    }
    let h = &v["handoff"];
    assert_eq!(h["hold"], "1 ms to 3 ms (uniform)", "{h}");
    assert_eq!(h["ours"]["overlaps"], 0, "{h}");
    assert!(h["floor"]["gap"]["p50_ns"].is_u64(), "{h}");
    // A single time keeps working, and the table says what was held.
    let out = bench("memory://", &["contended", "--clients", "2", "--hold", "500us"]);
    out.succeeds();
    assert!(out.stdout.contains("hold 500 µs"), "{}", out.stdout);
    assert_eq!(walk(&d.dir), Vec::<std::path::PathBuf>::new());
}

#[test]
fn memory_backend_runs_in_process_and_plots() {
    let d = LockDir::new();
    let svg = d.tmp.path().join("bench.svg");
    let out = bench("memory://", &["uncontended", "contended", "handoff", "--plot", svg.to_str().unwrap()]);
    out.succeeds();
    assert!(out.stdout.contains("tasks of the bench process"), "{}", out.stdout);
    assert!(out.stdout.contains("tokio::sync::Mutex"), "{}", out.stdout);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{}", &text[..text.len().min(200)]);
    for needle in ["uncontended", "handoff", "contended throughput"] {
        assert!(text.contains(needle), "the plot lacks {needle:?}");
    }
}

#[test]
fn waiter_tasks_share_one_provider() {
    let d = LockDir::new();
    let out = bench(&d.url(), &["waiters", "--waiter-kind", "task", "--json"]);
    out.succeeds();
    let w = &json(&out)["waiters"];
    assert_eq!(w["kind"], "tasks");
    // Only the head of the in-process queue goes to the backend: about one attempt per release.
    assert!(w["ops_per_release"].as_f64().unwrap() < 3.0, "{w}");
}

#[test]
fn shared_modes_skip_what_they_cannot_check() {
    let d = LockDir::new();
    let out = bench(&d.url(), &["contended", "handoff", "--clients", "2", "--mode", "read", "--json"]);
    out.succeeds();
    let v = json(&out);
    assert_eq!(v["contended"][0]["exclusion"], "n/a");
    assert!(v["handoff"]["skipped"].as_str().unwrap().contains("read"), "{}", v["handoff"]);
}

#[test]
fn a_plot_that_cannot_be_written_is_an_io_error() {
    let d = LockDir::new();
    let out = bench("memory://", &["uncontended", "--plot", "/nonexistent-dir/x.svg"]);
    assert_eq!(out.code(), Some(74), "{}", out.stderr);
    assert!(out.stderr.lines().last().unwrap().starts_with("interlock: cannot write the plot"), "{}", out.stderr);
    drop(d);
}

/// `--start-server` starts what the URL's scheme needs (one server, a 3-master cluster, Redlock
/// masters) through the testkit, benches it, and stops it.
#[cfg(feature = "redlock")]
#[test]
fn start_server_starts_what_the_scheme_needs() {
    if !cli_support::require_tool("redis-server", &["--version"]) {
        return;
    }
    for (url, shown) in [
        ("redis://", "redis://127.0.0.1:"),
        ("redis+cluster://", "redis+cluster://127.0.0.1:"),
        ("redlock://a,b,c,d,e", "redlock://127.0.0.1:"),
    ] {
        let out = run(&["bench", "-u", url, "--start-server", "--duration", "0.2", "--json", "uncontended"]);
        out.succeeds();
        let v = json(&out);
        let bench_url = v["url"].as_str().unwrap();
        assert!(bench_url.starts_with(shown), "{url}: benched {bench_url}");
        if url.starts_with("redlock") {
            assert_eq!(bench_url.matches(',').count(), 4, "five masters, as the URL named: {bench_url}");
        }
    }
    let out = run(&["bench", "-u", "rediss://h", "--start-server", "uncontended"]);
    assert!(out.fails_with(64).contains("--start-server"), "{}", out.stderr);
}

/// A `kill -9` of the bench does not leave its `--start-server` server running (parent-death
/// signal from the testkit).
#[cfg(feature = "redis")]
#[test]
fn start_server_dies_with_a_killed_bench() {
    use std::io::{BufRead, BufReader};
    if !cli_support::require_tool("redis-server", &["--version"]) {
        return;
    }
    let mut c = cli_support::interlock();
    c.args(["bench", "-u", "redis://", "--start-server", "--duration", "60", "uncontended"]);
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let pid: u32 = loop {
        let line = lines.next().expect("the bench names its server").unwrap();
        if let Some(rest) = line.strip_prefix("interlock bench: started redis-server (pid ") {
            break rest.split(')').next().unwrap().parse().unwrap();
        }
    };
    assert!(interlock_testkit::servers::pid_alive(pid));
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while interlock_testkit::servers::pid_alive(pid) {
        assert!(std::time::Instant::now() < deadline, "redis-server {pid} outlived the killed bench");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An unusable `$TMPDIR` (missing, or a file) makes `--start-server` exit 74 with one line that
/// names it, for every scheme it starts servers for: the testkit's set-up returns its error
/// instead of panicking.
#[cfg(feature = "redlock")]
#[test]
fn start_server_with_an_unusable_tmpdir_is_an_io_error() {
    if !cli_support::require_tool("redis-server", &["--version"]) {
        return;
    }
    for (tmpdir, url) in
        [("/nonexistent", "redis://"), ("/etc/passwd", "redis+cluster://"), ("/nonexistent", "redlock://")]
    {
        let mut c = cli_support::interlock();
        c.env("TMPDIR", tmpdir).args(["bench", "-u", url, "--start-server", "--duration", "0.2", "uncontended"]);
        let line = cli_support::output(c).fails_with(74);
        assert!(line.starts_with("interlock: --start-server: ") && line.contains(tmpdir), "{url}: {line}");
    }
}
