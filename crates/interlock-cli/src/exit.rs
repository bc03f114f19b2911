//! Exit codes, and how failures become exactly one line on stderr.
//!
//! The codes follow `flock(1)` and the shells for the command's own status, and `sysexits.h` for
//! interlock's own failures, so scripts can branch on them.

use std::process::ExitCode;

use interlock::Error;

/// The default exit code when `-n` found the lock held or `-w` timed out (override with `-E`).
pub const CONFLICT_DEFAULT: u8 = 1;
/// Bad flags, a bad name, URL or argument (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// The backend is unavailable or unusable: server down, lock directory unusable, authentication
/// refused, backend not built into this binary (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// interlock's own local I/O failed: writing its output, the demo's state files, the worker's
/// counter file (`EX_IOERR`).
pub const IO_ERROR: u8 = 74;
/// The lock was lost while held (`EX_TEMPFAIL`): the critical section may not have been exclusive.
pub const LOCK_LOST: u8 = 75;
/// `run`: the command exists but could not be executed (as in the shells).
pub const NOT_EXECUTABLE: u8 = 126;
/// `run`: the command was not found (as in the shells).
pub const NOT_FOUND: u8 = 127;
/// `run`: the command died of signal N: the exit code is `SIGNAL_BASE + N`.
pub const SIGNAL_BASE: u8 = 128;

/// The exit-status and environment table shown after `--help`, as a literal for `concat!`.
macro_rules! help_text {
    () => {
        "\
Exit status:
  (command's own)  run: the command's exit status
  128+N            run: the command died of signal N
  1, or -E N       the lock is held elsewhere (-n) or the wait timed out (-w)
  64               usage error: bad flags, lock name, URL or argument; run without a command
  69               backend unavailable or unusable (server down, lock directory unusable, backend not built)
  74               local I/O error (writing output, the demo's state files)
  75               the lock was lost while held
  126              run: the command could not be executed
  127              run: the command was not found

Environment:
  INTERLOCK_URL    the lock URL when -u is not given (default: file://, the private directory
                   /tmp/interlock-$UID, the same for every session of a user: login shell, cron,
                   service). To share locks between users or services, name a directory they can
                   all use, e.g. file:///var/lock/app after install -d -m 2770 -g app /var/lock/app.
                   A systemd service with PrivateTmp=yes has its own /tmp and must name one too.
  INTERLOCK_LOG    log filter for messages on stderr (default: warn), e.g. debug or interlock=trace"
    };
}
pub(crate) use help_text;

/// The exit-status table shown after `--help`.
pub const HELP: &str = help_text!();

/// The URL forms of every backend, from the library's registry, for `interlock --help`.
pub fn backends_help() -> String {
    use interlock::backends::Availability;
    let mut text = String::from("Lock URLs (-u, $INTERLOCK_URL):");
    for b in interlock::backends::backends() {
        let status = match b.availability {
            Availability::Built => String::new(),
            Availability::FeatureOff => {
                format!(" (not in this build: cargo feature `{}`)", b.feature.unwrap_or(b.name))
            }
            _ => " (planned)".to_owned(),
        };
        text.push_str(&format!("\n  {:<48} {}{status}", b.url_form, b.title));
    }
    text.push_str("\n  every URL also takes ?connect_timeout=DUR (default 10s)");
    text
}

/// A failure of an interlock command: its exit code and its one-line message.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The message, without the `interlock: ` prefix.
    pub message: String,
}

/// What a command returns: `Ok(code)` after it did its job (e.g. the command's own status),
/// `Err(failure)` when interlock itself failed.
pub type Outcome = Result<u8, Failure>;

impl Failure {
    /// A failure with an explicit code.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }

    /// A usage error (exit 64).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::new(USAGE, message)
    }

    /// A local I/O failure (exit 74).
    pub fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        Failure::new(IO_ERROR, format!("{context}: {err}"))
    }

    /// A library error, with `conflict` as the code for a timeout.
    pub fn from_lock(err: &Error, conflict: u8) -> Self {
        Failure::new(code_for(err, conflict), err.to_string())
    }

    /// Prints the message (one line) and returns the exit code.
    pub fn report(self) -> ExitCode {
        say(&self.message);
        ExitCode::from(self.code)
    }
}

/// The exit code for a library error; `conflict` is used for [`Error::Timeout`].
pub fn code_for(err: &Error, conflict: u8) -> u8 {
    if err.is_usage() {
        USAGE
    } else if err.is_timeout() {
        conflict
    } else if err.is_lock_lost() {
        LOCK_LOST
    } else {
        // Unavailable, Auth, Backend, Io, Unsupported, and anything added later.
        UNAVAILABLE
    }
}

/// Prints `interlock: <message>` on stderr as exactly one line.
pub fn say(message: &str) {
    eprintln!("interlock: {}", one_line(message));
}

/// Makes `text` one line: control characters (a newline in a lock name, say) are escaped, and a
/// leading `interlock: ` (some library errors name interlock itself as the backend) is dropped so
/// the prefix is not doubled.
pub fn one_line(text: &str) -> String {
    let text = text.strip_prefix("interlock: ").unwrap_or(text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A lock name as it appears in our own messages: quoted, escaped, and shortened when long.
pub fn show_name(name: &str) -> String {
    const MAX: usize = 80;
    let mut end = name.len().min(MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let shown = format!("{:?}", &name[..end]);
    if end < name.len() { format!("{shown}…") } else { shown }
}

/// The exit code for a finished child process: its own code, or `128 + N` for signal N.
pub fn child_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        // Exit codes are 0..=255 on Unix; anything else cannot happen, but never panic.
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    match status.signal() {
        Some(sig) => u8::try_from(i32::from(SIGNAL_BASE) + (sig & 0x7f)).unwrap_or(u8::MAX),
        None => 1,
    }
}

/// Turns a clap parse error into our conventions: `--help` and `--version` print and exit 0;
/// everything else is one line on stderr (see [`clap_message`]) and exit 64.
pub fn clap_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // Printing help can only fail when stdout is gone; nothing useful is left to do.
            let _ = err.print();
            ExitCode::SUCCESS
        }
        _ => Failure::usage(clap_message(&err)).report(),
    }
}

/// A clap error as one line, keeping everything clap says except the usage and the pointer to
/// `--help` (replaced by ` (see --help)`): the message with its indented items
/// (`the following required arguments were not provided: <NAME>`), possible values, and tips
/// (`; tip: a similar subcommand exists: 'status'`). A missing subcommand names the ones there
/// are. Passwords of URL-like words are hidden.
pub fn clap_message(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let message = if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        missing_subcommand(&text)
    } else {
        let parts: Vec<String> = text
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty() && !p.starts_with("Usage:") && !p.starts_with("For more information"))
            .map(join_paragraph)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() { "invalid arguments".to_owned() } else { parts.join("; ") }
    };
    format!("{} (see --help)", redact_words(&message))
}

/// Joins the lines of one paragraph of a clap error: `header:` then its items separated by
/// commas, `[possible values: ...]` after a space, each `tip:` after a semicolon.
fn join_paragraph(paragraph: &str) -> String {
    let mut out = String::new();
    for line in paragraph.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.strip_prefix("error:").map_or(line, str::trim_start);
        if out.is_empty() {
        } else if line.starts_with("tip:") {
            out.push_str("; ");
        } else if out.ends_with(':') || line.starts_with('[') {
            out.push(' ');
        } else {
            out.push_str(", ");
        }
        out.push_str(line);
    }
    out
}

/// The message for a command that needs a subcommand, from the help text clap rendered for it:
/// `a subcommand is needed: run, hold, ...` at the top, `demo needs a subcommand: flash-sale`.
fn missing_subcommand(help: &str) -> String {
    // `Usage: interlock demo <COMMAND>`: the words after the program name, before any `<...>`.
    let command = help
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage:"))
        .map(|usage| {
            let words: Vec<&str> =
                usage.split_whitespace().skip(1).take_while(|w| !w.starts_with(['<', '['])).collect();
            words.join(" ")
        })
        .unwrap_or_default();
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let needed =
        if command.is_empty() { "a subcommand is needed".to_owned() } else { format!("{command} needs a subcommand") };
    if subcommands.is_empty() { needed } else { format!("{needed}: {}", subcommands.join(", ")) }
}

/// Hides the password of everything that looks like `user:password@`, and the values of URL
/// options whose names look secret (`?password=...`; see [`interlock::url::redact`]): clap
/// quotes the arguments it could not place, and one may be a URL. A quoted argument is redacted
/// as a whole (a password may contain spaces), other text word by word.
pub fn redact_words(text: &str) -> String {
    let redact_if = |part: &str| if part.contains(['@', '?']) { interlock::url::redact(part) } else { part.to_owned() };
    // Split on clap's single quotes: odd parts are quoted arguments.
    text.split('\'')
        .enumerate()
        .map(
            |(i, part)| {
                if i % 2 == 1 { redact_if(part) } else { part.split(' ').map(redact_if).collect::<Vec<_>>().join(" ") }
            },
        )
        .collect::<Vec<_>>()
        .join("'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn codes_for_library_errors() {
        let timeout = Error::Timeout { name: "x".into(), waited: Duration::from_secs(1) };
        assert_eq!(code_for(&timeout, 7), 7);
        let lost = Error::LockLost { name: "x".into(), reason: "gone".into() };
        assert_eq!(code_for(&lost, 7), LOCK_LOST);
        assert_eq!(code_for(&Error::InvalidArgument("bad".into()), 7), USAGE);
        let unsupported = Error::Unsupported { backend: "interlock", operation: "redis".into() };
        assert_eq!(code_for(&unsupported, 7), UNAVAILABLE);
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("interlock: a\nb"), "a\\nb");
        assert_eq!(show_name("a\nb"), "\"a\\nb\"");
        let long = "é".repeat(100);
        assert!(show_name(&long).ends_with('…'));
        assert!(show_name(&long).len() < 100);
    }

    /// The one-line message for `interlock ARGS...`.
    fn clap_line(args: &[&str]) -> String {
        use clap::Parser;
        let err = crate::Cli::try_parse_from(std::iter::once("interlock").chain(args.iter().copied())).unwrap_err();
        let line = clap_message(&err);
        assert!(!line.contains('\n') && line.ends_with(" (see --help)"), "{line:?}");
        line
    }

    #[test]
    fn clap_errors_keep_what_clap_says_on_one_line() {
        assert_eq!(clap_line(&["hold"]), "the following required arguments were not provided: <NAME> (see --help)");
        assert_eq!(
            clap_line(&["status"]),
            "the following required arguments were not provided: <NAME>... (see --help)"
        );
        assert_eq!(clap_line(&[]), "a subcommand is needed: run, hold, status, bench, demo (see --help)");
        assert_eq!(clap_line(&["demo"]), "demo needs a subcommand: flash-sale (see --help)");
        let line = clap_line(&["stauts"]);
        assert!(line.starts_with("unrecognized subcommand 'stauts'; tip: ") && line.contains("'status'"), "{line}");
        let line = clap_line(&["bench", "nonsense"]);
        assert!(line.starts_with("invalid value 'nonsense' for '[WORKLOAD]...' [possible values: "), "{line}");
        let line = clap_line(&["hold", "-s", "--permits", "2", "x"]);
        assert_eq!(line, "the argument '--shared' cannot be used with '--permits <N>' (see --help)");
        let line = clap_line(&["hold", "--bogus", "x"]);
        assert!(line.starts_with("unexpected argument '--bogus' found; tip: "), "{line}");
        let line = clap_line(&["hold", "-u"]);
        assert_eq!(line, "a value is required for '--url <URL>' but none was supplied (see --help)");
    }

    #[test]
    fn clap_messages_hide_passwords() {
        let text = "unexpected argument 'redis://u:hunter2@h/0' found; also 'mysql//root:hunter2@db' and u@h";
        let shown = redact_words(text);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("'redis://u:***@h/0'") && shown.ends_with(" and u@h"), "{shown}");
        let spaced = redact_words("unexpected argument 'redis://u:hunter 2@h/0' found");
        assert!(!spaced.contains("hunter"), "{spaced}");
        let query = redact_words(
            "unexpected argument 'redis://h/0?lease=1s&auth_token=hunter2' found; and memory://?password=hunter2",
        );
        assert_eq!(
            query,
            "unexpected argument 'redis://h/0?lease=1s&auth_token=***' found; and memory://?password=***"
        );
    }
}
