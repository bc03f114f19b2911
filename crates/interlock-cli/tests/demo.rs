//! `interlock demo flash-sale`: with the lock the buyers sell exactly the stock; without it they
//! oversell (which proves the check can fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::path::Path;
use std::time::{Duration, Instant};

use cli_support::{LockDir, Out, Proc, exists, hold, run, walk};

fn field(out: &Out, key: &str) -> u64 {
    let line = out
        .stdout
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no `{key}:` line in {}", out.stdout));
    line.trim().parse().unwrap_or_else(|_| panic!("`{key}:` is not a number: {line:?}"))
}

/// `interlock demo flash-sale -u DIR --buyers 8 EXTRA...`, with a private `$TMPDIR`.
fn flash_sale(d: &LockDir, extra: &[&str]) -> Out {
    let url = d.url();
    let mut c = cli_support::interlock();
    c.env("TMPDIR", d.tmp.path().join("tmp"));
    std::fs::create_dir_all(d.tmp.path().join("tmp")).unwrap();
    c.args(["demo", "flash-sale", "-u", url.as_str(), "--buyers", "8"]).args(extra);
    cli_support::output(c)
}

/// The demo removes its state directory from `$TMPDIR`; only the lock's own files are in the lock
/// directory.
fn assert_state_removed(d: &LockDir) {
    let left = walk(&d.tmp.path().join("tmp"));
    assert!(left.is_empty(), "state left behind: {left:?}");
    if exists(&d.dir) {
        let files = walk(&d.dir);
        assert!(
            files.iter().all(|f| [".flash-sale.fence", "flash-sale"].contains(&&*f.to_string_lossy())),
            "{files:?}"
        );
    }
}

#[test]
fn with_the_lock_a_stock_of_1_sells_exactly_once() {
    let d = LockDir::new();
    let out = flash_sale(&d, &["--stock", "1"]);
    out.succeeds();
    assert_eq!(field(&out, "sold"), 1, "{}", out.stdout);
    assert_eq!(field(&out, "oversold"), 0);
    assert_eq!(field(&out, "left"), 0);
    assert!(out.stdout.contains(&d.url()), "the summary names the URL: {}", out.stdout);
    assert_state_removed(&d);
}

#[test]
fn with_the_lock_a_stock_of_3_sells_exactly_three() {
    let d = LockDir::new();
    let out = flash_sale(&d, &["--stock", "3"]);
    out.succeeds();
    assert_eq!(field(&out, "sold"), 3, "{}", out.stdout);
    assert_eq!(field(&out, "oversold"), 0);
    assert_state_removed(&d);
}

#[test]
fn without_the_lock_the_buyers_oversell() {
    let d = LockDir::new();
    // A longer think time than the default widens the race window, so a loaded machine still
    // shows it; the default (5 ms) oversells too, as the demo's own runs show.
    let out = flash_sale(&d, &["--stock", "1", "--no-lock", "--think-ms", "50"]);
    out.succeeds();
    let sold = field(&out, "sold");
    assert!(sold > 1, "without a lock 8 buyers should oversell a stock of 1: {}", out.stdout);
    assert_eq!(field(&out, "oversold"), sold - 1);
    assert_state_removed(&d);
}

#[test]
fn a_bad_url_fails_before_any_buyer_starts() {
    run(&["demo", "flash-sale", "-u", "gopher://x"]).fails_with(64);
    // Nothing listens on port 1: the server is unavailable (not "not built", also 69).
    let line = run(&["demo", "flash-sale", "-u", "redis://127.0.0.1:1"]).fails_with(69);
    if cfg!(feature = "redis") {
        assert!(line.contains("unavailable") && line.contains("127.0.0.1:1"), "{line}");
    } else {
        assert!(line.contains("built without its cargo feature `redis`"), "{line}");
    }
    let d = LockDir::new();
    std::fs::write(&d.dir, "a file").unwrap();
    run(&["demo", "flash-sale", "-u", &d.url()]).fails_with(69);
}

#[test]
fn the_memory_backend_cannot_exclude_buyer_processes_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cli_support::interlock();
    c.env("TMPDIR", tmp.path()).args([
        "demo",
        "flash-sale",
        "-u",
        "memory://",
        "--buyers",
        "8",
        "--stock",
        "1",
        "--think-ms",
        "50",
    ]);
    let out = cli_support::output(c);
    // Separate processes share no memory: every buyer sells, and the demo reports the failure.
    let line = out.fails_with(1);
    assert!(line.contains("separate processes"), "{line}");
    assert!(walk(tmp.path()).is_empty(), "state left behind: {:?}", walk(tmp.path()));
}

/// The README's demo: the default URL, so the default directory `/tmp/interlock-$UID` (where it
/// leaves its `flash-sale` lock, as for anyone who runs it); its state stays in `$TMPDIR`.
#[test]
fn with_the_default_url_the_state_stays_out_of_the_default_lock_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cli_support::interlock();
    c.env("TMPDIR", tmp.path()).args(["demo", "flash-sale", "--buyers", "4", "--stock", "2"]);
    let out = cli_support::output(c);
    out.succeeds();
    assert_eq!(field(&out, "sold"), 2, "{}", out.stdout);
    let default = Path::new("/tmp").join(format!("interlock-{}", rustix::process::geteuid().as_raw()));
    assert!(exists(&default.join("flash-sale")));
    for entry in std::fs::read_dir(&default).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("flash-sale-") && !entry.file_type().unwrap().is_dir(),
            "state in {default:?}: {name}"
        );
    }
    assert!(walk(tmp.path()).is_empty(), "state left behind: {:?}", walk(tmp.path()));
}

/// The demo's files never enter the lock namespace: while the buyers run, the lock directory holds
/// nothing but lock files, and a held lock named like the old state directory
/// (`flash-sale-<pid of the demo>`) does not get in the demo's way, nor the demo in its.
#[test]
fn the_demo_state_stays_out_of_the_lock_namespace() {
    let d = LockDir::new();
    std::fs::create_dir(&d.dir).unwrap();
    let tmp = d.tmp.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let url = d.url();
    // The shell learns its pid, waits for a line, then becomes the demo: the pid is known first.
    let mut c = std::process::Command::new("sh");
    c.args(["-c", "read go; exec \"$0\" \"$@\"", cli_support::BIN]);
    c.args(["demo", "flash-sale", "-u", &url, "--buyers", "2", "--stock", "1", "--think-ms", "1500"]);
    c.env_remove("INTERLOCK_URL").env_remove("INTERLOCK_LOG").env("TMPDIR", &tmp);
    let mut demo = Proc::spawn(c);
    let old_style = format!("flash-sale-{}", demo.pid());
    let (mut holder, _) = hold(&["-u", &url, &old_style]);
    demo.send("go\n");
    demo.close_stdin();

    // Wait until a buyer holds the lock: the state directory exists then.
    let deadline = Instant::now() + cli_support::LONG;
    loop {
        assert!(demo.running(), "the demo ended early: {}", demo.stderr());
        assert!(Instant::now() < deadline, "no buyer took the lock; demo stderr: {}", demo.stderr());
        let st = run(&["status", "-u", &url, "flash-sale"]);
        if st.stdout.contains("held") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut listed: Vec<String> = walk(&d.dir).iter().map(|p| p.to_string_lossy().into_owned()).collect();
    listed.sort();
    let mut expected = vec!["flash-sale".to_owned(), ".flash-sale.fence".to_owned(), old_style.clone()];
    expected.push(format!(".{old_style}.fence"));
    expected.sort();
    assert_eq!(listed, expected, "only lock files in the lock directory");
    let state = walk(&tmp);
    assert!(state.iter().any(|p| p.to_string_lossy().starts_with('.')), "the state lives in $TMPDIR: {state:?}");

    assert!(demo.wait().success(), "{}", demo.stderr());
    assert!(demo.all_stdout().contains("sold:     1"), "{}", demo.all_stdout());
    assert!(walk(&tmp).is_empty(), "state left behind: {:?}", walk(&tmp));
    // The old-style lock is untouched and still held.
    assert!(exists(&d.path(&old_style)));
    let st = run(&["status", "-u", &url, &old_style]);
    assert!(st.stdout.contains(&format!("held exclusive by pid {}", holder.pid())), "{}", st.stdout);
    holder.close_stdin();
    assert!(holder.wait().success());
}

/// `demo flash-sale -u redis://...` on a namespace of the test binary's private `redis-server`:
/// the stock is a plain `count` key (and the sales a list) in the same Redis, under the run's
/// own namespace, and nothing is written to `$TMPDIR`.
#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use interlock_testkit::servers::redis::{self, RedisNs};

    /// The namespace's URL, with its key prefix.
    fn url(ns: &RedisNs<'_>) -> String {
        format!("{}?prefix={}", ns.url(), ns.prefix)
    }

    /// `interlock demo flash-sale -u URL EXTRA...` with a private, empty `$TMPDIR` that must stay
    /// empty.
    fn flash_sale(ns: &RedisNs<'_>, extra: &[&str]) -> Out {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cli_support::interlock();
        c.env("TMPDIR", tmp.path()).args(["demo", "flash-sale", "-u", &url(ns)]).args(extra);
        let out = cli_support::output(c);
        assert!(walk(tmp.path()).is_empty(), "files in $TMPDIR: {:?}", walk(tmp.path()));
        out
    }

    /// The keys left in the namespace's database: the run's `count` and `sales` are gone.
    fn assert_keys_removed(ns: &RedisNs<'_>, locked: bool) {
        let fence = format!("{}:fence", interlock::redis::side_key_base(&ns.prefix, "flash-sale"));
        let expected = if locked { vec![fence] } else { Vec::new() };
        assert_eq!(ns.keys().unwrap(), expected, "only the lock's fencing counter stays");
    }

    #[test]
    fn with_the_lock_the_buyers_sell_exactly_the_stock() {
        let Some(server) = redis::shared() else { return };
        for stock in [1, 3] {
            let ns = server.namespace();
            let out = flash_sale(&ns, &["--buyers", "8", "--stock", &stock.to_string()]);
            out.succeeds();
            assert_eq!(field(&out, "sold"), stock, "{}", out.stdout);
            assert_eq!(field(&out, "oversold"), 0);
            assert_eq!(field(&out, "left"), 0);
            let key = format!("stock:    key \"{}interlock-demo:flash-sale:", ns.prefix);
            assert!(out.stdout.contains(&key), "the summary names the stock key: {}", out.stdout);
            assert!(out.stdout.contains(&ns.url()), "the summary names the URL: {}", out.stdout);
            assert_keys_removed(&ns, true);
        }
    }

    /// On a Redis Cluster the stock stays in files (the demo's plain connection does not speak
    /// the cluster protocol), and the lock still sells exactly the stock.
    #[test]
    fn on_a_cluster_the_stock_is_kept_in_files() {
        let Some(cluster) = interlock_testkit::servers::redis_cluster::RedisCluster::start_or_skip(3) else { return };
        let out = run(&["demo", "flash-sale", "-u", &cluster.url(), "--buyers", "6", "--stock", "2"]);
        out.succeeds();
        assert_eq!(field(&out, "sold"), 2, "{}", out.stdout);
        assert_eq!(field(&out, "oversold"), 0);
        assert!(!out.stdout.contains("interlock-demo:flash-sale:"), "no stock key in the cluster: {}", out.stdout);
    }

    #[test]
    fn without_the_lock_the_buyers_oversell() {
        let Some(server) = redis::shared() else { return };
        let ns = server.namespace();
        // 16 buyers that each think 200 ms between GET and SET: all of them read the count before
        // any writes it back, even on a loaded machine.
        let out = flash_sale(&ns, &["--buyers", "16", "--stock", "1", "--no-lock", "--think-ms", "200"]);
        out.succeeds();
        let sold = field(&out, "sold");
        assert!(sold > 1, "without a lock 16 buyers should oversell a stock of 1: {}", out.stdout);
        assert_eq!(field(&out, "oversold"), sold - 1);
        assert!(out.stdout.contains("as expected without a lock"), "{}", out.stdout);
        assert_keys_removed(&ns, false);
    }

    /// While the buyers run, the stock is the plain string key `PREFIX...:count` in the lock's
    /// database, next to the lock's own key `PREFIXflash-sale`; both go when the run ends.
    #[test]
    fn the_stock_is_a_plain_count_key_next_to_the_lock() {
        let Some(server) = redis::shared() else { return };
        let ns = server.namespace();
        let mut c = cli_support::interlock();
        let tmp = tempfile::tempdir().unwrap();
        c.env("TMPDIR", tmp.path()).args(["demo", "flash-sale", "-u", &url(&ns)]).args([
            "--buyers",
            "2",
            "--stock",
            "1",
            "--think-ms",
            "1500",
        ]);
        let mut demo = Proc::spawn(c);
        let lock_key = format!("{}flash-sale", ns.prefix);
        let count_prefix = format!("{}interlock-demo:flash-sale:", ns.prefix);
        let deadline = Instant::now() + cli_support::LONG;
        let count = loop {
            assert!(demo.running(), "the demo ended early: {}", demo.stderr());
            assert!(Instant::now() < deadline, "no buyer took the lock: {:?}", ns.keys().unwrap());
            let keys = ns.keys().unwrap();
            let count = keys.iter().find(|k| k.starts_with(&count_prefix) && k.ends_with(":count"));
            if let (Some(count), true) = (count, keys.contains(&lock_key)) {
                break count.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(ns.cmd(&["TYPE", &count]).unwrap().text().as_deref(), Some("string"));
        let value = ns.cmd(&["GET", &count]).unwrap().text().unwrap();
        assert!(value == "1" || value == "0", "{count} holds {value:?}");
        assert!(demo.wait().success(), "{}", demo.stderr());
        assert!(demo.all_stdout().contains("sold:     1"), "{}", demo.all_stdout());
        assert!(demo.all_stdout().contains(&format!("{count:?}")), "{}", demo.all_stdout());
        assert_keys_removed(&ns, true);
        assert!(walk(tmp.path()).is_empty());
    }
}
