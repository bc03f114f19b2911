//! The progress indicator on stderr: one line, redrawn in place with the elapsed time, when stderr
//! is a terminal; plain lines otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

/// Shows what the bench is doing.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    state: Arc<StdMutex<(String, Instant)>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts the indicator (a redraw every 200 ms on a terminal).
    pub fn start() -> Progress {
        let tty = std::io::stderr().is_terminal();
        let state = Arc::new(StdMutex::new((String::new(), Instant::now())));
        let ticker = tty.then(|| {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    draw(&state);
                }
            })
        });
        Progress { tty, state, ticker }
    }

    /// Says what the bench does now.
    pub fn step(&self, what: impl Into<String>) {
        let what = what.into();
        if self.tty {
            *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (what, Instant::now());
            draw(&self.state);
        } else {
            eprintln!("interlock bench: {what}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[2K").and_then(|()| err.flush());
        }
    }
}

fn draw(state: &StdMutex<(String, Instant)>) {
    let (what, since) = state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if what.is_empty() {
        return;
    }
    let mut err = std::io::stderr().lock();
    let line = format!("\r\x1b[2Kinterlock bench: {what} … {:.1} s", since.elapsed().as_secs_f64());
    let _ = err.write_all(line.as_bytes()).and_then(|()| err.flush());
}
