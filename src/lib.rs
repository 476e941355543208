//! guard: snapshot → run → verify → restore-on-failure for production data.
//!
//! `main.rs` parses arguments and calls [`run`] ([`cmd::execute`]); this file is the module list.
//! Everything else lives in one module per concept:
//!
//! - [`cli`]: the command line; [`cmd`]: one file per subcommand (options → domain call → human
//!   text or `--json`), the dispatch and the `Session` they share; [`policy`]: the TOML policy
//! - [`run`]: the guarded lifecycle; [`journal`] records the phases of every run and restore
//!   (and answers which were interrupted); [`outcome`]: how each ended
//! - [`snapshot`]: taking and verifying snapshots; [`restore`]: putting targets back (the one
//!   rescue-then-restore protocol of the run, `restore` and `recover`)
//! - [`checks`]: the policy's checks; [`retention`]: pruning with rails, pins;
//!   [`drill`]: restore drills
//! - [`targets`]: the things protected (SQLite, PostgreSQL, Turso, S3 buckets, directories),
//!   behind one trait, and the registry of kinds
//! - [`store`]: where snapshots live (a local directory or an S3 bucket), its key layout and
//!   local state; [`catalog`]: the SQLite index of snapshots and runs; [`lock`]: one guard per
//!   policy
//! - [`manifest`]: a snapshot's record, written last; [`artifact`]: writing and reading back
//!   one artifact; [`archive`]: streaming parallel gzip with SHA-256 in the same pass
//! - [`aws`]: the S3 client and SDK errors the S3 store and the S3 target share
//! - [`process`]: hooks, exit statuses, quoting; [`runtime`]: the tokio runtime;
//!   [`clock`]: time and host name; [`faults`]: fault points for the crash tests
//! - [`signals`], [`secrets`], [`ui`], [`error`]: the supporting cast

// Every message goes through `ui` (write errors ignored): `println!`/`eprintln!` panic when the
// terminal or pipe has gone away, which would abort a run between the command and its restore.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod archive;
pub mod artifact;
pub mod attention;
pub mod auth;
pub mod aws;
pub mod catalog;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod crypt;
pub mod damaged;
pub mod drill;
pub mod error;
pub mod faults;
pub mod journal;
pub mod leftovers;
pub mod lock;
pub mod manifest;
pub mod names;
pub mod outcome;
pub mod parse_ctx;
pub mod policy;
pub mod process;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod run;
pub mod runtime;
pub mod secrets;
pub mod signals;
pub mod snapshot;
pub mod store;
pub mod targets;
#[cfg(test)]
pub mod testing;
pub mod ui;
pub mod vars;

/// Run the parsed command line; returns the process exit code ([`cmd::execute`]).
pub use cmd::execute as run;
