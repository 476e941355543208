//! guard: snapshot → run → verify → restore-on-failure for production data.
//!
//! `main.rs` parses arguments and calls [`run`]; this file is the module list, [`run`] and the
//! subcommand dispatch. Everything else lives in one module per concept:
//!
//! - [`cli`]: the command line; [`policy`]: the TOML policy (targets, checks, hooks, retention)
//! - [`run`]: the guarded lifecycle; [`journal`] records its phases (and answers which runs
//!   were interrupted); [`status`]: what state things are in, and `recover`
//! - [`commands`]: `snapshot`, `list`, `show`, `verify`, `restore`, `reindex`
//! - [`snapshot`]: taking and verifying snapshots; [`restore`]: putting targets back
//! - [`checks`]: the policy's checks; [`retention`]: pruning with rails, pins;
//!   [`drill`]: restore drills and their schedule
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

pub mod archive;
pub mod artifact;
pub mod aws;
pub mod catalog;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod drill;
pub mod error;
pub mod faults;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod outcome;
pub mod parse_ctx;
pub mod policy;
pub mod process;
pub mod restore;
pub mod retention;
pub mod run;
pub mod runtime;
pub mod secrets;
pub mod signals;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod targets;
#[cfg(test)]
pub mod testing;
pub mod ui;
pub mod vars;

use error::{Failure, Kind, ResultExt};

/// Run the parsed command line; returns the process exit code.
pub fn run(cli: cli::Cli) -> u8 {
    let ui = ui::Ui::new(cli.json);
    match dispatch(cli, &ui) {
        Ok(code) => code,
        Err(f) => {
            let msg = secrets::redact(&format!("{:#}", f.error));
            if ui.json && !f.reported {
                ui::print_json(
                    &serde_json::json!({"error": msg, "kind": f.kind.as_str(), "exit_code": f.kind.exit_code()}),
                );
            }
            eprintln!("guard: error: {msg}");
            f.kind.exit_code()
        }
    }
}

/// Every policy file in `./policies/`, for `--all`.
fn all_policies() -> Result<Vec<policy::Policy>, Failure> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("policies")
        .map_err(|e| Failure::msg(Kind::Usage, format!("--all reads ./policies/: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("toml"))
        .collect();
    files.sort();
    files.iter().map(|f| policy::load(f).kind(Kind::Usage)).collect()
}

/// Run `f` for one policy or, with `--all`, for each; the worst exit code wins.
fn for_policies(
    all: bool,
    arg: Option<&str>,
    mut f: impl FnMut(&policy::Policy) -> Result<u8, Failure>,
) -> Result<u8, Failure> {
    if !all {
        let path = policy::locate(arg).kind(Kind::Usage)?;
        return f(&policy::load(&path).kind(Kind::Usage)?);
    }
    let mut worst = 0;
    let mut first_err = None;
    for p in all_policies()? {
        match f(&p) {
            Ok(c) => worst = worst.max(c),
            Err(e) => {
                eprintln!(
                    "guard: policy {}: {}",
                    p.name,
                    secrets::redact(&format!("{:#}", e.error))
                );
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(worst),
    }
}

fn dispatch(cli: cli::Cli, ui: &ui::Ui) -> Result<u8, Failure> {
    if cli.sub.is_some() && (!cli.command.is_empty() || cli.dry_run || cli.no_restore) {
        return Err(Failure::msg(
            Kind::Usage,
            "`-- COMMAND`, --dry-run and --no-restore belong to the guarded run, not to a subcommand",
        ));
    }
    use cli::Sub;
    if let Some(Sub::Prune {
        all,
        keep_within,
        keep_last,
        dry_run,
    }) = &cli.sub
    {
        return for_policies(*all, cli.policy.as_deref(), |p| {
            retention::prune(p, *keep_within, *keep_last, *dry_run, ui)
        });
    }
    if let Some(Sub::Drill { all, id }) = &cli.sub {
        return for_policies(*all, cli.policy.as_deref(), |p| drill::drill(p, id.as_deref(), ui));
    }
    let path = policy::locate(cli.policy.as_deref()).kind(Kind::Usage)?;
    let policy = policy::load(&path).kind(Kind::Usage)?;
    match cli.sub {
        None => guarded_run(
            &policy,
            &run::Options {
                yes: cli.yes,
                dry_run: cli.dry_run,
                no_restore: cli.no_restore,
                command: cli.command,
            },
            ui,
        ),
        Some(Sub::Snapshot { target, label }) => commands::snapshot_cmd(&policy, &target, label, ui),
        Some(Sub::List) => commands::list(&policy, ui),
        Some(Sub::Show { id }) => commands::show(&policy, &id, ui),
        Some(Sub::Verify { id, quick }) => commands::verify(&policy, id.as_deref(), quick, ui),
        Some(Sub::Restore { id, target, no_rescue }) => {
            commands::restore(&policy, &id, &target, no_rescue, cli.yes, ui)
        }
        Some(Sub::Status) => status::status(&policy, ui),
        Some(Sub::Recover { keep }) => status::recover(&policy, keep, cli.yes, ui),
        Some(Sub::Reindex) => commands::reindex(&policy, ui),
        Some(Sub::Prune { .. }) | Some(Sub::Drill { .. }) => unreachable!("handled above"),
        Some(Sub::Drills) => drill::history(&policy, ui),
        Some(Sub::Schedule {
            every,
            install,
            unit_dir,
            no_enable,
        }) => drill::schedule(&policy, &every, install, &unit_dir, no_enable, ui),
        Some(Sub::Pin { id, reason }) => retention::pin(&policy, &id, Some(&reason), false, ui),
        Some(Sub::Unpin { id }) => retention::pin(&policy, &id, None, true, ui),
    }
}

/// `guard -- COMMAND`: check the request, open the store, and run the guarded lifecycle.
fn guarded_run(policy: &policy::Policy, opts: &run::Options, ui: &ui::Ui) -> Result<u8, Failure> {
    let targets = run::begin::targets(policy, opts)?;
    if opts.dry_run {
        run::plan::print_plan(policy, &targets, opts, ui);
        return Ok(0);
    }
    run::begin::preconditions(policy, opts)?;
    let store = store::open(&policy.store).kind(Kind::Snapshot)?;
    let catalog = catalog::Catalog::open(store.as_ref()).kind(Kind::Snapshot)?;
    let cx = restore::Ctx {
        policy,
        store: store.as_ref(),
        catalog: &catalog,
        hooks: &process::ShellHooks,
        ui,
    };
    run::guarded(&cx, &targets, &run::command::Spawn, opts)
}
