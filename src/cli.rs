//! Command-line arguments.

use clap::builder::BoolishValueParser;
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
    #[arg(long, global = true, env = "GUARD_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,

    /// Do not ask for confirmation.
    #[arg(long, short = 'y', global = true, env = "GUARD_YES", value_parser = BoolishValueParser::new())]
    pub yes: bool,

    /// Say only what went wrong: warnings, errors, a failed check (results still print).
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also say which policy file, store and lock guard uses.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,

    /// Wait up to DURATION (`30s`, `10m`) for another guard to release the policy's lock instead
    /// of exiting 75 at once.
    #[arg(long, global = true, value_name = "DURATION", env = "GUARD_WAIT", value_parser = humantime::parse_duration)]
    pub wait: Option<std::time::Duration>,

    /// Also append guard's messages and the command's output to PATH (created 0600; secrets
    /// masked as in the run log).
    #[arg(long, global = true, value_name = "PATH", env = "GUARD_LOG_FILE")]
    pub log_file: Option<std::path::PathBuf>,

    /// Print what would happen and touch nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// On failure keep the failed state instead of restoring (guard says how to restore later).
    #[arg(long)]
    pub no_restore: bool,

    /// With a store key: use manifests and journals it does not authenticate (a lost or
    /// replaced key), with a warning for each, instead of refusing them (exit 65).
    #[arg(long, global = true)]
    pub trust_unsigned: bool,

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
    /// Read-only preflight: everything a run checks before the command, nothing written.
    Check,
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
        /// End other sessions on PostgreSQL targets (as `sessions = "terminate"`), this once.
        #[arg(long)]
        terminate_sessions: bool,
    },
    /// The last run, interrupted runs and what to do about them.
    Status,
    /// Close interrupted runs: restore their pre-run snapshot (or keep the current state).
    Recover {
        /// Accept the current state instead of restoring.
        #[arg(long)]
        keep: bool,
        /// End other sessions on PostgreSQL targets (as `sessions = "terminate"`), this once.
        #[arg(long)]
        terminate_sessions: bool,
    },
    /// Rebuild the catalog from the manifests in the store.
    Reindex,
    /// Delete snapshots past retention (never the last good ones; see docs/operations.md, "Retention").
    Prune {
        /// Every policy in ./policies/ instead of one.
        #[arg(long, conflicts_with = "policy")]
        all: bool,
        /// Keep snapshots younger than this [default: the policy's retention.keep_within]
        #[arg(long, value_parser = humantime::parse_duration)]
        keep_within: Option<std::time::Duration>,
        /// Keep this many newest snapshots per target [default: the policy's retention.keep_last]
        #[arg(long)]
        keep_last: Option<usize>,
        /// Show what would be deleted and why each kept snapshot stays; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a snapshot into scratch, check it, and record how long it took.
    Drill {
        /// Every policy in ./policies/ instead of one.
        #[arg(long, conflicts_with = "policy")]
        all: bool,
        /// Snapshot id, unique prefix, or `latest` [default: the newest complete snapshot]
        id: Option<String>,
    },
    /// The drill history: when, which snapshot, time to restore, result.
    Drills,
    /// Print (or install) a systemd timer or crontab line that runs drills and retention.
    Schedule {
        /// hourly, daily or weekly.
        #[arg(long, default_value = "daily")]
        every: String,
        /// Write the units (or the crontab line) instead of printing them.
        #[arg(long)]
        install: bool,
        /// Where the systemd units go.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: std::path::PathBuf,
        /// With --install: write the units but do not run systemctl.
        #[arg(long)]
        no_enable: bool,
        /// The environment file the job loads (the policy's variables) [default: /etc/guard/POLICY.env]
        #[arg(long, value_name = "PATH")]
        env_file: Option<std::path::PathBuf>,
        /// Take a fresh snapshot before each drill, so the drill tests today's data.
        #[arg(long)]
        snapshot: bool,
    },
    /// Protect a snapshot from pruning.
    Pin {
        /// Snapshot id, unique prefix, or `latest`.
        id: String,
        /// Why it must be kept.
        #[arg(long, short = 'r')]
        reason: String,
    },
    /// Let retention consider a pinned snapshot again.
    Unpin {
        /// Snapshot id or unique prefix.
        id: String,
    },
    /// Print a shell completion script: `guard completions bash > /etc/bash_completion.d/guard`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print guard's man page (roff): `guard man | man -l -`.
    Man,
    /// Print the policy's JSON Schema (for editors: `#:schema` in guard.toml; for CI checks).
    Schema,
    /// Write a starter policy from what is here: SQLite files, DATABASE_URL/.env, Prisma, data/,
    /// Turso and S3 settings (never overwrites).
    Init {
        /// The policy file to create.
        #[arg(default_value = "guard.toml")]
        file: std::path::PathBuf,
    },
    /// Store keys: `guard key generate [FILE]`.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Write a new random store key (0600; never over an existing file).
    Generate {
        /// Where [default: the policy's `[store] key_file`]
        file: Option<std::path::PathBuf>,
    },
}

pub const EXIT_CODES: &str = "Exit codes:
  0    success (guarded run: command and checks passed, changes kept)
  N    the command's own exit code: it failed and guard restored the snapshot
  1    internal error
  64   bad usage or policy; nothing was run
  65   a snapshot failed verification (corrupt, truncated or missing artifact)
  66   a restore drill failed
  69   snapshot failed; the command was not run
  70   a before hook failed; nothing was snapshotted, run or restored
  75   another guard holds the policy's lock
  76   confirmation declined; nothing was run
  79   checks failed; the snapshot was restored
  80   restore failed: act now
  81   the command or a check failed and --no-restore kept the failed state
  82   needs attention: an earlier run left the targets in a failed or unknown state
       (`guard status` says what; `guard recover` or `guard recover --keep`)";

/// A better message than clap's for a word where a subcommand goes (`guard stauts`,
/// `guard python3 migrate.py`): the parser takes the guarded command only after `--`, so clap
/// calls such a word an unexpected argument and suggests nothing. Says which subcommand was
/// probably meant, or that the command to guard goes after `--`.
pub fn unknown_subcommand(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(word)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    if word.starts_with('-') {
        return None;
    }
    let cmd = Cli::command();
    let best = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| (strsim::jaro(word, s.get_name()), s.get_name().to_string()))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let tip = match best {
        Some((_, name)) => format!("  tip: a similar subcommand exists: '{name}'"),
        None => format!("  tip: the command to guard goes after `--`: guard -- {word} ..."),
    };
    Some(format!(
        "error: unrecognized subcommand '{word}'\n\n{tip}\n\nUsage: guard [OPTIONS] [-- <COMMAND>...] [SUBCOMMAND]\n\nFor more information, try '--help'.\n"
    ))
}
