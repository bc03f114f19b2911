//! `interlock demo flash-sale`: many buyer processes race for a small stock kept in plain files,
//! or with `-u redis://...` in a plain `count` key of the same Redis. With the lock they sell
//! exactly the stock; with `--no-lock` they oversell.
//!
//! The parent keeps the stock in a fresh private temporary directory (in `$TMPDIR`, never in the
//! lock directory, so the demo's files can never collide with a lock), or on `redis://` in the
//! keys `count` and `sales` under a namespace of the run's own in the lock's Redis
//! ([`redis_stock`]). It starts every buyer (this same binary, re-executed with the hidden
//! `demo-buyer` subcommand), waits until each has connected and said `ready`, then closes all
//! their stdins at once so that they start together. Each buyer takes the `flash-sale` mutex,
//! reads the stock, thinks for a few milliseconds, and if anything is left, writes the stock minus
//! one and records one sale (a line of the `sales` file, an entry of the `sales` list). The run's
//! files or keys are removed at the end.

#[cfg(feature = "redis")]
mod redis_stock;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::acquire;
use crate::exit::{self, Failure, Outcome};
use crate::hold;

/// The lock every buyer takes.
pub const LOCK_NAME: &str = "flash-sale";
/// How long a buyer may take to connect and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `interlock demo SCENARIO`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The demo scenarios.
#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// B buyer processes race for a stock of S items kept in plain files (on redis://, in a plain
    /// `count` key of the same Redis); the lock keeps them from overselling
    #[command(after_help = "Exit status: 0 when the run behaved as expected (exactly the stock sold with the lock; \
                            with --no-lock, overselling is the expected demonstration), 1 if the lock let buyers \
                            oversell, otherwise as listed in `interlock --help`.")]
    FlashSale(FlashSaleArgs),
}

/// Flags of `interlock demo flash-sale`.
#[derive(Args, Debug)]
pub struct FlashSaleArgs {
    /// Lock URL [default: $INTERLOCK_URL, else file://]
    #[arg(short = 'u', long, value_name = "URL")]
    pub url: Option<String>,

    /// Items in stock
    #[arg(long, value_name = "S", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub stock: u64,

    /// Buyer processes, started at the same instant
    #[arg(long, value_name = "B", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub buyers: u32,

    /// Let the buyers race without the lock (to watch them oversell)
    #[arg(long)]
    pub no_lock: bool,

    /// How long each buyer thinks between reading the stock and writing it back, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub think_ms: u64,
}

/// Flags of the hidden `demo-buyer` subcommand (the lock URL comes in `$INTERLOCK_URL`, so that a
/// password never shows in the process list).
#[derive(Args, Debug)]
pub struct BuyerArgs {
    /// The state directory holding `stock` and `sales`
    #[arg(long, value_name = "DIR", required_unless_present = "redis_ns")]
    pub state: Option<PathBuf>,

    /// Or: the key namespace of the keys `count` and `sales` in the lock's Redis
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "state")]
    pub redis_ns: Option<String>,

    /// Think time in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub think_ms: u64,

    /// Do not take the lock
    #[arg(long)]
    pub no_lock: bool,
}

/// Runs a demo scenario.
///
/// # Errors
///
/// As [`flash_sale`].
pub async fn demo(args: DemoArgs) -> Outcome {
    match args.scenario {
        Scenario::FlashSale(a) => flash_sale(a).await,
    }
}

/// The flash sale: prints a summary on stdout; 0 when the run behaved as expected.
///
/// # Errors
///
/// 1 when buyers oversold (or lost a sale) despite the lock; the library's code for a bad URL or
/// an unusable backend; 74 when the state files cannot be used or the stock key holds no count;
/// 69 when the Redis of the stock fails; a failing buyer's own code.
pub async fn flash_sale(args: FlashSaleArgs) -> Outcome {
    let url = acquire::resolve_url(args.url.as_deref());
    let provider = acquire::connect(&url).await?;
    let (mut stock, state) = Stock::create(&url, &provider).await?;
    let sale = sell(&args, &url, &mut stock).await;
    let removed = stock.remove().await;
    drop(state);
    let Sale { sold, left, failed, elapsed } = sale?;
    removed?;

    let expected = args.stock.min(u64::from(args.buyers));
    let oversold = sold.saturating_sub(args.stock);
    let locking = if args.no_lock { "none (--no-lock)".to_owned() } else { format!("mutex {LOCK_NAME:?}") };
    let kept = stock.describe().map(|d| format!("  stock:    {d}\n")).unwrap_or_default();
    let summary = format!(
        "flash sale: {buyers} buyers, stock {stock}\n  url:      {url}\n{kept}  locking:  {locking}\n  sold:     {sold}\n  \
         oversold: {oversold}\n  left:     {left}\n  elapsed:  {ms} ms\n",
        buyers = args.buyers,
        stock = args.stock,
        url = provider.url(),
        ms = elapsed.as_millis(),
    );
    print(&summary)?;

    if let Some(&code) = failed.first() {
        return Err(Failure::new(
            code,
            format!("{} of {} buyers failed (see their messages above)", failed.len(), args.buyers),
        ));
    }
    if args.no_lock {
        let verdict = if oversold > 0 {
            format!("as expected without a lock: {sold} sales of {} items, oversold by {oversold}\n", args.stock)
        } else {
            "this run happened not to oversell without a lock; races depend on timing (try more buyers)\n".to_owned()
        };
        print(&verdict)?;
        return Ok(0);
    }
    if sold != expected {
        let note = if provider.capabilities().cross_process {
            ""
        } else {
            " (the buyers are separate processes, which this backend cannot exclude)"
        };
        return Err(Failure::new(
            1,
            format!("the lock did not protect the stock: sold {sold}, expected {expected}, oversold {oversold}{note}"),
        ));
    }
    print(&format!("OK: the lock made the buyers sell exactly {sold} of {} items\n", args.stock))?;
    Ok(0)
}

/// What a sale ended with.
#[derive(Debug)]
struct Sale {
    sold: u64,
    left: u64,
    /// The exit codes of the buyers that failed.
    failed: Vec<u8>,
    elapsed: Duration,
}

/// Starts the buyers on `stock`, lets them go together, waits for them all, and counts.
async fn sell(args: &FlashSaleArgs, url: &str, stock: &mut Stock) -> Result<Sale, Failure> {
    stock.fill(args.stock).await?;
    let exe = std::env::current_exe().map_err(|e| Failure::io("cannot find the interlock executable", e))?;
    let mut buyers = Vec::new();
    for _ in 0..args.buyers {
        let mut cmd = Command::new(&exe);
        cmd.arg("demo-buyer").args(stock.buyer_args()).arg("--think-ms").arg(args.think_ms.to_string());
        if args.no_lock {
            cmd.arg("--no-lock");
        }
        cmd.env("INTERLOCK_URL", url).stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true);
        buyers.push(cmd.spawn().map_err(|e| Failure::io("cannot start a buyer", e))?);
    }
    let gates = wait_ready(&mut buyers).await?;

    let start = Instant::now();
    drop(gates); // every buyer's stdin closes now: go
    let mut failed = Vec::new();
    for buyer in &mut buyers {
        let status = buyer.wait().await.map_err(|e| Failure::io("cannot wait for a buyer", e))?;
        if !status.success() {
            failed.push(exit::child_code(status));
        }
    }
    let elapsed = start.elapsed();
    Ok(Sale { sold: stock.sales().await?, left: stock.read().await?, failed, elapsed })
}

/// Waits until every buyer says `ready`, and hands back their stdins (the start gates).
async fn wait_ready(buyers: &mut [Child]) -> Result<Vec<ChildStdin>, Failure> {
    let mut gates = Vec::with_capacity(buyers.len());
    for buyer in buyers.iter_mut() {
        let (Some(stdin), Some(stdout)) = (buyer.stdin.take(), buyer.stdout.take()) else {
            return Err(Failure::new(exit::IO_ERROR, "a buyer has no stdin or stdout pipe"));
        };
        let mut lines = BufReader::new(stdout).lines();
        match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.trim() == "ready" => gates.push(stdin),
            _ => {
                // The buyer said why on stderr (inherited); report its exit code if it has one.
                drop(stdin);
                let status = tokio::time::timeout(Duration::from_secs(5), buyer.wait()).await;
                let code = match status {
                    Ok(Ok(s)) if !s.success() => exit::child_code(s),
                    _ => exit::UNAVAILABLE,
                };
                return Err(Failure::new(code, "a buyer could not get ready (see its message above)"));
            }
        }
    }
    Ok(gates)
}

/// One buyer (the hidden `demo-buyer` subcommand).
///
/// # Errors
///
/// The library's code for lock errors (75 if the lock was lost), 74 for the state files.
pub async fn buyer(args: BuyerArgs) -> Outcome {
    let url = acquire::resolve_url(None);
    let provider = acquire::connect(&url).await?;
    let mut stock = Stock::open(&url, args.state, args.redis_ns).await?;
    let lock_err = |e: interlock::Error| Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
    let mutex = provider.mutex(LOCK_NAME).map_err(lock_err)?;
    print("ready\n")?;
    let _ = hold::stdin_closed().await;

    let guard = if args.no_lock { None } else { Some(mutex.lock().await.map_err(lock_err)?) };
    let left = stock.read().await?;
    tokio::time::sleep(Duration::from_millis(args.think_ms)).await;
    if left > 0 {
        stock.write(left - 1).await?;
        stock.record_sale(&format!("pid {} bought 1 of {left}", std::process::id())).await?;
    }
    if let Some(guard) = guard {
        guard.release().await.map_err(lock_err)?;
    }
    Ok(0)
}

/// Where a run keeps its stock and its sales.
#[derive(Debug)]
enum Stock {
    /// The files `stock` and `sales` in the run's private directory (every backend but redis).
    Files(PathBuf),
    /// The keys `count` and `sales` under the run's namespace in the lock's own Redis.
    #[cfg(feature = "redis")]
    Redis(redis_stock::RedisStock),
}

impl Stock {
    /// The parent's: a fresh private directory (removed when the [`StateDir`] is dropped), or on
    /// `redis://` a fresh namespace of the lock's Redis. The other Redis forms (`rediss://`,
    /// `redis+cluster://`) keep the stock in files: the demo's plain connection speaks neither TLS
    /// nor the cluster protocol.
    async fn create(url: &str, provider: &interlock::Provider) -> Result<(Stock, Option<StateDir>), Failure> {
        #[cfg(feature = "redis")]
        if provider.backend() == "redis" && url.starts_with("redis://") {
            let ns = redis_stock::new_namespace(url)?;
            return Ok((Stock::Redis(redis_stock::RedisStock::connect(url, &ns).await?), None));
        }
        let _ = (url, provider);
        let state = StateDir::create()?;
        Ok((Stock::Files(state.path().to_owned()), Some(state)))
    }

    /// A buyer's: where its parent said.
    async fn open(url: &str, state: Option<PathBuf>, redis_ns: Option<String>) -> Result<Stock, Failure> {
        match (state, redis_ns) {
            (Some(dir), None) => Ok(Stock::Files(dir)),
            #[cfg(feature = "redis")]
            (None, Some(ns)) => Ok(Stock::Redis(redis_stock::RedisStock::connect(url, &ns).await?)),
            _ => {
                let _ = url;
                Err(Failure::usage("demo-buyer takes --state DIR, or --redis-ns NAMESPACE on a redis:// URL"))
            }
        }
    }

    /// The buyers' flags that say where the stock is.
    fn buyer_args(&self) -> Vec<OsString> {
        match self {
            Stock::Files(dir) => vec!["--state".into(), dir.into()],
            #[cfg(feature = "redis")]
            Stock::Redis(r) => vec!["--redis-ns".into(), r.namespace().into()],
        }
    }

    /// A summary line saying where the stock is, when not in files.
    fn describe(&self) -> Option<String> {
        match self {
            Stock::Files(_) => None,
            #[cfg(feature = "redis")]
            Stock::Redis(r) => Some(format!("key {:?} in the lock's Redis", r.count_key())),
        }
    }

    /// Puts `stock` items on sale, none sold yet.
    async fn fill(&mut self, stock: u64) -> Result<(), Failure> {
        match self {
            Stock::Files(dir) => {
                write_stock(&dir.join("stock"), stock)?;
                let sales = dir.join("sales");
                File::create(&sales).map_err(|e| Failure::io(format!("cannot create {}", sales.display()), e))?;
                Ok(())
            }
            #[cfg(feature = "redis")]
            Stock::Redis(r) => r.create(stock).await,
        }
    }

    async fn read(&mut self) -> Result<u64, Failure> {
        match self {
            Stock::Files(dir) => read_stock(&dir.join("stock")),
            #[cfg(feature = "redis")]
            Stock::Redis(r) => r.read().await,
        }
    }

    async fn write(&mut self, stock: u64) -> Result<(), Failure> {
        match self {
            Stock::Files(dir) => write_stock(&dir.join("stock"), stock),
            #[cfg(feature = "redis")]
            Stock::Redis(r) => r.write(stock).await,
        }
    }

    /// Records one item sold.
    async fn record_sale(&mut self, line: &str) -> Result<(), Failure> {
        match self {
            Stock::Files(dir) => {
                let sales = dir.join("sales");
                OpenOptions::new()
                    .append(true)
                    .open(&sales)
                    .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
                    .map_err(|e| Failure::io(format!("cannot record a sale in {}", sales.display()), e))
            }
            #[cfg(feature = "redis")]
            Stock::Redis(r) => r.record_sale(line).await,
        }
    }

    /// The items sold.
    async fn sales(&mut self) -> Result<u64, Failure> {
        match self {
            Stock::Files(dir) => count_sales(&dir.join("sales")),
            #[cfg(feature = "redis")]
            Stock::Redis(r) => r.sales().await,
        }
    }

    /// Removes the run's keys (the files go with their [`StateDir`]).
    async fn remove(&mut self) -> Result<(), Failure> {
        match self {
            Stock::Files(_) => Ok(()),
            #[cfg(feature = "redis")]
            Stock::Redis(r) => r.remove().await,
        }
    }
}

/// The demo's private state directory, removed when dropped: a fresh temporary directory (mode
/// 0700) in `$TMPDIR`, outside the lock directory. Its name starts with `.`, which no lock name
/// maps to on the file backend, so even a `$TMPDIR` that is the lock directory cannot make it
/// collide with a lock.
#[derive(Debug)]
struct StateDir(Option<tempfile::TempDir>, PathBuf);

impl StateDir {
    fn create() -> Result<StateDir, Failure> {
        let dir = tempfile::Builder::new().prefix(".interlock-flash-sale-").tempdir().map_err(|e| {
            Failure::io(format!("cannot create the demo's state directory in {}", std::env::temp_dir().display()), e)
        })?;
        let path = dir.path().to_owned();
        Ok(StateDir(Some(dir), path))
    }

    fn path(&self) -> &Path {
        &self.1
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.0.take().map(tempfile::TempDir::close) {
            tracing::warn!(dir = %self.1.display(), error = %e, "cannot remove the demo's state directory");
        }
    }
}

/// Width of the stock record: the stock is rewritten in place at a fixed width, so that a reader
/// racing a writer (with `--no-lock`) never sees a truncated, empty file.
const STOCK_WIDTH: usize = 20;

/// Writes the stock count in place (fixed width, no truncation).
fn write_stock(path: &Path, stock: u64) -> Result<(), Failure> {
    let record = format!("{stock:>STOCK_WIDTH$}\n");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(record.as_bytes(), 0))
        .map_err(|e| Failure::io(format!("cannot write the stock to {}", path.display()), e))
}

/// Reads the stock count.
fn read_stock(path: &Path) -> Result<u64, Failure> {
    let mut buf = [0u8; STOCK_WIDTH + 1];
    let n = File::open(path)
        .and_then(|f| f.read_at(&mut buf, 0))
        .map_err(|e| Failure::io(format!("cannot read the stock from {}", path.display()), e))?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.trim()
        .parse()
        .map_err(|_| Failure::new(exit::IO_ERROR, format!("{} holds {:?}, not a stock count", path.display(), text)))
}

/// Counts the lines of the `sales` file: one per item sold.
fn count_sales(path: &Path) -> Result<u64, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::io(format!("cannot read the sales from {}", path.display()), e))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

/// Writes `text` to stdout and flushes it.
fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| Failure::io("cannot write to stdout", e))
}
