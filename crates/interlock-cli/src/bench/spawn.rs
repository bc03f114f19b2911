//! The parent side of client processes: start N copies of this binary as `bench-client`, wait
//! until each has connected and printed `ready`, open the start barrier (close their stdins) for
//! all at once, then collect the lines they print.
//!
//! The lock URL goes to the clients in `$INTERLOCK_URL`, never in argv, so a password never shows
//! in the process list.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::exit::{self, Failure};

/// How long a client may take to start, connect and print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Running client processes.
#[derive(Debug)]
pub struct Clients {
    children: Vec<Child>,
    gates: Vec<ChildStdin>,
    /// `(client, Some(line))`, or `(client, None)` when its stdout closed.
    lines: mpsc::UnboundedReceiver<(usize, Option<String>)>,
    /// Lines received so far, per client.
    seen: Vec<Vec<String>>,
}

impl Clients {
    /// Starts `count` clients; client `i` gets `args(i)` after `bench-client`, and `url` (if any) in
    /// `$INTERLOCK_URL`. Returns once every client has printed `ready`.
    ///
    /// # Errors
    ///
    /// 74 when a process cannot be started; a client's own exit code when it fails to get ready.
    pub async fn start(
        count: usize,
        url: Option<&str>,
        args: impl Fn(usize) -> Vec<String>,
    ) -> Result<Clients, Failure> {
        let exe = std::env::current_exe().map_err(|e| Failure::io("cannot find the interlock executable", e))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let mut clients = Clients { children: Vec::new(), gates: Vec::new(), lines, seen: vec![Vec::new(); count] };
        for i in 0..count {
            let mut cmd = Command::new(&exe);
            cmd.arg("bench-client").args(args(i));
            match url {
                Some(url) => cmd.env("INTERLOCK_URL", url),
                None => cmd.env_remove("INTERLOCK_URL"),
            };
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|e| Failure::io("cannot start a bench client", e))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(Failure::new(exit::IO_ERROR, "a bench client has no stdin or stdout pipe"));
            };
            clients.children.push(child);
            clients.gates.push(stdin);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send((i, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
        }
        drop(tx);
        clients.wait_for("ready", READY_TIMEOUT).await?;
        Ok(clients)
    }

    /// Waits until every client has printed the line `marker` (other lines are kept).
    ///
    /// # Errors
    ///
    /// When a client exits or stays silent for `limit`: its exit code, or 69.
    pub async fn wait_for(&mut self, marker: &str, limit: Duration) -> Result<(), Failure> {
        let mut pending: Vec<bool> = self.seen.iter().map(|l| !l.iter().any(|x| x == marker)).collect();
        let mut left = pending.iter().filter(|&&p| p).count();
        let deadline = tokio::time::Instant::now() + limit;
        while left > 0 {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((i, Some(line)))) => {
                    if line == marker && pending[i] {
                        pending[i] = false;
                        left -= 1;
                    }
                    self.seen[i].push(line);
                }
                Ok(Some((i, None))) if pending[i] => {
                    return Err(self.failed(i, &format!("exited without printing `{marker}`")).await);
                }
                Ok(Some((_, None))) => {}
                _ => {
                    let i = pending.iter().position(|&p| p).unwrap_or(0);
                    return Err(self.failed(i, &format!("did not print `{marker}`")).await);
                }
            }
        }
        Ok(())
    }

    /// Opens the start barrier: closes every client's stdin at once.
    pub fn go(&mut self) {
        self.gates.clear();
    }

    /// Waits (at most `limit`) for every client to exit successfully and returns the lines each
    /// printed (`ready` and the other markers included).
    ///
    /// # Errors
    ///
    /// A failing client's exit code; 69 when a client is still running after `limit` (it is then
    /// killed).
    pub async fn finish(mut self, limit: Duration) -> Result<Vec<Vec<String>>, Failure> {
        self.go();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((i, Some(line)))) => self.seen[i].push(line),
                Ok(Some((_, None))) => {}
                Ok(None) => break,
                Err(_) => {
                    return Err(Failure::new(
                        exit::UNAVAILABLE,
                        format!("bench clients did not finish within {limit:?}"),
                    ));
                }
            }
        }
        for i in 0..self.children.len() {
            let status = tokio::time::timeout_at(deadline, self.children[i].wait()).await;
            match status {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => {
                    return Err(Failure::new(exit::child_code(s), "a bench client failed (see its message above)"));
                }
                Ok(Err(e)) => return Err(Failure::io("cannot wait for a bench client", e)),
                Err(_) => {
                    return Err(Failure::new(
                        exit::UNAVAILABLE,
                        format!("a bench client did not exit within {limit:?}"),
                    ));
                }
            }
        }
        Ok(std::mem::take(&mut self.seen))
    }

    /// The failure to report for client `i`, which misbehaved: its exit code if it has exited.
    async fn failed(&mut self, i: usize, what: &str) -> Failure {
        self.gates.clear();
        let code = match self.children.get_mut(i) {
            Some(child) => match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(s)) if !s.success() => exit::child_code(s),
                _ => exit::UNAVAILABLE,
            },
            None => exit::UNAVAILABLE,
        };
        Failure::new(code, format!("a bench client {what} (see its message above, if any)"))
    }
}

/// The in-process analogue of [`Clients`] for backends that cannot cross processes: runs
/// `make(i)` for `i` in `0..n`, each on its own OS thread with its own single-threaded runtime (so
/// clients are as independent as processes, and blocking sleeps are as precise), and returns their
/// results in order. Blocks the calling worker thread until all are done.
///
/// # Errors
///
/// The first client's failure; 74 when a thread or runtime cannot be started.
pub fn threads<T, F, Fut>(n: usize, make: F) -> Result<Vec<T>, Failure>
where
    T: Send,
    F: Fn(usize) -> Fut + Sync,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let make = &make;
    let run = || {
        std::thread::scope(|s| {
            let mut handles = Vec::with_capacity(n);
            for i in 0..n {
                let spawned =
                    std::thread::Builder::new().name(format!("bench-client-{i}")).spawn_scoped(s, move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| Failure::io("cannot start a runtime", e))?
                            .block_on(make(i))
                    });
                handles.push(spawned.map_err(|e| Failure::io("cannot start a bench thread", e)));
            }
            handles
                .into_iter()
                .map(|h| h?.join().unwrap_or_else(|_| Err(Failure::new(exit::IO_ERROR, "a bench thread panicked"))))
                .collect::<Result<Vec<T>, Failure>>()
        })
    };
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(run),
        Err(_) => run(),
    }
}

/// The fields of the first line of `lines` that starts with `tag`, parsed as numbers.
///
/// # Errors
///
/// 69 when there is no such line or a field is not a number.
pub fn numbers(lines: &[String], tag: &str) -> Result<Vec<u64>, Failure> {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix(tag).filter(|rest| rest.is_empty() || rest.starts_with(' ')))
        .ok_or_else(|| Failure::new(exit::UNAVAILABLE, format!("a bench client printed no `{tag}` line")))?;
    parse_numbers(line)
}

/// Every line of `lines` that starts with `tag`, its fields parsed as numbers.
///
/// # Errors
///
/// 69 when a field is not a number.
pub fn all_numbers(lines: &[String], tag: &str) -> Result<Vec<Vec<u64>>, Failure> {
    lines.iter().filter_map(|l| l.strip_prefix(tag).filter(|rest| rest.starts_with(' '))).map(parse_numbers).collect()
}

fn parse_numbers(text: &str) -> Result<Vec<u64>, Failure> {
    text.split_whitespace()
        .map(|f| f.parse().map_err(|_| Failure::new(exit::UNAVAILABLE, format!("a bench client printed {text:?}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_lines() {
        let lines: Vec<String> = ["ready", "hold 1 2", "hold 3 4", "done 7 9"].iter().map(|s| s.to_string()).collect();
        assert_eq!(numbers(&lines, "done").unwrap(), vec![7, 9]);
        assert_eq!(all_numbers(&lines, "hold").unwrap(), vec![vec![1, 2], vec![3, 4]]);
        assert!(numbers(&lines, "missing").is_err());
        assert!(numbers(&["done x".to_owned()], "done").is_err());
    }
}
