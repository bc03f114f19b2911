//! `interlock status NAME...`: held or free, and by whom where the backend can tell.

use std::io::Write;

use clap::Args;
use interlock::{HeldMode, LockStatus};

use crate::acquire;
use crate::exit::{self, Failure, Outcome};

/// Flags of `interlock status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Lock URL [default: $INTERLOCK_URL, else file://]
    #[arg(short = 'u', long, value_name = "URL")]
    pub url: Option<String>,

    /// Lock names
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

/// Prints one line per name. A name the backend cannot report on gets one line on stderr; the
/// others are still shown, and the exit code is that of the first failure (0 if none).
///
/// # Errors
///
/// A [`Failure`] when the backend cannot be connected to.
pub async fn status(args: StatusArgs) -> Outcome {
    let provider = acquire::connect_shared(&acquire::resolve_url(args.url.as_deref())).await?;
    let mut code = 0;
    for name in &args.names {
        match provider.status(name).await {
            Ok(st) => {
                let line = format!("{}: {}\n", exit::one_line(name), describe(&st));
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| Failure::io("cannot write to stdout", e))?;
            }
            Err(e) => {
                let failure = Failure::from_lock(&e, exit::CONFLICT_DEFAULT);
                exit::say(&failure.message);
                if code == 0 {
                    code = failure.code;
                }
            }
        }
    }
    Ok(code)
}

/// One status as text: `free`, `held exclusive by ...`, `held shared (2) by ...`,
/// `2 of 3 permits held by ...`, then the waiters and the location where known.
pub fn describe(st: &LockStatus) -> String {
    let holders = if st.holders.is_empty() { String::new() } else { format!(" by {}", st.holders.join(", ")) };
    let mut text = match (st.permits, st.held) {
        (Some(permits), None) => format!("free (semaphore, 0 of {permits} permits held)"),
        (Some(permits), Some(HeldMode::Shared(n))) => format!("{n} of {permits} permits held{holders}"),
        (Some(permits), Some(_)) => format!("{permits} permits, held{holders}"),
        (None, None) => "free".to_owned(),
        (None, Some(HeldMode::Exclusive)) => format!("held exclusive{holders}"),
        (None, Some(HeldMode::Shared(n))) => format!("held shared ({n}){holders}"),
        (None, Some(_)) => format!("held{holders}"),
    };
    if let Some(w) = st.waiters.filter(|&w| w > 0) {
        text.push_str(&format!(", {w} waiting"));
    }
    if let Some(location) = &st.location {
        text.push_str(&format!(" [{location}]"));
    }
    exit::one_line(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_each_state() {
        let mut st = LockStatus::free();
        assert_eq!(describe(&st), "free");
        st.held = Some(HeldMode::Exclusive);
        st.holders = vec!["pid 4242 (exclusive)".into()];
        st.location = Some("/tmp/l/deploy".into());
        assert_eq!(describe(&st), "held exclusive by pid 4242 (exclusive) [/tmp/l/deploy]");
        st.held = Some(HeldMode::Shared(2));
        st.holders = vec!["pid 1".into(), "pid 2".into()];
        st.location = None;
        st.waiters = Some(1);
        assert_eq!(describe(&st), "held shared (2) by pid 1, pid 2, 1 waiting");
        st.permits = Some(3);
        st.waiters = None;
        assert_eq!(describe(&st), "2 of 3 permits held by pid 1, pid 2");
    }
}
