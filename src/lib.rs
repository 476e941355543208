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
//! - [`lock`], [`signals`], [`secrets`], [`ui`], [`error`]: the supporting cast

pub mod archive;
pub mod catalog;
pub mod checks;
pub mod cli;
pub mod commands;
pub mod error;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod policy;
pub mod restore;
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
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("formats")
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
            if ui.json {
                ui::print_json(&serde_json::json!({"error": msg, "kind": f.kind.as_str(), "exit_code": f.kind.exit_code()}));
            }
            eprintln!("guard: error: {msg}");
            f.kind.exit_code()
        }
    }
}

fn dispatch(cli: cli::Cli, ui: &ui::Ui) -> Result<u8, Failure> {
    if cli.sub.is_some() && (!cli.command.is_empty() || cli.dry_run || cli.no_restore) {
        return Err(Failure::msg(
            Kind::Usage,
            "`-- COMMAND`, --dry-run and --no-restore belong to the guarded run, not to a subcommand",
        ));
    }
    let path = policy::locate(cli.policy.as_deref()).kind(Kind::Usage)?;
    let policy = policy::load(&path).kind(Kind::Usage)?;
    use cli::Sub;
    match cli.sub {
        None => run::guarded(
            &policy,
            &run::Options { yes: cli.yes, dry_run: cli.dry_run, no_restore: cli.no_restore, command: cli.command },
            ui,
        ),
        Some(Sub::Snapshot { target, label }) => commands::snapshot_cmd(&policy, &target, label, ui),
        Some(Sub::List) => commands::list(&policy, ui),
        Some(Sub::Show { id }) => commands::show(&policy, &id, ui),
        Some(Sub::Verify { id, quick }) => commands::verify(&policy, id.as_deref(), quick, ui),
        Some(Sub::Restore { id, target, no_rescue }) => commands::restore(&policy, &id, &target, no_rescue, cli.yes, ui),
        Some(Sub::Status) => status::status(&policy, ui),
        Some(Sub::Recover { keep }) => status::recover(&policy, keep, cli.yes, ui),
        Some(Sub::Reindex) => commands::reindex(&policy, ui),
    }
}
