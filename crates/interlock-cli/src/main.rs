//! `interlock`: run a command under a lock on any backend (what `flock(1)` does for files), hold a
//! lock from a script, show who holds one, and watch a lock prevent a race.
//!
//! One file per job: [`exit`] (exit codes and one-line errors), [`acquire`] (the shared flags),
//! [`signals`], and one file per subcommand.

mod acquire;
mod bench;
mod demo;
mod exit;
mod guard;
mod hold;
mod run;
mod run_args;
mod signals;
mod status;
mod tree;
mod tty;
mod worker;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Run commands under a lock, on files or the coordination systems you already run.
#[derive(Parser, Debug)]
#[command(name = "interlock", version, after_help = exit::HELP, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Take a lock, run COMMAND while holding it, release it when COMMAND exits
    #[command(
        override_usage = "interlock run [-u URL] [-s|--shared] [-n|--nonblock] [-w|--timeout SECS] \
                          [-E|--conflict-exit-code N] [--permits N] [--lease DUR] [--kill-after DUR] \
                          NAME -- COMMAND [ARGS...]\n       \
                          interlock run [OPTIONS] -- NAME -- COMMAND [ARGS...]",
        after_help = concat!(
            "A NAME that starts with `-` goes after a first `--`, followed by another `--` and COMMAND: \
             interlock run -n -- -rf -- ./cleanup.sh. A NAME before the first `--` leaves everything after it \
             to COMMAND, `--` included: interlock run x -- grep -- -v file.\n\n",
            "COMMAND gets INTERLOCK_NAME and INTERLOCK_TOKEN (the fencing token) in its environment. The lock \
             is released only after COMMAND and every process it left behind have exited. COMMAND runs in a \
             process group of its own; the signals interlock gets (HUP, INT, QUIT, TERM, USR1, USR2, ALRM, \
             TSTP, CONT) are passed on to each process of COMMAND once, with job control as in a shell; \
             signals ignored when interlock started stay ignored; SIGKILL cannot be passed on (see docs/run.md). On the file backend COMMAND inherits \
             the lock's descriptor, as with flock(1). If the lock is lost while COMMAND runs, every process of \
             it gets SIGTERM, then SIGKILL after --kill-after, and interlock exits 75; COMMAND never runs \
             past the lock's lease, even when interlock itself is paused (a guardian stops it, and kills it \
             when the lease ends).\n\n",
            exit::help_text!()
        )
    )]
    Run(run::RunArgs),

    /// Take a lock, print `token=N` on stdout, hold it until stdin closes or SIGINT/SIGTERM
    #[command(
        override_usage = "interlock hold [-u URL] [-s|--shared] [-n|--nonblock] [-w|--timeout SECS] \
                          [-E|--conflict-exit-code N] [--permits N] [--lease DUR] NAME",
        after_help = concat!(
            "Prints one line, token=N (or token=none), once the lock is held. Releases the lock and exits 0 \
             when stdin reaches end of file or on SIGINT, SIGTERM or SIGHUP; exits 75 at once if the lock is \
             lost.\n\n",
            exit::help_text!()
        )
    )]
    Hold(hold::HoldArgs),

    /// Show whether each lock is held, and by whom where the backend can tell
    #[command(override_usage = "interlock status [-u URL] NAME...")]
    Status(status::StatusArgs),

    /// Measure a backend: latency, handoff, throughput, fairness, against its floor
    #[command(
        override_usage = "interlock bench [-u URL] [WORKLOAD...] [--clients 2,8,32] [--duration SECS] \
                          [--handoffs N] [--locks N] [--waiters W] [--waiter-kind process|task] \
                          [--mode mutex|read|write|semaphore:N] [--json] [--plot FILE.svg] [--start-server]",
        after_help = bench::HELP
    )]
    Bench(bench::BenchArgs),

    /// One client of `bench` (internal)
    #[command(hide = true)]
    BenchClient(bench::client::ClientArgs),

    /// Watch a lock prevent a race
    Demo(demo::DemoArgs),

    /// One buyer of `demo flash-sale` (internal)
    #[command(hide = true)]
    DemoBuyer(demo::BuyerArgs),

    /// Increment a counter file under a lock from T threads (test and bench helper)
    #[command(hide = true)]
    Worker(worker::WorkerArgs),

    /// Kill a command's process group when `interlock run` dies (internal)
    #[command(hide = true)]
    Guard(guard::GuardArgs),
}

/// Parses the command line (clap errors exit 64, `--help` and `--version` 0), sets up logging, runs
/// the subcommand and turns its outcome into the exit code.
fn main() -> ExitCode {
    // `run` may also take its NAME after `--` (see run_args), which clap needs to be told.
    let cli = run_args::allow_name_after_separator(Cli::command()).after_help(format!(
        "{}\n\n{}",
        exit::backends_help(),
        exit::HELP
    ));
    let matches = match cli.try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return exit::clap_error(e),
    };
    let run_name_given = run_args::name_given(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return exit::clap_error(e.format(&mut Cli::command())),
    };
    init_tracing();
    let outcome = match cli.command {
        // The worker uses the blocking API, which must not run inside an async runtime.
        Command::Worker(args) => worker::worker(args),
        // The guardian stays tiny: no async runtime.
        Command::Guard(args) => guard::guard(args),
        // A bench client runs on its own single-threaded runtime, so hundreds of them stay light.
        Command::BenchClient(args) => bench::client::main(args),
        // `run` and `hold` wait on one lock and one command: one thread does, and `run` forks a
        // smaller process for it. Nothing else needs that thread while it waits for the lock, so
        // a wait without a deadline may block it in the kernel (file backend).
        other @ (Command::Run(_) | Command::Hold(_)) => {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    interlock::blocking::on_waiting_thread(|| runtime.block_on(dispatch(other, run_name_given)))
                }
                Err(e) => Err(exit::Failure::io("cannot start the async runtime", e)),
            }
        }
        other => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(dispatch(other, run_name_given)),
            Err(e) => Err(exit::Failure::io("cannot start the async runtime", e)),
        },
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}

/// Runs an async subcommand; `run_name_given` says whether `run`'s NAME came before `--` (see
/// [`run_args`]). (The runtime is built by hand rather than with `#[tokio::main]`, so that a
/// failure to start it is an error message, not a panic.)
///
/// Before it returns, the cleanups still running (the undo of a wait that timed out, the release of
/// a dropped lock) get up to [`acquire::CLEANUP_LIMIT`] to land: the runtime drops them when the
/// process exits.
async fn dispatch(command: Command, run_name_given: bool) -> exit::Outcome {
    let outcome = dispatch_now(command, run_name_given).await;
    interlock::finish_cleanups(acquire::CLEANUP_LIMIT).await;
    outcome
}

async fn dispatch_now(command: Command, run_name_given: bool) -> exit::Outcome {
    match command {
        Command::Run(args) => run::run(args.split_name_and_command(run_name_given)?).await,
        Command::Hold(args) => hold::hold(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Bench(args) => bench::bench(args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::DemoBuyer(args) => demo::buyer(args).await,
        // `main` runs the worker outside the runtime; it never comes here.
        Command::Worker(_) | Command::BenchClient(_) | Command::Guard(_) => {
            Err(exit::Failure::usage("this subcommand cannot run inside an async runtime"))
        }
    }
}

/// Logs go to stderr, filtered by `$INTERLOCK_LOG` (default `warn`).
fn init_tracing() {
    let filter = EnvFilter::try_from_env("INTERLOCK_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // Fails only if a subscriber is already set, which cannot happen here.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
