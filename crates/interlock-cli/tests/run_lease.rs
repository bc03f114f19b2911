//! `interlock run` keeps the command inside the lock's lease when interlock itself is paused
//! (SIGSTOP of interlock alone, not of its command): the guardian stops the command before the
//! lease ends by the local clock and kills it when it ends, so a second holder never runs while
//! the first command does; a pause shorter than the guardian's margin changes nothing; a renewal
//! that comes inside the margin continues the command. On redis and on Redlock, private servers
//! through the testkit.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::path::Path;
use std::time::Duration;

use cli_support::{BIN, Proc, interlock};
use interlock_testkit::{Harness, unique};
use rustix::process::Signal;

/// `CLOCK_MONOTONIC` now, in seconds: the clock the command's heartbeats use.
fn mono() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// A Python command that appends a `CLOCK_MONOTONIC` timestamp to `log` every 10 ms for `secs`
/// seconds (printing `ready` after the first), then `end`.
fn heartbeats(log: &Path, secs: f64) -> Vec<String> {
    let script = format!(
        "import sys, time\n\
         f = open({log:?}, 'a')\n\
         end = time.monotonic() + {secs}\n\
         first = True\n\
         while time.monotonic() < end:\n\
         \x20   f.write('%.6f\\n' % time.clock_gettime(time.CLOCK_MONOTONIC)); f.flush()\n\
         \x20   if first: print('ready', flush=True); first = False\n\
         \x20   time.sleep(0.01)\n\
         f.write('end\\n'); f.flush()\n",
        log = log.display().to_string()
    );
    vec!["python3".into(), "-c".into(), script]
}

/// The heartbeats in `log`, and whether it ended.
fn beats(log: &Path) -> (Vec<f64>, bool) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let times = text.lines().filter_map(|l| l.parse().ok()).collect();
    (times, text.lines().any(|l| l == "end"))
}

/// `interlock run -u URL ARGS... NAME -- COMMAND`, started.
fn start(url: &str, args: &[&str], name: &str, command: &[String]) -> Proc {
    let mut c = interlock();
    c.args(["run", "-u", url]).args(args).arg(name).arg("--").args(command);
    Proc::spawn(c)
}

/// The guardian of `interlock run` `pid` (its child `interlock guard`).
fn guardian_of(pid: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(|p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        ppid == Some(pid) && cmdline.split(|b| *b == 0).nth(1) == Some(b"guard".as_slice())
    })
}

/// Lease 2 s, a 4 s critical section, interlock alone stopped for 3.5 s: the command's last
/// heartbeat comes before the lease ends by the local clock (at most 2 s after the pause began:
/// the last renewal was sent before it), the second holder gets in after it, no heartbeat of the
/// first command falls inside the second's section, none comes after interlock is continued,
/// and interlock exits 75. With `kill_guardian`, the guardian is killed (`kill -9`) before the
/// pause: another takes its place, and the same holds.
fn paused_interlock_never_lets_a_second_holder_in(url: &str, kill_guardian: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (dir.path().join("a"), dir.path().join("b"));
    let name = unique("paused-run");
    let lease = 2.0;
    // 2 s more with `kill_guardian`, for the time its replacement may take to be in place.
    let section = if kill_guardian { 6.0 } else { 4.0 };
    let mut a = start(url, &["--lease", "2s"], &name, &heartbeats(&log_a, section));
    assert_eq!(a.line(), "ready", "{}", a.stderr());
    if kill_guardian {
        let guardian = guardian_of(a.pid()).expect("the guardian of interlock run");
        rustix::process::kill_process(rustix::process::Pid::from_raw(guardian).unwrap(), Signal::KILL).unwrap();
        // Its replacement, if any, is in place within a moment (the pause then tells).
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while guardian_of(a.pid()).is_none_or(|g| g == guardian) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let paused = mono();
    a.signal(Signal::STOP);
    let mut b = start(url, &["--lease", "2s", "-w", "30"], &name, &heartbeats(&log_b, 0.5));
    std::thread::sleep(Duration::from_millis(3500));
    let resumed = mono();
    a.signal(Signal::CONT);
    let code_a = a.wait().code();
    let code_b = b.wait().code();
    let (ta, ended_a) = beats(&log_a);
    let (tb, _) = beats(&log_b);
    let (last_a, first_b) = (ta.last().copied().unwrap(), tb.first().copied().expect("the second holder ran"));
    eprintln!(
        "paused at 0: the first command's last heartbeat at {:.3} s, the second holder's first at {:.3} s \
         (lease {lease} s); interlock continued at {:.3} s",
        last_a - paused,
        first_b - paused,
        resumed - paused
    );
    assert_eq!(code_a, Some(75), "the paused interlock reports the loss: {}", a.stderr());
    assert_eq!(code_b, Some(0), "{}", b.stderr());
    assert!(!ended_a, "the first command ran to its end through the lost lease");
    assert!(last_a < paused + lease, "a heartbeat {:.3} s after the pause, past the lease", last_a - paused);
    assert!(last_a < first_b, "the first command ran inside the second holder's section");
    assert!(last_a < resumed, "the first command ran again after interlock was continued");
    assert!(a.stderr().contains("SIGSTOP") && a.stderr().contains("SIGKILL"), "{}", a.stderr());
    if kill_guardian {
        assert!(a.stderr().contains("another one"), "{}", a.stderr());
    }
}

/// Pauses of interlock shorter than the guardian's margin (500 ms for a 2 s lease) change
/// nothing: the command runs to its end, exit 0, and the guardian never stopped it.
fn short_pauses_of_interlock_change_nothing(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a");
    let mut a = start(url, &["--lease", "2s"], &unique("short-pause"), &heartbeats(&log, 2.5));
    assert_eq!(a.line(), "ready", "{}", a.stderr());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        a.signal(Signal::STOP);
        std::thread::sleep(Duration::from_millis(300));
        a.signal(Signal::CONT);
    }
    assert_eq!(a.wait().code(), Some(0), "{}", a.stderr());
    assert!(beats(&log).1, "the command ran to its end");
    assert_eq!(a.stderr(), "", "the guardian stopped the command");
}

/// Renewals that come inside the guardian's margin (lease 4 s, one renewal every 3.4 s: the
/// margin, 1 s, starts 3 s after each, and the renewal has 600 ms to come back): the command is
/// stopped before the renewal and continued when it comes; it runs to its end with exit 0.
fn a_renewal_inside_the_margin_continues_the_command(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a");
    // The URL's lease and renewal interval (`--lease` would set the renewal to a third of it).
    let url = format!("{url}{}lease=4s&renew=3400ms", if url.contains('?') { '&' } else { '?' });
    let mut a = start(&url, &[], &unique("late-renewal"), &heartbeats(&log, 4.5));
    assert_eq!(a.line(), "ready", "{}", a.stderr());
    assert_eq!(a.wait().code(), Some(0), "{}", a.stderr());
    assert!(beats(&log).1, "the command ran to its end");
    let err = a.stderr();
    assert!(err.contains("stopped (SIGSTOP)") && err.contains("continues (SIGCONT)"), "{err}");
}

mod on_redis {
    use super::*;

    fn harness() -> Option<interlock_testkit::RedisHarness> {
        interlock_testkit::RedisHarness::new(BIN)
    }

    #[test]
    fn paused_interlock_never_lets_a_second_holder_in() {
        let Some(h) = harness() else { return };
        super::paused_interlock_never_lets_a_second_holder_in(&h.url(), false);
    }

    #[test]
    fn a_killed_guardian_is_replaced_and_a_paused_interlock_still_lets_no_second_holder_in() {
        let Some(h) = harness() else { return };
        super::paused_interlock_never_lets_a_second_holder_in(&h.url(), true);
    }

    #[test]
    fn short_pauses_of_interlock_change_nothing() {
        let Some(h) = harness() else { return };
        super::short_pauses_of_interlock_change_nothing(&h.url());
    }

    #[test]
    fn a_renewal_inside_the_margin_continues_the_command() {
        let Some(h) = harness() else { return };
        super::a_renewal_inside_the_margin_continues_the_command(&h.url());
    }
}

#[cfg(feature = "redlock")]
mod on_redlock {
    use super::*;

    fn harness() -> Option<interlock_testkit::RedlockHarness> {
        interlock_testkit::RedlockHarness::new(BIN, 3)
    }

    #[test]
    fn paused_interlock_never_lets_a_second_holder_in() {
        let Some(h) = harness() else { return };
        super::paused_interlock_never_lets_a_second_holder_in(&h.url(), false);
    }

    #[test]
    fn a_killed_guardian_is_replaced_and_a_paused_interlock_still_lets_no_second_holder_in() {
        let Some(h) = harness() else { return };
        super::paused_interlock_never_lets_a_second_holder_in(&h.url(), true);
    }

    #[test]
    fn short_pauses_of_interlock_change_nothing() {
        let Some(h) = harness() else { return };
        super::short_pauses_of_interlock_change_nothing(&h.url());
    }
}
