//! Command-line arguments.

use clap::{Parser, Subcommand};

/// Make risky changes to production data reversible.
///
/// `guard -- CMD ARGS...` snapshots every target of the policy, verifies the snapshot, runs
/// the command, runs the policy's checks, and restores the snapshot if the command or a check
/// fails.
#[derive(Debug, Parser)]
#[command(name = "guard", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Policy file, or NAME for policies/NAME.toml [default: $GUARD_POLICY, then ./guard.toml]
    #[arg(long, short = 'p', global = true, value_name = "PATH|NAME")]
    pub policy: Option<String>,

    /// Print one JSON document on stdout instead of human output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Do not ask for confirmation.
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,

    /// Print what would happen and touch nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// On failure keep the failed state instead of restoring (guard says how to restore later).
    #[arg(long)]
    pub no_restore: bool,

    #[command(subcommand)]
    pub sub: Option<Sub>,

    /// The command to guard, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Take a snapshot now (no command, no checks).
    Snapshot {
        /// Only this target (repeatable).
        #[arg(long, short = 't')]
        target: Vec<String>,
        /// A note stored with the snapshot.
        #[arg(long, short = 'l')]
        label: Option<String>,
    },
    /// List the policy's complete snapshots, newest first.
    List,
    /// Show a snapshot's manifest: targets, artifacts, checksums, fingerprints.
    Show {
        /// Snapshot id, unique prefix, or `latest`.
        id: String,
    },
    /// Verify snapshots: checksums, decompression, and engine integrity checks.
    Verify {
        /// Snapshot id, unique prefix, or `latest` [default: every snapshot of the policy]
        id: Option<String>,
        /// Only compare the stored files' SHA-256 (fast).
        #[arg(long)]
        quick: bool,
    },
    /// Restore a snapshot over the live targets (a rescue snapshot of the current state first).
    Restore {
        /// Snapshot id, unique prefix, or `latest`.
        id: String,
        /// Only this target (repeatable).
        #[arg(long, short = 't')]
        target: Vec<String>,
        /// Do not take a rescue snapshot of the current state first.
        #[arg(long)]
        no_rescue: bool,
    },
    /// The last run, interrupted runs and what to do about them.
    Status,
    /// Close interrupted runs: restore their pre-run snapshot (or keep the current state).
    Recover {
        /// Accept the current state instead of restoring.
        #[arg(long)]
        keep: bool,
    },
    /// Rebuild the catalog from the manifests in the store.
    Reindex,
}

pub const EXIT_CODES: &str = "Exit codes:
  0    success (guarded run: command and checks passed, changes kept)
  N    the command's own exit code: it failed and guard restored the snapshot
  1    internal error
  64   bad usage or policy; nothing was run
  65   a snapshot failed verification (corrupt, truncated or missing artifact)
  69   snapshot failed; the command was not run
  75   another guard holds the policy's lock
  76   confirmation declined; nothing was run
  79   checks failed; the snapshot was restored
  80   restore failed: act now
  81   the command or a check failed and --no-restore kept the failed state";
