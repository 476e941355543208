//! guard: snapshot → run → verify → restore-on-failure for production data.
//!
//! `main.rs` parses arguments and calls [`run`]; everything else lives here, one module per
//! concept:
//!
//! - [`policy`]: the TOML policy (targets, checks, hooks, retention)
//! - [`store`]: where snapshots live (local directory)
//! - [`targets`]: the things protected (SQLite, directories), behind one trait
//! - [`archive`]: streaming parallel gzip with SHA-256 in the same pass
//! - [`manifest`]: a snapshot's record, written last
//! - [`snapshot`]: taking and verifying snapshots
//! - [`catalog`]: the SQLite index of snapshots and runs
//! - [`run`]: the guarded lifecycle; [`journal`] records its phases
//! - [`checks`]: the policy's checks
//! - [`restore`]: putting targets back
//! - [`status`]: what state things are in, and `recover`
//! - [`retention`]: pruning with rails, pins
//! - [`drill`]: restore drills and their schedule
//! - [`lock`], [`signals`], [`secrets`], [`ui`], [`error`]: the supporting cast

pub mod archive;
pub mod catalog;
pub mod checks;
pub mod cli;
pub mod commands;
pub mod drill;
pub mod error;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod policy;
pub mod restore;
pub mod retention;
pub mod run;
pub mod secrets;
pub mod signals;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod targets;
pub mod ui;

use std::future::Future;
use std::sync::OnceLock;

use error::{Failure, Kind, ResultExt};
use time::OffsetDateTime;

/// Run an async operation (sqlx) to completion on guard's runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
    .block_on(f)
}

/// The current time.
///
/// `GUARD_TEST_NOW` (RFC 3339) overrides it, so the retention tests can age snapshots without
/// waiting; nothing else should set it.
pub fn now() -> OffsetDateTime {
    if let Ok(s) = std::env::var("GUARD_TEST_NOW") {
        if let Ok(t) = OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339) {
            return t;
        }
    }
    OffsetDateTime::now_utc()
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

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
        None => run::guarded(
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
