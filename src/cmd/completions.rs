//! `guard completions SHELL` and `guard man`: generated from the same clap definition that parses
//! the command line ([`crate::cli::Cli`]), so they cannot drift from it.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Failure, Kind};

/// Print the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<u8, Failure> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "guard", &mut buf);
    crate::ui::to_stdout(&String::from_utf8_lossy(&buf));
    Ok(0)
}

/// Print the man page (roff) on stdout.
pub fn man() -> Result<u8, Failure> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| Failure::new(Kind::Internal, e))?;
    crate::ui::to_stdout(&String::from_utf8_lossy(&buf));
    Ok(0)
}
