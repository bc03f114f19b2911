//! `interlock run [OPTIONS] -- NAME -- COMMAND [ARGS...]`: a lock name that starts with `-`
//! (`-rf` is a valid name) cannot come before the first `--`, where clap would take it for a flag.
//!
//! After `--`, clap puts every word into COMMAND (the last positional), so a NAME given after it
//! arrives as the first word of COMMAND. [`allow_name_after_separator`] lets NAME be missing
//! before `--` (`interlock run NAME` stays required in practice: see
//! [`RunArgs::split_name_and_command`]), [`name_given`] tells whether it was given there, and
//! `split_name_and_command` takes it from COMMAND, with the `--` that must follow it. A NAME given
//! before `--` leaves COMMAND untouched, `--` and all (`interlock run x -- grep -- -v file`).

use std::ffi::OsString;

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::exit::Failure;
use crate::run::RunArgs;

/// The id of the lock name argument (the `name` field of `LockArgs`).
const NAME: &str = "name";
/// The id of the command argument (the `command` field of `RunArgs`).
const COMMAND: &str = "command";

/// The two forms, for messages.
const FORMS: &str = "interlock run [OPTIONS] NAME -- COMMAND [ARGS...], or for a NAME that starts with `-`, \
                     interlock run [OPTIONS] -- NAME -- COMMAND [ARGS...]";

/// Makes `run`'s NAME optional before `--` in `cli` (the whole `interlock` command), so that it
/// may come after it instead. A default value (never used: see [`name_given`]) keeps the derived
/// `RunArgs` parseable without it.
pub fn allow_name_after_separator(cli: clap::Command) -> clap::Command {
    cli.mut_subcommand("run", |run| {
        // `mut_arg` moves the argument to the end of the list, where positionals take their
        // order from: pin it (NAME first, then COMMAND).
        run.mut_arg(NAME, |name| name.required(false).default_value("").hide_default_value(true).index(1))
            .mut_arg(COMMAND, |command| command.index(2))
    })
}

/// True when the matches of the whole command line name `run`'s NAME before `--` (or are not
/// `run` at all).
pub fn name_given(matches: &ArgMatches) -> bool {
    match matches.subcommand() {
        Some(("run", run)) => run.value_source(NAME) == Some(ValueSource::CommandLine),
        _ => true,
    }
}

impl RunArgs {
    /// Puts NAME where `run` expects it. With `name_given` (NAME came before the first `--`),
    /// returns the arguments unchanged. Otherwise the first word after `--` is NAME and the next
    /// must be `--`; COMMAND is what follows it (possibly nothing, which `run` then refuses).
    ///
    /// # Errors
    ///
    /// A usage error (64) when there is no NAME, when it is not UTF-8, or when no `--` follows it.
    pub fn split_name_and_command(mut self, name_given: bool) -> Result<RunArgs, Failure> {
        if name_given {
            return Ok(self);
        }
        let mut words = std::mem::take(&mut self.command).into_iter();
        let Some(name) = words.next() else {
            return Err(Failure::usage(format!("run needs a lock NAME: {FORMS}")));
        };
        let name = name.into_string().map_err(|bad| {
            Failure::usage(format!("the lock name {bad:?} is not UTF-8; lock names are UTF-8 strings"))
        })?;
        if words.next().as_deref() != Some(std::ffi::OsStr::new("--")) {
            return Err(Failure::usage(format!(
                "after `-- NAME`, `--` and the command must follow: interlock run [OPTIONS] -- NAME -- COMMAND [ARGS...] \
                 (NAME here is {})",
                crate::exit::show_name(&name)
            )));
        }
        self.lock.name = name;
        self.command = words.collect::<Vec<OsString>>();
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses `interlock run ARGS...` as `main` does: `Ok((NAME, COMMAND))` or the usage message.
    fn parse(args: &[&str]) -> Result<(String, Vec<String>), String> {
        let argv = ["interlock", "run"].into_iter().chain(args.iter().copied());
        let matches = allow_name_after_separator(crate::Cli::command())
            .try_get_matches_from(argv)
            .map_err(|e| crate::exit::clap_message(&e))?;
        let given = name_given(&matches);
        let cli = crate::Cli::from_arg_matches(&matches).map_err(|e| crate::exit::clap_message(&e))?;
        let crate::Command::Run(args) = cli.command else { panic!("not run") };
        let args = args.split_name_and_command(given).map_err(|f| f.message)?;
        let command = args.command.iter().map(|w| w.to_string_lossy().into_owned()).collect();
        Ok((args.lock.name, command))
    }

    fn ok(name: &str, command: &[&str]) -> Result<(String, Vec<String>), String> {
        Ok((name.to_owned(), command.iter().map(|w| (*w).to_owned()).collect()))
    }

    #[test]
    fn name_before_the_separator_leaves_the_command_alone() {
        assert_eq!(parse(&["x", "--", "true"]), ok("x", &["true"]));
        assert_eq!(parse(&["-n", "x", "--", "grep", "--", "-v", "file"]), ok("x", &["grep", "--", "-v", "file"]));
        // A command literally named `--`: the user asked for it.
        assert_eq!(parse(&["x", "--", "--", "cmd"]), ok("x", &["--", "cmd"]));
        assert_eq!(parse(&["x"]), ok("x", &[]));
        assert_eq!(parse(&["", "--", "true"]), ok("", &["true"]));
        assert!(parse(&["x", "true"]).is_err(), "the command must come after `--`");
    }

    #[test]
    fn name_after_the_separator() {
        assert_eq!(parse(&["--", "-rf", "--", "rm", "-rf", "x"]), ok("-rf", &["rm", "-rf", "x"]));
        assert_eq!(parse(&["-u", "memory://", "-n", "--", "--", "--", "cmd"]), ok("--", &["cmd"]));
        assert_eq!(parse(&["--", "x", "--", "grep", "--", "-v"]), ok("x", &["grep", "--", "-v"]));
        assert_eq!(parse(&["--", "x", "--"]), ok("x", &[]));
        let e = parse(&["--", "x", "true"]).unwrap_err();
        assert!(e.contains("after `-- NAME`, `--` and the command must follow"), "{e}");
        let e = parse(&["--", "-rf"]).unwrap_err();
        assert!(e.contains("after `-- NAME`"), "{e}");
    }

    #[test]
    fn no_name_at_all() {
        for args in [&[][..], &["--"], &["-n"]] {
            let e = parse(args).unwrap_err();
            assert!(e.contains("run needs a lock NAME"), "{args:?}: {e}");
        }
    }

    #[test]
    fn other_subcommands_are_untouched() {
        let matches =
            allow_name_after_separator(crate::Cli::command()).try_get_matches_from(["interlock", "hold", "x"]).unwrap();
        assert!(name_given(&matches));
        let e =
            allow_name_after_separator(crate::Cli::command()).try_get_matches_from(["interlock", "hold"]).unwrap_err();
        assert!(crate::exit::clap_message(&e).contains("<NAME>"));
    }
}
